//! A new agent as a change to the one a host has: zstd with the old binary as its reference
//! prefix (as `zstd --patch-from` makes), so that a program rebuilt after a small change sends
//! a small fraction of its binary. The agent on the host, which has the old binary in its store,
//! makes the new one from it; the new binary is then verified by its digest like any upload.

use std::io::{self, Read, Write};

/// The compression level. Single-threaded `zstd --long=27 --patch-from`, on this machine: the
/// fleet example's release agent (17 MB) rebuilt with one string changed, 420 KB in 0.12 s at
/// level 3 (level 12: 340 KB, 0.56 s); its debug agent (45 MB) after a dependency was rebuilt
/// with other options, 6.4 MB in 0.49 s (level 12: 5.6 MB, 2.35 s). gzip -1 of the whole:
/// 6.7 and 15 MB.
const LEVEL: i32 = 3;

/// The largest window a delta may use (1 GiB): the old and the new binary together fit in it
/// below that; a larger pair is sent whole.
const MAX_WINDOW_LOG: u32 = 30;

/// The window that holds `base` and `new` together, or `None` past [`MAX_WINDOW_LOG`].
fn window_log(base: u64, new: u64) -> Option<u32> {
    let both = base.checked_add(new)?.max(1 << 10);
    let log = u64::BITS - (both - 1).leading_zeros();
    (log <= MAX_WINDOW_LOG).then_some(log)
}

/// Writes `new` (of `new_len` bytes) to `out` as a change to `base`. `Ok(false)`, with nothing
/// written, for a pair too large for one window.
pub(crate) fn make(
    base: &[u8],
    new: &mut impl Read,
    new_len: u64,
    out: impl Write,
) -> io::Result<bool> {
    let Some(window) = window_log(base.len() as u64, new_len) else {
        return Ok(false);
    };
    let mut encoder = zstd::stream::write::Encoder::with_ref_prefix(out, LEVEL, base)?;
    encoder.window_log(window)?;
    encoder.long_distance_matching(true)?;
    encoder.include_checksum(true)?;
    encoder.set_pledged_src_size(Some(new_len))?;
    io::copy(new, &mut encoder)?;
    encoder.finish()?.flush()?;
    Ok(true)
}

/// Writes what the change `delta` makes of `base` to `out`; returns its size. A change made
/// against another base fails its checksum. What it makes is bounded: no change is made of a
/// pair larger than one window, so one that makes more is refused once it has.
pub(crate) fn apply(base: &[u8], delta: impl Read, out: &mut impl Write) -> io::Result<u64> {
    apply_at_most(base, delta, out, 1 << MAX_WINDOW_LOG)
}

fn apply_at_most(
    base: &[u8],
    delta: impl Read,
    out: &mut impl Write,
    most: u64,
) -> io::Result<u64> {
    let mut decoder =
        zstd::stream::read::Decoder::with_ref_prefix(io::BufReader::new(delta), base)?;
    decoder.window_log_max(MAX_WINDOW_LOG)?;
    let made = io::copy(&mut decoder.take(most + 1), out)?;
    if made > most {
        return Err(io::Error::other(format!(
            "the change makes more than {most} bytes, more than any agent sent as a change"
        )));
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that do not compress alone, as code does not much: a counter through BLAKE3.
    fn noise(len: usize, seed: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut n = 0u64;
        while out.len() < len {
            let mut h = blake3::Hasher::new();
            h.update(&[seed]).update(&n.to_le_bytes());
            out.extend_from_slice(h.finalize().as_bytes());
            n += 1;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn a_small_change_travels_small_and_comes_back_whole() {
        let base = noise(4 << 20, 1);
        // The new binary: the old one with a few bytes changed, some inserted (code that moved)
        // and a part that is new.
        let mut new = base.clone();
        new[1000..1010].copy_from_slice(b"0123456789");
        new.splice(2 << 20..2 << 20, noise(64 << 10, 2));
        new.extend_from_slice(&noise(16 << 10, 3));
        let mut delta = Vec::new();
        assert!(make(&base, &mut new.as_slice(), new.len() as u64, &mut delta).unwrap());
        assert!(
            delta.len() < 200 << 10,
            "{} bytes for a change of about 80 KiB",
            delta.len()
        );
        let mut back = Vec::new();
        let len = apply(&base, delta.as_slice(), &mut back).unwrap();
        assert_eq!(len, new.len() as u64);
        assert!(back == new, "the change did not make the new bytes");
        // Against another base, it fails rather than make something else.
        let other = noise(4 << 20, 4);
        assert!(apply(&other, delta.as_slice(), &mut Vec::new()).is_err());
        // What it makes is bounded: a byte over the bound, and it stops there.
        let mut cut = Vec::new();
        let most = new.len() as u64 - 1;
        let error = apply_at_most(&base, delta.as_slice(), &mut cut, most).unwrap_err();
        assert!(error.to_string().contains("makes more than"), "{error}");
        assert_eq!(cut.len() as u64, most + 1);
        assert_eq!(
            apply_at_most(&base, delta.as_slice(), &mut Vec::new(), new.len() as u64).unwrap(),
            new.len() as u64
        );
    }

    #[test]
    fn the_window_holds_both_binaries() {
        assert_eq!(window_log(0, 0), Some(10));
        assert_eq!(window_log(17 << 20, 17 << 20), Some(26));
        assert_eq!(window_log(512 << 20, 512 << 20), Some(30));
        assert_eq!(window_log(512 << 20, (512 << 20) + 1), None);
        assert_eq!(window_log(u64::MAX, 1), None);
    }
}
