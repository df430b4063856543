//! The ledger on real sled files: lease transitions with durability, and
//! usage reports over a million closed leases.
//!
//! ```sh
//! cargo bench -p allot-scheduler --bench ledger
//! ALLOT_BENCH_LEASES=100000 cargo bench -p allot-scheduler --bench ledger   # a quicker run
//! ```
//!
//! Transitions: a batch of jobs each goes reserved → active → closed, one
//! `put_job` transaction per transition (the job and its lease, plus the
//! hour index and the roll-up mark when the lease closes), then one
//! `roll_up` and one `flush` per batch — the engine's turn: nothing is
//! acknowledged before that flush.
//!
//! Usage: a month of closed leases (a million by default) spread over 20
//! tenants × 5 projects and 500 nodes of 4 GPU models (one model per node),
//! with a `team` tag (a project's, nine times in ten), each 5 minutes to 4
//! hours long; reports as `allot usage` asks for them.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::num::NonZeroU32;

use allot_scheduler::accounting::HOUR_MS;
use allot_scheduler::accounting::usage::{Dimension, UsageQuery};
use allot_scheduler::domain::money::{Currency, LeaseRate, Rate};
use allot_scheduler::domain::{
    Constraints, DeviceGrant, EndReason, GpuRequest, Job, JobId, JobSpec, JobState, Lease, LeaseId,
    LeaseState, MiB, MilliCpu, Millis, Resources, Share, UnixMillis,
};
use allot_scheduler::ledger::Ledger;
use allot_scheduler::sim::Rng;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// 2026-11-01T00:00:00Z.
const MONTH: u64 = 1_793_491_200_000;

fn job(tenant: usize, project: usize) -> Job {
    Job {
        id: JobId::new_v7(),
        spec: JobSpec {
            name: "bench".into(),
            command: "true".into(),
            args: vec![],
            env: BTreeMap::new(),
            working_dir: None,
            resources: Resources {
                gpu: GpuRequest::Whole(NonZeroU32::new(1).unwrap()),
                cpu: MilliCpu(1000),
                memory: MiB(1024),
            },
            constraints: Constraints::default(),
            priority: 0,
            preemptible: false,
            time_limit: None,
            grace_period: Millis::from_secs(30),
            tenant: format!("tenant-{tenant}").parse().unwrap(),
            project: format!("project-{project}").parse().unwrap(),
            tags: BTreeMap::new(),
            min_runtime: None,
            checkpoint_interval: None,
            node_lost_retries: 2,
            script: None,
            queue: None,
            dependency: None,
            array: None,
            output: None,
            error: None,
            qos: None,
        },
        state: JobState::Starting,
        reason: String::new(),
        submitted_at: UnixMillis(MONTH),
        started_at: None,
        ended_at: None,
        exit_code: None,
        signal: None,
        placements: vec![],
        parts_started: vec![],
        parts_exited: vec![],
        lease_ids: vec![],
        attempt: 1,
        cancel_requested: false,
        cancel_forced: false,
        preempted_by: None,
        node_lost_requeues: 0,
        hold: None,
        requeue_requested: false,
        expected_start: None,
        array: None,
        array_task: None,
    }
}

const MODELS: [&str; 4] = ["H100-80GB", "A100-80GB", "L40S", "V100M32"];

/// A lease of the job on a random node; a node has one GPU model, and a
/// project's jobs carry its team's tag (mostly) — as on a real cluster.
fn lease(j: &Job, rng: &mut Rng, at: u64) -> Lease {
    let node = rng.below(500);
    let model = MODELS[(node % 4) as usize];
    let mut tags = BTreeMap::new();
    let index = |name: &str| -> u64 { name.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0) };
    let team = if rng.below(10) == 0 {
        rng.below(8)
    } else {
        (index(j.spec.tenant.as_str()) * 5 + index(j.spec.project.as_str())) % 8
    };
    tags.insert("team".to_string(), format!("team-{team}"));
    Lease {
        id: LeaseId::new_v7(),
        job_id: j.id,
        attempt: 1,
        tenant: j.spec.tenant.clone(),
        project: j.spec.project.clone(),
        node: format!("node-{node}").parse().unwrap(),
        device: DeviceGrant {
            gpu_uuid: format!("GPU-{node}-{}", rng.below(8)),
            device_uuid: String::new(),
            gpu_index: 0,
            gpu_model: model.into(),
            mig_profile: None,
            share: Share::ONE,
            gpu_memory: MiB(81_920),
        },
        state: LeaseState::Reserved,
        reserved_at: UnixMillis(at),
        started_at: None,
        ended_at: None,
        end_reason: None,
        rate: Some(LeaseRate {
            currency: Currency::USD,
            per_gpu_hour: Rate(450 * 1_000_000),
            undiscounted: None,
        }),
        tags,
        agent_runtime: None,
        idle: None,
        plugin_prices: None,
    }
}

/// reserved → active → closed for `batch` jobs, then one flush.
fn transitions(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut rng = Rng::new(7);
    let mut g = c.benchmark_group("lease_transitions_durable");
    g.sample_size(20);
    for batch in [1usize, 16, 128] {
        g.throughput(Throughput::Elements(3 * batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                let t = MONTH + rng.below(30 * 24 * HOUR_MS);
                for _ in 0..batch {
                    let mut j = job(rng.below(20) as usize, rng.below(5) as usize);
                    let mut l = lease(&j, &mut rng, t);
                    j.lease_ids.push(l.id);
                    ledger.put_job(&j, &[&l]).unwrap();
                    l.state = LeaseState::Active;
                    l.started_at = Some(UnixMillis(t + 20));
                    j.state = JobState::Running;
                    ledger.put_job(&j, &[&l]).unwrap();
                    l.state = LeaseState::Closed;
                    l.ended_at = Some(UnixMillis(t + 20 + rng.below(4 * HOUR_MS)));
                    l.end_reason = Some(EndReason::Succeeded);
                    j.state = JobState::Succeeded;
                    ledger.put_job(&j, &[&l]).unwrap();
                }
                ledger.roll_up().unwrap();
                rt.block_on(ledger.flush()).unwrap();
            })
        });
    }
    g.finish();
}

/// One `put_job` of each kind, without the flush: where a transition's time goes.
fn single_writes(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut rng = Rng::new(9);
    let mut g = c.benchmark_group("put_job");
    g.bench_function("reserve", |b| {
        b.iter(|| {
            let mut j = job(rng.below(20) as usize, rng.below(5) as usize);
            let t = MONTH + rng.below(30 * 24 * HOUR_MS);
            let l = lease(&j, &mut rng, t);
            j.lease_ids.push(l.id);
            ledger.put_job(&j, &[&l]).unwrap();
        })
    });
    g.bench_function("job_only", |b| {
        let j = job(1, 1);
        b.iter(|| ledger.put_job(&j, &[]).unwrap())
    });
    g.bench_function("close", |b| {
        b.iter(|| {
            let mut j = job(rng.below(20) as usize, rng.below(5) as usize);
            let t = MONTH + rng.below(30 * 24 * HOUR_MS);
            let mut l = lease(&j, &mut rng, t);
            j.lease_ids.push(l.id);
            l.state = LeaseState::Closed;
            l.started_at = Some(UnixMillis(t + 20));
            l.ended_at = Some(UnixMillis(t + 20 + rng.below(4 * HOUR_MS)));
            l.end_reason = Some(EndReason::Succeeded);
            j.state = JobState::Succeeded;
            ledger.put_job(&j, &[&l]).unwrap();
        })
    });
    g.finish();
}

/// Roll up every 256 closes, as an engine turn under load would.
fn ledger_rolls(written: usize) -> bool {
    written.is_multiple_of(256)
}

/// A month of closed leases, written the way the engine writes them.
fn month_of_leases(n: usize) -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut rng = Rng::new(11);
    let started = std::time::Instant::now();
    for k in 0..n {
        let mut j = job(rng.below(20) as usize, rng.below(5) as usize);
        let t = MONTH + rng.below(30 * 24 * HOUR_MS - 4 * HOUR_MS);
        let mut l = lease(&j, &mut rng, t);
        j.lease_ids.push(l.id);
        l.state = LeaseState::Closed;
        l.started_at = Some(UnixMillis(t + 20));
        l.ended_at = Some(UnixMillis(t + 5 * 60_000 + rng.below(4 * HOUR_MS - 5 * 60_000)));
        l.end_reason = Some(EndReason::Succeeded);
        j.state = JobState::Succeeded;
        ledger.put_job(&j, &[&l]).unwrap();
        if ledger_rolls(k + 1) {
            ledger.roll_up().unwrap();
        }
    }
    ledger.roll_up().unwrap();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(ledger.flush())
        .unwrap();
    eprintln!(
        "wrote {n} closed leases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    (dir, ledger)
}

fn usage(c: &mut Criterion) {
    let n: usize = std::env::var("ALLOT_BENCH_LEASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // Written on first use, so a filter that skips these benchmarks skips it too.
    let data: std::sync::OnceLock<(tempfile::TempDir, Ledger)> = std::sync::OnceLock::new();
    let now = UnixMillis(MONTH + 31 * 24 * HOUR_MS);
    let month = |group_by: Vec<Dimension>| UsageQuery {
        from: UnixMillis(MONTH),
        to: UnixMillis(MONTH + 30 * 24 * HOUR_MS),
        group_by,
        tenant: None,
    };
    let tag = || Dimension::Tag("team".into());
    let queries: Vec<(&str, UsageQuery)> = vec![
        ("month_total", month(vec![])),
        (
            "month_by_tenant_project",
            month(vec![Dimension::Tenant, Dimension::Project]),
        ),
        (
            "month_by_day_model",
            month(vec![Dimension::Day, Dimension::GpuModel]),
        ),
        ("month_by_node", month(vec![Dimension::Node])),
        ("month_by_tag", month(vec![tag()])),
        (
            "one_tenant_ms_window_by_project",
            UsageQuery {
                from: UnixMillis(MONTH + 3 * 24 * HOUR_MS + 1_234_567),
                to: UnixMillis(MONTH + 24 * 24 * HOUR_MS + 2_345_678),
                group_by: vec![Dimension::Project],
                tenant: Some("tenant-3".parse().unwrap()),
            },
        ),
        (
            "one_day_by_job",
            UsageQuery {
                from: UnixMillis(MONTH + 10 * 24 * HOUR_MS),
                to: UnixMillis(MONTH + 11 * 24 * HOUR_MS),
                group_by: vec![Dimension::Job],
                tenant: None,
            },
        ),
    ];
    let mut g = c.benchmark_group(format!("usage_over_{n}_leases"));
    g.sample_size(10);
    for (name, q) in &queries {
        g.bench_function(*name, |b| {
            let (_, ledger) = data.get_or_init(|| month_of_leases(n));
            b.iter(|| black_box(ledger.usage(q, now).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, transitions, single_writes, usage);
criterion_main!(benches);
