//! The plugin host against real components: the examples of `plugins/`
//! and the hostile plugins of `plugins/tests/hostile/`, built from source by
//! `plugins/build.sh --rust --hostile` once per test run.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use allot_proto::v1 as pb;

use super::*;
use crate::domain::money::Currency;
use crate::domain::{MiB, Millis, ProjectName, Share};

/// Builds the Rust examples and the hostile plugins once; file name → path.
fn components() -> &'static HashMap<String, PathBuf> {
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/build.sh");
        let out = std::process::Command::new(&script)
            .args(["--rust", "--hostile"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} --rust --hostile failed (is the wasm32-wasip2 target installed? run scripts/setup.sh):\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .map(|p| (p.file_stem().expect("a file").to_string_lossy().into_owned(), p))
            .collect()
    })
}

fn wasm(name: &str) -> Vec<u8> {
    let path = components()
        .get(name)
        .unwrap_or_else(|| panic!("build.sh did not build {name}"));
    std::fs::read(path).unwrap()
}

struct Fixture {
    host: PolicyHost,
    _dir: tempfile::TempDir,
}

fn host_with(config: PolicyConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    Fixture {
        host: PolicyHost::new(ledger, &config).unwrap(),
        _dir: dir,
    }
}

fn host() -> Fixture {
    host_with(PolicyConfig::default())
}

fn tenant(t: &str) -> Owner {
    Owner::Tenant(t.parse().unwrap())
}

/// Uploads `component` as `name` for `owner` and binds it at its world for
/// `owner`, in the operator's layer (as an admin binds).
async fn add_and_bind(host: &PolicyHost, owner: Owner, name: &str, component: &str) -> PluginRef {
    add_and_bind_in(host, owner, Layer::Operator, name, component).await
}

/// The same, in the tenant's own layer (as a tenant token binds).
async fn add_and_bind_own(host: &PolicyHost, owner: Owner, name: &str, component: &str) -> PluginRef {
    add_and_bind_in(host, owner, Layer::Tenant, name, component).await
}

async fn add_and_bind_in(
    host: &PolicyHost,
    owner: Owner,
    layer: Layer,
    name: &str,
    component: &str,
) -> PluginRef {
    let (record, _) = host
        .add_plugin(
            owner.clone(),
            name.parse().unwrap(),
            wasm(component),
            "test",
            UnixMillis(1),
        )
        .await
        .unwrap();
    host.bind(owner, layer, None, record.plugin_ref(), "test", UnixMillis(2))
        .await
        .unwrap();
    record.plugin_ref()
}

/// A validated spec of `tenant`/`project`, with tags.
fn spec(tenant: &str, project: &str, tags: &[(&str, &str)], gpus: i32) -> JobSpec {
    let wire = pb::JobSpec {
        name: "train".into(),
        command: "python".into(),
        args: vec!["train.py".into()],
        tenant: tenant.into(),
        project: project.into(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        resources: Some(pb::Resources {
            gpu: (gpus > 0).then_some(pb::resources::Gpu::Gpus(gpus)),
            ..Default::default()
        }),
        ..Default::default()
    };
    validate::job_spec(&wire, tenant.parse().unwrap()).unwrap()
}

const NOW: UnixMillis = UnixMillis(1_794_906_000_000); // Tuesday 2026-11-17, 09:00 UTC.
const HOUR_MS: u64 = 3_600_000;

fn failure_of<D: std::fmt::Debug>(o: &Outcome<D>) -> &PluginFailure {
    match &o.decided_by {
        DecidedBy::FailurePolicy { failure, .. } => failure,
        other => panic!("expected a failure, got {other:?} deciding {:?}", o.decision),
    }
}

// --- the examples -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_example_rejects_accepts_and_sandboxes() {
    let f = host();
    let plugin = add_and_bind(
        &f.host,
        tenant("acme"),
        "require_cost_center",
        "require_cost_center",
    )
    .await;

    let rejected = f.host.admit(&spec("acme", "vision", &[], 1), NOW).await;
    assert_eq!(rejected.decided_by, DecidedBy::Plugin(plugin.clone()));
    let AdmissionDecision::Reject(message) = rejected.decision else {
        panic!("expected a rejection, got {:?}", rejected.decision);
    };
    assert!(message.starts_with("job needs a cost-center tag"), "{message}");

    let with_tag = spec("acme", "vision", &[("cost-center", "cc-7")], 1);
    let accepted = f.host.admit(&with_tag, NOW).await;
    assert_eq!(accepted.decision, AdmissionDecision::Accept);

    let sandbox = spec("acme", "sandbox", &[("cost-center", "cc-7")], 1);
    let modified = f.host.admit(&sandbox, NOW).await;
    let AdmissionDecision::Modify(job) = modified.decision else {
        panic!("expected a modified job, got {:?}", modified.decision);
    };
    assert_eq!(job.time_limit, Some(Millis(2 * HOUR_MS)));
    assert!(job.preemptible);
    assert_eq!(
        job.tags.get(MODIFIED_BY_TAG).map(String::as_str),
        Some("acme/require_cost_center")
    );
    assert_eq!((job.tenant.as_str(), job.project.as_str()), ("acme", "sandbox"));
    assert_eq!(job.command, sandbox.command);

    let stats = f.host.stats(&plugin);
    assert_eq!((stats.calls, stats.failures), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_example_allows_holds_and_denies() {
    let f = host();
    add_and_bind(&f.host, tenant("acme"), "project_caps", "project_caps").await;
    let usage = |gpus: u64| Usage {
        gpus_held: Share::new(gpus, 1).unwrap(),
        ..Usage::zero(Currency::USD)
    };
    let input = |project: &str, gpus: i32, held: u64| QuotaInput {
        job: spec("acme", project, &[], gpus),
        job_gpus: Share::new(gpus as u64, 1).unwrap(),
        now: NOW,
        period_start: NOW.month_start(),
        tenant_usage: usage(held),
        projects: BTreeMap::from([(project.parse::<ProjectName>().unwrap(), usage(held))]),
    };
    assert_eq!(
        f.host.quota(&input("vision", 2, 2)).await.decision,
        QuotaDecision::Allow
    );
    assert_eq!(
        f.host.quota(&input("vision", 1, 4)).await.decision,
        QuotaDecision::Hold("project vision holds 4 of its 4 GPUs; the job needs 1 more".into())
    );
    assert_eq!(
        f.host.quota(&input("interns", 2, 0)).await.decision,
        QuotaDecision::Deny("the job asks for 2 GPUs; project interns may hold at most 1".into())
    );
}

fn piece(tenant: &str, currency: &str) -> PriceInput {
    PriceInput {
        tenant: tenant.parse().unwrap(),
        project: "vision".parse().unwrap(),
        gpu_model: "H100-80GB".into(),
        mig_profile: None,
        share: Share::ONE,
        start: NOW,
        duration: Millis(HOUR_MS),
        preemptible: false,
        tags: BTreeMap::new(),
        currency: currency.parse().unwrap(),
        list_price_minor: 400,
        undiscounted_price_minor: 400,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pricing_example_prices_and_its_errors_charge_the_list_price() {
    let f = host();
    let plugin = add_and_bind(&f.host, Owner::Global, "time_of_day", "time_of_day").await;
    let priced = f.host.price(&piece("initech", "USD")).await;
    assert_eq!(priced.decision, 500, "peak hour of an H100 at 125 %");
    assert_eq!(priced.decided_by, DecidedBy::Plugin(plugin.clone()));
    // Committed-use tenant, preemptible: 400 × 125 % × 60 % × 75 %.
    let mut discounted = piece("acme", "USD");
    discounted.preemptible = true;
    assert_eq!(f.host.price(&discounted).await.decision, 225);

    let in_euros = f.host.price(&piece("initech", "EUR")).await;
    assert_eq!(in_euros.decision, 400, "the list price");
    let failure = failure_of(&in_euros);
    assert_eq!(failure.kind, FailureKind::PluginError);
    assert!(failure.message.contains("this server bills in EUR"), "{failure}");
    let stats = f.host.stats(&plugin);
    assert_eq!((stats.calls, stats.failures), (3, 1));
    assert_eq!(stats.recent_errors[0].tenant.as_str(), "initech");
}

/// Issue 12, defect 9: the pricing request carries the undiscounted price
/// beside the list price, in a new WIT version (0.2.0), while a plugin built
/// for 0.1.0 runs on, unchanged, on the 0.1.0 bindings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_2_0_plugin_sees_the_undiscounted_price_and_a_0_1_0_plugin_runs_on() {
    let f = host();
    let new = add_and_bind(&f.host, tenant("acme"), "new", "hostile_price_from_tag").await;
    let old = add_and_bind(&f.host, tenant("initech"), "old", "old_v0_1_0_pricing").await;
    let version = |p: &PluginRef| f.host.plugin(p).unwrap().wit_version.to_string();
    assert_eq!((version(&new), version(&old)), ("0.2.0".into(), "0.1.0".into()));

    // A preemptible piece: 300 after the rate card's discount, 400 before.
    let mut preemptible = piece("acme", "USD");
    preemptible.preemptible = true;
    preemptible.list_price_minor = 300;
    preemptible.tags.insert("price".into(), "undiscounted".into());
    let priced = f.host.price(&preemptible).await;
    assert_eq!(
        (priced.decision, priced.decided_by),
        (400, DecidedBy::Plugin(new))
    );

    let mut piece = piece("initech", "USD");
    piece.list_price_minor = 300;
    let priced = f.host.price(&piece).await;
    assert_eq!(
        (priced.decision, priced.decided_by),
        (301, DecidedBy::Plugin(old.clone()))
    );
    assert_eq!(f.host.stats(&old).failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_binding_the_defaults_decide() {
    let f = host();
    let job = spec("acme", "vision", &[], 1);
    let outcome = f.host.admit(&job, NOW).await;
    assert_eq!(
        (outcome.decision, outcome.decided_by),
        (AdmissionDecision::Accept, DecidedBy::Default)
    );
    let priced = f.host.price(&piece("acme", "USD")).await;
    assert_eq!((priced.decision, priced.decided_by), (400, DecidedBy::Default));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_binding_for_a_tenant_wins_over_the_global_one_and_applies_to_it_alone() {
    let f = host();
    let global = add_and_bind(&f.host, Owner::Global, "reject_big", "require_cost_center").await;
    let own = add_and_bind(&f.host, tenant("acme"), "oversized", "hostile_oversized").await;
    let acme = f.host.admit(&spec("acme", "vision", &[], 1), NOW).await;
    assert_eq!(failure_of(&acme).kind, FailureKind::Oversized);
    assert_eq!(acme.decided_by.plugin(), Some(&own));
    // Another tenant gets the global plugin, never acme's.
    let globex = f.host.admit(&spec("globex", "vision", &[], 1), NOW).await;
    assert_eq!(globex.decided_by, DecidedBy::Plugin(global.clone()));
    assert!(matches!(globex.decision, AdmissionDecision::Reject(_)));
    assert_eq!(f.host.stats(&own).calls, 1);
    // Unbinding acme's plugin falls back to the global one at once.
    f.host
        .unbind(tenant("acme"), Layer::Operator, ExtensionPoint::Admission)
        .await
        .unwrap();
    let acme = f
        .host
        .admit(&spec("acme", "vision", &[("cost-center", "x")], 1), NOW)
        .await;
    assert_eq!(acme.decided_by, DecidedBy::Plugin(global));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_plugin_takes_effect_with_the_next_call_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let job = spec("acme", "vision", &[], 1);
    {
        let host = PolicyHost::new(Ledger::open(dir.path()).unwrap(), &PolicyConfig::default()).unwrap();
        add_and_bind(&host, tenant("acme"), "gate", "require_cost_center").await;
        assert!(matches!(
            host.admit(&job, NOW).await.decision,
            AdmissionDecision::Reject(_)
        ));
        let (replacement, replaced) = host
            .add_plugin(
                tenant("acme"),
                "gate".parse().unwrap(),
                wasm("hostile_panics"),
                "test",
                NOW,
            )
            .await
            .unwrap();
        assert_ne!(replaced.unwrap().sha256, replacement.sha256);
        let outcome = host.admit(&job, NOW).await;
        assert_eq!(failure_of(&outcome).kind, FailureKind::Trap);
    }
    // A new host (a restart) loads the stored artifact and the binding.
    let host = PolicyHost::new(Ledger::open(dir.path()).unwrap(), &PolicyConfig::default()).unwrap();
    assert_eq!(host.bindings().len(), 1);
    let outcome = host.admit(&job, NOW).await;
    let failure = failure_of(&outcome);
    assert_eq!(failure.kind, FailureKind::Trap);
    assert!(failure.message.contains("hostile plugin panicked"), "{failure}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_refuses_what_would_break_a_binding() {
    let f = host();
    let caps = add_and_bind(&f.host, tenant("acme"), "caps", "project_caps").await;
    let err = f.host.remove_plugin(&caps).await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("unbind it first"), "{err}");
    // A quota plugin cannot be bound at admission.
    let err = f
        .host
        .bind(
            tenant("acme"),
            Layer::Tenant,
            Some(ExtensionPoint::Admission),
            caps.clone(),
            "t",
            NOW,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is a quota plugin"), "{err}");
    // A global binding takes only global plugins.
    let err = f
        .host
        .bind(Owner::Global, Layer::Operator, None, caps.clone(), "t", NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
    // Another tenant cannot bind it: for them it does not exist.
    let err = f
        .host
        .bind(tenant("globex"), Layer::Tenant, None, caps.clone(), "t", NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound(_)), "{err}");
    // Replacing a bound plugin with one of another world is refused.
    let err = f
        .host
        .add_plugin(
            tenant("acme"),
            "caps".parse().unwrap(),
            wasm("time_of_day"),
            "t",
            NOW,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unbind it first"), "{err}");
    assert_eq!(f.host.plugin(&caps).unwrap().point, ExtensionPoint::Quota);
    // Unbound, it goes, bytes and all.
    f.host
        .unbind(tenant("acme"), Layer::Operator, ExtensionPoint::Quota)
        .await
        .unwrap();
    let removed = f.host.remove_plugin(&caps).await.unwrap();
    assert!(f.host.plugins().is_empty());
    assert!(
        f.host
            .inner
            .ledger
            .plugin_blob(&removed.sha256)
            .unwrap()
            .is_none()
    );
}

// --- hostile plugins ------------------------------------------------------------

/// Binds a hostile component for acme and calls it once; returns the failure.
async fn contained(component: &str) -> (PluginFailure, PluginStats) {
    let f = host();
    let plugin = add_and_bind(&f.host, tenant("acme"), "hostile", component).await;
    let started = Instant::now();
    let outcome = f.host.admit(&spec("acme", "vision", &[], 1), NOW).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{component} took {:?}",
        started.elapsed()
    );
    let AdmissionDecision::Reject(message) = &outcome.decision else {
        panic!(
            "{component}: fail-closed admission must reject, got {:?}",
            outcome.decision
        );
    };
    assert!(
        message.contains("acme/hostile"),
        "the message names the plugin: {message}"
    );
    (failure_of(&outcome).clone(), f.host.stats(&plugin))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_at_its_cpu_budget() {
    let started = Instant::now();
    let (failure, stats) = contained("hostile_loop_forever").await;
    assert_eq!(failure.kind, FailureKind::Timeout, "{failure}");
    assert!(started.elapsed() >= Duration::from_millis(50));
    // Stopped within a few ticks of its budget of CPU (issue 12, defect 8:
    // calls of 51–69 ms passed a 50 ms budget). The ticker is a thread woken
    // every millisecond; on a loaded 2-core CI machine its wake-ups lag by
    // a few milliseconds (55.2 ms was seen there), so the bound is 10 ticks.
    let cpu: f64 = failure
        .message
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(" ms of CPU"))
        .map(|(ms, _)| ms.parse().unwrap())
        .unwrap_or_else(|| panic!("{failure}"));
    assert!((50.0..60.0).contains(&cpu), "{failure}");
    assert_eq!((stats.calls, stats.failures), (1, 1));
    assert_eq!(stats.recent_errors[0].kind, FailureKind::Timeout);
}

/// Regression (CI, 2026-12-03): a fresh instance's set-up was charged to the
/// call's budget, so a Python component, whose instantiation maps ~12 MiB
/// of memory image, failed as `timeout` on a loaded machine (63.7 ms of CPU
/// against 50 ms) before its plugin ran. Instantiation has a budget of its
/// own; a start function that loops is stopped at that one, not the call's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instantiation_is_bounded_by_its_own_budget_not_the_calls() {
    let f = host_with(PolicyConfig {
        cpu_budget: Millis(10),
        instantiate_budget: Millis(150),
        ..PolicyConfig::default()
    });
    let err = f
        .host
        .add_plugin(
            tenant("acme"),
            "slow".parse().unwrap(),
            wasm("hostile_slow_start"),
            "test",
            NOW,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Invalid(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("cannot be instantiated: timeout: ran past its CPU budget for instantiation"),
        "{message}"
    );
    assert!(message.contains("the budget is 150 ms"), "{message}");
    let cpu: f64 = message
        .split_once("stopped (")
        .and_then(|(_, rest)| rest.split_once(" ms of CPU"))
        .map(|(ms, _)| ms.parse().unwrap())
        .unwrap_or_else(|| panic!("{message}"));
    // Stopped at the instantiation budget, not the call's (10 ms), and soon
    // after it: the check runs every few ms of CPU, and a loaded 2-core CI
    // machine overshot 20 ms once (170.8 ms, 2026-12-04).
    assert!((150.0..300.0).contains(&cpu), "{message}");
    assert!(f.host.plugins().is_empty(), "nothing was stored");
    // A well-behaved plugin's calls still get the call budget, whole.
    add_and_bind(&f.host, tenant("acme"), "gate", "require_cost_center").await;
    let outcome = f
        .host
        .admit(&spec("acme", "vision", &[("cost-center", "x")], 1), NOW)
        .await;
    assert_eq!(outcome.decision, AdmissionDecision::Accept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_stopped_at_its_memory_limit() {
    let (failure, _) = contained("hostile_memory_bomb").await;
    assert_eq!(failure.kind, FailureKind::Memory, "{failure}");
    assert!(failure.message.contains("the limit is 64 MiB"), "{failure}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_trap_with_its_message() {
    // Regression (issue 12, defect 8): the plugin writes 16 KiB to standard
    // error before it panics; the host kept the first 4 KiB (and trapped the
    // write past them), so the panic's message was lost.
    let (failure, _) = contained("hostile_panics").await;
    assert_eq!(failure.kind, FailureKind::Trap, "{failure}");
    assert!(
        failure
            .message
            .contains("hostile plugin panicked on job \"train\""),
        "{failure}"
    );
    assert!(!failure.message.contains("noise line 000"), "{failure}");
    assert!(failure.message.len() < 2048, "{failure}");
}

/// Regression (issue 12, defect 8): an answer the host cannot read was
/// recorded as `instantiate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_utf8_is_an_invalid_result() {
    let (failure, stats) = contained("hostile_bad_utf8").await;
    assert_eq!(failure.kind, FailureKind::InvalidResult, "{failure}");
    assert!(
        failure
            .message
            .starts_with("returned an answer the host cannot read: invalid utf-8"),
        "{failure}"
    );
    assert_eq!(stats.recent_errors[0].kind, FailureKind::InvalidResult);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_is_a_stack_overflow() {
    let (failure, _) = contained("hostile_deep_recursion").await;
    assert_eq!(failure.kind, FailureKind::Trap, "{failure}");
    assert!(failure.message.contains("stack overflow"), "{failure}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_is_refused() {
    let (failure, _) = contained("hostile_oversized").await;
    assert_eq!(failure.kind, FailureKind::Oversized, "{failure}");
    assert!(
        failure.message.contains("the limit of 65536 bytes") && failure.message.contains("at 1048576"),
        "{failure}"
    );
}

/// What this thread allocates while [`counting::counted`] runs: the host's
/// copies of a plugin's answer, for the test below.
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        static ON: Cell<bool> = const { Cell::new(false) };
        static BYTES: Cell<usize> = const { Cell::new(0) };
    }

    fn count(bytes: usize) {
        let _ = ON.try_with(|on| {
            if on.get() {
                BYTES.with(|b| b.set(b.get() + bytes));
            }
        });
    }

    // SAFETY: every call is the system allocator's; counting allocates nothing.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count(layout.size());
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count(new_size.saturating_sub(layout.size()));
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Runs `f` and returns the bytes this thread allocated meanwhile.
    pub fn counted<R>(f: impl FnOnce() -> R) -> (R, usize) {
        BYTES.with(|b| b.set(0));
        ON.with(|on| on.set(true));
        let r = f();
        ON.with(|on| on.set(false));
        (r, BYTES.with(Cell::get))
    }
}

#[global_allocator]
static COUNTING: counting::Counting = counting::Counting;

/// Regression (issue 12, defect 5): an answer was copied into the host
/// before its size was checked; five million empty arguments took the server
/// to 831 MB. The plugin returns two million (~48 MB as host strings): the
/// host must refuse it from the list's length, having copied nothing of it.
#[test]
fn a_huge_answer_is_refused_before_the_host_copies_it() {
    // The size cap is what is tested: building two million strings takes
    // the guest ~40 ms of CPU (its memory's page faults), near the default
    // budget on a loaded machine (54 ms seen), so the budget is roomy here.
    let config = PolicyConfig {
        cpu_budget: Millis(2_000),
        ..PolicyConfig::default()
    };
    let sandbox = runtime::Sandbox::new(&config).unwrap();
    let plugin = sandbox.validate(&wasm("hostile_oversized")).unwrap().plugin;
    let mut job = spec("acme", "vision", &[], 1);
    job.name = "many-args".into();
    let call = || {
        sandbox.call(
            &plugin,
            "acme/oversized".into(),
            "acme".into(),
            |i, store, max| i.admit(store, &job, NOW, max),
        )
    };
    // A first call warms what is allocated once (type information, caches).
    let _ = call();
    let (report, bytes) = counting::counted(call);
    let failure = report.result.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Oversized, "{failure}");
    assert!(failure.message.contains("the limit of 65536 bytes"), "{failure}");
    assert!(
        bytes < 4 << 20,
        "the host allocated {bytes} bytes for an answer it refused"
    );

    // The same for a pricing plugin's 10 MiB error (`result<u64, string>`).
    let plugin = sandbox.validate(&wasm("hostile_price_from_tag")).unwrap().plugin;
    let mut input = piece("acme", "USD");
    input.tags.insert("price".into(), "huge-error".into());
    let call = || {
        sandbox.call(&plugin, "acme/price".into(), "acme".into(), |i, store, max| {
            i.price(store, &input, max)
        })
    };
    let _ = call();
    let (report, bytes) = counting::counted(call);
    let failure = report.result.unwrap_err();
    assert_eq!(failure.kind, FailureKind::Oversized, "{failure}");
    assert!(
        bytes < 4 << 20,
        "the host allocated {bytes} bytes for an answer it refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_modification_rejects_with_the_validation_error() {
    let (failure, stats) = contained("hostile_bad_modify").await;
    assert_eq!(failure.kind, FailureKind::InvalidResult, "{failure}");
    assert!(failure.message.contains("spec.resources.gpus"), "{failure}");
    assert_eq!(stats.failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_that_are_not_plugins_are_refused_clearly() {
    let f = host();
    let add = |bytes: Vec<u8>| {
        f.host
            .add_plugin(tenant("acme"), "p".parse().unwrap(), bytes, "t", NOW)
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "the file is empty"),
        (b"#!/bin/sh\necho hi\n".to_vec(), "not a WebAssembly file"),
        (
            b"\0asm\x01\0\0\0".to_vec(),
            "a WebAssembly core module, not a component",
        ),
        (
            b"\0asm\x0d\0\x01\0garbage".to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            vec![0; runtime::MAX_COMPONENT_BYTES + 1],
            "a plugin may be at most",
        ),
        (wasm("hostile_wrong_world"), "it exports greet"),
        (
            wasm("hostile_future_version"),
            "built for allot:plugin@9.0.0, which this server does not support (it supports 0.2.0, 0.1.0)",
        ),
    ];
    for (bytes, expected) in cases {
        let err = add(bytes).await.unwrap_err();
        assert!(matches!(err, RegistryError::Invalid(_)), "{err}");
        assert!(
            err.to_string().contains(expected),
            "expected {expected:?} in: {err}"
        );
    }
    assert!(f.host.plugins().is_empty(), "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_plugin_does_not_hold_up_other_calls() {
    let f = host_with(PolicyConfig {
        cpu_budget: Millis(1_000),
        ..PolicyConfig::default()
    });
    add_and_bind(&f.host, tenant("acme"), "spin", "hostile_loop_forever").await;
    add_and_bind(&f.host, tenant("globex"), "gate", "require_cost_center").await;
    // Warm both plugins' templates so the timing below is of calls alone.
    let looping = {
        let host = f.host.clone();
        tokio::spawn(async move { host.admit(&spec("acme", "vision", &[], 1), NOW).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    for _ in 0..10 {
        let outcome = f
            .host
            .admit(&spec("globex", "vision", &[("cost-center", "x")], 1), NOW)
            .await;
        assert_eq!(outcome.decision, AdmissionDecision::Accept);
    }
    let good = started.elapsed();
    assert!(
        !looping.is_finished(),
        "the looping call is still burning its budget"
    );
    assert!(good < Duration::from_millis(500), "10 good calls took {good:?}");
    let outcome = looping.await.unwrap();
    assert_eq!(failure_of(&outcome).kind, FailureKind::Timeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_can_fail_open() {
    let f = host_with(PolicyConfig {
        admission_on_error: AdmissionOnError::Accept,
        ..PolicyConfig::default()
    });
    add_and_bind(&f.host, tenant("acme"), "boom", "hostile_panics").await;
    let outcome = f.host.admit(&spec("acme", "vision", &[], 1), NOW).await;
    assert_eq!(outcome.decision, AdmissionDecision::Accept);
    assert_eq!(failure_of(&outcome).kind, FailureKind::Trap);
}

// --- kept instances ---------------------------------------------------------------

/// What `hostile_keeps_state` answered: how many calls its instance served.
async fn call_number(host: &PolicyHost, tenant: &str, tags: &[(&str, &str)]) -> u32 {
    let outcome = host.admit(&spec(tenant, "vision", tags, 1), NOW).await;
    let AdmissionDecision::Reject(message) = &outcome.decision else {
        panic!("keeps-state rejects every job, got {:?}", outcome.decision);
    };
    assert!(
        matches!(outcome.decided_by, DecidedBy::Plugin(_)),
        "{message}: {:?}",
        outcome.decided_by
    );
    message
        .strip_prefix("call ")
        .and_then(|m| m.strip_suffix(" of instance"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected answer {message}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_is_kept_for_one_tenant_and_never_serves_another() {
    let f = host();
    add_and_bind(&f.host, Owner::Global, "counter", "hostile_keeps_state").await;
    let mut acme = Vec::new();
    for _ in 0..3 {
        acme.push(call_number(&f.host, "acme", &[]).await);
    }
    assert_eq!(acme, [1, 2, 3], "acme's calls share its instance");
    // The same global plugin, another tenant: an instance of its own.
    assert_eq!(call_number(&f.host, "globex", &[]).await, 1);
    assert_eq!(call_number(&f.host, "acme", &[]).await, 4);
    assert_eq!(f.host.inner.sandbox.warm_instances(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_per_instance_bounds_what_an_instance_serves() {
    for (calls_per_instance, expected) in [(1, [1, 1, 1, 1, 1]), (2, [1, 2, 1, 2, 1])] {
        let f = host_with(PolicyConfig {
            calls_per_instance,
            ..PolicyConfig::default()
        });
        add_and_bind(&f.host, tenant("acme"), "counter", "hostile_keeps_state").await;
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(call_number(&f.host, "acme", &[]).await);
        }
        assert_eq!(seen, expected, "calls_per_instance = {calls_per_instance}");
    }
    // No instance kept at all.
    let f = host_with(PolicyConfig {
        warm_instances: 0,
        ..PolicyConfig::default()
    });
    add_and_bind(&f.host, tenant("acme"), "counter", "hostile_keeps_state").await;
    for _ in 0..3 {
        assert_eq!(call_number(&f.host, "acme", &[]).await, 1);
    }
    assert_eq!(f.host.inner.sandbox.warm_instances(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_fails_on_a_kept_instance_runs_again_on_a_fresh_one() {
    // 8 MiB leaked per call against a 32 MiB limit: a kept instance runs out
    // after a few calls, a fresh one never does.
    let f = host_with(PolicyConfig {
        memory_limit: MiB(32),
        ..PolicyConfig::default()
    });
    let plugin = add_and_bind(&f.host, tenant("acme"), "leaky", "hostile_keeps_state").await;
    let mut seen = Vec::new();
    for _ in 0..12 {
        seen.push(call_number(&f.host, "acme", &[("leak", "yes")]).await);
    }
    assert_eq!(seen[0], 1);
    assert!(
        seen.iter().filter(|n| **n == 1).count() >= 3,
        "instances were replaced as they filled up: {seen:?}"
    );
    assert!(seen.iter().all(|n| *n <= 4), "never past the limit: {seen:?}");
    let stats = f.host.stats(&plugin);
    assert_eq!(
        (stats.calls, stats.failures),
        (12, 0),
        "what a kept instance left behind cost time, never a decision"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_plugin_leaves_no_instance_behind() {
    let f = host();
    add_and_bind(&f.host, tenant("acme"), "gate", "hostile_keeps_state").await;
    assert_eq!(call_number(&f.host, "acme", &[]).await, 1);
    assert_eq!(call_number(&f.host, "acme", &[]).await, 2);
    assert_eq!(f.host.inner.sandbox.warm_instances(), 1);
    f.host
        .add_plugin(
            tenant("acme"),
            "gate".parse().unwrap(),
            wasm("require_cost_center"),
            "test",
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(f.host.inner.sandbox.warm_instances(), 0);
    let outcome = f
        .host
        .admit(&spec("acme", "vision", &[("cost-center", "x")], 1), NOW)
        .await;
    assert_eq!(outcome.decision, AdmissionDecision::Accept);
}

// --- fairness between tenants ----------------------------------------------------

#[test]
fn a_timed_out_call_holds_its_slot_doubling_up_to_the_cap() {
    let budget = Duration::from_millis(50);
    let holds: Vec<_> = (1..=10).map(|n| timeout_hold(budget, n)).collect();
    assert_eq!(holds[0], budget);
    assert_eq!(holds[1], budget * 2);
    assert_eq!(holds[4], budget * 16);
    assert!(holds.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(*holds.last().unwrap(), MAX_TIMEOUT_HOLD);
    assert_eq!(timeout_hold(budget, u32::MAX), MAX_TIMEOUT_HOLD);
    // A budget above the cap is held once, not cut.
    assert_eq!(timeout_hold(Duration::from_secs(30), 5), Duration::from_secs(30));
}

/// A tenant whose plugin loops waits on its own slots: another tenant's
/// calls, at the same time, run at once and are never its failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_tenant_waits_on_its_own_slots_and_another_tenant_does_not() {
    let f = host_with(PolicyConfig {
        max_concurrent_calls: 4,
        max_concurrent_calls_per_tenant: 1,
        ..PolicyConfig::default()
    });
    let spin = add_and_bind(&f.host, tenant("acme"), "spin", "hostile_loop_forever").await;
    let fine = add_and_bind(&f.host, tenant("zeta"), "cc", "require_cost_center").await;
    // Six of acme's calls at once, one slot: they run one after another,
    // each holding the slot after its timeout, so the last ones wait past
    // the queue bound and fail as busy, acme's.
    let acme: Vec<_> = (0..6)
        .map(|_| {
            let host = f.host.clone();
            tokio::spawn(async move { host.admit(&spec("acme", "vision", &[], 1), NOW).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..20 {
        let started = Instant::now();
        let outcome = f
            .host
            .admit(
                &spec("zeta", "vision", &[("cost-center", &format!("cc-{i}"))], 1),
                NOW,
            )
            .await;
        assert!(
            matches!(outcome.decision, AdmissionDecision::Accept),
            "{:?}",
            outcome.decision
        );
        // Far less than acme's 50 ms budget: zeta never waited on acme.
        assert!(
            started.elapsed() < Duration::from_millis(40),
            "zeta waited {:?}",
            started.elapsed()
        );
    }
    let mut kinds = Vec::new();
    for call in acme {
        let outcome = call.await.unwrap();
        kinds.push(failure_of(&outcome).kind);
    }
    assert!(kinds.contains(&FailureKind::Timeout), "{kinds:?}");
    assert!(kinds.contains(&FailureKind::Busy), "{kinds:?}");
    assert_eq!(f.host.stats(&fine).failures, 0);
    let stats = f.host.stats(&spin);
    assert_eq!(stats.failures, 6);
    assert!(stats.recent_errors.iter().all(|e| e.tenant.as_str() == "acme"));
}

// --- the trust model: operator and tenant layers ----------------------------------

/// Regression (issue 12, defect 1): a tenant's own binding replaced the
/// operator's, so a tenant could escape the operator's admission, quota and
/// prices. Its own plugins now run besides the operator's and can only be
/// stricter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_admission_plugin_runs_before_the_operators_and_cannot_escape_it() {
    let f = host();
    let operator = add_and_bind(&f.host, Owner::Global, "gate", "hostile_keeps_state").await;
    let own = add_and_bind_own(&f.host, tenant("acme"), "cc", "require_cost_center").await;
    // The tenant's plugin rejects first: the operator's is not asked.
    let outcome = f.host.admit(&spec("acme", "vision", &[], 1), NOW).await;
    assert!(
        matches!(outcome.decision, AdmissionDecision::Reject(ref m) if m.contains("cost-center")),
        "{:?}",
        outcome.decision
    );
    assert_eq!(outcome.decided_by, DecidedBy::Plugin(own.clone()));
    assert_eq!(f.host.stats(&operator).calls, 0);
    // Accepted by the tenant's, the job still goes to the operator's, which
    // rejects it (the tenant's binding used to replace the global one).
    let outcome = f
        .host
        .admit(&spec("acme", "vision", &[("cost-center", "cc-1")], 1), NOW)
        .await;
    assert!(
        matches!(outcome.decision, AdmissionDecision::Reject(ref m) if m.starts_with("call ")),
        "{:?}",
        outcome.decision
    );
    assert_eq!(outcome.decided_by, DecidedBy::Plugin(operator.clone()));
    assert_eq!(f.host.stats(&operator).calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modification_by_the_tenants_plugin_is_judged_by_the_operators() {
    let f = host();
    // The tenant's plugin makes sandbox jobs preemptible with a time limit;
    // the operator's requires a cost-center tag, which it does not add.
    let own = add_and_bind_own(&f.host, tenant("acme"), "sandbox", "require_cost_center").await;
    let operator = add_and_bind(&f.host, Owner::Global, "cc", "require_cost_center").await;
    let outcome = f
        .host
        .admit(&spec("acme", "sandbox", &[("cost-center", "cc-1")], 1), NOW)
        .await;
    let AdmissionDecision::Modify(modified) = &outcome.decision else {
        panic!("{:?}", outcome.decision);
    };
    assert!(modified.preemptible);
    // Both modified it (the same change: the second found it done and
    // accepted), and the tag names who did.
    assert_eq!(modified.tags.get(MODIFIED_BY_TAG), Some(&own.to_string()));
    assert_eq!(f.host.stats(&operator).calls, 1);
}

/// A quota ask about a `gpus`-GPU job of acme's project `vision`, which
/// holds `held` GPUs.
fn quota_ask(gpus: i32, held: u64) -> QuotaInput {
    let usage = Usage {
        gpus_held: Share::new(held, 1).unwrap(),
        ..Usage::zero(Currency::USD)
    };
    QuotaInput {
        job: spec("acme", "vision", &[], gpus),
        job_gpus: Share::new(gpus as u64, 1).unwrap(),
        now: NOW,
        period_start: NOW.month_start(),
        tenant_usage: usage.clone(),
        projects: BTreeMap::from([("vision".parse::<ProjectName>().unwrap(), usage)]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_quota_plugin_can_only_hold_more() {
    let f = host();
    let own = add_and_bind_own(&f.host, tenant("acme"), "caps", "project_caps").await;
    // No operator plugin: the tenant's caps decide (vision: 4 GPUs).
    let over = quota_ask(1, 4);
    let outcome = f.host.quota(&over).await;
    assert!(
        matches!(outcome.decision, QuotaDecision::Hold(_)),
        "{:?}",
        outcome.decision
    );
    assert_eq!(outcome.decided_by, DecidedBy::Plugin(own.clone()));
    // With the operator's caps too: both allow a small job...
    let operator = add_and_bind(&f.host, Owner::Global, "ops-caps", "project_caps").await;
    let outcome = f.host.quota(&quota_ask(1, 2)).await;
    assert_eq!(outcome.decision, QuotaDecision::Allow);
    assert_eq!(f.host.stats(&operator).calls, 1);
    assert_eq!(f.host.stats(&own).calls, 2);
    // ...and the operator's hold holds, the tenant's not asked after it.
    let outcome = f.host.quota(&over).await;
    assert!(matches!(outcome.decision, QuotaDecision::Hold(_)));
    assert_eq!(outcome.decided_by, DecidedBy::Plugin(operator));
    assert_eq!(f.host.stats(&own).calls, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_pricing_plugin_is_showback_and_never_the_bill() {
    let f = host();
    let own = add_and_bind_own(&f.host, tenant("acme"), "free", "hostile_price_from_tag").await;
    let mut free = piece("acme", "USD");
    free.tags.insert("price".into(), "0".into());
    // The bill: the list price, whatever the tenant's plugin says.
    let billed = f.host.price(&free).await;
    assert_eq!((billed.decision, billed.decided_by), (400, DecidedBy::Default));
    // Beside it: the tenant's own price.
    let showback = f.host.showback(&free).await.unwrap();
    assert_eq!(
        (showback.decision, showback.decided_by),
        (0, DecidedBy::Plugin(own))
    );
    // Another tenant has no showback.
    assert!(f.host.showback(&piece("globex", "USD")).await.is_none());
}

/// Regression (issue 12, defect 4): `u64::MAX` became −0.01 USD on the
/// lease and 1.8 × 10¹⁷ USD in usage. An answer above `max_price_factor` ×
/// the list price is refused as `invalid_result`, and the list price bills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_out_of_range_is_refused_and_the_list_price_bills() {
    let f = host();
    let plugin = add_and_bind(&f.host, Owner::Global, "wild", "hostile_price_from_tag").await;
    let at = |price: &str| {
        let mut p = piece("acme", "USD");
        p.tags.insert("price".into(), price.into());
        p
    };
    for wild in ["max", "40001"] {
        let outcome = f.host.price(&at(wild)).await;
        assert_eq!(outcome.decision, 400, "{wild}: the list price");
        let failure = failure_of(&outcome);
        assert_eq!(failure.kind, FailureKind::InvalidResult, "{failure}");
        assert!(
            failure
                .message
                .contains("above the most a plugin may charge for it: 40000"),
            "{failure}"
        );
    }
    // The edges of the range are prices.
    for fine in ["0", "40000"] {
        let outcome = f.host.price(&at(fine)).await;
        assert_eq!(outcome.decided_by, DecidedBy::Plugin(plugin.clone()));
        assert_eq!(outcome.decision, fine.parse::<u64>().unwrap());
    }
    // A piece the rate card gives away may only be priced 0.
    let mut free = at("1");
    free.list_price_minor = 0;
    assert_eq!(
        failure_of(&f.host.price(&free).await).kind,
        FailureKind::InvalidResult
    );
    let stats = f.host.stats(&plugin);
    assert_eq!((stats.calls, stats.failures), (5, 3));
}

/// Regression (issue 12, defect 6): a tenant could keep any number of
/// plugins (60 were accepted). Per-tenant limits on count and bytes,
/// checked before anything is compiled; global plugins do not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_keeps_at_most_its_limits_of_plugins() {
    let f = host_with(PolicyConfig {
        max_plugins_per_tenant: 2,
        max_plugin_bytes_per_tenant: MiB(1),
        ..PolicyConfig::default()
    });
    let add = |owner: Owner, name: &str, wasm: Vec<u8>| {
        let host = f.host.clone();
        let name = name.to_string();
        async move {
            host.add_plugin(owner, name.parse().unwrap(), wasm, "t", NOW)
                .await
        }
    };
    add(tenant("acme"), "one", wasm("require_cost_center"))
        .await
        .unwrap();
    add(tenant("acme"), "two", wasm("project_caps")).await.unwrap();
    let err = add(tenant("acme"), "three", wasm("time_of_day"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Limit(_)), "{err}");
    assert!(
        err.to_string().contains("has 2 plugins, the most it may keep"),
        "{err}"
    );
    // Replacing one is not one more; another tenant and global plugins
    // have limits of their own.
    add(tenant("acme"), "two", wasm("time_of_day")).await.unwrap();
    add(tenant("globex"), "three", wasm("time_of_day")).await.unwrap();
    add(Owner::Global, "three", wasm("time_of_day")).await.unwrap();
    // Bytes: refused before it is even looked at (this is no component).
    let err = add(tenant("globex"), "big", vec![0u8; 1 << 20])
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Limit(_)), "{err}");
    assert!(
        err.to_string().contains("more than the 1MiB it may keep"),
        "{err}"
    );
    assert_eq!(f.host.plugins().len(), 4);
}
