//! A build's cgroup: its memory cap and process limit, and whether the memory cap was hit.
//!
//! cgroup v2 where the host has it, else the v1 `memory` and `pids` controllers. Creating
//! cgroups needs root (there is no delegation to ordinary users here); without one the sandbox
//! falls back to `RLIMIT_AS` and `RLIMIT_NPROC`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock, PoisonError};

use nix::libc;
use nix::unistd::Pid;

use crate::name::Limits;

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup directories of one build, removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    /// One directory on v2; on v1 the pids directory, after the memory one for a build with a
    /// memory limit.
    dirs: Vec<PathBuf>,
    v2: bool,
    /// The directory whose memory events say whether the limit was hit; none without a limit.
    memory: Option<PathBuf>,
    /// What its `pids.max` holds.
    pids_max: String,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// The cgroups of this process's finished builds that had no memory limit, empty, kept for
/// its next builds while a run is under way ([`KeepIdle`]), rather than removed and made again:
/// a `mkdir` and an `rmdir` in the cgroup file system, and the kernel's making and tearing
/// down of a cgroup, for every build. As many as builds ran at once. Removed when the last run
/// ends; those of a process killed first go with the sweep of the next.
static IDLE: Mutex<Idle> = Mutex::new(Idle {
    runs: 0,
    cgroups: Vec::new(),
});

struct Idle {
    /// The runs under way, each holding a [`KeepIdle`].
    runs: usize,
    cgroups: Vec<Cgroup>,
}

fn idle() -> std::sync::MutexGuard<'static, Idle> {
    IDLE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Held by a run of builds: while one is held, a finished build's cgroup is kept for the next
/// build; when the last is dropped, the kept ones are removed.
#[must_use = "the cgroups are kept only while it is held"]
pub struct KeepIdle(());

impl KeepIdle {
    /// Keeps finished builds' cgroups until it is dropped.
    pub fn hold() -> KeepIdle {
        idle().runs += 1;
        KeepIdle(())
    }
}

impl Drop for KeepIdle {
    fn drop(&mut self) {
        let kept = {
            let mut idle = idle();
            idle.runs -= 1;
            match idle.runs {
                0 => std::mem::take(&mut idle.cgroups),
                _ => Vec::new(),
            }
        };
        for mut cgroup in kept {
            cgroup.remove();
        }
    }
}

/// What the host's cgroup file system offers, read once per process: it does not change
/// while forjar runs, and reading it for every build cost a build two or three lookups (and
/// on v2 a write to the root's `cgroup.subtree_control`).
#[derive(Debug, Clone, Copy)]
struct Layout {
    v2: bool,
    /// Whether the `pids` controller is there (v1: mounted; v2: available at the root).
    pids: bool,
    /// Likewise the `memory` controller.
    memory: bool,
}

static LAYOUT: OnceLock<Layout> = OnceLock::new();

impl Layout {
    fn of(root: &Path) -> Layout {
        match fs::read_to_string(root.join("cgroup.controllers")) {
            Ok(controllers) => {
                let has = |c: &str| controllers.split_whitespace().any(|w| w == c);
                let (pids, memory) = (has("pids"), has("memory"));
                if pids && memory {
                    // Best effort: the controllers may already be enabled, or only settable
                    // by systemd.
                    let _ = fs::write(root.join("cgroup.subtree_control"), "+memory +pids");
                }
                Layout {
                    v2: true,
                    pids,
                    memory,
                }
            }
            Err(_) => Layout {
                v2: false,
                pids: root.join("pids").join("cgroup.procs").exists(),
                memory: root.join("memory").join("cgroup.procs").exists(),
            },
        }
    }
}

impl Cgroup {
    /// Makes a cgroup for one build with its limits, if this process may (root, with a
    /// writable cgroup file system); `None` otherwise, and the sandbox uses rlimits. A root that
    /// may not create cgroups (root in a container's user namespace) is no error.
    pub fn create(limits: &Limits) -> io::Result<Option<Cgroup>> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        match Self::make(limits) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EACCES | libc::EPERM | libc::EROFS)
                ) =>
            {
                Ok(None)
            }
            other => other,
        }
    }

    fn make(limits: &Limits) -> io::Result<Option<Cgroup>> {
        let pids_max = pids_max(limits);
        let kept = match limits.memory {
            None => idle().cgroups.pop(),
            Some(_) => None,
        };
        if let Some(mut idle) = kept {
            if idle.pids_max == pids_max || idle.set_pids_max(&pids_max).is_ok() {
                return Ok(Some(idle));
            }
            // A new one is made below.
            idle.remove();
        }
        let name = format!(
            "forjar-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let root = Path::new(ROOT);
        // Once per process: leftovers come only from processes that were killed.
        static SWEPT: Once = Once::new();
        SWEPT.call_once(|| {
            for parent in [root.to_path_buf(), root.join("memory"), root.join("pids")] {
                sweep(&parent);
            }
        });
        let layout = *LAYOUT.get_or_init(|| Layout::of(root));
        if layout.v2 {
            if !layout.pids || !layout.memory {
                return Ok(None);
            }
            let dir = root.join(&name);
            fs::create_dir(&dir)?;
            let cgroup = Cgroup {
                dirs: vec![dir.clone()],
                v2: true,
                memory: limits.memory.map(|_| dir.clone()),
                pids_max,
            };
            if let Some(memory) = limits.memory {
                fs::write(dir.join("memory.max"), memory.to_string())?;
                let _ = fs::write(dir.join("memory.swap.max"), "0");
            }
            fs::write(dir.join("pids.max"), &cgroup.pids_max)?;
            return Ok(Some(cgroup));
        }
        // A memory cgroup only for a build with a memory limit: without one it would only
        // account, and on v1 a removed memory cgroup lingers, offline, for as long as the page
        // cache the build wrote is charged to it.
        let (memory, pids) = (root.join("memory"), root.join("pids"));
        let limited = limits.memory.is_some();
        if !layout.pids || (limited && !layout.memory) {
            return Ok(None);
        }
        let memory = limited.then(|| memory.join(&name));
        let pids = pids.join(&name);
        let mut cgroup = Cgroup {
            dirs: Vec::new(),
            v2: false,
            memory: memory.clone(),
            pids_max,
        };
        // Each held once made, so that one made before a failure is removed.
        for dir in memory.iter().chain([&pids]) {
            fs::create_dir(dir)?;
            cgroup.dirs.push(dir.clone());
        }
        if let (Some(memory), Some(limit)) = (&memory, limits.memory) {
            fs::write(memory.join("memory.limit_in_bytes"), limit.to_string())?;
            let _ = fs::write(
                memory.join("memory.memsw.limit_in_bytes"),
                limit.to_string(),
            );
        }
        fs::write(pids.join("pids.max"), &cgroup.pids_max)?;
        Ok(Some(cgroup))
    }

    /// Removes the directories now, never to be kept; dropped afterwards, it has none left.
    fn remove(&mut self) {
        // The build's processes are gone (its pid namespace died with pid 1), but the kernel
        // may take a moment to empty the cgroup.
        for dir in std::mem::take(&mut self.dirs).iter() {
            for _ in 0..100 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    fn set_pids_max(&mut self, max: &str) -> io::Result<()> {
        let dir = self.dirs.last().expect("a cgroup has its pids directory");
        fs::write(dir.join("pids.max"), max)?;
        self.pids_max = max.to_string();
        Ok(())
    }

    /// Whether the next build may have this cgroup: no memory limit to undo, no process left in
    /// it, and its process limit never reached (which `pids.events` counts for good, and
    /// [`Cgroup::process_limit_hit`] would tell of the next build).
    fn reusable(&self) -> bool {
        let Some(dir) = self.dirs.last() else {
            return false;
        };
        if self.memory.is_some() {
            return false;
        }
        // Not held while the files are read.
        let running = idle().runs > 0;
        running
            && read_small(&dir.join("pids.current")).is_some_and(|n| n.trim() == "0")
            && !self.process_limit_hit()
    }

    /// The files the build's first process writes `0` to, before it starts anything, to move
    /// itself in: the v1 `tasks` files, opened here by the caller (the kernel checks the
    /// opener's credentials). Moving the writing thread takes no global lock, where moving a
    /// process by pid through `cgroup.procs` waits for an RCU grace period: 13 ms for some
    /// builds in a trace of a large apply, with the CPUs idle. Empty on v2, where the
    /// supervisor is moved by [`Cgroup::add`].
    pub fn self_join(&self) -> io::Result<Vec<File>> {
        if self.v2 {
            return Ok(Vec::new());
        }
        self.dirs
            .iter()
            .map(|dir| OpenOptions::new().write(true).open(dir.join("tasks")))
            .collect()
    }

    /// Moves a process (and so everything it will start) into the cgroup, on v2; on v1 the
    /// process has moved itself ([`Cgroup::self_join`]).
    pub fn add(&self, pid: Pid) -> io::Result<()> {
        if self.v2 {
            fs::write(self.dirs[0].join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// Whether the kernel killed a process of the build for going over its memory limit; never
    /// for a build without one.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = &self.memory else {
            return false;
        };
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        fs::read_to_string(dir.join(file)).is_ok_and(|text| {
            text.lines().any(|line| {
                line.strip_prefix("oom_kill ")
                    .is_some_and(|n| n.trim() != "0")
            })
        })
    }

    /// Whether the kernel refused a fork of the build for its process limit (the `max` count
    /// of `pids.events`, on v2 and v1 alike).
    pub fn process_limit_hit(&self) -> bool {
        let Some(dir) = self.dirs.last() else {
            return false;
        };
        read_small(&dir.join("pids.events")).is_some_and(|text| {
            text.lines()
                .any(|line| line.strip_prefix("max ").is_some_and(|n| n.trim() != "0"))
        })
    }
}

/// The cgroup's `pids.max`: the build's process limit, and one for the supervisor, which is in
/// the cgroup too.
fn pids_max(limits: &Limits) -> String {
    limits.process_cap().saturating_add(1).to_string()
}

/// Removes the empty cgroups of forjar processes that no longer exist (killed before they could
/// remove their own).
fn sweep(parent: &Path) {
    let Ok(listing) = fs::read_dir(parent) else {
        return;
    };
    for item in listing.flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("forjar-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir(item.path());
        }
    }
}

/// A small file of the cgroup file system: one `read`, no size asked first.
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut buf = [0u8; 256];
    let n = File::open(path).ok()?.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.reusable() {
            let mut idle = idle();
            // Unless the last run ended meanwhile.
            if idle.runs > 0 {
                idle.cgroups.push(Cgroup {
                    dirs: std::mem::take(&mut self.dirs),
                    v2: self.v2,
                    memory: None,
                    pids_max: std::mem::take(&mut self.pids_max),
                });
                return;
            }
        }
        self.remove();
    }
}
