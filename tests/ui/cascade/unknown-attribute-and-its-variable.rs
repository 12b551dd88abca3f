use forjar::prelude::*;

// A misspelt field attribute: the field is refused once, and its `$greeting` is not reported
// again as undeclared.
#[derive(Derivation)]
#[forjar(script = "echo $greeting > $out")]
struct Hello {
    #[forjar(evn)]
    greeting: String,
}

fn main() {}
