//! One full scheduling pass (the engine's `cycle::plan`: queue order with
//! fair share, gates, placement, backfill reservations) on the 1,213-node
//! openb cluster filled to 90 % by running jobs with time limits, with
//! 10,000 and 100,000 pending jobs of 50 tenants in 10 queues.
//!
//! ```sh
//! cargo bench -p allot-scheduler --bench pass
//! ALLOT_PASS_SIZES=1000000 cargo bench -p allot-scheduler --bench pass
//! ```
//!
//! Each iteration passes over a fresh copy of the cluster (the copy is not
//! timed), so every pass sees the same state: a few pending jobs fit, the
//! rest are tried and wait, the top eight get reservations.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use allot_scheduler::domain::{
    Constraints, Job, JobId, JobSpec, JobState, Millis, ProjectName, QueueDef, QueueSource, Resources,
    UnixMillis,
};
use allot_scheduler::engine::bench::PassBench;
use allot_scheduler::placement::{Cluster, Placer, Policy, Profile, Request, WorkloadMix};
use allot_scheduler::sim::{Rng, arrival_sequence, read_nodes, read_pods};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/openb")
}

const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

fn spec(r: &Request, k: usize) -> JobSpec {
    JobSpec {
        name: format!("j{}", k % 97),
        command: "train".into(),
        args: vec![],
        env: BTreeMap::new(),
        working_dir: None,
        resources: Resources {
            gpu: r.gpu.clone(),
            cpu: r.cpu,
            memory: r.memory,
        },
        constraints: Constraints {
            gpu_models: r.gpu_models.clone(),
            node_labels: BTreeMap::new(),
            spread: false,
            ..Constraints::default()
        },
        priority: (k % 3) as i32,
        preemptible: false,
        time_limit: Some(Millis::from_secs(3600 * (1 + (k as u64 * 7919) % 24))),
        grace_period: Millis::from_secs(30),
        tenant: format!("t{}", k % 50).parse().unwrap(),
        project: ProjectName::default_project(),
        tags: BTreeMap::new(),
        min_runtime: None,
        checkpoint_interval: None,
        node_lost_retries: 2,
        script: None,
        queue: Some(format!("q{}", k % 10).parse().unwrap()),
        dependency: None,
        array: None,
        output: None,
        error: None,
        qos: None,
    }
}

fn setup(pending: usize) -> (Cluster, PassBench) {
    let nodes = read_nodes(&data().join("openb_node_list_gpu_node.csv")).expect("node list");
    let pods = read_pods(&data().join("openb_pod_list_default.csv")).expect("pod list");
    let requests: Vec<Request> = pods.iter().map(|p| p.request.clone()).collect();
    let mix = Arc::new(WorkloadMix::from_requests(requests.iter(), 95));
    let capacity: u64 = nodes.iter().map(|n| n.gpus.len() as u64 * 1000).sum();
    let seq = arrival_sequence(&pods, capacity, 1.3, &mut Rng::new(42));
    let mut cluster = Cluster::new();
    for n in &nodes {
        cluster.upsert_node(n.clone());
    }
    let profile = Profile {
        policy: Policy::Allot,
        seed: 42,
        mix,
    };
    let mut placer = Placer::new(profile.clone());
    let mut jobs = Vec::new();
    let mut allocated = 0;
    let mut k = 0;
    // Running work to 90 %, each job started within the last day.
    while allocated * 100 < capacity * 90 && k < seq.len() {
        if let Ok(p) = placer.place(&cluster, &seq[k].request) {
            let mut j = Job::submitted(spec(&seq[k].request, k), NOW);
            j.id = JobId::from_uuid(uuid::Uuid::from_u128(k as u128 + 1));
            cluster.allocate(j.id, &p).unwrap();
            j.state = JobState::Running;
            j.started_at = Some(UnixMillis(NOW.0 - (k as u64 * 104_729) % 86_400_000));
            j.placements = vec![p];
            jobs.push(j);
            allocated += seq[k].gpu_milli;
        }
        k += 1;
    }
    for i in 0..pending {
        let pod = &seq[(k + i) % seq.len()];
        let mut j = Job::submitted(
            spec(&pod.request, k + i),
            UnixMillis(NOW.0 - (pending - i) as u64),
        );
        j.id = JobId::from_uuid(uuid::Uuid::from_u128((1u128 << 64) + i as u128));
        jobs.push(j);
    }
    let queues = (0..10)
        .map(|q| QueueDef {
            name: format!("q{q}").parse().unwrap(),
            priority_tier: q % 2,
            default: q == 0,
            source: QueueSource::Api,
            ..QueueDef::builtin()
        })
        .collect();
    (cluster, PassBench::new(jobs, queues, profile, NOW, 8))
}

fn pass(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduling_pass");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    // `ALLOT_PASS_SIZES=1000000` for the 1M measurement (slow to set up).
    let sizes: Vec<usize> = std::env::var("ALLOT_PASS_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    for pending in sizes {
        let (cluster, mut bench) = setup(pending);
        assert_eq!(bench.pending(), pending);
        g.bench_with_input(BenchmarkId::new("openb-90%", pending), &pending, |b, _| {
            b.iter_batched(
                || cluster.clone(),
                |mut cl| bench.pass(&mut cl),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, pass);
criterion_main!(benches);
