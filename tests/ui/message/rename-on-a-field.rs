use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "echo $greeting > $out")]
struct Hello {
    #[forjar(env, rename = "GREETING")]
    greeting: String,
}

fn main() {}
