use forjar::machine::Secret;
use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "cp $token $out")]
struct Leak {
    #[forjar(input)]
    token: Secret,
}

fn main() {}
