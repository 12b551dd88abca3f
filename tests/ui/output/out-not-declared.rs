use forjar::prelude::*;

// With `outputs` given, `out` is not one unless it is listed.
#[derive(Derivation)]
#[forjar(outputs = ["lib", "dev"], script = "mkdir $lib $dev; echo > $out")]
struct Lib;

fn main() {}
