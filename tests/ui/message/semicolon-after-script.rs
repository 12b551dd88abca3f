use forjar::prelude::*;

#[forjar::derivation]
fn shout(g: &mut Graph, text: &str) -> Drv<Shout> {
    "echo $text > $out";
}

fn main() {}
