//! The placement core against hand-built clusters: plans are recorded and
//! checked, never committed to anything but the in-memory cluster.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use proptest::prelude::*;

use super::*;
use super::{feasible, preempt};
use crate::domain::{GpuRequest, JobId, MiB, MigProfile, MilliCpu, Resources, Share};

fn whole_gpu(node: &str, i: u32) -> Gpu {
    Gpu::whole(i, format!("GPU-{node}-{i}"), "H100-80GB", MiB(80 * 1024))
}

fn mig_gpu(node: &str, i: u32, profiles: &[(&str, u8)]) -> Gpu {
    let slices = profiles
        .iter()
        .enumerate()
        .map(|(k, (p, start))| MigSlice {
            uuid: format!("MIG-{node}-{i}-{k}"),
            profile: p.parse().unwrap(),
            start: *start,
            memory: MiB(10 * 1024),
            holder: None,
        })
        .collect();
    Gpu::mig(i, format!("GPU-{node}-{i}"), "H100-80GB", MiB(80 * 1024), slices)
}

fn node(name: &str, whole: u32, mig: Option<&[(&str, u8)]>) -> NodeInventory {
    let mut gpus: Vec<Gpu> = (0..whole).map(|i| whole_gpu(name, i)).collect();
    if let Some(p) = mig {
        gpus.push(mig_gpu(name, whole, p));
    }
    NodeInventory {
        name: name.parse().unwrap(),
        labels: BTreeMap::new(),
        cpu: MilliCpu(32_000),
        memory: MiB(256 * 1024),
        gpus,
    }
}

fn req(gpu: GpuRequest) -> Request {
    Request::resources(&Resources {
        gpu,
        cpu: MilliCpu(1000),
        memory: MiB(1024),
    })
}

/// First-fit: the policy these hand-built cases were written against.
fn place(c: &Cluster, r: &Request) -> Result<Placement, Unplaceable> {
    super::place(c, r, &Profile::new(Policy::FirstFit, 0))
}

fn gpus(n: u32) -> GpuRequest {
    GpuRequest::Whole(NonZeroU32::new(n).unwrap())
}

fn frac(s: &str) -> GpuRequest {
    GpuRequest::Fraction {
        share: s.parse().unwrap(),
        memory: None,
    }
}

fn dev_cluster() -> Cluster {
    let mut c = Cluster::new();
    c.upsert_node(node("a", 4, None));
    c.upsert_node(node(
        "b",
        4,
        Some(&[("3g.40gb", 4), ("2g.20gb", 0), ("1g.10gb", 2), ("1g.10gb", 3)]),
    ));
    c
}

fn place_and_commit(c: &mut Cluster, r: &Request) -> Result<(JobId, Placement), Unplaceable> {
    let p = place(c, r)?;
    let job = JobId::new_v7();
    c.allocate(job, &p)
        .expect("a plan made against the cluster applies");
    Ok((job, p))
}

#[test]
fn whole_gpus_go_first_fit_and_never_twice() {
    let mut c = dev_cluster();
    let (_, p1) = place_and_commit(&mut c, &req(gpus(3))).unwrap();
    assert_eq!(p1.node.as_str(), "a");
    assert_eq!(p1.devices.len(), 3);
    // One left on a; two must go to b.
    let (_, p2) = place_and_commit(&mut c, &req(gpus(2))).unwrap();
    assert_eq!(p2.node.as_str(), "b");
    let (_, p3) = place_and_commit(&mut c, &req(gpus(1))).unwrap();
    assert_eq!(p3.node.as_str(), "a");
    let used: Vec<&str> = [&p1, &p2, &p3]
        .iter()
        .flat_map(|p| p.devices.iter().map(|d| d.device_uuid.as_str()))
        .collect();
    let mut dedup = used.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(used.len(), dedup.len(), "a GPU was granted twice: {used:?}");
}

#[test]
fn too_many_gpus_is_unresolvable_with_a_reason() {
    let c = dev_cluster();
    let err = place(&c, &req(gpus(9))).unwrap_err();
    assert!(!err.is_resolvable());
    assert_eq!(err.rejections.get(&Rejection::GpuCapacity), Some(&2));
    assert_eq!(
        err.to_string(),
        "no node can take it at all (2 nodes: too few GPUs in total)"
    );
}

#[test]
fn busy_gpus_are_resolvable() {
    let mut c = dev_cluster();
    place_and_commit(&mut c, &req(gpus(4))).unwrap();
    place_and_commit(&mut c, &req(gpus(4))).unwrap();
    let err = place(&c, &req(gpus(1))).unwrap_err();
    assert!(err.is_resolvable());
    assert_eq!(err.rejections.get(&Rejection::GpusBusy), Some(&2));
}

#[test]
fn fractions_share_one_gpu_up_to_exactly_one() {
    let mut c = Cluster::new();
    c.upsert_node(node("a", 1, None));
    for _ in 0..4 {
        let (_, p) = place_and_commit(&mut c, &req(frac("0.25"))).unwrap();
        assert_eq!(p.devices[0].share, Share::new(1, 4).unwrap());
        assert_eq!(p.devices[0].gpu_memory, MiB(20 * 1024));
    }
    assert_eq!(c.nodes()[0].inventory.gpus[0].allocated(), Share::ONE);
    let err = place(&c, &req(frac("0.01"))).unwrap_err();
    assert_eq!(err.rejections.get(&Rejection::ShareBusy), Some(&1));
    // A shared GPU is not free for a whole-GPU job.
    assert!(place(&c, &req(gpus(1))).is_err());
}

#[test]
fn thirds_fill_a_gpu_exactly() {
    let mut c = Cluster::new();
    c.upsert_node(node("a", 1, None));
    for _ in 0..3 {
        place_and_commit(&mut c, &req(frac("1/3"))).unwrap();
    }
    assert_eq!(c.nodes()[0].inventory.gpus[0].allocated(), Share::ONE);
    assert!(place(&c, &req(frac("1/1000"))).is_err());
}

#[test]
fn mig_requests_land_only_on_a_free_slice_of_that_profile() {
    let mut c = dev_cluster();
    let one_g: MigProfile = "1g.10gb".parse().unwrap();
    let (_, p) = place_and_commit(&mut c, &req(GpuRequest::Mig(one_g.clone()))).unwrap();
    assert_eq!(p.node.as_str(), "b");
    assert_eq!(p.devices[0].mig_profile.as_ref(), Some(&one_g));
    assert!(p.devices[0].device_uuid.starts_with("MIG-"));
    assert_eq!(p.devices[0].share, Share::new(1, 7).unwrap());
    place_and_commit(&mut c, &req(GpuRequest::Mig(one_g.clone()))).unwrap();
    let err = place(&c, &req(GpuRequest::Mig(one_g))).unwrap_err();
    assert_eq!(err.rejections.get(&Rejection::MigSliceBusy), Some(&1));
    assert_eq!(err.rejections.get(&Rejection::MigProfileAbsent), Some(&1));
    let err = place(&c, &req(GpuRequest::Mig("7g.80gb".parse().unwrap()))).unwrap_err();
    assert!(!err.is_resolvable());
}

#[test]
fn drained_and_down_nodes_take_nothing() {
    let mut c = dev_cluster();
    c.set_drain("a", Some("maintenance".into()));
    c.set_status("b", NodeStatus::Down);
    let err = place(&c, &req(gpus(1))).unwrap_err();
    assert!(err.is_resolvable());
    assert_eq!(err.rejections.get(&Rejection::NodeDrained), Some(&1));
    assert_eq!(err.rejections.get(&Rejection::NodeDown), Some(&1));
}

#[test]
fn cpu_and_memory_are_checked() {
    let c = dev_cluster();
    let mut r = req(GpuRequest::None);
    r.cpu = MilliCpu(64_000);
    let err = place(&c, &r).unwrap_err();
    assert_eq!(err.rejections.get(&Rejection::CpuCapacity), Some(&2));
    let mut r = req(GpuRequest::None);
    r.memory = MiB(512 * 1024);
    let err = place(&c, &r).unwrap_err();
    assert_eq!(err.rejections.get(&Rejection::MemoryCapacity), Some(&2));
}

#[test]
fn allocate_refuses_a_stale_plan() {
    let mut c = dev_cluster();
    let p = place(&c, &req(gpus(4))).unwrap();
    c.allocate(JobId::new_v7(), &p).unwrap();
    let err = c.allocate(JobId::new_v7(), &p).unwrap_err();
    assert!(matches!(err, Conflict::Device { .. }), "{err}");
}

#[test]
fn release_frees_exactly_what_was_held() {
    let mut c = dev_cluster();
    let (job, p) = place_and_commit(&mut c, &req(frac("0.5"))).unwrap();
    let before = c.nodes()[0].clone();
    assert_eq!(c.release(job, p.node.as_str()), Some(p));
    assert_eq!(c.nodes()[0].cpu_used, MilliCpu(0));
    assert!(
        c.nodes()[0]
            .inventory
            .gpus
            .iter()
            .all(|g| g.allocated().is_zero())
    );
    assert_ne!(before, c.nodes()[0]);
    assert_eq!(c.release(job, "a"), None);
}

/// Checks that nothing in the cluster is over-committed.
fn assert_no_overcommit(c: &Cluster) {
    for n in c.nodes() {
        assert!(
            n.cpu_used <= n.inventory.cpu,
            "cpu over-committed on {}",
            n.name()
        );
        assert!(n.memory_used <= n.inventory.memory);
        for g in &n.inventory.gpus {
            assert!(
                g.allocated() <= Share::ONE,
                "{} over-committed: {}",
                g.uuid,
                g.allocated()
            );
            assert!(g.memory_allocated() <= g.memory);
            if let GpuMode::Whole { holders } = &g.mode
                && holders.iter().any(|h| h.share == Share::ONE)
            {
                assert_eq!(holders.len(), 1, "a whole GPU is shared");
            }
        }
    }
}

fn arb_request() -> impl Strategy<Value = Request> {
    let gpu = prop_oneof![
        Just(GpuRequest::None),
        (1u32..=5).prop_map(gpus),
        (1u64..=8, 1u64..=8)
            .prop_filter("(0,1]", |(n, d)| n <= d)
            .prop_map(|(n, d)| GpuRequest::Fraction {
                share: Share::new(n, d).unwrap(),
                memory: None
            }),
        prop_oneof![Just("1g.10gb"), Just("2g.20gb"), Just("3g.40gb"), Just("7g.80gb")]
            .prop_map(|p| GpuRequest::Mig(p.parse().unwrap())),
    ];
    let models = prop_oneof![
        3 => Just(vec![]),
        1 => Just(vec!["A100-80GB".to_string()]),
        1 => Just(vec!["H100-80GB".to_string(), "A100-80GB".to_string()]),
    ];
    let labels = prop_oneof![3 => Just(None), 1 => Just(Some(("zone", "b")))];
    (gpu, 0u64..8_000, 0u64..64 * 1024, models, labels).prop_map(|(gpu, cpu, mem, models, label)| {
        let mut r = Request::resources(&Resources {
            gpu,
            cpu: MilliCpu(cpu),
            memory: MiB(mem),
        });
        if !matches!(r.gpu, GpuRequest::None) {
            r.gpu_models = models;
        }
        if let Some((k, v)) = label {
            r.node_labels.insert(k.into(), v.into());
        }
        r
    })
}

/// The dev cluster plus a labelled A100 node, for constraints.
fn mixed_cluster() -> Cluster {
    let mut c = dev_cluster();
    let mut inv = node("c", 0, None);
    inv.gpus = (0..4)
        .map(|i| Gpu::whole(i, format!("GPU-c-{i}"), "A100-80GB", MiB(80 * 1024)))
        .collect();
    inv.labels.insert("zone".into(), "b".into());
    c.upsert_node(inv);
    c
}

/// Checks a placement against its request's constraints.
fn assert_respects(c: &Cluster, r: &Request, p: &Placement) {
    let node = c.node(p.node.as_str()).unwrap();
    assert!(r.accepts_labels(node), "labels ignored: {r:?} on {}", p.node);
    for d in &p.devices {
        let gpu = node.inventory.gpus.iter().find(|g| g.uuid == d.gpu_uuid).unwrap();
        assert!(r.accepts_model(gpu), "model ignored: {r:?} on {}", gpu.model);
        if let GpuRequest::Mig(profile) = &r.gpu {
            let GpuMode::Mig { slices } = &gpu.mode else {
                panic!("MIG request on a whole GPU")
            };
            let s = slices.iter().find(|s| s.uuid == d.device_uuid).unwrap();
            assert_eq!(&s.profile, profile);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_streams_never_overcommit(
        policy in prop::sample::select(Policy::ALL.to_vec()),
        ops in proptest::collection::vec((arb_request(), any::<bool>(), any::<prop::sample::Index>()), 1..150),
    ) {
        let mut c = mixed_cluster();
        let mut placer = Placer::new(Profile::new(policy, 7));
        let mut live: Vec<(JobId, Placement)> = Vec::new();
        for (r, release, pick) in ops {
            if release && !live.is_empty() {
                let (job, p) = live.remove(pick.index(live.len()));
                prop_assert_eq!(c.release(job, p.node.as_str()), Some(p));
            } else {
                let memoised = placer.place(&c, &r);
                // The memo never changes an answer.
                prop_assert_eq!(&memoised, &super::place(&c, &r, placer.profile()));
                if let Ok(p) = memoised {
                    // A gang is placed whole or not at all.
                    if let GpuRequest::Whole(n) = r.gpu {
                        prop_assert_eq!(p.devices.len(), n.get() as usize);
                    }
                    assert_respects(&c, &r, &p);
                    let job = JobId::new_v7();
                    c.allocate(job, &p).expect("a plan made against the cluster applies");
                    live.push((job, p));
                }
            }
            assert_no_overcommit(&c);
        }
    }
}

#[test]
fn model_and_label_constraints_name_their_rejections() {
    let c = mixed_cluster();
    let mut r = req(gpus(2));
    r.gpu_models = vec!["V100M32".into()];
    let err = place(&c, &r).unwrap_err();
    assert_eq!(err.rejections.get(&Rejection::ModelMismatch), Some(&3));
    assert!(!err.is_resolvable());
    let mut r = req(gpus(1));
    r.node_labels.insert("zone".into(), "b".into());
    let p = place(&c, &r).unwrap();
    assert_eq!(p.node.as_str(), "c");
    let mut r = req(gpus(1));
    r.gpu_models = vec!["A100-80GB".into()];
    assert_eq!(place(&c, &r).unwrap().devices[0].gpu_model, "A100-80GB");
}

#[test]
fn ties_follow_a_seeded_order_that_is_stable() {
    let mut c = Cluster::new();
    for i in 0..20 {
        c.upsert_node(node(&format!("n{i}"), 4, None));
    }
    let pick = |seed| {
        super::place(&c, &req(gpus(1)), &Profile::new(Policy::BestFit, seed))
            .unwrap()
            .node
    };
    // The same seed, the same node; some other seed, some other node.
    assert_eq!(pick(1), pick(1));
    assert!((2..40).any(|s| pick(s) != pick(1)));
    // First-fit ignores the seed: registration order.
    let ff = |seed| {
        super::place(&c, &req(gpus(1)), &Profile::new(Policy::FirstFit, seed))
            .unwrap()
            .node
    };
    assert_eq!(ff(1).as_str(), "n0");
    assert_eq!(ff(99).as_str(), "n0");
}

#[test]
fn best_fit_packs_the_fuller_node_and_the_tighter_gpu() {
    let mut c = Cluster::new();
    c.upsert_node(node("a", 4, None));
    c.upsert_node(node("b", 4, None));
    let profile = Profile::new(Policy::BestFit, 3);
    let p = super::place(&c, &req(frac("0.5")), &profile).unwrap();
    c.allocate(JobId::new_v7(), &p).unwrap();
    let first = p.node.clone();
    // The next share goes to the same node and the same (now tighter) GPU.
    let q = super::place(&c, &req(frac("0.25")), &profile).unwrap();
    assert_eq!(q.node, first);
    assert_eq!(q.devices[0].gpu_uuid, p.devices[0].gpu_uuid);
}

#[test]
fn fragmentation_aware_policies_keep_whole_gpus_whole() {
    // Mostly whole-GPU work expected: a small share should go where a GPU is
    // already split, not break open a whole one.
    let mut c = Cluster::new();
    c.upsert_node(node("a", 2, None));
    c.upsert_node(node("b", 2, None));
    let split = super::place(&c, &req(frac("0.5")), &Profile::new(Policy::FirstFit, 0)).unwrap();
    c.allocate(JobId::new_v7(), &split).unwrap();
    let mut expected: Vec<Request> = (0..9).map(|_| req(gpus(1))).collect();
    expected.push(req(frac("0.25")));
    let mix = std::sync::Arc::new(WorkloadMix::from_requests(expected.iter(), 100));
    for policy in [Policy::Fgd, Policy::Allot] {
        let profile = Profile {
            policy,
            seed: 5,
            mix: mix.clone(),
        };
        let p = super::place(&c, &req(frac("0.25")), &profile).unwrap();
        assert_eq!(p.devices[0].gpu_uuid, split.devices[0].gpu_uuid, "{policy}");
    }
}

fn arb_candidate_traits() -> impl Strategy<Value = (i32, bool, bool, u64)> {
    (0i32..6, any::<bool>(), prop::bool::weighted(0.2), 0u64..1_000_000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Preemption never picks a job it may not touch, and what it picks
    /// always makes room.
    #[test]
    fn preemption_picks_only_eligible_victims_and_frees_enough(
        fill in proptest::collection::vec(arb_request(), 5..80),
        traits in proptest::collection::vec(arb_candidate_traits(), 80),
        want in arb_request(),
        priority in 0i32..8,
    ) {
        let mut c = mixed_cluster();
        let mut placer = Placer::new(Profile::new(Policy::Allot, 3));
        let mut candidates = Vec::new();
        for (k, r) in fill.iter().enumerate() {
            if let Ok(p) = placer.place(&c, r) {
                let job = JobId::new_v7();
                c.allocate(job, &p).unwrap();
                let (prio, preemptible, protected, cost) = traits[k];
                candidates.push(preempt::Candidate { job, priority: prio, preemptible, protected, cost });
            }
        }
        let profile = Profile::new(Policy::Allot, 3);
        let Some(plan) = preempt::plan(&c, &want, priority, &candidates, &profile, |_| false) else { return Ok(()) };
        prop_assert!(!plan.victims.is_empty(), "a plan without victims: the job fitted already");
        for v in &plan.victims {
            let cand = candidates.iter().find(|c| c.job == *v).unwrap();
            prop_assert!(cand.preemptible && !cand.protected && cand.priority < priority, "ineligible victim {cand:?}");
            prop_assert!(c.node(plan.node.as_str()).unwrap().jobs.contains_key(v), "victim on another node");
        }
        let mut freed = c.clone();
        for v in &plan.victims {
            freed.release(*v, plan.node.as_str()).unwrap();
        }
        let node = freed.node(plan.node.as_str()).unwrap();
        prop_assert!(feasible::check(node, &want).is_ok(), "the victims do not make room");
        // And none of them was needed for nothing: putting any one back breaks it.
        for v in &plan.victims {
            let mut back = freed.clone();
            let p = c.node(plan.node.as_str()).unwrap().jobs[v].clone();
            back.allocate(*v, &p).unwrap();
            prop_assert!(feasible::check(back.node(plan.node.as_str()).unwrap(), &want).is_err(), "victim {v} was unnecessary");
        }
    }
}

#[test]
fn preemption_prefers_the_cheapest_victims_and_spares_the_protected() {
    let mut c = Cluster::new();
    c.upsert_node(node("a", 2, None));
    c.upsert_node(node("b", 2, None));
    let profile = Profile::new(Policy::FirstFit, 0);
    let mut jobs = Vec::new();
    for _ in 0..4 {
        let p = super::place(&c, &req(gpus(1)), &profile).unwrap();
        let j = JobId::new_v7();
        c.allocate(j, &p).unwrap();
        jobs.push((j, p.node));
    }
    // a: two cheap jobs, one protected; b: two dearer jobs.
    let cand = |k: usize, cost: u64, protected: bool| preempt::Candidate {
        job: jobs[k].0,
        priority: 0,
        preemptible: true,
        protected,
        cost,
    };
    let candidates = vec![
        cand(0, 10, false),
        cand(1, 20, true),
        cand(2, 100, false),
        cand(3, 200, false),
    ];
    let plan = preempt::plan(&c, &req(gpus(2)), 5, &candidates, &profile, |_| false).unwrap();
    assert_eq!(plan.node.as_str(), "b", "a's protected job blocks a");
    assert_eq!(plan.cost, 300);
    // One GPU: the cheapest single victim, on a.
    let plan = preempt::plan(&c, &req(gpus(1)), 5, &candidates, &profile, |_| false).unwrap();
    assert_eq!(plan.victims, vec![jobs[0].0]);
    // Equal or higher priority is never preempted.
    assert!(preempt::plan(&c, &req(gpus(1)), 0, &candidates, &profile, |_| false).is_none());
}

#[test]
fn a_gang_allowed_to_spread_goes_on_as_few_nodes_as_possible() {
    let mut c = Cluster::new();
    c.upsert_node(node("a", 4, None));
    c.upsert_node(node("b", 2, None));
    c.upsert_node(node("c", 4, None));
    let mut placer = Placer::new(Profile::new(Policy::Allot, 1));
    let mut r = req(gpus(6));
    // Not allowed to spread: no single node has six.
    let err = placer.place_job(&c, &r, |_, _| None).unwrap_err();
    assert!(!err.is_resolvable(), "{err}");
    r.spread = true;
    let parts = placer.place_job(&c, &r, |_, _| None).unwrap();
    let mut shape: Vec<(String, usize)> = parts
        .iter()
        .map(|p| (p.node.to_string(), p.devices.len()))
        .collect();
    shape.sort();
    assert_eq!(shape.iter().map(|s| s.1).sum::<usize>(), 6);
    assert_eq!(parts.len(), 2, "two 4-GPU nodes suffice: {shape:?}");
    assert!(parts.iter().all(|p| p.node.as_str() != "b"));
    for p in &parts {
        c.allocate(JobId::new_v7(), p).unwrap();
    }
    // With 4 GPUs left in all, a spread gang of 5 waits (busy, not impossible).
    let mut five = req(gpus(5));
    five.spread = true;
    let err = placer.place_job(&c, &five, |_, _| None).unwrap_err();
    assert!(err.is_resolvable(), "{err}");
    assert!(err.rejections.contains_key(&Rejection::GpusBusy), "{err:?}");
    // One that fits on one node stays on one node.
    let mut two = req(gpus(2));
    two.spread = true;
    assert_eq!(placer.place_job(&c, &two, |_, _| None).unwrap().len(), 1);
}
