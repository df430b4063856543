//! Fair share in the engine: two tenants with equal shares, one of which
//! queued all its work first, take turns and end with equal GPU-time.

use super::*;

/// Lets a pass run at the clock's time and waits until the usage it read
/// from the ledger has come back.
async fn usage_read(h: &Harness) {
    let now = h.clock.now();
    for _ in 0..500 {
        h.engine.settle().await;
        if h.engine.fairshare().await.unwrap().read_at == Some(now) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = h.engine.fairshare().await.unwrap();
    panic!("usage was not read at {now}: last read {:?}", r.read_at);
}

#[tokio::test]
async fn two_tenants_with_equal_shares_take_turns_and_converge_to_equal_gpu_time() {
    let h = harness().await;
    let tenant = |t: &str| -> TenantName { t.parse().unwrap() };
    let mut ids = BTreeMap::new();
    // Tenant a queues all its work first; b after it.
    for t in ["a", "b"] {
        for i in 0..3 {
            let mut s = spec(2);
            s.tenant = tenant(t);
            let j = h.engine.submit(s).await.unwrap();
            ids.insert(j.id, format!("{t}{i}"));
            h.clock.advance(Millis(1));
        }
    }
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let mut order = Vec::new();
    for _ in 0..6 {
        let l = agent.next_launch().await;
        order.push(ids[&l.job].clone());
        agent
            .send(
                &h,
                AgentEvent::Started {
                    job: l.job,
                    attempt: 1,
                    pid: 1,
                },
            )
            .await;
        // It runs ten minutes; usage is read while it runs, then it ends.
        h.clock.advance(Millis::from_secs(600));
        usage_read(&h).await;
        agent.send(&h, AgentEvent::Exited(exit(l.job, 1, 0))).await;
        h.engine.settle().await;
    }
    assert_eq!(
        order,
        ["a0", "b0", "a1", "b1", "a2", "b2"],
        "FIFO would run a's three first"
    );
    h.clock.advance(Millis::from_secs(61));
    usage_read(&h).await;
    let report = h.engine.fairshare().await.unwrap();
    let (a, b) = (&report.tenants[&tenant("a")], &report.tenants[&tenant("b")]);
    assert_eq!((a.weight, b.weight), (1, 1));
    assert!((a.share - 0.5).abs() < 1e-9);
    // Each had three 2-GPU jobs of ten minutes: 1 GPU-hour, a little
    // decayed (a's a little earlier, so a little more).
    assert!(
        (a.usage_gpu_hours - 1.0).abs() < 0.01 && (b.usage_gpu_hours - 1.0).abs() < 0.01,
        "{a:?} {b:?}"
    );
    assert!((a.usage_share - 0.5).abs() < 0.01, "{a:?}");
}

/// Tenant `hog` fills the node with preemptible work of a higher priority
/// and uses it ten minutes; then `fresh` asks for a GPU. Returns the
/// harness, the agent, hog's jobs and fresh's job.
async fn hog_then_fresh(reclaim: bool) -> (Harness, FakeAgent, Vec<JobId>, JobId) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(UnixMillis(1_000_000));
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut cfg = config();
    cfg.fairshare.reclaim = reclaim;
    let (engine, _task) = start(ledger, Arc::new(clock.clone()), cfg).unwrap();
    let h = Harness { engine, clock, dir };
    let mut agent = FakeAgent::connect(&h, 1, "n1", vec![], vec![]).await;
    let mut hog = Vec::new();
    for _ in 0..2 {
        let mut s = JobSpec {
            preemptible: true,
            priority: 5,
            ..spec(1)
        };
        s.tenant = "hog".parse().unwrap();
        let j = h.engine.submit(s).await.unwrap();
        let l = agent.next_launch().await;
        assert_eq!(l.job, j.id);
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
        hog.push(j.id);
    }
    h.clock.advance(Millis::from_secs(600));
    usage_read(&h).await;
    let mut s = spec(1);
    s.tenant = "fresh".parse().unwrap();
    let fresh = h.engine.submit(s).await.unwrap();
    h.clock.advance(Millis::from_secs(61));
    usage_read(&h).await;
    (h, agent, hog, fresh.id)
}

#[tokio::test]
async fn with_reclaim_a_tenant_under_its_share_preempts_one_over_it() {
    let (h, mut agent, hog, fresh) = hog_then_fresh(true).await;
    let victim = loop {
        match agent.next().await {
            AgentOrder::Stop { job, reason, .. } => {
                assert_eq!(reason, StopReason::Preempted);
                break job;
            }
            AgentOrder::AckExit { .. } => {}
            other => panic!("expected a stop, got {other:?}"),
        }
    };
    assert!(hog.contains(&victim));
    let v = job(&h, victim).await;
    assert!(v.reason.contains("fair-share reclaim"), "{}", v.reason);
    let report = h.engine.fairshare().await.unwrap();
    assert!(report.tenants[&"hog".parse::<TenantName>().unwrap()].factor < 0.5);
    agent.send(&h, AgentEvent::Exited(stopped(victim, 1))).await;
    assert_eq!(
        agent.next_launch().await.job,
        fresh,
        "the GPU goes to the tenant under its share"
    );
    let back = settled(&h, victim, |j| j.state == JobState::Pending).await;
    assert_eq!(back.attempt, 2, "the victim waits again");
}

#[tokio::test]
async fn without_reclaim_priority_alone_decides() {
    let (h, mut agent, _hog, fresh) = hog_then_fresh(false).await;
    let w = settled(&h, fresh, |j| j.state == JobState::Pending).await;
    assert!(!w.reason.contains("preempting"), "{}", w.reason);
    let order = tokio::time::timeout(Duration::from_millis(200), agent.next()).await;
    assert!(
        !matches!(order, Ok(AgentOrder::Stop { .. })),
        "no stop is ordered: {order:?}"
    );
}
