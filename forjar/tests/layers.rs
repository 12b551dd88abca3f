//! The import graph of forjar's modules has no cycle: data flows one way, from the names at the
//! bottom up to the command line (the book's design notes, "Layers").
//!
//! `cargo test -p forjar --test layers -- --nocapture` prints the graph, one module a line with
//! what it imports, bottom first.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graphmap::DiGraphMap;

/// The library's top-level modules: each `src/<m>.rs` and `src/<m>/`, but not the binaries.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in fs::read_dir(src).expect("forjar/src is readable") {
        let path = entry.expect("forjar/src is readable").path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if stem == "lib" || stem == "bin" {
            continue;
        }
        let files = modules.entry(stem).or_default();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    modules
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The modules a file names as `crate::<m>`, leaving out its unit tests, which may reach
/// anywhere to set a case up.
fn imports(text: &str, known: &BTreeMap<String, Vec<PathBuf>>) -> BTreeSet<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(end) => &text[..end],
        None => text,
    };
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if known.contains_key(&name) {
            found.insert(name);
        }
    }
    found
}

#[test]
fn the_module_imports_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    let mut graph = DiGraphMap::<&str, ()>::new();
    let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (module, files) in &modules {
        graph.add_node(module);
        for file in files {
            let text = fs::read_to_string(file).unwrap();
            for import in imports(&text, &modules) {
                if &import != module {
                    edges.entry(module).or_default().insert(import);
                }
            }
        }
    }
    for (from, tos) in &edges {
        for to in tos {
            graph.add_edge(modules.get_key_value(to).unwrap().0, from, ());
        }
    }
    let cycles: Vec<Vec<&str>> = tarjan_scc(&graph)
        .into_iter()
        .filter(|scc| scc.len() > 1)
        .collect();
    assert!(
        cycles.is_empty(),
        "modules that import each other, directly or through others: {cycles:?}"
    );
    let order = toposort(&graph, None).expect("no cycle");
    println!("forjar's modules, bottom first, with what each imports:");
    for module in order {
        let imports: Vec<&str> = edges
            .get(module)
            .map(|s| s.iter().map(String::as_str).collect())
            .unwrap_or_default();
        println!("  {module:<10} <- {}", imports.join(", "));
    }
}
