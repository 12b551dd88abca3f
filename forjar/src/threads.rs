//! The threads that hashing, planning and `verify` share: rayon's global pool, started at its
//! first use.

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
