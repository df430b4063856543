//! Runs jobs, each under a supervisor of its own (`allot supervise`, see
//! `supervisor.rs`), with the assigned devices visible and its output in
//! `logs/allot-<job>.out`, the way Slurm writes `slurm-%j.out`.
//!
//! The supervisor outlives the agent: an agent that starts finds the
//! supervisors a previous one left and adopts them, so their jobs keep
//! running and report their real end. Stopping a job writes a stop order
//! for its supervisor and signals it (SIGUSR1): SIGTERM to the job's process
//! group, its grace period, then SIGKILL. A time limit stops the job the
//! same way.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use allot_proto::v1 as pb;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::supervisor::{
    self, MARKER, RunAs, STARTED_LINE, StopOrder, SuperviseSpec, SupervisorState, exit_file, mono_ms,
};
use crate::domain::UnixMillis;

/// What the launcher reports to the agent loop.
#[derive(Debug)]
pub enum LaunchEvent {
    Started(pb::JobStarted),
    Exited(pb::JobExited),
}

struct Running {
    attempt: u32,
    /// When it was launched, by `CLOCK_MONOTONIC` (ms).
    launched_mono_ms: u64,
    /// Its run dir (`run/<job>.<attempt>`).
    dir: PathBuf,
    supervisor_pid: i32,
}

/// The jobs this node runs now.
pub struct Launcher {
    state_dir: PathBuf,
    node: String,
    running: HashMap<String, Running>,
    events: mpsc::UnboundedSender<LaunchEvent>,
    /// The `allot` binary that runs `allot supervise`.
    supervisor_exe: PathBuf,
    run_as: Option<RunAs>,
    /// Paths jobs must not see, beyond the agent's own files.
    hide: Vec<PathBuf>,
}

/// Environment variables passed through from the agent to every job.
const PASS_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TERM", "SHELL", "TMPDIR", "TZ",
];

/// A job part's run dir: `run/<job>.<attempt>`.
fn run_dir(state_dir: &Path, job: &str, attempt: u32) -> PathBuf {
    state_dir.join("run").join(format!("{job}.{attempt}"))
}

/// The agent's lease file, renewed with every acknowledged heartbeat.
pub fn fence_file(state_dir: &Path) -> PathBuf {
    state_dir.join("fence")
}

pub fn exits_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("exits")
}

/// Whether `pid` is a process whose environment holds `KEY=VALUE` (a pid
/// read from a file may have been reused since).
fn process_has_env(pid: i32, key: &str, value: &str) -> bool {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let marker = format!("{key}={value}");
    environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes())
}

/// A pidfd for `pid` (Linux 5.3+), to wait for a process that is not our child.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: a plain syscall; the fd returned is ours to own.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just gave us this descriptor.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Resolves once process `pid` (not a child of ours) has ended.
async fn wait_for_exit(pid: i32, pidfd: Option<OwnedFd>) {
    // SAFETY: the AsyncFd owns the pidfd, which stays open and the same
    // for its whole life.
    if let Some(fd) = pidfd
        && let Ok(afd) =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
    {
        let _ = afd.readable().await;
        return;
    }
    // No pidfd: look now and then.
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')))
            .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads the exit report a supervisor wrote, or makes one up when it left
/// none (it was killed): the job's process group is killed then, since
/// nobody watches it any more.
fn take_exit(
    state_dir: &Path,
    dir: &Path,
    job: &str,
    attempt: u32,
    started: Option<SupervisorState>,
) -> pb::JobExited {
    use prost::Message;
    let path = exit_file(&exits_dir(state_dir), job, attempt);
    if let Ok(e) = std::fs::read(&path)
        .map_err(|_| ())
        .and_then(|b| pb::JobExited::decode(b.as_slice()).map_err(|_| ()))
    {
        return e;
    }
    let started = started.or_else(|| read_state(dir));
    if let Some(s) = started
        && process_has_env(s.job_pid, "ALLOT_JOB_ID", job)
    {
        let _ = killpg(Pid::from_raw(s.job_pid), Signal::SIGKILL);
    }
    let (kind, message) = match started {
        None => (
            pb::ExitKind::LaunchFailed,
            "its supervisor ended before starting it (see supervisor.log in its run dir)".to_string(),
        ),
        Some(_) => (
            pb::ExitKind::Signaled,
            "its supervisor was killed; the job was killed with it".to_string(),
        ),
    };
    let e = pb::JobExited {
        job_id: job.to_string(),
        attempt,
        kind: kind as i32,
        exit_code: None,
        signal: started.map(|_| 9),
        message,
        agent_time_unix_ms: UnixMillis::now().0 as i64,
        runtime_ms: started.map(|s| mono_ms().saturating_sub(s.started_mono_ms) as i64),
        ended_ms_ago: None,
    };
    let _ = supervisor::write_exit(&exits_dir(state_dir), &e);
    e
}

fn read_state(dir: &Path) -> Option<SupervisorState> {
    serde_json::from_slice(&std::fs::read(supervisor::state_file(dir)).ok()?).ok()
}

impl Launcher {
    pub fn new(
        state_dir: PathBuf,
        node: String,
        events: mpsc::UnboundedSender<LaunchEvent>,
        supervisor_exe: PathBuf,
        run_as: Option<RunAs>,
        hide: Vec<PathBuf>,
    ) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        // The agent's files are its own: a job can reach its scratch dir
        // (0711 on the way), and nothing else of them.
        mode(&state_dir, 0o711)?;
        for (sub, m) in [("logs", 0o700), ("jobs", 0o711), ("run", 0o700), ("exits", 0o700)] {
            std::fs::create_dir_all(state_dir.join(sub))?;
            mode(&state_dir.join(sub), m)?;
        }
        Ok(Launcher {
            state_dir,
            node,
            running: HashMap::new(),
            events,
            supervisor_exe,
            run_as,
            hide,
        })
    }

    /// (job id, attempt) of every job running here.
    pub fn running(&self) -> Vec<pb::RunningJob> {
        let now = mono_ms();
        let mut v: Vec<pb::RunningJob> = self
            .running
            .iter()
            .map(|(id, r)| pb::RunningJob {
                job_id: id.clone(),
                attempt: r.attempt,
                running_ms: Some(now.saturating_sub(r.launched_mono_ms)),
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

    /// The controller has recorded the exit: its report and run dir go.
    pub fn acknowledged(&self, job_id: &str, attempt: u32) {
        let _ = std::fs::remove_file(exit_file(&exits_dir(&self.state_dir), job_id, attempt));
        if self.running.get(job_id).is_none_or(|r| r.attempt != attempt) {
            let _ = std::fs::remove_dir_all(run_dir(&self.state_dir, job_id, attempt));
        }
    }

    /// Starts a job under a supervisor. Reports `Started` (unless it could
    /// not start), then `Exited`.
    pub fn launch(&mut self, order: pb::LaunchJob) {
        if let Some(r) = self.running.get(&order.job_id)
            && r.attempt == order.attempt
        {
            warn!(job = %order.job_id, "launch order repeated; the job already runs");
            return;
        }
        let dir = run_dir(&self.state_dir, &order.job_id, order.attempt);
        let output = self.output_path(&order.job_id);
        let ctx = JobContext {
            output: output.clone(),
            node: self.node.clone(),
        };
        let spec = SuperviseSpec {
            job_id: order.job_id.clone(),
            attempt: order.attempt,
            command: order.command.clone(),
            args: order.args.clone(),
            env: job_env(&order, &ctx),
            working_dir: (!order.working_dir.is_empty()).then(|| PathBuf::from(&order.working_dir)),
            scratch: self.state_dir.join("jobs").join(&order.job_id),
            output,
            exits_dir: exits_dir(&self.state_dir),
            fence_file: fence_file(&self.state_dir),
            time_limit_ms: order.time_limit_ms.map(|ms| ms.max(0) as u64),
            grace_ms: order.grace_period_ms.max(0) as u64,
            run_as: self.run_as,
            node: self.node.clone(),
            hide: ["logs", "run", "exits", "fence"]
                .iter()
                .map(|p| self.state_dir.join(p))
                .chain(self.hide.iter().cloned())
                .collect(),
            jobs_dir: Some(self.state_dir.join("jobs")),
        };
        let started = std::fs::create_dir_all(&dir)
            .and_then(|_| {
                supervisor::write_atomically(
                    &supervisor::spec_file(&dir),
                    &serde_json::to_vec(&spec).expect("serializable"),
                )
            })
            .and_then(|_| {
                let log = std::fs::File::create(dir.join("supervisor.log"))?;
                tokio::process::Command::new(&self.supervisor_exe)
                    .arg("supervise")
                    .arg(&dir)
                    .env_clear()
                    .env(MARKER, format!("{}.{}", order.job_id, order.attempt))
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::from(log))
                    .kill_on_drop(false)
                    .spawn()
            });
        let mut child = match started {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start the job's supervisor: {e}");
                warn!(job = %order.job_id, "{msg}");
                let exit = pb::JobExited {
                    job_id: order.job_id.clone(),
                    attempt: order.attempt,
                    kind: pb::ExitKind::LaunchFailed as i32,
                    message: msg,
                    agent_time_unix_ms: UnixMillis::now().0 as i64,
                    ..Default::default()
                };
                let _ = supervisor::write_exit(&exits_dir(&self.state_dir), &exit);
                let _ = self.events.send(LaunchEvent::Exited(exit));
                return;
            }
        };
        let supervisor_pid = child.id().map(|p| p as i32).unwrap_or(0);
        self.running.insert(
            order.job_id.clone(),
            Running {
                attempt: order.attempt,
                launched_mono_ms: mono_ms(),
                dir: dir.clone(),
                supervisor_pid,
            },
        );
        let events = self.events.clone();
        let state_dir = self.state_dir.clone();
        tokio::spawn(async move {
            let stdout = child.stdout.take();
            if let Some(out) = stdout {
                let mut lines = tokio::io::BufReader::new(out).lines();
                if let Ok(Some(line)) = lines.next_line().await
                    && line == STARTED_LINE
                {
                    let state = read_state(&dir);
                    info!(job = %order.job_id, pid = state.map(|s| s.job_pid).unwrap_or(0), "job process started");
                    let _ = events.send(LaunchEvent::Started(pb::JobStarted {
                        job_id: order.job_id.clone(),
                        attempt: order.attempt,
                        pid: state.map(|s| s.job_pid).unwrap_or(0),
                        agent_time_unix_ms: state
                            .map(|s| s.started_unix_ms as i64)
                            .unwrap_or_else(|| UnixMillis::now().0 as i64),
                    }));
                }
            }
            let _ = child.wait().await;
            let exit = take_exit(&state_dir, &dir, &order.job_id, order.attempt, None);
            info!(job = %order.job_id, kind = exit.kind, code = ?exit.exit_code, signal = ?exit.signal, "job process ended");
            let _ = events.send(LaunchEvent::Exited(exit));
        });
    }

    /// Takes over the supervisors a previous agent on this node left
    /// running: their jobs run on, and their exits are reported when they
    /// come. A job whose supervisor died is killed (nobody could report it).
    /// Returns the job parts adopted.
    pub fn adopt(&mut self) -> Vec<(String, u32)> {
        let mut adopted = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.state_dir.join("run")) else {
            return adopted;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some((job, attempt)) = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit_once('.'))
                .and_then(|(j, a)| Some((j.to_string(), a.parse::<u32>().ok()?)))
            else {
                // A pid file of an agent from before supervisors: kill its job.
                reap_legacy(&dir);
                continue;
            };
            let has_exit = exit_file(&exits_dir(&self.state_dir), &job, attempt).exists();
            let state = read_state(&dir);
            // The supervisor, if it still runs (checked after the pidfd
            // pins the pid, so it cannot be another process by then).
            let live = state.and_then(|s| {
                let fd = pidfd_open(s.supervisor_pid);
                process_has_env(s.supervisor_pid, MARKER, &format!("{job}.{attempt}")).then_some((s, fd))
            });
            match live {
                Some((s, fd)) => {
                    info!(%job, attempt, pid = s.job_pid, "adopted a job left running by a previous agent");
                    self.running.insert(
                        job.clone(),
                        Running {
                            attempt,
                            launched_mono_ms: s.started_mono_ms,
                            dir: dir.clone(),
                            supervisor_pid: s.supervisor_pid,
                        },
                    );
                    let events = self.events.clone();
                    let state_dir = self.state_dir.clone();
                    let job2 = job.clone();
                    tokio::spawn(async move {
                        wait_for_exit(s.supervisor_pid, fd).await;
                        let exit = take_exit(&state_dir, &dir, &job2, attempt, Some(s));
                        info!(job = %job2, kind = exit.kind, "adopted job ended");
                        let _ = events.send(LaunchEvent::Exited(exit));
                    });
                    adopted.push((job, attempt));
                }
                // Ended while no agent was here: its report is among the
                // exits to send (the run dir goes once it is acknowledged).
                None if has_exit => {}
                None => {
                    let e = take_exit(&self.state_dir, &dir, &job, attempt, state);
                    warn!(%job, attempt, "{}", e.message);
                }
            }
        }
        adopted
    }

    /// Stops a job: SIGTERM to its process group, SIGKILL after `grace`
    /// (or sooner, if an earlier stop said so).
    pub fn stop(&mut self, job_id: &str, attempt: u32, grace: Duration) -> bool {
        match self.running.get(job_id) {
            Some(r) if r.attempt == attempt => {
                let order = StopOrder {
                    grace_ms: grace.as_millis() as u64,
                };
                let written = supervisor::write_atomically(
                    &supervisor::stop_file(&r.dir),
                    &serde_json::to_vec(&order).expect("serializable"),
                );
                if let Err(e) = written {
                    warn!(job = %job_id, "cannot write the stop order: {e}; stopping with the job's own grace");
                }
                kill(Pid::from_raw(r.supervisor_pid), Signal::SIGUSR1).is_ok()
            }
            _ => false,
        }
    }

    /// Stops every job, for agent shutdown.
    pub fn stop_all(&mut self, grace: Duration) {
        let jobs: Vec<(String, u32)> = self.running.iter().map(|(j, r)| (j.clone(), r.attempt)).collect();
        for (job, attempt) in jobs {
            self.stop(&job, attempt, grace);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Reads part of a job's output file. An offset past the end reads
    /// nothing from the end; a job that wrote nothing yet has an empty
    /// output. Errors never name paths on the node.
    pub async fn read_output(
        &self,
        job_id: &str,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<u8>, u64, String), String> {
        let path = self.output_path(job_id);
        let shown = format!("allot-{job_id}.out");
        let mut f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0, shown)),
            Err(e) => {
                return Err(format!(
                    "cannot open the output of job {job_id} on node {}: {e}",
                    self.node
                ));
            }
        };
        let len = f
            .metadata()
            .await
            .map_err(|e| format!("cannot read the output of job {job_id}: {e}"))?
            .len();
        let offset = offset.min(len);
        f.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| format!("cannot read the output of job {job_id}: {e}"))?;
        let mut buf = Vec::with_capacity(limit.min(1 << 20) as usize);
        f.take(limit as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| format!("cannot read the output of job {job_id}: {e}"))?;
        let next = offset + buf.len() as u64;
        Ok((buf, next, shown))
    }
}

/// A pid file of an agent from before supervisors (`run/<job>.pid`): kills
/// the job it names, if that pid still is the job.
fn reap_legacy(path: &Path) {
    let Some(job) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
        return;
    };
    let pid: Option<i32> = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()));
    if let Some(pid) = pid
        && process_has_env(pid, "ALLOT_JOB_ID", &job)
    {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        warn!(%job, pid, "killed a job left running by an older agent");
    }
    let _ = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
}

struct JobContext {
    output: PathBuf,
    node: String,
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::agent::supervisor::resolve_program;

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
