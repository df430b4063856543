//! The dependency graph: an edge from each job a pending job waits on to
//! that job (petgraph's `DiGraphMap`), and the final states of ended jobs
//! that someone still waits on. Rebuilt from the jobs' specs at start, so
//! it survives restarts with them.

use std::collections::HashMap;

use petgraph::Direction;
use petgraph::algo::has_path_connecting;
use petgraph::graphmap::DiGraphMap;

use crate::domain::dependency::Dependency;
use crate::domain::{JobId, JobState};

#[derive(Debug, Default)]
pub struct DependencyGraph {
    graph: DiGraphMap<JobId, ()>,
    /// Final states of ended jobs with dependants.
    ended: HashMap<JobId, JobState>,
}

impl DependencyGraph {
    /// Whether making `dependant` wait on `dependency`'s jobs would close a
    /// cycle; the first job it would go through, if so.
    pub fn cycle(&self, dependant: JobId, dependency: &Dependency) -> Option<JobId> {
        dependency.jobs().copied().find(|on| {
            *on == dependant
                || (self.graph.contains_node(dependant)
                    && self.graph.contains_node(*on)
                    && has_path_connecting(&self.graph, dependant, *on, None))
        })
    }

    /// Records that `dependant` waits on the jobs `dependency` names.
    pub fn add(&mut self, dependant: JobId, dependency: &Dependency) {
        for on in dependency.jobs() {
            self.graph.add_edge(*on, dependant, ());
        }
    }

    /// A job that someone waits on ended in `state`.
    pub fn ended(&mut self, id: JobId, state: JobState) {
        if self
            .graph
            .neighbors_directed(id, Direction::Outgoing)
            .next()
            .is_some()
        {
            self.ended.insert(id, state);
        }
    }

    /// A job is back in the queue (requeued): it is not ended any more.
    pub fn reopened(&mut self, id: JobId) {
        self.ended.remove(&id);
    }

    /// A dependant no longer waits (it started or ended): its edges go, and
    /// ended jobs nobody waits on any more are forgotten.
    pub fn done_waiting(&mut self, dependant: JobId) {
        let on: Vec<JobId> = self
            .graph
            .neighbors_directed(dependant, Direction::Incoming)
            .collect();
        for o in &on {
            self.graph.remove_edge(*o, dependant);
        }
        for o in on.into_iter().chain(std::iter::once(dependant)) {
            if self.graph.contains_node(o)
                && self.graph.edges_directed(o, Direction::Incoming).next().is_none()
                && self.graph.edges_directed(o, Direction::Outgoing).next().is_none()
            {
                self.graph.remove_node(o);
                self.ended.remove(&o);
            }
        }
    }

    /// The final state of an ended job someone waits on.
    pub fn ended_state(&self, id: &JobId) -> Option<JobState> {
        self.ended.get(id).copied()
    }

    /// Jobs that wait on `id`.
    #[cfg(test)]
    pub fn dependants(&self, id: JobId) -> impl Iterator<Item = JobId> + '_ {
        self.graph.neighbors_directed(id, Direction::Outgoing)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0 && self.ended.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(ids: &[JobId]) -> Dependency {
        ids.iter()
            .map(|i| format!("afterany:{i}"))
            .collect::<Vec<_>>()
            .join(",")
            .parse()
            .unwrap()
    }

    #[test]
    fn cycles_are_found_and_a_finished_wait_leaves_nothing_behind() {
        let (a, b, c) = (JobId::new_v7(), JobId::new_v7(), JobId::new_v7());
        let mut g = DependencyGraph::default();
        g.add(b, &on(&[a]));
        g.add(c, &on(&[b]));
        assert_eq!(g.cycle(a, &on(&[c])), Some(c), "a → b → c → a");
        assert_eq!(g.cycle(a, &on(&[a])), Some(a), "on itself");
        assert_eq!(g.cycle(c, &on(&[a])), None, "c on a again is no cycle");
        assert_eq!(g.dependants(a).collect::<Vec<_>>(), vec![b]);
        g.ended(a, JobState::Succeeded);
        g.ended(c, JobState::Failed);
        assert_eq!(g.ended_state(&a), Some(JobState::Succeeded));
        assert_eq!(g.ended_state(&c), None, "nobody waits on c");
        g.reopened(a);
        assert_eq!(g.ended_state(&a), None);
        g.done_waiting(c);
        g.done_waiting(b);
        assert!(g.is_empty(), "{g:?}");
    }
}
