use forjar::machine::Secret;
use forjar::prelude::*;

// A secret never goes into a build: it would be hashed into the key and kept in the store.
#[derive(Derivation)]
#[forjar(script = "echo \"$token\" > $out")]
struct Leak {
    #[forjar(env)]
    token: Secret,
}

fn main() {}
