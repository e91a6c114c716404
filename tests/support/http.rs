//! A small but real HTTP/1.1 keep-alive server and client, so drain tests have a listener
//! whose connections are in known states: idle keep-alive (waiting for the next request),
//! in flight (request read, response not yet written, or being written slowly), or closed.
//!
//! The server is std-only, one thread per connection, and reports every step as one line on
//! an event sink (see [`serve`]), which is how tests observe what the server saw: whether an
//! idle connection got a graceful FIN (`eof`), a reset (`error ... ConnectionReset`), or
//! whether an in-flight response was finished (`response`). The `drain-demo-server` binary
//! wraps it in a separate process (the thing drain-daemon drains); the client helpers
//! ([`KeepAliveClient`], [`connect_refused_quickly`]) play the other end.
//!
//! Routes (GET and POST both read a `Content-Length` body when one is sent):
//! - `GET|POST /` → 200 `ok\n`
//! - `GET /sleep/<ms>` → waits `ms`, then 200 `slept <ms>\n`;
//!   `POST /sleep/<ms>` → waits, then 200 `slept <ms> received <body length>\n`
//! - `GET /stream/<n>` → 200 with `Content-Length: n*1024` sent up front, then `n` chunks of
//!   1 KiB written 100 ms apart (the first right away), so the response is in flight for
//!   about `(n-1) * 100` ms. Chunk `i` is 1024 copies of `b'a' + i % 26`.
//! - anything else → 404 (unknown path) or 405 (known path, wrong method).
//!
//! HTTP/1.1 keeps the connection open unless the request says `Connection: close`
//! (HTTP/1.0 closes unless it says `Connection: keep-alive`). Chunked request bodies are
//! refused with 501; the server never panics on a bad connection.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage,
};

/// Longest request/status line or header line accepted.
const MAX_LINE: u64 = 16 * 1024;
/// Most header lines accepted in one message.
const MAX_HEADERS: usize = 100;
/// Largest body accepted (requests and responses).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Longest `/sleep/<ms>` accepted (10 minutes).
const MAX_SLEEP_MS: u64 = 600_000;
/// Most `/stream/<n>` chunks accepted.
const MAX_STREAM_CHUNKS: usize = 10_000;
/// Size of one `/stream` chunk.
const STREAM_CHUNK: usize = 1024;
/// Pause between two `/stream` chunks.
const STREAM_PAUSE: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------
// Event sink
// ---------------------------------------------------------------------------------------

/// Shared, line-at-a-time event writer. Write errors are ignored: losing the log must not
/// take the server down (e.g. a test that stopped reading the demo server's stdout).
#[derive(Clone)]
struct Events(Arc<Mutex<Box<dyn Write + Send>>>);

impl Events {
    fn new(w: impl Write + Send + 'static) -> Events {
        Events(Arc::new(Mutex::new(Box::new(w))))
    }

    fn emit(&self, line: fmt::Arguments<'_>) {
        let text = format!("{line}\n");
        // A poisoned lock only means another thread panicked mid-write; keep logging.
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = w.write_all(text.as_bytes());
        let _ = w.flush();
    }
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// Handle of a running server (see [`serve`]). Dropping it stops accepting, like [`stop`].
///
/// [`stop`]: Server::stop
pub struct Server {
    addrs: Vec<SocketAddr>,
    /// Dropping the write end wakes the accept thread (POLLHUP on the read end).
    stop: Option<io::PipeWriter>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The listeners' local addresses, in the order given.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The first listener's local address.
    pub fn local_addr(&self) -> SocketAddr {
        // serve_all refuses an empty list, so there is always a first one.
        self.addrs[0]
    }

    /// Stops accepting and closes the listeners; returns once they are closed. Connections
    /// already accepted keep being served on their own threads until they end.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addrs", &self.addrs)
            .finish()
    }
}

/// Serves HTTP on `listener` from a background accept thread, one thread per connection,
/// writing one line per event to `events` (flushed after each line):
///
/// - `listening <addr>` once per listener, before this function returns
/// - `accepted <peer>`
/// - `request <peer> <method> <path>` once the whole request (with body) has been read
/// - `response <peer> <status> <body bytes>` once the whole response has been written
/// - `close <peer>` when the server itself closes after a `Connection: close` exchange
///   (or after answering a malformed request)
/// - `eof <peer>` when a read between requests returns 0: the peer, or a `shutdown()` of the
///   socket from outside, closed it; the server then closes its socket normally
/// - `error <peer> <io::ErrorKind>` on any I/O error (e.g. `ConnectionReset`,
///   `ConnectionAborted`, `BrokenPipe`, `UnexpectedEof` for a request cut short); for an
///   `accept` error `<peer>` is the listener's address
pub fn serve(listener: TcpListener, events: impl Write + Send + 'static) -> io::Result<Server> {
    serve_all(vec![listener], events)
}

/// Like [`serve`], for several listeners sharing one accept thread and one event sink.
pub fn serve_all(
    listeners: Vec<TcpListener>,
    events: impl Write + Send + 'static,
) -> io::Result<Server> {
    if listeners.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "serve_all: no listener given",
        ));
    }
    let events = Events::new(events);
    let mut addrs = Vec::with_capacity(listeners.len());
    for l in &listeners {
        l.set_nonblocking(true)?;
        addrs.push(l.local_addr()?);
    }
    for a in &addrs {
        events.emit(format_args!("listening {a}"));
    }
    let (stop_rx, stop_tx) = io::pipe()?;
    let thread = std::thread::Builder::new()
        .name("http-accept".into())
        .spawn(move || accept_loop(listeners, stop_rx, events))?;
    Ok(Server {
        addrs,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

fn accept_loop(listeners: Vec<TcpListener>, stop: io::PipeReader, events: Events) {
    loop {
        let mut fds: Vec<PollFd<'_>> = listeners
            .iter()
            .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            .collect();
        fds.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => {
                events.emit(format_args!("error poll {:?}", io::Error::from(e).kind()));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[listeners.len()] {
            // Stop requested: returning drops (closes) the listeners.
            return;
        }
        for (l, _) in listeners.iter().zip(&ready).filter(|(_, r)| **r) {
            accept_ready(l, &events);
        }
    }
}

/// Accepts everything pending on one (non-blocking) listener.
fn accept_ready(listener: &TcpListener, events: &Events) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let ev = events.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("http-conn-{peer}"))
                    .spawn(move || handle_connection(stream, peer, ev));
                if let Err(e) = spawned {
                    // The stream was moved into the closure and is dropped (closed) with it.
                    events.emit(format_args!("error {peer} {:?}", e.kind()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let local = listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "listener".into());
                events.emit(format_args!("error {local} {:?}", e.kind()));
                // e.g. EMFILE: back off instead of spinning on a still-readable listener.
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
        }
    }
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn keep_alive(&self) -> bool {
        let conn = header(&self.headers, "connection").map(|v| v.to_ascii_lowercase());
        let has = |tok: &str| {
            conn.as_deref()
                .is_some_and(|c| c.split(',').any(|t| t.trim() == tok))
        };
        if self.version == "HTTP/1.0" {
            has("keep-alive")
        } else {
            !has("close")
        }
    }
}

/// Why a request could not be read.
enum ReadError {
    /// Transport error (including `UnexpectedEof` for a request cut short).
    Io(io::Error),
    /// The bytes are not a request we serve: answer with this status and close.
    Bad(u16, &'static str),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn handle_connection(stream: TcpStream, peer: SocketAddr, events: Events) {
    events.emit(format_args!("accepted {peer}"));
    let prepared = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_nodelay(true))
        .and_then(|()| stream.try_clone());
    let mut writer = match prepared {
        Ok(w) => w,
        Err(e) => {
            events.emit(format_args!("error {peer} {:?}", e.kind()));
            return;
        }
    };
    let mut reader = BufReader::new(stream);
    loop {
        let req = match read_request(&mut reader) {
            Ok(Some(req)) => req,
            Ok(None) => {
                events.emit(format_args!("eof {peer}"));
                return; // dropping both handles closes the socket normally
            }
            Err(ReadError::Io(e)) => {
                events.emit(format_args!("error {peer} {:?}", e.kind()));
                return;
            }
            Err(ReadError::Bad(status, why)) => {
                let body = format!("{why}\n");
                match write_simple(&mut writer, "HTTP/1.1", status, body.as_bytes(), false) {
                    Ok(n) => {
                        events.emit(format_args!("response {peer} {status} {n}"));
                        events.emit(format_args!("close {peer}"));
                    }
                    Err(e) => events.emit(format_args!("error {peer} {:?}", e.kind())),
                }
                return;
            }
        };
        events.emit(format_args!("request {peer} {} {}", req.method, req.path));
        let keep = req.keep_alive();
        match respond(&mut writer, &req, keep) {
            Ok((status, n)) => events.emit(format_args!("response {peer} {status} {n}")),
            Err(e) => {
                events.emit(format_args!("error {peer} {:?}", e.kind()));
                return;
            }
        }
        if !keep {
            events.emit(format_args!("close {peer}"));
            return;
        }
    }
}

/// Reads one request. `Ok(None)`: the connection ended cleanly before a new request began.
fn read_request(r: &mut BufReader<TcpStream>) -> Result<Option<Request>, ReadError> {
    // Skip empty lines before the request line (RFC 9112 §2.2 allows them).
    let line = loop {
        match read_line(r)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(400, "malformed request line"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(ReadError::Bad(505, "HTTP version not supported"));
    }
    let (method, target, version) = (method.to_string(), target.to_string(), version.to_string());
    let headers = read_headers(r)?;
    if header(&headers, "transfer-encoding").is_some() {
        return Err(ReadError::Bad(
            501,
            "chunked request bodies are not supported",
        ));
    }
    let len = match header(&headers, "content-length") {
        None => 0,
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| ReadError::Bad(400, "bad Content-Length"))?,
    };
    if len > MAX_BODY {
        return Err(ReadError::Bad(413, "body too large"));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let path = target.split('?').next().unwrap_or_default().to_string();
    Ok(Some(Request {
        method,
        path,
        version,
        headers,
        body,
    }))
}

/// Reads one CRLF- (or LF-) terminated line without the terminator. `Ok(None)` on EOF
/// before any byte; `UnexpectedEof` on EOF in the middle of a line.
fn read_line(r: &mut impl BufRead) -> Result<Option<String>, ReadError> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        if n as u64 >= MAX_LINE {
            return Err(ReadError::Bad(431, "line too long"));
        }
        return Err(ReadError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of a line",
        )));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Reads header lines up to the empty line. EOF here is `UnexpectedEof`.
fn read_headers(r: &mut impl BufRead) -> Result<Vec<(String, String)>, ReadError> {
    let mut headers = Vec::new();
    loop {
        let Some(line) = read_line(r)? else {
            return Err(ReadError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the headers",
            )));
        };
        if line.is_empty() {
            return Ok(headers);
        }
        if headers.len() >= MAX_HEADERS {
            return Err(ReadError::Bad(431, "too many headers"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Bad(400, "malformed header line"));
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

fn response_head(version: &str, status: u16, len: usize, keep: bool) -> String {
    let conn = match (keep, version == "HTTP/1.0") {
        (false, _) => "Connection: close\r\n",
        (true, true) => "Connection: keep-alive\r\n",
        (true, false) => "",
    };
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\n{conn}\r\n",
        reason(status)
    )
}

/// Writes a whole response in one go; returns the body length.
fn write_simple(
    w: &mut TcpStream,
    version: &str,
    status: u16,
    body: &[u8],
    keep: bool,
) -> io::Result<usize> {
    let mut msg = response_head(version, status, body.len(), keep).into_bytes();
    msg.extend_from_slice(body);
    w.write_all(&msg)?;
    Ok(body.len())
}

/// Routes and answers one request; returns (status, body bytes written).
fn respond(w: &mut TcpStream, req: &Request, keep: bool) -> io::Result<(u16, usize)> {
    let m = req.method.as_str();
    let simple = |w: &mut TcpStream, status: u16, body: &str| {
        write_simple(w, &req.version, status, body.as_bytes(), keep).map(|n| (status, n))
    };
    if req.path == "/" {
        return match m {
            "GET" | "POST" => simple(w, 200, "ok\n"),
            _ => simple(w, 405, "method not allowed\n"),
        };
    }
    if let Some(ms) = req.path.strip_prefix("/sleep/") {
        let Some(ms) = ms.parse::<u64>().ok().filter(|ms| *ms <= MAX_SLEEP_MS) else {
            return simple(w, 400, "bad sleep time\n");
        };
        return match m {
            "GET" => {
                std::thread::sleep(Duration::from_millis(ms));
                simple(w, 200, &format!("slept {ms}\n"))
            }
            "POST" => {
                std::thread::sleep(Duration::from_millis(ms));
                simple(w, 200, &format!("slept {ms} received {}\n", req.body.len()))
            }
            _ => simple(w, 405, "method not allowed\n"),
        };
    }
    if let Some(n) = req.path.strip_prefix("/stream/") {
        let Some(n) = n.parse::<usize>().ok().filter(|n| *n <= MAX_STREAM_CHUNKS) else {
            return simple(w, 400, "bad chunk count\n");
        };
        if m != "GET" {
            return simple(w, 405, "method not allowed\n");
        }
        let total = n * STREAM_CHUNK;
        let mut first = response_head(&req.version, 200, total, keep).into_bytes();
        for i in 0..n {
            if i > 0 {
                std::thread::sleep(STREAM_PAUSE);
            }
            // The `as u8` is exact: i % 26 < 26.
            let chunk = [b'a' + (i % 26) as u8; STREAM_CHUNK];
            if i == 0 {
                first.extend_from_slice(&chunk);
                w.write_all(&first)?;
            } else {
                w.write_all(&chunk)?;
            }
        }
        if n == 0 {
            w.write_all(&first)?;
        }
        return Ok((200, total));
    }
    simple(w, 404, "not found\n")
}

/// Binds a TCP listener the way `TcpListener::bind` does (SO_REUSEADDR, backlog 1024),
/// plus SO_REUSEPORT when `reuseport` is set. IPv6 listeners are IPv6-only (so `[::]:P`
/// and `0.0.0.0:P` can be bound side by side) unless `dual_stack` is set: then `[::]:P`
/// also takes IPv4, whose connections show as v4-mapped sockets.
pub fn bind_listener(
    addr: SocketAddr,
    reuseport: bool,
    dual_stack: bool,
) -> io::Result<TcpListener> {
    bind_listener_on(addr, reuseport, dual_stack, None)
}

/// [`bind_listener`], bound to the network device `device` (SO_BINDTODEVICE) when
/// given: it then takes only connections that arrive on that device.
pub fn bind_listener_on(
    addr: SocketAddr,
    reuseport: bool,
    dual_stack: bool,
    device: Option<&str>,
) -> io::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if reuseport {
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &!dual_stack)?;
    }
    if let Some(device) = device {
        socket::setsockopt(&fd, sockopt::BindToDevice, &device.into())?;
    }
    use std::os::fd::AsRawFd;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(&fd, Backlog::new(1024)?)?;
    Ok(TcpListener::from(fd))
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// A response read by [`KeepAliveClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as (lossy) UTF-8 text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// How a connection ended, as seen by [`KeepAliveClient::wait_closed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Orderly close: the other side sent a FIN (read returned 0).
    Eof,
    /// Abortive close: the other side sent a RST (ECONNRESET).
    Reset,
    /// Nothing ended the connection before the timeout.
    StillOpen,
    /// Some other read error (not expected on a client socket; reported as is).
    Error(io::ErrorKind),
}

/// The default per-read timeout of a [`KeepAliveClient`], so a test never hangs forever.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 client connection that is kept open across requests, like a browser's or a
/// load generator's keep-alive connection. Requests are sent without `Connection: close`
/// (use [`send_raw`](Self::send_raw) for anything else).
#[derive(Debug)]
pub struct KeepAliveClient {
    reader: BufReader<TcpStream>,
    local: SocketAddr,
    peer: SocketAddr,
    read_timeout: Option<Duration>,
}

impl KeepAliveClient {
    /// Connects (5 s connect timeout per address) and sets [`DEFAULT_READ_TIMEOUT`].
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<KeepAliveClient> {
        let mut last = None;
        for a in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
                Ok(s) => return KeepAliveClient::from_stream(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to")
        }))
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: TcpStream) -> io::Result<KeepAliveClient> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(DEFAULT_READ_TIMEOUT))?;
        Ok(KeepAliveClient {
            local: stream.local_addr()?,
            peer: stream.peer_addr()?,
            reader: BufReader::new(stream),
            read_timeout: Some(DEFAULT_READ_TIMEOUT),
        })
    }

    /// This end's address (what the server logs as `<peer>`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The underlying socket, e.g. for `shutdown` or socket options.
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Per-read timeout used by [`read_response`](Self::read_response); `None` waits forever.
    pub fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.reader.get_ref().set_read_timeout(t)?;
        self.read_timeout = t;
        Ok(())
    }

    /// Writes a request (and does not read the answer). A non-empty body, or any POST, is
    /// sent with `Content-Length`.
    pub fn send_request(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<()> {
        let mut msg = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.peer);
        if !body.is_empty() || method == "POST" {
            msg.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        msg.push_str("\r\n");
        let mut bytes = msg.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes)
    }

    /// Writes raw bytes (e.g. a request with `Connection: close`, or half a request).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Reads one response. Needs `Content-Length`, or `Connection: close` (body read to
    /// EOF); chunked responses are refused (`InvalidData`). A connection that ends before
    /// the status line gives `UnexpectedEof`; a reset gives `ConnectionReset`.
    pub fn read_response(&mut self) -> io::Result<Response> {
        let r = &mut self.reader;
        let status_line = loop {
            match read_line(r).map_err(to_io)? {
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before a response",
                    ))
                }
                Some(l) if l.is_empty() => continue,
                Some(l) => break l,
            }
        };
        let mut parts = status_line.splitn(3, ' ');
        let status = match (parts.next(), parts.next()) {
            (Some(v), Some(code)) if v.starts_with("HTTP/") => code.parse::<u16>().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
        let headers = read_headers(r).map_err(to_io)?;
        if header(&headers, "transfer-encoding").is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunked responses are not supported",
            ));
        }
        let body = match header(&headers, "content-length") {
            Some(v) => {
                let len = v
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|l| *l <= MAX_BODY)
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("Content-Length {v:?}"))
                    })?;
                let mut body = vec![0; len];
                r.read_exact(&mut body)?;
                body
            }
            None if status == 204 || status == 304 || (100..200).contains(&status) => Vec::new(),
            None => {
                let mut body = Vec::new();
                r.by_ref().take(MAX_BODY as u64).read_to_end(&mut body)?;
                body
            }
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// [`send_request`](Self::send_request) then [`read_response`](Self::read_response).
    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<Response> {
        self.send_request(method, path, body)?;
        self.read_response()
    }

    /// Waits up to `timeout` for the server to end the connection, discarding any data that
    /// arrives meanwhile: `Eof` for a FIN, `Reset` for a RST, `StillOpen` if neither came.
    pub fn wait_closed(&mut self, timeout: Duration) -> Closed {
        let deadline = Instant::now() + timeout;
        let buffered = self.reader.buffer().len();
        self.reader.consume(buffered);
        let mut buf = [0u8; 8192];
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Closed::StillOpen;
            }
            let stream = self.reader.get_mut();
            if let Err(e) = stream.set_read_timeout(Some(left)) {
                break Closed::Error(e.kind());
            }
            match stream.read(&mut buf) {
                Ok(0) => break Closed::Eof,
                Ok(_) => continue,
                Err(e) => match e.kind() {
                    io::ErrorKind::ConnectionReset => break Closed::Reset,
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted => continue,
                    k => break Closed::Error(k),
                },
            }
        };
        let _ = self.reader.get_ref().set_read_timeout(self.read_timeout);
        outcome
    }
}

fn to_io(e: ReadError) -> io::Error {
    match e {
        ReadError::Io(e) => e,
        ReadError::Bad(_, why) => io::Error::new(io::ErrorKind::InvalidData, why),
    }
}

/// What a single connect attempt ran into (see [`connect_refused_quickly`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// ECONNREFUSED (the SYN was answered with a RST), after this long.
    Refused(Duration),
    /// The connection was established (and is closed again right away).
    Connected,
    /// No answer within the 2 s timeout (SYN dropped, e.g. by a firewall).
    TimedOut,
    /// Any other error (e.g. `NetworkUnreachable`, `AddrNotAvailable`).
    Failed(io::ErrorKind),
}

/// Connects once with a 2 s timeout and reports how it went; used to prove that new
/// connections are refused *at once* (a RST, not a hang), e.g. `Refused(d)` with small `d`.
pub fn connect_refused_quickly(addr: SocketAddr) -> ConnectOutcome {
    let start = Instant::now();
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_stream) => ConnectOutcome::Connected,
        Err(e) => match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectOutcome::Refused(start.elapsed()),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ConnectOutcome::TimedOut,
            k => ConnectOutcome::Failed(k),
        },
    }
}
