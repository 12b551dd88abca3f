//! Helpers shared by forjar's integration tests and examples.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `forjar` tool built for this test run (cargo builds it before integration tests).
pub fn forjar_tool() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/forjar
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .join("forjar")
}

/// Runs the `forjar` tool with `args` against `store`.
pub fn run_tool(store: &Path, args: &[&str]) -> Output {
    Command::new(forjar_tool())
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("the forjar tool runs")
}

/// Standard output as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
