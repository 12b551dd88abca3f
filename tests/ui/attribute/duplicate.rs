use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "echo one > $out")]
#[forjar(script = "echo two > $out")]
struct Twice;

fn main() {}
