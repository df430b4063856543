//! GPU fragmentation against an expected workload, after Weng et al.,
//! "Beware of Fragmentation" (USENIX ATC '23).
//!
//! A node's fragmentation for one kind of task is the free GPU capacity that
//! task could not use there: all of it if the task cannot run on the node at
//! all (too little CPU, too few GPUs with enough free share, wrong model, or a
//! CPU-only task), otherwise the free share on GPUs too full for it. The
//! node's fragmentation is the expectation over the workload mix. Placing a
//! job where it raises that expectation least keeps room for what comes next.

use std::collections::HashMap;

use super::cluster::{GpuMode, MICRO, Node};
use super::request::Request;
use crate::domain::GpuRequest;

/// One kind of task in the expected workload, with its probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskShape {
    pub cpu: u64,
    pub memory: u64,
    /// Share of each GPU in millionths; 0 for CPU-only tasks.
    pub gpu_micro: u32,
    pub gpus: u32,
    /// Accepted models; empty: any.
    pub models: Vec<String>,
    pub p: f64,
}

/// The expected workload: the most common task shapes and how often each comes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkloadMix {
    tasks: Vec<TaskShape>,
}

type ShapeKey = (u64, u32, u32, Vec<String>);

impl WorkloadMix {
    pub fn new(tasks: Vec<TaskShape>) -> Self {
        WorkloadMix { tasks }
    }

    pub fn tasks(&self) -> &[TaskShape] {
        &self.tasks
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// FGD's "typical pods": shapes (CPU, GPU share, GPU count, models) by
    /// popularity, most popular first (ties: larger shape first), taken until
    /// they cover `coverage_pct` percent of the requests, then renormalised.
    /// MIG requests are left out (their slices are not fragmentable shares).
    pub fn from_requests<'a>(reqs: impl IntoIterator<Item = &'a Request>, coverage_pct: u32) -> Self {
        let mut counts: HashMap<ShapeKey, (u64, u64)> = HashMap::new();
        let mut total: u64 = 0;
        for r in reqs {
            if matches!(r.gpu, GpuRequest::Mig(_)) {
                continue;
            }
            let (micro, n) = r.gpu_micro();
            let mut models = r.gpu_models.clone();
            models.sort();
            let e = counts.entry((r.cpu.0, micro, n, models)).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(r.memory.0);
            total += 1;
        }
        let mut shapes: Vec<(ShapeKey, (u64, u64))> = counts.into_iter().collect();
        shapes.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| b.0.cmp(&a.0)));
        let need = total as f64 * coverage_pct as f64 / 100.0;
        let mut kept = Vec::new();
        let mut covered: u64 = 0;
        for (key, (count, memory)) in shapes {
            if covered as f64 >= need {
                break;
            }
            covered += count;
            kept.push((key, count, memory));
        }
        let tasks = kept
            .into_iter()
            .map(|((cpu, gpu_micro, gpus, models), count, memory)| TaskShape {
                cpu,
                memory,
                gpu_micro,
                gpus,
                models,
                p: count as f64 / covered.max(1) as f64,
            })
            .collect();
        WorkloadMix { tasks }
    }
}

/// What fragmentation reads of a node: free share per whole-mode GPU (with
/// its model), free CPU and memory. Small and copied, so a candidate
/// placement can be evaluated on a scratch copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragState {
    pub cpu_left: u64,
    pub memory_left: u64,
    pub free: Vec<u32>,
    /// Index into `models` per GPU.
    pub model: Vec<u16>,
    pub models: Vec<String>,
}

impl FragState {
    pub fn of(node: &Node) -> FragState {
        let mut models: Vec<String> = Vec::new();
        let mut free = Vec::with_capacity(node.inventory.gpus.len());
        let mut model = Vec::with_capacity(node.inventory.gpus.len());
        for g in &node.inventory.gpus {
            if let GpuMode::Mig { .. } = g.mode {
                continue;
            }
            let m = match models.iter().position(|x| x == &g.model) {
                Some(i) => i,
                None => {
                    models.push(g.model.clone());
                    models.len() - 1
                }
            };
            free.push(g.free_micro());
            model.push(m as u16);
        }
        FragState {
            cpu_left: node.free_cpu().0,
            memory_left: node.free_memory().0,
            free,
            model,
            models,
        }
    }

    pub fn idle(&self) -> u64 {
        self.free.iter().map(|&f| f as u64).sum()
    }

    fn accepts(&self, task: &TaskShape, gpu: usize) -> bool {
        task.models.is_empty()
            || task
                .models
                .iter()
                .any(|m| *m == self.models[self.model[gpu] as usize])
    }

    /// The free share (millionths) task `t` could not use on this node.
    pub fn task_frag(&self, t: &TaskShape, memory_aware: bool) -> u64 {
        let idle = self.idle();
        if t.gpus == 0 {
            return idle;
        }
        let mut fit = 0u32;
        let mut stranded = 0u64;
        for (g, &f) in self.free.iter().enumerate() {
            if f >= t.gpu_micro && self.accepts(t, g) {
                fit += 1;
            } else {
                stranded += f as u64;
            }
        }
        let resources_ok = self.cpu_left >= t.cpu && (!memory_aware || self.memory_left >= t.memory);
        if fit >= t.gpus && resources_ok {
            stranded
        } else {
            idle
        }
    }

    /// Expected fragmentation under the mix, in millionths of a GPU.
    pub fn frag(&self, mix: &WorkloadMix, memory_aware: bool) -> f64 {
        if self.free.is_empty() {
            return 0.0;
        }
        mix.tasks()
            .iter()
            .map(|t| t.p * self.task_frag(t, memory_aware) as f64)
            .sum()
    }
}

/// Cluster-wide fragmentation: (Σ node fragmentation, Σ idle), in millionths.
/// The fragmentation rate is their ratio.
pub fn cluster_frag(nodes: &[Node], mix: &WorkloadMix) -> (f64, u64) {
    nodes.iter().fold((0.0, 0u64), |(f, idle), n| {
        let s = FragState::of(n);
        (f + s.frag(mix, false), idle + s.idle())
    })
}

/// Free share of one GPU unit, for readability in tests and callers.
pub const ONE_GPU: u32 = MICRO;
