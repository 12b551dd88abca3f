//! The rules on names and values that are checked twice: by the runtime when a derivation is
//! built, and by forjar-macros at compile time, on the user's token.
//!
//! One crate serves both, so that the two checks never drift apart: a proc-macro crate can
//! export nothing but macros, so the rules cannot live in forjar-macros, and forjar-macros
//! cannot depend on forjar. It uses only `std`, and each rule returns the reason a value is
//! wrong; the caller adds the field and the value.

use std::time::Duration;

pub mod script;
pub mod suggest;

/// Environment variables the sandbox sets in every build; a request may not set them.
pub const RESERVED_ENV: &[&str] = &[
    "HOME",
    "TMPDIR",
    "TEMPDIR",
    "TMP",
    "TEMP",
    "PWD",
    "FORJAR_BUILD_CORES",
    "FORJAR_BUILD_TOP",
];

/// The platforms forjar knows; the sandbox is Linux-only.
pub const KNOWN_SYSTEMS: &[&str] = &[
    "x86_64-linux",
    "aarch64-linux",
    "i686-linux",
    "armv7l-linux",
    "riscv64-linux",
    "powerpc64le-linux",
    "s390x-linux",
    "loongarch64-linux",
];

/// The sandbox levels, as written in attributes and `meta.yaml`.
pub const SANDBOX_LEVELS: &[&str] = &["hermetic", "host-tools"];

/// The formats of a file rendered from a value, named by the file's extension.
pub const FILE_FORMATS: &[&str] = &["json", "toml", "yaml", "yml"];

/// The longest name; leaves room for the 32-character hash, a dash and an output suffix
/// inside the 255-byte limit of a file name.
pub const MAX_NAME_LEN: usize = 200;

/// The characters allowed in derivation and source names (those of Nix store names).
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_' | '?' | '=')
}

/// A derivation or source name: 1 to 200 characters of `A-Z a-z 0-9 + - . _ ? =`, not starting
/// with `.`.
pub fn name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a name may not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a name has at most {MAX_NAME_LEN} bytes, this one has {}",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return Err("a name may not start with `.`".into());
    }
    if let Some((i, c)) = name.char_indices().find(|&(_, c)| !is_name_char(c)) {
        return Err(format!(
            "character {c:?} at byte {i} is not allowed; names use letters, digits and + - . _ ? ="
        ));
    }
    Ok(())
}

/// Input and output names become environment variables of the build (`$out`, `$src`), so they
/// must be shell identifiers of at most 64 bytes, and not a variable the sandbox sets.
pub fn identifier(value: &str) -> Result<(), String> {
    let mut chars = value.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(
            "must be a shell identifier (a letter or `_`, then letters, digits or `_`), because \
             it becomes an environment variable of the build"
                .into(),
        );
    }
    if value.len() > 64 {
        return Err("must be at most 64 bytes long".into());
    }
    reserved(value)
}

/// An environment variable name: not empty, no `=` or NUL, not set by the sandbox.
pub fn env_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("an environment variable name may not be empty".into());
    }
    if key.contains('=') {
        return Err("an environment variable name may not contain `=`".into());
    }
    if key.contains('\0') {
        return Err("an environment variable name may not contain a NUL byte".into());
    }
    reserved(key)
}

fn reserved(key: &str) -> Result<(), String> {
    if RESERVED_ENV.contains(&key) {
        return Err(format!(
            "is set by the sandbox itself; reserved names are {}",
            RESERVED_ENV.join(", ")
        ));
    }
    Ok(())
}

/// A system: one of [`KNOWN_SYSTEMS`].
pub fn system(system: &str) -> Result<(), String> {
    if KNOWN_SYSTEMS.contains(&system) {
        Ok(())
    } else {
        Err(format!(
            "unknown system{}; known systems are {}",
            suggest::did_you_mean(system, KNOWN_SYSTEMS.iter().copied()),
            KNOWN_SYSTEMS.join(", ")
        ))
    }
}

/// A relative path with no empty, `.` or `..` components, no leading or trailing `/`, no NUL.
pub fn clean_rel_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("a path may not be empty".into());
    }
    if path.contains('\0') {
        return Err("a path may not contain a NUL byte".into());
    }
    if path.starts_with('/') {
        return Err(
            "must be relative (it is placed inside the build directory); drop the leading `/`"
                .into(),
        );
    }
    for component in path.split('/') {
        match component {
            "" => return Err("has an empty component (`//` or a trailing `/`)".into()),
            "." | ".." => return Err("may not contain `.` or `..` components".into()),
            _ => {}
        }
    }
    Ok(())
}

/// An absolute clean path other than `/` itself.
pub fn abs_path(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must be an absolute path (start with `/`)".into());
    };
    if rest.is_empty() {
        return Err("may not be the root directory itself".into());
    }
    clean_rel_path(rest)
}

/// The algorithm of a fixed-output digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// forjar's BLAKE3 tree digest (`blake3:<hex>`), which covers a whole tree.
    Blake3Tree,
    /// SHA-256, of one file's bytes (flat) or of the tree's NAR serialisation (recursive), as
    /// in Nix.
    Sha256,
}

/// How a digest was written, so that what it is compared with is shown the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestForm {
    /// `blake3:<hex>` or `sha256:<hex>`.
    Hex,
    /// Subresource Integrity, Nix's form: `sha256-<base64>`.
    Sri,
    /// Nix's own base-32, as `nix-prefetch-url` prints it: `sha256:<52 characters>`.
    Nix32,
}

/// A fixed-output digest as written by people: forjar's `blake3:<64 hex digits>`, or SHA-256
/// as `sha256:<64 hex digits>` or in Nix's SRI form `sha256-<44 base64 characters>`.
pub fn fixed_digest(text: &str) -> Result<(Algorithm, DigestForm, [u8; 32]), String> {
    const FORMS: &str = "a fixed-output digest is `blake3:<64 hex digits>` (`forjar hash path` prints it), or SHA-256 as `sha256-<base64>` (Nix's SRI form, `prefetch` prints it), `sha256:<64 hex digits>` or `sha256:<52 base-32 characters>`";
    if text.starts_with("blake3:") {
        return digest(text).map(|d| (Algorithm::Blake3Tree, DigestForm::Hex, d));
    }
    if let Some(nix32) = text.strip_prefix("sha256:").filter(|t| t.len() == 52) {
        return nix32_decode(nix32)
            .map(|d| (Algorithm::Sha256, DigestForm::Nix32, d))
            .ok_or_else(|| format!("`{nix32}` is not Nix's base-32 (`{NIX32}`); {FORMS}"));
    }
    if let Some(hex) = text.strip_prefix("sha256:") {
        return digest(&format!("blake3:{hex}"))
            .map(|d| (Algorithm::Sha256, DigestForm::Hex, d))
            .map_err(|e| e.replace("BLAKE3", "SHA-256"));
    }
    if let Some(b64) = text.strip_prefix("sha256-") {
        let bytes = base64_decode(b64).ok_or_else(|| {
            format!("`{b64}` is not base64 (`A-Z a-z 0-9 + /`, `=` padding); {FORMS}")
        })?;
        let digest: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            format!(
                "a SHA-256 digest is 32 bytes (44 base64 characters), this one is {}",
                bytes.len()
            )
        })?;
        return Ok((Algorithm::Sha256, DigestForm::Sri, digest));
    }
    Err(FORMS.into())
}

/// `digest` written as `algorithm` and `form` give: `blake3:<hex>`, `sha256:<hex>` or
/// `sha256-<base64>`.
pub fn format_digest(algorithm: Algorithm, form: DigestForm, digest: &[u8; 32]) -> String {
    let name = match algorithm {
        Algorithm::Blake3Tree => "blake3",
        Algorithm::Sha256 => "sha256",
    };
    match form {
        DigestForm::Sri => format!("{name}-{}", base64_encode(digest)),
        DigestForm::Nix32 => format!("{name}:{}", nix32_encode(digest)),
        DigestForm::Hex => {
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("{name}:{hex}")
        }
    }
}

/// Nix's base-32 alphabet (no `e`, `o`, `u`, `t`).
const NIX32: &str = "0123456789abcdfghijklmnpqrsvwxyz";

/// Nix's base-32 of 32 bytes: 52 characters, the last byte's bits first.
pub fn nix32_encode(bytes: &[u8; 32]) -> String {
    let len = 52;
    (0..len)
        .rev()
        .map(|n| {
            let (i, j) = (n * 5 / 8, n * 5 % 8);
            let low = u16::from(bytes[i]) >> j;
            let high = match bytes.get(i + 1) {
                Some(&next) => u16::from(next) << (8 - j),
                None => 0,
            };
            char::from(NIX32.as_bytes()[usize::from((low | high) & 0x1f)])
        })
        .collect()
}

/// The 32 bytes of Nix's base-32 `text`; `None` if it is not.
pub fn nix32_decode(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 52 {
        return None;
    }
    for (k, c) in text.bytes().enumerate() {
        let digit = NIX32.bytes().position(|d| d == c)? as u16;
        let n = 51 - k;
        let (i, j) = (n * 5 / 8, n * 5 % 8);
        let wide = digit << j;
        out[i] |= wide as u8;
        let carry = (wide >> 8) as u8;
        if i + 1 < 32 {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return None;
        }
    }
    Some(out)
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with `=` padding (RFC 4648 §4).
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The bytes of standard, padded base64; `None` if it is not.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, chunk) in bytes.chunks(4).enumerate() {
        let last = index + 1 == bytes.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &b in &chunk[..4 - pad] {
            let v = BASE64.iter().position(|&c| c == b)? as u32;
            n = (n << 6) | v;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

/// A tree digest as written by people: `blake3:` and 64 lowercase hex digits.
pub fn digest(digest: &str) -> Result<[u8; 32], String> {
    let Some(hex) = digest.strip_prefix("blake3:") else {
        return Err(
            "a digest is written `blake3:` followed by 64 hex digits, as `forjar hash path` prints it"
                .into(),
        );
    };
    if hex.len() != 64 {
        return Err(format!(
            "a BLAKE3 digest has 64 hex digits, this one has {}",
            hex.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let nibble = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => out[i] = hi << 4 | lo,
            _ => {
                return Err(format!(
                    "character {:?} at position {} is not a lowercase hex digit",
                    char::from(if nibble(pair[0]).is_none() {
                        pair[0]
                    } else {
                        pair[1]
                    }),
                    7 + 2 * i + usize::from(nibble(pair[0]).is_some())
                ));
            }
        }
    }
    Ok(out)
}

/// Size units: binary multiples, as in `memory = "2GiB"`; `K`, `M`, `G`, `T` are binary too,
/// as in systemd's `MemoryMax=`; `kB`, `MB`, `GB`, `TB` are decimal.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("K", 1 << 10),
    ("KiB", 1 << 10),
    ("kB", 1_000),
    ("M", 1 << 20),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("G", 1 << 30),
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("T", 1 << 40),
    ("TiB", 1 << 40),
    ("TB", 1_000_000_000_000),
];

fn unit_names(units: &[(&str, u64)]) -> String {
    units.iter().map(|(u, _)| *u).collect::<Vec<_>>().join(", ")
}

/// A size: a whole number and a unit, e.g. `512MiB`, `2G`, `100kB`, `4096B`.
pub fn size(text: &str) -> Result<u64, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let units = || unit_names(SIZE_UNITS);
    if number.is_empty() {
        return Err(format!(
            "a size is a whole number and a unit, e.g. `512MiB`; units are {}",
            units()
        ));
    }
    if let Some(fraction) = unit.strip_prefix('.') {
        let places = fraction.bytes().take_while(u8::is_ascii_digit).count();
        let (decimals, unit) = fraction.split_at(places);
        let whole = match SIZE_UNITS.iter().find(|(u, _)| *u == unit.trim_start()) {
            // The same size in the largest unit of the same kind that holds it whole.
            Some(&(name, factor)) => {
                let scale = 10u64.checked_pow(places as u32).unwrap_or(u64::MAX);
                let bytes = format!("{number}{decimals}")
                    .parse::<u64>()
                    .ok()
                    .and_then(|n| n.checked_mul(factor))
                    .filter(|bytes| bytes % scale == 0)
                    .map(|bytes| bytes / scale);
                let binary = name.ends_with("iB") || name.len() == 1;
                bytes.and_then(|bytes| {
                    SIZE_UNITS
                        .iter()
                        .filter(|(u, _)| *u == "B" || u.ends_with("iB") == binary && u.len() > 1)
                        .filter(|(_, f)| *f < factor && bytes % f == 0)
                        .max_by_key(|(_, f)| *f)
                        .map(|(u, f)| format!(" (`{}{u}`)", bytes / f))
                })
            }
            None => None,
        };
        return Err(format!(
            "a size is a whole number of a unit; write it in a smaller unit{}",
            whole.unwrap_or_default()
        ));
    }
    let Some(&(_, factor)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit.trim_start()) else {
        return Err(format!(
            "unknown size unit `{}`; units are {}",
            unit.trim_start(),
            units()
        ));
    };
    match number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
    {
        Some(0) => Err("a size of 0 leaves nothing; give at least one byte".into()),
        Some(bytes) => Ok(bytes),
        None => Err("the size does not fit in 64 bits".into()),
    }
}

const DURATION_UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("min", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// A duration: one or more whole numbers with units, e.g. `90s`, `10m`, `1h30m`, `500ms`;
/// spaces between the parts are allowed.
pub fn duration(text: &str) -> Result<Duration, String> {
    let units = || unit_names(DURATION_UNITS);
    if text.is_empty() {
        return Err(format!(
            "a duration is whole numbers with units, e.g. `90s` or `1h30m`; units are {}",
            units()
        ));
    }
    let mut rest = text.trim();
    let mut millis: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "a duration is whole numbers with units, e.g. `90s` or `1h30m`; units are {}",
                units()
            ));
        }
        let (number, tail) = rest.split_at(digits);
        let tail = tail.trim_start();
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let Some(&(_, factor)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(if unit.is_empty() {
                format!("`{number}` has no unit; units are {}", units())
            } else {
                format!("unknown duration unit `{unit}`; units are {}", units())
            });
        };
        millis = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .and_then(|n| n.checked_add(millis))
            .ok_or("the duration is too long")?;
        rest = tail.trim_start();
    }
    if millis == 0 {
        return Err("a limit of zero would stop every build; leave it out for no limit".into());
    }
    Ok(Duration::from_millis(millis))
}

/// The host paths a `host-tools` build sees, read-only.
pub const HOST_TOOLS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/alternatives",
    "/etc/ld.so.cache",
];
/// The directories the sandbox fills itself besides the host tools and the store (`/build` and
/// `/tmp` are writable already).
const SANDBOX_DIRS: &[&str] = &["/build", "/tmp", "/dev", "/proc", "/etc"];

/// The directory of the sandbox's own making (its own or the host tools') that `path`, absolute
/// in the sandbox, is or is in; a request's scratch path may not be.
pub fn sandbox_dir(path: &str) -> Option<&'static str> {
    SANDBOX_DIRS
        .iter()
        .chain(HOST_TOOLS)
        .copied()
        .find(|dir| within(path, dir))
}

/// Whether `path` is `dir` or in it, component by component, for paths written without `.`,
/// `..`, empty components or a trailing `/` (as the rules above make them).
pub fn within(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(size("512MiB"), Ok(512 << 20));
        assert_eq!(size("2G"), Ok(2 << 30));
        assert_eq!(size("100kB"), Ok(100_000));
        assert_eq!(size("4096B"), Ok(4096));
        assert!(
            size("2 gigs")
                .unwrap_err()
                .contains("unknown size unit `gigs`")
        );
        assert!(size("GiB").unwrap_err().contains("whole number"));
        assert_eq!(
            size("1.5GiB").unwrap_err(),
            "a size is a whole number of a unit; write it in a smaller unit (`1536MiB`)"
        );
        assert!(size("2.5GB").unwrap_err().ends_with("(`2500MB`)"));
        assert!(size("0.3B").unwrap_err().ends_with("smaller unit"));
        assert_eq!(
            size("0M").unwrap_err(),
            "a size of 0 leaves nothing; give at least one byte"
        );
        assert!(
            system("x86-64-linux")
                .unwrap_err()
                .contains("(did you mean `x86_64-linux`?)")
        );
        assert!(size("99999999999TiB").unwrap_err().contains("64 bits"));
    }

    #[test]
    fn durations_add_up_their_parts() {
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2min"), Ok(Duration::from_secs(120)));
        assert!(duration("10").unwrap_err().contains("`10` has no unit"));
        assert_eq!(duration("1h 30 m"), Ok(Duration::from_secs(5400)));
        assert!(
            duration("10 sec")
                .unwrap_err()
                .contains("unknown duration unit `sec`")
        );
        assert!(duration("0s").unwrap_err().contains("zero"));
    }

    #[test]
    fn fixed_digests_are_blake3_sha256_hex_or_sri_and_print_as_written() {
        let sri = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let (algorithm, form, bytes) = fixed_digest(sri).unwrap();
        assert_eq!((algorithm, form), (Algorithm::Sha256, DigestForm::Sri));
        // SHA-256 of nothing.
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            format_digest(algorithm, DigestForm::Hex, &bytes),
            format!("sha256:{hex}")
        );
        assert_eq!(format_digest(algorithm, form, &bytes), sri);
        assert_eq!(
            fixed_digest(&format!("sha256:{hex}")).unwrap(),
            (Algorithm::Sha256, DigestForm::Hex, bytes)
        );
        assert!(
            fixed_digest("sha256-abc")
                .unwrap_err()
                .contains("not base64")
        );
        assert!(
            fixed_digest("sha256-AAAA")
                .unwrap_err()
                .contains("this one is 3")
        );
        assert!(
            fixed_digest("sha256:abc")
                .unwrap_err()
                .contains("SHA-256 digest has 64")
        );
        assert!(
            fixed_digest("md5:abc")
                .unwrap_err()
                .contains("Nix's SRI form")
        );
        for text in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            let encoded = base64_encode(text.as_bytes());
            assert_eq!(
                base64_decode(&encoded).unwrap(),
                text.as_bytes(),
                "{encoded}"
            );
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64_decode("Zm9=v"), None);
        // `nix-hash --type sha256 --base32 --flat` of `hello\n`.
        let nix32 = "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq";
        let (_, form, hello) = fixed_digest(&format!("sha256:{nix32}")).unwrap();
        assert_eq!(form, DigestForm::Nix32);
        assert_eq!(
            format_digest(Algorithm::Sha256, DigestForm::Hex, &hello),
            "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert_eq!(nix32_encode(&hello), nix32);
        assert!(
            fixed_digest(&format!("sha256:{}", "e".repeat(52)))
                .unwrap_err()
                .contains("base-32")
        );
    }

    #[test]
    fn digests_are_blake3_and_64_lowercase_hex_digits() {
        let hex = "ab".repeat(32);
        assert_eq!(digest(&format!("blake3:{hex}")), Ok([0xab; 32]));
        assert!(digest(&hex).unwrap_err().contains("written `blake3:`"));
        assert!(digest("blake3:abc").unwrap_err().contains("this one has 3"));
        let upper = format!("blake3:{}", "AB".repeat(32));
        assert!(digest(&upper).unwrap_err().contains("'A' at position 7"));
    }
}
