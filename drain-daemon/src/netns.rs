//! The network namespace this process works in.
//!
//! Steering, drain records and the daemon's client check all name the namespace by the
//! inode of `/proc/self/ns/net`: unique among live namespaces, and what `ip netns` and
//! `lsns` show.

use std::{fs::File, io, os::unix::fs::MetadataExt as _};

/// This process's network namespace, opened (for attaching programs) with its inode.
pub fn open_current() -> io::Result<(File, u64)> {
    let file = File::open("/proc/self/ns/net")?;
    let inode = file.metadata()?.ino();
    Ok((file, inode))
}

/// The inode of this process's network namespace.
pub fn current_inode() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/net")?.ino())
}
