use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "echo hi > $out")]
enum Choice {
    A,
    B,
}

fn main() {}
