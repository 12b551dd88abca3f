use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(network, fixed_output = "sha256-0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73")]
#[forjar(script = "fetch https://example.org/src.tar.gz > $out")]
struct Fetch;

fn main() {}
