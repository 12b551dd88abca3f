use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "uuidgen > $out")]
struct Id;

fn main() {}
