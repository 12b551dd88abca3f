//! Compiles `hello.c` with the host's C compiler, writes a greeting in a hermetic build, and
//! bundles both with the output of running the program.
//!
//! ```text
//! cargo run --example hello -- plan
//! cargo run --example hello -- apply
//! ```

use forjar::prelude::*;

/// Compiles hello.c. It sees the host's /usr (and so its compiler): impure, and keyed by a
/// fingerprint of the host's toolchain.
#[derive(Derivation)]
#[forjar(sandbox = "host-tools")]
#[forjar(script = r#"
    mkdir -p $out/bin
    cc -O2 -DGREETING="\"$greeting\"" -o $out/bin/hello $src/hello.c
"#)]
struct Hello {
    #[forjar(input)]
    src: Source,
    #[forjar(env)]
    greeting: String,
}

/// Hermetic: nothing of the host but /bin/sh, so only shell builtins.
#[forjar::derivation]
fn message(g: &mut Graph, text: &str) -> Drv<Message> {
    r#"printf '%s, built in %s\n' "$text" "$PWD" > $out"#
}

/// The program, its message, and what it printed when run.
#[derive(Derivation)]
#[forjar(name = "hello-bundle", sandbox = "host-tools")]
#[forjar(script = r#"
    mkdir -p $out/bin $out/share
    cp $hello/bin/hello $out/bin/hello
    cp $message $out/share/message.txt
    $hello/bin/hello > $out/share/output.txt
"#)]
struct Bundle {
    #[forjar(input)]
    hello: Drv<Hello>,
    #[forjar(input)]
    message: Drv<Message>,
}

fn main() -> forjar::ExitCode {
    forjar::main(|g| {
        let src = Source::dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello/src"))?
            .named("hello-src")?;
        let hello = g.add(Hello {
            src,
            greeting: "hello".into(),
        });
        let message = message(g, "a hermetic greeting");
        let bundle = g.add(Bundle { hello, message });
        g.root("hello", bundle);
        Ok(())
    })
}
