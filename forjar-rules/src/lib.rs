//! The rules on names and values that are checked twice: by the runtime when a derivation is
//! built, and by forjar-macros at compile time, on the user's token.
//!
//! One crate serves both, so that the two checks never drift apart: a proc-macro crate can
//! export nothing but macros, so the rules cannot live in forjar-macros, and forjar-macros
//! cannot depend on forjar. It uses only `std`, and each rule returns the reason a value is
//! wrong; the caller adds the field and the value.

use std::time::Duration;

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
            "unknown system; known systems are {}",
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
    let Some(&(_, factor)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit.trim_start()) else {
        return Err(format!(
            "unknown size unit `{}`; units are {}",
            unit.trim_start(),
            units()
        ));
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| "the size does not fit in 64 bits".into())
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
    SANDBOX_DIRS.iter().chain(HOST_TOOLS).copied().find(|dir| {
        path.strip_prefix(dir)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
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
        assert!(
            size("1.5GiB")
                .unwrap_err()
                .contains("unknown size unit `.5GiB`")
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
    fn digests_are_blake3_and_64_lowercase_hex_digits() {
        let hex = "ab".repeat(32);
        assert_eq!(digest(&format!("blake3:{hex}")), Ok([0xab; 32]));
        assert!(digest(&hex).unwrap_err().contains("written `blake3:`"));
        assert!(digest("blake3:abc").unwrap_err().contains("this one has 3"));
        let upper = format!("blake3:{}", "AB".repeat(32));
        assert!(digest(&upper).unwrap_err().contains("'A' at position 7"));
    }
}
