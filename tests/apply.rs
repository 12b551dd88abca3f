//! The program's command line under load and faults: parallel apply, --keep-going,
//! --keep-failed, concurrent applies on one store, kill -9 at many moments, Ctrl-C, check,
//! and generations. Every test runs real builds in the sandbox through `tests/programs/dag.rs`.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use forjar_suite::{
    OnTerminal, dag, fresh_salt, reported, run_dag, sandbox, stderr, stdout, store_entries,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn store_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    (dir, store)
}

/// The most builds running at once, from the order of `building` and `built` lines.
fn most_at_once(output: &Output) -> usize {
    let (mut running, mut most) = (0usize, 0usize);
    for line in stderr(output).lines() {
        if line.starts_with("building ") {
            running += 1;
            most = most.max(running);
        } else if line.starts_with("built ") {
            running -= 1;
        }
    }
    most
}

/// The builds of a run share the cgroups of its finished builds rather than each making and
/// removing its own; none is left once the program ends. (As root: only root's builds have
/// cgroups.)
#[test]
fn a_runs_builds_share_its_cgroups_and_none_is_left_after_it() {
    if !sandbox() || !forjar_suite::as_root("a build's own cgroup") {
        return;
    }
    let (_dir, store) = store_dir();
    let env = [("DAG_CGROUP", "*"), ("DAG_WIDTH", "2"), ("DAG_LAYERS", "4")];
    let out = run_dag(&store, &env, &["apply", "-j", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The cgroup each build ran in, `forjar-<pid>-<n>`: on cgroup v2 the one hierarchy's (the
    // `0::` line), else the `pids` controller's.
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let used: Vec<PathBuf> = store_entries(&store)
        .iter()
        .filter_map(|entry| fs::read_to_string(store.join(entry).join("content/cgroup")).ok())
        .map(|text| {
            let path = text
                .lines()
                .filter_map(|line| {
                    let mut fields = line.splitn(3, ':');
                    let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
                    let ours = match v2 {
                        true => controllers.is_empty(),
                        false => controllers.split(',').any(|c| c == "pids"),
                    };
                    ours.then(|| path.to_string())
                })
                .next()
                .unwrap_or_else(|| panic!("no pids cgroup in {text}"));
            assert!(path.starts_with("/forjar-"), "{text}");
            let root = if v2 {
                "/sys/fs/cgroup"
            } else {
                "/sys/fs/cgroup/pids"
            };
            PathBuf::from(format!("{root}{path}"))
        })
        .collect();
    assert_eq!(used.len(), 8, "every build wrote its cgroup: {used:?}");
    let distinct: BTreeSet<&PathBuf> = used.iter().collect();
    assert!(
        distinct.len() < used.len(),
        "one build after another, a finished build's cgroup is the next one's: {used:?}"
    );
    for cgroup in distinct {
        assert!(
            !cgroup.exists(),
            "{} is left after the run",
            cgroup.display()
        );
    }
}

#[test]
fn apply_runs_builds_in_parallel_after_their_dependencies() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = store_dir();
    let env = [("DAG_SLEEP", "0.3")];
    let out = run_dag(&store, &env, &["apply", "-j", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        stdout(&out).contains("Built 13, imported 0, 0 cached"),
        "{}",
        stdout(&out)
    );
    assert_eq!(most_at_once(&out), 4, "-j 4 runs four at once:\n{log}");
    // Every build starts after the builds it depends on have finished.
    let position = |prefix: &str, name: &str| {
        log.lines()
            .position(|l| l.starts_with(&format!("{prefix} {name} ")))
            .unwrap_or_else(|| panic!("no `{prefix} {name}` line in:\n{log}"))
    };
    for layer in 1..3 {
        for i in 0..4 {
            for dep in [i, (i + 1) % 4] {
                assert!(
                    position("built", &format!("n{}-{dep}", layer - 1))
                        < position("building", &format!("n{layer}-{i}")),
                    "n{layer}-{i} started before its dependency:\n{log}"
                );
            }
        }
    }

    let serial = run_dag(&store, &[("DAG_SALT", "serial")], &["apply", "-j", "1"]);
    assert!(serial.status.success(), "{}", stderr(&serial));
    assert_eq!(most_at_once(&serial), 1, "{}", stderr(&serial));

    let again = run_dag(&store, &env, &["apply"]);
    assert!(again.status.success());
    assert!(reported(&again, "built").is_empty(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("Nothing to do: all 1 cached"),
        "{}",
        stdout(&again)
    );
}

#[test]
fn a_failure_names_the_derivation_location_status_and_log_and_stops_the_apply() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = store_dir();
    let out = run_dag(&store, &[("DAG_FAIL", "n0-0")], &["apply", "-j", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("error: build of `n0-0` (tests/programs/dag.rs:"),
        "{err}"
    );
    assert!(
        err.contains("failed: the builder exited with status 1"),
        "{err}"
    );
    assert!(err.contains("  | n0-0 gives up"), "{err}");
    assert!(
        !err.contains("building n1-"),
        "nothing after the failure starts without --keep-going:\n{err}"
    );
    assert!(
        fs::read_dir(store.join(".tmp")).unwrap().next().is_none(),
        "a failed build leaves no staging"
    );
}

#[test]
fn keep_going_builds_everything_that_does_not_depend_on_a_failure() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = store_dir();
    let out = run_dag(
        &store,
        &[("DAG_FAIL", "n0-0")],
        &["apply", "--keep-going", "--keep-failed"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let made: BTreeSet<String> = reported(&out, "built").into_iter().collect();
    // n<l>-i needs n<l-1>-i and n<l-1>-(i+1): n1-0 and n1-3 need n0-0, n2-0, n2-2 and n2-3
    // need one of those, and top needs the whole last layer.
    let expected: BTreeSet<String> = ["n0-1", "n0-2", "n0-3", "n1-1", "n1-2", "n2-1"]
        .map(String::from)
        .into();
    assert_eq!(made, expected, "{err}");
    for skipped in ["n1-0", "n1-3", "n2-0", "n2-2", "n2-3", "top"] {
        assert!(
            err.contains(&format!("skipped {skipped}: it depends on")),
            "{skipped} is not reported skipped:\n{err}"
        );
    }
    assert!(
        err.contains("error: 1 build failed; not built because a dependency failed: `"),
        "{err}"
    );
    let kept = err
        .lines()
        .find_map(|l| l.strip_prefix("the build directory is kept at "))
        .unwrap_or_else(|| panic!("--keep-failed names the directory:\n{err}"));
    assert!(Path::new(kept).is_dir(), "{kept} is kept");
    assert!(
        Path::new(kept).starts_with(fs::canonicalize(&store).unwrap()),
        "{kept}"
    );
    // The roots are not registered, and no generation is recorded.
    let roots = run_dag(&store, &[], &["roots"]);
    assert_eq!(stdout(&roots), "");
    let generations = run_dag(&store, &[], &["generations"]);
    assert!(
        stdout(&generations).contains("no generations yet"),
        "{}",
        stdout(&generations)
    );
}

#[test]
fn two_applies_at_once_build_each_derivation_once_and_both_succeed() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = store_dir();
    let first = [("DAG_SLEEP", "0.2"), ("DAG_LAYERS", "3")];
    let second = [("DAG_SLEEP", "0.2"), ("DAG_LAYERS", "4")];
    let a = dag(&store, &first, &["apply", "-j", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = dag(&store, &second, &["apply", "-j", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(b.status.success(), "{}", stderr(&b));
    // Both DAGs share layers 0-2 (12 derivations); each has its own `top` (two derivations of
    // one name), and the second has a fourth layer: 12 + 2 + 4 builds in all.
    let mut all = reported(&a, "built");
    all.extend(reported(&b, "built"));
    assert_eq!(all.len(), 18, "{all:?}");
    let shared: Vec<&String> = all.iter().filter(|n| *n != "top").collect();
    let unique: BTreeSet<&String> = shared.iter().copied().collect();
    assert_eq!(
        unique.len(),
        shared.len(),
        "a derivation was built twice:\n{}\n{}",
        stderr(&a),
        stderr(&b)
    );
    assert!(run_dag(&store, &[], &["verify"]).status.success());
}

#[test]
fn an_apply_waiting_on_another_says_which_process_holds_what() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = store_dir();
    let env = [("DAG_SLEEP", "2"), ("DAG_LAYERS", "1")];
    let mut first = dag(&store, &env, &["apply", "-j", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(first.stderr.take().unwrap());
    let mut seen = String::new();
    while seen.matches("building ").count() < 4 {
        let mut line = String::new();
        assert_ne!(err.read_line(&mut line).unwrap(), 0, "{seen}");
        seen.push_str(&line);
    }
    let second = run_dag(&store, &env, &["apply", "-j", "4"]);
    assert!(second.status.success(), "{}", stderr(&second));
    let waiting = format!("waiting for process {} (building `n0-", first.id());
    assert!(stderr(&second).contains(&waiting), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("to finish, which holds `n0-"),
        "{}",
        stderr(&second)
    );
    assert!(first.wait().unwrap().success());
}

/// The time one apply of `env` takes on a fresh store.
fn full_run(env: &[(&str, &str)]) -> (Duration, String) {
    let (_dir, store) = store_dir();
    let started = Instant::now();
    let out = run_dag(&store, env, &["apply", "-j", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let top = fs::read_to_string(
        stdout(&out)
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("top -> "))
            .map(|p| Path::new(p).join("all"))
            .expect("apply names the root"),
    )
    .unwrap();
    (started.elapsed(), top)
}

#[test]
fn kill_9_at_thirty_moments_leaves_a_valid_store_and_the_next_apply_completes() {
    if !sandbox() {
        return;
    }
    let env = [("DAG_FILES", "40"), ("DAG_SLEEP", "0.02")];
    let (full, expected_top) = full_run(&env);
    let points = 30;
    let mut killed_mid_run = 0;
    for point in 0..points {
        let (_dir, store) = store_dir();
        let mut child = dag(&store, &env, &["apply", "-j", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(f64::from(point) / f64::from(points)));
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let status = child.wait().unwrap();
        if status.code().is_none() {
            killed_mid_run += 1;
        }
        // Killed before it made the store, it left nothing (and `verify` makes no store).
        if store.exists() {
            let verify = run_dag(&store, &[], &["verify"]);
            assert!(
                verify.status.success(),
                "after a kill at {point}/{points}: {}{}",
                stdout(&verify),
                stderr(&verify)
            );
        }
        for entry in store_entries(&store) {
            assert!(
                store.join(&entry).join("meta.yaml").is_file(),
                "after a kill at {point}/{points}: {entry} has no meta.yaml"
            );
        }
        let out = run_dag(&store, &env, &["apply"]);
        assert!(
            out.status.success(),
            "after a kill at {point}/{points}: {}",
            stderr(&out)
        );
        let top = stdout(&out)
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("top -> "))
            .map(|p| fs::read_to_string(Path::new(p).join("all")).unwrap());
        assert_eq!(top.as_deref(), Some(expected_top.as_str()));
        assert!(fs::read_dir(store.join(".tmp")).unwrap().next().is_none());
    }
    assert!(
        killed_mid_run >= points / 2,
        "only {killed_mid_run} of {points} kills landed during the run"
    );
}

#[test]
fn ctrl_c_stops_the_builds_removes_their_staging_and_exits_130() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = store_dir();
    let mut child = dag(
        &store,
        &[("DAG_SLEEP", "30"), ("DAG_LAYERS", "1")],
        &["apply", "-j", "2"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.matches("building ").count().eq(&2) {
        let mut line = String::new();
        assert_ne!(err.read_line(&mut line).unwrap(), 0, "{seen}");
        seen.push_str(&line);
    }
    // The builds are under way: their staging exists.
    std::thread::sleep(Duration::from_millis(300));
    assert!(fs::read_dir(store.join(".tmp")).unwrap().next().is_some());
    let sent = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(
        sent.elapsed() < Duration::from_secs(20),
        "the 30 s builds were not stopped"
    );
    assert!(rest.contains("error: interrupted; stopped `n0-"), "{rest}");
    assert!(
        fs::read_dir(store.join(".tmp")).unwrap().next().is_none(),
        "staging is removed"
    );
    assert!(
        store_entries(&store).is_empty(),
        "{:?}",
        store_entries(&store)
    );
}

/// The pids of the processes whose command line holds `needle`, and of those whose parent is
/// `parent` and whose name is `name`.
fn processes(needle: &str, parent: u32, name: &str) -> (Vec<u32>, Vec<u32>) {
    let (mut with, mut children) = (Vec::new(), Vec::new());
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            with.push(pid);
        }
        let status = fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        };
        if field("PPid:") == parent.to_string() && field("Name:") == name {
            children.push(pid);
        }
    }
    (with, children)
}

/// Whether `pid` has ended (gone, or a zombie not yet reaped).
fn ended(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |s| {
        s.lines()
            .any(|l| l.starts_with("State:") && l.contains("zombie"))
    })
}

#[test]
fn builds_and_the_process_they_are_forked_from_end_with_a_killed_forjar() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = store_dir();
    // Each build sleeps for a time no other run uses, so that its processes are its own.
    let marker = format!("300.{}", std::process::id());
    let child = dag(
        &store,
        &[("DAG_SLEEP", &marker), ("DAG_LAYERS", "1")],
        &["apply", "-j", "2"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    // Killed however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(child);
    let forjar = child.0.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Two builds: each a shell and its `sleep`.
    let (builds, forked) = loop {
        let (builds, forked) = processes(&marker, forjar, "forjar-spawner");
        if builds.len() >= 4 {
            break (builds, forked);
        }
        assert!(Instant::now() < deadline, "the builds did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Forjar's children named after the thread that made the spawner: the spawner, and each
    // build's supervisor, which the spawner made forjar's child.
    assert!(forked.len() >= 3, "{forked:?}");
    kill(Pid::from_raw(forjar as i32), Signal::SIGKILL).unwrap();
    child.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !builds.iter().chain(&forked).all(|&pid| ended(pid)) {
        assert!(
            Instant::now() < deadline,
            "still running 10 s after forjar was killed: {:?}",
            builds
                .iter()
                .chain(&forked)
                .filter(|&&pid| !ended(pid))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_typed_on_a_terminal_stops_the_builds_clears_the_display_and_exits_130() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = store_dir();
    let mut command = dag(
        &store,
        &[("DAG_SLEEP", "30"), ("DAG_LAYERS", "1")],
        &["apply", "-j", "2"],
    );
    command.env_remove("NO_COLOR");
    let terminal = OnTerminal::spawn(command);
    // Both builds are under way once both have a build directory.
    let started = Instant::now();
    let builds = || {
        fs::read_dir(store.join(".tmp"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with("-build"))
                    .count()
            })
            .unwrap_or(0)
    };
    while builds() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            terminal.shown()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    // The terminal sends SIGINT to its foreground process group: forjar's, which the builds
    // are not in.
    terminal.type_keys(b"\x03");
    let (shown, status) = terminal.finish();
    assert_eq!(status.code(), Some(130), "{shown}");
    assert!(
        sent.elapsed() < Duration::from_secs(20),
        "the 30 s builds were not stopped: {shown}"
    );
    // On a terminal the prefix is in colour (bold red).
    let stopped = shown
        .rfind("\x1b[1m\x1b[31merror:\x1b[0m interrupted; stopped `n0-")
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        !shown.contains("failed"),
        "a stopped build is not a failed one: {shown}"
    );
    // Nothing is drawn after the error: the progress display was cleared before it.
    let after = &shown[stopped..];
    assert_eq!(after.lines().count(), 1, "{after:?}");
    assert!(
        fs::read_dir(store.join(".tmp")).unwrap().next().is_none(),
        "staging is removed"
    );
    assert!(
        store_entries(&store).is_empty(),
        "{:?}",
        store_entries(&store)
    );
}

/// Waits until the terminal has shown `text` `times` times in all.
fn wait_for(terminal: &OnTerminal, text: &str, times: usize) {
    let started = Instant::now();
    while terminal.shown().matches(text).count() < times {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "waiting for {text:?}: {}",
            terminal.shown()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn enter_opens_a_shell_in_the_sandbox_of_a_derivation_as_its_build_sees_it() {
    if !sandbox() {
        return;
    }
    let (dir, store) = store_dir();
    let env = [("DAG_LAYERS", "2"), ("DAG_SALT", "enter")];
    let prompt = "[forjar enter n1-0] $ ";
    let terminal = OnTerminal::spawn(dag(&store, &env, &["enter", "n1-0"]));
    wait_for(&terminal, prompt, 1);
    terminal.type_keys(b"echo \"in=$dep0 name=$NAME cwd=$PWD user=$(id -u)\"; cat $dep0/f1\n");
    wait_for(&terminal, prompt, 2);
    // Ctrl-C reaches the shell's command, not forjar, and the shell goes on.
    terminal.type_keys(b"sleep 30\n");
    std::thread::sleep(Duration::from_millis(500));
    let typed = Instant::now();
    terminal.type_keys(b"\x03");
    wait_for(&terminal, prompt, 3);
    assert!(
        typed.elapsed() < Duration::from_secs(20),
        "{}",
        terminal.shown()
    );
    terminal.type_keys(b"echo still here; touch /build/left-here; exit 0\n");
    let (shown, status) = terminal.finish();
    assert_eq!(status.code(), Some(0), "{shown}");
    let input = shown
        .lines()
        .find_map(|l| l.strip_prefix("in="))
        .unwrap_or_else(|| panic!("{shown}"));
    let canonical = fs::canonicalize(&store).unwrap();
    assert!(
        input.starts_with(&format!("{}/", canonical.display()))
            && input.contains("-n0-0/content name=n1-0 cwd=/build user=1000"),
        "{input}"
    );
    assert!(
        shown.contains("n0-0 1 enter"),
        "the input's content: {shown}"
    );
    assert!(shown.contains("still here"), "{shown}");
    assert!(
        shown.contains("entering the sandbox of `n1-0` (tests/programs/dag.rs:"),
        "{shown}"
    );
    // Its inputs were built; it was not, and nothing of the shell's is left.
    let made = store_entries(&store);
    assert!(made.iter().any(|e| e.ends_with("-n0-0")), "{made:?}");
    assert!(!made.iter().any(|e| e.ends_with("-n1-0")), "{made:?}");
    assert!(
        fs::read_dir(store.join(".tmp")).unwrap().next().is_none(),
        "the build directory and staging are removed"
    );

    // A failed build kept by `--keep-failed` is entered in its own directory.
    let failing = [
        ("DAG_LAYERS", "2"),
        ("DAG_SALT", "enter"),
        ("DAG_FAIL", "n1-0"),
    ];
    let failed = run_dag(&store, &failing, &["apply", "--keep-failed"]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    let kept = stderr(&failed)
        .lines()
        .find_map(|l| l.strip_prefix("the build directory is kept at "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{}", stderr(&failed)));
    let terminal = OnTerminal::spawn(dag(&store, &failing, &["enter", "n1-0"]));
    wait_for(&terminal, prompt, 1);
    terminal.type_keys(b"echo looked > /build/note; exit 4\n");
    let (shown, status) = terminal.finish();
    assert_eq!(status.code(), Some(1), "a shell that fails: {shown}");
    assert!(
        shown.contains(&format!(
            "its /build is the build directory kept at {}",
            kept.display()
        )),
        "{shown}"
    );
    assert_eq!(fs::read_to_string(kept.join("note")).unwrap(), "looked\n");

    // Only a derivation has a sandbox.
    let source = run_dag(&store, &env, &["enter", "nothing"]);
    assert_eq!(source.status.code(), Some(2), "{}", stderr(&source));
    drop(dir);
}

#[test]
fn check_rebuilds_and_names_the_files_that_differ() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = store_dir();
    let env = [("DAG_LAYERS", "1"), ("DAG_NOISE", "n0-1")];
    let out = run_dag(&store, &env, &["check", "n0-0", "--rounds", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("round 1: n0-0 output `out` matches the store")
            && text.contains("round 2: n0-0 output `out` matches the store"),
        "{text}"
    );
    // The rebuilds are compared, not installed: nothing of theirs is marked in the store's
    // windows (which the process, gone, would have left to the next open to sync).
    let windows: Vec<_> = fs::read_dir(store.join(".pending"))
        .unwrap()
        .flatten()
        .collect();
    assert!(windows.is_empty(), "{windows:?}");
    let out = run_dag(&store, &env, &["check", "n0-1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("round 1: n0-1 output `out` differs from the store"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("  ./noise: contents differ\n"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("error: `n0-1` is not reproducible"),
        "{}",
        stderr(&out)
    );
    assert!(run_dag(&store, &[], &["verify"]).status.success());
    // Kept when asked: the rebuild that differs, for a look.
    let out = run_dag(&store, &env, &["check", "n0-1", "--keep-failed"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let kept = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("  the rebuild is kept at "))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("no kept rebuild in:\n{}", stdout(&out)));
    assert!(
        kept.starts_with(store.join(".failed")),
        "{}",
        kept.display()
    );
    assert_eq!(fs::read(kept.join("noise")).unwrap().len(), 8);

    // A copy edited in place after it was installed does not pass for a reproduction.
    let built = run_dag(&store, &env, &["build", "n0-0"]);
    let content = stdout(&built)
        .lines()
        .find_map(|l| l.strip_prefix("n0-0 -> "))
        .map(std::path::PathBuf::from)
        .expect("build names the output");
    let file = content.join("f1");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&file, "edited\n").unwrap();
    let out = run_dag(&store, &env, &["check", "n0-0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("round 1: n0-0 output `out`: the store's copy no longer matches")
            && stdout(&out).contains("  ./f1: contents differ\n"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out)
            .contains("error: the store's copy of `n0-0` was changed after it was installed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn build_show_and_log_work_by_derivation_name() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = store_dir();
    let env = [("DAG_LAYERS", "2")];
    let out = run_dag(&store, &env, &["build", "n1-0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let made: BTreeSet<String> = reported(&out, "built").into_iter().collect();
    assert_eq!(
        made,
        ["n0-0", "n0-1", "n1-0"].map(String::from).into(),
        "build makes the target and what it needs, nothing else"
    );
    let path = stdout(&out)
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("n1-0 -> "))
        .map(PathBuf::from)
        .expect("build names the output");
    assert_eq!(fs::read_to_string(path.join("f1")).unwrap(), "n1-0 1 \n");

    let show = stdout(&run_dag(&store, &env, &["show", "n1-0"]));
    for expected in [
        "name: n1-0\n",
        "location: tests/programs/dag.rs:",
        "status: cached\n",
        "key: ",
        "request:\n",
        "output out: ",
        "  kind: build\n",
    ] {
        assert!(
            show.contains(expected),
            "`{expected}` missing from:\n{show}"
        );
    }
    let show = stdout(&run_dag(&store, &env, &["show", "n1-1"]));
    assert!(show.contains("status: build\n"), "{show}");
    assert!(show.contains("  (not in the store)\n"), "{show}");

    let log = run_dag(&store, &env, &["log", "n1-0"]);
    assert!(log.status.success(), "{}", stderr(&log));
    let log = run_dag(&store, &env, &["log", "n1-1"]);
    assert_eq!(log.status.code(), Some(1));
    assert!(
        stderr(&log).contains("`n1-1` has no build log in this store"),
        "{}",
        stderr(&log)
    );
    // A name that names nothing is a usage error, as the book's exit codes say.
    for command in ["show", "log"] {
        let unknown = run_dag(&store, &env, &[command, "nothing"]);
        assert_eq!(unknown.status.code(), Some(2), "{command}");
        assert!(stderr(&unknown).contains("no store entry matches `nothing`"));
    }
    let version = run_dag(&store, &env, &["--version"]);
    assert_eq!(
        stdout(&version),
        format!("dag (forjar {})\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn generations_record_diff_and_roll_back_without_building() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = store_dir();
    let v1 = [("DAG_LAYERS", "1"), ("DAG_SALT", "one")];
    let v2 = [("DAG_LAYERS", "1"), ("DAG_SALT", "two")];
    let top_of = |out: &Output| {
        stdout(out)
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("top -> "))
            .map(str::to_string)
            .expect("apply names the root")
    };
    let first = run_dag(&store, &v1, &["apply"]);
    assert!(
        stdout(&first).ends_with("Recorded generation 1 of profile `dag`\n"),
        "{}",
        stdout(&first)
    );
    let second = run_dag(&store, &v2, &["apply"]);
    assert!(
        stdout(&second).ends_with("Recorded generation 2 of profile `dag`\n"),
        "{}",
        stdout(&second)
    );
    let list = stdout(&run_dag(&store, &[], &["generations"]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(
        lines[0].starts_with("     1  ") && lines[0].ends_with("  +top"),
        "{list}"
    );
    assert!(
        lines[1].starts_with("*    2  ") && lines[1].ends_with("  ~top"),
        "{list}"
    );
    let diff = stdout(&run_dag(&store, &[], &["diff", "1", "2"]));
    assert!(diff.starts_with("~ top  "), "{diff}");

    // The same as JSON, for scripts: generations, roots and entries.
    let json = |args: &[&str]| -> serde_json::Value {
        let out = run_dag(&store, &[], args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let generations = json(&["generations", "--json"]);
    assert_eq!(generations.as_array().unwrap().len(), 2, "{generations}");
    assert_eq!(generations[1]["number"], 2);
    assert_eq!(generations[1]["current"], true);
    assert_eq!(generations[0]["current"], false);
    let top = generations[1]["roots"]["top"].as_str().unwrap().to_string();
    assert!(top.ends_with("-top"), "{generations}");
    let roots = json(&["roots", "--json"]);
    assert!(
        roots
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["entry"] == top.as_str() && r["indirect"] == false),
        "{roots}"
    );
    let entries = json(&["ls", "--json"]);
    let listed = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entry"] == top.as_str())
        .unwrap_or_else(|| panic!("{entries}"));
    assert_eq!(listed["kind"], "build");
    assert!(listed["size"].as_u64().unwrap() > 0, "{listed}");
    let diff = json(&["diff", "1", "2", "--json"]);
    assert_eq!(diff["changed"][0]["name"], "top", "{diff}");
    assert_eq!(
        diff["changed"][0]["to"]["entries"][0],
        top.as_str(),
        "{diff}"
    );
    assert_eq!(diff["added"], serde_json::json!([]), "{diff}");
    let json_of = |out: Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let show = json_of(run_dag(&store, &v2, &["show", "top", "--json"]));
    assert_eq!(show["status"], "cached", "{show}");
    assert_eq!(show["kind"], "derivation", "{show}");
    assert_eq!(show["outputs"]["out"]["entry"], top.as_str(), "{show}");
    assert_eq!(show["outputs"]["out"]["meta"]["name"], "top", "{show}");
    assert!(show["request"]["args"].is_array(), "{show}");
    let log = json_of(run_dag(&store, &v2, &["log", "top", "--json"]));
    assert_eq!(log["entry"], top.as_str(), "{log}");
    assert!(Path::new(log["log"].as_str().unwrap()).is_file(), "{log}");
    assert!(log["duration_ms"].is_u64(), "{log}");
    let entry = json(&["show", top.as_str(), "--json"]);
    assert_eq!(entry["meta"]["key"], show["outputs"]["out"]["meta"]["key"]);

    // Collecting garbage keeps every generation, so rolling back builds nothing.
    assert!(run_dag(&store, &[], &["gc"]).status.success());
    let back = run_dag(&store, &[], &["rollback"]);
    assert!(back.status.success(), "{}", stderr(&back));
    assert!(
        stdout(&back).ends_with("Generation 1 of profile `dag` is current (was 2)\n"),
        "{}",
        stdout(&back)
    );
    assert_eq!(
        top_of(&back),
        top_of(&first),
        "the root points where it did"
    );
    let roots = stdout(&run_dag(&store, &[], &["roots"]));
    let first_entry = Path::new(&top_of(&first))
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(roots.contains(&first_entry), "{roots}");
    let forward = run_dag(&store, &[], &["rollback", "--to", "2"]);
    assert!(forward.status.success(), "{}", stderr(&forward));
    let missing = run_dag(&store, &[], &["rollback", "--to", "9"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("profile `dag` has no generation 9"),
        "{}",
        stderr(&missing)
    );
    assert!(run_dag(&store, &[], &["verify"]).status.success());

    // Deleting a generation lets gc free what only it kept; the current one cannot go.
    let current = run_dag(&store, &[], &["delete-generations", "2"]);
    assert_eq!(current.status.code(), Some(1));
    assert!(
        stderr(&current).contains("generation 2 is the current one of profile `dag`"),
        "{}",
        stderr(&current)
    );
    let none = run_dag(&store, &[], &["delete-generations", "--older-than", "1h"]);
    assert_eq!(
        stdout(&none),
        "no generation of profile `dag` matches; nothing was deleted\n"
    );
    let usage = run_dag(&store, &[], &["delete-generations"]);
    assert_eq!(
        usage.status.code(),
        Some(2),
        "nothing named is a usage error"
    );
    let deleted = run_dag(&store, &[], &["delete-generations", "--keep", "1"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert_eq!(
        stdout(&deleted),
        "Deleted generation 1 of profile `dag`; `gc` frees what only they kept\n"
    );
    assert!(Path::new(&top_of(&first)).exists());
    assert!(run_dag(&store, &[], &["gc"]).status.success());
    assert!(
        !Path::new(&top_of(&first)).exists(),
        "only generation 1 kept it"
    );
    assert!(Path::new(&top_of(&second)).exists());
    let list = stdout(&run_dag(&store, &[], &["generations"]));
    assert!(
        list.starts_with("*    2  ") && list.lines().count() == 1,
        "{list}"
    );
    assert!(run_dag(&store, &[], &["verify"]).status.success());
}

#[test]
fn profiles_keep_their_own_roots_and_out_links_are_roots_while_they_exist() {
    if !sandbox() {
        return;
    }
    let (dir, store) = store_dir();
    let v1 = [("DAG_LAYERS", "1"), ("DAG_SALT", "staging")];
    let v2 = [("DAG_LAYERS", "1"), ("DAG_SALT", "production")];
    let json = |args: &[&str]| -> serde_json::Value {
        let out = run_dag(&store, &[], args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let root_entry = |roots: &serde_json::Value, name: &str| -> String {
        roots
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["entry"].as_str())
            .unwrap_or_else(|| panic!("no root `{name}`: {roots}"))
            .to_string()
    };

    // Two profiles in one store: applying one moves none of the other's roots.
    let staging = run_dag(&store, &v1, &["--profile", "staging", "apply"]);
    assert!(staging.status.success(), "{}", stderr(&staging));
    let before = root_entry(&json(&["roots", "--json"]), "staging/top");
    let production = run_dag(&store, &v2, &["--profile", "production", "apply"]);
    assert!(production.status.success(), "{}", stderr(&production));
    let roots = json(&["roots", "--json"]);
    assert_eq!(root_entry(&roots, "staging/top"), before, "{roots}");
    assert_ne!(root_entry(&roots, "production/top"), before, "{roots}");
    let link = store.join(".profiles/staging/roots/top");
    assert!(fs::read_link(&link).unwrap().ends_with(&before));
    let back = run_dag(&store, &[], &["--profile", "production", "rollback"]);
    assert_eq!(back.status.code(), Some(1), "production has one generation");
    assert!(
        stderr(&back).contains("generation 1 is the oldest of profile `production`"),
        "{}",
        stderr(&back)
    );

    // The profile is named after the program, not after the file it was copied to.
    let copy = dir.path().join("copied-program");
    fs::copy(forjar_suite::example("dag"), &copy).unwrap();
    let copied = std::process::Command::new(&copy)
        .args(["--store".as_ref(), store.as_os_str(), "apply".as_ref()])
        .envs(v1)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        stdout(&copied).ends_with("Recorded generation 1 of profile `dag`\n"),
        "{}",
        stdout(&copied)
    );

    // `build` links `result` (and `result-<name>` for each further output) in the working
    // directory; each link keeps its entry through `gc` for as long as it exists.
    let built = run_dag(&store, &v1, &["build", "n0-0", "n0-1"]);
    assert!(built.status.success(), "{}", stderr(&built));
    let result = dir.path().join("result");
    let target = fs::read_link(&result).unwrap();
    assert!(target.ends_with("content"), "{}", target.display());
    assert_eq!(
        fs::read_to_string(target.join("f1")).unwrap(),
        "n0-0 1 staging\n"
    );
    assert!(
        stdout(&built).contains(&format!("result -> {}", target.display())),
        "{}",
        stdout(&built)
    );
    let second = fs::read_link(dir.path().join("result-n0-1")).unwrap();
    assert!(run_dag(&store, &[], &["gc"]).status.success());
    assert!(target.is_dir() && second.is_dir(), "the links keep them");
    fs::remove_file(&result).unwrap();
    assert!(run_dag(&store, &[], &["gc"]).status.success());
    assert!(!target.exists(), "without its link it is garbage");
    assert!(second.is_dir());

    // `apply --out-link`, `build --no-out-link`, and a path that is not a link is left alone.
    let linked = run_dag(&store, &v2, &["apply", "--out-link", "prod"]);
    assert!(linked.status.success(), "{}", stderr(&linked));
    let prod = fs::read_link(dir.path().join("prod")).unwrap();
    assert!(
        prod.starts_with(store.join(root_entry(&roots, "production/top"))),
        "{}",
        prod.display()
    );
    let unlinked = run_dag(&store, &v1, &["build", "--no-out-link", "n0-2"]);
    assert!(unlinked.status.success(), "{}", stderr(&unlinked));
    assert!(
        !stdout(&unlinked).contains("result"),
        "{}",
        stdout(&unlinked)
    );
    fs::write(dir.path().join("taken"), "mine").unwrap();
    let refused = run_dag(&store, &v1, &["build", "-o", "taken", "n0-2"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("`taken` exists and is not a symlink"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("taken")).unwrap(),
        "mine"
    );
}

#[test]
fn after_gc_an_apply_whose_roots_are_in_the_store_builds_nothing() {
    if !sandbox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let salt = fresh_salt("valid-output");
    let env = [("DAG_SALT", salt.as_str())];
    let first = run_dag(&store, &env, &["apply"]);
    assert!(first.status.success(), "{}", stderr(&first));
    // `top` copies its inputs' text and refers to none of them, so gc keeps `top` alone.
    assert!(run_dag(&store, &[], &["gc"]).status.success());
    let plan = run_dag(&store, &env, &["plan"]);
    let text = stdout(&plan);
    assert!(
        text.ends_with("Plan: 0 to build, 1 cached, 0 sources to import, 12 not needed\n"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("unneeded*  n0-0 ")),
        "{text}"
    );
    let again = run_dag(&store, &env, &["apply"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(reported(&again, "built").is_empty(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("Nothing to do: all 1 cached"),
        "{}",
        stdout(&again)
    );
    // Asked for by name, a build-time input is built again, with what it needs.
    let one = run_dag(&store, &env, &["build", "n1-0"]);
    assert!(one.status.success(), "{}", stderr(&one));
    assert_eq!(
        reported(&one, "built"),
        ["n0-0", "n0-1", "n1-0"],
        "{}",
        stderr(&one)
    );
}

#[test]
fn a_rebuild_that_changes_no_output_rebuilds_nothing_after_it() {
    if !sandbox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let salt = fresh_salt("early-cutoff");
    let first = run_dag(&store, &[("DAG_SALT", salt.as_str())], &["apply"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    let built = |output: &Output| {
        reported(output, "built")
            .into_iter()
            .collect::<BTreeSet<_>>()
    };

    // A comment in n0-0's script: a new key, the same output. n1-0 and n1-3 take n0-0, and
    // n2-0, n2-2, n2-3 and top take those: their keys wait on what n0-0's build makes.
    let comment = [("DAG_SALT", salt.as_str()), ("DAG_COMMENT", "n0-0")];
    let plan = run_dag(&store, &comment, &["plan"]);
    let text = stdout(&plan);
    assert!(
        text.contains(
            "Plan: 7 to build (6 only if what is built before them changes), 6 cached, 0 sources to import"
        ),
        "{text}"
    );
    assert!(
        text.lines().any(|l| {
            l.split_whitespace().take(2).eq(["build*", "n1-0"]) && l.ends_with("(after `n0-0`)")
        }),
        "{text}"
    );
    let again = run_dag(&store, &comment, &["apply"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(built(&again), set(&["n0-0"]), "{}", stderr(&again));
    assert!(
        stdout(&again).contains(
            "Built 1, imported 0, 11 cached (6 of them after a rebuild that changed nothing: `"
        ),
        "{}",
        stdout(&again)
    );
    // The rebuild is realised to the entries it matched, so the next plan finds everything.
    let plan = run_dag(&store, &comment, &["plan"]);
    assert!(
        stdout(&plan).contains("Plan: 0 to build, 13 cached"),
        "{}",
        stdout(&plan)
    );
    // n1-0 is found under its own key, and planned without its resolved request: what asks for
    // that request gets it.
    let show = run_dag(&store, &comment, &["show", "n1-0"]);
    assert!(show.status.success(), "{}", stderr(&show));
    assert!(
        stdout(&show).contains("status: cached\n") && stdout(&show).contains("resolved key: "),
        "{}",
        stdout(&show)
    );
    let check = run_dag(&store, &comment, &["check", "n1-0"]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("round 1: n1-0 output `out` matches the store"),
        "{}",
        stdout(&check)
    );
    // A changed output rebuilds what takes it; their outputs, unchanged, stop it there.
    let extra = [("DAG_SALT", salt.as_str()), ("DAG_EXTRA", "n0-0")];
    let changed = run_dag(&store, &extra, &["apply"]);
    assert!(changed.status.success(), "{}", stderr(&changed));
    assert_eq!(
        built(&changed),
        set(&["n0-0", "n1-0", "n1-3"]),
        "{}",
        stderr(&changed)
    );
    // After gc, which keeps only the root's entry, each derivation is found from its key.
    assert!(run_dag(&store, &[], &["gc"]).status.success());
    for env in [&comment[..], &extra[..]] {
        let after_gc = run_dag(&store, env, &["apply"]);
        assert!(after_gc.status.success(), "{}", stderr(&after_gc));
        assert!(built(&after_gc).is_empty(), "{}", stderr(&after_gc));
    }
    assert!(run_dag(&store, &[], &["verify"]).status.success());
}

#[test]
fn plan_explain_says_what_changed_since_the_last_build_of_each_name() {
    if !sandbox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let salt = fresh_salt("explain");
    let env = [("DAG_SALT", salt.as_str())];
    let why = |output: &Output, name: &str| -> Vec<String> {
        let text = stdout(output);
        let mut lines = text
            .lines()
            .skip_while(|l| l.split_whitespace().nth(1) != Some(name));
        lines.next();
        lines
            .take_while(|l| l.trim_start().starts_with("because "))
            .map(|l| l.trim_start().trim_start_matches("because ").to_string())
            .collect()
    };
    let fresh = run_dag(&store, &env, &["plan", "--explain"]);
    assert_eq!(
        why(&fresh, "n0-0"),
        ["never built in this store"],
        "{}",
        stdout(&fresh)
    );
    assert!(run_dag(&store, &env, &["apply"]).status.success());

    // A script line added: that line, for the derivation; what takes it waits on it.
    let comment = [("DAG_SALT", salt.as_str()), ("DAG_COMMENT", "n0-0")];
    let plan = run_dag(&store, &comment, &["plan", "--explain"]);
    let reasons = why(&plan, "n0-0");
    assert!(
        reasons.len() == 1
            && reasons[0].starts_with("args[")
            && reasons[0].ends_with(": (none) -> `# the output does not change`"),
        "{}",
        stdout(&plan)
    );
    assert_eq!(
        why(&plan, "n1-0")[0],
        "takes `n0-0`, built first; built only if what it makes differs from the store's",
        "{}",
        stdout(&plan)
    );

    // An env value, and a part of the host fingerprint (the last build's record says another
    // hash of the package database).
    let record_path = store.join(".builds/n0-0.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    record["host"]["/var/lib/dpkg/status"] = "0".repeat(64).into();
    record["request"]["host"] = "0".repeat(64).into();
    fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();
    let other = format!("{salt}-other");
    let resalted = [("DAG_SALT", other.as_str())];
    let plan = run_dag(&store, &resalted, &["plan", "--explain"]);
    assert_eq!(
        why(&plan, "n0-0"),
        [
            format!("env SALT: `{salt}` -> `{other}`"),
            "host fingerprint: /var/lib/dpkg/status changed".to_string()
        ],
        "{}",
        stdout(&plan)
    );
    let json = run_dag(&store, &resalted, &["plan", "--json", "--explain"]);
    let value: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    let node = value["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "n0-0")
        .unwrap();
    assert_eq!(node["why"][0]["reason"], "changed", "{node}");
    assert_eq!(node["why"][0]["field"], "env SALT", "{node}");
    assert_eq!(node["why"][1]["reason"], "host", "{node}");

    // `apply -v` says the same before it builds.
    let verbose = run_dag(&store, &resalted, &["apply", "-v"]);
    assert!(verbose.status.success(), "{}", stderr(&verbose));
    assert!(
        stderr(&verbose).contains(&format!("why n0-0: env SALT: `{salt}` -> `{other}`\n")),
        "{}",
        stderr(&verbose)
    );
}

#[test]
fn gc_keeps_build_inputs_when_asked_delete_refuses_what_is_needed_and_verify_repairs() {
    if !sandbox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let salt = fresh_salt("integrity");
    let env = [("DAG_SALT", salt.as_str())];
    assert!(run_dag(&store, &env, &["apply"]).status.success());
    let all = store_entries(&store);
    assert_eq!(all.len(), 13, "{all:?}");
    let entry = |name: &str| {
        all.iter()
            .find(|e| e.ends_with(&format!("-{name}")))
            .unwrap()
            .clone()
    };

    // `top` refers to none of its inputs; kept as what it was built from, they stay.
    let kept = run_dag(&store, &[], &["gc", "--keep-build-inputs"]);
    assert!(kept.status.success(), "{}", stderr(&kept));
    assert_eq!(store_entries(&store), all);
    assert!(
        run_dag(&store, &[], &["set", "keep-build-inputs", "true"])
            .status
            .success()
    );
    assert!(run_dag(&store, &[], &["gc"]).status.success());
    assert_eq!(
        store_entries(&store),
        all,
        "the store's setting keeps them too"
    );

    // What a root needs is not deleted, and says who needs it; the rest is.
    let refused = run_dag(&store, &[], &["delete", &entry("top")]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(&format!("root `dag` needs `{}`", entry("top")))
            || stderr(&refused).contains(&format!(
                "a generation of a profile needs `{}`",
                entry("top")
            )),
        "{}",
        stderr(&refused)
    );
    assert!(store_entries(&store).contains(&entry("top")));
    let deleted = run_dag(&store, &[], &["delete", &entry("n0-0")]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(!store_entries(&store).contains(&entry("n0-0")));

    // `verify` names the problem, exit 1; `verify --repair` builds what it takes and leaves a
    // whole store. Returns what the repair built.
    let verify_and_repair = |problem: &str| -> Vec<String> {
        let verify = run_dag(&store, &env, &["verify"]);
        assert_eq!(verify.status.code(), Some(1));
        assert!(stdout(&verify).contains(problem), "{}", stdout(&verify));
        let repair = run_dag(&store, &env, &["verify", "--repair"]);
        let (out, err) = (stdout(&repair), stderr(&repair));
        assert!(repair.status.success(), "{out}\n{err}");
        assert!(out.ends_with("verified 13 entries: all match\n"), "{out}");
        reported(&repair, "built")
    };

    // Content edited in place (n1-0's input n0-0 is gone too).
    let content = store.join(entry("n1-0")).join("content");
    fs::set_permissions(&content, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(content.join("f1"), "edited\n").unwrap();
    let problem = format!("{}: content does not match its digest", entry("n1-0"));
    assert_eq!(verify_and_repair(&problem).len(), 2);
    assert_eq!(
        fs::read_to_string(content.join("f1")).unwrap(),
        format!("n1-0 1 {salt}\n")
    );

    // Deleted by force although a generation needs it.
    let forced = run_dag(&store, &[], &["delete", "--force", &entry("top")]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let problem = format!(
        "{}: a generation of a profile needs it, and the store no longer has it",
        entry("top")
    );
    assert_eq!(verify_and_repair(&problem), ["top"]);
    assert!(store_entries(&store).contains(&entry("top")));
}
