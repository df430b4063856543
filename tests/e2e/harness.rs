//! Starts the real `allot` binary and talks to it over loopback gRPC.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use allot_sdk::{Client, Job, JobState};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_allot");

/// Everything in these tests finishes well within this.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// `allot server --dev` on 127.0.0.1:0 with a data dir of the test's.
pub struct DevServer {
    child: Option<Child>,
    pub addr: String,
    pub token: String,
    pub admin_token: String,
    pub data_dir: PathBuf,
}

impl DevServer {
    pub async fn start(data_dir: &Path) -> DevServer {
        Self::start_with(data_dir, &[]).await
    }

    /// Dev mode with extra `allot server` arguments.
    pub async fn start_with(data_dir: &Path, extra: &[&str]) -> DevServer {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("server.log"))
            .expect("server log");
        let mut child = Command::new(BIN)
            .args(["server", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("allot binary starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let (mut addr, mut token, mut admin) = (None, None, None);
        let read = async {
            while let Some(line) = lines.next_line().await.expect("reading server output") {
                if let Some(v) = line.strip_prefix("export ALLOT_ADDR=") {
                    addr = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("export ALLOT_TOKEN=") {
                    token = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("export ALLOT_ADMIN_TOKEN=") {
                    admin = Some(v.to_string());
                    break;
                }
            }
        };
        tokio::time::timeout(PATIENCE, read).await.unwrap_or_else(|_| {
            panic!(
                "dev server not ready; see {}",
                data_dir.join("server.log").display()
            )
        });
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        DevServer {
            child: Some(child),
            addr: addr.expect("address printed"),
            token: token.expect("tenant token printed"),
            admin_token: admin.expect("admin token printed"),
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr.clone(), &self.token)
            .await
            .expect("connect")
    }

    pub async fn admin(&self) -> Client {
        Client::connect(self.addr.clone(), &self.admin_token)
            .await
            .expect("connect")
    }

    /// SIGKILL: no shutdown, no flush, nothing graceful.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.start_kill().expect("kill");
            c.wait().await.expect("reap");
        }
    }

    /// Where the in-process agent of `node` writes a job's output.
    pub fn output_file(&self, node: &str, job: &str) -> PathBuf {
        self.data_dir
            .join("agents")
            .join(node)
            .join("logs")
            .join(format!("allot-{job}.out"))
    }
}

impl Drop for DevServer {
    /// Stops the server gracefully, so that its agents stop their jobs: a
    /// SIGKILL would leave them running (each job is in a process group of
    /// its own, and outlives its agent on purpose).
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            terminate(c);
        }
    }
}

/// Stops a child as an operator would: SIGTERM, up to 10 s to exit (an
/// agent stops its jobs on the way out), then SIGKILL. Blocking: for drops.
pub fn terminate(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.start_kill();
}

/// Runs `allot ARGS…` with `ALLOT_ADDR`/`ALLOT_TOKEN` set when given;
/// returns (exit code, stdout, stderr).
pub async fn run_allot(args: &[&str], addr: Option<&str>, token: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("ALLOT_ADDR").env_remove("ALLOT_TOKEN");
    if let Some(a) = addr {
        cmd.env("ALLOT_ADDR", a);
    }
    if let Some(t) = token {
        cmd.env("ALLOT_TOKEN", t);
    }
    let out = cmd.output().await.expect("allot runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls until `f` holds for the job, or panics with its last state.
pub async fn wait_for(client: &Client, id: &str, what: &str, f: impl Fn(&Job) -> bool) -> Job {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let job = client.get(id).await.expect("get job");
        if f(&job) {
            return job;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "job {id} never became {what}; last: {:?} ({})",
                job.state(),
                job.reason
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_state(client: &Client, id: &str, state: JobState) -> Job {
    wait_for(client, id, state.as_str_name(), |j| j.state() == state).await
}

pub async fn wait_final(client: &Client, id: &str) -> Job {
    tokio::time::timeout(PATIENCE, client.wait(id))
        .await
        .expect("job ends in time")
        .expect("wait")
}

/// Waits until `path` holds a line, and returns the first.
pub async fn first_line(path: &Path) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(line) = text.lines().next()
            && text.contains('\n')
        {
            return line.to_string();
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{} never got a line", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process is gone (or only a zombie waiting for a reaper).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

pub async fn wait_gone(pid: i32) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !process_gone(pid) {
        if tokio::time::Instant::now() > deadline {
            panic!("process {pid} still runs");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A test's own dir (kept after the test with `ALLOT_E2E_KEEP=1`, to read
/// its logs).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("allot-e2e-")
        .disable_cleanup(std::env::var_os("ALLOT_E2E_KEEP").is_some())
        .tempdir()
        .expect("temp dir")
}
