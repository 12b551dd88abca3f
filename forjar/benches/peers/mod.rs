//! What the benchmark programs share: timing, and finding the peers they compare against.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The median of some durations.
pub fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Runs `f` once unmeasured (with `usize::MAX`), then `runs` times with the run's index, and
/// returns the median time. What `f` returns is dropped after its time is taken.
pub fn measure<T>(runs: usize, mut f: impl FnMut(usize) -> T) -> Duration {
    f(usize::MAX);
    median(
        (0..runs)
            .map(|i| {
                let start = Instant::now();
                let result = f(i);
                let took = start.elapsed();
                drop(result);
                took
            })
            .collect(),
    )
}

/// Interleaved pairs of runs: ours and, when there is a peer, the peer's.
#[allow(dead_code, reason = "only the benchmarks that run a peer use it")]
pub struct Pairs {
    /// The median of our runs.
    pub ours: Duration,
    /// The median of the peer's runs.
    pub theirs: Option<Duration>,
    /// Each pair's ratio, peer over ours, sorted.
    pub ratios: Vec<f64>,
    /// Our runs' times, in the order run.
    pub our_runs: Vec<Duration>,
    /// The peer's runs' times, in the order run.
    pub their_runs: Vec<Duration>,
}

impl Pairs {
    /// The median of the pairs' ratios.
    #[allow(dead_code, reason = "only the benchmarks that run a peer use it")]
    pub fn ratio(&self) -> f64 {
        self.ratios[self.ratios.len() / 2]
    }
}

/// Runs `ours` and then `theirs` (when given) once unmeasured (with `usize::MAX`), then `runs`
/// times in interleaved pairs, ours first, so that both meet the same load. Each returns the
/// time of its run.
#[allow(dead_code, reason = "only the benchmarks that run a peer use it")]
pub fn pairs(
    runs: usize,
    mut ours: impl FnMut(usize) -> Duration,
    mut theirs: Option<impl FnMut(usize) -> Duration>,
) -> Pairs {
    ours(usize::MAX);
    if let Some(theirs) = theirs.as_mut() {
        theirs(usize::MAX);
    }
    let (mut mine, mut peer, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let a = ours(i);
        mine.push(a);
        if let Some(theirs) = theirs.as_mut() {
            let b = theirs(i);
            peer.push(b);
            ratios.push(b.as_secs_f64() / a.as_secs_f64());
        }
    }
    ratios.sort_by(f64::total_cmp);
    Pairs {
        ours: median(mine.clone()),
        theirs: (!peer.is_empty()).then(|| median(peer.clone())),
        ratios,
        our_runs: mine,
        their_runs: peer,
    }
}

/// The 1, 5 and 15 minute load averages.
#[allow(dead_code, reason = "not every benchmark prints it")]
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Whether `tool` is on the `PATH`.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The value of `--runs N` among the arguments, and the other arguments.
pub fn args(default_runs: usize) -> (usize, Vec<String>) {
    let mut runs = default_runs;
    let mut rest = Vec::new();
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--runs takes a number")
            }
            _ => rest.push(arg),
        }
    }
    (runs, rest)
}

/// Runs `nix-build` of `expr` with `-j jobs`, Nix's sandbox on, substituters off and the
/// host's `/bin/sh` provided as forjar provides it, and panics if it fails.
#[allow(dead_code, reason = "only the benchmarks that run Nix use it")]
pub fn nix_build(expr: &str, jobs: usize) {
    let sandbox_paths = sh_closure()
        .iter()
        .map(|(at, real)| format!("{}={}", at.display(), real.display()))
        .collect::<Vec<_>>()
        .join(" ");
    run_ok(
        Command::new("nix-build")
            .args(["--no-out-link", "--quiet", "-j", &jobs.to_string()])
            .args(["--option", "sandbox", "true"])
            .args(["--option", "substituters", ""])
            .args(["--option", "sandbox-paths", &sandbox_paths])
            .args(["-E", expr])
            .stdout(Stdio::null()),
    );
}

/// Runs `cmd` (its standard output as the caller set it, piped unless set) and panics with its
/// standard error if it fails; returns what it printed.
pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .expect("the command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Writes back what earlier runs left dirty, so that a run does not pay for its predecessor's
/// writes (every forjar store `syncfs`es before it publishes an entry, and Nix's database
/// syncs).
#[allow(dead_code, reason = "only the benchmarks that build use it")]
pub fn settle() {
    nix::unistd::sync();
}

/// Makes the kernel forget the inodes freed before a part that makes many, such as the stores
/// a previous run of a benchmark removed when it ended. ext4 without a journal will not reuse
/// an inode freed within the last minute (six while its inode table block is dirty), and looks
/// that block up for each such inode it passes over while it looks for a free one: a run
/// minutes after another's stores were removed took 4.64 s where it takes 2.69 s (forjar,
/// which makes eight inodes a build, the 1,000-tree, 2026-12-06). `sync`, then the clean page
/// cache dropped (root only): a block no longer in memory is one the kernel takes as written
/// out long ago. This holds only until the run reads the block back to make an inode in it;
/// what is left of the window still slows the runs (the benchmarks chapter). The unmeasured
/// first runs warm the caches again.
#[allow(dead_code, reason = "only the benchmarks that build use it")]
pub fn forget_freed_inodes() {
    nix::unistd::sync();
    if std::fs::write("/proc/sys/vm/drop_caches", "1").is_err() {
        eprintln!(
            "note: not root, so inodes freed shortly before this run (a previous run's stores) \
             may slow its first minutes on ext4 without a journal"
        );
    }
}

/// The host's `/bin/sh` and the library directories it needs, each as its path in a build and
/// its real path on the host: what [`nix_build`] gives Nix's builds (`sandbox-paths`), as
/// forjar's `provide_bin_sh` does, and what the apply benchmark's floor binds.
#[allow(
    dead_code,
    reason = "only the benchmarks that run Nix or the floor use it"
)]
pub fn sh_closure() -> Vec<(PathBuf, PathBuf)> {
    let real = std::fs::canonicalize("/bin/sh").unwrap();
    let mut paths = vec![(PathBuf::from("/bin/sh"), real)];
    for dir in ["/lib/x86_64-linux-gnu", "/lib64", "/lib/aarch64-linux-gnu"] {
        if let Ok(real) = std::fs::canonicalize(dir) {
            paths.push((PathBuf::from(dir), real));
        }
    }
    paths
}
