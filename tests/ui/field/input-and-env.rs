use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "cp $src $out")]
struct Copy {
    #[forjar(input, env)]
    src: Source,
}

fn main() {}
