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
