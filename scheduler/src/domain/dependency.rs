//! Job dependencies in Slurm's syntax (`sbatch --dependency`):
//! `afterok:ID[:ID…]`, `afterany:…`, `afternotok:…`, `after:…` and
//! `singleton`, joined by `,` (all must hold) or `?` (any one).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ids::JobId;
use super::job::JobState;
use super::validate::quote;

/// Job ids one dependency may name, in all.
pub const DEPENDENCY_JOBS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The job has started (or ended, or was cancelled).
    After,
    /// The job has ended, however.
    AfterAny,
    /// The job has ended `SUCCEEDED`.
    AfterOk,
    /// The job has ended otherwise.
    AfterNotOk,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::After => "after",
            Kind::AfterAny => "afterany",
            Kind::AfterOk => "afterok",
            Kind::AfterNotOk => "afternotok",
        }
    }

    /// Whether a job in `state` meets it now (`Some(true)`), never can
    /// (`Some(false)`), or may later (`None`).
    pub fn met_by(self, state: JobState) -> Option<bool> {
        let ended = state.is_final();
        match self {
            Kind::After => (state != JobState::Pending).then_some(true),
            Kind::AfterAny => ended.then_some(true),
            Kind::AfterOk => ended.then_some(state == JobState::Succeeded),
            Kind::AfterNotOk => ended.then_some(state != JobState::Succeeded),
        }
    }
}

/// One condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cond {
    /// Every one of `jobs` meets `kind`.
    On { kind: Kind, jobs: Vec<JobId> },
    /// No earlier job of the tenant with the same name is active.
    Singleton,
}

/// A job's dependency: its conditions, all of which (or, with `any`, one
/// of which) must hold before it may start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    #[serde(default)]
    pub any: bool,
    pub conds: Vec<Cond>,
}

/// Where a dependency stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Met,
    /// Not yet: what it waits for ("afterok ID: RUNNING").
    Waiting(String),
    /// Never can be: why.
    Never(String),
}

impl Dependency {
    /// Every job id it names.
    pub fn jobs(&self) -> impl Iterator<Item = &JobId> {
        self.conds.iter().flat_map(|c| match c {
            Cond::On { jobs, .. } => jobs.as_slice(),
            Cond::Singleton => &[],
        })
    }

    pub fn has_singleton(&self) -> bool {
        self.conds.iter().any(|c| matches!(c, Cond::Singleton))
    }

    /// Where it stands, given each named job's state (`None`: not known)
    /// and, for `singleton`, an earlier active job of the same name.
    pub fn standing(
        &self,
        state_of: impl Fn(&JobId) -> Option<JobState>,
        same_name: Option<(JobId, JobState)>,
    ) -> Standing {
        let (mut met, mut waiting, mut never) = (0, Vec::new(), Vec::new());
        for c in &self.conds {
            match c {
                Cond::Singleton => match same_name {
                    None => met += 1,
                    Some((id, s)) => waiting.push(format!("singleton: job {id} of the same name is {s}")),
                },
                Cond::On { kind, jobs } => {
                    let (mut all, mut lost) = (true, false);
                    for id in jobs {
                        match state_of(id) {
                            None => {
                                never.push(format!("{} {id}: no such job", kind.as_str()));
                                lost = true;
                            }
                            Some(s) => match kind.met_by(s) {
                                Some(true) => {}
                                Some(false) => {
                                    never.push(format!("{} {id}: {s}", kind.as_str()));
                                    lost = true;
                                }
                                None => {
                                    waiting.push(format!("{} {id}: {s}", kind.as_str()));
                                    all = false;
                                }
                            },
                        }
                    }
                    if all && !lost {
                        met += 1;
                    }
                }
            }
        }
        let n = self.conds.len();
        let never_all = self.any && never.len() >= n && waiting.is_empty() && met == 0;
        if (self.any && met > 0) || (!self.any && met == n) {
            Standing::Met
        } else if (!self.any && !never.is_empty()) || never_all {
            Standing::Never(never.join(", "))
        } else {
            Standing::Waiting(waiting.join(if self.any { " or " } else { ", " }))
        }
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.conds.iter().enumerate() {
            if i > 0 {
                f.write_str(if self.any { "?" } else { "," })?;
            }
            match c {
                Cond::Singleton => f.write_str("singleton")?,
                Cond::On { kind, jobs } => {
                    f.write_str(kind.as_str())?;
                    for j in jobs {
                        write!(f, ":{j}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl FromStr for Dependency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        let (any, sep) = match (s.contains(','), s.contains('?')) {
            (true, true) => {
                return Err(format!(
                    "{}: join conditions with ',' (all) or '?' (any), not both",
                    quote(s)
                ));
            }
            (false, true) => (true, '?'),
            _ => (false, ','),
        };
        let mut conds = Vec::new();
        let mut named = 0usize;
        for term in s.split(sep).map(str::trim) {
            if term == "singleton" {
                conds.push(Cond::Singleton);
                continue;
            }
            let mut parts = term.split(':');
            let kind = match parts.next().unwrap_or_default() {
                "after" => Kind::After,
                "afterany" => Kind::AfterAny,
                "afterok" => Kind::AfterOk,
                "afternotok" => Kind::AfterNotOk,
                "aftercorr" | "afterburstbuffer" => {
                    return Err(format!("{}: not supported by allot", quote(term)));
                }
                _ => {
                    return Err(format!(
                        "{}: expected afterok:ID, afterany:ID, afternotok:ID, after:ID or singleton",
                        quote(term)
                    ));
                }
            };
            let mut jobs = Vec::new();
            for id in parts {
                if id.contains('+') {
                    return Err(format!("{}: a delay (+minutes) is not supported", quote(term)));
                }
                let id: JobId = id.parse()?;
                if !jobs.contains(&id) {
                    jobs.push(id);
                }
            }
            if jobs.is_empty() {
                return Err(format!("{}: names no job (e.g. afterok:JOB_ID)", quote(term)));
            }
            named += jobs.len();
            if named > DEPENDENCY_JOBS {
                return Err(format!("names more than {DEPENDENCY_JOBS} jobs"));
            }
            conds.push(Cond::On { kind, jobs });
        }
        Ok(Dependency { any, conds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurms_syntax_parses_and_prints_back_and_bad_input_says_why() {
        let (a, b) = (JobId::new_v7(), JobId::new_v7());
        let text = format!("afterok:{a}:{b},afterany:{a},singleton");
        let d: Dependency = text.parse().unwrap();
        assert!(!d.any && d.conds.len() == 3 && d.has_singleton());
        assert_eq!(d.to_string(), text);
        assert_eq!(d.jobs().count(), 3);
        let any: Dependency = format!("afternotok:{a}?after:{b}").parse().unwrap();
        assert!(any.any);
        for (bad, why) in [
            (String::new(), "empty"),
            (format!("afterok:{a},afterany:{b}?singleton"), "not both"),
            ("afterok".into(), "names no job"),
            ("afterok:12".into(), "UUID"),
            (format!("afterwards:{a}"), "expected afterok"),
            (format!("after:{a}+5"), "delay"),
            (format!("aftercorr:{a}"), "not supported"),
        ] {
            let e = bad.parse::<Dependency>().unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let many = (0..=DEPENDENCY_JOBS)
            .map(|_| format!(":{}", JobId::new_v7()))
            .collect::<String>();
        assert!(
            format!("afterany{many}")
                .parse::<Dependency>()
                .unwrap_err()
                .contains("more than")
        );
    }

    #[test]
    fn a_dependency_is_met_waits_or_can_never_be_met() {
        let (a, b) = (JobId::new_v7(), JobId::new_v7());
        let d: Dependency = format!("afterok:{a},afterany:{b}").parse().unwrap();
        let states = |sa: JobState, sb: JobState| move |id: &JobId| Some(if *id == a { sa } else { sb });
        use JobState::*;
        assert_eq!(d.standing(states(Succeeded, Failed), None), Standing::Met);
        assert!(
            matches!(d.standing(states(Running, Failed), None), Standing::Waiting(w) if w == format!("afterok {a}: RUNNING"))
        );
        assert!(
            matches!(d.standing(states(Failed, Pending), None), Standing::Never(w) if w.contains("FAILED"))
        );
        let any: Dependency = format!("afterok:{a}?afternotok:{b}").parse().unwrap();
        assert_eq!(any.standing(states(Failed, Failed), None), Standing::Met);
        assert!(matches!(
            any.standing(states(Failed, Running), None),
            Standing::Waiting(_)
        ));
        assert!(matches!(
            any.standing(states(Failed, Succeeded), None),
            Standing::Never(_)
        ));
        let after: Dependency = format!("after:{a}").parse().unwrap();
        assert!(matches!(
            after.standing(states(Pending, Pending), None),
            Standing::Waiting(_)
        ));
        assert_eq!(after.standing(states(Starting, Pending), None), Standing::Met);
        assert_eq!(after.standing(states(Cancelled, Pending), None), Standing::Met);
        assert!(matches!(after.standing(|_| None, None), Standing::Never(w) if w.contains("no such job")));
        let single: Dependency = "singleton".parse().unwrap();
        assert_eq!(single.standing(|_| None, None), Standing::Met);
        assert!(
            matches!(single.standing(|_| None, Some((a, Running))), Standing::Waiting(w) if w.contains("singleton"))
        );
    }
}
