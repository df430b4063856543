//! The node agent: finds the node's GPUs, keeps one session open to the
//! controller, runs what it is told to run and reports what happens.
//!
//! Exit reports are kept until the controller acknowledges them (after they
//! are durable there) and are re-sent with the registration after a
//! reconnect, so no exit is lost to a dropped connection or a controller restart.

pub mod discovery;
pub mod fleet;
mod isolation;
pub mod launcher;
mod output;
pub mod supervisor;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use allot_proto::v1 as pb;
use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;
use tracing::{info, warn};

use self::discovery::Gpus;
use self::fleet::Fleet;
use self::launcher::{LaunchEvent, Launcher};
use crate::domain::{MiB, MilliCpu, NodeName};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The controller's URL, e.g. `http://10.0.0.1:7070`.
    pub controller: String,
    /// An agent (or admin) token.
    pub token: String,
    pub node: NodeName,
    /// A declared fleet instead of NVML discovery.
    pub fleet: Option<Fleet>,
    /// Where output files, scratch dirs and pid files live.
    pub state_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// CPU and memory to offer; default: the machine's (or the fleet's).
    pub cpu: Option<MilliCpu>,
    pub memory: Option<MiB>,
    /// Grace for jobs when the agent itself shuts down.
    pub shutdown_grace: Duration,
    /// The `allot` binary that runs each job's supervisor
    /// (`allot supervise`); by default this very binary.
    pub supervisor_exe: PathBuf,
    /// Run jobs as this user instead of the agent's own.
    pub run_as: Option<supervisor::RunAs>,
    /// Paths no job may see, beyond the agent's own files (the dev server
    /// hides its ledger and the other agents' state).
    pub hide: Vec<PathBuf>,
}

/// The program that runs job supervisors: `allot-supervise` beside the
/// running binary when it is there (it starts much faster), else the
/// running binary itself (`allot supervise`).
pub fn supervisor_exe() -> std::io::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let small = me.with_file_name("allot-supervise");
    Ok(if small.is_file() { small } else { me })
}

/// The machine's CPU count, in milli-cores.
fn host_cpu() -> MilliCpu {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    MilliCpu(n as u64 * 1000)
}

/// The machine's memory from `/proc/meminfo`.
fn host_memory() -> MiB {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    MiB(kib / 1024)
}

/// This machine's host name, the default node name.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.to_ascii_lowercase())
        .unwrap_or_else(|| "localhost".into())
}

struct Inventory {
    register: pb::RegisterAgent,
    nvml: Option<Gpus>,
}

fn inventory(config: &AgentConfig) -> Inventory {
    let (gpus, discovery, nvml) = match &config.fleet {
        Some(f) => (f.gpu_infos(config.node.as_str()), "declared", None),
        None => match Gpus::open() {
            Ok(g) => match g.discover() {
                Ok(list) => (list, "nvml", Some(g)),
                Err(e) => {
                    warn!("NVML is present but discovery failed: {e}; registering no GPUs");
                    (Vec::new(), "nvml", Some(g))
                }
            },
            Err(e) => {
                warn!(
                    "NVML unavailable ({e}); registering no GPUs. Declare a fleet with --gpus or --fleet on machines without NVIDIA drivers"
                );
                (Vec::new(), "none", None)
            }
        },
    };
    let fleet = config.fleet.as_ref();
    let cpu = config.cpu.or(fleet.and_then(|f| f.cpu)).unwrap_or_else(host_cpu);
    let memory = config
        .memory
        .or(fleet.and_then(|f| f.memory))
        .unwrap_or_else(host_memory);
    let mut labels = fleet.map(|f| f.labels.clone()).unwrap_or_default();
    labels.extend(config.labels.clone());
    Inventory {
        register: pb::RegisterAgent {
            node: config.node.to_string(),
            cpu_millis: cpu.0 as i64,
            memory_mib: memory.0 as i64,
            labels: labels.into_iter().collect(),
            gpus,
            running: Vec::new(),
            agent_version: VERSION.to_string(),
            discovery: discovery.to_string(),
            exited: Vec::new(),
        },
        nvml,
    }
}

struct AgentState {
    config: AgentConfig,
    inventory: Inventory,
    launcher: Launcher,
    events: mpsc::UnboundedReceiver<LaunchEvent>,
    /// Exits sent but not yet acknowledged, by (job, attempt).
    unacked: BTreeMap<(String, u32), pb::JobExited>,
    /// The controller's fence (`Registered.fence_after_ms`).
    fence_after: Option<Duration>,
}

enum SessionEnd {
    Shutdown,
}

/// An exit report as sent now: with how long ago the process ended, by this
/// host's clock (the report carries the time it ended).
fn aged(mut e: pb::JobExited) -> pb::JobExited {
    let now = crate::domain::UnixMillis::now().0 as i64;
    e.ended_ms_ago = Some(now.saturating_sub(e.agent_time_unix_ms).max(0) as u64);
    e
}

fn msg(m: pb::agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

/// Runs the agent until `shutdown` turns true. Reconnects with backoff.
pub async fn run(config: AgentConfig, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state dir {}", config.state_dir.display()))?;
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let mut launcher = Launcher::new(
        config.state_dir.clone(),
        config.node.to_string(),
        ev_tx,
        config.supervisor_exe.clone(),
        config.run_as,
        config.hide.clone(),
    )
    .with_context(|| format!("cannot prepare state dir {}", config.state_dir.display()))?;
    // Jobs a previous agent left running go on under their supervisors.
    let (adopted, ended) = launcher.adopt();
    if !adopted.is_empty() {
        info!(
            count = adopted.len(),
            "took over jobs left running by a previous agent"
        );
    }
    let inventory = inventory(&config);
    info!(
        node = %config.node,
        gpus = inventory.register.gpus.len(),
        discovery = %inventory.register.discovery,
        controller = %config.controller,
        "agent starting"
    );
    let config_state_dir = config.state_dir.clone();
    let mut state = AgentState {
        config,
        inventory,
        launcher,
        events: ev_rx,
        unacked: load_exits(&launcher::exits_dir(&config_state_dir))?,
        fence_after: None,
    };
    for e in ended {
        info!(job = %e.job_id, "exit from before a restart, to send");
        state.unacked.insert((e.job_id.clone(), e.attempt), e);
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            break;
        }
        match state.session(&mut shutdown, &mut backoff).await {
            Ok(SessionEnd::Shutdown) => break,
            Err(e) => {
                warn!(node = %state.config.node, "controller session ended: {e:#}; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    state.shutdown().await;
    Ok(())
}

/// Reads the exits not acknowledged yet that an agent of the layout before
/// run files left in `exits/` (today's are in the run files, see
/// `supervisor.rs`), kept until the controller acknowledges them. A report whose writer died between its fsync and its
/// rename (`<job>.<attempt>.pb.tmp.<pid>`, complete) is taken in; one
/// still being written by a live supervisor is left alone.
fn load_exits(dir: &std::path::Path) -> anyhow::Result<BTreeMap<(String, u32), pb::JobExited>> {
    use prost::Message;
    let mut out = BTreeMap::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let is_report = path.extension().and_then(|e| e.to_str()) == Some("pb");
        let tmp_of = name
            .rsplit_once(".tmp.")
            .filter(|(base, _)| base.ends_with(".pb"))
            .map(|(base, pid)| (base.to_string(), pid.parse::<i32>().ok()));
        if !is_report && tmp_of.is_none() {
            continue;
        }
        if let Some((_, Some(pid))) = &tmp_of
            && std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            continue; // its writer still runs
        }
        match std::fs::read(&path).map(|b| pb::JobExited::decode(b.as_slice())) {
            Ok(Ok(e)) if !e.job_id.is_empty() => {
                if let Some((base, _)) = tmp_of {
                    let done = dir.join(base);
                    if done.exists() {
                        let _ = std::fs::remove_file(&path);
                    } else if let Err(err) = std::fs::rename(&path, &done) {
                        warn!(path = %path.display(), "cannot recover an exit report: {err}");
                    }
                }
                info!(job = %e.job_id, "exit report from before a restart, to send again");
                out.insert((e.job_id.clone(), e.attempt), e);
            }
            _ => {
                warn!(path = %path.display(), "unreadable exit report removed");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(out)
}

impl AgentState {
    /// Keeps an exit until the controller acknowledges it (its supervisor
    /// wrote it to disk before it ended).
    fn keep_exit(&mut self, e: pb::JobExited) {
        self.unacked.insert((e.job_id.clone(), e.attempt), e);
    }

    /// Renews the lease of this node's jobs: the controller has taken in a
    /// message this agent sent at `sent_mono_ms`, so the controller will not
    /// declare the node lost before that plus its grace; the jobs may run
    /// until that plus the (shorter) fence.
    fn renew_fence(&self, sent_mono_ms: u64) {
        let deadline = match self.fence_after {
            Some(f) => sent_mono_ms + f.as_millis() as u64,
            // A controller without fencing: no lease to run out.
            None => u64::MAX / 2,
        };
        if let Err(e) = supervisor::write_fence(&launcher::fence_file(&self.config.state_dir), deadline) {
            warn!("cannot renew the jobs' lease (they stop when it runs out): {e}");
        }
    }

    /// Takes in launcher events that arrived while no session was open.
    fn absorb_offline_events(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            if let LaunchEvent::Exited(e) = ev {
                self.launcher.forget(&e.job_id, e.attempt);
                self.keep_exit(e);
            }
        }
    }

    async fn session(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Duration,
    ) -> anyhow::Result<SessionEnd> {
        let channel = Endpoint::from_shared(self.config.controller.clone())
            .context("invalid controller URL")?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .connect()
            .await
            .with_context(|| format!("cannot reach the controller at {}", self.config.controller))?;
        let bearer: MetadataValue<_> = format!("Bearer {}", self.config.token)
            .parse()
            .context("the token is not a valid header value")?;
        let mut client = pb::agent_service_client::AgentServiceClient::with_interceptor(
            channel,
            move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                Ok(req)
            },
        );
        self.absorb_offline_events();
        let (out, out_rx) = mpsc::channel::<pb::AgentMessage>(1024);
        let mut register = self.inventory.register.clone();
        register.running = self.launcher.running();
        register.exited = self.unacked.values().cloned().map(aged).collect();
        let registered_at = supervisor::mono_ms();
        out.send(msg(pb::agent_message::Msg::Register(register))).await?;
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
            .await
            .context("the controller refused the session")?
            .into_inner();
        let hello = inbound.message().await?.and_then(|m| m.msg);
        let interval = match hello {
            Some(pb::controller_message::Msg::Registered(r)) => {
                self.fence_after =
                    (r.fence_after_ms > 0).then(|| Duration::from_millis(r.fence_after_ms as u64));
                Duration::from_millis(r.heartbeat_interval_ms.max(100) as u64)
            }
            _ => anyhow::bail!("the controller did not confirm the registration"),
        };
        self.renew_fence(registered_at);
        info!(node = %self.config.node, fence = ?self.fence_after, "registered with the controller");
        // Heartbeats sent and not acknowledged yet: (seq, when sent).
        let mut sent: std::collections::VecDeque<(u64, u64)> = std::collections::VecDeque::new();
        let mut seq = 0u64;
        *backoff = Duration::from_millis(100);
        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = inbound.message() => {
                    let Some(m) = m? else { anyhow::bail!("the controller closed the session") };
                    match m.msg {
                        Some(pb::controller_message::Msg::HeartbeatAck(a)) => {
                            while let Some(&(s, at)) = sent.front() {
                                if s > a.seq {
                                    break;
                                }
                                sent.pop_front();
                                if s == a.seq {
                                    self.renew_fence(at);
                                }
                            }
                        }
                        Some(m) => self.on_order(m, &out).await?,
                        None => {}
                    }
                }
                Some(ev) = self.events.recv() => {
                    let m = match ev {
                        LaunchEvent::Started(s) => pb::agent_message::Msg::JobStarted(s),
                        LaunchEvent::Exited(e) => {
                            self.launcher.forget(&e.job_id, e.attempt);
                            self.keep_exit(e.clone());
                            pb::agent_message::Msg::JobExited(aged(e))
                        }
                    };
                    out.send(msg(m)).await?;
                }
                _ = heartbeat.tick() => {
                    let utilization = match (&self.inventory.nvml, &self.config.fleet) {
                        (Some(g), _) => g.utilization(),
                        (None, Some(f)) => f.utilization(self.config.node.as_str()),
                        (None, None) => Vec::new(),
                    };
                    seq += 1;
                    sent.push_back((seq, supervisor::mono_ms()));
                    if sent.len() > 1024 {
                        sent.pop_front();
                    }
                    out.send(msg(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
                        utilization,
                        running: self.launcher.running(),
                        seq,
                    }))).await?;
                }
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        self.drain_jobs(Some(&out)).await;
                        return Ok(SessionEnd::Shutdown);
                    }
                }
            }
        }
    }

    async fn on_order(
        &mut self,
        order: pb::controller_message::Msg,
        out: &mpsc::Sender<pb::AgentMessage>,
    ) -> anyhow::Result<()> {
        use pb::controller_message::Msg;
        match order {
            Msg::Registered(_) => {}
            Msg::Launch(l) => {
                info!(job = %l.job_id, attempt = l.attempt, "launch order");
                self.launcher.launch(l).await;
            }
            Msg::Stop(s) => {
                let grace = Duration::from_millis(s.grace_period_ms.max(0) as u64);
                if !self.launcher.stop(&s.job_id, s.attempt, grace) {
                    info!(job = %s.job_id, "stop order for a job not running here");
                }
            }
            Msg::AckExit(a) => {
                self.unacked.remove(&(a.job_id.clone(), a.attempt));
                self.launcher.acknowledged(&a.job_id, a.attempt);
            }
            Msg::HeartbeatAck(_) => {}
            Msg::ReadLog(r) => {
                let chunk = match self.launcher.read_output(&r.job_id, r.offset, r.limit).await {
                    Ok((data, next_offset, path)) => pb::LogChunk {
                        request_id: r.request_id,
                        data,
                        next_offset,
                        error: String::new(),
                        path,
                    },
                    Err(e) => pb::LogChunk {
                        request_id: r.request_id,
                        error: e,
                        ..Default::default()
                    },
                };
                out.send(msg(pb::agent_message::Msg::LogChunk(chunk))).await?;
            }
        }
        Ok(())
    }

    /// Stops every job and waits for them, reporting exits while connected.
    async fn drain_jobs(&mut self, out: Option<&mpsc::Sender<pb::AgentMessage>>) {
        if self.launcher.is_empty() {
            return;
        }
        let grace = self.config.shutdown_grace;
        info!(
            grace_ms = grace.as_millis() as u64,
            "agent shutting down; stopping its jobs"
        );
        self.launcher.stop_all(grace);
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(5);
        while !self.launcher.is_empty() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(LaunchEvent::Exited(e))) => {
                    self.launcher.forget(&e.job_id, e.attempt);
                    if let Some(out) = out {
                        let _ = out.send(msg(pb::agent_message::Msg::JobExited(aged(e)))).await;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    async fn shutdown(&mut self) {
        self.drain_jobs(None).await;
        info!(node = %self.config.node, "agent stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::launcher::exits_dir;
    use crate::agent::supervisor::{exit_file, write_exit};

    fn report(job: &str, code: i32) -> pb::JobExited {
        pb::JobExited {
            job_id: job.into(),
            attempt: 2,
            kind: pb::ExitKind::Exited as i32,
            exit_code: Some(code),
            runtime_ms: Some(1234),
            ..Default::default()
        }
    }

    #[test]
    fn unacknowledged_exits_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let exits = exits_dir(dir.path());
        std::fs::create_dir_all(&exits).unwrap();
        write_exit(&exits, &report("j1", 0)).unwrap();
        write_exit(&exits, &report("j2", 3)).unwrap();
        std::fs::write(exits.join("garbage.pb"), b"\xff\xff\xff").unwrap();
        let loaded = load_exits(&exits).unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[&("j2".to_string(), 2)], report("j2", 3));
        assert!(
            !exits.join("garbage.pb").exists(),
            "unreadable reports are removed"
        );
    }

    /// Regression (issue 11, defect 10): a writer killed between its fsync
    /// and its rename left a complete `*.tmp` report that was never read
    /// nor removed. It is taken in now; one whose writer still runs is not
    /// touched.
    #[test]
    fn a_complete_report_left_as_a_temp_file_is_recovered() {
        use prost::Message;
        let dir = tempfile::tempdir().unwrap();
        let exits = exits_dir(dir.path());
        std::fs::create_dir_all(&exits).unwrap();
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let dead = gone.id();
        gone.wait().unwrap();
        let orphan = exits.join(format!("j3.2.pb.tmp.{dead}"));
        std::fs::write(&orphan, report("j3", 7).encode_to_vec()).unwrap();
        // Being written by a live process (this one): not ours to take.
        let live = exits.join(format!("j4.2.pb.tmp.{}", std::process::id()));
        std::fs::write(&live, b"\x08").unwrap();
        let loaded = load_exits(&exits).unwrap();
        assert_eq!(loaded.get(&("j3".to_string(), 2)), Some(&report("j3", 7)));
        assert!(!orphan.exists());
        assert!(exit_file(&exits, "j3", 2).exists(), "renamed into place");
        assert!(live.exists(), "a report still being written is left alone");
        assert!(!loaded.contains_key(&("j4".to_string(), 2)));
    }
}
