//! The pipeline and webapp examples, applied in the sandbox as a user runs them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use forjar_suite::{run_example, sandbox, stderr, stdout};

/// Applies example `name` on a fresh store and returns the store and the first root's path.
fn apply(name: &str, root: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = run_example(name, &store, &["apply"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{root} -> ")))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("apply names root {root}:\n{}", stdout(&out)));
    (dir, store, path)
}

#[test]
fn the_pipeline_makes_a_reproducible_tarball() {
    if !sandbox() {
        return;
    }
    let (_dir, store, release) = apply("pipeline", "greet-release");
    let tarball = release.join("greet-1.0.0.tar.gz");
    let listing = Command::new("tar")
        .arg("-tvzf")
        .arg(&tarball)
        .output()
        .unwrap();
    assert!(listing.status.success(), "{}", stderr(&listing));
    let listing = stdout(&listing);
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "greet-1.0.0/",
            "greet-1.0.0/bin/",
            "greet-1.0.0/bin/greet",
            "greet-1.0.0/share/",
            "greet-1.0.0/share/doc/",
            "greet-1.0.0/share/doc/greet/",
            "greet-1.0.0/share/doc/greet/README",
        ]
    );
    for line in listing.lines() {
        assert!(
            line.contains(" 0/0 ") && line.contains(" 1970-01-01 00:00 "),
            "owner and time are fixed: {line}"
        );
    }
    // The packaged program runs.
    let unpacked = tempfile::tempdir().unwrap();
    assert!(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(unpacked.path())
            .status()
            .unwrap()
            .success()
    );
    let run = Command::new(unpacked.path().join("greet-1.0.0/bin/greet"))
        .arg("forjar")
        .output()
        .unwrap();
    assert_eq!(stdout(&run), "greetings, forjar\n");
    let readme =
        fs::read_to_string(unpacked.path().join("greet-1.0.0/share/doc/greet/README")).unwrap();
    assert!(readme.starts_with("greet 1.0.0\n\n# greet\n"), "{readme}");

    let check = run_example(
        "pipeline",
        &store,
        &["check", "greet-tarball", "--rounds", "2"],
    );
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    let text = stdout(&check);
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("greet-tarball output `out` matches the store"))
            .count(),
        2,
        "{text}"
    );
}

#[test]
fn the_webapp_profile_holds_its_typed_config_and_systemd_unit() {
    if !sandbox() {
        return;
    }
    let (_dir, store, profile) = apply("webapp", "webapp");
    let config: toml::Table = fs::read_to_string(profile.join("etc/webapp/config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(config["listen"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(config["workers"].as_integer(), Some(4));
    assert_eq!(config["log_level"].as_str(), Some("info"));
    let upstreams = config["upstreams"].as_array().unwrap();
    assert_eq!(upstreams.len(), 2);
    assert_eq!(upstreams[0]["name"].as_str(), Some("api"));

    let unit = fs::read_to_string(profile.join("lib/systemd/system/webapp.service")).unwrap();
    assert!(unit.starts_with("[Unit]\nDescription=webapp, configured by forjar\n"));
    assert!(unit.contains("\nExecStart=/usr/bin/webapp --config /etc/webapp/config.toml\n"));
    assert!(unit.ends_with("[Install]\nWantedBy=multi-user.target\n"));
    assert!(is_read_only_file(&profile.join("etc/webapp/config.toml")));

    let again = run_example("webapp", &store, &["apply"]);
    assert!(stdout(&again).contains("Nothing to do: all 1 cached"));

    // The program's own option, before or after the command, chooses another configuration:
    // another key, and the same profile's next generation.
    let prod = run_example("webapp", &store, &["apply", "--env", "prod"]);
    assert!(prod.status.success(), "{}", stderr(&prod));
    assert!(
        stdout(&prod).contains("Recorded generation 2"),
        "{}",
        stdout(&prod)
    );
    let path = stdout(&prod)
        .lines()
        .find_map(|l| l.strip_prefix("webapp -> ").map(std::path::PathBuf::from))
        .unwrap();
    let config: toml::Table = fs::read_to_string(path.join("etc/webapp/config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(config["listen"].as_str(), Some("127.0.0.1:80"));
    assert_eq!(config["workers"].as_integer(), Some(16));
    assert_eq!(config["log_level"].as_str(), Some("warn"));
    let before = run_example("webapp", &store, &["--env", "prod", "apply"]);
    assert!(
        stdout(&before).contains("Nothing to do"),
        "{}",
        stdout(&before)
    );
    let bad = run_example("webapp", &store, &["--env", "staging", "plan"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("invalid value 'staging' for '--env <ENV>'"),
        "{}",
        stderr(&bad)
    );
    let help = run_example("webapp", &store, &["--help"]);
    assert!(stdout(&help).contains("--env <ENV>"), "{}", stdout(&help));
    // The program's own name, in its own help.
    assert!(
        stdout(&help).contains("`source <(webapp completions bash)`"),
        "{}",
        stdout(&help)
    );
    let completions = run_example("webapp", &store, &["completions", "bash"]);
    assert!(
        stdout(&completions).contains("--env"),
        "{}",
        stderr(&completions)
    );
}

fn is_read_only_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).unwrap();
    meta.is_file() && meta.permissions().mode() & 0o222 == 0
}
