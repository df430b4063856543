//! Slurm batch scripts through `allot sbatch` (and `allot submit
//! script.sh`): directives honoured, warned about or refused, the script
//! run by a real agent with Slurm's variables.

use allot_sdk::{JobState, ListJobs};

use crate::harness::{DevServer, run_allot, tempdir, wait_final};

/// A script as a cluster's user guide would show it.
const SCRIPT: &str = r#"#!/bin/bash
#SBATCH --job-name=resnet-smoke
#SBATCH -t 0:10:00
#SBATCH --gres=gpu:1
#SBATCH -c 2 --mem=2G        # two cores, 2 GiB
#SBATCH --export=ALL,GREETING=hello
#SBATCH --mail-type=END

# the body starts here
echo "id=$SLURM_JOB_ID name=$SLURM_JOB_NAME nodes=$SLURM_NNODES procid=$SLURM_PROCID"
echo "gpus=$SLURM_GPUS_ON_NODE cpus=$SLURM_CPUS_PER_TASK nodelist=$SLURM_JOB_NODELIST"
echo "cuda=$CUDA_VISIBLE_DEVICES"
echo "submit=$SLURM_SUBMIT_DIR greeting=$GREETING arg=$1"
echo "pwd=$(pwd -P)"
"#;

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sbatch_script_runs_with_its_directives_and_slurms_variables() {
    let dir = tempdir();
    let s = DevServer::start(dir.path()).await;
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let script = work.join("smoke.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    let (addr, token) = (Some(s.addr.as_str()), Some(s.token.as_str()));
    let script_s = script.display().to_string();
    let work_s = work.display().to_string();

    // -W waits and exits with the job's code; the command line's -D wins.
    let (code, out, err) = run_allot(&["sbatch", "-W", "-D", &work_s, &script_s, "first"], addr, token).await;
    assert_eq!(code, 0, "{out}{err}");
    let id = out
        .trim()
        .strip_prefix("Submitted batch job ")
        .unwrap_or_else(|| panic!("sbatch's line: {out}"))
        .to_string();
    assert!(
        err.contains("--mail-type=END (line 7) is ignored: allot sends no mail"),
        "{err}"
    );
    let client = s.client().await;
    let job = client.get(&id).await.unwrap();
    assert_eq!(job.state(), JobState::Succeeded, "{}", job.reason);
    let spec = job.spec.clone().unwrap();
    assert_eq!(spec.name, "resnet-smoke");
    assert_eq!(spec.time_limit_ms, Some(600_000));
    let r = spec.resources.unwrap();
    assert_eq!((r.cpu_millis, r.memory_mib), (2000, 2048));
    assert_eq!(r.gpu, Some(allot_sdk::proto::resources::Gpu::Gpus(1)));
    assert_eq!(spec.working_dir, work_s);

    let (code, log, err) = run_allot(&["logs", &id], addr, token).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(line(&log, "id"), id);
    assert_eq!(line(&log, "name"), "resnet-smoke");
    assert_eq!((line(&log, "nodes"), line(&log, "procid")), ("1", "0"));
    assert_eq!((line(&log, "gpus"), line(&log, "cpus")), ("1", "2"));
    let node = &job.placement.as_ref().unwrap().node;
    assert_eq!(line(&log, "nodelist"), node);
    assert!(line(&log, "cuda").starts_with("GPU-"), "{log}");
    assert_eq!(line(&log, "greeting"), "hello");
    assert_eq!(line(&log, "arg"), "first");
    assert_eq!(
        line(&log, "pwd"),
        std::fs::canonicalize(&work).unwrap().display().to_string()
    );
    assert_eq!(
        line(&log, "submit"),
        std::env::current_dir().unwrap().display().to_string()
    );

    // A script that fails: -W exits with its code; `allot submit` takes a
    // batch script as sbatch does.
    let failing = work.join("fail.sh");
    std::fs::write(&failing, "#!/bin/sh\n#SBATCH -J failing\nexit 3\n").unwrap();
    let failing_s = failing.display().to_string();
    // In the temp dir: the script's slurm-%j.out goes to its working directory.
    let (code, out, err) = run_allot(
        &["sbatch", "--parsable", "-W", "-D", &work_s, &failing_s],
        addr,
        token,
    )
    .await;
    assert_eq!(code, 3, "{out}{err}");
    let failed = client.get(out.trim()).await.unwrap();
    assert_eq!((failed.state(), failed.exit_code), (JobState::Failed, Some(3)));
    let (code, out, err) = run_allot(
        &["--json", "submit", "--workdir", &work_s, &failing_s],
        addr,
        token,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let again = wait_final(&client, v["id"].as_str().unwrap()).await;
    assert_eq!(
        (again.spec.unwrap().name.as_str(), again.exit_code),
        ("failing", Some(3))
    );

    // What allot cannot honour is refused, naming the line or the field;
    // nothing is stored.
    let before = client.list_all(ListJobs::default()).await.unwrap().len();
    let refused = work.join("partition.sh");
    std::fs::write(
        &refused,
        "#!/bin/bash\n#SBATCH --time=5\n#SBATCH -p gpu\nsrun true\n",
    )
    .unwrap();
    let (code, out, err) = run_allot(&["sbatch", &refused.display().to_string()], addr, token).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("field spec.queue") && err.contains("there is no queue gpu"),
        "an unknown partition is the server's INVALID_ARGUMENT: {err}"
    );
    let (code, _, err) = run_allot(&["sbatch", "--time=90min", &script_s], addr, token).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("--time=90min (the command line): \"90min\" is not a Slurm time"),
        "{err}"
    );
    let not_a_script = work.join("plain.sh");
    std::fs::write(&not_a_script, "echo no interpreter line\n").unwrap();
    let (code, _, err) = run_allot(&["sbatch", &not_a_script.display().to_string()], addr, token).await;
    assert_eq!(code, 1);
    assert!(err.contains("its first line must start with #!"), "{err}");
    assert_eq!(client.list_all(ListJobs::default()).await.unwrap().len(), before);
}
