//! Health checks: what must hold on a host after its activation, run there by the agent. A check
//! that still fails after its retries rolls the activation back.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A health check: a probe, how long one attempt may take, and how often it is tried.
///
/// ```
/// use forjar::machine::Check;
/// use std::time::Duration;
///
/// let answers = Check::http("http://127.0.0.1:8080/health")
///     .status(200)
///     .body_contains("ok")
///     .timeout(Duration::from_secs(2))
///     .retries(10);
/// let listens = Check::tcp("127.0.0.1", 5432);
/// let runs = Check::command("test -s /var/lib/app/ready");
/// # let _ = (answers, listens, runs);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// What is probed.
    pub probe: Probe,
    /// How long one attempt may take, in milliseconds.
    pub timeout_ms: u64,
    /// How many more attempts after a failed one.
    pub retries: u32,
    /// The pause between attempts, in milliseconds.
    pub interval_ms: u64,
    /// The unit the check belongs to (declared with [`crate::machine::Unit::check`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// What a [`Check`] probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", deny_unknown_fields)]
pub enum Probe {
    /// A systemd unit is active.
    UnitActive {
        /// The unit's name, with its suffix.
        unit: String,
    },
    /// A TCP port accepts a connection.
    Tcp {
        /// The host name or address to connect to, as the host resolves it.
        host: String,
        /// The port.
        port: u16,
    },
    /// An HTTP URL answers a status, and optionally a body containing a text.
    Http {
        /// `http://HOST[:PORT]/PATH`.
        url: String,
        /// The status it must answer.
        status: u16,
        /// A text the body must contain.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    /// A command exits 0 (run with `/bin/sh -euc`).
    Command {
        /// The script.
        script: String,
    },
}

impl Check {
    fn of(probe: Probe) -> Check {
        Check {
            probe,
            timeout_ms: 5_000,
            retries: 10,
            interval_ms: 1_000,
            unit: None,
        }
    }

    /// The systemd unit `unit` (with its suffix, e.g. `nginx.service`) is active.
    pub fn unit_active(unit: &str) -> Check {
        Check::of(Probe::UnitActive {
            unit: unit.to_string(),
        })
    }

    /// A TCP connection to `host:port`, made on the host, is accepted.
    pub fn tcp(host: &str, port: u16) -> Check {
        Check::of(Probe::Tcp {
            host: host.to_string(),
            port,
        })
    }

    /// A `GET` of `url` (`http://HOST[:PORT]/PATH`), made on the host, answers status 200
    /// (see [`Check::status`]).
    pub fn http(url: &str) -> Check {
        Check::of(Probe::Http {
            url: url.to_string(),
            status: 200,
            body: None,
        })
    }

    /// `script`, run on the host with `/bin/sh -euc`, exits 0.
    pub fn command(script: &str) -> Check {
        Check::of(Probe::Command {
            script: script.to_string(),
        })
    }

    /// The status an HTTP check must answer (default 200); ignored by other checks.
    pub fn status(mut self, code: u16) -> Check {
        if let Probe::Http { status, .. } = &mut self.probe {
            *status = code;
        }
        self
    }

    /// A text the body an HTTP check gets must contain; ignored by other checks.
    pub fn body_contains(mut self, text: &str) -> Check {
        if let Probe::Http { body, .. } = &mut self.probe {
            *body = Some(text.to_string());
        }
        self
    }

    /// How long one attempt may take (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Check {
        self.timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// How many more times a failed check is tried (default 10).
    pub fn retries(mut self, retries: u32) -> Check {
        self.retries = retries;
        self
    }

    /// The pause between attempts (default 1 s).
    pub fn interval(mut self, interval: Duration) -> Check {
        self.interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// What is wrong with the check as declared, if anything.
    pub(crate) fn mistake(&self) -> Option<String> {
        match &self.probe {
            Probe::UnitActive { unit } if unit.is_empty() || unit.contains(['/', '\0']) => {
                Some(format!("check: `{unit}` is not a unit name"))
            }
            Probe::Tcp { host, .. } if host.is_empty() || host.contains(['/', '\0']) => {
                Some(format!("check: `{host}` is not a host name or address"))
            }
            Probe::Http { url, .. } => parse_url(url).err(),
            Probe::Command { script } if script.contains('\0') => {
                Some("check: a command holds a NUL".into())
            }
            _ if self.timeout_ms == 0 => Some(format!("check {}: a timeout of 0", self.describe())),
            _ => None,
        }
    }

    /// What the check checks, in a sentence.
    pub fn describe(&self) -> String {
        match &self.probe {
            Probe::UnitActive { unit } => format!("unit {unit} is active"),
            Probe::Tcp { host, port } => format!("{host}:{port} accepts TCP"),
            Probe::Http { url, status, body } => match body {
                Some(body) => format!("GET {url} answers {status} with {body:?} in the body"),
                None => format!("GET {url} answers {status}"),
            },
            Probe::Command { script } => format!("`{script}` exits 0"),
        }
    }

    /// Runs the check until it passes or its retries are spent; `log` gets each failed
    /// attempt. The error says what the last attempt saw.
    pub fn run(&self, mut log: impl FnMut(&str)) -> Result<(), String> {
        let timeout = Duration::from_millis(self.timeout_ms.max(1));
        let mut attempt = 0;
        loop {
            let error = match self.attempt(timeout) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if attempt >= self.retries {
                return Err(format!(
                    "health check {} failed after {}: {error}",
                    self.describe(),
                    crate::store::counted(attempt as usize + 1, "attempt", "attempts")
                ));
            }
            attempt += 1;
            log(&format!(
                "health check {}: {error} (attempt {attempt} of {})",
                self.describe(),
                self.retries + 1
            ));
            std::thread::sleep(Duration::from_millis(self.interval_ms));
        }
    }

    fn attempt(&self, timeout: Duration) -> Result<(), String> {
        match &self.probe {
            Probe::UnitActive { unit } => {
                let output = Command::new("systemctl")
                    .args(["is-active", unit])
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run systemctl: {e}"))?;
                match output.status.success() {
                    true => Ok(()),
                    false => Err(format!(
                        "it is {}",
                        String::from_utf8_lossy(&output.stdout).trim()
                    )),
                }
            }
            Probe::Tcp { host, port } => connect(host, *port, timeout).map(drop),
            Probe::Http { url, status, body } => {
                let (host, port, path) = parse_url(url)?;
                let got = http_get(&host, port, &path, timeout)?;
                if got.0 != *status {
                    return Err(format!("it answered {}", got.0));
                }
                match body {
                    Some(body) if !got.1.contains(body.as_str()) => Err(format!(
                        "its body does not contain {body:?}: {:?}",
                        got.1.chars().take(200).collect::<String>()
                    )),
                    _ => Ok(()),
                }
            }
            Probe::Command { script } => run_script(script, timeout),
        }
    }
}

/// `http://HOST[:PORT]/PATH` as its host, port and path.
fn parse_url(url: &str) -> Result<(String, u16, String), String> {
    let bad = |why: &str| format!("check: URL `{url}` {why}; write `http://HOST[:PORT]/PATH`");
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(match url.starts_with("https://") {
            true => bad("is HTTPS, which the agent does not speak (check it with \
                         `Check::command(\"curl -fsS ...\")`, or the port with `Check::tcp`)"),
            false => bad("is not an http:// URL"),
        });
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(bad("holds a space or control character"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
            host,
            port.parse::<u16>()
                .map_err(|_| bad(&format!("has port `{port}`, which is not a port number")))?,
        ),
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('@') {
        return Err(bad(
            "has no host (or has a user name, which is not supported)",
        ));
    }
    Ok((host.to_string(), port, path.to_string()))
}

fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addresses: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} resolves to no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("cannot connect to {address}: {e}"),
        }
    }
    Err(last)
}

/// The status and body (up to 1 MiB) of `GET path` from `host:port`, over HTTP/1.0 so that
/// the answer is neither chunked nor kept alive.
fn http_get(host: &str, port: u16, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(host, port, timeout)?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    stream
        .set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    let host_header = match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    };
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: forjar-agent\r\n\
                 Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        stream
            .set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buffer[..n]);
                if answer.len() > 1 << 20 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("no complete answer within the timeout: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            format!(
                "the answer is not HTTP: {:?}",
                head.chars().take(80).collect::<String>()
            )
        })?;
    Ok((status, body.to_string()))
}

/// Runs `script` with `/bin/sh -euc`, killed after `timeout`; its output goes to the log.
fn run_script(script: &str, timeout: Duration) -> Result<(), String> {
    /// How much of the end of its standard error is kept for the message.
    const KEPT: usize = 4096;
    let mut child = Command::new("/bin/sh")
        .args(["-euc", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run /bin/sh: {e}"))?;
    // Drained as it comes, so that a chatty command never blocks on a full pipe; only its end
    // is kept, and a process it left behind holding the pipe is not waited for.
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    if let Some(mut pipe) = child.stderr.take() {
        let kept = std::sync::Arc::clone(&kept);
        let drain = std::thread::Builder::new().spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buffer) {
                let mut kept = kept
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                kept.extend_from_slice(&buffer[..n]);
                let excess = kept.len().saturating_sub(KEPT);
                kept.drain(..excess);
            }
        });
        if let Err(e) = drain {
            // Undrained, the command could block on a full pipe: it is not left running.
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "cannot start a thread for the command's output: {}",
                crate::threads::Said(&e)
            ));
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                // A moment for the drain to see the last of what the command wrote.
                std::thread::sleep(Duration::from_millis(20));
                let stderr = kept
                    .lock()
                    .map(|k| String::from_utf8_lossy(&k).trim().to_string())
                    .unwrap_or_default();
                return Err(match stderr.is_empty() {
                    true => format!("it {status}"),
                    false => format!("it {status}: {}", tail(&stderr)),
                });
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "it ran longer than {} ms and was killed",
                    timeout.as_millis()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    }
}

/// The last few lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(4)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_and_bad_ones_named_with_what_to_write() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/health?x=1").unwrap(),
            ("127.0.0.1".into(), 8080, "/health?x=1".into())
        );
        assert_eq!(
            parse_url("http://example.org").unwrap(),
            ("example.org".into(), 80, "/".into())
        );
        assert_eq!(
            parse_url("http://[::1]:81/").unwrap(),
            ("::1".into(), 81, "/".into())
        );
        let https = parse_url("https://example.org/").unwrap_err();
        assert!(
            https.contains("`https://example.org/`") && https.contains("curl"),
            "{https}"
        );
        assert!(
            parse_url("http://h:99999/")
                .unwrap_err()
                .contains("`99999`")
        );
        assert!(parse_url("ftp://h/").unwrap_err().contains("http://HOST"));
    }

    #[test]
    fn a_check_retries_and_says_what_the_last_attempt_saw() {
        let mut seen = Vec::new();
        let check = Check::command("echo broken >&2; exit 3")
            .retries(2)
            .interval(Duration::from_millis(1));
        let error = check.run(|line| seen.push(line.to_string())).unwrap_err();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(
            error.contains("after 3 attempts") && error.contains("broken"),
            "{error}"
        );
        assert!(Check::command("true").run(|_| {}).is_ok());
        // More than a pipe holds on standard error: it still ends, and its last words show.
        let chatty = Check::command("yes noise | head -c 1000000 >&2; echo last >&2; exit 1")
            .retries(0)
            .run(|_| {})
            .unwrap_err();
        assert!(
            chatty.contains("last") && !chatty.contains("killed"),
            "{chatty}"
        );
        let slow = Check::command("sleep 5")
            .timeout(Duration::from_millis(50))
            .retries(0);
        assert!(slow.run(|_| {}).unwrap_err().contains("killed"));
    }

    #[test]
    fn http_and_tcp_checks_talk_to_a_real_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for body in ["ok", "not yet"] {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).unwrap();
                let status = if body == "ok" { 200 } else { 503 };
                write!(
                    stream,
                    "HTTP/1.0 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/");
        let once = |check: Check| check.retries(0).run(|_| {});
        assert!(once(Check::http(&url).body_contains("ok")).is_ok());
        let error = once(Check::http(&url)).unwrap_err();
        assert!(error.contains("answered 503"), "{error}");
        server.join().unwrap();
        assert!(
            once(Check::tcp("127.0.0.1", port)).is_err(),
            "the listener is closed"
        );
    }
}
