//! The `hello` example, run as a user runs it: `plan`, `apply`, `graph`, `why-depends`.

use std::fs;
use std::path::Path;

use forjar_suite::{run_example, stderr, stdout, store_entries};

#[test]
fn plan_lists_every_node_with_a_summary_and_writes_no_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = run_example("hello", &store, &["plan"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("import  cc "), "{text}");
    assert!(lines[0].contains(" host packages "), "{text}");
    assert!(lines[1].starts_with("import  hello-src "), "{text}");
    assert!(lines[2].starts_with("build   message "), "{text}");
    assert!(lines[3].starts_with("build   hello "), "{text}");
    assert!(lines[3].contains("examples/hello/main.rs:"), "{text}");
    assert!(lines[4].starts_with("build   hello-bundle "), "{text}");
    assert!(!text.contains("impure"), "every build is hermetic: {text}");
    assert_eq!(
        lines.last(),
        Some(&"Plan: 3 to build, 0 cached, 1 source and 1 toolchain to import")
    );

    // Against a store that does not exist, the read-only commands say so and create nothing.
    assert!(
        stderr(&out).contains(&format!(
            "note: there is no store at `{}` yet; planned against an empty one",
            store.display()
        )),
        "{}",
        stderr(&out)
    );
    for args in [
        &["apply", "--dry-run"][..],
        &["show", "hello"],
        &["graph"],
        &["plan", "--explain"],
        &["why-depends", "hello-bundle", "message"],
    ] {
        let out = run_example("hello", &store, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let log = run_example("hello", &store, &["log", "hello"]);
    assert_eq!(log.status.code(), Some(1), "{}", stderr(&log));
    assert!(!store.exists(), "a read-only command made the store");
    // Nor in an empty directory, where `apply` would make one.
    fs::create_dir(&store).unwrap();
    let out = run_example("hello", &store, &["plan"]);
    assert_eq!(stdout(&out), text, "{}", stderr(&out));
    assert!(
        fs::read_dir(&store).unwrap().next().is_none(),
        "plan made a store in an empty directory"
    );

    // Against the store once made, the plan is the same: keys are those the store will have.
    drop(forjar::store::Store::open(&store).unwrap());
    let again = run_example("hello", &store, &["plan"]);
    assert_eq!(
        stdout(&again),
        text,
        "planning is side-effect free and deterministic"
    );
    let dry = run_example("hello", &store, &["apply", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).starts_with(&text),
        "a dry run shows the same plan"
    );
    assert!(
        store_entries(&store).is_empty(),
        "plan or a dry run wrote store entries"
    );
    for dir in [".roots", ".logs", ".tmp"] {
        assert!(
            fs::read_dir(store.join(dir)).unwrap().next().is_none(),
            "{dir} was written"
        );
    }
}

#[test]
fn apply_builds_the_example_and_a_second_apply_builds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = run_example("hello", &store, &["apply"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.ends_with("Built 3, imported 2, 0 cached\nRecorded generation 1 of profile `hello`\n"),
        "{text}"
    );
    let bundle = text
        .lines()
        .next()
        .unwrap()
        .strip_prefix("hello -> ")
        .unwrap();
    assert_eq!(
        fs::read_to_string(Path::new(bundle).join("share/output.txt")).unwrap(),
        "hello, world\n"
    );
    assert_eq!(
        fs::read_to_string(Path::new(bundle).join("share/message.txt")).unwrap(),
        "a hermetic greeting, built in /build\n"
    );
    let run = std::process::Command::new(Path::new(bundle).join("bin/hello"))
        .output()
        .unwrap();
    assert_eq!(stdout(&run), "hello, world\n");

    let again = run_example("hello", &store, &["apply"]);
    assert!(
        stdout(&again)
            .ends_with("Nothing to do: all 1 cached\nStill generation 1 of profile `hello`\n"),
        "{}",
        stdout(&again)
    );
    let verify = run_example("hello", &store, &["verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    let roots = run_example("hello", &store, &["roots"]);
    assert!(
        stdout(&roots).starts_with("hello/hello  "),
        "{}",
        stdout(&roots)
    );
}

#[test]
fn plan_json_graph_and_why_depends() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = run_example("hello", &store, &["plan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["summary"]["build"], 3);
    assert_eq!(json["summary"]["import"], 1);
    assert_eq!(json["summary"]["toolchains"], 1);
    let toolchain = &json["nodes"][0];
    assert_eq!(toolchain["kind"], "toolchain", "{toolchain}");
    let packages = toolchain["packages"].as_array().unwrap();
    assert!(
        packages
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("gcc ")),
        "{toolchain}"
    );
    assert_eq!(json["roots"][0]["name"], "hello");

    let out = run_example("hello", &store, &["graph", "--dot"]);
    assert!(stdout(&out).starts_with("digraph forjar {"));

    let out = run_example(
        "hello",
        &store,
        &["why-depends", "hello-bundle", "hello-src"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "hello-bundle  (input `hello`)\n└── hello  (input `src`)\n    └── hello-src\n"
    );
    let out = run_example("hello", &store, &["why-depends", "hello-src", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "`hello-src` does not depend on `hello`\n");
    let out = run_example("hello", &store, &["why-depends", "nothing", "hello"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: no derivation or source is named `nothing`; `plan` lists them\n"
    );
}

#[test]
fn colour_follows_no_color_clicolor_force_and_the_color_option() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut command = std::process::Command::new(forjar_suite::example("hello"));
        command
            .arg("--store")
            .arg(&store)
            .args(args)
            .env("FORJAR_LOCK", forjar_suite::root().join("forjar.lock"))
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE");
        command.envs(env.iter().copied()).output().unwrap()
    };
    // A pipe gets no colour unless it is forced.
    let plain = run(&[], &["plan"]);
    assert!(!stdout(&plain).contains('\x1b'), "{}", stdout(&plain));
    let forced = run(&[("CLICOLOR_FORCE", "1")], &["plan"]);
    let text = stdout(&forced);
    assert!(text.contains("\x1b[33mbuild\x1b[0m   hello "), "{text:?}");
    assert!(text.contains("\x1b[36mimport\x1b[0m  cc "), "{text:?}");
    assert!(
        text.contains("examples/hello/main.rs:"),
        "names and paths are not painted: {text:?}"
    );
    for (env, args) in [
        (
            &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")][..],
            &["plan"][..],
        ),
        (&[("CLICOLOR_FORCE", "1")], &["--color", "never", "plan"]),
    ] {
        let out = run(env, args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            !stdout(&out).contains('\x1b'),
            "{env:?} {args:?}: {}",
            stdout(&out)
        );
    }
    let error = run(&[], &["--color=always", "log", "nosuch"]);
    assert_eq!(error.status.code(), Some(2));
    assert!(
        stderr(&error).starts_with("\x1b[1m\x1b[31merror:\x1b[0m no "),
        "{:?}",
        stderr(&error)
    );
}

#[test]
fn a_bad_command_line_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_example("hello", dir.path(), &["plna"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn completions_are_a_script_bash_loads_and_version_names_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_example("hello", dir.path(), &["completions", "bash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let script = stdout(&out);
    assert!(
        script.contains("_hello()") && script.contains("apply"),
        "{script}"
    );
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg("source /dev/stdin && complete -p hello")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut bash| {
            use std::io::Write;
            bash.stdin.take().unwrap().write_all(script.as_bytes())?;
            bash.wait_with_output()
        })
        .unwrap();
    assert!(stdout(&loaded).contains("_hello"), "{}", stderr(&loaded));
    let bad = run_example("hello", dir.path(), &["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("[possible values: bash, elvish, fish, powershell, zsh]"));
    let version = run_example("hello", dir.path(), &["--version"]);
    assert_eq!(
        stdout(&version),
        format!("hello (forjar {})\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn prefetch_prints_the_digests_of_a_download_as_nix_and_forjar_write_them() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = socket.read(&mut request);
        socket
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n")
            .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/hello");
    let out = run_example("hello", dir.path(), &["prefetch", &url]);
    server.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // `nix-hash --type sha256 [--flat]` (Nix 2.8) of a file holding `hello\n`, in SRI form.
    let flat = "fixed_output = \"sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=\"\n";
    let nar = "fixed_output = \"sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=\", \
               fixed_output_mode = \"recursive\"\n";
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("{flat}{nar}fixed_output = \"blake3:")),
        "{text}"
    );
    // A path gives the same digests.
    let file = dir.path().join("hello");
    fs::write(&file, "hello\n").unwrap();
    let local = run_example("hello", dir.path(), &["prefetch", file.to_str().unwrap()]);
    assert_eq!(stdout(&local), text);
    let json = run_example(
        "hello",
        dir.path(),
        &["prefetch", "--json", file.to_str().unwrap()],
    );
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        json["sha256"],
        "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="
    );
    assert_eq!(
        json["sha256_recursive"],
        "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="
    );
    assert!(text.contains(json["blake3"].as_str().unwrap()), "{json}");
    let missing = run_example(
        "hello",
        dir.path(),
        &["prefetch", &format!("http://127.0.0.1:{port}/gone")],
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("cannot download"),
        "{}",
        stderr(&missing)
    );
}
