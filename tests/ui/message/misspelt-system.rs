use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(system = "x86-64-linux", script = "echo > $out")]
struct Typo;

fn main() {}
