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
//! Files in the job part's run dir `<state dir>/run/<job>.<attempt>/`:
//! `spec.json` (written by the agent before the supervisor starts),
//! `state.json` (the supervisor's and the job's pids, once started),
//! `stop` (a stop order; the agent writes it, then sends SIGUSR1) and
//! `supervisor.log`. The supervisor tells the agent that spawned it that the
//! job started with one line on its stdout; it reports the end only through
//! the exit report, `<state dir>/exits/<job>.<attempt>.pb`.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use allot_proto::v1 as pb;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

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
    pub exits_dir: PathBuf,
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
}

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

/// The environment variable that marks a supervisor's process, for an
/// agent checking that a pid is still the supervisor it was.
pub const MARKER: &str = "ALLOT_SUPERVISOR";

/// What the supervisor prints on stdout once the job runs.
pub const STARTED_LINE: &str = "started";

pub fn spec_file(dir: &Path) -> PathBuf {
    dir.join("spec.json")
}

pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

pub fn stop_file(dir: &Path) -> PathBuf {
    dir.join("stop")
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
/// still writing), synced, renamed, and the directory synced.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let tmp = path.with_file_name(format!("{file_name}.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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

/// What the job's process does between fork and exec to keep the node's
/// private files out of its reach: a mount namespace of its own (with a
/// user namespace of its own when the supervisor is not root) in which
/// they are covered, then the job's user. Everything is prepared before
/// the fork; the child only makes system calls.
struct Isolation {
    user_ns: Option<(std::ffi::CString, std::ffi::CString)>,
    hide_dirs: Vec<std::ffi::CString>,
    hide_files: Vec<std::ffi::CString>,
    /// The jobs dir and the job's own scratch dir inside it.
    scratch: Option<(std::ffi::CString, std::ffi::CString)>,
}

/// The error a child reports when it could not isolate itself: the spawn
/// is tried again without (and the job's output says so).
const ISOLATION_FAILED: i32 = nix::libc::ENOTRECOVERABLE;

fn cstr(p: &Path) -> Option<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).ok()
}

impl Isolation {
    fn prepare(spec: &SuperviseSpec, scratch: Option<&Path>) -> Option<Isolation> {
        if spec.hide.is_empty() && spec.jobs_dir.is_none() {
            return None;
        }
        let euid = nix::unistd::geteuid();
        let egid = nix::unistd::getegid();
        let user_ns = (!euid.is_root()).then(|| {
            (
                std::ffi::CString::new(format!("{euid} {euid} 1")).expect("no NUL"),
                std::ffi::CString::new(format!("{egid} {egid} 1")).expect("no NUL"),
            )
        });
        let (mut hide_dirs, mut hide_files) = (Vec::new(), Vec::new());
        for p in &spec.hide {
            match std::fs::metadata(p) {
                Ok(m) if m.is_dir() => hide_dirs.extend(cstr(p)),
                Ok(_) => hide_files.extend(cstr(p)),
                Err(_) => {}
            }
        }
        let scratch = match (&spec.jobs_dir, scratch) {
            (Some(jobs), Some(own)) if jobs.is_dir() && own.starts_with(jobs) => {
                Some((cstr(jobs)?, cstr(own)?))
            }
            (Some(jobs), _) if jobs.is_dir() => {
                hide_dirs.extend(cstr(jobs));
                None
            }
            _ => None,
        };
        Some(Isolation {
            user_ns,
            hide_dirs,
            hide_files,
            scratch,
        })
    }

    /// In the child, before exec. Only system calls.
    fn apply(&self) -> std::io::Result<()> {
        use nix::libc;
        let fail = || std::io::Error::from_raw_os_error(ISOLATION_FAILED);
        // SAFETY: plain system calls on NUL-terminated strings prepared
        // before the fork.
        unsafe {
            let write_file = |path: &[u8], data: &[u8]| -> bool {
                let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return false;
                }
                let ok = libc::write(fd, data.as_ptr().cast(), data.len()) == data.len() as isize;
                libc::close(fd);
                ok
            };
            match &self.user_ns {
                Some((uid_map, gid_map)) => {
                    if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0
                        || !write_file(b"/proc/self/setgroups\0", b"deny")
                        || !write_file(b"/proc/self/uid_map\0", uid_map.as_bytes())
                        || !write_file(b"/proc/self/gid_map\0", gid_map.as_bytes())
                    {
                        return Err(fail());
                    }
                }
                None => {
                    if libc::unshare(libc::CLONE_NEWNS) != 0 {
                        return Err(fail());
                    }
                }
            }
            let null = std::ptr::null::<libc::c_char>();
            if libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(fail());
            }
            let tmpfs = c"tmpfs".as_ptr();
            let ro = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
            for d in &self.hide_dirs {
                if libc::mount(tmpfs, d.as_ptr(), tmpfs, ro, c"size=4k,mode=0555".as_ptr().cast()) != 0 {
                    return Err(fail());
                }
            }
            for f in &self.hide_files {
                if libc::mount(
                    c"/dev/null".as_ptr(),
                    f.as_ptr(),
                    null,
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(fail());
                }
            }
            if let Some((jobs, own)) = &self.scratch {
                // Cover every job's scratch dir, then bring back this one's
                // through a descriptor opened before it was covered (in this
                // namespace: a bind mount takes no source from another).
                let fd = libc::open(own.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(fail());
                }
                let mut src = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0";
                let mut n = fd as u32;
                let mut digits = [0u8; 10];
                let mut len = 0;
                loop {
                    digits[len] = b'0' + (n % 10) as u8;
                    len += 1;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                for i in 0..len {
                    src[14 + i] = digits[len - 1 - i];
                }
                let rw = libc::MS_NOSUID | libc::MS_NODEV;
                if libc::mount(
                    tmpfs,
                    jobs.as_ptr(),
                    tmpfs,
                    rw,
                    c"size=4k,mode=0711".as_ptr().cast(),
                ) != 0
                    || libc::mkdir(own.as_ptr(), 0o700) != 0
                    || libc::mount(
                        src.as_ptr().cast(),
                        own.as_ptr(),
                        null,
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        null,
                        jobs.as_ptr(),
                        null,
                        libc::MS_REMOUNT | libc::MS_RDONLY | rw,
                        std::ptr::null(),
                    ) != 0
                    || libc::chdir(own.as_ptr()) != 0
                {
                    return Err(fail());
                }
                libc::close(fd);
            }
        }
        Ok(())
    }
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
pub fn main(dir: &Path) -> i32 {
    // Its own session: the agent's process group or terminal going away
    // does not take the job with it.
    let _ = nix::unistd::setsid();
    let spec: SuperviseSpec = match std::fs::read(spec_file(dir))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("allot supervise: cannot read {}: {e}", spec_file(dir).display());
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("allot supervise: cannot start: {e}");
            return 2;
        }
    };
    let exit = runtime.block_on(supervise(dir, &spec));
    if let Err(e) = std::fs::create_dir_all(&spec.exits_dir).and_then(|_| write_exit(&spec.exits_dir, &exit))
    {
        eprintln!(
            "allot supervise: cannot write the exit report of job {}: {e}",
            spec.job_id
        );
        return 1;
    }
    0
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

async fn supervise(dir: &Path, spec: &SuperviseSpec) -> pb::JobExited {
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
    let workdir = match &spec.working_dir {
        None => {
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
            spec.scratch.clone()
        }
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
    let program = resolve_program(&spec.command, &spec.env, &workdir);
    let own_scratch = spec.working_dir.is_none().then_some(workdir.as_path());
    let isolation = Isolation::prepare(spec, own_scratch).map(std::sync::Arc::new);
    let spawn = |isolation: Option<std::sync::Arc<Isolation>>| {
        let out = open_output(&spec.output)?;
        let err = out.try_clone()?;
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
        job_pid: pid,
        started_unix_ms: UnixMillis::now().0,
        started_mono_ms: mono_ms(),
    };
    if let Err(e) = write_atomically(
        &state_file(dir),
        &serde_json::to_vec(&state).expect("serializable"),
    ) {
        eprintln!("allot supervise: cannot write {}: {e}", state_file(dir).display());
    }
    // Tell the agent that spawned it (a later agent reads state.json).
    {
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "{STARTED_LINE}");
        let _ = stdout.flush();
    }

    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
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
                let grace = std::fs::read(stop_file(dir))
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
