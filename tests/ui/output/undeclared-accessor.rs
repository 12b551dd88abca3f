use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(outputs = ["out", "dev"], script = "echo lib > $out; echo h > $dev")]
struct Lib;

fn main() {
    let mut g = Graph::new();
    let lib = g.add(Lib);
    let _docs = lib.doc();
}
