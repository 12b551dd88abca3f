use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(input, script = "echo hi > $out")]
struct Misplaced;

fn main() {}
