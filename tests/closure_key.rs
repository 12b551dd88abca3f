//! The closure key: everything that can change an output changes it; nothing else does.

use std::time::Duration;

use forjar::DerivationBuilder;
use forjar::hash::Key;
use forjar::prelude::*;
use forjar::store::Store;
use forjar_suite::{key_of, temp_store};

const DIGEST: &str = "blake3:0000000000000000000000000000000000000000000000000000000000000001";

/// A source directory holding `a` and `b`.
struct Sources {
    _dir: tempfile::TempDir,
    a: Source,
    b: Source,
}

fn sources() -> Sources {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::fs::write(dir.path().join("a/file"), "a").unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    std::fs::write(dir.path().join("b/file"), "b").unwrap();
    let a = Source::dir(dir.path().join("a")).unwrap();
    let b = Source::dir(dir.path().join("b")).unwrap();
    Sources { _dir: dir, a, b }
}

fn base() -> DerivationBuilder {
    Derivation::builder("app")
        .script("cp -r ${one:-${two:-}} $out")
        .env("LANG", "C")
}

/// `base()` written as an explicit argv, without asking for `/bin/sh`.
fn argv() -> DerivationBuilder {
    Derivation::builder("app")
        .builder(["/bin/sh", "-euc", "cp -r ${one:-${two:-}} $out"])
        .env("LANG", "C")
}

fn key(store: &Store, builder: DerivationBuilder) -> Key {
    key_of(store, |g| g.add(builder.build().unwrap()))
}

#[test]
fn every_field_that_can_change_an_output_changes_the_key() {
    let (_dir, store) = temp_store();
    let s = sources();
    let reference = key(&store, base().input("one", &s.a));
    let variants: Vec<(&str, DerivationBuilder)> = vec![
        (
            "name",
            Derivation::builder("app2")
                .script("cp -r ${one:-${two:-}} $out")
                .env("LANG", "C")
                .input("one", &s.a),
        ),
        ("system", base().input("one", &s.a).system("aarch64-linux")),
        (
            "script",
            Derivation::builder("app")
                .script("cp -r $one $out ")
                .env("LANG", "C")
                .input("one", &s.a),
        ),
        (
            "env value",
            Derivation::builder("app")
                .script("cp -r ${one:-${two:-}} $out")
                .env("LANG", "C.UTF-8")
                .input("one", &s.a),
        ),
        (
            "env key",
            Derivation::builder("app")
                .script("cp -r ${one:-${two:-}} $out")
                .env("LC_ALL", "C")
                .input("one", &s.a),
        ),
        ("added env", base().input("one", &s.a).env("EXTRA", "")),
        (
            "outputs",
            base().input("one", &s.a).output("out").output("dev"),
        ),
        ("input content", base().input("one", &s.b)),
        ("input name", base().input("two", &s.a)),
        (
            "source name",
            base().input("one", s.a.clone().named("renamed").unwrap()),
        ),
        ("added input", base().input("one", &s.a).input("two", &s.b)),
        (
            "file contents",
            base().input("one", &s.a).file("config.json", "{}"),
        ),
        ("provide /bin/sh", argv().input("one", &s.a)),
        (
            "read-only path",
            base().input("one", &s.a).ro_path("/usr/share/zoneinfo"),
        ),
        (
            "minimum memory",
            base().input("one", &s.a).min_memory(1 << 30),
        ),
        (
            "sandbox level",
            base().input("one", &s.a).sandbox(SandboxLevel::HostTools),
        ),
        (
            "fixed output",
            base().input("one", &s.a).fixed_output(DIGEST),
        ),
    ];
    let mut seen = vec![reference];
    for (what, builder) in variants {
        let variant = key(&store, builder);
        assert!(
            !seen.contains(&variant),
            "changing the {what} did not give a new key"
        );
        seen.push(variant);
    }
    // The builder argv and the script differ only in `provide_bin_sh`, which is a constraint.
    let explicit = key(&store, argv().input("one", &s.a).provide_bin_sh(true));
    let script = key(
        &store,
        Derivation::builder("app")
            .script("cp -r ${one:-${two:-}} $out")
            .env("LANG", "C")
            .input("one", &s.a),
    );
    assert_eq!(
        explicit, script,
        "a script is exactly `/bin/sh -euc <script>` with /bin/sh provided"
    );
}

#[test]
fn file_paths_and_contents_are_both_keyed() {
    let (_dir, store) = temp_store();
    let a = key(&store, base().file("a.json", "{}"));
    let b = key(&store, base().file("b.json", "{}"));
    let c = key(&store, base().file("a.json", "[]"));
    assert_ne!(a, b);
    assert_ne!(a, c);
}

#[test]
fn the_store_directory_is_keyed() {
    let (_one, first) = temp_store();
    let (_two, second) = temp_store();
    assert_ne!(key(&first, base()), key(&second, base()));
}

#[test]
fn limits_do_not_change_the_key() {
    let (_dir, store) = temp_store();
    let reference = key(&store, base());
    let limited = base()
        .timeout(Duration::from_secs(5))
        .max_silent(Duration::from_secs(1))
        .memory_limit(1 << 20)
        .cpus(1)
        .max_output_size(1 << 10);
    assert_eq!(key(&store, limited), reference);
}

#[test]
fn the_order_env_vars_are_declared_in_does_not_change_the_key() {
    let (_dir, store) = temp_store();
    let one = key(
        &store,
        Derivation::builder("x")
            .script("true")
            .env("A", "1")
            .env("B", "2")
            .env("C", "3"),
    );
    let two = key(
        &store,
        Derivation::builder("x")
            .script("true")
            .env("C", "3")
            .env("A", "1")
            .env("B", "2"),
    );
    assert_eq!(one, two);
}

#[test]
fn the_order_inputs_are_declared_in_does_not_change_the_key_but_swapping_their_names_does() {
    let (_dir, store) = temp_store();
    let s = sources();
    let one = key(
        &store,
        Derivation::builder("x")
            .script("true")
            .input("first", &s.a)
            .input("second", &s.b),
    );
    let reordered = key(
        &store,
        Derivation::builder("x")
            .script("true")
            .input("second", &s.b)
            .input("first", &s.a),
    );
    let swapped = key(
        &store,
        Derivation::builder("x")
            .script("true")
            .input("first", &s.b)
            .input("second", &s.a),
    );
    assert_eq!(one, reordered);
    assert_ne!(one, swapped);
}

#[test]
fn a_change_deep_in_the_closure_changes_every_dependent_key() {
    let (_dir, store) = temp_store();
    let chain = |greeting: &'static str| {
        key_of(&store, move |g| {
            let leaf = g.add(
                Derivation::builder("leaf")
                    .script("echo $g > $out")
                    .env("g", greeting)
                    .build()
                    .unwrap(),
            );
            let mid = g.add(
                Derivation::builder("mid")
                    .script("cp $leaf $out")
                    .input("leaf", leaf)
                    .build()
                    .unwrap(),
            );
            g.add(
                Derivation::builder("top")
                    .script("cp $mid $out")
                    .input("mid", mid)
                    .build()
                    .unwrap(),
            )
        })
    };
    assert_ne!(chain("hello"), chain("hallo"));
    assert_eq!(chain("hello"), chain("hello"));
}

#[test]
fn a_fixed_output_derivation_is_keyed_by_its_digest_not_its_recipe() {
    let (_dir, store) = temp_store();
    let fetch = |url: &'static str, digest: &'static str| {
        key_of(&store, move |g| {
            let fetched = g.add(
                Derivation::builder("tarball")
                    .script(format!("fetch {url} > $out"))
                    .network(true)
                    .fixed_output(digest)
                    .build()
                    .unwrap(),
            );
            g.add(
                Derivation::builder("unpack")
                    .script("cp $src $out")
                    .input("src", fetched)
                    .build()
                    .unwrap(),
            )
        })
    };
    let other = "blake3:0000000000000000000000000000000000000000000000000000000000000002";
    assert_eq!(
        fetch("https://a.example/x.tar", DIGEST),
        fetch("https://b.example/x.tar", DIGEST)
    );
    assert_ne!(
        fetch("https://a.example/x.tar", DIGEST),
        fetch("https://a.example/x.tar", other)
    );
}

#[test]
fn keys_are_stable_across_runs() {
    // Planning the same graph twice, with the source digest cache warm the second time, gives
    // the same key.
    let (_dir, store) = temp_store();
    let s = sources();
    let first = key(&store, base().input("one", &s.a));
    let second = key(&store, base().input("one", &s.a));
    assert_eq!(first, second);
}
