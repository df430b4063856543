//! Job arrays end to end: an sbatch script with `--array` and `-o/-e`
//! runs its tasks on a real agent, each writing the files Slurm would name;
//! pending tasks fold in `allot jobs`; one task or the whole array is
//! cancelled, held and released; bad arrays are refused; and an array
//! survives a controller kill -9.

use allot_sdk::{JobSpec, JobState, ListJobs};

use crate::cluster::Cluster;
use crate::harness::{run_allot, tempdir, wait_final, wait_for, wait_state};

const SCRIPT: &str = r#"#!/bin/sh
#SBATCH -J sweep
#SBATCH --array=0-5%2
#SBATCH -o out/%x-%A_%a.txt
#SBATCH -e out/%x-%A_%a.err
echo "task=$SLURM_ARRAY_TASK_ID count=$SLURM_ARRAY_TASK_COUNT array=$SLURM_ARRAY_JOB_ID allot=$ALLOT_ARRAY_TASK_ID"
echo "oops $SLURM_ARRAY_TASK_ID" >&2
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sbatch_array_writes_slurms_files_folds_and_survives_a_crash() {
    let dir = tempdir();
    let mut cluster = Cluster::start(dir.path(), &[]).await;
    let client = cluster.client().await;
    let addr = cluster.addr();
    let token = cluster.tenant_token.clone();
    let (addr, token) = (Some(addr.as_str()), Some(token.as_str()));
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("out")).unwrap();
    let script = work.join("sweep.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    let work_s = work.display().to_string();

    // Submitted with no node: one record, the tasks folded.
    let (code, out, err) = run_allot(
        &[
            "sbatch",
            "--parsable",
            "-D",
            &work_s,
            &script.display().to_string(),
        ],
        addr,
        token,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let sweep = out.trim().to_string();
    // Another, submitted held (sbatch -H): it waits until released.
    let held_script = work.join("held.sh");
    std::fs::write(&held_script, "#!/bin/sh\n#SBATCH -H\necho released\n").unwrap();
    let (code, out, err) = run_allot(
        &[
            "sbatch",
            "--parsable",
            "-D",
            &work_s,
            &held_script.display().to_string(),
        ],
        addr,
        token,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let held = out.trim().to_string();
    let h = client.get(&held).await.unwrap();
    assert!(h.held && h.state() == JobState::Pending, "{h:?}");
    let (code, out, err) = run_allot(&["jobs"], addr, token).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{sweep}_[1-5%2]")) || out.contains(&format!("{sweep}_[0-5%2]")),
        "pending tasks fold like squeue's:\n{out}"
    );
    // A second array whose tasks wait on a long first one: its rest stays
    // folded while task 0 runs.
    let long = client
        .submit(JobSpec::new("sleep").args(["30"]).array("0-99%1"))
        .await
        .unwrap();

    // kill -9 before anything ran, then a node: the arrays go on.
    cluster.kill_server().await;
    cluster.start_server().await;
    cluster.start_agent("arr-1", "4xH100-80GB").await;
    cluster.wait_nodes(1).await;
    let client = cluster.client().await;
    let done = wait_final(&client, &sweep).await;
    assert_eq!(done.state(), JobState::Succeeded, "{}", done.reason);
    assert_eq!((done.array_tasks, done.array_succeeded), (6, 6));
    for i in 0..6 {
        let out = std::fs::read_to_string(work.join(format!("out/sweep-{sweep}_{i}.txt")))
            .unwrap_or_else(|e| panic!("task {i}'s output file: {e}"));
        assert_eq!(
            out.trim(),
            format!("task={i} count=6 array={sweep} allot={i}"),
            "task {i}"
        );
        let err = std::fs::read_to_string(work.join(format!("out/sweep-{sweep}_{i}.err"))).unwrap();
        assert_eq!(err.trim(), format!("oops {i}"));
    }
    // The held one did not start meanwhile; released, it runs.
    let h = client.get(&held).await.unwrap();
    assert!(h.held && h.state() == JobState::Pending, "{}", h.reason);
    let (code, _, err) = run_allot(&["release", &held], addr, token).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(wait_final(&client, &held).await.state(), JobState::Succeeded);
    let out = std::fs::read_to_string(work.join(format!("slurm-{held}.out"))).unwrap();
    assert_eq!(out.trim(), "released", "Slurm's default output file");
    // `allot logs` reads a task's own output file.
    let (code, log, err) = run_allot(&["logs", &format!("{sweep}_3")], addr, token).await;
    assert_eq!(code, 0, "{err}");
    assert!(log.contains("task=3 count=6"), "{log}");

    // The long array: task 0 runs, the rest waits folded.
    let t0 = format!("{}_0", long.id);
    wait_state(&client, &t0, JobState::Running).await;
    let (_, out, _) = run_allot(&["jobs"], addr, token).await;
    assert!(out.contains(&format!("{}_[1-99%1]", long.id)), "{out}");
    assert!(out.contains(&t0), "{out}");
    // One task before its turn: cancelled alone.
    let (code, _, err) = run_allot(&["cancel", &format!("{}_50", long.id)], addr, token).await;
    assert_eq!(code, 0, "{err}");
    let t50 = client.get(&format!("{}_50", long.id)).await.unwrap();
    assert_eq!(t50.state(), JobState::Cancelled);
    assert_eq!(t50.array_task_id, Some(50));
    // The whole array held, then cancelled: the running task stops, the
    // array ends CANCELLED.
    let (code, _, err) = run_allot(&["hold", &long.id], addr, token).await;
    assert_eq!(code, 0, "{err}");
    assert!(client.get(&long.id).await.unwrap().held);
    let (code, out, err) = run_allot(&["job", &long.id], addr, token).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("array:        0-99%1 (100 tasks)"), "{out}");
    let (code, _, err) = run_allot(&["cancel", &long.id], addr, token).await;
    assert_eq!(code, 0, "{err}");
    let end = wait_final(&client, &long.id).await;
    assert_eq!(end.state(), JobState::Cancelled, "{}", end.reason);
    assert_eq!(end.array_cancelled, 100);
    wait_for(&client, &t0, "cancelled", |j| j.state() == JobState::Cancelled).await;

    // Bad arrays: INVALID_ARGUMENT naming the field, nothing stored.
    let before = client.list_all(ListJobs::default()).await.unwrap().len();
    for (array, why) in [
        ("0-10000000", "more than 1000000 tasks"),
        ("5-1", "5 is after 1"),
        ("0-9%0", "%0"),
        ("x", "not a task index"),
    ] {
        let e = client
            .submit(JobSpec::new("true").array(array))
            .await
            .expect_err(array);
        assert_eq!(e.field(), Some("spec.array"), "{array}: {}", e.message());
        assert!(e.message().contains(why), "{array}: {}", e.message());
    }
    let (code, _, err) = run_allot(&["submit", "--array", "0-100000", "--", "true"], addr, token).await;
    assert_eq!(code, 1);
    assert!(err.contains("--max-array-size"), "{err}");
    assert_eq!(client.list_all(ListJobs::default()).await.unwrap().len(), before);
}
