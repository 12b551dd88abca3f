//! Secrets: values a machine needs that must never be in the store. A [`Secret`] says where its
//! value is read when `apply` runs (an environment variable, a file, a command on the
//! controller); the value goes to the activator on the host through its standard input and is
//! written on tmpfs with owner and mode, before the units that need it start. It is never
//! hashed, never in a manifest, a plan, a generation record or a log.
//!
//! `Secret` has no `Display`, `Serialize` or `Into<String>`/`Into<Vec<u8>>`, and is neither a
//! derivation input nor an env value, so putting one into a build or a file is a compile error
//! on the user's token.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

/// Where a secret's value is read when `apply` runs, on the controller.
///
/// ```
/// use forjar::machine::{Machine, Secret, User};
/// use forjar::{mode, path};
///
/// let mut web = Machine::ssh("web1", "10.0.0.5");
/// let app = web.user(User::system("app"));
/// web.secret(path!("/run/app/db-password"), Secret::env("DB_PASSWORD"), &app, mode!(0o400));
/// ```
///
/// A secret cannot go into a build or a file of the store:
///
/// ```compile_fail
/// use forjar::machine::{File, Secret};
/// let leaked = File::text(Secret::env("DB_PASSWORD"));
/// ```
#[derive(Clone)]
pub struct Secret(Source);

#[derive(Clone)]
enum Source {
    Env(String),
    File(PathBuf),
    Command(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", self.source())
    }
}

/// The most a secret's value may be.
const LIMIT: u64 = 1 << 20;

impl Secret {
    /// The value of the controller's environment variable `name`.
    pub fn env(name: &str) -> Secret {
        Secret(Source::Env(name.to_string()))
    }

    /// The content of the controller's file at `path`.
    pub fn file(path: impl Into<PathBuf>) -> Secret {
        Secret(Source::File(path.into()))
    }

    /// What `script`, run with `/bin/sh -c` on the controller, prints on standard output (a
    /// password manager's or vault's command line, for example); it must exit 0.
    pub fn command(script: &str) -> Secret {
        Secret(Source::Command(script.to_string()))
    }

    /// Where the value comes from, for messages: never the value.
    pub fn source(&self) -> String {
        match &self.0 {
            Source::Env(name) => format!("environment variable {name}"),
            Source::File(path) => format!("file {}", path.display()),
            Source::Command(script) => format!("command `{script}`"),
        }
    }

    pub(crate) fn mistake(&self) -> Option<String> {
        match &self.0 {
            Source::Env(name) if name.is_empty() || name.contains(['=', '\0']) => {
                Some(format!("`{name}` is not an environment variable's name"))
            }
            _ => None,
        }
    }

    /// Reads the value, now; the error names the source and what to do, never the value.
    pub fn read(&self) -> Result<Vec<u8>, String> {
        let value = match &self.0 {
            Source::Env(name) => std::env::var_os(name)
                .map(std::os::unix::ffi::OsStringExt::into_vec)
                .ok_or_else(|| {
                    format!("environment variable {name} is not set; set it for `apply`")
                })?,
            Source::File(path) => {
                let mut value = Vec::new();
                std::fs::File::open(path)
                    .and_then(|f| f.take(LIMIT + 1).read_to_end(&mut value))
                    .map_err(|e| format!("cannot read file {}: {e}", path.display()))?;
                value
            }
            Source::Command(script) => {
                let output = Command::new("/bin/sh")
                    .args(["-c", script])
                    .stdin(Stdio::null())
                    .stderr(Stdio::inherit())
                    .output()
                    .map_err(|e| format!("cannot run command `{script}`: {e}"))?;
                if !output.status.success() {
                    return Err(format!("command `{script}` failed ({})", output.status));
                }
                output.stdout
            }
        };
        if value.len() as u64 > LIMIT {
            return Err(format!(
                "{} gives more than {LIMIT} bytes, which is not a secret but data",
                self.source()
            ));
        }
        Ok(value)
    }
}

/// A secret file as the manifest lists it: where, whose, which mode; never the value or
/// anything computed from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    /// Its owner's user name.
    pub owner: String,
    /// Its group's name.
    pub group: String,
    /// Its permission bits.
    pub mode: u32,
}

/// Secret values by path, as they travel to the activator. Its `Debug` shows paths only.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct Values(pub BTreeMap<String, Vec<u8>>);

impl std::fmt::Debug for Values {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Values {
    /// The form on the activator's standard input: one line per secret, `PATH HEX`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, value) in &self.0 {
            out.extend_from_slice(path.as_bytes());
            out.push(b' ');
            for byte in value {
                out.extend_from_slice(format!("{byte:02x}").as_bytes());
            }
            out.push(b'\n');
        }
        out
    }

    /// Reads [`Values::encode`]'s form.
    pub fn decode(bytes: &[u8]) -> Result<Values, String> {
        let mut values = BTreeMap::new();
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let text = std::str::from_utf8(line).map_err(|_| "secrets are not text".to_string())?;
            let (path, hex) = text
                .split_once(' ')
                .ok_or_else(|| "a secret line has no value".to_string())?;
            if hex.len() % 2 != 0 {
                return Err(format!("the value of secret {path} is cut short"));
            }
            let value = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| format!("the value of secret {path} is not hex"))?;
            values.insert(path.to_string(), value);
        }
        Ok(Values(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_travel_as_lines_and_debug_shows_paths_only() {
        let values = Values(BTreeMap::from([
            ("/run/a".to_string(), b"poison\n\0\xff".to_vec()),
            ("/run/b".to_string(), Vec::new()),
        ]));
        let encoded = values.encode();
        assert!(!encoded.windows(6).any(|w| w == b"poison"));
        assert_eq!(Values::decode(&encoded).unwrap(), values);
        assert_eq!(format!("{values:?}"), r#"{"/run/a", "/run/b"}"#);
        assert!(Values::decode(b"/run/a 0").unwrap_err().contains("/run/a"));
    }

    #[test]
    fn reading_names_the_source_and_never_the_value() {
        let missing = Secret::env("FORJAR_TEST_SURELY_UNSET").read().unwrap_err();
        assert!(missing.contains("FORJAR_TEST_SURELY_UNSET"), "{missing}");
        assert_eq!(Secret::command("printf s3cret").read().unwrap(), b"s3cret");
        let failed = Secret::command("exit 3").read().unwrap_err();
        assert!(failed.contains("`exit 3` failed"), "{failed}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), b"k").unwrap();
        assert_eq!(Secret::file(dir.path().join("key")).read().unwrap(), b"k");
        assert_eq!(
            format!("{:?}", Secret::env("X")),
            "Secret(environment variable X)"
        );
    }
}
