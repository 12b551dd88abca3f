use forjar::prelude::*;

#[derive(serde::Serialize)]
struct Config {
    port: u16,
}

#[derive(Derivation)]
#[forjar(script = "cp config.ini $out")]
struct Service {
    #[forjar(file = "config.ini")]
    config: Config,
}

fn main() {}
