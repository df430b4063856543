//! Preempting jobs and the nodes they are emptying.
//!
//! A pending job that preempts *nominates* a node: while its victims stop,
//! the node is reserved for it, and placement rejects it for every other
//! job of the same or lower priority (or the preemptor would find it full
//! again).

use std::collections::HashMap;

use crate::domain::{JobId, NodeName};

/// A pending job making room for itself: the victims it is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nomination {
    pub node: NodeName,
    pub priority: i32,
    pub victims: Vec<JobId>,
}

/// The nominations of pending jobs, by preemptor, with the reservation
/// they put on their node kept beside them (so that a placement pass asks
/// "is this node reserved against this job" without building a map).
#[derive(Debug, Default)]
pub struct Nominations {
    by_job: HashMap<JobId, Nomination>,
    /// Node → the preemptors emptying it, with their priorities.
    by_node: HashMap<NodeName, Vec<(JobId, i32)>>,
}

impl Nominations {
    pub fn get(&self, job: &JobId) -> Option<&Nomination> {
        self.by_job.get(job)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_job.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_job.is_empty()
    }

    /// Records (or replaces) `job`'s nomination.
    pub fn insert(&mut self, job: JobId, nomination: Nomination) {
        self.remove(&job);
        self.by_node
            .entry(nomination.node.clone())
            .or_default()
            .push((job, nomination.priority));
        self.by_job.insert(job, nomination);
    }

    /// Drops `job`'s nomination (it was placed, ended or plans afresh): its
    /// node is no longer reserved for it.
    pub fn remove(&mut self, job: &JobId) -> Option<Nomination> {
        let n = self.by_job.remove(job)?;
        if let Some(list) = self.by_node.get_mut(&n.node) {
            list.retain(|(j, _)| j != job);
            if list.is_empty() {
                self.by_node.remove(&n.node);
            }
        }
        Some(n)
    }

    /// A victim is gone (stopped, ended or lost): one fewer for `by` to
    /// wait for.
    pub fn victim_gone(&mut self, by: &JobId, victim: JobId) {
        if let Some(n) = self.by_job.get_mut(by) {
            n.victims.retain(|v| *v != victim);
        }
    }

    /// Adds a victim to `by`'s nomination, creating it on `node` (rebuilding
    /// nominations from the ledger at start-up).
    pub fn add_victim(&mut self, by: JobId, node: NodeName, priority: i32, victim: JobId) {
        if !self.by_job.contains_key(&by) {
            self.insert(
                by,
                Nomination {
                    node,
                    priority,
                    victims: Vec::new(),
                },
            );
        }
        self.by_job.get_mut(&by).expect("just made").victims.push(victim);
    }

    /// Whether `node` is being emptied for a preemptor other than `job`.
    pub fn taken_by_other(&self, node: &NodeName, job: JobId) -> bool {
        self.by_node
            .get(node)
            .is_some_and(|list| list.iter().any(|(j, _)| *j != job))
    }

    /// Whether `node` is reserved against `job` of `priority`: another
    /// preemptor of at least that priority is emptying it.
    pub fn reserved_against(&self, node: &NodeName, job: JobId, priority: i32) -> bool {
        self.by_node
            .get(node)
            .is_some_and(|list| list.iter().any(|&(j, p)| j != job && p >= priority))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeName {
        n.parse().unwrap()
    }

    #[test]
    fn a_reservation_follows_its_nomination_in_and_out() {
        let mut ns = Nominations::default();
        let (a, b, v) = (JobId::new_v7(), JobId::new_v7(), JobId::new_v7());
        ns.insert(
            a,
            Nomination {
                node: node("n1"),
                priority: 5,
                victims: vec![v],
            },
        );
        assert!(
            ns.reserved_against(&node("n1"), b, 5),
            "same priority is held off"
        );
        assert!(ns.reserved_against(&node("n1"), b, 4));
        assert!(!ns.reserved_against(&node("n1"), b, 6), "higher priority is not");
        assert!(
            !ns.reserved_against(&node("n1"), a, 0),
            "never against its own preemptor"
        );
        assert!(!ns.reserved_against(&node("n2"), b, 0));
        assert!(ns.taken_by_other(&node("n1"), b) && !ns.taken_by_other(&node("n1"), a));
        // Re-nominating elsewhere moves the reservation.
        ns.insert(
            a,
            Nomination {
                node: node("n2"),
                priority: 5,
                victims: vec![],
            },
        );
        assert!(!ns.reserved_against(&node("n1"), b, 0));
        assert!(ns.reserved_against(&node("n2"), b, 0));
        ns.victim_gone(&a, v);
        assert_eq!(ns.remove(&a).map(|n| n.node), Some(node("n2")));
        assert!(!ns.reserved_against(&node("n2"), b, 0) && ns.is_empty());
    }

    #[test]
    fn victims_gather_under_one_nomination_at_start_up() {
        let mut ns = Nominations::default();
        let (p, v1, v2) = (JobId::new_v7(), JobId::new_v7(), JobId::new_v7());
        ns.add_victim(p, node("n1"), 3, v1);
        ns.add_victim(p, node("n1"), 3, v2);
        assert_eq!(ns.get(&p).unwrap().victims, vec![v1, v2]);
        ns.victim_gone(&p, v1);
        assert_eq!(ns.get(&p).unwrap().victims, vec![v2]);
        assert_eq!(ns.len(), 1);
    }
}
