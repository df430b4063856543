//! A production-shaped install: `allot server` and a separate `allot agent`
//! process, driven through the `allot` CLI itself.

use std::process::Stdio;

use allot_sdk::{Client, JobState, proto};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::harness::*;

const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/fleet.toml");
const JOB_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/jobs/hello.toml");

async fn cli(addr: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    run_allot(args, Some(addr), Some(token)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_agent_processes_run_jobs_submitted_by_the_cli() {
    let dir = tempdir();
    let data = dir.path().join("controller");
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut server = Command::new(BIN)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--heartbeat",
            "200ms",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("allot server listening on ")
        .expect(&line)
        .to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // First start wrote an admin token, readable only by its owner.
    let token_file = data.join("admin.token");
    let admin_token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Health and reflection answer without a token.
    let channel = tonic::transport::Endpoint::from_shared(addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "allot.v1.JobService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // Set up a tenant and an agent token with the CLI.
    let (code, _, err) = cli(&addr, &admin_token, &["tenant", "create", "research"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, tenant_token, err) =
        cli(&addr, &admin_token, &["token", "issue", "--tenant", "research"]).await;
    assert_eq!(code, 0, "{err}");
    let tenant_token = tenant_token.trim().to_string();
    // An agent token names its node: without one it is refused.
    let (code, _, err) = cli(&addr, &admin_token, &["token", "issue", "--role", "agent"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("--node"), "{err}");
    let (code, agent_token, err) = cli(
        &addr,
        &admin_token,
        &["token", "issue", "--role", "agent", "--node", "lab-7"],
    )
    .await;
    assert_eq!(code, 0, "{err}");

    let agent_log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let _agent = Command::new(BIN)
        .args([
            "agent",
            "--controller",
            &addr,
            "--node",
            "lab-7",
            "--fleet",
            FLEET,
            "--state-dir",
        ])
        .arg(dir.path().join("agent"))
        .env("ALLOT_TOKEN", agent_token.trim())
        .stdout(Stdio::null())
        .stderr(Stdio::from(agent_log))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = Client::connect(addr.clone(), &tenant_token).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let node = loop {
        if let Some(n) = client
            .nodes()
            .await
            .unwrap()
            .into_iter()
            .find(|n| n.name == "lab-7")
        {
            break n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never registered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(node.gpus.len(), 5);
    assert_eq!(node.cpu_millis, 32_000);
    assert_eq!(node.labels.get("zone").map(String::as_str), Some("lab-a"));
    assert_eq!(node.gpus[4].mig_slices.len(), 4);

    // `allot submit --wait` runs the job and exits with its code.
    let (code, out, err) = cli(
        &addr,
        &tenant_token,
        &[
            "submit",
            "--gpus",
            "2",
            "--tag",
            "k=v",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo $CUDA_VISIBLE_DEVICES",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SUCCEEDED"), "{out}");
    let (code, _, _) = cli(
        &addr,
        &tenant_token,
        &["submit", "--wait", "--", "sh", "-c", "exit 7"],
    )
    .await;
    assert_eq!(code, 7);

    // A job file works the same way.
    let (code, out, err) = cli(&addr, &tenant_token, &["submit", JOB_FILE, "--wait", "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["state"], "SUCCEEDED");
    assert_eq!(job["placement"]["devices"][0]["mig_profile"], "1g.10gb");

    // `allot jobs --json` lists all three, `allot job`, `allot logs` show one.
    let (code, out, _) = cli(&addr, &tenant_token, &["jobs", "--json"]).await;
    assert_eq!(code, 0);
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(jobs.len(), 3);
    let first = jobs[0]["id"].as_str().unwrap().to_string();
    let devices: Vec<String> = jobs[0]["placement"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_uuid"].as_str().unwrap().to_string())
        .collect();
    let (_, logs, _) = cli(&addr, &tenant_token, &["logs", &first]).await;
    assert_eq!(logs.trim(), devices.join(","));
    let (code, shown, _) = cli(&addr, &tenant_token, &["job", &first]).await;
    assert_eq!(code, 0);
    assert!(
        shown.contains("SUCCEEDED") && shown.contains("leases:") && shown.contains("k=v"),
        "{shown}"
    );
    let (code, _, err) = cli(&addr, &tenant_token, &["submit", "--gpus", "0", "--", "true"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("spec.resources.gpus"), "{err}");

    // Node state through the CLI.
    let (code, out, _) = cli(&addr, &tenant_token, &["nodes"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("lab-7") && out.contains("MIG 3g.40gb"), "{out}");
    let j = client.get(&first).await.unwrap();
    assert_eq!(j.state(), JobState::Succeeded);
    assert_eq!(j.leases[0].state(), proto::LeaseState::Closed);
    server.start_kill().unwrap();
}
