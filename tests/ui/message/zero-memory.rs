use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(memory = "0M", script = "echo > $out")]
struct Small;

fn main() {}
