use forjar::prelude::*;

#[forjar::derivation]
fn shout(g: &mut Vec<u8>, text: &str) -> Drv<Shout> {
    "echo $text > $out"
}

fn main() {}
