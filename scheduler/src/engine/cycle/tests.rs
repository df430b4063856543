//! The pass without an engine: hand-built snapshots in, plans out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;

use proptest::prelude::*;

use super::*;
use crate::domain::{GpuRequest, JobState, MiB, MilliCpu, Millis, TenantName, UnixMillis};
use crate::engine::model::QuotaStanding;
use crate::placement::{Gpu, NodeInventory, Policy, Profile};

fn cluster(nodes: &[(&str, u32)]) -> Cluster {
    let mut c = Cluster::new();
    for (name, gpus) in nodes {
        c.upsert_node(NodeInventory {
            name: name.parse().unwrap(),
            labels: BTreeMap::new(),
            cpu: MilliCpu(64_000),
            memory: MiB(512 * 1024),
            gpus: (0..*gpus)
                .map(|i| Gpu::whole(i, format!("GPU-{name}-{i}"), "H100-80GB", MiB(80 * 1024)))
                .collect(),
        });
    }
    c
}

fn tenant(t: &str) -> TenantName {
    t.parse().unwrap()
}

/// A pending job of `t` asking for `gpus` whole GPUs.
fn pending(t: &str, gpus: u32, priority: i32, submitted: u64) -> Job {
    let mut j = Job::for_tests(JobId::new_v7());
    j.state = JobState::Pending;
    j.spec.tenant = tenant(t);
    j.spec.priority = priority;
    j.spec.resources.gpu = NonZeroU32::new(gpus).map_or(GpuRequest::None, GpuRequest::Whole);
    j.submitted_at = UnixMillis(submitted);
    j
}

/// What the engine holds: its jobs, queue, cluster mirror, placer, quota
/// book and nominations.
struct World {
    jobs: HashMap<JobId, Job>,
    pending: Pending,
    queues: Queues,
    deps: DependencyGraph,
    fairshare: FairShare,
    backfill_depth: usize,
    cluster: Cluster,
    placer: Placer,
    quota: QuotaBook,
    nominations: Nominations,
    budget_holds: HashMap<TenantName, String>,
    quota_bound: HashSet<TenantName>,
    now: UnixMillis,
}

impl World {
    fn new(nodes: &[(&str, u32)]) -> World {
        World {
            jobs: HashMap::new(),
            pending: Pending::default(),
            queues: Queues::default(),
            deps: DependencyGraph::default(),
            fairshare: FairShare::default(),
            backfill_depth: DEFAULT_BACKFILL_DEPTH,
            cluster: cluster(nodes),
            placer: Placer::new(Profile::new(Policy::FirstFit, 0)),
            quota: QuotaBook::default(),
            nominations: Nominations::default(),
            budget_holds: HashMap::new(),
            quota_bound: HashSet::new(),
            now: UnixMillis(1_000_000),
        }
    }

    fn submit(&mut self, job: Job) -> JobId {
        let id = job.id;
        self.pending.push(&job, self.queues.tier(&job.spec));
        self.jobs.insert(id, job);
        id
    }

    /// A running job, placed on the cluster by the placer.
    fn running(&mut self, t: &str, gpus: u32, priority: i32, preemptible: bool) -> JobId {
        let mut job = pending(t, gpus, priority, 0);
        job.state = JobState::Running;
        job.spec.preemptible = preemptible;
        job.started_at = Some(UnixMillis(0));
        let parts = self
            .placer
            .place_job(&self.cluster, &Request::of(&job.spec), |_, _| None)
            .expect("room for it");
        for p in &parts {
            self.cluster.allocate(job.id, p).unwrap();
        }
        job.placements = parts;
        let id = job.id;
        self.jobs.insert(id, job);
        id
    }

    fn plan(&mut self) -> Plan {
        self.plan_by(&PriorityThenAge, &[&QueueGate, &BudgetGate, &QuotaGate])
    }

    fn plan_by(&mut self, order: &dyn QueueOrder, gates: &[&dyn Gate]) -> Plan {
        let snapshot = Snapshot {
            now: self.now,
            jobs: &self.jobs,
            pending: &self.pending,
            queues: &self.queues,
            deps: &self.deps,
            fairshare: &self.fairshare,
            min_runtime: Millis(0),
            budget_holds: self.budget_holds.clone(),
            quota_bound: self.quota_bound.clone(),
            can_ask: true,
            backfill_depth: self.backfill_depth,
        };
        let mut state = CycleState {
            cluster: &mut self.cluster,
            placer: &mut self.placer,
            quota: &mut self.quota,
            nominations: &mut self.nominations,
            usage: QueueUsage::count(&self.queues, self.jobs.values()),
        };
        plan_with(order, gates, &snapshot, &mut state)
    }
}

fn placed(plan: &Plan) -> Vec<JobId> {
    plan.decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Place { job, .. } => Some(*job),
            _ => None,
        })
        .collect()
}

fn reason_of(plan: &Plan, id: JobId) -> Option<&str> {
    plan.decisions.iter().find_map(|d| match d {
        Decision::Wait { job, reason, .. } if *job == id => Some(reason.as_str()),
        _ => None,
    })
}

#[test]
fn the_queue_goes_in_priority_order_and_a_job_that_does_not_fit_stops_nobody() {
    let mut w = World::new(&[("n1", 4)]);
    let big = w.submit(pending("a", 3, 0, 1));
    let urgent = w.submit(pending("a", 2, 9, 2));
    let small = w.submit(pending("a", 1, 0, 3));
    let too_big = w.submit(pending("a", 8, 0, 4));
    let plan = w.plan();
    // urgent first (priority), then big does not fit beside it, small does.
    assert_eq!(placed(&plan), vec![urgent, small]);
    assert!(
        reason_of(&plan, big).is_some_and(|r| r.contains("now")),
        "{plan:?}"
    );
    assert!(
        reason_of(&plan, too_big).is_some_and(|r| r.contains("at all")),
        "{plan:?}"
    );
    // The mirror holds what was placed: a second pass over the same queue
    // places nothing more, and the reasons it gives are unchanged, so it
    // says nothing about them.
    assert_eq!(w.cluster.nodes()[0].free_whole, 1);
    for id in [big, too_big] {
        let reason = reason_of(&plan, id).unwrap().to_string();
        w.jobs.get_mut(&id).unwrap().reason = reason;
    }
    for id in [urgent, small] {
        w.pending.remove(&id);
    }
    let again = w.plan();
    assert!(again.decisions.is_empty(), "{again:?}");
}

#[test]
fn the_same_snapshot_gives_the_same_plan() {
    let build = || {
        let mut w = World::new(&[("n1", 4), ("n2", 2)]);
        let ids: Vec<JobId> = (0..12)
            .map(|k| w.submit(pending("a", 1 + k % 3, (k % 2) as i32, u64::from(k))))
            .collect();
        (w, ids)
    };
    let (mut a, ids) = build();
    let (mut b, _) = build();
    // Same jobs under the same ids.
    b.jobs = a.jobs.clone();
    b.pending = Pending::default();
    for id in &ids {
        b.pending.push(&a.jobs[id], 0);
    }
    assert_eq!(a.plan().decisions, b.plan().decisions);
}

#[test]
fn a_spent_budget_holds_its_tenant_and_no_one_else() {
    let mut w = World::new(&[("n1", 4)]);
    let held = w.submit(pending("spent", 1, 5, 1));
    let other = w.submit(pending("fine", 1, 0, 2));
    w.budget_holds
        .insert(tenant("spent"), "has spent its budget".into());
    let plan = w.plan();
    assert_eq!(placed(&plan), vec![other]);
    assert_eq!(
        reason_of(&plan, held),
        Some("held: tenant spent has spent its budget")
    );
}

#[test]
fn a_quota_tenant_is_asked_each_ask_counting_those_before_it() {
    let mut w = World::new(&[("n1", 4)]);
    let first = w.submit(pending("q", 1, 0, 1));
    let second = w.submit(pending("q", 1, 0, 2));
    let free = w.submit(pending("free", 1, 0, 3));
    w.quota_bound.insert(tenant("q"));
    let plan = w.plan();
    assert_eq!(placed(&plan), vec![free], "the other tenant does not wait");
    let asks: Vec<&QuotaAsk> = plan
        .decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Ask(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(asks.len(), 2);
    assert_eq!((asks[0].job, asks[0].assumed.clone()), (first, vec![]));
    assert_eq!((asks[1].job, asks[1].assumed.clone()), (second, vec![first]));
    assert_eq!(w.quota.standing(first, w.now), QuotaStanding::Asking);
    // Asked and not answered: the next pass waits, and asks nothing again.
    let plan = w.plan();
    assert!(placed(&plan).is_empty());
    assert!(
        plan.decisions.iter().all(|d| !matches!(d, Decision::Ask(_))),
        "{plan:?}"
    );
    assert_eq!(
        reason_of(&plan, first),
        Some("waiting for the quota plugin's answer")
    );
}

#[test]
fn a_preemptor_nominates_a_node_reserves_it_and_no_victim_is_taken_twice() {
    let mut w = World::new(&[("n1", 2), ("n2", 2)]);
    let low1 = w.running("a", 2, 0, true);
    let low2 = w.running("a", 2, 0, true);
    let high = w.submit(pending("b", 2, 10, 1));
    let also_high = w.submit(pending("c", 2, 10, 2));
    let plan = w.plan();
    let preempts: Vec<(JobId, Vec<JobId>)> = plan
        .decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Preempt { job, victims, .. } => Some((*job, victims.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(preempts.len(), 2, "{plan:?}");
    assert_eq!(preempts[0].0, high);
    assert_eq!(preempts[1].0, also_high);
    let mut all: Vec<JobId> = preempts.iter().flat_map(|(_, v)| v.clone()).collect();
    all.sort();
    let mut expected = vec![low1, low2];
    expected.sort();
    assert_eq!(all, expected, "each victim is taken once");
    let n_high = w.nominations.get(&high).unwrap().node.clone();
    let n_also = w.nominations.get(&also_high).unwrap().node.clone();
    assert_ne!(
        n_high, n_also,
        "a node another preemptor is emptying is not taken"
    );
    assert!(reason_of(&plan, high).is_some_and(|r| r.starts_with("preempting 1 job on")));

    // The victims stop: high's node is free, and reserved for it against an
    // equal-priority job that comes first in the queue.
    let low_on_high = w.nominations.get(&high).unwrap().victims[0];
    for p in w.jobs[&low_on_high].placements.clone() {
        w.cluster.release(low_on_high, p.node.as_str());
    }
    w.jobs.remove(&low_on_high);
    w.nominations.victim_gone(&high, low_on_high);
    let sneaky = w.submit(pending("d", 2, 10, 0));
    let plan = w.plan();
    assert_eq!(placed(&plan), vec![high], "{plan:?}");
    assert!(
        w.nominations.get(&high).is_none(),
        "placed: its nomination is gone"
    );
    assert!(reason_of(&plan, sneaky).is_some(), "{plan:?}");
    assert!(
        reason_of(&plan, also_high).is_some_and(|r| r.starts_with("waiting for 1 preempted job to stop")),
        "{plan:?}"
    );
}

#[test]
fn no_victim_is_chosen_for_a_job_that_does_not_outrank_it() {
    let mut w = World::new(&[("n1", 2)]);
    w.running("a", 2, 5, true);
    let same = w.submit(pending("b", 2, 5, 1));
    let plan = w.plan();
    assert!(
        plan.decisions
            .iter()
            .all(|d| !matches!(d, Decision::Preempt { .. })),
        "{plan:?}"
    );
    assert!(reason_of(&plan, same).is_some());
}

#[test]
fn a_gate_that_denies_fails_the_job_and_the_pass_goes_on() {
    struct DenyTenant(TenantName);
    impl Gate for DenyTenant {
        fn check(&self, job: &Job, _: &Snapshot<'_>, _: &mut CycleState<'_>) -> Verdict {
            if job.spec.tenant == self.0 {
                Verdict::Deny("no".into())
            } else {
                Verdict::Go
            }
        }
    }
    struct Newest;
    impl QueueOrder for Newest {
        fn order(&self, s: &Snapshot<'_>) -> Vec<JobId> {
            let mut ids: Vec<JobId> = s.pending.iter().collect();
            ids.sort_by_key(|id| std::cmp::Reverse(s.jobs[id].submitted_at));
            ids
        }
    }
    let mut w = World::new(&[("n1", 1)]);
    let older = w.submit(pending("a", 1, 0, 1));
    let denied = w.submit(pending("x", 1, 0, 2));
    let newer = w.submit(pending("a", 1, 0, 3));
    let plan = w.plan_by(&Newest, &[&DenyTenant(tenant("x"))]);
    assert_eq!(
        plan.decisions[..2],
        [
            Decision::Place {
                job: newer,
                parts: match &plan.decisions[0] {
                    Decision::Place { parts, .. } => parts.clone(),
                    other => panic!("{other:?}"),
                }
            },
            Decision::Deny {
                job: denied,
                state: JobState::Failed,
                reason: "no".into()
            },
        ],
        "the order decides who gets the one GPU, and a deny does not stop the pass"
    );
    assert!(reason_of(&plan, older).is_some());
}

proptest! {
    /// Whatever is queued, a plan never places more than the cluster holds,
    /// places each job at most once, decides only about queued jobs, and
    /// leaves the mirror holding exactly what it placed.
    #[test]
    fn a_plan_stays_within_the_cluster(
        jobs in proptest::collection::vec((0u32..5, -2i32..3, 0u8..3), 0..40),
        nodes in proptest::collection::vec(1u32..9, 1..5),
    ) {
        let names: Vec<String> = (0..nodes.len()).map(|i| format!("n{i}")).collect();
        let spec: Vec<(&str, u32)> = names.iter().map(String::as_str).zip(nodes.iter().copied()).collect();
        let mut w = World::new(&spec);
        let capacity: u32 = nodes.iter().sum();
        let mut queued = HashSet::new();
        for (k, (gpus, priority, t)) in jobs.iter().enumerate() {
            queued.insert(w.submit(pending(&format!("t{t}"), *gpus, *priority, k as u64)));
        }
        let plan = w.plan();
        let mut seen = HashSet::new();
        let mut gpus_placed = 0;
        for d in &plan.decisions {
            let id = match d {
                Decision::Place { job, parts } => {
                    prop_assert!(seen.insert(*job), "placed twice");
                    gpus_placed += parts.iter().map(|p| p.devices.len() as u32).sum::<u32>();
                    *job
                }
                Decision::Wait { job, .. } | Decision::Deny { job, .. } | Decision::Preempt { job, .. } => *job,
                Decision::Ask(a) => a.job,
            };
            prop_assert!(queued.contains(&id));
        }
        prop_assert!(gpus_placed <= capacity);
        let free: u32 = w.cluster.nodes().iter().map(|n| n.free_whole).sum();
        prop_assert_eq!(free + gpus_placed, capacity);
    }
}

fn queue_def(name: &str) -> crate::domain::QueueDef {
    crate::domain::QueueDef {
        name: name.parse().unwrap(),
        default: false,
        source: crate::domain::QueueSource::Api,
        ..crate::domain::QueueDef::builtin()
    }
}

fn in_queue(mut job: Job, queue: &str) -> Job {
    job.spec.queue = Some(queue.parse().unwrap());
    job
}

fn wait_reason(plan: &Plan, id: JobId) -> Option<String> {
    plan.decisions.iter().find_map(|d| match d {
        Decision::Wait { job, reason, .. } if *job == id => Some(reason.clone()),
        _ => None,
    })
}

#[test]
fn a_higher_queue_tier_goes_first_whatever_the_priority() {
    let mut w = World::new(&[("n1", 2)]);
    let mut fast = queue_def("fast");
    fast.priority_tier = 5;
    w.queues = Queues::new(vec![], vec![fast]).unwrap();
    let urgent = w.submit(pending("t", 2, 100, 1));
    let tiered = w.submit(in_queue(pending("t", 2, 0, 2), "fast"));
    let plan = w.plan();
    assert_eq!(placed(&plan), vec![tiered]);
    assert!(wait_reason(&plan, urgent).is_some());
}

#[test]
fn a_queue_keeps_its_jobs_to_its_nodes_and_each_tenant_to_its_limits() {
    let mut w = World::new(&[("n1", 2)]);
    w.cluster.upsert_node(NodeInventory {
        name: "n2".parse().unwrap(),
        labels: [("pool".to_string(), "a".to_string())].into_iter().collect(),
        cpu: MilliCpu(64_000),
        memory: MiB(512 * 1024),
        gpus: (0..4)
            .map(|i| Gpu::whole(i, format!("GPU-n2-{i}"), "H100-80GB", MiB(80 * 1024)))
            .collect(),
    });
    let mut pool = queue_def("pool-a");
    pool.node_labels.insert("pool".into(), "a".into());
    pool.per_tenant.gpus = Some(3);
    w.queues = Queues::new(vec![], vec![pool]).unwrap();
    let a1 = w.submit(in_queue(pending("t1", 2, 0, 1), "pool-a"));
    let a2 = w.submit(in_queue(pending("t1", 2, 0, 2), "pool-a"));
    let b1 = w.submit(in_queue(pending("t2", 2, 0, 3), "pool-a"));
    let gone = w.submit(in_queue(pending("t3", 1, 0, 4), "gone"));
    let plan = w.plan();
    assert_eq!(placed(&plan), vec![a1, b1], "each tenant counts its own GPUs");
    for d in &plan.decisions {
        if let Decision::Place { parts, .. } = d {
            assert!(
                parts.iter().all(|p| p.node.as_str() == "n2"),
                "only the queue's node"
            );
        }
    }
    let why = wait_reason(&plan, a2).expect("over its limit");
    assert!(
        why.contains("queue pool-a limit") && why.contains("at most 3"),
        "{why}"
    );
    let why = wait_reason(&plan, gone).expect("its queue is gone");
    assert!(why.contains("queue gone no longer exists"), "{why}");
    // Once the first ends, the second starts.
    w.jobs.get_mut(&a1).unwrap().state = JobState::Running;
    w.jobs.get_mut(&b1).unwrap().state = JobState::Running;
    w.pending.remove(&a1);
    w.pending.remove(&b1);
    assert_eq!(
        placed(&w.plan()),
        Vec::<JobId>::new(),
        "still at the limit while a1 runs"
    );
    w.jobs.get_mut(&a1).unwrap().state = JobState::Succeeded;
    w.cluster.release(a1, "n2");
    assert_eq!(placed(&w.plan()), vec![a2]);
}

fn limited(mut job: Job, secs: u64) -> Job {
    job.spec.time_limit = Some(Millis::from_secs(secs));
    job
}

#[test]
fn a_big_job_gets_a_reservation_and_only_what_ends_before_it_backfills() {
    let mut w = World::new(&[("n1", 4)]);
    let a = w.running("t", 2, 0, false);
    let b = w.running("t", 1, 0, false);
    let now = w.now;
    for (id, secs) in [(a, 100), (b, 50)] {
        let j = w.jobs.get_mut(&id).unwrap();
        j.started_at = Some(now);
        j.spec.time_limit = Some(Millis::from_secs(secs));
    }
    let big = w.submit(limited(pending("t", 4, 10, 1), 1000));
    let long = w.submit(limited(pending("t", 1, 0, 2), 200));
    let forever = w.submit(pending("t", 1, 0, 3));
    let short = w.submit(limited(pending("t", 1, 0, 4), 30));
    let plan = w.plan();
    assert_eq!(
        placed(&plan),
        vec![short],
        "only what ends before the reservation starts now"
    );
    let at = now.plus(Millis::from_secs(100));
    let (reason, expected) = plan
        .decisions
        .iter()
        .find_map(|d| match d {
            Decision::Wait {
                job,
                reason,
                expected_start,
            } if *job == big => Some((reason.clone(), *expected_start)),
            _ => None,
        })
        .expect("the big job waits");
    assert_eq!(
        expected,
        Some(at),
        "when a's limit ends it, all four GPUs are free"
    );
    assert!(
        reason.contains(&format!("expected to start by {at}")) && reason.contains("n1"),
        "{reason}"
    );
    for id in [long, forever] {
        let why = wait_reason(&plan, id).unwrap();
        assert!(why.contains("reserved for a job ahead in the queue"), "{why}");
    }
    // Without backfill the small jobs take the free GPU in order.
    let mut greedy = World::new(&[("n1", 4)]);
    greedy.backfill_depth = 0;
    greedy.running("t", 3, 0, false);
    greedy.submit(limited(pending("t", 4, 10, 1), 1000));
    let first_small = greedy.submit(limited(pending("t", 1, 0, 2), 200));
    assert_eq!(placed(&greedy.plan()), vec![first_small]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Jobs that run exactly to their limits, all queued at once, with the
    /// default depth: every job that got a reservation starts no later than
    /// the first time it was promised, whatever starts around it.
    #[test]
    fn backfill_never_delays_a_reserved_job(
        nodes in 1usize..4,
        gpus in 1u32..5,
        jobs in proptest::collection::vec((1u32..5, 1u64..20, 0i32..3), 1..14),
    ) {
        let names: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
        let layout: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), gpus)).collect();
        let mut w = World::new(&layout);
        w.backfill_depth = DEFAULT_BACKFILL_DEPTH;
        let mut ids = Vec::new();
        for (i, (g, secs, prio)) in jobs.iter().enumerate() {
            ids.push(w.submit(limited(pending("t", (*g).min(gpus), *prio, i as u64), *secs)));
        }
        let mut promised: HashMap<JobId, UnixMillis> = HashMap::new();
        let mut started: HashMap<JobId, UnixMillis> = HashMap::new();
        let mut running: Vec<(UnixMillis, JobId)> = Vec::new();
        for _ in 0..100 {
            let plan = w.plan();
            for d in plan.decisions {
                match d {
                    Decision::Place { job, parts } => {
                        let j = w.jobs.get_mut(&job).unwrap();
                        j.state = JobState::Running;
                        j.started_at = Some(w.now);
                        j.placements = parts;
                        j.expected_start = None;
                        w.pending.remove(&job);
                        started.insert(job, w.now);
                        running.push((w.now.plus(j.spec.time_limit.unwrap()), job));
                    }
                    Decision::Wait { job, reason, expected_start } => {
                        if let Some(t) = expected_start {
                            promised.entry(job).or_insert(t);
                        }
                        let j = w.jobs.get_mut(&job).unwrap();
                        j.reason = reason;
                        j.expected_start = expected_start;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            if w.pending.is_empty() || running.is_empty() {
                break;
            }
            // To the next end; everything ending then ends.
            let next = running.iter().map(|r| r.0).min().unwrap();
            w.now = next;
            for (_, id) in running.iter().filter(|r| r.0 == next) {
                let j = w.jobs.get_mut(id).unwrap();
                j.state = JobState::Succeeded;
                for p in &j.placements {
                    w.cluster.release(*id, p.node.as_str());
                }
            }
            running.retain(|r| r.0 != next);
        }
        prop_assert!(w.pending.is_empty(), "every job fits the cluster, so every job ran");
        for (job, at) in &promised {
            let s = started[job];
            prop_assert!(s <= *at, "job {} promised {} started {}", job, at, s);
        }
    }
}
