//! A job's own output files (`sbatch -o/-e`): the names its patterns make
//! on this node, opened as the job's user (so a job cannot write, nor
//! `allot logs` read, a file its user could not), and where `allot logs`
//! finds them (`logs/allot-<job>.path`).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use allot_proto::v1 as pb;

use super::supervisor::RunAs;
use crate::domain::output::{self, Names};

/// The stdout and stderr files a launch order names, absolute (relative
/// ones are in the job's working directory, else in `scratch`).
pub fn files(
    order: &pb::LaunchJob,
    node: &str,
    scratch: &Path,
) -> Result<(Option<PathBuf>, Option<PathBuf>), String> {
    let names = Names {
        job: &order.job_id,
        name: &order.name,
        array_job: order.env.get("ALLOT_ARRAY_JOB_ID").map(String::as_str),
        array_task: order.env.get("ALLOT_ARRAY_TASK_ID").map(String::as_str),
        user: &order.tenant,
        node,
        rank: order.node_rank,
    };
    let base = if order.working_dir.is_empty() {
        scratch.to_path_buf()
    } else {
        PathBuf::from(&order.working_dir)
    };
    let path = |p: &str| -> Result<Option<PathBuf>, String> {
        if p.trim().is_empty() {
            return Ok(None);
        }
        let name = output::expand(p.trim(), &names)?;
        Ok(Some(base.join(name)))
    };
    Ok((path(&order.output)?, path(&order.error)?))
}

/// Where the agent notes a job's stdout file for `allot logs`.
pub fn path_note(state_dir: &Path, job_id: &str) -> PathBuf {
    state_dir.join("logs").join(format!("allot-{job_id}.path"))
}

/// Opens `path` with the file-system identity of `run_as` (this thread
/// only, for the one call), to append (`write`) or to read.
pub fn open_as(path: &Path, run_as: Option<RunAs>, write: bool) -> std::io::Result<std::fs::File> {
    let open = || {
        if write {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o644)
                .open(path)
        } else {
            std::fs::File::open(path)
        }
    };
    let Some(u) = run_as else { return open() };
    use nix::unistd::{Gid, Uid, setfsgid, setfsuid};
    let old_gid = setfsgid(Gid::from_raw(u.gid));
    let old_uid = setfsuid(Uid::from_raw(u.uid));
    let file = open();
    setfsuid(old_uid);
    setfsgid(old_gid);
    let file = file?;
    // A file the user could open that is another user's is not theirs to
    // write through us (a link planted in a shared directory).
    if write {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata()?;
        if meta.uid() != u.uid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the file belongs to another user",
            ));
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_make_names_in_the_working_directory() {
        let order = pb::LaunchJob {
            job_id: "j1".into(),
            name: "train".into(),
            tenant: "acme".into(),
            working_dir: "/work/acme".into(),
            output: "slurm-%A_%a.out".into(),
            error: "/tmp/%x-%j.err".into(),
            env: [
                ("ALLOT_ARRAY_JOB_ID".to_string(), "a1".to_string()),
                ("ALLOT_ARRAY_TASK_ID".to_string(), "3".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let (out, err) = files(&order, "n1", Path::new("/scratch")).unwrap();
        assert_eq!(out.unwrap(), Path::new("/work/acme/slurm-a1_3.out"));
        assert_eq!(err.unwrap(), Path::new("/tmp/train-j1.err"));
        let none = pb::LaunchJob::default();
        assert_eq!(files(&none, "n1", Path::new("/s")).unwrap(), (None, None));
    }

    #[test]
    fn files_open_for_appending_and_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.txt");
        use std::io::{Read, Write};
        open_as(&p, None, true).unwrap().write_all(b"one\n").unwrap();
        open_as(&p, None, true).unwrap().write_all(b"two\n").unwrap();
        let mut s = String::new();
        open_as(&p, None, false).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "one\ntwo\n");
        assert!(open_as(&dir.path().join("no/such"), None, true).is_err());
    }
}
