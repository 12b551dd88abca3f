use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "cc -o $out $src/main.c")]
struct Compile {
    #[forjar(input)]
    src: Source,
    #[forjar(toolchain)]
    cc: Toolchain,
    #[forjar(toolchain)]
    make: Toolchain,
}

fn main() {}
