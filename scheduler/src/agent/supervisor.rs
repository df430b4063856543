//! The per-job supervisor: `allot supervise DIR`, one small process per job
//! part, as Slurm has one `slurmstepd` per step. It outlives its agent, so
//! that a job is never left without someone who
//!
//! - **records how it ended**: the exit report is written (and synced) by
//!   the supervisor, not by the agent, so a job that ends while its agent is
//!   down is reported with its real exit status and end time by the next
//!   agent (which adopts running supervisors instead of killing their jobs);
//! - **fences it**: the agent renews a lease in `<state dir>/fence` each
//!   time the controller acknowledges one of its heartbeats. A supervisor
//!   whose lease runs out (the agent died, or lost the controller) kills
//!   its job: a job stops on its node before the controller may declare it
//!   lost and start it elsewhere (see `Registered.fence_after_ms`);
//! - stops it on order (SIGTERM to its process group, SIGKILL after the
//!   grace; a later order with a shorter grace shortens the wait) and at
//!   its time limit.
//!
//! A job part's files, beside `<state dir>/run/<job>.<attempt>`: `.json`,
//! its spec (written by the agent before the supervisor starts) and, once
//! the job runs, the supervisor's and the job's pids (rewritten in place by
//! the supervisor); `.stop`, a stop order (the agent writes it, then sends
//! SIGUSR1). The supervisor tells the agent that spawned it that the job
//! started with one line on its stdout; it reports the end only through the
//! exit report, `<state dir>/exits/<job>.<attempt>.pb`. Few files, because
//! each file made costs an inode per job: at hundreds of jobs a second the
//! file system's inode allocation shows.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use allot_proto::v1 as pb;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::isolation::{ISOLATION_FAILED, Isolation};
use crate::domain::UnixMillis;

/// Everything a supervisor needs to run one job part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuperviseSpec {
    pub job_id: String,
    pub attempt: u32,
    /// The command as the job gave it (its `argv[0]`).
    pub command: String,
    pub args: Vec<String>,
    /// The job's whole environment.
    pub env: Vec<(String, String)>,
    /// Its working directory; `None`: `scratch`, created for it.
    pub working_dir: Option<PathBuf>,
    pub scratch: PathBuf,
    /// Where stdout and stderr go (appended).
    pub output: PathBuf,
    pub fence_file: PathBuf,
    pub time_limit_ms: Option<u64>,
    pub grace_ms: u64,
    /// Run the job as this user and group (the agent's `--run-as`).
    #[serde(default)]
    pub run_as: Option<RunAs>,
    pub node: String,
    /// Paths the job must not see (the agent's own files, the controller's
    /// data): in the job's mount namespace a directory is an empty
    /// read-only tmpfs and a file is `/dev/null`.
    #[serde(default)]
    pub hide: Vec<PathBuf>,
    /// The directory of every job's scratch directory: hidden too, but for
    /// the job's own.
    #[serde(default)]
    pub jobs_dir: Option<PathBuf>,
    /// A batch script to run in place of `command`: written to
    /// [`SCRIPT_FILE`] in `scratch` (the job's own, which it sees even
    /// with a working directory of its own), then run with `args`.
    #[serde(default)]
    pub script: Option<String>,
    /// The job's own stdout and stderr files (`-o/-e`), opened as its
    /// user; `None`: `output` (stderr: with stdout).
    #[serde(default)]
    pub stdout_file: Option<PathBuf>,
    #[serde(default)]
    pub stderr_file: Option<PathBuf>,
}

/// The batch script's file name in the job's scratch directory (Slurm's
/// name for it in its spool).
pub const SCRIPT_FILE: &str = "slurm_script";

/// A user to run jobs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// What a supervisor records once its job runs (`state.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorState {
    pub supervisor_pid: i32,
    /// The job's process, also its process group.
    pub job_pid: i32,
    pub started_unix_ms: u64,
    /// `CLOCK_MONOTONIC` at the start, in ms (shared by every process of
    /// the machine, so a later agent can tell how long it has run).
    pub started_mono_ms: u64,
    /// The supervisor's start in clock ticks since boot: a later agent
    /// checks it before it takes the pid for the supervisor's.
    #[serde(default)]
    pub supervisor_start_ticks: u64,
}

/// A stop order (`stop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopOrder {
    pub grace_ms: u64,
}

/// The agent's lease on its jobs (`<state dir>/fence`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The machine's boot: a lease from before a reboot is void.
    pub boot_id: String,
    /// `CLOCK_MONOTONIC` in ms after which jobs must not run.
    pub deadline_mono_ms: u64,
}

/// What the supervisor prints on stdout once the job runs: `started KEY
/// JOB_PID START_UNIX_MS`, KEY being `<job>.<attempt>`. The zygote prints
/// `forked KEY PID START_TICKS` for each supervisor it forks, or
/// `failed KEY REASON`.
pub const STARTED_LINE: &str = "started";

/// `<job>.<attempt>` of a run base path.
pub fn key_of(base: &Path) -> String {
    base.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string()
}

/// When a process started, in clock ticks since boot (`/proc/PID/stat`
/// field 22): with the pid, it names one process for good (pids are
/// reused, start times with them are not).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// One line to the agent, in one write (lines of several supervisors share
/// the pipe; a write of less than `PIPE_BUF` is never interleaved).
fn say(line: &str) {
    let mut buf = line.as_bytes().to_vec();
    buf.push(b'\n');
    // SAFETY: a write of our own buffer to fd 1.
    let _ = unsafe { nix::libc::write(1, buf.as_ptr().cast(), buf.len()) };
}

/// `allot-supervise zygote`: started once by an agent, it forks a
/// supervisor for each `run BASE` line on its stdin. A fork of this small,
/// single-threaded process costs a tenth of starting a program, so a job's
/// supervisor adds little to its launch. The supervisors it forks are not
/// its to wait for (the kernel reaps them: SIGCHLD is ignored here) and
/// outlive it. It ends when its stdin closes (its agent has gone).
pub fn zygote() -> i32 {
    use std::io::BufRead;
    // SAFETY: setting a signal disposition.
    unsafe { nix::libc::signal(nix::libc::SIGCHLD, nix::libc::SIG_IGN) };
    let mut line = String::new();
    let mut input = std::io::BufReader::new(std::io::stdin());
    loop {
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => return 0,
            Ok(_) => {}
        }
        let Some(base) = line.trim_end_matches('\n').strip_prefix("run ") else {
            continue;
        };
        let base = PathBuf::from(base);
        let key = key_of(&base);
        // SAFETY: this process is single-threaded (no runtime, no threads).
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                // SAFETY: plain system calls; the child is single-threaded.
                unsafe {
                    nix::libc::signal(nix::libc::SIGCHLD, nix::libc::SIG_DFL);
                    let null = nix::libc::open(c"/dev/null".as_ptr(), nix::libc::O_RDONLY);
                    if null >= 0 {
                        nix::libc::dup2(null, 0);
                        nix::libc::close(null);
                    }
                }
                std::process::exit(main(&base));
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let ticks = start_ticks(child.as_raw()).unwrap_or(0);
                say(&format!("forked {key} {child} {ticks}"));
            }
            Err(e) => say(&format!("failed {key} cannot fork a supervisor: {e}")),
        }
    }
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut p = base.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The job part's spec and state: `<base>.json`.
pub fn run_file(base: &Path) -> PathBuf {
    with_suffix(base, ".json")
}

/// A stop order for it: `<base>.stop`.
pub fn stop_file(base: &Path) -> PathBuf {
    with_suffix(base, ".stop")
}

/// An exit report as the run file keeps it (the fields of `JobExited`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub job_id: String,
    pub attempt: u32,
    pub kind: i32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: String,
    pub agent_time_unix_ms: i64,
    pub runtime_ms: Option<i64>,
}

impl From<&pb::JobExited> for ExitRecord {
    fn from(e: &pb::JobExited) -> Self {
        ExitRecord {
            job_id: e.job_id.clone(),
            attempt: e.attempt,
            kind: e.kind,
            exit_code: e.exit_code,
            signal: e.signal,
            message: e.message.clone(),
            agent_time_unix_ms: e.agent_time_unix_ms,
            runtime_ms: e.runtime_ms,
        }
    }
}

impl From<ExitRecord> for pb::JobExited {
    fn from(e: ExitRecord) -> Self {
        pb::JobExited {
            job_id: e.job_id,
            attempt: e.attempt,
            kind: e.kind,
            exit_code: e.exit_code,
            signal: e.signal,
            message: e.message,
            agent_time_unix_ms: e.agent_time_unix_ms,
            runtime_ms: e.runtime_ms,
            ended_ms_ago: None,
        }
    }
}

/// One line of a run file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RunLine {
    Spec(Box<SuperviseSpec>),
    State(SupervisorState),
    Exit(ExitRecord),
}

/// What a run file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFile {
    pub spec: SuperviseSpec,
    /// Set by the supervisor once the job runs.
    pub state: Option<SupervisorState>,
    /// Set when the job has ended.
    pub exit: Option<pb::JobExited>,
}

fn append_line(base: &Path, line: &RunLine, sync: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = serde_json::to_vec(line).expect("serializable");
    bytes.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(run_file(base))?;
    f.write_all(&bytes)?;
    if sync {
        f.sync_data()?;
    }
    Ok(())
}

/// Starts a run file with the job part's spec (the agent, before it starts
/// the supervisor).
pub fn write_spec(base: &Path, spec: &SuperviseSpec) -> std::io::Result<()> {
    append_line(base, &RunLine::Spec(Box::new(spec.clone())), false)
}

/// Records the job's end in its run file, durably.
pub fn record_exit(base: &Path, e: &pb::JobExited) -> std::io::Result<()> {
    append_line(base, &RunLine::Exit(e.into()), true)
}

/// Reads a run file (`None` without one, or without its spec). A last line
/// torn by a power cut is ignored.
pub fn read_run_file(base: &Path) -> Option<RunFile> {
    let text = std::fs::read(run_file(base)).ok()?;
    let (mut spec, mut state, mut exit) = (None, None, None);
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<RunLine>(line) {
            Ok(RunLine::Spec(s)) => spec = Some(*s),
            Ok(RunLine::State(s)) => state = Some(s),
            Ok(RunLine::Exit(e)) => exit = Some(e.into()),
            Err(_) => {}
        }
    }
    Some(RunFile {
        spec: spec?,
        state,
        exit,
    })
}

/// `CLOCK_MONOTONIC` now, in ms.
pub fn mono_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// This boot of the machine.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Writes `bytes` to `path` durably and atomically: a temp file named
/// after this process (so a reader never takes a file another process is
/// still writing), synced, then renamed.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let tmp = path.with_file_name(format!("{file_name}.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    // No sync of the directory: a rename lost to a power cut leaves the
    // complete temp file, which the next agent takes in (`load_exits`).
    std::fs::rename(&tmp, path)
}

/// Writes a small file atomically (temp file and rename, no sync).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let tmp = path.with_file_name(format!("{file_name}.tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The exit report of `job`'s `attempt` in `dir`.
pub fn exit_file(dir: &Path, job: &str, attempt: u32) -> PathBuf {
    dir.join(format!("{job}.{attempt}.pb"))
}

/// Writes one exit report durably.
pub fn write_exit(dir: &Path, e: &pb::JobExited) -> std::io::Result<()> {
    use prost::Message;
    write_durably(&exit_file(dir, &e.job_id, e.attempt), &e.encode_to_vec())
}

/// The fence's deadline, if a lease of this boot is on file.
pub fn read_fence(path: &Path) -> Option<u64> {
    let f: Fence = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (f.boot_id == boot_id()).then_some(f.deadline_mono_ms)
}

/// Renews the lease: jobs may run until `deadline_mono_ms`.
pub fn write_fence(path: &Path, deadline_mono_ms: u64) -> std::io::Result<()> {
    let f = Fence {
        boot_id: boot_id(),
        deadline_mono_ms,
    };
    write_atomically(path, &serde_json::to_vec(&f).expect("serializable"))
}

/// Signals a process group, ignoring "no such process".
fn signal_group(pgid: i32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pgid), sig);
}

/// The file a command names: the command itself if it holds a `/`, else
/// the first executable file of that name in the job's own `PATH` (`execvp`'s
/// default when it has none; empty and relative entries taken from its
/// working directory), which is what `execvp` in the job would run. `None`:
/// not found (the spawn then fails as it would have).
pub fn resolve_program(command: &str, env: &[(String, String)], workdir: &Path) -> Option<PathBuf> {
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

fn report(
    spec: &SuperviseSpec,
    kind: pb::ExitKind,
    code: Option<i32>,
    signal: Option<i32>,
    message: String,
    runtime: Option<Duration>,
) -> pb::JobExited {
    pb::JobExited {
        job_id: spec.job_id.clone(),
        attempt: spec.attempt,
        kind: kind as i32,
        exit_code: code,
        signal,
        message,
        agent_time_unix_ms: UnixMillis::now().0 as i64,
        runtime_ms: runtime.map(|d| d.as_millis() as i64),
        ended_ms_ago: None,
    }
}

/// `allot supervise DIR`: runs the job part described in `DIR/spec.json`
/// to its end, and returns the process's exit code. Called first thing in
/// `main`, before any thread exists.
pub fn main(base: &Path) -> i32 {
    // Its own session: the agent's process group or terminal going away
    // does not take the job with it.
    let _ = nix::unistd::setsid();
    let log = |msg: String| {
        let _ = writeln!(std::io::stderr(), "allot supervise: {msg}");
    };
    let Some(run) = read_run_file(base) else {
        log(format!("cannot read {}", run_file(base).display()));
        return 2;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            log(format!("cannot start: {e}"));
            return 2;
        }
    };
    let exit = runtime.block_on(supervise(base, &run.spec));
    if let Err(e) = record_exit(base, &exit) {
        log(format!("cannot record the end of job {}: {e}", run.spec.job_id));
        return 1;
    }
    0
}

/// Writes the batch script to the job's scratch directory, executable by
/// the job's user only; returns its path.
fn write_script(spec: &SuperviseSpec, text: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = spec.scratch.join(format!("{SCRIPT_FILE}.{}", spec.attempt));
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    if let Some(u) = spec.run_as {
        nix::unistd::chown(
            &path,
            Some(nix::unistd::Uid::from_raw(u.uid)),
            Some(nix::unistd::Gid::from_raw(u.gid)),
        )?;
    }
    Ok(path)
}

fn open_output(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Leaves a line where `allot logs` shows it.
fn note(spec: &SuperviseSpec, msg: &str) {
    if let Ok(mut f) = open_output(&spec.output) {
        let _ = writeln!(f, "allot: {msg}");
    }
}

/// A tokio deadline `ms` of `CLOCK_MONOTONIC` from now (now if past).
fn mono_deadline(deadline_mono_ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(deadline_mono_ms.saturating_sub(mono_ms()))
}

async fn supervise(base: &Path, spec: &SuperviseSpec) -> pb::JobExited {
    // Stop orders are caught from the start (SIGUSR1 would end the process
    // otherwise); the agent sends them only after the "started" line.
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let failed = |msg: String| {
        note(spec, &msg);
        report(spec, pb::ExitKind::LaunchFailed, None, None, msg, None)
    };
    // A lease already out (the agent lost the controller between the order
    // and now): the job does not start at all.
    let Some(fence) = read_fence(&spec.fence_file).filter(|d| *d > mono_ms()) else {
        return report(
            spec,
            pb::ExitKind::Fenced,
            None,
            None,
            "not started: the agent's lease with the controller had run out".into(),
            None,
        );
    };
    // The job's own scratch directory: its working directory when it has
    // none of its own, and where its batch script lives.
    let needs_scratch = spec.working_dir.is_none() || spec.script.is_some();
    if needs_scratch {
        if let Err(e) = std::fs::create_dir_all(&spec.scratch) {
            return failed(format!("cannot create the job's scratch directory: {e}"));
        }
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&spec.scratch, std::fs::Permissions::from_mode(0o700));
        }
        if let Some(u) = spec.run_as {
            let _ = nix::unistd::chown(
                &spec.scratch,
                Some(nix::unistd::Uid::from_raw(u.uid)),
                Some(nix::unistd::Gid::from_raw(u.gid)),
            );
        }
    }
    let script = match &spec.script {
        None => None,
        Some(text) => match write_script(spec, text) {
            Ok(path) => Some(path),
            Err(e) => return failed(format!("cannot write the job's batch script: {e}")),
        },
    };
    let workdir = match &spec.working_dir {
        None => spec.scratch.clone(),
        Some(d) if d.is_dir() => d.clone(),
        Some(d) => {
            return failed(format!(
                "working directory {} does not exist on node {}",
                d.display(),
                spec.node
            ));
        }
    };
    // The output file is the agent's (0600): the job writes it through the
    // descriptors it is given, and cannot open it, nor another job's.
    if let Err(e) = open_output(&spec.output) {
        return failed(format!("cannot open the job's output file: {e}"));
    }
    for p in [&spec.stdout_file, &spec.stderr_file].into_iter().flatten() {
        if let Err(e) = super::output::open_as(p, spec.run_as, true) {
            return failed(format!("cannot open output file {}: {e}", p.display()));
        }
    }
    let program = match &script {
        Some(path) => Some(path.clone()),
        None => resolve_program(&spec.command, &spec.env, &workdir),
    };
    let own_scratch = needs_scratch.then_some(spec.scratch.as_path());
    let isolation = Isolation::prepare(spec, own_scratch, &workdir).map(std::sync::Arc::new);
    let spawn = |isolation: Option<std::sync::Arc<Isolation>>| {
        let out = match &spec.stdout_file {
            Some(p) => super::output::open_as(p, spec.run_as, true)?,
            None => open_output(&spec.output)?,
        };
        let err = match &spec.stderr_file {
            Some(p) => super::output::open_as(p, spec.run_as, true)?,
            None => out.try_clone()?,
        };
        let mut cmd = tokio::process::Command::new(program.as_deref().unwrap_or(Path::new(&spec.command)));
        cmd.arg0(&spec.command)
            .args(&spec.args)
            .current_dir(&workdir)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(false);
        let run_as = spec.run_as;
        // SAFETY: only system calls between fork and exec (the strings are
        // prepared before).
        unsafe {
            cmd.pre_exec(move || {
                // The namespace first (it takes privileges), then the user.
                if let Some(i) = &isolation {
                    i.apply()?;
                }
                if let Some(u) = run_as {
                    let gid = nix::libc::gid_t::from(u.gid);
                    if nix::libc::setgroups(1, &gid) != 0
                        || nix::libc::setgid(u.gid) != 0
                        || nix::libc::setuid(u.uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The job dies with its supervisor, whatever kills it (set
                // after the change of user, which would clear it).
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        cmd.spawn()
    };
    let mut child = match spawn(isolation.clone()) {
        Ok(c) => c,
        Err(e) if isolation.is_some() && e.raw_os_error() == Some(ISOLATION_FAILED) => {
            note(
                spec,
                "warning: this node cannot give the job a mount namespace of its own; it can see the node's private files",
            );
            match spawn(None) {
                Ok(c) => c,
                Err(e) => return failed(format!("cannot run {:?}: {e}", spec.command)),
            }
        }
        Err(e) => return failed(format!("cannot run {:?}: {e}", spec.command)),
    };
    let spawned = std::time::Instant::now();
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let state = SupervisorState {
        supervisor_pid: std::process::id() as i32,
        supervisor_start_ticks: start_ticks(std::process::id() as i32).unwrap_or(0),
        job_pid: pid,
        started_unix_ms: UnixMillis::now().0,
        started_mono_ms: mono_ms(),
    };
    if let Err(e) = append_line(base, &RunLine::State(state), false) {
        let _ = writeln!(
            std::io::stderr(),
            "allot supervise: cannot record the job's pid: {e}"
        );
    }
    // Tell the agent that started it (a later agent reads the run file).
    say(&format!(
        "{STARTED_LINE} {} {pid} {}",
        key_of(base),
        state.started_unix_ms
    ));

    let limit = spec
        .time_limit_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let mut fence_at = mono_deadline(fence);
    // Why allot ended it, and when SIGKILL is due.
    let mut stopped_by: Option<pb::ExitKind> = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut fenced = false;
    let stop = |grace: Duration,
                kind: pb::ExitKind,
                stopped_by: &mut Option<pb::ExitKind>,
                kill_at: &mut Option<tokio::time::Instant>| {
        if stopped_by.is_none() {
            *stopped_by = Some(kind);
            signal_group(pid, Signal::SIGTERM);
        }
        let at = tokio::time::Instant::now() + grace;
        *kill_at = Some(kill_at.map_or(at, |k| k.min(at)));
    };
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = async { usr1.as_mut().expect("guarded").recv().await }, if usr1.is_some() => {
                let grace = std::fs::read(stop_file(base))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<StopOrder>(&b).ok())
                    .map_or(spec.grace_ms, |o| o.grace_ms);
                stop(Duration::from_millis(grace), pb::ExitKind::Stopped, &mut stopped_by, &mut kill_at);
            }
            _ = async { term.as_mut().expect("guarded").recv().await }, if term.is_some() => {
                stop(Duration::from_millis(spec.grace_ms), pb::ExitKind::Stopped, &mut stopped_by, &mut kill_at);
            }
            _ = tokio::time::sleep_until(limit.unwrap_or_else(far)), if limit.is_some() && stopped_by.is_none() => {
                note(spec, "time limit reached; stopping the job");
                stop(Duration::from_millis(spec.grace_ms), pb::ExitKind::TimedOut, &mut stopped_by, &mut kill_at);
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or_else(far)), if kill_at.is_some() => {
                signal_group(pid, Signal::SIGKILL);
                kill_at = None;
            }
            _ = tokio::time::sleep_until(fence_at), if !fenced => {
                match read_fence(&spec.fence_file) {
                    Some(d) if d > mono_ms() => fence_at = mono_deadline(d),
                    _ => {
                        // The lease ran out: the controller may soon run the
                        // job elsewhere. It must not run here any more.
                        fenced = true;
                        note(spec, "the node lost the controller for too long; the job is stopped (fenced)");
                        signal_group(pid, Signal::SIGKILL);
                    }
                }
            }
        }
    };
    // Whatever the job left behind in its process group goes too.
    signal_group(pid, Signal::SIGKILL);
    let runtime = spawned.elapsed();
    let (code, signal) = match &status {
        Ok(s) => (s.code(), s.signal()),
        Err(_) => (None, None),
    };
    let kind = match (fenced, stopped_by) {
        (true, _) => pb::ExitKind::Fenced,
        (false, Some(k)) => k,
        (false, None) if signal.is_some() => pb::ExitKind::Signaled,
        (false, None) => pb::ExitKind::Exited,
    };
    let message = match &status {
        Ok(s) => s.to_string(),
        Err(e) => format!("could not wait for the process: {e}"),
    };
    report(spec, kind, code, signal, message, Some(runtime))
}
