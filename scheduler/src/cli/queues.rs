//! `allot queues` (like `sinfo -s`) and `allot queue create|update|delete|list`.

use allot_sdk::{Client, proto};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::output;
use crate::domain::Millis;

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create a queue (admin).
    Create(QueueArgs),
    /// Change a queue (admin): only the options given change; the rest keep
    /// their values. Queued jobs keep their time limits; a new tier or node
    /// set applies to them at once.
    Update(QueueArgs),
    /// Delete a queue that holds no jobs and is not the default (admin).
    Delete { name: String },
    /// The queues, as `allot queues` shows them.
    List,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// The queue's name: 1-63 of [a-z0-9-_.].
    pub name: String,
    /// Its nodes carry this label, `key=value` (repeatable; all of them).
    #[arg(long = "node-label", value_name = "KEY=VALUE")]
    pub node_labels: Vec<String>,
    /// Update: every node again (no label needed).
    #[arg(long, conflicts_with = "node_labels")]
    pub any_node: bool,
    /// A GPU model its jobs may use (repeatable) [default: any].
    #[arg(long = "gpu-model", value_name = "MODEL")]
    pub gpu_models: Vec<String>,
    /// Update: any GPU model again.
    #[arg(long, conflicts_with = "gpu_models")]
    pub any_gpu_model: bool,
    /// The time limit of a job that asks for none (`1h`, `2d`; `none`)
    /// [default: --max-time].
    #[arg(long, value_name = "DURATION")]
    pub default_time: Option<String>,
    /// The longest time limit a job may ask for (`2d`; `none`).
    #[arg(long, value_name = "DURATION")]
    pub max_time: Option<String>,
    /// Jobs of a higher tier are considered first, whatever their priority.
    #[arg(long, allow_negative_numbers = true)]
    pub tier: Option<i32>,
    /// A tenant that may submit (repeatable) [default: every tenant].
    #[arg(long = "tenant", value_name = "TENANT")]
    pub tenants: Vec<String>,
    /// Update: every tenant again.
    #[arg(long, conflicts_with = "tenants")]
    pub all_tenants: bool,
    /// GPUs one tenant's jobs may hold in it at once (`none`: no limit).
    #[arg(long, value_name = "N")]
    pub max_gpus: Option<String>,
    /// Jobs one tenant may run in it at once (`none`: no limit).
    #[arg(long, value_name = "N")]
    pub max_running: Option<String>,
    /// Jobs one tenant may have waiting in it (`none`: no limit).
    #[arg(long, value_name = "N")]
    pub max_pending: Option<String>,
    /// Make it the default queue (jobs that name none go there).
    #[arg(long)]
    pub default: bool,
    /// Update: stop being the default (the queue `default` takes over).
    #[arg(long, conflicts_with = "default")]
    pub no_default: bool,
}

fn time(flag: &str, s: &str) -> anyhow::Result<Option<i64>> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let m: Millis = s.parse().map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    Ok(Some(m.0 as i64))
}

fn count(flag: &str, s: &str) -> anyhow::Result<Option<u32>> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| anyhow::anyhow!("{flag}: expected a whole number or `none`, got {s:?}"))
}

impl QueueArgs {
    /// The queue the options describe, and the fields they name.
    fn queue(&self) -> anyhow::Result<(proto::Queue, Vec<String>)> {
        let mut mask = Vec::new();
        let mut q = proto::Queue {
            name: self.name.clone(),
            ..Default::default()
        };
        if !self.node_labels.is_empty() || self.any_node {
            mask.push("node_labels");
            for l in &self.node_labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--node-label: expected KEY=VALUE, got {l:?}"))?;
                q.node_labels.insert(k.into(), v.into());
            }
        }
        if !self.gpu_models.is_empty() || self.any_gpu_model {
            mask.push("gpu_models");
            q.gpu_models = self.gpu_models.clone();
        }
        if let Some(t) = &self.default_time {
            mask.push("default_time_limit_ms");
            q.default_time_limit_ms = time("--default-time", t)?;
        }
        if let Some(t) = &self.max_time {
            mask.push("max_time_limit_ms");
            q.max_time_limit_ms = time("--max-time", t)?;
        }
        if let Some(t) = self.tier {
            mask.push("priority_tier");
            q.priority_tier = t;
        }
        if !self.tenants.is_empty() || self.all_tenants {
            mask.push("tenants");
            q.tenants = self.tenants.clone();
        }
        let limits = q.per_tenant.get_or_insert_with(Default::default);
        if let Some(n) = &self.max_gpus {
            mask.push("per_tenant.gpus");
            limits.gpus = count("--max-gpus", n)?;
        }
        if let Some(n) = &self.max_running {
            mask.push("per_tenant.running_jobs");
            limits.running_jobs = count("--max-running", n)?;
        }
        if let Some(n) = &self.max_pending {
            mask.push("per_tenant.pending_jobs");
            limits.pending_jobs = count("--max-pending", n)?;
        }
        if self.default || self.no_default {
            mask.push("default");
            q.default = self.default;
        }
        Ok((q, mask.into_iter().map(String::from).collect()))
    }
}

fn limit(v: Option<u32>) -> String {
    v.map_or("-".into(), |n| n.to_string())
}

fn limit_ms(v: Option<i64>) -> String {
    v.map_or("-".into(), output::duration)
}

fn queue_json(q: &proto::Queue) -> Value {
    let l = q.per_tenant.unwrap_or_default();
    json!({
        "name": q.name,
        "default": q.default,
        "source": q.source,
        "priority_tier": q.priority_tier,
        "node_labels": q.node_labels,
        "gpu_models": q.gpu_models,
        "default_time_limit_ms": q.default_time_limit_ms,
        "max_time_limit_ms": q.max_time_limit_ms,
        "tenants": q.tenants,
        "per_tenant": {
            "gpus": l.gpus,
            "running_jobs": l.running_jobs,
            "pending_jobs": l.pending_jobs,
        },
        "created_at_unix_ms": q.created_at_unix_ms,
    })
}

fn status_json(s: &proto::QueueStatus) -> Value {
    json!({
        "queue": s.queue.as_ref().map(queue_json),
        "nodes": s.nodes,
        "gpus_total": s.gpus_total,
        "gpus_in_use": s.gpus_in_use,
        "gpus_idle": s.gpus_idle,
        "gpus_down": s.gpus_down,
        "gpus_allocated": output::fraction(s.gpus_allocated.as_ref()),
        "jobs_pending": s.jobs_pending,
        "jobs_running": s.jobs_running,
    })
}

fn print_queue(q: &proto::Queue) {
    let l = q.per_tenant.unwrap_or_default();
    println!(
        "{}{} ({})",
        q.name,
        if q.default { " (default)" } else { "" },
        q.source
    );
    let labels: Vec<String> = q.node_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "  nodes: {}",
        if labels.is_empty() {
            "every node".into()
        } else {
            labels.join(", ")
        }
    );
    println!(
        "  GPU models: {}",
        if q.gpu_models.is_empty() {
            "any".into()
        } else {
            q.gpu_models.join(", ")
        }
    );
    println!(
        "  time limit: default {}, max {}",
        limit_ms(q.default_time_limit_ms.or(q.max_time_limit_ms)),
        limit_ms(q.max_time_limit_ms)
    );
    println!("  priority tier: {}", q.priority_tier);
    println!(
        "  tenants: {}",
        if q.tenants.is_empty() {
            "every tenant".into()
        } else {
            q.tenants.join(", ")
        }
    );
    println!(
        "  per tenant: GPUs {}, running jobs {}, pending jobs {}",
        limit(l.gpus),
        limit(l.running_jobs),
        limit(l.pending_jobs)
    );
}

/// `allot queues`: one line a queue, like `sinfo -s`; the default has a `*`.
pub async fn list(client: &Client, json: bool) -> anyhow::Result<i32> {
    let queues = client.queues().list().await?;
    if json {
        output::print_json(&Value::Array(queues.iter().map(status_json).collect()));
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|s| {
            let q = s.queue.clone().unwrap_or_default();
            let l = q.per_tenant.unwrap_or_default();
            vec![
                format!("{}{}", q.name, if q.default { "*" } else { "" }),
                q.priority_tier.to_string(),
                limit_ms(q.max_time_limit_ms),
                limit_ms(q.default_time_limit_ms.or(q.max_time_limit_ms)),
                s.nodes.to_string(),
                format!(
                    "{}/{}/{}/{}",
                    s.gpus_in_use, s.gpus_idle, s.gpus_down, s.gpus_total
                ),
                output::fraction(s.gpus_allocated.as_ref()),
                s.jobs_pending.to_string(),
                s.jobs_running.to_string(),
                format!(
                    "{}/{}/{}",
                    limit(l.gpus),
                    limit(l.running_jobs),
                    limit(l.pending_jobs)
                ),
            ]
        })
        .collect();
    output::table(
        &[
            "QUEUE",
            "TIER",
            "TIMELIMIT",
            "DEFAULT",
            "NODES",
            "GPUS(A/I/O/T)",
            "ALLOCATED",
            "PENDING",
            "RUNNING",
            "PER-TENANT(GPUS/RUN/PEND)",
        ],
        &rows,
    );
    Ok(0)
}

/// `allot fairshare`: tenants, then projects, like `sshare`.
pub async fn fairshare(client: &Client, json: bool) -> anyhow::Result<i32> {
    let r = client.queues().fairshare().await?;
    let row = |s: &proto::FairShareStanding| {
        json!({
            "tenant": s.tenant,
            "project": if s.project.is_empty() { Value::Null } else { json!(s.project) },
            "weight": s.weight,
            "share": s.share,
            "usage_gpu_hours": s.usage_gpu_hours,
            "usage_share": s.usage_share,
            "factor": s.factor,
        })
    };
    if json {
        output::print_json(&json!({
            "half_life_ms": r.half_life_ms,
            "read_at": output::time(r.read_at_unix_ms),
            "tenants": r.tenants.iter().map(row).collect::<Vec<_>>(),
            "projects": r.projects.iter().map(row).collect::<Vec<_>>(),
        }));
        return Ok(0);
    }
    let mut rows = Vec::new();
    for t in &r.tenants {
        let cells = |s: &proto::FairShareStanding, name: String| {
            vec![
                name,
                s.weight.to_string(),
                format!("{:.4}", s.share),
                format!("{:.2}", s.usage_gpu_hours),
                format!("{:.4}", s.usage_share),
                format!("{:.6}", s.factor),
            ]
        };
        rows.push(cells(t, t.tenant.clone()));
        for p in r.projects.iter().filter(|p| p.tenant == t.tenant) {
            rows.push(cells(p, format!("  {}", p.project)));
        }
    }
    output::table(
        &[
            "TENANT/PROJECT",
            "WEIGHT",
            "SHARE",
            "USAGE(GPU-H)",
            "USAGE-SHARE",
            "FAIRSHARE",
        ],
        &rows,
    );
    println!(
        "usage halves every {}; read {}",
        output::duration(r.half_life_ms),
        output::time(r.read_at_unix_ms)
    );
    Ok(0)
}

pub async fn run(client: &Client, c: &QueueCommand, json: bool) -> anyhow::Result<i32> {
    let q = match c {
        QueueCommand::List => return list(client, json).await,
        QueueCommand::Delete { name } => {
            client.queues().delete(name).await?;
            if !json {
                println!("queue {name} deleted");
            }
            return Ok(0);
        }
        QueueCommand::Create(a) => {
            if a.any_node || a.any_gpu_model || a.all_tenants || a.no_default {
                anyhow::bail!(
                    "--any-node, --any-gpu-model, --all-tenants and --no-default are for `allot queue update`"
                );
            }
            client.queues().create(a.queue()?.0).await?
        }
        QueueCommand::Update(a) => {
            let (q, mask) = a.queue()?;
            if mask.is_empty() {
                anyhow::bail!(
                    "nothing to change: give at least one option (see `allot queue update --help`)"
                );
            }
            client.queues().update(q, mask).await?
        }
    };
    if json {
        output::print_json(&queue_json(&q));
    } else {
        print_queue(&q);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        c: QueueCommand,
    }

    fn args(line: &[&str]) -> QueueArgs {
        match T::try_parse_from(std::iter::once("t").chain(line.iter().copied()))
            .unwrap()
            .c
        {
            QueueCommand::Create(a) | QueueCommand::Update(a) => a,
            _ => panic!("not a create or update"),
        }
    }

    #[test]
    fn the_options_given_are_the_fields_named() {
        let (q, mask) = args(&[
            "update",
            "gpu-a",
            "--tier",
            "-1",
            "--max-time",
            "2d",
            "--max-gpus",
            "none",
            "--all-tenants",
        ])
        .queue()
        .unwrap();
        assert_eq!(q.priority_tier, -1);
        assert_eq!(q.max_time_limit_ms, Some(172_800_000));
        assert_eq!(q.per_tenant.unwrap().gpus, None);
        assert_eq!(
            mask,
            ["max_time_limit_ms", "priority_tier", "tenants", "per_tenant.gpus"]
        );
        let (q, mask) = args(&["create", "x", "--node-label", "pool=a", "--default"])
            .queue()
            .unwrap();
        assert_eq!(q.node_labels.get("pool").map(String::as_str), Some("a"));
        assert!(q.default);
        assert_eq!(mask, ["node_labels", "default"]);
        for bad in [
            &["create", "x", "--node-label", "pool"][..],
            &["create", "x", "--max-gpus", "lots"],
            &["create", "x", "--max-time", "soon"],
        ] {
            assert!(args(bad).queue().is_err(), "{bad:?}");
        }
    }
}
