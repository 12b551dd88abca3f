use forjar::Graph as G;
use forjar::prelude::Drv;

// The graph parameter is known by its form, `&mut` a type, not by its spelling.
#[forjar::derivation]
fn shout(g: &mut G, text: &str) -> Drv<Shout> {
    "echo $text > $out"
}

fn main() {
    let mut g = G::new();
    let shouted = shout(&mut g, "hi");
    g.root("shouted", shouted);
}
