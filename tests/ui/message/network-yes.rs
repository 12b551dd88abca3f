use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(network = "yes", fixed_output = "blake3:0000000000000000000000000000000000000000000000000000000000000000", script = "echo > $out")]
struct Fetch;

fn main() {}
