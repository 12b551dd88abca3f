use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = 42)]
struct Number;

fn main() {}
