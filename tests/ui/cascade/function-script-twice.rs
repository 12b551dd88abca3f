use forjar::prelude::*;

// The script is in the attribute, and the body is empty.
#[forjar::derivation(script = "echo $text > $out")]
fn shout(g: &mut Graph, text: &str) -> Drv<Shout> {}

fn main() {}
