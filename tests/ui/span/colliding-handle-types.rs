use forjar::prelude::*;

#[forjar::derivation]
fn first(g: &mut Graph, text: &str) -> Drv<Shout> {
    "echo $text > $out"
}

#[forjar::derivation]
fn second(g: &mut Graph, text: &str) -> Drv<Shout> {
    "echo $text $text > $out"
}

fn main() {}
