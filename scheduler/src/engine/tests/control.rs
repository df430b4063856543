//! Hold, release, update and requeue in the engine.

use super::*;
use crate::domain::Hold;

async fn next_stop(agent: &mut FakeAgent) -> (JobId, StopReason) {
    loop {
        match agent.next().await {
            AgentOrder::Stop { job, reason, .. } => return (job, reason),
            AgentOrder::AckExit { .. } => {}
            other => panic!("expected a stop, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_held_job_waits_until_released_and_an_admins_hold_needs_an_admin() {
    let h = harness().await;
    // Nothing can start yet: no node.
    let j = h.engine.submit(spec(1)).await.unwrap();
    let held = h
        .engine
        .control(
            j.id,
            JobControl::Hold {
                by_admin: true,
                reason: "maintenance".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(held.hold.as_ref().map(|h| h.by_admin), Some(true));
    assert!(
        held.reason.contains("held by an admin: maintenance"),
        "{}",
        held.reason
    );
    // The owner's hold does not weaken it, and the owner cannot release it.
    let again = JobControl::Hold {
        by_admin: false,
        reason: String::new(),
    };
    h.engine.control(j.id, again).await.unwrap();
    let e = h
        .engine
        .control(j.id, JobControl::Release { by_admin: false })
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::PermissionDenied(_)), "{e:?}");
    // A node arrives: the held job stays pending.
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let still = settled(&h, j.id, |j| j.state == JobState::Pending).await;
    assert!(still.hold.is_some());
    // Survives a restart (it is in the job's record).
    assert!(job(&h, j.id).await.hold.is_some());
    h.engine
        .control(j.id, JobControl::Release { by_admin: true })
        .await
        .unwrap();
    assert_eq!(agent.expect_launch().await.job, j.id);
    let e = h
        .engine
        .control(j.id, JobControl::Release { by_admin: true })
        .await
        .unwrap_err();
    assert!(
        matches!(e, EngineError::FailedPrecondition(_)),
        "not held any more: {e:?}"
    );
    let e = h
        .engine
        .control(
            j.id,
            JobControl::Hold {
                by_admin: false,
                reason: String::new(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, EngineError::FailedPrecondition(m) if m.contains("only a pending job")),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_update_changes_a_pending_job_or_nothing() {
    let h = harness().await;
    let mut short = QueueDef {
        name: "short".parse().unwrap(),
        default: false,
        source: crate::domain::QueueSource::Api,
        ..QueueDef::builtin()
    };
    short.max_time_limit = Some(Millis::from_secs(600));
    h.engine.create_queue(short).await.unwrap();
    let mut s = spec(1);
    s.time_limit = Some(Millis::from_secs(3600));
    let j = h.engine.submit(s).await.unwrap();
    // Into a queue whose maximum is shorter than its limit: refused, unchanged.
    let e = h
        .engine
        .control(
            j.id,
            JobControl::Update(JobUpdate {
                queue: Some("short".parse().unwrap()),
                ..Default::default()
            }),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, EngineError::Invalid { field, .. } if field == "spec.time_limit_ms"),
        "{e:?}"
    );
    assert_eq!(job(&h, j.id).await.spec, j.spec, "nothing changed");
    let up = h
        .engine
        .control(
            j.id,
            JobControl::Update(JobUpdate {
                priority: Some(7),
                time_limit: Some(None),
                queue: Some("short".parse().unwrap()),
            }),
        )
        .await
        .unwrap();
    assert_eq!(up.spec.priority, 7);
    assert_eq!(up.spec.queue.as_ref().unwrap().as_str(), "short");
    assert_eq!(
        up.spec.time_limit,
        Some(Millis::from_secs(600)),
        "the new queue's default"
    );
    assert_eq!(job(&h, j.id).await.spec, up.spec, "durable");
}

#[tokio::test]
async fn a_requeued_running_job_stops_and_runs_again_and_an_ended_one_runs_again() {
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
                pid: 1,
            },
        )
        .await;
    settled(&h, j.id, |j| j.state == JobState::Running).await;
    let asked = h
        .engine
        .control(j.id, JobControl::Requeue { hold: None })
        .await
        .unwrap();
    assert!(asked.requeue_requested);
    assert_eq!(next_stop(&mut agent).await, (j.id, StopReason::Requeued));
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
    // Back in the queue, and placed again as its second attempt.
    let second = agent.next_launch().await;
    assert_eq!((second.job, second.attempt), (j.id, 2));
    let leases = h.engine.ledger().leases_of(&j.id).unwrap();
    assert_eq!(leases[0].end_reason, Some(EndReason::Requeued));
    assert_eq!(leases[0].attempt, 1);
    // It fails; a requeue with a hold brings it back held.
    agent.send(&h, AgentEvent::Exited(exit(j.id, 2, 3))).await;
    settled(&h, j.id, |j| j.state == JobState::Failed).await;
    let back = h
        .engine
        .control(
            j.id,
            JobControl::Requeue {
                hold: Some(Hold {
                    by_admin: false,
                    reason: "fix the input first".into(),
                }),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (back.state, back.attempt, back.exit_code),
        (JobState::Pending, 3, None)
    );
    assert!(back.reason.contains("fix the input first"), "{}", back.reason);
    let stored = settled(&h, j.id, |j| j.state == JobState::Pending).await;
    assert!(stored.hold.is_some(), "held: not placed");
    h.engine
        .control(j.id, JobControl::Release { by_admin: false })
        .await
        .unwrap();
    let third = agent.next_launch().await;
    assert_eq!((third.job, third.attempt), (j.id, 3));
    let e = h.engine.control(j.id, JobControl::Requeue { hold: None }).await;
    assert!(e.is_ok(), "a starting job may be requeued: {e:?}");
}
