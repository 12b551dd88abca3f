// A derivation fn: the parameters are inputs or env by their types, the body is the script,
// and calling it adds the derivation and returns its typed handle.
use forjar::prelude::*;

/// Writes a greeting.
#[forjar::derivation]
fn greeting(g: &mut Graph, text: &str, times: u32) -> Drv<Greeting> {
    r#"
    i=0
    while [ $i -lt $times ]; do echo "$text" >> $out; i=$((i + 1)); done
    "#
}

#[forjar::derivation(outputs = ["out", "doc"], sandbox = "hermetic", timeout = "1m")]
pub fn shout(
    g: &mut Graph,
    greeting: Drv<Greeting>,
    #[forjar(file = "style.json")] style: &Style,
) -> Drv<Shout> {
    r#"
    while read -r line; do echo "$line!" >> $out; done < $greeting
    cp style.json $doc
    "#
}

#[derive(serde::Serialize)]
pub struct Style {
    exclamations: u8,
}

#[forjar::derivation(builder = ["/bin/true"])]
fn nothing(g: &mut Graph) -> Drv<Nothing> {}

fn main() {
    let mut g = Graph::new();
    let hello = greeting(&mut g, "hello", 3);
    let loud = shout(&mut g, hello, &Style { exclamations: 1 });
    let _docs: OutputRef = loud.doc();
    let _ = nothing(&mut g);
    let drv = g.get(&loud).expect("valid");
    assert_eq!(drv.name().as_str(), "shout");
    assert!(drv.location().ends_with(".rs:37"), "{}", drv.location());
    let inputs: Vec<_> = drv.inputs().keys().map(|k| k.to_string()).collect();
    assert_eq!(inputs, ["greeting"]);
    assert!(g.get(&hello).unwrap().inputs().is_empty());
    g.root("loud", loud);
}
