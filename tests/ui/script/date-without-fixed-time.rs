use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = r#"
    echo "built on $(date +%F)" > $out
"#)]
struct Stamp;

fn main() {}
