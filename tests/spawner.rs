//! The process builds are forked from, and what a build leaves of its processes, alone in their
//! test process and one test at a time: killing the spawner while another test's build is
//! being handed to it would fail that build, and a build under way has processes of its own.

use std::fs;
use std::sync::{Mutex, MutexGuard};

use forjar::prelude::*;
use forjar_suite::{build_root, content_text, sandbox, temp_store};

/// Held by each test: they run one at a time.
static ALONE: Mutex<()> = Mutex::new(());

/// A hermetic derivation running `script`.
fn sh(name: &str, script: &str) -> forjar::DerivationBuilder {
    Derivation::builder(name).script(script)
}

/// This process's children: pid, name and state (the spawner is named after the thread that
/// forks it, and so is a supervisor forked from it).
fn children() -> Vec<(i32, String, String)> {
    let me = std::process::id().to_string();
    fs::read_dir("/proc")
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
            (field("PPid:")? == me).then_some(())?;
            Some((
                e.file_name().to_str()?.parse().ok()?,
                field("Name:")?,
                field("State:")?,
            ))
        })
        .collect()
}

/// This test's turn, and a store of its own; `None` where the kernel gives no sandbox.
fn alone() -> Option<(
    MutexGuard<'static, ()>,
    tempfile::TempDir,
    forjar::store::Store,
)> {
    let turn = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    if !sandbox() {
        return None;
    }
    let (dir, store) = temp_store();
    Some((turn, dir, store))
}

#[test]
fn a_spawner_that_was_killed_is_replaced_by_the_next_build() {
    let Some((_alone, _dir, store)) = alone() else {
        return;
    };
    build_root(&store, sh("first", "echo 1 > $out")).unwrap();
    let spawners: Vec<i32> = children()
        .into_iter()
        .filter(|(_, name, _)| name == "forjar-spawner")
        .map(|(pid, _, _)| pid)
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

/// The supervisor reports how the builder ended before it has exited, and the apply goes on
/// without waiting for it (its namespaces' teardown); it is reaped, and the build's cgroup
/// removed, before the apply returns.
#[test]
fn an_apply_returns_with_no_process_or_cgroup_of_its_builds_left() {
    let Some((_alone, _dir, store)) = alone() else {
        return;
    };
    let cgroups = || -> Vec<String> {
        let prefix = format!("forjar-{}-", std::process::id());
        [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/pids",
        ]
        .iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flat_map(|listing| listing.flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect()
    };
    for i in 0..3 {
        let entry = build_root(&store, sh(&format!("b{i}"), "echo $PPID > $out")).unwrap();
        assert_eq!(content_text(&store, &entry), "0\n");
        // Left: the spawner, which lives as long as this process, and nothing else.
        let left = children();
        assert!(
            left.len() == 1 && left[0].1 == "forjar-spawner" && !left[0].2.contains("zombie"),
            "after build {i}, this process has children other than its spawner: {left:?}"
        );
        assert_eq!(cgroups(), Vec::<String>::new(), "after build {i}");
    }
}
