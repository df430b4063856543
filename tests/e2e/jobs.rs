//! The whole path: submit → place → lease → agent runs a process → exit → lease closed.

use std::time::Duration;

use allot_sdk::{JobSpec, JobState, proto};
use futures::StreamExt;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_job_runs_with_its_device_visible_and_its_lease_recorded() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let job = client
        .submit(
            JobSpec::new("sh")
                .args(["-c", "echo \"$CUDA_VISIBLE_DEVICES\"; echo \"$ALLOT_JOB_ID\" >&2"])
                .gpus(1)
                .tag("suite", "e2e"),
        )
        .await
        .expect("submit");
    let done = wait_final(&client, &job.id).await;
    assert_eq!(done.state(), JobState::Succeeded, "{}", done.reason);
    assert_eq!(done.exit_code, Some(0));

    let placement = done.placement.clone().expect("placed");
    assert_eq!(placement.devices.len(), 1);
    let device = &placement.devices[0];
    assert!(device.device_uuid.starts_with("GPU-"), "{}", device.device_uuid);

    // The output file holds the device the job was given, and its id on stderr.
    let out = std::fs::read_to_string(server.output_file(&placement.node, &job.id)).expect("output file");
    assert_eq!(out, format!("{}\n{}\n", device.device_uuid, job.id));
    // The same bytes come back through the API.
    let logs = client.logs(&job.id, 0, 0).await.expect("logs");
    assert_eq!(String::from_utf8_lossy(&logs.data), out);
    assert_eq!(logs.node, placement.node);
    let tail = client
        .logs(&job.id, logs.next_offset, 0)
        .await
        .expect("logs tail");
    assert!(tail.data.is_empty() && tail.complete);

    // One closed lease on exactly that device, reserved ≤ started ≤ ended.
    assert_eq!(done.leases.len(), 1);
    let lease = &done.leases[0];
    assert_eq!(lease.state(), proto::LeaseState::Closed);
    assert_eq!(lease.end_reason(), proto::LeaseEndReason::Succeeded);
    assert_eq!(lease.device.as_ref().unwrap().device_uuid, device.device_uuid);
    assert_eq!(lease.node, placement.node);
    assert_eq!(lease.job_id, job.id);
    assert!(lease.reserved_at_unix_ms > 0);
    assert!(lease.reserved_at_unix_ms <= lease.started_at_unix_ms);
    assert!(lease.started_at_unix_ms <= lease.ended_at_unix_ms);
    let share = lease.device.as_ref().unwrap().share.unwrap();
    assert_eq!((share.numerator, share.denominator), (1, 1));
    assert!(done.submitted_at_unix_ms <= done.started_at_unix_ms);
    assert!(done.started_at_unix_ms <= done.ended_at_unix_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mig_and_fractional_jobs_see_their_slice_or_share() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let script = "echo \"$CUDA_VISIBLE_DEVICES $NVIDIA_VISIBLE_DEVICES $ALLOT_GPU_SHARE\"";
    let mig = client
        .submit(JobSpec::new("sh").args(["-c", script]).mig("1g.10gb"))
        .await
        .unwrap();
    let quarter = client
        .submit(JobSpec::new("sh").args(["-c", script]).gpu_fraction(1, 4))
        .await
        .unwrap();
    let cpu_only = client
        .submit(JobSpec::new("sh").args(["-c", script]))
        .await
        .unwrap();

    let mig = wait_final(&client, &mig.id).await;
    assert_eq!(mig.state(), JobState::Succeeded, "{}", mig.reason);
    let d = &mig.placement.as_ref().unwrap().devices[0];
    assert_eq!(mig.placement.as_ref().unwrap().node, "dev-2");
    assert!(d.device_uuid.starts_with("MIG-"));
    assert_eq!(d.mig_profile, "1g.10gb");
    let s = d.share.unwrap();
    assert_eq!((s.numerator, s.denominator), (1, 7));
    let out = String::from_utf8(client.logs(&mig.id, 0, 0).await.unwrap().data).unwrap();
    assert_eq!(out.trim(), format!("{0} {0} 1/7", d.device_uuid));

    let quarter = wait_final(&client, &quarter.id).await;
    let d = &quarter.placement.as_ref().unwrap().devices[0];
    let s = d.share.unwrap();
    assert_eq!((s.numerator, s.denominator), (1, 4));
    assert_eq!(d.gpu_memory_mib, 20 * 1024);
    let out = String::from_utf8(client.logs(&quarter.id, 0, 0).await.unwrap().data).unwrap();
    assert_eq!(out.trim(), format!("{0} {0} 1/4", d.device_uuid));

    let cpu_only = wait_final(&client, &cpu_only.id).await;
    assert!(cpu_only.leases.is_empty(), "a CPU-only job holds no GPU lease");
    let out = String::from_utf8(client.logs(&cpu_only.id, 0, 0).await.unwrap().data).unwrap();
    assert_eq!(out.trim(), "void 0", "a CPU-only job sees no GPU: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_gpus_stays_pending_with_a_reason() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let job = client.submit(JobSpec::new("true").gpus(9)).await.unwrap();
    let job = wait_for(&client, &job.id, "explained", |j| j.reason.contains("no node")).await;
    assert_eq!(job.state(), JobState::Pending);
    assert!(job.reason.contains("9 GPUs"), "{}", job.reason);
    assert!(job.reason.contains("too few GPUs in total"), "{}", job.reason);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = client.get(&job.id).await.unwrap();
    assert_eq!(job.state(), JobState::Pending);
    assert!(job.leases.is_empty());
    // It can be cancelled while pending, and then it is final at once.
    let cancelled = client.cancel(&job.id, "never fits").await.unwrap();
    assert_eq!(cancelled.state(), JobState::Cancelled);
    assert!(cancelled.reason.contains("never fits"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_exits_3_fails_with_exit_code_3() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let job = client
        .submit(JobSpec::new("sh").args(["-c", "exit 3"]).gpus(2))
        .await
        .unwrap();
    let done = wait_final(&client, &job.id).await;
    assert_eq!(done.state(), JobState::Failed);
    assert_eq!(done.exit_code, Some(3));
    assert_eq!(done.leases.len(), 2);
    for l in &done.leases {
        assert_eq!(l.end_reason(), proto::LeaseEndReason::Failed);
    }
    // A command that does not exist fails too, with the reason in its output.
    let job = client
        .submit(JobSpec::new("/no/such/program").gpus(1))
        .await
        .unwrap();
    let done = wait_final(&client, &job.id).await;
    assert_eq!(done.state(), JobState::Failed);
    assert!(done.reason.contains("could not start"), "{}", done.reason);
    assert_eq!(
        done.leases[0].end_reason(),
        proto::LeaseEndReason::ReleasedUnstarted
    );
    let out = String::from_utf8(client.logs(&job.id, 0, 0).await.unwrap().data).unwrap();
    assert!(out.contains("/no/such/program"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_stops_its_process() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let job = client
        .submit(JobSpec::new("sh").args(["-c", "echo $$; exec sleep 600"]).gpus(1))
        .await
        .unwrap();
    let running = wait_state(&client, &job.id, JobState::Running).await;
    let node = running.placement.unwrap().node;
    let pid: i32 = first_line(&server.output_file(&node, &job.id))
        .await
        .parse()
        .unwrap();
    assert!(!process_gone(pid));

    let after = client.cancel(&job.id, "").await.unwrap();
    assert!(after.cancel_requested);
    let done = wait_final(&client, &job.id).await;
    assert_eq!(done.state(), JobState::Cancelled);
    assert_eq!(done.leases[0].end_reason(), proto::LeaseEndReason::Cancelled);
    wait_gone(pid).await;
    // Cancelling again says it is over.
    let err = client.cancel(&job.id, "").await.unwrap_err();
    assert_eq!(err.code(), allot_sdk::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_ignoring_sigterm_is_killed_after_its_grace_period() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let job = client
        .submit(
            JobSpec::new("sh")
                .args(["-c", "trap '' TERM; echo $$; while true; do sleep 0.05; done"])
                .grace_period_ms(300),
        )
        .await
        .unwrap();
    let running = wait_state(&client, &job.id, JobState::Running).await;
    let pid: i32 = first_line(&server.output_file(&running.placement.unwrap().node, &job.id))
        .await
        .parse()
        .unwrap();
    let t0 = std::time::Instant::now();
    client.cancel(&job.id, "").await.unwrap();
    let done = wait_final(&client, &job.id).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "SIGKILL came before the grace period"
    );
    assert_eq!(done.state(), JobState::Cancelled);
    assert_eq!(done.signal, Some(9), "it took SIGKILL: {done:?}");
    wait_gone(pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_limit_stops_the_job_as_timed_out() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let job = client
        .submit(
            JobSpec::new("sh")
                .args(["-c", "echo $$; exec sleep 600"])
                .gpus(1)
                .time_limit_ms(500)
                .grace_period_ms(200),
        )
        .await
        .unwrap();
    let done = wait_final(&client, &job.id).await;
    assert_eq!(done.state(), JobState::TimedOut, "{}", done.reason);
    // Controller-side times: the start is stamped when the agent's report
    // arrives, a few ms after the process started, so allow for that.
    let ran = done.ended_at_unix_ms - done.started_at_unix_ms;
    assert!(ran >= 400, "stopped after {ran} ms, well before its 500 ms limit");
    assert_eq!(done.leases[0].end_reason(), proto::LeaseEndReason::TimedOut);
    let pid: i32 = first_line(&server.output_file(&done.placement.unwrap().node, &job.id))
        .await
        .parse()
        .unwrap();
    wait_gone(pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_every_state_to_the_end() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    // Hold every whole GPU so the watched job waits, then free them.
    let blockers: Vec<String> = futures::future::join_all((0..2).map(|_| {
        let c = client.clone();
        async move {
            c.submit(JobSpec::new("sleep").args(["600"]).gpus(4))
                .await
                .unwrap()
                .id
        }
    }))
    .await;
    for b in &blockers {
        wait_state(&client, b, JobState::Running).await;
    }
    let job = client.submit(JobSpec::new("true").gpus(1)).await.unwrap();
    assert_eq!(job.state(), JobState::Pending);
    let mut stream = Box::pin(client.watch(&job.id).await.unwrap());
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.state(), JobState::Pending);
    client.cancel(&blockers[0], "make room").await.unwrap();
    let mut states = vec![first.state()];
    while let Some(j) = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("watch progresses")
    {
        states.push(j.unwrap().state());
    }
    states.dedup();
    assert_eq!(
        states,
        vec![
            JobState::Pending,
            JobState::Starting,
            JobState::Running,
            JobState::Succeeded
        ]
    );
    client.cancel(&blockers[1], "").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_nodes_take_no_new_jobs() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let admin = server.admin().await;
    let client = server.client().await;
    let nodes = client.nodes().await.unwrap();
    assert_eq!(nodes.len(), 2);
    let dev2 = nodes.iter().find(|n| n.name == "dev-2").unwrap();
    assert_eq!(dev2.gpus.len(), 5);
    assert_eq!(dev2.gpus[4].mig_slices.len(), 4);
    assert_eq!(dev2.discovery, "declared");

    // Only admins drain.
    let err = client.drain("dev-1", "").await.unwrap_err();
    assert_eq!(err.code(), allot_sdk::Code::PermissionDenied);
    let drained = admin.drain("dev-1", "maintenance").await.unwrap();
    assert_eq!(drained.state(), proto::NodeState::Drained);
    admin.drain("dev-2", "maintenance").await.unwrap();
    let job = client.submit(JobSpec::new("true").gpus(1)).await.unwrap();
    let pending = wait_for(&client, &job.id, "explained", |j| j.reason.contains("drained")).await;
    assert_eq!(pending.state(), JobState::Pending);
    admin.undrain("dev-2").await.unwrap();
    let done = wait_final(&client, &job.id).await;
    assert_eq!(done.state(), JobState::Succeeded);
    assert_eq!(done.placement.unwrap().node, "dev-2");
    let err = admin.drain("no-such-node", "").await.unwrap_err();
    assert_eq!(err.code(), allot_sdk::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_restarts_with_every_job_and_lease() {
    let dir = tempdir();
    let mut server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let finished = client.submit(JobSpec::new("true").gpus(2)).await.unwrap();
    let finished = wait_final(&client, &finished.id).await;
    let running = client
        .submit(
            JobSpec::new("sh")
                .args(["-c", "echo $$; exec sleep 600"])
                .gpus(1)
                .node_lost_retries(0),
        )
        .await
        .unwrap();
    let running = wait_state(&client, &running.id, JobState::Running).await;
    let node = running.placement.clone().unwrap().node;
    let pid: i32 = first_line(&server.output_file(&node, &running.id))
        .await
        .parse()
        .unwrap();
    let pending = client.submit(JobSpec::new("true").gpus(64)).await.unwrap();
    let before = client.list_all(Default::default()).await.unwrap();
    assert_eq!(before.len(), 3);

    server.kill().await;
    drop(client);
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;

    // Every job is still there; the finished one exactly as it was.
    let after = client.list_all(Default::default()).await.unwrap();
    let ids: Vec<&str> = after.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, before.iter().map(|j| j.id.as_str()).collect::<Vec<_>>());
    let again = client.get(&finished.id).await.unwrap();
    assert_eq!(again, finished);
    assert_eq!(again.leases.len(), 2);
    // The pending one still waits.
    assert_eq!(client.get(&pending.id).await.unwrap().state(), JobState::Pending);
    // The running one outlived the crash under its supervisor: the new
    // agent took it over, so it still runs as the same attempt on the same
    // lease, and ends normally when cancelled.
    let still = wait_state(&client, &running.id, JobState::Running).await;
    assert_eq!(still.attempt, 1);
    assert_eq!(still.leases.len(), 1);
    assert_eq!(still.leases[0].state(), proto::LeaseState::Active);
    assert!(!process_gone(pid), "the job's process kept running");
    client.cancel(&running.id, "done").await.unwrap();
    let ended = wait_final(&client, &running.id).await;
    assert_eq!(ended.state(), JobState::Cancelled, "{}", ended.reason);
    assert_eq!(ended.leases.len(), 1);
    assert_eq!(ended.leases[0].end_reason(), proto::LeaseEndReason::Cancelled);
    wait_gone(pid).await;
    // And the cluster is usable again.
    let next = client.submit(JobSpec::new("true").gpus(4)).await.unwrap();
    assert_eq!(wait_final(&client, &next.id).await.state(), JobState::Succeeded);
    // The ledger's invariants held through the crash.
    let report = server.admin().await.check_ledger().await.unwrap();
    assert!(report.clean, "{:?}", report.problems);
    assert_eq!(report.leases, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_allowed_to_spread_runs_once_per_node() {
    let dir = tempdir();
    let server = DevServer::start(dir.path()).await;
    let client = server.client().await;
    let script = "echo \"rank $ALLOT_NODE_RANK of $ALLOT_NUM_NODES ($ALLOT_NODES) on $CUDA_VISIBLE_DEVICES\"";
    // Six GPUs: no dev node has more than four whole ones.
    let err = client
        .submit(JobSpec::new("sh").args(["-c", script]).gpus(6))
        .await
        .unwrap();
    let pending = wait_for(&client, &err.id, "explained", |j| j.reason.contains("no node")).await;
    assert_eq!(pending.state(), JobState::Pending);
    client.cancel(&err.id, "").await.unwrap();

    let job = client
        .submit(JobSpec::new("sh").args(["-c", script]).gpus(6).spread(true))
        .await
        .unwrap();
    let done = wait_final(&client, &job.id).await;
    assert_eq!(done.state(), JobState::Succeeded, "{}", done.reason);
    assert_eq!(done.placements.len(), 2);
    assert_eq!(done.placements.iter().map(|p| p.devices.len()).sum::<usize>(), 6);
    assert_eq!(done.leases.len(), 6);
    let nodes: Vec<String> = done.placements.iter().map(|p| p.node.clone()).collect();
    for (rank, p) in done.placements.iter().enumerate() {
        let out = String::from_utf8(client.logs_from(&job.id, &p.node, 0, 0).await.unwrap().data).unwrap();
        let devices: Vec<&str> = p.devices.iter().map(|d| d.device_uuid.as_str()).collect();
        assert_eq!(
            out.trim(),
            format!("rank {rank} of 2 ({}) on {}", nodes.join(","), devices.join(","))
        );
    }
    // A node the job does not run on is refused.
    let err = client.logs_from(&job.id, "nowhere", 0, 0).await.unwrap_err();
    assert_eq!(err.code(), allot_sdk::Code::FailedPrecondition);
}
