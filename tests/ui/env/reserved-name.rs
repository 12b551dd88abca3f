use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "echo $HOME > $out")]
struct Home {
    #[forjar(env = "HOME")]
    home: String,
}

fn main() {}
