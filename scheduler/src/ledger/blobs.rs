//! Plugin components and their compiled artifacts, as files beside the
//! ledger (`<data-dir>/plugins/`), keyed by content: `<sha256>.wasm` and
//! `<sha256>.<engine key>.cwasm`.
//!
//! They used to be sled values. sled keeps the memory of a large value it
//! has written even after the value is removed (about 80 MB per Python
//! plugin uploaded and removed), so blobs of tens of MB live in files, and
//! the records that name them stay in the ledger. A blob is written whole
//! (temp file, fsync, rename, fsync of the directory) before the record
//! that names it; a crash between the two leaves a file no record names,
//! which [`Blobs::sweep`] removes at the next open.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The plugin blob directory of a ledger.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
}

/// A SHA-256 in lowercase hex, the only names a blob may have (nothing in
/// a name can reach outside the directory).
fn checked(sha256: &str) -> io::Result<&str> {
    if sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(sha256)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a SHA-256: {sha256:?}"),
        ))
    }
}

/// An engine key: letters, digits, `-` and `_`.
fn checked_key(key: &str) -> io::Result<&str> {
    if !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(key)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not an engine key: {key:?}"),
        ))
    }
}

impl Blobs {
    /// The directory `dir`, made (mode 0700) if it is not there.
    pub fn open(dir: &Path) -> io::Result<Blobs> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        Ok(Blobs {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn component_path(&self, sha256: &str) -> io::Result<PathBuf> {
        Ok(self.dir.join(format!("{}.wasm", checked(sha256)?)))
    }

    fn artifact_path(&self, sha256: &str, engine_key: &str) -> io::Result<PathBuf> {
        Ok(self
            .dir
            .join(format!("{}.{}.cwasm", checked(sha256)?, checked_key(engine_key)?)))
    }

    /// Writes `bytes` as `path`, durably: a temp file, fsync, rename, fsync
    /// of the directory. Readable by the server's user only.
    fn write(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
        match fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn put_component(&self, sha256: &str, wasm: &[u8]) -> io::Result<()> {
        let path = self.component_path(sha256)?;
        // Content-addressed: one already there holds the same bytes.
        if path.is_file() {
            return Ok(());
        }
        self.write(&path, wasm)
    }

    pub fn put_artifact(&self, sha256: &str, engine_key: &str, artifact: &[u8]) -> io::Result<()> {
        self.write(&self.artifact_path(sha256, engine_key)?, artifact)
    }

    pub fn component(&self, sha256: &str) -> io::Result<Option<Vec<u8>>> {
        Self::read(&self.component_path(sha256)?)
    }

    pub fn artifact(&self, sha256: &str, engine_key: &str) -> io::Result<Option<Vec<u8>>> {
        Self::read(&self.artifact_path(sha256, engine_key)?)
    }

    /// Removes the component and every artifact of `sha256`.
    pub fn remove(&self, sha256: &str) -> io::Result<()> {
        let sha256 = checked(sha256)?;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name
                .strip_prefix(sha256)
                .is_some_and(|rest| rest.starts_with('.'))
            {
                match fs::remove_file(entry.path()) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Removes every file whose SHA-256 is not in `kept` (a crash between a
    /// blob and its record, or between a record's removal and its blob's),
    /// and temp files. Returns how many it removed.
    pub fn sweep(&self, kept: &HashSet<String>) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let sha = name.split('.').next().unwrap_or_default();
            if !kept.contains(sha) || name.contains(".tmp.") {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The SHA-256s with a component file.
    pub fn components(&self) -> io::Result<HashSet<String>> {
        let mut out = HashSet::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(sha) = name.strip_suffix(".wasm")
                && checked(sha).is_ok()
            {
                out.insert(sha.to_string());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const OTHER: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    #[test]
    fn blobs_round_trip_and_go_with_their_sha() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&dir.path().join("plugins")).unwrap();
        blobs.put_component(SHA, b"wasm").unwrap();
        blobs.put_artifact(SHA, "engine-1", b"code").unwrap();
        blobs.put_artifact(SHA, "engine-2", b"code 2").unwrap();
        blobs.put_component(OTHER, b"other").unwrap();
        assert_eq!(blobs.component(SHA).unwrap().as_deref(), Some(&b"wasm"[..]));
        assert_eq!(
            blobs.artifact(SHA, "engine-2").unwrap().as_deref(),
            Some(&b"code 2"[..])
        );
        assert_eq!(blobs.artifact(SHA, "engine-3").unwrap(), None);
        let mode = fs::metadata(blobs.component_path(SHA).unwrap()).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        blobs.remove(SHA).unwrap();
        assert_eq!(blobs.component(SHA).unwrap(), None);
        assert_eq!(blobs.artifact(SHA, "engine-1").unwrap(), None);
        assert_eq!(blobs.components().unwrap(), HashSet::from([OTHER.to_string()]));
    }

    #[test]
    fn names_are_shas_and_keys_only() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        for bad in ["../../etc/passwd", "", "ABCDEF", &SHA[..63]] {
            assert!(blobs.put_component(bad, b"x").is_err(), "{bad:?}");
        }
        assert!(blobs.put_artifact(SHA, "../x", b"x").is_err());
        assert!(blobs.put_artifact(SHA, "a.b", b"x").is_err());
    }

    #[test]
    fn a_sweep_removes_what_no_record_names() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        blobs.put_component(SHA, b"kept").unwrap();
        blobs.put_component(OTHER, b"orphan").unwrap();
        blobs.put_artifact(OTHER, "e", b"orphan").unwrap();
        fs::write(dir.path().join(format!("{SHA}.wasm.tmp.1")), b"half").unwrap();
        let removed = blobs.sweep(&HashSet::from([SHA.to_string()])).unwrap();
        assert_eq!(removed, 3);
        assert_eq!(blobs.component(SHA).unwrap().as_deref(), Some(&b"kept"[..]));
        assert_eq!(blobs.component(OTHER).unwrap(), None);
    }
}
