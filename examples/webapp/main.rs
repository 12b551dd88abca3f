//! Typed configuration: a service's settings are a Rust struct, checked by the compiler and by
//! their types when the program runs, rendered as TOML, and installed with a systemd unit into
//! one profile output laid out like the root file system.
//!
//! The program takes an option of its own, `--env dev|prod`, which chooses the settings.
//!
//! ```text
//! cargo run --example webapp -- apply
//! cargo run --example webapp -- --env prod apply
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use forjar::prelude::*;
use serde::Serialize;

/// The service's configuration file, `config.toml`.
#[derive(Debug, Clone, Serialize)]
struct AppConfig {
    listen: SocketAddr,
    workers: NonZeroU16,
    log_level: LogLevel,
    /// Seconds.
    request_timeout: u64,
    upstreams: Vec<Upstream>,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code, reason = "the other levels are there to choose from")]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Debug, Clone, Serialize)]
struct Upstream {
    name: String,
    url: String,
    weight: u8,
}

/// A systemd service unit, written in systemd's own format.
struct ServiceUnit {
    description: String,
    exec_start: String,
    user: String,
    restart_after: Duration,
    after: Vec<String>,
}

impl fmt::Display for ServiceUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[Unit]")?;
        writeln!(f, "Description={}", self.description)?;
        writeln!(f, "After={}", self.after.join(" "))?;
        writeln!(f)?;
        writeln!(f, "[Service]")?;
        writeln!(f, "ExecStart={}", self.exec_start)?;
        writeln!(f, "User={}", self.user)?;
        writeln!(f, "Restart=on-failure")?;
        writeln!(f, "RestartSec={}", self.restart_after.as_secs())?;
        writeln!(f, "NoNewPrivileges=yes")?;
        writeln!(f, "ProtectSystem=strict")?;
        writeln!(f)?;
        writeln!(f, "[Install]")?;
        write!(f, "WantedBy=multi-user.target")
    }
}

/// The profile: `etc/webapp/config.toml` and `lib/systemd/system/webapp.service`. The unit
/// file comes in as text through `unit`; the configuration is rendered from its type.
#[derive(Derivation)]
#[forjar(name = "webapp-profile")]
#[forjar(script = r#"
    mkdir -p $out/etc/webapp $out/lib/systemd/system
    cp config.toml $out/etc/webapp/config.toml
    printf '%s\n' "$unit" > $out/lib/systemd/system/webapp.service
    chmod 0644 $out/etc/webapp/config.toml $out/lib/systemd/system/webapp.service
"#)]
struct Profile {
    #[forjar(file = "config.toml")]
    config: AppConfig,
    #[forjar(env)]
    unit: String,
    /// `mkdir`, `cp` and `chmod`.
    #[forjar(toolchain)]
    tools: Toolchain,
}

/// Where the service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Environment {
    Dev,
    Prod,
}

/// The program's own options, beside forjar's.
#[derive(Debug, clap::Args)]
struct Options {
    /// The environment to configure.
    #[arg(long, global = true, value_enum, default_value = "dev")]
    env: Environment,
}

fn main() -> forjar::ExitCode {
    forjar::main_with!(|g, options: Options| {
        let prod = options.env == Environment::Prod;
        let config = AppConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], if prod { 80 } else { 8080 })),
            workers: NonZeroU16::new(if prod { 16 } else { 4 }).expect("not zero"),
            log_level: if prod { LogLevel::Warn } else { LogLevel::Info },
            request_timeout: 30,
            upstreams: vec![
                Upstream {
                    name: "api".into(),
                    url: "http://10.0.0.10:9000".into(),
                    weight: 3,
                },
                Upstream {
                    name: "static".into(),
                    url: "http://10.0.0.11:9000".into(),
                    weight: 1,
                },
            ],
        };
        let unit = ServiceUnit {
            description: "webapp, configured by forjar".into(),
            exec_start: "/usr/bin/webapp --config /etc/webapp/config.toml".into(),
            user: "webapp".into(),
            restart_after: Duration::from_secs(5),
            after: vec!["network-online.target".into()],
        };
        let profile = g.add(Profile {
            config,
            unit: unit.to_string(),
            tools: Toolchain::from_host("coreutils", ["coreutils"])?,
        });
        g.root("webapp", profile);
        Ok(())
    })
}
