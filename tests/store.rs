//! The store: roots, garbage collection, verification, damaged entries.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

use forjar::store::{EntryName, Problem, Recovered, RootTarget, Store};
use forjar_suite::{install_file, run_dag, stderr, temp_store, test_key};

/// Makes an entry's content writable again and overwrites it, as a careless tool might.
fn tamper(store: &Store, entry: &forjar::store::EntryName, contents: &[u8]) {
    let path = store.content_path(entry);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&path, contents).unwrap();
}

/// Entries `lib` and `app`, which refers to `lib`.
fn lib_and_app(store: &Store) -> (EntryName, EntryName) {
    let lib = install_file(store, "lib", test_key(1), b"library", vec![]);
    let app = install_file(store, "app", test_key(2), b"application", vec![lib.clone()]);
    (lib, app)
}

#[test]
fn gc_keeps_what_roots_reach_through_references_and_deletes_the_rest() {
    let (_dir, store) = temp_store();
    let (lib, app) = lib_and_app(&store);
    let old = install_file(&store, "old", test_key(3), b"old build!", vec![]);
    let old_dep = install_file(&store, "old-dep", test_key(4), b"x", vec![]);
    let older = install_file(&store, "older", test_key(5), b"yy", vec![old_dep.clone()]);
    store.add_root("app", &app).unwrap();

    let dry = store
        .gc(true, || panic!("nothing else holds the store"))
        .unwrap();
    let dead: Vec<_> = dry.dead.iter().map(|(e, _)| e.clone()).collect();
    let mut expected = vec![old.clone(), old_dep.clone(), older.clone()];
    expected.sort();
    assert_eq!(dead, expected);
    assert_eq!(dry.live, 2);
    let meta_bytes: u64 = [&old, &old_dep, &older]
        .iter()
        .map(|e| {
            fs::metadata(store.entry_path(e).join("meta.yaml"))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(
        dry.bytes,
        10 + 1 + 2 + meta_bytes,
        "content and meta.yaml of the dead entries"
    );
    assert_eq!(
        store.entries().unwrap().len(),
        5,
        "a dry run deletes nothing"
    );

    let report = store
        .gc(false, || panic!("nothing else holds the store"))
        .unwrap();
    assert_eq!(report.dead.len(), 3);
    assert_eq!(report.bytes, dry.bytes);
    let mut left = vec![lib, app];
    left.sort();
    assert_eq!(store.entries().unwrap(), left);
    assert!(
        fs::read_dir(store.dir().join(".tmp"))
            .unwrap()
            .next()
            .is_none(),
        "no garbage left in .tmp"
    );
    assert!(store.verify().unwrap().is_ok());
}

/// `gc` removes the build logs of the derivations whose entries it deleted, and those of
/// builds that failed, and keeps the logs of what stays; a dry run only counts them.
#[test]
fn gc_removes_the_logs_of_what_it_collected_and_of_failed_builds() {
    if !forjar_suite::sandbox() {
        return;
    }
    use forjar::prelude::*;
    let (_dir, store) = temp_store();
    let said = |name: &str| {
        Derivation::builder(name)
            .script(format!("echo {name} says; echo > $out"))
            .build()
            .unwrap()
    };
    let (plan, report) = forjar_suite::apply(&store, |g| {
        let kept = g.add(said("kept"));
        g.root("kept", kept);
        let gone = g.add(said("gone"));
        g.root("gone", gone);
    });
    report.unwrap();
    let entry = |root: &str| {
        let root = plan.roots().iter().find(|r| r.name == root).unwrap();
        plan.root_entry(root).unwrap()
    };
    let (kept, gone) = (entry("kept"), entry("gone"));
    store.remove_root("gone").unwrap();
    let (_, failed) = forjar_suite::apply(&store, |g| {
        let fails = Derivation::builder("fails")
            .script("echo fails says; exit 1")
            .build()
            .unwrap();
        let fails = g.add(fails);
        g.root("fails", fails);
    });
    assert!(failed.is_err());
    let logs = || -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(store.dir().join(".logs"))
            .unwrap()
            .map(|item| item.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(logs().len(), 3, "{:?}", logs());

    let dry = store.gc(true, || {}).unwrap();
    assert_eq!(dry.logs, 2);
    assert_eq!(logs().len(), 3, "a dry run removes nothing");
    let report = store.gc(false, || {}).unwrap();
    assert_eq!(report.dead.len(), 1, "{:?}", report.dead);
    assert_eq!(report.logs, 2);
    assert!(!store.contains(&gone));
    let left = logs();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(store.log(&kept).unwrap(), b"kept says\n");
    // Nothing more to remove.
    assert_eq!(store.gc(false, || {}).unwrap().logs, 0);
}

#[test]
fn a_closure_follows_an_entry_made_again_after_it_was_deleted() {
    let (_dir, store) = temp_store();
    let (lib, app) = lib_and_app(&store);
    let both = std::collections::BTreeSet::from([lib.clone(), app.clone()]);
    assert_eq!(store.closure([app.clone()]).unwrap(), both);
    store
        .delete(std::slice::from_ref(&app), false, || {
            panic!("nothing else holds the store")
        })
        .unwrap();
    // The same key built again by another process, this time without naming `lib`: the same
    // entry name.
    let other = Store::open(store.dir()).unwrap();
    let again = install_file(&other, "app", test_key(2), b"application", vec![]);
    assert_eq!(again, app);
    assert_eq!(
        store.closure([app.clone()]).unwrap(),
        std::collections::BTreeSet::from([app])
    );
}

#[test]
fn an_indirect_root_lives_as_long_as_its_link() {
    let (dir, store) = temp_store();
    let entry = install_file(&store, "result", test_key(7), b"out", vec![]);
    let link = dir.path().join("result");
    symlink(store.entry_path(&entry), &link).unwrap();
    store.add_indirect_root(&link).unwrap();

    let roots = store.roots().unwrap();
    assert_eq!(roots.len(), 1);
    assert!(roots[0].indirect);
    assert_eq!(roots[0].target, RootTarget::Entry(entry.clone()));
    assert!(
        store
            .gc(false, || panic!("nothing else holds the store"))
            .unwrap()
            .dead
            .is_empty()
    );

    fs::remove_file(&link).unwrap();
    let report = store
        .gc(false, || panic!("nothing else holds the store"))
        .unwrap();
    assert_eq!(report.dead.len(), 1);
    assert_eq!(report.dangling_roots, vec![roots[0].name.clone()]);
    assert!(
        store.roots().unwrap().is_empty(),
        "the dangling indirect root is removed"
    );
}

#[test]
fn roots_can_be_replaced_and_removed() {
    let (_dir, store) = temp_store();
    let one = install_file(&store, "one", test_key(1), b"1", vec![]);
    let two = install_file(&store, "two", test_key(2), b"2", vec![]);
    store.add_root("current", &one).unwrap();
    store.add_root("current", &two).unwrap();
    let roots = store.roots().unwrap();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].target, RootTarget::Entry(two));
    store.remove_root("current").unwrap();
    assert!(store.roots().unwrap().is_empty());
    assert!(
        store
            .add_root("a/b", &one)
            .unwrap_err()
            .to_string()
            .starts_with("invalid root name `a/b`")
    );
}

#[test]
fn gc_refuses_to_guess_when_a_live_entry_has_a_damaged_meta() {
    let (_dir, store) = temp_store();
    let entry = install_file(&store, "app", test_key(2), b"application", vec![]);
    let other = install_file(&store, "other", test_key(3), b"other", vec![]);
    store.add_root("app", &entry).unwrap();
    let meta = store.entry_path(&entry).join("meta.yaml");
    fs::set_permissions(store.entry_path(&entry), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&meta, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&meta, "schema: 1\nname: [\n").unwrap();
    let err = store
        .gc(false, || panic!("nothing else holds the store"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("`{}` is damaged: not YAML", meta.display())),
        "{err}"
    );
    assert!(store.contains(&other), "nothing is deleted");
}

#[test]
fn verify_names_every_entry_whose_content_changed() {
    let (_dir, store) = temp_store();
    let good = install_file(&store, "good", test_key(1), b"good", vec![]);
    let bad = install_file(&store, "bad", test_key(2), b"original", vec![]);
    assert!(store.verify().unwrap().is_ok());
    tamper(&store, &bad, b"tampered");

    let report = store.verify().unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(report.problems.len(), 1);
    let Problem::Mismatch {
        entry,
        recorded,
        actual,
    } = &report.problems[0]
    else {
        panic!("expected a mismatch, got {:?}", report.problems)
    };
    assert_eq!(entry, &bad);
    assert_eq!(*recorded, store.meta(&bad).unwrap().digest);
    assert_ne!(recorded, actual);
    assert!(
        report.problems[0]
            .to_string()
            .starts_with(&format!("{bad}: content does not match its digest"))
    );
    let _ = good;
}

#[test]
fn verify_reports_damaged_meta_missing_content_and_stray_files() {
    let (_dir, store) = temp_store();
    let damaged = install_file(&store, "damaged", test_key(1), b"x", vec![]);
    let unknown = install_file(&store, "unknown", test_key(2), b"x", vec![]);
    let hollow = install_file(&store, "hollow", test_key(3), b"x", vec![]);
    for entry in [&damaged, &unknown, &hollow] {
        fs::set_permissions(store.entry_path(entry), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let meta = |e: &forjar::store::EntryName| store.entry_path(e).join("meta.yaml");
    fs::remove_file(meta(&damaged)).unwrap();
    fs::write(meta(&damaged), "not: [valid").unwrap();
    let text = fs::read_to_string(meta(&unknown))
        .unwrap()
        .replace("schema: 1", "schema: 2");
    fs::remove_file(meta(&unknown)).unwrap();
    fs::write(meta(&unknown), text).unwrap();
    fs::remove_file(store.content_path(&hollow)).unwrap();
    fs::write(store.dir().join("stray.txt"), "?").unwrap();

    let report = store.verify().unwrap();
    let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{damaged}: `")) && l.contains("is damaged: not YAML"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{unknown}: `")) && l.contains("has schema version 2"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{hollow}: no content")))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("stray.txt: not a store entry"))
    );
}

#[test]
fn resolve_accepts_names_hash_prefixes_and_paths() {
    let (_dir, store) = temp_store();
    let entry = install_file(&store, "hello", test_key(9), b"hi", vec![]);
    install_file(&store, "hello-dev", test_key(10), b"hi", vec![]);
    assert_eq!(store.resolve(entry.as_str()).unwrap(), entry);
    assert_eq!(store.resolve("hello").unwrap(), entry);
    assert_eq!(store.resolve(&entry.hash()[..6]).unwrap(), entry);
    let inside = store.content_path(&entry);
    assert_eq!(store.resolve(inside.to_str().unwrap()).unwrap(), entry);
    assert_eq!(
        store.resolve("nothing").unwrap_err().to_string(),
        "no store entry matches `nothing`; `forjar store ls` lists the entries"
    );
}

#[test]
fn a_second_process_sees_entries_the_first_installed() {
    let (dir, store) = temp_store();
    let entry = install_file(&store, "shared", test_key(1), b"x", vec![]);
    let again = Store::open(dir.path().join("store")).unwrap();
    assert!(again.contains(&entry));
    assert_eq!(again.meta(&entry).unwrap(), store.meta(&entry).unwrap());
}

#[test]
fn gc_waits_for_other_handles_and_says_so() {
    let (dir, store) = temp_store();
    install_file(&store, "garbage", test_key(1), b"x", vec![]);
    let other = Store::open(dir.path().join("store")).unwrap();
    let waited = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let gc = s.spawn(|| {
            store.gc(false, || {
                waited.store(true, std::sync::atomic::Ordering::SeqCst)
            })
        });
        while !waited.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::yield_now();
        }
        assert!(
            other.entries().unwrap().len() == 1,
            "nothing is deleted while another handle is open"
        );
        drop(other);
        let report = gc.join().unwrap().unwrap();
        assert_eq!(report.dead.len(), 1);
    });
    assert!(store.entries().unwrap().is_empty());
}

#[test]
fn gc_with_a_bound_gives_up_deleting_nothing_and_keeps_its_own_hold_on_the_store() {
    let (dir, store) = temp_store();
    let entry = install_file(&store, "garbage", test_key(1), b"x", vec![]);
    let other = Store::open(dir.path().join("store")).unwrap();
    let second = std::time::Duration::from_secs(1);
    let collect = |store: &Store| store.gc_expiring(false, false, &|_| false, || {}, Some(second));
    let error = collect(&store).unwrap_err().to_string();
    assert!(
        error.contains("store.lock")
            && error.contains("other processes kept the store open for 1 s; nothing was deleted"),
        "{error}"
    );
    assert!(store.contains(&entry));
    // The handle that gave up holds the store again: another's bounded gc gives up too.
    drop(other);
    let third = Store::open(dir.path().join("store")).unwrap();
    assert!(
        collect(&third).is_err(),
        "the first handle still has the store open"
    );
    drop(third);
    let report = collect(&store).unwrap();
    assert_eq!(report.dead.len(), 1);
    assert!(!store.contains(&entry));
}

#[test]
fn verify_names_an_entry_whose_reference_is_gone() {
    let (_dir, store) = temp_store();
    let (lib, app) = lib_and_app(&store);
    assert!(store.verify().unwrap().is_ok());
    // Deleted behind the store's back, as a careless tool might.
    forjar::store::remove_tree(&store.entry_path(&lib)).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(
        report.problems,
        [Problem::MissingReferences {
            entry: app.clone(),
            missing: vec![lib.clone()],
        }]
    );
    assert!(
        report.problems[0].to_string().starts_with(&format!(
            "{app}: refers to `{lib}`, which the store no longer has"
        )),
        "{}",
        report.problems[0]
    );
}

/// The windows of entries not yet synced (`<store>/.pending`), by name.
fn windows(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.dir().join(".pending"))
        .map(|listing| {
            listing
                .map(|item| item.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The names of the markers in a window.
fn markers(store: &Store, window: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.dir().join(".pending").join(window))
        .unwrap()
        .map(|item| item.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Renames `window` as if it had been made in an earlier boot: what a crash and a restart leave.
fn rebooted(store_dir: &std::path::Path, window: &str) {
    let rest = window.split_once('.').unwrap().1;
    let pending = store_dir.join(".pending");
    fs::rename(
        pending.join(window),
        pending.join(format!("{}.{rest}", "0".repeat(32))),
    )
    .unwrap();
}

/// Empties `entry`'s content, as a crash does to bytes that never reached the disk.
fn lose_content(store_dir: &std::path::Path, entry: &EntryName) {
    let content = store_dir.join(entry.as_str()).join("content");
    fs::set_permissions(&content, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&content, b"").unwrap();
}

#[test]
fn installed_entries_are_marked_until_one_sync_makes_them_durable() {
    let (_dir, store) = temp_store();
    let (lib, app) = lib_and_app(&store);
    let open = windows(&store);
    assert_eq!(open.len(), 1, "{open:?}");
    let mut installed = vec![lib.to_string(), app.to_string()];
    installed.sort();
    assert_eq!(markers(&store, &open[0]), installed);
    store.sync().unwrap();
    assert!(windows(&store).is_empty());
    // The next install opens a new window; recording a generation syncs it first.
    let other = install_file(&store, "other", test_key(3), b"o", vec![]);
    assert_eq!(windows(&store).len(), 1);
    let roots = [("app".to_string(), app.clone())].into_iter().collect();
    store.profile("p").unwrap().record(roots).unwrap();
    assert!(windows(&store).is_empty());
    let _ = install_file(&store, "more", test_key(4), b"m", vec![]);
    store.add_root("other", &other).unwrap();
    assert!(windows(&store).is_empty());
}

#[test]
fn a_window_of_a_process_gone_in_this_boot_is_synced_and_removed_when_the_store_opens() {
    let (dir, store) = temp_store();
    let (lib, app) = lib_and_app(&store);
    // A second handle while the first lives: its window is locked, and left alone.
    let again = Store::open(dir.path().join("store")).unwrap();
    assert_eq!(again.recovered(), &Recovered::default());
    assert_eq!(windows(&store).len(), 1);
    drop(again);
    drop(store);
    let store = Store::open(dir.path().join("store")).unwrap();
    assert_eq!(store.recovered().synced, 1);
    assert_eq!(store.recovered().checked, 0);
    assert!(windows(&store).is_empty());
    assert!(store.contains(&lib) && store.contains(&app));
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn after_a_crash_the_entries_a_window_names_are_checked_and_those_that_lost_data_removed() {
    let (dir, store) = temp_store();
    // Synced before the crash: never checked, whatever happens to later windows.
    let old = install_file(&store, "old", test_key(5), b"old", vec![]);
    store.sync().unwrap();
    let (lib, app) = lib_and_app(&store);
    let user = install_file(&store, "user", test_key(7), b"user", vec![app.clone()]);
    let other = install_file(&store, "other", test_key(3), b"other", vec![old.clone()]);
    let unrecorded = install_file(&store, "unrecorded", test_key(6), b"u", vec![]);
    let window = windows(&store).remove(0);
    drop(store);

    // What a crash can leave: the window is of an earlier boot; `lib` lost its content's data
    // (`app` refers to it, and `user` to `app`); `unrecorded` lost its digest record's; a
    // realisation and a last-build record written in the window are empty.
    let store_dir = dir.path().join("store");
    rebooted(&store_dir, &window);
    lose_content(&store_dir, &lib);
    let record = store_dir.join(".digests").join(unrecorded.as_str());
    fs::remove_file(&record).unwrap();
    fs::write(&record, b"").unwrap();
    let realisation = store_dir.join(".realisations").join("a".repeat(32));
    fs::write(&realisation, b"").unwrap();
    let last_build = store_dir.join(".builds/lost.json");
    fs::write(&last_build, b"").unwrap();

    let store = Store::open(&store_dir).unwrap();
    let recovered = store.recovered();
    assert_eq!(recovered.checked, 1);
    assert_eq!(recovered.synced, 0);
    let mut removed = vec![lib.clone(), app.clone(), user.clone(), unrecorded.clone()];
    removed.sort();
    assert_eq!(recovered.removed, removed);
    for entry in &removed {
        assert!(!store.contains(entry), "{entry} was kept");
    }
    assert!(store.contains(&other) && store.contains(&old));
    assert!(!realisation.exists() && !last_build.exists());
    assert!(windows(&store).is_empty());
    assert!(
        store.verify().unwrap().is_ok(),
        "{:?}",
        store.verify().unwrap()
    );
    // Settled once: the next open finds nothing to do.
    drop(store);
    let store = Store::open(&store_dir).unwrap();
    assert_eq!(store.recovered(), &Recovered::default());
}

#[test]
fn a_program_says_what_it_checked_and_removed_after_a_crash() {
    let (dir, store) = temp_store();
    let lib = install_file(&store, "lib", test_key(1), b"library", vec![]);
    let window = windows(&store).remove(0);
    drop(store);
    let store_dir = dir.path().join("store");
    rebooted(&store_dir, &window);
    lose_content(&store_dir, &lib);
    let out = run_dag(&store_dir, &[("DAG_LAYERS", "1")], &["apply", "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the machine stopped before entries installed in the store were synced; checked \
             them: removed 1 that had lost data (`{lib}`)"
        )),
        "{err}"
    );
    let store = Store::open(&store_dir).unwrap();
    assert!(!store.contains(&lib));
    // The apply synced what it built, and left no window.
    assert!(windows(&store).is_empty());
}
