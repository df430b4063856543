//! Queues end to end: defined in the config file and with `allot queue`,
//! shown by `allot queues`, a script's `#SBATCH -p` running on the queue's
//! nodes with SLURM_JOB_PARTITION, bad submissions refused naming the
//! field, and the queues surviving a controller kill -9.

use allot_sdk::{JobSpec, JobState, ListJobs};

use crate::cluster::Cluster;
use crate::harness::{run_allot, tempdir, wait_final};

const CONFIG: &str = r#"
[[queues]]
name = "batch"
default = true
default_time = "1h"
max_time = "1d"

[fairshare]
half_life = "2d"
tenants = { crash = 3 }

[qos]
high = 5
"#;

fn column<'a>(table: &'a str, queue: &str, header: &str) -> &'a str {
    let mut lines = table.lines();
    let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let at = head
        .iter()
        .position(|h| *h == header)
        .unwrap_or_else(|| panic!("{header} in {table}"));
    lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells[0].trim_end_matches('*') == queue)
        .unwrap_or_else(|| panic!("queue {queue} in:\n{table}"))[at]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_place_jobs_on_their_nodes_refuse_what_they_do_not_allow_and_survive_a_crash() {
    let dir = tempdir();
    let config = dir.path().join("allot.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let config_s = config.display().to_string();
    let mut cluster = Cluster::start(dir.path(), &["--config", &config_s]).await;
    cluster
        .start_agent_with("pool-a-1", "2xH100-80GB", &["--label", "pool=a"])
        .await;
    cluster.start_agent("other-1", "2xH100-80GB").await;
    cluster.wait_nodes(2).await;
    let addr = cluster.addr();
    let (addr, admin, tenant) = (
        Some(addr.as_str()),
        Some(cluster.admin_token.clone()),
        Some(cluster.tenant_token.clone()),
    );
    let (admin, tenant) = (admin.as_deref(), tenant.as_deref());

    let (code, out, err) = run_allot(
        &[
            "queue",
            "create",
            "pool-a",
            "--node-label",
            "pool=a",
            "--max-time",
            "2h",
            "--tier",
            "1",
            "--tenant",
            "crash",
            "--max-running",
            "1",
        ],
        addr,
        admin,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("pool-a (api)") && out.contains("nodes: pool=a"),
        "{out}"
    );
    // A tenant may not change queues; a config queue is changed in the file.
    let (code, _, err) = run_allot(&["queue", "update", "pool-a", "--tier", "9"], addr, tenant).await;
    assert_eq!(code, 1);
    assert!(err.contains("PermissionDenied"), "{err}");
    let (code, _, err) = run_allot(&["queue", "update", "batch", "--tier", "9"], addr, admin).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("FailedPrecondition") && err.contains("config file"),
        "{err}"
    );

    let (code, table, err) = run_allot(&["queues"], addr, tenant).await;
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("batch*"), "the default is starred:\n{table}");
    assert_eq!(column(&table, "pool-a", "GPUS(A/I/O/T)"), "0/2/0/2");
    assert_eq!(column(&table, "batch", "GPUS(A/I/O/T)"), "0/4/0/4");
    assert_eq!(column(&table, "batch", "TIMELIMIT"), "1d");

    // Writes a script, runs it with `allot sbatch -W`; its id and output.
    let sbatch = |name: &str, text: &str| {
        let script = dir.path().join(name);
        std::fs::write(&script, text).unwrap();
        let work = dir.path().display().to_string();
        async move {
            let (code, out, err) = run_allot(
                // In the temp dir: the script's slurm-%j.out goes to its working directory.
                &[
                    "sbatch",
                    "--parsable",
                    "-W",
                    "-D",
                    &work,
                    &script.display().to_string(),
                ],
                addr,
                tenant,
            )
            .await;
            assert_eq!(code, 0, "{out}{err}");
            let id = out.trim().to_string();
            let (code, log, err) = run_allot(&["logs", &id], addr, tenant).await;
            assert_eq!(code, 0, "{err}");
            (id, log)
        }
    };
    // A script that names the queue runs on its node and sees its name.
    let (id, log) = sbatch(
        "where.sh",
        "#!/bin/sh\n#SBATCH -p pool-a\n#SBATCH --gres=gpu:1\necho \"partition=$SLURM_JOB_PARTITION node=$SLURMD_NODENAME\"\n",
    )
    .await;
    assert!(log.contains("partition=pool-a node=pool-a-1"), "{log}");
    let client = cluster.client().await;
    let job = client.get(&id).await.unwrap();
    assert_eq!(
        job.spec.as_ref().unwrap().time_limit_ms,
        Some(7_200_000),
        "the queue's maximum"
    );
    // A job that names no queue waits in the default one, with its default limit.
    let plain = client.submit(JobSpec::new("true")).await.unwrap();
    assert_eq!(plain.spec.as_ref().unwrap().queue, "batch");
    assert_eq!(plain.spec.as_ref().unwrap().time_limit_ms, Some(3_600_000));
    assert_eq!(wait_final(&client, &plain.id).await.state(), JobState::Succeeded);

    // A QOS from the config file, and nodes excluded by a script's -x.
    let (id, log) = sbatch(
        "qos.sh",
        "#!/bin/sh\n#SBATCH --qos=high -x pool-a-[1-3]\necho \"node=$SLURMD_NODENAME\"\n",
    )
    .await;
    let job = client.get(&id).await.unwrap();
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.qos, "high");
    assert_eq!(spec.exclude_nodes, ["pool-a-1", "pool-a-2", "pool-a-3"]);
    assert!(log.contains("node=other-1"), "-x kept it off pool-a-1: {log}");

    // Refused, naming the field; nothing stored.
    let before = client.list_all(ListJobs::default()).await.unwrap().len();
    let (code, _, err) = run_allot(&["submit", "--qos", "gold", "--", "true"], addr, tenant).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("field spec.qos") && err.contains("there is no QOS gold (this server has high, normal)"),
        "{err}"
    );
    let (code, _, err) = run_allot(&["submit", "--queue", "nope", "--", "true"], addr, tenant).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("InvalidArgument, field spec.queue") && err.contains("nope"),
        "{err}"
    );
    let (code, _, err) = run_allot(
        &["submit", "--queue", "pool-a", "--time", "3h", "--", "true"],
        addr,
        tenant,
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("field spec.time_limit_ms") && err.contains("maximum time limit"),
        "{err}"
    );
    assert_eq!(client.list_all(ListJobs::default()).await.unwrap().len(), before);

    // Fair share: the configured weight and half-life, the tenant's own rows
    // for a tenant token (each level's shares sum to one).
    let (code, out, err) = run_allot(&["--json", "fairshare"], addr, admin).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["half_life_ms"], 172_800_000);
    let tenants = v["tenants"].as_array().unwrap();
    let crash = tenants
        .iter()
        .find(|t| t["tenant"] == "crash")
        .expect("crash listed");
    assert_eq!(crash["weight"], 3);
    let shares: f64 = tenants.iter().map(|t| t["share"].as_f64().unwrap()).sum();
    assert!((shares - 1.0).abs() < 1e-9, "{out}");
    let (code, table, err) = run_allot(&["fairshare"], addr, tenant).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        table.starts_with("TENANT/PROJECT") && table.contains("crash"),
        "{table}"
    );
    assert!(table.contains("usage halves every 2d"), "{table}");

    // kill -9 and back: the queue made over the API is still there.
    cluster.kill_server().await;
    cluster.start_server().await;
    let queues = cluster.admin().await.queues().list().await.unwrap();
    let names: Vec<&str> = queues
        .iter()
        .map(|q| q.queue.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["batch", "pool-a"]);
    let pool = queues[1].queue.as_ref().unwrap();
    assert_eq!((pool.priority_tier, pool.max_time_limit_ms), (1, Some(7_200_000)));
    assert_eq!(pool.tenants, ["crash"]);
    let (code, _, err) = run_allot(&["queue", "delete", "pool-a"], addr, admin).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_allot(&["queue", "delete", "batch"], addr, admin).await;
    assert_eq!(code, 1);
    assert!(err.contains("config file"), "{err}");
}
