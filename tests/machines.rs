//! Machines: the fleet example deployed to real Debian hosts (systemd and sshd booted by
//! `hosts/testhosts`, reached over SSH): copy, activation, generations, rollback, drift, and
//! the faults a deploy must survive.

use std::path::Path;
use std::process::Output;

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
    let mut command = std::process::Command::new(program);
    command
        .env("FLEET_HOSTS", names.join(","))
        .arg("--store")
        .arg(store)
        .arg("--ssh-config")
        .arg(hosts.ssh_config());
    for (k, v) in env {
        command.env(k, v);
    }
    command.args(args).output().expect("the fleet example runs")
}

/// The bytes a host's line of the apply summary says were sent (0 if none).
fn sent_bytes(output: &Output, host: &str) -> u64 {
    let text = stdout(output);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{host}: ")))
        .unwrap_or_else(|| panic!("no summary line for {host}:\n{text}"));
    line.rsplit_once(" bytes)")
        .and_then(|(head, _)| head.rsplit_once('('))
        .map_or(0, |(_, n)| n.parse().expect("a byte count"))
}

fn summary_line(output: &Output, host: &str) -> String {
    stdout(output)
        .lines()
        .find(|l| l.starts_with(&format!("{host}: ")))
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
    assert!(text.contains("copy 1 entries"), "{text}");
    let second = fleet(&store, &hosts, &env, &["apply", "--on", hosts.name(0)]);
    assert_ok(&second);
    let line = summary_line(&second, hosts.name(0));
    assert!(line.contains("activated generation 2"), "{line}");
    assert!(line.contains("1 units restarted"), "{line}");
    let sent = sent_bytes(&second, hosts.name(0));
    assert!(
        sent > 0 && sent < 20_000,
        "only the system entry was sent: {line}"
    );
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
        listing.contains("   1  ") && listing.contains("   2  "),
        "{listing}"
    );
    assert!(
        store
            .join(".machines")
            .join(hosts.name(0))
            .join("generations.json")
            .exists()
    );
    let back = fleet(
        &store,
        &hosts,
        &env,
        &["rollback", "--on", hosts.name(0), "--to", "1"],
    );
    assert_ok(&back);
    assert!(
        stdout(&back).contains("now on generation"),
        "{}",
        stdout(&back)
    );
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");
}

#[test]
fn a_unit_that_does_not_start_rolls_the_host_back_by_itself() {
    let Some(hosts) = TestHosts::up(1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    assert_ok(&fleet(&store, &hosts, &[], &["apply"]));
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
    let Some(hosts) = TestHosts::up(1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    assert_ok(&fleet(&store, &hosts, &[], &["apply"]));
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
        text.contains("/etc/hello/config.toml: content is"),
        "{text}"
    );
    assert!(
        text.contains("/opt/hello/server.py: mode is 0o666, expected 0o755"),
        "{text}"
    );
    assert!(text.contains("unit hello.service: not active"), "{text}");
    let plan = fleet(&store, &hosts, &[], &["plan"]);
    assert!(
        stdout(&plan).contains("drift: /etc/hello/config.toml"),
        "{}",
        stdout(&plan)
    );

    let repair = fleet(&store, &hosts, &[], &["drift", "--repair"]);
    assert_ok(&repair);
    assert!(stdout(&repair).contains("no drift"), "{}", stdout(&repair));
    assert_eq!(hosts.http_get(0, 8080), "hello from forjar");
}

#[test]
fn a_host_that_cannot_be_reached_fails_by_name_and_the_others_are_deployed() {
    let Some(hosts) = TestHosts::up(1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");

    // A host whose key is not the one known: refused, strictly.
    let config = std::fs::read_to_string(hosts.ssh_config()).unwrap();
    let wrong_known = dir.path().join("known_hosts");
    let other_key = dir.path().join("other");
    assert_ok(
        &std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&other_key)
            .output()
            .unwrap(),
    );
    let public = std::fs::read_to_string(other_key.with_extension("pub")).unwrap();
    let key: Vec<&str> = public.split_whitespace().take(2).collect();
    std::fs::write(
        &wrong_known,
        format!("{} {}\n", hosts.hosts[0].1, key.join(" ")),
    )
    .unwrap();
    let wrong_config = dir.path().join("ssh_config");
    let known = hosts.dir.join("known_hosts");
    std::fs::write(
        &wrong_config,
        config.replace(
            &known.display().to_string(),
            &wrong_known.display().to_string(),
        ),
    )
    .unwrap();
    let output = std::process::Command::new(example("fleet"))
        .env("FLEET_HOSTS", hosts.name(0))
        .arg("--store")
        .arg(&store)
        .arg("--ssh-config")
        .arg(&wrong_config)
        .arg("apply")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let line = summary_line(&output, hosts.name(0));
    assert!(line.contains("failed") && line.contains("key"), "{line}");

    // An unreachable host beside a good one: the good one is deployed.
    let output = std::process::Command::new(example("fleet"))
        .env("FLEET_HOSTS", format!("{},10.255.255.1", hosts.name(0)))
        .arg("--store")
        .arg(&store)
        .arg("--ssh-config")
        .arg(hosts.ssh_config())
        .arg("apply")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(summary_line(&output, hosts.name(0)).contains("activated generation 1"));
    let line = summary_line(&output, "10.255.255.1");
    assert!(line.contains("cannot connect to `10.255.255.1`"), "{line}");
}

#[test]
fn a_dropped_connection_during_activation_leaves_the_old_or_new_generation_and_a_rerun_completes() {
    let Some(hosts) = TestHosts::up(1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    assert_ok(&fleet(&store, &hosts, &[], &["apply"]));

    // Drop the link at several moments of a deploy: while it copies, as it activates, later.
    for (round, delay_ms) in [0u64, 150, 400, 900, 1600].into_iter().enumerate() {
        let greeting = format!("round {round}");
        let env = [("FLEET_GREETING", greeting.as_str())];
        let names = hosts.name(0);
        let child = std::process::Command::new(example("fleet"))
            .env("FLEET_HOSTS", names)
            .env("FLEET_GREETING", &greeting)
            .arg("--store")
            .arg(&store)
            .arg("--ssh-config")
            .arg(hosts.ssh_config())
            .arg("apply")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        hosts.link(0, false);
        std::thread::sleep(std::time::Duration::from_secs(3));
        hosts.link(0, true);
        let first = child.wait_with_output().unwrap();
        // Whatever the first run saw, the host is on a whole generation, and a rerun finishes.
        let rerun = fleet(&store, &hosts, &env, &["apply"]);
        assert_ok(&rerun);
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
        let partial = hosts.ssh(0, &format!("ls -A {}/.tmp", store.display()));
        assert_eq!(
            stdout(&partial).trim(),
            "",
            "no partial entry is left in the host's store"
        );
    }

    // A reboot brings the host back on its current generation.
    hosts.restart(0);
    assert_eq!(hosts.http_get(0, 8080), "round 4");
}

#[test]
fn two_applies_at_once_are_serialised_by_the_host() {
    let Some(hosts) = TestHosts::up(1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    assert_ok(&fleet(&store, &hosts, &[], &["apply"]));
    let spawn = |greeting: &str| {
        std::process::Command::new(example("fleet"))
            .env("FLEET_HOSTS", hosts.name(0))
            .env("FLEET_GREETING", greeting)
            .arg("--store")
            .arg(&store)
            .arg("--ssh-config")
            .arg(hosts.ssh_config())
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
