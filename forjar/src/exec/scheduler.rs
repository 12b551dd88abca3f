//! The parallel scheduler over the plan's DAG (see the module above).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use petgraph::Direction;
use petgraph::graph::NodeIndex;

use super::{Done, Event, ExecError, Executor, Options, Report, realise};
use crate::plan::{NodeKind, Plan, Status};
use crate::store::Store;

/// What a worker thread tells the scheduler about its node.
enum Told {
    /// The node's builder is done (the executor said so): it no longer counts against `jobs`.
    Built(NodeIndex),
    /// The node is realised, or failed.
    Done(NodeIndex, Result<Done, ExecError>),
}

/// The state of one parallel realisation.
pub(super) struct Scheduler<'a> {
    plan: &'a Plan,
    store: &'a Store,
    executor: &'a dyn Executor,
    options: &'a Options,
    observer: &'a (dyn Fn(Event<'_>) + Sync),
    /// For each node still to do: how many of its dependencies are not done.
    waiting: HashMap<NodeIndex, usize>,
    /// The length of the longest chain of work from each node to the end.
    priority: HashMap<NodeIndex, usize>,
    /// Position in topological order, to break priority ties the same way every run.
    position: HashMap<NodeIndex, usize>,
    ready: BinaryHeap<(usize, Reverse<usize>, NodeIndex)>,
    /// Set to stop the running builds: a failure without `keep_going`, or an interrupt.
    stop: &'a AtomicBool,
    report: Report,
    failures: Vec<(NodeIndex, ExecError)>,
    skipped: Vec<String>,
}

impl<'a> Scheduler<'a> {
    pub(super) fn new(
        plan: &'a Plan,
        store: &'a Store,
        nodes: &[NodeIndex],
        executor: &'a dyn Executor,
        options: &'a Options,
        observer: &'a (dyn Fn(Event<'_>) + Sync),
        stop: &'a AtomicBool,
    ) -> Self {
        let wanted: BTreeSet<NodeIndex> = nodes.iter().copied().collect();
        let dag = plan.dag();
        let mut priority = HashMap::new();
        for &node in nodes.iter().rev() {
            let own = usize::from(plan.node(node).status != Status::Cached);
            let behind = dag
                .neighbors_directed(node, Direction::Outgoing)
                .filter_map(|d| priority.get(&d).copied())
                .max()
                .unwrap_or(0);
            priority.insert(node, own + behind);
        }
        let waiting: HashMap<NodeIndex, usize> = nodes
            .iter()
            .map(|&n| {
                let deps = dag
                    .neighbors_directed(n, Direction::Incoming)
                    .filter(|d| wanted.contains(d))
                    .collect::<BTreeSet<_>>()
                    .len();
                (n, deps)
            })
            .collect();
        let position = nodes.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut scheduler = Scheduler {
            plan,
            store,
            executor,
            options,
            observer,
            waiting,
            priority,
            position,
            ready: BinaryHeap::new(),
            stop,
            report: Report::default(),
            failures: Vec::new(),
            skipped: Vec::new(),
        };
        for &node in nodes {
            if scheduler.waiting[&node] == 0 {
                scheduler.make_ready(node);
            }
        }
        scheduler
    }

    fn make_ready(&mut self, node: NodeIndex) {
        self.ready
            .push((self.priority[&node], Reverse(self.position[&node]), node));
    }

    fn interrupted(&self) -> bool {
        self.options
            .interrupt
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
    }

    /// Whether every output of `node` is in the store already; for a derivation, records
    /// where.
    fn present(&self, node: NodeIndex) -> Result<bool, ExecError> {
        Ok(match &self.plan.node(node).kind {
            NodeKind::Source { entry, .. } | NodeKind::Toolchain { entry, .. } => {
                self.store.contains(entry)
            }
            NodeKind::Derivation(planned) => planned.find(self.store, true, None)?.is_some(),
        })
    }

    pub(super) fn run(mut self) -> Result<Report, ExecError> {
        let jobs = self.options.jobs.max(1);
        // Every node under way, and those of them whose builder may still run: only those count
        // against `jobs`. A node whose builder is done checks and installs its outputs beside
        // the next builds, up to `jobs` of them at once.
        let mut running: BTreeSet<NodeIndex> = BTreeSet::new();
        let mut building: BTreeSet<NodeIndex> = BTreeSet::new();
        // Builds run on up to twice `jobs` worker threads, started as they are first needed and
        // kept for the whole run (with their read buffers), fed through one queue.
        let (work_tx, work_rx) = mpsc::channel::<NodeIndex>();
        let work_rx = Mutex::new(work_rx);
        let mut workers = 0;
        std::thread::scope(|scope| {
            let (told_tx, told_rx) = mpsc::channel::<Told>();
            loop {
                if self.interrupted() {
                    self.stop.store(true, Ordering::Relaxed);
                }
                while !self.stop.load(Ordering::Relaxed)
                    && building.len() < jobs
                    && running.len() < 2 * jobs
                {
                    let Some((_, _, node)) = self.ready.pop() else {
                        break;
                    };
                    // A derivation whose key waited on builds gets it now that they are done.
                    let waited = self.plan.node(node).waits_on_a_build();
                    if let Err(error) = self.plan.resolve(node) {
                        self.settle(node, Err(ExecError::Plan(Box::new(error))));
                        continue;
                    }
                    let present = match self.present(node) {
                        Ok(present) => present,
                        Err(error) => {
                            self.settle(node, Err(error));
                            continue;
                        }
                    };
                    if present {
                        if waited {
                            // What it takes was rebuilt bit-identical: early cutoff.
                            let name = self.plan.node(node).name.to_string();
                            self.report.cut_off.push(name);
                        }
                        self.settle(node, Ok(Done::Cached));
                        continue;
                    }
                    (self.observer)(Event::Started(self.plan.node(node)));
                    running.insert(node);
                    building.insert(node);
                    if running.len() > workers {
                        let (plan, store, executor, observer, stop, work, tx) = (
                            self.plan,
                            self.store,
                            self.executor,
                            self.observer,
                            self.stop,
                            &work_rx,
                            told_tx.clone(),
                        );
                        let spawned = std::thread::Builder::new().spawn_scoped(scope, move || {
                            loop {
                                // The lock is held only to take the next node; the queue
                                // closes when the scheduler is done.
                                let next = work.lock().unwrap_or_else(|e| e.into_inner()).recv();
                                let Ok(node) = next else { break };
                                let started = Instant::now();
                                // The place is given up after the observer is told, so that
                                // what it shows of the builder's end comes before the next start.
                                let observe = |event: Event<'_>| {
                                    observer(event);
                                    if let Event::Built(_) = event {
                                        let _ = tx.send(Told::Built(node));
                                    }
                                };
                                let result = realise(plan, store, node, executor, stop, &observe);
                                if let Ok(done) = &result {
                                    let took = started.elapsed();
                                    observer(Event::Finished(plan.node(node), *done, took));
                                }
                                let _ = tx.send(Told::Done(node, result));
                            }
                        });
                        match spawned {
                            Ok(_) => workers += 1,
                            // The workers there are take the node in their turn.
                            Err(_) if workers > 0 => {}
                            Err(source) => {
                                running.remove(&node);
                                building.remove(&node);
                                let name = self.plan.node(node).name.to_string();
                                self.settle(node, Err(ExecError::NoThread { name, source }));
                                continue;
                            }
                        }
                    }
                    work_tx
                        .send(node)
                        .expect("the workers outlive the scheduler loop");
                }
                if running.is_empty() {
                    drop(work_tx);
                    break;
                }
                match told_rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(Told::Built(node)) => {
                        building.remove(&node);
                    }
                    Ok(Told::Done(node, result)) => {
                        running.remove(&node);
                        building.remove(&node);
                        self.settle(node, result);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        unreachable!("the scheduler holds a sender")
                    }
                }
            }
        });
        if self.interrupted() {
            let stopped = self
                .failures
                .iter()
                .filter(|(_, e)| matches!(e, ExecError::Cancelled(_)))
                .map(|(n, _)| self.plan.node(*n).name.to_string())
                .collect();
            return Err(ExecError::Interrupted(stopped));
        }
        let mut failures: Vec<ExecError> = self
            .failures
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| !matches!(e, ExecError::Cancelled(_)))
            .collect();
        match (failures.len(), self.skipped.is_empty()) {
            (0, _) => Ok(self.report),
            (_, _) if !self.options.keep_going => Err(failures.remove(0)),
            (1, true) => Err(failures.remove(0)),
            _ => Err(ExecError::Several {
                failures,
                skipped: self.skipped,
            }),
        }
    }

    /// Records how `node` ended and releases or skips what depends on it.
    fn settle(&mut self, node: NodeIndex, result: Result<Done, ExecError>) {
        let plan_node = self.plan.node(node);
        match result {
            Ok(done) => {
                match (done, &plan_node.kind) {
                    (Done::Cached, _) => self.report.cached += 1,
                    (Done::Made, NodeKind::Derivation { .. }) => {
                        self.report.built.push(plan_node.name.to_string())
                    }
                    (Done::Made, NodeKind::Source { .. } | NodeKind::Toolchain { .. }) => {
                        self.report.imported.push(plan_node.name.to_string())
                    }
                    (Done::Downloaded, _) => {
                        self.report.downloaded.push(plan_node.name.to_string())
                    }
                    (Done::Executed, _) => {
                        self.report.built.push(plan_node.name.to_string());
                        self.report.executed.push(plan_node.name.to_string());
                    }
                }
                let dependents: BTreeSet<NodeIndex> = self
                    .plan
                    .dag()
                    .neighbors_directed(node, Direction::Outgoing)
                    .collect();
                for dependent in dependents {
                    if let Some(count) = self.waiting.get_mut(&dependent) {
                        *count -= 1;
                        if *count == 0 {
                            self.make_ready(dependent);
                        }
                    }
                }
            }
            Err(error) => {
                if !matches!(error, ExecError::Cancelled(_)) {
                    (self.observer)(Event::Failed(plan_node, &error));
                    if self.options.keep_going {
                        self.skip_dependents(node);
                    } else {
                        self.stop.store(true, Ordering::Relaxed);
                    }
                }
                self.failures.push((node, error));
            }
        }
    }

    /// Leaves out everything that depends on the failed `node`.
    fn skip_dependents(&mut self, node: NodeIndex) {
        let mut queue = VecDeque::from([node]);
        let mut seen = BTreeSet::new();
        while let Some(at) = queue.pop_front() {
            for dependent in self.plan.dag().neighbors_directed(at, Direction::Outgoing) {
                if self.waiting.remove(&dependent).is_some() && seen.insert(dependent) {
                    (self.observer)(Event::Skipped(
                        self.plan.node(dependent),
                        self.plan.node(node),
                    ));
                    self.skipped
                        .push(self.plan.node(dependent).name.to_string());
                    queue.push_back(dependent);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;
    use crate::derivation::{Derivation, Drv, Graph};
    use crate::exec::{BuildFailure, BuildJob, Context, JobEvent, realise_all};
    use crate::store::{Draft, EntryKind, Staging};

    /// An executor that runs no builder: it records the jobs it is given, in order, fails or
    /// hangs the ones it is told to, and installs each output of the rest as a file holding the
    /// derivation's name.
    #[derive(Default)]
    struct Fake {
        ran: Mutex<Vec<String>>,
        fail: Vec<&'static str>,
        /// A job of this name sets this flag, as Ctrl-C does, and waits until it is stopped.
        hang: Option<(&'static str, &'static AtomicBool)>,
        /// Whether a job says when its builder is done (a local build does, when it succeeded).
        says_built: bool,
        /// How long each builder runs.
        build_time: Duration,
        /// Once its builder is done, a job installs only when this many jobs have started (or
        /// after ten seconds, and sets `gave_up`).
        install_after_started: usize,
        gave_up: AtomicBool,
        /// Builders running, and the most at once.
        builders: Counted,
        /// Jobs under way, and the most at once.
        under_way: Counted,
    }

    #[derive(Default)]
    struct Counted(AtomicUsize, AtomicUsize);

    impl Counted {
        fn enter(&self) -> impl Drop + '_ {
            let now = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            self.1.fetch_max(now, Ordering::SeqCst);
            scopeguard(move || {
                self.0.fetch_sub(1, Ordering::SeqCst);
            })
        }

        fn most(&self) -> usize {
            self.1.load(Ordering::SeqCst)
        }
    }

    fn scopeguard(f: impl FnMut()) -> impl Drop {
        struct Guard<F: FnMut()>(F);
        impl<F: FnMut()> Drop for Guard<F> {
            fn drop(&mut self) {
                (self.0)()
            }
        }
        Guard(f)
    }

    impl Executor for Fake {
        fn execute(&self, job: &BuildJob<'_>, cx: &Context<'_>) -> Result<Done, ExecError> {
            let name = job.name().to_string();
            let _under_way = self.under_way.enter();
            self.ran.lock().unwrap().push(name.clone());
            if let Some((hang, interrupt)) = self.hang
                && hang == name
            {
                interrupt.store(true, Ordering::Relaxed);
                while !cx.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Err(job.cancelled());
            }
            if self.fail.contains(&name.as_str()) {
                return Err(ExecError::Failed(Box::new(BuildFailure {
                    name,
                    location: String::new(),
                    reason: "it was told to fail".to_string(),
                    log_tail: Vec::new(),
                    log_path: Default::default(),
                    kept: None,
                })));
            }
            {
                let _builder = self.builders.enter();
                std::thread::sleep(self.build_time);
            }
            if self.says_built {
                (cx.events)(JobEvent::Built);
            }
            let waited = Instant::now();
            while self.ran.lock().unwrap().len() < self.install_after_started {
                if waited.elapsed() > Duration::from_secs(10) {
                    self.gave_up.store(true, Ordering::SeqCst);
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            for (output, planned) in job.outputs {
                let staging = Staging::new(cx.store, cx.lock, planned.entry.clone())?;
                std::fs::write(staging.content_path(), &name).unwrap();
                let draft = Draft {
                    name: job.name().clone(),
                    output: output.to_string(),
                    kind: EntryKind::Build,
                    key: planned.key,
                    derivation: Some(*job.key),
                    references: Vec::new(),
                    inputs: Default::default(),
                    system: None,
                    sandbox: None,
                    started: std::time::SystemTime::now(),
                    log_digest: None,
                    location: None,
                    source_path: None,
                    expected: None,
                };
                staging.commit(draft)?;
            }
            Ok(Done::Made)
        }
    }

    fn add(g: &mut Graph, name: &str, deps: &[&Drv]) -> Drv {
        let mut builder = Derivation::builder(name).script("true");
        for (i, dep) in deps.iter().enumerate() {
            builder = builder.input(format!("in{i}"), *dep);
        }
        g.add(builder.build().unwrap())
    }

    /// Applies `g` with `executor` on a fresh store.
    fn run(g: &Graph, executor: &Fake, options: &Options) -> Result<Report, ExecError> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let plan = Plan::new(g, &store).unwrap();
        let nodes: Vec<NodeIndex> = plan.nodes().map(|(i, _)| i).collect();
        realise_all(&plan, &store, &nodes, executor, options, &|_| {})
    }

    fn one_job() -> Options {
        Options {
            jobs: 1,
            ..Options::default()
        }
    }

    #[test]
    fn the_longest_chain_starts_first() {
        let mut g = Graph::new();
        let short = add(&mut g, "short", &[]);
        let a = add(&mut g, "chain-a", &[]);
        let b = add(&mut g, "chain-b", &[&a]);
        let c = add(&mut g, "chain-c", &[&b]);
        add(&mut g, "short-end", &[&short]);
        add(&mut g, "chain-end", &[&c]);
        let fake = Fake::default();
        let report = run(&g, &fake, &one_job()).unwrap();
        assert_eq!(report.built.len(), 6);
        // `short` was added first, but the chain has three builds behind its head and `short`
        // one: the chain goes first, until what is left of it is no longer than `short`'s.
        let ran = fake.ran.into_inner().unwrap();
        assert_eq!(ran[..2], ["chain-a", "chain-b"], "{ran:?}");
        assert_eq!(ran.len(), 6);
    }

    #[test]
    fn a_failure_stops_the_apply_without_keep_going() {
        let mut g = Graph::new();
        let bad = add(&mut g, "bad", &[]);
        add(&mut g, "after-bad", &[&bad]);
        let long = add(&mut g, "long-a", &[]);
        let long = add(&mut g, "long-b", &[&long]);
        add(&mut g, "long-c", &[&long]);
        let fake = Fake {
            fail: vec!["long-a"],
            ..Fake::default()
        };
        let error = run(&g, &fake, &one_job()).unwrap_err();
        assert!(
            matches!(&error, ExecError::Failed(f) if f.name == "long-a"),
            "{error}"
        );
        assert_eq!(fake.ran.into_inner().unwrap(), ["long-a"]);
    }

    #[test]
    fn keep_going_builds_everything_that_does_not_depend_on_a_failure() {
        let mut g = Graph::new();
        let bad = add(&mut g, "bad", &[]);
        let skipped = add(&mut g, "needs-bad", &[&bad]);
        add(&mut g, "needs-needs-bad", &[&skipped]);
        let good = add(&mut g, "good", &[]);
        add(&mut g, "needs-good", &[&good]);
        let fake = Fake {
            fail: vec!["bad"],
            ..Fake::default()
        };
        let options = Options {
            keep_going: true,
            ..one_job()
        };
        let error = run(&g, &fake, &options).unwrap_err();
        let ExecError::Several { failures, skipped } = &error else {
            panic!("expected several failures, got {error}");
        };
        assert_eq!(failures.len(), 1);
        assert_eq!(skipped, &["needs-bad", "needs-needs-bad"]);
        let mut ran = fake.ran.into_inner().unwrap();
        ran.sort();
        assert_eq!(ran, ["bad", "good", "needs-good"]);
    }

    #[test]
    fn an_interrupt_stops_the_running_builds_and_starts_no_more() {
        static INTERRUPT: AtomicBool = AtomicBool::new(false);
        let mut g = Graph::new();
        let first = add(&mut g, "first", &[]);
        add(&mut g, "second", &[&first]);
        add(&mut g, "other", &[]);
        let fake = Fake {
            hang: Some(("first", &INTERRUPT)),
            ..Fake::default()
        };
        let options = Options {
            interrupt: Some(&INTERRUPT),
            ..one_job()
        };
        let error = run(&g, &fake, &options).unwrap_err();
        let ExecError::Interrupted(stopped) = &error else {
            panic!("expected an interrupt, got {error}");
        };
        assert_eq!(stopped, &["first"]);
        assert_eq!(fake.ran.into_inner().unwrap(), ["first"]);
    }

    #[test]
    fn jobs_run_at_once_up_to_the_limit() {
        let mut g = Graph::new();
        for i in 0..8 {
            add(&mut g, &format!("leaf{i}"), &[]);
        }
        let fake = Fake {
            build_time: Duration::from_millis(50),
            ..Fake::default()
        };
        let options = Options {
            jobs: 3,
            ..Options::default()
        };
        let report = run(&g, &fake, &options).unwrap();
        assert_eq!(report.built.len(), 8);
        assert_eq!(report.cached, 0);
        assert_eq!(fake.builders.most(), 3, "builders at once");
    }

    #[test]
    fn a_build_whose_builder_is_done_leaves_its_place_to_the_next() {
        let mut g = Graph::new();
        let first = add(&mut g, "first", &[]);
        add(&mut g, "second", &[]);
        add(&mut g, "third", &[]);
        add(&mut g, "after-first", &[&first]);
        // A job installs only once another has started: with `-j 1`, only if a job whose
        // builder is done no longer holds the place.
        let fake = Fake {
            says_built: true,
            install_after_started: 2,
            ..Fake::default()
        };
        let report = run(&g, &fake, &one_job()).unwrap();
        assert_eq!(report.built.len(), 4);
        assert!(
            !fake.gave_up.load(Ordering::SeqCst),
            "a job waited for the next to start, which never did"
        );
        assert_eq!(fake.builders.most(), 1, "builders at once");
        assert_eq!(fake.under_way.most(), 2, "jobs under way at once");
        // What depends on a build starts only once it is installed.
        let ran = fake.ran.into_inner().unwrap();
        let at = |name: &str| ran.iter().position(|r| r == name).unwrap();
        assert!(at("after-first") > at("first"), "{ran:?}");
    }
}
