//! What a forjar process sets up for itself: its signal handlers, its open-file limit and its
//! allocator.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The signal that interrupted an apply, or 0.
pub(super) static INTERRUPT_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Set by the first SIGINT or SIGTERM; builds stop within a tenth of a second.
pub(super) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(signal: nix::libc::c_int) {
    // Only async-signal-safe work here: atomics and `_exit`.
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: `_exit` is async-signal-safe. A second signal means "stop now".
        unsafe { nix::libc::_exit(128 + signal) };
    }
    INTERRUPT_SIGNAL.store(signal, Ordering::SeqCst);
}

/// The exit code of a command an interrupt stopped: 130 for Ctrl-C (SIGINT), 143 for SIGTERM.
pub(super) fn interrupted_code() -> super::ExitCode {
    match INTERRUPT_SIGNAL.load(Ordering::SeqCst) {
        nix::libc::SIGTERM => super::ExitCode::Terminated,
        _ => super::ExitCode::Interrupted,
    }
}

/// Raises this process's soft limit on open files to its hard limit, as Nix and cargo do: the
/// usual soft limit (1,024) is far below what the hard limit allows, and an apply holds files
/// for many builds at once.
pub(crate) fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Makes SIGINT and SIGTERM stop the running builds, remove their staging and exit with
/// 128 + the signal (130 for Ctrl-C). A second signal exits at once.
pub(super) fn handle_interrupts() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only touches atomics and calls `_exit`.
        let _ = unsafe { sigaction(signal, &action) };
    }
}

/// Asks glibc's allocator to grow each heap 32 MiB at a time (address space only; pages are
/// still taken as they are touched). Planning a large graph allocates from every thread of the
/// pool, and with the default step each thread's heap grows by `mprotect` calls that took a
/// sixth of a no-op plan of 10,000 derivations. The program owns its process, so the setting
/// is made here and not in the library.
pub(super) fn grow_heap_in_large_steps() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets an allocator parameter under the allocator's own lock.
    unsafe {
        nix::libc::mallopt(nix::libc::M_TOP_PAD, 32 << 20);
    }
}
