//! `allot sim`: the placement core on a real production trace.
//!
//! Two modes, both driving the same [`Placer`] and [`Cluster`] the live
//! engine uses:
//!
//! - **arrivals** reproduces the method of the FGD paper (Weng et al., ATC
//!   '23) on the Alibaba openb trace: pods are shuffled with a seed, topped up
//!   by sampling with replacement until the requested GPUs reach 130 % of the
//!   cluster's, then placed one after another with no departures and no
//!   preemption (a pod that fits nowhere is dropped). After every arrival the
//!   allocated share of all GPUs is recorded against the arrived demand; the
//!   figure "at 100 %" is the mean over the arrivals whose demand rounds to
//!   100 % of capacity. The fragmentation rate is the paper's: expected free
//!   GPU the typical workload cannot use, over all free GPU.
//! - **timeline** replays creation and deletion times: a pod that does not
//!   fit waits in the queue, and the report gives its queueing delay.
//! - **batch** ([`batch`]) replays them through the engine's scheduling
//!   pass with time limits, comparing FIFO, backfill and fair share.

pub mod batch;
mod rng;
pub mod trace;

use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use uuid::Uuid;

pub use self::rng::Rng;
pub use self::trace::{Pod, read_nodes, read_pods};
use crate::domain::JobId;
use crate::placement::frag::FragState;
use crate::placement::{Cluster, NodeInventory, Placer, Policy, Profile, WorkloadMix};

/// How a simulation runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub policy: Policy,
    pub seeds: Vec<u64>,
    /// Arrived GPU demand to reach, as a multiple of capacity (1.3).
    pub tune_ratio: f64,
    /// Coverage of the typical workload (95 %).
    pub coverage_pct: u32,
}

/// One seed's run of the arrival experiment.
#[derive(Debug, Clone, Serialize)]
pub struct SeedResult {
    pub seed: u64,
    pub alloc_pct_at_100: f64,
    pub alloc_pct_at_130: f64,
    pub frag_pct_at_100: f64,
    pub pods: usize,
    pub failed: usize,
    pub ms: u128,
}

/// The arrival experiment over all seeds.
#[derive(Debug, Clone, Serialize)]
pub struct ArrivalReport {
    pub mode: &'static str,
    pub policy: String,
    pub seeds: Vec<u64>,
    pub nodes: usize,
    pub gpus: u64,
    pub pods: usize,
    /// Means over the seeds.
    pub alloc_pct_at_100: f64,
    pub alloc_pct_at_130: f64,
    pub frag_pct_at_100: f64,
    /// Sample standard deviation over the seeds.
    pub alloc_130_sd: f64,
    pub per_seed: Vec<SeedResult>,
    pub wall_ms: u128,
}

fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The `p` percentile (0 to 1) of sorted values, by nearest rank; 0 for none.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        0
    } else {
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }
}

fn sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Per-percent buckets of a curve: the mean of the values whose arrived
/// demand rounds to that percent.
#[derive(Default)]
struct Buckets {
    sum: Vec<f64>,
    n: Vec<u32>,
}

impl Buckets {
    fn new(max: usize) -> Self {
        Buckets {
            sum: vec![0.0; max + 2],
            n: vec![0; max + 2],
        }
    }

    fn add(&mut self, pct: usize, v: f64) {
        if pct < self.sum.len() {
            self.sum[pct] += v;
            self.n[pct] += 1;
        }
    }

    /// The mean at `x`, falling back to `x ± 1` when no event rounds to `x`
    /// (as the paper's scripts do), then to the nearest percent below with
    /// any event (only on clusters small enough that arrivals jump by more).
    fn at(&self, x: usize) -> f64 {
        if self.n.get(x).copied().unwrap_or(0) > 0 {
            return round2(self.sum[x] / self.n[x] as f64);
        }
        let (mut s, mut n) = (0.0, 0u32);
        for k in x.saturating_sub(1)..=(x + 1).min(self.sum.len() - 1) {
            s += self.sum[k];
            n += self.n[k];
        }
        if n > 0 {
            return round2(s / n as f64);
        }
        match (0..x.min(self.sum.len())).rev().find(|&k| self.n[k] > 0) {
            Some(k) => round2(self.sum[k] / self.n[k] as f64),
            None => 0.0,
        }
    }
}

fn cluster_of(nodes: &[NodeInventory]) -> Cluster {
    let mut c = Cluster::new();
    for n in nodes {
        c.upsert_node(n.clone());
    }
    c
}

fn gpu_capacity_milli(nodes: &[NodeInventory]) -> u64 {
    nodes.iter().map(|n| n.gpus.len() as u64 * 1000).sum()
}

/// The arrival sequence for one seed: the pods shuffled, then topped up (or
/// thinned) to `ratio` × capacity of requested GPU.
pub fn arrival_sequence<'a>(pods: &'a [Pod], capacity_milli: u64, ratio: f64, rng: &mut Rng) -> Vec<&'a Pod> {
    let mut seq: Vec<&Pod> = pods.iter().collect();
    rng.shuffle(&mut seq);
    let target = ratio * capacity_milli as f64;
    let mut total: u64 = seq.iter().map(|p| p.gpu_milli).sum();
    if (total as f64) < target && !pods.is_empty() {
        loop {
            let p = &pods[rng.below(pods.len() as u64) as usize];
            // As in the paper's simulator: the check adds the pod's share of
            // one GPU, so a multi-GPU draw may overshoot a little.
            let per_gpu = p.gpu_milli / p.request.gpu_micro().1.max(1) as u64;
            if (total + per_gpu) as f64 > target {
                break;
            }
            total += p.gpu_milli;
            seq.push(p);
        }
    } else {
        while total as f64 > target && !seq.is_empty() {
            let i = rng.below(seq.len() as u64) as usize;
            total -= seq[i].gpu_milli;
            seq.remove(i);
        }
    }
    seq
}

/// A job id for the simulator: cheap and deterministic.
fn sim_job(k: u64) -> JobId {
    JobId::from_uuid(Uuid::from_u128(k as u128 + 1))
}

fn run_seed(
    nodes: &[NodeInventory],
    pods: &[Pod],
    mix: &Arc<WorkloadMix>,
    cfg: &SimConfig,
    seed: u64,
) -> SeedResult {
    let started = Instant::now();
    let capacity = gpu_capacity_milli(nodes);
    let mut rng = Rng::new(seed);
    let seq = arrival_sequence(pods, capacity, cfg.tune_ratio, &mut rng);
    let mut cluster = cluster_of(nodes);
    let mut placer = Placer::new(Profile {
        policy: cfg.policy,
        seed,
        mix: mix.clone(),
    });
    // Fragmentation, kept per node and summed incrementally.
    let mut frag: Vec<f64> = cluster
        .nodes()
        .iter()
        .map(|n| FragState::of(n).frag(mix, false))
        .collect();
    let mut frag_sum: f64 = frag.iter().sum();
    let mut idle: u64 = cluster.nodes().iter().map(|n| FragState::of(n).idle()).sum();
    let max_pct = (cfg.tune_ratio * 100.0).ceil() as usize + 2;
    let mut alloc_curve = Buckets::new(max_pct);
    let mut frag_curve = Buckets::new(max_pct);
    let (mut arrived, mut allocated, mut failed) = (0u64, 0u64, 0usize);
    for (k, pod) in seq.iter().enumerate() {
        arrived += pod.gpu_milli;
        match placer.place(&cluster, &pod.request) {
            Ok(p) => {
                let i = cluster.ordinal(p.node.as_str()).expect("placed on a known node");
                let before = FragState::of(&cluster.nodes()[i]).idle();
                cluster
                    .allocate(sim_job(k as u64), &p)
                    .expect("a fresh plan applies");
                allocated += pod.gpu_milli;
                let s = FragState::of(&cluster.nodes()[i]);
                let f = s.frag(mix, false);
                frag_sum += f - frag[i];
                frag[i] = f;
                idle = idle - before + s.idle();
            }
            Err(_) => failed += 1,
        }
        let pct = round_half_even(arrived as f64 * 100.0 / capacity as f64) as usize;
        alloc_curve.add(pct, round2(allocated as f64 * 100.0 / capacity as f64));
        if idle > 0 {
            frag_curve.add(pct, 100.0 * frag_sum / idle as f64);
        }
    }
    SeedResult {
        seed,
        alloc_pct_at_100: alloc_curve.at(100),
        alloc_pct_at_130: alloc_curve.at((cfg.tune_ratio * 100.0).round() as usize),
        frag_pct_at_100: frag_curve.at(100),
        pods: seq.len(),
        failed,
        ms: started.elapsed().as_millis(),
    }
}

/// Runs the arrival experiment for every seed (in parallel, one seed per core).
pub fn run_arrivals(nodes: &[NodeInventory], pods: &[Pod], cfg: &SimConfig) -> ArrivalReport {
    let started = Instant::now();
    let requests: Vec<_> = pods.iter().map(|p| p.request.clone()).collect();
    let mix = Arc::new(WorkloadMix::from_requests(requests.iter(), cfg.coverage_pct));
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers.min(cfg.seeds.len()) {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&seed) = cfg.seeds.get(k) else { break };
                    let r = run_seed(nodes, pods, &mix, cfg, seed);
                    results.lock().expect("no panics while held").push(r);
                }
            });
        }
    });
    let mut per_seed = results.into_inner().expect("no panics while held");
    per_seed.sort_by_key(|r| r.seed);
    let a100: Vec<f64> = per_seed.iter().map(|r| r.alloc_pct_at_100).collect();
    let a130: Vec<f64> = per_seed.iter().map(|r| r.alloc_pct_at_130).collect();
    let f100: Vec<f64> = per_seed.iter().map(|r| r.frag_pct_at_100).collect();
    ArrivalReport {
        mode: "arrivals",
        policy: cfg.policy.to_string(),
        seeds: cfg.seeds.clone(),
        nodes: nodes.len(),
        gpus: gpu_capacity_milli(nodes) / 1000,
        pods: pods.len(),
        alloc_pct_at_100: round2(mean(&a100)),
        alloc_pct_at_130: round2(mean(&a130)),
        frag_pct_at_100: round2(mean(&f100)),
        alloc_130_sd: round2(sd(&a130)),
        per_seed,
        wall_ms: started.elapsed().as_millis(),
    }
}

/// The timeline replay.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineReport {
    pub mode: &'static str,
    pub policy: String,
    pub seed: u64,
    pub speedup: u64,
    pub nodes: usize,
    pub gpus: u64,
    pub pods: usize,
    pub placed: usize,
    /// Still waiting when the trace ended.
    pub never_placed: usize,
    /// Placed without waiting.
    pub placed_at_once: usize,
    pub queue_delay_mean_s: f64,
    pub queue_delay_p50_s: u64,
    pub queue_delay_p99_s: u64,
    pub queue_delay_max_s: u64,
    /// Time-weighted mean of allocated GPU over capacity, from the first
    /// arrival to the last.
    pub gpu_alloc_pct_mean: f64,
    pub wall_ms: u128,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    // Min-heap by time; departures before arrivals at the same second.
    time: std::cmp::Reverse<u64>,
    arrival: bool,
    pod: usize,
}

/// Every pod's arrival, at its creation time divided by `speedup`.
fn arrivals(pods: &[Pod], speedup: u64) -> BinaryHeap<Event> {
    pods.iter()
        .enumerate()
        .map(|(i, p)| Event {
            time: std::cmp::Reverse(p.creation.unwrap_or(0) / speedup),
            arrival: true,
            pod: i,
        })
        .collect()
}

/// A replay in time needs every pod's creation and deletion times.
fn require_times(pods: &[Pod], mode: &str) -> anyhow::Result<()> {
    if pods.iter().any(|p| p.creation.is_none() || p.deletion.is_none()) {
        anyhow::bail!(
            "the {mode} mode needs creation_time and deletion_time for every pod; this pod list has none"
        );
    }
    Ok(())
}

/// Replays creation and deletion times; pods that do not fit wait.
/// `speedup` divides the arrival times (not the run times): the openb pod
/// lists are samples that fill 1 % of the cluster at their peak, so a
/// speed-up of about 100 makes the replay contend for GPUs.
pub fn run_timeline(
    nodes: &[NodeInventory],
    pods: &[Pod],
    policy: Policy,
    seed: u64,
    speedup: u64,
) -> anyhow::Result<TimelineReport> {
    let speedup = speedup.max(1);
    let started = Instant::now();
    require_times(pods, "timeline")?;
    let requests: Vec<_> = pods.iter().map(|p| p.request.clone()).collect();
    let mix = Arc::new(WorkloadMix::from_requests(requests.iter(), 95));
    let mut cluster = cluster_of(nodes);
    let mut placer = Placer::new(Profile { policy, seed, mix });
    let capacity = gpu_capacity_milli(nodes);
    let mut events = arrivals(pods, speedup);
    let mut queue: Vec<usize> = Vec::new();
    let mut placement: Vec<Option<crate::domain::Placement>> = vec![None; pods.len()];
    let mut delays: Vec<u64> = Vec::new();
    let (mut allocated, mut area, mut last_t, mut first_t) = (0u64, 0f64, None::<u64>, None::<u64>);
    let last_arrival = pods.iter().filter_map(|p| p.creation).max().unwrap_or(0) / speedup;
    while let Some(ev) = events.pop() {
        let now = ev.time.0;
        // Allocation is averaged over the arrival window only: after the
        // last arrival the cluster merely drains.
        if let Some(t) = last_t
            && t < last_arrival
        {
            area += allocated as f64 * (now.min(last_arrival) - t) as f64;
        }
        first_t.get_or_insert(now);
        last_t = Some(now);
        if ev.arrival {
            queue.push(ev.pod);
        } else if let Some(p) = placement[ev.pod].take() {
            cluster.release(sim_job(ev.pod as u64), p.node.as_str());
            allocated -= pods[ev.pod].gpu_milli;
        }
        // One pass over the queue, oldest first. Within a pass capacity only
        // shrinks, so a request that failed once is not tried again.
        let mut failed = HashSet::new();
        let mut still = Vec::with_capacity(queue.len());
        for &i in &queue {
            let pod = &pods[i];
            if failed.contains(&pod.request) {
                still.push(i);
                continue;
            }
            match placer.place(&cluster, &pod.request) {
                Ok(p) => {
                    cluster
                        .allocate(sim_job(i as u64), &p)
                        .expect("a fresh plan applies");
                    allocated += pod.gpu_milli;
                    placement[i] = Some(p);
                    let created = pod.creation.unwrap_or(0);
                    delays.push(now.saturating_sub(created / speedup));
                    events.push(Event {
                        time: std::cmp::Reverse(now + pod.run_s()),
                        arrival: false,
                        pod: i,
                    });
                }
                Err(_) => {
                    failed.insert(pod.request.clone());
                    still.push(i);
                }
            }
        }
        queue = still;
    }
    let span = last_arrival.saturating_sub(first_t.unwrap_or(0)).max(1);
    let mut sorted = delays.clone();
    sorted.sort_unstable();
    let pct = |p: f64| percentile(&sorted, p);
    Ok(TimelineReport {
        mode: "timeline",
        policy: policy.to_string(),
        seed,
        speedup,
        nodes: nodes.len(),
        gpus: capacity / 1000,
        pods: pods.len(),
        placed: delays.len(),
        never_placed: queue.len(),
        placed_at_once: delays.iter().filter(|&&d| d == 0).count(),
        queue_delay_mean_s: round2(mean(&delays.iter().map(|&d| d as f64).collect::<Vec<_>>())),
        queue_delay_p50_s: pct(0.5),
        queue_delay_p99_s: pct(0.99),
        queue_delay_max_s: sorted.last().copied().unwrap_or(0),
        gpu_alloc_pct_mean: round2(100.0 * area / (span as f64 * capacity as f64)),
        wall_ms: started.elapsed().as_millis(),
    })
}

/// A seeded sample of about `fraction` of the nodes (at least one).
pub fn sample_nodes(nodes: Vec<NodeInventory>, fraction: f64, seed: u64) -> Vec<NodeInventory> {
    if fraction >= 1.0 {
        return nodes;
    }
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut picked: Vec<NodeInventory> = Vec::new();
    let mut rest = Vec::new();
    for n in nodes {
        if (rng.below(1_000_000) as f64) < fraction * 1_000_000.0 {
            picked.push(n);
        } else {
            rest.push(n);
        }
    }
    if picked.is_empty() {
        picked.extend(rest.into_iter().take(1));
    }
    picked
}

/// Parses `42..51` (inclusive), `42,43,50` or `42`.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>, String> {
    let bad = || format!("invalid seeds {s:?}: use e.g. 42..51, 42,43 or 42");
    if let Some((a, b)) = s.split_once("..") {
        let a: u64 = a.trim().parse().map_err(|_| bad())?;
        let b: u64 = b.trim().trim_start_matches('=').parse().map_err(|_| bad())?;
        if b < a || b - a > 10_000 {
            return Err(bad());
        }
        return Ok((a..=b).collect());
    }
    s.split(',')
        .map(|x| x.trim().parse::<u64>().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| if v.is_empty() { Err(bad()) } else { Ok(v) })
}

#[cfg(test)]
mod tests;
