//! Job arrays in the engine: one record until tasks start, the throttle,
//! tasks named before their turn, the whole array cancelled or held, its
//! end counted from its tasks', and all of it across a restart.

use super::*;
use crate::domain::Hold;

fn array(gpus: u32, indices: &str) -> JobSpec {
    JobSpec {
        array: Some(indices.parse().unwrap()),
        ..spec(gpus)
    }
}

async fn run_to(h: &Harness, agent: &FakeAgent, id: JobId, code: i32) {
    let attempt = job(h, id).await.attempt;
    agent
        .send(
            h,
            AgentEvent::Started {
                job: id,
                attempt,
                pid: 1,
            },
        )
        .await;
    agent.send(h, AgentEvent::Exited(exit(id, attempt, code))).await;
    settled(h, id, |j| j.state.is_final()).await;
}

/// How many job records the ledger holds.
fn records(h: &Harness) -> usize {
    h.engine
        .ledger()
        .list_jobs(&Default::default(), None, 10_000)
        .unwrap()
        .0
        .len()
}

#[tokio::test]
async fn a_throttled_array_runs_its_tasks_in_turn_and_ends_when_they_all_have() {
    let h = harness().await;
    let a = h.engine.submit(array(1, "3,5-7%1")).await.unwrap();
    assert!(a.is_array() && a.state == JobState::Pending);
    assert!(records(&h) <= 2, "the array and at most its first task");
    // Two GPUs free, but %1: one task at a time, in index order, each
    // with its array's variables.
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    for (k, index) in [3, 5, 6, 7].into_iter().enumerate() {
        let l = agent.next_launch().await;
        assert_eq!(l.job, a.id.task(index));
        assert_eq!(l.spec.env["ALLOT_ARRAY_TASK_ID"], index.to_string());
        assert_eq!(l.spec.env["SLURM_ARRAY_JOB_ID"], a.id.to_string());
        assert_eq!(l.spec.env["SLURM_ARRAY_TASK_COUNT"], "4");
        assert_eq!(l.spec.env["SLURM_ARRAY_TASK_MIN"], "3");
        assert_eq!(l.spec.env["SLURM_ARRAY_TASK_MAX"], "7");
        let t = job(&h, l.job).await;
        assert_eq!(t.array_task.map(|t| (t.array, t.index)), Some((a.id, index)));
        assert!(t.spec.array.is_none(), "a task is not an array");
        let rec = job(&h, a.id).await;
        assert_eq!(rec.state, JobState::Pending, "the array waits for its tasks");
        assert_eq!(rec.array.as_ref().unwrap().ended.total(), k as u64);
        run_to(&h, &agent, l.job, 0).await;
    }
    let done = settled(&h, a.id, |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.reason, "array of 4: 4 succeeded, 0 failed, 0 cancelled");
    assert_eq!(records(&h), 5, "the array and the four tasks that ran");
}

#[tokio::test]
async fn unstarted_tasks_cost_one_record_and_can_be_named_cancelled_and_held() {
    let h = harness().await;
    // No node: nothing can start.
    let a = h.engine.submit(array(1, "0-9999")).await.unwrap();
    h.engine.settle().await;
    assert!(
        records(&h) <= 2,
        "the array and at most its first task: {}",
        records(&h)
    );
    // A task before its turn: seen as it would be, then cancelled alone.
    let t7 = a.id.task(7);
    let view = h.engine.job(t7).await.unwrap();
    assert_eq!(
        (view.state, view.array_task.map(|t| t.index)),
        (JobState::Pending, Some(7))
    );
    assert!(view.reason.contains("not started yet"), "{}", view.reason);
    let c = h.engine.cancel(t7, "not needed".into(), false).await.unwrap();
    assert_eq!(c.state, JobState::Cancelled);
    let rec = job(&h, a.id).await;
    let p = rec.array.as_ref().unwrap();
    assert_eq!(
        (p.ended.cancelled, p.unsplit(rec.spec.array.as_ref().unwrap())),
        (1, 9998)
    );
    let e = h.engine.cancel(t7, String::new(), false).await.unwrap_err();
    assert!(matches!(e, EngineError::FailedPrecondition(_)), "{e:?}");
    assert!(matches!(
        h.engine.job(a.id.task(10_000)).await.unwrap_err(),
        EngineError::NotFound(_)
    ));
    // The whole array held: its pending task too, and nothing more splits.
    let hold = JobControl::Hold {
        by_admin: false,
        reason: "later".into(),
    };
    let held = h.engine.control(a.id, hold).await.unwrap();
    assert!(held.hold.is_some());
    let first = job(&h, a.id.task(0)).await;
    assert_eq!(
        first.hold,
        Some(Hold {
            by_admin: false,
            reason: "later".into()
        })
    );
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    h.engine.settle().await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), agent.next())
            .await
            .is_err(),
        "a held array starts nothing"
    );
    // Released: tasks start; then the whole array is cancelled.
    h.engine
        .control(a.id, JobControl::Release { by_admin: false })
        .await
        .unwrap();
    let l = agent.next_launch().await;
    assert_eq!(l.job, a.id.task(0));
    h.engine.cancel(a.id, String::new(), false).await.unwrap();
    // The running task is told to stop; once it has, the array ends.
    loop {
        match agent.next().await {
            AgentOrder::Stop { job, .. } => {
                agent.send(&h, AgentEvent::Exited(stopped(job, 1))).await;
            }
            AgentOrder::AckExit { .. } => {}
            AgentOrder::Launch(_) => {}
            other => panic!("{other:?}"),
        }
        h.engine.settle().await;
        if job(&h, a.id).await.state.is_final() {
            break;
        }
    }
    let end = job(&h, a.id).await;
    assert_eq!(end.state, JobState::Cancelled);
    assert_eq!(
        end.array.as_ref().unwrap().ended.total(),
        10_000,
        "{}",
        end.reason
    );
    assert!(
        records(&h) < 600,
        "tasks given up cost no record: {}",
        records(&h)
    );
}

#[tokio::test]
async fn an_array_survives_a_restart_and_afterok_on_it_waits_for_every_task() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let a = h.engine.submit(array(1, "0-3")).await.unwrap();
    let after = h
        .engine
        .submit(JobSpec {
            dependency: Some(format!("afterok:{}", a.id).parse().unwrap()),
            ..spec(2)
        })
        .await
        .unwrap();
    let first = agent.next_launch().await.job;
    let second = agent.next_launch().await.job;
    assert_eq!((first, second), (a.id.task(0), a.id.task(1)));
    run_to(&h, &agent, first, 0).await;
    drop(agent);
    let h = restart(h);
    // Task 1 still runs on n1; the rest goes on after the restart.
    let mut agent = FakeAgent::connect(&h, 2, "n1", vec![(second, 1)], vec![]).await;
    let third = agent.next_launch().await.job;
    assert_eq!(third, a.id.task(2));
    run_to(&h, &agent, second, 0).await;
    run_to(&h, &agent, third, 0).await;
    let fourth = agent.next_launch().await.job;
    assert_eq!(fourth, a.id.task(3));
    let w = settled(&h, after.id, |j| j.state == JobState::Pending).await;
    assert!(
        w.reason.contains(&format!("afterok {}: PENDING", a.id)),
        "{}",
        w.reason
    );
    run_to(&h, &agent, fourth, 0).await;
    let done = settled(&h, a.id, |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(agent.next_launch().await.job, after.id, "the dependant starts");
}

#[tokio::test]
async fn a_failed_task_fails_the_array_and_an_oversized_array_is_refused() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let a = h.engine.submit(array(2, "1-2")).await.unwrap();
    let t = agent.next_launch().await.job;
    run_to(&h, &agent, t, 1).await;
    let t = agent.next_launch().await.job;
    run_to(&h, &agent, t, 0).await;
    let done = settled(&h, a.id, |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::Failed);
    assert_eq!(done.reason, "array of 2: 1 succeeded, 1 failed, 0 cancelled");
    // Over the server's limit: refused, nothing stored.
    let before = records(&h);
    let e = h.engine.submit(array(1, "0-100000")).await.unwrap_err();
    assert!(
        matches!(&e, EngineError::Invalid { field, message } if field == "spec.array" && message.contains("100001 tasks")),
        "{e:?}"
    );
    assert_eq!(records(&h), before);
    // An array cannot be requeued whole.
    let e = h
        .engine
        .control(a.id, JobControl::Requeue { hold: None })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, EngineError::FailedPrecondition(m) if m.contains("_INDEX")),
        "{e:?}"
    );
}
