//! The planner: topological order, statuses, parallel levels, cycles, why-depends.

use forjar::plan::{Plan, Status};
use forjar::prelude::*;
use forjar_suite::{install_file, temp_store};

fn drv(name: &str) -> forjar::DerivationBuilder {
    Derivation::builder(name).script("echo > $out")
}

fn source_dir() -> (tempfile::TempDir, Source) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.c"), "int main(void) { return 0; }\n").unwrap();
    let source = Source::dir(dir.path()).unwrap().named("src").unwrap();
    (dir, source)
}

/// src -> a, src -> b, (a, b) -> c
fn diamond(source: &Source) -> (Graph, [Drv; 3]) {
    let mut g = Graph::new();
    let a = g.add(drv("a").input("src", source).build().unwrap());
    let b = g.add(drv("b").input("src", source).build().unwrap());
    let c = g.add(drv("c").input("a", a).input("b", b).build().unwrap());
    g.root("c", c);
    (g, [a, b, c])
}

fn names(plan: &Plan, nodes: &[petgraph::graph::NodeIndex]) -> Vec<String> {
    let mut names: Vec<String> = nodes
        .iter()
        .map(|&n| plan.node(n).name.to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn a_diamond_plans_in_topological_order_with_parallel_levels() {
    let (_dir, store) = temp_store();
    let (_src, source) = source_dir();
    let (g, [a, b, c]) = diamond(&source);
    let plan = Plan::new(&g, &store).unwrap();

    let order: Vec<String> = plan.nodes().map(|(_, n)| n.name.to_string()).collect();
    let pos = |name: &str| order.iter().position(|n| n == name).unwrap();
    assert!(pos("src") < pos("a") && pos("src") < pos("b"));
    assert!(pos("a") < pos("c") && pos("b") < pos("c"));

    let levels: Vec<Vec<String>> = plan.levels().iter().map(|l| names(&plan, l)).collect();
    assert_eq!(levels, vec![vec!["src"], vec!["a", "b"], vec!["c"]]);

    for handle in [a, b, c] {
        assert_eq!(
            plan.node(plan.node_of(&handle).unwrap()).status,
            Status::Build
        );
    }
    let summary = plan.summary();
    assert_eq!((summary.build, summary.cached, summary.import), (3, 0, 1));
    assert_eq!(plan.roots().len(), 1);
    assert_eq!(plan.roots()[0].name, "c");
}

#[test]
fn planning_builds_and_imports_nothing() {
    let (_dir, store) = temp_store();
    let (_src, source) = source_dir();
    let (g, _) = diamond(&source);
    Plan::new(&g, &store).unwrap();
    Plan::new(&g, &store).unwrap();
    assert_eq!(store.entries().unwrap(), vec![]);
    assert!(store.roots().unwrap().is_empty());
}

#[test]
fn statuses_follow_the_store() {
    let (_dir, store) = temp_store();
    let (_src, source) = source_dir();
    let (g, [a, _, c]) = diamond(&source);
    let plan = Plan::new(&g, &store).unwrap();

    store
        .import_source(source.host_path(), source.name())
        .unwrap();
    let a_node = plan.node(plan.node_of(&a).unwrap());
    let outputs = a_node.derivation().unwrap().outputs().unwrap();
    let out = &outputs.values().next().unwrap();
    install_file(&store, "a", out.key, b"built", vec![]);

    let again = Plan::new(&g, &store).unwrap();
    assert_eq!(
        again.node(again.node_of(&a).unwrap()).status,
        Status::Cached
    );
    assert_eq!(again.node(again.node_of(&c).unwrap()).status, Status::Build);
    let summary = again.summary();
    assert_eq!(
        (
            summary.build,
            summary.cached,
            summary.import,
            summary.sources_cached
        ),
        (2, 1, 0, 1)
    );
    assert_eq!(
        again.key(&a),
        plan.key(&a),
        "installing entries does not change keys"
    );
}

#[test]
fn a_cycle_is_an_error_that_names_it() {
    let (_dir, store) = temp_store();
    let mut g = Graph::new();
    let a = g.declare("a");
    let b = g.add(drv("b").input("a", a).build().unwrap());
    let c = g.add(drv("c").input("b", b).build().unwrap());
    g.define(&a, drv("a").input("c", c).build().unwrap())
        .unwrap();
    let err = Plan::new(&g, &store).unwrap_err();
    assert_eq!(err.to_string(), "derivation cycle: a -> c -> b -> a");
}

#[test]
fn a_derivation_that_depends_on_itself_is_a_cycle() {
    let (_dir, store) = temp_store();
    let mut g = Graph::new();
    let a = g.declare("a");
    g.define(&a, drv("a").input("me", a).build().unwrap())
        .unwrap();
    assert_eq!(
        Plan::new(&g, &store).unwrap_err().to_string(),
        "derivation cycle: a -> a"
    );
}

#[test]
fn a_declared_but_undefined_derivation_is_named_with_its_location() {
    let (_dir, store) = temp_store();
    let mut g = Graph::new();
    let line = line!() + 1;
    let later = g.declare("later");
    g.add(drv("user").input("later", later).build().unwrap());
    let err = Plan::new(&g, &store).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "derivation `later` was declared at tests/plan.rs:{line} but never defined; call `define` on its handle"
        )
    );
}

#[test]
fn define_refuses_misuse() {
    let mut g = Graph::new();
    let a = g.declare("a");
    let err = g.define(&a, drv("b").build().unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`a` was declared, but a derivation named `b` was given to define it"
    );
    g.define(&a, drv("a").build().unwrap()).unwrap();
    let err = g.define(&a, drv("a").build().unwrap()).unwrap_err();
    assert!(err.to_string().contains("already defined"), "{err}");
}

#[test]
fn an_undeclared_output_is_named_with_what_is_declared() {
    let (_dir, store) = temp_store();
    let mut g = Graph::new();
    let lib = g.add(drv("lib").output("out").output("dev").build().unwrap());
    g.add(
        drv("app")
            .input("headers", lib.output("doc"))
            .build()
            .unwrap(),
    );
    let err = Plan::new(&g, &store).unwrap_err().to_string();
    assert!(
        err.starts_with("input `headers` of `app` (tests/plan.rs:"),
        "{err}"
    );
    assert!(
        err.ends_with("names output `doc` of `lib`, which declares only `dev`, `out`"),
        "{err}"
    );
}

#[test]
fn a_handle_from_another_graph_is_refused() {
    let (_dir, store) = temp_store();
    let mut other = Graph::new();
    let foreign = other.add(drv("foreign").build().unwrap());
    let mut g = Graph::new();
    g.add(drv("app").input("dep", foreign).build().unwrap());
    let err = Plan::new(&g, &store).unwrap_err().to_string();
    assert!(
        err.starts_with("in `app`: a derivation handle from another graph"),
        "{err}"
    );
}

#[test]
fn root_names_are_unique_and_valid() {
    let (_dir, store) = temp_store();
    let mut g = Graph::new();
    let a = g.add(drv("a").build().unwrap());
    g.root("x", a);
    g.root("x", a);
    assert_eq!(
        Plan::new(&g, &store).unwrap_err().to_string(),
        "two roots are named `x`; root names must be unique"
    );
    let mut g = Graph::new();
    let a = g.add(drv("a").build().unwrap());
    g.root("../x", a);
    assert!(
        Plan::new(&g, &store)
            .unwrap_err()
            .to_string()
            .starts_with("invalid root name `../x`")
    );
}

#[test]
fn a_missing_source_is_named() {
    let (_dir, store) = temp_store();
    let (src, source) = source_dir();
    let mut g = Graph::new();
    g.add(drv("a").input("src", &source).build().unwrap());
    std::fs::remove_dir_all(src.path()).unwrap();
    let err = Plan::new(&g, &store).unwrap_err().to_string();
    let path = src.path().display();
    assert_eq!(err, format!("source `{path}`: `{path}` does not exist"));
}

#[test]
fn a_source_holding_a_fifo_is_named() {
    let (_dir, store) = temp_store();
    let (src, source) = source_dir();
    let fifo = src.path().join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut g = Graph::new();
    g.add(drv("a").input("src", &source).build().unwrap());
    let err = Plan::new(&g, &store).unwrap_err().to_string();
    assert!(
        err.ends_with(&format!(
            "`{}` is a FIFO; a tree may hold only regular files, directories and symlinks",
            fifo.display()
        )),
        "{err}"
    );
}

#[test]
fn why_depends_gives_the_chain_of_inputs() {
    let (_dir, store) = temp_store();
    let (_src, source) = source_dir();
    let (g, [a, b, c]) = diamond(&source);
    let plan = Plan::new(&g, &store).unwrap();
    let src = plan.find("src")[0];
    let chain = plan.why_depends(plan.node_of(&c).unwrap(), src).unwrap();
    let steps: Vec<(String, Option<String>)> = chain
        .iter()
        .map(|(n, input)| {
            (
                plan.node(*n).name.to_string(),
                input.as_ref().map(ToString::to_string),
            )
        })
        .collect();
    assert_eq!(steps[0], ("c".to_string(), Some(steps[1].0.clone())));
    assert_eq!(steps[1].1.as_deref(), Some("src"));
    assert_eq!(steps[2], ("src".to_string(), None));
    assert!(
        plan.why_depends(plan.node_of(&a).unwrap(), plan.node_of(&b).unwrap())
            .is_none()
    );
    assert!(
        plan.why_depends(src, plan.node_of(&c).unwrap()).is_none(),
        "dependencies do not depend on dependents"
    );
}

#[test]
fn dot_and_json_show_every_node_and_edge() {
    let (_dir, store) = temp_store();
    let (_src, source) = source_dir();
    let (g, _) = diamond(&source);
    let plan = Plan::new(&g, &store).unwrap();
    let dot = plan.to_dot();
    assert!(dot.starts_with("digraph forjar {"));
    assert_eq!(dot.matches(" -> ").count(), 4);
    assert_eq!(dot.matches("[label=\"").count(), 4 + 4);
    let json = plan.to_json();
    assert_eq!(json["nodes"].as_array().unwrap().len(), 4);
    assert_eq!(json["edges"].as_array().unwrap().len(), 4);
    assert_eq!(json["summary"]["build"], 3);
    let c = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "c")
        .unwrap();
    assert_eq!(c["status"], "build");
    assert_eq!(c["level"], 2);
    assert_eq!(c["key"].as_str().unwrap().len(), 64);
    assert!(
        c["location"]
            .as_str()
            .unwrap()
            .starts_with("tests/plan.rs:")
    );
}

#[test]
fn a_host_tools_derivation_is_marked_impure() {
    let (_dir, store) = temp_store();
    let mut g = Graph::new();
    let pure = g.add(drv("pure").build().unwrap());
    let impure = g.add(
        drv("impure")
            .sandbox(SandboxLevel::HostTools)
            .build()
            .unwrap(),
    );
    let plan = Plan::new(&g, &store).unwrap();
    assert!(!plan.node(plan.node_of(&pure).unwrap()).impure);
    assert!(plan.node(plan.node_of(&impure).unwrap()).impure);
    let text = forjar::cli::render_plan(&plan, None);
    assert!(text.contains("build*  impure"), "{text}");
    assert!(
        text.ends_with("Plan: 2 to build, 0 cached, 0 sources to import\n"),
        "{text}"
    );
}

/// A layered DAG of `layers` x `width` derivations, each depending on two of the layer before
/// (and one on the same one twice), defined in the order given by `reverse`.
fn layered(layers: usize, width: usize, reverse: bool) -> (Graph, Vec<Vec<Drv>>) {
    let mut g = Graph::new();
    let mut all: Vec<Vec<Drv>> = Vec::new();
    for layer in 0..layers {
        let mut order: Vec<usize> = (0..width).collect();
        if reverse {
            order.reverse();
        }
        let mut current: Vec<Option<Drv>> = vec![None; width];
        for i in order {
            let mut builder = drv(&format!("n{layer}-{i}")).env("i", i.to_string());
            if let Some(previous) = all.last() {
                builder = builder
                    .input("left", previous[i])
                    .input("right", previous[(i * 7 + 1) % width]);
                if i == 0 {
                    builder = builder.input("again", previous[i]);
                }
            }
            current[i] = Some(g.add(builder.build().unwrap()));
        }
        all.push(current.into_iter().map(Option::unwrap).collect());
    }
    (g, all)
}

#[test]
fn keys_do_not_depend_on_definition_order_or_on_which_thread_keys_a_node() {
    let (_dir, store) = temp_store();
    let (g1, nodes1) = layered(30, 100, false);
    let (g2, nodes2) = layered(30, 100, true);
    let p1 = Plan::new(&g1, &store).unwrap();
    let p2 = Plan::new(&g2, &store).unwrap();
    let again = Plan::new(&g1, &store).unwrap();
    let mut keys = std::collections::BTreeSet::new();
    for (layer1, layer2) in nodes1.iter().zip(&nodes2) {
        for (a, b) in layer1.iter().zip(layer2) {
            let key = p1.key(a).unwrap();
            assert_eq!(Some(key), p2.key(b));
            assert_eq!(Some(key), again.key(a));
            keys.insert(key);
        }
    }
    assert_eq!(keys.len(), 3000, "every derivation has its own key");
    let levels = p1.levels();
    assert_eq!(levels.len(), 30);
    assert!(levels.iter().all(|level| level.len() == 100));
}

#[test]
fn each_derivation_is_keyed_once_however_the_threads_race() {
    // Many roots, each taken by one derivation ("leaf"), all of those by one more. Declared
    // before the roots, the leaves come after all of them in the plan's order: the first roots
    // and their leaves are keyed while later roots are still being started. A derivation
    // started twice counts down what takes it twice, which then starts before all its inputs
    // are keyed (a panic); a debug build also checks that no derivation is keyed twice.
    let (_dir, store) = temp_store();
    let mut g = Graph::new();
    let leaves: Vec<Drv> = (0..2000).map(|i| g.declare(&format!("leaf{i}"))).collect();
    for (i, leaf) in leaves.iter().enumerate() {
        let root = g.add(
            drv(&format!("root{i}"))
                .env("i", i.to_string())
                .build()
                .unwrap(),
        );
        let derivation = drv(&format!("leaf{i}"))
            .input("root", root)
            .build()
            .unwrap();
        g.define(leaf, derivation).unwrap();
    }
    let top = g.add(drv("top").inputs("leaves", &leaves).build().unwrap());
    for _ in 0..10 {
        let plan = Plan::new(&g, &store).unwrap();
        assert_eq!(plan.nodes().count(), 4001);
        assert!(plan.key(&top).is_some());
    }
}

#[test]
fn ignore_rules_leave_files_out_of_a_sources_key_and_entry() {
    let (_dir, store) = temp_store();
    let src = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = src.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("fix.patch", "--- a\n+++ b\n");
    write("README.md", "about the patches\n");
    write(".gitignore", "*.orig\nscratch/\n");
    write("scratch/notes", "wip\n");
    write("sub/.gitignore", "!keep.orig\n");
    write("sub/keep.orig", "kept\n");
    write(".git/HEAD", "ref: refs/heads/main\n");
    let source = |patterns: &[&str]| {
        Source::dir(src.path())
            .unwrap()
            .named("patches")
            .unwrap()
            .ignore(patterns.iter().copied())
            .unwrap()
            .gitignore()
    };
    let plan_of = |source: Source| {
        let mut g = Graph::new();
        let d = g.add(drv("patched").input("src", source).build().unwrap());
        g.root("patched", d);
        let plan = Plan::new(&g, &store).unwrap();
        let node = plan.find("patches")[0];
        let entry = plan.entry_names(node)[0].clone();
        (
            plan,
            node,
            entry,
            forjar_suite::entry_of(&Plan::new(&g, &store).unwrap(), "patched"),
        )
    };
    let (plan, node, entry, key) = plan_of(source(&["*.md"]));

    // What the rules leave out can change without moving a key.
    write("NOTES.md", "more notes\n");
    write("fix.patch.orig", "backup\n");
    write("scratch/more", "wip\n");
    write(".git/index", "binary\n");
    let (_, _, same_entry, same_key) = plan_of(source(&["*.md"]));
    assert_eq!((&same_entry, &same_key), (&entry, &key));

    // The import holds exactly what the rules keep.
    let report = forjar::exec::realise_all(
        &plan,
        &store,
        &[node],
        &forjar::exec::Local::default(),
        &forjar::exec::Options::default(),
        &|_| {},
    );
    assert!(report.is_ok(), "{report:?}");
    let content = store.dir().join(&entry).join("content");
    let mut held: Vec<String> = Vec::new();
    let mut stack = vec![content.clone()];
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                held.push(path.strip_prefix(&content).unwrap().display().to_string());
            }
        }
    }
    held.sort();
    assert_eq!(
        held,
        [".gitignore", "fix.patch", "sub/.gitignore", "sub/keep.orig"]
    );
    assert!(store.verify().unwrap().problems.is_empty());

    // What they keep moves it; so does a rule that keeps more.
    write("sub/keep.orig", "changed\n");
    let (_, _, moved, moved_key) = plan_of(source(&["*.md"]));
    assert_ne!(moved, entry);
    assert_ne!(moved_key, key);
    let (_, _, fewer_rules, _) = plan_of(source(&[]));
    assert_ne!(fewer_rules, moved, "README.md is in again");

    // A pattern that is not gitignore syntax is an error naming it.
    let bad = Source::dir(src.path())
        .unwrap()
        .ignore(["{a,b"])
        .unwrap_err();
    assert!(
        bad.to_string()
            .contains("ignore pattern `{a,b` is not valid"),
        "{bad}"
    );
}

#[test]
fn a_plan_of_many_derivations_finds_exactly_the_entries_the_store_holds() {
    // 200 derivations: enough lookups for the plan to read the store's directory once instead
    // of looking for each entry.
    let (_dir, store) = temp_store();
    let (g, nodes) = layered(2, 100, false);
    let plan = Plan::new(&g, &store).unwrap();
    let missing = nodes[0][42];
    for &drv in &nodes[0] {
        let node = plan.node(plan.node_of(&drv).unwrap());
        let out = node
            .derivation()
            .unwrap()
            .outputs()
            .unwrap()
            .values()
            .next()
            .unwrap();
        if drv == missing {
            // A symlink by the entry's name is not the entry.
            std::os::unix::fs::symlink("/", store.entry_path(&out.entry)).unwrap();
        } else {
            install_file(&store, &node.name.to_string(), out.key, b"built", vec![]);
        }
    }

    let again = Plan::new(&g, &store).unwrap();
    for &drv in &nodes[0] {
        let expected = if drv == missing {
            Status::Build
        } else {
            Status::Cached
        };
        assert_eq!(again.node(again.node_of(&drv).unwrap()).status, expected);
    }
    assert!(
        nodes[1]
            .iter()
            .all(|d| again.node(again.node_of(d).unwrap()).status == Status::Build)
    );
    assert_eq!((again.summary().cached, again.summary().build), (99, 101));
}

#[test]
fn a_derivation_of_thousands_of_inputs_has_one_key_whatever_their_order() {
    let (_dir, store) = temp_store();
    let key = |reverse: bool| {
        let mut g = Graph::new();
        let leaves: Vec<Drv> = (0..3000)
            .map(|i| g.add(drv(&format!("leaf{i}")).build().unwrap()))
            .collect();
        let mut order: Vec<usize> = (0..leaves.len()).collect();
        if reverse {
            order.reverse();
        }
        let mut all = Derivation::builder("all").script("echo > $out");
        for i in order {
            all = all.input(format!("in{i}"), leaves[i]);
        }
        let all = g.add(all.build().unwrap());
        let plan = Plan::new(&g, &store).unwrap();
        let node = plan.node(plan.node_of(&all).unwrap());
        assert_eq!(node.derivation().unwrap().request().inputs.len(), 3000);
        plan.key(&all).unwrap()
    };
    assert_eq!(key(false), key(true));

    let twice = Derivation::builder("twice")
        .script("echo > $out")
        .env("b", "1")
        .env("a", "2")
        .env("b", "3")
        .build()
        .unwrap_err();
    assert!(
        twice
            .to_string()
            .contains("duplicate env var `b`: each env var may be given once"),
        "{twice}"
    );
}
