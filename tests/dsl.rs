//! The DSL at run time: what the derive and the fn form make, and how their run-time errors
//! read. The compile-time errors are in `tests/ui`.

use std::fs;

use forjar::plan::Plan;
use forjar::prelude::*;
use forjar_suite::{apply, entry_of, sandbox, temp_store};

#[derive(Derivation)]
#[forjar(sandbox = "host-tools", timeout = "5m")]
#[forjar(script = "mkdir -p $out/bin && cc -o $out/bin/hello $src/hello.c")]
struct Hello {
    #[forjar(input)]
    src: Source,
    #[forjar(env)]
    greeting: String,
}

/// The closure key of `drv` in `graph`, for a store at a fixed place (the store's directory
/// is part of every key).
fn key<T: forjar::derivation::IntoDerivation>(graph: &Graph, drv: &Drv<T>) -> forjar::hash::Key {
    use std::sync::OnceLock;
    static STORE: OnceLock<(tempfile::TempDir, forjar::store::Store)> = OnceLock::new();
    let (_dir, store) = STORE.get_or_init(temp_store);
    Plan::new(graph, store)
        .unwrap()
        .key(drv)
        .expect("a derivation")
}

#[test]
fn the_derive_makes_exactly_what_the_builder_makes() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("hello.c"), "int main(void) { return 0; }\n").unwrap();
    let source = Source::dir(src.path()).unwrap();
    let derived = |greeting: &str| {
        let mut g = Graph::new();
        let hello = g.add(Hello {
            src: source.clone(),
            greeting: greeting.into(),
        });
        key(&g, &hello)
    };

    let mut g = Graph::new();
    let built = g.add(
        Derivation::builder("hello")
            .sandbox(SandboxLevel::HostTools)
            .timeout(std::time::Duration::from_secs(300))
            .script("mkdir -p $out/bin && cc -o $out/bin/hello $src/hello.c")
            .input("src", &source)
            .env("greeting", "hi")
            .build()
            .unwrap(),
    );
    assert_eq!(derived("hi"), key(&g, &built));
    assert_ne!(derived("ho"), key(&g, &built), "env values are in the key");
}

#[derive(Derivation)]
#[forjar(outputs = ["bin", "dev"], script = "echo > $bin; echo > $dev")]
struct Split;

#[test]
fn a_typed_handle_stands_for_its_first_declared_output() {
    let mut g = Graph::new();
    let split = g.add(Split);
    assert_eq!(split.default_output().name(), "bin");
    assert_eq!(split.dev().name(), "dev");
    let input: Input = split.into();
    assert!(matches!(input, Input::Output(o) if o.name() == "bin"));
}

#[test]
fn a_value_invalid_at_run_time_is_reported_when_planning_with_where_it_was_added() {
    let (_dir, store) = temp_store();
    let src = tempfile::tempdir().unwrap();
    let mut g = Graph::new();
    let line = line!() + 1;
    let hello = g.add(Hello {
        src: Source::dir(src.path()).unwrap(),
        greeting: "nul\0byte".into(),
    });
    g.root("hello", hello);
    assert!(
        g.get(&hello).is_none(),
        "an invalid derivation has no value"
    );
    let Err(error) = Plan::new(&g, &store) else {
        panic!("planning fails")
    };
    let error = error.to_string();
    assert_eq!(
        error,
        format!(
            "derivation `hello` (defined at tests/dsl.rs:{line}): invalid env value `nul\\0byte`: \
             the value of `greeting` contains a NUL byte at byte 3, which no environment can hold"
        )
    );
}

#[derive(serde::Serialize)]
struct Limits {
    #[serde(rename = "max-connections")]
    max_connections: u32,
    hosts: Vec<String>,
}

#[derive(Derivation)]
#[forjar(
    sandbox = "host-tools",
    script = "cat limits.toml limits.json limits.yaml > $out"
)]
struct Rendered {
    #[forjar(file = "limits.toml")]
    toml: Limits,
    #[forjar(file = "limits.json")]
    json: Limits,
    #[forjar(file = "limits.yaml")]
    yaml: Limits,
}

fn limits() -> Limits {
    Limits {
        max_connections: 64,
        hosts: vec!["a".into(), "b".into()],
    }
}

#[test]
fn file_fields_are_rendered_by_extension_into_the_build_directory() {
    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let (plan, report) = apply(&store, |g| {
        let drv = g.add(Rendered {
            toml: limits(),
            json: limits(),
            yaml: limits(),
        });
        g.root("rendered", drv);
    });
    report.expect("the build succeeds");
    let text = fs::read_to_string(store.content_path(&entry_of(&plan, "rendered"))).unwrap();
    assert_eq!(
        text,
        "max-connections = 64\nhosts = [\n    \"a\",\n    \"b\",\n]\n\
         {\n  \"max-connections\": 64,\n  \"hosts\": [\n    \"a\",\n    \"b\"\n  ]\n}\n\
         max-connections: 64\nhosts:\n- a\n- b\n"
    );
}

#[derive(serde::Serialize)]
struct Tuple(u8, u8);

#[derive(Derivation)]
#[forjar(script = "cp t.toml $out")]
struct NotATable {
    #[forjar(file = "t.toml")]
    value: Tuple,
}

#[test]
fn a_value_its_format_cannot_hold_is_an_error_naming_the_file_and_format() {
    let (_dir, store) = temp_store();
    let mut g = Graph::new();
    g.add(NotATable { value: Tuple(1, 2) });
    let Err(error) = Plan::new(&g, &store) else {
        panic!("planning fails")
    };
    let error = error.to_string();
    assert!(
        error.starts_with("derivation `not-a-table` (defined at tests/dsl.rs:")
            && error.contains("cannot render file `t.toml` as TOML: "),
        "{error}"
    );
}

#[forjar::derivation]
fn shout(g: &mut Graph, text: &str, times: Option<u32>) -> Drv<Shout> {
    r#"echo "$text" "${times:-1}" > $out"#
}

#[test]
fn a_derivation_fn_adds_its_derivation_where_it_is_called() {
    let mut g = Graph::new();
    let line = line!() + 1;
    let loud = shout(&mut g, "hey", None);
    let drv = g.get(&loud).expect("valid");
    assert_eq!(drv.name().as_str(), "shout");
    assert_eq!(drv.location(), format!("tests/dsl.rs:{line}"));
    let again = shout(&mut g, "hey", Some(2));
    assert_ne!(loud, again);
}

#[derive(Derivation)]
#[forjar(script = r#"printf '%s\n' "$text" > $out"#)]
struct Part {
    #[forjar(name)]
    name: String,
    #[forjar(env)]
    text: String,
}

/// Takes a variable number of inputs: `$parts` and `$extras` list their paths in order.
#[derive(Derivation)]
#[forjar(script = r#"
: > $out
for p in $parts; do read -r line < "$p"; printf 'part %s\n' "$line" >> $out; done
for e in $extras; do read -r line < "$e"; printf 'extra %s\n' "$line" >> $out; done
if [ -n "${patch:-}" ]; then read -r line < "$patch"; printf 'patch %s\n' "$line" >> $out; fi
"#)]
struct Assembly {
    #[forjar(input)]
    parts: Vec<Drv<Part>>,
    #[forjar(input)]
    extras: std::collections::BTreeMap<String, Drv<Part>>,
    #[forjar(input)]
    patch: Option<Drv<Part>>,
}

#[test]
fn a_list_or_map_of_inputs_is_one_variable_and_each_member_an_input() {
    let graph = |order: [&str; 3], patch: bool| {
        let mut g = Graph::new();
        let mut part = |name: &str| {
            g.add(Part {
                name: name.into(),
                text: format!("{name} text"),
            })
        };
        let parts: Vec<Drv<Part>> = order.iter().map(|n| part(n)).collect();
        let extras = [("docs", part("docs")), ("icons", part("icons"))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let patch = patch.then(|| part("fix"));
        let assembly = g.add(Assembly {
            parts,
            extras,
            patch,
        });
        g.root("assembly", assembly);
        (g, assembly)
    };
    let (g, assembly) = graph(["a", "b", "c"], true);
    let drv = g.get(&assembly).unwrap();
    let inputs: Vec<String> = drv.inputs().keys().map(|k| k.to_string()).collect();
    assert_eq!(
        inputs,
        [
            "extras_docs",
            "extras_icons",
            "parts_0",
            "parts_1",
            "parts_2",
            "patch"
        ]
    );
    // The order of a list is in the key; an absent `Option` is left out.
    let reordered = graph(["c", "b", "a"], true);
    assert_ne!(key(&g, &assembly), key(&reordered.0, &reordered.1));
    let unpatched = graph(["a", "b", "c"], false);
    assert_ne!(key(&g, &assembly), key(&unpatched.0, &unpatched.1));
    let same = graph(["a", "b", "c"], true);
    assert_eq!(key(&g, &assembly), key(&same.0, &same.1));

    // The builder's form makes the same derivation.
    let mut b = Graph::new();
    let part = |g: &mut Graph, name: &str| {
        g.add(
            Derivation::builder(name)
                .env("text", format!("{name} text"))
                .script(r#"printf '%s\n' "$text" > $out"#)
                .build()
                .unwrap(),
        )
    };
    let parts: Vec<Drv> = ["a", "b", "c"].iter().map(|n| part(&mut b, n)).collect();
    let extras = [
        ("docs", part(&mut b, "docs")),
        ("icons", part(&mut b, "icons")),
    ];
    let fix = part(&mut b, "fix");
    let script = r#"
: > $out
for p in $parts; do read -r line < "$p"; printf 'part %s\n' "$line" >> $out; done
for e in $extras; do read -r line < "$e"; printf 'extra %s\n' "$line" >> $out; done
if [ -n "${patch:-}" ]; then read -r line < "$patch"; printf 'patch %s\n' "$line" >> $out; fi
"#;
    let built = b.add(
        Derivation::builder("assembly")
            .inputs("parts", &parts)
            .inputs_named("extras", extras)
            .input("patch", fix)
            .script(script)
            .build()
            .unwrap(),
    );
    assert_eq!(key(&g, &assembly), key(&b, &built));

    // A list may not share its name, and its members are checked as inputs are.
    let clash = Derivation::builder("x")
        .inputs("parts", &parts)
        .env("parts", "1")
        .script("echo $parts > $out")
        .build()
        .unwrap_err();
    assert!(
        clash
            .to_string()
            .contains("`parts` is both a list of inputs and an env var"),
        "{clash}"
    );

    if !sandbox() {
        return;
    }
    let (_dir, store) = temp_store();
    let (plan, report) = apply(&store, |g| {
        let (graph, _) = graph(["c", "a", "b"], true);
        *g = graph;
    });
    report.expect("the build succeeds");
    let text = fs::read_to_string(store.content_path(&entry_of(&plan, "assembly"))).unwrap();
    assert_eq!(
        text,
        "part c text\npart a text\npart b text\nextra docs text\nextra icons text\npatch fix text\n"
    );
}
