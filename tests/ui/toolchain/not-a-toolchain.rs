use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "cc -o $out $src/main.c")]
struct Compile {
    #[forjar(input)]
    src: Source,
    #[forjar(toolchain)]
    cc: Vec<&'static str>,
}

fn main() {}
