//! What runs after `fork`, inside the new namespaces: the supervisor (A) and the builder (B).
//!
//! Everything here runs in a child of a possibly multi-threaded process. `fork` (not a bare
//! `clone`) keeps glibc's allocator consistent in the child, so the code may allocate; it takes
//! no other lock (no stdout, no environment) and reports failure through the error pipe, whose
//! end is closed on `exec`: the parent reading end-of-file on it means the builder started.

use std::ffi::{CStr, CString};
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::libc;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{
    ForkResult, Gid, Uid, chdir, fork, pivot_root, sethostname, setresgid, setresuid,
};

use super::{
    BUILD_GID, BUILD_UID, DEVICES, EXEC_FAILED, LIMIT_HIT, PLACE_FAILED, PROC_COVERED,
    PlacementKind, Prepared, SETUP_FAILED,
};

/// Where the new root is assembled before `pivot_root`. Any directory every uid can search
/// would do; `/tmp` always is one, and the tmpfs mounted on it is visible only in the build's
/// own mount namespace.
const NEW_ROOT: &str = "/tmp";

/// `path`, made under [`NEW_ROOT`] before the switch to it, as the build sees it: for messages.
fn in_build(path: &Path) -> PathBuf {
    match path.strip_prefix(NEW_ROOT) {
        Ok(inside) => Path::new("/").join(inside),
        Err(_) => path.to_path_buf(),
    }
}

/// From <linux/keyctl.h>.
const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;

/// A step that failed, for the error pipe: its kind (one of [`SETUP_FAILED`] and
/// [`EXEC_FAILED`]) and what happened.
pub(super) struct Failed(u8, String);

impl<E: std::fmt::Display> From<(&str, E)> for Failed {
    fn from((what, e): (&str, E)) -> Self {
        Failed(SETUP_FAILED, format!("{what}: {e}"))
    }
}

fn ctx<T, E: std::fmt::Display>(
    r: Result<T, E>,
    what: impl FnOnce() -> String,
) -> Result<T, Failed> {
    r.map_err(|e| Failed(SETUP_FAILED, format!("{}: {e}", what())))
}

/// Closes every descriptor from 3 up but those in `keep` (-1 entries are ignored); sorts `keep`.
/// Allocates nothing, as it runs between `fork` and `exec`.
pub(super) fn close_all_but(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut from: RawFd = 3;
    for &fd in keep.iter().filter(|&&fd| fd >= 3) {
        if fd > from {
            // SAFETY: close_range closes descriptors of this process, which uses none of them.
            unsafe { libc::syscall(libc::SYS_close_range, from as u32, (fd - 1) as u32, 0) };
        }
        from = from.max(fd + 1);
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from as u32, u32::MAX, 0) };
}

/// Writes the failure to the error pipe and exits without running destructors or atexit
/// handlers (they belong to the parent).
fn die(err_fd: RawFd, failure: Failed) -> ! {
    // SAFETY: the fd is this child's copy of the error pipe's write end, open until exit.
    let mut pipe = std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(err_fd) });
    let _ = pipe.write_all(&[failure.0]);
    let _ = pipe.write_all(failure.1.as_bytes());
    // SAFETY: _exit is always safe to call; it ends this process only.
    unsafe { libc::_exit(127) }
}

/// The supervisor A: enters the new namespaces, waits for the parent to write its id maps,
/// takes the build user's ids, forks the builder B (pid 1 of the new pid namespace), and
/// reports B's wait status to the parent.
pub(super) fn supervisor(
    p: &Prepared,
    sync_write: OwnedFd,
    sync_read: OwnedFd,
    status_write: OwnedFd,
    network: Option<OwnedFd>,
) -> ! {
    let err = p.err_write;
    let result = (|| -> Result<(), Failed> {
        ctx(
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL),
            || "cannot set the parent-death signal".into(),
        )?;
        // The fork copied every descriptor of forjar, among them the pipes and store locks of
        // builds that other threads are starting; a copy of another build's log pipe held here
        // would keep that log from ending until this build does. This build's own lock stays
        // (`hold`).
        if p.streams[0] >= 0 {
            // `enter`: forjar's standard streams, as the spawner received them, become this
            // process's. Each is copied above 2 first, so that none is overwritten before use.
            let mut high = [-1; 3];
            for (copy, &fd) in high.iter_mut().zip(&p.streams) {
                // SAFETY: fcntl(F_DUPFD_CLOEXEC) of a descriptor this process holds.
                *copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
            }
            for (target, &fd) in high.iter().enumerate() {
                // SAFETY: dup2 onto this process's own standard descriptors.
                if fd < 0 || unsafe { libc::dup2(fd, target as RawFd) } < 0 {
                    return Err((
                        "cannot take the terminal's streams",
                        std::io::Error::last_os_error(),
                    )
                        .into());
                }
            }
        }
        let own = [
            sync_write.as_raw_fd(),
            sync_read.as_raw_fd(),
            status_write.as_raw_fd(),
            p.log_write,
            p.stderr_write,
            p.err_write,
            p.hold,
            network.as_ref().map_or(-1, AsRawFd::as_raw_fd),
        ];
        let mut keep = [-1; 16];
        if own.len() + p.cgroup_tasks.len() > keep.len() {
            return Err(Failed(SETUP_FAILED, "too many cgroup files".into()));
        }
        let tasks = p.cgroup_tasks.iter().map(AsRawFd::as_raw_fd);
        for (slot, fd) in keep.iter_mut().zip(own.into_iter().chain(tasks)) {
            *slot = fd;
        }
        close_all_but(&mut keep);
        if nix::unistd::getppid().as_raw() != p.parent_pid {
            return Err(Failed(SETUP_FAILED, "the parent exited".into()));
        }
        if p.interactive {
            // `enter`: forjar's session, and a process group of its own, which forjar gives
            // the terminal, so that what is typed there reaches the shell.
            ctx(
                nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0)),
                || "cannot make a process group".into(),
            )?;
        } else {
            // A session of its own, without a controlling terminal: nothing of the build can
            // open the user's terminal (`/dev/tty` fails with ENXIO), and a Ctrl-C on it
            // reaches forjar alone, which stops the build.
            ctx(nix::unistd::setsid(), || {
                "cannot start a new session".into()
            })?;
        }
        for tasks in &p.cgroup_tasks {
            ctx(nix::unistd::write(tasks, b"0"), || {
                "cannot join the build's cgroup".into()
            })?;
        }
        let mut flags = CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS;
        match network {
            // Made ahead by the spawner for this build alone (never for one given the
            // network), its loopback up; entered while this process is still root of the user
            // namespace that owns it, forjar's.
            Some(made) => {
                ctx(setns(&made, CloneFlags::CLONE_NEWNET), || {
                    "cannot enter the build's network namespace (setns)".into()
                })?;
                drop(made);
            }
            None if !p.network => flags |= CloneFlags::CLONE_NEWNET,
            None => {}
        }
        unshare(flags).map_err(|e| {
            Failed(
                SETUP_FAILED,
                format!(
                    "cannot create the build's namespaces (unshare): {e}{}",
                    if e == nix::errno::Errno::ENOSPC {
                        namespace_limits(flags)
                    } else {
                        String::new()
                    }
                ),
            )
        })?;
        ctx(nix::unistd::write(&sync_write, b"u"), || {
            "cannot signal the parent".into()
        })?;
        let mut byte = [0u8];
        match nix::unistd::read(&sync_read, &mut byte) {
            Ok(1) => {}
            _ => {
                return Err(Failed(
                    SETUP_FAILED,
                    "the parent did not map the build user".into(),
                ));
            }
        }
        // The supervisor clones each host object the build gets into a detached mount, and
        // hands the clones to the builder over a socket, a batch at a time; the builder, in a
        // mount namespace of its own, attaches them. Neither holds more than a batch of
        // descriptors, however many inputs the build has, and the builder's new root (a tmpfs
        // on `/tmp`) never hides a host path from the supervisor.
        let (feed_here, feed_there) = ctx(
            socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            ),
            || "cannot make a socket pair".into(),
        )?;
        // SAFETY: this process is single-threaded (a fork child); the builder child only runs
        // `builder`, which ends in exec or _exit.
        let forked = unsafe { fork() }.map_err(|e| {
            // A fork refused at the user's limit on processes is this setup's, not a kernel
            // without sandboxes.
            let hint = crate::threads::limit_hint(&e.into());
            let kind = if hint.is_empty() {
                SETUP_FAILED
            } else {
                PLACE_FAILED
            };
            Failed(kind, format!("cannot fork the builder: {e}{hint}"))
        })?;
        match forked {
            ForkResult::Child => {
                drop((feed_here, sync_write, sync_read, status_write));
                builder(p, Feed::new(feed_there))
            }
            ForkResult::Parent { child } => {
                drop(feed_there);
                // The parent watches the builder's end through a pidfd: pid 1 of the build's
                // pid namespace ends only once every other process in it is gone. This process
                // neither reaps the builder nor exits (the builder would die with it, and be
                // reaped elsewhere) before the parent has opened its pidfd, so the pid is its;
                // the builder is fed meanwhile.
                let _ = nix::unistd::write(&sync_write, &child.as_raw().to_le_bytes());
                let fed = feed(p, &feed_here);
                drop(feed_here);
                let _ = nix::unistd::read(&sync_read, &mut byte);
                drop((sync_write, sync_read));
                fed?;
                // Fed, the builder is in its mount namespace. Held here, it outlives the
                // builder: tearing a mount namespace down waits for an RCU grace period, which
                // this process's exit then pays, after the parent has the builder's status.
                let _mounts = mount_namespace_of(child);
                take_build_ids()?;
                // Changing the effective ids cleared the parent-death signal: it is set again,
                // and a forjar that died in between ends the build here (the builder dies with
                // this process).
                ctx(
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL),
                    || "cannot set the parent-death signal".into(),
                )?;
                if nix::unistd::getppid().as_raw() != p.parent_pid {
                    return Err(Failed(SETUP_FAILED, "the parent exited".into()));
                }
                // Only the builder writes the log and the error pipe from here on.
                // SAFETY: these are this process's copies of the fds; nothing else uses them.
                unsafe {
                    libc::close(p.log_write);
                    if p.stderr_write >= 0 {
                        libc::close(p.stderr_write);
                    }
                    libc::close(p.err_write);
                }
                loop {
                    match waitpid(child, None) {
                        Ok(WaitStatus::Exited(_, code)) => {
                            let _ = nix::unistd::write(&status_write, &[0, code as u8]);
                            break;
                        }
                        Ok(WaitStatus::Signaled(_, signal, _)) => {
                            let _ = nix::unistd::write(&status_write, &[1, signal as i32 as u8]);
                            break;
                        }
                        Ok(_) => continue,
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => break,
                    }
                }
                // SAFETY: _exit ends this process only.
                unsafe { libc::_exit(0) }
            }
        }
    })();
    match result {
        Ok(()) => unreachable!("the supervisor exits from inside"),
        Err(failure) => die(err, failure),
    }
}

/// Which of the kernel's limits on namespaces an `unshare` of `flags` that failed with `ENOSPC`
/// met, as this process's user namespace has them (`/proc/sys/user/max_*_namespaces`), of the
/// kinds it asked for: those at 0, or all of them if none is (then one is used up).
fn namespace_limits(flags: CloneFlags) -> String {
    let kinds = [
        (CloneFlags::CLONE_NEWUSER, "user"),
        (CloneFlags::CLONE_NEWNS, "mnt"),
        (CloneFlags::CLONE_NEWPID, "pid"),
        (CloneFlags::CLONE_NEWIPC, "ipc"),
        (CloneFlags::CLONE_NEWUTS, "uts"),
        (CloneFlags::CLONE_NEWNET, "net"),
    ];
    let limits: Vec<(String, String)> = kinds
        .iter()
        .filter(|(flag, _)| flags.contains(*flag))
        .filter_map(|(_, kind)| {
            let name = format!("max_{kind}_namespaces");
            let value = fs::read_to_string(Path::new("/proc/sys/user").join(&name)).ok()?;
            Some((format!("user.{name}"), value.trim().to_string()))
        })
        .collect();
    let zero: Vec<String> = limits
        .iter()
        .filter(|(_, value)| value == "0")
        .map(|(name, value)| format!("{name} = {value}"))
        .collect();
    if !zero.is_empty() {
        return format!(" (the kernel allows none: {})", zero.join(", "));
    }
    let all: Vec<String> = limits
        .iter()
        .map(|(name, value)| format!("{name} = {value}"))
        .collect();
    format!(
        " (one of the kernel's limits on namespaces is used up: {})",
        all.join(", ")
    )
}

/// A descriptor of the mount namespace process `pid` is in (Linux 6.11 and later: the
/// pidfd's `PIDFD_GET_MNT_NAMESPACE`); `None` where the kernel has no such request or the
/// process is gone.
fn mount_namespace_of(pid: nix::unistd::Pid) -> Option<OwnedFd> {
    const PIDFD_GET_MNT_NAMESPACE: libc::c_ulong = (0xFF << 8) | 3;
    let pidfd = super::pidfd_open(pid)?;
    // SAFETY: an ioctl without an argument on a pidfd; it returns a new descriptor or -1.
    let ns = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_MNT_NAMESPACE, 0) };
    // SAFETY: a non-negative return is a descriptor this process now owns.
    (ns >= 0).then(|| unsafe { OwnedFd::from_raw_fd(ns) })
}

/// Puts every signal at its default disposition and unblocks all: forjar ignores `SIGPIPE`, as
/// every Rust program does, and an ignored signal stays ignored across `exec` (`yes | head`
/// would end on a write error, not the signal). The spawner does it once; the supervisors and
/// builders it makes inherit it.
pub(super) fn default_signals() {
    // SAFETY: setting dispositions to the default and clearing the mask; no handler runs.
    unsafe {
        // The kernel's `struct sigaction` all zero: SIG_DFL, no flags, an empty mask (the same
        // bytes whether or not the architecture has `sa_restorer`). Through the system call,
        // as glibc refuses the signals it uses itself, which are as inheritable as any.
        let default = [0u64; 4];
        for signal in 1..=libc::SIGRTMAX() {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    default.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        let none = 0u64;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
    }
}

/// Takes the build user's and group's ids (in the build's user namespace, where the
/// capabilities stay until `exec`).
fn take_build_ids() -> Result<(), Failed> {
    ctx(
        setresgid(
            Gid::from_raw(BUILD_GID),
            Gid::from_raw(BUILD_GID),
            Gid::from_raw(BUILD_GID),
        ),
        || "cannot take the build group".into(),
    )?;
    ctx(
        setresuid(
            Uid::from_raw(BUILD_UID),
            Uid::from_raw(BUILD_UID),
            Uid::from_raw(BUILD_UID),
        ),
        || "cannot take the build user".into(),
    )
}

/// The builder B: pid 1 of the build's pid namespace. Assembles the root in a mount namespace
/// of its own, enters it, and execs the builder.
fn builder(p: &Prepared, mut feed: Feed) -> ! {
    let err = p.err_write;
    let ready = ctx(unshare(CloneFlags::CLONE_NEWNS), || {
        "cannot create the build's mount namespace".into()
    })
    .and_then(|()| take_build_ids())
    // Changing ids made this process undumpable, which keeps the supervisor from taking hold
    // of its mount namespace (`mount_namespace_of`); `exec` makes it dumpable as well.
    .and_then(|()| {
        ctx(nix::sys::prctl::set_dumpable(true), || {
            "cannot make the builder dumpable".into()
        })
    });
    let failure = match ready.and_then(|()| setup(p, &mut feed)) {
        Ok(never) => match never {},
        Err(failure) => failure,
    };
    die(err, failure)
}

enum Never {}

/// The failure of a build that needs more open files than this process may have; the parent
/// says so with the limit (`SandboxError::OpenFiles`).
fn too_many_files() -> Failed {
    Failed(LIMIT_HIT, String::new())
}

/// How many descriptors go over the feed at once.
const BATCH: usize = 32;

/// The host objects the build binds, in the order `setup` binds them: every bound placement, the
/// build directory, the devices.
fn fed_paths(p: &Prepared) -> Vec<PathBuf> {
    p.placements
        .iter()
        .filter_map(|placement| match &placement.kind {
            PlacementKind::Bind { host, .. } => Some(host.clone()),
            PlacementKind::Symlink { .. } => None,
        })
        .chain([p.build_dir.clone()])
        .chain(DEVICES.iter().map(|d| Path::new("/dev").join(d)))
        .collect()
}

/// A detached copy of the mount of `path` (and the mounts below it), as `open_tree` makes it:
/// the builder attaches it where the build sees it. A symlink at `path` is not followed.
fn clone_mount(path: &Path) -> std::io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("the path holds a NUL"))?;
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | libc::AT_RECURSIVE as libc::c_uint
        | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
    // SAFETY: open_tree with a valid C string; a non-negative result is a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The supervisor's side of the feed: clones the host objects (it can reach whatever the
/// caller can; the builder, as the build user, may not) a batch at a time, each batch when the
/// builder asks for it.
fn feed(p: &Prepared, sock: &OwnedFd) -> Result<(), Failed> {
    let paths = fed_paths(p);
    for chunk in paths.chunks(BATCH) {
        let mut ask = [0u8];
        if !matches!(nix::unistd::read(sock, &mut ask), Ok(1)) {
            // The builder is gone; it reported why.
            return Ok(());
        }
        let fds = chunk
            .iter()
            .map(|path| {
                clone_mount(path).map_err(|e| match e.raw_os_error() {
                    Some(libc::EMFILE) => too_many_files(),
                    _ => Failed(
                        SETUP_FAILED,
                        format!("cannot open `{}`: {e}", path.display()),
                    ),
                })
            })
            .collect::<Result<Vec<OwnedFd>, _>>()?;
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        // The count goes with the batch, so that the builder can tell a batch that arrived
        // short (no room for the descriptors) from a whole one.
        ctx(
            sendmsg::<()>(
                sock.as_raw_fd(),
                &[std::io::IoSlice::new(&[raw.len() as u8])],
                &[ControlMessage::ScmRights(&raw)],
                MsgFlags::empty(),
                None,
            ),
            || "cannot hand the build its inputs".into(),
        )?;
    }
    Ok(())
}

/// The builder's side of the feed.
struct Feed {
    sock: OwnedFd,
    batch: std::collections::VecDeque<OwnedFd>,
}

impl Feed {
    fn new(sock: OwnedFd) -> Feed {
        Feed {
            sock,
            batch: std::collections::VecDeque::with_capacity(BATCH),
        }
    }

    /// The next host object, asking the supervisor for the next batch when this one is used.
    fn next(&mut self) -> Result<OwnedFd, Failed> {
        if self.batch.is_empty() {
            ctx(nix::unistd::write(&self.sock, b"n"), || {
                "cannot ask for the build's inputs".into()
            })?;
            let mut count = [0u8];
            let mut iov = [std::io::IoSliceMut::new(&mut count)];
            let mut space = nix::cmsg_space!([RawFd; BATCH]);
            let msg = ctx(
                recvmsg::<()>(
                    self.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ),
                || "cannot receive the build's inputs".into(),
            )?;
            let (bytes, truncated) = (msg.bytes, msg.flags.contains(MsgFlags::MSG_CTRUNC));
            // A truncated message is refused by `cmsgs`; what did arrive is closed on exit.
            if let Ok(cmsgs) = msg.cmsgs() {
                for cmsg in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = cmsg {
                        // SAFETY: SCM_RIGHTS gave this process these new descriptors.
                        self.batch.extend(
                            fds.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
            }
            // A batch that arrived short (no room for its descriptors) would bind the next
            // batch's objects in this one's places: the build stops instead.
            if bytes == 1 && (truncated || self.batch.len() != usize::from(count[0])) {
                return Err(too_many_files());
            }
        }
        match self.batch.pop_front() {
            Some(fd) => Ok(fd),
            // The supervisor stopped feeding: it failed, and reported why; a second report
            // would only garble it.
            // SAFETY: _exit ends this process only.
            None => unsafe { libc::_exit(127) },
        }
    }
}

/// The mount flags a bind mount already has, which a read-only remount must keep (the kernel
/// refuses to clear flags locked by the mount's owner namespace).
fn locked_flags(path: &Path) -> MsFlags {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("sandbox paths have no NUL");
    // SAFETY: `st` is plain data filled by statvfs; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return MsFlags::empty();
    }
    let mut flags = MsFlags::empty();
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, MsFlags::MS_NOSUID),
        (libc::ST_NODEV, MsFlags::MS_NODEV),
        (libc::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (libc::ST_NOATIME, MsFlags::MS_NOATIME),
        (libc::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (libc::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    flags
}

/// The directories made so far in the build's root, so that each is made once, parents first,
/// and none is asked for again (a new root has nothing but what is made here). A build binds
/// each path of its inputs' closure, and a lookup here must not grow with how many came before;
/// the keys are bytes ([`made_key`]), compared without splitting paths into components again.
#[derive(Default)]
struct Made(std::collections::BTreeSet<Vec<u8>>);

/// `path` as a key of [`Made`]: each component after a NUL, which no path holds and which sorts
/// below every other byte, so that what lies below a directory sorts right after it and before
/// anything beside it (`a/b/c` before `a/b c` and `a/b0`). Components as `Path` has them: `a//b`,
/// `a/./b` and `a/b/` are `a/b`.
fn made_key(path: &Path) -> Vec<u8> {
    let mut key = Vec::with_capacity(path.as_os_str().len() + 2);
    for component in path.components() {
        key.push(0);
        if component != std::path::Component::RootDir {
            key.extend_from_slice(component.as_os_str().as_encoded_bytes());
        }
    }
    key
}

impl Made {
    /// Makes the directory `path` and those above it that are not there.
    fn dirs(&mut self, path: &Path) -> Result<(), Failed> {
        self.dirs_keyed(path, made_key(path))
    }

    /// [`dirs`](Self::dirs), with `path`'s key; the parent's key is the key up to its last
    /// component.
    fn dirs_keyed(&mut self, path: &Path, key: Vec<u8>) -> Result<(), Failed> {
        if self.0.contains(&key) {
            return Ok(());
        }
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
            && let Some(cut) = key.iter().rposition(|&b| b == 0)
        {
            self.dirs_keyed(parent, key[..cut].to_vec())?;
        }
        let made = match fs::DirBuilder::new().mode(0o755).create(path) {
            // Already there: the host's, or inside a bound directory.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            made => made,
        };
        ctx(made, || {
            format!("cannot create `{}`", in_build(path).display())
        })?;
        self.0.insert(key);
        Ok(())
    }

    /// Something was mounted on the directory `path`: what was made below it is hidden. Those
    /// keys are the ones from `path`'s key and a NUL up to `path`'s key and the next byte.
    fn mounted_on(&mut self, path: &Path) {
        let mut below = made_key(path);
        below.push(0);
        let mut beside = below.clone();
        *beside.last_mut().expect("a key and a NUL") = 1;
        let hidden: Vec<Vec<u8>> = self.0.range(below..beside).cloned().collect();
        for made in hidden {
            self.0.remove(&made);
        }
    }
}

/// How a bind may be used.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadOnly,
    Writable,
    /// A device node: usable (no `nodev`) but not executable.
    Device,
}

/// Attaches the detached mount `clone` (a host object, cloned by the supervisor) at `target`,
/// always `nosuid`, and `nodev` unless it is a device; read-only unless writable.
fn bind(
    made: &mut Made,
    clone: OwnedFd,
    target: &Path,
    is_dir: bool,
    access: Access,
) -> Result<(), Failed> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    if is_dir {
        made.dirs(target)?;
        made.mounted_on(target);
    } else {
        if let Some(parent) = target.parent() {
            made.dirs(parent)?;
        }
        // Not through a link: before `pivot_root` an absolute one leads into the host.
        ctx(
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                // A mount point: what it holds is never seen.
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW)
                .open(target),
            || format!("cannot create `{}`", in_build(target).display()),
        )?;
    }
    let c = CString::new(target.as_os_str().as_encoded_bytes()).expect("sandbox paths have no NUL");
    // SAFETY: move_mount of a descriptor this process owns to a valid C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            clone.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    mounting(nix::errno::Errno::result(rc), || {
        format!("cannot bind `{}`", in_build(target).display())
    })?;
    drop(clone);
    let mut flags =
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | locked_flags(target);
    match access {
        Access::ReadOnly => flags |= MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        Access::Writable => flags |= MsFlags::MS_NODEV,
        Access::Device => flags |= MsFlags::MS_NOEXEC,
    }
    ctx(
        mount(None::<&str>, target, None::<&str>, flags, None::<&str>),
        || format!("cannot make `{}` read-only", in_build(target).display()),
    )
}

/// A mount that `what` describes failed with `ENOSPC`: the build's mount namespace holds as many
/// mounts as the kernel allows in one (`fs.mount-max`, read while the host's `/proc` is still
/// there), and each path of the build's inputs' closure is a mount. A failure of this build's
/// (what it binds), told as one, not as a kernel without sandboxes.
fn mount_table_full(what: String) -> Failed {
    let max = fs::read_to_string("/proc/sys/fs/mount-max")
        .map(|max| max.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    Failed(
        PLACE_FAILED,
        format!(
            "{what}: the build's mount namespace has the most mounts the kernel allows in one \
             (fs.mount-max = {max}), and each path of the build's inputs and their closure is \
             a mount; raise the limit (`sysctl fs.mount-max=<more>`) or give the build fewer \
             inputs"
        ),
    )
}

/// Why the build's `/proc` was refused (`EPERM`, where every other mount succeeded): the kernel
/// mounts a new `/proc` in a user namespace only where that reveals nothing the host's hides,
/// and a path of the host's `/proc` has a mount over it, as a container's masked paths
/// (`/proc/kcore`, `/proc/keys`, ...) have: no sandbox where forjar runs (`ProcCovered`).
fn proc_covered(error: nix::errno::Errno) -> Failed {
    Failed(PROC_COVERED, format!("cannot mount /proc: {error}"))
}

/// [`ctx`] for a call that adds a mount: `ENOSPC` is [`mount_table_full`].
fn mounting<T>(r: nix::Result<T>, what: impl FnOnce() -> String) -> Result<T, Failed> {
    r.map_err(|e| match e {
        nix::errno::Errno::ENOSPC => mount_table_full(what()),
        e => Failed(SETUP_FAILED, format!("{}: {e}", what())),
    })
}

fn tmpfs(made: &mut Made, target: &Path, mode: u32, extra: MsFlags) -> Result<(), Failed> {
    made.dirs(target)?;
    made.mounted_on(target);
    let options = format!("mode={mode:o}");
    mounting(
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | extra,
            Some(options.as_str()),
        ),
        || format!("cannot mount a tmpfs on `{}`", in_build(target).display()),
    )
}

fn write_file(made: &mut Made, path: &Path, contents: &[u8]) -> Result<(), Failed> {
    if let Some(parent) = path.parent() {
        made.dirs(parent)?;
    }
    ctx(fs::write(path, contents), || {
        format!("cannot write `{}`", in_build(path).display())
    })
}

/// Brings the loopback interface of this process's network namespace up, unless it is (the
/// spawner's namespaces are made with it up).
fn loopback_up() -> Result<(), Failed> {
    // SAFETY: plain socket/ioctl calls on a socket owned here and closed at the end; `req` is
    // a zeroed ifreq whose name is "lo".
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err((
                "cannot open a socket to set up loopback",
                std::io::Error::last_os_error(),
            )
                .into());
        }
        let sock = OwnedFd::from_raw_fd(sock);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err((
                "cannot read the loopback flags",
                std::io::Error::last_os_error(),
            )
                .into());
        }
        let up = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if req.ifr_ifru.ifru_flags & up == up {
            return Ok(());
        }
        req.ifr_ifru.ifru_flags |= up;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(("cannot bring loopback up", std::io::Error::last_os_error()).into());
        }
    }
    Ok(())
}

/// A new network namespace, its loopback up, for one build: made in this process, which is
/// then put back into `host`, the namespace it was in. An error after the switch that cannot
/// go back is [`NamespaceError::Stranded`], and this process must not make another supervisor.
pub(super) fn network_namespace(host: &OwnedFd) -> Result<OwnedFd, NamespaceError> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(|_| NamespaceError::Failed)?;
    let made = fs::File::open("/proc/thread-self/ns/net").map(OwnedFd::from);
    let up = loopback_up();
    setns(host, CloneFlags::CLONE_NEWNET).map_err(|_| NamespaceError::Stranded)?;
    match (made, up) {
        (Ok(made), Ok(())) => Ok(made),
        _ => Err(NamespaceError::Failed),
    }
}

/// Why [`network_namespace`] made none.
#[derive(Debug)]
pub(super) enum NamespaceError {
    /// Back in the namespace it was in: the `unshare`, opening the new namespace or bringing
    /// its loopback up failed.
    Failed,
    /// Left in the new namespace.
    Stranded,
}

fn setup(p: &Prepared, feed: &mut Feed) -> Result<Never, Failed> {
    ctx(
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL),
        || "cannot set the parent-death signal".into(),
    )?;
    let root = Path::new(NEW_ROOT);
    let at = |path: &Path| -> PathBuf { root.join(path.strip_prefix("/").unwrap_or(path)) };

    // Nothing mounted here propagates back to the host.
    ctx(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
        || "cannot make the mounts private".into(),
    )?;
    let made = &mut Made::default();
    tmpfs(made, root, 0o755, MsFlags::empty())?;
    // /tmp first: a store that lives under /tmp is bound on top of it below.
    tmpfs(made, &at(Path::new("/tmp")), 0o1777, MsFlags::empty())?;
    // The request's scratch paths likewise: what is bound inside one lands on top of it.
    for scratch in &p.scratch {
        tmpfs(made, &at(scratch), 0o1777, MsFlags::empty())?;
    }

    // From here on the kernel has given a sandbox: what fails is a path of this build's.
    place(p, feed, made, root).map_err(|Failed(_, message)| Failed(PLACE_FAILED, message))?;
    mounts(p, feed, made, root)
}

/// The binds and symlinks of the build's inputs, toolchain and read-only paths.
fn place(p: &Prepared, feed: &mut Feed, made: &mut Made, root: &Path) -> Result<(), Failed> {
    let at = |path: &Path| -> PathBuf { root.join(path.strip_prefix("/").unwrap_or(path)) };
    for placement in &p.placements {
        let target = at(&placement.target);
        match &placement.kind {
            PlacementKind::Bind {
                is_dir, writable, ..
            } => {
                let access = if *writable {
                    Access::Writable
                } else {
                    Access::ReadOnly
                };
                bind(made, feed.next()?, &target, *is_dir, access)?
            }
            PlacementKind::Symlink { to } => {
                if let Some(parent) = target.parent() {
                    made.dirs(parent)?;
                }
                ctx(symlink(to, &target), || {
                    format!(
                        "cannot create the symlink `{}`",
                        in_build(&target).display()
                    )
                })?;
            }
        }
    }

    Ok(())
}

/// The store directory, `/build`, `/dev`, `/proc`, `/etc`, and the switch to the new root.
fn mounts(p: &Prepared, feed: &mut Feed, made: &mut Made, root: &Path) -> Result<Never, Failed> {
    let at = |path: &Path| -> PathBuf { root.join(path.strip_prefix("/").unwrap_or(path)) };
    // The store directory itself is read-only (only the outputs bound in it are writable), even
    // where its path runs through a writable part of the sandbox such as /tmp.
    let store = at(&p.store_dir);
    made.dirs(&store)?;
    mounting(
        mount(
            Some(&store),
            &store,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
        || "cannot bind the store directory".into(),
    )?;
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    ctx(
        mount(None::<&str>, &store, None::<&str>, flags, None::<&str>),
        || "cannot make the store directory read-only".into(),
    )?;

    // /build: the working directory, from the host; the request's files are written into it.
    bind(
        made,
        feed.next()?,
        &at(Path::new("/build")),
        true,
        Access::Writable,
    )?;
    for (path, contents) in &p.files {
        write_file(made, &at(&Path::new("/build").join(path)), contents)?;
    }

    // /dev: the harmless devices, a private devpts, shared memory.
    for name in DEVICES {
        bind(
            made,
            feed.next()?,
            &at(&Path::new("/dev").join(name)),
            false,
            Access::Device,
        )?;
    }
    let pts = at(Path::new("/dev/pts"));
    made.dirs(&pts)?;
    mounting(
        mount(
            Some("devpts"),
            &pts,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=620"),
        ),
        || "cannot mount devpts".into(),
    )?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ctx(symlink(to, at(&Path::new("/dev").join(link))), || {
            format!("cannot create /dev/{link}")
        })?;
    }
    tmpfs(made, &at(Path::new("/dev/shm")), 0o1777, MsFlags::MS_NOEXEC)?;

    // A fresh /proc of the build's own pid namespace.
    let proc_dir = at(Path::new("/proc"));
    made.dirs(&proc_dir)?;
    let proc_mounted = mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    if let Err(error @ nix::errno::Errno::EPERM) = proc_mounted {
        return Err(proc_covered(error));
    }
    mounting(proc_mounted, || "cannot mount /proc".into())?;

    write_file(made, &at(Path::new("/etc/passwd")), PASSWD.as_bytes())?;
    write_file(made, &at(Path::new("/etc/group")), GROUP.as_bytes())?;
    write_file(made, &at(Path::new("/etc/hosts")), HOSTS.as_bytes())?;

    ctx(sethostname("localhost"), || {
        "cannot set the hostname".into()
    })?;
    if !p.network {
        loopback_up()?;
    }

    // Enter the new root; the old one is detached and gone.
    ctx(chdir(root), || "cannot enter the new root".into())?;
    ctx(pivot_root(".", "."), || "pivot_root failed".into())?;
    ctx(umount2(".", MntFlags::MNT_DETACH), || {
        "cannot detach the old root".into()
    })?;
    ctx(chdir("/"), || "cannot enter the new root".into())?;
    ctx(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None::<&str>,
        ),
        || "cannot make the root read-only".into(),
    )?;
    ctx(chdir(&p.working_dir), || {
        format!(
            "cannot enter the working directory `{}`",
            p.working_dir.display()
        )
    })?;

    for &(resource, limit) in &p.rlimits {
        // Never above the hard limit this process was given: a user whose `ulimit -Hu` is
        // below the build's process cap builds under that limit, not not at all.
        let limit = super::at_most_hard(resource, limit);
        ctx(
            nix::sys::resource::setrlimit(resource, limit, limit),
            || format!("cannot set {resource:?}"),
        )?;
    }

    // Standard streams: nothing in, the log out (`enter`: the user's terminal, as they are).
    let null = ctx(fs::File::open("/dev/null"), || {
        "cannot open /dev/null".into()
    })?;
    // SAFETY: dup2 onto the standard descriptors of this process, which owns them.
    unsafe {
        if p.interactive {
            // Kept as forjar has them; the shell gets a process group of its own inside the
            // build's pid namespace, and the terminal, so that job control works there and
            // what it restores at exit is its own.
            libc::setpgid(0, 0);
            let before = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            libc::tcsetpgrp(0, libc::getpgrp());
            libc::signal(libc::SIGTTOU, before);
        } else if libc::dup2(null.as_raw_fd(), 0) < 0
            || libc::dup2(p.log_write, 1) < 0
            || libc::dup2(
                if p.stderr_write >= 0 {
                    p.stderr_write
                } else {
                    p.log_write
                },
                2,
            ) < 0
        {
            return Err((
                "cannot set up the standard streams",
                std::io::Error::last_os_error(),
            )
                .into());
        }
        // Every other descriptor closes on exec (the error pipe too, which tells the parent
        // that exec happened).
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }

    if !CONFINED.load(Ordering::Relaxed) {
        confine()?;
    }

    let argv: Vec<&CStr> = p.args.iter().map(CString::as_c_str).collect();
    let envp: Vec<&CStr> = p.env.iter().map(CString::as_c_str).collect();
    let error = nix::unistd::execve(argv[0], &argv, &envp).unwrap_err();
    Err(Failed(
        EXEC_FAILED,
        format!(
            "cannot run the builder `{}`: {error}",
            argv[0].to_string_lossy()
        ),
    ))
}

/// Set once [`confine`] has confined this process, and so in every process it forks.
static CONFINED: AtomicBool = AtomicBool::new(false);

/// Confines this process and all it forks as a build must be: an empty session keyring of its
/// own, so that nothing of forjar's is reachable even before the filter refuses the keyring
/// calls; `no_new_privs`; the seccomp filter ([`super::seccomp`]). The spawner does it once, for
/// every build it forks; a builder forked from one that could not does it before `exec`.
pub(super) fn confine() -> Result<(), Failed> {
    // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL) takes no pointer but the NULL name.
    if unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    } < 0
    {
        return Err((
            "cannot give the build a keyring of its own",
            std::io::Error::last_os_error(),
        )
            .into());
    }
    ctx(nix::sys::prctl::set_no_new_privs(), || {
        "cannot set no_new_privs".into()
    })?;
    ctx(super::seccomp::install(&super::seccomp::program()), || {
        "cannot install the seccomp filter".into()
    })?;
    CONFINED.store(true, Ordering::Relaxed);
    Ok(())
}

const PASSWD: &str = "root:x:0:0:root:/build:/noshell\n\
                      forjar:x:1000:100:forjar build user:/build:/noshell\n\
                      nobody:x:65534:65534:nobody:/:/noshell\n";
const GROUP: &str = "root:x:0:\nforjar:x:100:\nnogroup:x:65534:\n";
const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_mount_table_is_told_as_the_builds_with_the_limit_and_what_to_do() {
        let Err(Failed(kind, message)) =
            mounting::<()>(Err(nix::errno::Errno::ENOSPC), || "cannot mount x".into())
        else {
            panic!("an error stays one");
        };
        assert_eq!(kind, PLACE_FAILED);
        let max = fs::read_to_string("/proc/sys/fs/mount-max").unwrap();
        assert!(message.starts_with("cannot mount x: "), "{message}");
        assert!(
            message.contains(&format!("(fs.mount-max = {})", max.trim()))
                && message.contains("sysctl fs.mount-max="),
            "{message}"
        );
        // Any other refusal is the sandbox's.
        let Err(Failed(kind, message)) =
            mounting::<()>(Err(nix::errno::Errno::EPERM), || "cannot mount x".into())
        else {
            panic!("an error stays one");
        };
        assert_eq!(
            (kind, message.as_str()),
            (
                SETUP_FAILED,
                "cannot mount x: EPERM: Operation not permitted"
            )
        );
        // Paths in messages are the build's.
        assert_eq!(
            in_build(&Path::new(NEW_ROOT).join("nix/store/a")),
            Path::new("/nix/store/a")
        );
        assert_eq!(in_build(Path::new(NEW_ROOT)), Path::new("/"));
    }

    #[test]
    fn a_mount_hides_what_was_made_below_it_and_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let at = |p: &str| dir.path().join(p);
        let mut made = Made::default();
        let make = |made: &mut Made, p: &str| {
            if let Err(Failed(_, why)) = made.dirs(&at(p)) {
                panic!("{why}");
            }
        };
        for p in ["a/b/c", "a/b/x/y", "a/b0", "a/b c", "a/b-x", "a/a"] {
            make(&mut made, p);
        }
        // The same directory however its path is written.
        for same in ["a//b/c", "a/./b/c", "a/b/c/"] {
            assert!(made.0.contains(&made_key(&at(same))), "{same} is a/b/c");
        }
        made.mounted_on(&at("a/b/"));
        for kept in ["a", "a/b", "a/b0", "a/b c", "a/b-x", "a/a"] {
            assert!(
                made.0.contains(&made_key(&at(kept))),
                "{kept} was forgotten"
            );
        }
        for hidden in ["a/b/c", "a/b/x", "a/b/x/y"] {
            assert!(
                !made.0.contains(&made_key(&at(hidden))),
                "{hidden} was kept"
            );
        }
        // Made again after the mount: it is not there any more in the mounted tree.
        fs::remove_dir_all(at("a/b/c")).unwrap();
        make(&mut made, "a/b/c");
        assert!(at("a/b/c").is_dir());
    }
}
