use forjar::prelude::*;

#[forjar::derivation]
fn greeting(text: &str) -> Drv<Greeting> {
    "echo $text > $out"
}

fn main() {}
