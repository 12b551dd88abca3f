//! Tree digest throughput against named peers, measured in the same run on the same corpus.
//!
//! ```text
//! bench/tree-digest                      # installs the peers, copies /usr/share, runs this
//! cargo bench -p forjar --bench tree_digest -- CORPUS [--runs N]
//! ```
//!
//! Every tool hashes (or reads) the whole corpus with the page cache warm (one unmeasured run
//! first); the table gives the median of N runs and each time as a multiple of forjar's.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod peers;
use peers::{have, measure};

use forjar::hash::{DigestCache, Key, Needles, TreeHasher};
use forjar::name::Name;
use forjar::store::EntryName;
use rayon::prelude::*;

struct Row {
    name: &'static str,
    median: Duration,
}

/// Runs a shell command to completion, failing loudly if it fails.
fn shell(script: &str, corpus: &Path) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(corpus)
        .stdout(Stdio::null())
        .status()
        .expect("sh runs");
    assert!(status.success(), "`{script}` failed: {status}");
}

thread_local! {
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 1 << 20]);
}

/// The floor: the same parallel walk as the tree digest (directory entry types from `readdir`,
/// one reused 1 MiB buffer per thread), reading every file and hashing nothing.
fn read_all(dir: &Path) -> u64 {
    let entries: Vec<(PathBuf, fs::FileType)> = fs::read_dir(dir)
        .expect("readable")
        .map(|e| {
            e.and_then(|e| Ok((e.path(), e.file_type()?)))
                .expect("entry")
        })
        .collect();
    entries
        .par_iter()
        .map(|(path, kind)| {
            if kind.is_dir() {
                read_all(path)
            } else if kind.is_file() {
                let mut file = File::open(path).expect("readable");
                BUF.with_borrow_mut(|buf| {
                    let mut total = 0;
                    loop {
                        match file.read(buf).expect("readable") {
                            0 => return total,
                            n => total += n as u64,
                        }
                    }
                })
            } else {
                0
            }
        })
        .sum()
}

fn main() {
    let (runs, rest) = peers::args(5);
    let corpus = rest
        .into_iter()
        .next()
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("FORJAR_BENCH_CORPUS").map(PathBuf::from));
    let Some(corpus) = corpus else {
        eprintln!(
            "usage: tree_digest CORPUS [--runs N] (or set FORJAR_BENCH_CORPUS); bench/tree-digest makes one"
        );
        std::process::exit(2);
    };
    let threads = rayon::current_num_threads();
    let bytes = read_all(&corpus);
    let files = Command::new("sh")
        .arg("-c")
        .arg("find \"$1\" -type f | wc -l")
        .arg("sh")
        .arg(&corpus)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "corpus: {} ({files} files, {:.0} MB), {threads} threads, median of {runs} runs\n",
        corpus.display(),
        bytes as f64 / 1e6
    );

    let mut rows = Vec::new();
    let digest = TreeHasher::new()
        .digest(&corpus)
        .expect("the corpus hashes");
    rows.push(Row {
        name: "forjar tree digest",
        median: measure(runs, |_| {
            assert_eq!(TreeHasher::new().digest(&corpus).unwrap(), digest)
        }),
    });
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    rows.push(Row {
        name: "forjar tree digest, 1 thread",
        median: measure(runs, |_| {
            single.install(|| assert_eq!(TreeHasher::new().digest(&corpus).unwrap(), digest))
        }),
    });
    // What installing a build's output reads it for: its digest and its references, in one
    // pass. 1,000 candidates, as a build with a large input closure has.
    let name = Name::new("candidate").expect("a name");
    let candidates: Vec<EntryName> = (0..1000u32)
        .map(|i| {
            let key: Key = blake3::hash(&i.to_le_bytes())
                .to_hex()
                .parse()
                .expect("a key");
            EntryName::new(&key, &name, None)
        })
        .collect();
    let needles = Needles::new(&candidates);
    rows.push(Row {
        name: "forjar tree digest + reference scan (an output's install)",
        median: measure(runs, |_| {
            let hasher = TreeHasher::new().scanning(&needles);
            assert_eq!(hasher.digest(&corpus).unwrap(), digest);
        }),
    });
    let cache = DigestCache::new();
    std::thread::sleep(Duration::from_millis(100));
    TreeHasher::with_cache(&cache).digest(&corpus).unwrap();
    rows.push(Row {
        name: "forjar, warm digest cache (re-plan)",
        median: measure(runs, |_| {
            assert_eq!(
                TreeHasher::with_cache(&cache).digest(&corpus).unwrap(),
                digest
            )
        }),
    });
    rows.push(Row {
        name: "read every file (same walk, no hash)",
        median: measure(runs, |_| assert_eq!(read_all(&corpus), bytes)),
    });
    rows.push(Row {
        name: "read every file (find | xargs cat)",
        median: measure(runs, |_| {
            shell(
                "find \"$1\" -type f -print0 | xargs -0 cat > /dev/null",
                &corpus,
            )
        }),
    });
    if have("nix-hash") {
        rows.push(Row {
            name: "nix-hash --type sha256",
            median: measure(runs, |_| shell("nix-hash --type sha256 \"$1\"", &corpus)),
        });
    } else {
        eprintln!("nix-hash not found: install Debian's nix-bin (bench/tree-digest does)");
    }
    if have("b3sum") {
        rows.push(Row {
            name: "b3sum (find | xargs b3sum)",
            median: measure(runs, |_| {
                shell(
                    "find \"$1\" -type f -print0 | xargs -0 b3sum > /dev/null",
                    &corpus,
                )
            }),
        });
    } else {
        eprintln!("b3sum not found: install Debian's b3sum (bench/tree-digest does)");
    }

    let forjar = rows[0].median.as_secs_f64();
    println!("| tool | median | throughput | time / forjar's |");
    println!("|---|---:|---:|---:|");
    for row in &rows {
        let secs = row.median.as_secs_f64();
        println!(
            "| {} | {:.3} s | {:.0} MB/s | {:.2}x |",
            row.name.replace('|', "\\|"),
            secs,
            bytes as f64 / 1e6 / secs,
            secs / forjar
        );
    }
    let find = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .map(|r| r.median.as_secs_f64())
    };
    println!();
    if let Some(nix) = find("nix-hash --type sha256") {
        println!(
            "nix-hash / forjar = {:.2} (target: at least 2.5)",
            nix / forjar
        );
    }
    if let Some(read) = find("read every file (same walk, no hash)") {
        println!(
            "forjar / read-only = {:.2} (target: at most 1.5)",
            forjar / read
        );
    }
    // The machine's speed drifts between blocks of runs; alternating the two and taking the
    // median of each pair's ratio cancels most of that drift.
    let mut ratios: Vec<f64> = (0..runs * 2)
        .map(|_| {
            let start = Instant::now();
            TreeHasher::new().digest(&corpus).unwrap();
            let hash = start.elapsed().as_secs_f64();
            let start = Instant::now();
            read_all(&corpus);
            hash / start.elapsed().as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "forjar / read-only, {} alternating pairs: median {:.2}, range {:.2} to {:.2} (target: at most 1.5)",
        ratios.len(),
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
}
