//! Queues in the engine: what a submission is held to, the admin's changes
//! and that they survive a restart.

use super::*;
use crate::domain::{QueueDef, QueueSource, validate::Violation};

fn queue(name: &str) -> QueueDef {
    QueueDef {
        name: name.parse().unwrap(),
        default: false,
        source: QueueSource::Api,
        ..QueueDef::builtin()
    }
}

fn named(mut s: JobSpec, q: &str) -> JobSpec {
    s.queue = Some(q.parse().unwrap());
    s
}

async fn jobs_stored(h: &Harness) -> usize {
    h.engine.ledger().active_jobs().unwrap().len()
}

#[tokio::test]
async fn a_submission_is_held_to_its_queue_and_a_refused_one_stores_nothing() {
    let h = harness().await;
    let mut short = queue("short");
    short.max_time_limit = Some(Millis::from_secs(3600));
    short.default_time_limit = Some(Millis::from_secs(600));
    short.tenants = vec!["t1".parse().unwrap()];
    short.per_tenant.pending_jobs = Some(1);
    h.engine.create_queue(short).await.unwrap();

    let unknown = h.engine.submit(named(spec(1), "nope")).await.unwrap_err();
    assert!(
        matches!(&unknown, EngineError::Invalid { field, message } if field == "spec.queue" && message.contains("nope")),
        "{unknown:?}"
    );
    let mut other = named(spec(1), "short");
    other.tenant = "t2".parse().unwrap();
    let denied = h.engine.submit(other).await.unwrap_err();
    assert!(
        matches!(&denied, EngineError::PermissionDenied(m) if m.contains("t2") && m.contains("short")),
        "{denied:?}"
    );
    let mut long = named(spec(1), "short");
    long.time_limit = Some(Millis::from_secs(7200));
    let too_long = h.engine.submit(long).await.unwrap_err();
    assert!(
        matches!(&too_long, EngineError::Invalid { field, .. } if field == "spec.time_limit_ms"),
        "{too_long:?}"
    );
    assert_eq!(jobs_stored(&h).await, 0, "nothing refused is stored");

    // No node: the job waits, with the queue's default time limit.
    let job = h.engine.submit(named(spec(1), "short")).await.unwrap();
    assert_eq!(job.spec.time_limit, Some(Millis::from_secs(600)));
    assert_eq!(job.spec.queue.as_ref().unwrap().as_str(), "short");
    let full = h.engine.submit(named(spec(1), "short")).await.unwrap_err();
    assert!(
        matches!(&full, EngineError::ResourceExhausted(m) if m.contains("1 pending jobs of at most 1")),
        "{full:?}"
    );
    // A job that names no queue is put in the default one, by name.
    let plain = h.engine.submit(spec(1)).await.unwrap();
    assert_eq!(plain.spec.queue.as_ref().unwrap().as_str(), "default");
    assert_eq!(plain.spec.time_limit, None, "the built-in queue sets no limit");
    assert_eq!(jobs_stored(&h).await, 2);

    // A queue holding jobs is not deleted; the default never is.
    let busy = h.engine.delete_queue("short".parse().unwrap()).await.unwrap_err();
    assert!(
        matches!(&busy, EngineError::FailedPrecondition(m) if m.contains("1 pending")),
        "{busy:?}"
    );
    h.engine.cancel(job.id, String::new(), false).await.unwrap();
    h.engine.delete_queue("short".parse().unwrap()).await.unwrap();
    let views = h.engine.list_queues().await.unwrap();
    assert_eq!(
        views.iter().map(|v| v.def.name.as_str()).collect::<Vec<_>>(),
        ["default"]
    );
    assert_eq!(views[0].jobs_pending, 1);
}

#[tokio::test]
async fn queues_made_over_the_api_survive_a_restart_and_their_jobs_keep_their_tier() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let mut gpu = queue("gpu");
    gpu.default = true;
    h.engine.create_queue(gpu).await.unwrap();
    let mut views = h.engine.list_queues().await.unwrap();
    assert_eq!(views.len(), 1, "marking a queue default takes the built-in away");
    let v = views.remove(0);
    assert_eq!((v.nodes, v.gpus_total, v.gpus_idle, v.gpus_in_use), (1, 2, 2, 0));
    // An update that names a bad value changes nothing.
    let bad: QueueUpdate = Box::new(|q: &QueueDef| {
        let mut pb = q.to_pb();
        pb.max_time_limit_ms = Some(-1);
        crate::domain::queue::updated(q, &pb, &["max_time_limit_ms".into()])
    });
    let e = h
        .engine
        .update_queue("gpu".parse().unwrap(), bad)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, EngineError::Invalid { field, .. } if field == "queue.max_time_limit_ms"),
        "{e:?}"
    );
    let tier: QueueUpdate = Box::new(|q: &QueueDef| -> Result<QueueDef, Violation> {
        let mut q = q.clone();
        q.priority_tier = 3;
        Ok(q)
    });
    h.engine.update_queue("gpu".parse().unwrap(), tier).await.unwrap();
    let running = h.engine.submit(spec(2)).await.unwrap();
    agent.expect_launch().await;
    let v = &h.engine.list_queues().await.unwrap()[0];
    assert_eq!((v.gpus_in_use, v.gpus_idle, v.jobs_running), (2, 0, 1));
    assert_eq!(running.spec.queue.as_ref().unwrap().as_str(), "gpu");

    let Harness { engine, clock, dir } = h;
    let ledger = engine.ledger().clone();
    drop(engine);
    let (engine, _task) = start(ledger, Arc::new(clock.clone()), config()).unwrap();
    let h = Harness { engine, clock, dir };
    let views = h.engine.list_queues().await.unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].def.name.as_str(), "gpu");
    assert!(views[0].def.default);
    assert_eq!(views[0].def.priority_tier, 3);
    assert_eq!(
        views[0].jobs_running, 1,
        "the running job is counted in its queue"
    );
    let next = h.engine.submit(spec(1)).await.unwrap();
    assert_eq!(
        next.spec.queue.as_ref().unwrap().as_str(),
        "gpu",
        "the stored default"
    );
}

#[tokio::test]
async fn a_qos_adds_its_tier_and_an_unknown_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UnixMillis(1_000_000));
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut cfg = config();
    cfg.qos.insert("high".parse().unwrap(), 5);
    let (engine, _task) = start(ledger, Arc::new(clock.clone()), cfg).unwrap();
    let h = Harness { engine, clock, dir };
    let with = |q: &str| JobSpec {
        qos: Some(q.parse().unwrap()),
        ..spec(2)
    };
    let e = h.engine.submit(with("gold")).await.unwrap_err();
    assert!(
        matches!(&e, EngineError::Invalid { field, message }
            if field == "spec.qos" && message.contains("gold") && message.contains("high, normal")),
        "{e:?}"
    );
    assert_eq!(jobs_stored(&h).await, 0);
    // No node yet: an older job at `normal`, then one at `high`; a node
    // with room for one of them: the `high` one goes first.
    let older = h.engine.submit(with("normal")).await.unwrap();
    let urgent = h.engine.submit(with("high")).await.unwrap();
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    assert_eq!(agent.next_launch().await.job, urgent.id);
    let waits = settled(&h, older.id, |j| j.state == JobState::Pending).await;
    assert_eq!(waits.spec.qos.as_ref().map(|q| q.as_str()), Some("normal"));
}

#[tokio::test]
async fn a_node_list_and_exclusions_choose_where_a_job_runs() {
    let h = harness().await;
    let mut a1 = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let mut a2 = FakeAgent::connect(&h, 2, "n2", vec![], vec![]).await;
    let on = |nodes: &[&str], exclude: &[&str]| {
        let mut s = spec(1);
        s.constraints.nodes = nodes.iter().map(|n| n.parse().unwrap()).collect();
        s.constraints.exclude_nodes = exclude.iter().map(|n| n.parse().unwrap()).collect();
        s
    };
    let not_n1 = h.engine.submit(on(&[], &["n1"])).await.unwrap();
    assert_eq!(a2.next_launch().await.job, not_n1.id);
    let only_n1 = h.engine.submit(on(&["n1"], &[])).await.unwrap();
    assert_eq!(a1.next_launch().await.job, only_n1.id);
    let nowhere = h.engine.submit(on(&["n9"], &[])).await.unwrap();
    let w = settled(&h, nowhere.id, |j| j.state == JobState::Pending).await;
    assert!(w.reason.contains("not in the job's node list"), "{}", w.reason);
}
