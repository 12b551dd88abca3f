use forjar::prelude::*;

// A list of inputs holds inputs; these are values the script reads.
#[derive(Derivation)]
#[forjar(script = "for f in $flags; do echo $f; done > $out")]
struct Flags {
    #[forjar(input)]
    flags: Vec<String>,
}

fn main() {}
