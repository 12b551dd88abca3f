use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(sandbox = "host_tools", script = "echo hi > $out")]
struct Tools;

fn main() {}
