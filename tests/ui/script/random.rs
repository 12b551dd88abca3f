use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "echo $RANDOM > $out")]
struct Token;

fn main() {}
