use forjar::prelude::*;

struct Plain;

fn main() {
    let mut g = Graph::new();
    let _ = g.add(Plain);
}
