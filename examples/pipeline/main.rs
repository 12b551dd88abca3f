//! A multi-stage pipeline: source -> compiled program and documentation -> a reproducible
//! release tarball (sorted names, fixed times and owners, no gzip timestamp), which
//! `check greet-tarball --rounds 2` rebuilds and compares bit for bit. Every build is
//! hermetic: the compiler and the archivers come from two toolchains, each pinned in
//! `forjar.lock`, so that a new version of `tar` rebuilds the tarball and not the program.
//!
//! ```text
//! cargo run --example pipeline -- apply
//! cargo run --example pipeline -- check greet-tarball --rounds 2
//! ```

use forjar::prelude::*;

/// Compiles the program with the `cc` toolchain's compiler.
#[derive(Derivation)]
#[forjar(name = "greet")]
#[forjar(script = r#"
    mkdir -p $out/bin
    cc -O2 -o $out/bin/greet $src/greet.c
"#)]
struct Compile {
    #[forjar(input)]
    src: Source,
    #[forjar(toolchain)]
    cc: Toolchain,
}

/// The documentation, with the version stamped in. Hermetic: shell builtins only.
#[derive(Derivation)]
#[forjar(name = "greet-doc")]
#[forjar(script = r#"
    {
        printf 'greet %s\n\n' "$version"
        while IFS= read -r line; do printf '%s\n' "$line"; done < $src/README.md
    } > $out
"#)]
struct Docs {
    #[forjar(input)]
    src: Source,
    #[forjar(env)]
    version: String,
}

/// The release tarball: the same bytes on every build.
#[derive(Derivation)]
#[forjar(name = "greet-tarball")]
#[forjar(script = r#"
    pkg=greet-$version
    mkdir -p $pkg/bin $pkg/share/doc/greet $out
    cp $program/bin/greet $pkg/bin/greet
    cp $doc $pkg/share/doc/greet/README
    chmod -R u=rwX,go=rX $pkg
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu -cf - $pkg \
        | gzip -9 -n > $out/$pkg.tar.gz
"#)]
struct Tarball {
    #[forjar(input)]
    program: Drv<Compile>,
    #[forjar(input)]
    doc: Drv<Docs>,
    #[forjar(env)]
    version: String,
    #[forjar(toolchain)]
    archive: Toolchain,
}

fn main() -> forjar::ExitCode {
    forjar::main!(|g| {
        let src = Source::dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/pipeline/src"
        ))?
        .named("greet-src")?;
        let cc = Toolchain::from_host("cc", ["gcc", "libc6-dev", "coreutils"])?;
        let archive = Toolchain::from_host("greet-archive", ["tar", "gzip", "coreutils"])?;
        let version = "1.0.0".to_string();
        let program = g.add(Compile {
            src: src.clone(),
            cc,
        });
        let doc = g.add(Docs {
            src,
            version: version.clone(),
        });
        let tarball = g.add(Tarball {
            program,
            doc,
            version,
            archive,
        });
        g.root("greet-release", tarball);
        Ok(())
    })
}
