//! `allot sim` from the command line: the JSON report and its errors.

use crate::harness::run_allot;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/openb");

async fn sim(args: &[&str]) -> (i32, String, String) {
    let all: Vec<&str> = std::iter::once("sim").chain(args.iter().copied()).collect();
    run_allot(&all, None, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_prints_one_json_report() {
    let nodes = format!("{DATA}/openb_node_list_gpu_node.csv");
    let pods = format!("{DATA}/openb_pod_list_multigpu50.csv");
    let (code, out, err) = sim(&[
        "--nodes", &nodes, "--pods", &pods, "--policy", "best-fit", "--seeds", "42,43", "--json",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(r["policy"], "best-fit");
    assert_eq!(r["seeds"], serde_json::json!([42, 43]));
    assert_eq!(r["nodes"], 1213);
    assert_eq!(r["gpus"], 6212);
    for key in ["alloc_pct_at_100", "alloc_pct_at_130", "frag_pct_at_100"] {
        let v = r[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {r}"));
        assert!((0.0..=100.0).contains(&v), "{key} = {v}");
    }
    assert!(r["alloc_pct_at_130"].as_f64() > Some(95.0), "{r}");
    assert_eq!(r["per_seed"].as_array().map(Vec::len), Some(2));

    // Bad input: a clear message, exit 1, nothing printed on stdout.
    for (args, says) in [
        (vec!["--policy", "greedy"], "unknown policy"),
        (vec!["--seeds", "9..1"], "invalid seeds"),
        (vec!["--tune-ratio", "0"], "tune-ratio"),
    ] {
        let mut all = vec!["--nodes", nodes.as_str(), "--pods", pods.as_str()];
        all.extend(args);
        let (code, out, err) = sim(&all).await;
        assert_eq!(code, 1, "{all:?}");
        assert!(out.is_empty());
        assert!(err.contains(says), "{err}");
    }
    let (code, _, err) = sim(&["--nodes", "/no/such.csv", "--pods", &pods]).await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot read /no/such.csv"), "{err}");
    let (code, _, err) = sim(&["--nodes", &nodes, "--pods", &pods, "--timeline"]).await;
    assert_eq!(code, 1, "multigpu50 has no times");
    assert!(err.contains("creation_time"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_mode_compares_four_schedulers_on_a_trace() {
    let dir = crate::harness::tempdir();
    let nodes = dir.path().join("nodes.csv");
    std::fs::write(
        &nodes,
        "sn,cpu_milli,memory_mib,gpu,model\nn1,64000,262144,4,V100M16\n",
    )
    .unwrap();
    // A 4-GPU job among a stream of 1-GPU ones, in the openb columns.
    let mut pods = String::from(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n",
    );
    for i in 0..40u64 {
        let qos = if i % 2 == 0 { "LS" } else { "BE" };
        let t = i * 10;
        pods.push_str(&format!(
            "s{i:03},1000,1024,1,1000,,{qos},Succeeded,{t},{},{t}\n",
            t + 25
        ));
    }
    pods.push_str("big,1000,1024,4,1000,,LS,Succeeded,15,115,15\n");
    let pods_path = dir.path().join("pods.csv");
    std::fs::write(&pods_path, pods).unwrap();
    let (n, p) = (nodes.display().to_string(), pods_path.display().to_string());
    let (code, out, err) = sim(&[
        "--nodes",
        &n,
        "--pods",
        &p,
        "--batch",
        "--limit-factor",
        "1",
        "--json",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(r["mode"], "batch");
    let rows = r["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|w| w["scheduler"].as_str().unwrap()).collect();
    assert_eq!(names, ["fifo", "greedy", "backfill", "fairshare+backfill"]);
    let big = |k: usize| rows[k]["big_wait_mean_s"].as_f64().unwrap();
    assert!(big(2) < big(1), "backfill does not starve the big job: {r}");
    for w in rows {
        assert_eq!(w["placed"], 41, "{w}");
    }
    // Bad input: a clear message, exit 1.
    let (code, _, err) = sim(&["--nodes", &n, "--pods", &p, "--batch", "--limit-factor", "0.5"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("time-limit factor"), "{err}");
    let (code, _, err) = sim(&["--nodes", &n, "--pods", &p, "--batch", "--timeline"]).await;
    assert_eq!(code, 2, "{err}");
}
