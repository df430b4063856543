//! `allot submit | jobs | job | cancel | watch | logs`.

use std::io::Write;
use std::time::Duration;

use allot_sdk::{Client, ListJobs, is_final, proto};
use futures::StreamExt;

use super::jobfile::{JobFile, cpu_millis, duration_ms, memory_mib, set_gpu};
use super::output::{self, age, command_line, gpu_request, state_name, table, time};
use super::sbatch::{self, Source};
use super::{JobsArgs, SubmitArgs};

/// The largest batch script read (the server takes at most 64 KiB of spec).
const MAX_SCRIPT_BYTES: u64 = 1 << 20;

/// Where the submission happens, for `--export` and `SLURM_SUBMIT_*`.
fn submitter() -> anyhow::Result<sbatch::Submitter> {
    Ok(sbatch::Submitter {
        cwd: std::env::current_dir()?.display().to_string(),
        host: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        env: std::env::vars().collect(),
    })
}

/// Whether a job file is a batch script (it starts with `#!`).
fn is_script(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == b"#!")
}

/// `allot sbatch [OPTIONS] SCRIPT [ARGS]`: the options, the script read,
/// the job built; warnings printed unless `--quiet`.
fn batch_from(args: &[String]) -> anyhow::Result<sbatch::Batch> {
    let (opts, rest) = sbatch::parse_options(args, Source::CommandLine, true)?;
    let Some((script, script_args)) = rest.split_first() else {
        anyhow::bail!("give the batch script to run: allot sbatch [OPTIONS] SCRIPT [ARGS]");
    };
    let path = std::path::Path::new(script);
    let size = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read batch script {script}: {e}"))?
        .len();
    if size > MAX_SCRIPT_BYTES {
        anyhow::bail!("batch script {script} is {size} bytes; a job's script may be at most 64 KiB");
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read batch script {script}: {e}"))?;
    let batch = sbatch::build(script, &text, script_args.to_vec(), opts, &submitter()?)?;
    if !batch.quiet {
        for w in &batch.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(batch)
}

pub async fn sbatch(client: &Client, args: &[String], json: bool) -> anyhow::Result<i32> {
    let batch = batch_from(args)?;
    let job = if batch.hold {
        client.submit_held(batch.spec).await?
    } else {
        client.submit(batch.spec).await?
    };
    if json {
        output::print_json(&output::job_json(&job));
    } else if batch.parsable {
        println!("{}", job.id);
    } else {
        // sbatch's own line, which wrappers parse.
        println!("Submitted batch job {}", job.id);
    }
    if !batch.wait {
        return Ok(0);
    }
    let done = client.wait(&job.id).await?;
    if !json && !batch.parsable {
        eprintln!("{} {} ({})", done.id, state_name(done.state), done.reason);
    }
    Ok(exit_code_of(&done))
}

fn key_value(what: &str, s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("{what} {s:?} must look like KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

/// The spec from the job file (if any) with the flags laid over it.
pub fn build_spec(a: &SubmitArgs) -> anyhow::Result<proto::JobSpec> {
    let mut spec = match &a.file {
        Some(f) if is_script(f) => {
            if !a.command.is_empty() {
                anyhow::bail!(
                    "{} is a batch script: it is what runs; give its arguments with allot sbatch {} ARGS",
                    f.display(),
                    f.display()
                );
            }
            batch_from(&[f.display().to_string()])?.spec
        }
        Some(f) => JobFile::read(f)?.into_spec()?,
        None => proto::JobSpec::default(),
    };
    if let Some((cmd, args)) = a.command.split_first() {
        spec.command = cmd.clone();
        spec.args = args.to_vec();
    }
    if spec.command.is_empty() {
        anyhow::bail!(
            "nothing to run: give a command after `--` (allot submit --gpus 1 -- python train.py) or a job file"
        );
    }
    if let Some(n) = &a.name {
        spec.name = n.clone();
    }
    let r = spec.resources.get_or_insert_with(Default::default);
    if a.gpus.is_some() || a.gpu_fraction.is_some() || a.mig.is_some() {
        r.gpu = None;
        set_gpu(r, a.gpus, a.gpu_fraction.as_deref(), a.mig.as_deref())?;
    }
    if let Some(m) = &a.gpu_memory {
        r.gpu_memory_mib = memory_mib("--gpu-memory", m)?;
    }
    if let Some(c) = &a.cpu {
        r.cpu_millis = cpu_millis("--cpu", c)?;
    }
    if let Some(m) = &a.memory {
        r.memory_mib = memory_mib("--memory", m)?;
    }
    if let Some(p) = a.priority {
        spec.priority = p;
    }
    if a.preemptible {
        spec.preemptible = true;
    }
    if a.spread {
        spec.spread = true;
    }
    if let Some(t) = &a.time {
        spec.time_limit_ms = Some(duration_ms("--time", t)?);
    }
    if let Some(g) = &a.grace {
        spec.grace_period_ms = Some(duration_ms("--grace", g)?);
    }
    for t in &a.tags {
        let (k, v) = key_value("--tag", t)?;
        spec.tags.insert(k, v);
    }
    for m in &a.gpu_models {
        for m in m.split('|').map(str::trim).filter(|m| !m.is_empty()) {
            if !spec.gpu_models.iter().any(|x| x == m) {
                spec.gpu_models.push(m.to_string());
            }
        }
    }
    for l in &a.node_labels {
        let (k, v) = key_value("--node-label", l)?;
        spec.node_labels.insert(k, v);
    }
    if let Some(t) = &a.min_runtime {
        spec.min_runtime_ms = Some(duration_ms("--min-runtime", t)?);
    }
    if let Some(t) = &a.checkpoint_interval {
        spec.checkpoint_interval_ms = Some(duration_ms("--checkpoint-interval", t)?);
    }
    if let Some(n) = a.node_lost_retries {
        spec.node_lost_retries = Some(n);
    }
    for e in &a.env {
        let (k, v) = key_value("--env", e)?;
        spec.env.insert(k, v);
    }
    match a.workdir.as_deref() {
        Some("-") => spec.working_dir.clear(),
        Some(d) => spec.working_dir = absolute(d)?,
        None if spec.working_dir.is_empty() => {
            spec.working_dir = std::env::current_dir()?.display().to_string();
        }
        None => {}
    }
    if let Some(p) = &a.project {
        spec.project = p.clone();
    }
    if let Some(q) = &a.queue {
        spec.queue = q.clone();
    }
    if let Some(d) = &a.dependency {
        spec.dependency = d.clone();
    }
    if let Some(x) = &a.array {
        spec.array = x.clone();
    }
    if let Some(q) = &a.qos {
        spec.qos = q.clone();
    }
    if !a.nodes.is_empty() {
        spec.nodes = a.nodes.clone();
    }
    if !a.exclude_nodes.is_empty() {
        spec.exclude_nodes = a.exclude_nodes.clone();
    }
    if let Some(t) = &a.tenant {
        spec.tenant = t.clone();
    }
    Ok(spec)
}

fn absolute(d: &str) -> anyhow::Result<String> {
    let p = std::path::Path::new(d);
    Ok(if p.is_absolute() {
        d.to_string()
    } else {
        std::env::current_dir()?.join(p).display().to_string()
    })
}

/// Exit code for `submit --wait`: 0 on success, the job's own code if it has one, else 1.
fn exit_code_of(job: &proto::Job) -> i32 {
    match job.state() {
        proto::JobState::Succeeded => 0,
        _ => job.exit_code.filter(|c| *c != 0).unwrap_or(1),
    }
}

pub async fn submit(client: &Client, a: &SubmitArgs, json: bool) -> anyhow::Result<i32> {
    let spec = build_spec(a)?;
    let job = if a.hold {
        client.submit_held(spec).await?
    } else {
        client.submit(spec).await?
    };
    if !a.wait {
        if json {
            output::print_json(&output::job_json(&job));
        } else {
            println!("{}", job.id);
            eprintln!("submitted: {} ({})", state_name(job.state), job.reason);
        }
        return Ok(0);
    }
    if !json {
        eprintln!("submitted {}; waiting for it to end", job.id);
    }
    let done = client.wait(&job.id).await?;
    if json {
        output::print_json(&output::job_json(&done));
    } else {
        println!("{} {} ({})", done.id, state_name(done.state), done.reason);
    }
    Ok(exit_code_of(&done))
}

pub async fn list(client: &Client, a: &JobsArgs, json: bool) -> anyhow::Result<i32> {
    let states = a
        .states
        .iter()
        .map(|s| output::parse_state(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let states = if a.start && states.is_empty() {
        vec![proto::JobState::Pending]
    } else {
        states
    };
    let mut q = ListJobs {
        states,
        tenant: a.tenant.clone(),
        page_size: a.limit.min(1000) as u32,
        page_token: None,
    };
    let mut jobs = Vec::new();
    while jobs.len() < a.limit {
        let page = client.list(q.clone()).await?;
        jobs.extend(page.jobs);
        match page.next_page_token {
            Some(t) => q.page_token = Some(t),
            None => break,
        }
    }
    jobs.truncate(a.limit);
    if json {
        output::print_json(&serde_json::Value::Array(
            jobs.iter().map(output::job_json).collect(),
        ));
        return Ok(0);
    }
    if jobs.is_empty() {
        eprintln!("no jobs");
        return Ok(0);
    }
    // An array whose tasks have all started is shown by its tasks (squeue
    // folds only the tasks not started yet).
    jobs.retain(|j| !output::is_array(j) || is_final(j.state()) || !j.array_pending.is_empty());
    if a.start {
        // squeue --start: pending jobs, soonest expected start first; those
        // without a reservation last ("N/A").
        jobs.sort_by_key(|j| (j.expected_start_unix_ms <= 0, j.expected_start_unix_ms));
        let rows: Vec<Vec<String>> = jobs
            .iter()
            .map(|j| {
                vec![
                    output::display_id(j),
                    j.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
                    j.spec.as_ref().map(|s| s.queue.clone()).unwrap_or_default(),
                    gpu_request(j.spec.as_ref()),
                    if j.expected_start_unix_ms > 0 {
                        output::time(j.expected_start_unix_ms)
                    } else {
                        "N/A".into()
                    },
                    j.reason.clone(),
                ]
            })
            .collect();
        table(&["ID", "NAME", "QUEUE", "GPU", "START_TIME", "REASON"], &rows);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                output::display_id(j),
                j.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
                state_name(j.state).to_string(),
                j.spec.as_ref().map(|s| s.queue.clone()).unwrap_or_default(),
                gpu_request(j.spec.as_ref()),
                j.placement
                    .as_ref()
                    .map(|p| p.node.clone())
                    .unwrap_or_else(|| "-".into()),
                age(j.submitted_at_unix_ms),
                j.reason.clone(),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "STATE", "QUEUE", "GPU", "NODE", "AGE", "REASON"],
        &rows,
    );
    Ok(0)
}

pub async fn show(client: &Client, id: &str, json: bool) -> anyhow::Result<i32> {
    let j = client.get(id).await?;
    if json {
        output::print_json(&output::job_json(&j));
        return Ok(0);
    }
    let spec = j.spec.clone().unwrap_or_default();
    let res = spec.resources.clone().unwrap_or_default();
    println!("Job {}", j.id);
    println!("  name:         {}", spec.name);
    println!("  state:        {}", state_name(j.state));
    let label = match j.state() {
        proto::JobState::Pending => "why pending:",
        s if is_final(s) => "ended:",
        _ => "status:",
    };
    println!("  {label:<13} {}", j.reason);
    if j.expected_start_unix_ms > 0 {
        println!(
            "  expected start: {} (backfill reservation)",
            output::time(j.expected_start_unix_ms)
        );
    }
    if output::is_array(&j) {
        let waiting = if j.array_pending.is_empty() {
            "all started".to_string()
        } else {
            format!("not started {}", j.array_pending)
        };
        println!(
            "  array:        {} ({} tasks): {waiting}; {} succeeded, {} failed, {} cancelled",
            spec.array, j.array_tasks, j.array_succeeded, j.array_failed, j.array_cancelled
        );
    }
    if let Some(index) = j.array_task_id {
        println!(
            "  array task:   {index} of array {} ({})",
            j.array_job_id,
            output::display_id(&j)
        );
    }
    println!("  tenant:       {} (project {})", j.tenant, j.project);
    println!(
        "  queue:        {}",
        if spec.queue.is_empty() { "-" } else { &spec.queue }
    );
    println!("  command:      {}", command_line(Some(&spec)));
    if !spec.working_dir.is_empty() {
        println!("  working dir:  {}", spec.working_dir);
    }
    println!(
        "  resources:    {}, {} CPU, {} memory",
        gpu_request(Some(&spec)),
        crate::domain::MilliCpu(res.cpu_millis.max(0) as u64),
        crate::domain::MiB(res.memory_mib.max(0) as u64)
    );
    println!(
        "  priority:     {}{}",
        spec.priority,
        if spec.preemptible { ", preemptible" } else { "" }
    );
    if let Some(t) = spec.time_limit_ms {
        println!("  time limit:   {}", output::duration(t));
    }
    if !spec.gpu_models.is_empty() {
        println!("  GPU models:   {}", spec.gpu_models.join(" | "));
    }
    if !spec.node_labels.is_empty() {
        let mut labels: Vec<String> = spec.node_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        println!("  node labels:  {}", labels.join(", "));
    }
    if let Some(t) = spec.min_runtime_ms {
        println!("  min runtime:  {} (not preempted before)", output::duration(t));
    }
    if let Some(t) = spec.checkpoint_interval_ms {
        println!("  checkpoints:  every {}", output::duration(t));
    }
    if !spec.tags.is_empty() {
        let mut tags: Vec<String> = spec.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tags.sort();
        println!("  tags:         {}", tags.join(", "));
    }
    println!("  attempt:      {}", j.attempt);
    println!("  submitted:    {}", time(j.submitted_at_unix_ms));
    if j.started_at_unix_ms > 0 {
        println!("  started:      {}", time(j.started_at_unix_ms));
    }
    if j.ended_at_unix_ms > 0 {
        let ran = if j.started_at_unix_ms > 0 {
            format!(
                " (ran {})",
                output::duration(j.ended_at_unix_ms - j.started_at_unix_ms)
            )
        } else {
            String::new()
        };
        println!("  ended:        {}{ran}", time(j.ended_at_unix_ms));
    }
    if let Some(c) = j.exit_code {
        println!("  exit code:    {c}");
    }
    if let Some(s) = j.signal {
        println!("  signal:       {s}");
    }
    for (rank, p) in j.placements.iter().enumerate() {
        if j.placements.len() > 1 {
            println!("  node {rank}:       {}", p.node);
        } else {
            println!("  node:         {}", p.node);
        }
        for d in &p.devices {
            let what = if d.mig_profile.is_empty() {
                format!("share {}", output::fraction(d.share.as_ref()))
            } else {
                format!("MIG {}", d.mig_profile)
            };
            println!(
                "    GPU {} {} {} ({what})",
                d.gpu_index, d.gpu_model, d.device_uuid
            );
        }
    }
    if !j.leases.is_empty() {
        println!("  leases:");
        for l in &j.leases {
            let d = l.device.clone().unwrap_or_default();
            let end = if l.ended_at_unix_ms > 0 {
                format!(
                    "{} → {} ({}, {})",
                    time(l.reserved_at_unix_ms),
                    time(l.ended_at_unix_ms),
                    output::duration(l.ended_at_unix_ms - l.reserved_at_unix_ms),
                    output::end_reason_name(l.end_reason)
                )
            } else {
                format!(
                    "{} → now ({})",
                    time(l.reserved_at_unix_ms),
                    output::lease_state_name(l.state)
                )
            };
            println!(
                "    {}  {} {} share {}  {end}",
                l.id,
                l.node,
                d.device_uuid,
                output::fraction(d.share.as_ref())
            );
        }
    }
    Ok(0)
}

pub async fn cancel(client: &Client, id: &str, reason: &str, force: bool, json: bool) -> anyhow::Result<i32> {
    let j = if force {
        client.kill(id, reason).await?
    } else {
        client.cancel(id, reason).await?
    };
    if json {
        output::print_json(&output::job_json(&j));
    } else if is_final(j.state()) {
        println!("{} {}", output::display_id(&j), state_name(j.state));
    } else if output::is_array(&j) {
        println!(
            "{} cancelling: its tasks not started are given up, its running ones stop (SIGTERM, then SIGKILL after their grace period)",
            j.id
        );
    } else if force {
        println!("{} killing (SIGKILL now)", j.id);
    } else {
        println!(
            "{} stopping (SIGTERM now, SIGKILL after its grace period; --force kills it now)",
            j.id
        );
    }
    Ok(0)
}

pub async fn watch(client: &Client, id: &str, json: bool) -> anyhow::Result<i32> {
    let mut stream = Box::pin(client.watch(id).await?);
    let mut last = None;
    while let Some(j) = stream.next().await {
        let j = j?;
        if json {
            println!("{}", output::job_json(&j));
        } else {
            println!("{}  {:<10} {}", time(allot_now()), state_name(j.state), j.reason);
        }
        last = Some(j);
    }
    Ok(last.map(|j| exit_code_of(&j)).unwrap_or(1))
}

fn allot_now() -> i64 {
    crate::domain::UnixMillis::now().0 as i64
}

pub async fn logs(client: &Client, id: &str, node: Option<&str>, follow: bool) -> anyhow::Result<i32> {
    let mut offset = 0;
    let mut stdout = std::io::stdout();
    loop {
        let chunk = match client.logs_from(id, node.unwrap_or(""), offset, 0).await {
            Ok(c) => c,
            // Not placed yet, or its node is away: with --follow, wait for it.
            Err(e)
                if follow
                    && matches!(
                        e.code(),
                        allot_sdk::Code::FailedPrecondition | allot_sdk::Code::Unavailable
                    )
                    && !is_final(client.get(id).await?.state()) =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        stdout.write_all(&chunk.data)?;
        stdout.flush()?;
        offset = chunk.next_offset;
        if !chunk.data.is_empty() {
            continue;
        }
        if !follow || chunk.complete {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What `allot hold|release|update|requeue` asks for.
pub enum Control<'a> {
    Hold(&'a str),
    Release,
    Update(proto::UpdateJobRequest),
    Requeue(bool, &'a str),
}

/// The update `allot update` asks for (`--time none` removes the limit).
pub fn update_request(
    priority: Option<i32>,
    time: Option<&str>,
    queue: Option<&str>,
) -> anyhow::Result<proto::UpdateJobRequest> {
    if priority.is_none() && time.is_none() && queue.is_none() {
        anyhow::bail!("nothing to change: give --priority, --time or --queue");
    }
    let time_limit_ms = match time {
        None => None,
        Some(t) if t.eq_ignore_ascii_case("none") => Some(0),
        Some(t) => {
            let m: crate::domain::Millis = t.parse().map_err(|e| anyhow::anyhow!("--time: {e}"))?;
            if m.0 == 0 {
                anyhow::bail!("--time: must be > 0 (or `none`)");
            }
            Some(m.0 as i64)
        }
    };
    Ok(proto::UpdateJobRequest {
        id: String::new(),
        priority,
        time_limit_ms,
        queue: queue.map(String::from),
    })
}

pub async fn control(client: &Client, id: &str, c: Control<'_>, json: bool) -> anyhow::Result<i32> {
    let (job, did) = match c {
        Control::Hold(reason) => (client.hold(id, reason).await?, "held"),
        Control::Release => (client.release(id).await?, "released"),
        Control::Update(u) => (client.update_job(id, u).await?, "updated"),
        Control::Requeue(hold, reason) => (client.requeue(id, hold, reason).await?, "requeued"),
    };
    if json {
        output::print_json(&output::job_json(&job));
    } else {
        println!("{} {did}: {} ({})", job.id, state_name(job.state), job.reason);
    }
    Ok(0)
}
