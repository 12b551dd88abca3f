use forjar::prelude::*;

// A string where a list belongs.
#[derive(Derivation)]
#[forjar(outputs = "out, dev", script = "mkdir $out $dev")]
struct Lib;

fn main() {}
