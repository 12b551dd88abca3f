#![deny(warnings)]
use forjar::prelude::*;

// A deprecated derivation struct: its own derive adds no warning; a use of it does, as any.
#[deprecated = "use Hello2"]
#[derive(Derivation)]
#[forjar(script = "echo > $out")]
struct Hello;

fn main() {
    let mut g = Graph::new();
    #[allow(deprecated)]
    let hello = g.add(Hello);
    g.root("hello", hello);
}
