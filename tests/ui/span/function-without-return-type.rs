use forjar::prelude::*;

#[forjar::derivation]
fn shout(g: &mut Graph, text: &str) {
    "echo $text > $out"
}

fn main() {}
