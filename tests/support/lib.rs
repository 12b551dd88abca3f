//! Helpers shared by forjar's integration tests and examples.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The example program `name`, which cargo builds before the integration tests.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/examples/<name>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .join("examples")
        .join(name)
}

/// Runs an example program with `args` against `store`, in the store's parent directory (where
/// `build` makes its `result` link).
pub fn run_example(name: &str, store: &Path, args: &[&str]) -> Output {
    Command::new(example(name))
        .arg("--store")
        .arg(store)
        .args(args)
        .current_dir(beside(store))
        .env("FORJAR_LOCK", root().join("forjar.lock"))
        .env_remove("CLICOLOR_FORCE")
        .output()
        .expect("the example runs")
}

/// The directory `store` is in, where a test's programs run.
fn beside(store: &Path) -> &Path {
    store
        .parent()
        .filter(|p| p.is_dir())
        .unwrap_or(Path::new("/tmp"))
}

/// The `dag` test program (tests/programs/dag.rs) against `store`, with `env` shaping the DAG.
/// A remote cache set in the caller's environment is not used.
pub fn dag(store: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(example("dag"));
    command
        .arg("--store")
        .arg(store)
        .args(args)
        .current_dir(beside(store));
    command
        .env_remove("FORJAR_REMOTE")
        .env_remove("CLICOLOR_FORCE");
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Makes `command` start with `limit` as its soft and hard limit on open files.
pub fn with_open_file_limit(command: &mut Command, limit: u64) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: only setrlimit, which is async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)
                .map_err(std::io::Error::from)
        })
    }
}

/// Runs the `dag` program to the end.
pub fn run_dag(store: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    dag(store, env, args)
        .output()
        .expect("the dag program runs")
}

/// The names a run's progress lines report with `verb` (`built`, `downloaded`, ...), sorted.
pub fn reported(output: &Output, verb: &str) -> Vec<String> {
    let mut names: Vec<String> = stderr(output)
        .lines()
        .filter_map(|l| l.strip_prefix(verb)?.strip_prefix(' '))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// Standard output as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use forjar::hash::Key;
use forjar::name::Name;
use forjar::plan::Plan;
use forjar::prelude::*;
use forjar::store::{Committed, Draft, EntryKind, EntryName, KeyLock, Staging, Store};

/// A fresh store in a temporary directory (kept alive by the returned guard).
pub fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(dir.path().join("store")).expect("a new store opens");
    (dir, store)
}

/// The closure key of the derivation `define` adds, planned against `store`.
pub fn key_of(store: &Store, define: impl FnOnce(&mut Graph) -> Drv) -> Key {
    let mut graph = Graph::new();
    let drv = define(&mut graph);
    let plan = Plan::new(&graph, store).expect("the graph plans");
    plan.key(&drv)
        .expect("the handle is a derivation of the plan")
}

/// Installs an entry holding one file with `contents`, as a build would, and returns its name.
pub fn install_file(
    store: &Store,
    name: &str,
    key: Key,
    contents: &[u8],
    references: Vec<EntryName>,
) -> EntryName {
    let name = Name::new(name).expect("a valid name");
    let entry = EntryName::new(&key, &name, None);
    let lock = KeyLock::acquire(store, entry.hash()).expect("the key lock");
    let staging = Staging::new(store, &lock, entry.clone()).expect("staging");
    std::fs::write(staging.content_path(), contents).expect("content is written");
    let draft = Draft {
        name,
        output: "out".into(),
        kind: EntryKind::Build,
        key,
        derivation: Some(key),
        references,
        inputs: BTreeMap::new(),
        system: None,
        sandbox: None,
        started: SystemTime::now(),
        log_digest: None,
        location: None,
        source_path: None,
        expected: None,
    };
    match staging.commit(draft).expect("commit") {
        Committed::Installed(_) => entry,
        Committed::Mismatch(m) => panic!("no digest was expected, yet: {m}"),
    }
}

/// A key made from a small number, for entries installed by tests.
pub fn test_key(n: u8) -> Key {
    format!("{n:02x}")
        .repeat(32)
        .parse()
        .expect("64 hex digits")
}

/// The store entry of the first output of the derivation named `name` in `plan`.
pub fn entry_of(plan: &Plan, name: &str) -> EntryName {
    let node = *plan
        .find(name)
        .first()
        .unwrap_or_else(|| panic!("the plan has a derivation named `{name}`"));
    let entry = plan.entry_names(node).into_iter().next();
    EntryName::parse(&entry.expect("a derivation has an output")).expect("a valid entry name")
}

/// Plans `define`'s graph against `store` and applies it, returning the plan too.
pub fn apply(
    store: &Store,
    define: impl FnOnce(&mut Graph),
) -> (Plan, Result<forjar::exec::Report, forjar::exec::ExecError>) {
    let mut graph = Graph::new();
    define(&mut graph);
    let plan = Plan::new(&graph, store).expect("the graph plans");
    let report = forjar::exec::apply(
        &plan,
        store,
        &forjar::exec::Local::default(),
        &forjar::exec::Options::default(),
        &|_| {},
    );
    (plan, report)
}

/// Builds one derivation as the root `it`; returns its entry or the error text.
pub fn build_root(store: &Store, builder: forjar::DerivationBuilder) -> Result<EntryName, String> {
    let (plan, report) = apply(store, |g| {
        let d = g.add(builder.build().expect("a valid derivation"));
        g.root("it", d);
    });
    report
        .map(|_| {
            plan.root_entry(&plan.roots()[0])
                .expect("an applied root is realised")
        })
        .map_err(|e| e.to_string())
}

/// An entry's content, a file, as text.
pub fn content_text(store: &Store, entry: &EntryName) -> String {
    std::fs::read_to_string(store.content_path(entry)).expect("the content is a text file")
}

/// The tree digest of a file holding `contents`, as a fixed output declares it.
pub fn digest_of(contents: &str) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("f"), contents).expect("a file is written");
    forjar::hash::tree_digest(&dir.path().join("f"))
        .expect("the file hashes")
        .to_string()
}

/// Whether this machine gives a sandbox, found by building one trivial derivation. Under CI
/// (`CI=true`) a missing sandbox fails the calling test; elsewhere the test is skipped, saying so.
pub fn sandbox() -> bool {
    use forjar::exec::ExecError;
    use forjar::sandbox::SandboxError;
    use std::sync::OnceLock;

    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    let available = AVAILABLE.get_or_init(|| {
        let (_dir, store) = temp_store();
        let probe = Derivation::builder("probe")
            .script("echo > $out")
            .build()
            .expect("the probe is valid");
        match apply(&store, |g| {
            g.add(probe);
        })
        .1
        {
            Err(ExecError::Sandbox {
                error: e @ (SandboxError::Unavailable(_) | SandboxError::ProcCovered(_)),
                ..
            }) => Err(e.to_string()),
            Err(other) => panic!("the probe build failed: {other}"),
            Ok(_) => Ok(()),
        }
    });
    match available {
        Ok(()) => true,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must run the sandbox tests: {e}")
        }
        Err(e) => {
            eprintln!("skipping: {e}");
            false
        }
    }
}

/// The remote stack's state directory (`remote/stack`'s default).
pub fn stack_dir() -> PathBuf {
    std::env::var_os("FORJAR_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/remote-stack"))
}

/// Starts the remote stack (BuildGrid and PostgreSQL on 127.0.0.1) with `remote/stack start`,
/// once per test process (the script itself serialises starts across processes), and returns
/// its address. The remote tests need it everywhere, so a stack that cannot start fails the
/// calling test with the script's message; it is never skipped.
///
/// A stack already running in [`stack_dir`] (one a developer keeps warm) is used as it is.
/// Otherwise this process starts one, on ports free now (unless `FORJAR_STACK_PORT` and
/// `FORJAR_STACK_PG_PORT` name them), and stops it when it exits: a run stops what it started,
/// and two checkouts' runs do not meet on one port.
pub fn remote_stack() -> &'static str {
    use std::sync::OnceLock;
    static ADDRESS: OnceLock<Result<String, String>> = OnceLock::new();
    let started = ADDRESS.get_or_init(|| {
        let mut command = Command::new(root().join("remote/stack"));
        command.arg("start");
        let ours = !stack_running();
        if ours {
            let [port, pg_port] = free_ports::<2>();
            for (var, port) in [
                ("FORJAR_STACK_PORT", port),
                ("FORJAR_STACK_PG_PORT", pg_port),
            ] {
                if std::env::var_os(var).is_none() {
                    command.env(var, port.to_string());
                }
            }
        }
        let output = command
            .output()
            .map_err(|e| format!("cannot run remote/stack: {e}"))?;
        if ours {
            extern "C" fn stop() {
                let _ = Command::new(root().join("remote/stack"))
                    .arg("stop")
                    .output();
            }
            // SAFETY: `stop` is an `extern "C" fn()` that lives as long as the process.
            unsafe { nix::libc::atexit(stop) };
        }
        if !output.status.success() {
            return Err(format!("remote/stack start failed:\n{}", stderr(&output)));
        }
        stdout(&output)
            .lines()
            .find_map(|l| l.strip_prefix("FORJAR_REMOTE="))
            .map(str::to_string)
            .ok_or_else(|| format!("remote/stack printed no address:\n{}", stdout(&output)))
    });
    match started {
        Ok(address) => address,
        Err(e) => panic!("the remote tests need the remote stack: {e}"),
    }
}

/// `N` distinct loopback ports free at this moment (each held until all are chosen).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners = [(); N].map(|()| {
        std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port can be bound")
    });
    listeners.map(|l| {
        l.local_addr()
            .expect("a bound socket has an address")
            .port()
    })
}

/// Whether a BuildGrid of the stack in [`stack_dir`] runs (`remote/stack status`).
fn stack_running() -> bool {
    Command::new(root().join("remote/stack"))
        .arg("status")
        .output()
        .is_ok_and(|o| {
            stdout(&o)
                .lines()
                .any(|l| l.starts_with("buildgrid: running"))
        })
}

/// A salt no earlier run used, so that a shared remote starts cold for the calling test.
pub fn fresh_salt(test: &str) -> String {
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    format!("{test}-{}-{}", std::process::id(), now.as_nanos())
}

/// The names of the entries in the store at `store` (not its own dot-directories), read off
/// the directory (no `Store` is opened: the store may be another user's); none if it was never
/// made.
pub fn store_entries(store: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(store) {
        Ok(items) => items
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => panic!("cannot read {}: {e}", store.display()),
    }
}

/// A directory every user may use, with the example program `name` copied into it (the
/// checkout may lie where another user cannot look).
pub fn open_dir_with(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let open = std::os::unix::fs::PermissionsExt::from_mode(0o777);
    std::fs::set_permissions(dir.path(), open).unwrap();
    std::fs::copy(example(name), dir.path().join(name)).unwrap();
    dir
}

/// Runs `program` as `nobody` in `dir` (its home too) with `args` and `env`, with at most
/// `nproc` processes and threads of that user (`prlimit --nproc`) when given. Becoming another
/// user takes root ([`as_root`]).
pub fn as_nobody(
    program: &Path,
    dir: &Path,
    nproc: Option<u32>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut command = Command::new("setpriv");
    command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    if let Some(nproc) = nproc {
        command.arg("prlimit").arg(format!("--nproc={nproc}"));
    }
    command
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
        .env("HOME", dir)
        .current_dir(dir)
        .output()
        .expect("setpriv and prlimit (util-linux) run")
}

/// Whether this test runs as root, which `what` takes; under CI (`CI=true`, as root) a test
/// that is not fails, elsewhere it is skipped, saying so.
pub fn as_root(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "CI runs as root, and must run this test: {what} takes root"
    );
    eprintln!("skipping: {what} takes root");
    false
}

/// Every entry of the store with the tree digest its meta.yaml records.
pub fn store_digests(store: &Path) -> BTreeMap<String, String> {
    let store = forjar::store::Store::open(store).expect("the store opens");
    store
        .entries()
        .expect("the store lists its entries")
        .into_iter()
        .map(|e| {
            let digest = store.meta(&e).expect("every entry has a meta.yaml").digest;
            (e.to_string(), digest.to_string())
        })
        .collect()
}

/// Asserts that a program exited 0, showing its output if not.
pub fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
}

/// The `forjar` tool, which cargo builds with the workspace.
pub fn forjar_tool() -> PathBuf {
    example("dag")
        .parent()
        .and_then(Path::parent)
        .expect("examples live in target/<profile>/examples")
        .join("forjar")
}

/// A stack of its own, to be killed: BuildGrid, PostgreSQL and `workers` forjar workers on other
/// ports, in `dir`; stopped when dropped.
pub struct PrivateStack {
    pub dir: PathBuf,
}

impl PrivateStack {
    /// Starts the stack; returns it and its address.
    pub fn start(dir: &Path, port: u16, pg_port: u16, workers: usize) -> (PrivateStack, String) {
        let mut command = Command::new(root().join("remote/stack"));
        command
            .arg("start")
            .env("FORJAR_STACK_DIR", dir)
            .env("FORJAR_STACK_PORT", port.to_string())
            .env("FORJAR_STACK_PG_PORT", pg_port.to_string());
        if workers > 0 {
            command
                .args(["--workers", &workers.to_string(), "--forjar"])
                .arg(forjar_tool());
        }
        let output = command.output().expect("remote/stack runs");
        assert_ok(&output);
        (
            PrivateStack {
                dir: dir.to_path_buf(),
            },
            format!("grpc://127.0.0.1:{port}"),
        )
    }
}

impl PrivateStack {
    /// Kills the stack's BuildGrid with SIGKILL, as a crash would.
    pub fn kill_server(&self) {
        use nix::sys::signal::{Signal, kill};
        let pid = std::fs::read_to_string(self.dir.join("buildgrid.pid"))
            .expect("the stack records BuildGrid's pid");
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().expect("a pid"));
        kill(pid, Signal::SIGKILL).expect("BuildGrid is running");
    }
}

/// A running program whose standard error (its progress) is read line by line.
pub struct Watched {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
    stdout: std::thread::JoinHandle<String>,
    /// What it has printed so far.
    pub log: String,
}

impl Watched {
    /// Starts `command` with its standard error piped.
    pub fn spawn(mut command: Command) -> Watched {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the program starts");
        let stderr = child.stderr.take().expect("standard error is piped");
        let mut out = child.stdout.take().expect("standard output is piped");
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut text);
            text
        });
        Watched {
            child,
            stdout,
            lines: std::io::BufReader::new(stderr).lines(),
            log: String::new(),
        }
    }

    /// The program's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads until a line that starts with `prefix`, or to the end.
    pub fn until(&mut self, prefix: &str) {
        self.read(Some(prefix));
    }

    fn read(&mut self, prefix: Option<&str>) {
        for line in self.lines.by_ref() {
            let line = line.expect("standard error is readable");
            self.log.push_str(&line);
            self.log.push('\n');
            if prefix.is_some_and(|p| line.starts_with(p)) {
                return;
            }
        }
    }

    /// Reads to the end and waits; returns the exit status and everything printed on
    /// standard error.
    pub fn finish(self) -> (std::process::ExitStatus, String) {
        let (status, log, _) = self.finish_with_stdout();
        (status, log)
    }

    /// Reads to the end and waits; returns the exit status, standard error and standard
    /// output.
    pub fn finish_with_stdout(mut self) -> (std::process::ExitStatus, String, String) {
        self.read(None);
        let status = self.child.wait().expect("the program is waited for");
        let stdout = self.stdout.join().expect("standard output is read");
        (status, self.log, stdout)
    }

    /// Reads lines as they come, giving each to `each`, until it returns true or the output
    /// ends.
    pub fn watch(&mut self, mut each: impl FnMut(&str) -> bool) {
        for line in self.lines.by_ref() {
            let line = line.expect("standard error is readable");
            self.log.push_str(&line);
            self.log.push('\n');
            if each(&line) {
                return;
            }
        }
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        let _ = Command::new(root().join("remote/stack"))
            .arg("stop")
            .env("FORJAR_STACK_DIR", &self.dir)
            .output();
    }
}

/// Real Debian hosts booted by `hosts/testhosts` for one test: systemd and sshd in
/// systemd-nspawn, each in a network namespace of its own. Stopped, with everything the run
/// made, when dropped.
pub struct TestHosts {
    pub run: String,
    pub dir: PathBuf,
    /// Each host's ssh alias and address.
    pub hosts: Vec<(String, String)>,
}

impl TestHosts {
    /// Boots `n` hosts. They need root; without it the calling test is skipped, saying so,
    /// except under CI (`CI=true`), where it fails.
    pub fn up(n: usize) -> Option<TestHosts> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        if !nix::unistd::geteuid().is_root() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI must run the machine tests, which need root for their test hosts");
            }
            eprintln!("skipping: the test hosts need root");
            return None;
        }
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let run = format!("{}{}", to_base36(std::process::id() % 36u32.pow(4)), seq);
        let output = Command::new(root().join("hosts/testhosts"))
            .args(["up", &run, &n.to_string()])
            .output()
            .expect("hosts/testhosts runs");
        let hosts = TestHosts {
            dir: root().join("target/testhosts/runs").join(&run),
            hosts: Vec::new(),
            run,
        };
        assert!(
            output.status.success(),
            "hosts/testhosts up failed:\n{}",
            stderr(&output)
        );
        let listing =
            std::fs::read_to_string(hosts.dir.join("hosts")).expect("the run lists its hosts");
        let mut hosts = hosts;
        hosts.hosts = listing
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Some(hosts)
    }

    /// The run's ssh config (keys, known hosts, aliases).
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    /// Host `i`'s (from 0) alias.
    pub fn name(&self, i: usize) -> &str {
        &self.hosts[i].0
    }

    /// Runs `command` on host `i` over ssh.
    pub fn ssh(&self, i: usize, command: &str) -> Output {
        Command::new("ssh")
            .arg("-F")
            .arg(self.ssh_config())
            .args(["-o", "BatchMode=yes", self.name(i), command])
            .output()
            .expect("ssh runs")
    }

    /// Takes host `i`'s link down or up.
    pub fn link(&self, i: usize, up: bool) {
        let output = Command::new(root().join("hosts/testhosts"))
            .args([
                "link",
                &self.run,
                &(i + 1).to_string(),
                if up { "up" } else { "down" },
            ])
            .output()
            .expect("hosts/testhosts runs");
        assert_ok(&output);
    }

    /// Sends host `i` at most `rate` (tc's notation, `4mbit`), or, with `None`, as fast as
    /// the link goes.
    pub fn rate(&self, i: usize, rate: Option<&str>) {
        let output = Command::new(root().join("hosts/testhosts"))
            .args([
                "rate",
                &self.run,
                &(i + 1).to_string(),
                rate.unwrap_or("off"),
            ])
            .output()
            .expect("hosts/testhosts runs");
        assert_ok(&output);
    }

    /// A cable from host `i` to host `j`, outside the controller's network; returns the ssh
    /// host name that reaches `j` over it (through `i`, with `ssh -J`).
    pub fn wire(&self, i: usize, j: usize) -> String {
        let output = Command::new(root().join("hosts/testhosts"))
            .args([
                "wire",
                &self.run,
                &(i + 1).to_string(),
                &(j + 1).to_string(),
            ])
            .output()
            .expect("hosts/testhosts runs");
        assert_ok(&output);
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Reboots host `i`, keeping its disk.
    pub fn restart(&self, i: usize) {
        let output = Command::new(root().join("hosts/testhosts"))
            .args(["restart", &self.run, &(i + 1).to_string()])
            .output()
            .expect("hosts/testhosts runs");
        assert_ok(&output);
    }

    /// What an HTTP GET of `/` on host `i`'s `port` answers, waiting up to 15 s for it to listen.
    pub fn http_get(&self, i: usize, port: u16) -> String {
        use std::io::{Read, Write};
        let address = format!("{}:{port}", self.hosts[i].1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let attempt = (|| -> std::io::Result<String> {
                let mut stream = std::net::TcpStream::connect(&address)?;
                stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
                stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut answer = String::new();
                stream.read_to_string(&mut answer)?;
                Ok(answer
                    .split("\r\n\r\n")
                    .nth(1)
                    .unwrap_or_default()
                    .trim()
                    .to_string())
            })();
            match attempt {
                Ok(body) if !body.is_empty() => return body,
                _ if std::time::Instant::now() > deadline => {
                    panic!("{address} did not answer HTTP: {attempt:?}")
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(200)),
            }
        }
    }
}

fn to_base36(mut n: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut text = Vec::new();
    loop {
        text.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    text.reverse();
    String::from_utf8(text).expect("base 36 digits are ASCII")
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        let _ = Command::new(root().join("hosts/testhosts"))
            .args(["down", &self.run])
            .output();
    }
}

/// A program run on a new pseudo-terminal of its own: its controlling terminal, with the
/// program in the foreground, as a user's shell runs it. What the terminal shows is read as it
/// comes, so that the program never blocks on it; keys are typed at it as a user types them.
pub struct OnTerminal {
    process: std::process::Child,
    master: std::sync::Arc<std::os::fd::OwnedFd>,
    shown: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reader: std::thread::JoinHandle<()>,
}

impl OnTerminal {
    /// Starts `command` on a new terminal.
    pub fn spawn(mut command: Command) -> OnTerminal {
        use std::os::unix::process::CommandExt;
        use std::process::Stdio;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};

        let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
        let slave = pty.slave;
        command
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let process = command.spawn().expect("the program starts");
        drop((command, slave));
        let master = Arc::new(pty.master);
        let shown = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(AtomicBool::new(false));
        let reader = {
            let (master, shown, ended) = (master.clone(), shown.clone(), ended.clone());
            std::thread::spawn(move || {
                use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
                use std::os::fd::AsFd;
                let mut buf = [0u8; 4096];
                loop {
                    let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
                    if poll(&mut fds, PollTimeout::from(200u16)).unwrap_or(0) == 0 {
                        if ended.load(Ordering::SeqCst) {
                            break;
                        }
                        continue;
                    }
                    // EIO once every holder of the terminal's other side has closed it.
                    match nix::unistd::read(&*master, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => shown.lock().unwrap().extend_from_slice(&buf[..n]),
                    }
                }
            })
        };
        OnTerminal {
            process,
            master,
            shown,
            ended,
            reader,
        }
    }

    /// What the terminal has shown so far.
    pub fn shown(&self) -> String {
        String::from_utf8_lossy(&self.shown.lock().unwrap()).into_owned()
    }

    /// Types `keys` at the terminal (`b"\x03"` is Ctrl-C).
    pub fn type_keys(&self, keys: &[u8]) {
        nix::unistd::write(&*self.master, keys).expect("the terminal takes keys");
    }

    /// Waits for the program to end; returns what the terminal showed and how it ended.
    pub fn finish(mut self) -> (String, std::process::ExitStatus) {
        let status = self.process.wait().unwrap();
        self.ended.store(true, std::sync::atomic::Ordering::SeqCst);
        let shown = self.shown.clone();
        self.reader.join().unwrap();
        let shown = String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
        (shown, status)
    }
}
