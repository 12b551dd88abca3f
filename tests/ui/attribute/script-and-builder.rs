use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "echo hi > $out", builder = ["/bin/true"])]
struct Both;

fn main() {}
