//! A refusal kept by a process of its own where no bpffs outlives the drain.
//!
//! A refusal must outlive the drain: `ExecStop=drainctl drain` ends before the service's
//! stop, and a connection the old server accepts in between is cut by that stop (behind a
//! load balancer that reconnects at once, a lost request). The program is pinned in bpffs
//! for that, but there is not always a bpffs that outlives drainctl: `ip netns exec`
//! runs it alone in a mount namespace with a /sys of its own, where a bpffs would end
//! with it, and the host's may be out of reach; a container may hold none and lack the
//! right to mount one. There the link is handed to this small process, a copy of the
//! running executable (`/proc/self/exe`) started for it, which holds it until the
//! draining listeners close or the refusal's [`Expiry`], and exits.
//!
//! It takes nothing but three descriptors over a socket pair (`SCM_RIGHTS`): the link,
//! the draining listeners' map (the kernel empties it when they close) and the expiry's
//! map (a release or the drain's end rewrites it). It is in a session of its own, so a
//! terminal's signals pass it by, and it blocks SIGTERM, SIGINT and SIGHUP: a service
//! manager stopping the unit signals every process in it at once, and the holder must
//! outlast the server it protects, which it does by exiting when its listener closes,
//! never later than the expiry; SIGKILL, which it cannot block, ends it.

use std::{
    ffi::OsStr,
    fs,
    io::{self, IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::process::CommandExt as _,
    },
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use aya::maps::{Array, Map, MapData, SockHash};
use nix::sys::signal::{SigSet, Signal};
use rustix::net::{
    recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
    RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::expiry::Expiry;

/// The first argument that makes either binary a holder ([`run_if_asked`]): not an
/// option of either command line, and not for people to type.
const HOLD_ARGUMENT: &str = "--hold-drain-refusal";

/// How often the holder looks at the listeners and the expiry. Only when it exits
/// depends on it, not the refusal: the program stops refusing by itself once the
/// listeners are gone or the expiry has passed.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// How long the holder may take to say it holds the link before the drain goes on
/// without it.
const READY_WITHIN: Duration = Duration::from_secs(5);

/// The descriptors the holder keeps, in the order they are sent.
const DESCRIPTORS: usize = 3;

/// Starts a holder of the steering `link` (the link's id, found among this process's
/// descriptors) until the listeners in `listeners` are gone or the instant in `expiry`
/// has passed; returns its pid once it holds them.
pub(super) fn spawn(
    port: u16,
    link_id: u32,
    listeners: BorrowedFd<'_>,
    expiry: BorrowedFd<'_>,
) -> io::Result<u32> {
    let link = own_link_descriptor(link_id)?;
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let mut child = Command::new("/proc/self/exe")
        .arg(HOLD_ARGUMENT)
        .arg(port.to_string())
        .stdin(Stdio::from(theirs))
        // Not drainctl's: whoever reads its output to the end would wait for the holder.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    // Reaped when it exits, so a daemon does not collect zombies; drainctl may be gone.
    thread::spawn(move || child.wait());
    let descriptors = [link.as_fd(), listeners, expiry];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(DESCRIPTORS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&descriptors)) {
        return Err(io::Error::other("the descriptors do not fit the message"));
    }
    sendmsg(
        &ours,
        &[IoSlice::new(&port.to_ne_bytes())],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    rustix::net::sockopt::set_socket_timeout(
        &ours,
        rustix::net::sockopt::Timeout::Recv,
        Some(READY_WITHIN),
    )?;
    let mut ready = [0u8; 1];
    match rustix::io::read(&ours, &mut ready)? {
        1 => Ok(pid),
        _ => Err(io::Error::other(
            "the holder exited before it held the refusal",
        )),
    }
}

/// A descriptor of this process's link `link_id`: aya's link does not lend its own, so it
/// is found by its id in `/proc/self/fdinfo` and duplicated with `pidfd_getfd`.
fn own_link_descriptor(link_id: u32) -> io::Result<OwnedFd> {
    let wanted = link_id.to_string();
    for entry in fs::read_dir("/proc/self/fdinfo")? {
        let name = entry?.file_name();
        let Some(fd) = name.to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(info) = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        let is_it = info.lines().any(|line| {
            line.strip_prefix("link_id:")
                .is_some_and(|id| id.trim() == wanted)
        });
        if is_it {
            let own = rustix::process::pidfd_open(
                rustix::process::getpid(),
                rustix::process::PidfdFlags::empty(),
            )?;
            return Ok(rustix::process::pidfd_getfd(
                own,
                fd,
                rustix::process::PidfdGetfdFlags::empty(),
            )?);
        }
    }
    Err(io::Error::other(format!(
        "no descriptor of this process holds BPF link {link_id}"
    )))
}

/// Becomes a holder, and exits when done, if this process was started as one; returns
/// otherwise. Called first by both binaries' `main`.
pub fn run_if_asked() {
    if std::env::args_os().nth(1).as_deref() != Some(OsStr::new(HOLD_ARGUMENT)) {
        return;
    }
    std::process::exit(match hold() {
        Ok(()) => 0,
        Err(err) => {
            // Seen only by someone who started it by hand: a drain gives it no stderr.
            eprintln!(
                "{HOLD_ARGUMENT}: {err} (a drain starts this itself, with its link on stdin)"
            );
            4
        }
    })
}

fn hold() -> io::Result<()> {
    let _ = nix::unistd::setsid();
    let mut blocked = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        blocked.add(signal);
    }
    blocked.thread_block().map_err(io::Error::from)?;
    let socket = io::stdin().as_fd().try_clone_to_owned()?;
    let [link, listeners, expiry] = receive(&socket)?;
    let listeners = SockHash::<_, u32>::try_from(Map::SockHash(
        MapData::from_fd(listeners).map_err(io::Error::other)?,
    ))
    .map_err(io::Error::other)?;
    let expiry = Array::<_, u64>::try_from(Map::Array(
        MapData::from_fd(expiry).map_err(io::Error::other)?,
    ))
    .map_err(io::Error::other)?;
    rustix::io::write(&socket, &[1])?;
    drop(socket);
    loop {
        let listening = listeners.keys().any(|key| key.is_ok());
        let ended = Expiry::read(&expiry).is_none_or(Expiry::passed);
        if !listening || ended {
            drop(link);
            return Ok(());
        }
        thread::sleep(CHECK_EVERY);
    }
}

/// The descriptors [`spawn`] sends, in its order.
fn receive(socket: &OwnedFd) -> io::Result<[OwnedFd; DESCRIPTORS]> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(DESCRIPTORS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut port = [0u8; 2];
    recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut port)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut received = Vec::with_capacity(DESCRIPTORS);
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            received.extend(fds);
        }
    }
    received
        .try_into()
        .map_err(|_| io::Error::other("the drain sent no link and maps"))
}
