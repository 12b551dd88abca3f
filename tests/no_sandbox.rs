//! Where the kernel gives no sandbox, or none where forjar runs, forjar says why and builds
//! nothing.
//!
//! Each test runs a program inside a user namespace made for it: one whose
//! `max_user_namespaces` is 0, so that creating the build's namespaces fails as on a kernel
//! without unprivileged user namespaces; one whose `max_net_namespaces` is 0; one where a path
//! of `/proc` has a mount over it, as in a container.

use std::process::Command;

use forjar_suite::{example, stderr, store_entries};

/// Runs `program --store <store> apply` (the `dag` program with one layer) under `unshare
/// --user --map-root-user` with `unshare`'s further `options`, after `sh -c script` (which ends
/// in `exec "$@"`); checks that it failed (exit 1) and built nothing but what `imported` accepts
/// (what needs no sandbox), and returns what it said. `None` where the confinement cannot be
/// made, which fails the test under CI.
fn refused(
    options: &[&str],
    script: &str,
    program: &str,
    imported: impl Fn(&str) -> bool,
) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user"])
        .args(options)
        .args(["sh", "-c", script, "sh"])
        .arg(example(program))
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
        eprintln!("skipping: cannot confine the test: {err}");
        return None;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    let built: Vec<String> = store_entries(&store)
        .into_iter()
        .filter(|n| !imported(n))
        .collect();
    assert!(built.is_empty(), "something was built: {built:?}");
    Some(err)
}

/// `err` says the kernel gave no namespaces, and names `limit` as 0.
fn says_the_kernel_allows_none(err: &str, limit: &str) {
    let told = format!(
        "the kernel gives no sandbox here (cannot create the build's namespaces (unshare): ENOSPC: \
         No space left on device (the kernel allows none: {limit} = 0));"
    );
    assert!(err.contains(&told), "{err}");
}

#[test]
fn without_user_namespaces_apply_fails_clearly_and_builds_nothing() {
    let confine = "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\"";
    // What is imported (the source and the toolchain) needs no sandbox.
    let imported = |n: &str| n.ends_with("-hello-src") || n.ends_with("-cc");
    let Some(err) = refused(&[], confine, "hello", imported) else {
        return;
    };
    assert!(
        err.contains("error: cannot build `message` (examples/hello/main.rs:"),
        "{err}"
    );
    says_the_kernel_allows_none(&err, "user.max_user_namespaces");
    assert!(err.contains("forjar never builds unsandboxed"), "{err}");
}

/// Where a path of `/proc` has a mount over it, as in a container (whose runtime masks
/// `/proc/kcore`, `/proc/keys` and others), the kernel refuses the build its own `/proc`: apply
/// says that, and what to do, not that the kernel has no user namespaces.
#[test]
fn under_a_covered_proc_apply_says_where_to_run_and_builds_nothing() {
    let cover = "mount --bind /dev/null /proc/version && exec \"$@\"";
    let Some(err) = refused(&["--mount"], cover, "dag", |_| false) else {
        return;
    };
    assert!(
        err.contains("error: cannot build `n0-")
            && err.contains(
                "no sandbox can be made where forjar runs: the kernel refused the build its own \
                 /proc (cannot mount /proc: EPERM: Operation not permitted), as it does where a \
                 path of the host's /proc has a mount over it"
            )
            && err.contains("forjar never builds unsandboxed")
            && err.contains("systempaths=unconfined"),
        "{err}"
    );
    // Not the advice of a kernel without user namespaces.
    assert!(!err.contains("max_user_namespaces"), "{err}");
}

/// Where another of the kernel's limits on namespaces is 0 (here network namespaces), the
/// message names it, beside the advice on user namespaces.
#[test]
fn without_network_namespaces_apply_names_the_limit_and_builds_nothing() {
    let confine = "echo 0 > /proc/sys/user/max_net_namespaces && exec \"$@\"";
    let Some(err) = refused(&[], confine, "dag", |_| false) else {
        return;
    };
    says_the_kernel_allows_none(&err, "user.max_net_namespaces");
}
