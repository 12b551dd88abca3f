use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "echo $(printf hi > $out")]
struct Sub;

fn main() {}
