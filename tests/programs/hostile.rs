//! One derivation `it`, run with the host's tools, whose script is `HOSTILE_SCRIPT`: what a
//! hostile build does, for tests/hostile.rs, run as a program of its own where the test needs
//! forjar in a process it set up (a terminal, a keyring).

use forjar::prelude::*;

fn main() -> forjar::ExitCode {
    let script = std::env::var("HOSTILE_SCRIPT").unwrap_or_default();
    forjar::main!(|g| {
        let it = g.add(
            Derivation::builder("it")
                .sandbox(SandboxLevel::HostTools)
                .script(script)
                .build()?,
        );
        g.root("it", it);
        Ok(())
    })
}
