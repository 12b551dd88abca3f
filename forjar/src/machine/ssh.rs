//! Reaching a host: the system `ssh` through the `openssh` crate, one multiplexed connection per
//! host that every command of a deploy reuses, so the user's ssh config (agent, `ProxyJump`,
//! known hosts) applies. Host keys are checked strictly: an unknown or changed key is refused.
//! The local machine is reached without SSH.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

use super::MachineError;
use super::model::{Machine, Target};

/// How long a connection's ssh master lives without a command: longer than any pause between
/// the commands of a deploy (the longest is the agent's compression, seconds).
const MASTER_IDLE: std::num::NonZeroUsize = std::num::NonZeroUsize::new(600).unwrap();

/// How hosts are reached.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// An ssh config file to use instead of `~/.ssh/config` (`ssh -F`).
    pub config: Option<PathBuf>,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            config: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What a remote command gets on its standard input.
pub enum Input<'a> {
    /// Nothing.
    Nothing,
    /// These bytes.
    Bytes(&'a [u8]),
    /// What this writer writes, telling the callback now and then how many bytes have gone.
    Stream(Box<WriteWith<'a>>, &'a (dyn Fn(u64) + Sync)),
}

/// A writer of a command's standard input.
pub type WriteWith<'a> = dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'a;

/// What a remote command did.
#[derive(Debug)]
pub struct Reply {
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output (unless it was streamed to a callback).
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: String,
    /// Bytes written to its standard input.
    pub sent: u64,
}

/// A connection to one machine.
pub struct Transport {
    host: String,
    link: Link,
}

enum Link {
    Local,
    Ssh {
        runtime: tokio::runtime::Runtime,
        session: openssh::Session,
    },
}

/// Counts what passes through a writer, and tells `report` the count every
/// [`Counting::EVERY`] bytes.
struct Counting<'a, W> {
    inner: W,
    count: u64,
    next: u64,
    report: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl<W> Counting<'_, W> {
    const EVERY: u64 = 4 << 20;
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        if let Some(report) = self.report
            && self.count >= self.next
        {
            report(self.count);
            self.next = self.count + Self::EVERY;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Transport {
    /// Connects to `machine`.
    pub fn connect(machine: &Machine, options: &SshOptions) -> Result<Transport, MachineError> {
        let host = machine.name().to_string();
        let (address, user, port, jump) = match machine.target() {
            Target::Local => {
                return Ok(Transport {
                    host,
                    link: Link::Local,
                });
            }
            Target::Ssh {
                address,
                user,
                port,
                jump,
            } => (address, user, port, jump),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MachineError::host(&host, format!("cannot start the I/O runtime: {e}")))?;
        let mut builder = openssh::SessionBuilder::default();
        builder
            .known_hosts_check(openssh::KnownHosts::Strict)
            .connect_timeout(options.connect_timeout)
            .server_alive_interval(Duration::from_secs(2))
            // The master ends once it has had no command for this long: a forjar killed
            // before it closed its connections leaves none for good.
            .control_persist(openssh::ControlPersist::IdleFor(MASTER_IDLE))
            .control_directory(std::env::temp_dir());
        if let Some(config) = &options.config {
            builder.config_file(config);
        }
        if let Some(user) = user {
            builder.user(user.clone());
        }
        if let Some(port) = port {
            builder.port(*port);
        }
        if let Some(jump) = jump {
            builder.jump_hosts([jump.as_str()]);
        }
        // The master is started from this thread with the terminal's signals blocked, which it
        // keeps: a Ctrl-C on the terminal reaches forjar's whole process group, and the master
        // is in it until it has authenticated and gone to a session of its own.
        let mut terminal_signals = SigSet::empty();
        terminal_signals.add(Signal::SIGINT);
        terminal_signals.add(Signal::SIGQUIT);
        let mut before = SigSet::empty();
        let _ = pthread_sigmask(
            SigmaskHow::SIG_BLOCK,
            Some(&terminal_signals),
            Some(&mut before),
        );
        let connected = runtime.block_on(builder.connect_mux(address));
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&before), None);
        let session = connected.map_err(|e| {
            // The master's error is one line of ssh's log; ssh itself says all of it. A
            // connection that timed out is not tried again: that would double the wait on every
            // unreachable host, and the line says what there is to say.
            let line = one_line(&error_chain(&e));
            let said = match line.contains("timed out") {
                true => line,
                false => match diagnose(address, user, port, jump, options) {
                    diagnosed if diagnosed.is_empty() => line,
                    diagnosed => diagnosed,
                },
            };
            MachineError::host(&host, connect_advice(address, &said))
        })?;
        Ok(Transport {
            host,
            link: Link::Ssh { runtime, session },
        })
    }

    /// The machine's name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether the machine is this one (`Machine::local`), reached without ssh.
    pub fn is_local(&self) -> bool {
        matches!(self.link, Link::Local)
    }

    /// Runs `argv` on the machine, feeding it `input` and calling `line` with each line of its
    /// standard output as it comes (all of it is also returned).
    pub fn run(
        &self,
        argv: &[String],
        input: Input<'_>,
        mut line: impl FnMut(&str),
    ) -> Result<Reply, MachineError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            MachineError::host(&self.host, format!("{what}: {e}"))
        };
        let (stdin_read, stdin_write) = io::pipe().map_err(|e| fail("cannot make a pipe", &e))?;
        let (stdout_read, stdout_write) = io::pipe().map_err(|e| fail("cannot make a pipe", &e))?;
        let (stderr_read, stderr_write) = io::pipe().map_err(|e| fail("cannot make a pipe", &e))?;
        let (stdin_read, stdout_write, stderr_write) = (
            OwnedFd::from(stdin_read),
            OwnedFd::from(stdout_write),
            OwnedFd::from(stderr_write),
        );
        // The threads that feed the command and drain its standard error start before the
        // command does: one that cannot start (every thread counts against the user's limit on
        // processes) is an error with nothing running on the machine, not a command left
        // without its input. The command (and with it this process's copies of the child's pipe
        // ends) is dropped once spawned, so that the pipes end when the child does; if it does
        // not spawn, they end with it, and the threads with them.
        enum Running<'s> {
            Local(std::process::Child),
            Ssh(Box<openssh::Child<&'s openssh::Session>>),
        }
        std::thread::scope(|scope| {
            let no_thread = |e: io::Error| {
                fail(
                    "cannot start a thread for the command",
                    &crate::threads::Said(&e),
                )
            };
            let writer = std::thread::Builder::new()
                .spawn_scoped(scope, move || {
                    let mut counting = Counting {
                        inner: io::BufWriter::with_capacity(1 << 20, stdin_write),
                        count: 0,
                        next: Counting::<()>::EVERY,
                        report: None,
                    };
                    let result = match input {
                        Input::Nothing => Ok(()),
                        Input::Bytes(bytes) => counting.write_all(bytes),
                        Input::Stream(write, report) => {
                            counting.report = Some(report);
                            write(&mut counting)
                        }
                    }
                    .and_then(|()| counting.flush());
                    (counting.count, result)
                })
                .map_err(no_thread)?;
            let reader = std::thread::Builder::new()
                .spawn_scoped(scope, move || {
                    let mut text = String::new();
                    let _ = BufReader::new(stderr_read).read_to_string(&mut text);
                    text
                })
                .map_err(no_thread)?;
            let running = match &self.link {
                // A process group of its own, as an ssh channel's command is on its host: a
                // Ctrl-C on the terminal reaches forjar, which lets the command finish.
                Link::Local => std::process::Command::new(&argv[0])
                    .process_group(0)
                    .args(&argv[1..])
                    .stdin(stdin_read)
                    .stdout(stdout_write)
                    .stderr(stderr_write)
                    .spawn()
                    .map(Running::Local)
                    .map_err(|e| {
                        fail(
                            &format!("cannot run `{}`", argv[0]),
                            &crate::threads::Said(&e),
                        )
                    })?,
                Link::Ssh { runtime, session } => {
                    let mut command = session.command(argv[0].as_str());
                    command
                        .args(&argv[1..])
                        .stdin(openssh::Stdio::from(stdin_read))
                        .stdout(openssh::Stdio::from(stdout_write))
                        .stderr(openssh::Stdio::from(stderr_write));
                    let child = runtime
                        .block_on(command.spawn())
                        .map_err(|e| fail("the connection failed", &error_chain(&e)))?;
                    drop(command);
                    Running::Ssh(Box::new(child))
                }
            };
            let mut stdout = Vec::new();
            let mut out = BufReader::new(stdout_read);
            let mut buffer = Vec::new();
            loop {
                buffer.clear();
                match out.read_until(b'\n', &mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        stdout.extend_from_slice(&buffer);
                        line(String::from_utf8_lossy(&buffer).trim_end_matches('\n'));
                    }
                }
            }
            let (sent, _written) = writer.join().expect("the writer does not panic");
            let stderr = reader.join().expect("the reader does not panic");
            let status = match running {
                Running::Local(mut child) => child
                    .wait()
                    .map_err(|e| fail("cannot wait for the command", &e))?,
                Running::Ssh(child) => match &self.link {
                    Link::Ssh { runtime, .. } => runtime
                        .block_on((*child).wait())
                        .map_err(|e| fail("the connection failed", &error_chain(&e)))?,
                    Link::Local => unreachable!("an ssh child has an ssh link"),
                },
            };
            Ok(Reply {
                status,
                stdout,
                stderr,
                sent,
            })
        })
    }

    /// Closes the connection.
    pub fn close(self) {
        if let Link::Ssh { runtime, session } = self.link {
            let _ = runtime.block_on(session.close());
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(said.trim());
        }
        source = cause.source();
    }
    text
}

/// What a plain `ssh` with the same settings says on its standard error, for a connection that
/// failed.
fn diagnose(
    address: &str,
    user: &Option<String>,
    port: &Option<u16>,
    jump: &Option<String>,
    options: &SshOptions,
) -> String {
    let mut command = std::process::Command::new("ssh");
    command.args([
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
    ]);
    command.arg(format!(
        "ConnectTimeout={}",
        options.connect_timeout.as_secs().max(1)
    ));
    if let Some(config) = &options.config {
        command.arg("-F").arg(config);
    }
    if let Some(user) = user {
        command.args(["-l", user]);
    }
    if let Some(port) = port {
        command.args(["-p", &port.to_string()]);
    }
    if let Some(jump) = jump {
        command.args(["-J", jump]);
    }
    command
        .args([address, "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .map(|o| one_line(&String::from_utf8_lossy(&o.stderr)))
        .unwrap_or_default()
}

/// ssh's log, which may be several lines, as one: its lines joined by `; `, without the empty
/// ones and the rule of `@` signs around a changed host key's warning.
fn one_line(log: &str) -> String {
    log.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("@@@"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A connection failure, with what to do about the usual causes.
fn connect_advice(address: &str, text: &str) -> String {
    let line = |needle: &str| {
        text.split("; ")
            .find(|l| l.contains(needle))
            .map(|l| l.trim().to_string())
    };
    if text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return format!(
            "cannot connect to `{address}`: its host key is not the one recorded{}; if the host \
             was reinstalled, remove the old key (`ssh-keygen -R {address}`) and record the new \
             one after checking its fingerprint; otherwise someone may be in the middle",
            line("Offending")
                .map(|l| format!(" ({l})"))
                .unwrap_or_default()
        );
    }
    if text.contains("host key is known") || text.contains("Host key verification failed") {
        return format!(
            "cannot connect to `{address}`: its host key is unknown, and host keys are checked \
             strictly; record it after checking its fingerprint (`ssh-keyscan {address} >> \
             ~/.ssh/known_hosts`)"
        );
    }
    let advice = if text.contains("Permission denied") {
        "; the login was refused: check the user and that your key is in the host's \
         authorized_keys (or loaded in your ssh agent)"
    } else if text.contains("timed out")
        || text.contains("No route")
        || text.contains("Connection refused")
        || text.contains("Could not resolve")
    {
        "; the host is unreachable: check its address, that it is up and that sshd listens"
    } else {
        ""
    };
    format!("cannot connect to `{address}`: {}{advice}", text.trim())
}
