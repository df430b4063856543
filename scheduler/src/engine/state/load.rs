//! Rebuilding the engine's state from the ledger at start.

use super::*;

impl Engine {
    /// Rebuilds the engine's state from the ledger.
    pub fn load(
        ledger: Ledger,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
        events: broadcast::Sender<JobEvent>,
    ) -> anyhow::Result<Self> {
        let now = clock.now();
        let profile = Profile::new(config.policy, config.placement_seed);
        let queues = Queues::new(config.queues.clone(), ledger.queues()?)
            .map_err(|e| anyhow::anyhow!("queues: {e}"))?
            .with_qos(config.qos.clone());
        let fairshare = FairShare::new(config.fairshare.clone());
        let mut engine = Engine {
            drained: ledger.drains()?.into_iter().collect(),
            batch: Batch::new(ledger.clone()),
            ledger,
            clock,
            config,
            observers: Observers::new(events),
            cluster: Cluster::new(),
            placer: Placer::new(profile),
            mix_window: VecDeque::new(),
            since_mix: 0,
            jobs: ActiveJobs::default(),
            pending: Pending::default(),
            queues,
            deps: DependencyGraph::default(),
            arrays: Default::default(),
            fairshare,
            agents: HashMap::new(),
            nodes: HashMap::new(),
            orphaned: HashMap::new(),
            pending_logs: HashMap::new(),
            nominations: Default::default(),
            last_pass: UnixMillis(0),
            last_seen: HashMap::new(),
            budgets: Budgets::default(),
            policy: None,
            to_self: None,
            quota: QuotaBook::default(),
            month_usage: HashMap::new(),
            held_this_pass: HashMap::new(),
            next_request: 1,
            effects: Vec::new(),
            asks_this_turn: 0,
            needs_pass: true,
            requests: HashMap::new(),
            requests_swept: UnixMillis(0),
        };
        let active = engine.ledger.active_jobs()?;
        let seen: HashMap<NodeName, UnixMillis> = engine.ledger.nodes_seen()?.into_iter().collect();
        let (mut pending, mut placed) = (0, 0);
        for job in active {
            let open: Vec<Lease> = engine
                .ledger
                .leases_of(&job.id)?
                .into_iter()
                .filter(|l| l.state != LeaseState::Closed)
                .collect();
            match job.state {
                JobState::Pending => {
                    engine.pending.push(&job, engine.queues.tier(&job.spec));
                    pending += 1;
                }
                _ => {
                    // Its nodes have to come back and say whether they still
                    // run it, within the grace from when each was last heard
                    // from (kept in the ledger): a restart does not start
                    // the grace over.
                    for node in job.live_nodes() {
                        let seen = seen.get(&node).copied().unwrap_or(now).min(now);
                        engine
                            .orphaned
                            .insert((job.id, node), seen.plus(engine.config.node_lost_grace));
                    }
                    placed += 1;
                }
            }
            engine.note_submission(Request::of(&job.spec));
            engine.jobs.admit(job, open);
        }
        // Preemptions in flight survive a restart: the victims remember who
        // they make room for, and the preemptors get their nominations back.
        let victims: Vec<(JobId, JobId, Option<NodeName>)> = engine
            .jobs
            .iter()
            .filter_map(|j| {
                j.preempted_by
                    .map(|by| (j.id, by, j.placements.first().map(|p| p.node.clone())))
            })
            .collect();
        for (victim, by, node) in victims {
            // Without a pending preemptor the victim is still told to stop
            // (on reconnect) and is requeued when it does.
            let preemptor = engine.jobs.get(&by).filter(|p| p.state == JobState::Pending);
            if let (Some(p), Some(node)) = (preemptor, node) {
                let priority = p.spec.priority;
                engine.nominations.add_victim(by, node, priority, victim);
            }
        }
        engine.budgets = Budgets::from_budgets(engine.ledger.budgets()?);
        engine.rebuild_dependencies()?;
        engine.rebuild_arrays();
        // When each node was last heard from, for jobs lost with it.
        for (node, seen) in seen {
            engine.nodes.entry(node).or_default().last_heartbeat = Some(seen);
        }
        engine.requests = engine
            .ledger
            .requests()?
            .into_iter()
            .map(|r| ((r.tenant.clone(), r.request_id.clone()), r))
            .collect();
        info!(pending, placed, "engine state loaded from the ledger");
        Ok(engine)
    }
}
