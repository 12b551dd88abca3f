//! The threads that hashing, planning and `verify` share (rayon's global pool, started at its
//! first use), and what to say of a thread or process that cannot start.

use std::sync::OnceLock;

/// Whether the shared threads run, starting them if they do not. Where they cannot start (every
/// thread counts against the user's limit on processes, `ulimit -u`), work that would spread
/// over them is done on the calling thread instead: slower, and not a panic at the first
/// parallel call, which is what rayon does with a pool it could not start.
pub(crate) fn shared() -> bool {
    static STARTED: OnceLock<bool> = OnceLock::new();
    *STARTED.get_or_init(|| match rayon::ThreadPoolBuilder::new().build_global() {
        Ok(()) => true,
        // With an I/O error the threads did not start; without one, the pool was started
        // already (by a program that configured it).
        Err(e) => std::error::Error::source(&e).is_none(),
    })
}

/// `f` of each of `items`, collected in their order: spread over the shared threads where
/// `spread` and they run ([`shared`]), else on the calling thread. A collection of `Result`s
/// stops at the first error either way.
pub(crate) fn collect<T, R, C>(items: &[T], spread: bool, f: impl Fn(&T) -> R + Sync + Send) -> C
where
    T: Sync,
    R: Send,
    C: rayon::iter::FromParallelIterator<R> + FromIterator<R>,
{
    use rayon::iter::{IntoParallelRefIterator, ParallelIterator};
    if spread && shared() {
        items.par_iter().map(f).collect()
    } else {
        items.iter().map(f).collect()
    }
}

/// What to add to `error` where it is `EAGAIN`, as a thread or process that could not start
/// has: the user's limit on processes and threads (`ulimit -u`), which every thread counts
/// against, and its value here; nothing for any other error.
pub(crate) fn limit_hint(error: &std::io::Error) -> String {
    if error.raw_os_error() != Some(nix::libc::EAGAIN) {
        return String::new();
    }
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC) {
        Ok((soft, _)) if soft != nix::sys::resource::RLIM_INFINITY => format!(
            " (this user's processes and threads are at their limit, `ulimit -u` = {soft}, \
             or the system's; raise it or stop some)"
        ),
        _ => " (the system's limit on processes and threads is reached)".into(),
    }
}

/// An I/O error as said to the user: its text, and the hint of [`limit_hint`] where it is a
/// thread or process that could not start.
pub(crate) struct Said<'e>(pub &'e std::io::Error);

impl std::fmt::Display for Said<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.0, limit_hint(self.0))
    }
}
