use forjar::prelude::*;

struct Config {
    port: u16,
}

#[derive(Derivation)]
#[forjar(script = "cp config.json $out")]
struct Service {
    #[forjar(file = "config.json")]
    config: Config,
}

fn main() {}
