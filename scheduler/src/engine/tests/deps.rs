//! Dependencies in the engine: a chain runs in order, an `afterok` on a
//! failed job ends its dependant, bad references are refused, and the graph
//! survives a restart.

use super::*;

fn after(mut s: JobSpec, dep: &str) -> JobSpec {
    s.dependency = Some(dep.parse().unwrap());
    s
}

async fn run_to(h: &Harness, agent: &FakeAgent, id: JobId, code: i32) {
    agent
        .send(
            h,
            AgentEvent::Started {
                job: id,
                attempt: 1,
                pid: 1,
            },
        )
        .await;
    agent.send(h, AgentEvent::Exited(exit(id, 1, code))).await;
    settled(h, id, |j| j.state.is_final()).await;
}

#[tokio::test]
async fn a_chain_runs_in_order_and_a_failed_afterok_ends_its_dependant() {
    let h = harness().await;
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let first = h.engine.submit(spec(1)).await.unwrap();
    assert_eq!(agent.next_launch().await.job, first.id);
    let second = h
        .engine
        .submit(after(spec(1), &format!("afterok:{}", first.id)))
        .await
        .unwrap();
    let third = h
        .engine
        .submit(after(spec(1), &format!("afterany:{}", second.id)))
        .await
        .unwrap();
    let never = h
        .engine
        .submit(after(spec(1), &format!("afternotok:{}", first.id)))
        .await
        .unwrap();
    let s = settled(&h, second.id, |j| j.state == JobState::Pending).await;
    assert_eq!(s.reason, format!("waiting for afterok {}: STARTING", first.id));
    let t = settled(&h, third.id, |j| j.state == JobState::Pending).await;
    assert_eq!(t.reason, format!("waiting for afterany {}: PENDING", second.id));

    // The first succeeds: the second starts; the afternotok can never be met.
    run_to(&h, &agent, first.id, 0).await;
    assert_eq!(agent.next_launch().await.job, second.id);
    let n = settled(&h, never.id, |j| j.state.is_final()).await;
    assert_eq!(n.state, JobState::DependencyNeverSatisfied);
    assert_eq!(
        n.reason,
        format!("dependency never satisfied: afternotok {}: SUCCEEDED", first.id)
    );
    assert!(
        h.engine.ledger().leases_of(&never.id).unwrap().is_empty(),
        "it never held a device"
    );

    // The second fails: afterany still lets the third start.
    run_to(&h, &agent, second.id, 1).await;
    assert_eq!(agent.next_launch().await.job, third.id);

    // An afterok on a job that failed already ends at once.
    let doomed = h
        .engine
        .submit(after(spec(1), &format!("afterok:{}", second.id)))
        .await
        .unwrap();
    let d = settled(&h, doomed.id, |j| j.state.is_final()).await;
    assert_eq!(d.state, JobState::DependencyNeverSatisfied);
    assert!(d.reason.contains("FAILED"), "{}", d.reason);
}

#[tokio::test]
async fn unknown_or_foreign_jobs_are_refused_and_the_graph_survives_a_restart() {
    let h = harness().await;
    let mut other = spec(1);
    other.tenant = "t2".parse().unwrap();
    let foreign = h.engine.submit(other).await.unwrap();
    for dep in [
        format!("afterok:{}", JobId::new_v7()),
        format!("afterany:{}", foreign.id),
    ] {
        let e = h.engine.submit(after(spec(1), &dep)).await.unwrap_err();
        assert!(
            matches!(&e, EngineError::Invalid { field, message } if field == "spec.dependency" && message.starts_with("no job")),
            "{dep}: {e:?}"
        );
    }
    // No node: the first waits; the second waits on it, and on a singleton.
    let first = h.engine.submit(spec(1)).await.unwrap();
    let second = h
        .engine
        .submit(after(spec(1), &format!("afterok:{},singleton", first.id)))
        .await
        .unwrap();

    let Harness { engine, clock, dir } = h;
    let ledger = engine.ledger().clone();
    drop(engine);
    let (engine, _task) = start(ledger, Arc::new(clock.clone()), config()).unwrap();
    let h = Harness { engine, clock, dir };
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    // Only the first (and the other tenant's job) start: the second waits.
    let mut launched = vec![agent.next_launch().await.job, agent.next_launch().await.job];
    launched.sort();
    let mut want = vec![first.id, foreign.id];
    want.sort();
    assert_eq!(launched, want);
    let s = settled(&h, second.id, |j| j.state == JobState::Pending).await;
    assert!(
        s.reason.starts_with(&format!("waiting for afterok {}", first.id)),
        "{}",
        s.reason
    );
    assert!(s.reason.contains("singleton"), "{}", s.reason);
    run_to(&h, &agent, first.id, 0).await;
    assert_eq!(agent.next_launch().await.job, second.id);
}
