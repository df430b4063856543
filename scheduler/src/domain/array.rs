//! Job arrays in Slurm's syntax (`sbatch --array`): `0-99`, `1,3,5-7`,
//! `0-20:4`, with an optional throttle `%8` (at most 8 tasks at once).
//!
//! An array is one record: its spec, the indices, and how far splitting
//! has gone ([`ArrayProgress`]). A task becomes a job of its own only when
//! it is split off to be placed; its id is derived from the array's
//! ([`JobId::task`]), so `ID_7` names it before and after.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ids::JobId;
use super::job::JobState;
use super::validate::quote;

/// The most tasks any array may have, whatever the server allows
/// (`--max-array-size` is at most this).
pub const ARRAY_HARD_MAX: u64 = 1_000_000;
/// The server's default `--max-array-size` (Slurm's MaxArraySize is 1001).
pub const DEFAULT_MAX_ARRAY_SIZE: u32 = 100_000;
/// The highest task index (Slurm: MaxArraySize - 1; ours: 10⁹).
pub const MAX_INDEX: u32 = 1_000_000_000;

/// A run of indices `start, start+step, …, ≤ end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Run {
    pub start: u32,
    pub end: u32,
    pub step: u32,
}

impl Run {
    fn len(&self) -> u64 {
        u64::from((self.end - self.start) / self.step) + 1
    }

    fn nth(&self, k: u64) -> u32 {
        self.start + (k as u32) * self.step
    }

    fn position(&self, index: u32) -> Option<u64> {
        (index >= self.start && index <= self.end && (index - self.start).is_multiple_of(self.step))
            .then(|| u64::from((index - self.start) / self.step))
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.start == self.end, self.step) {
            (true, _) => write!(f, "{}", self.start),
            (false, 1) => write!(f, "{}-{}", self.start, self.end),
            (false, s) => write!(f, "{}-{}:{s}", self.start, self.end),
        }
    }
}

/// The indices of an array, sorted and distinct, as runs; and its throttle.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArraySpec {
    runs: Vec<Run>,
    /// At most this many tasks at once (`%N`); `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<u32>,
}

impl ArraySpec {
    /// How many tasks.
    pub fn len(&self) -> u64 {
        self.runs.iter().map(Run::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The `k`th index, in order.
    pub fn nth(&self, mut k: u64) -> Option<u32> {
        for run in &self.runs {
            if k < run.len() {
                return Some(run.nth(k));
            }
            k -= run.len();
        }
        None
    }

    /// Where `index` is in the order, if it is one of the array's.
    pub fn position(&self, index: u32) -> Option<u64> {
        let mut before = 0;
        for run in &self.runs {
            if let Some(k) = run.position(index) {
                return Some(before + k);
            }
            before += run.len();
        }
        None
    }

    pub fn first(&self) -> Option<u32> {
        self.runs.first().map(|r| r.start)
    }

    pub fn last(&self) -> Option<u32> {
        self.runs.last().map(|r| r.nth(r.len() - 1))
    }

    /// The indices from position `from` on, less `skip`, in the syntax
    /// (`8-99`), for the folded display of pending tasks.
    pub fn rest(&self, from: u64, skip: &BTreeSet<u32>) -> String {
        let mut runs = Vec::new();
        let mut before = 0;
        for run in &self.runs {
            let len = run.len();
            if from < before + len {
                let k = from.saturating_sub(before);
                runs.push(Run {
                    start: run.nth(k),
                    end: run.nth(len - 1),
                    step: run.step,
                });
            }
            before += len;
        }
        if !skip.is_empty() {
            // Rare (a task held or cancelled before its turn): expanded.
            let left: Vec<u32> = runs
                .iter()
                .flat_map(|r| (0..r.len()).map(|k| r.nth(k)))
                .filter(|i| !skip.contains(i))
                .collect();
            runs = compress(&left);
        }
        let parts: Vec<String> = runs.iter().map(Run::to_string).collect();
        parts.join(",")
    }
}

/// Sorted distinct indices as runs, the way Slurm writes them: runs of
/// consecutive indices first (`5-7`), then three or more lone indices
/// with one stride (`0-12:4`).
fn compress(indices: &[u32]) -> Vec<Run> {
    let mut ones: Vec<Run> = Vec::new();
    for &i in indices {
        match ones.last_mut() {
            Some(r) if r.end + 1 == i => r.end = i,
            _ => ones.push(Run {
                start: i,
                end: i,
                step: 1,
            }),
        }
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut k = 0;
    while k < ones.len() {
        let r = ones[k];
        // Lone indices k, k+1, … with one stride.
        let mut j = k;
        if r.start == r.end && k + 1 < ones.len() && ones[k + 1].start == ones[k + 1].end {
            let step = ones[k + 1].start - r.start;
            while j + 1 < ones.len()
                && ones[j + 1].start == ones[j + 1].end
                && ones[j + 1].start - ones[j].start == step
            {
                j += 1;
            }
            if j - k >= 2 {
                runs.push(Run {
                    start: r.start,
                    end: ones[j].start,
                    step,
                });
                k = j + 1;
                continue;
            }
        }
        runs.push(r);
        k += 1;
    }
    runs
}

impl FromStr for ArraySpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: String| why;
        let (list, throttle) = match s.trim().split_once('%') {
            Some((l, t)) => {
                let t: u32 = t
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("the throttle {} is not a whole number", quote(t))))?;
                if t == 0 {
                    return Err(bad("the throttle %0 would never run a task".into()));
                }
                (l, Some(t))
            }
            None => (s.trim(), None),
        };
        if list.is_empty() {
            return Err(bad("no indices (expected e.g. 0-99, 1,3,5-7 or 0-20:4)".into()));
        }
        let number = |t: &str| -> Result<u32, String> {
            let n: u64 = t
                .trim()
                .parse()
                .map_err(|_| bad(format!("{} is not a task index (a whole number)", quote(t))))?;
            if n > u64::from(MAX_INDEX) {
                return Err(bad(format!("index {n} is over the highest, {MAX_INDEX}")));
            }
            Ok(n as u32)
        };
        let mut runs = Vec::new();
        let mut total: u64 = 0;
        for part in list.split(',') {
            let (range, step) = match part.split_once(':') {
                Some((r, st)) => {
                    let st = number(st)?;
                    if st == 0 {
                        return Err(bad(format!("{}: the step must be at least 1", quote(part))));
                    }
                    (r, st)
                }
                None => (part, 1),
            };
            let (start, end) = match range.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None if step != 1 => {
                    return Err(bad(format!(
                        "{}: a step needs a range (e.g. 0-20:4)",
                        quote(part)
                    )));
                }
                None => {
                    let n = number(range)?;
                    (n, n)
                }
            };
            if start > end {
                return Err(bad(format!("{}: {start} is after {end}", quote(part))));
            }
            let run = Run {
                start,
                end: end - (end - start) % step,
                step,
            };
            total += run.len();
            if total > ARRAY_HARD_MAX {
                return Err(bad(format!("more than {ARRAY_HARD_MAX} tasks")));
            }
            runs.push(run);
        }
        // Sorted and distinct: expanded once (bounded above), then
        // compressed again.
        let mut all: Vec<u32> = Vec::with_capacity(total as usize);
        for r in &runs {
            all.extend((0..r.len()).map(|k| r.nth(k)));
        }
        all.sort_unstable();
        all.dedup();
        let runs = if runs.len() == 1 { runs } else { compress(&all) };
        Ok(ArraySpec { runs, throttle })
    }
}

impl fmt::Display for ArraySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runs: Vec<String> = self.runs.iter().map(Run::to_string).collect();
        f.write_str(&runs.join(","))?;
        if let Some(t) = self.throttle {
            write!(f, "%{t}")?;
        }
        Ok(())
    }
}

/// A task of an array: which array, which index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArrayTask {
    pub array: JobId,
    pub index: u32,
}

impl fmt::Display for ArrayTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.array, self.index)
    }
}

/// How ended tasks ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl TaskCounts {
    /// Where a task that ended in `state` is counted.
    fn bucket(&mut self, state: JobState) -> &mut u64 {
        match state {
            JobState::Succeeded => &mut self.succeeded,
            JobState::Cancelled => &mut self.cancelled,
            _ => &mut self.failed,
        }
    }

    pub fn count(&mut self, state: JobState) {
        self.add(state, 1);
    }

    /// `n` tasks ended in `state` (those given up with their array, too).
    pub fn add(&mut self, state: JobState, n: u64) {
        *self.bucket(state) += n;
    }

    /// A task counted as ended in `state` runs again.
    pub fn uncount(&mut self, state: JobState) {
        let b = self.bucket(state);
        *b = b.saturating_sub(1);
    }

    pub fn total(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled
    }

    /// The array's own end once every task has ended: succeeded only if
    /// every task did (so `afterok:ARRAY` waits for all of them).
    pub fn final_state(&self) -> JobState {
        if self.failed > 0 {
            JobState::Failed
        } else if self.cancelled > 0 {
            JobState::Cancelled
        } else {
            JobState::Succeeded
        }
    }
}

/// An array's record: how many tasks were split off, which were split out
/// of order (`allot hold ID_7` before its turn), how the ended ones ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayProgress {
    /// Positions `0..next` of the indices are split off (or given up).
    pub next: u64,
    /// Indices at `next` or later split off already.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub skip: BTreeSet<u32>,
    pub ended: TaskCounts,
}

impl ArrayProgress {
    /// Tasks not split off yet.
    pub fn unsplit(&self, spec: &ArraySpec) -> u64 {
        spec.len().saturating_sub(self.next) - self.skip.len() as u64
    }

    /// Whether task `index` is still in the unsplit rest.
    pub fn is_unsplit(&self, spec: &ArraySpec, index: u32) -> bool {
        spec.position(index).is_some_and(|k| k >= self.next) && !self.skip.contains(&index)
    }

    /// The next unsplit index, taken out of the rest.
    pub fn take_next(&mut self, spec: &ArraySpec) -> Option<u32> {
        while let Some(i) = spec.nth(self.next) {
            self.next += 1;
            if !self.skip.remove(&i) {
                return Some(i);
            }
        }
        None
    }

    /// Takes one index out of the rest, out of order.
    pub fn take(&mut self, spec: &ArraySpec, index: u32) -> bool {
        if !self.is_unsplit(spec, index) {
            return false;
        }
        self.skip.insert(index);
        true
    }

    /// Gives up the rest (the array was cancelled): how many tasks that was.
    pub fn abandon(&mut self, spec: &ArraySpec) -> u64 {
        let n = self.unsplit(spec);
        self.next = spec.len();
        self.skip.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> ArraySpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn slurm_forms_parse_to_their_indices() {
        let all = |s: &ArraySpec| (0..s.len()).map(|k| s.nth(k).unwrap()).collect::<Vec<_>>();
        assert_eq!(a("0-99").len(), 100);
        assert_eq!(all(&a("1,3,5-7")), vec![1, 3, 5, 6, 7]);
        assert_eq!(all(&a("0-20:4")), vec![0, 4, 8, 12, 16, 20]);
        assert_eq!(
            all(&a("0-21:4")),
            vec![0, 4, 8, 12, 16, 20],
            "the end rounds down to a step"
        );
        assert_eq!(all(&a("5,1-3,2")), vec![1, 2, 3, 5], "sorted, duplicates once");
        let t = a("0-15%4");
        assert_eq!((t.len(), t.throttle), (16, Some(4)));
        assert_eq!(t.to_string(), "0-15%4");
        assert_eq!(a("1,3,5-7").to_string(), "1,3,5-7");
        assert_eq!(a("0-20:4").to_string(), "0-20:4");
        assert_eq!(a("7").to_string(), "7");
        assert_eq!(a("0,4,8,12,13").to_string(), "0-8:4,12-13");
        assert_eq!(a("1,2,3,9").to_string(), "1-3,9");
        assert_eq!((a("3-9").first(), a("3-9").last()), (Some(3), Some(9)));
        assert_eq!(a("0-20:4").position(8), Some(2));
        assert_eq!(a("0-20:4").position(9), None);
    }

    #[test]
    fn malformed_arrays_say_what_is_wrong() {
        for (s, says) in [
            ("", "no indices"),
            ("a-b", "not a task index"),
            ("5-1", "5 is after 1"),
            ("0-10:0", "step must be at least 1"),
            ("4:2", "a step needs a range"),
            ("0-9%0", "%0"),
            ("0-9%x", "throttle"),
            ("0-9999999", "more than 1000000 tasks"),
            ("0-2000000000", "over the highest"),
            ("1,,2", "not a task index"),
        ] {
            let e = s.parse::<ArraySpec>().expect_err(s);
            assert!(e.contains(says), "{s}: {e}");
        }
    }

    #[test]
    fn splitting_takes_each_index_once_in_order_or_out_of_it() {
        let spec = a("0-9");
        let mut p = ArrayProgress::default();
        assert_eq!(p.take_next(&spec), Some(0));
        assert!(p.take(&spec, 5), "out of order");
        assert!(!p.take(&spec, 5), "only once");
        assert!(!p.take(&spec, 0), "split already");
        assert!(!p.take(&spec, 42), "not one of the array's");
        assert_eq!(p.unsplit(&spec), 8);
        assert_eq!(spec.rest(p.next, &p.skip), "1-4,6-9");
        let taken: Vec<u32> = std::iter::from_fn(|| p.take_next(&spec)).collect();
        assert_eq!(taken, vec![1, 2, 3, 4, 6, 7, 8, 9]);
        assert_eq!(p.unsplit(&spec), 0);
        let mut q = ArrayProgress::default();
        q.take_next(&spec);
        assert_eq!(spec.rest(q.next, &q.skip), "1-9");
        assert_eq!(q.abandon(&spec), 9);
        assert_eq!(q.unsplit(&spec), 0);
    }

    #[test]
    fn an_array_ends_succeeded_only_when_every_task_did() {
        let mut c = TaskCounts::default();
        c.count(JobState::Succeeded);
        assert_eq!(c.final_state(), JobState::Succeeded);
        c.count(JobState::Cancelled);
        assert_eq!(c.final_state(), JobState::Cancelled);
        c.count(JobState::TimedOut);
        assert_eq!((c.final_state(), c.total()), (JobState::Failed, 3));
    }
}
