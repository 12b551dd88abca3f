use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "echo $greeting > $out")]
struct Hello {
    #[forjar(env = "GREETING=1")]
    greeting: String,
}

fn main() {}
