//! Why a node is built: its request against the last build of the same derivation name in the
//! store (`plan --explain`, `apply -v`).
//!
//! The comparison is of the requests' serde forms, field by field, so that every field of a
//! request is covered, and is told in the request's own words: `env CFLAGS`, `args[2] line 3`,
//! `input calc`, or the part of the host fingerprint that changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use petgraph::graph::NodeIndex;
use serde::Serialize;
use serde_json::Value;

use crate::hash::HostFingerprint;
use crate::plan::{NodeKind, Plan, Status};
use crate::request::RequestParts;
use crate::store::{BuildRecord, Store};

/// One reason a node is built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Reason {
    /// No build of a derivation of this name is recorded in the store.
    NeverBuilt,
    /// The same request was built, and its outputs are no longer in the store.
    Collected,
    /// A source whose content is not in the store.
    NewContent,
    /// Its key names what derivations built before it make: it is built only if that differs
    /// from what the store has.
    WaitsOn {
        /// Those derivations.
        derivations: Vec<String>,
    },
    /// A field of the request differs from the last build's.
    Changed {
        /// The field, in the request's words (`env CFLAGS`, `args[2] line 3`).
        field: String,
        /// Its value at the last build, if it had one.
        was: Option<String>,
        /// Its value now, if it has one.
        now: Option<String>,
    },
    /// An input's content differs: it names another store entry.
    Input {
        /// The input's name.
        name: String,
        /// The entry at the last build, if it had the input.
        was: Option<String>,
        /// The entry now, if it has it.
        now: Option<String>,
    },
    /// The toolchain differs: other packages, or other versions of them.
    Toolchain {
        /// Its store entry at the last build, if it had one.
        was: Option<String>,
        /// Its store entry now, if it has one.
        now: Option<String>,
    },
    /// A part of the host fingerprint (a `host-tools` build) differs.
    Host {
        /// The part: `arch`, or the file it hashes.
        part: String,
    },
    /// The request is the same field by field and its key differs (another forjar version).
    KeyChanged,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".to_string());
        match self {
            Reason::NeverBuilt => f.write_str("never built in this store"),
            Reason::Collected => f.write_str(
                "built before with this request; its outputs are no longer in the store",
            ),
            Reason::NewContent => f.write_str("its content is not in the store"),
            Reason::WaitsOn { derivations } => write!(
                f,
                "takes `{}`, built first; built only if what {} differs from the store's",
                derivations.join("`, `"),
                if derivations.len() == 1 {
                    "it makes"
                } else {
                    "they make"
                }
            ),
            Reason::Changed { field, was, now } => {
                write!(f, "{field}: {} -> {}", or_none(was), or_none(now))
            }
            Reason::Input { name, was, now } => write!(
                f,
                "input `{name}` changed: {} -> {}",
                or_none(was),
                or_none(now)
            ),
            Reason::Toolchain { was, now } => write!(
                f,
                "toolchain changed: {} -> {} (`lock` printed which packages)",
                or_none(was),
                or_none(now)
            ),
            Reason::Host { part } => write!(f, "host fingerprint: {part} changed"),
            Reason::KeyChanged => {
                f.write_str("the request is unchanged but its key differs (another forjar version)")
            }
        }
    }
}

/// Why each node the plan builds or imports is, by node.
pub fn explain(plan: &Plan, store: &Store) -> BTreeMap<NodeIndex, Vec<Reason>> {
    plan.nodes()
        .filter(|(_, node)| matches!(node.status, Status::Build | Status::Import))
        .map(|(index, node)| {
            let reasons = match &node.kind {
                NodeKind::Source { .. } | NodeKind::Toolchain { .. } => vec![Reason::NewContent],
                NodeKind::Derivation(planned) => {
                    // A record that cannot be read is as none: the explanation is all it serves.
                    let last = store.last_build(&node.name).ok().flatten();
                    let (request, key, unknown) = match planned.resolved() {
                        Some(resolved) => {
                            (&**resolved.request(), Some(resolved.key), BTreeSet::new())
                        }
                        // The inputs from derivations built first are not known yet.
                        None => (
                            planned.request(),
                            None,
                            planned
                                .derivation_inputs()
                                .iter()
                                .map(|(input, _, _)| input.to_string())
                                .collect(),
                        ),
                    };
                    let mut reasons = match last {
                        None => vec![Reason::NeverBuilt],
                        Some(last) if Some(last.key) == key => vec![Reason::Collected],
                        Some(last) => compare(&last, request, &unknown),
                    };
                    if key.is_none() {
                        reasons.insert(
                            0,
                            Reason::WaitsOn {
                                derivations: plan
                                    .waits_on(planned)
                                    .into_iter()
                                    .map(|n| n.to_string())
                                    .collect(),
                            },
                        );
                    } else if reasons.is_empty() {
                        reasons.push(Reason::KeyChanged);
                    }
                    reasons
                }
            };
            (index, reasons)
        })
        .collect()
}

/// What differs between the last build's request and `now`, leaving out the inputs `unknown`
/// (from derivations built first).
fn compare(last: &BuildRecord, now: &RequestParts, unknown: &BTreeSet<String>) -> Vec<Reason> {
    let mut reasons = Vec::new();
    let was = serde_json::to_value(&last.request).expect("a request serialises");
    let is = serde_json::to_value(now).expect("a request serialises");
    let (Value::Object(was), Value::Object(is)) = (was, is) else {
        unreachable!("a request serialises to an object")
    };
    let fields: BTreeSet<&String> = was.keys().chain(is.keys()).collect();
    for field in fields {
        let (a, b) = (was.get(field), is.get(field));
        if a == b {
            continue;
        }
        match field.as_str() {
            "inputs" => inputs(a, b, unknown, &mut reasons),
            "toolchain" => reasons.push(Reason::Toolchain {
                was: entry_of(a),
                now: entry_of(b),
            }),
            "host" => match &last.host {
                Some(parts) => {
                    let current = HostFingerprint::current_parts();
                    for (part, hash) in &current {
                        if parts.get(part) != Some(hash) {
                            reasons.push(Reason::Host { part: part.clone() });
                        }
                    }
                }
                None => diff(field, a, b, &mut reasons),
            },
            _ => diff(field, a, b, &mut reasons),
        }
    }
    reasons
}

/// The store entry a resolved input or toolchain names, in its serde form.
fn entry_of(value: Option<&Value>) -> Option<String> {
    value
        .and_then(|v| v.get("entry"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The inputs that differ: added, removed, or naming another entry.
fn inputs(
    was: Option<&Value>,
    now: Option<&Value>,
    unknown: &BTreeSet<String>,
    reasons: &mut Vec<Reason>,
) {
    let empty = serde_json::Map::new();
    let object = |v: Option<&Value>| v.and_then(Value::as_object).unwrap_or(&empty).clone();
    let (was, now) = (object(was), object(now));
    let names: BTreeSet<&String> = was.keys().chain(now.keys()).collect();
    for name in names {
        let (a, b) = (was.get(name), now.get(name));
        // An input from a derivation built first is not known yet: `WaitsOn` says so.
        if a == b || (b.is_none() && unknown.contains(name)) {
            continue;
        }
        reasons.push(Reason::Input {
            name: name.clone(),
            was: entry_of(a),
            now: entry_of(b),
        });
    }
}

/// The differences between two values of one field, by path: objects by key, arrays by index,
/// text of several lines by line.
fn diff(path: &str, was: Option<&Value>, now: Option<&Value>, reasons: &mut Vec<Reason>) {
    match (was, now) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                if a.get(key) != b.get(key) {
                    diff(&format!("{path} {key}"), a.get(key), b.get(key), reasons);
                }
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if x != y {
                    diff(&format!("{path}[{i}]"), Some(x), Some(y), reasons);
                }
            }
        }
        (Some(Value::String(a)), Some(Value::String(b)))
            if a.contains('\n') || b.contains('\n') =>
        {
            let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
            for line in 0..a.len().max(b.len()) {
                let (x, y) = (a.get(line), b.get(line));
                if x != y {
                    reasons.push(Reason::Changed {
                        field: format!("{path} line {}", line + 1),
                        was: x.map(|s| shown(s)),
                        now: y.map(|s| shown(s)),
                    });
                }
            }
        }
        _ => reasons.push(Reason::Changed {
            field: path.to_string(),
            was: was.map(scalar),
            now: now.map(scalar),
        }),
    }
}

/// A value as the explanation shows it: strings quoted, at most 80 characters.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => shown(s),
        other => {
            let text = other.to_string();
            if text.chars().count() > 80 {
                format!("{}…", text.chars().take(80).collect::<String>())
            } else {
                text
            }
        }
    }
}

fn shown(text: &str) -> String {
    if text.chars().count() > 80 {
        format!("`{}…`", text.chars().take(80).collect::<String>())
    } else {
        format!("`{text}`")
    }
}
