use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(fixed_output_mode = "recursive")]
#[forjar(script = "echo a > $out")]
struct Unpacked;

fn main() {}
