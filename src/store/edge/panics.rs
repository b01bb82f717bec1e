//! Qdrant Edge can panic inside a call (a flush that meets a full disk, an exhausted
//! descriptor table, or the index build's brief segment swap): every call runs here, so a
//! panic becomes a short `StoreError` and never unwinds through a lock.

use crate::store::{Result, StoreError};

pub(super) fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A short cause for a Qdrant Edge failure text, in kb's words.
pub(super) fn cause_of(detail: &str) -> &'static str {
    let d = detail.to_ascii_lowercase();
    if d.contains("too many open files") || d.contains("os error 24") {
        "too many open files"
    } else if d.contains("no space left") || d.contains("os error 28") || d.contains("disk full") {
        "the disk is full"
    } else if d.contains("out of memory") || d.contains("cannot allocate") {
        "out of memory"
    } else if d.contains("permission denied") || d.contains("read-only file system") {
        "the index files cannot be written"
    } else {
        "an internal error of the index"
    }
}

pub(super) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Run a Qdrant Edge call that may panic (its flush `expect`s every I/O result): a panic
/// becomes a [`StoreError::Transient`] instead of unwinding through the shard's write lock
/// (which would poison it: every later write would fail until a restart). The detail goes to
/// the log, a short sentence to the caller.
pub(super) fn guarded<T>(what: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    guarded_quiet(what, f).map_err(|(e, detail)| {
        tracing::error!(operation = what, detail = %detail, "the vector index failed");
        e
    })
}

/// [`guarded`] without the log line: the error and the panic's text, for a caller that may
/// retry. The default panic hook does not print a panic caught here either.
pub(super) fn guarded_quiet<T>(
    what: &'static str,
    f: impl FnOnce() -> Result<T>,
) -> std::result::Result<T, (StoreError, String)> {
    install_quiet_hook();
    QUIET_PANICS.with(|q| q.set(q.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(q.get() - 1));
    match r {
        Ok(r) => r.map_err(|e| (e, String::new())),
        Err(p) => {
            let detail = panic_text(&*p);
            let e = StoreError::Transient(format!(
                "the index could not be {what} ({})",
                cause_of(&detail)
            ));
            Err((e, detail))
        }
    }
}

thread_local! {
    /// Inside a [`guarded`] call: its panics are reported by kb's log, not by the panic hook.
    static QUIET_PANICS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

pub(super) fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET_PANICS.with(|q| q.get()) == 0 {
                prev(info);
            }
        }));
    });
}
