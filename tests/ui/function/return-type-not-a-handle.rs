use forjar::prelude::*;

#[forjar::derivation]
fn greeting(g: &mut Graph, text: &str) -> Derivation {
    "echo $text > $out"
}

fn main() {}
