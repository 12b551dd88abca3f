//! `enter`: a shell in the sandbox of a derivation, as its build would see it.

use std::sync::atomic::AtomicBool;

use petgraph::Direction;
use petgraph::graph::NodeIndex;

use super::{BuildJob, Context, ExecError, Local};
use crate::plan::Plan;
use crate::request::{Arg, BuildRequest, EnvKey, EnvValue};
use crate::sandbox::Outcome;
use crate::store::{KeyLock, Store};

/// The shell `enter` runs, interactive, in place of the builder.
pub const SHELL: [&str; 2] = ["/bin/sh", "-i"];

/// What must be realised before derivation `index` can be entered: its inputs, and what they
/// need, in topological order.
pub fn enter_needs(plan: &Plan, index: NodeIndex) -> Vec<NodeIndex> {
    let inputs: Vec<NodeIndex> = plan
        .dag()
        .neighbors_directed(index, Direction::Incoming)
        .collect();
    super::needed_for(plan, inputs)
        .into_iter()
        .filter(|&n| n != index)
        .collect()
}

/// Runs an interactive shell in the sandbox of derivation `index`, whose inputs are realised
/// ([`enter_needs`]), on the user's terminal: its inputs, toolchain, environment, files, outputs' paths
/// and working directory as its build has them, the same namespaces, build user and filter. A
/// build directory kept by `--keep-failed` for its key is the shell's `/build`; otherwise a
/// fresh one is made as for a build, and removed afterwards, with whatever the outputs' paths
/// got. Nothing is installed.
pub fn enter(
    plan: &Plan,
    store: &Store,
    index: NodeIndex,
    local: &Local,
) -> Result<Outcome, ExecError> {
    let node = plan.node(index);
    let not_realised = || ExecError::NotRealised {
        name: node.name.to_string(),
    };
    let resolved = plan
        .resolve(index)
        .map_err(|e| ExecError::Plan(Box::new(e)))?
        .ok_or_else(not_realised)?;
    let planned = node.derivation().ok_or_else(not_realised)?;
    let job = BuildJob {
        request: resolved.request(),
        key: &resolved.key,
        outputs: &resolved.outputs,
        limits: planned.limits(),
        location: node.location.as_deref(),
    };
    // The build's request with a shell for its builder, `/bin/sh` provided, and a prompt that
    // says where the shell is.
    let mut parts = crate::request::RequestParts::clone(resolved.request());
    parts.args = SHELL
        .iter()
        .enumerate()
        .map(|(i, a)| Arg::new(i, *a))
        .collect::<Result<_, _>>()
        .map_err(|e| request_error(node, e.into()))?;
    parts.constraints.provide_bin_sh = true;
    let prompt = EnvKey::new("PS1").map_err(|e| request_error(node, e.into()))?;
    let value = EnvValue::new(&prompt, format!("[forjar enter {}] $ ", node.name))
        .map_err(|e| request_error(node, e.into()))?;
    parts.env.insert(prompt, value);
    let request = BuildRequest::new(parts).map_err(|e| request_error(node, e))?;

    let hash = job.key.store_hash();
    // Held while the shell runs: a build of the same key waits, and says for what.
    let lock = KeyLock::acquire_for(store, &hash, &format!("entering `{}`", node.name), &|_| {})?;
    let stop = AtomicBool::new(false);
    let events = |_: super::JobEvent<'_>| {};
    let cx = Context {
        store,
        lock: &lock,
        stop: &stop,
        events: &events,
    };
    let kept = store.kept_path(&hash, node.name.as_str());
    let log_path = store.dir().join(".tmp").join(format!("{hash}.enter.log"));
    let mut prepared = local.prepare(&job, &cx, log_path)?;
    let outcome = prepared.enter(&request, kept.is_dir().then_some(kept));
    drop(prepared);
    store.release_build_dirs();
    outcome
}

fn request_error(node: &crate::plan::Node, error: crate::request::RequestError) -> ExecError {
    ExecError::Plan(Box::new(crate::plan::PlanError::Request {
        name: node.name.to_string(),
        location: node.location.as_deref().unwrap_or_default().to_string(),
        error,
    }))
}
