use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "echo hi > $out")]
struct Clash {
    #[forjar(env)]
    out: String,
}

fn main() {}
