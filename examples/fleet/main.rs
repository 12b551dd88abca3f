//! A small fleet: an HTTP service with a typed configuration file, its own user and a systemd
//! unit, on every host named in `FLEET_HOSTS` (ssh host names or aliases, comma-separated;
//! default `demo-1,demo-2,demo-3`, the test hosts of `hosts/testhosts up demo 3`; `local` is
//! the machine the program runs on).
//!
//! ```sh
//! hosts/testhosts up demo 3
//! cargo run --example fleet -- --ssh-config target/testhosts/runs/demo/ssh_config apply
//! ```
//!
//! `FLEET_GREETING` changes what the service answers (a new generation, the service
//! restarted); `FLEET_PORT` the port it listens on; `FLEET_EXTRA_FILES=N` adds N small files
//! under `/etc/hello/extra/` (for `bench/machines`, which gives Ansible the same).

use forjar::machine::{File, Machine, Restart, Unit, User};
use forjar::prelude::*;
use forjar::{mode, path};
use serde::Serialize;

/// The service's configuration, rendered as TOML into `/etc/hello/config.toml`.
#[derive(Serialize)]
struct Config {
    greeting: String,
    address: String,
    port: u16,
}

/// The server: Python's standard library only, so that any Debian host with python3 runs it.
const SERVER: &str = r#"import http.server, tomllib
with open("/etc/hello/config.toml", "rb") as f:
    config = tomllib.load(f)
body = (config["greeting"] + "\n").encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((config["address"], config["port"]), Handler).serve_forever()
"#;

fn main() -> forjar::ExitCode {
    forjar::main(|p| {
        // The server's code is a derivation output, built in the sandbox and deployed by
        // content like everything else.
        let server = p.add(
            Derivation::builder("hello-server")
                .env("SERVER", SERVER)
                .script("printf '%s' \"$SERVER\" > $out")
                .build()?,
        );
        let config = Config {
            greeting: std::env::var("FLEET_GREETING")
                .unwrap_or_else(|_| "hello from forjar".into()),
            address: "0.0.0.0".into(),
            port: std::env::var("FLEET_PORT")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(8080),
        };
        let hosts = std::env::var("FLEET_HOSTS").unwrap_or_else(|_| "demo-1,demo-2,demo-3".into());
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            // `local` is the machine the program runs on, changed without SSH.
            let mut machine = match host {
                "local" => Machine::local(host),
                _ => Machine::ssh(host, host),
            }
            .tag("web");
            let hello = machine.user(User::system("hello"));
            machine
                .file(
                    path!("/etc/hello/config.toml"),
                    File::toml(&config).owner(&hello).mode(mode!(0o640)),
                )
                .file(
                    path!("/opt/hello/server.py"),
                    File::output(server).mode(mode!(0o755)),
                )
                .unit(
                    Unit::service("hello")
                        .description("a greeting over HTTP")
                        .after("network.target")
                        .exec_start(
                            &std::env::var("FLEET_EXEC")
                                .unwrap_or_else(|_| "/usr/bin/python3 /opt/hello/server.py".into()),
                        )
                        .user(&hello)
                        .restart(Restart::OnFailure)
                        .wanted_by("multi-user.target")
                        .restart_on(path!("/etc/hello/config.toml")),
                );
            let extra: usize = std::env::var("FLEET_EXTRA_FILES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            for n in 1..=extra {
                let path = forjar::machine::AbsPath::new(format!("/etc/hello/extra/{n}.conf"))?;
                machine.file(path, File::text(format!("file {n}\n")));
            }
            p.machine(machine);
        }
        Ok(())
    })
}
