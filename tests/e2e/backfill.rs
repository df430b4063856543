//! Backfill with real processes: a two-GPU job queued among a stream of
//! one-GPU jobs is not starved by them; it holds a reservation that
//! `allot jobs --start` shows, and starts before the small jobs queued
//! after it.

use allot_sdk::{JobSpec, JobState};

use crate::cluster::Cluster;
use crate::harness::{run_allot, tempdir, wait_final, wait_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_job_is_not_starved_by_small_ones() {
    let dir = tempdir();
    let mut cluster = Cluster::start(dir.path(), &[]).await;
    cluster.start_agent("bf-1", "2xH100-80GB").await;
    cluster.wait_nodes(1).await;
    let client = cluster.client().await;
    let small = |secs: &str| JobSpec::new("sleep").args([secs]).gpus(1).time_limit_ms(10_000);
    // One small job runs; the big one waits for both GPUs; small ones keep
    // coming after it.
    let first = client.submit(small("2")).await.unwrap();
    wait_state(&client, &first.id, JobState::Running).await;
    let big = client
        .submit(JobSpec::new("true").gpus(2).time_limit_ms(60_000))
        .await
        .unwrap();
    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(client.submit(small("1")).await.unwrap());
    }
    let b = wait_state(&client, &big.id, JobState::Pending).await;
    // A free GPU, yet the small ones wait: running them would delay the big one.
    let addr = cluster.addr();
    let (code, out, err) = run_allot(&["jobs", "--start"], Some(&addr), Some(&cluster.tenant_token)).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ID") && out.contains("START_TIME"), "{out}");
    let big_line = out
        .lines()
        .find(|l| l.starts_with(&big.id))
        .expect("the big job is listed");
    assert!(!big_line.contains("N/A"), "it has an expected start: {out}");
    let b = if b.expected_start_unix_ms > 0 {
        b
    } else {
        client.get(&big.id).await.unwrap()
    };
    assert!(b.expected_start_unix_ms > 0, "{b:?}");
    assert!(b.reason.contains("backfill reservation on bf-1"), "{}", b.reason);
    for s in &later {
        let j = client.get(&s.id).await.unwrap();
        assert_eq!(j.state(), JobState::Pending, "{}", j.reason);
        assert!(
            j.reason.contains("reserved for a job ahead in the queue"),
            "{}",
            j.reason
        );
    }
    let big_done = wait_final(&client, &big.id).await;
    assert_eq!(big_done.state(), JobState::Succeeded);
    assert!(
        big_done.started_at_unix_ms <= b.expected_start_unix_ms,
        "it started by the time it was promised"
    );
    for s in &later {
        let j = wait_final(&client, &s.id).await;
        assert!(
            j.started_at_unix_ms >= big_done.started_at_unix_ms,
            "small jobs queued after the big one start after it"
        );
    }
}
