//! Remote execution against a real BuildGrid (started by `remote/stack`) with real `forjar
//! worker` processes: a DAG built entirely by two workers ends with the tree digests of a local
//! apply; a worker killed in the middle of a build has its action retried by the other; Bazel,
//! an outside client, has its genrules run by the workers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use forjar::store::Store;
use forjar_suite::{
    PrivateStack, Watched, assert_ok, forjar_tool, fresh_salt, remote_stack, reported, run_dag,
    sandbox, stderr, stdout, store_digests, with_open_file_limit,
};

/// The tests share the stack's scheduler: one at a time, so that each one's workers take only
/// its own actions.
static WORKERS: Mutex<()> = Mutex::new(());

/// A `forjar worker` process, killed when dropped.
struct Worker {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(address: &str, dir: &Path, name: &str) -> Worker {
        Worker::start_with(address, dir, name, Command::new(forjar_tool()))
    }

    /// Starts `command`, the `forjar` tool set up as the caller needs, as a worker.
    fn start_with(address: &str, dir: &Path, name: &str, mut command: Command) -> Worker {
        let name = format!("{name}-{}", std::process::id());
        let log = dir.join(format!("{name}.log"));
        let child = command
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

/// Runs `remote/bazel` (Debian's Bazel, installed on first use) in `workspace`, with its output
/// tree under `root` and without the user's own rc file.
fn bazel(workspace: &Path, root: &Path, args: &[&str]) -> std::process::Output {
    Command::new(forjar_suite::root().join("remote/bazel"))
        .arg("--batch")
        .arg(format!("--output_user_root={}", root.display()))
        .arg("--nohome_rc")
        .args(args)
        .current_dir(workspace)
        .stdin(Stdio::null())
        .output()
        .expect("remote/bazel runs")
}

/// Leases a worker finished with exit status 0.
fn leases_done(worker: &Worker) -> usize {
    worker
        .log()
        .lines()
        .filter(|l| l.contains(": lease ") && l.ends_with("exit status 0"))
        .count()
}

#[test]
fn bazel_genrules_are_executed_by_forjar_workers() {
    let Some(Scene {
        _one,
        address,
        dir,
        salt,
        ..
    }) = scene("bazel")
    else {
        return;
    };
    let workspace = dir.path().join("workspace");
    fs::create_dir_all(workspace.join("broken")).unwrap();
    fs::write(workspace.join("WORKSPACE"), "").unwrap();
    fs::write(workspace.join("words.txt"), "one two three\n").unwrap();
    fs::write(
        workspace.join("count.sh"),
        "#!/bin/sh\nwc -w < \"$1\" > \"$2\"\n",
    )
    .unwrap();
    let mut permissions = fs::metadata(workspace.join("count.sh"))
        .unwrap()
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    fs::set_permissions(workspace.join("count.sh"), permissions).unwrap();
    // Four genrules: one from nothing, one from a source file and a tool, one from another's
    // output with two outputs (one in a subdirectory), and one that reports where it ran. The
    // salt, in every command, keeps BuildGrid's action cache of earlier runs out of this one.
    let port = address.rsplit(':').next().unwrap();
    fs::write(
        workspace.join("BUILD"),
        format!(
            r#"
genrule(
    name = "greeting",
    outs = ["greeting.txt"],
    cmd = "echo hello {salt} > $@",
)

genrule(
    name = "count",
    srcs = ["words.txt"],
    tools = ["count.sh"],
    outs = ["count.txt"],
    cmd = "$(location count.sh) $(location words.txt) $@ # {salt}",
)

genrule(
    name = "shout",
    srcs = [":greeting"],
    outs = ["upper.txt", "nested/length.txt"],
    cmd = "tr a-z A-Z < $(location :greeting) > $(location upper.txt); wc -c < $(location :greeting) > $(location nested/length.txt)",
)

genrule(
    name = "where",
    outs = ["where.txt"],
    cmd = "(echo {salt}; hostname; pwd; test -e {workspace} && echo sees-host || echo host-hidden; (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo network || echo no-network) > $@",
)
"#,
            workspace = workspace.display(),
        ),
    )
    .unwrap();
    fs::write(
        workspace.join("broken/BUILD"),
        format!(
            r#"
genrule(
    name = "fails",
    outs = ["never.txt"],
    cmd = "echo {salt} said on stdout; echo broken on purpose >&2; exit 3",
)
"#
        ),
    )
    .unwrap();

    let workers = two_workers(address, dir.path(), "b");
    let output_root = dir.path().join("bazel-root");
    let remote = format!("--remote_executor={address}");
    let targets = ["//:greeting", "//:count", "//:shout", "//:where"];
    let build = |targets: &[&str]| {
        let mut args = vec!["build", remote.as_str(), "--spawn_strategy=remote"];
        args.extend(targets);
        bazel(&workspace, &output_root, &args)
    };

    // Every genrule runs on a worker, none here: Bazel counts 4 remote processes.
    let output = build(&targets);
    assert_ok(&output);
    assert!(
        stderr(&output).contains("1 internal, 4 remote."),
        "{}",
        stderr(&output)
    );
    let done: Vec<usize> = workers.iter().map(leases_done).collect();
    assert_eq!(done.iter().sum::<usize>(), 4, "{done:?}");
    let logs: String = workers.iter().map(Worker::log).collect();
    assert!(logs.contains(": running /bin/bash -c "), "{logs}");
    let bin = workspace.join("bazel-bin");
    let read = |name: &str| fs::read_to_string(bin.join(name)).unwrap();
    assert_eq!(read("greeting.txt"), format!("hello {salt}\n"));
    assert_eq!(read("count.txt"), "3\n");
    assert_eq!(
        read("upper.txt"),
        format!("HELLO {}\n", salt.to_uppercase())
    );
    assert_eq!(
        read("nested/length.txt"),
        format!("{}\n", format!("hello {salt}\n").len())
    );
    // In forjar's sandbox: its hostname, the input root at /build, nothing of the host's
    // files, no network.
    assert_eq!(
        read("where.txt"),
        format!("{salt}\nlocalhost\n/build\nhost-hidden\nno-network\n")
    );

    // A failing genrule fails the build with its exit status and its output.
    let output = build(&["//broken:fails"]);
    assert!(!output.status.success(), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("(Exit 3)"), "{text}");
    assert!(text.contains(&format!("{salt} said on stdout")), "{text}");
    assert!(text.contains("broken on purpose"), "{text}");

    // The workers' results went into BuildGrid's action cache: after a clean, Bazel takes
    // all four from there, and no worker runs anything.
    assert_ok(&bazel(&workspace, &output_root, &["clean"]));
    let output = build(&targets);
    assert_ok(&output);
    assert!(
        stderr(&output).contains("4 remote cache hit"),
        "{}",
        stderr(&output)
    );
    assert_eq!(workers.iter().map(leases_done).sum::<usize>(), 4);
    assert_eq!(
        read("upper.txt"),
        format!("HELLO {}\n", salt.to_uppercase())
    );
}

#[test]
fn a_server_killed_during_remote_execution_leaves_the_apply_to_finish_here() {
    if !sandbox() {
        return;
    }
    remote_stack(); // the shared venv is installed once
    let dir = tempfile::tempdir().unwrap();
    let [port, pg_port] = forjar_suite::free_ports::<2>();
    let (stack, address) = PrivateStack::start(&dir.path().join("stack"), port, pg_port, 1);
    let store = dir.path().join("store");
    let salt = fresh_salt("killed-exec");
    let env = [
        ("DAG_LAYERS", "3"),
        ("DAG_WIDTH", "2"),
        ("DAG_SLEEP", "0.5"),
        ("DAG_SALT", salt.as_str()),
    ];
    let mut apply = Watched::spawn(forjar_suite::dag(
        &store,
        &env,
        &["apply", "-j", "1", "--remote-exec", &address],
    ));
    apply.until("built remotely ");
    // One build came back from the worker; the server dies while the worker runs the next.
    let worker_log = stack.dir.join("worker-1.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read_to_string(&worker_log)
        .unwrap_or_default()
        .matches(": building ")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "the worker took no second build");
        std::thread::sleep(Duration::from_millis(20));
    }
    stack.kill_server();
    let (status, log) = apply.finish();
    assert!(status.success(), "{log}");
    // Reported once, not once per build.
    assert_eq!(log.matches("warning: remote, for").count(), 1, "{log}");
    let remotely = log
        .lines()
        .filter(|l| l.starts_with("built remotely "))
        .count();
    let here = log.lines().filter(|l| l.starts_with("built ")).count() - remotely;
    assert!(remotely >= 1 && here >= 1, "{log}");
    assert_eq!(remotely + here, 7, "each derivation was built once: {log}");
    let report = Store::open(&store).unwrap().verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// BuildGrid's own client: sends `args` as a command with `root` as its input root, from `dir`,
/// with `bgd`'s `options` (`--output-file`, ...).
fn bgd_execute(
    address: &str,
    dir: &Path,
    root: &Path,
    options: &[&str],
    args: &[&str],
) -> std::process::Output {
    let server = address.replacen("grpc://", "http://", 1);
    Command::new(forjar_suite::root().join("target/buildgrid-venv/bin/bgd"))
        .args(["execute", "--remote", &server, "command"])
        .args(options)
        .arg(root)
        .arg("--")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("bgd, installed by remote/stack, runs")
}

#[test]
fn a_worker_refuses_a_request_with_a_nul_naming_it_and_takes_the_next_action() {
    let Some(scene) = scene("nul") else { return };
    let worker = Worker::start(scene.address, scene.dir.path(), "nul");
    worker.wait_ready();
    // What no forjar client sends and a broken or hostile one can: a store directory with a NUL.
    let root = scene.dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let request = serde_json::json!({
        "format": "forjar build request v2",
        "key": "00".repeat(32),
        "location": null,
        "limits": {},
        "request": {
            "store_dir": "/var/lib/forjar\u{0}/store",
            "name": format!("nul-{}", scene.salt),
            "system": "x86_64-linux",
            "args": ["/bin/sh", "-c", "true"],
            "working_dir": "build",
            "scratch_paths": [],
            "outputs": ["out"],
            "env": {},
            "inputs": {},
            "files": {},
            "constraints": {"network": false, "provide_bin_sh": true, "ro_paths": []},
            "sandbox": "hermetic",
            "fixed_output": null,
            "host": null,
        },
    });
    fs::write(root.join("request.json"), request.to_string()).unwrap();
    let out = bgd_execute(
        scene.address,
        scene.dir.path(),
        &root,
        &[],
        &["forjar", "build-request", "request.json"],
    );
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("code: 3") && said.contains("invalid store directory"),
        "the client is told the request is invalid, and why:\n{said}"
    );
    assert!(worker.log().contains("InvalidArgument"), "{}", worker.log());

    // The worker goes on: the next action runs.
    let plain = scene.dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let salt = format!("echo {} > out", scene.salt);
    let out = bgd_execute(
        scene.address,
        scene.dir.path(),
        &plain,
        &["--output-file", "out"],
        &["/bin/sh", "-c", &salt],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !worker.log().contains("exit status 0") {
        assert!(Instant::now() < deadline, "{}", worker.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_worker_under_a_hard_limit_of_1024_open_files_builds_a_job_of_1100_inputs() {
    let Some(scene) = scene("wide") else { return };
    let mut command = Command::new(forjar_tool());
    with_open_file_limit(&mut command, 1024);
    let worker = Worker::start_with(scene.address, scene.dir.path(), "wide", command);
    worker.wait_ready();
    let limits = fs::read_to_string(format!("/proc/{}/limits", worker.child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["1024", "1024"],
        "{open_files}"
    );

    // 1,100 derivations built here, then `top`, whose inputs are all of them, built there.
    let env = [
        ("DAG_LAYERS", "1"),
        ("DAG_WIDTH", "1100"),
        ("DAG_FILES", "1"),
        ("DAG_SALT", scene.salt.as_str()),
    ];
    let names: Vec<String> = (0..1100).map(|i| format!("n0-{i}")).collect();
    let mut args = vec!["-q", "build", "--no-out-link"];
    args.extend(names.iter().map(String::as_str));
    assert_ok(&run_dag(&scene.store, &env, &args));
    let output = run_dag(
        &scene.store,
        &env,
        &["apply", "--remote-exec", scene.address],
    );
    assert_ok(&output);
    assert_eq!(
        reported(&output, "built remotely"),
        ["top"],
        "{}",
        stderr(&output)
    );
    assert!(worker.log().contains(": building top"), "{}", worker.log());
    let all = fs::read_to_string(
        scene
            .store
            .join(fs::read_link(scene.store.join(".profiles/dag/roots/top")).unwrap())
            .join("content/all"),
    );
    assert_eq!(
        all.map(|text| text.lines().count()).ok(),
        Some(1100),
        "top read every input"
    );
}
