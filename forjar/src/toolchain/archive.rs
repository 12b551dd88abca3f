//! Packages from the Debian archive the machine's apt is configured with: resolved from apt's
//! package lists, fetched by the URL and SHA-256 apt's index gives (the index is what apt
//! verified against the archive's signed `Release` file), and unpacked with `dpkg-deb`.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::dpkg::{self, Database};
use super::lock::LockedPackage;
use super::{Toolchain, ToolchainError};

fn run(command: &mut Command, what: &'static str) -> Result<String, ToolchainError> {
    let program = PathBuf::from(command.get_program());
    let out = command.output().map_err(|source| ToolchainError::Io {
        what,
        path: program.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(ToolchainError::Io {
            what,
            path: program,
            source: io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    String::from_utf8(out.stdout).map_err(|e| ToolchainError::Io {
        what,
        path: PathBuf::from(command.get_program()),
        source: io::Error::other(e),
    })
}

/// What apt offers: each package's candidate version (the newest it can download where the
/// candidate is only installed), and the versions `toolchain` pins.
fn available(toolchain: &Toolchain) -> Result<Database, ToolchainError> {
    // apt rebuilds its cache when another process installs or removes packages, and a reader
    // meanwhile can fail to parse a record: such a failure is tried again, twice.
    let mut attempts = 0;
    let mut text = loop {
        match run(
            Command::new("apt-cache").arg("dumpavail"),
            "cannot list the archive's packages with",
        ) {
            Err(_) if attempts < 2 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            done => break done?,
        }
    };
    // A version only dpkg's status knows (installed, not in apt's lists) cannot be downloaded:
    // the newest version apt can download stands in for it.
    let stale = dpkg::without_download(&text);
    if !stale.is_empty() {
        let shown = run(
            Command::new("apt-cache").arg("show").args(&stale),
            "cannot read the archive's versions with",
        )?;
        text.push_str(&dpkg::first_downloadable(&shown));
    }
    for (name, version) in toolchain.pins() {
        text.push_str("\n\n");
        text.push_str(&run(
            Command::new("apt-cache")
                .args(["show", "--no-all-versions"])
                .arg(format!("{name}={version}")),
            "cannot find a pinned package version with",
        )?);
    }
    Ok(Database::available(&text))
}

/// Resolves `toolchain` against the archive: every package with its version, architecture,
/// URL and the SHA-256 of its `.deb` as apt's index gives it.
pub(crate) fn resolve(toolchain: &Toolchain) -> Result<Vec<LockedPackage>, ToolchainError> {
    let db = available(toolchain)?;
    let names: BTreeSet<String> = toolchain.package_names().map(str::to_string).collect();
    let closure = db.closure(&names)?;
    let uris = run(
        Command::new("apt-get")
            .args(["download", "--print-uris", "-q"])
            .args(
                closure
                    .values()
                    .map(|p| format!("{}={}", p.name, p.version)),
            ),
        "cannot find the packages' addresses with",
    )?;
    let mut locked = Vec::new();
    for line in uris.lines() {
        // 'URL' FILE SIZE SHA256:HEX
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [url, file, _size, digest] = fields.as_slice() else {
            continue;
        };
        let (Some(url), Some(sha256)) = (
            url.strip_prefix('\'').and_then(|u| u.strip_suffix('\'')),
            digest.strip_prefix("SHA256:"),
        ) else {
            continue;
        };
        let name = file.split('_').next().unwrap_or_default();
        let Some(package) = closure.get(name) else {
            continue;
        };
        locked.push(LockedPackage {
            name: package.name.clone(),
            version: package.version.clone(),
            architecture: package.architecture.clone(),
            digest: format!("sha256:{}", sha256.to_ascii_lowercase()),
            url: Some(url.to_string()),
        });
    }
    if let Some(missing) = closure
        .keys()
        .find(|name| !locked.iter().any(|p| &&p.name == name))
    {
        return Err(ToolchainError::NotInstalled {
            package: missing.clone(),
            wanted_by: None,
            root: PathBuf::from("the archive apt is configured with"),
        });
    }
    locked.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(locked)
}

/// Downloads `package` into `dir`, checks its SHA-256 against the lock's, and unpacks it into
/// `dir/root` with `dpkg-deb`; returns that directory.
pub(crate) fn unpack(package: &LockedPackage, dir: &Path) -> Result<PathBuf, ToolchainError> {
    let url = package.url.as_deref().unwrap_or_default();
    let deb = dir.join(format!("{}.deb", package.name));
    let got = crate::hash::hex(&download(url, &deb)?);
    let expected = package.digest.strip_prefix("sha256:").unwrap_or_default();
    if got != expected {
        return Err(ToolchainError::Io {
            what: "refused a download that is not what the archive's index names",
            path: PathBuf::from(url),
            source: io::Error::other(format!(
                "its SHA-256 is {got}, the index (and the lock) say {expected}"
            )),
        });
    }
    let root = dir.join(&package.name);
    run(
        Command::new("dpkg-deb")
            .arg("--extract")
            .arg(&deb)
            .arg(&root),
        "cannot unpack a package with",
    )?;
    let _ = fs::remove_file(&deb);
    Ok(root)
}

/// Downloads `url` to `path` (a new file); returns its SHA-256, taken as it is written.
#[cfg(feature = "fetch")]
pub(crate) fn download(url: &str, path: &Path) -> Result<[u8; 32], ToolchainError> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};

    let failed = |source: io::Error| ToolchainError::Io {
        what: "cannot download",
        path: PathBuf::from(url),
        source,
    };
    let response = ureq::get(url)
        .call()
        .map_err(|e| failed(io::Error::other(e)))?;
    let mut body = response.into_body().into_reader();
    let mut file = fs::File::create_new(path).map_err(failed)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = body.read(&mut buf).map_err(failed)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(failed)?;
    }
    Ok(hasher.finalize().into())
}

/// Without the `fetch` feature: an error saying how to get it.
#[cfg(not(feature = "fetch"))]
pub(crate) fn download(url: &str, _: &Path) -> Result<[u8; 32], ToolchainError> {
    Err(ToolchainError::Io {
        what: "cannot download",
        path: PathBuf::from(url),
        source: io::Error::other(
            "this program was built without forjar's `fetch` feature (`forjar = { version = \
             \"...\", features = [\"fetch\"] }`); `prefetch FILE` digests a file downloaded \
             otherwise",
        ),
    })
}

/// The files of an unpacked package below `root`, as the absolute paths it installs them at.
pub(crate) fn listing(root: &Path) -> Result<Vec<String>, ToolchainError> {
    let mut paths = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let dir = root.join(&relative);
        let listing = fs::read_dir(&dir).map_err(|source| ToolchainError::Io {
            what: "cannot read",
            path: dir.clone(),
            source,
        })?;
        for item in listing {
            let item = item.map_err(|source| ToolchainError::Io {
                what: "cannot read",
                path: dir.clone(),
                source,
            })?;
            let path = relative.join(item.file_name());
            paths.push(format!("/{}", path.display()));
            if item.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    paths.sort();
    Ok(paths)
}
