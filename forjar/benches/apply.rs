//! Apply at scale, against Nix measured in the same run.
//!
//! ```text
//! bench/apply                                   # installs nix-bin if missing, runs this
//! cargo bench -p forjar --bench apply -- [--runs N] [--tree N] [--noop N] [--no-nix-noop]
//!                                              [--no-nix] [--sizes N,N,..]
//!                                              [--part tree|noop|makespan|scaling]..
//! ```
//!
//! 1. A tree-shaped DAG of `--tree` (1000) trivial derivations (node i depends on 2i+1 and
//!    2i+2; each writes its number and its inputs' paths): forjar's plan + apply with `-j 2` on
//!    a fresh store, against `nix-build -j2` of the same tree with Nix's sandbox on and
//!    substituters off. Both start from nothing built (a new nonce every run). With Nix, each
//!    pair is followed by a run of the floor (`floor/mod.rs`): the same tree built with the
//!    sandbox's namespaces, mounts and `exec` alone, without forjar's runtime, which bounds what
//!    any runtime with this isolation could reach against Nix on this machine.
//! 2. A no-op `plan` of `--noop` (10,000) cached derivations (the same tree shape): defining
//!    the graph, opening the store and planning, in process; and Nix's no-op `nix-build` of
//!    the same tree once built (left out with `--no-nix-noop`; building it takes minutes).
//! 3. 40 independent builds of `sleep 0.5` with `-j 4`: the makespan against the ideal 5 s.
//! 4. The first build of trees of `--sizes` (1000,4000,10000) derivations, each run in a
//!    process of its own: milliseconds per derivation and that process's peak RSS, against
//!    the smallest size.
//!
//! The parts that build start on a file system that has forgotten the inodes freed before
//! (`peers::forget_freed_inodes`), and keep every store until the end.

use std::path::Path;
use std::time::{Duration, Instant};

mod floor;
mod peers;
use peers::{have, measure, nix_build};

use forjar::exec::{self, Options};
use forjar::plan::Plan;
use forjar::prelude::*;
use forjar::store::Store;

/// The tree of `size` trivial derivations, made new by `nonce`.
fn tree(g: &mut Graph, size: usize, nonce: &str) -> Drv {
    let mut nodes: Vec<Option<Drv>> = vec![None; size];
    for i in (0..size).rev() {
        let mut builder = Derivation::builder(format!("n{i}"))
            .script("echo $id ${dep0-} ${dep1-} > $out")
            .env("id", i.to_string())
            .env("nonce", nonce);
        for (k, child) in children(i, size).enumerate() {
            let drv = nodes[child].take().expect("each node has one parent");
            builder = builder.input(format!("dep{k}"), drv);
        }
        nodes[i] = Some(g.add(builder.build().expect("a valid derivation")));
    }
    nodes[0].take().expect("the tree has a root")
}

/// The children of node `i` in the tree of `size`: 2i+1 and 2i+2, those that exist.
fn children(i: usize, size: usize) -> impl Iterator<Item = usize> {
    [2 * i + 1, 2 * i + 2]
        .into_iter()
        .filter(move |&c| c < size)
}

/// Plans and applies the tree on `store`.
fn apply_tree(store: &Store, size: usize, nonce: &str, jobs: usize) -> exec::Report {
    let mut g = Graph::new();
    let root = tree(&mut g, size, nonce);
    g.root("tree", root);
    let plan = Plan::new(&g, store).expect("the tree plans");
    let options = Options {
        jobs,
        ..Options::default()
    };
    exec::apply(&plan, store, &exec::Local::default(), &options, &|_| {}).expect("the tree builds")
}

/// The Nix expression of the same tree.
fn nix_tree(size: usize, nonce: &str) -> String {
    format!(
        r#"let
  size = {size};
  node = i: derivation {{
    name = "n${{toString i}}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo $id \${{dep0-}} \${{dep1-}} > $out" ];
    id = toString i;
    nonce = "{nonce}";
    dep0 = if 2 * i + 1 < size then node (2 * i + 1) else "";
    dep1 = if 2 * i + 2 < size then node (2 * i + 2) else "";
  }};
in node 0"#
    )
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn main() {
    let (runs, rest) = peers::args(3);
    let flag = |name: &str, default: usize| {
        rest.iter()
            .position(|a| a == name)
            .and_then(|i| rest.get(i + 1))
            .map_or(default, |n| n.parse().expect("a number"))
    };
    let store = |part: &str| {
        rest.iter()
            .position(|a| a == "--store")
            .and_then(|i| rest.get(i + 1))
            .map(Path::new)
            .unwrap_or_else(|| panic!("{part} takes --store DIR"))
    };
    // Before any thread starts: the floor forks its workers and builds from this process.
    if rest.iter().any(|a| a == "--floor-one") {
        let took = floor::run(store("--floor-one"), flag("--floor-one", 0), 2);
        println!("{}", took.as_secs_f64());
        return;
    }
    // As a program's `main!` does: builds are forked from a process made while this one is
    // small.
    forjar::sandbox::start_spawner().expect("the build spawner starts");
    if rest.iter().any(|a| a == "--scaling-one") {
        let nonce = format!("{}-{}", std::process::id(), flag("--nonce", 0));
        scaling_one(store("--scaling-one"), flag("--scaling-one", 0), &nonce);
        return;
    }
    let tree_size = flag("--tree", 1000);
    let noop_size = flag("--noop", 10_000);
    let nix_noop = !rest.iter().any(|a| a == "--no-nix-noop");
    // `--part tree|noop|makespan|scaling` (repeatable) runs only the parts named.
    let parts: Vec<&str> = rest
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--part")
        .filter_map(|(i, _)| rest.get(i + 1).map(String::as_str))
        .collect();
    let part = |name: &str| parts.is_empty() || parts.contains(&name);
    let nix = have("nix-build") && !rest.iter().any(|a| a == "--no-nix");
    if !have("nix-build") {
        eprintln!("nix-build not found: install Debian's nix-bin (bench/apply does)");
    }
    let sizes: Vec<usize> = rest
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| rest.get(i + 1))
        .map_or("1000,4000,10000", String::as_str)
        .split(',')
        .map(|n| n.parse().expect("--sizes takes numbers: 1000,4000,10000"))
        .collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let seed = std::process::id();
    println!(
        "median of {runs} runs, after one unmeasured run; load average at the start: {}\n",
        peers::load()
    );

    // 1. First build of the tree.
    if part("tree") {
        tree_part(&dir, runs, tree_size, seed, nix);
    }
    if part("noop") {
        noop_part(&dir, runs, noop_size, seed, nix && nix_noop);
    }
    if part("makespan") {
        makespan_part(&dir, runs, seed);
    }
    if part("scaling") {
        scaling_part(&dir, runs, &sizes);
    }
    println!("\nload average at the end: {}", peers::load());
}

fn tree_part(dir: &tempfile::TempDir, runs: usize, tree_size: usize, seed: u32, nix: bool) {
    // Interleaved: forjar's run i, then Nix's run i, then the floor's, so that all meet the
    // same load.
    let exe = std::env::current_exe().expect("this benchmark's path");
    peers::forget_freed_inodes();
    let mut floors = Vec::new();
    let mut floor = |i: usize| {
        let at = dir.path().join(format!("floor-{i}"));
        std::fs::create_dir(&at).unwrap();
        let open = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&at, open).unwrap();
        peers::settle();
        let out = peers::run_ok(
            std::process::Command::new(&exe)
                .args(["--floor-one", &tree_size.to_string(), "--store"])
                .arg(&at),
        );
        let secs: f64 = String::from_utf8_lossy(&out).trim().parse().unwrap();
        if i != usize::MAX {
            floors.push(Duration::from_secs_f64(secs));
        }
    };
    let build = |i: usize| {
        let store = Store::open(dir.path().join(format!("tree-{i}"))).unwrap();
        peers::settle();
        let started = Instant::now();
        let report = apply_tree(&store, tree_size, &format!("{seed}-{i}"), 2);
        let took = started.elapsed();
        assert_eq!(report.built.len(), tree_size);
        took
    };
    let nix_build_tree = |i: usize| {
        peers::settle();
        let started = Instant::now();
        nix_build(&nix_tree(tree_size, &format!("{seed}-{i}")), 2);
        let took = started.elapsed();
        floor(i);
        took
    };
    let timed = peers::pairs(runs, build, nix.then_some(nix_build_tree));
    println!("| {tree_size}-derivation tree, first build, -j2 | median | / forjar |");
    println!("|---|---:|---:|");
    println!("| forjar plan + apply | {} | 1.00x |", secs(timed.ours));
    if let Some(nix_first) = timed.theirs {
        println!(
            "| nix-build -j2 (sandbox on, no substituters) | {} | {:.2}x |",
            secs(nix_first),
            nix_first.as_secs_f64() / timed.ours.as_secs_f64()
        );
        let floor = peers::median(floors.clone());
        println!(
            "| floor: the sandbox's namespaces and mounts alone, -j2 | {} | {:.2}x |",
            secs(floor),
            floor.as_secs_f64() / timed.ours.as_secs_f64()
        );
        println!(
            "\nnix-build / forjar per pair: {} (median {:.2}; target: at least 10)",
            timed
                .ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            timed.ratio()
        );
        println!(
            "nix-build / floor: {:.2} (the most a runtime with this sandbox could reach here); \
             forjar / floor: {:.2}",
            nix_first.as_secs_f64() / floor.as_secs_f64(),
            timed.ours.as_secs_f64() / floor.as_secs_f64()
        );
        let listed = |runs: &[Duration]| {
            runs.iter()
                .map(|d| format!("{:.3}", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "each run in order, seconds: forjar {}; nix-build {}; floor {}",
            listed(&timed.our_runs),
            listed(&timed.their_runs),
            listed(&floors)
        );
    }
}

/// The fourth part: the first build of trees of each size, each in a process of its own:
/// milliseconds per derivation, and the peak memory of that process.
fn scaling_part(dir: &tempfile::TempDir, runs: usize, sizes: &[usize]) {
    let exe = std::env::current_exe().expect("this benchmark's path");
    peers::forget_freed_inodes();
    let run = |size: usize, round: usize| {
        peers::settle();
        let out = peers::run_ok(
            std::process::Command::new(&exe)
                .args([
                    "--scaling-one",
                    &size.to_string(),
                    "--nonce",
                    &round.to_string(),
                ])
                // Every store stays until the end: removing one makes the next run's files
                // slower to create on some file systems (ext4 without a journal skips inodes
                // freed in the last seconds).
                .arg("--store")
                .arg(dir.path().join(format!("scaling-{size}-{round}"))),
        );
        let text = String::from_utf8_lossy(&out).into_owned();
        let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().unwrap());
        let (ms, rss) = (fields.next().unwrap(), fields.next().unwrap());
        (ms / size as f64, rss)
    };
    // One unmeasured run of the smallest size; then rounds, each of every size in turn, so
    // that each size meets the same history of the machine.
    run(sizes[0], usize::MAX);
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); sizes.len()];
    let mut peak = vec![0f64; sizes.len()];
    for round in 0..runs {
        for (i, &size) in sizes.iter().enumerate() {
            let (ms, rss) = run(size, round);
            per[i].push(ms);
            peak[i] = peak[i].max(rss);
        }
    }
    println!(
        "\n| tree, first build, -j2 | ms per derivation (median of {runs}, in rounds) | / smallest | peak RSS |"
    );
    println!("|---:|---:|---:|---:|");
    let mut first = None;
    for (i, &size) in sizes.iter().enumerate() {
        per[i].sort_by(f64::total_cmp);
        let median = per[i][per[i].len() / 2];
        let base = *first.get_or_insert(median);
        let each: Vec<String> = per[i].iter().map(|m| format!("{m:.2}")).collect();
        println!(
            "| {size} | {median:.2} ({}) | {:.2}x | {:.1} MB |",
            each.join(", "),
            median / base,
            peak[i] / 1024.0
        );
    }
}

/// One run of [`scaling_part`], in this process: prints the milliseconds the first build of a
/// tree of `size` took, and this process's peak RSS in KiB.
fn scaling_one(store: &Path, size: usize, nonce: &str) {
    let store = Store::open(store).unwrap();
    let started = Instant::now();
    let report = apply_tree(&store, size, nonce, 2);
    let took = started.elapsed();
    assert_eq!(report.built.len(), size);
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("this process's usage");
    println!("{} {}", took.as_secs_f64() * 1e3, usage.max_rss());
}

/// 2. No-op plan of a large cached DAG.
fn noop_part(dir: &tempfile::TempDir, runs: usize, noop_size: usize, seed: u32, nix: bool) {
    let store = Store::open(dir.path().join("noop")).unwrap();
    let nonce = format!("{seed}-noop");
    let started = Instant::now();
    apply_tree(&store, noop_size, &nonce, 2);
    let forjar_build = started.elapsed();
    drop(store);
    let noop = measure(runs.max(5), |_| {
        let store = Store::open(dir.path().join("noop")).unwrap();
        let mut g = Graph::new();
        let root = tree(&mut g, noop_size, &nonce);
        g.root("tree", root);
        let plan = Plan::new(&g, &store).unwrap();
        assert_eq!(plan.summary().build, 0);
        // Freed after the clock stops, as the command line leaves them to the exit.
        (g, plan, store)
    });
    println!("\n| no-op plan, {noop_size} cached derivations | median | |");
    println!("|---|---:|---:|");
    println!(
        "| forjar: define + open store + plan, in process | {:.1} ms | |",
        noop.as_secs_f64() * 1e3
    );
    println!(
        "| (forjar's first build of them, -j2: {}) | | |",
        secs(forjar_build)
    );
    if nix {
        let expr = nix_tree(noop_size, &nonce);
        let started = Instant::now();
        nix_build(&expr, 2);
        let nix_build_time = started.elapsed();
        let nix_noop = measure(runs, |_| nix_build(&expr, 2));
        println!(
            "| nix-build, no-op (evaluate + check) | {:.1} ms | {:.1}x forjar |",
            nix_noop.as_secs_f64() * 1e3,
            nix_noop.as_secs_f64() / noop.as_secs_f64()
        );
        println!(
            "| (nix-build's first build of them, -j2: {}) | | |",
            secs(nix_build_time)
        );
    }
}

/// 3. Makespan of 40 independent half-second builds with -j 4.
fn makespan_part(dir: &tempfile::TempDir, runs: usize, seed: u32) {
    let mut makespans = Vec::new();
    measure(runs, |i| {
        let store = Store::open(dir.path().join(format!("sleep-{i}"))).unwrap();
        let mut g = Graph::new();
        for n in 0..40 {
            let drv = Derivation::builder(format!("sleep{n}"))
                .sandbox(SandboxLevel::HostTools)
                .script("sleep 0.5; echo done > $out")
                .env("nonce", format!("{seed}-{i}-{n}"))
                .build()
                .unwrap();
            let drv = g.add(drv);
            g.root(&format!("sleep{n}"), drv);
        }
        let plan = Plan::new(&g, &store).unwrap();
        let options = Options {
            jobs: 4,
            ..Options::default()
        };
        let started = Instant::now();
        exec::apply(&plan, &store, &exec::Local::default(), &options, &|_| {}).unwrap();
        // The makespan is the apply alone (`measure` would time planning too).
        if i != usize::MAX {
            makespans.push(started.elapsed());
        }
    });
    let apply_only = peers::median(makespans);
    let ideal = Duration::from_millis(5000);
    println!("\n| 40 builds of 0.5 s, -j 4 | makespan | / ideal (5 s) |");
    println!("|---|---:|---:|");
    println!(
        "| forjar apply, median | {} | {:.3}x (target: within 1.10x) |",
        secs(apply_only),
        apply_only.as_secs_f64() / ideal.as_secs_f64()
    );
}
