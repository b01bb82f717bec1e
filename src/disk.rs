//! The data disk's free space. Qdrant Edge writes its WAL and segments through memory maps:
//! on a full disk a write to a new page is a SIGBUS, not an error (kb died that way when it
//! started on a full disk, and a job hung at 0% CPU). So kb never lets the disk run dry: below
//! `limits.min_free_disk_mb` it is read-only. Uploads, deletes and new versions get 507
//! `insufficient_storage` (retryable; no Retry-After, which HTTP defines for 429 and 503 only); jobs pause (back to `queued`, saying why) and resume by themselves;
//! searches and answers go on. The free space is checked every `limits.disk_check_secs`, and
//! kb becomes writable again as soon as there is room.

use crate::error::{ClientError, Code};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Below this, kb does not even open its index (opening writes the next WAL segment's header
/// through a memory map): it refuses to start, saying why, instead of dying of SIGBUS.
pub const OPEN_FLOOR: u64 = 16 << 20;

pub struct DiskGuard {
    dir: PathBuf,
    reserve: u64,
    free: AtomicU64,
    writable: AtomicBool,
    changed: watch::Sender<bool>,
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes into the zeroed struct it is given; `c` is a valid C string.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(s.f_bavail as u64 * s.f_frsize as u64)
    }
}

impl DiskGuard {
    pub fn new(dir: &Path, reserve_bytes: u64) -> Arc<DiskGuard> {
        let (changed, _) = watch::channel(true);
        let g = Arc::new(DiskGuard {
            dir: dir.to_path_buf(),
            reserve: reserve_bytes,
            free: AtomicU64::new(u64::MAX),
            writable: AtomicBool::new(true),
            changed,
        });
        g.check();
        g
    }

    /// Measure now; returns whether kb may write.
    pub fn check(&self) -> bool {
        // Unknown: a statvfs failure does not block writes.
        let free = free_bytes(&self.dir).unwrap_or(u64::MAX);
        self.free.store(free, Ordering::SeqCst);
        let ok = free >= self.reserve;
        let was = self.writable.swap(ok, Ordering::SeqCst);
        if was != ok {
            if ok {
                tracing::info!(
                    free_mib = free >> 20,
                    "the data disk has room again: writes and ingestion resume"
                );
            } else {
                tracing::warn!(
                    free_mib = free >> 20,
                    reserve_mib = self.reserve >> 20,
                    dir = %self.dir.display(),
                    "the data disk is nearly full: kb is read-only (searches and answers go on; uploads, deletes and ingestion wait) until space is freed"
                );
            }
            let _ = self.changed.send(ok);
        }
        ok
    }

    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::SeqCst)
    }

    pub fn free(&self) -> u64 {
        self.free.load(Ordering::SeqCst)
    }

    /// Room for `bytes` more above the reserve, or the 507 to answer.
    pub fn room_for(&self, bytes: u64) -> Result<(), ClientError> {
        if !self.writable() || self.free().saturating_sub(bytes) < self.reserve {
            return Err(self.full_error());
        }
        Ok(())
    }

    pub fn full_error(&self) -> ClientError {
        ClientError::new(
            Code::InsufficientStorage,
            format!(
                "the server's data disk is nearly full ({} MiB free, {} MiB kept in reserve): kb is read-only until space is freed",
                self.free() >> 20,
                self.reserve >> 20
            ),
        )
    }

    /// Why a job waits.
    pub fn waiting_note(&self) -> String {
        format!(
            "waiting for disk space ({} MiB free, {} MiB kept in reserve); resumes by itself",
            self.free() >> 20,
            self.reserve >> 20
        )
    }

    /// Wait until kb may write.
    pub async fn wait_writable(&self) {
        let mut rx = self.changed.subscribe();
        while !self.writable() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Check every `every` in the background.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let g = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(g) = g.upgrade() else { return };
                g.check();
            }
        });
    }
}

/// Whether `e` is "no space left on device" (or a quota).
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_decides() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let g = DiskGuard::new(dir.path(), 1);
        assert!(g.writable());
        assert!(g.room_for(0).is_ok());
        assert_eq!(
            g.room_for(u64::MAX).unwrap_err().code,
            Code::InsufficientStorage
        );
        let full = DiskGuard::new(dir.path(), u64::MAX);
        assert!(!full.writable());
        let e = full.room_for(0).unwrap_err();
        assert_eq!(e.code.status().as_u16(), 507);
        assert!(e.message.contains("read-only"), "{}", e.message);
    }
}
