use forjar::prelude::*;

#[forjar::derivation]
fn shout<T: Into<String>>(g: &mut Graph, text: T) -> Drv<Shout> {
    "echo $text > $out"
}

fn main() {}
