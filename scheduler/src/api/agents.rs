//! `allot.v1.AgentService`: the agent's stream, translated to engine commands.

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use allot_proto::v1 as pb;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, instrument, warn};

use super::convert::{device_pb, parse_job_id};
use super::error::ApiError;
use super::{Api, caller};
use crate::domain::validate::quote;
use crate::domain::{JobId, MiB, MigProfile, MilliCpu, Millis, NodeName};
use crate::engine::{AgentEvent, AgentOrder, ExitOutcome, JobExit, Registration, RunningPart, StopReason};
use crate::ledger::Role;
use crate::placement::{Gpu, MigSlice, NodeInventory};

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

fn running(list: &[pb::RunningJob]) -> Vec<(JobId, u32)> {
    list.iter()
        .filter_map(|r| r.job_id.parse().ok().map(|id| (id, r.attempt)))
        .collect()
}

pub(crate) fn exit_from_pb(e: &pb::JobExited) -> Result<JobExit, ApiError> {
    let job = parse_job_id("job_exited.job_id", &e.job_id)?;
    let outcome = match pb::ExitKind::try_from(e.kind) {
        Ok(pb::ExitKind::Exited) => ExitOutcome::Exited(e.exit_code.unwrap_or(0)),
        Ok(pb::ExitKind::Signaled) => ExitOutcome::Signaled(e.signal.unwrap_or(0)),
        Ok(pb::ExitKind::TimedOut) => ExitOutcome::TimedOut {
            exit_code: e.exit_code,
            signal: e.signal,
        },
        Ok(pb::ExitKind::Stopped) => ExitOutcome::Stopped {
            exit_code: e.exit_code,
            signal: e.signal,
        },
        Ok(pb::ExitKind::LaunchFailed) => ExitOutcome::LaunchFailed(e.message.clone()),
        // Its node stopped it for want of the controller: lost with the node.
        Ok(pb::ExitKind::Fenced) => ExitOutcome::Lost(
            "its node lost the controller for longer than the fence and stopped it".to_string(),
        ),
        _ => return Err(ApiError::invalid("job_exited.kind", "unknown exit kind")),
    };
    Ok(JobExit {
        job,
        attempt: e.attempt,
        outcome,
        runtime: e.runtime_ms.filter(|ms| *ms >= 0).map(|ms| Millis(ms as u64)),
        ended_ago: e.ended_ms_ago.map(Millis),
    })
}

/// Checks an agent's registration and turns it into the node's inventory.
fn registration(r: &pb::RegisterAgent) -> Result<Registration, ApiError> {
    let name: NodeName = r
        .node
        .trim()
        .parse()
        .map_err(|e| ApiError::invalid("register.node", e))?;
    let cpu = u64::try_from(r.cpu_millis)
        .map_err(|_| ApiError::invalid("register.cpu_millis", "must not be negative"))?;
    let memory = u64::try_from(r.memory_mib)
        .map_err(|_| ApiError::invalid("register.memory_mib", "must not be negative"))?;
    if r.gpus.len() > 256 {
        return Err(ApiError::invalid("register.gpus", "at most 256 GPUs per node"));
    }
    let mut seen = HashSet::new();
    let mut gpus = Vec::with_capacity(r.gpus.len());
    for g in &r.gpus {
        if g.uuid.is_empty() || !seen.insert(g.uuid.clone()) {
            return Err(ApiError::invalid(
                "register.gpus.uuid",
                format!("missing or duplicate GPU UUID {}", quote(&g.uuid)),
            ));
        }
        let gpu = if g.mig_enabled {
            let mut slices = Vec::new();
            for m in &g.mig_devices {
                if m.uuid.is_empty() || !seen.insert(m.uuid.clone()) {
                    return Err(ApiError::invalid(
                        "register.gpus.mig_devices.uuid",
                        format!("missing or duplicate MIG UUID {}", quote(&m.uuid)),
                    ));
                }
                match m.profile.parse::<MigProfile>() {
                    Ok(profile) => slices.push(MigSlice {
                        uuid: m.uuid.clone(),
                        profile,
                        start: m.start.min(7) as u8,
                        memory: MiB(m.memory_mib),
                        holder: None,
                    }),
                    // A slice we cannot name cannot be asked for; leave it out.
                    Err(e) => warn!(node = %name, uuid = %m.uuid, "MIG slice skipped: {e}"),
                }
            }
            Gpu::mig(
                g.index,
                g.uuid.clone(),
                g.model.clone(),
                MiB(g.memory_mib),
                slices,
            )
        } else {
            Gpu::whole(g.index, g.uuid.clone(), g.model.clone(), MiB(g.memory_mib))
        };
        gpus.push(gpu);
    }
    let exited = r.exited.iter().map(exit_from_pb).collect::<Result<Vec<_>, _>>()?;
    Ok(Registration {
        inventory: NodeInventory {
            name,
            labels: r.labels.clone().into_iter().collect::<BTreeMap<_, _>>(),
            cpu: MilliCpu(cpu),
            memory: MiB(memory),
            gpus,
        },
        running: r
            .running
            .iter()
            .filter_map(|p| {
                Some(RunningPart {
                    job: p.job_id.parse().ok()?,
                    attempt: p.attempt,
                    running_for: p.running_ms.map(Millis),
                })
            })
            .collect(),
        exited,
        discovery: r.discovery.clone(),
        agent_version: r.agent_version.clone(),
    })
}

fn order_pb(order: AgentOrder) -> pb::ControllerMessage {
    use pb::controller_message::Msg;
    let msg = match order {
        AgentOrder::Launch(o) => Msg::Launch(pb::LaunchJob {
            job_id: o.job.to_string(),
            attempt: o.attempt,
            name: o.spec.name.clone(),
            command: o.spec.command.clone(),
            args: o.spec.args.clone(),
            env: o.spec.env.clone().into_iter().collect(),
            working_dir: o.spec.working_dir.clone().unwrap_or_default(),
            devices: o.devices.iter().map(device_pb).collect(),
            time_limit_ms: o.spec.time_limit.map(|t| t.0 as i64),
            grace_period_ms: o.spec.grace_period.0 as i64,
            tenant: o.spec.tenant.to_string(),
            project: o.spec.project.to_string(),
            lease_ids: o.lease_ids,
            cpu_millis: o.spec.resources.cpu.0 as i64,
            memory_mib: o.spec.resources.memory.0 as i64,
            nodes: o.nodes.clone(),
            node_rank: o.rank,
            script: o.spec.script.clone(),
            queue: o.spec.queue.as_ref().map(ToString::to_string).unwrap_or_default(),
            output: o.spec.output.clone().unwrap_or_default(),
            error: o.spec.error.clone().unwrap_or_default(),
        }),
        AgentOrder::Stop {
            job,
            attempt,
            grace,
            reason,
        } => Msg::Stop(pb::StopJob {
            job_id: job.to_string(),
            attempt,
            grace_period_ms: grace.0 as i64,
            reason: match reason {
                StopReason::Cancelled => pb::StopReason::Cancelled,
                StopReason::Preempted => pb::StopReason::Preempted,
                StopReason::Gang => pb::StopReason::Gang,
                StopReason::Requeued => pb::StopReason::Requeued,
                StopReason::UnknownJob => pb::StopReason::UnknownJob,
            } as i32,
        }),
        AgentOrder::AckExit { job, attempt } => Msg::AckExit(pb::AckExit {
            job_id: job.to_string(),
            attempt,
        }),
        AgentOrder::ReadLog {
            request_id,
            job,
            offset,
            limit,
        } => Msg::ReadLog(pb::ReadLog {
            request_id,
            job_id: job.to_string(),
            offset,
            limit,
        }),
        AgentOrder::HeartbeatAck { seq } => Msg::HeartbeatAck(pb::HeartbeatAck { seq }),
    };
    pb::ControllerMessage { msg: Some(msg) }
}

fn event_from_pb(msg: pb::agent_message::Msg) -> Result<Option<AgentEvent>, ApiError> {
    use pb::agent_message::Msg;
    Ok(Some(match msg {
        Msg::Register(_) => return Err(ApiError::invalid("register", "sent twice on one stream")),
        Msg::Heartbeat(h) => AgentEvent::Heartbeat {
            utilization: h
                .utilization
                .iter()
                .map(|u| (u.uuid.clone(), u.gpu_pct.min(100)))
                .collect(),
            running: running(&h.running),
            seq: h.seq,
        },
        Msg::JobStarted(s) => AgentEvent::Started {
            job: parse_job_id("job_started.job_id", &s.job_id)?,
            attempt: s.attempt,
            pid: s.pid,
        },
        Msg::JobExited(e) => AgentEvent::Exited(exit_from_pb(&e)?),
        Msg::LogChunk(c) => AgentEvent::LogChunk {
            request_id: c.request_id,
            result: if c.error.is_empty() {
                Ok((c.data, c.next_offset, c.path))
            } else {
                Err(c.error)
            },
        },
    }))
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Api {
    type SessionStream = SessionStream;

    #[instrument(skip(self, request))]
    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = caller(&request)?;
        if !matches!(caller.role, Role::Agent | Role::Admin) {
            return Err(ApiError::PermissionDenied(
                "only an agent or admin token may open an agent session".into(),
            )
            .into());
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| ApiError::invalid("register", "the first message must come within 10 s"))??;
        let Some(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Register(reg)),
        }) = first
        else {
            return Err(
                ApiError::invalid("register", "the first message of a session must be `register`").into(),
            );
        };
        let reg = registration(&reg)?;
        let node = reg.inventory.name.clone();
        // An agent token registers its own node and no other.
        if caller.role == Role::Agent {
            match &caller.node {
                Some(own) if *own == node => {}
                Some(own) => {
                    return Err(ApiError::PermissionDenied(format!(
                        "this agent token is bound to node {own}; it cannot register node {node}"
                    ))
                    .into());
                }
                None => {
                    return Err(ApiError::PermissionDenied(
                        "this agent token is bound to no node (issued by an older allot): issue one with `allot token issue --role agent --node NAME`".into(),
                    )
                    .into());
                }
            }
        }
        let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let (tx, mut orders) = mpsc::unbounded_channel();
        // Subscribed before the session starts, so no revocation slips by.
        let mut revoked = self.auth.revocations();
        self.engine
            .agent_connected(conn, reg, tx)
            .await
            .map_err(ApiError::from)?;
        info!(%node, conn, "agent session open");

        let (out, out_rx) = mpsc::channel::<Result<pb::ControllerMessage, Status>>(256);
        let hello = pb::ControllerMessage {
            msg: Some(pb::controller_message::Msg::Registered(pb::Registered {
                node: node.to_string(),
                heartbeat_interval_ms: self.heartbeat_interval.0 as i64,
                fence_after_ms: self.engine.fence_after().0 as i64,
            })),
        };
        let _ = out.try_send(Ok(hello));
        let engine = self.engine.clone();
        let auth = self.auth.clone();
        let token = caller.token_id.clone();
        // One task per session: what the agent says goes to the engine, what
        // the engine orders goes to the agent, and the session ends when
        // either side closes or its token is revoked (at once: a revoked
        // agent token receives no further launch).
        tokio::spawn(async move {
            let mut why = "agent session closed";
            let mut watching = true;
            loop {
                tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(pb::AgentMessage { msg: Some(msg) })) => match event_from_pb(msg) {
                            Ok(Some(ev)) => engine.agent_event(conn, node.clone(), ev).await,
                            Ok(None) => {}
                            Err(e) => warn!(%node, "bad agent message ignored: {e}"),
                        },
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            debug!(%node, "agent stream error: {e}");
                            break;
                        }
                    },
                    order = orders.recv() => match order {
                        Some(o) => {
                            if out.send(Ok(order_pb(o))).await.is_err() {
                                break;
                            }
                        }
                        // The engine dropped this connection (replaced, or stopping).
                        None => break,
                    },
                    r = revoked.recv(), if watching => {
                        let gone = match r {
                            Ok(id) => id == token,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => !auth.is_valid(&token),
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                watching = false;
                                false
                            }
                        };
                        if gone {
                            why = "agent session ended: its token was revoked";
                            let _ = out.try_send(Err(Status::unauthenticated("the agent's token was revoked")));
                            break;
                        }
                    }
                    _ = out.closed() => break,
                }
            }
            info!(%node, conn, "{why}");
            engine.agent_disconnected(conn, node).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
    }
}
