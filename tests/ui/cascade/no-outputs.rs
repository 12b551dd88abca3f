use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(outputs = [], script = "echo hi > $out")]
struct Nothing;

fn main() {}
