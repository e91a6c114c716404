//! Whether `drain-daemon` logs to journald.
//!
//! Under systemd, stderr is a stream to journald and every line it carries lands at one
//! priority, so `journalctl -p warning` finds none of the daemon's warnings. When stderr
//! is the journal the daemon sends its events to journald natively instead
//! (tracing-journald), each at its level's priority (error 3, warn 4, info 5, debug 6,
//! trace 7). Everywhere else (a terminal, a test's pipe, a redirect to a file) it keeps
//! the text on stderr.
//!
//! "Stderr is the journal" is systemd's own test (systemd.exec(5), `$JOURNAL_STREAM`):
//! the variable names the device and inode of the stream systemd connected, and only if
//! stderr is still that stream is it the journal. A variable inherited by a process whose
//! stderr was redirected does not count.

use std::{ffi::OsStr, io, os::fd::AsFd as _};

/// The identity of a file: its device and inode numbers.
pub type FileId = (u64, u64);

/// Whether stderr, identified by `stderr`, is the journal stream `journal_stream` (the
/// value of `$JOURNAL_STREAM`, `DEVICE:INODE` in decimal) names. Pure, for its tests.
pub fn stderr_is_journal(journal_stream: Option<&OsStr>, stderr: Option<FileId>) -> bool {
    let (Some(value), Some(stderr)) = (journal_stream.and_then(OsStr::to_str), stderr) else {
        return false;
    };
    let Some((device, inode)) = value.split_once(':') else {
        return false;
    };
    matches!((device.parse(), inode.parse()), (Ok(device), Ok(inode)) if (device, inode) == stderr)
}

/// The device and inode of this process's stderr; `None` if it is closed.
pub fn stderr_id() -> Option<FileId> {
    let stat = rustix::fs::fstat(io::stderr().as_fd()).ok()?;
    Some((stat.st_dev, stat.st_ino))
}

/// Whether this process's stderr is the journal: see the module documentation.
pub fn under_journal() -> bool {
    stderr_is_journal(std::env::var_os("JOURNAL_STREAM").as_deref(), stderr_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_the_journal_only_if_it_is_the_stream_journal_stream_names() {
        let stream = Some(OsStr::new("8:12345"));
        assert!(stderr_is_journal(stream, Some((8, 12345))));
        // Inherited by a process whose stderr goes elsewhere.
        assert!(!stderr_is_journal(stream, Some((8, 999))));
        assert!(!stderr_is_journal(stream, Some((9, 12345))));
        assert!(!stderr_is_journal(stream, None));
        // Not under systemd, or a value that is not DEVICE:INODE.
        assert!(!stderr_is_journal(None, Some((8, 12345))));
        for bad in ["", "8", "8:", ":12345", "a:b", "8:12345:1", "-8:12345"] {
            assert!(
                !stderr_is_journal(Some(OsStr::new(bad)), Some((8, 12345))),
                "{bad}"
            );
        }
    }

    #[test]
    fn this_process_stderr_has_an_identity() {
        // Whatever the test harness connected; the value is compared, never parsed.
        assert!(stderr_id().is_some());
    }
}
