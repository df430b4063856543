//! Policy plugins end to end: real components built from `plugins/`,
//! uploaded and bound over gRPC, changing what a dev server admits.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use allot_sdk::{Client, Code, JobSpec, JobState, Scope, proto};

use crate::harness::*;
use crate::plugin_kit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_plugin_rejects_modifies_and_stays_with_its_tenant() {
    let dir = tempdir();
    let (server, a, b) = two_tenants(dir.path()).await;
    let added = a
        .plugins()
        .add("cost-center", wasm("require_cost_center"), &Scope::Own)
        .await
        .unwrap();
    let plugin = added.plugin.unwrap();
    assert_eq!(
        (plugin.tenant.as_str(), plugin.wit_version.as_str()),
        ("default", "0.2.0")
    );
    assert_eq!(plugin.point(), proto::ExtensionPoint::Admission);
    a.plugins().bind("cost-center", None, &Scope::Own).await.unwrap();

    // A job without a cost-center is rejected with the plugin's message.
    let err = a.submit(JobSpec::new("true")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(
        err.message()
            .starts_with("rejected by admission plugin default/cost-center: job needs a cost-center tag"),
        "{}",
        err.message()
    );
    // With one, it runs.
    let ok = a
        .submit(JobSpec::new("true").tag("cost-center", "cc-1"))
        .await
        .unwrap();
    assert_eq!(wait_final(&a, &ok.id).await.state(), JobState::Succeeded);
    // A sandbox job gets at most 2 h and becomes preemptible, and says who changed it.
    let sandboxed = a
        .submit(
            JobSpec::new("true")
                .project("sandbox")
                .tag("cost-center", "cc-1")
                .time_limit_secs(10 * 3600),
        )
        .await
        .unwrap();
    let spec = sandboxed.spec.as_ref().unwrap();
    assert_eq!(spec.time_limit_ms, Some(2 * 3600 * 1000));
    assert!(spec.preemptible);
    assert_eq!(
        spec.tags.get("allot.admission/modified-by").map(String::as_str),
        Some("default/cost-center")
    );

    // Team B's jobs never see team A's plugin.
    let b_job = b.submit(JobSpec::new("true")).await.unwrap();
    assert_eq!(wait_final(&b, &b_job.id).await.state(), JobState::Succeeded);
    // Team B can neither see, replace, bind, unbind nor remove it.
    let listed = b.plugins().list(None).await.unwrap();
    assert!(
        listed.plugins.is_empty() && listed.bindings.is_empty(),
        "{listed:?}"
    );
    let err = b.plugins().get("cost-center", &Scope::Own).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = b
        .plugins()
        .get(&plugin.sha256[..12], &Scope::Own)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = b
        .plugins()
        .get("cost-center", &Scope::Tenant("default".into()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = b
        .plugins()
        .add(
            "cost-center",
            wasm("hostile_panics"),
            &Scope::Tenant("default".into()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = b
        .plugins()
        .bind("cost-center", None, &Scope::Own)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = b
        .plugins()
        .bind("cost-center", None, &Scope::Tenant("default".into()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = b
        .plugins()
        .unbind(proto::ExtensionPoint::Admission, &Scope::Tenant("default".into()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = b.plugins().remove("cost-center", &Scope::Own).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = b.plugins().bind("x", None, &Scope::Global).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Team B uploading under the same name gets its own plugin.
    b.plugins()
        .add("cost-center", wasm("hostile_panics"), &Scope::Own)
        .await
        .unwrap();
    let still = a.plugins().get("cost-center", &Scope::Own).await.unwrap();
    assert_eq!(still.plugin.unwrap().sha256, plugin.sha256);

    // Removing a bound plugin is refused, and nothing changes.
    let err = a.plugins().remove("cost-center", &Scope::Own).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("unbind it first"), "{}", err.message());
    // The admin sees both, with the calls counted.
    let admin = server.admin().await;
    assert_eq!(admin.plugins().list(None).await.unwrap().plugins.len(), 2);
    let shown = admin
        .plugins()
        .get("cost-center", &Scope::Tenant("default".into()))
        .await
        .unwrap();
    let stats = shown.stats.unwrap();
    assert_eq!((stats.calls, stats.failures), (3, 0));
    // The CLI shows it too.
    let (code, out, err) = run_allot(
        &["plugin", "show", "cost-center"],
        Some(&server.addr),
        Some(&server.token),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("admission for tenant default (tenant layer) -> cost-center"),
        "{out}"
    );
    assert!(
        out.contains("calls:       3 since the server started, 0 failed"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_plugin_fails_closed_for_its_tenant_while_others_are_scheduled() {
    let dir = tempdir();
    let (server, a, b) = two_tenants(dir.path()).await;
    for hostile in [
        "hostile_loop_forever",
        "hostile_memory_bomb",
        "hostile_panics",
        "hostile_deep_recursion",
    ] {
        add_and_bind_own(&a, "hostile", hostile).await;
        // Tenant A's submission runs into its plugin while B submits.
        let a_submit = {
            let a = a.clone();
            tokio::spawn(async move { a.submit(JobSpec::new("true")).await })
        };
        let started = Instant::now();
        let b_job = b.submit(JobSpec::new("true").gpus(1)).await.unwrap();
        assert_eq!(wait_final(&b, &b_job.id).await.state(), JobState::Succeeded);
        let b_took = started.elapsed();
        let err = a_submit.await.unwrap().unwrap_err();
        assert_eq!(
            err.code(),
            Code::FailedPrecondition,
            "{hostile}: {}",
            err.message()
        );
        assert!(
            err.message()
                .starts_with("admission plugin default/hostile failed ("),
            "{hostile}: {}",
            err.message()
        );
        assert!(b_took < Duration::from_secs(5), "{hostile}: B waited {b_took:?}");
    }
    // Each failure is recorded, with its kind, for the operator.
    let shown = a.plugins().get("hostile", &Scope::Own).await.unwrap();
    let stats = shown.stats.unwrap();
    assert_eq!((stats.calls, stats.failures), (4, 4));
    let kinds: Vec<&str> = stats.recent_errors.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["timeout", "memory", "trap", "trap"]);
    assert!(stats.recent_errors[2].message.contains("hostile plugin panicked"));
    assert!(stats.recent_errors[3].message.contains("stack overflow"));
    // A's jobs were never queued.
    assert!(a.list_all(Default::default()).await.unwrap().is_empty());
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_fails_open_when_configured_to() {
    let dir = tempdir();
    let config = dir.path().join("allot.toml");
    std::fs::write(
        &config,
        "[plugins]\nadmission_on_error = \"accept\"\ncpu_budget = \"20ms\"\n",
    )
    .unwrap();
    let server = DevServer::start_with(dir.path(), &["--config", config.to_str().unwrap()]).await;
    let a = server.client().await;
    add_and_bind_own(&a, "spin", "hostile_loop_forever").await;
    let job = a.submit(JobSpec::new("true")).await.unwrap();
    assert_eq!(wait_final(&a, &job.id).await.state(), JobState::Succeeded);
    let stats = a.plugins().get("spin", &Scope::Own).await.unwrap().stats.unwrap();
    assert_eq!(stats.recent_errors[0].kind, "timeout");
}

async fn expect_err(
    result: Result<impl std::fmt::Debug, allot_sdk::Error>,
    code: Code,
    field: Option<&str>,
    says: &str,
) {
    let err = result.expect_err("must be refused");
    assert_eq!(err.code(), code, "{}", err.message());
    assert_eq!(err.field(), field, "{}", err.message());
    assert!(
        err.message().contains(says),
        "expected {says:?} in: {}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plugin_requests_are_refused_clearly_and_change_nothing() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let a = server.client().await;
    let admin = server.admin().await;
    let p = a.plugins();
    let own = Scope::Own;
    expect_err(
        p.add("x", b"MZ not wasm".to_vec(), &own).await,
        Code::InvalidArgument,
        Some("wasm"),
        "not a WebAssembly file",
    )
    .await;
    expect_err(
        p.add("x", Vec::new(), &own).await,
        Code::InvalidArgument,
        Some("wasm"),
        "the file is empty",
    )
    .await;
    expect_err(
        p.add("x", b"\0asm\x01\0\0\0".to_vec(), &own).await,
        Code::InvalidArgument,
        Some("wasm"),
        "core module, not a component",
    )
    .await;
    expect_err(
        p.add("x", wasm("hostile_wrong_world"), &own).await,
        Code::InvalidArgument,
        Some("wasm"),
        "not a plugin of any allot world",
    )
    .await;
    let mut too_large = b"\0asm\x0d\0\x01\0".to_vec();
    too_large.resize((32 << 20) + 1, 0);
    expect_err(
        p.add("x", too_large, &own).await,
        Code::InvalidArgument,
        Some("wasm"),
        "at most 33554432 bytes",
    )
    .await;
    let good = wasm("require_cost_center");
    expect_err(
        p.add("", good.clone(), &own).await,
        Code::InvalidArgument,
        Some("name"),
        "is required",
    )
    .await;
    expect_err(
        p.add("Bad Name", good.clone(), &own).await,
        Code::InvalidArgument,
        Some("name"),
        "lowercase",
    )
    .await;
    expect_err(
        p.add("x", good.clone(), &Scope::Global).await,
        Code::PermissionDenied,
        None,
        "only an admin",
    )
    .await;
    expect_err(
        admin.plugins().add("x", good.clone(), &own).await,
        Code::InvalidArgument,
        Some("tenant"),
        "names the tenant",
    )
    .await;
    expect_err(
        admin
            .plugins()
            .add("x", good.clone(), &Scope::Tenant("nobody".into()))
            .await,
        Code::NotFound,
        None,
        "tenant nobody",
    )
    .await;
    expect_err(p.get("nope", &own).await, Code::NotFound, None, "plugin nope").await;
    expect_err(p.remove("nope", &own).await, Code::NotFound, None, "plugin nope").await;
    expect_err(
        p.bind("nope", None, &own).await,
        Code::NotFound,
        None,
        "plugin nope",
    )
    .await;
    expect_err(
        p.bind("", None, &own).await,
        Code::InvalidArgument,
        Some("plugin"),
        "is required",
    )
    .await;
    expect_err(
        p.unbind(proto::ExtensionPoint::Admission, &own).await,
        Code::NotFound,
        None,
        "admission binding",
    )
    .await;
    expect_err(
        p.unbind(proto::ExtensionPoint::Unspecified, &own).await,
        Code::InvalidArgument,
        Some("point"),
        "is required",
    )
    .await;
    // A quota plugin cannot be bound at admission.
    p.add("caps", wasm("project_caps"), &own).await.unwrap();
    expect_err(
        p.bind("caps", Some(proto::ExtensionPoint::Admission), &own).await,
        Code::FailedPrecondition,
        None,
        "is a quota plugin",
    )
    .await;
    // Nothing but the one good upload was stored or bound.
    let listed = admin.plugins().list(None).await.unwrap();
    assert_eq!(listed.plugins.len(), 1, "{listed:?}");
    assert!(listed.bindings.is_empty());
    // And jobs are admitted as before.
    let job = a.submit(JobSpec::new("true")).await.unwrap();
    assert_eq!(wait_final(&a, &job.id).await.state(), JobState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_plugin_holds_a_project_at_its_cap_while_other_work_is_placed() {
    let dir = tempdir();
    let (_server, a, b) = two_tenants(dir.path()).await;
    add_and_bind_own(&a, "caps", "project_caps").await;

    // The example caps a project at 4 GPUs: four 1-GPU jobs run, the fifth waits.
    let sleeper = || JobSpec::new("sleep").args(["60"]).gpus(1).project("vision");
    let mut running = Vec::new();
    for _ in 0..4 {
        let j = a.submit(sleeper()).await.unwrap();
        running.push(wait_state(&a, &j.id, JobState::Running).await.id);
    }
    let fifth = a.submit(sleeper()).await.unwrap();
    let held = wait_for(&a, &fifth.id, "held by the quota plugin", |j| {
        j.reason.contains("held by quota plugin")
    })
    .await;
    assert_eq!(held.state(), JobState::Pending);
    assert!(
        held.reason
            .contains("project vision holds 4 of its 4 GPUs; the job needs 1 more"),
        "{}",
        held.reason
    );
    // Another project of the tenant, and another tenant, are placed meanwhile.
    let other = a
        .submit(JobSpec::new("true").gpus(1).project("audio"))
        .await
        .unwrap();
    assert_eq!(wait_final(&a, &other.id).await.state(), JobState::Succeeded);
    let theirs = b.submit(JobSpec::new("true").gpus(2)).await.unwrap();
    assert_eq!(wait_final(&b, &theirs.id).await.state(), JobState::Succeeded);
    // A job bigger than the cap is denied outright.
    let big = a
        .submit(JobSpec::new("true").gpus(5).project("vision"))
        .await
        .unwrap();
    let denied = wait_final(&a, &big.id).await;
    assert_eq!(denied.state(), JobState::Failed);
    assert!(
        denied.reason.contains("denied by quota plugin"),
        "{}",
        denied.reason
    );
    // When one of the four ends, the fifth gets its GPU.
    a.cancel(&running[0], "make room").await.unwrap();
    wait_state(&a, &fifth.id, JobState::Running).await;
    for id in running.iter().skip(1).chain([&fifth.id]) {
        a.cancel(id, "done").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_jobs_gets_its_project_cap_in_one_round_and_never_more() {
    let dir = tempdir();
    let (_server, a, _b) = two_tenants(dir.path()).await;
    add_and_bind_own(&a, "caps", "project_caps").await;

    // Six 1-GPU jobs at once, for a project capped at 4 GPUs, on a fleet
    // with 8 free: the plugin's answers about them are asked together, each
    // counting the jobs allowed before it.
    let sleeper = || JobSpec::new("sleep").args(["60"]).gpus(1).project("vision");
    let submitted = futures::future::join_all((0..6).map(|_| a.submit(sleeper()))).await;
    let ids: Vec<String> = submitted.into_iter().map(|j| j.unwrap().id).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (running, held) = loop {
        let mut running = Vec::new();
        let mut held = Vec::new();
        for id in &ids {
            let j = a.get(id).await.unwrap();
            match j.state() {
                JobState::Running => running.push(j),
                JobState::Pending if j.reason.contains("held by quota plugin") => held.push(j),
                _ => {}
            }
        }
        if running.len() + held.len() == ids.len() {
            break (running, held);
        }
        assert!(Instant::now() < deadline, "the burst did not settle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((running.len(), held.len()), (4, 2), "exactly the cap runs");
    for j in &held {
        assert!(
            j.reason.contains("project vision holds 4 of its 4 GPUs"),
            "{}",
            j.reason
        );
    }
    // Never more than the cap at any instant: the project's leases, as the
    // ledger has them.
    let leases = a
        .leases(proto::ListLeasesRequest::default())
        .await
        .unwrap()
        .leases;
    let mut edges: Vec<(i64, i32)> = leases
        .iter()
        .filter(|l| l.project == "vision")
        .flat_map(|l| {
            let end = if l.ended_at_unix_ms > 0 {
                l.ended_at_unix_ms
            } else {
                i64::MAX
            };
            [(l.reserved_at_unix_ms, 1), (end, -1)]
        })
        .collect();
    edges.sort_by_key(|&(at, delta)| (at, delta));
    let most = edges
        .iter()
        .scan(0, |held, (_, delta)| {
            *held += delta;
            Some(*held)
        })
        .max();
    assert_eq!(most, Some(4), "{leases:#?}");
    // One round: about one call per job (a hold may be asked again when a
    // job it counted is held), not one round trip per placement.
    let calls = a
        .plugins()
        .get("caps", &Scope::Own)
        .await
        .unwrap()
        .stats
        .unwrap()
        .calls;
    eprintln!("quota calls for the burst: {calls}");
    assert!(calls <= 9, "{calls} calls for 6 jobs");
    for id in &ids {
        a.cancel(id, "done").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pricing_plugin_prices_its_tenants_leases_and_usage_shows_it() {
    let dir = tempdir();
    // A list price of 10 USD per GPU-second: the plugin's own rates (cents
    // per GPU-hour) are far below it, so who priced a lease shows.
    let config = dir.path().join("allot.toml");
    std::fs::write(
        &config,
        "[pricing]\ncurrency = \"USD\"\ngpu_hour = \"36000.00\"\n",
    )
    .unwrap();
    let server = DevServer::start_with(dir.path(), &["--config", config.to_str().unwrap()]).await;
    let a = server.client().await;
    let admin = server.admin().await;
    admin.admin().create_tenant("team-b").await.unwrap();
    let b_token = admin
        .admin()
        .issue_token(proto::Role::Tenant, Some("team-b"), "tests")
        .await
        .unwrap();
    let b = Client::connect(server.addr.clone(), &b_token.token)
        .await
        .unwrap();
    // The tenant's plugin, bound by an admin: the operator's price for it.
    a.plugins()
        .add("tod", wasm("time_of_day"), &Scope::Own)
        .await
        .unwrap();
    let bound = admin
        .plugins()
        .bind("tod", None, &Scope::Tenant("default".into()))
        .await
        .unwrap()
        .binding
        .unwrap();
    assert_eq!(bound.layer(), proto::PluginLayer::Operator);

    let mine = a
        .submit(JobSpec::new("sleep").args(["0.5"]).gpus(1))
        .await
        .unwrap();
    let theirs = b
        .submit(JobSpec::new("sleep").args(["0.5"]).gpus(1))
        .await
        .unwrap();
    wait_final(&a, &mine.id).await;
    wait_final(&b, &theirs.id).await;
    let priced = wait_for(&a, &mine.id, "priced by the plugin", |j| {
        j.leases.iter().all(|l| l.priced_by == "default/tod")
    })
    .await;
    let lease = &priced.leases[0];
    let held_ms = lease.ended_at_unix_ms - lease.reserved_at_unix_ms;
    // The rate card would charge 1000 cents per second; the plugin's rates
    // make half a GPU-second cost well under a cent.
    assert!(held_ms >= 500);
    assert!(lease.cost_minor <= 1, "{lease:?}");
    // The other tenant keeps the rate card.
    let list = b.get(&theirs.id).await.unwrap().leases[0].clone();
    assert_eq!(list.priced_by, "");
    assert!(list.cost_minor >= 500, "{list:?}");
    // Usage and the roll-ups carry the plugin's price.
    let from = lease.reserved_at_unix_ms - 1;
    let to = lease.ended_at_unix_ms + 1;
    let usage = a.usage(from, to, &["tenant"], None).await.unwrap();
    assert_eq!(usage.totals[0].cost_minor, lease.cost_minor);
    let report = admin.check_ledger().await.unwrap();
    assert!(report.clean, "{:?}", report.problems);
}

/// Regression (issue 12, defect 2): the shipped `project_caps` with 30
/// queued jobs was called ~4,100 times a second (every held job's answer
/// made every other one's stale). Held jobs are asked again only when
/// something changes, or after their back-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_jobs_do_not_storm_their_quota_plugin() {
    let dir = tempdir();
    let (_server, a, _b) = two_tenants(dir.path()).await;
    add_and_bind_own(&a, "caps", "project_caps").await;
    let sleeper = || JobSpec::new("sleep").args(["60"]).gpus(1).project("vision");
    let submitted = futures::future::join_all((0..30).map(|_| a.submit(sleeper()))).await;
    let ids: Vec<String> = submitted.into_iter().map(|j| j.unwrap().id).collect();
    // The cap of 4 runs; the rest settle as held.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut settled = 0;
        for id in &ids {
            let j = a.get(id).await.unwrap();
            if j.state() == JobState::Running
                || (j.state() == JobState::Pending && j.reason.contains("held by quota plugin"))
            {
                settled += 1;
            }
        }
        if settled == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the queue did not settle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = || async {
        a.plugins()
            .get("caps", &Scope::Own)
            .await
            .unwrap()
            .stats
            .unwrap()
            .calls
    };
    let before = calls().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = calls().await - before;
    // 26 held jobs: at most a round of re-asks in 3 s (their first back-off
    // is about 5 s), where the storm made thousands.
    assert!(during <= 60, "{during} plugin calls in 3 s while nothing changed");
    for id in &ids {
        let _ = a.cancel(id, "done").await;
    }
}

/// Regression (issue 12, defects 7 and 8): `allot plugin test` panicked
/// ("Cannot start a runtime from within a runtime") on a plugin that writes
/// to standard error, which the server runs fine; and printed a price in
/// minor units as if they were the currency (`280 USD`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_test_runs_a_panicking_plugin_and_prints_money_as_money() {
    let path = |name: &str| components()[name].display().to_string();
    let job = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/jobs/train.toml");
    let job = job.display().to_string();
    let (code, out, err) = run_allot(
        &["plugin", "test", &path("hostile_panics"), "--job", &job],
        None,
        None,
    )
    .await;
    assert_eq!(code, 2, "the plugin failed: {out}{err}");
    assert!(!err.contains("panicked at"), "allot itself panicked: {err}");
    assert!(
        out.contains("failed (trap)") && out.contains("hostile plugin panicked on job \"train-llama-8b\""),
        "the plugin's panic message is shown: {out}"
    );
    // 09:00 UTC is peak time for time_of_day: 1.25 × the list price.
    let (code, out, err) = run_allot(
        &[
            "plugin",
            "test",
            &path("time_of_day"),
            "--job",
            &job,
            "--at",
            "2026-11-17T09:00Z",
        ],
        None,
        None,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("list price 4.00 USD"), "{out}");
    assert!(out.contains("price: 5.00 USD (500 minor units)"), "{out}");
    let (code, out, _) = run_allot(
        &[
            "--json",
            "plugin",
            "test",
            &path("time_of_day"),
            "--job",
            &job,
            "--at",
            "2026-11-17T09:00Z",
        ],
        None,
        None,
    )
    .await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["minor"].as_u64(), v["price"].as_str(), v["currency"].as_str()),
        (Some(500), Some("5.00"), Some("USD"))
    );
}

/// Regression (issue 12, defect 9): the docs showed Python for the
/// admission world only. The Python examples of all three worlds, built as
/// the docs say (`plugins/build.sh --python`), answer through the server's
/// sandbox as their own unit tests say: a reject, a deny, a price and a
/// pricing error (raised as `Err`), each with its log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_plugins_of_every_world_answer_through_the_sandbox() {
    let py = python_components();
    let path = |name: &str| py[name].display().to_string();
    let dir = tempdir();
    let job = |file: &str, text: &str| {
        let p = dir.path().join(file);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let nine_gpus = job(
        "nine.toml",
        "name = \"wide\"\ncommand = \"true\"\n[resources]\ngpus = 9\n[tags]\nteam = \"nlp\"\n",
    );
    let intern = job(
        "intern.toml",
        "name = \"big\"\ncommand = \"true\"\nproject = \"interns\"\n[resources]\ngpus = 2\n",
    );
    let discount = job(
        "discount.toml",
        "name = \"train\"\ncommand = \"true\"\n[resources]\ngpus = 1\n[tags]\ndiscount = \"10\"\n",
    );
    let malformed = job(
        "malformed.toml",
        "name = \"train\"\ncommand = \"true\"\n[resources]\ngpus = 1\n[tags]\ndiscount = \"ten\"\n",
    );
    let (admission, quota, pricing) = (path("gpu_limit_py"), path("gpu_cap_py"), path("discount_py"));
    // 2026-11-21 is a Saturday: half the list price, then 10 % off.
    let saturday = "2026-11-21T09:00Z";
    let test = |plugin: &str, job: &str| {
        let args: Vec<String> = ["--json", "plugin", "test", plugin, "--job", job, "--at", saturday]
            .map(String::from)
            .into();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out, err) = run_allot(&args, None, None).await;
            let v: serde_json::Value =
                serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
            (code, v)
        }
    };
    let (a, q, p, e) = tokio::join!(
        test(&admission, &nine_gpus),
        test(&quota, &intern),
        test(&pricing, &discount),
        test(&pricing, &malformed),
    );
    assert_eq!((a.0, a.1["decision"].as_str()), (1, Some("reject")), "{}", a.1);
    assert_eq!(
        a.1["message"],
        "job asks for 9 GPUs; at most 8 per job (split the work into several jobs)"
    );
    assert_eq!((q.0, q.1["decision"].as_str()), (1, Some("deny")), "{}", q.1);
    assert_eq!(
        q.1["reason"],
        "the job asks for 2 GPUs; project interns may hold at most 1"
    );
    assert_eq!(q.1["logs"][0]["level"], "info", "{}", q.1);
    assert_eq!((p.0, p.1["decision"].as_str()), (0, Some("price")), "{}", p.1);
    // The dev rate card's H100 hour is 4.00 USD: 400 × 1/2 × 90 % = 180.
    assert_eq!(
        (p.1["list_price_minor"].as_u64(), p.1["minor"].as_u64()),
        (Some(400), Some(180)),
        "{}",
        p.1
    );
    assert_eq!((e.0, e.1["decision"].as_str()), (2, Some("error")), "{}", e.1);
    assert_eq!(
        e.1["error"],
        "discount tag 'ten': expected a whole percent, 0 to 100"
    );
    assert_eq!(e.1["logs"][0]["level"], "warn", "{}", e.1);
}

/// Regression (issue 12, defect 1): a tenant bound its own pricing plugin
/// that answers 0, so its GPU time cost nothing and its spend budget never
/// tripped while a neighbour with the same work was held as exhausted. A
/// tenant's own price is showback, recorded beside the bill; the bill and
/// the budget use the operator's price.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_pricing_plugin_cannot_make_its_gpu_time_free() {
    let dir = tempdir();
    // 10 USD per H100-second: a second of work spends a 5 USD budget.
    let config = dir.path().join("allot.toml");
    std::fs::write(
        &config,
        "[pricing]\ncurrency = \"USD\"\n[pricing.models]\n\"H100-80GB\" = \"36000.00\"\n",
    )
    .unwrap();
    let (server, a, b) = two_tenants_with(dir.path(), &["--config", config.to_str().unwrap()]).await;
    let admin = server.admin().await;
    add_and_bind_own(&a, "free", "hostile_price_from_tag").await;
    // A tenant cannot bind in the operator's layer.
    let err = a
        .plugins()
        .bind_in("free", None, &Scope::Own, proto::PluginLayer::Operator)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    // Both tenants get the same budget and do the same work.
    for t in ["default", "team-b"] {
        admin.set_budget(t, "5.00", "").await.unwrap();
    }
    let work = || {
        JobSpec::new("sleep")
            .args(["1"])
            .gpus(1)
            .gpu_model("H100-80GB")
            .tag("price", "0")
    };
    let mine = a.submit(work()).await.unwrap();
    let theirs = b.submit(work()).await.unwrap();
    wait_final(&a, &mine.id).await;
    wait_final(&b, &theirs.id).await;
    let mine = wait_for(&a, &mine.id, "priced", |j| {
        j.leases
            .iter()
            .all(|l| l.priced_by != "pending" && !l.showback_by.is_empty())
    })
    .await;
    let lease = &mine.leases[0];
    let list = b.get(&theirs.id).await.unwrap().leases[0].clone();
    // The bill is the rate card's; the tenant's 0 is only its showback.
    assert_eq!(lease.priced_by, "", "{lease:?}");
    assert!(lease.cost_minor >= 500, "{lease:?}");
    assert_eq!(
        (lease.showback_by.as_str(), lease.showback_cost_minor),
        ("default/free", 0)
    );
    assert_eq!(lease.showback_cost_micros, "0");
    assert!(list.showback_by.is_empty());
    // Both budgets tripped, and both tenants' next jobs are held.
    for (client, tenant) in [(&a, "default"), (&b, "team-b")] {
        let budget = &client.budgets(None).await.unwrap()[0];
        assert!(budget.exhausted, "{tenant}: {budget:?}");
        let next = client
            .submit(JobSpec::new("true").gpus(1).tag("price", "0"))
            .await
            .unwrap();
        let held = wait_for(client, &next.id, "held by the budget", |j| {
            j.reason.contains("budget")
        })
        .await;
        assert!(
            held.reason.starts_with(&format!("held: tenant {tenant} spent")),
            "{}",
            held.reason
        );
        client.cancel(&next.id, "done").await.unwrap();
    }
    // `allot leases` shows who priced it and the showback beside the cost.
    let (code, out, err) = run_allot(&["leases"], Some(&server.addr), Some(&server.token)).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("PRICED-BY") && out.contains("SHOWBACK"), "{out}");
    assert!(
        out.contains("rate card") && out.contains("0.00 USD (default/free)"),
        "{out}"
    );
    let (code, out, _) = run_allot(&["--json", "leases"], Some(&server.addr), Some(&server.token)).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = &v.as_array().unwrap()[0];
    assert_eq!(
        (row["priced_by"].as_str(), row["showback_by"].as_str()),
        (Some(""), Some("default/free"))
    );
    // The export has both, per hour row.
    const HOUR: i64 = 3_600_000;
    let mut json = Vec::new();
    a.export_usage(
        proto::ExportUsageRequest {
            from_unix_ms: lease.reserved_at_unix_ms / HOUR * HOUR,
            to_unix_ms: (lease.ended_at_unix_ms / HOUR + 1) * HOUR,
            tenant: String::new(),
            format: proto::ExportFormat::Json as i32,
        },
        &mut json,
    )
    .await
    .unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
    assert!(!rows.is_empty());
    for r in &rows {
        assert_eq!(
            (r["priced_by"].as_str(), r["showback_by"].as_str()),
            (None, Some("default/free")),
            "the rate card bills: {r}"
        );
        assert_eq!(r["showback_cost_micros"].as_str(), Some("0"), "{r}");
        assert!(
            r["cost_micros"].as_str().unwrap().parse::<i128>().unwrap() > 0,
            "{r}"
        );
    }
    let report = admin.check_ledger().await.unwrap();
    assert!(report.clean, "{:?}", report.problems);
}

/// Regression (issue 12, defect 1): a tenant's own admission plugin used to
/// replace the operator's; now the operator's judges what the tenant's
/// accepted, and a user cannot set the server's `allot.` tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_admission_plugin_cannot_escape_the_operators() {
    let dir = tempdir();
    let (server, a, _b) = two_tenants(dir.path()).await;
    let admin = server.admin().await;
    admin
        .plugins()
        .add("cost-center", wasm("require_cost_center"), &Scope::Global)
        .await
        .unwrap();
    admin
        .plugins()
        .bind("cost-center", None, &Scope::Global)
        .await
        .unwrap();
    // The tenant's own admission plugin rejects nothing it is given... but
    // the operator's still rejects a job without a cost-center.
    add_and_bind_own(&a, "mine", "require_cost_center").await;
    let err = a.submit(JobSpec::new("true")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let ok = a
        .submit(JobSpec::new("true").tag("cost-center", "cc-1"))
        .await
        .unwrap();
    assert!(!ok.id.is_empty());
    // Both were asked about the accepted job.
    let global = admin.plugins().get("cost-center", &Scope::Global).await.unwrap();
    assert_eq!(global.stats.unwrap().calls, 1, "the tenant's rejected the first");
    // Tags of the reserved prefix are the server's.
    let err = a
        .submit(
            JobSpec::new("true")
                .tag("cost-center", "cc-1")
                .tag("allot.admission/modified-by", "global/x"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("reserved prefix \"allot.\""),
        "{}",
        err.message()
    );
}

/// Regression (issue 12, defect 8): what a user needs to see. A 33 MiB
/// upload got "h2 protocol error"; `plugin show` had no latency and no
/// failures by kind; an unreadable answer was recorded as `instantiate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_show_has_latency_and_failures_by_kind_and_a_big_upload_gets_the_size() {
    let dir = tempdir();
    let (server, a, _b) = two_tenants(dir.path()).await;
    let big = vec![0u8; 33 << 20];
    let err = a
        .plugins()
        .add("big", big.clone(), &Scope::Own)
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.field()), (Code::InvalidArgument, Some("wasm")));
    assert!(
        err.message()
            .contains("the component is 34603008 bytes; a plugin may be at most 33554432 bytes (32 MiB)"),
        "{}",
        err.message()
    );
    let file = dir.path().join("big.wasm");
    std::fs::write(&file, &big).unwrap();
    let (code, _, err) = run_allot(
        &["plugin", "add", file.to_str().unwrap()],
        Some(&server.addr),
        Some(&server.token),
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("at most 33554432 bytes (32 MiB)") && !err.contains("h2 protocol"),
        "{err}"
    );

    add_and_bind_own(&a, "garbled", "hostile_bad_utf8").await;
    for _ in 0..3 {
        let err = a.submit(JobSpec::new("true")).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("invalid_result"), "{}", err.message());
    }
    let stats = a
        .plugins()
        .get("garbled", &Scope::Own)
        .await
        .unwrap()
        .stats
        .unwrap();
    assert_eq!(
        stats.failures_by_kind.get("invalid_result"),
        Some(&3),
        "{stats:?}"
    );
    let (p50, p99) = (stats.p50_us.unwrap(), stats.p99_us.unwrap());
    assert!(p50 > 0 && p50 <= p99, "{p50} {p99}");
    let (code, out, err) = run_allot(
        &["plugin", "show", "garbled"],
        Some(&server.addr),
        Some(&server.token),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("  latency:     p50 "), "{out}");
    assert!(out.contains("  failures:    3 invalid_result"), "{out}");
    // list and show agree on the binding.
    let (_, list, _) = run_allot(&["plugin", "list"], Some(&server.addr), Some(&server.token)).await;
    assert!(
        list.contains("admission for tenant default (tenant layer) -> garbled"),
        "{list}"
    );
    assert!(
        out.contains("admission for tenant default (tenant layer) -> garbled"),
        "{out}"
    );
}
