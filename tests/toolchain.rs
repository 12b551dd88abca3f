//! Toolchains of the host's Debian packages: what a build's key depends on, and the lock file.
//!
//! The tests install and remove packages of their own on the host (built here with
//! `dpkg-deb`, named per run, removed at the end), so they need root; under CI they fail
//! without it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use forjar_suite::{example, sandbox, stderr, stdout};

/// Held by each test while it runs: one installs packages while the other asks apt what the
/// archive has, and apt's cache is rebuilt under a reader when packages change.
static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether this test can change the host's packages; under CI it must.
fn can_install_packages() -> bool {
    forjar_suite::as_root("installing test packages")
}

/// Packages this run made and installed; removed from the host when dropped.
struct Packages {
    dir: tempfile::TempDir,
    installed: Vec<String>,
}

impl Packages {
    fn new() -> Packages {
        Packages {
            dir: tempfile::tempdir().unwrap(),
            installed: Vec::new(),
        }
    }

    /// Builds package `name` at `version`, holding `/usr/bin/<name>`, a script that prints
    /// `<name> <version>`.
    fn make(&self, name: &str, version: &str) -> PathBuf {
        let root = self.dir.path().join(format!("{name}-{version}"));
        fs::create_dir_all(root.join("DEBIAN")).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(
            root.join("DEBIAN/control"),
            format!(
                "Package: {name}\nVersion: {version}\nArchitecture: all\n\
                 Maintainer: forjar tests <tests@forjar.invalid>\n\
                 Description: a package of forjar's toolchain tests\n"
            ),
        )
        .unwrap();
        let bin = root.join("usr/bin").join(name);
        fs::write(&bin, format!("#!/bin/sh\necho {name} {version}\n")).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let deb = self.dir.path().join(format!("{name}_{version}_all.deb"));
        let built = Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(&root)
            .arg(&deb)
            .output()
            .expect("dpkg-deb runs");
        assert!(built.status.success(), "{}", stderr(&built));
        deb
    }

    /// Installs (or upgrades to) the package file `deb` of package `name`.
    fn install(&mut self, name: &str, deb: &Path) {
        apt(&["install", deb.to_str().unwrap()]);
        if !self.installed.iter().any(|n| n == name) {
            self.installed.push(name.to_string());
        }
    }

    fn remove(&mut self, name: &str) {
        apt(&["remove", name]);
        self.installed.retain(|n| n != name);
    }
}

impl Drop for Packages {
    fn drop(&mut self) {
        for name in std::mem::take(&mut self.installed) {
            let _ = Command::new("apt-get")
                .args(["remove", "-y", "-q", "-o", "DPkg::Lock::Timeout=600", &name])
                .output();
        }
    }
}

/// `apt-get <args>`, waiting for dpkg's lock as long as other installs take.
fn apt(args: &[&str]) {
    let out = Command::new("apt-get")
        .args(["-y", "-q", "-o", "DPkg::Lock::Timeout=600"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("apt-get runs");
    assert!(
        out.status.success(),
        "apt-get {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// The `tools` program (tests/programs/tools.rs) with its tool package `tool`, a store and a
/// lock file in `dir`.
fn tools(dir: &Path, tool: &str, args: &[&str]) -> Output {
    Command::new(example("tools"))
        .arg("--store")
        .arg(dir.join("store"))
        .arg("--lock")
        .arg(dir.join("forjar.lock"))
        .args(args)
        .env("FORJAR_TEST_TOOL", tool)
        .output()
        .expect("the program runs")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    stdout(&out)
}

/// Each derivation's key, from `plan --json`.
fn keys(dir: &Path, tool: &str) -> BTreeMap<String, String> {
    keys_in(tools(dir, tool, &["plan", "--json"]))
}

/// Each derivation's key, from the output of `plan --json`.
fn keys_in(plan: Output) -> BTreeMap<String, String> {
    let json: serde_json::Value = serde_json::from_str(&ok(plan)).unwrap();
    json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "derivation")
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    before
        .iter()
        .filter(|(name, key)| after.get(*name) != Some(key))
        .map(|(name, _)| name.clone())
        .collect()
}

#[test]
fn keys_depend_on_the_packages_a_build_uses_and_on_nothing_else_installed() {
    if !can_install_packages() || !sandbox() {
        return;
    }
    let _apt = APT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let run = std::process::id();
    let tool = format!("forjar-test-{run}-tool");
    let unrelated = format!("forjar-test-{run}-unrelated");
    let mut packages = Packages::new();
    let tool_1 = packages.make(&tool, "1.0");
    let tool_2 = packages.make(&tool, "2.0");
    let other = packages.make(&unrelated, "1.0");
    packages.install(&tool, &tool_1);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    // No lock yet: a clear error naming the command.
    let out = tools(dir, &tool, &["plan"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("toolchain `plain` is not in the lock file")
            || stderr(&out).contains("toolchain `tool` is not in the lock file"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(" lock` to lock it"),
        "{}",
        stderr(&out)
    );

    let locked = ok(tools(dir, &tool, &["lock"]));
    assert!(locked.contains("locked tool: "), "{locked}");
    assert!(locked.contains("locked plain: "), "{locked}");
    let lock = fs::read_to_string(dir.join("forjar.lock")).unwrap();
    assert!(
        lock.contains(&format!("name = \"{tool}\"\nversion = \"1.0\"")),
        "{lock}"
    );
    let before = keys(dir, &tool);
    assert_eq!(before.len(), 4, "{before:?}");

    // The build runs the package's command from the toolchain, and sees nothing else of the
    // host: not even the host's own copy of what the toolchain lacks.
    let applied = ok(tools(dir, &tool, &["apply"]));
    assert_eq!(
        fs::read_to_string(root_path(&applied, "after-tool")).unwrap(),
        format!("{tool} 1.0\n"),
        "{applied}"
    );

    // An unrelated package, installed and removed: the lock stays current and no key moves.
    packages.install(&unrelated, &other);
    assert_eq!(
        keys(dir, &tool),
        before,
        "installing `{unrelated}` moved a key"
    );
    let relocked = ok(tools(dir, &tool, &["lock"]));
    assert!(relocked.contains("unchanged tool: "), "{relocked}");
    assert!(relocked.contains("unchanged plain: "), "{relocked}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(tools(dir, &tool, &["lock", "--json"]))).unwrap();
    let results: Vec<&str> = json["toolchains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["unchanged", "unchanged"], "{json}");
    packages.remove(&unrelated);
    assert_eq!(
        keys(dir, &tool),
        before,
        "removing `{unrelated}` moved a key"
    );

    // A new version of the tool: the lock is out of date until `lock` takes it, and then
    // exactly what uses the tool has a new key.
    packages.install(&tool, &tool_2);
    let out = tools(dir, &tool, &["plan"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "is out of date for toolchain `tool`: `{tool}` is 2.0 on the host, 1.0 in the lock"
        )),
        "{}",
        stderr(&out)
    );
    let relocked = ok(tools(dir, &tool, &["lock"]));
    assert!(
        relocked.contains("updated tool: ") && relocked.contains(&format!("~ {tool} 1.0 -> 2.0")),
        "{relocked}"
    );
    assert!(relocked.contains("unchanged plain: "), "{relocked}");
    let after = keys(dir, &tool);
    assert_eq!(changed(&before, &after), ["after-tool", "with-tool"]);
    let explained = ok(tools(dir, &tool, &["plan", "--explain"]));
    assert!(
        explained.contains("toolchain changed: ") && explained.contains("-tool -> "),
        "{explained}"
    );
    let applied = ok(tools(dir, &tool, &["apply"]));
    assert_eq!(
        fs::read_to_string(root_path(&applied, "after-tool")).unwrap(),
        format!("{tool} 2.0\n"),
        "{applied}"
    );
}

/// The path `apply` printed for root `name` (`name -> path`).
fn root_path(applied: &str, name: &str) -> PathBuf {
    applied
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} -> ")))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no root `{name}` in: {applied}"))
}

/// The versions of `package` apt's lists offer, newest first (`apt-cache madison`).
fn archive_versions(package: &str) -> Vec<String> {
    let out = Command::new("apt-cache")
        .args(["madison", package])
        .output()
        .expect("apt-cache runs");
    let mut versions: Vec<String> = stdout(&out)
        .lines()
        .filter_map(|l| l.split('|').nth(1).map(|v| v.trim().to_string()))
        .collect();
    versions.dedup();
    versions
}

/// The `tools` program with its archive toolchain pinned to `pinned` (`tzdata=VERSION`).
fn archive_tools(dir: &Path, store: &str, pinned: &str, args: &[&str]) -> Output {
    Command::new(example("tools"))
        .arg("--store")
        .arg(dir.join(store))
        .arg("--lock")
        .arg(dir.join("forjar.lock"))
        .args(args)
        .env("FORJAR_TEST_ARCHIVE", pinned)
        .output()
        .expect("the program runs")
}

#[test]
fn an_archive_toolchain_is_fetched_by_the_lock_and_a_new_pin_moves_only_its_builds() {
    if !sandbox() {
        return;
    }
    let _apt = APT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let versions = archive_versions("tzdata");
    if versions.len() < 2 {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "apt's lists offer one version of tzdata ({versions:?}); CI needs two (bookworm and its updates)"
        );
        eprintln!("skipping: apt's lists offer one version of tzdata");
        return;
    }
    let (old, new) = (&versions[versions.len() - 1], &versions[0]);
    let (old_pin, new_pin) = (format!("tzdata={old}"), format!("tzdata={new}"));
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let year = |version: &str| version.split('-').next().unwrap().to_string();

    let locked = ok(archive_tools(dir, "store", &old_pin, &["lock"]));
    assert!(locked.contains("locked archive: "), "{locked}");
    let lock = fs::read_to_string(dir.join("forjar.lock")).unwrap();
    assert!(lock.contains("source = \"archive\""), "{lock}");
    assert!(
        lock.contains(&format!("name = \"tzdata\"\nversion = \"{old}\"")),
        "{lock}"
    );
    assert!(lock.contains("url = \"http"), "{lock}");
    let applied = ok(archive_tools(dir, "store", &old_pin, &["apply"]));
    assert_eq!(
        fs::read_to_string(root_path(&applied, "from-archive")).unwrap(),
        format!("# version {}\n", year(old))
    );

    // A fresh store fetches the same files by the lock's URLs and digests, and builds the same.
    let again = ok(archive_tools(dir, "second-store", &old_pin, &["apply"]));
    assert!(again.contains("Built 2, imported 2, 0 cached"), "{again}");

    // A .deb that is not what the lock names is refused before it is unpacked.
    let digest_line = lock
        .lines()
        .skip_while(|l| *l != "name = \"tzdata\"")
        .find(|l| l.starts_with("digest = \"sha256:"))
        .unwrap()
        .to_string();
    let tampered = lock.replace(
        &digest_line,
        &format!("digest = \"sha256:{}\"", "0".repeat(64)),
    );
    fs::write(dir.join("forjar.lock"), tampered).unwrap();
    let out = archive_tools(dir, "third-store", &old_pin, &["apply"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused a download that is not what the archive's index names"),
        "{}",
        stderr(&out)
    );
    fs::write(dir.join("forjar.lock"), &lock).unwrap();

    // Another pin: the lock is out of date until `lock`; then only the build that uses the
    // archive toolchain has a new key.
    let before = archive_keys(dir, &old_pin);
    let out = archive_tools(dir, "store", &new_pin, &["plan"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is out of date for toolchain `archive`: the program asks for"),
        "{}",
        stderr(&out)
    );
    let relocked = ok(archive_tools(dir, "store", &new_pin, &["lock"]));
    assert!(
        relocked.contains(&format!("~ tzdata {old} -> {new}")),
        "{relocked}"
    );
    assert!(relocked.contains("unchanged plain: "), "{relocked}");
    let after = archive_keys(dir, &new_pin);
    assert_eq!(changed(&before, &after), ["from-archive"]);
    let applied = ok(archive_tools(dir, "store", &new_pin, &["apply"]));
    assert_eq!(
        fs::read_to_string(root_path(&applied, "from-archive")).unwrap(),
        format!("# version {}\n", year(new))
    );
}

fn archive_keys(dir: &Path, pinned: &str) -> BTreeMap<String, String> {
    keys_in(archive_tools(dir, "store", pinned, &["plan", "--json"]))
}
