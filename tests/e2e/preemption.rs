//! Preemption end to end: a high-priority job makes room by stopping
//! preemptible low-priority work, which is requeued; no device is ever held
//! twice at once in the ledger.

use std::collections::HashMap;

use allot_sdk::{JobSpec, JobState, ListJobs, proto};
use futures::StreamExt;

use crate::harness::*;

/// A job that reports SIGTERM in its output and exits at once on it.
fn low(preemptible: bool) -> JobSpec {
    JobSpec::new("sh")
        .args([
            "-c",
            "trap 'echo got SIGTERM; exit 0' TERM; echo $$; while true; do sleep 0.05; done",
        ])
        .gpus(1)
        .priority(0)
        .preemptible(preemptible)
        .grace_period_ms(2000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_job_preempts_low_priority_work_which_is_requeued() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;

    // Fill all eight whole GPUs: seven preemptible jobs and one that is not.
    let mut lows = Vec::new();
    for k in 0..8 {
        let job = client.submit(low(k != 0)).await.unwrap();
        lows.push(job.id);
    }
    for id in &lows {
        wait_state(&client, id, JobState::Running).await;
    }
    let protected = lows[0].clone();

    // Watch every low job from here on.
    let mut watches = Vec::new();
    for id in &lows {
        watches.push((id.clone(), Box::pin(client.watch(id).await.unwrap())));
    }

    let high = client
        .submit(
            JobSpec::new("sh")
                .args(["-c", "echo high on $CUDA_VISIBLE_DEVICES"])
                .gpus(2)
                .priority(10),
        )
        .await
        .unwrap();
    let done = wait_final(&client, &high.id).await;
    assert_eq!(done.state(), JobState::Succeeded, "{}", done.reason);
    let high_node = done.placement.clone().unwrap().node;

    // Exactly two victims, both preemptible, on the high job's node: each got
    // SIGTERM, ended its attempt PREEMPTED, and went back to the queue.
    let mut victims = Vec::new();
    for (id, mut stream) in watches {
        let j = client.get(&id).await.unwrap();
        if j.attempt < 2 {
            continue;
        }
        victims.push(id.clone());
        let mut states = Vec::new();
        while let Some(Ok(update)) = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("watch progresses")
        {
            states.push(update.state());
            if update.state() == JobState::Pending || states.len() > 8 {
                break;
            }
        }
        assert!(
            states.ends_with(&[JobState::Preempted, JobState::Pending]),
            "{id}: {states:?}"
        );
        let first = &j.leases[0];
        assert_eq!(first.end_reason(), proto::LeaseEndReason::Preempted);
        assert_eq!(first.node, high_node);
        let out = std::fs::read_to_string(server.output_file(&high_node, &id)).unwrap();
        assert!(out.contains("got SIGTERM"), "{out}");
    }
    assert_eq!(victims.len(), 2, "victims: {victims:?}");
    assert!(
        !victims.contains(&protected),
        "the non-preemptible job was preempted"
    );
    let p = client.get(&protected).await.unwrap();
    assert_eq!((p.state(), p.attempt), (JobState::Running, 1));

    // The requeued victims run again once the high job is done.
    for v in &victims {
        let j = wait_for(&client, v, "running again", |j| {
            j.state() == JobState::Running && j.attempt == 2
        })
        .await;
        assert_eq!(j.leases.len(), 2);
    }

    // The ledger never holds a GPU twice at once.
    let all = server.admin().await.list_all(ListJobs::default()).await.unwrap();
    let mut by_device: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for j in &all {
        for l in &j.leases {
            let d = l.device.as_ref().unwrap();
            let end = if l.ended_at_unix_ms > 0 {
                l.ended_at_unix_ms
            } else {
                i64::MAX
            };
            by_device
                .entry(d.device_uuid.clone())
                .or_default()
                .push((l.reserved_at_unix_ms, end));
        }
    }
    for (device, mut spans) in by_device {
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{device} held twice: {:?} and {:?}", w[0], w[1]);
        }
    }
    for id in &lows {
        let _ = client.cancel(id, "").await;
    }
}
