use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(outputs = ["out", "output"], script = "echo a > $out; echo b > $output")]
struct Lib;

fn main() {}
