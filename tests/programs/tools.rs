//! A program whose builds use toolchains of the host's packages, for tests/toolchain.rs.
//!
//! - `with-tool` runs `$FORJAR_TEST_TOOL` (a package of that name provides the command) from
//!   the toolchain `tool` (that package and coreutils);
//! - `after-tool` takes `with-tool`'s output;
//! - `plain` writes a line with the toolchain `plain` (coreutils alone), and fails if it sees
//!   the host's compiler or the tool;
//! - `builtins` uses no toolchain.

use forjar::prelude::*;

fn main() -> forjar::ExitCode {
    forjar::main!(|g| {
        // `FORJAR_TEST_ARCHIVE=tzdata=VERSION`: that package from the Debian archive instead.
        if let Ok(pinned) = std::env::var("FORJAR_TEST_ARCHIVE") {
            let archive = Toolchain::from_archive("archive", [pinned.as_str()])?;
            let plain = Toolchain::from_host("plain", ["coreutils"])?;
            let version = g.add(
                Derivation::builder("from-archive")
                    .toolchain(&archive)
                    .script("IFS= read -r line < /usr/share/zoneinfo/tzdata.zi; printf '%s\\n' \"$line\" > $out")
                    .build()?,
            );
            let plain = g.add(
                Derivation::builder("plain")
                    .toolchain(&plain)
                    .script("echo plain | tr a-z A-Z > $out")
                    .build()?,
            );
            g.root("from-archive", version);
            g.root("plain", plain);
            return Ok(());
        }
        let package = std::env::var("FORJAR_TEST_TOOL").unwrap_or_else(|_| "make".into());
        let tool = Toolchain::from_host("tool", ["coreutils", package.as_str()])?;
        let plain = Toolchain::from_host("plain", ["coreutils"])?;
        let with_tool = g.add(
            Derivation::builder("with-tool")
                .toolchain(&tool)
                .env("tool", package.as_str())
                .script("mkdir -p $out && \"$tool\" > $out/said && cp /usr/bin/\"$tool\" $out/")
                .build()?,
        );
        let after = g.add(
            Derivation::builder("after-tool")
                .toolchain(&plain)
                .input("said", with_tool)
                .script("cat $said/said > $out")
                .build()?,
        );
        let plain = g.add(
            Derivation::builder("plain")
                .toolchain(&plain)
                .env("tool", package.as_str())
                // Nothing of the host beyond the toolchain: not its compiler, not the tool.
                .script(
                    "if [ -e /usr/bin/gcc ] || [ -e /usr/bin/$tool ]; then exit 1; fi\n\
                     echo plain | tr a-z A-Z > $out",
                )
                .build()?,
        );
        let builtins = g.add(
            Derivation::builder("builtins")
                .script("echo builtins > $out")
                .build()?,
        );
        for (name, drv) in [
            ("after-tool", after),
            ("plain", plain),
            ("builtins", builtins),
        ] {
            g.root(name, drv);
        }
        Ok(())
    })
}
