use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(network, script = "fetch https://example.org/src.tar.gz > $out")]
struct Fetch;

fn main() {}
