use forjar::prelude::*;

// A bare name in `$(( ))` is expanded as `$RANDOM` is.
#[derive(Derivation)]
#[forjar(script = "echo $((RANDOM % 6)) > $out")]
struct Dice;

fn main() {}
