use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "mkdir /tmp/work.$$ && echo hi > $out")]
struct Scratch;

fn main() {}
