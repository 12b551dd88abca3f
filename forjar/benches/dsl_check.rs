//! What the DSL costs at compile time: `cargo check` of a program of 1,000 derivations written
//! with `#[derive(Derivation)]`, against the same program with the derive's expansion written
//! out by hand (what the macro itself costs), and against the same derivations written with the
//! builder API, measured in the same run.
//!
//! ```text
//! bench/dsl-check [--runs N] [--derivations N] [--opt-macros]
//! ```
//!
//! The programs are generated under `target/dsl-check/`, depend on this checkout of forjar, and
//! share one target directory, so forjar and its dependencies are built once and excluded from
//! the times. The hand-written expansion is checked against the real one first (rustc's
//! `-Zunpretty=expanded`, through `RUSTC_BOOTSTRAP=1`): the bench stops if the derive's output
//! has changed and the hand program no longer is its expansion. Two cases, the programs in turn
//! on each run:
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

#[allow(
    dead_code,
    reason = "this benchmark measures no Nix peer and no closure"
)]
mod peers;

const MODULES: usize = 10;

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
    /// The derive's expansion, written in the source.
    Hand,
    Builder,
}

impl Style {
    fn name(self) -> &'static str {
        match self {
            Style::Derive => "derive",
            Style::Hand => "hand",
            Style::Builder => "builder",
        }
    }
}

/// The number after `name` among `args`, or `default`.
fn option(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .skip_while(|a| *a != name)
        .nth(1)
        .map_or(default, |n| {
            n.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not `{n}`"))
        })
}

fn main() {
    let (runs, args) = peers::args(5);
    let runs = runs.max(1);
    let derivations = option(&args, "--derivations", 1000);
    assert!(
        derivations >= MODULES && derivations.is_multiple_of(MODULES),
        "--derivations takes a multiple of {MODULES}"
    );
    let opt_macros = args.iter().any(|a| a == "--opt-macros");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("forjar/ is in the workspace")
        .to_path_buf();
    let out = workspace.join("target/dsl-check");
    let target = out.join(if opt_macros { "target-opt" } else { "target" });
    let styles = [Style::Derive, Style::Hand, Style::Builder];
    let expansions: Vec<String> = styles
        .into_iter()
        .flat_map(|style| generate(&workspace, &out, style, opt_macros, derivations))
        .collect();
    // First: `RUSTC_BOOTSTRAP` is part of cargo's fingerprints, so the checks below build
    // forjar and its dependencies again, once, and check that the programs compile.
    check_expansion(&out, &target, &expansions);
    for style in styles {
        check(&out, &target, style);
    }

    let mut clean = [Vec::new(), Vec::new(), Vec::new()];
    let mut touch = [Vec::new(), Vec::new(), Vec::new()];
    for run in 0..runs {
        for (i, &style) in styles.iter().enumerate() {
            succeed(
                cargo(&target)
                    .args(["clean", "--quiet", "-p", &package(style)])
                    .arg("--manifest-path")
                    .arg(manifest(&out, style)),
                "cargo clean failed",
            );
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
        "cargo check of {derivations} derivations in {MODULES} modules, {runs} runs, medians; \
         forjar-macros {macros}"
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>14} {:>16}",
        "case", "derive", "hand", "builder", "derive / hand", "derive / builder"
    );
    for (case, times) in [("clean", clean), ("touch", touch)] {
        let [derive, hand, builder] = times.map(peers::median);
        println!(
            "{case:<8} {:>8.0}ms {:>8.0}ms {:>8.0}ms {:>13.2}x {:>15.2}x",
            ms(derive),
            ms(hand),
            ms(builder),
            derive.as_secs_f64() / hand.as_secs_f64(),
            derive.as_secs_f64() / builder.as_secs_f64()
        );
    }
}

/// Stops unless every item of the hand program's expansions is in what rustc prints as the
/// derive program's expansion (whitespace aside).
fn check_expansion(out: &Path, target: &Path, expansions: &[String]) {
    let stdout = succeed(
        cargo(target)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["rustc", "--quiet", "--profile=check", "--manifest-path"])
            .arg(manifest(out, Style::Derive))
            .args(["--", "-Zunpretty=expanded"]),
        "cannot print the derive program's expansion",
    );
    let squeeze = |s: &str| s.split_whitespace().collect::<String>();
    let expanded = squeeze(&String::from_utf8_lossy(&stdout));
    for (i, hand) in expansions.iter().enumerate() {
        assert!(
            expanded.contains(&squeeze(hand)),
            "the hand program's expansion of D{i} is no longer what the derive expands to; \
             update `hand_one` from `cargo rustc -- -Zunpretty=expanded` of {}:\n{hand}",
            manifest(out, Style::Derive).display()
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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
    succeed(
        cargo(target)
            .args(["check", "--quiet", "--manifest-path"])
            .arg(manifest(out, style)),
        &format!("the {} program does not compile", style.name()),
    );
    start.elapsed()
}

/// Runs `command` and returns its standard output; panics with `what` and its stderr if it fails.
fn succeed(command: &mut Command, what: &str) -> Vec<u8> {
    let output = command.output().expect("cargo runs");
    assert!(
        output.status.success(),
        "{what}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Writes the program of `style`; returns, for the hand program, each derivation's expansion.
fn generate(
    workspace: &Path,
    out: &Path,
    style: Style,
    opt_macros: bool,
    derivations: usize,
) -> Vec<String> {
    let per_module = derivations / MODULES;
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
    for i in 1..derivations {
        writeln!(
            main,
            "    let d{i} = m{}::add_{i}(&mut g, d{});",
            i / per_module,
            i - 1
        )
        .unwrap();
    }
    writeln!(main, "    g.root(\"last\", d{});\n}}", derivations - 1).unwrap();
    write_if_changed(&dir.join("src/main.rs"), &main);

    let mut expansions = Vec::new();
    for m in 0..MODULES {
        let mut module = String::from("use forjar::prelude::*;\n");
        if style == Style::Builder {
            module.push_str("use std::time::Duration;\n");
        }
        for i in m * per_module..(m + 1) * per_module {
            module.push('\n');
            match style {
                Style::Derive | Style::Hand => derivation_one(&mut module, style, i, per_module),
                Style::Builder => builder_one(&mut module, i),
            }
            if style == Style::Hand {
                let expansion = hand_one(i, per_module);
                module.push_str(&expansion);
                expansions.push(expansion);
            }
        }
        write_if_changed(&dir.join(format!("src/m{m}.rs")), &module);
    }
    expansions
}

fn dep_type(i: usize, per_module: usize) -> String {
    format!("crate::m{}::D{i}", i / per_module)
}

/// One derivation as a struct and the fn that adds it: with the derive and its attributes, or
/// bare (the hand program, whose expansion follows).
fn derivation_one(out: &mut String, style: Style, i: usize, per_module: usize) {
    let attribute = |a: &'static str| if style == Style::Derive { a } else { "" };
    writeln!(
        out,
        "{}{}pub struct D{i} {{",
        attribute("#[derive(Derivation)]\n#[forjar(sandbox = \"hermetic\", timeout = \"10m\")]\n"),
        if style == Style::Derive {
            format!("#[forjar(script = r#\"{}\"#)]\n", script(i))
        } else {
            String::new()
        }
    )
    .unwrap();
    if i > 0 {
        writeln!(
            out,
            "    {}pub dep: Drv<{}>,",
            attribute("#[forjar(input)]\n    "),
            dep_type(i - 1, per_module)
        )
        .unwrap();
    }
    writeln!(
        out,
        "    {}pub greeting: String,\n    {}pub level: u32,\n}}\n",
        attribute("#[forjar(env)]\n    "),
        attribute("#[forjar(env)]\n    "),
    )
    .unwrap();
    if i > 0 {
        writeln!(
            out,
            "pub fn add_{i}(g: &mut Graph, dep: Drv<{}>) -> Drv<D{i}> {{\n    \
             g.add(D{i} {{ dep, greeting: \"hello\".into(), level: {i} }})\n}}",
            dep_type(i - 1, per_module)
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

/// What `#[derive(Derivation)]` expands to for `D{i}`, as rustc prints it.
fn hand_one(i: usize, per_module: usize) -> String {
    let input = if i > 0 {
        format!(
            "<Drv<{}> as __forjar::InputField>::into_input_part(self.dep, \"dep\"),\n",
            dep_type(i - 1, per_module)
        )
    } else {
        String::new()
    };
    format!(
        r##"
#[allow(deprecated)]
const _: () = {{
    use ::forjar::__private as __forjar;
    #[automatically_derived]
    impl __forjar::IntoDerivation for D{i} {{
        type Accessors = __forjar::DefaultOutputs;
        const DEFAULT: &'static str = "out";
        fn into_derivation(
            self,
            __forjar_location: &'static __forjar::Location<'static>
        ) -> __forjar::Result<__forjar::Derivation, __forjar::DerivationError> {{
            {{
                __forjar::Spec {{
                    name: "d{i}",
                    script: __forjar::Some(r#"{script}"#),
                    sandbox: __forjar::SandboxLevel::Hermetic,
                    timeout_ms: __forjar::Some(600000u64),
                    ..__forjar::Spec::DEFAULT
                }}
                .derive(
                    __forjar::None,
                    __forjar_location,
                    [
                        {input}__forjar::Part::Env("greeting", <String as __forjar::IntoEnv>::into_env(self.greeting)),
                        __forjar::Part::Env("level", <u32 as __forjar::IntoEnv>::into_env(self.level))
                    ]
                )
            }}
        }}
    }}
}};
"##,
        script = script(i)
    )
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
