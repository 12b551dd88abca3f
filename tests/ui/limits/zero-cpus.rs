use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(cpus = 0, script = "echo > $out")]
struct Idle;

fn main() {}
