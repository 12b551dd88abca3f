//! Builds under the usual limit of 1,024 open files: a build binds its whole input closure, and
//! forjar must not need a descriptor per bound path at once. This test binary lowers its own
//! limit, so its tests live apart from the others.

use std::process::Command;

use forjar::prelude::*;
use forjar_suite::{apply, dag, fresh_salt, sandbox, stderr, with_open_file_limit};

/// Sets this process's open-file limit, soft and hard, to `limit`.
fn limit_open_files(limit: u64) {
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_NOFILE, limit, limit).expect("the limit can be lowered");
}

#[test]
fn a_build_with_1500_inputs_runs_under_a_limit_of_1024_open_files() {
    if !sandbox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = forjar::store::Store::open(dir.path().join("store")).unwrap();
    let sources = dir.path().join("sources");
    std::fs::create_dir(&sources).unwrap();
    let salt = fresh_salt("wide");
    for i in 0..1500 {
        std::fs::write(sources.join(format!("s{i}")), format!("{salt} {i}\n")).unwrap();
    }
    limit_open_files(1024);
    let (plan, report) = apply(&store, |g| {
        let mut wide = Derivation::builder("wide")
            .script("read a < $s0; read b < $s1499; printf '%s\\n%s\\n' \"$a\" \"$b\" > $out");
        for i in 0..1500 {
            wide = wide.input(
                format!("s{i}"),
                Source::file(sources.join(format!("s{i}"))).unwrap(),
            );
        }
        let wide = g.add(wide.build().unwrap());
        g.root("wide", wide);
    });
    report.unwrap();
    let entry = &plan.root_entry(&plan.roots()[0]).unwrap();
    assert_eq!(
        std::fs::read_to_string(store.content_path(entry)).unwrap(),
        format!("{salt} 0\n{salt} 1499\n")
    );
}

#[test]
fn a_program_builds_a_dag_of_2400_under_a_hard_limit_of_1024_open_files() {
    if !sandbox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let salt = fresh_salt("many");
    // 600 layers of 4: the root's input closure is all 2,400 derivations.
    let mut command: Command = dag(
        &store,
        &[
            ("DAG_LAYERS", "600"),
            ("DAG_SALT", &salt),
            ("DAG_FILES", "1"),
        ],
        &["-q", "apply", "-j", "2"],
    );
    with_open_file_limit(&mut command, 1024);
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_limit_too_low_for_the_sandbox_is_named_with_what_to_do_and_loses_nothing() {
    if !sandbox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let salt = fresh_salt("low-limit");
    let env = [("DAG_SALT", salt.as_str())];
    let mut command: Command = dag(&store, &env, &["-q", "apply", "-j", "1"]);
    with_open_file_limit(&mut command, 16);
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "the build's sandbox needs more open files than it may have: the limit of 16 open \
             files is too low; raise it (`ulimit -n`, or LimitNOFILE= for a service) and run again"
        ),
        "{}",
        stderr(&out)
    );
    // Nothing half made: with the limit raised, the same apply builds everything, and no
    // staging is left behind.
    let out = dag(&store, &env, &["-q", "apply"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let leftovers: Vec<_> = std::fs::read_dir(store.join(".tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
