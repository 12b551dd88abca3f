use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(outputs = ["out", "dev", "out"], script = "echo hi > $out; echo h > $dev")]
struct Lib;

fn main() {}
