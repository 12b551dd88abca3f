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
//!
//! After every activation the host checks that the service answers its greeting; a host that
//! fails the check, or that the controller cannot reach again over a new SSH connection, goes
//! back to its previous generation by itself. Two knobs show it (the tests use them):
//! `FLEET_UNHEALTHY=host,...` makes the check on those hosts expect an answer the service never
//! gives, and `FLEET_SSH_PORT=N` moves the hosts' sshd to port N, which cuts the controller
//! off.
//!
//! `FLEET_JUMP=host` reaches every host through that one (`ssh -J`).
//!
//! `FLEET_KEEP_GENERATIONS=N` makes every host keep its newest N generations: an apply deletes
//! the older ones and collects the host's store.
//!
//! With `FLEET_TOKEN` set, its value is a secret of the service: read when `apply` runs,
//! written to `/run/hello/token` (tmpfs; the service's user only) before the service starts,
//! and never put in the store; a new value restarts the service.

use forjar::machine::{Check, File, Machine, Restart, Secret, Unit, User};
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
const SERVER: &str = r#"import http.server, socketserver, tomllib
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
class Server(http.server.HTTPServer):
    def server_bind(self):
        # Listen without HTTPServer's reverse lookup of the address, which waits for DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
Server((config["address"], config["port"]), Handler).serve_forever()
"#;

fn main() -> forjar::ExitCode {
    forjar::main!(|p| {
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
        let unhealthy = std::env::var("FLEET_UNHEALTHY").unwrap_or_default();
        let ssh_port = std::env::var("FLEET_SSH_PORT").ok();
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            // `local` is the machine the program runs on, changed without SSH.
            let mut machine = match (host, std::env::var("FLEET_JUMP")) {
                ("local", _) => Machine::local(host),
                (_, Ok(jump)) => Machine::ssh(host, host).jump(&jump),
                (_, Err(_)) => Machine::ssh(host, host),
            }
            .tag("web");
            if let Some(count) = std::env::var("FLEET_KEEP_GENERATIONS")
                .ok()
                .and_then(|n| n.parse().ok())
            {
                machine = machine.keep_generations(count);
            }
            let hello = machine.user(User::system("hello"));
            let expected = match unhealthy.split(',').any(|h| h == host) {
                true => "an answer this service never gives",
                false => config.greeting.as_str(),
            };
            let mut service = Unit::service("hello");
            if std::env::var_os("FLEET_TOKEN").is_some() {
                machine.secret(
                    path!("/run/hello/token"),
                    Secret::env("FLEET_TOKEN"),
                    &hello,
                    mode!(0o400),
                );
                service = service.restart_on(path!("/run/hello/token"));
            }
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
                    service
                        .description("a greeting over HTTP")
                        .after("network.target")
                        .exec_start(
                            &std::env::var("FLEET_EXEC")
                                .unwrap_or_else(|_| "/usr/bin/python3 /opt/hello/server.py".into()),
                        )
                        .user(&hello)
                        .restart(Restart::OnFailure)
                        .wanted_by("multi-user.target")
                        .restart_on(path!("/etc/hello/config.toml"))
                        .check(
                            Check::http(&format!("http://127.0.0.1:{}/", config.port))
                                .body_contains(expected)
                                .retries(6)
                                .interval(std::time::Duration::from_millis(500)),
                        ),
                );
            if let Some(port) = &ssh_port {
                // sshd reads its drop-ins at start: restarted when this file changes, and
                // again when the change is rolled back.
                machine
                    .file(
                        path!("/etc/ssh/sshd_config.d/forjar-port.conf"),
                        File::text(format!("Port {port}\n")),
                    )
                    .unit(
                        Unit::existing("ssh.service")
                            .restart_on(path!("/etc/ssh/sshd_config.d/forjar-port.conf")),
                    );
            }
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
