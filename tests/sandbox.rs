//! The sandbox, run for real: what a build sees, what it cannot do, and how it is stopped.
//!
//! Every test builds in a real sandbox. Where the kernel gives none, the tests fail under CI
//! (`CI=true`) and are skipped, saying so, elsewhere.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use forjar::DerivationBuilder;
use forjar::exec::Report;
use forjar::plan::Plan;
use forjar::prelude::*;
use forjar::store::Store;
use forjar_suite::{apply, build_root, content_text, digest_of, entry_of, sandbox, temp_store};

/// A hermetic derivation running `script`.
fn sh(name: &str, script: &str) -> Derivation {
    Derivation::builder(name).script(script).build().unwrap()
}

/// A derivation running `script` with the host's tools.
fn tools(name: &str, script: &str) -> DerivationBuilder {
    Derivation::builder(name)
        .sandbox(SandboxLevel::HostTools)
        .script(script)
}

/// Plans `g` and applies it with at most `jobs` builds at once.
fn apply_jobs(store: &Store, g: &Graph, jobs: usize) -> Report {
    let plan = Plan::new(g, store).unwrap();
    let options = forjar::exec::Options {
        jobs,
        ..Default::default()
    };
    forjar::exec::apply(
        &plan,
        store,
        &forjar::exec::Local::default(),
        &options,
        &|_| {},
    )
    .unwrap()
}

/// Everything in the store directory, for "the store is left as it was".
fn store_listing(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".logs" && n != ".locks" && n != ".cache")
        .collect();
    names.sort();
    for dir in [".tmp", ".roots"] {
        assert!(
            fs::read_dir(store.dir().join(dir))
                .unwrap()
                .next()
                .is_none(),
            "{dir} is not empty"
        );
    }
    names
}

/// A host process with a recognisable command line, killed on drop.
struct HostProcess(Child);

impl HostProcess {
    fn sleep(marker: &str) -> Self {
        HostProcess(Command::new("sleep").arg(marker).spawn().unwrap())
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Host processes whose command line contains `needle`.
fn host_processes_with(needle: &str) -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| {
            fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .count()
}

#[test]
fn a_store_inside_a_directory_the_sandbox_makes_is_refused_by_name() {
    if !sandbox() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("forjar-store-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let error = build_root(&store, tools("inside-dev", "echo x > $out")).unwrap_err();
    assert!(
        error.contains("the store is inside `/dev`, which the sandbox makes anew"),
        "{error}"
    );
    assert!(error.contains(&dir.path().display().to_string()), "{error}");
}

#[test]
fn a_build_directory_is_emptied_and_kept_for_the_next_build() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let mut g = Graph::new();
    let first = g.add(
        tools(
            "litter",
            "mkdir -p a/b && echo x > a/b/f && chmod 000 a && chmod 700 /build \
             && stat -c %i /build > $out",
        )
        .build()
        .unwrap(),
    );
    let second = g.add(
        tools(
            "look",
            "{ ls -A /build; stat -c '%a %u %i' /build; cat $first; } > $out",
        )
        .input("first", first)
        .build()
        .unwrap(),
    );
    g.root("look", second);
    let report = apply_jobs(&store, &g, 1);
    let text = content_text(&store, &report.roots[0].1);
    // The second build got the first one's directory (the same inode), emptied and with the
    // mode and owner a new one has.
    let (look, first_inode) = text.split_once('\n').unwrap();
    let fields: Vec<&str> = look.split(' ').collect();
    assert_eq!(fields[..2], ["755", "1000"], "{text}");
    assert_eq!(fields[2], first_inode.trim(), "{text}");
    // Removed once the run's builds are done.
    assert_eq!(
        fs::read_dir(store.dir().join(".tmp")).unwrap().count(),
        0,
        "{:?}",
        fs::read_dir(store.dir().join(".tmp"))
            .unwrap()
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_build_runs_as_1000_100_in_its_own_namespaces() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let script = r#"
        {
          echo "ids $(id -u) $(id -g) $(id -G)"
          echo "host $(hostname)"
          echo "pid $$"
          echo "setgroups $(cat /proc/self/setgroups)"
          grep -E '^(NoNewPrivs|Seccomp|SigBlk|SigIgn):' /proc/self/status | tr -s '\t ' ' '
          echo "cwd $PWD home $HOME tmpdir $TMPDIR"
          echo "net $(ls /sys/class/net 2>/dev/null | tr '\n' ' ')$(cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
          echo "root: $(ls / | tr '\n' ' ')"
          ls /dev | tr '\n' ' '; echo
          stat -c 'tmp %a' /tmp
          echo "processes $(ls /proc | grep -c '^[0-9]')"
        } > $out
    "#;
    let entry = build_root(&store, tools("look", script).allow_impure()).unwrap();
    let text = content_text(&store, &entry);
    assert!(text.contains("ids 1000 100 100\n"), "{text}");
    assert!(text.contains("host localhost\n"), "{text}");
    assert!(text.contains("pid 1\n"), "{text}");
    assert!(text.contains("setgroups deny\n"), "{text}");
    assert!(text.contains("NoNewPrivs: 1\n"), "{text}");
    assert!(text.contains("Seccomp: 2\n"), "{text}");
    // Signals as a new process has them: none blocked, none ignored (forjar ignores SIGPIPE).
    assert!(text.contains("SigBlk: 0000000000000000\n"), "{text}");
    assert!(text.contains("SigIgn: 0000000000000000\n"), "{text}");
    assert!(
        text.contains("cwd /build home /homeless-shelter tmpdir /build\n"),
        "{text}"
    );
    assert!(text.contains("net lo \n"), "only loopback: {text}");
    let root = text.lines().find_map(|l| l.strip_prefix("root: ")).unwrap();
    for dir in ["bin", "build", "dev", "etc", "proc", "tmp", "usr"] {
        assert!(
            root.split(' ').any(|d| d == dir),
            "/{dir} is missing: {root}"
        );
    }
    for dir in ["root", "home", "var", "srv", "mnt", "opt", "boot", "sys"] {
        assert!(
            !root.split(' ').any(|d| d == dir),
            "/{dir} is visible: {root}"
        );
    }
    assert!(
        text.contains("null")
            && text.contains("urandom")
            && text.contains("pts")
            && text.contains("shm"),
        "{text}"
    );
    assert!(text.contains("tmp 1777\n"), "{text}");
    // The builder, the subshell of `$(...)`, `ls` and `grep`: nothing of the host.
    let processes: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("processes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(processes <= 4, "{text}");
}

#[test]
fn a_hermetic_build_has_sh_and_nothing_else_of_the_host() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let script = r#"
        for p in /usr /usr/bin/cc /etc/shadow /home /root /bin/ls /var; do
          if [ -e "$p" ]; then echo "sees $p"; fi
        done > $out
        echo "path $PATH" >> $out
    "#;
    let entry = build_root(&store, Derivation::builder("hermetic").script(script)).unwrap();
    assert_eq!(content_text(&store, &entry), "path /path-not-set\n");
}

#[test]
fn inputs_are_bound_read_only_and_outputs_land_at_their_store_paths() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let (plan, report) = apply(&store, |g| {
        let a = g.add(sh("a", "echo a-content > $out"));
        let b = g.add(
            Derivation::builder("b")
                .script(r#"read line < $a; echo "got $line from $a" > $out; echo "out is $out" >> $out"#)
                .input("a", a)
                .build()
                .unwrap(),
        );
        g.root("b", b);
    });
    report.unwrap();
    let b = &plan.root_entry(&plan.roots()[0]).unwrap();
    let text = content_text(&store, b);
    let a = plan.find("a")[0];
    let a_entry = &plan.entry_names(a)[0];
    assert!(
        text.starts_with(&format!(
            "got a-content from {}/{a_entry}/content\n",
            store.dir().display()
        )),
        "{text}"
    );
    assert!(
        text.ends_with(&format!("out is {}\n", store.content_path(b).display())),
        "{text}"
    );
}

// ---------------------------------------------------------------- the escape suite

/// Syscall numbers for the builds that make raw calls through perl's `syscall`.
struct Syscalls {
    ptrace: u32,
    setxattr: u32,
    mount: u32,
}

#[cfg(target_arch = "x86_64")]
const SYS: Syscalls = Syscalls {
    ptrace: 101,
    setxattr: 188,
    mount: 165,
};
#[cfg(target_arch = "aarch64")]
const SYS: Syscalls = Syscalls {
    ptrace: 117,
    setxattr: 5,
    mount: 40,
};

/// A build that must fail, leaving the store as it was.
fn must_fail(name: &str, builder: DerivationBuilder) -> String {
    let (_dir, store) = temp_store();
    let before = store_listing(&store);
    let err = build_root(&store, builder).expect_err(&format!("`{name}` escaped"));
    assert_eq!(store_listing(&store), before, "`{name}` changed the store");
    err
}

/// A build that must fail with an error containing every one of `needles`.
fn refused(name: &str, builder: DerivationBuilder, needles: &[&str]) {
    let err = must_fail(name, builder);
    for needle in needles {
        assert!(
            err.contains(needle),
            "`{name}`: expected {needle:?} in: {err}"
        );
    }
}

#[test]
fn a_builder_cannot_write_etc() {
    if !sandbox() {
        return;
    }
    let marker = format!("/etc/forjar-escape-{}", std::process::id());
    must_fail(
        "write /etc",
        tools("etc", &format!("echo owned > {marker}")),
    );
    assert!(!Path::new(&marker).exists());
}

#[test]
fn a_builder_cannot_write_the_store_or_an_input() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let (plan, report) = apply(&store, |g| {
        g.add(sh("victim", "echo original > $out"));
    });
    report.unwrap();
    let victim = entry_of(&plan, "victim");
    let before = store_listing(&store);
    let store_dir = store.dir().display().to_string();
    for (what, script) in [
        ("a new store entry", format!("echo x > {store_dir}/evil")),
        ("an input", "echo tampered > $victim".to_string()),
        (
            "an input's directory",
            format!("echo x > {store_dir}/{victim}/meta.yaml"),
        ),
        ("the input, by chmod", "chmod u+w $victim".to_string()),
    ] {
        let (_, report) = apply(&store, |g| {
            let v = g.add(sh("victim", "echo original > $out"));
            let d = g.add(
                tools("attack", &format!("{script}; echo done > $out"))
                    .env("what", what)
                    .input("victim", v)
                    .build()
                    .unwrap(),
            );
            g.root("attack", d);
        });
        assert!(report.is_err(), "writing {what} succeeded");
        assert_eq!(
            store_listing(&store),
            before,
            "writing {what} changed the store"
        );
    }
    assert_eq!(content_text(&store, &victim), "original\n");
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn a_builder_cannot_read_root_host_proc_or_host_tmp() {
    if !sandbox() {
        return;
    }
    let secret = std::env::temp_dir().join(format!("forjar-secret-{}", std::process::id()));
    fs::write(&secret, "host secret").unwrap();
    let (_dir, store) = temp_store();
    let mut host = HostProcess::sleep("4321.25");
    let script = format!(
        r#"
        {{
          cat {secret} 2>/dev/null && echo "read host tmp"
          ls /root 2>/dev/null && echo "read /root"
          cat /proc/{pid}/environ 2>/dev/null && echo "read host environ"
          m=4321
          for f in /proc/[0-9]*/cmdline; do
            if [ "$(tr '\0' ' ' < "$f")" = "sleep $m.25 " ]; then echo "saw host process"; fi
          done
          echo "pid 1: $(tr '\0' '\n' < /proc/1/cmdline | head -n 2 | tr '\n' ' ')"
        }} > $out
    "#,
        secret = secret.display(),
        pid = host.pid()
    );
    let entry = build_root(&store, tools("snoop", &script)).unwrap();
    let text = content_text(&store, &entry);
    fs::remove_file(&secret).unwrap();
    assert!(!text.contains("read ") && !text.contains("saw "), "{text}");
    assert_eq!(
        text, "pid 1: /bin/sh -euc \n",
        "pid 1 is the builder itself"
    );
    assert!(host.alive());
}

#[test]
fn a_builder_cannot_connect_to_the_hosts_loopback() {
    if !sandbox() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    refused(
        "connect",
        tools(
            "connect",
            &format!("bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}'; echo > $out"),
        ),
        &["| bash: connect: Connection refused"],
    );
    assert!(listener.accept().is_err(), "a connection reached the host");
}

#[test]
fn builds_at_once_have_network_namespaces_of_their_own_with_loopback_up() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    // Each build listens on its loopback and connects to itself, says which network namespace
    // it is in, and stays a second, so that the two are alive at once (no namespace of one
    // can be freed and its number given to the other).
    let script = r#"
        perl -MIO::Socket::INET -e '
            my $l = IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1:0") or die "listen: $!\n";
            my $c = IO::Socket::INET->new(PeerAddr => "127.0.0.1:" . $l->sockport) or die "connect: $!\n";
            my $a = $l->accept or die "accept: $!\n";
            print $c "over loopback\n"; close $c;
            print scalar <$a>;' > $out
        readlink /proc/self/ns/net >> $out
        sleep 1
    "#;
    let mut g = Graph::new();
    for name in ["one", "two"] {
        let d = g.add(tools(name, &format!("# {name}{script}")).build().unwrap());
        g.root(name, d);
    }
    let report = apply_jobs(&store, &g, 2);
    let host = fs::read_link("/proc/self/ns/net").unwrap();
    let seen: Vec<String> = report
        .roots
        .iter()
        .map(|(_, entry)| content_text(&store, entry))
        .collect();
    for text in &seen {
        assert!(text.starts_with("over loopback\nnet:["), "{text}");
        assert_ne!(text.lines().nth(1), host.to_str(), "the host's: {text}");
    }
    assert_ne!(seen[0].lines().nth(1), seen[1].lines().nth(1), "{seen:?}");
}

#[test]
fn a_builder_cannot_make_setuid_files_device_nodes_or_mounts() {
    if !sandbox() {
        return;
    }
    refused(
        "setuid",
        tools("setuid", "touch $out; chmod 4755 $out"),
        &["Operation not permitted"],
    );
    refused(
        "setgid",
        tools("setgid", "mkdir $out; chmod g+s $out"),
        &["Operation not permitted"],
    );
    refused(
        "xattr",
        tools(
            "xattr",
            &format!(
                "touch $out; perl -e 'my ($f, $n, $v) = ($ARGV[0], \"user.x\", \"v\"); \
                 syscall({}, $f, $n, $v, 1, 0) == 0 or die \"setxattr: $!\\n\"' $out",
                SYS.setxattr
            ),
        ),
        &["setxattr: Operation not supported"],
    );
    refused(
        "mknod",
        tools("mknod", "mkdir $out; mknod $out/null c 1 3"),
        &["Operation not permitted"],
    );
    // mount(2) itself (the mount program refuses non-root users before it gets that far).
    refused(
        "mount",
        tools(
            "mount",
            &format!(
                "mkdir -p /build/m; perl -e 'my ($s, $t, $f) = (\"none\", \"/build/m\", \"tmpfs\"); \
                 syscall({}, $s, $t, $f, 0, 0) == 0 or die \"mount: $!\\n\"'; echo > $out",
                SYS.mount
            ),
        ),
        &["| mount: Operation not permitted"],
    );
}

#[test]
fn setuid_bits_never_reach_the_store_even_if_the_builder_ignores_errors() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let entry = build_root(
        &store,
        tools(
            "ignores",
            "mkdir $out; touch $out/f; chmod 4755 $out/f || true; chmod 755 $out/f",
        ),
    )
    .unwrap();
    let mode = fs::metadata(store.content_path(&entry).join("f"))
        .unwrap()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o555);
}

#[test]
fn a_builder_cannot_trace_or_kill_host_processes() {
    if !sandbox() {
        return;
    }
    let mut host = HostProcess::sleep("4321.5");
    let pid = host.pid();
    refused(
        "ptrace",
        tools(
            "ptrace",
            &format!(
                "perl -e 'syscall({}, 16, {pid}, 0, 0) == 0 or die \"ptrace: $!\\n\"'; echo > $out",
                SYS.ptrace
            ),
        ),
        &["ptrace: No such process"],
    );
    refused(
        "kill",
        tools("kill", &format!("kill -9 {pid}; echo > $out")),
        &["kill: No such process"],
    );
    assert!(host.alive(), "the host process was killed");
}

#[test]
fn a_fork_bomb_is_contained() {
    if !sandbox() {
        return;
    }
    // A limit the bomb reaches at once however loaded the machine is; the default (4,096) is
    // the same mechanism, and took longer than the timeout to reach on a busy 2-core machine.
    let mut needles = vec!["the build timed out after 3s", "Cannot fork"];
    if exact_process_count() {
        needles.push("it reached its limit of 64 processes at once");
    }
    refused(
        "fork bomb",
        // `exec`: the top shell must not need a fork of its own to wait, or the
        // process limit would end the build before the timeout does.
        tools("bomb", "bomb() { bomb | bomb & }; bomb; exec sleep 30")
            .max_processes(64)
            .timeout(Duration::from_secs(3)),
        // The process limit stops the forks; the timeout ends the build.
        &needles,
    );
    // The host can still start processes.
    assert!(Command::new("true").status().unwrap().success());
}

/// A directory for [`dag_as_nobody`], where the sandbox runs and this test is root (which
/// becoming another user takes, as CI has).
fn dir_for_nobody() -> Option<tempfile::TempDir> {
    (sandbox() && forjar_suite::as_root("running a program as another user"))
        .then(|| forjar_suite::open_dir_with("dag"))
}

/// Runs the `dag` program of `dir` ([`dir_for_nobody`]) as `nobody`, with its
/// store in `dir`, `args`, `env` and at most `nproc` processes and threads of that user.
fn dag_as_nobody(
    dir: &Path,
    nproc: Option<u32>,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let store = dir.join("store");
    let args = [&["--store", store.to_str().unwrap()], args].concat();
    forjar_suite::as_nobody(&dir.join("dag"), dir, nproc, &args, env)
}

/// A user whose hard limit on processes (`ulimit -Hu`) is below a build's process cap (4,096 by
/// default) builds under that limit: the builder lowers its `RLIMIT_NPROC` to it, where raising
/// it would be refused. The limit is a user's, not root's (root builds in a cgroup of its own):
/// the program runs as `nobody`, which takes root to become, as CI has.
#[test]
fn a_user_with_a_hard_process_limit_below_the_cap_builds_under_it() {
    let Some(dir) = dir_for_nobody() else {
        return;
    };
    let apply = |fail: &str| {
        dag_as_nobody(
            dir.path(),
            Some(64),
            &["apply"],
            &[("DAG_LAYERS", "1"), ("DAG_FAIL", fail)],
        )
    };
    let out = apply("");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let built = forjar_suite::store_entries(&dir.path().join("store"));
    assert_eq!(built.len(), 5, "{err}");
    // A build that fails says what it ran under: the lower limit, not the one it asks.
    let out = apply("n0-0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "at most 64 processes of this user at once (its hard `ulimit -u`), not the 4096 it asks"
        ),
        "{err}"
    );
}

/// A user at its limit on processes and threads (`ulimit -u`), whose process may start no thread
/// at all: the plan is made on the one thread there is; an apply says which build could not
/// start and why, exits 1 without a panic, and leaves no entry, staging, log or record behind,
/// so that the same apply with room builds everything.
#[test]
fn a_user_at_the_thread_limit_plans_and_is_told_why_it_cannot_apply() {
    let Some(dir) = dir_for_nobody() else {
        return;
    };
    let store = dir.path().join("store");
    // Twenty layers: more than a plan keys on its calling thread (64 derivations and up are
    // keyed on the shared threads, which cannot start here).
    let layers = [("DAG_LAYERS", "20")];

    let out = dag_as_nobody(dir.path(), Some(1), &["plan"], &layers);
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{err}");
    assert!(
        text.contains("Plan: 81 to build, 0 cached"),
        "{text}\n{err}"
    );

    let out = dag_as_nobody(dir.path(), Some(1), &["apply"], &layers);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("cannot start a thread to build `n0-"), "{err}");
    assert!(
        err.contains("this user's processes and threads are at their limit, `ulimit -u` = 1"),
        "{err}"
    );
    assert_eq!(forjar_suite::store_entries(&store).len(), 0, "{err}");
    let names = |dir: &str| forjar_suite::store_entries(&store.join(dir));
    for left in [".tmp", ".pending", ".logs", ".builds"] {
        assert!(names(left).is_empty(), "{left}: {:?}", names(left));
    }

    let out = dag_as_nobody(dir.path(), None, &["apply"], &layers);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(forjar_suite::store_entries(&store).len(), 81, "{err}");
}

/// Whether a build's processes are counted by its own cgroup (as root), so that its process
/// limit is exact. Without root it is `RLIMIT_NPROC`, which counts every process of the user;
/// under CI (`CI=true`, as root) that fails the calling test.
fn exact_process_count() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI must run the process limit tests as root, where a build has its own cgroup");
    }
    eprintln!("not checking the exact process count: not root, so no cgroup per build");
    false
}

#[test]
fn a_build_has_at_most_its_process_limit_at_once() {
    if !sandbox() {
        return;
    }
    // The shell and three `sleep`s: four processes at once.
    let script = "sleep 1 & sleep 1 & sleep 1 & wait; echo > $out";
    let mut needles = vec!["Cannot fork"];
    if exact_process_count() {
        needles.push("it reached its limit of 3 processes at once");
        let (_dir, store) = temp_store();
        build_root(&store, tools("four", script).max_processes(4))
            .expect("four processes fit a limit of four");
    }
    refused("four", tools("four", script).max_processes(3), &needles);
    let err = Derivation::builder("none")
        .script("echo > $out")
        .max_processes(0)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("process limit") && err.contains("`0`") && err.contains("1 or more"),
        "{err}"
    );
}

/// A build that reached its process limit and still succeeded passes its cgroup (whose count
/// of refused forks stays) to no later build of the run: a later failure is not put down to a
/// limit it never reached.
#[test]
fn a_process_limit_one_build_reached_is_not_told_of_the_next() {
    if !sandbox() || !exact_process_count() {
        return;
    }
    let (_dir, store) = temp_store();
    let (_, report) = apply(&store, |g| {
        // The shell, the subshell and one `sleep`: the second `sleep` is refused.
        let crowded = g.add(
            tools(
                "crowded",
                "(sleep 0.2 & sleep 0.2 & wait) 2>/dev/null || true; echo > $out",
            )
            .max_processes(3)
            .build()
            .unwrap(),
        );
        let failing = tools("failing", "echo $crowded; exit 1")
            .max_processes(3)
            .input("crowded", crowded)
            .build()
            .unwrap();
        let failing = g.add(failing);
        g.root("it", failing);
    });
    let err = report.expect_err("`failing` exits 1").to_string();
    assert!(err.contains("exited with status 1"), "{err}");
    assert!(!err.contains("reached its limit"), "{err}");
}

#[test]
fn a_write_past_the_output_cap_fails() {
    if !sandbox() {
        return;
    }
    let err = must_fail(
        "big write",
        tools("big", "head -c 10000000 /dev/zero > $out").max_output_size(1 << 20),
    );
    assert!(
        err.contains("the outputs passed their limit of 1048576 bytes"),
        "{err}"
    );
    let err = must_fail(
        "many files",
        tools("many", "mkdir $out; for i in 1 2 3 4 5 6; do head -c 500000 /dev/zero > $out/$i; done; sleep 2")
            .max_output_size(1 << 20),
    );
    assert!(
        err.contains("the outputs passed their limit of 1048576 bytes"),
        "{err}"
    );
}

#[test]
fn a_hard_link_cannot_bring_host_files_into_the_store() {
    if !sandbox() {
        return;
    }
    let err = must_fail(
        "hard link",
        tools("link", "mkdir $out; ln /usr/bin/env $out/env"),
    );
    assert!(err.contains("Invalid cross-device link"), "{err}");
    let (_dir, store) = temp_store();
    let (_, report) = apply(&store, |g| {
        let a = g.add(sh("a", "echo a > $out"));
        let b = g.add(
            tools("b", "mkdir $out; ln $a $out/a")
                .input("a", a)
                .build()
                .unwrap(),
        );
        g.root("b", b);
    });
    assert!(
        report
            .unwrap_err()
            .to_string()
            .contains("Invalid cross-device link")
    );
}

// ---------------------------------------------------------------- limits and logs

#[test]
fn a_timeout_kills_every_process_in_the_build() {
    if !sandbox() {
        return;
    }
    let started = std::time::Instant::now();
    let err = must_fail(
        "timeout",
        tools(
            "slow",
            "sleep 4321.75 & (sleep 4321.75 &); echo started; sleep 4321.75",
        )
        .timeout(Duration::from_secs(1)),
    );
    assert!(
        err.contains("the build timed out after 1s; every process in it was killed"),
        "{err}"
    );
    assert!(err.contains("| started"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        host_processes_with("4321.75"),
        0,
        "a process of the build survived"
    );
}

#[test]
fn max_silent_time_kills_a_quiet_build() {
    if !sandbox() {
        return;
    }
    let err = must_fail(
        "silent",
        tools("quiet", "echo hello; sleep 4321.875").max_silent(Duration::from_secs(1)),
    );
    assert!(
        err.contains("the build printed nothing for 1s; every process in it was killed"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(host_processes_with("4321.875"), 0);
}

/// A build is in a cgroup of its own for its process limit always, and for memory only when it
/// has a memory limit: on cgroup v1 a memory cgroup would only account, and one removed stays
/// offline while the page cache the build wrote is charged to it (v2 has one cgroup for both).
#[test]
fn a_build_has_a_memory_cgroup_only_with_a_memory_limit() {
    if !sandbox() || !exact_process_count() {
        return;
    }
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        eprintln!("cgroup v2: one cgroup per build, for memory and processes alike");
        return;
    }
    let (_dir, store) = temp_store();
    let cgroups = |builder: DerivationBuilder| -> Vec<(String, String)> {
        let entry = build_root(&store, builder).unwrap();
        content_text(&store, &entry)
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                Some((controllers.to_string(), path.to_string()))
            })
            .collect()
    };
    let path_of = |cgroups: &[(String, String)], controller: &str| -> String {
        cgroups
            .iter()
            .find(|(controllers, _)| controllers.split(',').any(|c| c == controller))
            .map(|(_, path)| path.clone())
            .unwrap_or_else(|| panic!("no {controller} line in {cgroups:?}"))
    };
    let own = |path: &str| path.starts_with("/forjar-");

    let unlimited = cgroups(tools("unlimited", "cat /proc/self/cgroup > $out"));
    assert!(own(&path_of(&unlimited, "pids")), "{unlimited:?}");
    assert!(!own(&path_of(&unlimited, "memory")), "{unlimited:?}");

    let limited = cgroups(tools("limited", "cat /proc/self/cgroup > $out").memory_limit(256 << 20));
    assert!(own(&path_of(&limited, "pids")), "{limited:?}");
    assert!(own(&path_of(&limited, "memory")), "{limited:?}");
}

#[test]
fn a_memory_cap_stops_a_build_and_says_so() {
    if !sandbox() {
        return;
    }
    refused(
        "memory",
        tools(
            "hungry",
            "perl -e '$x = \"a\" x (400 * 1024 * 1024); print length $x' > $out",
        )
        .memory_limit(64 << 20),
        &["memory limit"],
    );
}

#[test]
fn the_log_is_captured_capped_and_its_tail_is_in_the_error() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let err = build_root(
        &store,
        Derivation::builder("fails").script("echo first; echo second >&2; echo third; exit 3"),
    )
    .unwrap_err();
    assert!(
        err.starts_with("build of `fails` (tests/sandbox.rs:"),
        "{err}"
    );
    assert!(
        err.contains("failed: the builder exited with status 3"),
        "{err}"
    );
    assert!(err.contains("  | first\n  | second\n  | third"), "{err}");
    let log_path = err
        .split("the whole log: ")
        .nth(1)
        .unwrap()
        .split("):")
        .next()
        .unwrap();
    assert_eq!(
        fs::read_to_string(log_path).unwrap(),
        "first\nsecond\nthird\n"
    );

    let err = build_root(
        &store,
        tools("chatty", "yes forjar | head -c 3000000; echo > $out").max_log_size(100_000),
    )
    .unwrap_err();
    assert!(
        err.contains("the build log passed its limit of 100000 bytes"),
        "{err}"
    );
    let log_path = err
        .split("the whole log: ")
        .nth(1)
        .unwrap()
        .split("):")
        .next()
        .unwrap();
    assert_eq!(fs::metadata(log_path).unwrap().len(), 100_000);
}

// ---------------------------------------------------------------- outputs

#[test]
fn a_missing_output_is_named_with_the_log_tail() {
    if !sandbox() {
        return;
    }
    let err = must_fail(
        "missing",
        Derivation::builder("lazy")
            .script("echo did nothing; echo > $out")
            .output("out")
            .output("dev"),
    );
    assert!(err.contains("output `dev` was not produced"), "{err}");
    assert!(err.contains("| did nothing"), "{err}");
}

#[test]
fn special_files_and_writes_beside_the_output_are_refused() {
    if !sandbox() {
        return;
    }
    refused(
        "fifo",
        tools("fifo", "mkdir $out; mkfifo $out/pipe"),
        &["is a FIFO"],
    );
    refused(
        "socket",
        tools(
            "socket",
            "mkdir $out; perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Local => \"$ENV{out}/sock\", Listen => 1) or die'",
        ),
        &["is a socket"],
    );
    refused(
        "beside",
        tools("beside", "echo x > $out; echo y > $(dirname $out)/extra"),
        &["wrote `extra` beside output `out`"],
    );
}

#[test]
fn outputs_are_canonicalised() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let entry = build_root(&store, tools("modes", "mkdir -p $out/d; echo x > $out/d/f; printf '#!/bin/sh\\n' > $out/run; chmod 700 $out/run; chmod 777 $out/d; ln -s d/f $out/l")).unwrap();
    let content = store.content_path(&entry);
    let meta = |p: &str| fs::symlink_metadata(content.join(p)).unwrap();
    assert_eq!(meta("d").mode() & 0o7777, 0o555);
    assert_eq!(meta("d/f").mode() & 0o7777, 0o444);
    assert_eq!(meta("run").mode() & 0o7777, 0o555);
    for p in ["d", "d/f", "run", "l"] {
        assert_eq!(meta(p).mtime(), 1, "{p}");
        assert_eq!(
            (meta(p).uid(), meta(p).gid()),
            (
                fs::metadata(store.dir()).unwrap().uid(),
                fs::metadata(store.dir()).unwrap().gid()
            ),
            "{p}"
        );
    }
    assert_eq!(fs::read_link(content.join("l")).unwrap(), Path::new("d/f"));
}

#[test]
fn references_are_found_when_an_output_mentions_an_input_and_not_otherwise() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let (plan, report) = apply(&store, |g| {
        let lib = g.add(sh("lib", "echo library > $out"));
        let other = g.add(sh("other", "echo other > $out"));
        let keeps = g.add(
            Derivation::builder("keeps")
                .script("echo \"uses $lib\" > $out")
                .input("lib", lib)
                .input("other", other)
                .build()
                .unwrap(),
        );
        let copies = g.add(
            Derivation::builder("copies")
                .script("read l < $lib; echo \"$l\" > $out")
                .input("lib", lib)
                .build()
                .unwrap(),
        );
        let me = g.add(sh("self", "echo \"I am $out\" > $out"));
        g.root("keeps", keeps);
        g.root("copies", copies);
        g.root("self", me);
    });
    report.unwrap();
    let entry = |name| entry_of(&plan, name);
    assert_eq!(
        store.meta(&entry("keeps")).unwrap().references,
        vec![entry("lib")]
    );
    assert!(store.meta(&entry("copies")).unwrap().references.is_empty());
    assert_eq!(
        store.meta(&entry("self")).unwrap().references,
        vec![entry("self")]
    );
    // A reference keeps its target alive through gc.
    let report = store.gc(false, || {}).unwrap();
    let dead: Vec<String> = report
        .dead
        .iter()
        .map(|(e, _)| e.name().to_string())
        .collect();
    assert!(
        dead.contains(&"other".to_string()) && !dead.contains(&"lib".to_string()),
        "{dead:?}"
    );
}

#[test]
fn what_an_input_refers_to_is_in_the_sandbox_too() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let (plan, report) = apply(&store, |g| {
        let data = g.add(sh("data", "echo payload > $out"));
        let pointer = g.add(
            Derivation::builder("pointer")
                .script("echo \"$data\" > $out")
                .input("data", data)
                .build()
                .unwrap(),
        );
        let reader = g.add(
            Derivation::builder("reader")
                .script("read path < $pointer; read v < \"$path\"; echo \"$v\" > $out")
                .input("pointer", pointer)
                .build()
                .unwrap(),
        );
        g.root("reader", reader);
    });
    report.unwrap();
    assert_eq!(
        content_text(&store, &plan.root_entry(&plan.roots()[0]).unwrap()),
        "payload\n"
    );
}

// ---------------------------------------------------------------- fixed outputs

fn serve_once(body: &'static str) -> (u16, std::thread::JoinHandle<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let (mut socket, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = socket.read(&mut request);
        use std::io::Write;
        socket.write_all(body.as_bytes()).unwrap();
        true
    });
    (port, handle)
}

/// A fixed-output derivation `fetch` that reads its output from the server on `port`, which
/// must serve `body`.
fn fetch_from(port: u16, body: &str) -> DerivationBuilder {
    Derivation::builder("fetch")
        .sandbox(SandboxLevel::HostTools)
        .builder([
            "/bin/bash",
            "-euc",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; echo GET >&3; cat <&3 > $out"),
        ])
        .network(true)
        .fixed_output(digest_of(body))
}

#[test]
fn a_fixed_output_derivation_gets_the_network_and_is_verified() {
    if !sandbox() {
        return;
    }
    let (port, server) = serve_once("fetched data\n");
    let (_dir, store) = temp_store();
    let entry = build_root(&store, fetch_from(port, "fetched data\n")).unwrap();
    assert!(server.join().unwrap());
    assert_eq!(content_text(&store, &entry), "fetched data\n");
    assert_eq!(
        store.meta(&entry).unwrap().kind,
        forjar::store::EntryKind::Fixed
    );
}

#[test]
fn a_fixed_output_with_the_wrong_digest_is_a_hash_mismatch() {
    if !sandbox() {
        return;
    }
    let specified = digest_of("what was promised\n");
    let err = must_fail(
        "mismatch",
        tools("fetch", "echo what arrived > $out").fixed_output(specified.clone()),
    );
    assert!(
        err.starts_with("hash mismatch in fixed-output derivation `fetch` (tests/sandbox.rs:"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "\n  specified: {specified}\n  got:       {}",
            digest_of("what arrived\n")
        )),
        "{err}"
    );
}

/// The tree of `nix-hash`'s test in forjar's NAR digest: a file, a script and a link.
const NAR_TREE: &str = "mkdir -p $out/sub; printf '#!/bin/sh\\n' > $out/sub/run; \
    chmod 755 $out/sub/run; ln -s sub/run $out/a-link; printf data > $out/b";

#[test]
fn sha256_fixed_outputs_are_checked_flat_and_recursive_and_shown_as_written() {
    if !sandbox() {
        return;
    }
    // `hello\n`, flat; the tree above, as `nix-hash --type sha256` digests it.
    let flat = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=";
    let nar = "sha256-PcymmZzuqoQs/iCQcgk/QCE/8YzqrXjfQT36OzfnJmQ=";
    let (_dir, store) = temp_store();
    let entry = build_root(
        &store,
        tools("hello", "echo hello > $out").fixed_output(flat),
    )
    .unwrap();
    assert_eq!(content_text(&store, &entry), "hello\n");
    assert_eq!(
        store.meta(&entry).unwrap().kind,
        forjar::store::EntryKind::Fixed
    );
    build_root(
        &store,
        tools("tree", NAR_TREE)
            .fixed_output(nar)
            .fixed_output_mode(forjar::HashMode::Recursive),
    )
    .unwrap();

    // A mismatch names both digests in the form the derivation wrote.
    let err = must_fail(
        "sri",
        tools("hello", "echo hallo > $out").fixed_output(flat),
    );
    assert!(
        err.contains(&format!("\n  specified: {flat}\n  got:       sha256-")),
        "{err}"
    );
    let hex = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
    let err = must_fail("hex", tools("hello", "echo hallo > $out").fixed_output(hex));
    assert!(
        err.contains(&format!("\n  specified: {hex}\n  got:       sha256:")),
        "{err}"
    );
    // A flat digest is of one file; the same tree under it is refused, saying why.
    let err = must_fail("flat-tree", tools("tree", NAR_TREE).fixed_output(nar));
    assert!(
        err.contains("not what a flat SHA-256 digest covers"),
        "{err}"
    );
    assert!(err.contains("takes the `recursive` mode"), "{err}");
}

#[test]
fn a_fixed_output_may_not_refer_to_store_entries() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let (_, report) = apply(&store, |g| {
        let dep = g.add(sh("dep", "echo dep > $out"));
        let bad = g.add(
            Derivation::builder("bad")
                .script("echo \"$dep\" > $out")
                .input("dep", dep)
                .fixed_output(digest_of("anything\n"))
                .build()
                .unwrap(),
        );
        g.root("bad", bad);
    });
    let err = report.unwrap_err().to_string();
    assert!(
        err.contains("a fixed-output derivation may not refer to store entries"),
        "{err}"
    );
}

#[test]
fn after_gc_a_root_in_the_store_needs_neither_its_fetch_nor_its_server() {
    if !sandbox() {
        return;
    }
    let (port, server) = serve_once("source of the app\n");
    let (_dir, store) = temp_store();
    let define = |g: &mut Graph| {
        let fetch = g.add(fetch_from(port, "source of the app\n").build().unwrap());
        let configured = g.add(
            Derivation::builder("configured")
                .script("read x < $src; echo \"configured $x\" > $out")
                .input("src", fetch)
                .build()
                .unwrap(),
        );
        // The app copies what it was built from and refers to none of it, so gc keeps it alone.
        let app = g.add(
            Derivation::builder("app")
                .script("read x < $cfg; echo \"app: $x\" > $out")
                .input("cfg", configured)
                .build()
                .unwrap(),
        );
        g.root("app", app);
    };
    let (plan, first) = apply(&store, define);
    assert_eq!(first.unwrap().built, ["fetch", "configured", "app"]);
    assert!(server.join().unwrap(), "the server has served, and is gone");
    let collected = store.gc(false, || {}).unwrap();
    assert_eq!(collected.dead.len(), 2, "{collected:?}");

    let (_, again) = apply(&store, define);
    let again = again.expect("the fetch is not needed, so its server being gone is no error");
    assert!(again.built.is_empty(), "{again:?}");
    assert_eq!(again.to_string(), "Nothing to do: all 1 cached");
    assert_eq!(
        content_text(&store, &plan.root_entry(&plan.roots()[0]).unwrap()),
        "app: configured source of the app\n"
    );
}

// ---------------------------------------------------------------- the lifecycle

#[test]
fn apply_twice_builds_nothing_the_second_time() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let define = |g: &mut Graph| {
        let a = g.add(sh("a", "echo a > $out"));
        let b = g.add(
            Derivation::builder("b")
                .script("read x < $a; echo \"$x$x\" > $out")
                .input("a", a)
                .build()
                .unwrap(),
        );
        g.root("b", b);
    };
    let first: Report = apply(&store, define).1.unwrap();
    assert_eq!(first.built, vec!["a", "b"]);
    let second = apply(&store, define).1.unwrap();
    assert!(second.built.is_empty());
    // The root is in the store, so nothing else is looked at.
    assert_eq!(second.to_string(), "Nothing to do: all 1 cached");
    assert!(store.verify().unwrap().is_ok());
    let mut graph = Graph::new();
    define(&mut graph);
    let plan = Plan::new(&graph, &store).unwrap();
    assert_eq!(plan.summary().build, 0);
}

#[test]
fn builds_are_reproducible_in_the_sandbox() {
    if !sandbox() {
        return;
    }
    let (_one, first) = temp_store();
    let (_two, second) = temp_store();
    let builder = || {
        tools(
            "repro",
            "mkdir $out; date -u +%Y > /dev/null; echo $PWD $HOME $(id -un) $(hostname) > $out/env; ls / > $out/root",
        )
        .allow_impure()
    };
    let a = build_root(&first, builder()).unwrap();
    let b = build_root(&second, builder()).unwrap();
    assert_eq!(
        first.meta(&a).unwrap().digest,
        second.meta(&b).unwrap().digest
    );
}

#[test]
fn two_applies_at_once_build_each_derivation_once() {
    if !sandbox() {
        return;
    }
    let (dir, _store) = temp_store();
    let define = |g: &mut Graph| {
        let shared = g.add(
            tools("shared", "sleep 0.3; echo shared > $out")
                .build()
                .unwrap(),
        );
        let mut tops = Vec::new();
        for i in 0..3 {
            let d = tools(
                &format!("top{i}"),
                "sleep 0.1; read s < $shared; echo \"$s\" > $out",
            )
            .input("shared", shared)
            .build()
            .unwrap();
            tops.push(g.add(d));
        }
        for (i, top) in tops.into_iter().enumerate() {
            g.root(&format!("top{i}"), top);
        }
    };
    let reports: Vec<Report> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let path = dir.path().join("store");
                s.spawn(move || {
                    let store = Store::open(path).unwrap();
                    apply(&store, define).1.unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut built: Vec<String> = reports.iter().flat_map(|r| r.built.clone()).collect();
    built.sort();
    assert_eq!(
        built,
        vec!["shared", "top0", "top1", "top2"],
        "each derivation is built exactly once"
    );
    let store = Store::open(dir.path().join("store")).unwrap();
    assert!(store.verify().unwrap().is_ok());
    let entry = store.resolve("shared").unwrap();
    assert_eq!(store.log(&entry).unwrap(), b"");
    let top = store.resolve("top0").unwrap();
    assert_eq!(content_text(&store, &top), "shared\n");
}

#[test]
fn a_builder_that_is_not_in_the_sandbox_is_named() {
    if !sandbox() {
        return;
    }
    let err = must_fail(
        "missing builder",
        Derivation::builder("nobuilder").builder(["/usr/bin/env", "true"]),
    );
    assert!(
        err.starts_with("cannot build `nobuilder` (tests/sandbox.rs:"),
        "{err}"
    );
    assert!(
        err.ends_with(
            "): cannot run the builder `/usr/bin/env`: ENOENT: No such file or directory"
        ),
        "{err}"
    );
    assert!(!err.contains("the kernel gives no sandbox"), "{err}");
}

#[test]
fn source_date_epoch_is_set_so_a_stamped_output_is_the_same_every_time() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    // The advice of the `date` check, followed; the derivation's own value wins.
    let stamped = build_root(
        &store,
        tools(
            "stamped",
            "date -u -d @$SOURCE_DATE_EPOCH +%FT%TZ > $out; echo $SOURCE_DATE_EPOCH >> $out",
        ),
    )
    .unwrap();
    assert_eq!(
        content_text(&store, &stamped),
        "1980-01-01T00:00:00Z\n315532800\n"
    );
    let own = build_root(
        &store,
        tools("own", "echo $SOURCE_DATE_EPOCH > $out").env("SOURCE_DATE_EPOCH", "1700000000"),
    )
    .unwrap();
    assert_eq!(content_text(&store, &own), "1700000000\n");
}

#[test]
fn read_only_paths_that_meet_the_sandboxs_own_are_refused_before_it_runs() {
    if !sandbox() {
        return;
    }
    let ro = |path: &str| {
        Derivation::builder("ro")
            .ro_path(path)
            .script("echo > $out")
    };
    for (path, needle) in [
        (
            "/etc",
            "`/etc`: it would cover `/etc/passwd`, which the sandbox makes for every build",
        ),
        ("/proc/self", "`/proc/self`: it is inside `/proc`"),
        ("/dev/shm", "`/dev/shm`: it is inside `/dev`"),
        ("/tmp", "`/tmp`: the sandbox makes it for every build"),
    ] {
        let err = must_fail(path, ro(path));
        assert!(err.contains(needle), "{path}: {err}");
        assert!(!err.contains("the kernel gives no sandbox"), "{err}");
    }
    // On a merged-/usr host `/lib` is a symlink, under which the sandbox binds `/bin/sh`'s
    // libraries.
    if fs::symlink_metadata("/lib").is_ok_and(|m| m.file_type().is_symlink()) {
        let err = must_fail("/lib", ro("/lib"));
        assert!(
            err.contains(
                "`/lib`: it is a symlink on this host (to `usr/lib`), and the sandbox binds `/lib/"
            ),
            "{err}"
        );
    }
    // What fits is given.
    let (_dir, store) = temp_store();
    let entry = build_root(
        &store,
        ro("/etc/ssl").script("[ -d /etc/ssl ] && echo > $out"),
    );
    assert!(entry.is_ok(), "{entry:?}");
}

/// A request made by hand: `script` run by `/bin/sh` with the host's tools, in `working_dir`,
/// with `scratch` paths and the file `src/data`, for the store directory `store_dir`.
fn hand_made(
    store_dir: &Path,
    working_dir: &str,
    scratch: &[&str],
    script: &str,
) -> forjar::request::BuildRequest {
    use forjar::hash::HostFingerprint;
    use forjar::name::{Name, OutputName};
    use forjar::request::{Arg, BuildRequest, CleanRelPath, RequestParts, System};
    BuildRequest::new(RequestParts {
        name: Name::new("hand-made").unwrap(),
        system: System::host(),
        args: ["/bin/sh", "-c", script]
            .iter()
            .enumerate()
            .map(|(i, a)| Arg::new(i, *a).unwrap())
            .collect(),
        working_dir: CleanRelPath::new("working directory", working_dir).unwrap(),
        scratch_paths: scratch
            .iter()
            .map(|p| CleanRelPath::new("scratch path", *p).unwrap())
            .collect(),
        outputs: [OutputName::new("out").unwrap()].into(),
        env: Default::default(),
        inputs: Default::default(),
        files: [(
            CleanRelPath::new("file", "src/data").unwrap(),
            b"data in src\n".to_vec(),
        )]
        .into(),
        constraints: Default::default(),
        sandbox: SandboxLevel::HostTools,
        fixed_output: None,
        store_dir: forjar::name::StoreDir::from_path(store_dir).unwrap(),
        host: Some(HostFingerprint::current()),
        toolchain: None,
        input_lists: Default::default(),
    })
    .unwrap()
}

/// Runs a hand-made request straight in the sandbox, in fresh directories under `dir`, with its
/// stdout and stderr apart (as a worker runs a plain action); the outcome and the two streams.
fn run_hand_made(
    dir: &Path,
    request: &forjar::request::BuildRequest,
    cancel: Option<&std::sync::atomic::AtomicBool>,
) -> Result<(forjar::sandbox::Outcome, String, String), String> {
    use forjar::name::OutputName;
    let top = tempfile::tempdir_in(dir).unwrap();
    let (build_dir, staging) = (top.path().join("build"), top.path().join("staging"));
    for d in [&build_dir, &staging] {
        fs::create_dir(d).unwrap();
    }
    let spec = forjar::sandbox::BuildSpec {
        request,
        inputs: Vec::new(),
        referenced: Vec::new(),
        toolchain: None,
        outputs: vec![(
            OutputName::new("out").unwrap(),
            staging,
            request.store_dir.as_path().join("hand-made-out"),
        )],
        build_dir,
        limits: Default::default(),
        cores: 1,
        cancel,
        hold: None,
        under_way: None,
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    forjar::sandbox::run_split(&spec, &mut stdout, &mut stderr, &|| 0)
        .map(|finished| {
            let text = |bytes| String::from_utf8(bytes).unwrap();
            (finished.outcome, text(stdout), text(stderr))
        })
        .map_err(|e| e.to_string())
}

/// The caller's work handed to the sandbox (`under_way`; forjar marks the outputs' entries
/// there) runs while the build does, not after it: this builder ends only once that work made
/// a file it waits for in `/build`.
#[test]
fn the_work_under_way_runs_while_the_build_does() {
    use forjar::name::OutputName;
    use forjar::sandbox::Outcome;
    use std::sync::atomic::{AtomicUsize, Ordering};

    if !sandbox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let (build_dir, staging) = (dir.path().join("build"), dir.path().join("staging"));
    for d in [&store_dir, &build_dir, &staging] {
        fs::create_dir(d).unwrap();
    }
    let script = "i=0; while [ ! -e /build/go ]; do i=$((i + 1)); \
                  [ $i -lt 1000 ] || exit 3; sleep 0.01; done; echo ok > $out";
    let request = hand_made(&store_dir, "build", &[], script);
    let calls = AtomicUsize::new(0);
    let go = build_dir.join("go");
    let under_way = || {
        calls.fetch_add(1, Ordering::SeqCst);
        fs::write(&go, b"").unwrap();
    };
    let spec = forjar::sandbox::BuildSpec {
        request: &request,
        inputs: Vec::new(),
        referenced: Vec::new(),
        toolchain: None,
        outputs: vec![(
            OutputName::new("out").unwrap(),
            staging.clone(),
            request.store_dir.as_path().join("hand-made-out"),
        )],
        build_dir,
        limits: Default::default(),
        cores: 1,
        cancel: None,
        hold: None,
        under_way: Some(&under_way),
    };
    let finished = forjar::sandbox::run(&spec, &mut Vec::new(), &|| 0).unwrap();
    assert_eq!(finished.outcome, Outcome::Exited(0));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(fs::read_to_string(staging.join("content")).unwrap(), "ok\n");
}

/// A request's working directory and scratch paths, which no derivation of the builder API
/// sets (a remote worker's actions do), and its stdout and stderr kept apart.
#[test]
fn a_request_starts_in_its_working_directory_and_has_its_scratch_paths() {
    use forjar::sandbox::Outcome;

    if !sandbox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    fs::create_dir(&store_dir).unwrap();
    let script = "pwd; echo \"PWD=$PWD\"; cat data; \
         echo scratch > /scratch/a; echo cache > /var/cache/b; cat /scratch/a /var/cache/b; \
         stat -c 'mode %a' /var/cache; \
         touch /var/c 2>/dev/null || echo '/var is read-only'; \
         echo 'to stderr' >&2; echo > $out";
    let run = |working_dir: &str| {
        let request = hand_made(&store_dir, working_dir, &["scratch", "var/cache"], script);
        run_hand_made(dir.path(), &request, None)
    };

    let (outcome, stdout, stderr) = run("build/src").unwrap();
    assert_eq!(outcome, Outcome::Exited(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "/build/src\nPWD=/build/src\ndata in src\nscratch\ncache\nmode 1777\n/var is read-only\n"
    );
    assert_eq!(stderr, "to stderr\n");

    // A working directory the build directory does not have stops the build before it runs.
    let err = run("build/missing").unwrap_err();
    assert!(
        err.contains("cannot enter the working directory `/build/missing`"),
        "{err}"
    );
}

/// Builds started at the same moment on several threads do not hold each other's log pipes:
/// quick builds end while slow ones started beside them still run. (A supervisor forked while
/// another thread's pipes were open kept their write ends, and that build's log did not end
/// until the supervisor's own build did.)
#[test]
fn a_build_does_not_wait_for_one_started_beside_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Barrier, mpsc};

    if !sandbox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    fs::create_dir(&store_dir).unwrap();
    let slow = hand_made(&store_dir, "build", &[], "sleep 20; echo > $out");
    let quick = hand_made(&store_dir, "build", &[], "echo > $out");
    let stop = AtomicBool::new(false);
    let (done, finished) = mpsc::channel();
    let quick_done = done.clone();
    // The threads start at once, so that forks interleave with the other threads' pipes.
    const SLOW: usize = 4;
    let barrier = Barrier::new(SLOW + 1);
    let (dir, slow, quick, stop, barrier) = (dir.path(), &slow, &quick, &stop, &barrier);
    std::thread::scope(|scope| {
        for _ in 0..SLOW {
            let done = done.clone();
            scope.spawn(move || {
                barrier.wait();
                let outcome = run_hand_made(dir, slow, Some(stop)).map(|r| r.0);
                done.send(("slow", outcome)).unwrap();
            });
        }
        drop(done);
        scope.spawn(move || {
            barrier.wait();
            for _ in 0..20 {
                let outcome = run_hand_made(dir, quick, None).map(|r| r.0);
                quick_done.send(("quick", outcome)).unwrap();
            }
        });
        for _ in 0..20 {
            let (which, outcome) = finished.recv().unwrap();
            assert_eq!(
                (which, outcome),
                ("quick", Ok(forjar::sandbox::Outcome::Exited(0))),
                "a quick build waited for the slow one"
            );
        }
        stop.store(true, Ordering::Relaxed);
        for _ in 0..SLOW {
            let (which, outcome) = finished.recv().unwrap();
            assert_eq!(
                (which, outcome),
                ("slow", Ok(forjar::sandbox::Outcome::Cancelled))
            );
        }
    });
}
