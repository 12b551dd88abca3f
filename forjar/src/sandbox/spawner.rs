//! The spawner: the small process every build's supervisor is forked from.
//!
//! A fork copies the page tables of the process that forks, and the child's exit or `exec`
//! tears its copy down again. A build pays that twice (its supervisor, and the builder the
//! supervisor forks), in proportion to the memory of the process forked from: forked from
//! forjar, whose plan grows with the program, a build of a large program cost several times a
//! build of a small one. The spawner is forked once, while the program is still small (a
//! program's [`main!`](crate::main) starts it before the graph is defined; otherwise the first
//! build does), and holds nothing of the plan. Each build's prepared sandbox and descriptors
//! reach it over a socket; it makes the supervisor with `clone(CLONE_PARENT)`, so that the
//! supervisor is forjar's child exactly as if forjar had forked it: forjar maps its ids, waits
//! for it, kills it, and it dies with forjar (its parent-death signal).
//!
//! A process's children get their parent-death signal when the *thread* that made them ends,
//! and a `CLONE_PARENT` child's parent is the spawner's: the spawner is forked by a thread of
//! forjar's that lives as long as the process. The spawner ends when forjar closes its end of
//! the socket or dies. One killed from outside is replaced at the next build; a build handed to
//! it in the moment it died fails ("the build's spawner ended"), as it may have been started.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError, mpsc};

use nix::libc;
use nix::sys::resource::Resource;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork};

use super::{Placement, PlacementKind, Prepared, SandboxError, child};

/// The spawner this process uses, once started.
static LINK: Mutex<Option<Link>> = Mutex::new(None);

/// Asks the thread that forks spawners for a new one.
static KEEPER: OnceLock<mpsc::Sender<mpsc::Sender<io::Result<Link>>>> = OnceLock::new();

/// The most descriptors one build hands over: its three sync pipes, the log, stderr and error
/// pipes, its lock, the standard streams of `enter`, and the cgroup files.
const MAX_FDS: usize = 32;

/// The resource limits a sandbox sets, by their number on the wire.
const RESOURCES: [Resource; 4] = [
    Resource::RLIMIT_CORE,
    Resource::RLIMIT_FSIZE,
    Resource::RLIMIT_AS,
    Resource::RLIMIT_NPROC,
];

/// A running spawner: the socket to it, and its pid, to reap it once it is gone.
struct Link {
    stream: UnixStream,
    pid: Pid,
}

/// Starts this process's spawner now, if it has none: a program calls it before it grows, so
/// that every build is forked from a process of the size it has now. Builds start it
/// themselves otherwise.
pub fn start() -> Result<(), SandboxError> {
    let mut link = LINK.lock().unwrap_or_else(PoisonError::into_inner);
    if link.is_none() {
        *link = Some(new_spawner()?);
    }
    Ok(())
}

/// Makes the supervisor of the build `p` describes, with the given ends of its sync pipes,
/// as a child of this process. Returns its pid.
pub(super) fn spawn(
    p: &Prepared,
    sync_write: &OwnedFd,
    ready_read: &OwnedFd,
    status_write: &OwnedFd,
) -> Result<Pid, SandboxError> {
    let body = encode(p);
    let mut fds = vec![
        sync_write.as_raw_fd(),
        ready_read.as_raw_fd(),
        status_write.as_raw_fd(),
        p.log_write,
        p.err_write,
    ];
    fds.extend([p.stderr_write, p.hold].into_iter().filter(|&fd| fd >= 0));
    fds.extend(p.cgroup_tasks.iter().map(AsRawFd::as_raw_fd));
    if p.interactive {
        fds.extend([0, 1, 2]);
    }
    let mut link = LINK.lock().unwrap_or_else(PoisonError::into_inner);
    // A spawner that is gone took nothing of a request it could not read: the request goes
    // to a new one.
    for attempt in 0..2 {
        let current = match link.as_mut() {
            Some(current) => current,
            None => link.insert(new_spawner()?),
        };
        if let Err(e) = send(&current.stream, &body, &fds) {
            end(link.take());
            if attempt == 0 && matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) {
                continue;
            }
            return Err(super::io_err("cannot hand the build to its spawner")(e));
        }
        let mut reply = [0u8; 8];
        return match (&current.stream).read_exact(&mut reply) {
            Ok(()) => match i64::from_le_bytes(reply) {
                pid @ 1.. => Ok(Pid::from_raw(pid as i32)),
                errno => Err(super::io_err("cannot fork the build's supervisor")(
                    io::Error::from_raw_os_error(-errno as i32),
                )),
            },
            Err(e) => {
                end(link.take());
                Err(super::io_err("the build's spawner ended")(e))
            }
        };
    }
    unreachable!("the second attempt returns")
}

/// Reaps a spawner that is gone (its socket ended, which it does only when it exits).
fn end(link: Option<Link>) {
    if let Some(link) = link {
        drop(link.stream);
        while let Err(nix::errno::Errno::EINTR) = waitpid(link.pid, None) {}
    }
}

/// A new spawner, forked by the keeper thread.
fn new_spawner() -> Result<Link, SandboxError> {
    let keeper = KEEPER.get_or_init(|| {
        let (requests, asked) = mpsc::channel::<mpsc::Sender<io::Result<Link>>>();
        // If the thread cannot start, the request below finds the channel closed.
        let _ = std::thread::Builder::new()
            .name("forjar-spawner".into())
            .spawn(move || {
                for reply in asked {
                    let _ = reply.send(fork_spawner());
                }
            });
        requests
    });
    let (reply, answer) = mpsc::channel();
    let gone = || SandboxError::Io {
        what: "cannot start the process builds are forked from",
        source: io::Error::other("its thread is not running"),
    };
    keeper.send(reply).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?.map_err(super::io_err(
        "cannot start the process builds are forked from",
    ))
}

/// Forks a spawner (on the keeper thread, which lives as long as the process).
fn fork_spawner() -> io::Result<Link> {
    let (here, there) = UnixStream::pair()?;
    let parent = nix::unistd::getpid();
    // SAFETY: the child runs only `serve`, which ends in `_exit`, and takes no lock but the
    // allocator's, which glibc's `fork` leaves usable.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Child => {
            drop(here);
            serve(there, parent)
        }
        ForkResult::Parent { child } => Ok(Link {
            stream: here,
            pid: child,
        }),
    }
}

/// The spawner's loop: a request, a supervisor, its pid; until forjar is gone.
fn serve(stream: UnixStream, parent: Pid) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid() != parent {
        // SAFETY: _exit ends this process only.
        unsafe { libc::_exit(0) }
    }
    // The fork copied every descriptor forjar had, among them other builds' pipes: none is
    // kept, or a log would not end while the spawner lives.
    child::close_all_but(&mut [stream.as_raw_fd()]);
    child::default_signals();
    // Confined once here, as every build must be, each build inherits it: the kernel compiles
    // a seccomp filter when it is attached. One that cannot be leaves it to each builder, which
    // then fails with the reason.
    let _ = child::confine();
    let mut networks = Networks::open();
    networks.refill();
    while let Ok(Some(request)) = receive(&stream) {
        // A build given the network stays in the spawner's, which is forjar's.
        let network = if request.prepared.network {
            None
        } else {
            networks.spare.take()
        };
        let reply = request.spawn(network);
        if (&stream).write_all(&reply.to_le_bytes()).is_err() {
            break;
        }
        // While the build starts: the next build's.
        networks.refill();
    }
    // SAFETY: _exit ends this process only.
    unsafe { libc::_exit(0) }
}

/// Network namespaces made ahead, one at a time, each for one build: making one (about half
/// a millisecond of the kernel's work, most of a build's `unshare`) is then done while the
/// spawner waits for the next build, not while a build waits for its sandbox. Only a spawner
/// that may enter its own namespace again (root of the user namespace that owns it) makes
/// them; otherwise, or after a failure, each supervisor makes its own.
struct Networks {
    /// The namespace the spawner is in, to go back to after making one; none when it makes
    /// none.
    host: Option<OwnedFd>,
    /// The next build's.
    spare: Option<OwnedFd>,
}

impl Networks {
    fn open() -> Networks {
        // Entering the namespace it is in asks the kernel what going back would: root of a
        // user namespace of its own (`unshare --map-root-user`) may make a namespace but not
        // return to the host's.
        let host = File::open("/proc/thread-self/ns/net")
            .map(OwnedFd::from)
            .ok()
            .filter(|host| nix::sched::setns(host, nix::sched::CloneFlags::CLONE_NEWNET).is_ok());
        Networks { host, spare: None }
    }

    /// Makes the next build's namespace, if there is none.
    fn refill(&mut self) {
        let Some(host) = &self.host else { return };
        if self.spare.is_some() {
            return;
        }
        match child::network_namespace(host) {
            Ok(made) => self.spare = Some(made),
            // From here on each supervisor makes its own, as it does for a spawner that may
            // not go back.
            Err(child::NamespaceError::Failed) => self.host = None,
            // Left in a namespace that is not forjar's: a build given the network would get
            // it. This spawner ends; the next build starts a new one.
            // SAFETY: _exit ends this process only.
            Err(child::NamespaceError::Stranded) => unsafe { libc::_exit(1) },
        }
    }
}

/// A build's request as the spawner received it.
struct Request {
    prepared: Prepared,
    sync_write: OwnedFd,
    ready_read: OwnedFd,
    status_write: OwnedFd,
    /// The other descriptors, closed here once the supervisor has its copies.
    _held: Vec<OwnedFd>,
}

impl Request {
    /// Makes the supervisor, which enters `network` (when given) as its network namespace:
    /// its pid, or a negative errno. This process's copy of `network` is closed.
    fn spawn(self, network: Option<OwnedFd>) -> i64 {
        // SAFETY: a raw clone without CLONE_VM, as fork; this process is single-threaded, so
        // the child finds no lock held. The child runs only `child::supervisor`, which ends
        // in `_exit` or `exec`.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        match pid {
            0 => child::supervisor(
                &self.prepared,
                self.sync_write,
                self.ready_read,
                self.status_write,
                network,
            ),
            1.. => pid,
            _ => -i64::from(
                io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO),
            ),
        }
    }
}

/// Sends a request: its length with its descriptors, then the rest.
fn send(stream: &UnixStream, body: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let header = (body.len() as u64).to_le_bytes();
    let sent = loop {
        match sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&header)],
            &[ControlMessage::ScmRights(fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            sent => break sent?,
        }
    };
    let mut writer = stream;
    writer.write_all(&header[sent..])?;
    writer.write_all(body)
}

/// Receives a request; `None` once forjar closed its end.
fn receive(stream: &UnixStream) -> io::Result<Option<Request>> {
    let mut header = [0u8; 8];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(&mut header)];
    let msg = loop {
        match recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            msg => break msg?,
        }
    };
    let got = msg.bytes;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: SCM_RIGHTS gave this process these new descriptors.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if got == 0 {
        return Ok(None);
    }
    let mut reader = stream;
    reader.read_exact(&mut header[got..])?;
    let mut body = vec![0u8; u64::from_le_bytes(header) as usize];
    reader.read_exact(&mut body)?;
    decode(&body, fds)
        .map(Some)
        .ok_or_else(|| io::Error::other("a request the spawner cannot read"))
}

/// Writes values for [`Reader`].
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn number(&mut self, n: u64) {
        self.0.extend_from_slice(&n.to_le_bytes());
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.number(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn path(&mut self, path: &std::path::Path) {
        self.bytes(path.as_os_str().as_bytes());
    }

    fn paths<'a>(&mut self, paths: impl ExactSizeIterator<Item = &'a std::path::Path>) {
        self.number(paths.len() as u64);
        for path in paths {
            self.path(path);
        }
    }
}

/// Reads what [`Writer`] wrote; `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn number(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*head))
    }

    fn flag(&mut self) -> Option<bool> {
        self.number().map(|n| n != 0)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.number()?).ok()?;
        let bytes = self.0.get(..len)?;
        self.0 = &self.0[len..];
        Some(bytes)
    }

    fn path(&mut self) -> Option<PathBuf> {
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(self.bytes()?)))
    }

    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let count = self.number()?;
        // Each item takes at least a number: a count past what is left is not believed.
        if count > self.0.len() as u64 / 8 {
            return None;
        }
        (0..count).map(|_| item(self)).collect()
    }

    fn cstring(&mut self) -> Option<CString> {
        CString::new(self.bytes()?).ok()
    }
}

/// A request's body: everything of `p` but its descriptors, which go beside it.
fn encode(p: &Prepared) -> Vec<u8> {
    let mut w = Writer::default();
    w.number(u64::from(p.parent_pid as u32));
    w.number(u64::from(p.network));
    w.number(u64::from(p.interactive));
    w.number(u64::from(p.stderr_write >= 0));
    w.number(u64::from(p.hold >= 0));
    w.number(p.cgroup_tasks.len() as u64);
    w.number(p.placements.len() as u64);
    for placement in &p.placements {
        w.path(&placement.target);
        match &placement.kind {
            PlacementKind::Bind {
                host,
                is_dir,
                writable,
            } => {
                w.number(0);
                w.path(host);
                w.number(u64::from(*is_dir));
                w.number(u64::from(*writable));
            }
            PlacementKind::Symlink { to } => {
                w.number(1);
                w.path(to);
            }
        }
    }
    w.path(&p.build_dir);
    w.path(&p.working_dir);
    w.paths(p.scratch.iter().map(PathBuf::as_path));
    w.path(&p.store_dir);
    w.number(p.files.len() as u64);
    for (path, contents) in &p.files {
        w.path(path);
        w.bytes(contents);
    }
    w.number(p.rlimits.len() as u64);
    for (resource, limit) in &p.rlimits {
        let index = RESOURCES
            .iter()
            .position(|r| r == resource)
            .expect("the sandbox sets only the limits of RESOURCES");
        w.number(index as u64);
        w.number(*limit);
    }
    for strings in [&p.args, &p.env] {
        w.number(strings.len() as u64);
        for s in strings {
            w.bytes(s.as_bytes());
        }
    }
    w.0
}

/// The request `body` and `fds` (in [`spawn`]'s order) describe.
fn decode(body: &[u8], fds: Vec<OwnedFd>) -> Option<Request> {
    let mut r = Reader(body);
    let parent_pid = r.number()? as u32 as i32;
    let network = r.flag()?;
    let interactive = r.flag()?;
    let has_stderr = r.flag()?;
    let has_hold = r.flag()?;
    let cgroups = usize::try_from(r.number()?).ok()?;
    let expected = 5
        + usize::from(has_stderr)
        + usize::from(has_hold)
        + cgroups
        + if interactive { 3 } else { 0 };
    if fds.len() != expected {
        return None;
    }
    let placements = r.list(|r| {
        let target = r.path()?;
        let kind = match r.number()? {
            0 => PlacementKind::Bind {
                host: r.path()?,
                is_dir: r.flag()?,
                writable: r.flag()?,
            },
            1 => PlacementKind::Symlink { to: r.path()? },
            _ => return None,
        };
        Some(Placement { target, kind })
    })?;
    let build_dir = r.path()?;
    let working_dir = r.path()?;
    let scratch = r.list(Reader::path)?;
    let store_dir = r.path()?;
    let files = r.list(|r| Some((r.path()?, r.bytes()?.to_vec())))?;
    let rlimits = r.list(|r| {
        let resource = *RESOURCES.get(usize::try_from(r.number()?).ok()?)?;
        Some((resource, r.number()?))
    })?;
    let args = r.list(Reader::cstring)?;
    let env = r.list(Reader::cstring)?;
    if !r.0.is_empty() {
        return None;
    }

    let mut fds = fds.into_iter();
    let mut next = || fds.next().expect("the count was checked");
    let (sync_write, ready_read, status_write) = (next(), next(), next());
    let mut held = vec![next(), next()];
    let (log_write, err_write) = (held[0].as_raw_fd(), held[1].as_raw_fd());
    let mut optional = |present: bool| {
        present.then(|| {
            let fd = next();
            let raw = fd.as_raw_fd();
            held.push(fd);
            raw
        })
    };
    let stderr_write = optional(has_stderr).unwrap_or(-1);
    let hold = optional(has_hold).unwrap_or(-1);
    let cgroup_tasks = (0..cgroups).map(|_| File::from(next())).collect();
    let streams = if interactive {
        [next(), next(), next()].map(|fd| {
            let raw = fd.as_raw_fd();
            held.push(fd);
            raw
        })
    } else {
        [-1; 3]
    };
    Some(Request {
        prepared: Prepared {
            parent_pid,
            network,
            placements,
            build_dir,
            working_dir,
            scratch,
            store_dir,
            files,
            rlimits,
            args,
            env,
            log_write,
            stderr_write,
            hold,
            err_write,
            cgroup_tasks,
            interactive,
            streams,
        },
        sync_write,
        ready_read,
        status_write,
        _held: held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_back_as_it_was_written() {
        let p = Prepared {
            parent_pid: 4242,
            network: true,
            placements: vec![
                Placement {
                    target: "/nix/a".into(),
                    kind: PlacementKind::Bind {
                        host: "/s/a".into(),
                        is_dir: true,
                        writable: false,
                    },
                },
                Placement {
                    target: "/lib".into(),
                    kind: PlacementKind::Symlink {
                        to: "usr/lib".into(),
                    },
                },
            ],
            build_dir: "/s/.tmp/b".into(),
            working_dir: "/build/src".into(),
            scratch: vec!["/var/tmp".into()],
            store_dir: "/s".into(),
            files: vec![("conf".into(), b"a\0b".to_vec())],
            rlimits: vec![(Resource::RLIMIT_CORE, 0), (Resource::RLIMIT_AS, 1 << 40)],
            args: vec![CString::new("/bin/sh").unwrap()],
            env: vec![CString::new("A=b c").unwrap()],
            log_write: -1,
            stderr_write: -1,
            hold: -1,
            err_write: -1,
            cgroup_tasks: Vec::new(),
            interactive: false,
            streams: [-1; 3],
        };
        let body = encode(&p);
        let fds = (0..5)
            .map(|_| File::open("/dev/null").unwrap().into())
            .collect();
        let q = decode(&body, fds).expect("it reads back").prepared;
        assert_eq!(encode(&q), body);
        assert_eq!(q.parent_pid, 4242);
        assert_eq!(q.placements.len(), 2);
        assert_eq!(q.files, p.files);
        assert_eq!(q.rlimits, p.rlimits);
        assert_eq!(q.args, p.args);
        assert_eq!(q.env, p.env);
        assert!(q.log_write >= 0 && q.stderr_write == -1 && q.hold == -1);
        // Cut short, or with descriptors missing, it is refused.
        let fds = |n| {
            (0..n)
                .map(|_| File::open("/dev/null").unwrap().into())
                .collect()
        };
        assert!(decode(&body[..body.len() - 1], fds(5)).is_none());
        assert!(decode(&body, fds(4)).is_none());
    }
}
