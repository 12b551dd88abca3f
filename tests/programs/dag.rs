//! A program for the apply tests: a layered DAG shaped by environment variables.
//!
//! - `DAG_LAYERS` (3) layers of `DAG_WIDTH` (4) derivations `n<layer>-<i>`; each depends on
//!   two of the layer before, and one root `top` depends on the whole last layer.
//! - Each build sleeps `DAG_SLEEP` seconds (0) and writes `DAG_FILES` files (2).
//! - The derivations named in `DAG_FAIL` (comma-separated) exit 1 after printing a line.
//! - The derivations named in `DAG_NOISE` also write 8 random bytes to `noise`.
//! - `DAG_SALT` changes every key.
//! - A list of names may be `*`: every derivation of the layers.
//! - The derivations named in `DAG_COMMENT` have a comment added to their script: a new key,
//!   the same output.
//! - The derivations named in `DAG_EXTRA` also write a file `extra`: a new key and output.
//! - The derivations named in `DAG_CGROUP` also write their `/proc/self/cgroup` to `cgroup`.

use forjar::prelude::*;

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn number(name: &str, default: usize) -> usize {
    let value = var(name, &default.to_string());
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name} must be a whole number, not {value:?}"))
}

fn main() -> forjar::ExitCode {
    let layers = number("DAG_LAYERS", 3);
    let width = number("DAG_WIDTH", 4);
    let files = number("DAG_FILES", 2);
    let sleep = var("DAG_SLEEP", "0");
    let salt = var("DAG_SALT", "");
    let fail = var("DAG_FAIL", "");
    let noise = var("DAG_NOISE", "");
    let comment = var("DAG_COMMENT", "");
    let extra = var("DAG_EXTRA", "");
    let cgroup = var("DAG_CGROUP", "");
    let named = |list: &str, name: &str| list == "*" || list.split(',').any(|f| f == name);
    forjar::main!(|g| {
        let mut previous: Vec<Drv> = Vec::new();
        for layer in 0..layers {
            let mut current = Vec::new();
            for i in 0..width {
                let name = format!("n{layer}-{i}");
                let failing = named(&fail, &name);
                let mut script = format!(
                    "echo \"making $NAME\"\nsleep {sleep}\nmkdir -p $out\nfor i in $(seq 1 {files}); do echo \"$NAME $i $SALT\" > $out/f$i; done\n"
                );
                if named(&noise, &name) {
                    script.push_str("head -c 8 /dev/urandom > $out/noise\n");
                }
                if named(&comment, &name) {
                    script.push_str("# the output does not change\n");
                }
                if named(&extra, &name) {
                    script.push_str("echo extra > $out/extra\n");
                }
                if named(&cgroup, &name) {
                    script.push_str("cat /proc/self/cgroup > $out/cgroup\n");
                }
                if failing {
                    script.push_str("echo \"$NAME gives up\" >&2\nexit 1\n");
                }
                let mut builder = Derivation::builder(&name)
                    .sandbox(SandboxLevel::HostTools)
                    .script(script)
                    .env("NAME", name.as_str())
                    .env("SALT", salt.as_str());
                if named(&noise, &name) {
                    builder = builder.allow_impure();
                }
                if !previous.is_empty() {
                    for k in [i % previous.len(), (i + 1) % previous.len()] {
                        builder = builder.input(format!("dep{k}"), previous[k]);
                    }
                }
                current.push(g.add(builder.build()?));
            }
            previous = current;
        }
        let deps: Vec<String> = (0..previous.len()).map(|k| format!("$dep{k}")).collect();
        let mut top = Derivation::builder("top")
            .sandbox(SandboxLevel::HostTools)
            .script(format!(
                "mkdir -p $out\nfor d in {}; do cat $d/f1 >> $out/all; done\n",
                deps.join(" ")
            ));
        for (k, drv) in previous.iter().enumerate() {
            top = top.input(format!("dep{k}"), drv);
        }
        let top = g.add(top.build()?);
        g.root("top", top);
        Ok(())
    })
}
