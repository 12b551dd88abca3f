//! The `forjar` store tool: its output, its errors, its exit codes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use forjar::name::Name;
use forjar::store::{EntryName, Store};

fn forjar(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forjar"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A store with one imported source, `greeting`.
fn store_with_source(dir: &Path) -> (Store, EntryName) {
    let src = dir.join("greeting");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("hello.txt"), "hello\n").unwrap();
    let store = Store::open(dir.join("store")).unwrap();
    let entry = store
        .import_source(&src, &Name::new("greeting").unwrap())
        .unwrap()
        .entry;
    (store, entry)
}

#[test]
fn hash_path_prints_the_tree_digest() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), "x").unwrap();
    let out = forjar(
        &dir.path().join("unused"),
        &["hash", "path", dir.path().to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = forjar::hash::tree_digest(dir.path()).unwrap();
    assert_eq!(stdout(&out), format!("{expected}\n"));
    assert!(
        !dir.path().join("unused").exists(),
        "hashing needs no store"
    );
}

#[test]
fn hash_path_names_a_missing_path_and_a_special_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = forjar(dir.path(), &["hash", "path", "/nonexistent/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "error: `/nonexistent/x` does not exist\n");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = forjar(dir.path(), &["hash", "path", fifo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: `{}` is a FIFO; a tree may hold only regular files, directories and symlinks\n",
            fifo.display()
        )
    );
}

#[test]
fn a_directory_that_is_not_a_store_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let out = forjar(dir.path(), &["store", "ls"]);
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        "error: `{}` is not a forjar store: it is not empty",
        dir.path().display()
    );
    assert!(stderr(&out).starts_with(&expected), "{}", stderr(&out));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn ls_show_and_roots() {
    let dir = tempfile::tempdir().unwrap();
    let (store, entry) = store_with_source(dir.path());
    let out = forjar(store.dir(), &["store", "ls"]);
    assert_eq!(stdout(&out), format!("{entry}  source  6 B\n"));

    let out = forjar(store.dir(), &["store", "show", "greeting"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let head = format!(
        "path: {}\nschema: 1\nname: greeting\n",
        store.entry_path(&entry).display()
    );
    assert!(text.starts_with(&head), "{text}");
    assert!(text.contains(&format!("digest: {}", store.meta(&entry).unwrap().digest)));

    store.add_root("greeting", &entry).unwrap();
    let out = forjar(store.dir(), &["store", "roots"]);
    assert_eq!(stdout(&out), format!("greeting  {entry}\n"));
}

#[test]
fn log_of_a_source_says_why_there_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let (store, entry) = store_with_source(dir.path());
    let out = forjar(store.dir(), &["store", "log", entry.as_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("error: `{entry}` has no build log: it is a source, imported rather than built\n")
    );
}

#[test]
fn verify_exits_non_zero_naming_the_damaged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (store, entry) = store_with_source(dir.path());
    let out = forjar(store.dir(), &["store", "verify"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "verified 1 entry: all match\n");

    let file = store.content_path(&entry).join("hello.txt");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&file, "HELLO\n").unwrap();
    let out = forjar(store.dir(), &["store", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let head = format!("{entry}: content does not match its digest: the store records blake3:");
    assert!(text.starts_with(&head), "{text}");
    assert!(text.ends_with("verified 1 entry: 1 problem\n"), "{text}");

    // Content and meta.yaml rewritten together, as the entry's one-time owner could: the
    // store's own record, kept apart from the entry, still tells.
    let now = forjar::hash::tree_digest(&store.content_path(&entry)).unwrap();
    let meta = store.entry_path(&entry).join("meta.yaml");
    let recorded = store.meta(&entry).unwrap().digest;
    fs::set_permissions(store.entry_path(&entry), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&meta, fs::Permissions::from_mode(0o644)).unwrap();
    let text = fs::read_to_string(&meta).unwrap();
    fs::write(&meta, text.replace(&recorded.to_string(), &now.to_string())).unwrap();
    let out = forjar(store.dir(), &["store", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "{entry}: meta.yaml records {now}, but the store recorded {recorded} when it installed the entry"
        )),
        "{text}"
    );
}

#[test]
fn show_reports_a_damaged_or_unknown_meta_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let (store, entry) = store_with_source(dir.path());
    let meta = store.entry_path(&entry).join("meta.yaml");
    fs::set_permissions(store.entry_path(&entry), fs::Permissions::from_mode(0o755)).unwrap();
    let text = fs::read_to_string(&meta).unwrap();
    fs::remove_file(&meta).unwrap();
    fs::write(&meta, text.replace("schema: 1", "schema: 99")).unwrap();
    let out = forjar(store.dir(), &["store", "show", entry.as_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: `{}` has schema version 99, but this forjar reads version 1; use the forjar that wrote this \
             store, or a newer one\n",
            meta.display()
        )
    );

    fs::write(&meta, "\u{0}garbage: [").unwrap();
    let out = forjar(store.dir(), &["store", "show", entry.as_str()]);
    assert_eq!(out.status.code(), Some(1));
    let head = format!("error: `{}` is damaged: ", meta.display());
    assert!(stderr(&out).starts_with(&head), "{}", stderr(&out));
    let out = forjar(store.dir(), &["store", "ls"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with(&format!("{entry}  damaged (")));
}

#[test]
fn gc_dry_run_lists_entries_and_bytes_then_gc_deletes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (store, entry) = store_with_source(dir.path());
    let size = 6 + fs::metadata(store.entry_path(&entry).join("meta.yaml"))
        .unwrap()
        .len();
    let out = forjar(store.dir(), &["store", "gc", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("would delete {entry}  {size} B\n")),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(
            "would delete 1 entry, {size} B ({size} bytes); 0 live\n"
        )),
        "{text}"
    );
    assert!(store.contains(&entry));
    // `gc` waits for every other handle on the store to close.
    drop(store);
    let out = forjar(&dir.path().join("store"), &["store", "gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("deleted {entry}")));
    assert!(!dir.path().join("store").join(entry.as_str()).exists());
}

#[test]
fn a_bad_command_line_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = forjar(dir.path(), &["store", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unrecognized subcommand 'frobnicate'"));
}

#[test]
fn an_unknown_entry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_source(dir.path());
    let out = forjar(store.dir(), &["store", "show", "nope"]);
    // A name that names nothing is a usage error.
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: no store entry matches `nope`; `forjar store ls` lists the entries\n"
    );
}

#[test]
fn a_command_that_only_reads_a_store_never_creates_one() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("stroe");
    for args in [
        &["store", "ls"][..],
        &["store", "roots"],
        &["store", "verify"],
        &["store", "gc"],
        &["store", "show", "anything"],
    ] {
        let out = forjar(&typo, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr(&out),
            format!(
                "error: `{}` is not a forjar store: it does not exist; check `--store` and \
                 `$FORJAR_STORE` (`apply` makes a store)\n",
                typo.display()
            ),
            "{args:?}"
        );
        assert!(!typo.exists(), "{args:?} created the store");
    }
}
