use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(system = "x86_64-darwin", script = "echo hi > $out")]
struct Mac;

fn main() {}
