//! Where the kernel gives no sandbox, forjar says so and builds nothing.
//!
//! The program runs inside a user namespace whose `max_user_namespaces` is 0, so that creating
//! the build's namespaces fails as on a kernel without unprivileged user namespaces.

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
