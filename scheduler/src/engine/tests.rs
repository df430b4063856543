//! The engine driven directly: a real ledger in a temp dir, a manual clock,
//! and a scripted agent on the order channel.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::accounting::usage::UsageQuery;
use crate::clock::ManualClock;
use crate::domain::{
    EndReason, GpuRequest, JobState, LeaseId, LeaseState, MiB, MilliCpu, Millis, ProjectName, Resources,
    UnixMillis,
};
use crate::placement::{Gpu, NodeInventory};

const GRACE: Millis = Millis::from_secs(60);

struct Harness {
    engine: EngineHandle,
    clock: ManualClock,
    dir: tempfile::TempDir,
}

fn config() -> EngineConfig {
    EngineConfig {
        heartbeat_interval: Millis::from_secs(5),
        heartbeat_timeout: Millis::from_secs(3600),
        node_lost_grace: GRACE,
        tick: Millis(5),
        ..EngineConfig::default()
    }
}

async fn start_on(dir: tempfile::TempDir, clock: ManualClock) -> Harness {
    let ledger = Ledger::open(dir.path()).unwrap();
    let (engine, _task) = start(ledger, Arc::new(clock.clone()), config()).unwrap();
    Harness { engine, clock, dir }
}

async fn harness() -> Harness {
    start_on(
        tempfile::tempdir().unwrap(),
        ManualClock::new(UnixMillis(1_000_000)),
    )
    .await
}

fn inventory(node: &str, gpus: u32) -> NodeInventory {
    NodeInventory {
        name: node.parse().unwrap(),
        labels: BTreeMap::new(),
        cpu: MilliCpu(16_000),
        memory: MiB(64 * 1024),
        gpus: (0..gpus)
            .map(|i| Gpu::whole(i, format!("GPU-{node}-{i}"), "H100-80GB", MiB(80 * 1024)))
            .collect(),
    }
}

struct FakeAgent {
    conn: u64,
    node: NodeName,
    orders: mpsc::UnboundedReceiver<AgentOrder>,
}

impl FakeAgent {
    async fn connect(
        h: &Harness,
        conn: u64,
        node: &str,
        running: Vec<(JobId, u32)>,
        exited: Vec<JobExit>,
    ) -> Self {
        let running = running
            .into_iter()
            .map(|(job, attempt)| RunningPart {
                job,
                attempt,
                running_for: None,
            })
            .collect();
        Self::register(h, conn, node, running, exited).await
    }

    async fn register(
        h: &Harness,
        conn: u64,
        node: &str,
        running: Vec<RunningPart>,
        exited: Vec<JobExit>,
    ) -> Self {
        let (tx, orders) = mpsc::unbounded_channel();
        let reg = Registration {
            inventory: inventory(node, 2),
            running,
            exited,
            discovery: "declared".into(),
            agent_version: "test".into(),
        };
        h.engine.agent_connected(conn, reg, tx).await.unwrap();
        FakeAgent {
            conn,
            node: node.parse().unwrap(),
            orders,
        }
    }

    /// The next order, acknowledgements of heartbeats aside.
    async fn next(&mut self) -> AgentOrder {
        loop {
            let order = tokio::time::timeout(Duration::from_secs(10), self.orders.recv())
                .await
                .expect("an order in time")
                .expect("channel open");
            if !matches!(order, AgentOrder::HeartbeatAck { .. }) {
                return order;
            }
        }
    }

    async fn expect_launch(&mut self) -> LaunchOrder {
        match self.next().await {
            AgentOrder::Launch(l) => *l,
            other => panic!("expected a launch, got {other:?}"),
        }
    }

    /// The next launch, acknowledgements of exits passed over.
    async fn next_launch(&mut self) -> LaunchOrder {
        loop {
            match self.next().await {
                AgentOrder::Launch(l) => return *l,
                AgentOrder::AckExit { .. } => {}
                other => panic!("expected a launch, got {other:?}"),
            }
        }
    }

    async fn send(&self, h: &Harness, event: AgentEvent) {
        h.engine.agent_event(self.conn, self.node.clone(), event).await;
    }
}

fn spec(gpus: u32) -> JobSpec {
    JobSpec {
        name: "t".into(),
        command: "true".into(),
        args: vec![],
        env: BTreeMap::new(),
        working_dir: None,
        resources: Resources {
            gpu: GpuRequest::Whole(NonZeroU32::new(gpus).unwrap()),
            cpu: MilliCpu(1000),
            memory: MiB(1024),
        },
        priority: 0,
        preemptible: false,
        time_limit: None,
        grace_period: Millis::from_secs(1),
        tenant: "t1".parse().unwrap(),
        project: ProjectName::default_project(),
        tags: BTreeMap::new(),
        constraints: Default::default(),
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
    }
}

async fn job(h: &Harness, id: JobId) -> Job {
    h.engine.ledger().get_job(&id).unwrap().unwrap()
}

/// Runs the engine until what the test sent is handled, passed over and
/// told (no sleeps, no polling), and returns the job, which must then
/// satisfy `f`.
async fn settled(h: &Harness, id: JobId, f: impl Fn(&Job) -> bool) -> Job {
    h.engine.settle().await;
    let j = job(h, id).await;
    assert!(
        f(&j),
        "job {id} is not as expected once the engine is quiet: {j:?}"
    );
    j
}

/// The exit of a part stopped on the controller's order (SIGTERM).
fn stopped(job: JobId, attempt: u32) -> JobExit {
    JobExit {
        outcome: ExitOutcome::Stopped {
            exit_code: None,
            signal: Some(15),
        },
        ..exit(job, attempt, 0)
    }
}

fn exit(job: JobId, attempt: u32, code: i32) -> JobExit {
    JobExit {
        job,
        attempt,
        outcome: ExitOutcome::Exited(code),
        runtime: None,
        ended_ago: None,
    }
}

#[tokio::test]
async fn the_lease_is_written_before_the_agent_hears_of_the_job() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let j = h.engine.submit(spec(2)).await.unwrap();
    let launch = agent.expect_launch().await;
    assert_eq!(launch.job, j.id);
    assert_eq!(launch.devices.len(), 2);
    // By the time the order arrives, both leases are in the ledger as reserved.
    for id in &launch.lease_ids {
        let lease = h
            .engine
            .ledger()
            .get_lease(&id.parse::<LeaseId>().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(lease.state, LeaseState::Reserved);
        assert_eq!(lease.job_id, j.id);
    }
    assert_eq!(job(&h, j.id).await.state, JobState::Starting);
}

#[tokio::test]
async fn a_resent_exit_report_changes_nothing() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let j = h.engine.submit(spec(1)).await.unwrap();
    agent.expect_launch().await;
    h.clock.advance(Millis(100));
    agent
        .send(
            &h,
            AgentEvent::Started {
                job: j.id,
                attempt: 1,
                pid: 42,
            },
        )
        .await;
    settled(&h, j.id, |j| j.state == JobState::Running).await;
    h.clock.advance(Millis(2500));
    agent.send(&h, AgentEvent::Exited(exit(j.id, 1, 0))).await;
    assert!(matches!(
        agent.next().await,
        AgentOrder::AckExit { attempt: 1, .. }
    ));
    let done = settled(&h, j.id, |j| j.state == JobState::Succeeded).await;
    let leases = h.engine.ledger().leases_of(&j.id).unwrap();
    assert_eq!(leases[0].started_at, Some(UnixMillis(1_000_100)));
    assert_eq!(leases[0].ended_at, Some(UnixMillis(1_002_600)));
    assert_eq!(leases[0].end_reason, Some(EndReason::Succeeded));

    // The same report again, as after a reconnect: acknowledged, nothing changes.
    h.clock.advance(Millis(10_000));
    agent.send(&h, AgentEvent::Exited(exit(j.id, 1, 1))).await;
    assert!(matches!(
        agent.next().await,
        AgentOrder::AckExit { attempt: 1, .. }
    ));
    assert_eq!(job(&h, j.id).await, done);
    assert_eq!(h.engine.ledger().leases_of(&j.id).unwrap(), leases);
    // And on a new session's registration.
    drop(agent);
    h.engine.agent_disconnected(1, "n1".parse().unwrap()).await;
    let mut again = FakeAgent::connect(&h, 2, "n1", vec![], vec![exit(j.id, 1, 1)]).await;
    assert!(matches!(
        again.next().await,
        AgentOrder::AckExit { attempt: 1, .. }
    ));
    assert_eq!(job(&h, j.id).await, done);
}

#[tokio::test]
async fn a_node_that_stays_away_loses_its_jobs_after_the_grace_period() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let j = h.engine.submit(spec(1)).await.unwrap();
    agent.expect_launch().await;
    agent
        .send(
            &h,
            AgentEvent::Started {
                job: j.id,
                attempt: 1,
                pid: 42,
            },
        )
        .await;
    settled(&h, j.id, |j| j.state == JobState::Running).await;
    h.clock.advance(Millis(1000));
    agent
        .send(
            &h,
            AgentEvent::Heartbeat {
                seq: 0,
                utilization: BTreeMap::new(),
                running: vec![(j.id, 1)],
            },
        )
        .await;
    let last_heartbeat = h.clock.now();
    h.engine.settle().await;
    h.engine.agent_disconnected(agent.conn, agent.node.clone()).await;
    // Commands are handled in order: once this answers, the node is down.
    let nodes = h.engine.list_nodes().await.unwrap();
    assert_eq!(nodes[0].node.status, crate::placement::NodeStatus::Down);

    // Within the grace period nothing happens.
    h.clock.advance(Millis(GRACE.0 - 1000));
    h.engine.settle().await;
    assert_eq!(job(&h, j.id).await.state, JobState::Running);
    // After it, the job is lost and its lease closed at the last heartbeat.
    h.clock.advance(Millis(2000));
    let lost = settled(&h, j.id, |j| j.state == JobState::NodeLost).await;
    assert!(lost.reason.contains("did not come back"), "{}", lost.reason);
    let lease = &h.engine.ledger().leases_of(&j.id).unwrap()[0];
    assert_eq!(lease.end_reason, Some(EndReason::NodeLost));
    assert_eq!(lease.ended_at, Some(last_heartbeat));
}

#[tokio::test]
async fn a_reconnecting_agent_keeps_its_running_jobs_and_their_devices() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let j = h.engine.submit(spec(2)).await.unwrap();
    agent.expect_launch().await;
    agent
        .send(
            &h,
            AgentEvent::Started {
                job: j.id,
                attempt: 1,
                pid: 42,
            },
        )
        .await;
    settled(&h, j.id, |j| j.state == JobState::Running).await;
    h.engine.agent_disconnected(agent.conn, agent.node.clone()).await;
    h.engine.list_nodes().await.unwrap();
    h.clock.advance(Millis(5000));
    let mut agent = FakeAgent::connect(&h, 2, "n1", vec![(j.id, 1)], vec![]).await;
    // The node's two GPUs are still held: a new job waits.
    let other = h.engine.submit(spec(1)).await.unwrap();
    let pending = settled(&h, other.id, |j| j.reason.contains("no node")).await;
    assert_eq!(pending.state, JobState::Pending);
    // Well past the grace period the job still runs.
    h.clock.advance(Millis(GRACE.0 * 2));
    h.engine.settle().await;
    assert_eq!(job(&h, j.id).await.state, JobState::Running);
    // When it ends, the waiting job gets the GPU.
    agent.send(&h, AgentEvent::Exited(exit(j.id, 1, 0))).await;
    assert!(matches!(agent.next().await, AgentOrder::AckExit { .. }));
    assert_eq!(agent.expect_launch().await.job, other.id);
}

#[tokio::test]
async fn a_job_whose_node_restarted_before_it_started_is_requeued() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let j = h.engine.submit(spec(1)).await.unwrap();
    let first = agent.expect_launch().await;
    assert_eq!(first.attempt, 1);
    // The agent comes back without the job: the launch never took.
    drop(agent);
    h.engine.agent_disconnected(1, "n1".parse().unwrap()).await;
    let mut agent = FakeAgent::connect(&h, 2, "n1", vec![], vec![]).await;
    let second = agent.expect_launch().await;
    assert_eq!((second.job, second.attempt), (j.id, 2));
    let leases = h.engine.ledger().leases_of(&j.id).unwrap();
    assert_eq!(leases.len(), 2);
    assert_eq!(leases[0].end_reason, Some(EndReason::ReleasedUnstarted));
    assert_eq!(leases[1].state, LeaseState::Reserved);
    // A late report from the first attempt changes nothing.
    agent.send(&h, AgentEvent::Exited(exit(j.id, 1, 0))).await;
    assert!(matches!(
        agent.next().await,
        AgentOrder::AckExit { attempt: 1, .. }
    ));
    assert_eq!(job(&h, j.id).await.state, JobState::Starting);
}

#[tokio::test]
async fn a_restarted_engine_reconciles_running_jobs_with_their_agent() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let a = h.engine.submit(spec(1)).await.unwrap();
    let b = h.engine.submit(spec(1)).await.unwrap();
    for _ in 0..2 {
        agent.expect_launch().await;
    }
    for id in [a.id, b.id] {
        agent
            .send(
                &h,
                AgentEvent::Started {
                    job: id,
                    attempt: 1,
                    pid: 1,
                },
            )
            .await;
        settled(&h, id, |j| j.state == JobState::Running).await;
    }
    // A new engine on the same ledger (the old one's task keeps its handle;
    // sled allows one opener per process, so reuse the files by cloning the db).
    let Harness { engine, clock, dir } = h;
    let ledger = engine.ledger().clone();
    drop(engine);
    let (engine, _task) = start(ledger, Arc::new(clock.clone()), config()).unwrap();
    let h = Harness { engine, clock, dir };
    // Only `a` still runs on the node; `b` died with the agent.
    let _agent = FakeAgent::connect(&h, 3, "n1", vec![(a.id, 1)], vec![]).await;
    let lost = settled(&h, b.id, |j| j.state.is_final()).await;
    assert_eq!(lost.state, JobState::NodeLost);
    h.engine.settle().await;
    assert_eq!(job(&h, a.id).await.state, JobState::Running);
}

#[tokio::test]
async fn cancelling_a_placed_job_orders_a_stop_with_its_grace() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let j = h.engine.submit(spec(1)).await.unwrap();
    agent.expect_launch().await;
    let after = h.engine.cancel(j.id, "stop it".into(), false).await.unwrap();
    assert!(after.cancel_requested);
    assert_eq!(after.state, JobState::Starting);
    match agent.next().await {
        AgentOrder::Stop {
            job, grace, reason, ..
        } => {
            assert_eq!(
                (job, grace, reason),
                (j.id, Millis::from_secs(1), StopReason::Cancelled)
            );
        }
        other => panic!("expected a stop, got {other:?}"),
    }
    agent
        .send(
            &h,
            AgentEvent::Exited(JobExit {
                job: j.id,
                attempt: 1,
                outcome: ExitOutcome::Stopped {
                    exit_code: None,
                    signal: Some(15),
                },
                runtime: None,
                ended_ago: None,
            }),
        )
        .await;
    let done = settled(&h, j.id, |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::Cancelled);
    assert_eq!(done.signal, Some(15));
    // A never-started lease is released, not billed as cancelled work.
    let lease = &h.engine.ledger().leases_of(&j.id).unwrap()[0];
    assert_eq!(lease.end_reason, Some(EndReason::ReleasedUnstarted));
    assert_eq!(
        h.engine.cancel(j.id, String::new(), false).await.unwrap_err(),
        EngineError::FailedPrecondition(format!("job {} has already ended (CANCELLED)", j.id))
    );
}

/// Regression (issue 11, defect 6): a stop never waits longer than the
/// server's grace limit, even for a job stored with a longer grace, and a
/// forced cancel kills at once, also a job already being stopped.
#[tokio::test]
async fn stops_wait_at_most_the_grace_limit_and_a_forced_cancel_kills_now() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let mut s = spec(1);
    s.grace_period = Millis::from_secs(10 * 86_400);
    let j = h.engine.submit(s).await.unwrap();
    agent.expect_launch().await;
    let stop = |order| match order {
        AgentOrder::Stop {
            job, grace, reason, ..
        } => (job, grace, reason),
        other => panic!("expected a stop, got {other:?}"),
    };
    h.engine.cancel(j.id, String::new(), false).await.unwrap();
    assert_eq!(
        stop(agent.next().await),
        (j.id, config().max_grace, StopReason::Cancelled)
    );
    // It ignores SIGTERM: its owner kills it.
    let after = h.engine.cancel(j.id, "stuck".into(), true).await.unwrap();
    assert!(after.cancel_forced, "{after:?}");
    assert_eq!(
        stop(agent.next().await),
        (j.id, Millis::ZERO, StopReason::Cancelled)
    );
    // A reconnecting agent that still runs it is told to kill it, not to wait.
    drop(agent);
    h.engine.agent_disconnected(1, "n1".parse().unwrap()).await;
    let mut agent = FakeAgent::connect(&h, 2, "n1", vec![(j.id, 1)], vec![]).await;
    assert_eq!(
        stop(agent.next().await),
        (j.id, Millis::ZERO, StopReason::Cancelled)
    );
    agent
        .send(
            &h,
            AgentEvent::Exited(JobExit {
                job: j.id,
                attempt: 1,
                outcome: ExitOutcome::Stopped {
                    exit_code: None,
                    signal: Some(9),
                },
                runtime: None,
                ended_ago: None,
            }),
        )
        .await;
    let done = settled(&h, j.id, |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::Cancelled);
    assert_eq!(done.reason, "cancelled: stuck");
}

/// Regression (issue 11, defect 5): a node whose agent is connected and
/// alive cannot be registered a second time; a connection that has gone
/// silent is a dead one, and a new registration replaces it.
/// Regression (issue 13, a small defect): a budget write that failed was
/// answered with an error while the engine went on, although a failed
/// ledger write stops the engine everywhere else (a job, a drain).
#[tokio::test]
async fn a_budget_that_cannot_be_written_stops_the_engine_and_records_nothing() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let clock = ManualClock::new(UnixMillis(1_000_000));
    let (engine, task) = start(ledger.clone(), Arc::new(clock), config()).unwrap();
    let tenant: TenantName = "t1".parse().unwrap();
    let budget = crate::accounting::budget::Budget {
        tenant: tenant.clone(),
        currency: crate::domain::money::Currency::USD,
        spend_limit_minor: Some(100),
        gpu_time_limit: None,
    };
    ledger.fail_writes.store(true, Ordering::Relaxed);
    assert!(engine.set_budget(tenant.clone(), Some(budget)).await.is_err());
    let ended = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the engine stops")
        .unwrap();
    let err = ended.expect_err("it stops on the failed write");
    assert!(err.to_string().contains("injected write failure"), "{err:#}");
    assert!(
        engine.submit(spec(1)).await.is_err(),
        "nothing is served after it"
    );
    ledger.fail_writes.store(false, Ordering::Relaxed);
    assert!(ledger.budgets().unwrap().is_empty(), "and nothing was recorded");
}

/// Regression (issue 13, a small defect): a log read sent its order to the
/// agent at once, outside the effect queue, so a read of a job placed in the
/// turn before (its launch waiting for the flush) reached the agent before
/// the launch did.
#[tokio::test]
async fn a_log_read_reaches_the_agent_after_the_launch_it_follows() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let clock = ManualClock::new(UnixMillis(1_000_000));
    let (engine, _task) = start(ledger.clone(), Arc::new(clock.clone()), config()).unwrap();
    let h = Harness { engine, clock, dir };
    let job = h.engine.submit(spec(1)).await.unwrap();
    // A slow disk: the placement's flush takes a while, and the read comes
    // in while it is on its way.
    ledger
        .flush_delay_ms
        .store(300, std::sync::atomic::Ordering::Relaxed);
    let engine = h.engine.clone();
    let read = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        engine.read_logs(job.id, None, 0, 100).await
    });
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let launch = agent.expect_launch().await;
    assert_eq!(launch.job, job.id);
    match agent.next().await {
        AgentOrder::ReadLog { job: j, .. } => assert_eq!(j, job.id),
        other => panic!("expected the log read after the launch, got {other:?}"),
    }
    read.abort();
}

#[tokio::test]
async fn a_second_agent_for_a_live_node_is_refused() {
    let h = harness().await;
    let _first = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let reg = Registration {
        inventory: inventory("n1", 8),
        running: vec![],
        exited: vec![],
        discovery: "declared".into(),
        agent_version: "impostor".into(),
    };
    let err = h
        .engine
        .agent_connected(2, reg.clone(), tx.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::AlreadyExists(_)), "{err:?}");
    let nodes = h.engine.list_nodes().await.unwrap();
    assert_eq!(
        nodes[0].node.inventory.gpus.len(),
        2,
        "the first agent's inventory stands"
    );
    assert_ne!(nodes[0].agent_version, "impostor");
    // Silent for two heartbeats: the old connection is taken for dead.
    h.clock.advance(Millis(2 * config().heartbeat_interval.0));
    h.engine.agent_connected(2, reg, tx).await.unwrap();
    let nodes = h.engine.list_nodes().await.unwrap();
    assert_eq!(nodes[0].agent_version, "impostor");
}

/// Regression (issue 11, defect 8): a submission retried after a transport
/// error could create a second job. Under one request id it creates one,
/// across a controller restart too; the id with another spec is refused;
/// after a day the id is forgotten.
#[tokio::test]
async fn a_retried_submission_with_its_request_id_creates_one_job() {
    let h = harness().await;
    let key = |id: &str, spec: &JobSpec| SubmitKey {
        request_id: id.into(),
        fingerprint: format!("{:?}", spec.args),
    };
    let s = spec(1);
    let first = h
        .engine
        .submit_once(s.clone(), Some(key("r-1", &s)))
        .await
        .unwrap();
    let again = h
        .engine
        .submit_once(s.clone(), Some(key("r-1", &s)))
        .await
        .unwrap();
    assert_eq!(first.id, again.id);
    // Two at once in one turn: still one job.
    let (a, b) = tokio::join!(
        h.engine.submit_once(s.clone(), Some(key("r-2", &s))),
        h.engine.submit_once(s.clone(), Some(key("r-2", &s)))
    );
    assert_eq!(a.unwrap().id, b.unwrap().id);
    let mut other = s.clone();
    other.args = vec!["else".into()];
    let err = h
        .engine
        .submit_once(other.clone(), Some(key("r-1", &other)))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::RequestReused(_)), "{err:?}");
    // Another tenant's id of the same name is its own.
    let mut theirs = s.clone();
    theirs.tenant = "t2".parse().unwrap();
    let t2 = h
        .engine
        .submit_once(theirs.clone(), Some(key("r-1", &theirs)))
        .await
        .unwrap();
    assert_ne!(t2.id, first.id);
    // Across a restart.
    let h = restart(h);
    let after = h
        .engine
        .submit_once(s.clone(), Some(key("r-1", &s)))
        .await
        .unwrap();
    assert_eq!(after.id, first.id);
    let (all, _) = h
        .engine
        .ledger()
        .list_jobs(&Default::default(), None, 100)
        .unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    // A day later the id is forgotten (and gone from the ledger).
    h.clock.advance(Millis(REQUEST_ID_TTL.0 + 1));
    let later = h
        .engine
        .submit_once(s.clone(), Some(key("r-2", &s)))
        .await
        .unwrap();
    assert_ne!(later.id, first.id);
    let (all, _) = h
        .engine
        .ledger()
        .list_jobs(&Default::default(), None, 100)
        .unwrap();
    assert_eq!(all.len(), 4);
    // The sweep (at most once a minute) removes expired keys from the ledger.
    h.clock.advance(Millis::from_secs(61));
    h.engine.list_nodes().await.unwrap();
    let kept = h.engine.ledger().requests().unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].job, later.id);
}

#[tokio::test]
async fn a_drain_outlives_a_disconnect_and_shows_under_down() {
    let h = harness().await;
    let agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let view = h
        .engine
        .drain("n1".parse().unwrap(), Some("fan".into()))
        .await
        .unwrap();
    assert_eq!(view.node.drained.as_deref(), Some("fan"));
    h.engine.agent_disconnected(agent.conn, agent.node.clone()).await;
    let nodes = h.engine.list_nodes().await.unwrap();
    assert_eq!(nodes[0].node.status, crate::placement::NodeStatus::Down);
    assert_eq!(nodes[0].node.drained.as_deref(), Some("fan"));
    // Back again, still drained: a job waits.
    let _agent = FakeAgent::connect(&h, 2, "n1", vec![], vec![]).await;
    let j = h.engine.submit(spec(1)).await.unwrap();
    let pending = settled(&h, j.id, |j| j.reason.contains("drained")).await;
    assert_eq!(pending.state, JobState::Pending);
    h.engine.drain("n1".parse().unwrap(), None).await.unwrap();
    settled(&h, j.id, |j| j.state == JobState::Starting).await;
}

fn preemptible(gpus: u32, priority: i32) -> JobSpec {
    JobSpec {
        preemptible: true,
        priority,
        ..spec(gpus)
    }
}

async fn start_all(h: &Harness, agent: &mut FakeAgent, n: usize) -> Vec<JobId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let l = agent.expect_launch().await;
        agent
            .send(
                h,
                AgentEvent::Started {
                    job: l.job,
                    attempt: l.attempt,
                    pid: 1,
                },
            )
            .await;
        settled(h, l.job, |j| j.state == JobState::Running).await;
        ids.push(l.job);
    }
    ids
}

#[tokio::test]
async fn preemption_stops_victims_requeues_them_and_places_the_preemptor() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    // Two preemptible jobs hold both GPUs; the older has run longer.
    let a = h.engine.submit(preemptible(1, 0)).await.unwrap();
    start_all(&h, &mut agent, 1).await;
    h.clock.advance(Millis::from_secs(60));
    let b = h.engine.submit(preemptible(1, 0)).await.unwrap();
    start_all(&h, &mut agent, 1).await;
    h.clock.advance(Millis::from_secs(60));
    // A low-priority job waits behind them; then a high-priority one arrives.
    let low = h.engine.submit(spec(1)).await.unwrap();
    let high = h
        .engine
        .submit(JobSpec {
            priority: 10,
            ..spec(1)
        })
        .await
        .unwrap();
    // The cheaper victim (less work lost: started later) is stopped, only it.
    let (victim, attempt) = match agent.next().await {
        AgentOrder::Stop {
            job,
            attempt,
            reason: StopReason::Preempted,
            ..
        } => (job, attempt),
        other => panic!("expected a preemption stop, got {other:?}"),
    };
    assert_eq!(victim, b.id);
    let waiting = settled(&h, high.id, |j| j.reason.contains("preempting")).await;
    assert_eq!(waiting.state, JobState::Pending);
    agent
        .send(
            &h,
            AgentEvent::Exited(JobExit {
                job: victim,
                attempt,
                outcome: ExitOutcome::Stopped {
                    exit_code: Some(0),
                    signal: None,
                },
                runtime: None,
                ended_ago: None,
            }),
        )
        .await;
    assert!(matches!(agent.next().await, AgentOrder::AckExit { .. }));
    // The preemptor gets the GPU, not the low-priority job queued before it.
    assert_eq!(agent.expect_launch().await.job, high.id);
    let requeued = settled(&h, victim, |j| j.state == JobState::Pending).await;
    assert_eq!(requeued.attempt, 2);
    let leases = h.engine.ledger().leases_of(&victim).unwrap();
    assert_eq!(leases[0].end_reason, Some(EndReason::Preempted));
    assert_eq!(job(&h, a.id).await.state, JobState::Running);
    assert_eq!(job(&h, low.id).await.state, JobState::Pending);
    // The victim keeps its place in the queue: ahead of the job submitted after it.
    let order: Vec<JobId> = {
        let state = h.engine.ledger().active_jobs().unwrap();
        let mut pending: Vec<&Job> = state.iter().filter(|j| j.state == JobState::Pending).collect();
        pending.sort_by_key(|j| (std::cmp::Reverse(j.spec.priority), j.submitted_at, j.id));
        pending.iter().map(|j| j.id).collect()
    };
    assert_eq!(order, vec![victim, low.id]);
}

#[tokio::test]
async fn jobs_inside_their_minimum_runtime_are_not_preempted() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    for _ in 0..2 {
        h.engine
            .submit(JobSpec {
                min_runtime: Some(Millis::from_secs(600)),
                ..preemptible(1, 0)
            })
            .await
            .unwrap();
    }
    start_all(&h, &mut agent, 2).await;
    let high = h
        .engine
        .submit(JobSpec {
            priority: 10,
            ..spec(1)
        })
        .await
        .unwrap();
    let pending = settled(&h, high.id, |j| j.reason.contains("no node")).await;
    assert!(!pending.reason.contains("preempting"));
    // Not a single stop order went out.
    h.engine.settle().await;
    assert!(agent.orders.try_recv().is_err());
    // Once the guard has passed, preemption proceeds on its own: time alone
    // triggers a placement pass.
    h.clock.advance(Millis::from_secs(601));
    assert!(matches!(
        agent.next().await,
        AgentOrder::Stop {
            reason: StopReason::Preempted,
            ..
        }
    ));
}

#[tokio::test]
async fn a_preemption_in_flight_survives_a_controller_restart() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    h.engine.submit(preemptible(2, 0)).await.unwrap();
    let victim = start_all(&h, &mut agent, 1).await[0];
    let high = h
        .engine
        .submit(JobSpec {
            priority: 10,
            ..spec(1)
        })
        .await
        .unwrap();
    assert!(matches!(
        agent.next().await,
        AgentOrder::Stop {
            reason: StopReason::Preempted,
            ..
        }
    ));
    assert_eq!(job(&h, victim).await.preempted_by, Some(high.id));
    // The controller restarts before the victim has stopped.
    let Harness { engine, clock, dir } = h;
    let ledger = engine.ledger().clone();
    drop(engine);
    let (engine, _task) = start(ledger, Arc::new(clock.clone()), config()).unwrap();
    let h = Harness { engine, clock, dir };
    // The agent comes back with the victim still running: the stop is sent again.
    let mut agent = FakeAgent::connect(&h, 2, "n1", vec![(victim, 1)], vec![]).await;
    assert!(
        matches!(agent.next().await, AgentOrder::Stop { reason: StopReason::Preempted, job, .. } if job == victim)
    );
    agent
        .send(
            &h,
            AgentEvent::Exited(JobExit {
                job: victim,
                attempt: 1,
                outcome: ExitOutcome::Stopped {
                    exit_code: None,
                    signal: Some(15),
                },
                runtime: None,
                ended_ago: None,
            }),
        )
        .await;
    // It is requeued, not failed, and the preemptor runs.
    let requeued = settled(&h, victim, |j| j.state == JobState::Pending).await;
    assert_eq!(requeued.attempt, 2);
    assert_eq!(requeued.preempted_by, None);
    assert!(matches!(agent.next().await, AgentOrder::AckExit { .. }));
    assert_eq!(agent.expect_launch().await.job, high.id);
}

#[tokio::test]
async fn a_spread_gang_runs_on_two_nodes_and_fails_together() {
    let h = harness().await;
    let mut a = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let mut b = FakeAgent::connect(&h, 2, "n2", vec![], vec![]).await;
    let mut gang = spec(3);
    gang.constraints.spread = true;
    let j = h.engine.submit(gang).await.unwrap();
    let la = a.expect_launch().await;
    let lb = b.expect_launch().await;
    assert_eq!((la.job, lb.job), (j.id, j.id));
    assert_eq!(la.nodes, lb.nodes);
    assert_eq!(la.devices.len() + lb.devices.len(), 3);
    assert_ne!(la.rank, lb.rank);
    // Running only once both parts have started.
    a.send(
        &h,
        AgentEvent::Started {
            job: j.id,
            attempt: 1,
            pid: 1,
        },
    )
    .await;
    h.engine.settle().await;
    assert_eq!(job(&h, j.id).await.state, JobState::Starting);
    b.send(
        &h,
        AgentEvent::Started {
            job: j.id,
            attempt: 1,
            pid: 2,
        },
    )
    .await;
    settled(&h, j.id, |j| j.state == JobState::Running).await;
    // The part on n1 fails: n2's part is stopped, and the job fails with n1's code.
    a.send(&h, AgentEvent::Exited(exit(j.id, 1, 3))).await;
    assert!(matches!(a.next().await, AgentOrder::AckExit { .. }));
    assert!(matches!(
        b.next().await,
        AgentOrder::Stop {
            reason: StopReason::Gang,
            ..
        }
    ));
    assert_eq!(job(&h, j.id).await.state, JobState::Running);
    b.send(
        &h,
        AgentEvent::Exited(JobExit {
            job: j.id,
            attempt: 1,
            outcome: ExitOutcome::Stopped {
                exit_code: None,
                signal: Some(15),
            },
            runtime: None,
            ended_ago: None,
        }),
    )
    .await;
    let done = settled(&h, j.id, |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::Failed);
    assert_eq!(done.exit_code, Some(3));
    assert!(done.reason.contains("on n1"), "{}", done.reason);
    let leases = h.engine.ledger().leases_of(&j.id).unwrap();
    assert_eq!(leases.len(), 3);
    assert!(leases.iter().all(|l| l.end_reason == Some(EndReason::Failed)));
    let nodes: std::collections::BTreeSet<&str> = leases.iter().map(|l| l.node.as_str()).collect();
    assert_eq!(nodes.len(), 2);
}

#[tokio::test]
async fn a_gang_loses_all_of_itself_with_one_node() {
    let h = harness().await;
    let mut a = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let mut b = FakeAgent::connect(&h, 2, "n2", vec![], vec![]).await;
    let mut gang = spec(4);
    gang.constraints.spread = true;
    let j = h.engine.submit(gang).await.unwrap();
    a.expect_launch().await;
    b.expect_launch().await;
    a.send(
        &h,
        AgentEvent::Started {
            job: j.id,
            attempt: 1,
            pid: 1,
        },
    )
    .await;
    b.send(
        &h,
        AgentEvent::Started {
            job: j.id,
            attempt: 1,
            pid: 2,
        },
    )
    .await;
    settled(&h, j.id, |j| j.state == JobState::Running).await;
    h.engine.agent_disconnected(a.conn, a.node.clone()).await;
    h.engine.list_nodes().await.unwrap();
    h.clock.advance(Millis(GRACE.0 + 1000));
    // n1's part is lost: n2's part is stopped, then the job is NODE_LOST.
    assert!(matches!(
        b.next().await,
        AgentOrder::Stop {
            reason: StopReason::Gang,
            ..
        }
    ));
    b.send(
        &h,
        AgentEvent::Exited(JobExit {
            job: j.id,
            attempt: 1,
            outcome: ExitOutcome::Stopped {
                exit_code: Some(0),
                signal: None,
            },
            runtime: None,
            ended_ago: None,
        }),
    )
    .await;
    let done = settled(&h, j.id, |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::NodeLost);
    assert!(done.reason.contains("did not come back"), "{}", done.reason);
}

#[tokio::test]
async fn an_exit_reported_after_an_outage_ends_the_lease_when_it_happened() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let a = h.engine.submit(spec(1)).await.unwrap();
    let b = h.engine.submit(spec(1)).await.unwrap();
    for _ in 0..2 {
        agent.expect_launch().await;
    }
    h.clock.advance(Millis(100));
    let started = h.clock.now();
    for id in [a.id, b.id] {
        agent
            .send(
                &h,
                AgentEvent::Started {
                    job: id,
                    attempt: 1,
                    pid: 1,
                },
            )
            .await;
        settled(&h, id, |j| j.state == JobState::Running).await;
    }
    h.clock.advance(Millis(2000));
    agent
        .send(
            &h,
            AgentEvent::Heartbeat {
                seq: 0,
                utilization: BTreeMap::new(),
                running: vec![(a.id, 1), (b.id, 1)],
            },
        )
        .await;
    h.engine.list_nodes().await.unwrap();
    // The agent drops off; both jobs end while it is away; it comes back 40 s
    // later with the exits and the runtimes it measured.
    h.clock.advance(Millis(1000));
    h.engine.agent_disconnected(agent.conn, agent.node.clone()).await;
    h.engine.list_nodes().await.unwrap();
    h.clock.advance(Millis(37_000));
    let exit_after = |id, ms| JobExit {
        job: id,
        attempt: 1,
        outcome: ExitOutcome::Exited(0),
        runtime: Some(Millis(ms)),
        ended_ago: None,
    };
    let _agent = FakeAgent::connect(
        &h,
        2,
        "n1",
        vec![],
        vec![exit_after(a.id, 5000), exit_after(b.id, 500)],
    )
    .await;
    for (id, end) in [
        (a.id, started.plus(Millis(5000))),
        (b.id, started.plus(Millis(2000))),
    ] {
        let done = settled(&h, id, |j| j.state.is_final()).await;
        assert_eq!(done.state, JobState::Succeeded);
        let lease = &h.engine.ledger().leases_of(&id).unwrap()[0];
        // a: its measured 5 s. b: it claimed 0.5 s, but was seen running at 2 s.
        assert_eq!(lease.ended_at, Some(end), "job {id}");
    }
}

/// Submits a job and brings it to RUNNING on `agent`.
async fn run_one(h: &Harness, agent: &mut FakeAgent, spec: JobSpec) -> JobId {
    let j = h.engine.submit(spec).await.unwrap();
    let launch = agent.expect_launch().await;
    agent
        .send(
            h,
            AgentEvent::Started {
                job: j.id,
                attempt: launch.attempt,
                pid: 1,
            },
        )
        .await;
    settled(h, j.id, |j| j.state == JobState::Running).await;
    j.id
}

/// A new engine on the same ledger and clock (the old one is dropped).
fn restart(h: Harness) -> Harness {
    let Harness { engine, clock, dir } = h;
    let ledger = engine.ledger().clone();
    drop(engine);
    let (engine, _task) = start(ledger, Arc::new(clock.clone()), config()).unwrap();
    Harness { engine, clock, dir }
}

#[tokio::test]
async fn a_job_lost_with_its_node_is_requeued_while_it_has_retries() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let id = run_one(
        &h,
        &mut agent,
        JobSpec {
            node_lost_retries: 1,
            script: None,
            ..spec(1)
        },
    )
    .await;
    h.clock.advance(Millis(1000));
    agent
        .send(
            &h,
            AgentEvent::Heartbeat {
                seq: 0,
                utilization: BTreeMap::new(),
                running: vec![(id, 1)],
            },
        )
        .await;
    h.engine.list_nodes().await.unwrap();
    let seen = h.clock.now();
    h.clock.advance(Millis(500));
    h.engine.agent_disconnected(agent.conn, agent.node.clone()).await;
    h.engine.list_nodes().await.unwrap();
    h.clock.advance(Millis(GRACE.0 + 1000));
    let requeued = settled(&h, id, |j| j.state == JobState::Pending).await;
    assert_eq!((requeued.attempt, requeued.node_lost_requeues), (2, 1));
    let leases = h.engine.ledger().leases_of(&id).unwrap();
    assert_eq!(leases[0].end_reason, Some(EndReason::NodeLost));
    assert_eq!(leases[0].ended_at, Some(seen));

    // It runs again elsewhere; lost a second time, it has no retry left.
    let mut other = FakeAgent::connect(&h, 2, "n2", vec![], vec![]).await;
    let launch = other.expect_launch().await;
    assert_eq!((launch.job, launch.attempt), (id, 2));
    other
        .send(
            &h,
            AgentEvent::Started {
                job: id,
                attempt: 2,
                pid: 1,
            },
        )
        .await;
    settled(&h, id, |j| j.state == JobState::Running).await;
    h.engine.agent_disconnected(other.conn, other.node.clone()).await;
    h.engine.list_nodes().await.unwrap();
    h.clock.advance(Millis(GRACE.0 + 1000));
    let lost = settled(&h, id, |j| j.state.is_final()).await;
    assert_eq!(lost.state, JobState::NodeLost);
    let leases = h.engine.ledger().leases_of(&id).unwrap();
    assert_eq!(leases.len(), 2);
    assert!(leases.iter().all(|l| l.end_reason == Some(EndReason::NodeLost)));
}

#[tokio::test]
async fn a_restarted_controller_ends_lost_leases_at_the_last_heartbeat_it_recorded() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let id = run_one(&h, &mut agent, spec(1)).await;
    h.clock.advance(Millis(1000));
    agent
        .send(
            &h,
            AgentEvent::Heartbeat {
                seq: 0,
                utilization: BTreeMap::new(),
                running: vec![(id, 1)],
            },
        )
        .await;
    h.engine.list_nodes().await.unwrap();
    let seen = h.clock.now();
    h.clock.advance(Millis(4000));
    // The controller restarts; the node never comes back.
    let h = restart(h);
    h.clock.advance(Millis(GRACE.0 + 1000));
    let lost = settled(&h, id, |j| j.state.is_final()).await;
    assert_eq!(lost.state, JobState::NodeLost);
    let lease = &h.engine.ledger().leases_of(&id).unwrap()[0];
    assert_eq!(lease.ended_at, Some(seen));
}

/// Regression (issue 11, defect 10): the node-lost grace started over at
/// every controller restart, so a controller restarted more often than the
/// grace never declared a node lost. It runs from when the node was last
/// heard from, which the ledger keeps.
#[tokio::test]
async fn the_node_lost_grace_does_not_start_over_when_the_controller_restarts() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let id = run_one(&h, &mut agent, spec(1)).await;
    agent
        .send(
            &h,
            AgentEvent::Heartbeat {
                seq: 1,
                utilization: BTreeMap::new(),
                running: vec![(id, 1)],
            },
        )
        .await;
    h.engine.list_nodes().await.unwrap();
    // Three restarts, each well within the grace of the one before.
    let mut h = h;
    for _ in 0..3 {
        h.clock.advance(Millis(GRACE.0 / 4));
        h = restart(h);
        h.engine.settle().await;
        assert_eq!(job(&h, id).await.state, JobState::Running);
    }
    // A grace after it was last heard from (not after the last restart).
    h.clock.advance(Millis(GRACE.0 / 4 + 1000));
    let lost = settled(&h, id, |j| j.state.is_final()).await;
    assert_eq!(lost.state, JobState::NodeLost, "{}", lost.reason);
}

/// The engine acknowledges each heartbeat of the live connection at once:
/// the agent's fence lease rests on it.
#[tokio::test]
async fn heartbeats_are_acknowledged_with_their_sequence_number() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    for seq in [1, 2, 7] {
        agent
            .send(
                &h,
                AgentEvent::Heartbeat {
                    seq,
                    utilization: BTreeMap::new(),
                    running: vec![],
                },
            )
            .await;
        let ack = tokio::time::timeout(Duration::from_secs(5), agent.orders.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(ack, AgentOrder::HeartbeatAck { seq: s } if s == seq),
            "{ack:?}"
        );
    }
    // A connection the engine no longer takes gets no acknowledgement.
    h.engine
        .agent_event(
            99,
            "n1".parse().unwrap(),
            AgentEvent::Heartbeat {
                seq: 8,
                utilization: BTreeMap::new(),
                running: vec![],
            },
        )
        .await;
    h.engine.list_nodes().await.unwrap();
    assert!(agent.orders.try_recv().is_err());
}

#[tokio::test]
async fn late_reports_date_starts_and_ends_by_what_the_agent_measured() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let a = h.engine.submit(spec(1)).await.unwrap();
    let b = h.engine.submit(spec(1)).await.unwrap();
    agent.expect_launch().await;
    agent.expect_launch().await;
    let reserved = h.clock.now();
    // Both start, but the controller dies before it hears of it.
    h.clock.advance(Millis(3000));
    let h = restart(h);
    h.clock.advance(Millis(2000));
    let now = h.clock.now();
    // The agent comes back: `a` runs (launched 4 s ago), `b` ran 1.5 s and
    // ended 0.2 s ago.
    let agent = FakeAgent::register(
        &h,
        2,
        "n1",
        vec![RunningPart {
            job: a.id,
            attempt: 1,
            running_for: Some(Millis(4000)),
        }],
        vec![JobExit {
            job: b.id,
            attempt: 1,
            outcome: ExitOutcome::Exited(0),
            runtime: Some(Millis(1500)),
            ended_ago: Some(Millis(200)),
        }],
    )
    .await;
    settled(&h, a.id, |j| j.state == JobState::Running).await;
    let la = &h.engine.ledger().leases_of(&a.id).unwrap()[0];
    assert_eq!(la.reserved_at, reserved);
    assert_eq!(la.started_at, Some(UnixMillis(now.0 - 4000)));
    let done = settled(&h, b.id, |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::Succeeded);
    let lb = &h.engine.ledger().leases_of(&b.id).unwrap()[0];
    assert_eq!(lb.end_reason, Some(EndReason::Succeeded));
    assert_eq!(lb.ended_at, Some(UnixMillis(now.0 - 200)));
    assert_eq!(lb.started_at, Some(UnixMillis(now.0 - 1700)));
    // `a` ends later; its exit arrives 300 ms after it happened.
    h.clock.advance(Millis(1000));
    agent
        .send(
            &h,
            AgentEvent::Exited(JobExit {
                ended_ago: Some(Millis(300)),
                ..exit(a.id, 1, 0)
            }),
        )
        .await;
    settled(&h, a.id, |j| j.state.is_final()).await;
    let la = &h.engine.ledger().leases_of(&a.id).unwrap()[0];
    assert_eq!(la.ended_at, Some(UnixMillis(now.0 + 700)));
}

#[tokio::test]
async fn idle_time_comes_from_utilisation_readings_hour_by_hour() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let id = run_one(&h, &mut agent, spec(1)).await;
    let lease = h.engine.ledger().leases_of(&id).unwrap()[0].clone();
    let gpu = lease.device.gpu_uuid.clone();
    let beat = |pct: u32| AgentEvent::Heartbeat {
        seq: 0,
        utilization: BTreeMap::from([(gpu.clone(), pct), ("GPU-elsewhere".into(), 0)]),
        running: vec![(id, 1)],
    };
    // The first reading only starts the count; then idle, busy, idle.
    for (advance, pct) in [(1000, 0), (1000, 0), (1000, 55), (1000, 0)] {
        h.clock.advance(Millis(advance));
        agent.send(&h, beat(pct)).await;
        h.engine.list_nodes().await.unwrap();
    }
    // Readings stop for a while: at most two heartbeats count as idle.
    h.clock.advance(Millis(60_000));
    agent.send(&h, beat(0)).await;
    h.engine.list_nodes().await.unwrap();
    agent.send(&h, AgentEvent::Exited(exit(id, 1, 0))).await;
    settled(&h, id, |j| j.state.is_final()).await;
    let lease = &h.engine.ledger().leases_of(&id).unwrap()[0];
    assert_eq!(lease.idle_ms(), Some(1000 + 1000 + 10_000));
    let q = UsageQuery {
        from: UnixMillis(0),
        to: UnixMillis(u64::MAX / 2),
        group_by: vec![],
        tenant: None,
    };
    let row = &h.engine.ledger().usage(&q, h.clock.now()).unwrap()[0];
    assert_eq!(
        row.idle,
        crate::accounting::GpuTime::of(lease.device.share, 12_000)
    );
    assert_eq!(row.observed, row.gpu_time);
}

mod arrays;
mod control;
mod deps;
mod fairshare;
mod queues;
