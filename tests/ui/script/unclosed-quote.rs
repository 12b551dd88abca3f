use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "echo 'it is done > $out")]
struct Quote;

fn main() {}
