//! Crashes: the controller killed with SIGKILL again and again under a stream
//! of jobs, and a node agent killed for good. Separate `allot server` and
//! `allot agent` processes on loopback, as in production.

use std::time::Duration;

use allot_sdk::{Client, Code, JobSpec, JobState, proto};

use crate::cluster::*;
use crate::harness::*;

/// Every job of the tenant, following pages, retrying while the server is away.
async fn all_jobs(client: &Client) -> Vec<proto::Job> {
    loop {
        match client.list_all(Default::default()).await {
            Ok(jobs) => return jobs,
            Err(e) if e.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("listing jobs: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_survives_twenty_controller_sigkills_under_a_stream_of_jobs() {
    let dir = tempdir();
    let mut cluster = Cluster::start(dir.path(), &[]).await;
    cluster.start_agent("crash-1", "4xH100-80GB").await;
    cluster
        .start_agent(
            "crash-2",
            "2xA100-80GB,1xH100-80GB/mig=3g.40gb+2g.20gb+1g.10gb+1g.10gb",
        )
        .await;
    cluster.wait_nodes(2).await;

    // A stream of short jobs, submitted as fast as the server takes them;
    // a submission cut off by a kill is tried again, under its request id,
    // until it is taken.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = cluster.addr();
    let token = cluster.tenant_token.clone();
    let submitter = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut retried = 0;
            let mut client = connect_retrying(&addr, &token).await;
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k += 1;
                let ms = 20 + (k * 37) % 180;
                let spec = JobSpec::new("sleep").args([format!("{}.{:03}", ms / 1000, ms % 1000)]);
                let spec = match k % 4 {
                    0 => spec.gpus(2),
                    1 => spec.gpu_fraction(1, 2),
                    2 => spec.mig("1g.10gb"),
                    _ => spec.gpus(1),
                };
                let spec = spec.tag("k", k.to_string());
                loop {
                    match client
                        .submit_with_request_id(spec.clone(), &format!("crash-{k}"))
                        .await
                    {
                        Ok(j) => {
                            accepted.push(j.id);
                            break;
                        }
                        Err(_) => {
                            retried += 1;
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            client = connect_retrying(&addr, &token).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            (accepted, retried)
        })
    };

    // Kill the controller at seeded random moments, 20 times.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..20 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(150 + rng % 450)).await;
        cluster.kill_server().await;
        cluster.start_server().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (accepted, retried) = submitter.await.unwrap();
    assert!(accepted.len() >= 40, "only {} jobs were accepted", accepted.len());
    eprintln!("{retried} submissions were retried after a kill");

    // No job stuck: every job the server ever acknowledged ends, and ends well.
    let client = cluster.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let jobs = loop {
        let jobs = all_jobs(&client).await;
        if jobs.iter().all(|j| allot_sdk::is_final(j.state())) {
            break jobs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs stuck: {:?}",
            jobs.iter()
                .filter(|j| !allot_sdk::is_final(j.state()))
                .map(|j| (&j.id, j.state(), &j.reason))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ids: std::collections::HashSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    for id in &accepted {
        assert!(ids.contains(id.as_str()), "acknowledged job {id} was lost");
    }
    // And none was created twice (issue 11, defect 8): a submission cut
    // off by a kill and retried under its request id is the same job.
    let mut seen = std::collections::HashSet::new();
    for j in &jobs {
        let k = j
            .spec
            .as_ref()
            .and_then(|s| s.tags.get("k"))
            .cloned()
            .unwrap_or_default();
        assert!(seen.insert(k.clone()), "submission k={k} created two jobs");
    }

    // Every lease closed once: the attempt that ran ends with its job; any
    // other lease was released before it started. The time billed while the
    // job ran matches what its agent measured, within one heartbeat; before
    // that the device was held for the launch (billed too), briefly.
    for j in &jobs {
        assert_eq!(j.state(), JobState::Succeeded, "job {} {}", j.id, j.reason);
        let ran: Vec<&proto::Lease> = j
            .leases
            .iter()
            .filter(|l| l.end_reason() != proto::LeaseEndReason::ReleasedUnstarted)
            .collect();
        assert!(!ran.is_empty(), "job {} has no lease that ran", j.id);
        for l in &ran {
            assert_eq!(l.state(), proto::LeaseState::Closed);
            assert_eq!(l.end_reason(), proto::LeaseEndReason::Succeeded, "{l:?}");
            assert_eq!(l.attempt, j.attempt, "a lease of an earlier attempt ran: {l:?}");
            let measured = l.agent_runtime_ms.expect("the agent's measure is recorded");
            let ran = l.ended_at_unix_ms - l.started_at_unix_ms;
            let launch = l.started_at_unix_ms - l.reserved_at_unix_ms;
            assert!(
                (ran - measured).abs() <= HEARTBEAT_MS,
                "job {}: billed {ran} ms running, the agent measured {measured} ms",
                j.id
            );
            assert!((0..2000).contains(&launch), "job {}: {launch} ms to launch", j.id);
        }
    }

    let leases: usize = jobs.iter().map(|j| j.leases.len()).sum();
    let requeued = jobs.iter().filter(|j| j.attempt > 1).count();
    let ran: Vec<&proto::Lease> = jobs
        .iter()
        .flat_map(|j| &j.leases)
        .filter(|l| l.agent_runtime_ms.is_some())
        .collect();
    let worst = ran
        .iter()
        .map(|l| (l.ended_at_unix_ms - l.started_at_unix_ms - l.agent_runtime_ms.unwrap_or(0)).abs())
        .max()
        .unwrap_or(0);
    let slowest_launch = ran
        .iter()
        .map(|l| l.started_at_unix_ms - l.reserved_at_unix_ms)
        .max()
        .unwrap_or(0);
    eprintln!(
        "{} jobs ({} acknowledged), {leases} leases, {requeued} requeued after a restart; \
         running time billed vs measured differ by at most {worst} ms; slowest launch {slowest_launch} ms",
        jobs.len(),
        accepted.len()
    );

    // The ledger's invariants, over the server and from the files.
    let report = cluster.admin().await.check_ledger().await.unwrap();
    assert!(report.clean, "{:?}", report.problems);
    assert_eq!(
        report.leases as usize,
        jobs.iter().map(|j| j.leases.len()).sum::<usize>()
    );
    cluster.kill_server().await;
    let (code, out, err) = run_allot(
        &[
            "ledger",
            "check",
            "--data-dir",
            dir.path().join("controller").to_str().unwrap(),
        ],
        None,
        None,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ledger clean"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_loses_its_jobs_after_the_grace_period_and_they_are_requeued_or_failed_per_policy() {
    let dir = tempdir();
    let mut cluster = Cluster::start(dir.path(), &["--node-lost-grace", "1s"]).await;
    cluster.start_agent("doomed", "2xH100-80GB").await;
    cluster.wait_nodes(1).await;
    let client = cluster.client().await;
    // One job may be requeued once, one may not.
    let again = client
        .submit(JobSpec::new("sleep").args(["600"]).gpus(1).node_lost_retries(1))
        .await
        .unwrap();
    let once = client
        .submit(JobSpec::new("sleep").args(["600"]).gpus(1).node_lost_retries(0))
        .await
        .unwrap();
    for id in [&again.id, &once.id] {
        wait_state(&client, id, JobState::Running).await;
    }
    tokio::time::sleep(Duration::from_millis(3 * HEARTBEAT_MS as u64)).await;
    cluster.kill_agent("doomed").await;
    let killed_at = allot_scheduler::domain::UnixMillis::now().0 as i64;

    // After the grace period: leases closed node-lost at the last heartbeat.
    let lost = wait_final(&client, &once.id).await;
    assert_eq!(lost.state(), JobState::NodeLost, "{}", lost.reason);
    assert!(lost.reason.contains("did not come back"), "{}", lost.reason);
    let requeued = wait_for(&client, &again.id, "requeued", |j| {
        j.state() == JobState::Pending && j.attempt == 2
    })
    .await;
    assert_eq!(requeued.node_lost_requeues, 1);
    for j in [&lost, &requeued] {
        let l = &j.leases[0];
        assert_eq!(l.end_reason(), proto::LeaseEndReason::NodeLost);
        // Closed at the last heartbeat, not when the loss was declared.
        assert!(
            l.ended_at_unix_ms <= killed_at,
            "{} > {killed_at}",
            l.ended_at_unix_ms
        );
        assert!(l.ended_at_unix_ms >= killed_at - 2 * HEARTBEAT_MS - 100, "{l:?}");
    }

    // The node comes back (a new agent, its processes gone): the requeued
    // job runs there again as attempt 2.
    cluster.start_agent("doomed", "2xH100-80GB").await;
    let back = wait_state(&client, &again.id, JobState::Running).await;
    assert_eq!(back.attempt, 2);
    assert_eq!(back.leases.len(), 2);
    client.cancel(&again.id, "done").await.unwrap();
    assert_eq!(wait_final(&client, &again.id).await.state(), JobState::Cancelled);
    let report = cluster.admin().await.check_ledger().await.unwrap();
    assert!(report.clean, "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_gpu_time_comes_from_the_utilisation_agents_report() {
    let dir = tempdir();
    let mut cluster = Cluster::start(dir.path(), &[]).await;
    // Declared GPUs reporting 0 % utilisation, as NVML would for idle ones.
    cluster.start_agent("idle", "1xH100-80GB@0%").await;
    cluster.wait_nodes(1).await;
    let client = cluster.client().await;
    let job = client
        .submit(JobSpec::new("sleep").args(["1.2"]).gpus(1))
        .await
        .unwrap();
    let done = wait_final(&client, &job.id).await;
    assert_eq!(done.state(), JobState::Succeeded);
    let lease = &done.leases[0];
    let held = lease.ended_at_unix_ms - lease.reserved_at_unix_ms;
    let idle = lease.idle_ms.expect("the agent reported utilisation");
    // Every interval between readings while it was held, all but the first.
    assert!(idle > 0 && idle <= held, "idle {idle} of {held} ms");
    assert!(idle >= held - 3 * HEARTBEAT_MS, "idle {idle} of {held} ms");
    let from = lease.reserved_at_unix_ms - 1;
    let to = lease.ended_at_unix_ms + 1;
    let usage = client.usage(from, to, &["tenant"], None).await.unwrap();
    let row = &usage.rows[0];
    assert_eq!(row.observed_gpu_hours, row.gpu_hours);
    assert_eq!(
        row.idle_gpu_time_units.parse::<u128>().unwrap(),
        63_000_000 * idle as u128
    );
    let (code, out, err) = run_allot(
        &[
            "usage",
            "--from",
            &allot_scheduler::domain::UnixMillis(from as u64).to_string(),
        ],
        Some(&cluster.addr()),
        Some(&cluster.tenant_token),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("IDLE GPU-H"), "{out}");
}

/// The first line of a job's output on `node`, once written.
async fn output_line(cluster: &Cluster, node: &str, job: &str) -> String {
    first_line(
        &cluster
            .dir
            .join(format!("agent-{node}"))
            .join("logs")
            .join(format!("allot-{job}.out")),
    )
    .await
}

/// Regression (issue 11, defect 3): an agent killed with SIGKILL used to
/// leave its jobs running, and after the grace the controller started them
/// again elsewhere while the first copy still ran. The job's supervisor now
/// fences it: it is dead on its node before the controller requeues it, and
/// the agent, brought back later, does not report it as running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_agent_is_killed_stops_before_it_is_started_elsewhere() {
    let dir = tempdir();
    let mut cluster = Cluster::start(dir.path(), &["--node-lost-grace", "2s"]).await;
    cluster.start_agent("fence-1", "1xH100-80GB").await;
    cluster.wait_nodes(1).await;
    let client = cluster.client().await;
    let job = client
        .submit(
            JobSpec::new("sh")
                .args(["-c", "echo $$; exec sleep 600"])
                .gpus(1)
                .node_lost_retries(1),
        )
        .await
        .unwrap();
    wait_state(&client, &job.id, JobState::Running).await;
    let pid: i32 = output_line(&cluster, "fence-1", &job.id).await.parse().unwrap();
    // The only other node comes up now, so the requeued job goes there.
    cluster.start_agent("fence-2", "1xH100-80GB").await;
    cluster.wait_nodes(2).await;
    tokio::time::sleep(Duration::from_millis(3 * HEARTBEAT_MS as u64)).await;
    cluster.kill_agent("fence-1").await;
    let killed = std::time::Instant::now();

    // Watch both: when the first copy dies, and when the second is placed.
    let mut died_at = None;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let second = loop {
        if died_at.is_none() && process_gone(pid) {
            died_at = Some(now_ms());
        }
        let j = client.get(&job.id).await.unwrap();
        if j.attempt == 2 && !j.leases.iter().all(|l| l.attempt == 1) {
            break j;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never requeued: {}",
            j.reason
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let died_at = died_at.expect("the first copy was dead before the second was placed");
    let placed_at = second
        .leases
        .iter()
        .find(|l| l.attempt == 2)
        .map(|l| l.reserved_at_unix_ms)
        .unwrap();
    assert!(
        died_at <= placed_at,
        "died at {died_at}, placed again at {placed_at}"
    );
    // Fenced within three quarters of the grace of the last heartbeat.
    assert!(
        killed.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        killed.elapsed()
    );
    let second = wait_state(&client, &job.id, JobState::Running).await;
    assert_eq!(second.placement.as_ref().unwrap().node, "fence-2");
    let first = second.leases.iter().find(|l| l.attempt == 1).unwrap();
    assert_eq!(first.end_reason(), proto::LeaseEndReason::NodeLost);

    // The agent comes back: it runs nothing, and says so; the requeued
    // attempt runs on undisturbed.
    cluster.start_agent("fence-1", "1xH100-80GB").await;
    cluster.wait_nodes(2).await;
    tokio::time::sleep(Duration::from_millis(4 * HEARTBEAT_MS as u64)).await;
    let now = client.get(&job.id).await.unwrap();
    assert_eq!(
        (now.state(), now.attempt),
        (JobState::Running, 2),
        "{}",
        now.reason
    );
    let nodes = client.nodes().await.unwrap();
    let back = nodes.iter().find(|n| n.name == "fence-1").unwrap();
    assert!(
        back.gpus.iter().all(|g| g.holders.is_empty()),
        "the returning node holds nothing: {back:?}"
    );
    client.cancel(&job.id, "done").await.unwrap();
    assert_eq!(wait_final(&client, &job.id).await.state(), JobState::Cancelled);
    let report = cluster.admin().await.check_ledger().await.unwrap();
    assert!(report.clean, "{:?}", report.problems);
}

/// Regression (issue 11, defect 4): a job that ended while its agent was
/// down ran again, and its first run was billed short. Its supervisor
/// records the exit; the next agent reports the real outcome and end time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_ends_while_its_agent_is_down_is_reported_as_it_ended() {
    let dir = tempdir();
    let mut cluster = Cluster::start(dir.path(), &["--node-lost-grace", "30s"]).await;
    cluster.start_agent("gone", "1xH100-80GB").await;
    cluster.wait_nodes(1).await;
    let client = cluster.client().await;
    let job = client
        .submit(JobSpec::new("sh").args(["-c", "sleep 1; exit 3"]).gpus(1))
        .await
        .unwrap();
    wait_state(&client, &job.id, JobState::Running).await;
    cluster.kill_agent("gone").await;
    // It ends (after a second) while nobody is there to tell.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let down = client.get(&job.id).await.unwrap();
    assert_eq!(down.state(), JobState::Running, "{}", down.reason);
    cluster.start_agent("gone", "1xH100-80GB").await;
    let done = wait_final(&client, &job.id).await;
    assert_eq!(done.state(), JobState::Failed, "{}", done.reason);
    assert_eq!(done.exit_code, Some(3));
    assert_eq!(done.attempt, 1, "it did not run again");
    assert_eq!(done.leases.len(), 1);
    let lease = &done.leases[0];
    assert_eq!(lease.end_reason(), proto::LeaseEndReason::Failed);
    // Billed for the second it ran, not for the time its agent was away.
    let measured = lease.agent_runtime_ms.expect("the supervisor's measure");
    assert!((900..2000).contains(&measured), "{measured} ms");
    let billed = lease.ended_at_unix_ms - lease.started_at_unix_ms;
    assert!(
        (billed - measured).abs() <= 2 * HEARTBEAT_MS,
        "billed {billed} ms, ran {measured} ms"
    );
    let report = cluster.admin().await.check_ledger().await.unwrap();
    assert!(report.clean, "{:?}", report.problems);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Defect 12, in production: `allot agent --run-as USER` runs jobs as that
/// user; the agent's own files (every job's output, exit reports, the
/// lease) stay out of its reach, and its scratch dir is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_as_another_user_and_cannot_read_the_agents_files() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: running jobs as another user needs an agent running as root");
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        eprintln!("skipped: no user `nobody` on this machine");
        return;
    };
    let dir = tempdir();
    let mut cluster = Cluster::start(dir.path(), &[]).await;
    cluster
        .start_agent_with("runas", "1xH100-80GB", &["--run-as", "nobody"])
        .await;
    cluster.wait_nodes(1).await;
    let client = cluster.client().await;
    let first = client
        .submit(JobSpec::new("sh").args(["-c", "echo first-secret"]))
        .await
        .unwrap();
    wait_final(&client, &first.id).await;
    let out_dir = dir.path().join("agent-runas").join("logs");
    let probe = format!(
        "id -u; touch made-here && echo wrote; \
         cat {out}/allot-{first}.out 2>/dev/null | grep -c first-secret; \
         cat {state}/fence 2>/dev/null | wc -c",
        out = out_dir.display(),
        first = first.id,
        state = dir.path().join("agent-runas").display()
    );
    let job = client
        .submit(JobSpec::new("sh").args(["-c", &probe]))
        .await
        .unwrap();
    let done = wait_final(&client, &job.id).await;
    assert_eq!(done.state(), JobState::Succeeded, "{}", done.reason);
    let out = std::fs::read_to_string(out_dir.join(format!("allot-{}.out", job.id))).unwrap();
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        [nobody.uid.to_string().as_str(), "wrote", "0", "0"],
        "{out}"
    );
    // The output files are the agent's, not the job user's.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(out_dir.join(format!("allot-{}.out", job.id))).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    let scratch = dir.path().join("agent-runas").join("jobs").join(&job.id);
    assert_eq!(
        std::fs::metadata(scratch.join("made-here")).unwrap().uid(),
        nobody.uid.as_raw()
    );
}
