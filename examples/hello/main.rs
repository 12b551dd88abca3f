//! Compiles `hello.c` with the host's C compiler, writes a greeting in a hermetic build, and
//! bundles both with the output of running the program.
//!
//! ```text
//! cargo run --example hello -- plan
//! cargo run --example hello -- apply
//! ```

use forjar::prelude::*;

fn main() -> forjar::Result<()> {
    forjar::main(|g| {
        let src = Source::dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello/src"))?
            .named("hello-src")?;
        // Sees the host's /usr (and so its compiler): impure, keyed by a host fingerprint.
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
        // Hermetic: nothing of the host but /bin/sh, so only shell builtins.
        let message = g.add(
            Derivation::builder("message")
                .script(r#"printf '%s, built in %s\n' "$text" "$PWD" > $out"#)
                .env("text", "a hermetic greeting")
                .build()?,
        );
        let bundle = g.add(
            Derivation::builder("hello-bundle")
                .sandbox(SandboxLevel::HostTools)
                .script(
                    r#"
                    mkdir -p $out/bin $out/share
                    cp $hello/bin/hello $out/bin/hello
                    cp $message $out/share/message.txt
                    $hello/bin/hello > $out/share/output.txt
                    "#,
                )
                .input("hello", hello)
                .input("message", message)
                .build()?,
        );
        g.root("hello", bundle);
        Ok(())
    })
}
