use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(timeout = "600", script = "echo hi > $out")]
struct Slow;

fn main() {}
