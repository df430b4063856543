//! The gRPC adapters called directly, on a real engine and ledger.

use std::sync::Arc;
use std::time::Duration;

use allot_proto::v1 as pb;
use futures::StreamExt;
use pb::job_service_server::JobService;

use super::*;
use crate::clock::ManualClock;
use crate::domain::UnixMillis;
use crate::engine::EngineConfig;

struct World {
    api: Api,
    caller: Caller,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let clock = ManualClock::new(UnixMillis(1_000_000));
    let (engine, _task) =
        crate::engine::start(ledger.clone(), Arc::new(clock.clone()), EngineConfig::default()).unwrap();
    let auth = Auth::load(ledger).unwrap();
    let tenant: TenantName = "a".parse().unwrap();
    auth.create_tenant(tenant.clone(), clock.now()).await.unwrap();
    let (_, rec) = auth
        .issue(Role::Tenant(tenant), String::new(), clock.now())
        .await
        .unwrap();
    let caller = Caller {
        role: rec.role,
        token_id: rec.id,
        node: None,
    };
    World {
        api: Api::new(engine, auth, Arc::new(clock), crate::domain::Millis::from_secs(5)),
        caller,
        _dir: dir,
    }
}

fn request<T>(caller: &Caller, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.extensions_mut().insert(caller.clone());
    r
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Regression (issue 11, defect 2): a watch whose client had gone kept its
/// task and subscription until the job next changed, which for a pending
/// job may be never. It ends when the client does.
#[tokio::test]
async fn a_watch_ends_when_its_client_goes_away() {
    let w = world().await;
    let spec = pb::JobSpec {
        command: "true".into(),
        resources: Some(pb::Resources {
            gpu: Some(pb::resources::Gpu::Gpus(8)),
            ..Default::default()
        }),
        ..Default::default()
    };
    // No node at all: the job stays pending.
    let job = w
        .api
        .submit_job(request(
            &w.caller,
            pb::SubmitJobRequest {
                spec: Some(spec),
                request_id: String::new(),
                hold: false,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let mut stream = w
        .api
        .watch_job(request(&w.caller, pb::WatchJobRequest { id: job.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.job.unwrap().id, job.id);
    assert_eq!(w.api.engine.watchers(), 1);
    drop(stream);
    until("the watch's subscription is dropped", || {
        w.api.engine.watchers() == 0
    })
    .await;
}
