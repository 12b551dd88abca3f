use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = r#"
    mkdir -p $out/bin
    cc -O2 -o $out/bin/hello $scr/hello.c
"#)]
struct Hello {
    #[forjar(input)]
    src: Source,
    #[forjar(env)]
    greeting: String,
}

fn main() {}
