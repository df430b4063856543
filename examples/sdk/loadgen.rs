//! A load generator: submits N short jobs with C in flight and reports the
//! submit → running → succeeded latency and the throughput.
//!
//! ```sh
//! allot server --dev &     # paste its export lines
//! cargo run --release -p allot-sdk --example loadgen -- --jobs 200 --concurrency 8
//! ```
//!
//! Each job runs `true` on one whole GPU, so at most eight run at once on the
//! dev fleet: the numbers include real process launches by the agents.
//!
//! `--admission-plugin FILE.wasm` first uploads that component and binds it
//! as the tenant's admission plugin, so every submission goes through it
//! (jobs carry the tag `cost-center=loadgen`, which the
//! `require-cost-center` example asks for); `--quota-plugin` and
//! `--pricing-plugin` do the same for the other two points, so every
//! placement and every lease goes through them too. `--project NAME` puts
//! the jobs in that project (`ml-research` may hold 16 GPUs under the
//! `project-caps` example, more than the dev fleet has).

use std::time::{Duration, Instant};

use allot_sdk::{Client, JobSpec, JobState, Scope};
use futures::StreamExt;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jobs = arg("--jobs", 100);
    let concurrency = arg("--concurrency", 4).max(1);
    let addr = std::env::var("ALLOT_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7070".into());
    let token = std::env::var("ALLOT_TOKEN").map_err(|_| "set ALLOT_TOKEN (allot server --dev prints it)")?;
    let client = Client::connect(addr, token).await?;
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    for (flag, name) in [
        ("--admission-plugin", "loadgen-admission"),
        ("--quota-plugin", "loadgen-quota"),
        ("--pricing-plugin", "loadgen-pricing"),
    ] {
        if let Some(path) = value(flag) {
            let wasm = std::fs::read(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
            client.plugins().add(name, wasm, &Scope::Own).await?;
            client.plugins().bind(name, None, &Scope::Own).await?;
            println!("{flag}: {path}, bound as {name}");
        }
    }
    let project = value("--project").unwrap_or_else(|| "default".into());
    let array = arg("--array", 0);
    if array > 0 {
        let repeat = arg("--repeat", 20).max(1);
        let mut took = Vec::with_capacity(repeat);
        for _ in 0..repeat {
            let spec = JobSpec::new("true")
                .gpus(1)
                .project(project.clone())
                .array(format!("0-{}", array - 1));
            let t0 = Instant::now();
            let job = client.submit(spec).await?;
            took.push(t0.elapsed());
            client.cancel(&job.id, "loadgen").await?;
        }
        took.sort();
        println!(
            "{repeat} arrays of {array} tasks: SubmitJob p50 {:?}, p99 {:?}, max {:?}",
            pct(&took, 0.5),
            pct(&took, 0.99),
            took.last().copied().unwrap_or_default()
        );
        return Ok(());
    }

    let started = Instant::now();
    let results: Vec<Result<(Duration, Duration, Duration), allot_sdk::Error>> =
        futures::stream::iter(0..jobs)
            .map(|i| {
                let client = client.clone();
                let project = project.clone();
                async move {
                    let t0 = Instant::now();
                    let job = client
                        .submit(
                            JobSpec::new("true")
                                .name(format!("load-{i}"))
                                .gpus(1)
                                .project(project.clone())
                                .tag("cost-center", "loadgen"),
                        )
                        .await?;
                    let submitted = t0.elapsed();
                    let mut running = None;
                    let mut stream = Box::pin(client.watch(&job.id).await?);
                    while let Some(j) = stream.next().await {
                        let j = j?;
                        if running.is_none()
                            && j.state() != JobState::Pending
                            && j.state() != JobState::Starting
                        {
                            running = Some(t0.elapsed());
                        }
                        if allot_sdk::is_final(j.state()) {
                            if j.state() != JobState::Succeeded {
                                eprintln!("job {} ended {:?}: {}", j.id, j.state(), j.reason);
                            }
                            break;
                        }
                    }
                    let done = t0.elapsed();
                    Ok((submitted, running.unwrap_or(done), done))
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
    let wall = started.elapsed();
    let mut submit = Vec::new();
    let mut done = Vec::new();
    let mut failed = 0;
    for r in results {
        match r {
            Ok((s, _, d)) => {
                submit.push(s);
                done.push(d);
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    submit.sort();
    done.sort();
    println!(
        "jobs: {jobs}, concurrency: {concurrency}, failed: {failed}, wall: {:.2?}",
        wall
    );
    println!(
        "throughput: {:.1} jobs/s (submit → succeeded)",
        jobs as f64 / wall.as_secs_f64()
    );
    println!(
        "submit RPC:            p50 {:>8.2?}  p99 {:>8.2?}",
        pct(&submit, 0.5),
        pct(&submit, 0.99)
    );
    println!(
        "submit → succeeded:    p50 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}",
        pct(&done, 0.5),
        pct(&done, 0.99),
        done.last().copied().unwrap_or_default()
    );
    Ok(())
}
