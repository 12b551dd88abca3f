//! The `hello` example, run as a user runs it: `plan`, `graph`, `why-depends`.

use forjar_suite::{run_example, stderr, stdout};

#[test]
fn plan_lists_every_node_with_a_summary_and_writes_no_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = run_example("hello", &store, &["plan"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("import  hello-src "), "{text}");
    assert!(lines[1].starts_with("build*  hello "), "{text}");
    assert!(lines[1].contains("examples/hello/main.rs:"), "{text}");
    assert!(lines[2].starts_with("build   hello-launcher "), "{text}");
    assert_eq!(
        lines.last(),
        Some(&"Plan: 2 to build, 0 cached, 1 source to import")
    );

    let again = run_example("hello", &store, &["plan"]);
    assert_eq!(
        stdout(&again),
        text,
        "planning is side-effect free and deterministic"
    );
    let entries: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(entries.is_empty(), "plan wrote store entries: {entries:?}");
}

#[test]
fn plan_json_graph_and_why_depends() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = run_example("hello", &store, &["plan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["summary"]["build"], 2);
    assert_eq!(json["summary"]["import"], 1);
    assert_eq!(json["roots"][0]["name"], "hello");

    let out = run_example("hello", &store, &["graph", "--dot"]);
    assert!(stdout(&out).starts_with("digraph forjar {"));

    let out = run_example(
        "hello",
        &store,
        &["why-depends", "hello-launcher", "hello-src"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "hello-launcher  (input `hello`)\n└── hello  (input `src`)\n    └── hello-src\n"
    );
    let out = run_example("hello", &store, &["why-depends", "hello-src", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "`hello-src` does not depend on `hello`\n");
    let out = run_example("hello", &store, &["why-depends", "nothing", "hello"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: no derivation or source is named `nothing`\n"
    );
}

#[test]
fn a_bad_command_line_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_example("hello", dir.path(), &["plna"]);
    assert_eq!(out.status.code(), Some(2));
}
