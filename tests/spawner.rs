//! The process builds are forked from, alone in its test process: killing it while another
//! test's build is being handed to it would fail that build.

use std::fs;

use forjar::prelude::*;
use forjar_suite::{build_root, content_text, sandbox, temp_store};

/// A hermetic derivation running `script`.
fn sh(name: &str, script: &str) -> forjar::DerivationBuilder {
    Derivation::builder(name).script(script)
}

#[test]
fn a_spawner_that_was_killed_is_replaced_by_the_next_build() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    build_root(&store, sh("first", "echo 1 > $out")).unwrap();
    // This process's spawner: its child named after the thread that forks it.
    let me = std::process::id().to_string();
    let spawners: Vec<i32> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let status = fs::read_to_string(e.path().join("status")).ok()?;
            let field = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim().to_string())
            };
            (field("PPid:")? == me && field("Name:")? == "forjar-spawner")
                .then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect();
    assert!(
        !spawners.is_empty(),
        "no spawner among this process's children"
    );
    for &pid in &spawners {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // Gone (a zombie until the next build reaps it): a build handed to a spawner in the
    // moment it dies fails, one that finds it gone goes to a new one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !spawners.iter().all(|pid| {
        fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |s| {
            s.lines()
                .any(|l| l.starts_with("State:") && l.contains("zombie"))
        })
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the spawner did not die"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let entry = build_root(&store, sh("second", "echo 2 > $out")).unwrap();
    assert_eq!(content_text(&store, &entry), "2\n");
}
