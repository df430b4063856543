//! Dispatch: server and agent run here; client commands connect through the SDK.

use std::collections::BTreeMap;
use std::time::Duration;

use allot_sdk::Client;
use anyhow::Context;
use tracing_subscriber::EnvFilter;

use super::{
    AgentArgs, Cli, Command, LedgerCommand, LogFormat, PluginCommand, ServerArgs, jobs, nodes, plugins, usage,
};
use crate::agent::fleet::Fleet;
use crate::agent::{self, AgentConfig};
use crate::domain::{MiB, MilliCpu, Millis};
use crate::server::EngineConfig;
use crate::server::{self, ConfigFile, Controller, DevOptions, ServerConfig};

/// Logs to stderr; `RUST_LOG` sets the filter (default: `info` for servers and
/// agents, `warn` for client commands).
pub fn init_tracing(command: &Command) {
    let (default, format) = match command {
        Command::Server(a) => ("info", a.log_format),
        Command::Agent(a) => ("info", a.log_format),
        _ => ("warn", LogFormat::Text),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn millis(flag: &str, s: &str) -> anyhow::Result<Millis> {
    s.parse().map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

async fn server(a: &ServerArgs) -> anyhow::Result<i32> {
    let config = match &a.config {
        Some(path) => Some(ConfigFile::read(path)?),
        None => None,
    };
    let rate_card = config.as_ref().map(ConfigFile::rate_card).transpose()?;
    let queues = config
        .as_ref()
        .map(ConfigFile::queues)
        .transpose()?
        .unwrap_or_default();
    let fairshare = config
        .as_ref()
        .map(ConfigFile::fairshare)
        .transpose()?
        .unwrap_or_default();
    let qos = ConfigFile::qos(config.as_ref().unwrap_or(&ConfigFile::default()))?;
    let plugins = config
        .as_ref()
        .map(ConfigFile::plugins)
        .transpose()?
        .unwrap_or_default();
    if a.dev {
        let listen = a
            .listen
            .unwrap_or_else(|| "127.0.0.1:7070".parse().expect("valid address"));
        server::run_dev(
            DevOptions {
                listen,
                data_dir: a.data_dir.clone(),
                policy: a.policy.parse().map_err(|e| anyhow::anyhow!("--policy: {e}"))?,
                placement_seed: a.placement_seed,
                rate_card,
                plugins,
                max_grace: millis("--max-grace", &a.max_grace)?,
                backfill_depth: a.backfill_depth,
                max_array_size: a.max_array_size,
                qos: qos.clone(),
                queues,
                fairshare,
            },
            shutdown_signal(),
        )
        .await?;
        return Ok(0);
    }
    let data_dir = a
        .data_dir
        .clone()
        .context("--data-dir (or ALLOT_DATA_DIR) is required; use --dev to try allot without one")?;
    let heartbeat = millis("--heartbeat", &a.heartbeat)?;
    if heartbeat.0 < 100 {
        anyhow::bail!("--heartbeat must be at least 100ms");
    }
    let config = ServerConfig {
        listen: a
            .listen
            .unwrap_or_else(|| "0.0.0.0:7070".parse().expect("valid address")),
        data_dir: data_dir.clone(),
        engine: EngineConfig {
            heartbeat_interval: heartbeat,
            heartbeat_timeout: Millis(heartbeat.0 * 6),
            node_lost_grace: millis("--node-lost-grace", &a.node_lost_grace)?,
            max_grace: millis("--max-grace", &a.max_grace)?,
            policy: a.policy.parse().map_err(|e| anyhow::anyhow!("--policy: {e}"))?,
            placement_seed: a.placement_seed,
            rate_card: std::sync::Arc::new(rate_card.unwrap_or_default()),
            queues,
            fairshare,
            backfill_depth: a.backfill_depth,
            max_array_size: a.max_array_size,
            qos,
            ..EngineConfig::default()
        },
        plugins,
        write_admin_token: true,
    };
    let controller = Controller::start(config).await?;
    // A machine-readable line, for scripts and tests that bind port 0.
    println!("allot server listening on {}", controller.url());
    if controller.bootstrap_admin_token.is_some() {
        println!(
            "first start: an admin token was written to {} (mode 0600)",
            data_dir.join("admin.token").display()
        );
    }
    controller.run_until(shutdown_signal()).await?;
    Ok(0)
}

async fn agent(a: &AgentArgs, token: Option<&str>) -> anyhow::Result<i32> {
    let token = token
        .context("an agent token is required: --token or ALLOT_TOKEN (allot token issue --role agent)")?;
    let fleet = match (&a.gpus, &a.fleet) {
        (Some(spec), _) => Some(Fleet::from_spec(spec).map_err(|e| anyhow::anyhow!("--gpus: {e}"))?),
        (None, Some(path)) => Some(Fleet::from_file(path).map_err(anyhow::Error::msg)?),
        (None, None) => None,
    };
    let node = match &a.node {
        Some(n) => n.clone(),
        None => agent::host_name(),
    };
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--label {l:?} must look like KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let config = AgentConfig {
        controller: a.controller.clone(),
        token: token.to_string(),
        node: node.parse().map_err(|e| anyhow::anyhow!("--node: {e}"))?,
        fleet,
        state_dir: std::path::absolute(&a.state_dir)?,
        labels,
        cpu: a
            .cpu
            .as_deref()
            .map(str::parse::<MilliCpu>)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--cpu: {e}"))?,
        memory: a
            .memory
            .as_deref()
            .map(str::parse::<MiB>)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--memory: {e}"))?,
        shutdown_grace: Duration::from_millis(millis("--shutdown-grace", &a.shutdown_grace)?.0),
        supervisor_exe: crate::agent::supervisor_exe()
            .context("cannot find the allot binary for job supervisors")?,
        run_as: a.run_as.as_deref().map(run_as_user).transpose()?,
        hide: a.hide.clone(),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(agent::run(config, stopped));
    tokio::select! {
        _ = shutdown_signal() => {
            let _ = stop.send(true);
        }
    }
    task.await??;
    Ok(0)
}

/// `--run-as USER`: the user (and its primary group) jobs run as.
fn run_as_user(name: &str) -> anyhow::Result<crate::agent::supervisor::RunAs> {
    let user = match name.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(name),
    }
    .with_context(|| format!("--run-as {name}: cannot look the user up"))?
    .with_context(|| format!("--run-as {name}: no such user"))?;
    if !nix::unistd::geteuid().is_root() && user.uid != nix::unistd::geteuid() {
        anyhow::bail!("--run-as {name}: only an agent running as root can run jobs as another user");
    }
    Ok(crate::agent::supervisor::RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// `allot ledger check --data-dir`: opens the ledger itself (the server must
/// be stopped: sled allows one process at a time).
fn ledger_check_offline(dir: &std::path::Path, json: bool) -> anyhow::Result<i32> {
    if !dir.join("ledger").is_dir() {
        anyhow::bail!(
            "there is no ledger in {} (expected {}/ledger)",
            dir.display(),
            dir.display()
        );
    }
    let ledger = crate::ledger::Ledger::open(dir).with_context(|| {
        format!(
            "cannot open the ledger in {} (a running server holds it: run `allot ledger check` without --data-dir against the server instead)",
            dir.display()
        )
    })?;
    let report = crate::server::check_ledger(&ledger)?;
    Ok(usage::print_check(&report, json))
}

fn sim_batch(
    a: &super::SimArgs,
    nodes: Vec<crate::placement::NodeInventory>,
    pods: &[crate::sim::Pod],
    policy: crate::placement::Policy,
    seed: u64,
    json: bool,
) -> anyhow::Result<i32> {
    use crate::sim::{self, batch};
    if a.speedup == 0 {
        anyhow::bail!("--speedup must be at least 1");
    }
    if !(a.cluster_fraction > 0.0 && a.cluster_fraction <= 1.0) {
        anyhow::bail!("--cluster-fraction must be in (0, 1]");
    }
    let nodes = sim::sample_nodes(nodes, a.cluster_fraction, seed);
    let cfg = batch::BatchConfig {
        policy,
        seed,
        speedup: a.speedup,
        limit_factor: a.limit_factor,
        backfill_depth: a.backfill_depth,
        half_life_s: a.half_life,
    };
    let r = batch::run_batch(&nodes, pods, &cfg)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(0);
    }
    println!(
        "policy {}: {} pods on {} nodes ({} GPUs), batch replay, arrivals {}x faster, time limits {}x run time, backfill depth {}",
        r.policy, r.pods, r.nodes, r.gpus, r.speedup, r.limit_factor, r.backfill_depth
    );
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|w| {
            vec![
                w.scheduler.to_string(),
                format!("{:.2} %", w.util_pct),
                format!("{:.0}", w.wait_mean_s),
                w.wait_p95_s.to_string(),
                w.wait_max_s.to_string(),
                format!("{:.2}", w.bounded_slowdown_mean),
                format!("{:.0}", w.big_wait_mean_s),
                format!("{}/{}", w.placed, w.placed + w.never_placed),
                format!("{} ms", w.wall_ms),
            ]
        })
        .collect();
    super::output::table(
        &[
            "SCHEDULER",
            "UTIL",
            "WAIT_MEAN_S",
            "WAIT_P95_S",
            "WAIT_MAX_S",
            "SLOWDOWN",
            "BIG_WAIT_S",
            "PLACED",
            "TOOK",
        ],
        &rows,
    );
    Ok(0)
}

fn sim(a: &super::SimArgs, json: bool) -> anyhow::Result<i32> {
    use crate::sim;
    let policy: crate::placement::Policy = a.policy.parse().map_err(|e| anyhow::anyhow!("--policy: {e}"))?;
    let seeds = sim::parse_seeds(&a.seeds).map_err(|e| anyhow::anyhow!("--seeds: {e}"))?;
    if !(a.tune_ratio > 0.0 && a.tune_ratio <= 10.0) {
        anyhow::bail!("--tune-ratio must be in (0, 10]");
    }
    let nodes = sim::read_nodes(&a.nodes)?;
    let pods = sim::read_pods(&a.pods)?;
    if a.batch {
        return sim_batch(a, nodes, &pods, policy, seeds[0], json);
    }
    if a.timeline {
        if a.speedup == 0 {
            anyhow::bail!("--speedup must be at least 1");
        }
        if !(a.cluster_fraction > 0.0 && a.cluster_fraction <= 1.0) {
            anyhow::bail!("--cluster-fraction must be in (0, 1]");
        }
        let nodes = sim::sample_nodes(nodes, a.cluster_fraction, seeds[0]);
        let r = sim::run_timeline(&nodes, &pods, policy, seeds[0], a.speedup)?;
        if json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "policy {}: {} pods on {} nodes ({} GPUs), timeline replay, arrivals {}x faster",
                r.policy, r.pods, r.nodes, r.gpus, r.speedup
            );
            println!(
                "  placed {} ({} at once), never placed {}",
                r.placed, r.placed_at_once, r.never_placed
            );
            println!(
                "  queueing delay: mean {:.1} s, p50 {} s, p99 {} s, max {} s",
                r.queue_delay_mean_s, r.queue_delay_p50_s, r.queue_delay_p99_s, r.queue_delay_max_s
            );
            println!(
                "  GPU allocation (time-weighted mean): {:.2} %",
                r.gpu_alloc_pct_mean
            );
            println!("  took {} ms", r.wall_ms);
        }
        return Ok(0);
    }
    let cfg = sim::SimConfig {
        policy,
        seeds,
        tune_ratio: a.tune_ratio,
        coverage_pct: 95,
    };
    let r = sim::run_arrivals(&nodes, &pods, &cfg);
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "policy {}: {} pods on {} nodes ({} GPUs), seeds {}",
            r.policy, r.pods, r.nodes, r.gpus, a.seeds
        );
        println!("  GPU allocation at 100% arrived: {:.2} %", r.alloc_pct_at_100);
        println!(
            "  GPU allocation at {:.0}% arrived: {:.2} % (sd {:.2})",
            a.tune_ratio * 100.0,
            r.alloc_pct_at_130,
            r.alloc_130_sd
        );
        println!("  fragmentation rate at 100%:     {:.2} %", r.frag_pct_at_100);
        for s in &r.per_seed {
            println!(
                "    seed {:>3}: {:.2} / {:.2} %, frag {:.2} %, {} of {} pods failed, {} ms",
                s.seed, s.alloc_pct_at_100, s.alloc_pct_at_130, s.frag_pct_at_100, s.failed, s.pods, s.ms
            );
        }
        println!("  took {} ms", r.wall_ms);
    }
    Ok(0)
}

/// Client commands die quietly on a closed pipe (`allot jobs | head`), like
/// other Unix tools, instead of failing to print. Servers keep Rust's default.
fn restore_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: setting the default disposition installs no handler code.
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let token = cli
        .token
        .as_deref()
        .context("no token: set ALLOT_TOKEN or pass --token (allot server --dev prints one)")?;
    Ok(Client::connect(cli.addr.clone(), token).await?)
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Server(a) => return server(a).await,
        Command::Agent(a) => return agent(a, cli.token.as_deref()).await,
        Command::Sim(a) => return sim(a, cli.json),
        Command::Ledger(LedgerCommand::Check { data_dir: Some(dir) }) => {
            return ledger_check_offline(dir, cli.json);
        }
        Command::Plugin(PluginCommand::Test {
            file,
            job,
            tenant,
            project,
            at,
        }) => {
            // On a thread of its own, outside the runtime: a plugin's
            // writes to standard error (a panic's message) block on WASI
            // streams, which must not run on a thread driving the runtime.
            return std::thread::scope(|s| {
                s.spawn(|| {
                    plugins::test(
                        file,
                        job,
                        tenant.as_deref(),
                        project.as_deref(),
                        at.as_deref(),
                        cli.json,
                    )
                })
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("allot plugin test panicked")))
            });
        }
        _ => {}
    }
    restore_sigpipe();
    let client = connect(&cli).await?;
    let json = cli.json;
    match &cli.command {
        Command::Server(_) | Command::Agent(_) | Command::Sim(_) => unreachable!("handled above"),
        Command::Usage(a) => match &a.command {
            Some(super::UsageCommand::Export(e)) => usage::export(&client, e).await,
            None => usage::usage(&client, a, json).await,
        },
        Command::Budget(b) => usage::budget(&client, b, json).await,
        Command::Leases(a) => usage::leases(&client, a, json).await,
        Command::Ledger(LedgerCommand::Check { data_dir: None }) => {
            Ok(usage::print_check(&client.check_ledger().await?, json))
        }
        Command::Ledger(LedgerCommand::Check { data_dir: Some(_) }) => unreachable!("handled above"),
        Command::Submit(a) => jobs::submit(&client, a, json).await,
        Command::Sbatch { args } => jobs::sbatch(&client, args, json).await,
        Command::Jobs(a) => jobs::list(&client, a, json).await,
        Command::Job { id } => jobs::show(&client, id, json).await,
        Command::Cancel { id, reason, force } => jobs::cancel(&client, id, reason, *force, json).await,
        Command::Watch { id } => jobs::watch(&client, id, json).await,
        Command::Hold { id, reason } => jobs::control(&client, id, jobs::Control::Hold(reason), json).await,
        Command::Release { id } => jobs::control(&client, id, jobs::Control::Release, json).await,
        Command::Update {
            id,
            priority,
            time,
            queue,
        } => {
            let update = jobs::update_request(*priority, time.as_deref(), queue.as_deref())?;
            jobs::control(&client, id, jobs::Control::Update(update), json).await
        }
        Command::Requeue { id, hold, reason } => {
            jobs::control(&client, id, jobs::Control::Requeue(*hold, reason), json).await
        }
        Command::Logs { id, follow, node } => jobs::logs(&client, id, node.as_deref(), *follow).await,
        Command::Nodes => nodes::list(&client, json).await,
        Command::Queues => super::queues::list(&client, json).await,
        Command::Fairshare => super::queues::fairshare(&client, json).await,
        Command::Queue(q) => super::queues::run(&client, q, json).await,
        Command::Drain { node, reason } => nodes::drain(&client, node, Some(reason), json).await,
        Command::Undrain { node } => nodes::drain(&client, node, None, json).await,
        Command::Tenant(t) => nodes::tenant(&client, t, json).await,
        Command::Token(t) => nodes::token(&client, t, json).await,
        Command::Whoami => nodes::whoami(&client, json).await,
        Command::Plugin(p) => plugins::run(&client, p, json).await,
    }
}
