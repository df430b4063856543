//! A job's mount namespace: the node's private files (the agent's state,
//! the controller's data, other jobs' scratch directories) covered before
//! the job's program runs.

use std::path::Path;

use super::supervisor::SuperviseSpec;

/// What the job's process does between fork and exec to keep the node's
/// private files out of its reach: a mount namespace of its own (with a
/// user namespace of its own when the supervisor is not root) in which
/// they are covered, then the job's user. Everything is prepared before
/// the fork; the child only makes system calls.
pub(super) struct Isolation {
    user_ns: Option<(std::ffi::CString, std::ffi::CString)>,
    hide_dirs: Vec<std::ffi::CString>,
    hide_files: Vec<std::ffi::CString>,
    /// The jobs dir and the job's own scratch dir inside it, and the
    /// working directory to return to once they are mounted (the one the
    /// process had is under the cover).
    scratch: Option<(std::ffi::CString, std::ffi::CString, std::ffi::CString)>,
}

/// The error a child reports when it could not isolate itself: the spawn
/// is tried again without (and the job's output says so).
pub(super) const ISOLATION_FAILED: i32 = nix::libc::ENOTRECOVERABLE;

fn cstr(p: &Path) -> Option<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).ok()
}

impl Isolation {
    pub(super) fn prepare(spec: &SuperviseSpec, scratch: Option<&Path>, workdir: &Path) -> Option<Isolation> {
        if spec.hide.is_empty() && spec.jobs_dir.is_none() {
            return None;
        }
        let euid = nix::unistd::geteuid();
        let egid = nix::unistd::getegid();
        let user_ns = (!euid.is_root()).then(|| {
            (
                std::ffi::CString::new(format!("{euid} {euid} 1")).expect("no NUL"),
                std::ffi::CString::new(format!("{egid} {egid} 1")).expect("no NUL"),
            )
        });
        let (mut hide_dirs, mut hide_files) = (Vec::new(), Vec::new());
        for p in &spec.hide {
            match std::fs::metadata(p) {
                Ok(m) if m.is_dir() => hide_dirs.extend(cstr(p)),
                Ok(_) => hide_files.extend(cstr(p)),
                Err(_) => {}
            }
        }
        let scratch = match (&spec.jobs_dir, scratch) {
            (Some(jobs), Some(own)) if jobs.is_dir() && own.starts_with(jobs) => {
                Some((cstr(jobs)?, cstr(own)?, cstr(workdir)?))
            }
            (Some(jobs), _) if jobs.is_dir() => {
                hide_dirs.extend(cstr(jobs));
                None
            }
            _ => None,
        };
        Some(Isolation {
            user_ns,
            hide_dirs,
            hide_files,
            scratch,
        })
    }

    /// In the child, before exec. Only system calls.
    pub(super) fn apply(&self) -> std::io::Result<()> {
        use nix::libc;
        let fail = || std::io::Error::from_raw_os_error(ISOLATION_FAILED);
        // SAFETY: plain system calls on NUL-terminated strings prepared
        // before the fork.
        unsafe {
            let write_file = |path: &[u8], data: &[u8]| -> bool {
                let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return false;
                }
                let ok = libc::write(fd, data.as_ptr().cast(), data.len()) == data.len() as isize;
                libc::close(fd);
                ok
            };
            match &self.user_ns {
                Some((uid_map, gid_map)) => {
                    if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0
                        || !write_file(b"/proc/self/setgroups\0", b"deny")
                        || !write_file(b"/proc/self/uid_map\0", uid_map.as_bytes())
                        || !write_file(b"/proc/self/gid_map\0", gid_map.as_bytes())
                    {
                        return Err(fail());
                    }
                }
                None => {
                    if libc::unshare(libc::CLONE_NEWNS) != 0 {
                        return Err(fail());
                    }
                }
            }
            let null = std::ptr::null::<libc::c_char>();
            if libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(fail());
            }
            let tmpfs = c"tmpfs".as_ptr();
            let ro = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
            for d in &self.hide_dirs {
                if libc::mount(tmpfs, d.as_ptr(), tmpfs, ro, c"size=4k,mode=0555".as_ptr().cast()) != 0 {
                    return Err(fail());
                }
            }
            for f in &self.hide_files {
                if libc::mount(
                    c"/dev/null".as_ptr(),
                    f.as_ptr(),
                    null,
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(fail());
                }
            }
            if let Some((jobs, own, workdir)) = &self.scratch {
                // Cover every job's scratch dir, then bring back this one's
                // through a descriptor opened before it was covered (in this
                // namespace: a bind mount takes no source from another).
                let fd = libc::open(own.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(fail());
                }
                let mut src = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0";
                let mut n = fd as u32;
                let mut digits = [0u8; 10];
                let mut len = 0;
                loop {
                    digits[len] = b'0' + (n % 10) as u8;
                    len += 1;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                for i in 0..len {
                    src[14 + i] = digits[len - 1 - i];
                }
                let rw = libc::MS_NOSUID | libc::MS_NODEV;
                if libc::mount(
                    tmpfs,
                    jobs.as_ptr(),
                    tmpfs,
                    rw,
                    c"size=4k,mode=0711".as_ptr().cast(),
                ) != 0
                    || libc::mkdir(own.as_ptr(), 0o700) != 0
                    || libc::mount(
                        src.as_ptr().cast(),
                        own.as_ptr(),
                        null,
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        null,
                        jobs.as_ptr(),
                        null,
                        libc::MS_REMOUNT | libc::MS_RDONLY | rw,
                        std::ptr::null(),
                    ) != 0
                    || libc::chdir(workdir.as_ptr()) != 0
                {
                    return Err(fail());
                }
                libc::close(fd);
            }
        }
        Ok(())
    }
}
