//! The floor under any build with forjar's isolation on this machine: the same tree of trivial
//! builds, each run with the sandbox's namespaces and mounts and nothing else.
//!
//! Per build, as DESIGN §5 asks and as forjar's sandbox does: a child unshares the user,
//! mount, pid, ipc, uts and network namespaces; this process writes its id maps; the child
//! brings loopback up and forks pid 1, which takes the build user's ids, mounts a tmpfs root,
//! binds `/bin/sh` and the host's library directories (as `nix-build` is given them), each
//! input's directory read-only and the output writable, binds the six devices, mounts devpts,
//! `/dev/shm`, `/proc`, a `/tmp` and `/build`, writes `/etc/passwd`, `pivot_root`s, and
//! `exec`s `/bin/sh -c "echo ... > $out/content"`. What it leaves out is the runtime: no
//! store (no hashing, lock, log, metadata, durable install), no plan, no limits, no seccomp
//! filter. `jobs` workers take the nodes in dependency order.
//!
//! It runs in a process of its own (`--floor-one`), forked from nothing but the benchmark's
//! start, so that its forks copy a small process.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::libc;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid, fork, pipe2, pivot_root, read, write};

/// Builds the `size`-node tree under `dir` (which it fills) with `jobs` workers; returns the
/// time from the first fork to the last build's end.
pub fn run(dir: &Path, size: usize, jobs: usize) -> Duration {
    let sh = super::peers::sh_closure();
    // The host ids the build user is mapped to, as forjar maps them.
    let (uid, gid) = forjar::sandbox::host_ids();
    fs::create_dir_all(dir.join("root")).unwrap();
    for i in 0..size {
        let out = dir.join(format!("n{i}"));
        fs::create_dir(&out).unwrap();
        std::os::unix::fs::chown(&out, Some(uid), Some(gid)).unwrap();
    }
    // Each worker builds the nodes whose index is its own modulo `jobs`, leaves first, and
    // waits for a node's children by their output: a tree's levels are built in order.
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..jobs {
        // SAFETY: this process is single-threaded (`--floor-one` starts no thread).
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => child(|| {
                for i in (0..size).rev().filter(|i| i % jobs == w) {
                    for below in super::children(i, size) {
                        while !dir.join(format!("n{below}/content")).exists() {
                            std::thread::sleep(Duration::from_micros(50));
                        }
                    }
                    let code = build(dir, &sh, (uid, gid), size, i);
                    if code != 0 {
                        eprintln!("floor: build {i} failed ({code})");
                        return 1;
                    }
                }
                0
            }),
            ForkResult::Parent { child } => workers.push(child),
        }
    }
    for worker in workers {
        assert_eq!(
            waitpid(worker, None).unwrap(),
            WaitStatus::Exited(worker, 0),
            "a floor worker failed"
        );
    }
    started.elapsed()
}

/// The nodes below node `i` of a tree of `size`: the inputs' closure of its build.
fn closure(i: usize, size: usize) -> Vec<usize> {
    let mut below = Vec::new();
    let mut next = vec![i];
    while let Some(n) = next.pop() {
        for child in super::children(n, size) {
            below.push(child);
            next.push(child);
        }
    }
    below
}

/// One sandboxed build of node `i`; its exit code.
fn build(
    dir: &Path,
    sh: &[(PathBuf, PathBuf)],
    (uid, gid): (u32, u32),
    size: usize,
    i: usize,
) -> i32 {
    let flags = nix::fcntl::OFlag::O_CLOEXEC;
    let (ready_r, ready_w) = pipe2(flags).unwrap();
    let (go_r, go_w) = pipe2(flags).unwrap();
    // SAFETY: the worker is single-threaded.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => child(|| {
            let ns = CloneFlags::CLONE_NEWUSER
                | CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWNET;
            unshare(ns).unwrap();
            write(&ready_w, b"u").unwrap();
            let mut byte = [0u8];
            assert_eq!(read(&go_r, &mut byte), Ok(1));
            loopback_up();
            // SAFETY: single-threaded.
            match unsafe { fork() }.unwrap() {
                ForkResult::Child => child(|| builder(dir, sh, size, i)),
                ForkResult::Parent { child } => match waitpid(child, None).unwrap() {
                    WaitStatus::Exited(_, code) => code,
                    _ => 97,
                },
            }
        }),
        ForkResult::Parent { child } => {
            drop((ready_w, go_r));
            let mut byte = [0u8];
            assert_eq!(read(&ready_r, &mut byte), Ok(1));
            let proc = PathBuf::from(format!("/proc/{child}"));
            fs::write(proc.join("setgroups"), "deny").unwrap();
            fs::write(proc.join("uid_map"), format!("1000 {uid} 1\n")).unwrap();
            fs::write(proc.join("gid_map"), format!("100 {gid} 1\n")).unwrap();
            write(&go_w, b"g").unwrap();
            match waitpid(child, None).unwrap() {
                WaitStatus::Exited(_, code) => code,
                _ => 96,
            }
        }
    }
}

/// Pid 1 of the build: the new root, then `exec`.
fn builder(dir: &Path, sh: &[(PathBuf, PathBuf)], size: usize, i: usize) -> ! {
    nix::unistd::setresgid(Gid::from(100), Gid::from(100), Gid::from(100)).unwrap();
    nix::unistd::setresuid(Uid::from(1000), Uid::from(1000), Uid::from(1000)).unwrap();
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).unwrap();
    let root = dir.join("root");
    let at = |p: &Path| root.join(p.strip_prefix("/").unwrap());
    let safe = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some("tmpfs"), &root, Some("tmpfs"), safe, Some("mode=755")).unwrap();
    let bind = |host: &Path, target: &Path, extra: MsFlags| {
        if host.is_dir() {
            fs::create_dir_all(target).unwrap();
        } else {
            fs::create_dir_all(target.parent().unwrap()).unwrap();
            fs::File::create(target).unwrap();
        }
        mount(
            Some(host),
            target,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .unwrap();
        let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | extra;
        mount(none, target, none, remount, none).unwrap();
    };
    // The tmpfs directories first: the binds below may lie under `/tmp`.
    for (target, mode) in [
        ("/dev/shm", "mode=1777"),
        ("/tmp", "mode=1777"),
        ("/build", "mode=755"),
    ] {
        let target = at(Path::new(target));
        fs::create_dir_all(&target).unwrap();
        mount(Some("tmpfs"), &target, Some("tmpfs"), safe, Some(mode)).unwrap();
    }
    let read_only = MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
    for (target, real) in sh {
        bind(real, &at(target), read_only);
    }
    for input in closure(i, size) {
        let host = dir.join(format!("n{input}"));
        bind(&host, &at(&host), read_only);
    }
    let out = dir.join(format!("n{i}"));
    bind(&out, &at(&out), MsFlags::MS_NODEV);
    for device in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(device);
        bind(&host, &at(&host), MsFlags::MS_NOEXEC);
    }
    let pts = at(Path::new("/dev/pts"));
    fs::create_dir_all(&pts).unwrap();
    let pts_options = "newinstance,ptmxmode=0666,mode=620";
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(pts_options),
    )
    .unwrap();
    let proc = at(Path::new("/proc"));
    fs::create_dir_all(&proc).unwrap();
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        safe | MsFlags::MS_NOEXEC,
        none,
    )
    .unwrap();
    fs::create_dir_all(at(Path::new("/etc"))).unwrap();
    fs::write(
        at(Path::new("/etc/passwd")),
        "nixbld:x:1000:100::/build:/noshell\n",
    )
    .unwrap();
    let old = root.join("old");
    fs::create_dir(&old).unwrap();
    pivot_root(&root, &old).unwrap();
    nix::unistd::chdir("/").unwrap();
    umount2("/old", MntFlags::MNT_DETACH).unwrap();
    nix::unistd::chdir("/build").unwrap();
    nix::unistd::sethostname("localhost").unwrap();
    let dep = |k: usize| {
        let child = 2 * i + 1 + k;
        (child < size).then(|| dir.join(format!("n{child}")).display().to_string())
    };
    let env = [
        format!("out={}", out.display()),
        format!("id={i}"),
        format!("dep0={}", dep(0).unwrap_or_default()),
        format!("dep1={}", dep(1).unwrap_or_default()),
        "PATH=/path-not-set".into(),
    ]
    .map(|e| CString::new(e).unwrap());
    let argv =
        ["/bin/sh", "-c", "echo $id $dep0 $dep1 > $out/content"].map(|a| CString::new(a).unwrap());
    let _ = nix::unistd::execve(c"/bin/sh", &argv, &env);
    // SAFETY: _exit ends this process only.
    unsafe { libc::_exit(127) }
}

/// Runs `body` in a forked child and ends the child with its code: a panic ends the child
/// too (exit code 98), rather than unwinding into the code of the process it was forked from.
fn child(body: impl FnOnce() -> i32) -> ! {
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(98);
    // SAFETY: _exit ends this process only.
    unsafe { libc::_exit(code) }
}

/// Brings the network namespace's loopback up, as the sandbox does (its own calls: the floor
/// runs none of forjar's sandbox code).
fn loopback_up() {
    // SAFETY: a socket and two ioctls on a zeroed ifreq named "lo".
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(sock >= 0, "a socket");
        let sock = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        assert_eq!(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req),
            0
        );
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        assert_eq!(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req), 0);
    }
}
