//! Sandbox cost against named peers, measured in the same run.
//!
//! ```text
//! bench/sandbox                          # installs bubblewrap and nix-bin if missing, runs this
//! cargo bench -p forjar --bench sandbox -- [--runs N]
//! ```
//!
//! 1. Spawning `/usr/bin/true`: a plain `fork`+`exec`; forjar's sandbox (`sandbox::run`, host
//!    tools level: every namespace, tmpfs root, /dev, /proc, seccomp); `bwrap` with a comparable
//!    sandbox.
//! 2. A trivial derivation end to end (`echo x > $out`, with a new value each run so it is
//!    built): forjar's plan + apply (key, sandbox, ingest, `meta.yaml`, one rename) against
//!    `nix-build` of the same derivation with Nix's sandbox on and substituters off, in
//!    interleaved pairs.

use forjar::map::SortedSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod peers;
use peers::{have, measure};

use forjar::name::Limits;
use forjar::name::{Name, OutputName};
use forjar::plan::Plan;
use forjar::prelude::*;
use forjar::request::{Arg, BuildRequest, CleanRelPath, RequestParts, System};
use forjar::sandbox::{self, BuildSpec};
use forjar::store::Store;

fn run_ok(cmd: &mut Command) {
    peers::run_ok(cmd.stdout(Stdio::null()));
}

fn row(name: &str, time: Duration, reference: Duration) {
    println!(
        "| {name} | {:.2} ms | {:.2}x |",
        time.as_secs_f64() * 1e3,
        time.as_secs_f64() / reference.as_secs_f64()
    );
}

fn main() {
    // As a program's `main!` does: builds are forked from a process made while this one is
    // small.
    sandbox::start_spawner().expect("the build spawner starts");
    let (runs, _) = peers::args(30);
    let dir = tempfile::tempdir().expect("a temporary directory");
    println!(
        "median of {runs} runs, after one unmeasured run; load average at the start: {}\n",
        peers::load()
    );

    // 1. Spawning `true`.
    let plain = measure(runs, |_| run_ok(&mut Command::new("/usr/bin/true")));
    let build_dir = dir.path().join("build");
    std::fs::create_dir(&build_dir).unwrap();
    let request = BuildRequest::new(RequestParts {
        name: Name::new("true").unwrap(),
        system: System::host(),
        args: vec![Arg::new(0, "/usr/bin/true").unwrap()],
        working_dir: CleanRelPath::new("working directory", "build").unwrap(),
        scratch_paths: SortedSet::new(),
        outputs: SortedSet::from([OutputName::out()]),
        env: Default::default(),
        inputs: Default::default(),
        files: Default::default(),
        constraints: Default::default(),
        sandbox: SandboxLevel::HostTools,
        fixed_output: None,
        store_dir: forjar::name::StoreDir::from_path(&dir.path().join("store")).unwrap(),
        host: Some(forjar::hash::HostFingerprint::current()),
        toolchain: None,
        input_lists: Default::default(),
    })
    .unwrap();
    let spec = BuildSpec {
        request: &request,
        inputs: vec![],
        referenced: vec![],
        toolchain: None,
        outputs: vec![],
        build_dir: build_dir.clone(),
        limits: Limits::default(),
        cores: 1,
        cancel: None,
        hold: None,
        under_way: None,
    };
    let forjar_spawn = measure(runs, |_| {
        let finished = sandbox::run(&spec, &mut std::io::sink(), &|| 0).expect("the sandbox runs");
        assert!(finished.outcome.success(), "{}", finished.outcome);
    });
    println!("| spawn `/usr/bin/true` | median | / plain spawn |");
    println!("|---|---:|---:|");
    row("plain fork+exec", plain, plain);
    row("forjar sandbox (host-tools)", forjar_spawn, plain);
    if have("bwrap") {
        let bwrap = measure(runs, |_| {
            run_ok(Command::new("bwrap").args([
                "--unshare-all",
                "--uid",
                "1000",
                "--gid",
                "100",
                "--hostname",
                "localhost",
                "--die-with-parent",
                "--new-session",
                "--clearenv",
                "--ro-bind",
                "/usr",
                "/usr",
                "--symlink",
                "usr/bin",
                "/bin",
                "--symlink",
                "usr/sbin",
                "/sbin",
                "--symlink",
                "usr/lib",
                "/lib",
                "--symlink",
                "usr/lib64",
                "/lib64",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--tmpfs",
                "/tmp",
                "--bind",
                build_dir.to_str().unwrap(),
                "/build",
                "--chdir",
                "/build",
                "/usr/bin/true",
            ]))
        });
        row("bwrap (same namespaces and mounts)", bwrap, plain);
        println!(
            "\nforjar / bwrap = {:.2} (target: at most 1.0)",
            forjar_spawn.as_secs_f64() / bwrap.as_secs_f64()
        );
    } else {
        eprintln!("bwrap not found: install Debian's bubblewrap (bench/sandbox does)");
    }

    // 2. A trivial derivation, end to end, in interleaved pairs: forjar's run i, then Nix's
    // run i, so that both meet the same load.
    let store = Store::open(dir.path().join("store")).unwrap();
    let seed = std::process::id();
    let forjar_once = |i: usize| {
        // What earlier runs left dirty is written back first, for both.
        peers::settle();
        let started = Instant::now();
        let mut g = Graph::new();
        let d = g.add(
            Derivation::builder("trivial")
                .script("echo x > $out")
                .env("nonce", format!("{i}"))
                .build()
                .unwrap(),
        );
        g.root("trivial", d);
        let plan = Plan::new(&g, &store).unwrap();
        forjar::exec::apply(
            &plan,
            &store,
            &forjar::exec::Local::default(),
            &forjar::exec::Options::default(),
            &|_| {},
        )
        .expect("the build succeeds");
        started.elapsed()
    };
    let nix_once = |i: usize| {
        let expr = format!(
            "derivation {{ name = \"trivial\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
             args = [\"-c\" \"echo x > $out\"]; nonce = \"{seed}-{i}\"; }}"
        );
        peers::settle();
        let started = Instant::now();
        peers::nix_build(&expr, 1);
        started.elapsed()
    };
    let nix = have("nix-build");
    if !nix {
        eprintln!("nix-build not found: install Debian's nix-bin (bench/sandbox does)");
    }
    let timed = peers::pairs(runs, forjar_once, nix.then_some(nix_once));
    println!("\n| trivial derivation, end to end | median | / forjar |");
    println!("|---|---:|---:|");
    row("forjar plan + apply", timed.ours, timed.ours);
    if let Some(nix_time) = timed.theirs {
        row(
            "nix-build (sandbox on, no substituters)",
            nix_time,
            timed.ours,
        );
        println!(
            "\nnix-build / forjar, median of the pairs' ratios = {:.2} (target: at least 10)",
            timed.ratio()
        );
    }
    println!("\nload average at the end: {}", peers::load());
}
