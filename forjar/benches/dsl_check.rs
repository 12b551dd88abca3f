//! What the DSL costs at compile time: `cargo check` of a program with 200 derivations written
//! with `#[derive(Derivation)]`, against the same 200 written with the builder API, measured in
//! the same run.
//!
//! ```text
//! bench/dsl-check [--runs N] [--opt-macros]
//! ```
//!
//! Both programs are generated under `target/dsl-check/`, depend on this checkout of forjar,
//! and share one target directory, so forjar and its dependencies are built once and excluded
//! from the times. Two cases, alternating derive and builder on each run:
//!
//! - clean: `cargo clean -p <program>`, then `cargo check` (the program's whole crate);
//! - touch: one of the ten modules changed, then `cargo check` (incremental).
//!
//! `--opt-macros` gives both programs `[profile.dev.build-override] opt-level = 3`, so that
//! forjar-macros runs optimised (as a user may set it), with a target directory of its own.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const DERIVATIONS: usize = 200;
const MODULES: usize = 10;
const PER_MODULE: usize = DERIVATIONS / MODULES;

/// The script of every derivation but the first, which has no `dep`.
const SCRIPT: &str = r#"
    mkdir -p $out
    echo "$greeting $level" > $out/message
    cat $dep/message >> $out/message
"#;

const FIRST_SCRIPT: &str = r#"
    mkdir -p $out
    echo "$greeting $level" > $out/message
"#;

fn script(i: usize) -> &'static str {
    if i == 0 { FIRST_SCRIPT } else { SCRIPT }
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    Derive,
    Builder,
}

impl Style {
    fn name(self) -> &'static str {
        match self {
            Style::Derive => "derive",
            Style::Builder => "builder",
        }
    }
}

fn main() {
    let runs = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .map_or(5, |n| n.parse().expect("--runs takes a number"));
    let opt_macros = std::env::args().any(|a| a == "--opt-macros");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("forjar/ is in the workspace")
        .to_path_buf();
    let out = workspace.join("target/dsl-check");
    let target = out.join(if opt_macros { "target-opt" } else { "target" });
    let styles = [Style::Derive, Style::Builder];
    for style in styles {
        generate(&workspace, &out, style, opt_macros);
    }
    // Builds forjar and its dependencies once; checks that both programs compile.
    for style in styles {
        check(&out, &target, style);
    }

    let mut clean = [Vec::new(), Vec::new()];
    let mut touch = [Vec::new(), Vec::new()];
    for run in 0..runs {
        for (i, &style) in styles.iter().enumerate() {
            let status = cargo(&target)
                .args(["clean", "--quiet", "-p", &package(style)])
                .arg("--manifest-path")
                .arg(manifest(&out, style))
                .status()
                .expect("cargo runs");
            assert!(status.success(), "cargo clean failed");
            clean[i].push(check(&out, &target, style));
            let module = out.join(style.name()).join("src/m3.rs");
            let mut text = std::fs::read_to_string(&module).expect("the module exists");
            writeln!(text, "// touched {run}").expect("writing to a String");
            std::fs::write(&module, text).expect("the module is writable");
            touch[i].push(check(&out, &target, style));
        }
    }

    let macros = if opt_macros {
        "optimised"
    } else {
        "unoptimised (the default)"
    };
    println!(
        "cargo check of {DERIVATIONS} derivations in {MODULES} modules, {runs} runs, medians; \
         forjar-macros {macros}"
    );
    println!(
        "{:<8} {:>10} {:>10} {:>8}",
        "case", "derive", "builder", "ratio"
    );
    for (case, times) in [("clean", &mut clean), ("touch", &mut touch)] {
        let derive = median(&mut times[0]);
        let builder = median(&mut times[1]);
        println!(
            "{case:<8} {:>8.0}ms {:>8.0}ms {:>7.2}x",
            ms(derive),
            ms(builder),
            derive.as_secs_f64() / builder.as_secs_f64()
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn package(style: Style) -> String {
    format!("dsl-check-{}", style.name())
}

fn manifest(out: &Path, style: Style) -> PathBuf {
    out.join(style.name()).join("Cargo.toml")
}

fn cargo(target: &Path) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.env("CARGO_TARGET_DIR", target);
    command
}

/// Runs `cargo check` on one program; returns its wall-clock time.
fn check(out: &Path, target: &Path, style: Style) -> Duration {
    let start = Instant::now();
    let output = cargo(target)
        .args(["check", "--quiet", "--manifest-path"])
        .arg(manifest(out, style))
        .output()
        .expect("cargo runs");
    let elapsed = start.elapsed();
    assert!(
        output.status.success(),
        "the {} program does not compile:\n{}",
        style.name(),
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
}

fn generate(workspace: &Path, out: &Path, style: Style, opt_macros: bool) {
    let dir = out.join(style.name());
    std::fs::create_dir_all(dir.join("src")).expect("target/ is writable");
    let mut manifest = format!(
        "[package]\nname = \"{}\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
         [dependencies]\nforjar = {{ path = \"{}\" }}\n\n[workspace]\n",
        package(style),
        workspace.join("forjar").display()
    );
    if opt_macros {
        manifest.push_str("\n[profile.dev.build-override]\nopt-level = 3\n");
    }
    write_if_changed(&dir.join("Cargo.toml"), &manifest);

    let mut main = String::from("use forjar::prelude::*;\n\n");
    for m in 0..MODULES {
        writeln!(main, "mod m{m};").unwrap();
    }
    main.push_str(
        "\nfn main() {\n    let mut g = Graph::new();\n    let d0 = m0::add_0(&mut g);\n",
    );
    for i in 1..DERIVATIONS {
        writeln!(
            main,
            "    let d{i} = m{}::add_{i}(&mut g, d{});",
            i / PER_MODULE,
            i - 1
        )
        .unwrap();
    }
    writeln!(main, "    g.root(\"last\", d{});\n}}", DERIVATIONS - 1).unwrap();
    write_if_changed(&dir.join("src/main.rs"), &main);

    for m in 0..MODULES {
        let mut module = String::from("use forjar::prelude::*;\n");
        if style == Style::Builder {
            module.push_str("use std::time::Duration;\n");
        }
        for i in m * PER_MODULE..(m + 1) * PER_MODULE {
            module.push('\n');
            match style {
                Style::Derive => derive_one(&mut module, i),
                Style::Builder => builder_one(&mut module, i),
            }
        }
        write_if_changed(&dir.join(format!("src/m{m}.rs")), &module);
    }
}

/// One derivation with the derive: a struct and the fn that adds it.
fn derive_one(out: &mut String, i: usize) {
    let dep_type = |i: usize| format!("crate::m{}::D{i}", i / PER_MODULE);
    writeln!(
        out,
        "#[derive(Derivation)]\n#[forjar(sandbox = \"hermetic\", timeout = \"10m\")]\n\
         #[forjar(script = r#\"{}\"#)]\npub struct D{i} {{",
        script(i)
    )
    .unwrap();
    if i > 0 {
        writeln!(
            out,
            "    #[forjar(input)]\n    pub dep: Drv<{}>,",
            dep_type(i - 1)
        )
        .unwrap();
    }
    writeln!(
        out,
        "    #[forjar(env)]\n    pub greeting: String,\n    #[forjar(env)]\n    pub level: u32,\n}}\n"
    )
    .unwrap();
    if i > 0 {
        writeln!(
            out,
            "pub fn add_{i}(g: &mut Graph, dep: Drv<{}>) -> Drv<D{i}> {{\n    \
             g.add(D{i} {{ dep, greeting: \"hello\".into(), level: {i} }})\n}}",
            dep_type(i - 1)
        )
        .unwrap();
    } else {
        writeln!(
            out,
            "pub fn add_0(g: &mut Graph) -> Drv<D0> {{\n    \
             g.add(D0 {{ greeting: \"hello\".into(), level: 0 }})\n}}"
        )
        .unwrap();
    }
}

/// The same derivation with the builder API.
fn builder_one(out: &mut String, i: usize) {
    let (param, input) = if i > 0 {
        (", dep: Drv", "\n            .input(\"dep\", dep)")
    } else {
        ("", "")
    };
    writeln!(
        out,
        "pub fn add_{i}(g: &mut Graph{param}) -> Drv {{\n    g.add(\n        \
         Derivation::builder(\"d{i}\")\n            .sandbox(SandboxLevel::Hermetic)\n            \
         .timeout(Duration::from_secs(600))\n            .script(r#\"{}\"#){input}\n            \
         .env(\"greeting\", \"hello\")\n            .env(\"level\", \"{i}\")\n            \
         .build()\n            .expect(\"a valid derivation\"),\n    )\n}}",
        script(i)
    )
    .unwrap();
}

/// Writes only what changed, so that regenerating does not dirty cargo's fingerprints.
fn write_if_changed(path: &Path, contents: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(contents) {
        std::fs::write(path, contents).expect("target/ is writable");
    }
}
