//! `allot sim --batch`: batch scheduling in time. A trace's pods arrive at
//! their creation times (sped up), each runs exactly its duration
//! (deletion − scheduled) and asks for a time limit of that duration × a
//! factor, as users overestimate; its tenant is its QoS class. The same
//! arrivals are scheduled four ways and compared on utilisation, wait and
//! bounded slowdown:
//!
//! - **fifo**: Slurm's `sched/builtin`: in priority-then-age order, start
//!   jobs until the first that does not fit; nothing behind it starts.
//! - **greedy**: the engine's pass with backfill off: every job that fits
//!   starts, in order (small jobs may pass a big one for ever).
//! - **backfill**: the engine's pass (`engine::replay`, the live
//!   `cycle::plan`) with reservations for the top jobs that cannot start.
//! - **fairshare+backfill**: the same, ordered by fair share between the
//!   tenants (decayed GPU-time, equal weights) before age.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{
    Event, Pod, arrivals, cluster_of, gpu_capacity_milli, mean, percentile, require_times, round2, sim_job,
};
use crate::domain::{
    Constraints, Job, JobId, JobSpec, Millis, ProjectName, QueueDef, Resources, TenantName, UnixMillis,
};
use crate::engine::replay::Replay;
use crate::placement::{NodeInventory, Placer, Policy, Profile, WorkloadMix};

/// The epoch the replay's clock starts at (any will do).
const EPOCH: u64 = 1_800_000_000_000;
/// Bounded slowdown's floor on run time (the usual τ = 10 s).
const TAU_S: f64 = 10.0;

#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub policy: Policy,
    pub seed: u64,
    /// Arrival times are divided by this (run times are not).
    pub speedup: u64,
    /// A job's time limit is its run time × this (≥ 1).
    pub limit_factor: f64,
    /// Top pending jobs given a reservation per pass.
    pub backfill_depth: usize,
    /// Fair share's half-life, in the replay's seconds.
    pub half_life_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    Fifo,
    Greedy,
    Backfill,
    FairShareBackfill,
}

impl Scheduler {
    pub const ALL: [Scheduler; 4] = [
        Scheduler::Fifo,
        Scheduler::Greedy,
        Scheduler::Backfill,
        Scheduler::FairShareBackfill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Fifo => "fifo",
            Scheduler::Greedy => "greedy",
            Scheduler::Backfill => "backfill",
            Scheduler::FairShareBackfill => "fairshare+backfill",
        }
    }
}

/// How one scheduler did.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRow {
    pub scheduler: &'static str,
    pub placed: usize,
    /// Still waiting when the last job ended.
    pub never_placed: usize,
    /// Time-weighted allocated GPU over capacity, first arrival to last.
    pub util_pct: f64,
    pub wait_mean_s: f64,
    pub wait_p95_s: u64,
    pub wait_max_s: u64,
    /// Mean of max(1, (wait + run) / max(run, 10 s)).
    pub bounded_slowdown_mean: f64,
    /// Mean wait of the jobs that ask for 4 GPUs or more (the ones a stream
    /// of small jobs can starve).
    pub big_wait_mean_s: f64,
    /// GPU-hours each tenant got, over all.
    pub tenant_gpu_hours: BTreeMap<String, f64>,
    /// When the last job ended, seconds after the first arrival.
    pub makespan_s: u64,
    pub passes: u64,
    pub wall_ms: u128,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    pub mode: &'static str,
    pub policy: String,
    pub seed: u64,
    pub speedup: u64,
    pub limit_factor: f64,
    pub backfill_depth: usize,
    pub nodes: usize,
    pub gpus: u64,
    pub pods: usize,
    pub rows: Vec<BatchRow>,
}

/// The pod as a job: its request, its QoS class as its tenant, a time
/// limit of its run time × the factor.
fn job_of(i: usize, p: &Pod, at_s: u64, factor: f64) -> Job {
    let tenant = p
        .qos
        .as_deref()
        .unwrap_or("default")
        .to_ascii_lowercase()
        .parse::<TenantName>()
        .unwrap_or_else(|_| "default".parse().expect("valid"));
    let limit = ((p.run_s() as f64 * factor).ceil() as u64).max(1);
    let spec = JobSpec {
        name: p.name.clone(),
        command: "true".into(),
        args: vec![],
        env: BTreeMap::new(),
        working_dir: None,
        resources: Resources {
            gpu: p.request.gpu.clone(),
            cpu: p.request.cpu,
            memory: p.request.memory,
        },
        constraints: Constraints {
            gpu_models: p.request.gpu_models.clone(),
            node_labels: BTreeMap::new(),
            spread: false,
            ..Constraints::default()
        },
        priority: 0,
        preemptible: false,
        time_limit: Some(Millis::from_secs(limit)),
        grace_period: Millis::ZERO,
        tenant,
        project: ProjectName::default_project(),
        tags: BTreeMap::new(),
        min_runtime: None,
        checkpoint_interval: None,
        node_lost_retries: 0,
        script: None,
        queue: None,
        dependency: None,
        array: None,
        output: None,
        error: None,
        qos: None,
    };
    let mut job = Job::submitted(spec, UnixMillis(EPOCH + at_s * 1000));
    job.id = sim_job(i as u64);
    job
}

/// The pod a simulator job id stands for (see `sim_job`).
fn pod_of(id: JobId) -> usize {
    (id.as_uuid().as_u128() - 1) as usize
}

fn halve(v: f64, dt_s: u64, half_life_s: u64) -> f64 {
    if half_life_s == 0 {
        return v;
    }
    v * (-(dt_s as f64) / half_life_s as f64).exp2()
}

/// Replays the trace under one scheduler.
pub fn run_one(nodes: &[NodeInventory], pods: &[Pod], cfg: &BatchConfig, sched: Scheduler) -> BatchRow {
    let started = Instant::now();
    let speedup = cfg.speedup.max(1);
    let requests: Vec<_> = pods.iter().map(|p| p.request.clone()).collect();
    let mix = Arc::new(WorkloadMix::from_requests(requests.iter(), 95));
    let mut cluster = cluster_of(nodes);
    let mut placer = Placer::new(Profile {
        policy: cfg.policy,
        seed: cfg.seed,
        mix,
    });
    let depth = match sched {
        Scheduler::Fifo | Scheduler::Greedy => 0,
        _ => cfg.backfill_depth,
    };
    let mut replay = Replay::new(vec![QueueDef::builtin()], depth);
    let capacity = gpu_capacity_milli(nodes);
    let mut events = arrivals(pods, speedup);
    let arrived_at = |i: usize| pods[i].creation.unwrap_or(0) / speedup;
    let first = pods.iter().filter_map(|p| p.creation).min().unwrap_or(0) / speedup;
    let last_arrival = pods.iter().filter_map(|p| p.creation).max().unwrap_or(0) / speedup;
    let mut waits: Vec<u64> = Vec::new();
    let mut slowdowns: Vec<f64> = Vec::new();
    let mut big_waits: Vec<f64> = Vec::new();
    let mut tenant_of: HashMap<usize, TenantName> = HashMap::new();
    let mut allocated_by: HashMap<TenantName, u64> = HashMap::new();
    let mut usage: HashMap<TenantName, f64> = HashMap::new();
    let mut got: BTreeMap<String, f64> = BTreeMap::new();
    let (mut allocated, mut area, mut last_t) = (0u64, 0f64, first);
    let mut passes = 0u64;
    while let Some(head) = events.peek() {
        let now = head.time.0;
        // Time passes: allocation integrated over the arrival window,
        // usage decayed and grown by what each tenant holds.
        let dt = now.saturating_sub(last_t);
        if last_t < last_arrival {
            area += allocated as f64 * (now.min(last_arrival) - last_t) as f64;
        }
        for (t, milli) in &allocated_by {
            let u = usage.entry(t.clone()).or_default();
            *u = halve(*u, dt, cfg.half_life_s) + *milli as f64 / 1000.0 * dt as f64 / 3600.0;
            *got.entry(t.to_string()).or_default() += *milli as f64 / 1000.0 * dt as f64 / 3600.0;
        }
        last_t = now;
        while events.peek().is_some_and(|e| e.time.0 == now) {
            let ev = events.pop().expect("peeked");
            let i = ev.pod;
            if ev.arrival {
                let job = job_of(i, &pods[i], now, cfg.limit_factor);
                tenant_of.insert(i, job.spec.tenant.clone());
                replay.submit(job);
            } else if replay.end(sim_job(i as u64), &mut cluster).is_some() {
                allocated -= pods[i].gpu_milli;
                if let Some(t) = tenant_of.get(&i) {
                    *allocated_by.entry(t.clone()).or_default() -= pods[i].gpu_milli;
                }
            }
        }
        let at = UnixMillis(EPOCH + now * 1000);
        passes += 1;
        let placed: Vec<usize> = match sched {
            Scheduler::Fifo => {
                let mut placed = Vec::new();
                for id in replay.pending() {
                    let i = pod_of(id);
                    match placer.place(&cluster, &pods[i].request) {
                        Ok(p) => {
                            cluster.allocate(id, &p).expect("a fresh plan applies");
                            replay.started(id, vec![p], at);
                            placed.push(i);
                        }
                        Err(_) => break,
                    }
                }
                placed
            }
            _ => {
                if sched == Scheduler::FairShareBackfill {
                    let decayed = usage
                        .iter()
                        .map(|(t, u)| ((t.clone(), ProjectName::default_project()), *u))
                        .collect();
                    replay.usage(decayed, at);
                }
                replay
                    .pass(&mut cluster, &mut placer, at)
                    .into_iter()
                    .map(pod_of)
                    .collect()
            }
        };
        for i in placed {
            let pod = &pods[i];
            allocated += pod.gpu_milli;
            if let Some(t) = tenant_of.get(&i) {
                *allocated_by.entry(t.clone()).or_default() += pod.gpu_milli;
            }
            let wait = now.saturating_sub(arrived_at(i));
            let run = pod.run_s();
            waits.push(wait);
            slowdowns.push((((wait + run) as f64) / (run as f64).max(TAU_S)).max(1.0));
            if pod.gpu_milli >= 4000 {
                big_waits.push(wait as f64);
            }
            events.push(Event {
                time: std::cmp::Reverse(now + run),
                arrival: false,
                pod: i,
            });
        }
    }
    let never_placed = replay.pending().len();
    let span = last_arrival.saturating_sub(first).max(1);
    let mut sorted = waits.clone();
    sorted.sort_unstable();
    let pct = |p: f64| percentile(&sorted, p);
    BatchRow {
        scheduler: sched.name(),
        placed: waits.len(),
        never_placed,
        util_pct: round2(100.0 * area / (span as f64 * capacity as f64)),
        wait_mean_s: round2(mean(&waits.iter().map(|&w| w as f64).collect::<Vec<_>>())),
        wait_p95_s: pct(0.95),
        wait_max_s: sorted.last().copied().unwrap_or(0),
        bounded_slowdown_mean: round2(mean(&slowdowns)),
        big_wait_mean_s: round2(mean(&big_waits)),
        tenant_gpu_hours: got.into_iter().map(|(t, h)| (t, round2(h))).collect(),
        makespan_s: last_t.saturating_sub(first),
        passes,
        wall_ms: started.elapsed().as_millis(),
    }
}

/// Replays the trace under every scheduler, one after another.
pub fn run_batch(nodes: &[NodeInventory], pods: &[Pod], cfg: &BatchConfig) -> anyhow::Result<BatchReport> {
    require_times(pods, "batch")?;
    if !(cfg.limit_factor >= 1.0 && cfg.limit_factor <= 100.0) {
        anyhow::bail!("the time-limit factor must be in [1, 100]");
    }
    let rows = Scheduler::ALL
        .iter()
        .map(|s| run_one(nodes, pods, cfg, *s))
        .collect();
    Ok(BatchReport {
        mode: "batch",
        policy: cfg.policy.to_string(),
        seed: cfg.seed,
        speedup: cfg.speedup.max(1),
        limit_factor: cfg.limit_factor,
        backfill_depth: cfg.backfill_depth,
        nodes: nodes.len(),
        gpus: gpu_capacity_milli(nodes) / 1000,
        pods: pods.len(),
        rows,
    })
}
