//! A hostile build, run for real: what it tries against the user's terminal, forjar's keyring,
//! the host's files (with an accomplice on the host), the store, and the limits of what forjar
//! reads on its behalf. Each test is the attack; each assertion is what must hold.
//!
//! The fixed-output attacks hand descriptors to a host process over an abstract unix socket,
//! which fixed-output builds reach because they share the host's network namespace. The
//! accomplice (tests/programs/accomplice.rs) runs as the build user's host id, as a process of
//! that user would.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use forjar::DerivationBuilder;
use forjar::prelude::*;
use forjar::store::Store;
use forjar_suite::{
    OnTerminal, Watched, build_root, content_text, digest_of, example, fresh_salt, sandbox, stderr,
    temp_store,
};

/// A derivation running `script` with the host's tools and the accomplice program as `$tool`.
fn hostile(name: &str, script: &str) -> DerivationBuilder {
    Derivation::builder(name)
        .sandbox(SandboxLevel::HostTools)
        .input("tool", Source::file(example("accomplice")).unwrap())
        .script(script)
}

/// Nothing is left in the store's staging once every process is done with it.
fn assert_no_staging(store: &Store) {
    let reopened = Store::open(store.dir()).unwrap();
    let left: Vec<_> = fs::read_dir(reopened.dir().join(".tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

/// The accomplice on the host, listening on `socket`.
struct Accomplice(Child);

impl Accomplice {
    /// As the build user's host id, as a process of that user would be.
    fn start(args: &[&str]) -> Accomplice {
        Self::start_as(forjar::sandbox::host_ids(), args)
    }

    fn start_as((uid, gid): (u32, u32), args: &[&str]) -> Accomplice {
        let mut child = Command::new(example("accomplice"))
            .args(args)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "listening\n");
        Accomplice(child)
    }

    /// Tells it to go on.
    fn go(&mut self) {
        use std::io::Write;
        self.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }

    /// What it reported last.
    fn finish(mut self) -> String {
        let mut rest = String::new();
        self.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut rest)
            .unwrap();
        assert!(self.0.wait().unwrap().success(), "{rest}");
        rest
    }
}

impl Drop for Accomplice {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------- the user's terminal

/// Runs the `hostile` program's apply with `script` against `store`, on a new terminal of its
/// own (its controlling terminal, as a user's shell gives it). Returns what the terminal
/// showed and the program's exit status.
fn apply_on_a_terminal(store: &Path, script: &str) -> (String, bool) {
    let mut command = Command::new(example("hostile"));
    command
        .arg("--store")
        .arg(store)
        .arg("apply")
        .env("HOSTILE_SCRIPT", script);
    let (shown, status) = OnTerminal::spawn(command).finish();
    (shown, status.success())
}

#[test]
fn a_build_cannot_reach_the_users_terminal() {
    if !sandbox() {
        return;
    }
    let (dir, _store) = temp_store();
    let store = dir.path().join("store");
    let salt = fresh_salt("terminal");
    let script = format!(
        r#"
        : {salt}
        if (echo TTY-REACHED-BY-THE-BUILD > /dev/tty) 2>/dev/null; then t=opened; else t=refused; fi
        echo "$t tty_nr=$(cut -d' ' -f7 /proc/self/stat)" > $out
        "#
    );
    let (shown, ok) = apply_on_a_terminal(&store, &script);
    assert!(ok, "{shown}");
    assert!(!shown.contains("TTY-REACHED"), "{shown}");
    let store = Store::open(&store).unwrap();
    let entry = store.resolve("it").unwrap();
    assert_eq!(content_text(&store, &entry), "refused tty_nr=0\n");
}

// ---------------------------------------------------------------- forjar's keyring

#[cfg(target_arch = "x86_64")]
#[test]
fn a_build_cannot_read_or_plant_keys_in_forjars_keyring() {
    if !sandbox() {
        return;
    }
    let (dir, _store) = temp_store();
    let store = dir.path().join("store");
    let salt = fresh_salt("keyring");
    let probe = format!("forjar-probe-{}", std::process::id());
    let script = format!(
        r#"
        : {salt}
        {{
          echo "visible $(grep -c {probe} /proc/keys || true)"
          perl -e 'my ($t, $d, $p) = ("user", "{probe}", "x");
                   my $r = syscall(250, 0, -3, 0); print "keyctl $r ", $!+0, "\n";
                   $r = syscall(248, $t, $d, $p, 1, -3); print "add_key $r ", $!+0, "\n";
                   $r = syscall(249, $t, $d, 0, 0); print "request_key $r ", $!+0, "\n"'
        }} > $out
        "#
    );
    let mut command = Command::new(example("hostile"));
    command
        .arg("--store")
        .arg(&store)
        .arg("apply")
        .env("HOSTILE_SCRIPT", &script);
    let description = std::ffi::CString::new(probe.clone()).unwrap();
    // SAFETY: only system calls between fork and exec: a session keyring of forjar's own,
    // holding a secret.
    unsafe {
        command.pre_exec(move || {
            let join = nix::libc::syscall(nix::libc::SYS_keyctl, 1, c"forjar-test".as_ptr());
            let key = nix::libc::syscall(
                nix::libc::SYS_add_key,
                c"user".as_ptr(),
                description.as_ptr(),
                c"s3cret".as_ptr(),
                6,
                -3,
            );
            if join < 0 || key < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let store = Store::open(&store).unwrap();
    let entry = store.resolve("it").unwrap();
    // ENOSYS (38) for every keyring call, and no key of forjar's in sight.
    assert_eq!(
        content_text(&store, &entry),
        "visible 0\nkeyctl -1 38\nadd_key -1 38\nrequest_key -1 38\n"
    );
}

// ---------------------------------------------------------------- an accomplice on the host

#[test]
fn a_descriptor_kept_by_an_accomplice_cannot_rewrite_the_installed_entry() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let socket = fresh_salt("hold");
    let contents = format!("{socket}\n");
    let mut accomplice = Accomplice::start(&["hold", &socket]);
    let script = format!("printf '%s\\n' {socket} > $out\n$tool send {socket} $out\n");
    let entry = build_root(
        &store,
        hostile("fetch", &script)
            .network(true)
            .fixed_output(digest_of(&contents)),
    )
    .unwrap();
    accomplice.go();
    let said = accomplice.finish();
    // It wrote through its descriptor, into a file the store no longer has.
    assert_eq!(said, "wrote\n");
    assert_eq!(content_text(&store, &entry), contents);
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn symlinks_swapped_into_an_output_never_lead_forjar_to_host_files() {
    if !sandbox() {
        return;
    }
    let (dir, store) = temp_store();
    // A host directory of private files, named as the files the build makes: whatever path
    // forjar resolved through the accomplice's symlink would land on one of them.
    let host = dir.path().join("host");
    fs::create_dir(&host).unwrap();
    let names: Vec<String> = (1..=300)
        .map(|i| format!("f{i}"))
        .chain(["secret".to_string()])
        .collect();
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    for name in &names {
        let path = host.join(name);
        fs::write(&path, "the host's secret\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    let socket = fresh_salt("swap");
    // The accomplice runs as this test's own user, so that forjar taking the output back from
    // the build user does not stop it: what is tested is that none of forjar's own operations
    // follows what it swaps in.
    let me = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let accomplice = Accomplice::start_as(me, &["swap", &socket, host.to_str().unwrap(), "3"]);
    let script = format!(
        "mkdir -p $out/d\ncd $out/d\nfor f in {}; do echo mine > $f; done\n$tool send {socket} $out\nsleep 0.1\n",
        names.join(" ")
    );
    // The digest cannot match what the accomplice leaves; whether the build fails or not,
    // nothing outside the tree may change.
    let result = build_root(
        &store,
        hostile("fetch", &script)
            .network(true)
            .fixed_output(digest_of("anything")),
    );
    let said = accomplice.finish();
    assert!(said.contains("swapped "), "{said}");
    for name in &names {
        let path = host.join(name);
        let after = fs::metadata(&path).unwrap();
        assert_eq!(
            after.mode() & 0o7777,
            0o600,
            "{}: {result:?}",
            path.display()
        );
        assert_eq!((after.uid(), after.gid()), me, "{}", path.display());
        assert_eq!(after.modified().unwrap(), when, "{}", path.display());
    }
    // Nothing of the host's files reached the store.
    for entry in store.entries().unwrap() {
        let meta = store.meta(&entry).unwrap();
        assert_ne!(meta.name, "fetch", "{result:?}");
    }
    assert_no_staging(&store);
}

// ---------------------------------------------------------------- deep trees

#[test]
fn a_tree_deeper_than_any_path_is_stored_verified_and_collected_and_leaves_nothing() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let salt = fresh_salt("deep");
    let deep = format!(": {salt}\nmkdir $out\n$tool deep $out 20000\necho done > $out/top\n");
    let entry = build_root(&store, hostile("deep", &deep)).unwrap();
    assert_eq!(
        fs::read_to_string(store.content_path(&entry).join("top")).unwrap(),
        "done\n"
    );
    assert!(store.verify().unwrap().is_ok());

    // A failed build that leaves a deep tree in /build and in its output.
    let failing =
        format!(": {salt}\n$tool deep /build 20000\nmkdir $out\n$tool deep $out 20000\nexit 1\n");
    let err = build_root(&store, hostile("deep-fail", &failing)).unwrap_err();
    assert!(err.contains("exited with status 1"), "{err}");
    assert_no_staging(&store);

    // The deep entry is collected like any other, and the store stays usable.
    store.remove_root("it").unwrap();
    let report = store.gc(false, || {}).unwrap();
    assert!(report.dead.iter().any(|(e, _)| *e == entry), "{report:?}");
    assert!(!store.contains(&entry));
    assert!(store.verify().unwrap().is_ok());
    assert_no_staging(&store);
}

// ---------------------------------------------------------------- ownership

#[test]
fn entries_belong_to_the_store_owner_and_not_the_build_user() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let salt = fresh_salt("owner");
    let script = format!(": {salt}\nmkdir -p $out/sub\necho x > $out/sub/f\nln -s f $out/sub/l\n");
    let entry = build_root(&store, hostile("owned", &script)).unwrap();
    let owner = fs::metadata(store.dir()).unwrap();
    let entry_dir = store.entry_path(&entry);
    for path in [
        entry_dir.clone(),
        entry_dir.join("meta.yaml"),
        entry_dir.join("content"),
        entry_dir.join("content/sub"),
        entry_dir.join("content/sub/f"),
        entry_dir.join("content/sub/l"),
    ] {
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (owner.uid(), owner.gid()),
            "{}",
            path.display()
        );
    }
}

// ---------------------------------------------------------------- the terminal, through the log

#[test]
fn escape_sequences_from_a_build_are_shown_not_sent() {
    if !sandbox() {
        return;
    }
    let (dir, _store) = temp_store();
    let store = dir.path().join("store");
    let salt = fresh_salt("escapes");
    let script = format!(
        ": {salt}\nprintf 'clip\\033]52;c;cHduZWQ=\\007 title\\033]2;owned\\007 clear\\033[2J\\n'\nexit 3\n"
    );
    for verbose in [false, true] {
        let mut command = Command::new(example("hostile"));
        command
            .arg("--store")
            .arg(&store)
            .args(if verbose { &["-v"][..] } else { &[][..] })
            .arg("apply")
            .env("HOSTILE_SCRIPT", &script);
        let out = command.output().unwrap();
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            !out.stderr.iter().any(|&b| b == 0x1b || b == 0x07),
            "raw control bytes reached the terminal: {err:?}"
        );
        assert!(err.contains("clip\\x1b]52;c;cHduZWQ=\\x07 title"), "{err}");
    }
}

// ---------------------------------------------------------------- system calls

#[cfg(target_arch = "x86_64")]
#[test]
fn io_uring_and_openat2_are_refused() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let salt = fresh_salt("calls");
    let script = format!(
        r#": {salt}
        perl -e 'my ($params, $path, $how) = ("\0" x 120, "/etc/hosts", "\0" x 24);
                 my $r = syscall(425, 8, $params); print "io_uring_setup $r ", $!+0, "\n";
                 $r = syscall(437, -100, $path, $how, 24); print "openat2 $r ", $!+0, "\n"' > $out
        "#
    );
    let entry = build_root(&store, hostile("calls", &script)).unwrap();
    assert_eq!(
        content_text(&store, &entry),
        "io_uring_setup -1 38\nopenat2 -1 38\n"
    );
}

#[test]
fn a_build_cannot_push_input_into_a_terminal() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let salt = fresh_salt("inject");
    // Standard input is /dev/null in a build (ENOTTY without the filter) and the user's
    // terminal in `enter`; the filter refuses the request whatever the descriptor.
    let entry = build_root(
        &store,
        hostile("inject", &format!(": {salt}\n$tool inject > $out")),
    )
    .unwrap();
    assert_eq!(
        content_text(&store, &entry),
        "inject: Operation not permitted (os error 1)\n"
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn setuid_and_setgid_files_cannot_be_created() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let salt = fresh_salt("setuid");
    // open, openat (perl's sysopen), O_TMPFILE, creat and mknod, each asking for the bits.
    let script = format!(
        r#": {salt}
        perl -e 'use Fcntl;
          for my $m (04755, 02755) {{
            my $ok = sysopen(my $f, "/build/s$m", O_CREAT|O_WRONLY, $m);
            print "sysopen $m ", ($ok ? "made" : $!+0), "\n";
          }}
          my ($o, $b, $c, $m, $p) = ("/build/o", "/build", "/build/c", "/build/m", "/build/plain");
          my $r = syscall(2, $o, 0100|01, 04755); print "open ", ($r < 0 ? $!+0 : "made"), "\n";
          $r = syscall(257, -100, $b, 020000000|0200000|02, 04755); print "tmpfile ", ($r < 0 ? $!+0 : "made"), "\n";
          $r = syscall(85, $c, 04755); print "creat ", ($r < 0 ? $!+0 : "made"), "\n";
          $r = syscall(133, $m, 0100000|06755, 0); print "mknod ", ($r < 0 ? $!+0 : "made"), "\n";
          $r = syscall(257, -100, $p, 0100|01, 0644); print "plain ", ($r < 0 ? $!+0 : "made"), "\n";
        ' > $out
        "#
    );
    let entry = build_root(&store, hostile("setuid", &script)).unwrap();
    assert_eq!(
        content_text(&store, &entry),
        "sysopen 2541 1\nsysopen 1517 1\nopen 1\ntmpfile 1\ncreat 1\nmknod 1\nplain made\n"
    );
}

// ---------------------------------------------------------------- bounds

#[test]
fn a_huge_sparse_output_is_stopped_by_the_default_bound() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let salt = fresh_salt("sparse");
    let script = format!(": {salt}\ntruncate -s 1T $out\n");
    let err = build_root(&store, hostile("sparse", &script)).unwrap_err();
    assert!(err.contains("build of `sparse`"), "{err}");
    assert!(
        err.contains("File too large") || err.contains("SIGXFSZ") || err.contains("153"),
        "{err}"
    );
    assert_no_staging(&store);
}

#[test]
fn a_signal_while_a_large_output_is_read_stops_forjar_and_installs_nothing() {
    if !sandbox() {
        return;
    }
    let (dir, _store) = temp_store();
    let store = dir.path().join("store");
    let salt = fresh_salt("interrupt");
    // 24 GiB of holes: seconds of reading and hashing, within the default bound.
    let script = format!(": {salt}\ntruncate -s 24G $out\necho ready\n");
    let mut command = Command::new(example("hostile"));
    command
        .arg("--store")
        .arg(&store)
        .args(["-v", "apply"])
        .env("HOSTILE_SCRIPT", &script);
    let mut watched = Watched::spawn(command);
    watched.until("it> ready");
    // The build has ended; forjar is reading what it wrote.
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watched.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (status, log) = watched.finish();
    assert_eq!(status.code(), Some(143), "{log}");
    let store = Store::open(&store).unwrap();
    assert!(store.entries().unwrap().is_empty(), "{log}");
    assert_no_staging(&store);
}
