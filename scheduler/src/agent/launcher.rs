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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use allot_proto::v1 as pb;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::supervisor::{
    self, RunAs, STARTED_LINE, StopOrder, SuperviseSpec, SupervisorState, exit_file, mono_ms, start_ticks,
};
use crate::domain::UnixMillis;
use std::sync::atomic::AtomicI32;
use tokio::io::AsyncWriteExt;

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
    /// Where its files are (`run/<job>.<attempt>`).
    dir: PathBuf,
    /// 0 until the zygote has forked it.
    supervisor_pid: Arc<AtomicI32>,
    /// The supervisor has said the job runs (it takes stop signals from
    /// then on; a stop ordered before is signalled when it says so).
    started: Arc<AtomicBool>,
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
    /// The process that forks supervisors (started on the first launch).
    zygote: Option<Zygote>,
    /// Where the lines supervisors print go: to their launch's task.
    routes: Routes,
}

struct Zygote {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
}

/// What a supervisor (or the zygote, about one) says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SupLine {
    Forked { pid: i32, ticks: u64 },
    Started { pid: i32, at: i64 },
    Failed(String),
}

type Routes = Arc<std::sync::Mutex<HashMap<String, mpsc::UnboundedSender<SupLine>>>>;

fn parse_line(line: &str) -> Option<(String, SupLine)> {
    let mut f = line.splitn(3, ' ');
    let (kind, key, rest) = (f.next()?, f.next()?, f.next().unwrap_or(""));
    let mut nums = rest.split_whitespace();
    let line = match kind {
        "forked" => SupLine::Forked {
            pid: nums.next()?.parse().ok()?,
            ticks: nums.next().and_then(|t| t.parse().ok()).unwrap_or(0),
        },
        k if k == STARTED_LINE => SupLine::Started {
            pid: nums.next()?.parse().ok()?,
            at: nums
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| UnixMillis::now().0 as i64),
        },
        "failed" => SupLine::Failed(rest.to_string()),
        _ => return None,
    };
    Some((key.to_string(), line))
}

/// Reads supervisors' lines from `out` and hands each to its launch.
fn route_lines(out: tokio::process::ChildStdout, routes: Routes) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some((key, l)) = parse_line(&line)
                && let Some(tx) = routes.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            {
                let _ = tx.send(l);
            }
        }
    });
}

/// Environment variables passed through from the agent to every job.
const PASS_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TERM", "SHELL", "TMPDIR", "TZ",
];

/// A job part's files are beside `run/<job>.<attempt>` (`.json`, `.stop`).
fn run_base(state_dir: &Path, job: &str, attempt: u32) -> PathBuf {
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
    base: &Path,
    job: &str,
    attempt: u32,
    started: Option<SupervisorState>,
) -> pb::JobExited {
    use prost::Message;
    let run = supervisor::read_run_file(base);
    if let Some(e) = run.as_ref().and_then(|r| r.exit.clone()) {
        return e;
    }
    // An exit report of an older agent's layout.
    let legacy = exit_file(&exits_dir(state_dir), job, attempt);
    if let Ok(e) = std::fs::read(&legacy)
        .map_err(|_| ())
        .and_then(|b| pb::JobExited::decode(b.as_slice()).map_err(|_| ()))
    {
        return e;
    }
    let started = started.or_else(|| run.and_then(|r| r.state));
    if let Some(s) = started
        && process_has_env(s.job_pid, "ALLOT_JOB_ID", job)
    {
        let _ = killpg(Pid::from_raw(s.job_pid), Signal::SIGKILL);
    }
    let (kind, message) = match started {
        None => (
            pb::ExitKind::LaunchFailed,
            "its supervisor ended before starting it (see the agent's log)".to_string(),
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
    let _ = supervisor::record_exit(base, &e);
    e
}

fn read_state(base: &Path) -> Option<SupervisorState> {
    supervisor::read_run_file(base)?.state
}

/// Follows one launch: the supervisor forked, the job started (reported,
/// and a stop ordered meanwhile signalled), the supervisor ended. Returns
/// an exit only when there is no supervisor to read one from.
async fn watch_supervisor(
    mut rx: mpsc::UnboundedReceiver<SupLine>,
    base: &Path,
    supervisor_pid: &AtomicI32,
    started: &AtomicBool,
    events: &mpsc::UnboundedSender<LaunchEvent>,
    order: &pb::LaunchJob,
) -> Option<pb::JobExited> {
    let failed = |msg: String| pb::JobExited {
        job_id: order.job_id.clone(),
        attempt: order.attempt,
        kind: pb::ExitKind::LaunchFailed as i32,
        message: msg,
        agent_time_unix_ms: UnixMillis::now().0 as i64,
        ..Default::default()
    };
    // The supervisor may say the job started before the zygote has said it
    // forked it (the child can run first): keep that line for after.
    let mut early = None;
    let (pid, ticks) = loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(SupLine::Forked { pid, ticks })) => break (pid, ticks),
            Ok(Some(SupLine::Failed(why))) => return Some(failed(why)),
            Ok(Some(started @ SupLine::Started { .. })) => early = Some(started),
            Ok(None) | Err(_) => return Some(failed("its supervisor did not start".into())),
        }
    };
    supervisor_pid.store(pid, Ordering::SeqCst);
    // Still that process (not a reused pid) once the pidfd pins it.
    let fd = pidfd_open(pid).filter(|_| ticks == 0 || start_ticks(pid) == Some(ticks));
    let on_start = |pid_job: i32, at: i64| {
        started.store(true, Ordering::SeqCst);
        // A stop ordered before it ran is signalled now.
        if supervisor::stop_file(base).exists() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGUSR1);
        }
        info!(job = %order.job_id, pid = pid_job, "job process started");
        let _ = events.send(LaunchEvent::Started(pb::JobStarted {
            job_id: order.job_id.clone(),
            attempt: order.attempt,
            pid: pid_job,
            agent_time_unix_ms: at,
        }));
    };
    if let Some(SupLine::Started { pid: job_pid, at }) = early {
        on_start(job_pid, at);
    }
    if let Some(fd) = fd {
        let exited = wait_for_exit(pid, Some(fd));
        tokio::pin!(exited);
        loop {
            tokio::select! {
                line = rx.recv() => match line {
                    Some(SupLine::Started { pid: job_pid, at }) if !started.load(Ordering::SeqCst) => on_start(job_pid, at),
                    Some(_) => {}
                    None => break,
                },
                _ = &mut exited => break,
            }
        }
    }
    // Its last line may come after its end.
    while let Ok(line) = rx.try_recv() {
        if let SupLine::Started { pid: job_pid, at } = line
            && !started.load(Ordering::SeqCst)
        {
            on_start(job_pid, at);
        }
    }
    None
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
        for (sub, m) in [("logs", 0o700), ("jobs", 0o711), ("run", 0o700)] {
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
            zygote: None,
            routes: Arc::new(std::sync::Mutex::new(HashMap::new())),
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

    /// The controller has recorded the exit: the job part's files go.
    pub fn acknowledged(&self, job_id: &str, attempt: u32) {
        let _ = std::fs::remove_file(exit_file(&exits_dir(&self.state_dir), job_id, attempt));
        if self.running.get(job_id).is_none_or(|r| r.attempt != attempt) {
            let base = run_base(&self.state_dir, job_id, attempt);
            let _ = std::fs::remove_file(supervisor::run_file(&base));
            let _ = std::fs::remove_file(supervisor::stop_file(&base));
        }
    }

    /// Starts a job under a supervisor. Reports `Started` (unless it could
    /// not start), then `Exited`.
    pub async fn launch(&mut self, order: pb::LaunchJob) {
        if let Some(r) = self.running.get(&order.job_id)
            && r.attempt == order.attempt
        {
            warn!(job = %order.job_id, "launch order repeated; the job already runs");
            return;
        }
        let dir = run_base(&self.state_dir, &order.job_id, order.attempt);
        let output = self.output_path(&order.job_id);
        let ctx = JobContext {
            output: output.clone(),
            node: self.node.clone(),
        };
        let scratch = self.state_dir.join("jobs").join(&order.job_id);
        // Checked by the controller; a pattern this agent cannot expand
        // leaves the output with the node.
        let (stdout_file, stderr_file) =
            super::output::files(&order, &self.node, &scratch).unwrap_or_else(|e| {
                warn!(job = %order.job_id, "output file pattern: {e}");
                (None, None)
            });
        let note = super::output::path_note(&self.state_dir, &order.job_id);
        match &stdout_file {
            Some(p) => {
                let _ = std::fs::write(&note, p.as_os_str().as_encoded_bytes());
            }
            None => {
                let _ = std::fs::remove_file(&note);
            }
        }
        let spec = SuperviseSpec {
            stdout_file,
            stderr_file,
            job_id: order.job_id.clone(),
            attempt: order.attempt,
            command: order.command.clone(),
            args: order.args.clone(),
            env: job_env(&order, &ctx),
            working_dir: (!order.working_dir.is_empty()).then(|| PathBuf::from(&order.working_dir)),
            scratch,
            output,
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
            script: order.script.clone(),
        };
        let key = format!("{}.{}", order.job_id, order.attempt);
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), tx.clone());
        // Written before the supervisor starts (it reads it once it runs).
        let written = supervisor::write_spec(&dir, &spec);
        let asked = match written {
            Err(e) => Err(e),
            Ok(()) => self.ask_zygote(&dir).await,
        };
        if let Err(e) = asked {
            self.routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
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
            let _ = supervisor::record_exit(&dir, &exit);
            let _ = self.events.send(LaunchEvent::Exited(exit));
            return;
        }
        let supervisor_pid = Arc::new(AtomicI32::new(0));
        let started = Arc::new(AtomicBool::new(false));
        self.running.insert(
            order.job_id.clone(),
            Running {
                attempt: order.attempt,
                launched_mono_ms: mono_ms(),
                dir: dir.clone(),
                supervisor_pid: supervisor_pid.clone(),
                started: started.clone(),
            },
        );
        let events = self.events.clone();
        let state_dir = self.state_dir.clone();
        let routes = self.routes.clone();
        tokio::spawn(async move {
            let exit = watch_supervisor(rx, &dir, &supervisor_pid, &started, &events, &order).await;
            routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            let exit =
                exit.unwrap_or_else(|| take_exit(&state_dir, &dir, &order.job_id, order.attempt, None));
            info!(job = %order.job_id, kind = exit.kind, code = ?exit.exit_code, signal = ?exit.signal, "job process ended");
            let _ = events.send(LaunchEvent::Exited(exit));
        });
    }

    /// Has the zygote fork a supervisor for the run at `base` (starting the
    /// zygote, or a new one if it died); without a zygote, starts the
    /// supervisor as a program of its own.
    async fn ask_zygote(&mut self, base: &Path) -> std::io::Result<()> {
        let request = format!("run {}\n", base.display());
        for _ in 0..2 {
            if self
                .zygote
                .as_mut()
                .is_none_or(|z| !matches!(z.child.try_wait(), Ok(None)))
            {
                self.zygote = self
                    .start_zygote()
                    .map_err(|e| warn!("cannot start the supervisor zygote: {e}"))
                    .ok();
            }
            let Some(z) = self.zygote.as_mut() else { break };
            if z.stdin.write_all(request.as_bytes()).await.is_ok() && z.stdin.flush().await.is_ok() {
                return Ok(());
            }
            self.zygote = None;
        }
        // No zygote: a supervisor of its own.
        let mut child = tokio::process::Command::new(&self.supervisor_exe)
            .arg("supervise")
            .arg(base)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(false)
            .spawn()?;
        let key = supervisor::key_of(base);
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        if let Some(tx) = self.routes.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            let _ = tx.send(SupLine::Forked {
                pid,
                ticks: start_ticks(pid).unwrap_or(0),
            });
        }
        if let Some(out) = child.stdout.take() {
            route_lines(out, self.routes.clone());
        }
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }

    fn start_zygote(&self) -> std::io::Result<Zygote> {
        let mut child = tokio::process::Command::new(&self.supervisor_exe)
            .arg("zygote")
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(false)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?;
        if let Some(out) = child.stdout.take() {
            route_lines(out, self.routes.clone());
        }
        Ok(Zygote { child, stdin })
    }

    /// Takes over the supervisors a previous agent on this node left
    /// running: their jobs run on, and their exits are reported when they
    /// come. A job whose supervisor died is killed (nobody could report it).
    /// Returns the job parts adopted, and the exits recorded while no
    /// agent was here (to report).
    pub fn adopt(&mut self) -> (Vec<(String, u32)>, Vec<pb::JobExited>) {
        let mut adopted = Vec::new();
        let mut exits = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.state_dir.join("run")) else {
            return (adopted, exits);
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if path.is_dir() {
                // An older layout's run dir.
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if name.ends_with(".pid") {
                // A pid file of an agent from before supervisors: kill its job.
                reap_legacy(&path);
                continue;
            }
            let Some((job, attempt)) = name
                .strip_suffix(".json")
                .and_then(|n| n.rsplit_once('.'))
                .and_then(|(j, a)| Some((j.to_string(), a.parse::<u32>().ok()?)))
            else {
                continue; // a stop order or a temp file: goes with its job
            };
            let dir = run_base(&self.state_dir, &job, attempt);
            // A supervisor still starting (its run file just written) has
            // not recorded its state yet: give it a moment.
            let fresh = || {
                std::fs::metadata(supervisor::run_file(&dir))
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|e| e < Duration::from_secs(5)))
            };
            for _ in 0..100 {
                if read_state(&dir).is_some() || !fresh() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let run = supervisor::read_run_file(&dir);
            if let Some(e) = run.as_ref().and_then(|r| r.exit.clone()) {
                // Ended while no agent was here: reported at registration
                // (its file goes once the controller acknowledges it).
                exits.push(e);
                continue;
            }
            let has_exit = exit_file(&exits_dir(&self.state_dir), &job, attempt).exists();
            let state = run.and_then(|r| r.state);
            // The supervisor, if it still runs (checked after the pidfd
            // pins the pid, so it cannot be another process by then).
            let live = state.and_then(|s| {
                let fd = pidfd_open(s.supervisor_pid);
                (s.supervisor_start_ticks != 0
                    && start_ticks(s.supervisor_pid) == Some(s.supervisor_start_ticks))
                .then_some((s, fd))
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
                            supervisor_pid: Arc::new(AtomicI32::new(s.supervisor_pid)),
                            started: Arc::new(AtomicBool::new(true)),
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
                    exits.push(e);
                }
            }
        }
        (adopted, exits)
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
                // Before it runs the job the supervisor is told by the
                // launch task (which sees the order on file).
                !r.started.load(Ordering::SeqCst)
                    || kill(
                        Pid::from_raw(r.supervisor_pid.load(Ordering::SeqCst)),
                        Signal::SIGUSR1,
                    )
                    .is_ok()
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
        let mut path = self.output_path(job_id);
        let mut shown = format!("allot-{job_id}.out");
        let mut run_as = None;
        // A job with an output file of its own (`-o`): read there, as its user.
        if let Ok(p) = std::fs::read(super::output::path_note(&self.state_dir, job_id)) {
            path = PathBuf::from(String::from_utf8_lossy(&p).into_owned());
            shown = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(shown);
            run_as = self.run_as;
        }
        let opened = tokio::task::spawn_blocking(move || super::output::open_as(&path, run_as, false))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let mut f = match opened.map(tokio::fs::File::from_std) {
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
    if !order.queue.is_empty() {
        allot.push(("ALLOT_QUEUE", order.queue.clone()));
    }
    if order.script.is_some() {
        allot.extend(slurm_env(order, ctx, &nodes));
    }
    env.extend(allot.into_iter().map(|(k, v)| (k.to_string(), v)));
    env
}

/// What a batch script (`allot sbatch`) sees of Slurm's variables, with
/// allot's values: one task per node (the script runs once on each),
/// ranks by node. `SLURM_SUBMIT_DIR` and `SLURM_SUBMIT_HOST` come with the
/// job's own environment, from where it was submitted.
fn slurm_env(order: &pb::LaunchJob, ctx: &JobContext, nodes: &[String]) -> Vec<(&'static str, String)> {
    let cpus = (order.cpu_millis.max(0) as u64).div_ceil(1000).max(1).to_string();
    let rank = order.node_rank.to_string();
    let node_list = nodes.join(",");
    vec![
        ("SLURM_JOB_ID", order.job_id.clone()),
        ("SLURM_JOBID", order.job_id.clone()),
        ("SLURM_JOB_NAME", order.name.clone()),
        ("SLURM_JOB_ACCOUNT", order.project.clone()),
        ("SLURM_JOB_USER", order.tenant.clone()),
        ("SLURM_NNODES", nodes.len().to_string()),
        ("SLURM_JOB_NUM_NODES", nodes.len().to_string()),
        ("SLURM_JOB_NODELIST", node_list.clone()),
        ("SLURM_NODELIST", node_list),
        ("SLURMD_NODENAME", ctx.node.clone()),
        ("SLURM_NODEID", rank.clone()),
        ("SLURM_PROCID", rank),
        ("SLURM_LOCALID", "0".to_string()),
        ("SLURM_NTASKS", nodes.len().to_string()),
        ("SLURM_NPROCS", nodes.len().to_string()),
        ("SLURM_NTASKS_PER_NODE", "1".to_string()),
        ("SLURM_CPUS_PER_TASK", cpus.clone()),
        ("SLURM_CPUS_ON_NODE", cpus),
        ("SLURM_MEM_PER_NODE", order.memory_mib.to_string()),
        ("SLURM_GPUS_ON_NODE", order.devices.len().to_string()),
        ("SLURM_RESTART_COUNT", order.attempt.saturating_sub(1).to_string()),
        ("SLURM_JOB_PARTITION", order.queue.clone()),
    ]
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
