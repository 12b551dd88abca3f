//! Machines: the fleet example deployed to real Debian hosts (systemd and sshd booted by
//! `hosts/testhosts`, reached over SSH): copy, activation, generations, rollback, drift, and
//! the faults a deploy must survive.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use forjar_suite::{TestHosts, assert_ok, example, stderr, stdout};

/// Runs the fleet example against `hosts` with `store` and `env`.
fn fleet(store: &Path, hosts: &TestHosts, env: &[(&str, &str)], args: &[&str]) -> Output {
    fleet_program(&example("fleet"), store, hosts, env, args)
}

/// Runs `program`, a build of the fleet example, as [`fleet`] does.
fn fleet_program(
    program: &Path,
    store: &Path,
    hosts: &TestHosts,
    env: &[(&str, &str)],
    args: &[&str],
) -> Output {
    let names: Vec<&str> = (0..hosts.hosts.len()).map(|i| hosts.name(i)).collect();
    let mut command = fleet_command(program, store, &names.join(","), &hosts.ssh_config());
    for (k, v) in env {
        command.env(k, v);
    }
    command.args(args).output().expect("the fleet example runs")
}

/// The fleet `program` for the machines `names` (comma-separated), with `store` and
/// `ssh_config`.
fn fleet_command(program: &Path, store: &Path, names: &str, ssh_config: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .env("FLEET_HOSTS", names)
        .arg("--store")
        .arg(store)
        .arg("--ssh-config")
        .arg(ssh_config);
    command
}

/// One test host, deployed once from a new store (its generation 1); the directory holding
/// the store lives as long as the value.
fn one_host_deployed() -> Option<(TestHosts, tempfile::TempDir, PathBuf)> {
    let hosts = TestHosts::up(1)?;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    assert_ok(&fleet(&store, &hosts, &[], &["apply"]));
    Some((hosts, dir, store))
}

/// A new ssh key pair at `path`; returns its public key's type and text.
fn new_key(path: &Path) -> String {
    assert_ok(
        &Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path)
            .output()
            .unwrap(),
    );
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A copy of the run's ssh config at `to`, with `from` replaced by `with`.
fn ssh_config_with(hosts: &TestHosts, to: &Path, from: &Path, with: &Path) -> PathBuf {
    let config = std::fs::read_to_string(hosts.ssh_config()).unwrap();
    let replaced = config.replace(&from.display().to_string(), &with.display().to_string());
    assert_ne!(
        config,
        replaced,
        "the run's ssh config names {}",
        from.display()
    );
    std::fs::write(to, replaced).unwrap();
    to.to_path_buf()
}

/// The bytes a host's line of the apply summary says were sent (0 if none).
fn sent_bytes(output: &Output, host: &str) -> u64 {
    let text = stdout(output);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{host} ")))
        .unwrap_or_else(|| panic!("no summary line for {host}:\n{text}"));
    line.rsplit_once(" bytes)")
        .and_then(|(head, _)| head.rsplit_once('('))
        .map_or(0, |(_, n)| n.parse().expect("a byte count"))
}

fn summary_line(output: &Output, host: &str) -> String {
    stdout(output)
        .lines()
        .find(|l| l.starts_with(&format!("{host} ")))
        .unwrap_or_else(|| {
            panic!(
                "no summary line for {host}:\n{}\n{}",
                stdout(output),
                stderr(output)
            )
        })
        .to_string()
}

#[test]
fn apply_converges_hosts_sends_only_what_they_lack_and_rolls_back_on_request() {
    let Some(hosts) = TestHosts::up(2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");

    // First converge: the agent and the system go over; the service answers.
    let first = fleet(&store, &hosts, &[], &["apply"]);
    assert_ok(&first);
    for i in 0..2 {
        let line = summary_line(&first, hosts.name(i));
        assert!(line.contains("activated generation 1"), "{line}");
        assert!(
            sent_bytes(&first, hosts.name(i)) > 1_000_000,
            "the agent was sent: {line}"
        );
        assert!(line.contains(" the agent and 2 entries, "), "{line}");
        assert!(line.contains("1 user added, 1 unit started"), "{line}");
        assert_eq!(hosts.http_get(i, 8080), "hello from forjar");
    }
    let user = hosts.ssh(0, "id -u hello && stat -c '%U %a' /etc/hello/config.toml");
    assert_ok(&user);
    assert!(stdout(&user).contains("hello 640"), "{}", stdout(&user));

    // Nothing changed: nothing is sent, no generation is made.
    let again = fleet(&store, &hosts, &[], &["apply"]);
    assert_ok(&again);
    for i in 0..2 {
        assert!(summary_line(&again, hosts.name(i)).contains("unchanged, generation 1"));
        assert_eq!(sent_bytes(&again, hosts.name(i)), 0);
    }

    // A new greeting: the plan names the file and the restart; only the system entry goes.
    let env = [("FLEET_GREETING", "bonjour")];
    let plan = fleet(&store, &hosts, &env, &["plan"]);
    assert_ok(&plan);
    let text = stdout(&plan);
    assert!(text.contains("~ path /etc/hello/config.toml"), "{text}");
    assert!(text.contains("restart unit hello.service"), "{text}");
    assert!(text.contains("copy 1 entry ("), "{text}");
    let second = fleet(&store, &hosts, &env, &["apply", "--on", hosts.name(0)]);
    assert_ok(&second);
    let line = summary_line(&second, hosts.name(0));
    assert!(line.contains("activated generation 2"), "{line}");
    assert!(line.contains("1 unit restarted"), "{line}");
    let sent = sent_bytes(&second, hosts.name(0));
    assert!(
        sent > 0 && sent < 20_000,
        "only the system entry was sent: {line}"
    );
    assert!(line.contains(" 1 entry, "), "{line}");
    assert!(
        !stdout(&second).contains(hosts.name(1)),
        "--on left the other host alone"
    );
    assert_eq!(hosts.http_get(0, 8080), "bonjour");
    assert_eq!(hosts.http_get(1, 8080), "hello from forjar");

    // Generations, kept on the host, and a rollback to the first.
    let generations = fleet(
        &store,
        &hosts,
        &env,
        &["generations", "--on", hosts.name(0)],
    );
    assert_ok(&generations);
    let listing = stdout(&generations);
    assert!(
        listing.contains("   1  ") && listing.contains("*    2  "),
        "the second is the one it runs:\n{listing}"
    );
    assert!(
        store
            .join(".machines")
            .join(hosts.name(0))
            .join("generations.json")
            .exists()
    );
    let diff = fleet(
        &store,
        &hosts,
        &env,
        &["diff", "1", "2", "--on", hosts.name(0)],
    );
    assert_ok(&diff);
    let text = stdout(&diff);
    assert!(text.contains("~ path /etc/hello/config.toml"), "{text}");
    assert!(text.contains("restart unit hello.service"), "{text}");
    let back = fleet(
        &store,
        &hosts,
        &env,
        &["rollback", "--on", hosts.name(0), "--to", "1"],
    );
    assert_ok(&back);
    assert!(
        stdout(&back).contains("now on generation 3"),
        "{}",
        stdout(&back)
    );
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");
    let listing = stdout(&fleet(
        &store,
        &hosts,
        &env,
        &["generations", "--on", hosts.name(0)],
    ));
    assert!(
        listing.contains("   2  ") && listing.contains("*    3  "),
        "the rollback is a generation of its own, and the current one:\n{listing}"
    );
}

#[test]
fn a_unit_that_does_not_start_rolls_the_host_back_by_itself() {
    let Some((hosts, _dir, store)) = one_host_deployed() else {
        return;
    };
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");

    let broken = fleet(
        &store,
        &hosts,
        &[
            ("FLEET_GREETING", "broken"),
            ("FLEET_EXEC", "/usr/bin/false"),
        ],
        &["apply"],
    );
    assert_eq!(
        broken.status.code(),
        Some(4),
        "exit 4 says rolled back\n{}",
        stdout(&broken)
    );
    let line = summary_line(&broken, hosts.name(0));
    assert!(line.contains("rolled back to generation 1"), "{line}");
    assert!(
        line.contains("hello.service"),
        "the failure names the unit: {line}"
    );
    assert!(
        line.contains("exited with status 1/FAILURE"),
        "and says how its process ended: {line}"
    );
    // A program that cannot be executed fails the restart itself, which says why.
    let missing = fleet(
        &store,
        &hosts,
        &[
            ("FLEET_GREETING", "missing"),
            ("FLEET_EXEC", "/nonexistent/server"),
        ],
        &["apply"],
    );
    assert_eq!(missing.status.code(), Some(4), "{}", stdout(&missing));
    let line = summary_line(&missing, hosts.name(0));
    assert!(
        line.contains("rolled back to generation 1")
            && line.contains("exited with status 203/EXEC")
            && !line.contains("See \""),
        "{line}"
    );
    // The host runs the first generation's service and configuration again.
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");
    let config = hosts.ssh(0, "cat /etc/hello/config.toml");
    assert!(
        stdout(&config).contains("hello from forjar"),
        "{}",
        stdout(&config)
    );
    let drift = fleet(&store, &hosts, &[], &["drift"]);
    assert_ok(&drift);
    assert!(stdout(&drift).contains("no drift"), "{}", stdout(&drift));
}

#[test]
fn drift_is_read_on_the_host_and_repaired() {
    let Some((hosts, _dir, store)) = one_host_deployed() else {
        return;
    };
    assert_ok(&hosts.ssh(
        0,
        "echo 'greeting = \"edited\"' >> /etc/hello/config.toml; chmod 666 /opt/hello/server.py; systemctl stop hello",
    ));

    let drift = fleet(&store, &hosts, &[], &["drift"]);
    assert_eq!(
        drift.status.code(),
        Some(1),
        "drift exits 1\n{}",
        stdout(&drift)
    );
    let text = stdout(&drift);
    assert!(
        text.contains("/etc/hello/config.toml: content is") && text.contains(" bytes), expected "),
        "{text}"
    );
    // Its content is as it was: the mode alone differs.
    assert!(
        text.contains("/opt/hello/server.py: mode is 0666, expected 0755")
            && !text.contains("/opt/hello/server.py: content"),
        "{text}"
    );
    assert!(text.contains("unit hello.service: not active"), "{text}");
    let plan = fleet(&store, &hosts, &[], &["plan"]);
    assert!(
        stdout(&plan).contains("  put back what drifted:\n    /etc/hello/config.toml: content is"),
        "{}",
        stdout(&plan)
    );

    // The repair says what it put back; nothing is left.
    let repair = fleet(&store, &hosts, &[], &["drift", "--repair"]);
    assert_ok(&repair);
    let text = stdout(&repair);
    let host = hosts.name(0);
    for repaired in [
        format!("{host}: /etc/hello/config.toml: content is"),
        format!("{host}: /opt/hello/server.py: mode is 0666, expected 0755; repaired"),
        format!("{host}: unit hello.service: not active; repaired"),
    ] {
        assert!(text.contains(&repaired), "{repaired}\n{text}");
    }
    assert!(!text.contains("after the repair"), "{text}");
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");
    let after = fleet(&store, &hosts, &[], &["drift", "--on", host]);
    assert_ok(&after);
    assert_eq!(stdout(&after), format!("{host}: no drift\n"));

    // A host whose state names no current generation (its state removed) has nothing to be
    // compared with: drift says so and fails, rather than "no drift".
    let state = "/var/lib/forjar/machine";
    assert_ok(&hosts.ssh(0, &format!("mv {state}/current {state}/current.kept")));
    for args in [&["drift"][..], &["drift", "--repair"]] {
        let none = fleet(&store, &hosts, &[], args);
        let text = stdout(&none);
        assert_eq!(none.status.code(), Some(1), "{args:?}\n{text}");
        assert!(
            text.contains(hosts.name(0))
                && text.contains("no generation is current on this host")
                && text.contains("`apply` deploys one")
                && !text.contains("no drift"),
            "{args:?}\n{text}"
        );
    }
    assert_ok(&hosts.ssh(0, &format!("mv {state}/current.kept {state}/current")));
}

#[test]
fn an_apply_puts_back_what_drifted_on_a_host_that_runs_its_system_already() {
    let Some((hosts, _dir, store)) = one_host_deployed() else {
        return;
    };
    // Changed by hand: the greeting, and the service restarted to serve it; the server's
    // mode.
    assert_ok(&hosts.ssh(
        0,
        "sed -i 's/hello from forjar/edited by hand/' /etc/hello/config.toml; \
         systemctl restart hello; chmod 644 /opt/hello/server.py",
    ));
    assert_eq!(hosts.http_get(0, 8080), "edited by hand");
    let plan = fleet(&store, &hosts, &[], &["plan"]);
    let text = stdout(&plan);
    assert!(
        text.contains("  runs this system already\n")
            && text.contains("  put back what drifted:\n    /etc/hello/config.toml: content is")
            && text.contains("    /opt/hello/server.py: mode is 0644, expected 0755\n"),
        "{text}"
    );

    let apply = fleet(&store, &hosts, &[], &["apply"]);
    assert_ok(&apply);
    let row = summary_line(&apply, hosts.name(0));
    assert!(
        row.contains("unchanged, generation 1")
            && row.ends_with("put back what drifted: /etc/hello/config.toml, /opt/hello/server.py"),
        "{row}"
    );
    assert!(
        stderr(&apply).contains("restarting hello.service: a file it reads was put back"),
        "{}",
        stderr(&apply)
    );
    // The service was restarted: it serves the program's greeting again.
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");
    let drift = fleet(&store, &hosts, &[], &["drift"]);
    assert_ok(&drift);
    assert_eq!(stdout(&drift), format!("{}: no drift\n", hosts.name(0)));

    // With nothing drifted, nothing is put back or restarted.
    let again = fleet(&store, &hosts, &[], &["apply"]);
    assert_ok(&again);
    assert!(
        summary_line(&again, hosts.name(0))
            .trim_end()
            .ends_with("unchanged, generation 1  -"),
        "{}",
        stdout(&again)
    );
    assert!(!stderr(&again).contains("restarting"), "{}", stderr(&again));
}

#[test]
fn a_host_that_cannot_be_reached_fails_by_name_and_the_others_are_deployed() {
    let Some(hosts) = TestHosts::up(1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");

    // A host whose key is not the one known: refused, strictly.
    let key = new_key(&dir.path().join("other"));
    let wrong_known = dir.path().join("known_hosts");
    std::fs::write(&wrong_known, format!("{} {key}\n", hosts.hosts[0].1)).unwrap();
    let wrong_config = ssh_config_with(
        &hosts,
        &dir.path().join("ssh_config"),
        &hosts.dir.join("known_hosts"),
        &wrong_known,
    );
    let fleet_exe = example("fleet");
    let output = fleet_command(&fleet_exe, &store, hosts.name(0), &wrong_config)
        .arg("apply")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let line = summary_line(&output, hosts.name(0));
    assert!(line.contains("failed") && line.contains("key"), "{line}");

    // An unreachable host beside a good one: the good one is deployed.
    let names = format!("{},10.255.255.1", hosts.name(0));
    let output = fleet_command(&fleet_exe, &store, &names, &hosts.ssh_config())
        .arg("apply")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(summary_line(&output, hosts.name(0)).contains("activated generation 1"));
    let line = summary_line(&output, "10.255.255.1");
    assert!(
        line.contains("cannot connect to `10.255.255.1`") && line.contains("unreachable"),
        "{line}"
    );
}

#[test]
fn a_connection_dropped_during_copy_or_activation_leaves_a_whole_generation_and_a_rerun_completes()
{
    let Some(hosts) = TestHosts::up(1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();

    // Twenty moments, 150 ms apart: each round deploys from a fresh store (so the agent, some
    // 100 MiB, is copied again before the activation), and the link goes down for 3 s.
    for round in 0..20u64 {
        let store = dir.path().join(format!("store-{round}"));
        let greeting = format!("round {round}");
        let env = [("FLEET_GREETING", greeting.as_str())];
        let child = fleet_command(
            &example("fleet"),
            &store,
            hosts.name(0),
            &hosts.ssh_config(),
        )
        .env("FLEET_GREETING", &greeting)
        .arg("apply")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150 * round));
        hosts.link(0, false);
        std::thread::sleep(std::time::Duration::from_secs(3));
        hosts.link(0, true);
        let first = child.wait_with_output().unwrap();
        // A rerun completes, and the host is on a whole generation.
        let rerun = fleet(&store, &hosts, &env, &["apply"]);
        if !rerun.status.success() {
            // What the host saw: the unit's journal and both runs' activation logs.
            let host = hosts.ssh(
                0,
                "journalctl --no-pager -o short-precise -n 60 -u hello.service; \
                 cd /var/lib/forjar/machine/activations && tail -n 30 $(ls -tr | tail -n 6)",
            );
            panic!(
                "round {round}: the rerun failed ({})\n{}\n{}\nfirst run ({}):\n{}\n{}\n\
                 the host:\n{}",
                rerun.status,
                stdout(&rerun),
                stderr(&rerun),
                first.status,
                stdout(&first),
                stderr(&first),
                stdout(&host)
            );
        }
        let line = summary_line(&rerun, hosts.name(0));
        assert!(
            line.contains("activated generation") || line.contains("unchanged"),
            "round {round}: {line}\nfirst run: {}\n{}",
            stdout(&first),
            stderr(&first)
        );
        assert_eq!(hosts.http_get(0, 8080), greeting);
        let drift = fleet(&store, &hosts, &env, &["drift"]);
        assert!(stdout(&drift).contains("no drift"), "{}", stdout(&drift));
        // Nothing partial is left: a receiver cut off gives up within its idle limit (20 s)
        // and removes its staging.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let partial = hosts.ssh(0, &format!("ls -A {}/.tmp", store.display()));
            if stdout(&partial).trim().is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: a partial entry stays in the host's store: {}",
                stdout(&partial)
            );
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        // The host's store has the controller's path, under /tmp, which on the host is
        // systemd-nspawn's tmpfs of 2.4 GiB: each round's store holds the agent (the debug
        // program, over 100 MiB), so the last round's goes once this one has taken over.
        if round > 0 {
            let last = dir.path().join(format!("store-{}", round - 1));
            assert_ok(&hosts.ssh(0, &format!("rm -rf {}", last.display())));
        }
    }

    // A reboot brings the host back on its current generation.
    hosts.restart(0);
    assert_eq!(hosts.http_get(0, 8080), "round 19");
}

#[test]
fn a_unit_started_five_times_in_ten_seconds_is_still_restarted_by_an_apply_and_a_rollback() {
    let Some((hosts, _dir, store)) = one_host_deployed() else {
        return;
    };
    // Five starts within 10 s (a crash loop's automatic restarts, an operator, applies in a
    // row): systemd refuses the sixth unless the unit's start counter is reset first.
    assert_ok(&hosts.ssh(
        0,
        "systemctl reset-failed hello.service && \
         for i in 1 2 3 4 5; do systemctl restart hello.service || exit 1; done",
    ));
    let env = [("FLEET_GREETING", "sixth")];
    let output = fleet(&store, &hosts, &env, &["apply"]);
    assert_ok(&output);
    let line = summary_line(&output, hosts.name(0));
    assert!(line.contains("activated generation 2"), "{line}");
    assert_eq!(hosts.http_get(0, 8080), "sixth");
    // And the seventh, a rollback's.
    let back = fleet(&store, &hosts, &env, &["rollback", "--on", hosts.name(0)]);
    assert_ok(&back);
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");
}

#[test]
fn two_applies_at_once_are_serialised_by_the_host() {
    let Some((hosts, _dir, store)) = one_host_deployed() else {
        return;
    };
    let spawn = |greeting: &str| {
        fleet_command(
            &example("fleet"),
            &store,
            hosts.name(0),
            &hosts.ssh_config(),
        )
        .env("FLEET_GREETING", greeting)
        .arg("apply")
        .output()
        .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn("first"));
        let b = s.spawn(|| spawn("second"));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ok(&a);
    assert_ok(&b);
    // Each says which generation it found when it took the host, not what its plan saw.
    let mut lines = [
        summary_line(&a, hosts.name(0)),
        summary_line(&b, hosts.name(0)),
    ];
    lines.sort_by_key(|l| l.contains("generation 3"));
    assert!(
        lines[0].contains("activated generation 2 (was 1)")
            && lines[1].contains("activated generation 3 (was 2)"),
        "{lines:#?}"
    );
    let generations = fleet(&store, &hosts, &[], &["generations", "--on", hosts.name(0)]);
    let listing = stdout(&generations);
    assert!(
        listing.contains("   3  "),
        "both were activated, one after the other:\n{listing}"
    );
    let answer = hosts.http_get(0, 8080);
    assert!(answer == "first" || answer == "second", "{answer}");
    let drift = fleet(&store, &hosts, &[], &["drift"]);
    assert!(stdout(&drift).contains("no drift"), "{}", stdout(&drift));
}

#[test]
fn a_full_disk_or_a_refused_login_fails_that_host_by_name_and_not_the_others() {
    let Some(hosts) = TestHosts::up(2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");

    // Host 1's store is on a file system too small for the closure.
    let full = hosts.ssh(
        0,
        &format!(
            "mkdir -p {0} && mount -t tmpfs -o size=8m tmpfs {0}",
            store.display()
        ),
    );
    assert_ok(&full);
    let output = fleet(&store, &hosts, &[], &["apply"]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let line = summary_line(&output, hosts.name(0));
    assert!(line.contains("No space left on device"), "{line}");
    assert!(summary_line(&output, hosts.name(1)).contains("activated generation 1"));
    let left = hosts.ssh(0, &format!("ls -A {0}/.tmp; ls {0}", store.display()));
    assert!(
        !stdout(&left).contains("forjar-agent") && !stdout(&left).contains("system-"),
        "nothing partial was installed: {}",
        stdout(&left)
    );
    // With room again, the next apply completes.
    assert_ok(&hosts.ssh(0, &format!("umount {}", store.display())));
    let output = fleet(&store, &hosts, &[], &["apply"]);
    assert_ok(&output);
    assert!(summary_line(&output, hosts.name(0)).contains("activated generation 1"));

    // A key the hosts do not accept: the login is refused, by name.
    let stranger = dir.path().join("stranger");
    new_key(&stranger);
    let config = ssh_config_with(
        &hosts,
        &dir.path().join("ssh_config"),
        &hosts.dir.join("id_ed25519"),
        &stranger,
    );
    let output = fleet_command(&example("fleet"), &store, hosts.name(0), &config)
        .arg("drift")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(
        text.contains(hosts.name(0)) && text.contains("the login was refused"),
        "{text}"
    );
}

#[test]
fn a_mistake_in_a_machine_is_an_invalid_program_naming_the_machine_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(example("fleet"))
        .env("FLEET_HOSTS", "web 1")
        .arg("--store")
        .arg(dir.path())
        .arg("plan")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("machine `web 1` (at examples/fleet/main.rs:"),
        "{text}"
    );
    assert!(
        text.contains("address `web 1` is not a host name"),
        "{text}"
    );
}

#[test]
fn an_ssh_config_that_cannot_be_read_is_named_once_before_any_host_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-config");
    for (config, why) in [
        (missing.as_path(), "No such file or directory"),
        (dir.path(), "is a directory"),
    ] {
        let output = fleet_command(
            &example("fleet"),
            &dir.path().join("store"),
            "web1,web2",
            config,
        )
        .arg("plan")
        .output()
        .unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        let text = stderr(&output);
        assert!(
            text.contains(&format!("--ssh-config `{}`", config.display()))
                && text.contains(why)
                && !text.contains("web1"),
            "{text}"
        );
        assert!(!dir.path().join("store").exists(), "{text}");
    }
}

/// A machine command of a user at its limit on processes and threads (`ulimit -u`): the command
/// for the host cannot start the threads that feed and read it, which is said for that host,
/// with the limit, and is no panic. The machine is the one the program runs on (`local`, no
/// SSH), as `nobody`: with room, the same command reaches it.
#[test]
fn a_machine_command_at_the_thread_limit_says_so_for_the_host() {
    if !forjar_suite::as_root("running a program as another user") {
        return;
    }
    let dir = forjar_suite::open_dir_with("fleet");
    let store = dir.path().join("store");
    let drift = |nproc| {
        forjar_suite::as_nobody(
            &dir.path().join("fleet"),
            dir.path(),
            nproc,
            &["--store", store.to_str().unwrap(), "drift"],
            &[("FLEET_HOSTS", "local")],
        )
    };
    // Each host's result is in the report on standard output.
    let said = |out: &Output| format!("{}{}", stdout(out), stderr(out));
    let out = drift(Some(1));
    let text = said(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        text.contains("local: cannot start a thread for the command"),
        "{text}"
    );
    assert!(
        text.contains("this user's processes and threads are at their limit, `ulimit -u` = 1"),
        "{text}"
    );
    // With room, the command runs (what it finds depends on this machine: on a fresh one, no
    // agent).
    let out = drift(None);
    let text = said(&out);
    assert!(!text.contains("cannot start a thread"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn an_activator_killed_midway_is_reported_and_the_next_apply_returns_then_activates() {
    use std::io::BufRead;
    let Some((hosts, _dir, store)) = one_host_deployed() else {
        return;
    };

    // Kill the activator while it restarts the service (it then waits for the unit to settle).
    let mut child = fleet_command(
        &example("fleet"),
        &store,
        hosts.name(0),
        &hosts.ssh_config(),
    )
    .env("FLEET_GREETING", "killed")
    .arg("apply")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let stderr_lines = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    for line in stderr_lines.lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.ends_with("restarting hello.service") {
            assert_ok(&hosts.ssh(0, "pkill -KILL -f '__agent.*run-activation'"));
        }
    }
    let first = child.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(1), "{seen}{}", stdout(&first));
    let line = summary_line(&first, hosts.name(0));
    assert!(line.contains("ended without an outcome"), "{line}\n{seen}");

    // The next apply takes the host back from the half-done generation, then activates.
    let rerun = fleet(&store, &hosts, &[("FLEET_GREETING", "killed")], &["apply"]);
    assert_ok(&rerun);
    assert!(
        stderr(&rerun).contains("was interrupted; returning to 1"),
        "{}",
        stderr(&rerun)
    );
    assert!(summary_line(&rerun, hosts.name(0)).contains("activated generation 3"));
    assert_eq!(hosts.http_get(0, 8080), "killed");
    let generations = fleet(&store, &hosts, &[], &["generations", "--on", hosts.name(0)]);
    assert!(
        stdout(&generations).contains("rolled-back"),
        "generation 2 is marked: {}",
        stdout(&generations)
    );
}

#[test]
fn the_local_machine_is_changed_without_ssh() {
    let Some(hosts) = TestHosts::up(1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // The host gets the server's build from this store (it has no sandbox of its own inside
    // the container), then runs the program itself against `Machine::local`.
    assert_ok(&fleet(&store, &hosts, &[], &["apply"]));
    let copy = Command::new("ssh")
        .arg("-F")
        .arg(hosts.ssh_config())
        .args([
            hosts.name(0),
            "cat > /usr/local/bin/fleet && chmod 755 /usr/local/bin/fleet",
        ])
        .stdin(std::fs::File::open(example("fleet")).unwrap())
        .output()
        .unwrap();
    assert_ok(&copy);
    let local = hosts.ssh(
        0,
        &format!(
            "FLEET_HOSTS=local FLEET_GREETING=local fleet --store {} apply",
            store.display()
        ),
    );
    assert_ok(&local);
    let line = summary_line(&local, "local");
    assert!(line.contains("activated generation 2"), "{line}");
    assert_eq!(hosts.http_get(0, 8080), "local");

    // Its store is the program's own: collected from the local machine's generations and the
    // program's roots, it keeps what both need.
    let run = |command: &str| {
        hosts.ssh(
            0,
            &format!(
                "FLEET_HOSTS=local FLEET_GREETING=local fleet --store {} {command}",
                store.display()
            ),
        )
    };
    let gc = run("gc --on local");
    assert_ok(&gc);
    assert!(stdout(&gc).contains("local: deleted "), "{}", stdout(&gc));
    let drift = run("drift --on local");
    assert_ok(&drift);
    assert!(
        stdout(&drift).contains("local: no drift"),
        "{}",
        stdout(&drift)
    );
    let again = run("apply");
    assert_ok(&again);
    assert!(summary_line(&again, "local").contains("unchanged, generation 2"));
    assert_eq!(hosts.http_get(0, 8080), "local");

    // Keeping one generation: the older goes; the store, the program's own, is left to `gc`.
    let kept = hosts.ssh(
        0,
        &format!(
            "FLEET_HOSTS=local FLEET_GREETING=local FLEET_KEEP_GENERATIONS=1 fleet --store {} \
             apply",
            store.display()
        ),
    );
    assert_ok(&kept);
    let line = summary_line(&kept, "local");
    assert!(
        line.contains("unchanged, generation 2")
            && line.contains("deleted generation 1")
            && !line.contains("freeing"),
        "{line}"
    );
    assert_eq!(hosts.http_get(0, 8080), "local");
}

#[test]
fn a_link_a_user_placed_on_the_way_to_a_managed_path_is_not_followed() {
    let Some((hosts, _dir, store)) = one_host_deployed() else {
        return;
    };
    // A directory on the way to a managed file, replaced by a link another user owns.
    assert_ok(&hosts.ssh(
        0,
        "mkdir -p /tmp/elsewhere && ln -s /tmp/elsewhere /etc/hello/extra && \
         chown -h nobody /etc/hello/extra",
    ));
    let output = fleet(&store, &hosts, &[("FLEET_EXTRA_FILES", "1")], &["apply"]);
    assert_eq!(output.status.code(), Some(4), "{}", stdout(&output));
    let line = summary_line(&output, hosts.name(0));
    assert!(
        line.contains("rolled back")
            && line.contains("/etc/hello/extra")
            && line.contains("symlink"),
        "{line}"
    );
    let elsewhere = hosts.ssh(0, "ls -A /tmp/elsewhere");
    assert_eq!(
        stdout(&elsewhere).trim(),
        "",
        "nothing was written through the link"
    );
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");
}

#[test]
fn a_change_that_cuts_the_controller_off_is_undone_by_the_host_itself() {
    let Some((hosts, _dir, store)) = one_host_deployed() else {
        return;
    };

    // sshd moves to port 2222: the activation and its health check pass, but the controller
    // cannot reach the host over a new connection to confirm, so the host goes back.
    let env = [("FLEET_SSH_PORT", "2222"), ("FLEET_GREETING", "moved")];
    let cut = fleet(&store, &hosts, &env, &["apply", "--confirm-timeout", "10"]);
    assert_eq!(
        cut.status.code(),
        Some(4),
        "exit 4 says rolled back\n{}\n{}",
        stdout(&cut),
        stderr(&cut)
    );
    assert!(
        stderr(&cut).contains("restarting ssh.service"),
        "{}",
        stderr(&cut)
    );
    let line = summary_line(&cut, hosts.name(0));
    assert!(line.contains("rolled back to generation 1"), "{line}");
    assert!(
        line.contains("did not confirm within 10 s") && line.contains("new connection failed"),
        "{line}"
    );
    // sshd is back on port 22 alone (this very command reaches it there), without the drop-in.
    let listening = hosts.ssh(
        0,
        "test ! -e /etc/ssh/sshd_config.d/forjar-port.conf && \
         awk '$4 == \"0A\" { print $2 }' /proc/net/tcp /proc/net/tcp6",
    );
    assert_ok(&listening);
    assert!(
        !stdout(&listening).contains(":08AE"),
        "nothing listens on 2222: {}",
        stdout(&listening)
    );
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");
    let generations = fleet(&store, &hosts, &[], &["generations", "--on", hosts.name(0)]);
    assert!(
        stdout(&generations).contains("rolled-back"),
        "{}",
        stdout(&generations)
    );
}

#[test]
fn a_failing_health_check_rolls_the_host_back() {
    let Some((hosts, _dir, store)) = one_host_deployed() else {
        return;
    };
    let env = [
        ("FLEET_GREETING", "unchecked"),
        ("FLEET_UNHEALTHY", hosts.name(0)),
    ];
    let failed = fleet(&store, &hosts, &env, &["apply"]);
    assert_eq!(failed.status.code(), Some(4), "{}", stdout(&failed));
    let line = summary_line(&failed, hosts.name(0));
    assert!(line.contains("rolled back to generation 1"), "{line}");
    assert!(
        line.contains("hello.service: health check GET http://127.0.0.1:8080/ answers 200")
            && line.contains("after 7 attempts"),
        "the failure names the unit, the check and what it saw: {line}"
    );
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");
}

#[test]
fn rolling_waves_stop_when_the_failure_budget_is_spent() {
    let Some(hosts) = TestHosts::up(4) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    assert_ok(&fleet(&store, &hosts, &[], &["apply"]));
    let json = |output: &Output| -> serde_json::Value {
        serde_json::from_str(&stdout(output))
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(output), stderr(output)))
    };
    let result = |value: &serde_json::Value, i: usize| -> String {
        let host = &value["hosts"][i];
        assert_eq!(host["machine"], hosts.name(i));
        host["result"].as_str().unwrap().to_string()
    };

    // One host a wave; one failure allowed. Hosts 1 and 2 fail their check: after the second
    // failure no wave starts, host 3 is not touched, and host 0, which took the change, is
    // taken back.
    let unhealthy = format!("{},{}", hosts.name(1), hosts.name(2));
    let env = [
        ("FLEET_GREETING", "second"),
        ("FLEET_UNHEALTHY", unhealthy.as_str()),
    ];
    let args = [
        "apply",
        "--serial",
        "1",
        "--max-fail",
        "1",
        "--rollback-all",
        "--json",
    ];
    let rollout = fleet(&store, &hosts, &env, &args);
    assert_eq!(rollout.status.code(), Some(1), "{}", stderr(&rollout));
    let value = json(&rollout);
    let results: Vec<String> = (0..4).map(|i| result(&value, i)).collect();
    assert_eq!(
        results,
        ["rolled-back", "rolled-back", "rolled-back", "skipped"],
        "{value:#}"
    );
    assert_eq!(value["stopped_before_wave"], 4, "{value:#}");
    assert!(
        value["hosts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("--rollback-all"),
        "{value:#}"
    );
    for i in 0..4 {
        assert_eq!(hosts.http_get(i, 8080), "hello from forjar", "host {i}");
    }
    let untouched = fleet(&store, &hosts, &[], &["generations", "--on", hosts.name(3)]);
    assert!(
        !stdout(&untouched).contains("   2  "),
        "{}",
        stdout(&untouched)
    );

    // A canary that fails stops the rollout before any other host; the table says so.
    let env = [
        ("FLEET_GREETING", "third"),
        ("FLEET_UNHEALTHY", hosts.name(0)),
    ];
    let canary = fleet(
        &store,
        &hosts,
        &env,
        &["apply", "--canary", "--serial", "50%"],
    );
    assert_eq!(canary.status.code(), Some(1), "{}", stdout(&canary));
    assert!(summary_line(&canary, hosts.name(0)).contains("rolled back"));
    for i in 1..4 {
        assert!(summary_line(&canary, hosts.name(i)).contains("skipped, not contacted"));
    }
    assert!(
        stdout(&canary).contains("stopped before wave 2 of 3"),
        "{}",
        stdout(&canary)
    );
}

#[test]
fn a_secret_reaches_the_host_on_tmpfs_and_nowhere_else() {
    let Some(hosts) = TestHosts::up(1) else {
        return;
    };
    // The host's store is at the controller's store's path: not under /tmp, which is tmpfs
    // on the host and would be emptied by the restart below.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let store = dir.path().join("store");
    let poison = format!("poison-{}-{}", std::process::id(), hosts.name(0));
    let env = [("FLEET_TOKEN", poison.as_str())];
    let mut outputs = vec![fleet(&store, &hosts, &env, &["plan"])];
    let apply = fleet(&store, &hosts, &env, &["apply"]);
    assert_ok(&apply);
    outputs.push(apply);

    // On the host: the value, the service's user only, on tmpfs.
    let written = hosts.ssh(
        0,
        "cat /run/hello/token; echo; stat -c '%U %a' /run/hello/token; stat -f -c %T /run/hello; \
         systemctl show -p MainPID --value hello",
    );
    assert_ok(&written);
    let lines: Vec<String> = stdout(&written).lines().map(str::to_string).collect();
    assert_eq!(lines[0], poison);
    assert_eq!(lines[1], "hello 400");
    assert_eq!(lines[2], "tmpfs");
    let pid = lines[3].clone();

    // The same value again: nothing restarts. A new one: the service restarts.
    outputs.push(fleet(&store, &hosts, &env, &["apply"]));
    let same = hosts.ssh(0, "systemctl show -p MainPID --value hello");
    assert_eq!(
        stdout(&same).trim(),
        pid,
        "an unchanged secret restarts nothing"
    );
    let rotated = format!("{poison}-rotated");
    let env2 = [("FLEET_TOKEN", rotated.as_str())];
    let again = fleet(&store, &hosts, &env2, &["apply"]);
    assert_ok(&again);
    assert!(
        stderr(&again).contains("restarting hello.service: a secret it reads changed"),
        "{}",
        stderr(&again)
    );
    outputs.push(again);
    let after = hosts.ssh(
        0,
        "cat /run/hello/token; echo; systemctl show -p MainPID --value hello",
    );
    let after: Vec<String> = stdout(&after).lines().map(str::to_string).collect();
    assert_eq!(after[0], rotated);
    assert_ne!(after[1], pid, "a new value restarted the service");
    for command in [&["drift"][..], &["generations", "--on", hosts.name(0)]] {
        let output = fleet(&store, &hosts, &env2, command);
        assert_ok(&output);
        outputs.push(output);
    }

    // Nowhere else: not in what the program printed, the controller's store and machine
    // records, or the host's store, state, configuration, logs and journal.
    for output in &outputs {
        for text in [stdout(output), stderr(output)] {
            assert!(!text.contains(&poison), "printed: {text}");
        }
    }
    let grep = Command::new("grep")
        .args(["-rlaF", &poison])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        grep.status.code(),
        Some(1),
        "the controller keeps it in: {}",
        stdout(&grep)
    );
    let host_grep = hosts.ssh(
        0,
        &format!(
            "grep -rlaF '{poison}' /var/lib/forjar /etc /opt /var/log /root /tmp /var/tmp; \
             journalctl --no-pager | grep -cF '{poison}'"
        ),
    );
    assert_eq!(
        stdout(&host_grep).trim(),
        "0",
        "the host keeps it outside /run/hello: {}",
        stdout(&host_grep)
    );

    // tmpfs is empty after a restart: drift says so, and the next apply writes it again.
    hosts.restart(0);
    let drift = fleet(&store, &hosts, &env2, &["drift"]);
    assert!(
        stdout(&drift).contains("/run/hello/token: secret missing"),
        "{}",
        stdout(&drift)
    );
    assert_ok(&fleet(&store, &hosts, &env2, &["apply"]));
    let back = hosts.ssh(0, "cat /run/hello/token");
    assert_eq!(stdout(&back), rotated);
}

#[test]
fn a_host_reachable_only_through_another_is_deployed_through_it() {
    let Some(hosts) = TestHosts::up(2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // Host 1 on a cable from host 0 only: its own link to the controller is down.
    let behind = hosts.wire(0, 1);
    hosts.link(1, false);
    let fleet_exe = example("fleet");
    let direct = fleet_command(&fleet_exe, &store, &behind, &hosts.ssh_config())
        .arg("apply")
        .output()
        .unwrap();
    assert_eq!(direct.status.code(), Some(1), "{}", stdout(&direct));

    let through = |args: &[&str]| {
        fleet_command(&fleet_exe, &store, &behind, &hosts.ssh_config())
            .env("FLEET_JUMP", hosts.name(0))
            .args(args)
            .output()
            .unwrap()
    };
    let apply = through(&["apply"]);
    assert_ok(&apply);
    let line = summary_line(&apply, &behind);
    assert!(line.contains("activated generation 1"), "{line}");
    // Confirmed over a new connection through the jump host, and read back through it.
    assert!(
        stderr(&apply).contains("confirmed by the controller"),
        "{}",
        stderr(&apply)
    );
    let drift = through(&["drift"]);
    assert_ok(&drift);
    assert!(stdout(&drift).contains("no drift"), "{}", stdout(&drift));
    let again = through(&["apply"]);
    assert!(summary_line(&again, &behind).contains("unchanged, generation 1"));
    hosts.link(1, true);
}

#[test]
fn twenty_hosts_with_three_links_dropped_during_a_rolling_deploy() {
    let Some(hosts) = TestHosts::up(20) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    assert_ok(&fleet(&store, &hosts, &[], &["apply"]));

    // Waves of 5, three failures allowed. Three hosts of the second wave lose their link as
    // they begin to activate: the controller can neither follow them nor confirm, so they go
    // back by themselves once their wait for the confirmation ends, the controller reports them
    // failed (it cannot reach them), and the rollout goes on. (Dropped at the wait itself, the
    // link raced the confirmation, which sometimes reached the host first.)
    let dropped: Vec<usize> = vec![5, 7, 9];
    let names: Vec<&str> = (0..20).map(|i| hosts.name(i)).collect();
    let mut command = fleet_command(
        &example("fleet"),
        &store,
        &names.join(","),
        &hosts.ssh_config(),
    );
    command.env("FLEET_GREETING", "second").args([
        "apply",
        "--serial",
        "5",
        "--max-fail",
        "3",
        "--confirm-timeout",
        "8",
    ]);
    let mut apply = forjar_suite::Watched::spawn(command);
    let mut down = Vec::new();
    apply.watch(|line| {
        for &i in &dropped {
            let activating = format!("{}: generation 2: activating", hosts.name(i));
            if !down.contains(&i) && line.starts_with(&activating) {
                hosts.link(i, false);
                down.push(i);
            }
        }
        down.len() == dropped.len()
    });
    let (status, log, out) = apply.finish_with_stdout();
    assert_eq!(status.code(), Some(1), "{out}\n{log}");
    for &i in &dropped {
        hosts.link(i, true);
    }
    let line = |i: usize| {
        out.lines()
            .find(|l| l.starts_with(&format!("{} ", hosts.name(i))))
            .unwrap_or_else(|| panic!("no line for host {i}:\n{out}"))
            .to_string()
    };
    for i in 0..20 {
        let line = line(i);
        if dropped.contains(&i) {
            assert!(
                line.contains(" failed ") && line.contains("could not reconnect"),
                "{line}"
            );
        } else {
            assert!(line.contains("activated generation 2 (was 1)"), "{line}");
        }
    }
    assert!(
        out.contains("20 hosts: 17 activated, 0 unchanged, 0 rolled back, 3 failed, 0 skipped"),
        "{out}"
    );
    // The three went back by themselves, and answer with the first greeting.
    for &i in &dropped {
        assert_eq!(hosts.http_get(i, 8080), "hello from forjar", "host {i}");
    }
    let generations = fleet(
        &store,
        &hosts,
        &[],
        &["generations", "--on", hosts.name(dropped[0])],
    );
    assert!(
        stdout(&generations).contains("rolled-back"),
        "{}",
        stdout(&generations)
    );
    assert_eq!(hosts.http_get(0, 8080), "second");
}

/// Runs `command` on a terminal of its own, types Ctrl-C once it shows `text`, and returns what
/// the terminal showed; checks that the program said what a Ctrl-C does (`notice`) and exited
/// 130.
fn ctrl_c_once_shown(command: Command, text: &str, notice: &str) -> String {
    let terminal = forjar_suite::OnTerminal::spawn(command);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !terminal.shown().contains(text) {
        assert!(
            std::time::Instant::now() < deadline,
            "`{text}` never shown:\n{}",
            terminal.shown()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    terminal.type_keys(b"\x03");
    let (shown, status) = terminal.finish();
    assert_eq!(status.code(), Some(130), "{shown}");
    assert!(shown.contains(notice), "{shown}");
    shown
}

/// What a deploy or a rollback says of a Ctrl-C.
const ACTIVATIONS_GO_ON: &str = "interrupted: a host activating goes on to its outcome";

#[test]
fn ctrl_c_during_a_deploy_activates_no_other_host_and_says_what_it_left() {
    let Some(hosts) = TestHosts::up(2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // Two waves of one host, on a terminal: Ctrl-C is typed while the first host gets the
    // agent (its link slowed so that the upload lasts), before the second wave. A Ctrl-C
    // reaches the terminal's whole process group: what forjar runs there must not die of it.
    hosts.rate(0, Some("4mbit"));
    let names = [hosts.name(0), hosts.name(1)].join(",");
    let mut command = fleet_command(&example("fleet"), &store, &names, &hosts.ssh_config());
    command.args(["apply", "--serial", "1"]);
    let shown = ctrl_c_once_shown(command, "installing the agent", ACTIVATIONS_GO_ON);
    assert!(!shown.contains("lost the connection"), "{shown}");
    let row = |i: usize| {
        shown
            .lines()
            .find(|l| l.starts_with(&format!("{}  ", hosts.name(i))))
            .unwrap_or_else(|| panic!("no summary row for host {i}:\n{shown}"))
            .to_string()
    };
    let second = row(1);
    assert!(
        second.contains("skipped, not contacted")
            && second.contains("interrupted before this host was contacted"),
        "{second}"
    );
    assert_ok(&hosts.ssh(1, "test ! -e /var/lib/forjar/machine/current"));
    // The first's upload was cut short: nothing of it is installed, its system is as it was.
    let first = row(0);
    assert!(
        first.contains("interrupted, never activated")
            && first.contains("interrupted before its activation"),
        "{first}"
    );
    assert_ok(&hosts.ssh(0, "test ! -e /var/lib/forjar/machine/current"));
    assert!(
        shown.contains("interrupted: 2 hosts left as they were")
            && shown.contains(
                "2 hosts: 0 activated, 0 unchanged, 0 rolled back, 0 failed, 1 skipped, \
                 1 interrupted"
            ),
        "{shown}"
    );
    hosts.rate(0, None);
    // Nothing was left half done: the next apply deploys both.
    let again = fleet(&store, &hosts, &[], &["apply"]);
    assert_ok(&again);
    for i in 0..2 {
        assert_eq!(hosts.http_get(i, 8080), "hello from forjar", "host {i}");
    }
}

#[test]
fn ctrl_c_during_a_rollback_lets_the_one_under_way_end_and_starts_no_other() {
    let Some(hosts) = TestHosts::up(2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    assert_ok(&fleet(&store, &hosts, &[], &["apply"]));
    assert_ok(&fleet(
        &store,
        &hosts,
        &[("FLEET_GREETING", "second")],
        &["apply"],
    ));
    // One host at a time, on a terminal: Ctrl-C is typed while the first goes back.
    let names = [hosts.name(0), hosts.name(1)].join(",");
    let mut command = fleet_command(&example("fleet"), &store, &names, &hosts.ssh_config());
    command.args(["--max-hosts", "1", "rollback", "--on", &names]);
    let shown = ctrl_c_once_shown(command, "rolling back", ACTIVATIONS_GO_ON);
    assert!(
        shown.contains(&format!("{}: now on generation 3", hosts.name(0))),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "{}: interrupted before this host was contacted",
            hosts.name(1)
        )),
        "{shown}"
    );
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");
    assert_eq!(hosts.http_get(1, 8080), "second");
}

#[test]
fn a_host_without_gzip_gets_the_agent_as_it_is() {
    let Some(hosts) = TestHosts::up(1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    assert_ok(&hosts.ssh(0, "mv /usr/bin/gzip /usr/bin/gzip.away"));
    let apply = fleet(&store, &hosts, &[], &["apply"]);
    assert_ok(&apply);
    let line = summary_line(&apply, hosts.name(0));
    assert!(line.contains("activated generation 1"), "{line}");
    // The compressed upload was read and dropped, then the agent went as it is: the program's
    // binary without its debugging information.
    let [agent] = &agents_in(&store)[..] else {
        panic!("one agent: {:?}", agents_in(&store));
    };
    let agent = std::fs::metadata(store.join(agent).join("content"))
        .unwrap()
        .len();
    let binary = std::fs::metadata(example("fleet")).unwrap().len();
    assert!(agent < binary, "agent {agent} bytes, binary {binary}");
    assert!(sent_bytes(&apply, hosts.name(0)) > agent, "{line}");
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");
}

/// The fleet example's binary with the agent's `--help` text changed at `text` (same length): a
/// program rebuilt with a small change, which runs as the example does.
fn rebuilt_fleet(dir: &Path, text: &[u8]) -> PathBuf {
    let binary = std::fs::read(example("fleet")).unwrap();
    let was: &[u8] = b"run by the controller";
    assert_eq!(was.len(), text.len());
    let at = binary
        .windows(was.len())
        .position(|w| w == was)
        .expect("the agent's help text is in the binary");
    let mut rebuilt = binary;
    rebuilt[at..at + was.len()].copy_from_slice(text);
    let path = dir.join(String::from_utf8_lossy(text).replace(' ', "-"));
    std::fs::write(&path, rebuilt).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// The store's entries of agents, by name.
fn agents_in(store: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-forjar-agent"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_rebuilt_program_sends_its_agent_as_a_change_to_the_one_the_host_runs() {
    let Some((hosts, dir, store)) = one_host_deployed() else {
        return;
    };
    let [first] = &agents_in(&store)[..] else {
        panic!("one agent: {:?}", agents_in(&store));
    };
    let compressed = std::fs::metadata(store.join(format!(".machines/agents/{first}.gz")))
        .unwrap()
        .len();

    // Rebuilt: the new agent goes as a change to the one the host runs, which makes it.
    let rebuilt = rebuilt_fleet(dir.path(), b"run by the CONTROLLER");
    let apply = fleet_program(&rebuilt, &store, &hosts, &[], &["apply"]);
    assert_ok(&apply);
    let line = summary_line(&apply, hosts.name(0));
    assert!(line.contains("activated generation 2 (was 1)"), "{line}");
    let tried = "sent as a change to the agent it has)";
    assert!(stderr(&apply).contains(tried), "{}", stderr(&apply));
    let sent = sent_bytes(&apply, hosts.name(0));
    assert!(
        sent < compressed / 20,
        "{sent} bytes sent; the whole agent compressed is {compressed}: {line}"
    );
    let second = agents_in(&store)
        .into_iter()
        .find(|a| a != first)
        .expect("a second agent");
    // The host runs it, verified into its store, and it is the rebuilt one.
    let help = hosts.ssh(
        0,
        &format!("{}/{second}/content __agent --help", store.display()),
    );
    assert!(stdout(&help).contains("run by the CONTROLLER"), "{help:?}");
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");

    // An agent that cannot make agents from changes (as one from before they were sent) is
    // no failure: the new agent goes whole, compressed, after the change it could not use.
    let content = format!("{}/{second}/content", store.display());
    assert_ok(&hosts.ssh(
        0,
        &format!(
            "chmod u+w {content} $(dirname {content}) && mv {content} {content}.real && \
             printf '%s\\n' '#!/bin/sh' \
               'case \" $* \" in *\" from-delta \"*) echo \"unrecognized subcommand\" >&2; exit 2;; esac' \
               'exec \"$0.real\" \"$@\"' > {content} && chmod 555 {content}"
        ),
    ));
    let third = rebuilt_fleet(dir.path(), b"run by the Controller");
    let apply = fleet_program(&third, &store, &hosts, &[], &["apply"]);
    assert_ok(&apply);
    let line = summary_line(&apply, hosts.name(0));
    assert!(line.contains("activated generation 3 (was 2)"), "{line}");
    assert!(stderr(&apply).contains(tried), "{}", stderr(&apply));
    let sent = sent_bytes(&apply, hosts.name(0));
    assert!(
        sent > compressed,
        "{sent} bytes sent, {compressed} compressed: {line}"
    );
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");
}

#[test]
fn ctrl_c_during_a_repair_lets_the_one_under_way_end_and_contacts_no_other() {
    let Some(hosts) = TestHosts::up(2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    assert_ok(&fleet(&store, &hosts, &[], &["apply"]));
    for i in 0..2 {
        assert_ok(&hosts.ssh(i, "chmod 666 /opt/hello/server.py"));
    }
    // One host at a time, on a terminal: Ctrl-C is typed while the first is being reached (its
    // link slowed so that this lasts).
    hosts.rate(0, Some("32kbit"));
    let names = [hosts.name(0), hosts.name(1)].join(",");
    let mut command = fleet_command(&example("fleet"), &store, &names, &hosts.ssh_config());
    command.args(["--max-hosts", "1", "drift", "--repair"]);
    let shown = ctrl_c_once_shown(
        command,
        "connecting",
        "interrupted: a host being repaired goes on to the end of its repair",
    );
    hosts.rate(0, None);
    for said in [
        format!(
            "{}: /opt/hello/server.py: mode is 0666, expected 0755; repaired",
            hosts.name(0)
        ),
        format!(
            "{}: interrupted before this host was contacted",
            hosts.name(1)
        ),
    ] {
        assert!(shown.contains(&said), "{said}\n{shown}");
    }
    // The first was repaired whole; the second was not touched.
    let after = fleet(&store, &hosts, &[], &["drift"]);
    assert_eq!(after.status.code(), Some(1), "{}", stdout(&after));
    assert_eq!(
        stdout(&after),
        format!(
            "{}: no drift\n{}: /opt/hello/server.py: mode is 0666, expected 0755\n",
            hosts.name(0),
            hosts.name(1)
        )
    );
}

/// The entries in the host's store (the store is at the controller's path on the hosts).
fn host_entries(hosts: &TestHosts, store: &Path) -> Vec<String> {
    let listing = hosts.ssh(0, &format!("ls {}", store.display()));
    assert_ok(&listing);
    stdout(&listing).lines().map(str::to_string).collect()
}

/// The system entry of each generation the controller last read of `host`, by number.
fn host_systems(store: &Path, host: &str) -> Vec<(u64, String)> {
    let path = store.join(".machines").join(host).join("generations.json");
    let records: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let number = r["number"].as_u64().unwrap();
            (number, r["system"].as_str().unwrap().to_string())
        })
        .collect()
}

/// `output` exited with `code`, and what `said` reads of it (its standard output or error)
/// contains `text`.
fn exits_saying(output: &Output, code: i32, said: fn(&Output) -> String, text: &str) {
    assert_eq!(output.status.code(), Some(code), "{output:?}");
    assert!(said(output).contains(text), "{}", said(output));
}

#[test]
fn a_host_that_keeps_two_generations_lets_the_oldest_go_at_each_apply() {
    // Keeping none is a mistake of the program, said before any host is reached.
    let dir = tempfile::tempdir().unwrap();
    let zero = Command::new(example("fleet"))
        .env("FLEET_HOSTS", "web-1")
        .env("FLEET_KEEP_GENERATIONS", "0")
        .arg("--store")
        .arg(dir.path().join("mistake"))
        .arg("plan")
        .output()
        .unwrap();
    exits_saying(
        &zero,
        3,
        stderr,
        "keep_generations(0): a host keeps at least",
    );

    let Some(hosts) = TestHosts::up(1) else {
        return;
    };
    let store = dir.path().join("store");
    let host = hosts.name(0);
    let keep = ("FLEET_KEEP_GENERATIONS", "2");
    // An apply of `greeting` whose line for the host says each of `said`; its line.
    let apply = |greeting: &str, said: &[&str]| {
        let output = fleet(
            &store,
            &hosts,
            &[keep, ("FLEET_GREETING", greeting)],
            &["apply"],
        );
        assert_ok(&output);
        let line = summary_line(&output, host);
        for text in said {
            assert!(line.contains(text), "{text}: {line}");
        }
        line
    };
    apply("hello", &["activated generation 1"]);
    let line = apply("bonjour", &["activated generation 2 (was 1)"]);
    assert!(
        !line.contains("deleted"),
        "two generations are kept: {line}"
    );
    let first = host_systems(&store, host)[0].1.clone();
    assert!(host_entries(&hosts, &store).contains(&first));

    // The third lets the first go, and what only it kept; its plan says so first.
    let plan = fleet(
        &store,
        &hosts,
        &[keep, ("FLEET_GREETING", "hola")],
        &["plan"],
    );
    assert_ok(&plan);
    assert!(
        stdout(&plan)
            .contains("  delete generation 1 and collect the host's store (keeps the newest 2)"),
        "{}",
        stdout(&plan)
    );
    apply(
        "hola",
        &[
            "activated generation 3 (was 2)",
            "deleted generation 1, freeing ",
        ],
    );
    let systems = host_systems(&store, host);
    assert_eq!(
        systems.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [2, 3],
        "the mirror follows"
    );
    let entries = host_entries(&hosts, &store);
    assert!(!entries.contains(&first), "{first} still in {entries:?}");
    for (_, kept) in &systems {
        assert!(entries.contains(kept), "{kept} not in {entries:?}");
    }
    let json = fleet(
        &store,
        &hosts,
        &[keep, ("FLEET_GREETING", "hola")],
        &["apply", "--json"],
    );
    assert_ok(&json);
    assert!(
        !stdout(&json).contains("deleted_generations"),
        "an unchanged host with two generations deletes none: {}",
        stdout(&json)
    );
    assert_eq!(hosts.http_get(0, 8080), "hola");

    // The one kept besides the current is there to go back to. Going back is generation 4,
    // with generation 2's system; the next activation keeps the newest two, 4 and 5, and lets
    // 2 and 3 go, and only what 3 alone kept.
    assert_ok(&fleet(&store, &hosts, &[keep], &["rollback", "--on", host]));
    assert_eq!(hosts.http_get(0, 8080), "bonjour");
    apply(
        "salut",
        &[
            "activated generation 5 (was 4)",
            "deleted generations 2, 3, freeing 1 entry ",
        ],
    );

    // Fewer kept from now on: an unchanged apply lets the others go, the one it runs stays.
    // `command --json` keeping one generation: what it says of the host.
    let keeping_one = |command: &str| {
        let output = fleet(
            &store,
            &hosts,
            &[("FLEET_KEEP_GENERATIONS", "1"), ("FLEET_GREETING", "salut")],
            &[command, "--json"],
        );
        assert_ok(&output);
        let value: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
        value["hosts"][0].clone()
    };
    let planned = keeping_one("plan");
    assert_eq!(
        planned["delete_generations"],
        serde_json::json!([4]),
        "{planned}"
    );
    let report = keeping_one("apply");
    assert_eq!(report["result"], "unchanged", "{report}");
    assert_eq!(
        report["deleted_generations"],
        serde_json::json!([4]),
        "{report}"
    );
    assert!(
        report["collected"]["entries"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert_eq!(host_systems(&store, host).len(), 1);
    assert_eq!(hosts.http_get(0, 8080), "salut");
    let back = fleet(&store, &hosts, &[], &["rollback", "--on", host]);
    exits_saying(&back, 1, stdout, "no earlier generation");
}

#[test]
fn a_host_deletes_old_generations_and_its_gc_frees_what_only_they_kept() {
    let Some((hosts, dir, store)) = one_host_deployed() else {
        return;
    };
    let host = hosts.name(0);
    let [first_agent] = &agents_in(&store)[..] else {
        panic!("one agent: {:?}", agents_in(&store));
    };
    // Generation 2 a new greeting; generation 3 a rebuilt program, with an agent of its own.
    let env = [("FLEET_GREETING", "bonjour")];
    assert_ok(&fleet(&store, &hosts, &env, &["apply"]));
    let rebuilt = rebuilt_fleet(dir.path(), b"run by the CONTROLLER");
    let run = |args: &[&str]| fleet_program(&rebuilt, &store, &hosts, &env, args);
    assert_ok(&run(&["apply"]));
    assert_ok(&run(&["generations", "--on", host]));
    let systems = host_systems(&store, host);
    assert_eq!(systems.len(), 3, "{systems:?}");
    let before = host_entries(&hosts, &store);
    for (_, system) in &systems {
        assert!(before.contains(system), "{system} not in {before:?}");
    }
    // What an activation was sent is its generation's: nothing is left pending.
    let roots = hosts.ssh(0, &format!("ls {}/.roots", store.display()));
    assert!(
        !stdout(&roots).contains("machine-pending-"),
        "{}",
        stdout(&roots)
    );
    let nothing = run(&["gc", "--on", host, "--dry-run"]);
    assert_ok(&nothing);
    assert!(
        stdout(&nothing).contains(&format!("{host}: would delete 0 entries, 0 B")),
        "every generation keeps its own: {}",
        stdout(&nothing)
    );

    // The one it runs cannot go.
    let refused = run(&["delete-generations", "3", "--on", host]);
    exits_saying(&refused, 1, stdout, "generation 3 is the one the host runs");
    let deleted = run(&["delete-generations", "--keep", "1", "--on", host]);
    assert_ok(&deleted);
    assert!(
        stdout(&deleted).contains(&format!(
            "{host}: deleted generations 1, 2; `gc --on {host}` frees what only they kept"
        )),
        "{}",
        stdout(&deleted)
    );
    assert_eq!(
        host_systems(&store, host),
        systems[2..],
        "the mirror follows"
    );
    let listing = stdout(&run(&["generations", "--on", host]));
    assert!(
        listing.contains("*    3  ") && !listing.contains("   1  "),
        "{listing}"
    );

    // A dry run names what only generations 1 and 2 kept, the first agent with them, and
    // deletes nothing; then the collection does.
    let dry = run(&["gc", "--on", host, "--dry-run"]);
    assert_ok(&dry);
    let text = stdout(&dry);
    for gone in [&systems[0].1, &systems[1].1, first_agent] {
        assert!(
            text.contains(&format!("{host}: would delete {gone}  ")),
            "{gone}: {text}"
        );
    }
    assert!(text.contains("would delete 3 entries, "), "{text}");
    assert_eq!(host_entries(&hosts, &store), before);
    let gc = run(&["gc", "--on", host]);
    assert_ok(&gc);
    assert!(
        stdout(&gc).contains(&format!("{host}: deleted 3 entries, ")),
        "{}",
        stdout(&gc)
    );
    let after = host_entries(&hosts, &store);
    for gone in [&systems[0].1, &systems[1].1, first_agent] {
        assert!(!after.contains(gone), "{gone} still in {after:?}");
    }
    assert!(after.contains(&systems[2].1), "{after:?}");
    assert_eq!(after.len(), before.len() - 3, "{before:?} -> {after:?}");

    // The host runs on as it did: no drift, nothing to send, nothing to roll back to.
    assert_eq!(hosts.http_get(0, 8080), "bonjour");
    let drift = run(&["drift", "--on", host]);
    assert_ok(&drift);
    assert!(stdout(&drift).contains("no drift"), "{}", stdout(&drift));
    let again = run(&["apply"]);
    assert_ok(&again);
    assert!(summary_line(&again, host).contains("unchanged, generation 3"));
    assert_eq!(sent_bytes(&again, host), 0);
    let back = run(&["rollback", "--on", host]);
    exits_saying(&back, 1, stdout, "no earlier generation");

    // `--on` with a command that works on this machine alone is a mistake, not ignored.
    let local = run(&["ls", "--on", host]);
    exits_saying(&local, 2, stderr, "leave `--on` out");

    // The controller keeps what the host runs: after its own `gc`, the next rebuilt program's
    // agent still goes as a change to the agent the host runs.
    let root = std::fs::read_link(store.join(".roots").join(format!("machine-{host}"))).unwrap();
    assert!(root.ends_with(&systems[2].1), "{}", root.display());
    assert_ok(&run(&["gc"]));
    let next = rebuilt_fleet(dir.path(), b"run by the Controller");
    let apply = fleet_program(&next, &store, &hosts, &env, &["apply"]);
    assert_ok(&apply);
    assert!(summary_line(&apply, host).contains("activated generation 4 (was 3)"));
    let tried = "sent as a change to the agent it has)";
    assert!(stderr(&apply).contains(tried), "{}", stderr(&apply));
}
