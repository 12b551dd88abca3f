use forjar::prelude::*;

#[forjar::derivation]
fn greeting(g: &mut Graph, text: &str) -> Drv<Greeting> {
    let script = format!("echo {text} > $out");
    script
}

fn main() {}
