use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(outputs = ["out", "dev-headers"], script = "echo hi > $out")]
struct Lib;

fn main() {}
