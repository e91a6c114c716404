//! Line-event collection, so a test can wait for "the server logged X" with a timeout
//! instead of sleeping and hoping: the demo server's stdout (or an in-process server's event
//! sink) is read line by line on a background thread into a channel, and [`EventReader`]
//! lets the test wait for the next line with a given prefix and inspect everything so far.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Collected event lines plus a cursor for [`wait_for`](EventReader::wait_for).
///
/// `wait_for` looks at lines *after* the cursor (the line after the previous match, or the
/// first line), returns the first one that matches, and moves the cursor past it. Lines it
/// steps over are not looked at again by later `wait_for` calls, but stay in
/// [`all_lines`](EventReader::all_lines).
#[derive(Debug)]
pub struct EventReader {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    rx: Receiver<String>,
    lines: Vec<String>,
    cursor: usize,
    ended: bool,
}

impl Inner {
    /// Moves everything already in the channel into `lines`.
    fn drain(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(l) => self.lines.push(l),
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.ended = true;
                    return;
                }
            }
        }
    }
}

impl EventReader {
    fn from_rx(rx: Receiver<String>) -> EventReader {
        EventReader {
            inner: Mutex::new(Inner {
                rx,
                lines: Vec::new(),
                cursor: 0,
                ended: false,
            }),
        }
    }

    /// Reads `source` line by line on a background thread. Each line is also echoed to
    /// stderr as `[label] line`; the test harness captures that (it shows only when the
    /// test fails), which makes a failing test's server log visible for free.
    pub fn from_reader(label: &str, source: impl Read + Send + 'static) -> EventReader {
        let (tx, rx) = mpsc::channel();
        let label = label.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("events-{label}"))
            .spawn(move || {
                let mut r = BufReader::new(source);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf);
                            let line = line.trim_end_matches(['\n', '\r']).to_string();
                            if crate::echo_enabled() {
                                eprintln!("[{label}] {line}");
                            }
                            if tx.send(line).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        // If the thread cannot be spawned the sender is dropped with the closure and the
        // reader just reports "ended" with no lines; tests then fail on a clear timeout.
        if let Err(e) = spawned {
            eprintln!("EventReader: cannot spawn reader thread: {e}");
        }
        EventReader::from_rx(rx)
    }

    /// An in-process pair: whatever is written to the [`EventWriter`] (e.g. by
    /// [`crate::http::serve`]) arrives here, one complete line at a time.
    pub fn channel() -> (EventWriter, EventReader) {
        let (tx, rx) = mpsc::channel();
        (
            EventWriter {
                tx,
                partial: Vec::new(),
            },
            EventReader::from_rx(rx),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `timeout` for the next line (after the cursor) that starts with `prefix`.
    /// `None` on timeout, or when the source ended without such a line.
    pub fn wait_for(&self, prefix: &str, timeout: Duration) -> Option<String> {
        self.wait_for_line(timeout, |l| l.starts_with(prefix))
    }

    /// Like [`wait_for`](Self::wait_for) with any predicate.
    pub fn wait_for_line(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            inner.drain();
            while inner.cursor < inner.lines.len() {
                let i = inner.cursor;
                inner.cursor += 1;
                if pred(&inner.lines[i]) {
                    return Some(inner.lines[i].clone());
                }
            }
            if inner.ended {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match inner.rx.recv_timeout(left) {
                Ok(l) => inner.lines.push(l),
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => inner.ended = true,
            }
        }
    }

    /// Waits for the next `listening <addr>` line and parses the address.
    pub fn wait_listening(&self, timeout: Duration) -> Option<SocketAddr> {
        self.wait_for("listening ", timeout)?
            .strip_prefix("listening ")?
            .trim()
            .parse()
            .ok()
    }

    /// Every line received so far (regardless of the cursor).
    pub fn all_lines(&self) -> Vec<String> {
        let mut inner = self.lock();
        inner.drain();
        inner.lines.clone()
    }

    /// Waits up to `timeout` for the source to end (e.g. the process closed its stdout);
    /// true if it did. Lines that arrive meanwhile are kept.
    pub fn wait_ended(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            inner.drain();
            if inner.ended {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match inner.rx.recv_timeout(left) {
                Ok(l) => inner.lines.push(l),
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => inner.ended = true,
            }
        }
    }
}

/// The writing half of [`EventReader::channel`]: buffers bytes and sends each complete line.
#[derive(Debug)]
pub struct EventWriter {
    tx: Sender<String>,
    partial: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.partial.extend_from_slice(buf);
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line[..pos])
                .trim_end_matches('\r')
                .to_string();
            // A dropped reader just means nobody listens any more: not an error to report.
            let _ = self.tx.send(line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
