use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "head -c 16 /dev/urandom > $out")]
struct Key;

fn main() {}
