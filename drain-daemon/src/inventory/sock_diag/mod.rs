//! A small, typed, safe client for `NETLINK_SOCK_DIAG` (TCP over IPv4 and IPv6 only).
//!
//! Why this exists: draining a port needs an exact and cheap view of the TCP sockets whose
//! *local* port is the drained port — the listener with its accept queue, and every connection
//! with its queues and `TCP_INFO` (idle times, byte counters) — taken often and without
//! paying for the other, possibly hundreds of thousands of, sockets on the machine.
//! `/proc/net/tcp` is text, has no `TCP_INFO` and always lists everything; `ss` is a process
//! and text again. sock_diag lets the kernel filter by port with a tiny bytecode program
//! (the very program `ss '( sport = :PORT )'` sends), so only matching sockets are serialised
//! and copied to user space. The drain also needs exact per-socket operations that only
//! sock_diag offers: re-reading one socket by its 4-tuple and cookie (the cookie makes the
//! answer exact even if the 4-tuple has been reused), and `SOCK_DESTROY`, which aborts one
//! socket from outside its owning process (the peer gets a RST).
//!
//! Everything here is plain netlink written by hand on top of `nix`'s socket calls: requests
//! are serialised and answers parsed with explicit `to_ne_bytes`/`from_ne_bytes` (netlink
//! headers, `inet_diag` structs and `tcp_info` are host-endian) and `from_be_bytes` (ports and
//! addresses are network-endian), with a length check before every read. A short or malformed
//! answer is a [`SockDiagError`], never a panic. The wire format (kernel numbers, the
//! typed values, encoding requests and parsing answers) is in [`parse`], as pure functions
//! that tests and the fuzzer call without a socket; this module is the socket loop
//! around them.
//!
//! Kernel requirements (minimum versions as far as the kernel sources show; the target
//! platform is 6.18 with `CONFIG_INET_DIAG=y` and `CONFIG_INET_DIAG_DESTROY=y`):
//! * `SOCK_DIAG_BY_FAMILY` with `struct inet_diag_req_v2`: Linux 3.3 (`CONFIG_INET_DIAG`).
//! * The port filter is an `INET_DIAG_BC_S_COND` host condition with family `AF_UNSPEC`,
//!   prefix length 0 and the port: it has been in `inet_diag` since 2.6, and it is exactly what
//!   iproute2's `ss` builds for `sport = :PORT` (checked byte for byte with `strace` against
//!   `ss` 6.1). `INET_DIAG_BC_S_EQ` (code 11, port in a follow-on op) is equivalent but
//!   newer: it is not in 4.14's `inet_diag.c` (added later, around 4.16), so it is not used.
//! * Socket cookies (`idiag_cookie`) are unique 64-bit numbers since Linux 4.1
//!   ("net: add real socket cookies"); before that they were derived from the kernel address of
//!   the socket and could repeat.
//! * `SOCK_DESTROY`: Linux 4.5 and `CONFIG_INET_DIAG_DESTROY=y`, and `CAP_NET_ADMIN` in the
//!   network namespace that owns the socket.
//! * `TCP_INFO` fields by version: see [`TcpInfo`].
//!
//! All calls block (a receive timeout of [`RECV_TIMEOUT`] bounds every wait); from async
//! code use `spawn_blocking` or a dedicated thread. Dumps, [`SockDiag::get`] and
//! [`SockDiag::dump_port`] work unprivileged, for the caller's own network namespace.
#![forbid(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

pub mod parse;

use crate::failpoint::{self, Fault, Point};

use parse::{
    build_request, encode_sockid, parse_diag_msg, NlMessages, Reply, AF_INET, AF_INET6,
    INET_DIAG_REQ_V2_LEN, INET_DIAG_SOCKID_LEN, NLMSG_DONE, NLMSG_HDRLEN, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST, PORT_BYTECODE_LEN, SOCK_DESTROY, SOCK_DIAG_BY_FAMILY,
};
pub use parse::{
    port_filter_bytecode, SocketId, TcpInfo, TcpSocket, TcpState, TcpStates, UnknownTcpState,
};

/// Initial size of the receive buffer. The kernel sizes dump datagrams after the reader's
/// buffer but caps them at about 32 KiB (32232-byte datagrams observed on 6.18), so 64 KiB
/// holds every datagram in practice; a larger one is still handled (the buffer grows, see
/// [`SockDiag`]).
const RECV_BUF_INITIAL: usize = 64 * 1024;

/// Upper bound on every wait for a kernel answer (`SO_RCVTIMEO` on the netlink socket).
/// The kernel answers sock_diag requests synchronously, so hitting it means something is
/// badly wrong; the call then fails with [`SockDiagError::Recv`] (`EAGAIN`).
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

// --- Errors --------------------------------------------------------------------------------

/// Everything that can go wrong talking to `NETLINK_SOCK_DIAG`.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// Creating the netlink socket failed.
    #[error("socket(AF_NETLINK, NETLINK_SOCK_DIAG): {0}")]
    Socket(#[source] nix::Error),
    /// Setting up the netlink socket (receive timeout, connect to the kernel) failed.
    #[error("{call} on the NETLINK_SOCK_DIAG socket: {source}")]
    Setup {
        /// The failing call.
        call: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// `send()` of a request failed, or sent less than the whole message.
    #[error("send({request}) on NETLINK_SOCK_DIAG: {source}")]
    Send {
        /// The request being sent.
        request: &'static str,
        /// The errno (`EMSGSIZE` for a short send).
        #[source]
        source: nix::Error,
    },
    /// `recv()` of an answer failed (`EAGAIN` after [`RECV_TIMEOUT`]).
    #[error("recv(NETLINK_SOCK_DIAG) answering {request}: {source}")]
    Recv {
        /// The request whose answer was awaited.
        request: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The kernel answered a request with `NLMSG_ERROR` (or a dump ended with a negative
    /// `NLMSG_DONE` status), and no more specific variant applies.
    #[error("kernel rejected {request}: {errno}")]
    Kernel {
        /// The request the kernel rejected.
        request: &'static str,
        /// The kernel's error.
        errno: Errno,
    },
    /// A message or attribute is shorter than the structure it must hold.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// What was being parsed.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// An answer is well-sized but makes no sense (bad length field, unknown family or state,
    /// unexpected message type).
    #[error("malformed sock_diag answer: {what} ({value})")]
    Malformed {
        /// What is wrong.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
    /// A [`SocketId`] that cannot be sent to the kernel (local and remote address of
    /// different families).
    #[error("invalid socket id: {what}")]
    InvalidId {
        /// Why.
        what: &'static str,
    },
    /// `SOCK_DESTROY` is not available: the kernel answered `EOPNOTSUPP` (kernel older than
    /// 4.5, or built without `CONFIG_INET_DIAG_DESTROY`).
    #[error(
        "SOCK_DESTROY is not supported by this kernel (needs Linux >= 4.5 with CONFIG_INET_DIAG_DESTROY=y): {errno}"
    )]
    Unsupported {
        /// The kernel's error.
        errno: Errno,
    },
    /// `SOCK_DESTROY` was refused with `EPERM`: the caller lacks `CAP_NET_ADMIN` in the
    /// socket's network namespace.
    #[error("SOCK_DESTROY needs CAP_NET_ADMIN in the socket's network namespace: {errno}")]
    PermissionDenied {
        /// The kernel's error.
        errno: Errno,
    },
    /// `SOCK_DESTROY` found no socket with that 4-tuple and cookie (`ENOENT`): it is already
    /// gone. For a drain this usually counts as success.
    #[error(
        "SOCK_DESTROY: no socket with that id (already closed, or the cookie no longer matches)"
    )]
    NotFound,
}

impl SockDiagError {
    /// True when the error is a complete answer from the kernel (nothing of the exchange is
    /// left unread on the netlink socket, so it can be reused as is).
    fn is_complete_answer(&self) -> bool {
        matches!(
            self,
            Self::Kernel { .. }
                | Self::Unsupported { .. }
                | Self::PermissionDenied { .. }
                | Self::NotFound
                | Self::InvalidId { .. }
        )
    }
}

type Result<T, E = SockDiagError> = std::result::Result<T, E>;

// --- The client ----------------------------------------------------------------------------

/// A `NETLINK_SOCK_DIAG` socket with a reusable receive buffer and a request sequence counter.
///
/// Not shareable between threads while in use (`&mut self`); open one per thread if needed.
/// Each answer datagram is first sized with `recv(MSG_PEEK | MSG_TRUNC)` on an empty buffer,
/// the buffer grows if needed, then the datagram is read whole, so no answer is ever silently
/// truncated. Answers are matched to their request by sequence number; stale answers (to a
/// request abandoned after an error) are skipped. After an error in the middle of an exchange
/// the netlink socket is replaced by a fresh one on the next call, so a half-read dump cannot
/// block later requests (the kernel allows one running dump per netlink socket).
#[derive(Debug)]
pub struct SockDiag {
    fd: OwnedFd,
    buf: Vec<u8>,
    req: Vec<u8>,
    seq: u32,
    reopen: bool,
    /// A fault to inject into the next answer ([`crate::failpoint`], debug builds).
    fault: Option<Fault>,
}

impl SockDiag {
    /// Opens a `NETLINK_SOCK_DIAG` socket (close-on-exec, connected to the kernel so only the
    /// kernel can answer it, with a [`RECV_TIMEOUT`] receive timeout).
    pub fn open() -> Result<Self> {
        Ok(SockDiag {
            fd: open_netlink()?,
            buf: vec![0; RECV_BUF_INITIAL],
            req: Vec::with_capacity(NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN + 4 + PORT_BYTECODE_LEN),
            seq: 0,
            reopen: false,
            fault: None,
        })
    }

    /// All TCP sockets, IPv4 and IPv6, whose LOCAL port is `port` and whose state is in
    /// `states`, with `TCP_INFO`, filtered in the kernel by an `INET_DIAG_REQ_BYTECODE`
    /// `sport == port` filter (so sockets on other ports cost almost nothing).
    ///
    /// Sends one dump request per family (`AF_INET`, then `AF_INET6`; the IPv6 dump includes
    /// the v4-mapped sockets of dual-stack listeners, the IPv4 one does not, so nothing is
    /// listed twice). The kernel still walks all TCP sockets of the caller's network namespace,
    /// but runs only the 16-byte filter on each; only matches are serialised and copied.
    /// The answer is a consistent view of each socket, not of the whole set: sockets that
    /// appear or close during the dump may or may not be listed.
    pub fn dump_port(&mut self, port: u16, states: TcpStates) -> Result<Vec<TcpSocket>> {
        let mut sockets = Vec::new();
        self.dump_port_each(port, states, |s| sockets.push(s))?;
        Ok(sockets)
    }

    /// [`SockDiag::dump_port`] without collecting: calls `f` for each socket as it is parsed.
    /// On error, `f` may already have been called for some of the sockets.
    pub fn dump_port_each(
        &mut self,
        port: u16,
        states: TcpStates,
        mut f: impl FnMut(TcpSocket),
    ) -> Result<()> {
        if states.is_empty() {
            return Ok(());
        }
        self.fault = failpoint::hit(Point::Scan, port);
        let bytecode = port_filter_bytecode(port);
        for family in [AF_INET, AF_INET6] {
            self.dump_family(family, states, Some(&bytecode), &mut f)?;
        }
        Ok(())
    }

    /// Re-read exactly one socket (family, 4-tuple and cookie; an exact non-dump
    /// `SOCK_DIAG_BY_FAMILY` request). `Ok(None)` when it no longer exists (the kernel answers
    /// `ENOENT`, also when the 4-tuple now belongs to a socket with another cookie).
    ///
    /// The family is that of `id.local`; v4-mapped IPv6 addresses are sent as they are (the
    /// kernel looks them up in the IPv4 tables, which is where such sockets live).
    /// For a listener the kernel uses its packet-path listener lookup, so an `sk_lookup` BPF
    /// program attached to the namespace can redirect the lookup to another listener; the
    /// cookie check then fails and the answer is `None` although the listener exists. Use
    /// [`SockDiag::dump_port`] for listeners.
    pub fn get(&mut self, id: &SocketId) -> Result<Option<TcpSocket>> {
        const REQUEST: &str = "SOCK_DIAG_BY_FAMILY (exact)";
        let sockid = encode_sockid(id)?;
        self.exchange(|this| {
            let seq = this.send_exact(REQUEST, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, sockid)?;
            let mut found = None;
            this.read_replies(seq, REQUEST, |reply| match reply {
                Reply::Diag(payload) => {
                    found = Some(parse_diag_msg(payload)?);
                    Ok(true)
                }
                Reply::Error(e) if e == -(Errno::ENOENT as i32) => Ok(true),
                Reply::Error(0) => Ok(false),
                Reply::Error(e) => Err(kernel_error(REQUEST, e)),
                Reply::Done(_) => Err(SockDiagError::Malformed {
                    what: "NLMSG_DONE answering an exact request",
                    value: u64::from(NLMSG_DONE),
                }),
            })?;
            Ok(found)
        })
    }

    /// `SOCK_DESTROY` one socket by its exact id (abortive: the peer gets a RST, the owning
    /// process gets `ECONNABORTED` on its next call).
    ///
    /// Needs Linux 4.5 with `CONFIG_INET_DIAG_DESTROY=y` ([`SockDiagError::Unsupported`]
    /// otherwise) and `CAP_NET_ADMIN` in the socket's network namespace
    /// ([`SockDiagError::PermissionDenied`]). A socket that is already gone, or whose 4-tuple
    /// now has another cookie, gives [`SockDiagError::NotFound`]. The `sk_lookup` caveat of
    /// [`SockDiag::get`] applies to listeners.
    pub fn destroy(&mut self, id: &SocketId) -> Result<()> {
        const REQUEST: &str = "SOCK_DESTROY";
        let sockid = encode_sockid(id)?;
        self.exchange(|this| {
            let seq = this.send_exact(REQUEST, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, sockid)?;
            this.read_replies(seq, REQUEST, |reply| match reply {
                Reply::Error(0) => Ok(true),
                Reply::Error(e) => Err(match Errno::from_raw(e.saturating_neg()) {
                    Errno::ENOENT => SockDiagError::NotFound,
                    errno @ Errno::EOPNOTSUPP => SockDiagError::Unsupported { errno },
                    errno @ (Errno::EPERM | Errno::EACCES) => {
                        SockDiagError::PermissionDenied { errno }
                    }
                    errno => SockDiagError::Kernel {
                        request: REQUEST,
                        errno,
                    },
                }),
                Reply::Diag(_) | Reply::Done(_) => Err(SockDiagError::Malformed {
                    what: "unexpected answer to SOCK_DESTROY",
                    value: 0,
                }),
            })
        })
    }

    /// One dump of `family` with the filter program `bytecode`.
    /// All TCP sockets, IPv4 and IPv6, whose state is in `states`, with `TCP_INFO` (no port
    /// filter: meant for small sets such as every listener of the namespace).
    pub fn dump_all(&mut self, states: TcpStates) -> Result<Vec<TcpSocket>> {
        let mut sockets = Vec::new();
        if !states.is_empty() {
            for family in [AF_INET, AF_INET6] {
                self.dump_family(family, states, None, &mut |s| sockets.push(s))?;
            }
        }
        Ok(sockets)
    }

    fn dump_family(
        &mut self,
        family: u8,
        states: TcpStates,
        bytecode: Option<&[u8]>,
        f: &mut dyn FnMut(TcpSocket),
    ) -> Result<()> {
        let request = if family == AF_INET {
            "SOCK_DIAG_BY_FAMILY dump (AF_INET, TCP)"
        } else {
            "SOCK_DIAG_BY_FAMILY dump (AF_INET6, TCP)"
        };
        self.exchange(|this| {
            let seq = this.next_seq();
            build_request(
                &mut this.req,
                SOCK_DIAG_BY_FAMILY,
                NLM_F_REQUEST | NLM_F_DUMP,
                seq,
                family,
                states,
                &[0; INET_DIAG_SOCKID_LEN],
                bytecode,
            );
            this.send(request)?;
            this.read_replies(seq, request, |reply| match reply {
                Reply::Diag(payload) => {
                    f(parse_diag_msg(payload)?);
                    Ok(false)
                }
                Reply::Done(status) if status < 0 => Err(kernel_error(request, status)),
                Reply::Done(_) => Ok(true),
                Reply::Error(0) => Ok(false),
                Reply::Error(e) => Err(kernel_error(request, e)),
            })
        })
    }

    /// Runs one request/answer exchange; replaces the netlink socket first if an earlier
    /// exchange was abandoned half-way.
    fn exchange<T>(&mut self, run: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.reopen {
            self.fd = open_netlink()?;
            self.reopen = false;
        }
        let result = run(self);
        if let Err(e) = &result {
            if !e.is_complete_answer() {
                self.reopen = true;
            }
        }
        result
    }

    /// Sends a request of `nlmsg_type` about one socket, named by its encoded exact id
    /// (`(family, inet_diag_sockid)` from [`encode_sockid`]), in every TCP state; returns
    /// its sequence number.
    fn send_exact(
        &mut self,
        request: &'static str,
        nlmsg_type: u16,
        flags: u16,
        (family, sockid): (u8, [u8; INET_DIAG_SOCKID_LEN]),
    ) -> Result<u32> {
        let seq = self.next_seq();
        build_request(
            &mut self.req,
            nlmsg_type,
            flags,
            seq,
            family,
            TcpStates::ALL,
            &sockid,
            None,
        );
        self.send(request)?;
        Ok(seq)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends the request in `self.req`.
    fn send(&mut self, request: &'static str) -> Result<()> {
        loop {
            match socket::send(self.fd.as_raw_fd(), &self.req, MsgFlags::empty()) {
                Ok(n) if n == self.req.len() => return Ok(()),
                Ok(_) => {
                    return Err(SockDiagError::Send {
                        request,
                        source: Errno::EMSGSIZE,
                    });
                }
                Err(Errno::EINTR) => continue,
                Err(source) => return Err(SockDiagError::Send { request, source }),
            }
        }
    }

    /// Receives one whole datagram into `self.buf`, growing it as needed; returns its length.
    fn recv_datagram(&mut self, request: &'static str) -> Result<usize> {
        let fault = self.fault.take();
        match fault {
            Some(Fault::Enobufs) => {
                return Err(SockDiagError::Recv {
                    request,
                    source: Errno::ENOBUFS,
                })
            }
            Some(Fault::Timeout) => {
                return Err(SockDiagError::Recv {
                    request,
                    source: Errno::EAGAIN,
                })
            }
            // Other points' faults are refused for scans when the failpoints are parsed.
            Some(Fault::Malformed | Fault::PermissionDenied | Fault::NoProtocolOption) | None => {}
        }
        let fd = self.fd.as_raw_fd();
        let size = loop {
            // Empty buffer + MSG_PEEK | MSG_TRUNC: the kernel returns the datagram's real
            // length and copies nothing.
            match socket::recv(fd, &mut [], MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC) {
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(source) => return Err(SockDiagError::Recv { request, source }),
            }
        };
        if size > self.buf.len() {
            self.buf.resize(size.next_power_of_two(), 0);
        }
        loop {
            match socket::recv(fd, &mut self.buf, MsgFlags::MSG_TRUNC) {
                Ok(n) if n > self.buf.len() => {
                    return Err(SockDiagError::Truncated {
                        what: "netlink datagram",
                        need: n,
                        have: self.buf.len(),
                    });
                }
                Ok(n) => {
                    if fault == Some(Fault::Malformed) {
                        // The first message's type becomes one no answer has.
                        self.buf[4..6].copy_from_slice(&u16::MAX.to_ne_bytes());
                    }
                    return Ok(n);
                }
                Err(Errno::EINTR) => continue,
                Err(source) => return Err(SockDiagError::Recv { request, source }),
            }
        }
    }

    /// Reads answers to request `seq`, passing each to `on` until `on` returns `Ok(true)`.
    /// Messages with another sequence number are stale and skipped.
    fn read_replies(
        &mut self,
        seq: u32,
        request: &'static str,
        mut on: impl FnMut(Reply<'_>) -> Result<bool>,
    ) -> Result<()> {
        loop {
            let len = self.recv_datagram(request)?;
            for msg in NlMessages::new(&self.buf[..len]) {
                let msg = msg?;
                if msg.seq != seq {
                    continue;
                }
                let Some(reply) = parse::reply(&msg)? else {
                    continue;
                };
                if on(reply)? {
                    return Ok(());
                }
            }
        }
    }
}

fn open_netlink() -> Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(SockDiagError::Socket)?;
    let timeout = TimeVal::new(i64::try_from(RECV_TIMEOUT.as_secs()).unwrap_or(i64::MAX), 0);
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(|source| {
        SockDiagError::Setup {
            call: "setsockopt(SO_RCVTIMEO)",
            source,
        }
    })?;
    // Connected to the kernel (port id 0): the kernel then refuses unicasts to this socket
    // from anyone else, so every answer is the kernel's.
    socket::connect(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|source| {
        SockDiagError::Setup {
            call: "connect(nl_pid=0)",
            source,
        }
    })?;
    Ok(fd)
}

fn kernel_error(request: &'static str, negative_errno: i32) -> SockDiagError {
    SockDiagError::Kernel {
        request,
        errno: Errno::from_raw(negative_errno.saturating_neg()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parse::tests::kernel_bc_run;
    use parse::INET_DIAG_BC_S_COND;
    use std::collections::HashSet;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Instant;

    // ---- live tests against the running kernel (current network namespace) ----

    /// Polls `f` until it returns `Some`, for up to 5 s.
    fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn server_side<'a>(socks: &'a [TcpSocket], client: &TcpStream) -> Option<&'a TcpSocket> {
        let peer = client.local_addr().unwrap();
        socks.iter().find(|s| s.id.remote == peer)
    }

    #[test]
    fn dump_port_lists_listener_and_connections_of_that_port_only() {
        let mut diag = SockDiag::open().unwrap();
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let p1 = l1.local_addr().unwrap().port();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let p2 = l2.local_addr().unwrap().port();
        // Two connections nobody accepts on each listener.
        let c1: Vec<_> = (0..2)
            .map(|_| TcpStream::connect(l1.local_addr().unwrap()).unwrap())
            .collect();
        let _c2: Vec<_> = (0..2)
            .map(|_| TcpStream::connect(l2.local_addr().unwrap()).unwrap())
            .collect();

        let socks = eventually("listener with 2 queued connections", || {
            let socks = diag.dump_port(p1, TcpStates::ALL).unwrap();
            let listener = socks.iter().find(|s| s.state == TcpState::Listen)?;
            (listener.recv_queue == 2 && socks.len() == 3).then_some(socks)
        });
        assert!(socks.iter().all(|s| s.id.local.port() == p1), "{socks:#?}");
        assert!(socks.iter().all(|s| s.id.local.port() != p2));
        let listener: Vec<_> = socks
            .iter()
            .filter(|s| s.state == TcpState::Listen)
            .collect();
        assert_eq!(listener.len(), 1);
        let listener = listener[0];
        assert_eq!(listener.id.local, l1.local_addr().unwrap());
        assert_eq!(listener.id.remote, "0.0.0.0:0".parse().unwrap());
        assert!(listener.send_queue > 0, "backlog");
        assert_ne!(listener.inode, 0);
        assert_eq!(listener.uid, nix::unistd::geteuid().as_raw());
        assert!(listener.info.is_some());
        let remotes: HashSet<_> = socks
            .iter()
            .filter(|s| s.state == TcpState::Established)
            .map(|s| s.id.remote)
            .collect();
        let clients: HashSet<_> = c1.iter().map(|c| c.local_addr().unwrap()).collect();
        assert_eq!(remotes, clients);
        for s in socks.iter().filter(|s| s.state == TcpState::Established) {
            assert_eq!(s.inode, 0, "not accepted yet: no file");
            assert_ne!(s.id.cookie, listener.id.cookie);
            assert!(s.info.is_some());
        }

        // State filter: only the listener, only the connections.
        let only_listen = diag.dump_port(p1, TcpStates::LISTEN).unwrap();
        assert_eq!(only_listen.len(), 1);
        assert_eq!(only_listen[0].state, TcpState::Listen);
        let conns = diag.dump_port(p1, TcpStates::CONNECTIONS).unwrap();
        assert_eq!(conns.len(), 2);
        assert!(diag.dump_port(p1, TcpStates::NONE).unwrap().is_empty());

        // The other port's sockets are there too, when asked for.
        let other = diag.dump_port(p2, TcpStates::ALL).unwrap();
        assert!(other.iter().all(|s| s.id.local.port() == p2));
        assert!(other.iter().any(|s| s.state == TcpState::Listen));
    }

    /// The S_EQ form of the program (code 11, port in the follow-on op's `no`) selects the
    /// same sockets on this kernel as the ss-compatible S_COND program.
    #[test]
    fn s_eq_program_selects_the_same_sockets() {
        let mut s_eq = [0u8; 8];
        s_eq[0] = 11;
        s_eq[1] = 8; // yes: end -> accept
        s_eq[2..4].copy_from_slice(&12u16.to_ne_bytes()); // no: past the end -> reject
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        s_eq[6..8].copy_from_slice(&port.to_ne_bytes());
        assert!(kernel_bc_run(&s_eq, port) && !kernel_bc_run(&s_eq, port.wrapping_add(1)));
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut diag = SockDiag::open().unwrap();
        let ids = |socks: Vec<TcpSocket>| socks.into_iter().map(|s| s.id).collect::<HashSet<_>>();
        let by_cond = eventually("2 sockets", || {
            let v = diag.dump_port(port, TcpStates::ALL).unwrap();
            (v.len() == 2).then_some(v)
        });
        let mut by_eq = Vec::new();
        diag.dump_family(AF_INET, TcpStates::ALL, Some(&s_eq), &mut |s| by_eq.push(s))
            .unwrap();
        assert_eq!(ids(by_cond), ids(by_eq));
    }

    #[test]
    fn kernel_rejects_a_bad_program_and_the_client_recovers() {
        let mut diag = SockDiag::open().unwrap();
        // yes = 2: not a multiple of 4, inet_diag_bc_audit says EINVAL.
        let err = diag
            .dump_family(
                AF_INET,
                TcpStates::ALL,
                Some(&[INET_DIAG_BC_S_COND, 2, 0, 0]),
                &mut |_| (),
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                SockDiagError::Kernel {
                    errno: Errno::EINVAL,
                    ..
                }
            ),
            "{err}"
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let socks = diag
            .dump_port(l.local_addr().unwrap().port(), TcpStates::LISTEN)
            .unwrap();
        assert_eq!(socks.len(), 1);
    }

    #[test]
    fn get_finds_a_socket_by_id_and_none_after_close() {
        let mut diag = SockDiag::open().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let socks = diag.dump_port(port, TcpStates::ESTABLISHED).unwrap();
        let found = server_side(&socks, &client)
            .expect("server side in dump")
            .clone();
        assert_ne!(found.inode, 0, "accepted: has a file");

        let again = diag.get(&found.id).unwrap().expect("get finds it");
        assert_eq!(again.id, found.id);
        assert_eq!(again.state, TcpState::Established);
        assert_eq!(again.inode, found.inode);
        assert!(again.info.is_some());

        // The listener, too.
        let listener = diag.dump_port(port, TcpStates::LISTEN).unwrap().remove(0);
        assert_eq!(
            diag.get(&listener.id).unwrap().map(|s| s.id),
            Some(listener.id)
        );

        // Another cookie for the same 4-tuple: not that socket.
        let wrong = SocketId {
            cookie: found.id.cookie ^ 1,
            ..found.id
        };
        assert!(diag.get(&wrong).unwrap().is_none());
        // No cookie: any socket with the 4-tuple.
        let any = SocketId {
            cookie: SocketId::NO_COOKIE,
            ..found.id
        };
        assert_eq!(diag.get(&any).unwrap().map(|s| s.id), Some(found.id));

        // Client closes first (it keeps the TIME-WAIT), then the server: the server side goes
        // CLOSE-WAIT -> LAST-ACK -> gone.
        drop(client);
        drop(server);
        eventually("server side gone", || {
            diag.get(&found.id).unwrap().is_none().then_some(())
        });
    }

    #[test]
    fn tcp_info_counts_unread_bytes() {
        let mut diag = SockDiag::open().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_server, _) = l.accept().unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap(); // 18 bytes, never read
        let s = eventually("18 bytes queued", || {
            let socks = diag.dump_port(port, TcpStates::ESTABLISHED).unwrap();
            server_side(&socks, &client)
                .filter(|s| s.recv_queue == 18)
                .cloned()
        });
        let info = s.info.expect("TCP_INFO");
        assert_eq!(info.state, TcpState::Established.number());
        assert_eq!(info.bytes_received, 18);
        assert_eq!(info.data_segs_in, 1);
        assert_eq!(info.bytes_acked, 0);
        assert_eq!(s.send_queue, 0);
        // The exact re-read agrees.
        let again = diag.get(&s.id).unwrap().unwrap();
        assert_eq!(again.recv_queue, 18);
        assert_eq!(again.info.unwrap().bytes_received, 18);
        // And the client side (another local port) is not in the port's dump.
        let socks = diag.dump_port(port, TcpStates::ALL).unwrap();
        assert!(socks.iter().all(|s| s.id.local.port() == port));
    }

    #[test]
    fn ipv6_loopback() {
        let l = match TcpListener::bind("[::1]:0") {
            Ok(l) => l,
            Err(e) => {
                println!("skipping: no IPv6 loopback here ({e})");
                return;
            }
        };
        let mut diag = SockDiag::open().unwrap();
        let port = l.local_addr().unwrap().port();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let socks = eventually("v6 listener + connection", || {
            let v = diag.dump_port(port, TcpStates::ALL).unwrap();
            (v.len() == 2).then_some(v)
        });
        let listener = socks.iter().find(|s| s.state == TcpState::Listen).unwrap();
        assert_eq!(listener.id.local, l.local_addr().unwrap());
        assert_eq!(listener.id.remote, "[::]:0".parse().unwrap());
        assert_eq!(listener.recv_queue, 1);
        let conn = server_side(&socks, &client).expect("server side");
        assert_eq!(conn.id.local, l.local_addr().unwrap());
        assert_eq!(conn.state, TcpState::Established);
        assert_eq!(diag.get(&conn.id).unwrap().map(|s| s.id), Some(conn.id));
    }

    #[test]
    fn dual_stack_listener_reports_v4_mapped_and_get_finds_it() {
        let l = match TcpListener::bind("[::]:0") {
            Ok(l) => l,
            Err(e) => {
                println!("skipping: no IPv6 here ({e})");
                return;
            }
        };
        let port = l.local_addr().unwrap().port();
        let client = match TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => c,
            Err(e) => {
                println!("skipping: [::] listener is IPv6-only here ({e})");
                return;
            }
        };
        let mut diag = SockDiag::open().unwrap();
        let socks = eventually("dual-stack connection", || {
            let v = diag.dump_port(port, TcpStates::ESTABLISHED).unwrap();
            (!v.is_empty()).then_some(v)
        });
        assert_eq!(socks.len(), 1, "{socks:#?}");
        let conn = &socks[0];
        let mapped = |a: SocketAddr| match a {
            SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
            v6 => v6,
        };
        assert_eq!(conn.id.local, mapped(client.peer_addr().unwrap()));
        assert_eq!(conn.id.remote, mapped(client.local_addr().unwrap()));
        // Exact get with family AF_INET6 and the v4-mapped addresses, as reported.
        assert_eq!(diag.get(&conn.id).unwrap().map(|s| s.id), Some(conn.id));
        // Family AF_INET with the plain IPv4 addresses reaches it too (the kernel does the same
        // IPv4 lookup), and the answer still carries the socket's own family and addresses.
        let as_v4 = SocketId {
            local: SocketAddr::new(client.peer_addr().unwrap().ip(), port),
            remote: client.local_addr().unwrap(),
            ..conn.id
        };
        let via_v4 = diag.get(&as_v4).unwrap().expect("found via AF_INET");
        assert_eq!(via_v4.id, conn.id);
    }

    /// Root check for tests that need CAP_NET_ADMIN: skip when unprivileged, unless CI=true.
    fn privileged(test: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} needs root (CAP_NET_ADMIN) and CI=true"
        );
        println!("skipping {test}: needs root (CAP_NET_ADMIN)");
        false
    }

    #[test]
    fn destroy_resets_the_peer() {
        if !privileged("destroy_resets_the_peer") {
            return;
        }
        let mut diag = SockDiag::open().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        let socks = diag.dump_port(port, TcpStates::ESTABLISHED).unwrap();
        let id = server_side(&socks, &client).expect("server side").id;

        diag.destroy(&id).unwrap();

        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let err = client.read(&mut [0u8; 16]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
        let err = server.read(&mut [0u8; 16]).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(Errno::ECONNABORTED as i32),
            "{err}"
        );
        assert!(diag.get(&id).unwrap().is_none());
        assert!(matches!(diag.destroy(&id), Err(SockDiagError::NotFound)));
        // The client stays usable after NotFound.
        assert_eq!(diag.dump_port(port, TcpStates::LISTEN).unwrap().len(), 1);
    }

    #[test]
    fn destroy_v4_mapped_socket() {
        if !privileged("destroy_v4_mapped_socket") {
            return;
        }
        let Ok(l) = TcpListener::bind("[::]:0") else {
            println!("skipping: no IPv6 here");
            return;
        };
        let port = l.local_addr().unwrap().port();
        let Ok(mut client) = TcpStream::connect(("127.0.0.1", port)) else {
            println!("skipping: [::] listener is IPv6-only here");
            return;
        };
        let (_server, _) = l.accept().unwrap();
        let mut diag = SockDiag::open().unwrap();
        let socks = diag.dump_port(port, TcpStates::ESTABLISHED).unwrap();
        assert_eq!(socks.len(), 1);
        diag.destroy(&socks[0].id).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let err = client.read(&mut [0u8; 16]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    }
}
