use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(sandbox = "hermetic")]
struct Nothing;

fn main() {}
