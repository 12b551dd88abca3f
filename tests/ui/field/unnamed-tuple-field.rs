use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "cp $src $out")]
struct Copy(#[forjar(input)] Source);

fn main() {}
