use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "echo > $out")]
struct Named {
    #[forjar(name)]
    name: u32,
}

fn main() {}
