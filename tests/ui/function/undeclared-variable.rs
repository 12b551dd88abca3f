use forjar::prelude::*;

#[forjar::derivation(sandbox = "host-tools")]
fn greeting(g: &mut Graph, text: &str) -> Drv<Greeting> {
    r#"echo "$txt" > $out"#
}

fn main() {}
