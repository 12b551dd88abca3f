use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(memory = "1.5GiB", script = "echo > $out")]
struct Big;

fn main() {}
