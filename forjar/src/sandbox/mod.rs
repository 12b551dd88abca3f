//! The Linux sandbox: kernel namespaces through the `nix` crate, no helper program. The book's
//! reference chapter "The sandbox" describes it.
//!
//! A build runs in new user, mount, pid, ipc and uts namespaces, and a new network namespace
//! with only loopback unless it is fixed-output. Inside, it is uid 1000 / gid 100, mapped to an
//! unprivileged host id (the caller's own, or [`ROOT_BUILD_UID`] when forjar runs as root), with
//! `setgroups` denied, `no_new_privs`, and a seccomp filter against setuid bits and xattrs. Its
//! root is a fresh tmpfs holding only: the inputs, read-only, at their store paths; the outputs'
//! staging directories, writable, at their final store paths; `/build`; `/tmp`; a minimal
//! `/dev`; a fresh `/proc`; `/etc/{passwd,group,hosts}`; and, by level, `/bin/sh` or the host's
//! `/usr`.
//!
//! Every host path is cloned into a detached mount (`open_tree`) by the supervisor, which can
//! reach whatever the caller can, and handed to the builder over a socket a batch at a time;
//! the builder, in a mount namespace of its own, attaches it (`move_mount`). The build user
//! needs no permission on the way to a path, sees nothing it was not given, and neither process
//! holds more than a batch of descriptors however many inputs a build has.
//!
//! If the kernel cannot give a sandbox, the build fails with [`SandboxError::Unavailable`], or
//! [`SandboxError::ProcCovered`] where it refuses one only where forjar runs; it never runs
//! unsandboxed.

mod child;
mod elf;
mod limits;
mod seccomp;
mod spawner;

pub use spawner::start as start_spawner;

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::resource::Resource;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{Pid, pipe2};

use crate::name::OutputName;
use crate::name::rules::HOST_TOOLS;
use crate::name::{Limits, MAX_BUILD_DIR_SIZE};
use crate::request::{BuildRequest, InputName, SandboxLevel};
use crate::walk;

use limits::Cgroup;
pub(crate) use limits::KeepIdle;

/// The uid of the build user inside the sandbox.
pub const BUILD_UID: u32 = 1000;
/// The gid of the build group inside the sandbox.
pub const BUILD_GID: u32 = 100;
/// The host uid and gid builds run as when forjar runs as root (as Nix's `nixbld` users).
pub const ROOT_BUILD_UID: u32 = 30001;

/// The `PATH` of a `host-tools` build (a hermetic one has only what its inputs provide).
const HOST_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";
/// The `PATH` of a hermetic build with a toolchain.
const TOOLCHAIN_PATH: &str = "/usr/bin:/bin";
/// What a fixed-output build with network access needs to resolve names and check certificates.
const NETWORK_FILES: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
];

/// The device nodes bound into `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// The first byte a child writes to the error pipe: the sandbox could not be set up.
const SETUP_FAILED: u8 = b'S';
/// The first byte a child writes to the error pipe: the sandbox was set up, but `exec` of the
/// builder failed.
const EXEC_FAILED: u8 = b'X';
/// The first byte a child writes to the error pipe: the kernel gave the sandbox, but this
/// build's setup failed in it (a bind or symlink of its paths, a mount past the kernel's mount
/// table, a fork past the user's limit on processes).
const PLACE_FAILED: u8 = b'P';
/// The first byte a child writes to the error pipe: a limit of the process stopped the setup.
const LIMIT_HIT: u8 = b'L';
/// The first byte a child writes to the error pipe: the build's `/proc` was refused where
/// every other mount succeeded: a path of the host's `/proc` has a mount over it.
const PROC_COVERED: u8 = b'C';
/// `SOURCE_DATE_EPOCH` in every build that does not set it: 1980-01-01T00:00:00Z.
pub const SOURCE_DATE_EPOCH: u64 = 315_532_800;
/// Lines of the log kept for error messages.
const TAIL_LINES: usize = 25;
/// The largest log kept when a derivation sets none.
pub const DEFAULT_MAX_LOG: u64 = 64 << 20;

/// Why the sandbox could not run a build.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The kernel refused what a sandbox needs; forjar does not build without one.
    #[error(
        "the kernel gives no sandbox here ({0}); forjar never builds unsandboxed. It needs user \
         namespaces: check `sysctl user.max_user_namespaces` (must be above 0) and, on Debian and \
         Ubuntu, `kernel.unprivileged_userns_clone` and `kernel.apparmor_restrict_unprivileged_userns`; \
         in a container, whose runtime's seccomp profile may refuse them, run it with \
         `--security-opt seccomp=unconfined` (Docker, Podman) or privileged"
    )]
    Unavailable(String),
    /// The kernel gives a sandbox, but not where forjar runs: it refused the build a `/proc` of
    /// its own (it mounts one in a user namespace only where that reveals nothing the host's
    /// hides), as it does in a container whose runtime mounts over paths of `/proc`.
    #[error(
        "no sandbox can be made where forjar runs: the kernel refused the build its own /proc \
         ({0}), as it does where a path of the host's /proc has a mount over it (a container's \
         runtime masks /proc/kcore, /proc/keys and others), and forjar never builds \
         unsandboxed; run it where /proc is whole (Docker: `--security-opt \
         systempaths=unconfined`; Podman: `--security-opt unmask=ALL`)"
    )]
    ProcCovered(String),
    /// One of the build's paths could not be placed in its sandbox.
    #[error("cannot set the build's sandbox up: {0}")]
    Setup(String),
    /// A host path the build needs could not be opened.
    #[error("cannot give the build `{}`: {source}", .path.display())]
    Host {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The builder could not be started inside the sandbox.
    #[error("{0}")]
    Builder(String),
    /// Setting the sandbox up, here or in its processes, ran into this process's limit on open
    /// files.
    #[error("the build's sandbox needs more open files than it may have: {advice}")]
    OpenFiles {
        /// The limit, as read when it was hit, and how to raise it.
        advice: String,
    },
    /// The parent's side of running a build failed.
    #[error("{what}: {}", crate::threads::Said(.source))]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl SandboxError {
    /// The error of a sandbox that ran out of open files, with this process's limit.
    pub(crate) fn open_files() -> Self {
        SandboxError::OpenFiles {
            advice: walk::open_file_limit_advice(),
        }
    }
}

/// An I/O error of the parent's side; running out of open files is said as such, wherever it
/// happens.
fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> SandboxError {
    move |source| match source.raw_os_error() {
        Some(nix::libc::EMFILE) => SandboxError::open_files(),
        _ => SandboxError::Io { what, source },
    }
}

fn nix_err(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> SandboxError {
    move |e| io_err(what)(e.into())
}

/// One thing placed in the sandbox's root.
pub(crate) struct Placement {
    target: PathBuf,
    kind: PlacementKind,
}

impl Placement {
    /// Where it comes from, for messages.
    fn what(&self) -> String {
        match &self.kind {
            PlacementKind::Bind { host, .. } => format!("from `{}`", host.display()),
            PlacementKind::Symlink { to } => format!("a symlink to `{}`", to.display()),
        }
    }
}

pub(crate) enum PlacementKind {
    /// A host file or directory, bound from a detached mount the supervisor clones.
    Bind {
        host: PathBuf,
        is_dir: bool,
        writable: bool,
    },
    /// A symlink (a symlink on the host is recreated, not bound).
    Symlink { to: PathBuf },
}

/// Everything the children need, made before the fork.
pub(crate) struct Prepared {
    parent_pid: i32,
    network: bool,
    placements: Vec<Placement>,
    build_dir: PathBuf,
    /// Where the build starts, in the sandbox.
    working_dir: PathBuf,
    /// Empty writable directories the request asks for, in the sandbox.
    scratch: Vec<PathBuf>,
    store_dir: PathBuf,
    files: Vec<(PathBuf, Vec<u8>)>,
    rlimits: Vec<(Resource, u64)>,
    args: Vec<CString>,
    env: Vec<CString>,
    log_write: RawFd,
    /// The builder's stderr when it is kept apart from the log; -1 when it goes to the log.
    stderr_write: RawFd,
    /// [`BuildSpec::hold`], or -1.
    hold: RawFd,
    err_write: RawFd,
    /// Written `0` by the supervisor to join the build's cgroup ([`Cgroup::self_join`]).
    cgroup_tasks: Vec<File>,
    /// [`enter`]: the builder keeps forjar's standard streams (the user's terminal) and runs in
    /// forjar's session, in a process group of its own that is given the terminal.
    interactive: bool,
    /// `enter`: forjar's standard streams as the spawner received them, which the supervisor
    /// makes its own; -1 otherwise.
    streams: [RawFd; 3],
}

/// A build to run: the request and where its inputs and outputs are on the host.
pub struct BuildSpec<'a> {
    /// The request.
    pub request: &'a BuildRequest,
    /// Each input: its name, its content on the host, and its path in the sandbox.
    pub inputs: Vec<(InputName, PathBuf, PathBuf)>,
    /// Entries the inputs refer to, bound read-only with no variable: each one's content on the
    /// host, and its path in the sandbox.
    pub referenced: Vec<(PathBuf, PathBuf)>,
    /// The content of the toolchain's entry on the host: its top-level directories (`usr`)
    /// are bound read-only at the sandbox's root, its links (`bin -> usr/bin`) made there.
    pub toolchain: Option<PathBuf>,
    /// Each output: its name, its staging directory on the host (empty; the builder creates
    /// `content` in it), and the entry path it is bound at in the sandbox.
    pub outputs: Vec<(OutputName, PathBuf, PathBuf)>,
    /// The host directory bound at `/build`.
    pub build_dir: PathBuf,
    /// Resource limits.
    pub limits: Limits,
    /// `FORJAR_BUILD_CORES`.
    pub cores: u32,
    /// When set, the build is killed (within a tenth of a second) and ends as
    /// [`Outcome::Cancelled`]: Ctrl-C, or another build's failure.
    pub cancel: Option<&'a AtomicBool>,
    /// A descriptor the build's supervisor keeps open while it lives (the build's store lock,
    /// so that a build outliving a killed forjar still holds it); every other descriptor of
    /// forjar's is closed in the supervisor.
    pub hold: Option<std::os::fd::BorrowedFd<'a>>,
    /// Called once the builder is forked, while the build sets up and runs: the caller's own
    /// work that can overlap the build (forjar marks the outputs' entries as about to be
    /// installed, a sync the install would otherwise wait for). The build's log is read again
    /// when it returns.
    pub under_way: Option<&'a (dyn Fn() + Sync)>,
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The builder exited with this code.
    Exited(i32),
    /// The builder was killed by this signal.
    Signaled(String),
    /// It ran past its timeout.
    TimedOut(Duration),
    /// It printed nothing for this long.
    Silent(Duration),
    /// Its log passed this many bytes.
    LogLimit(u64),
    /// Its outputs passed this many bytes.
    OutputLimit(u64),
    /// Its `/build` directory passed this many bytes.
    BuildDirLimit(u64),
    /// It hit its memory limit of this many bytes.
    MemoryLimit(u64),
    /// It was stopped from outside (see [`BuildSpec::cancel`]).
    Cancelled,
}

impl Outcome {
    /// Whether the build succeeded.
    pub fn success(&self) -> bool {
        *self == Outcome::Exited(0)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited(code) => write!(f, "the builder exited with status {code}"),
            Outcome::Signaled(signal) => write!(f, "the builder was killed by {signal}"),
            Outcome::TimedOut(t) => write!(
                f,
                "the build timed out after {}; every process in it was killed",
                humantime::format_duration(*t)
            ),
            Outcome::Silent(t) => write!(
                f,
                "the build printed nothing for {}; every process in it was killed",
                humantime::format_duration(*t)
            ),
            Outcome::LogLimit(n) => write!(
                f,
                "the build log passed its limit of {n} bytes; the build was killed"
            ),
            Outcome::OutputLimit(n) => write!(
                f,
                "the outputs passed their limit of {n} bytes; the build was killed"
            ),
            Outcome::BuildDirLimit(n) => write!(
                f,
                "the build directory passed its limit of {n} bytes; the build was killed"
            ),
            Outcome::MemoryLimit(n) => write!(
                f,
                "the build hit its memory limit of {n} bytes and was killed"
            ),
            Outcome::Cancelled => write!(f, "the build was cancelled"),
        }
    }
}

/// A finished build.
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub outcome: Outcome,
    /// The last lines of its log.
    pub log_tail: Vec<String>,
    /// Bytes of log written.
    pub log_bytes: u64,
    /// Wall-clock time.
    pub duration: Duration,
    /// Whether the kernel refused it a process for its process limit (known with a cgroup only).
    pub process_limit_hit: bool,
    /// For a build that did not exit 0, the limits it ran under that are lower than its
    /// derivation asks, one clause each: the hard resource limits forjar was given, which the
    /// builder cannot raise.
    pub lowered: Vec<String>,
    /// The supervisor, still exiting, and the build's cgroup: waited for and removed when
    /// this is dropped, which a caller that has more to do for the build does last.
    pub remains: Remains,
}

/// What is left of a finished build once its every process is gone: the supervisor, which
/// reported how the builder ended and is exiting (unless it was already reaped), and the cgroup
/// it is in until then. A process's exit tears down its namespaces, and a mount namespace's
/// teardown waits for an RCU grace period; the caller has the build's outcome without waiting
/// for it, and drops this once it has done its own work (installing the outputs).
#[derive(Debug)]
pub struct Remains {
    supervisor: Option<Pid>,
    cgroup: Option<Cgroup>,
}

impl Drop for Remains {
    fn drop(&mut self) {
        if let Some(pid) = self.supervisor {
            while let Err(nix::errno::Errno::EINTR) = waitpid(pid, None) {}
        }
        // The cgroup is removed only once the supervisor has left it.
        drop(self.cgroup.take());
    }
}

/// The host ids a build runs as: an unprivileged build id for root, the caller's own otherwise.
/// Root inside a user namespace that does not map the build id (a container that maps only
/// root) builds as itself, which is unprivileged outside that namespace.
/// Read once per process: forjar never changes its ids or its user namespace.
pub fn host_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let mapped = |file| maps(file, ROOT_BUILD_UID);
        if nix::unistd::geteuid().is_root()
            && mapped("/proc/self/uid_map")
            && mapped("/proc/self/gid_map")
        {
            (ROOT_BUILD_UID, ROOT_BUILD_UID)
        } else {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        }
    })
}

/// Whether an id map of this process's user namespace maps `id`.
fn maps(file: &str, id: u32) -> bool {
    fs::read_to_string(file).is_ok_and(|map| {
        map.lines().any(|line| {
            let fields: Vec<u64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            matches!(fields[..], [inside, _, count] if inside <= u64::from(id) && u64::from(id) < inside + count)
        })
    })
}

/// Checks in advance that the build can be given `path`, so that a missing one is reported by
/// name rather than from inside the sandbox.
fn check_path(path: &Path) -> Result<(), SandboxError> {
    fs::symlink_metadata(path)
        .map(drop)
        .map_err(|source| SandboxError::Host {
            path: path.to_path_buf(),
            source,
        })
}

/// A host file, directory or symlink placed at `target`; a missing one is `None`.
fn host_placement(
    host: &Path,
    target: &Path,
    writable: bool,
) -> Result<Option<Placement>, SandboxError> {
    let meta = match fs::symlink_metadata(host) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SandboxError::Host {
                path: host.to_path_buf(),
                source,
            });
        }
    };
    let kind = if meta.file_type().is_symlink() {
        let to = fs::read_link(host).map_err(|source| SandboxError::Host {
            path: host.to_path_buf(),
            source,
        })?;
        PlacementKind::Symlink { to }
    } else {
        PlacementKind::Bind {
            host: host.to_path_buf(),
            is_dir: meta.is_dir(),
            writable,
        }
    };
    Ok(Some(Placement {
        target: target.to_path_buf(),
        kind,
    }))
}

fn cstring(bytes: impl Into<Vec<u8>>) -> CString {
    CString::new(bytes).expect("request values were checked to hold no NUL")
}

fn prepare(
    spec: &BuildSpec,
    cgroup: Option<&Cgroup>,
    interactive: bool,
) -> Result<Prepared, SandboxError> {
    let request = spec.request;
    let store = request.store_dir.as_path();
    if let Some(made) = ["/dev", "/proc", "/build"]
        .iter()
        .find(|made| store.starts_with(made))
    {
        return Err(SandboxError::Host {
            path: store.to_path_buf(),
            source: io::Error::other(format!(
                "the store is inside `{made}`, which the sandbox makes anew for every build, so \
                 no build could see its inputs or outputs there; put the store on another path \
                 (a tmpfs mounted elsewhere will do)"
            )),
        });
    }
    let mut placements = Vec::new();
    for (_, host, target) in &spec.inputs {
        placements.extend(host_placement(host, target, false)?);
    }
    for (host, target) in &spec.referenced {
        placements.extend(host_placement(host, target, false)?);
    }
    for (_, host, target) in &spec.outputs {
        check_path(host)?;
        placements.push(Placement {
            target: target.clone(),
            kind: PlacementKind::Bind {
                host: host.clone(),
                is_dir: true,
                writable: true,
            },
        });
    }
    let host_tools = request.sandbox == SandboxLevel::HostTools;
    if host_tools {
        for path in HOST_TOOLS {
            placements.extend(host_placement(Path::new(path), Path::new(path), false)?);
        }
    } else if let Some(toolchain) = &spec.toolchain {
        let listing = fs::read_dir(toolchain).map_err(|source| SandboxError::Host {
            path: toolchain.clone(),
            source,
        })?;
        for item in listing {
            let item = item.map_err(|source| SandboxError::Host {
                path: toolchain.clone(),
                source,
            })?;
            let target = Path::new("/").join(item.file_name());
            placements.extend(host_placement(&item.path(), &target, false)?);
        }
    } else if request.constraints.provide_bin_sh {
        let files = elf::closure(Path::new("/bin/sh")).map_err(|e| SandboxError::Host {
            path: PathBuf::from("/bin/sh"),
            source: io::Error::other(e),
        })?;
        for (path, real) in files {
            placements.push(Placement {
                target: path,
                kind: PlacementKind::Bind {
                    host: real,
                    is_dir: false,
                    writable: false,
                },
            });
        }
    }
    if request.constraints.network {
        for path in NETWORK_FILES {
            placements.extend(host_placement(Path::new(path), Path::new(path), false)?);
        }
    }
    let given = placements.len();
    for path in &request.constraints.ro_paths {
        let placement =
            host_placement(path.as_path(), path.as_path(), false)?.ok_or_else(|| {
                SandboxError::Host {
                    path: path.as_path().to_path_buf(),
                    source: io::Error::new(
                        io::ErrorKind::NotFound,
                        "a read-only path the derivation asks for is not on this host",
                    ),
                }
            })?;
        placements.push(placement);
    }
    check_ro_paths(request, &placements[..given], &placements[given..])?;
    // Parents before children, so a path bound inside another lands on top of it.
    placements.sort_by(|a, b| a.target.cmp(&b.target));

    // The host's devices are looked at once per process, until all are found.
    static DEVICES_FOUND: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DEVICES_FOUND.get().is_none() {
        for device in DEVICES {
            check_path(&Path::new("/dev").join(device))?;
        }
        let _ = DEVICES_FOUND.set(());
    }
    check_path(&spec.build_dir)?;

    let mut env: Vec<(Vec<u8>, Vec<u8>)> = request
        .env
        .iter()
        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    if !request.env.keys().any(|k| k.as_str() == "PATH") {
        let path = if host_tools {
            HOST_PATH
        } else if spec.toolchain.is_some() {
            TOOLCHAIN_PATH
        } else {
            "/path-not-set"
        };
        env.push((b"PATH".to_vec(), path.as_bytes().to_vec()));
    }
    // The time tools that stamp their output take (reproducible-builds.org): 1980-01-01, the
    // earliest a zip file can hold, as Nix's builds have it; a derivation may set its own.
    if !request
        .env
        .keys()
        .any(|k| k.as_str() == "SOURCE_DATE_EPOCH")
    {
        env.push((
            b"SOURCE_DATE_EPOCH".to_vec(),
            SOURCE_DATE_EPOCH.to_string().into_bytes(),
        ));
    }
    for (key, value) in [
        ("HOME", "/homeless-shelter"),
        ("TMPDIR", "/build"),
        ("TEMPDIR", "/build"),
        ("TMP", "/build"),
        ("TEMP", "/build"),
        ("FORJAR_BUILD_TOP", "/build"),
    ] {
        env.push((key.as_bytes().to_vec(), value.as_bytes().to_vec()));
    }
    let working_dir = Path::new("/").join(request.working_dir.as_path());
    env.push((b"PWD".to_vec(), working_dir.as_os_str().as_bytes().to_vec()));
    env.push((
        b"FORJAR_BUILD_CORES".to_vec(),
        spec.cores.to_string().into_bytes(),
    ));
    for (name, _, target) in &spec.inputs {
        env.push((
            name.as_str().as_bytes().to_vec(),
            target.as_os_str().as_bytes().to_vec(),
        ));
    }
    if !request.input_lists.is_empty() {
        let paths: std::collections::HashMap<&InputName, &Path> = spec
            .inputs
            .iter()
            .map(|(name, _, target)| (name, target.as_path()))
            .collect();
        for (list, members) in &request.input_lists {
            let value = members
                .iter()
                .filter_map(|m| paths.get(m))
                .map(|p| p.as_os_str().as_bytes())
                .collect::<Vec<_>>()
                .join(&b' ');
            env.push((list.as_str().as_bytes().to_vec(), value));
        }
    }
    for (name, _, target) in &spec.outputs {
        env.push((
            name.as_str().as_bytes().to_vec(),
            target.join("content").as_os_str().as_bytes().to_vec(),
        ));
    }
    let env = env
        .into_iter()
        .map(|(k, v)| cstring([k, b"=".to_vec(), v].concat()))
        .collect();

    let mut rlimits = vec![(Resource::RLIMIT_CORE, 0)];
    // No single file past the outputs' bound, however sparse: every byte is read to hash it.
    rlimits.push((Resource::RLIMIT_FSIZE, spec.limits.output_cap()));
    if cgroup.is_none() {
        if let Some(memory) = spec.limits.memory {
            rlimits.push((Resource::RLIMIT_AS, memory));
        }
        rlimits.push((Resource::RLIMIT_NPROC, spec.limits.process_cap()));
    }

    Ok(Prepared {
        parent_pid: std::process::id() as i32,
        network: request.constraints.network,
        placements,
        build_dir: spec.build_dir.clone(),
        working_dir,
        scratch: request
            .scratch_paths
            .iter()
            .map(|p| Path::new("/").join(p.as_path()))
            .collect(),
        store_dir: request.store_dir.as_path().to_path_buf(),
        files: request
            .files
            .iter()
            .map(|(p, c)| (p.as_path().to_path_buf(), c.clone()))
            .collect(),
        rlimits,
        args: request.args.iter().map(|a| cstring(a.as_bytes())).collect(),
        env,
        log_write: -1,
        stderr_write: -1,
        hold: spec.hold.map_or(-1, |fd| fd.as_raw_fd()),
        err_write: -1,
        interactive,
        streams: [-1; 3],
        cgroup_tasks: match cgroup {
            Some(cgroup) => cgroup
                .self_join()
                .map_err(io_err("cannot open the build's cgroup"))?,
            None => Vec::new(),
        },
    })
}

/// Gives the build user the staging and build directories and what they hold (a worker's
/// build directory starts with the action's input root). Only root needs to: otherwise the
/// build user is the caller.
fn hand_over(spec: &BuildSpec, uid: u32, gid: u32) -> Result<(), SandboxError> {
    if nix::unistd::geteuid().as_raw() == uid {
        return Ok(());
    }
    let owner = (uid, gid);
    for dir in spec
        .outputs
        .iter()
        .map(|(_, host, _)| host)
        .chain([&spec.build_dir])
    {
        chown_tree(dir, owner).map_err(|source| SandboxError::Host {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Changes the owner of `path` and, for a directory, of everything under it; symlinks
/// themselves, never their targets.
fn chown_tree(path: &Path, (uid, gid): (u32, u32)) -> io::Result<()> {
    // Most often an empty directory forjar has just made or emptied: one descriptor of it
    // (opened without following a link), one look inside, and its own `fchown`.
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(dir) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        && walk::each_entry(dir.as_fd(), |_, _| std::ops::ControlFlow::Break(()))?
    {
        return std::os::unix::fs::fchown(&dir, Some(uid), Some(gid));
    }
    walk::walk(path, &mut Chown(uid, gid), walk::Options::default())
}

struct Chown(u32, u32);

impl walk::Visitor for Chown {
    type Out = ();
    type Error = io::Error;

    fn leaf(&mut self, at: &walk::At<'_>, _: walk::Kind) -> io::Result<()> {
        // SAFETY: fchownat of a valid descriptor and C string, not following.
        let rc = unsafe {
            libc::fchownat(
                at.parent.as_raw_fd(),
                at.name.as_ptr(),
                self.0,
                self.1,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(walk::WalkError::new(at.path(), io::Error::last_os_error()).into());
        }
        Ok(())
    }

    fn leave(
        &mut self,
        at: &walk::At<'_>,
        dir: std::os::fd::BorrowedFd<'_>,
        _: Vec<(CString, ())>,
    ) -> io::Result<()> {
        // SAFETY: fchown of a valid descriptor.
        if unsafe { libc::fchown(dir.as_raw_fd(), self.0, self.1) } != 0 {
            return Err(walk::WalkError::new(at.path(), io::Error::last_os_error()).into());
        }
        Ok(())
    }
}

fn write_maps(pid: Pid, uid: u32, gid: u32) -> io::Result<()> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    fs::write(proc.join("setgroups"), "deny")?;
    fs::write(proc.join("uid_map"), format!("{BUILD_UID} {uid} 1\n"))?;
    fs::write(proc.join("gid_map"), format!("{BUILD_GID} {gid} 1\n"))
}

/// The last lines of a log, as a failed build's error shows them.
#[cfg(feature = "remote")]
pub(crate) fn log_tail(log: &[u8]) -> Vec<String> {
    let mut tail = Tail::default();
    tail.push(log);
    tail.finish()
}

/// Keeps the last lines of the log.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.lines
                    .push_back(String::from_utf8_lossy(&self.partial).into_owned());
                self.partial.clear();
                if self.lines.len() > TAIL_LINES {
                    self.lines.pop_front();
                }
            } else if self.partial.len() < 4096 {
                self.partial.push(b);
            }
        }
    }

    fn finish(mut self) -> Vec<String> {
        if !self.partial.is_empty() {
            self.lines
                .push_back(String::from_utf8_lossy(&self.partial).into_owned());
            if self.lines.len() > TAIL_LINES {
                self.lines.pop_front();
            }
        }
        self.lines.into()
    }
}

/// Each read-only path the request asks for (placed as `ro`, in the request's order) fits among
/// what the sandbox makes and binds itself (`made`): it does not cover a path the sandbox
/// writes or binds, is not inside `/proc`, `/dev` or `/build`, which the sandbox makes after
/// the binds, and, when it is a symlink on this host, holds nothing else. A path that does not
/// fit is named with what it meets and what to do, before anything runs.
fn check_ro_paths(
    request: &BuildRequest,
    made: &[Placement],
    ro: &[Placement],
) -> Result<(), SandboxError> {
    let refuse = |path: &Path, why: String| SandboxError::Host {
        path: path.to_path_buf(),
        source: io::Error::other(why),
    };
    let store = request.store_dir.as_path();
    let written: Vec<&Path> = ["/etc/passwd", "/etc/group", "/etc/hosts", "/tmp"]
        .iter()
        .map(Path::new)
        .chain([store])
        .chain(request.scratch_paths.iter().map(|p| p.as_path()))
        .collect();
    for (placement, path) in ro.iter().zip(&request.constraints.ro_paths) {
        let path = path.as_path();
        if let Some(inside) = ["/proc", "/dev", "/build"]
            .iter()
            .find(|made| path.starts_with(made))
        {
            return Err(refuse(
                path,
                format!("it is inside `{inside}`, which the sandbox makes for every build"),
            ));
        }
        if let Some(covered) = written.iter().find(|w| w.starts_with(path)) {
            let what = match *covered == path {
                true => "the sandbox makes it for every build".to_string(),
                false => format!(
                    "it would cover `{}`, which the sandbox makes for every build; name the \
                     paths under it that the build reads instead",
                    covered.display()
                ),
            };
            return Err(refuse(path, what));
        }
        if let Some(bound) = made.iter().find(|m| m.target == path) {
            return Err(refuse(
                path,
                format!(
                    "the sandbox binds `{}` already ({}); the build sees it without asking",
                    bound.target.display(),
                    bound.what()
                ),
            ));
        }
        if let PlacementKind::Symlink { to } = &placement.kind
            && let Some(under) = made
                .iter()
                .chain(ro)
                .find(|m| m.target != path && m.target.starts_with(path))
        {
            return Err(refuse(
                path,
                format!(
                    "it is a symlink on this host (to `{}`), and the sandbox binds `{}` under \
                     it; name the directory it points to instead",
                    to.display(),
                    under.target.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The terminal on standard input given to another process group while a value lives, and
/// taken back for forjar's own when it is dropped.
struct Foreground {
    own: nix::unistd::Pid,
    given: bool,
}

impl Foreground {
    fn give(group: nix::unistd::Pid) -> Foreground {
        let own = nix::unistd::getpgrp();
        // The child may have made its group already; either way it is `group`.
        let _ = nix::unistd::setpgid(group, group);
        let given = nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
            && nix::unistd::tcsetpgrp(std::io::stdin(), group).is_ok();
        Foreground { own, given }
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if !self.given {
            return;
        }
        // Taking the terminal back from the background sends SIGTTOU unless it is ignored.
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: setting a signal's disposition to SIG_IGN and back; no handler runs.
        unsafe {
            let before = signal(Signal::SIGTTOU, SigHandler::SigIgn);
            let _ = nix::unistd::tcsetpgrp(std::io::stdin(), self.own);
            if let Ok(before) = before {
                let _ = signal(Signal::SIGTTOU, before);
            }
        }
    }
}

/// Runs one build in a new sandbox, streaming its log (stdout and stderr, interleaved as
/// written) into `log`. `output_size` reports the bytes the outputs hold so far (checked every
/// quarter second when there is an output cap).
pub fn run(
    spec: &BuildSpec,
    log: &mut dyn Write,
    output_size: &dyn Fn() -> u64,
) -> Result<Finished, SandboxError> {
    run_streams(spec, log, None, output_size, false)
}

/// Runs the builder of `spec` (a shell, for `enter`) on forjar's standard streams, in a
/// process group of its own that the terminal on standard input is given while it runs, so
/// that the keys typed there (Ctrl-C, Ctrl-Z) reach it and not forjar. Everything else is as
/// for a build: the namespaces, the mounts, the build user, the filter. Returns how it ended.
pub fn enter(spec: &BuildSpec) -> Result<Outcome, SandboxError> {
    let finished = run_streams(spec, &mut std::io::sink(), None, &|| 0, true)?;
    Ok(finished.outcome)
}

/// Like [`run`], with the builder's stderr kept apart, in `stderr` (as a REAPI action's result
/// reports it). The log limits count both streams together.
pub fn run_split(
    spec: &BuildSpec,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    output_size: &dyn Fn() -> u64,
) -> Result<Finished, SandboxError> {
    run_streams(spec, stdout, Some(stderr), output_size, false)
}

fn run_streams(
    spec: &BuildSpec,
    log: &mut dyn Write,
    stderr: Option<&mut dyn Write>,
    output_size: &dyn Fn() -> u64,
    interactive: bool,
) -> Result<Finished, SandboxError> {
    let (uid, gid) = host_ids();
    hand_over(spec, uid, gid)?;
    let cgroup =
        Cgroup::create(&spec.limits).map_err(io_err("cannot create the build's cgroup"))?;
    let mut prepared = prepare(spec, cgroup.as_ref(), interactive)?;

    let (sync_read, sync_write) = pipe2(OFlag::O_CLOEXEC).map_err(nix_err("cannot make a pipe"))?;
    let (ready_read, ready_write) =
        pipe2(OFlag::O_CLOEXEC).map_err(nix_err("cannot make a pipe"))?;
    // Non-blocking: read once the supervisor wrote to it or ended, or once the build was
    // stopped, when it may hold nothing (the supervisor's two bytes never fill it).
    let (status_read, status_write) =
        pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(nix_err("cannot make a pipe"))?;
    let (log_read, log_write) = pipe2(OFlag::O_CLOEXEC).map_err(nix_err("cannot make a pipe"))?;
    let (err_read, err_write) = pipe2(OFlag::O_CLOEXEC).map_err(nix_err("cannot make a pipe"))?;
    let stderr_pipe = match stderr {
        Some(sink) => {
            let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(nix_err("cannot make a pipe"))?;
            Some((read, write, sink))
        }
        None => None,
    };
    prepared.log_write = log_write.as_raw_fd();
    prepared.stderr_write = stderr_pipe.as_ref().map_or(-1, |(_, w, _)| w.as_raw_fd());
    prepared.err_write = err_write.as_raw_fd();

    let started = Instant::now();
    let supervisor = spawner::spawn(&prepared, &sync_write, &ready_read, &status_write)?;
    // Set here as well as in the supervisor, so that it holds whichever runs first.
    let terminal = interactive.then(|| Foreground::give(supervisor));
    drop((sync_write, ready_read, status_write, log_write, err_write));
    let rlimits = std::mem::take(&mut prepared.rlimits);
    drop(prepared);
    let stderr = stderr_pipe.map(|(read, write, sink)| {
        drop(write);
        (read, sink)
    });

    let killed = supervise(
        spec,
        supervisor,
        uid,
        gid,
        cgroup.as_ref(),
        sync_read,
        ready_write,
        log_read,
        &status_read,
        log,
        stderr,
        output_size,
        started,
    );
    // The terminal is forjar's again once the build's processes are gone.
    drop(terminal);
    let mut failure = Vec::new();
    let _ = File::from(err_read).read_to_end(&mut failure);
    let mut status = [0u8; 2];
    let status_len = File::from(status_read).read(&mut status).unwrap_or(0);
    let (killed, tail, log_bytes) = killed?;
    let supervised = killed.is_none();
    // A build that was stopped had its supervisor reaped; one that ended has it exiting.
    let supervisor = supervised.then_some(supervisor);
    let memory_hit = cgroup.as_ref().is_some_and(Cgroup::oom_killed);
    let outcome = match (killed, status_len, status) {
        (Some(outcome), _, _) => outcome,
        (None, _, _) if memory_hit => Outcome::MemoryLimit(spec.limits.memory.unwrap_or_default()),
        (None, 2, [0, code]) => Outcome::Exited(i32::from(code)),
        (None, 2, [1, signal]) => Outcome::Signaled(
            Signal::try_from(i32::from(signal))
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| format!("signal {signal}")),
        ),
        _ => Outcome::Signaled("an unknown cause (the supervisor died)".into()),
    };
    // Read for a build that did not exit 0 only: a reason to give, not a state to keep.
    let failed = !matches!(outcome, Outcome::Exited(0));
    let process_limit_hit = failed && cgroup.as_ref().is_some_and(Cgroup::process_limit_hit);
    let lowered = match failed {
        true => lowered_limits(&rlimits),
        false => Vec::new(),
    };
    let remains = Remains { supervisor, cgroup };

    if let Some((&kind, message)) = failure.split_first()
        && supervised
    {
        let message = String::from_utf8_lossy(message).into_owned();
        return Err(if kind == LIMIT_HIT {
            SandboxError::open_files()
        } else if kind == EXEC_FAILED {
            SandboxError::Builder(message)
        } else if kind == PLACE_FAILED {
            SandboxError::Setup(message)
        } else if kind == PROC_COVERED {
            SandboxError::ProcCovered(message)
        } else {
            SandboxError::Unavailable(message)
        });
    }
    Ok(Finished {
        outcome,
        log_tail: tail,
        log_bytes,
        duration: started.elapsed(),
        process_limit_hit,
        lowered,
        remains,
    })
}

/// `asked`, or the hard limit of `resource` this process has if that is lower: what a build
/// gets, as raising a hard limit takes a privilege no process of a build has
/// (`CAP_SYS_RESOURCE` of the host), and the host's limit binds the build anyway. A system
/// call only: the builder calls it after `fork`.
pub(super) fn at_most_hard(resource: Resource, asked: u64) -> u64 {
    match nix::sys::resource::getrlimit(resource) {
        Ok((_, hard)) => asked.min(hard),
        Err(_) => asked,
    }
}

/// Which of `rlimits` the hard limits lower ([`at_most_hard`]): one clause each, for the
/// message of a build that failed.
fn lowered_limits(rlimits: &[(Resource, u64)]) -> Vec<String> {
    rlimits
        .iter()
        .filter_map(|&(resource, asked)| {
            let hard = at_most_hard(resource, asked);
            if hard == asked {
                return None;
            }
            Some(match resource {
                Resource::RLIMIT_NPROC => format!(
                    "at most {hard} processes of this user at once (its hard `ulimit -u`), not \
                     the {asked} it asks"
                ),
                Resource::RLIMIT_AS => format!(
                    "at most {hard} bytes of memory a process (the hard `ulimit -v`), not the \
                     {asked} it asks"
                ),
                Resource::RLIMIT_FSIZE => format!(
                    "files of at most {hard} bytes (the hard `ulimit -f`), not the {asked} of \
                     its output bound"
                ),
                other => format!("{other:?} at most {hard}, not {asked}"),
            })
        })
        .collect()
}

/// How often a running build's outputs and `/build` are measured against their bounds, at most.
const SIZE_CHECK_EVERY: Duration = Duration::from_millis(250);

/// A pidfd of `pid` (Linux 5.3 and later); `None` where the kernel has none. A system call
/// only: a fork child may call it.
pub(super) fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    // SAFETY: a non-negative return is a descriptor this process now owns.
    (fd >= 0).then(|| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}

#[allow(clippy::too_many_arguments)]
fn supervise(
    spec: &BuildSpec,
    supervisor: Pid,
    uid: u32,
    gid: u32,
    cgroup: Option<&Cgroup>,
    sync_read: OwnedFd,
    ready_write: OwnedFd,
    log_read: OwnedFd,
    status: &OwnedFd,
    log: &mut dyn Write,
    stderr: Option<(OwnedFd, &mut dyn Write)>,
    output_size: &dyn Fn() -> u64,
    started: Instant,
) -> Result<(Option<Outcome>, Vec<String>, u64), SandboxError> {
    // Wait for the supervisor to be in its namespaces, map its ids, let it go on.
    let mut byte = [0u8];
    let unshared =
        nix::unistd::read(&sync_read, &mut byte).map_err(nix_err("cannot read from the build"))?;
    if unshared == 1 {
        let setup = write_maps(supervisor, uid, gid)
            .map_err(io_err("cannot map the build user"))
            .and_then(|()| {
                cgroup.map_or(Ok(()), |c| {
                    c.add(supervisor)
                        .map_err(io_err("cannot put the build in its cgroup"))
                })
            });
        if let Err(e) = setup {
            reap(supervisor);
            return Err(e);
        }
        nix::unistd::write(&ready_write, b"r").map_err(nix_err("cannot signal the build"))?;
    }
    // The builder's pid, once it is forked: nothing of the build outlives it.
    let mut pid = [0u8; 4];
    let builder = match read_full(&sync_read, &mut pid) {
        Ok(4) => {
            let pidfd = pidfd_open(Pid::from_raw(i32::from_le_bytes(pid)));
            let _ = nix::unistd::write(&ready_write, b"p");
            pidfd
        }
        _ => None,
    };
    drop(ready_write);
    if builder.is_some()
        && let Some(under_way) = spec.under_way
    {
        under_way();
    }
    let watched = watch(
        spec,
        supervisor,
        log_read,
        status,
        log,
        stderr,
        output_size,
        started,
    );
    if watched.is_err() {
        // Only the ways out of `watch` that end the build reap the supervisor.
        reap(supervisor);
    }
    if let Some(builder) = builder {
        wait_gone(&builder);
    }
    watched
}

/// Reads until `buf` is full or the pipe ends.
fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> nix::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// How long the processes of a killed build may take to end before forjar goes on without
/// them (a process blocked in the kernel cannot be hurried).
const END_GRACE: Duration = Duration::from_secs(10);

/// Kills the build's pid 1 and waits until it has ended, which the kernel makes it do only
/// after every other process of its namespace: from then on nothing of the build can change
/// what it left.
fn wait_gone(builder: &OwnedFd) {
    // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            builder.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    let deadline = Instant::now() + END_GRACE;
    while Instant::now() < deadline {
        let mut fds = [PollFd::new(builder.as_fd(), PollFlags::POLLIN)];
        if let Ok(n) = poll(&mut fds, PollTimeout::from(100u16))
            && n > 0
        {
            return;
        }
    }
}

/// Kills the supervisor (the builder dies with it) and reaps it.
fn reap(pid: Pid) {
    let _ = kill(pid, Signal::SIGKILL);
    while let Err(nix::errno::Errno::EINTR) = waitpid(pid, None) {}
}

/// Streams the build's log until the build ends or a limit stops it. A build has ended when
/// its supervisor has reported how its builder ended: pid 1 of the build's pid namespace is
/// reaped only once every other process in it is gone. The supervisor itself is not waited
/// for (nor reaped) then: a build stopped here has it reaped.
#[allow(clippy::too_many_arguments)]
fn watch(
    spec: &BuildSpec,
    supervisor: Pid,
    log_read: OwnedFd,
    status: &OwnedFd,
    log: &mut dyn Write,
    stderr: Option<(OwnedFd, &mut dyn Write)>,
    output_size: &dyn Fn() -> u64,
    started: Instant,
) -> Result<(Option<Outcome>, Vec<String>, u64), SandboxError> {
    let limits = &spec.limits;
    let max_log = limits.max_log_size.unwrap_or(DEFAULT_MAX_LOG);
    let mut tail = Tail::default();
    let mut log_bytes = 0u64;
    let mut last_output = Instant::now();
    let mut last_size_check = Instant::now();
    let mut size_check_every = SIZE_CHECK_EVERY;
    let mut buf = vec![0u8; 64 << 10];
    // The open streams: the log, and stderr when it is kept apart.
    let mut streams: Vec<(File, &mut dyn Write)> = vec![(File::from(log_read), log)];
    if let Some((read, sink)) = stderr {
        streams.push((File::from(read), sink));
    }
    loop {
        if !streams.is_empty() {
            let mut fds: Vec<PollFd> = streams
                .iter()
                .map(|(file, _)| PollFd::new(file.as_fd(), PollFlags::POLLIN))
                .collect();
            let ready: Vec<bool> = match poll(&mut fds, PollTimeout::from(100u16)) {
                Ok(n) if n > 0 => fds
                    .iter()
                    .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
                    .collect(),
                Ok(_) | Err(nix::errno::Errno::EINTR) => vec![false; streams.len()],
                Err(e) => return Err(nix_err("cannot poll the build log")(e)),
            };
            drop(fds);
            let mut closed = Vec::new();
            for (i, (file, sink)) in streams.iter_mut().enumerate() {
                if !ready[i] {
                    continue;
                }
                match file.read(&mut buf) {
                    Ok(0) => closed.push(i),
                    Ok(n) => {
                        last_output = Instant::now();
                        let keep = (max_log.saturating_sub(log_bytes)).min(n as u64) as usize;
                        sink.write_all(&buf[..keep])
                            .map_err(io_err("cannot write the build log"))?;
                        tail.push(&buf[..n]);
                        log_bytes += n as u64;
                        if log_bytes > max_log {
                            reap(supervisor);
                            return Ok((
                                Some(Outcome::LogLimit(max_log)),
                                tail.finish(),
                                log_bytes,
                            ));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err("cannot read the build log")(e)),
                }
            }
            for i in closed.into_iter().rev() {
                streams.remove(i);
            }
        } else {
            // Readable once the supervisor wrote the builder's status, or ended without.
            let mut fds = [PollFd::new(status.as_fd(), PollFlags::POLLIN)];
            if let Ok(1..) = poll(&mut fds, PollTimeout::from(100u16)) {
                return Ok((None, tail.finish(), log_bytes));
            }
        }
        let killed = if spec.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            Some(Outcome::Cancelled)
        } else if limits.timeout.is_some_and(|t| started.elapsed() > t) {
            Some(Outcome::TimedOut(limits.timeout.unwrap_or_default()))
        } else if limits.max_silent.is_some_and(|t| last_output.elapsed() > t) {
            Some(Outcome::Silent(limits.max_silent.unwrap_or_default()))
        } else if last_size_check.elapsed() > size_check_every {
            // Measuring walks the trees: it is done less often the longer it takes, at most a
            // twentieth of the build's time.
            let measuring = Instant::now();
            let cap = limits.output_cap();
            let outcome = if output_size() > cap {
                Some(Outcome::OutputLimit(cap))
            } else if walk::apparent_size(&spec.build_dir).unwrap_or(0) > MAX_BUILD_DIR_SIZE {
                Some(Outcome::BuildDirLimit(MAX_BUILD_DIR_SIZE))
            } else {
                None
            };
            last_size_check = Instant::now();
            size_check_every = SIZE_CHECK_EVERY.max(measuring.elapsed() * 20);
            outcome
        } else {
            None
        };
        if let Some(outcome) = killed {
            // The builder is pid 1 of its namespace and dies with the supervisor (its
            // parent-death signal); when pid 1 dies, the kernel kills every other process in it.
            reap(supervisor);
            return Ok((Some(outcome), tail.finish(), log_bytes));
        }
    }
}
