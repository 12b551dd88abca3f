use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(scirpt = "echo hi > $out")]
struct Hello {
    #[forjar(inptu)]
    src: Source,
}

fn main() {}
