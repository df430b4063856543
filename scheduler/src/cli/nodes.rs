//! `allot nodes | drain | undrain | tenant | token | whoami`.

use allot_sdk::{Client, proto};
use serde_json::{Value, json};

use super::output::{self, fraction, table};
use super::{RoleArg, TenantCommand, TokenCommand};

fn node_state(s: i32) -> &'static str {
    match proto::NodeState::try_from(s) {
        Ok(proto::NodeState::Ready) => "READY",
        Ok(proto::NodeState::Drained) => "DRAINED",
        Ok(proto::NodeState::Down) => "DOWN",
        _ => "UNKNOWN",
    }
}

fn holder(h: Option<&proto::Holder>) -> String {
    match h {
        None => "free".into(),
        Some(h) if h.job_id.is_empty() => "in use".into(),
        Some(h) => format!("job {}", h.job_id),
    }
}

fn node_json(n: &proto::Node) -> Value {
    json!({
        "name": n.name,
        "state": node_state(n.state),
        "drain_reason": n.drain_reason,
        "labels": n.labels,
        "cpu_millis": n.cpu_millis,
        "cpu_millis_allocated": n.cpu_millis_allocated,
        "memory_mib": n.memory_mib,
        "memory_mib_allocated": n.memory_mib_allocated,
        "discovery": n.discovery,
        "agent_version": n.agent_version,
        "last_heartbeat_unix_ms": n.last_heartbeat_unix_ms,
        "gpus": n.gpus.iter().map(|g| json!({
            "index": g.index,
            "uuid": g.uuid,
            "model": g.model,
            "memory_mib": g.memory_mib,
            "mig_enabled": g.mig_enabled,
            "allocated": fraction(g.allocated.as_ref()),
            "utilization_pct": g.utilization_pct,
            "holders": g.holders.iter().map(|h| json!({
                "job_id": if h.job_id.is_empty() { Value::Null } else { json!(h.job_id) },
                "share": fraction(h.share.as_ref()),
                "gpu_memory_mib": h.gpu_memory_mib,
            })).collect::<Vec<_>>(),
            "mig_slices": g.mig_slices.iter().map(|s| json!({
                "uuid": s.uuid,
                "profile": s.profile,
                "start": s.start,
                "memory_mib": s.memory_mib,
                "job_id": s.holder.as_ref().map(|h| h.job_id.clone()).filter(|j| !j.is_empty()),
                "in_use": s.holder.is_some(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn print_node(n: &proto::Node) {
    let free_whole = n
        .gpus
        .iter()
        .filter(|g| !g.mig_enabled && g.holders.is_empty())
        .count();
    println!(
        "{}  {}{}  {} GPUs ({} whole free)  CPU {}/{}  memory {}/{}  via {}",
        n.name,
        node_state(n.state),
        if n.drain_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", n.drain_reason)
        },
        n.gpus.len(),
        free_whole,
        crate::domain::MilliCpu(n.cpu_millis_allocated.max(0) as u64),
        crate::domain::MilliCpu(n.cpu_millis.max(0) as u64),
        crate::domain::MiB(n.memory_mib_allocated.max(0) as u64),
        crate::domain::MiB(n.memory_mib.max(0) as u64),
        if n.discovery.is_empty() { "-" } else { &n.discovery },
    );
    let mut rows = Vec::new();
    for g in &n.gpus {
        let util = g
            .utilization_pct
            .map(|u| format!("{u}%"))
            .unwrap_or_else(|| "-".into());
        if g.mig_enabled {
            for s in &g.mig_slices {
                rows.push(vec![
                    format!("  {}", g.index),
                    g.model.clone(),
                    format!("MIG {} @{}", s.profile, s.start),
                    s.uuid.clone(),
                    util.clone(),
                    holder(s.holder.as_ref()),
                ]);
            }
        } else {
            let use_ = match g.holders.len() {
                0 => "free".to_string(),
                _ => g
                    .holders
                    .iter()
                    .map(|h| format!("{} ({})", holder(Some(h)), fraction(h.share.as_ref())))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            rows.push(vec![
                format!("  {}", g.index),
                g.model.clone(),
                format!("whole, {} allocated", fraction(g.allocated.as_ref())),
                g.uuid.clone(),
                util,
                use_,
            ]);
        }
    }
    if !rows.is_empty() {
        table(&["  GPU", "MODEL", "MODE", "UUID", "UTIL", "HELD BY"], &rows);
    }
}

pub async fn list(client: &Client, json: bool) -> anyhow::Result<i32> {
    let nodes = client.nodes().await?;
    if json {
        output::print_json(&Value::Array(nodes.iter().map(node_json).collect()));
        return Ok(0);
    }
    if nodes.is_empty() {
        eprintln!("no nodes registered");
    }
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print_node(n);
    }
    Ok(0)
}

pub async fn drain(client: &Client, node: &str, reason: Option<&str>, json: bool) -> anyhow::Result<i32> {
    let n = match reason {
        Some(r) => client.drain(node, r).await?,
        None => client.undrain(node).await?,
    };
    if json {
        output::print_json(&node_json(&n));
    } else {
        println!("{} {}", n.name, node_state(n.state));
    }
    Ok(0)
}

fn role_name(r: i32) -> &'static str {
    match proto::Role::try_from(r) {
        Ok(proto::Role::Tenant) => "tenant",
        Ok(proto::Role::Admin) => "admin",
        Ok(proto::Role::Agent) => "agent",
        _ => "unknown",
    }
}

fn token_json(t: &proto::TokenInfo) -> Value {
    json!({
        "id": t.id,
        "role": role_name(t.role),
        "tenant": if t.tenant.is_empty() { Value::Null } else { json!(t.tenant) },
        "node": if t.node.is_empty() { Value::Null } else { json!(t.node) },
        "description": t.description,
        "created_at_unix_ms": t.created_at_unix_ms,
    })
}

pub async fn tenant(client: &Client, cmd: &TenantCommand, json: bool) -> anyhow::Result<i32> {
    let admin = client.admin();
    match cmd {
        TenantCommand::Create { name } => {
            let t = admin.create_tenant(name).await?;
            if json {
                output::print_json(&json!({ "name": t.name, "created_at_unix_ms": t.created_at_unix_ms }));
            } else {
                println!(
                    "tenant {} created; issue it a token with: allot token issue --tenant {}",
                    t.name, t.name
                );
            }
        }
        TenantCommand::List => {
            let ts = admin.tenants().await?;
            if json {
                output::print_json(&Value::Array(
                    ts.iter()
                        .map(|t| json!({ "name": t.name, "created_at_unix_ms": t.created_at_unix_ms }))
                        .collect(),
                ));
            } else {
                let rows: Vec<Vec<String>> = ts
                    .iter()
                    .map(|t| vec![t.name.clone(), output::time(t.created_at_unix_ms)])
                    .collect();
                table(&["TENANT", "CREATED"], &rows);
            }
        }
    }
    Ok(0)
}

pub async fn token(client: &Client, cmd: &TokenCommand, json: bool) -> anyhow::Result<i32> {
    let admin = client.admin();
    match cmd {
        TokenCommand::Issue {
            role,
            tenant,
            node,
            description,
        } => {
            let role = match role {
                RoleArg::Tenant => proto::Role::Tenant,
                RoleArg::Admin => proto::Role::Admin,
                RoleArg::Agent => proto::Role::Agent,
            };
            if role == proto::Role::Tenant && tenant.is_none() {
                anyhow::bail!("--tenant is required for a tenant token");
            }
            let r = match (role, node) {
                (proto::Role::Agent, Some(n)) => admin.issue_agent_token(n, description).await?,
                (proto::Role::Agent, None) => {
                    anyhow::bail!("--node is required for an agent token: it may register only that node")
                }
                (_, Some(_)) => anyhow::bail!("--node applies only to --role agent"),
                (_, None) => admin.issue_token(role, tenant.as_deref(), description).await?,
            };
            if json {
                let mut v = r.info.as_ref().map(token_json).unwrap_or(Value::Null);
                v["token"] = json!(r.token);
                output::print_json(&v);
            } else {
                println!("{}", r.token);
                eprintln!(
                    "(shown once; store it now. id: {})",
                    r.info.map(|i| i.id).unwrap_or_default()
                );
            }
        }
        TokenCommand::List => {
            let ts = admin.tokens().await?;
            if json {
                output::print_json(&Value::Array(ts.iter().map(token_json).collect()));
            } else {
                let rows: Vec<Vec<String>> = ts
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            role_name(t.role).into(),
                            if !t.tenant.is_empty() {
                                t.tenant.clone()
                            } else if !t.node.is_empty() {
                                format!("node {}", t.node)
                            } else {
                                "-".into()
                            },
                            output::time(t.created_at_unix_ms),
                            t.description.clone(),
                        ]
                    })
                    .collect();
                table(&["ID", "ROLE", "TENANT/NODE", "CREATED", "DESCRIPTION"], &rows);
            }
        }
        TokenCommand::Revoke { id } => {
            admin.revoke_token(id).await?;
            if !json {
                println!("token {id} revoked");
            }
        }
    }
    Ok(0)
}

pub async fn whoami(client: &Client, json: bool) -> anyhow::Result<i32> {
    let t = client.admin().who_am_i().await?;
    if json {
        output::print_json(&token_json(&t));
    } else if !t.node.is_empty() {
        println!("agent token {} for node {}", t.id, t.node);
    } else if t.tenant.is_empty() {
        println!("{} token {}", role_name(t.role), t.id);
    } else {
        println!("tenant {} (token {})", t.tenant, t.id);
    }
    Ok(0)
}
