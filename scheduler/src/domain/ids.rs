//! Identifiers as newtypes: job and lease ids are UUID v7 (time-ordered), names
//! are validated strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new time-ordered (v7) id.
            pub fn new_v7() -> Self {
                $name(Uuid::now_v7())
            }

            pub const fn from_uuid(u: Uuid) -> Self {
                $name(u)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            /// The 16 big-endian bytes: sled keys sort in creation order.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            pub fn from_slice(b: &[u8]) -> Option<Self> {
                Uuid::from_slice(b).ok().map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

    };
}

uuid_id!(
    /// A job's id (UUID v7).
    JobId,
    "job id"
);

impl JobId {
    /// The id of task `index` of this array: the array's id with its last
    /// four bytes mixed with the index, so it sorts beside the array and
    /// is known before the task is split off.
    pub fn task(&self, index: u32) -> JobId {
        let mut b = *self.as_bytes();
        let mixed = u32::from_be_bytes([b[12], b[13], b[14], b[15]]) ^ index.wrapping_add(1);
        b[12..].copy_from_slice(&mixed.to_be_bytes());
        JobId::from_uuid(Uuid::from_bytes(b))
    }

    /// Which task of `array` this id is, if it is one (any index).
    pub fn task_index(&self, array: &JobId) -> Option<u32> {
        let (a, b) = (self.as_bytes(), array.as_bytes());
        if a[..12] != b[..12] || a == b {
            return None;
        }
        let x = u32::from_be_bytes([a[12], a[13], a[14], a[15]])
            ^ u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        Some(x.wrapping_sub(1))
    }
}
uuid_id!(
    /// A lease's id (UUID v7).
    LeaseId,
    "lease id"
);

fn parse_uuid(s: &str, what: &str) -> Result<Uuid, String> {
    Uuid::parse_str(s.trim()).map_err(|_| {
        format!(
            "{} is not a valid {what} (expected a UUID)",
            super::validate::quote(s)
        )
    })
}

impl FromStr for LeaseId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_uuid(s, "lease id").map(LeaseId)
    }
}

impl FromStr for JobId {
    type Err = String;
    /// A UUID, or `ID_7`: task 7 of array ID.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some((array, index)) = s.split_once('_') {
            let array: JobId = array.parse()?;
            let index: u32 = index.parse().map_err(|_| {
                format!(
                    "{} is not a valid job id (expected a UUID, or ID_INDEX for an array task)",
                    super::validate::quote(s)
                )
            })?;
            return Ok(array.task(index));
        }
        parse_uuid(s, "job id").map(JobId)
    }
}

/// Checks a DNS-label-like name: 1–63 of `[a-z0-9-_.]`, starting with a letter or digit.
fn check_name(kind: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{kind} must not be empty"));
    }
    if s.len() > 63 {
        return Err(format!(
            "{kind} {} is longer than 63 characters",
            super::validate::quote(s)
        ));
    }
    let first_ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !first_ok || !rest_ok {
        return Err(format!(
            "{kind} {} may hold only lowercase letters, digits, '-', '_' and '.', and must start with a letter or digit",
            super::validate::quote(s)
        ));
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                check_name($what, s)?;
                Ok($name(s.to_string()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                check_name($what, &s)?;
                Ok($name(s))
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_id!(
    /// A tenant: the unit of isolation and billing.
    TenantName,
    "tenant"
);
name_id!(
    /// A project inside a tenant, for accounting.
    ProjectName,
    "project"
);
name_id!(
    /// A node, as its agent names it (by default the host name).
    NodeName,
    "node name"
);

name_id!(
    /// A queue (Slurm's partition): where a job waits, and on which nodes it runs.
    QueueName,
    "queue"
);

name_id!(
    /// A quality of service (Slurm's QOS): a priority tier a job may ask for.
    QosName,
    "QOS"
);

impl QosName {
    /// The QOS every server has, at tier 0 (Slurm's `normal`).
    pub fn normal() -> Self {
        QosName("normal".to_string())
    }
}

name_id!(
    /// A policy plugin's name, unique within its owner (a tenant, or global).
    PluginName,
    "plugin name"
);

impl QueueName {
    /// The queue jobs go to when none is named and none is marked default.
    pub fn default_queue() -> Self {
        QueueName("default".to_string())
    }
}

impl ProjectName {
    pub fn default_project() -> Self {
        ProjectName("default".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!("team-a".parse::<TenantName>().is_ok());
        assert!("node-1.rack2".parse::<NodeName>().is_ok());
        for bad in ["", "Team", "-x", "a b", "ä", &"x".repeat(64)] {
            assert!(bad.parse::<TenantName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn job_ids_are_time_ordered() {
        let a = JobId::new_v7();
        let b = JobId::new_v7();
        assert!(a.as_bytes() < b.as_bytes());
        assert_eq!(a.to_string().parse::<JobId>().unwrap(), a);
        assert!("nope".parse::<JobId>().is_err());
        // Array tasks: `ID_7`, beside the array, known both ways.
        let t: JobId = format!("{a}_7").parse().unwrap();
        assert_eq!(t, a.task(7));
        assert_ne!(a.task(7), a.task(8));
        assert_ne!(a.task(0), a);
        assert_eq!(t.task_index(&a), Some(7));
        assert_eq!(a.task_index(&a), None);
        assert_eq!(b.task_index(&a), None);
        assert!(
            format!("{a}_x")
                .parse::<JobId>()
                .unwrap_err()
                .contains("ID_INDEX")
        );
        assert!(
            format!("{a}_7").parse::<LeaseId>().is_err(),
            "leases have no tasks"
        );
    }
}
