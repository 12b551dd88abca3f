use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "echo hi > $out")]
struct Greeting {
    #[forjar(env = "GREETING=1")]
    greeting: String,
}

fn main() {}
