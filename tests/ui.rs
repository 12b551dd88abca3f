//! The DSL's compile-time errors, each on the user's token: `tests/ui/<topic>/<mistake>.rs`
//! with its expected `.stderr`. `tests/ui/pass/` must compile and run. Regenerate the
//! expectations with `TRYBUILD=overwrite cargo test --test ui`, and review them like code.

use std::path::Path;

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let mut topics: Vec<_> = std::fs::read_dir(&root)
        .expect("tests/ui exists")
        .map(|entry| entry.expect("tests/ui is readable").file_name())
        .filter(|name| name != "pass")
        .collect();
    topics.sort();
    for topic in topics {
        cases.compile_fail(format!("tests/ui/{}/*.rs", topic.to_string_lossy()));
    }
    cases.pass("tests/ui/pass/*.rs");
}
