//! Compiles `hello.c` with the host's C compiler, then wraps the binary in a launcher script.
//!
//! ```text
//! cargo run --example hello -- plan
//! ```

use forjar::prelude::*;

fn main() -> forjar::Result<()> {
    forjar::main(|g| {
        let src = Source::dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello/src"))?
            .named("hello-src")?;
        let hello = g.add(
            Derivation::builder("hello")
                .sandbox(SandboxLevel::HostTools)
                .script(
                    r#"
                    mkdir -p $out/bin
                    cc -O2 -DGREETING="\"$greeting\"" -o $out/bin/hello $src/hello.c
                    "#,
                )
                .input("src", src)
                .env("greeting", "hello")
                .build()?,
        );
        let launcher = g.add(
            Derivation::builder("hello-launcher")
                .script(
                    r#"
                    mkdir -p $out/bin
                    printf '#!/bin/sh\nexec %s/bin/hello "$@"\n' "$hello" > $out/bin/greet
                    chmod +x $out/bin/greet
                    "#,
                )
                .input("hello", hello)
                .build()?,
        );
        g.root("hello", launcher);
        Ok(())
    })
}
