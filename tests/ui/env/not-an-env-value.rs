use forjar::prelude::*;
use std::collections::HashMap;

#[derive(Derivation)]
#[forjar(script = "echo hi > $out")]
struct Settings {
    #[forjar(env)]
    settings: HashMap<String, String>,
}

fn main() {}
