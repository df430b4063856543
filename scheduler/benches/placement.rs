//! One placement decision on the 1,213-node Alibaba openb cluster, per
//! policy, at 50 % and 90 % GPU allocation; and a preemption search on a
//! full cluster.
//!
//! ```sh
//! cargo bench -p allot-scheduler --bench placement
//! ```
//!
//! A decision is `Placer::place` for the next pod of the seed-42 arrival
//! sequence of `openb_pod_list_default.csv`. Between decisions (untimed) the
//! pod is allocated and released again, so allocation stays where it was and
//! the placer sees the churn of a live cluster: its memo is warm, and the
//! node that changed must be scored afresh.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_scheduler::domain::{GpuRequest, JobId};
use allot_scheduler::placement::preempt::{self, Candidate};
use allot_scheduler::placement::{Cluster, Placer, Policy, Profile, Request, WorkloadMix};
use allot_scheduler::sim::{Pod, Rng, arrival_sequence, read_nodes, read_pods};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/openb")
}

fn job(k: u64) -> JobId {
    JobId::from_uuid(uuid::Uuid::from_u128(k as u128 + 1))
}

struct Setup {
    cluster: Cluster,
    placer: Placer,
    next: Vec<Pod>,
}

/// The cluster after placing arrivals until `pct` % of GPUs are allocated.
fn setup(policy: Policy, pct: u64) -> Setup {
    let nodes = read_nodes(&data().join("openb_node_list_gpu_node.csv")).expect("node list");
    let pods = read_pods(&data().join("openb_pod_list_default.csv")).expect("pod list");
    let requests: Vec<Request> = pods.iter().map(|p| p.request.clone()).collect();
    let mix = Arc::new(WorkloadMix::from_requests(requests.iter(), 95));
    let capacity: u64 = nodes.iter().map(|n| n.gpus.len() as u64 * 1000).sum();
    let seq: Vec<Pod> = arrival_sequence(&pods, capacity, 1.3, &mut Rng::new(42))
        .into_iter()
        .cloned()
        .collect();
    let mut cluster = Cluster::new();
    for n in &nodes {
        cluster.upsert_node(n.clone());
    }
    let mut placer = Placer::new(Profile {
        policy,
        seed: 42,
        mix,
    });
    let mut allocated = 0;
    let mut k = 0;
    while allocated * 100 < capacity * pct && k < seq.len() {
        if let Ok(p) = placer.place(&cluster, &seq[k].request) {
            cluster.allocate(job(k as u64), &p).unwrap();
            allocated += seq[k].gpu_milli;
        }
        k += 1;
    }
    Setup {
        cluster,
        placer,
        next: seq[k..].iter().take(2000).cloned().collect(),
    }
}

fn decisions(c: &mut Criterion) {
    let mut g = c.benchmark_group("placement_decision");
    g.measurement_time(Duration::from_secs(4));
    for pct in [50, 90] {
        for policy in Policy::ALL {
            let mut s = setup(policy, pct);
            let mut k = 0usize;
            g.bench_with_input(
                BenchmarkId::new(policy.name(), format!("{pct}%")),
                &pct,
                |b, _| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let pod = &s.next[k % s.next.len()];
                            k += 1;
                            let t0 = Instant::now();
                            let r = s.placer.place(&s.cluster, black_box(&pod.request));
                            total += t0.elapsed();
                            if let Ok(p) = r {
                                s.cluster.allocate(job(1_000_000), &p).unwrap();
                                s.cluster.release(job(1_000_000), p.node.as_str());
                            }
                        }
                        total
                    })
                },
            );
        }
    }
    g.finish();
}

fn preemption(c: &mut Criterion) {
    // Fill the cluster, every job preemptible at priority 0..9 with a cost.
    let s = setup(Policy::Allot, 130);
    let mut rng = Rng::new(7);
    let candidates: Vec<Candidate> = s
        .cluster
        .nodes()
        .iter()
        .flat_map(|n| n.jobs.keys().copied().collect::<Vec<_>>())
        .map(|j| Candidate {
            job: j,
            priority: rng.below(10) as i32,
            preemptible: rng.below(4) != 0,
            protected: rng.below(10) == 0,
            cost: rng.below(3_600_000) * 1_000_000,
        })
        .collect();
    let profile = s.placer.profile().clone();
    let mut g = c.benchmark_group("preemption_search");
    for (name, gpus) in [("1_gpu", 1u32), ("8_gpus", 8)] {
        let req = Request::resources(&allot_scheduler::domain::Resources {
            gpu: GpuRequest::Whole(std::num::NonZeroU32::new(gpus).unwrap()),
            cpu: allot_scheduler::domain::MilliCpu(8000),
            memory: allot_scheduler::domain::MiB(32 * 1024),
        });
        g.bench_function(name, |b| {
            b.iter(|| preempt::plan(&s.cluster, black_box(&req), 100, &candidates, &profile, |_| false))
        });
    }
    g.finish();
}

criterion_group!(benches, decisions, preemption);
criterion_main!(benches);
