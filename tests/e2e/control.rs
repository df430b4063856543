//! `allot hold`, `release`, `update` and `requeue` against a real
//! controller and agent: a hold survives a kill -9, a requeued running job
//! runs again as its next attempt, an ended one runs again.

use allot_sdk::{JobSpec, JobState};

use crate::cluster::Cluster;
use crate::harness::{run_allot, tempdir, wait_for, wait_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_release_update_and_requeue_work_and_a_hold_survives_a_crash() {
    let dir = tempdir();
    let mut cluster = Cluster::start(dir.path(), &[]).await;
    let client = cluster.client().await;
    let addr = cluster.addr();
    let (addr, tenant, admin) = (
        Some(addr.as_str()),
        Some(cluster.tenant_token.clone()),
        Some(cluster.admin_token.clone()),
    );
    let (tenant, admin) = (tenant.as_deref(), admin.as_deref());
    // No node yet: the job waits, and is held by an admin.
    let job = client
        .submit(JobSpec::new("sleep").args(["600"]).gpus(1))
        .await
        .unwrap();
    let (code, out, err) = run_allot(&["hold", &job.id, "--reason", "until Monday"], addr, admin).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("held: PENDING (held by an admin: until Monday"),
        "{out}"
    );
    let (code, _, err) = run_allot(&["release", &job.id], addr, tenant).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("PermissionDenied") && err.contains("only an admin"),
        "{err}"
    );
    let (code, out, err) = run_allot(
        &["update", &job.id, "--priority", "5", "--time", "2h"],
        addr,
        tenant,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run_allot(&["update", &job.id, "--queue", "nope"], addr, tenant).await;
    assert_eq!(code, 1);
    assert!(err.contains("field spec.queue"), "{err}");

    // kill -9 and back, then a node: still held.
    cluster.kill_server().await;
    cluster.start_server().await;
    cluster.start_agent("ctl-1", "2xH100-80GB").await;
    cluster.wait_nodes(1).await;
    let client = cluster.client().await;
    let after = client.get(&job.id).await.unwrap();
    assert!(after.held && after.held_by_admin, "{after:?}");
    assert_eq!(after.state(), JobState::Pending);
    let spec = after.spec.clone().unwrap();
    assert_eq!((spec.priority, spec.time_limit_ms), (5, Some(7_200_000)));

    // Released: it runs. Requeued while running: it stops and runs again.
    let (code, _, err) = run_allot(&["release", &job.id], addr, admin).await;
    assert_eq!(code, 0, "{err}");
    wait_state(&client, &job.id, JobState::Running).await;
    let (code, out, err) = run_allot(&["requeue", &job.id], addr, tenant).await;
    assert_eq!(code, 0, "{out}{err}");
    let second = wait_for(&client, &job.id, "its second attempt running", |j| {
        j.attempt == 2 && j.state() == JobState::Running
    })
    .await;
    assert_eq!(
        second.leases[0].end_reason(),
        allot_sdk::proto::LeaseEndReason::Requeued,
        "{:?}",
        second.leases
    );
    // Ended (cancelled), then requeued with a hold: back, held.
    client.cancel(&job.id, "done").await.unwrap();
    wait_state(&client, &job.id, JobState::Cancelled).await;
    let (code, out, err) = run_allot(&["requeue", &job.id, "--hold"], addr, tenant).await;
    assert_eq!(code, 0, "{out}{err}");
    let back = client.get(&job.id).await.unwrap();
    assert_eq!(
        (back.state(), back.attempt, back.held),
        (JobState::Pending, 3, true)
    );
    let (code, _, _) = run_allot(&["release", &job.id], addr, tenant).await;
    assert_eq!(code, 0);
    wait_for(&client, &job.id, "its third attempt running", |j| {
        j.attempt == 3 && j.state() == JobState::Running
    })
    .await;
    client.kill(&job.id, "end of test").await.unwrap();
}
