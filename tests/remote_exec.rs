//! Remote execution against a real BuildGrid (started by `remote/stack`) with real `forjar
//! worker` processes: a DAG built entirely by two workers ends with the tree digests of a local
//! apply; a worker killed in the middle of a build has its action retried by the other.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use forjar::store::Store;
use forjar_suite::{
    assert_ok, fresh_salt, remote_stack, reported, run_dag, sandbox, stderr, stdout, store_digests,
};

/// The tests share the stack's scheduler: one at a time, so that each one's workers take only
/// its own actions.
static WORKERS: Mutex<()> = Mutex::new(());

/// The `forjar` tool, which cargo builds with the workspace.
fn forjar_tool() -> PathBuf {
    forjar_suite::example("dag")
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("forjar")
}

/// A `forjar worker` process, killed when dropped.
struct Worker {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(address: &str, dir: &Path, name: &str) -> Worker {
        let name = format!("{name}-{}", std::process::id());
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(forjar_tool())
            .args(["worker", "--server", address, "--name", &name, "--store"])
            .arg(dir.join(format!("{name}-store")))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("forjar worker starts");
        Worker { name, child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the worker has a session with the server.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains("serving") {
            assert!(
                Instant::now() < deadline,
                "worker {} did not start:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Two workers named PREFIX1 and PREFIX2, each with a session with the server.
fn two_workers(address: &str, dir: &Path, prefix: &str) -> Vec<Worker> {
    let workers: Vec<Worker> = ["1", "2"]
        .iter()
        .map(|n| Worker::start(address, dir, &format!("{prefix}{n}")))
        .collect();
    workers.iter().for_each(Worker::wait_ready);
    workers
}

impl Drop for Worker {
    /// Stops the worker as an operator would, with SIGTERM: it ends its session, so the server
    /// gives it no more work (a killed worker is given work until its session expires).
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What each test starts from: the stack to itself, a temporary store and a fresh salt.
struct Scene {
    _one: MutexGuard<'static, ()>,
    address: &'static str,
    dir: tempfile::TempDir,
    store: PathBuf,
    salt: String,
}

/// The scene of test `test`; `None` where this machine gives no sandbox (outside CI).
fn scene(test: &str) -> Option<Scene> {
    if !sandbox() {
        return None;
    }
    let one = WORKERS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    Some(Scene {
        _one: one,
        address: remote_stack(),
        store: dir.path().join("store"),
        dir,
        salt: fresh_salt(test),
    })
}

#[test]
fn two_workers_build_the_whole_dag_with_the_digests_of_a_local_apply() {
    let Some(Scene {
        _one,
        address,
        dir,
        store,
        salt,
    }) = scene("two-workers")
    else {
        return;
    };
    let env = [
        ("DAG_LAYERS", "3"),
        ("DAG_WIDTH", "3"),
        ("DAG_SALT", salt.as_str()),
    ];
    let all = 10;

    // The reference: a local apply, then the store is emptied (same path, same keys).
    assert_ok(&run_dag(&store, &env, &["apply"]));
    let local = store_digests(&store);
    assert_eq!(local.len(), all);
    fs::remove_dir_all(&store).unwrap();

    let workers = two_workers(address, dir.path(), "w");
    let output = run_dag(
        &store,
        &env,
        &["apply", "--remote-exec", address, "-j", "4"],
    );
    assert_ok(&output);
    assert_eq!(
        reported(&output, "built remotely").len(),
        all,
        "{}",
        stderr(&output)
    );
    assert!(
        stdout(&output).contains(&format!("Built {all} ({all} remotely)")),
        "{}",
        stdout(&output)
    );
    assert_eq!(store_digests(&store), local);
    let report = Store::open(&store).unwrap().verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
    // Both workers took part, and each build ran exactly once.
    let builds: Vec<usize> = workers
        .iter()
        .map(|w| w.log().matches(": building ").count())
        .collect();
    assert_eq!(builds.iter().sum::<usize>(), all, "{builds:?}");
    assert!(builds.iter().all(|&n| n > 0), "{builds:?}");
    // The remote build's log came with the outputs.
    let log = Command::new(forjar_suite::example("dag"))
        .arg("--store")
        .arg(&store)
        .args(["log", "n2-1"])
        .envs(env)
        .output()
        .unwrap();
    assert_ok(&log);
    assert!(stdout(&log).contains("making n2-1"), "{}", stdout(&log));

    // A build that fails there fails here, with its log's tail.
    let failing = [
        ("DAG_LAYERS", "1"),
        ("DAG_WIDTH", "1"),
        ("DAG_SALT", salt.as_str()),
        ("DAG_FAIL", "n0-0"),
    ];
    let output = run_dag(&store, &failing, &["apply", "--remote-exec", address]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("the builder exited with status 1 (on worker w"),
        "{text}"
    );
    assert!(text.contains("| n0-0 gives up"), "{text}");
}

#[test]
fn a_worker_killed_during_a_build_has_its_action_run_by_another() {
    let Some(Scene {
        _one,
        address,
        dir,
        store,
        salt,
    }) = scene("killed-worker")
    else {
        return;
    };
    let env = [
        ("DAG_LAYERS", "1"),
        ("DAG_WIDTH", "1"),
        ("DAG_SLEEP", "3"),
        ("DAG_SALT", salt.as_str()),
    ];
    let mut workers = two_workers(address, dir.path(), "k");
    let apply = forjar_suite::dag(&store, &env, &["apply", "--remote-exec", address])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Kill whichever worker starts n0-0, while it builds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some(i) = workers
            .iter()
            .position(|w| w.log().contains("building n0-0"))
        {
            break i;
        }
        assert!(Instant::now() < deadline, "no worker started n0-0");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut killed = workers.remove(first);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let output = apply.wait_with_output().unwrap();
    assert_ok(&output);
    let other = &workers[0];
    assert!(
        other.log().contains("building n0-0"),
        "the other worker did not build n0-0:\n{}",
        other.log()
    );
    assert!(!killed.log().contains("lease"), "{}", killed.log());
    assert_eq!(reported(&output, "built remotely"), ["n0-0", "top"]);
    let report = Store::open(&store).unwrap().verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
}
