//! A hostile build's tool and its accomplice on the host, for the tests of tests/hostile.rs.
//! Fixed-output builds share the host's network namespace, and with it the abstract unix
//! sockets: a build can hand descriptors to a process outside the sandbox.
//!
//! - `send SOCKET PATH..`: (in the build) connects to the abstract socket `SOCKET` and sends a
//!   descriptor of each path (directories read-only, files read-write).
//! - `swap SOCKET TARGET SECONDS`: (on the host) takes one directory descriptor from `SOCKET`
//!   and, for `SECONDS`, keeps exchanging its entry `d` with a symlink to `TARGET`, atomically,
//!   so that `d` always exists: as the directory, or as the symlink.
//! - `hold SOCKET`: (on the host) takes one file descriptor from `SOCKET`, waits for a line on
//!   its standard input (the store installed the output), then writes `EVIL` through the
//!   descriptor; prints `wrote` if it could.
//! - `deep DIR DEPTH`: makes `DEPTH` nested directories `d` in `DIR`, step by step.
//! - `inject`: (in the build) pushes a byte into the input of the terminal on its standard
//!   input with `TIOCSTI`; prints `injected`, or the error.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, RenameFlags, openat, renameat2};
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, accept, bind, connect, listen, recvmsg, sendmsg, socket,
};
use nix::sys::stat::Mode;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(0) {
        "send" => send(arg(1), &args[2..]),
        "swap" => swap(arg(1), arg(2), arg(3).parse().expect("seconds")),
        "hold" => hold(arg(1)),
        "deep" => deep(arg(1), arg(2).parse().expect("a depth")),
        "inject" => inject(),
        other => panic!("unknown command {other:?}"),
    }
}

fn address(name: &str) -> UnixAddr {
    UnixAddr::new_abstract(name.as_bytes()).expect("an abstract address")
}

fn unix_socket() -> OwnedFd {
    socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .expect("a socket")
}

fn send(name: &str, paths: &[String]) {
    let fds: Vec<OwnedFd> = paths
        .iter()
        .map(|path| {
            let dir = Path::new(path).is_dir();
            let flags = if dir {
                OFlag::O_RDONLY | OFlag::O_DIRECTORY
            } else {
                OFlag::O_RDWR
            };
            nix::fcntl::open(path.as_str(), flags, Mode::empty()).expect("the path opens")
        })
        .collect();
    let sock = unix_socket();
    connect(sock.as_raw_fd(), &address(name)).expect("the accomplice listens");
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(b"x")],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .expect("the descriptors are sent");
    println!("sent {}", raw.len());
}

/// Listens on `name`, prints `listening`, and returns the descriptors of the first message.
fn receive(name: &str) -> Vec<OwnedFd> {
    let sock = unix_socket();
    bind(sock.as_raw_fd(), &address(name)).expect("the address is free");
    listen(&sock, Backlog::new(1).expect("a backlog")).expect("listen");
    println!("listening");
    let conn = accept(sock.as_raw_fd()).expect("the build connects");
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let msg =
        recvmsg::<()>(conn, &mut iov, Some(&mut space), MsgFlags::empty()).expect("a message");
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().expect("control messages") {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: SCM_RIGHTS gave this process these new descriptors.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    fds
}

fn swap(name: &str, target: &str, seconds: u64) {
    let fds = receive(name);
    let dir = fds.first().expect("a directory descriptor");
    nix::unistd::symlinkat(target, dir.as_fd(), "dl").expect("a symlink");
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut swaps = 0u64;
    while Instant::now() < end {
        // Once forjar has taken the directory back, the exchange is refused: the attack is over.
        if let Err(e) = renameat2(
            dir.as_fd(),
            "d",
            dir.as_fd(),
            "dl",
            RenameFlags::RENAME_EXCHANGE,
        ) {
            println!("stopped by {e}");
            break;
        }
        swaps += 1;
        std::thread::sleep(Duration::from_micros(20));
    }
    println!("swapped {swaps}");
}

fn hold(name: &str) {
    let fds = receive(name);
    let file = fds.into_iter().next().expect("a file descriptor");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("a line");
    match nix::sys::uio::pwrite(&file, b"EVIL", 0) {
        Ok(4) => println!("wrote"),
        other => println!("could not write: {other:?}"),
    }
}

fn deep(dir: &str, depth: usize) {
    let mut fd: OwnedFd =
        nix::fcntl::open(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
            .expect("the directory opens");
    for _ in 0..depth {
        nix::sys::stat::mkdirat(fd.as_fd(), "d", Mode::from_bits_truncate(0o755)).expect("mkdir");
        fd = openat(
            fd.as_fd(),
            "d",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .expect("the new directory opens");
    }
}

fn inject() {
    let byte = b'x';
    // SAFETY: TIOCSTI reads one byte from the pointer, which points at `byte`.
    let rc = unsafe { nix::libc::ioctl(0, nix::libc::TIOCSTI, &byte as *const u8) };
    match rc {
        0 => println!("injected"),
        _ => println!("inject: {}", std::io::Error::last_os_error()),
    }
}
