//! Where the kernel gives no sandbox, or none where forjar runs, forjar says why and builds
//! nothing.
//!
//! Each test runs a program inside a user namespace made for it: one whose
//! `max_user_namespaces` is 0, so that creating the build's namespaces fails as on a kernel
//! without unprivileged user namespaces; one where a path of `/proc` has a mount over it, as in a
//! container.

use std::process::Command;

use forjar_suite::{example, stderr};

#[test]
fn without_user_namespaces_apply_fails_clearly_and_builds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let confine = "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\"";
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "sh", "-c", confine, "sh"])
        .arg(example("hello"))
        .arg("--store")
        .arg(&store)
        .arg("apply")
        .output()
        .expect("unshare (util-linux) runs");
    if !out.status.success() && stderr(&out).starts_with("unshare:") {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must be able to run this test: {}",
            stderr(&out)
        );
        eprintln!(
            "skipping: cannot make a user namespace to confine the test in: {}",
            stderr(&out)
        );
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("error: cannot build `message` (examples/hello/main.rs:"),
        "{err}"
    );
    assert!(
        err.contains(
            "the kernel gives no sandbox here (cannot create the build's namespaces (unshare):"
        ),
        "{err}"
    );
    assert!(err.contains("forjar never builds unsandboxed"), "{err}");
    let built: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        // What is imported (the source and the toolchain) needs no sandbox.
        .filter(|n| !n.starts_with('.') && !n.ends_with("-hello-src") && !n.ends_with("-cc"))
        .collect();
    assert!(built.is_empty(), "something was built: {built:?}");
}

/// Where a path of `/proc` has a mount over it, as in a container (whose runtime masks
/// `/proc/kcore`, `/proc/keys` and others), the kernel refuses the build its own `/proc`: apply
/// says that, and what to do, not that the kernel has no user namespaces.
#[test]
fn under_a_covered_proc_apply_says_where_to_run_and_builds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let cover = "mount --bind /dev/null /proc/version && exec \"$@\"";
    let out = Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            cover,
            "sh",
        ])
        .arg(example("dag"))
        .arg("--store")
        .arg(&store)
        .arg("apply")
        .env("DAG_LAYERS", "1")
        .current_dir(dir.path())
        .output()
        .expect("unshare (util-linux) runs");
    let err = stderr(&out);
    if !out.status.success() && (err.starts_with("unshare:") || err.starts_with("mount:")) {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must be able to run this test: {err}"
        );
        eprintln!("skipping: cannot cover a path of /proc to run the test under: {err}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: cannot build `n0-")
            && err.contains(
                "cannot set the build's sandbox up: cannot mount /proc: EPERM: Operation not \
                 permitted: a path of the host's /proc has a mount over it"
            )
            && err.contains("run forjar where /proc is whole")
            && err.contains("systempaths=unconfined"),
        "{err}"
    );
    assert!(!err.contains("the kernel gives no sandbox here"), "{err}");
    let built: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(built.is_empty(), "something was built: {built:?}");
}
