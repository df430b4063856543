//! The cost of a plugin call (the request lowered, the decision lifted, on
//! the tenant's kept instance or on a fresh store and instance from the
//! cached template) for the admission and pricing examples with a
//! realistic job; instantiation alone; compilation.
//!
//! ```sh
//! cargo bench -p allot-scheduler --bench plugins
//! ```
//!
//! Besides criterion's estimates, prints p50 / p99 / max over 20,000 timed
//! calls of each, since the goals are stated as a median and a p99.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_proto::v1 as pb;
use allot_scheduler::api::convert;
use allot_scheduler::auth::Caller;
use allot_scheduler::domain::{JobSpec, Millis, Share, UnixMillis};
use allot_scheduler::ledger::Ledger;
use allot_scheduler::ledger::Role;
use allot_scheduler::policy::runtime::{Loaded, Sandbox};
use allot_scheduler::policy::{
    AdmissionDecision, Layer, Owner, PluginRef, PolicyConfig, PolicyHost, PriceInput,
};
use criterion::{Criterion, criterion_group, criterion_main};

/// Builds the Rust examples (`plugins/build.sh --rust`) and reads one.
fn component(name: &str) -> Vec<u8> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/build.sh");
    let out = std::process::Command::new(&script)
        .arg("--rust")
        .output()
        .expect("plugins/build.sh runs");
    assert!(
        out.status.success(),
        "plugins/build.sh --rust failed (run scripts/setup.sh?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .find(|l| l.ends_with(&format!("/{name}.wasm")))
        .unwrap_or_else(|| panic!("{name}.wasm not built"));
    std::fs::read(path).expect("component readable")
}

/// A job as people submit them: a GPU, tags, env, a time limit.
fn realistic_job() -> JobSpec {
    let wire = pb::JobSpec {
        name: "llama-finetune-7b".into(),
        command: "torchrun".into(),
        args: [
            "--nproc-per-node=1",
            "train.py",
            "--config",
            "configs/7b.yaml",
            "--epochs",
            "3",
        ]
        .map(String::from)
        .to_vec(),
        env: [
            ("HF_HOME", "/scratch/hf"),
            ("WANDB_PROJECT", "finetune"),
            ("NCCL_DEBUG", "WARN"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
        working_dir: "/home/ml/llama".into(),
        project: "vision".into(),
        tenant: "acme".into(),
        tags: [
            ("cost-center", "cc-4711"),
            ("team", "nlp"),
            ("experiment", "ft-042"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
        gpu_models: vec!["H100-80GB".into()],
        time_limit_ms: Some(8 * 3_600_000),
        resources: Some(pb::Resources {
            gpu: Some(pb::resources::Gpu::Gpus(1)),
            cpu_millis: 8000,
            memory_mib: 65536,
            gpu_memory_mib: 0,
        }),
        ..Default::default()
    };
    let caller = Caller {
        role: Role::Tenant("acme".parse().unwrap()),
        token_id: String::new(),
        node: None,
    };
    convert::job_spec(&caller, Some(&wire)).unwrap()
}

fn piece(job: &JobSpec) -> PriceInput {
    PriceInput {
        tenant: job.tenant.clone(),
        project: job.project.clone(),
        gpu_model: "H100-80GB".into(),
        mig_profile: None,
        share: Share::ONE,
        start: UnixMillis(1_794_906_000_000),
        duration: Millis(3_600_000),
        preemptible: false,
        tags: job.tags.clone(),
        currency: "USD".parse().unwrap(),
        list_price_minor: 400,
        undiscounted_price_minor: 400,
    }
}

/// p50 / p99 / max of `n` timed runs of `f`.
fn percentiles(label: &str, n: usize, mut f: impl FnMut()) {
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    let at = |q: f64| samples[((n as f64 * q) as usize).min(n - 1)];
    println!(
        "{label}: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs ({n} calls)",
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        samples[n - 1].as_secs_f64() * 1e6
    );
}

fn bench(c: &mut Criterion) {
    let admission_wasm = component("require_cost_center");
    let pricing_wasm = component("time_of_day");
    let job = realistic_job();
    let now = UnixMillis(1_794_906_000_000);
    let input = piece(&job);
    let label: Arc<str> = "bench".into();
    let tenant: Arc<str> = "acme".into();

    // As configured by default (an instance serves up to 1,000 calls of its
    // tenant), and with a fresh instance for every call.
    let fresh = PolicyConfig {
        calls_per_instance: 1,
        ..PolicyConfig::default()
    };
    let mut instantiated = None;
    for (how, config) in [
        ("kept instance", PolicyConfig::default()),
        ("fresh instance", fresh),
    ] {
        let sandbox = Sandbox::new(&config).unwrap();
        let admission: Arc<Loaded> = sandbox.validate(&admission_wasm).unwrap().plugin;
        let pricing: Arc<Loaded> = sandbox.validate(&pricing_wasm).unwrap().plugin;
        let admit = || {
            let r = sandbox.call(&admission, label.clone(), tenant.clone(), |i, store, max| {
                i.admit(store, &job, now, max)
            });
            black_box(r.result.expect("the example admits"));
        };
        let price = || {
            let r = sandbox.call(&pricing, label.clone(), tenant.clone(), |i, store, max| {
                i.price(store, &input, max)
            });
            // Peak H100 hour for a committed-use tenant: 400 × 125 % × 75 %.
            assert_eq!(r.result.ok(), Some(Ok(375)));
        };
        c.bench_function(&format!("admission call ({how})"), |b| b.iter(admit));
        c.bench_function(&format!("pricing call ({how})"), |b| b.iter(price));
        percentiles(&format!("admission call ({how})"), 20_000, admit);
        percentiles(&format!("pricing call ({how})"), 20_000, price);
        instantiated = Some((sandbox, admission));
    }

    // Through the plugin host, as the scheduler calls it: the binding
    // resolved, a permit, the call on a blocking thread, the answer awaited.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = PolicyHost::new(Ledger::open(dir.path()).unwrap(), &PolicyConfig::default()).unwrap();
    runtime.block_on(async {
        let owner = Owner::Tenant("acme".parse().unwrap());
        host.add_plugin(
            owner.clone(),
            "gate".parse().unwrap(),
            admission_wasm.clone(),
            "bench",
            now,
        )
        .await
        .unwrap();
        let plugin = PluginRef {
            owner: owner.clone(),
            name: "gate".parse().unwrap(),
        };
        host.bind(owner, Layer::Operator, None, plugin, "bench", now)
            .await
            .unwrap();
    });
    let admit_via_host = || {
        let outcome = runtime.block_on(host.admit(&job, now));
        assert_eq!(outcome.decision, AdmissionDecision::Accept);
    };
    c.bench_function("admission through the plugin host", |b| b.iter(admit_via_host));
    percentiles("admission through the plugin host", 20_000, admit_via_host);

    let (sandbox, admission) = instantiated.expect("ran");
    let instantiate = || sandbox.instantiate(&admission).expect("instantiates");
    c.bench_function("instantiate from the cached template", |b| b.iter(instantiate));
    percentiles("instantiate", 20_000, instantiate);
    let mut slow = c.benchmark_group("compile");
    slow.sample_size(10);
    slow.bench_function("validate + compile the admission example", |b| {
        b.iter(|| sandbox.validate(black_box(&admission_wasm)).unwrap())
    });
    slow.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
