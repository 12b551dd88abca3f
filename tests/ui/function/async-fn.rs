use forjar::prelude::*;

#[forjar::derivation]
async fn shout(g: &mut Graph, text: &str) -> Drv<Shout> {
    "echo $text > $out"
}

fn main() {}
