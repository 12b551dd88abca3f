use forjar::prelude::*;

// The advice of the `date` error, followed: `SOURCE_DATE_EPOCH` is set in every build, so this
// compiles; `TIME` is not declared, which is the one error.
#[derive(Derivation)]
#[forjar(script = "date -u -d @$SOURCE_DATE_EPOCH +%Y > $out; echo $TIME >> $out")]
struct Stamp;

fn main() {}
