//! Runs jobs as child processes, each in its own process group, with the
//! assigned devices visible and its output in `logs/allot-<job>.out`, the way
//! Slurm writes `slurm-%j.out`.
//!
//! Stopping a job sends SIGTERM to its whole process group, waits its grace
//! period, then sends SIGKILL. A time limit stops the job the same way.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use allot_proto::v1 as pb;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::domain::UnixMillis;

/// What the launcher reports to the agent loop.
#[derive(Debug)]
pub enum LaunchEvent {
    Started(pb::JobStarted),
    Exited(pb::JobExited),
}

struct Running {
    attempt: u32,
    /// When the launch began (monotonic).
    launched: std::time::Instant,
    stop: mpsc::UnboundedSender<Duration>,
}

/// The jobs this node runs now.
pub struct Launcher {
    state_dir: PathBuf,
    node: String,
    running: HashMap<String, Running>,
    events: mpsc::UnboundedSender<LaunchEvent>,
}

/// Environment variables passed through from the agent to every job.
const PASS_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TERM", "SHELL", "TMPDIR", "TZ",
];

impl Launcher {
    pub fn new(
        state_dir: PathBuf,
        node: String,
        events: mpsc::UnboundedSender<LaunchEvent>,
    ) -> std::io::Result<Self> {
        for sub in ["logs", "jobs", "run"] {
            std::fs::create_dir_all(state_dir.join(sub))?;
        }
        Ok(Launcher {
            state_dir,
            node,
            running: HashMap::new(),
            events,
        })
    }

    /// (job id, attempt) of every job running here.
    pub fn running(&self) -> Vec<pb::RunningJob> {
        let mut v: Vec<pb::RunningJob> = self
            .running
            .iter()
            .map(|(id, r)| pb::RunningJob {
                job_id: id.clone(),
                attempt: r.attempt,
                running_ms: Some(r.launched.elapsed().as_millis() as u64),
            })
            .collect();
        v.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        v
    }

    pub fn output_path(&self, job_id: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("allot-{job_id}.out"))
    }

    /// Called when a job's task has reported its exit.
    pub fn forget(&mut self, job_id: &str, attempt: u32) {
        if self.running.get(job_id).is_some_and(|r| r.attempt == attempt) {
            self.running.remove(job_id);
        }
    }

    /// Starts a job. Reports `Started` or `Exited { LAUNCH_FAILED }`, then `Exited`.
    pub fn launch(&mut self, order: pb::LaunchJob) {
        if let Some(r) = self.running.get(&order.job_id)
            && r.attempt == order.attempt
        {
            warn!(job = %order.job_id, "launch order repeated; the job already runs");
            return;
        }
        let (stop_tx, stop_rx) = mpsc::unbounded_channel();
        self.running.insert(
            order.job_id.clone(),
            Running {
                attempt: order.attempt,
                launched: std::time::Instant::now(),
                stop: stop_tx,
            },
        );
        let ctx = JobContext {
            output: self.output_path(&order.job_id),
            scratch: self.state_dir.join("jobs").join(&order.job_id),
            pid_file: self.state_dir.join("run").join(format!("{}.pid", order.job_id)),
            node: self.node.clone(),
        };
        tokio::spawn(run_job(order, ctx, stop_rx, self.events.clone()));
    }

    /// Stops a job: SIGTERM to its process group, SIGKILL after `grace`.
    pub fn stop(&mut self, job_id: &str, attempt: u32, grace: Duration) -> bool {
        match self.running.get(job_id) {
            Some(r) if r.attempt == attempt => r.stop.send(grace).is_ok(),
            _ => false,
        }
    }

    /// Stops every job, for agent shutdown.
    pub fn stop_all(&mut self, grace: Duration) {
        for r in self.running.values() {
            let _ = r.stop.send(grace);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Reads part of a job's output file.
    pub async fn read_output(
        &self,
        job_id: &str,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<u8>, u64, String), String> {
        let path = self.output_path(job_id);
        let shown = path.display().to_string();
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| format!("cannot open {shown} on node {}: {e}", self.node))?;
        f.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| format!("cannot seek in {shown}: {e}"))?;
        let mut buf = Vec::with_capacity(limit.min(1 << 20) as usize);
        f.take(limit as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| format!("cannot read {shown}: {e}"))?;
        let next = offset + buf.len() as u64;
        Ok((buf, next, shown))
    }

    /// Kills jobs a previous agent on this node left running (it cannot report
    /// them, so nobody would account for them). Returns their ids.
    pub fn reap_orphans(state_dir: &Path) -> Vec<String> {
        let mut killed = Vec::new();
        let Ok(entries) = std::fs::read_dir(state_dir.join("run")) else {
            return killed;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(job) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
                continue;
            };
            let pid: Option<i32> = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()));
            if let Some(pid) = pid {
                // Only if that pid still is our job: pids are reused.
                let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                let marker = format!("ALLOT_JOB_ID={job}");
                if environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    warn!(%job, pid, "killed a job left running by a previous agent");
                    killed.push(job);
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        killed
    }
}

struct JobContext {
    output: PathBuf,
    scratch: PathBuf,
    pid_file: PathBuf,
    node: String,
}

fn now_ms() -> i64 {
    UnixMillis::now().0 as i64
}

fn exited(
    order: &pb::LaunchJob,
    kind: pb::ExitKind,
    code: Option<i32>,
    signal: Option<i32>,
    message: String,
    runtime: Option<Duration>,
) -> LaunchEvent {
    LaunchEvent::Exited(pb::JobExited {
        job_id: order.job_id.clone(),
        attempt: order.attempt,
        kind: kind as i32,
        exit_code: code,
        signal,
        message,
        agent_time_unix_ms: now_ms(),
        runtime_ms: runtime.map(|d| d.as_millis() as i64),
        ended_ms_ago: None,
    })
}

/// The environment a job starts with: a few variables of the agent's, the
/// job's own, then allot's (which the job cannot override).
fn job_env(order: &pb::LaunchJob, ctx: &JobContext) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = PASS_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
    env.extend(order.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let uuids: Vec<&str> = order.devices.iter().map(|d| d.device_uuid.as_str()).collect();
    let visible = uuids.join(",");
    env.push(("CUDA_VISIBLE_DEVICES".into(), visible.clone()));
    env.push((
        "NVIDIA_VISIBLE_DEVICES".into(),
        if visible.is_empty() {
            "void".into()
        } else {
            visible.clone()
        },
    ));
    let share = order
        .devices
        .first()
        .and_then(|d| d.share.as_ref())
        .map(|s| {
            if s.denominator == 1 {
                s.numerator.to_string()
            } else {
                format!("{}/{}", s.numerator, s.denominator)
            }
        })
        .unwrap_or_else(|| "0".into());
    let gpu_mem: u64 = order.devices.iter().map(|d| d.gpu_memory_mib).sum();
    let mut allot = vec![
        ("ALLOT_JOB_ID", order.job_id.clone()),
        ("ALLOT_JOB_NAME", order.name.clone()),
        ("ALLOT_ATTEMPT", order.attempt.to_string()),
        ("ALLOT_TENANT", order.tenant.clone()),
        ("ALLOT_PROJECT", order.project.clone()),
        ("ALLOT_NODE", ctx.node.clone()),
        ("ALLOT_GPU_UUIDS", visible),
        ("ALLOT_GPU_COUNT", order.devices.len().to_string()),
        ("ALLOT_GPU_SHARE", share),
        ("ALLOT_GPU_MEMORY_MIB", gpu_mem.to_string()),
        ("ALLOT_CPU_MILLIS", order.cpu_millis.to_string()),
        ("ALLOT_MEMORY_MIB", order.memory_mib.to_string()),
        ("ALLOT_LEASE_IDS", order.lease_ids.join(",")),
        ("ALLOT_OUTPUT", ctx.output.display().to_string()),
    ];
    if let Some(t) = order.time_limit_ms {
        allot.push(("ALLOT_TIME_LIMIT_MS", t.to_string()));
    }
    // A gang spread over nodes runs once per node; each part knows its rank.
    let nodes = if order.nodes.is_empty() {
        vec![ctx.node.clone()]
    } else {
        order.nodes.clone()
    };
    allot.push(("ALLOT_NUM_NODES", nodes.len().to_string()));
    allot.push(("ALLOT_NODES", nodes.join(",")));
    allot.push(("ALLOT_NODE_RANK", order.node_rank.to_string()));
    env.extend(allot.into_iter().map(|(k, v)| (k.to_string(), v)));
    env
}

/// The file a command names: the command itself if it holds a `/`, else
/// the first executable file of that name in the job's own `PATH` (`execvp`'s
/// default when it has none; empty and relative entries taken from its
/// working directory), which is what `execvp` in the job would run. Started
/// by its path, a job is spawned with `posix_spawn`; by a bare name under a
/// `PATH` of its own, the standard library has to fork the agent instead,
/// copying its page tables on every launch. `None`: not found (the spawn
/// then fails as it would have).
fn resolve_program(command: &str, env: &[(String, String)], workdir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if command.is_empty() || command.contains('/') {
        return None;
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or("/bin:/usr/bin", |(_, v)| v.as_str());
    path.split(':')
        .map(|dir| workdir.join(dir).join(command))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Signals a process group, ignoring "no such process".
fn signal_group(pgid: i32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pgid), sig);
}

async fn run_job(
    order: pb::LaunchJob,
    ctx: JobContext,
    mut stop: mpsc::UnboundedReceiver<Duration>,
    events: mpsc::UnboundedSender<LaunchEvent>,
) {
    let fail = |msg: String| {
        warn!(job = %order.job_id, "launch failed: {msg}");
        // Leave the reason where `allot logs` will find it.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ctx.output)
        {
            use std::io::Write;
            let _ = writeln!(f, "allot: {msg}");
        }
        let _ = events.send(exited(&order, pb::ExitKind::LaunchFailed, None, None, msg, None));
    };
    let workdir = if order.working_dir.is_empty() {
        if let Err(e) = std::fs::create_dir_all(&ctx.scratch) {
            return fail(format!(
                "cannot create scratch directory {}: {e}",
                ctx.scratch.display()
            ));
        }
        ctx.scratch.clone()
    } else {
        let d = PathBuf::from(&order.working_dir);
        if !d.is_dir() {
            return fail(format!(
                "working directory {} does not exist on node {}",
                d.display(),
                ctx.node
            ));
        }
        d
    };
    let out = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ctx.output)
    {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open output file {}: {e}", ctx.output.display())),
    };
    let err = match out.try_clone() {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open output file {}: {e}", ctx.output.display())),
    };
    let env = job_env(&order, &ctx);
    let program = resolve_program(&order.command, &env, &workdir);
    let mut cmd = tokio::process::Command::new(program.as_deref().unwrap_or(Path::new(&order.command)));
    cmd.arg0(&order.command)
        .args(&order.args)
        .current_dir(&workdir)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(false);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run {:?}: {e}", order.command)),
    };
    // The agent's own measure of the run, from spawn to exit (monotonic).
    let spawned = std::time::Instant::now();
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let _ = std::fs::write(&ctx.pid_file, format!("{pid} {}\n", order.attempt));
    info!(job = %order.job_id, pid, "job process started");
    let _ = events.send(LaunchEvent::Started(pb::JobStarted {
        job_id: order.job_id.clone(),
        attempt: order.attempt,
        pid,
        agent_time_unix_ms: now_ms(),
    }));

    let limit = order
        .time_limit_ms
        .map(|ms| Duration::from_millis(ms.max(0) as u64));
    let default_grace = Duration::from_millis(order.grace_period_ms.max(0) as u64);
    let deadline = async {
        match limit {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    // Why the job ended, if allot ended it.
    let (status, stopped_by) = tokio::select! {
        status = child.wait() => (status, None),
        _ = &mut deadline => {
            info!(job = %order.job_id, "time limit reached; stopping");
            (terminate(&mut child, pid, default_grace).await, Some(pb::ExitKind::TimedOut))
        }
        grace = stop.recv() => {
            let grace = grace.unwrap_or(default_grace);
            info!(job = %order.job_id, grace_ms = grace.as_millis() as u64, "stopping on the controller's order");
            (terminate(&mut child, pid, grace).await, Some(pb::ExitKind::Stopped))
        }
    };
    // Whatever the job left behind in its process group goes too.
    signal_group(pid, Signal::SIGKILL);
    let _ = std::fs::remove_file(&ctx.pid_file);
    let (code, signal) = match &status {
        Ok(s) => (s.code(), s.signal()),
        Err(_) => (None, None),
    };
    let kind = match stopped_by {
        Some(k) => k,
        None if signal.is_some() => pb::ExitKind::Signaled,
        None => pb::ExitKind::Exited,
    };
    let message = match &status {
        Ok(s) => s.to_string(),
        Err(e) => format!("could not wait for the process: {e}"),
    };
    info!(job = %order.job_id, ?code, ?signal, ?kind, "job process ended");
    let _ = events.send(exited(
        &order,
        kind,
        code,
        signal,
        message,
        Some(spawned.elapsed()),
    ));
}

/// SIGTERM to the group, SIGKILL after `grace` if the leader still runs.
async fn terminate(
    child: &mut tokio::process::Child,
    pgid: i32,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    signal_group(pgid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            signal_group(pgid, Signal::SIGKILL);
            child.wait().await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn executable(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn env(path: &str) -> Vec<(String, String)> {
        vec![
            ("PATH".into(), "/nowhere".into()),
            ("HOME".into(), "/root".into()),
            ("PATH".into(), path.into()),
        ]
    }

    #[test]
    fn a_bare_command_is_found_in_the_jobs_own_path_as_execvp_would() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second, work) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("w"));
        for d in [&first, &second, &work] {
            std::fs::create_dir(d).unwrap();
        }
        executable(&second.join("train"));
        std::fs::write(first.join("train"), "not executable").unwrap();
        let path = format!("{}:{}", first.display(), second.display());
        // The last PATH wins (the job's own over the agent's); a file that
        // is not executable is passed over.
        assert_eq!(
            resolve_program("train", &env(&path), &work),
            Some(second.join("train"))
        );
        // Relative and empty entries are taken from the working directory.
        executable(&work.join("train"));
        assert_eq!(
            resolve_program("train", &env("bin:"), &work),
            Some(work.join("train"))
        );
        assert_eq!(resolve_program("missing", &env(&path), &work), None);
        // A path is run as it is.
        assert_eq!(resolve_program("./train", &env(&path), &work), None);
        assert_eq!(resolve_program("", &env(&path), &work), None);
        // Without any PATH, execvp's default.
        assert_eq!(resolve_program("sh", &[], &work), Some(PathBuf::from("/bin/sh")));
    }
}
