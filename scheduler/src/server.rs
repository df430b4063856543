//! Wiring: the controller (ledger, engine, gRPC) and dev mode.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tracing::{error, info};

use crate::accounting::pricing::{PricingConfig, RateCard};
use crate::agent::fleet::Fleet;
use crate::agent::{self, AgentConfig};
use crate::api::{self, Api};
use crate::auth::Auth;
use crate::clock::{Clock, SystemClock};
use crate::domain::{MiB, MilliCpu, Millis, TenantName};
/// The engine's settings, part of [`ServerConfig`] (for `allot server`).
pub use crate::engine::EngineConfig;
use crate::engine::{self, EngineHandle};
use crate::ledger::{Ledger, Role};
use crate::placement::NodeStatus;
use crate::policy::PolicyHost;
use crate::policy::config::{PluginsConfigFile, PolicyConfig};

/// The server's configuration file (`--config`), checked strictly.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The rate card: prices per GPU-hour.
    #[serde(default)]
    pub pricing: Option<PricingConfig>,
    /// Bounds on plugin calls and what a failing plugin does.
    #[serde(default)]
    pub plugins: Option<PluginsConfigFile>,
    /// Queues (Slurm's partitions); see docs/queues.md.
    #[serde(default)]
    pub queues: Vec<crate::domain::queue::QueueFile>,
    /// Fair share between tenants and their projects; see docs/queues.md.
    #[serde(default)]
    pub fairshare: Option<FairShareFile>,
    /// QOS names and the priority tier each adds (`[qos]`, `high = 10`);
    /// see docs/queues.md.
    #[serde(default)]
    pub qos: std::collections::BTreeMap<String, i32>,
}

/// `[fairshare]` as written.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FairShareFile {
    /// `7d` (Slurm's PriorityDecayHalfLife).
    pub half_life: Option<String>,
    /// Tenants' weights, `name = weight` (default 1).
    #[serde(default)]
    pub tenants: std::collections::BTreeMap<String, u32>,
    /// Projects' weights inside their tenant, `"tenant/project" = weight`.
    #[serde(default)]
    pub projects: std::collections::BTreeMap<String, u32>,
    /// A tenant under its share may preempt preemptible work of a tenant
    /// over it (default false).
    #[serde(default)]
    pub reclaim: bool,
}

impl FairShareFile {
    pub fn config(&self) -> Result<engine::FairShareConfig, String> {
        let mut c = engine::FairShareConfig {
            reclaim: self.reclaim,
            ..engine::FairShareConfig::default()
        };
        if let Some(h) = &self.half_life {
            let h: Millis = h.parse().map_err(|e| format!("fairshare.half_life: {e}"))?;
            if h < Millis::from_secs(60) {
                return Err("fairshare.half_life: must be at least 1m".into());
            }
            c.half_life = h;
        }
        for (t, w) in &self.tenants {
            let t: TenantName = t.parse().map_err(|e| format!("fairshare.tenants: {e}"))?;
            c.tenants.insert(t, *w);
        }
        for (k, w) in &self.projects {
            let (t, p) = k
                .split_once('/')
                .ok_or_else(|| format!("fairshare.projects: {k:?} must be \"tenant/project\""))?;
            let t: TenantName = t.parse().map_err(|e| format!("fairshare.projects: {e}"))?;
            let p: crate::domain::ProjectName = p.parse().map_err(|e| format!("fairshare.projects: {e}"))?;
            c.projects.insert((t, p), *w);
        }
        Ok(c)
    }
}

impl ConfigFile {
    pub fn read(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// The rate card it describes (no prices when it has none).
    pub fn rate_card(&self) -> anyhow::Result<RateCard> {
        match &self.pricing {
            Some(p) => RateCard::from_config(p).map_err(|e| anyhow::anyhow!("config file: {e}")),
            None => Ok(RateCard::default()),
        }
    }

    /// Fair share's settings (the defaults when it has none).
    pub fn fairshare(&self) -> anyhow::Result<engine::FairShareConfig> {
        match &self.fairshare {
            Some(f) => f.config().map_err(|e| anyhow::anyhow!("config file: {e}")),
            None => Ok(engine::FairShareConfig::default()),
        }
    }

    /// The QOS it defines, checked (`normal`, at tier 0, unless redefined).
    pub fn qos(&self) -> anyhow::Result<std::collections::BTreeMap<crate::domain::QosName, i32>> {
        let mut out = std::collections::BTreeMap::new();
        out.insert(crate::domain::QosName::normal(), 0);
        for (name, tier) in &self.qos {
            let q: crate::domain::QosName = name
                .parse()
                .map_err(|e| anyhow::anyhow!("config file: qos: {e}"))?;
            if !(-1000..=1000).contains(tier) {
                anyhow::bail!("config file: qos.{name}: the tier must be in -1000..=1000, not {tier}");
            }
            out.insert(q, *tier);
        }
        Ok(out)
    }

    /// The queues it defines, checked.
    pub fn queues(&self) -> anyhow::Result<Vec<crate::domain::QueueDef>> {
        crate::domain::queue::QueueFile::defs(&self.queues).map_err(|e| anyhow::anyhow!("config file: {e}"))
    }

    /// The plugin host's settings it describes (the defaults when it has none).
    pub fn plugins(&self) -> anyhow::Result<PolicyConfig> {
        match &self.plugins {
            Some(p) => PolicyConfig::from_file(p).map_err(|e| anyhow::anyhow!("config file: {e}")),
            None => Ok(PolicyConfig::default()),
        }
    }
}

/// Dev mode's rate card, so `allot usage` shows money from the first job.
pub fn demo_rate_card() -> RateCard {
    let raw: PricingConfig = toml::from_str(
        r#"
        currency = "USD"
        gpu_hour = "2.00"
        preemptible_discount_pct = 30
        [models]
        "H100-80GB" = "4.00"
        "#,
    )
    .expect("the demo rate card parses");
    RateCard::from_config(&raw).expect("the demo rate card is valid")
}

/// How long a shutting-down server waits for open streams to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub engine: EngineConfig,
    /// The plugin host's bounds and failure policies.
    pub plugins: PolicyConfig,
    /// On a data dir without tokens, write the first admin token to
    /// `<data dir>/admin.token` (not in dev mode, which prints its tokens:
    /// there the jobs run as the same user as the controller).
    pub write_admin_token: bool,
}

/// A running controller.
pub struct Controller {
    pub addr: SocketAddr,
    pub engine: EngineHandle,
    pub auth: Auth,
    pub policy: PolicyHost,
    pub clock: Arc<dyn Clock>,
    /// Set when this start created the first admin token (written to
    /// `<data dir>/admin.token`).
    pub bootstrap_admin_token: Option<String>,
    stop: watch::Sender<bool>,
    serve: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    engine_task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Controller {
    /// Opens the ledger in `data_dir`, loads the state, binds and serves.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Controller> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let ledger = Ledger::open(&config.data_dir).with_context(|| {
            format!(
                "cannot open the ledger in {} (is another allot server using it?)",
                config.data_dir.display()
            )
        })?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let auth = Auth::load(ledger.clone())?;
        let bootstrap_admin_token = if config.write_admin_token {
            bootstrap(&auth, &config.data_dir, clock.now()).await?
        } else {
            None
        };
        let heartbeat = config.engine.heartbeat_interval;
        let policy =
            PolicyHost::new(ledger.clone(), &config.plugins).context("cannot start the plugin host")?;
        let (engine, engine_task) = engine::start(ledger, clock.clone(), config.engine.clone())?;
        engine.use_policy(policy.clone()).await;
        let api =
            Api::new(engine.clone(), auth.clone(), clock.clone(), heartbeat).with_policy(policy.clone());
        let router = api::router(api).await?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        // TCP_NODELAY: small gRPC frames must not wait out Nagle's algorithm
        // against the peer's delayed ACKs (a flat 40 ms per call otherwise).
        let incoming = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let serve = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        info!(%addr, data_dir = %config.data_dir.display(), "controller listening");
        Ok(Controller {
            addr,
            engine,
            auth,
            policy,
            clock,
            bootstrap_admin_token,
            stop,
            serve,
            engine_task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves until `shutdown` resolves or the engine fails.
    pub async fn run_until(mut self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            _ = shutdown => {
                info!("shutting down");
                let _ = self.stop.send(true);
                // Long-lived streams (agent sessions, watches) would hold a
                // graceful shutdown forever: give them a moment, then cut them.
                if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.serve).await.is_err() {
                    self.serve.abort();
                }
                Ok(())
            }
            r = &mut self.engine_task => {
                let _ = self.stop.send(true);
                match r {
                    Ok(Ok(())) => anyhow::bail!("the scheduler engine stopped"),
                    Ok(Err(e)) => Err(e.context("the scheduler engine failed")),
                    Err(e) => Err(anyhow::anyhow!("the scheduler engine panicked: {e}")),
                }
            }
            r = &mut self.serve => {
                match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(anyhow::Error::new(e).context("the gRPC server failed")),
                    Err(e) => Err(anyhow::anyhow!("the gRPC server panicked: {e}")),
                }
            }
        }
    }
}

/// On a data dir with no tokens at all, creates an admin token and writes it
/// to `<data dir>/admin.token` (mode 0600), as `vault operator init` would show it.
async fn bootstrap(
    auth: &Auth,
    data_dir: &Path,
    now: crate::domain::UnixMillis,
) -> anyhow::Result<Option<String>> {
    if !auth.tokens().is_empty() {
        return Ok(None);
    }
    let (secret, _) = auth
        .issue(Role::Admin, "bootstrap admin token".into(), now)
        .await
        .context("cannot create the bootstrap admin token")?;
    let path = data_dir.join("admin.token");
    write_secret(&path, &secret)?;
    info!(path = %path.display(), "created the first admin token");
    Ok(Some(secret))
}

fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{secret}")?;
    Ok(())
}

/// The dev fleet: two nodes, each with four whole H100s; the second also has
/// one H100 split into MIG slices.
pub fn dev_fleet() -> Vec<(&'static str, Fleet)> {
    let mk = |spec: &str| {
        let mut f = Fleet::from_spec(spec).expect("the dev fleet is valid");
        f.cpu = Some(MilliCpu(64_000));
        f.memory = Some(MiB(512 * 1024));
        f
    };
    vec![
        ("dev-1", mk("4xH100-80GB")),
        (
            "dev-2",
            mk("4xH100-80GB,1xH100-80GB/mig=3g.40gb+2g.20gb+1g.10gb+1g.10gb"),
        ),
    ]
}

/// Options of `allot server --dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub listen: SocketAddr,
    pub data_dir: Option<PathBuf>,
    /// Prices; dev mode uses a demo rate card when none is configured.
    pub rate_card: Option<RateCard>,
    pub policy: crate::placement::Policy,
    pub placement_seed: u64,
    /// The plugin host's bounds and failure policies.
    pub plugins: PolicyConfig,
    /// The longest grace period a job may ask for.
    pub max_grace: Millis,
    /// The config file's queues.
    pub queues: Vec<crate::domain::QueueDef>,
    /// The config file's QOS and their tiers.
    pub qos: std::collections::BTreeMap<crate::domain::QosName, i32>,
    /// Top pending jobs given a backfill reservation per pass.
    pub backfill_depth: usize,
    /// The most tasks one array may have.
    pub max_array_size: u32,
    /// Fair share's half-life and weights.
    pub fairshare: engine::FairShareConfig,
}

/// `allot server --dev`: a controller, two in-process agents with a declared
/// fleet on loopback, a default tenant; prints the lines to paste into a shell.
pub async fn run_dev(
    opts: DevOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let (_temp, data_dir) = match &opts.data_dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new().prefix("allot-dev-").tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let engine = EngineConfig {
        heartbeat_interval: Millis::from_secs(1),
        heartbeat_timeout: Millis::from_secs(10),
        node_lost_grace: Millis::from_secs(30),
        tick: Millis(250),
        policy: opts.policy,
        placement_seed: opts.placement_seed,
        rate_card: Arc::new(opts.rate_card.clone().unwrap_or_else(demo_rate_card)),
        max_grace: opts.max_grace,
        queues: opts.queues.clone(),
        qos: opts.qos.clone(),
        fairshare: opts.fairshare.clone(),
        backfill_depth: opts.backfill_depth,
        max_array_size: opts.max_array_size,
        ..EngineConfig::default()
    };
    let controller = Controller::start(ServerConfig {
        listen: opts.listen,
        data_dir: data_dir.clone(),
        engine,
        plugins: opts.plugins.clone(),
        write_admin_token: false,
    })
    .await?;
    let now = controller.clock.now();
    let tenant: TenantName = "default".parse().expect("valid name");
    controller.auth.ensure_tenant(tenant.clone(), now).await?;
    let (tenant_token, _) = controller
        .auth
        .issue(Role::Tenant(tenant), "dev mode: default tenant".into(), now)
        .await?;
    let (admin_token, _) = controller
        .auth
        .issue(Role::Admin, "dev mode: admin".into(), now)
        .await?;

    let supervisor_exe =
        crate::agent::supervisor_exe().context("cannot find the allot binary for job supervisors")?;
    let (stop_agents, agents_stopped) = watch::channel(false);
    let mut agent_tasks = Vec::new();
    let fleet = dev_fleet();
    for (node, f) in &fleet {
        let (agent_token, _) = controller
            .auth
            .issue_agent(
                node.parse().expect("valid name"),
                format!("dev mode: in-process agent of {node}"),
                now,
            )
            .await?;
        let config = AgentConfig {
            controller: controller.url(),
            token: agent_token,
            node: node.parse().expect("valid name"),
            fleet: Some(f.clone()),
            state_dir: data_dir.join("agents").join(node),
            labels: BTreeMap::from([("allot.dev/mode".to_string(), "dev".to_string())]),
            cpu: None,
            memory: None,
            shutdown_grace: Duration::from_secs(5),
            supervisor_exe: supervisor_exe.clone(),
            run_as: None,
            // Jobs run as the same user as everything else here: they
            // must not see the ledger (every tenant's jobs and env), the
            // plugins (every tenant's code) nor another node's files.
            hide: [data_dir.join("ledger"), data_dir.join(crate::ledger::PLUGIN_DIR)]
                .into_iter()
                .chain(
                    fleet
                        .iter()
                        .filter(|(other, _)| other != node)
                        .map(|(other, _)| data_dir.join("agents").join(other)),
                )
                .collect(),
        };
        let rx = agents_stopped.clone();
        agent_tasks.push(tokio::spawn(async move {
            if let Err(e) = agent::run(config, rx).await {
                error!("dev agent failed: {e:#}");
            }
        }));
    }
    wait_for_nodes(&controller.engine, fleet.len(), Duration::from_secs(20)).await?;
    let ready = started.elapsed();

    let url = controller.url();
    let nodes: Vec<String> = fleet
        .iter()
        .map(|(n, f)| format!("{n} ({})", f.summary()))
        .collect();
    let kept = if opts.data_dir.is_some() {
        "kept"
    } else {
        "deleted on exit"
    };
    println!("allot dev server ready in {} ms", ready.as_millis());
    println!();
    println!("  address:  {url}");
    println!("  data dir: {} ({kept})", data_dir.display());
    println!("  nodes:    {}", nodes.join("\n            "));
    println!("  tenant:   default");
    println!();
    println!("Paste into your shell:");
    println!();
    println!("export ALLOT_ADDR={url}");
    println!("export ALLOT_TOKEN={tenant_token}");
    println!();
    println!(
        "Admin token (tenants, tokens, draining nodes; use it as ALLOT_TOKEN=$ALLOT_ADMIN_TOKEN allot …):"
    );
    println!();
    println!("export ALLOT_ADMIN_TOKEN={admin_token}");
    println!();
    println!(
        "Then: allot submit --gpus 1 --wait -- sh -c 'echo $CUDA_VISIBLE_DEVICES'; allot jobs; allot nodes"
    );
    println!("Press Ctrl-C to stop.");

    // On Ctrl-C the agents stop their jobs and report the exits while the
    // controller still listens; then the controller stops.
    let agents_done = async move {
        shutdown.await;
        let _ = stop_agents.send(true);
        for t in agent_tasks {
            let _ = t.await;
        }
    };
    controller.run_until(agents_done).await
}

/// Waits until `n` nodes are registered and ready.
async fn wait_for_nodes(engine: &EngineHandle, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let nodes = engine.list_nodes().await?;
        let ready = nodes
            .iter()
            .filter(|v| v.node.status == NodeStatus::Ready)
            .count();
        if ready >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("only {ready} of {n} dev nodes registered within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `allot ledger check --data-dir`: the ledger's self-check on a stopped
/// server's ledger, in the form `CheckLedger` answers.
pub fn check_ledger(ledger: &Ledger) -> anyhow::Result<allot_proto::v1::CheckLedgerResponse> {
    let report = ledger.check(crate::domain::UnixMillis::now())?;
    Ok(crate::api::usage::report_pb(&report))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example configuration that docs/operations.md shows is one the
    /// server accepts, and its `[plugins]` values are the defaults it says
    /// they are.
    #[test]
    fn the_example_config_is_valid_and_its_plugin_values_are_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/allot.toml");
        let config = ConfigFile::read(&path).unwrap();
        config.rate_card().unwrap();
        let queues = config.queues().unwrap();
        assert_eq!(
            config.fairshare().unwrap().half_life,
            Millis::from_secs(7 * 86_400)
        );
        assert!(!queues.is_empty(), "the example shows queues");
        assert_eq!(config.plugins().unwrap(), PolicyConfig::default());
        let qos = config.qos().unwrap();
        assert_eq!(
            qos.get(&"high".parse::<crate::domain::QosName>().unwrap()),
            Some(&10)
        );
        assert_eq!(qos.get(&crate::domain::QosName::normal()), Some(&0));
    }

    #[test]
    fn a_qos_out_of_range_or_misnamed_stops_the_server() {
        for (text, says) in [
            (
                "[qos]\nhigh = 5000\n",
                "qos.high: the tier must be in -1000..=1000",
            ),
            ("[qos]\n\"Bad Name\" = 1\n", "qos"),
        ] {
            let c: ConfigFile = toml::from_str(text).unwrap();
            let e = c.qos().unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
