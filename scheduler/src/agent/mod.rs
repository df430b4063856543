//! The node agent: finds the node's GPUs, keeps one session open to the
//! controller, runs what it is told to run and reports what happens.
//!
//! Exit reports are kept until the controller acknowledges them (after they
//! are durable there) and are re-sent with the registration after a
//! reconnect, so no exit is lost to a dropped connection or a controller restart.

pub mod discovery;
pub mod fleet;
pub mod launcher;

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
    let reaped = Launcher::reap_orphans(&config.state_dir);
    if !reaped.is_empty() {
        warn!(
            count = reaped.len(),
            "killed jobs left running by a previous agent"
        );
    }
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let launcher = Launcher::new(config.state_dir.clone(), config.node.to_string(), ev_tx)
        .with_context(|| format!("cannot prepare state dir {}", config.state_dir.display()))?;
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
        unacked: load_exits(&exits_dir(&config_state_dir))?,
    };
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

/// Exits not yet acknowledged live on disk too, so an agent restart does
/// not lose them: `<state dir>/exits/<job>.<attempt>.pb`.
fn exits_dir(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("exits")
}

fn exit_file(dir: &std::path::Path, job: &str, attempt: u32) -> PathBuf {
    dir.join(format!("{job}.{attempt}.pb"))
}

/// Reads the exits a previous agent left unacknowledged.
fn load_exits(dir: &std::path::Path) -> anyhow::Result<BTreeMap<(String, u32), pb::JobExited>> {
    use prost::Message;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pb") {
            continue;
        }
        match std::fs::read(&path).map(|b| pb::JobExited::decode(b.as_slice())) {
            Ok(Ok(e)) => {
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

/// Writes one exit report durably (temp file, fsync, rename).
fn write_exit(dir: &std::path::Path, e: &pb::JobExited) -> std::io::Result<()> {
    use prost::Message;
    use std::io::Write;
    let path = exit_file(dir, &e.job_id, e.attempt);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&e.encode_to_vec())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)
}

impl AgentState {
    /// Keeps an exit until the controller acknowledges it: in memory and on
    /// disk (written and synced before it is first sent).
    fn keep_exit(&mut self, e: pb::JobExited) {
        if let Err(err) = write_exit(&exits_dir(&self.config.state_dir), &e) {
            warn!(job = %e.job_id, "cannot keep the exit report on disk: {err}");
        }
        self.unacked.insert((e.job_id.clone(), e.attempt), e);
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
        out.send(msg(pb::agent_message::Msg::Register(register))).await?;
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
            .await
            .context("the controller refused the session")?
            .into_inner();
        let hello = inbound.message().await?.and_then(|m| m.msg);
        let interval = match hello {
            Some(pb::controller_message::Msg::Registered(r)) => {
                Duration::from_millis(r.heartbeat_interval_ms.max(100) as u64)
            }
            _ => anyhow::bail!("the controller did not confirm the registration"),
        };
        info!(node = %self.config.node, "registered with the controller");
        *backoff = Duration::from_millis(100);
        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = inbound.message() => {
                    let Some(m) = m? else { anyhow::bail!("the controller closed the session") };
                    if let Some(m) = m.msg {
                        self.on_order(m, &out).await?;
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
                    out.send(msg(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
                        utilization,
                        running: self.launcher.running(),
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
                self.launcher.launch(l);
            }
            Msg::Stop(s) => {
                let grace = Duration::from_millis(s.grace_period_ms.max(0) as u64);
                if !self.launcher.stop(&s.job_id, s.attempt, grace) {
                    info!(job = %s.job_id, "stop order for a job not running here");
                }
            }
            Msg::AckExit(a) => {
                if self.unacked.remove(&(a.job_id.clone(), a.attempt)).is_some() {
                    let _ = std::fs::remove_file(exit_file(
                        &exits_dir(&self.config.state_dir),
                        &a.job_id,
                        a.attempt,
                    ));
                }
            }
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

    #[test]
    fn unacknowledged_exits_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let exits = exits_dir(dir.path());
        std::fs::create_dir_all(&exits).unwrap();
        let e = |job: &str, code| pb::JobExited {
            job_id: job.into(),
            attempt: 2,
            kind: pb::ExitKind::Exited as i32,
            exit_code: Some(code),
            runtime_ms: Some(1234),
            ..Default::default()
        };
        write_exit(&exits, &e("j1", 0)).unwrap();
        write_exit(&exits, &e("j2", 3)).unwrap();
        std::fs::write(exits.join("garbage.pb"), b"\xff\xff\xff").unwrap();
        let loaded = load_exits(&exits).unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[&("j2".to_string(), 2)], e("j2", 3));
        assert!(
            !exits.join("garbage.pb").exists(),
            "unreadable reports are removed"
        );
    }
}
