use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(fixed_output = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=")]
#[forjar(fixed_output_mode = "recursve", script = "echo hello > $out")]
struct Unpacked;

fn main() {}
