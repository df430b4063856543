//! Dependencies end to end: a chain of real jobs runs in order (one of them
//! an sbatch script with `#SBATCH -d`), an `afterok` on a failed job ends
//! its dependant DEPENDENCY_NEVER_SATISFIED, bad input is refused, and the
//! graph survives a controller kill -9.

use allot_sdk::{JobSpec, JobState};

use crate::cluster::Cluster;
use crate::harness::{run_allot, tempdir, wait_final, wait_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_chain_runs_in_order_and_survives_a_crash() {
    let dir = tempdir();
    let mut cluster = Cluster::start(dir.path(), &[]).await;
    let client = cluster.client().await;
    let addr = cluster.addr();
    let tenant = Some(cluster.tenant_token.clone());
    let (addr, tenant) = (Some(addr.as_str()), tenant.as_deref());
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let mark = |n: &str| format!("date +%s%N > {}/{n}", marks.display());

    // No node yet: the first waits; the rest wait on it, in a chain.
    let first = client
        .submit(JobSpec::new("sh").args(["-c", &format!("{}; sleep 0.2", mark("1"))]))
        .await
        .unwrap();
    let (code, second, err) = run_allot(
        &[
            "submit",
            "--dependency",
            &format!("afterok:{}", first.id),
            "--",
            "sh",
            "-c",
            &mark("2"),
        ],
        addr,
        tenant,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let second = second
        .split_whitespace()
        .find(|w| w.len() == 36)
        .expect("an id")
        .to_string();
    let script = dir.path().join("third.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\n#SBATCH -d afterany:{second}\n{}\nexit 3\n", mark("3")),
    )
    .unwrap();
    let (code, third, err) = run_allot(
        // In the temp dir: the script's slurm-%j.out goes to its working directory.
        &[
            "sbatch",
            "--parsable",
            "-D",
            &dir.path().display().to_string(),
            &script.display().to_string(),
        ],
        addr,
        tenant,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let third = third.trim().to_string();
    let doomed = client
        .submit(JobSpec::new("true").dependency(format!("afterok:{third}")))
        .await
        .unwrap();
    let (code, out, err) = run_allot(&["job", &second], addr, tenant).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("waiting for afterok {}: PENDING", first.id)),
        "{out}"
    );

    // Bad input: refused naming the field, nothing stored.
    for (dep, why) in [
        ("afterok:nope".to_string(), "UUID"),
        (format!("afterok:{}", uuid_like()), "no job"),
        (format!("afterok:{}?afterany:{}", first.id, first.id), ""),
    ] {
        let r = client.submit(JobSpec::new("true").dependency(dep.clone())).await;
        if why.is_empty() {
            let j = r.unwrap_or_else(|e| panic!("{dep}: {e}"));
            client.cancel(&j.id, "").await.unwrap();
            continue;
        }
        let e = r.expect_err(&dep);
        assert_eq!(e.field(), Some("spec.dependency"), "{dep}: {}", e.message());
        assert!(e.message().contains(why), "{dep}: {}", e.message());
    }

    // kill -9 and back, then a node: the chain runs in order.
    cluster.kill_server().await;
    cluster.start_server().await;
    cluster.start_agent("dep-1", "4xH100-80GB").await;
    cluster.wait_nodes(1).await;
    let client = cluster.client().await;
    assert_eq!(wait_final(&client, &first.id).await.state(), JobState::Succeeded);
    assert_eq!(wait_final(&client, &second).await.state(), JobState::Succeeded);
    assert_eq!(wait_final(&client, &third).await.exit_code, Some(3));
    let d = wait_state(&client, &doomed.id, JobState::DependencyNeverSatisfied).await;
    assert!(
        d.reason.contains(&format!("afterok {third}: FAILED")),
        "{}",
        d.reason
    );
    let at = |n: &str| -> u128 {
        std::fs::read_to_string(marks.join(n))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!(at("1") < at("2") && at("2") < at("3"), "in order");
}

/// A job id no job has.
fn uuid_like() -> String {
    "01900000-0000-7000-8000-000000000000".into()
}
