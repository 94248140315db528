//! The process's resource use: memory, file descriptors and the data directory's free
//! disk space, as the metrics and the management API's `/api/nodes` show them.

use std::path::Path;

/// The process's resource use.
pub struct ProcessStats {
    /// Resident memory, bytes.
    pub rss: u64,
    /// Physical memory of the machine, bytes.
    pub physical: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The file descriptor limit.
    pub max_fds: u64,
    /// Free bytes on the data directory's file system.
    pub disk_available: u64,
}

/// Reads the process's resource use now; `data_dir` is where free space is measured.
#[allow(clippy::unnecessary_cast)] // libc's integer types differ between targets
pub fn process_stats(data_dir: &Path) -> ProcessStats {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    // SAFETY: as above.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) }.max(0) as u64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|p| p * page)
        .unwrap_or(0);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        0
    };
    ProcessStats {
        rss,
        physical: pages * page,
        open_fds,
        max_fds,
        disk_available: disk_available(data_dir),
    }
}

/// Available bytes on the file system of `dir`, or of its nearest existing ancestor.
#[allow(clippy::unnecessary_cast)] // libc's integer types differ between targets
fn disk_available(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    for candidate in absolute.ancestors() {
        let Ok(c) = std::ffi::CString::new(candidate.as_os_str().as_bytes()) else {
            return 0;
        };
        // SAFETY: statvfs is plain old data; all-zero is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path and `st` is writable.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0 {
            return (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
        }
    }
    0
}
