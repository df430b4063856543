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

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Uuid::parse_str(s.trim())
                    .map($name)
                    .map_err(|_| format!("{} is not a valid {} (expected a UUID)", super::validate::quote(s), $what))
            }
        }
    };
}

uuid_id!(
    /// A job's id (UUID v7).
    JobId,
    "job id"
);
uuid_id!(
    /// A lease's id (UUID v7).
    LeaseId,
    "lease id"
);

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
    }
}
