//! Where pending jobs stand with their tenant's quota plugin, and when an
//! answer stops standing.
//!
//! The engine asks a quota plugin off its loop and places a job only on an
//! answer that still stands. Quota answers are taken to be monotone in
//! what the tenant holds (a job allowed at some holdings would be allowed at
//! smaller ones; one held at some holdings would be held at larger ones):
//! that is what "a cap" means, and it is what lets an answer outlive a
//! change of holdings in one direction.
//!
//! **Jobs allowed ahead count as held.** An ask about a job counts the
//! tenant's other jobs that the plugin has allowed, or is being asked about,
//! and that are not placed yet, as if they were placed: the scheduler places
//! them next. So one round of answers covers many placements: a tenant with
//! ten pending jobs and a cap of eight gets eight allows and two holds at
//! once, and the eight are placed in one pass, instead of one placement per
//! round trip to the plugin. What the ask counted is the answer's
//! *assumption*, and it decides how long the answer stands:
//!
//! - **allow** stands until a job of the tenant it did not count is placed
//!   (its holdings grew past what the plugin saw);
//! - **hold** stands until the tenant's holdings shrink (a job released its
//!   devices), a job it counted leaves (cancelled, ended), or a new period
//!   begins; without any of those it is asked again only after a back-off,
//!   per job: [`FRESH`], doubling with every hold in a row, at most
//!   [`MAX_BACKOFF`], give or take a fifth (so that held jobs do not come
//!   back in step). A job it counted that is held or denied itself makes
//!   it stale once: the job is asked again at once, counting only the jobs
//!   allowed, not those being asked about (counting those would have held
//!   jobs make one another's answers stale in turn, without end: the storm
//!   of issue 12);
//! - **deny** with nothing counted is final; a deny that counted jobs not
//!   placed yet only holds the job until one of them is placed or leaves,
//!   and is asked again then, so that no job is failed for a holding that
//!   never came.
//!
//! An allow is also asked again after [`FRESH`], since time alone changes
//! the period's GPU-hours and spend.

use std::collections::{BTreeSet, HashMap};

use crate::domain::{JobId, Millis, TenantName, UnixMillis};
use crate::policy::types::QuotaDecision;

/// How long an allow stands at most before it is asked again, and the
/// first back-off of a hold.
pub const FRESH: Millis = Millis::from_secs(5);

/// The longest a hold waits before it is asked again without a change.
pub const MAX_BACKOFF: Millis = Millis::from_secs(300);

/// When a job held `holds` times in a row is asked again: [`FRESH`] ×
/// 2^(holds - 1), at most [`MAX_BACKOFF`], ± a fifth by a hash of the job
/// (deterministic: the engine replays the same decisions).
pub fn backoff(job: JobId, holds: u32) -> Millis {
    let base = FRESH
        .0
        .saturating_mul(1u64 << holds.saturating_sub(1).min(20))
        .min(MAX_BACKOFF.0);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in job.as_bytes().iter().chain(&holds.to_le_bytes()) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    // 0.8 to 1.2 of the base.
    Millis(base * (800 + h % 401) / 1000)
}

/// The most jobs allowed ahead that one ask counts as held.
pub const MAX_COUNTED: usize = 128;

/// One ask about one pending job, and its answer once it came.
struct Ask {
    /// Tells this ask apart from earlier ones about the same job.
    id: u64,
    tenant: TenantName,
    /// The tenant's jobs allowed or being asked about, not placed yet, that
    /// the ask counted as held.
    assumed: Vec<JobId>,
    answer: Option<Answer>,
    /// Since the ask, a job of the tenant it did not count was placed.
    grew_beyond: bool,
    /// Since the ask, the tenant's holdings shrank, or a job it counted left
    /// (cancelled, ended; not: held).
    shrank: bool,
    /// Since the ask, a job it counted was held or denied itself: a hold
    /// or deny of this ask saw more than there is. The job is asked again,
    /// counting only jobs allowed (not those being asked about), so that
    /// re-asks cannot make one another stale in turn.
    counted_held: bool,
    /// Since the ask, a job it counted was placed.
    settled: bool,
    /// Holds (and denies counting unplaced jobs) in a row for this job,
    /// this ask's included once answered: its back-off.
    holds: u32,
}

struct Answer {
    decision: QuotaDecision,
    by: String,
    at: UnixMillis,
    /// A hold is asked again then, without a change before.
    retry_at: UnixMillis,
}

impl Ask {
    /// Whether `decision`, given for this ask, still stands.
    fn stands(&self, decision: &QuotaDecision) -> bool {
        match decision {
            QuotaDecision::Allow => !self.grew_beyond,
            QuotaDecision::Hold(_) => !(self.shrank || self.counted_held),
            QuotaDecision::Deny(_) => {
                self.assumed.is_empty() || !(self.shrank || self.settled || self.counted_held)
            }
        }
    }

    /// Whether the job counts as held in other asks: being asked about, or
    /// allowed (an allow that no longer stands is asked again at once).
    fn outstanding(&self) -> bool {
        self.answer
            .as_ref()
            .is_none_or(|a| a.decision == QuotaDecision::Allow)
    }

    fn allowed(&self) -> bool {
        self.answer
            .as_ref()
            .is_some_and(|a| a.decision == QuotaDecision::Allow)
    }
}

/// What the quota gate knows about a job.
#[derive(Debug, PartialEq, Eq)]
pub enum QuotaStanding<'a> {
    /// Nothing, or an answer too old or no longer standing: ask.
    Unknown,
    /// Asked; the answer has not come.
    Asking,
    Allowed,
    /// Allowed, counting a job the plugin is still being asked about: placed
    /// after that job's answer, so that the answers are used in the order
    /// they were asked and none of them is overtaken by a placement it did
    /// not count.
    AfterEarlier,
    Held {
        by: &'a str,
        reason: &'a str,
    },
    Denied {
        by: &'a str,
        reason: &'a str,
    },
    /// Denied, counting `counted` jobs not placed yet: held until one of them
    /// is placed or leaves, then asked again.
    DeniedIfTheyStart {
        by: &'a str,
        reason: &'a str,
        counted: usize,
    },
}

/// The pending jobs of tenants with a quota plugin, and their asks.
#[derive(Default)]
pub struct QuotaBook {
    asks: HashMap<JobId, Ask>,
    /// The jobs of each tenant in `asks`, oldest first.
    by_tenant: HashMap<TenantName, BTreeSet<JobId>>,
    next_ask: u64,
}

impl QuotaBook {
    pub fn standing(&self, job: JobId, now: UnixMillis) -> QuotaStanding<'_> {
        let Some(ask) = self.asks.get(&job) else {
            return QuotaStanding::Unknown;
        };
        let Some(answer) = &ask.answer else {
            return QuotaStanding::Asking;
        };
        let waits = matches!(answer.decision, QuotaDecision::Hold(_))
            || matches!(answer.decision, QuotaDecision::Deny(_)) && !ask.assumed.is_empty();
        let expired = if waits {
            now >= answer.retry_at || answer.at.month_start() != now.month_start()
        } else {
            now.since(answer.at) >= FRESH
        };
        if expired || answer.at > now || !ask.stands(&answer.decision) {
            return QuotaStanding::Unknown;
        }
        match &answer.decision {
            QuotaDecision::Allow
                if ask
                    .assumed
                    .iter()
                    .any(|j| self.asks.get(j).is_some_and(|a| a.answer.is_none())) =>
            {
                QuotaStanding::AfterEarlier
            }
            QuotaDecision::Allow => QuotaStanding::Allowed,
            QuotaDecision::Hold(reason) => QuotaStanding::Held {
                by: &answer.by,
                reason,
            },
            QuotaDecision::Deny(reason) if ask.assumed.is_empty() => QuotaStanding::Denied {
                by: &answer.by,
                reason,
            },
            QuotaDecision::Deny(reason) => QuotaStanding::DeniedIfTheyStart {
                by: &answer.by,
                reason,
                counted: ask.assumed.len(),
            },
        }
    }

    /// The tenant's jobs, other than `job`, that an ask about `job` counts
    /// as held: those allowed or being asked about, not placed yet; the
    /// [`MAX_COUNTED`] oldest of them. (Counting fewer is safe: an allow
    /// falls when a job it did not count is placed, and a hold given for
    /// less than is held would be given for more.)
    ///
    /// A job asked again because a job its last ask counted was held counts
    /// only the jobs allowed: a job being asked about may be held too, and
    /// that would make this answer stale again, and so on.
    pub fn outstanding(&self, tenant: &TenantName, job: JobId) -> Vec<JobId> {
        let allowed_only = self.asks.get(&job).is_some_and(|a| a.counted_held);
        self.of(tenant)
            .filter(|j| {
                *j != job
                    && if allowed_only {
                        self.asks[j].allowed()
                    } else {
                        self.asks[j].outstanding()
                    }
            })
            .take(MAX_COUNTED)
            .collect()
    }

    /// The jobs of `tenant` with an ask, oldest first.
    fn of(&self, tenant: &TenantName) -> impl Iterator<Item = JobId> + '_ {
        self.by_tenant.get(tenant).into_iter().flatten().copied()
    }

    /// Calls `f` on each ask about one of `tenant`'s jobs.
    fn for_tenant(&mut self, tenant: &TenantName, mut f: impl FnMut(&mut Ask)) {
        let Some(jobs) = self.by_tenant.get(tenant) else {
            return;
        };
        for j in jobs {
            if let Some(ask) = self.asks.get_mut(j) {
                f(ask);
            }
        }
    }

    fn remove(&mut self, job: JobId) -> Option<Ask> {
        let ask = self.asks.remove(&job)?;
        if let Some(jobs) = self.by_tenant.get_mut(&ask.tenant) {
            jobs.remove(&job);
            if jobs.is_empty() {
                self.by_tenant.remove(&ask.tenant);
            }
        }
        Some(ask)
    }

    /// Records that the plugin is being asked about `job`, counting
    /// `assumed` as held; replaces an earlier ask. Returns the ask's id,
    /// which its answer must name.
    pub fn asking(&mut self, job: JobId, tenant: TenantName, assumed: Vec<JobId>) -> u64 {
        self.next_ask += 1;
        self.by_tenant.entry(tenant.clone()).or_default().insert(job);
        // The back-off carries over, unless what it waited for changed.
        let holds = self.asks.get(&job).filter(|a| !a.shrank).map_or(0, |a| a.holds);
        self.asks.insert(
            job,
            Ask {
                id: self.next_ask,
                tenant,
                assumed,
                answer: None,
                grew_beyond: false,
                shrank: false,
                counted_held: false,
                settled: false,
                holds,
            },
        );
        self.next_ask
    }

    /// The plugin answered ask `ask` about `job`; an answer to an ask that
    /// was replaced, or about a job no longer waiting, is ignored. An answer
    /// about holdings that changed the wrong way since the ask does not
    /// stand, and the job is asked again. Returns whether it stands.
    pub fn answered(
        &mut self,
        job: JobId,
        ask: u64,
        decision: QuotaDecision,
        by: String,
        at: UnixMillis,
    ) -> bool {
        let Some(entry) = self
            .asks
            .get_mut(&job)
            .filter(|a| a.id == ask && a.answer.is_none())
        else {
            return false;
        };
        let stands = entry.stands(&decision);
        let waits = matches!(decision, QuotaDecision::Hold(_))
            || matches!(decision, QuotaDecision::Deny(_)) && !entry.assumed.is_empty();
        entry.holds = if waits { entry.holds + 1 } else { 0 };
        let retry_at = at.plus(backoff(job, entry.holds.max(1)));
        let allowed = decision == QuotaDecision::Allow;
        let tenant = entry.tenant.clone();
        entry.answer = Some(Answer {
            decision,
            by,
            at,
            retry_at,
        });
        if !allowed {
            self.for_tenant(&tenant, |ask| {
                if ask.assumed.contains(&job) {
                    ask.counted_held = true;
                }
            });
        }
        stands
    }

    /// `job` of `tenant` was placed: its holdings grew.
    pub fn placed(&mut self, tenant: &TenantName, job: JobId) {
        self.remove(job);
        self.for_tenant(tenant, |ask| {
            if ask.assumed.contains(&job) {
                ask.settled = true;
            } else {
                ask.grew_beyond = true;
            }
        });
    }

    /// A job of `tenant` released its devices: its holdings shrank.
    pub fn released(&mut self, tenant: &TenantName) {
        self.for_tenant(tenant, |ask| ask.shrank = true);
    }

    /// `job` no longer waits for the plugin (it ended, or its tenant's
    /// plugin was unbound): it leaves, unplaced, and the asks that counted it
    /// saw more than there is.
    pub fn forget(&mut self, job: JobId) {
        if let Some(ask) = self.remove(job)
            && ask.outstanding()
        {
            self.left(&ask.tenant, job);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.asks.len()
    }

    /// A job that other asks counted as held will not be placed: they saw
    /// more than there is.
    fn left(&mut self, tenant: &TenantName, job: JobId) {
        self.for_tenant(tenant, |ask| {
            if ask.assumed.contains(&job) {
                ask.shrank = true;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobId {
        JobId::new_v7()
    }

    fn acme() -> TenantName {
        "acme".parse().unwrap()
    }

    const NOW: UnixMillis = UnixMillis(1_000_000);

    fn hold() -> QuotaDecision {
        QuotaDecision::Hold("at its cap".into())
    }

    /// Asks about `j` counting what is outstanding, and answers at once.
    fn ask_and_answer(book: &mut QuotaBook, j: JobId, decision: QuotaDecision) -> Vec<JobId> {
        let assumed = book.outstanding(&acme(), j);
        let ask = book.asking(j, acme(), assumed.clone());
        assert!(book.answered(j, ask, decision, "acme/caps".into(), NOW));
        assumed
    }

    #[test]
    fn one_round_of_allows_covers_every_placement_it_counted() {
        let mut book = QuotaBook::default();
        let jobs: Vec<JobId> = (0..4).map(|_| job()).collect();
        for (k, j) in jobs.iter().enumerate() {
            let counted = ask_and_answer(&mut book, *j, QuotaDecision::Allow);
            assert_eq!(counted.len(), k, "each ask counts the allows before it");
        }
        for j in &jobs {
            assert_eq!(book.standing(*j, NOW), QuotaStanding::Allowed);
            book.placed(&acme(), *j);
        }
        assert_eq!(book.len(), 0);
    }

    #[test]
    fn an_allow_waits_for_the_answers_it_counted_on() {
        let mut book = QuotaBook::default();
        let (first, second) = (job(), job());
        let first_ask = book.asking(first, acme(), vec![]);
        let counted = book.outstanding(&acme(), second);
        let ask = book.asking(second, acme(), counted);
        assert!(book.answered(second, ask, QuotaDecision::Allow, "p".into(), NOW));
        // Placing `second` now would overtake `first`, whose answer did not
        // count it.
        assert_eq!(book.standing(second, NOW), QuotaStanding::AfterEarlier);
        assert!(book.answered(first, first_ask, QuotaDecision::Allow, "p".into(), NOW));
        assert_eq!(book.standing(second, NOW), QuotaStanding::Allowed);
        assert_eq!(book.standing(first, NOW), QuotaStanding::Allowed);
    }

    #[test]
    fn an_ask_counts_at_most_the_oldest_outstanding_jobs() {
        let mut book = QuotaBook::default();
        let jobs: Vec<JobId> = (0..MAX_COUNTED + 10).map(|_| job()).collect();
        for j in &jobs {
            book.asking(*j, acme(), vec![]);
        }
        let counted = book.outstanding(&acme(), job());
        assert_eq!(counted, jobs[..MAX_COUNTED].to_vec());
    }

    #[test]
    fn an_allow_falls_when_a_job_it_did_not_count_is_placed() {
        let mut book = QuotaBook::default();
        let (a, b) = (job(), job());
        // b is asked about first and counts nothing; a counts b.
        ask_and_answer(&mut book, b, QuotaDecision::Allow);
        ask_and_answer(&mut book, a, QuotaDecision::Allow);
        book.placed(&acme(), a);
        assert_eq!(
            book.standing(b, NOW),
            QuotaStanding::Unknown,
            "a grew holdings past what b's answer saw"
        );
        // Asked again, b counts nothing outstanding (a is placed).
        assert!(book.outstanding(&acme(), b).is_empty());
        // Another tenant's placement changes nothing.
        let c = job();
        ask_and_answer(&mut book, c, QuotaDecision::Allow);
        book.placed(&"globex".parse().unwrap(), job());
        assert_eq!(book.standing(c, NOW), QuotaStanding::Allowed);
    }

    #[test]
    fn a_hold_stands_until_holdings_shrink_or_a_job_it_counted_leaves() {
        let mut book = QuotaBook::default();
        let (allowed, held) = (job(), job());
        ask_and_answer(&mut book, allowed, QuotaDecision::Allow);
        assert_eq!(ask_and_answer(&mut book, held, hold()), vec![allowed]);
        // More held: still held.
        book.placed(&acme(), allowed);
        assert!(matches!(book.standing(held, NOW), QuotaStanding::Held { .. }));
        book.released(&acme());
        assert_eq!(book.standing(held, NOW), QuotaStanding::Unknown);

        // A hold that counted a job which then leaves unplaced.
        let mut book = QuotaBook::default();
        let (allowed, held) = (job(), job());
        ask_and_answer(&mut book, allowed, QuotaDecision::Allow);
        ask_and_answer(&mut book, held, hold());
        book.forget(allowed);
        assert_eq!(book.standing(held, NOW), QuotaStanding::Unknown);

        // (One that the plugin holds too: see
        // a_hold_counting_a_job_held_in_turn_is_asked_again_once.)
    }

    /// A hold that counted a job being asked about, which was then held
    /// itself, saw more than there is: asked again at once, counting only
    /// the jobs allowed, and that answer stands however the others end.
    #[test]
    fn a_hold_counting_a_job_held_in_turn_is_asked_again_once() {
        let mut book = QuotaBook::default();
        let (allowed, big, small) = (job(), job(), job());
        ask_and_answer(&mut book, allowed, QuotaDecision::Allow);
        // big and small asked together: small counts big, being asked.
        let big_ask = book.asking(big, acme(), book.outstanding(&acme(), big));
        let counted = book.outstanding(&acme(), small);
        assert_eq!(counted, vec![allowed, big]);
        let small_ask = book.asking(small, acme(), counted);
        assert!(book.answered(small, small_ask, hold(), "p".into(), NOW));
        assert!(book.answered(big, big_ask, hold(), "p".into(), NOW));
        // big will not be placed: small's hold counted it.
        assert_eq!(book.standing(small, NOW), QuotaStanding::Unknown);
        assert!(matches!(book.standing(big, NOW), QuotaStanding::Held { .. }));
        // Asked again, small counts only the allowed job, and its answer
        // stands even when a job asked at the same time is held.
        assert_eq!(book.outstanding(&acme(), small), vec![allowed]);
        let other = job();
        let other_ask = book.asking(other, acme(), book.outstanding(&acme(), other));
        let small_ask = book.asking(small, acme(), vec![allowed]);
        assert!(book.answered(small, small_ask, hold(), "p".into(), NOW));
        assert!(book.answered(other, other_ask, hold(), "p".into(), NOW));
        assert!(matches!(book.standing(small, NOW), QuotaStanding::Held { .. }));
    }

    /// Regression (issue 12, defect 2): 50 jobs held by a plugin that always
    /// holds were asked ~16,000 times a second. A hold is asked again only
    /// on a change, or after a back-off that doubles with each hold.
    #[test]
    fn held_jobs_are_asked_again_after_a_growing_back_off_not_at_once() {
        let mut book = QuotaBook::default();
        let jobs: Vec<JobId> = (0..50).map(|_| job()).collect();
        let mut asks = 0;
        let mut now = NOW;
        let end = UnixMillis(NOW.0 + 600_000);
        while now < end {
            // A pass: ask every job whose standing is unknown, counting the
            // outstanding ones, and answer hold.
            let mut pending = Vec::new();
            for j in &jobs {
                if book.standing(*j, now) == QuotaStanding::Unknown {
                    let assumed = book.outstanding(&acme(), *j);
                    pending.push((*j, book.asking(*j, acme(), assumed)));
                }
            }
            for (j, ask) in pending {
                asks += 1;
                book.answered(j, ask, hold(), "p".into(), now);
            }
            now = UnixMillis(now.0 + 100);
        }
        // 10 minutes: each job asked at 0, ~5, ~15, ~35, ~75, ~155, ~315 s
        // and so on: about 8 times, not once per pass.
        assert!(asks <= 50 * 9, "{asks} asks in 10 minutes");
        assert!(asks >= 50 * 6, "{asks} asks: held jobs are asked again");
        // A release asks again at once, and starts the back-off over.
        book.released(&acme());
        assert_eq!(book.standing(jobs[0], now), QuotaStanding::Unknown);
        let ask = book.asking(jobs[0], acme(), vec![]);
        book.answered(jobs[0], ask, hold(), "p".into(), now);
        let next = UnixMillis(now.0 + backoff(jobs[0], 1).0);
        assert!(backoff(jobs[0], 1) <= Millis(6_000));
        assert!(matches!(
            book.standing(jobs[0], UnixMillis(next.0 - 1)),
            QuotaStanding::Held { .. }
        ));
        assert_eq!(book.standing(jobs[0], next), QuotaStanding::Unknown);
        // The back-off is jittered and capped.
        assert!(backoff(jobs[0], 30) <= Millis(MAX_BACKOFF.0 * 6 / 5));
        assert_ne!(backoff(jobs[0], 3), backoff(jobs[1], 3));
    }

    #[test]
    fn a_deny_is_final_only_when_it_counted_nothing_unplaced() {
        let mut book = QuotaBook::default();
        let deny = QuotaDecision::Deny("over the month's GPU-hours".into());
        let alone = job();
        ask_and_answer(&mut book, alone, deny.clone());
        assert!(matches!(book.standing(alone, NOW), QuotaStanding::Denied { .. }));
        book.released(&acme());
        assert!(matches!(book.standing(alone, NOW), QuotaStanding::Denied { .. }));

        let (ahead, denied) = (job(), job());
        ask_and_answer(&mut book, ahead, QuotaDecision::Allow);
        ask_and_answer(&mut book, denied, deny);
        assert!(matches!(
            book.standing(denied, NOW),
            QuotaStanding::DeniedIfTheyStart { counted: 1, .. }
        ));
        book.placed(&acme(), ahead);
        assert_eq!(
            book.standing(denied, NOW),
            QuotaStanding::Unknown,
            "asked again with real holdings"
        );
    }

    #[test]
    fn old_answers_and_answers_to_replaced_asks_do_not_stand() {
        let mut book = QuotaBook::default();
        let j = job();
        let first = book.asking(j, acme(), vec![]);
        let second = book.asking(j, acme(), vec![]);
        assert!(!book.answered(j, first, QuotaDecision::Allow, "p".into(), NOW));
        assert_eq!(book.standing(j, NOW), QuotaStanding::Asking);
        assert!(book.answered(j, second, QuotaDecision::Allow, "p".into(), NOW));
        assert!(
            !book.answered(j, second, hold(), "p".into(), NOW),
            "one answer per ask"
        );
        assert_eq!(book.standing(j, NOW), QuotaStanding::Allowed);
        let later = UnixMillis(NOW.0 + FRESH.0);
        assert_eq!(book.standing(j, later), QuotaStanding::Unknown);
        // A job that no longer waits takes no answer.
        book.forget(j);
        assert!(!book.answered(j, second, QuotaDecision::Allow, "p".into(), NOW));
    }
}
