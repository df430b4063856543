//! What is told once a turn is durable: today, the watchers of job changes
//! (`WatchJob`, the API's event streams); metrics and alerts are the next
//! observers. Nothing here runs before the flush that covers the change,
//! and nothing here can change the engine's state.

use tokio::sync::broadcast;

use super::JobEvent;

/// One more party told of each durable job change, in the order the
/// changes were made. It runs on the engine's task: it must not block.
pub trait Observer: Send {
    fn job_changed(&mut self, event: &JobEvent);
}

/// Everyone told of durable changes: the watch streams (a broadcast
/// channel; a slow subscriber loses the oldest events, never slows the
/// engine) and any further [`Observer`]s.
pub struct Observers {
    watchers: broadcast::Sender<JobEvent>,
    others: Vec<Box<dyn Observer>>,
}

impl Observers {
    pub fn new(watchers: broadcast::Sender<JobEvent>) -> Observers {
        Observers {
            watchers,
            others: Vec::new(),
        }
    }

    /// Adds an observer, told after every one added before it.
    #[cfg(test)]
    pub fn add(&mut self, observer: Box<dyn Observer>) {
        self.others.push(observer);
    }

    /// A job's change is durable: tell everyone.
    pub fn job_changed(&mut self, event: JobEvent) {
        for o in &mut self.others {
            o.job_changed(&event);
        }
        let _ = self.watchers.send(event);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::domain::{Job, JobId, UnixMillis};

    struct Seen(Arc<Mutex<Vec<JobId>>>);

    impl Observer for Seen {
        fn job_changed(&mut self, event: &JobEvent) {
            self.0.lock().unwrap().push(event.job.id);
        }
    }

    #[test]
    fn every_observer_and_every_watcher_hears_each_change_in_order() {
        let (tx, mut rx) = broadcast::channel(8);
        let mut observers = Observers::new(tx);
        let seen = Arc::new(Mutex::new(Vec::new()));
        observers.add(Box::new(Seen(seen.clone())));
        let (a, b) = (JobId::new_v7(), JobId::new_v7());
        for id in [a, b] {
            observers.job_changed(JobEvent {
                job: Job::for_tests(id),
                at: UnixMillis(1),
            });
        }
        assert_eq!(*seen.lock().unwrap(), vec![a, b]);
        assert_eq!(rx.try_recv().unwrap().job.id, a);
        assert_eq!(rx.try_recv().unwrap().job.id, b);
        // Without watchers the change is still told to the others.
        drop(rx);
        observers.job_changed(JobEvent {
            job: Job::for_tests(a),
            at: UnixMillis(2),
        });
        assert_eq!(seen.lock().unwrap().len(), 3);
    }
}
