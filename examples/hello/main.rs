//! Compiles `hello.c` with a C compiler taken into the store from the host's installed Debian
//! packages, writes a greeting with shell builtins alone, and bundles both with the output of
//! running the program. Every build is hermetic; the toolchain is pinned in `forjar.lock`
//! (`cargo run --example hello -- lock` updates it).
//!
//! ```text
//! cargo run --example hello -- plan
//! cargo run --example hello -- apply
//! ```

use forjar::prelude::*;

/// Compiles hello.c with the toolchain's `cc`: the build sees the toolchain as its `/usr`, and
/// nothing else of the host.
#[derive(Derivation)]
#[forjar(script = r#"
    mkdir -p $out/bin
    cc -O2 -DGREETING="\"$greeting\"" -o $out/bin/hello $src/hello.c
"#)]
struct Hello {
    #[forjar(input)]
    src: Source,
    #[forjar(env)]
    greeting: String,
    #[forjar(toolchain)]
    tools: Toolchain,
}

/// Hermetic: nothing of the host but /bin/sh, so only shell builtins.
#[forjar::derivation]
fn message(g: &mut Graph, text: &str) -> Drv<Message> {
    r#"printf '%s, built in %s\n' "$text" "$PWD" > $out"#
}

/// The program, its message, and what it printed when run.
#[derive(Derivation)]
#[forjar(name = "hello-bundle")]
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
    #[forjar(toolchain)]
    tools: Toolchain,
}

fn main() -> forjar::ExitCode {
    forjar::main!(|g| {
        let src = Source::dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello/src"))?
            .named("hello-src")?;
        // The host's C compiler and coreutils, with what they depend on.
        let tools = Toolchain::from_host("cc", ["gcc", "libc6-dev", "coreutils"])?;
        let hello = g.add(Hello {
            src,
            greeting: "hello".into(),
            tools: tools.clone(),
        });
        let message = message(g, "a hermetic greeting");
        let bundle = g.add(Bundle {
            hello,
            message,
            tools,
        });
        g.root("hello", bundle);
        Ok(())
    })
}
