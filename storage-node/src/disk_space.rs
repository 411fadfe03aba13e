//! Free space on the node's data disk, and the reserve that keeps a full disk from failing it.
//!
//! Every segment of a node shares one disk. The log stops taking new records while the disk's
//! free space is below a reserve, so what is already accepted can still be materialized, garbage
//! collected and read: the page store (redb) needs room to commit, and an I/O error there would
//! fail it for reads too. The writer sees a clear refusal (RESOURCE_EXHAUSTED) from this node and
//! keeps its quorum with the others; once space returns (GC freed log files, the volume was
//! grown, another file was removed) the next write is accepted again — no restart. If the disk
//! fills anyway (another process took the reserve), the log recovers from the failed write in
//! place (see `segment_log`) and this guard refuses until the reserve is free again.
//!
//! The decision (`admits`) is pure; `statvfs` is read at most every `REFRESH` per node.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a free-space reading is trusted.
const REFRESH: Duration = Duration::from_millis(100);
/// The default reserve: 2% of the filesystem, within these bounds.
const AUTO_MIN: u64 = 4 << 20;
const AUTO_MAX: u64 = 1 << 30;

/// Space on a filesystem, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    pub free: u64,
    pub total: u64,
}

/// Why a write was refused for space.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the data disk at {dir} is full: {free} bytes free, below the reserve of {reserve} bytes kept \
     for materializing and reading what is already accepted; new records are refused until space \
     returns (GC frees log files past retention, or grow the volume's disk)"
)]
pub struct NoSpace {
    pub dir: PathBuf,
    pub free: u64,
    pub reserve: u64,
}

/// Whether a write of `bytes` may go to a disk with `free` bytes free and `reserve` kept back.
/// A disk that refused a write (`exhausted`) takes new ones again only once the reserve is free.
pub fn admits(free: u64, reserve: u64, bytes: u64, exhausted: bool) -> bool {
    if exhausted {
        free >= reserve.max(bytes)
    } else {
        free >= reserve.saturating_add(bytes)
    }
}

/// The reserve used when none is configured: 2% of the filesystem, between 4 MiB and 1 GiB
/// (never more than a quarter of a small disk).
pub fn auto_reserve(total: u64) -> u64 {
    (total / 50).clamp(AUTO_MIN, AUTO_MAX).min(total / 4)
}

/// Free and total bytes of the filesystem holding `dir` (what an unprivileged writer may use).
pub fn statvfs(dir: &Path) -> std::io::Result<Space> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `st` is writable for one statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    let (frsize, bavail, blocks) = (st.f_frsize as u64, st.f_bavail as u64, st.f_blocks as u64);
    Ok(Space {
        free: bavail.saturating_mul(frsize),
        total: blocks.saturating_mul(frsize),
    })
}

struct Reading {
    at: Option<Instant>,
    space: Space,
    exhausted: bool,
}

/// One node's view of its data disk, shared by its segments.
pub struct SpaceGuard {
    dir: PathBuf,
    /// `None`: no check (the log writes until the disk refuses).
    reserve: Option<u64>,
    reading: Mutex<Reading>,
}

impl SpaceGuard {
    /// A guard for the disk holding `dir`: `reserve` bytes kept free (`None`: `auto_reserve`),
    /// `Some(0)` turns the check off.
    pub fn new(dir: &Path, reserve: Option<u64>) -> std::io::Result<SpaceGuard> {
        let space = statvfs(dir)?;
        let reserve = match reserve {
            Some(0) => None,
            Some(r) => Some(r),
            None => Some(auto_reserve(space.total)),
        };
        Ok(SpaceGuard {
            dir: dir.to_path_buf(),
            reserve,
            reading: Mutex::new(Reading {
                at: Some(Instant::now()),
                space,
                exhausted: false,
            }),
        })
    }

    /// A guard that never refuses (tests of other parts).
    pub fn off(dir: &Path) -> SpaceGuard {
        SpaceGuard {
            dir: dir.to_path_buf(),
            reserve: None,
            reading: Mutex::new(Reading {
                at: None,
                space: Space::default(),
                exhausted: false,
            }),
        }
    }

    /// The reserve kept free, in bytes (0: no check).
    pub fn reserve(&self) -> u64 {
        self.reserve.unwrap_or(0)
    }

    /// The latest reading (refreshed when stale).
    pub fn space(&self) -> Space {
        self.refreshed(&mut self.reading.lock().expect("space lock"))
    }

    fn refreshed(&self, r: &mut Reading) -> Space {
        // A disk that refused a write is read afresh each time: the first write after space
        // returns must not wait out a stale reading.
        if r.exhausted || r.at.is_none_or(|t| t.elapsed() >= REFRESH) {
            match statvfs(&self.dir) {
                Ok(space) => r.space = space,
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "statvfs failed")
                }
            }
            r.at = Some(Instant::now());
        }
        r.space
    }

    /// Whether `bytes` more may be written; refuses with what is free and what is kept.
    pub fn admit(&self, bytes: u64) -> Result<(), NoSpace> {
        let mut r = self.reading.lock().expect("space lock");
        let exhausted = r.exhausted;
        let Some(reserve) = self.reserve.or(exhausted.then_some(0)) else {
            return Ok(());
        };
        let space = self.refreshed(&mut r);
        if admits(space.free, reserve, bytes, exhausted) {
            if exhausted {
                tracing::info!(dir = %self.dir.display(), free = space.free, "disk space returned: accepting writes again");
            }
            r.exhausted = false;
            r.space.free = space.free.saturating_sub(bytes);
            return Ok(());
        }
        Err(NoSpace {
            dir: self.dir.clone(),
            free: space.free,
            reserve,
        })
    }

    /// The disk refused a write (ENOSPC/EDQUOT): refuse until the reserve is free again.
    pub fn exhausted(&self) {
        let mut r = self.reading.lock().expect("space lock");
        r.exhausted = true;
        r.at = None;
    }
}

impl SpaceGuard {
    /// Forgets that the disk refused a write (tests that must fail a round again at once).
    #[cfg(test)]
    pub(crate) fn forget_refusal(&self) {
        self.reading.lock().expect("space lock").exhausted = false;
    }
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_stays_free() {
        assert!(admits(100, 50, 50, false));
        assert!(!admits(100, 50, 51, false));
        assert!(!admits(10, 50, 0, false));
    }

    #[test]
    fn a_disk_that_refused_a_write_waits_for_its_reserve() {
        // A refused write does not come back for a sliver of space: the reserve must be free.
        assert!(!admits(49, 50, 1, true));
        assert!(admits(50, 50, 1, true));
        // With no reserve, any room for the write will do.
        assert!(admits(10, 0, 10, true));
        assert!(!admits(9, 0, 10, true));
    }

    #[test]
    fn the_default_reserve_is_two_percent_within_bounds() {
        assert_eq!(auto_reserve(100 << 30), 1 << 30);
        assert_eq!(auto_reserve(10 << 30), (10u64 << 30) / 50);
        assert_eq!(auto_reserve(100 << 20), 4 << 20);
        // A tiny disk keeps at most a quarter.
        assert_eq!(auto_reserve(8 << 20), 2 << 20);
    }

    #[test]
    fn the_guard_reads_the_real_disk() {
        let dir = tempfile::tempdir().unwrap();
        let space = statvfs(dir.path()).unwrap();
        assert!(space.total > 0 && space.free <= space.total);
        let guard = SpaceGuard::new(dir.path(), Some(space.total + 1)).unwrap();
        let err = guard.admit(1).unwrap_err();
        assert_eq!(err.reserve, space.total + 1);
        assert!(err.to_string().contains("is full"), "{err}");
        let open = SpaceGuard::new(dir.path(), Some(0)).unwrap();
        assert!(open.admit(u64::MAX / 2).is_ok());
        open.exhausted();
        assert!(open.admit(u64::MAX / 2).is_err(), "a full disk is believed");
    }
}
