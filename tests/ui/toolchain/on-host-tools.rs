use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(sandbox = "host-tools", script = "cc -o $out $src/main.c")]
struct Compile {
    #[forjar(input)]
    src: Source,
    #[forjar(toolchain)]
    cc: Toolchain,
}

fn main() {}
