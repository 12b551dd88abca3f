use forjar::prelude::*;
use std::collections::HashMap;

#[forjar::derivation]
fn greeting(g: &mut Graph, words: HashMap<String, String>) -> Drv<Greeting> {
    "echo hi > $out"
}

fn main() {}
