// The derive still emits its impls when an attribute is wrong, so the struct can be added to
// a graph and its outputs named: the one error below is the only one.
use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(outputs = ["out", "dev"], sandbox = "sealed", script = "echo a > $out; echo b > $dev")]
struct Lib;

fn main() {
    let mut g = Graph::new();
    let lib = g.add(Lib);
    let _headers = lib.dev();
    g.root("lib", lib);
}
