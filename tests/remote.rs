//! The remote cache against a real BuildGrid, started on 127.0.0.1 by `remote/stack`: upload
//! and download, blobs gone or damaged on the server, the server down at the start and killed
//! during an apply. Every build is a real sandboxed build of `tests/programs/dag.rs`.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;

use forjar::remote::digest_file;
use forjar::store::{Store, remove_tree};
use forjar_suite::{
    PrivateStack, Watched, assert_ok, dag, fresh_salt, remote_stack, reported, run_dag, sandbox,
    stack_dir, stderr, stdout, store_digests,
};

fn verified(store: &Path) {
    let report = Store::open(store).unwrap().verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// Where BuildGrid's disk storage keeps the blob of a file's content.
fn blob_path(stack: &Path, file: &Path) -> PathBuf {
    let digest = digest_file(file).unwrap();
    stack
        .join("cas/cas/objects")
        .join(&digest.hash[..2])
        .join(&digest.hash[2..])
}

/// The content directory of the entry built for derivation `name`.
fn content_of(store: &Path, name: &str) -> PathBuf {
    let entry = fs::read_dir(store)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|e| e.ends_with(&format!("-{name}")))
        .unwrap_or_else(|| panic!("no entry for {name} in {}", store.display()));
    store.join(entry).join("content")
}

const SMALL: [(&str, &str); 2] = [("DAG_LAYERS", "2"), ("DAG_WIDTH", "3")];
const ALL: [&str; 7] = ["n0-0", "n0-1", "n0-2", "n1-0", "n1-1", "n1-2", "top"];

/// A store into which the small DAG was built, with a salt of its own, and uploaded.
struct Uploaded {
    _dir: tempfile::TempDir,
    store: PathBuf,
    salt: String,
}

impl Uploaded {
    fn new(test: &str, remote: &str) -> Uploaded {
        let dir = tempfile::tempdir().unwrap();
        let uploaded = Uploaded {
            store: dir.path().join("store"),
            salt: fresh_salt(test),
            _dir: dir,
        };
        let first = uploaded.apply(remote);
        assert_ok(&first);
        assert_eq!(reported(&first, "built"), ALL, "{}", stderr(&first));
        uploaded
    }

    fn env(&self) -> [(&str, &str); 3] {
        [SMALL[0], SMALL[1], ("DAG_SALT", self.salt.as_str())]
    }

    fn apply(&self, remote: &str) -> Output {
        run_dag(&self.store, &self.env(), &["apply", "--remote", remote])
    }

    /// Removes the store, so the next apply at the same path (same keys) starts empty.
    fn forget(&self) {
        remove_tree(&self.store).unwrap();
    }
}

#[test]
fn a_fresh_store_downloads_what_an_earlier_apply_uploaded() {
    if !sandbox() {
        return;
    }
    let remote = remote_stack();
    let uploaded = Uploaded::new("round-trip", remote);
    let (store, env) = (&uploaded.store, uploaded.env());
    let before = store_digests(store);
    uploaded.forget();

    let second = uploaded.apply(remote);
    assert_ok(&second);
    assert_eq!(reported(&second, "downloaded"), ALL, "{}", stderr(&second));
    assert!(reported(&second, "built").is_empty());
    assert!(
        stdout(&second).contains("downloaded 7"),
        "{}",
        stdout(&second)
    );
    assert!(!stderr(&second).contains("warning"), "{}", stderr(&second));
    assert_eq!(
        store_digests(store),
        before,
        "the same entries with the same tree digests"
    );
    verified(store);
    // The build logs came along: `log` prints what the build printed where it ran.
    let log = run_dag(store, &env, &["log", "n0-1"]);
    assert_ok(&log);
    assert_eq!(stdout(&log), "making n0-1\n");

    // The environment variable names the remote as well as the flag does.
    uploaded.forget();
    let third = dag(store, &env, &["apply"])
        .env("FORJAR_REMOTE", remote)
        .output()
        .unwrap();
    assert_ok(&third);
    assert_eq!(reported(&third, "downloaded"), ALL);
}

#[test]
fn push_uploads_what_was_built_without_a_remote() {
    if !sandbox() {
        return;
    }
    let remote = remote_stack();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let salt = fresh_salt("push");
    let env = [SMALL[0], SMALL[1], ("DAG_SALT", salt.as_str())];
    let local = run_dag(&store, &env, &["apply"]);
    assert_ok(&local);
    assert_eq!(reported(&local, "built"), ALL);
    let entries = Store::open(&store).unwrap().entries().unwrap();

    // `top` and what it refers to, then everything.
    let top = run_dag(&store, &env, &["push", "top", "--remote", remote]);
    assert_ok(&top);
    let all = run_dag(&store, &env, &["push", "--remote", remote]);
    assert_ok(&all);
    assert_eq!(
        stdout(&all),
        format!("pushed {} entries to {remote}\n", entries.len())
    );

    remove_tree(&store).unwrap();
    let fetched = run_dag(&store, &env, &["apply", "--remote", remote]);
    assert_ok(&fetched);
    assert_eq!(
        reported(&fetched, "downloaded"),
        ALL,
        "{}",
        stderr(&fetched)
    );
    verified(&store);

    let nothing = run_dag(&store, &env, &["push", "no-such-entry", "--remote", remote]);
    // A name that names no entry is a usage error.
    assert_eq!(nothing.status.code(), Some(2));
    assert!(
        stderr(&nothing).contains("no-such-entry"),
        "{}",
        stderr(&nothing)
    );
}

#[test]
fn an_entry_whose_blobs_are_gone_is_a_miss_and_is_built() {
    if !sandbox() {
        return;
    }
    let remote = remote_stack();
    let uploaded = Uploaded::new("gone", remote);
    let store = &uploaded.store;
    let blob = blob_path(&stack_dir(), &content_of(store, "n1-1").join("f1"));
    uploaded.forget();
    fs::remove_file(&blob).expect("BuildGrid keeps the blob where its disk storage says");

    let second = uploaded.apply(remote);
    assert_ok(&second);
    assert_eq!(reported(&second, "built"), ["n1-1"], "{}", stderr(&second));
    assert_eq!(reported(&second, "downloaded").len(), 6);
    assert!(
        !stderr(&second).contains("warning"),
        "a miss is not a problem"
    );
    verified(store);
}

#[test]
fn a_damaged_blob_is_detected_by_its_digest_and_not_installed() {
    if !sandbox() {
        return;
    }
    let remote = remote_stack();
    let uploaded = Uploaded::new("damaged", remote);
    let store = &uploaded.store;
    let file = content_of(store, "n0-2").join("f2");
    let blob = blob_path(&stack_dir(), &file);
    let mut damaged = fs::read(&file).unwrap();
    damaged[0] ^= 0x20;
    uploaded.forget();
    fs::write(&blob, &damaged).unwrap();

    let second = uploaded.apply(remote);
    assert_ok(&second);
    let log = stderr(&second);
    assert!(
        log.contains("warning: remote, for n0-2: blob") && log.contains("is damaged"),
        "{log}"
    );
    assert_eq!(reported(&second, "built"), ["n0-2"], "{log}");
    assert_eq!(reported(&second, "downloaded").len(), 6);
    let content = fs::read(content_of(store, "n0-2").join("f2")).unwrap();
    assert_ne!(
        content, damaged,
        "the damaged bytes are not what got installed"
    );
    verified(store);
    let staging: Vec<_> = fs::read_dir(store.join(".tmp")).unwrap().collect();
    assert!(staging.is_empty(), "the refused download left no staging");
}

#[test]
fn a_remote_that_is_down_at_the_start_is_an_error_or_with_fallback_a_warning() {
    if !sandbox() {
        return;
    }
    // A port nothing listens on: bound, then released.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("grpc://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let env = [SMALL[0], SMALL[1], ("DAG_SALT", "down")];

    // The same for a remote cache and for remote execution.
    for flag in ["--remote", "--remote-exec"] {
        let store = dir.path().join(flag.trim_start_matches('-'));
        let refused = run_dag(&store, &env, &["apply", flag, &address]);
        assert_eq!(refused.status.code(), Some(1), "{flag}");
        let message = stderr(&refused);
        assert!(
            message.contains(&format!("cannot reach the remote at {address}"))
                && message.contains("--remote-fallback"),
            "{flag}: {message}"
        );
        assert!(
            Store::open(&store).unwrap().entries().unwrap().is_empty(),
            "{flag}: nothing was built"
        );

        let fallback = run_dag(
            &store,
            &env,
            &["apply", flag, &address, "--remote-fallback"],
        );
        assert_ok(&fallback);
        assert!(
            stderr(&fallback).contains("warning: cannot reach the remote"),
            "{flag}: {}",
            stderr(&fallback)
        );
        assert_eq!(reported(&fallback, "built"), ALL, "{flag}");
    }
    let store = dir.path().join("store");

    let malformed = run_dag(&store, &env, &["apply", "--remote", "127.0.0.1:1"]);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(
        stderr(&malformed).contains("`127.0.0.1:1` is not a remote address"),
        "{}",
        stderr(&malformed)
    );
}

#[test]
fn a_remote_killed_during_an_apply_leaves_the_apply_to_finish_here() {
    if !sandbox() {
        return;
    }
    remote_stack(); // the shared venv is installed once
    let dir = tempfile::tempdir().unwrap();
    let [port, pg_port] = forjar_suite::free_ports::<2>();
    let (stack, address) = PrivateStack::start(&dir.path().join("stack"), port, pg_port, 0);
    let store = dir.path().join("store");
    let salt = fresh_salt("killed");
    let env = [
        ("DAG_LAYERS", "3"),
        ("DAG_WIDTH", "2"),
        ("DAG_SLEEP", "0.3"),
        ("DAG_SALT", salt.as_str()),
    ];
    let mut apply = Watched::spawn(dag(
        &store,
        &env,
        &["apply", "-j", "1", "--remote", &address],
    ));
    apply.until("built ");
    // The first build is done (and uploaded): the server dies with the rest to do.
    stack.kill_server();
    let (status, log) = apply.finish();
    assert!(status.success(), "{log}");
    assert!(log.contains("warning: remote, for"), "{log}");
    let built = log.lines().filter(|l| l.starts_with("built ")).count();
    assert_eq!(built, 7, "everything was built here: {log}");
    // One timeout, not one per build: the outage is reported once.
    assert_eq!(log.matches("warning: remote, for").count(), 1, "{log}");
    verified(&store);
}
