use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(memory = "2 gigs", script = "echo hi > $out")]
struct Big;

fn main() {}
