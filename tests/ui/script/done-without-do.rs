use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "for f in a b; echo $f; done > $out")]
struct Loop;

fn main() {}
