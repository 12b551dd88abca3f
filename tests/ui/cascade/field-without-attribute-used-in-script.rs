use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "echo $greeting > $out")]
struct Hello {
    greeting: String,
}

fn main() {}
