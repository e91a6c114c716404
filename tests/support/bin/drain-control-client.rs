//! `drain-control-client`: a raw client of drain-daemon's control socket, for tests that
//! need a peer drainctl would never be: one running as another user, one that sends
//! more than a request line or nothing at all, one that stops reading. (A test process
//! cannot be that peer itself: it runs as root, and the daemon judges a peer's network
//! namespace by its main thread, not by the test's thread.)
//!
//! Usage: `drain-control-client SOCKET [--send LINE] [--send-junk BYTES] [--read-when-told]
//! [--connections N]`
//!
//! Connects, writes LINE and a newline, then BYTES bytes of `x` with no newline, when
//! asked; with `--read-when-told`, reads nothing until a line arrives on stdin. Then
//! reads reply lines until the daemon closes (10 s at most per line). Prints `wrote N`
//! (or `write failed: ERROR after N`), then `reply LINE` for each reply, then `closed`
//! or `read failed: ERROR`. With `--connections N` (a flood), opens N connections and
//! writes to each, prints `connected N` (those that connected and took the bytes), and
//! holds them, reading nothing, until a line or the end arrives on stdin. Exit 2 on bad
//! arguments, 1 when the connection fails.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    process::ExitCode,
    time::Duration,
};

const USAGE: &str = "usage: drain-control-client SOCKET [--send LINE] [--send-junk BYTES] \
                     [--read-when-told] [--connections N]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(socket) = args.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut send = Vec::new();
    let mut read_when_told = false;
    let mut connections = None;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--send-junk", Some(bytes)) => match bytes.parse::<usize>() {
                Ok(bytes) => send.extend(std::iter::repeat_n(b'x', bytes)),
                Err(_) => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            ("--send", Some(line)) => send.extend(format!("{line}\n").into_bytes()),
            ("--connections", Some(count)) => match count.parse::<usize>() {
                Ok(count) => connections = Some(count),
                Err(_) => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            ("--read-when-told", None) => read_when_told = true,
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(count) = connections {
        return flood(&socket, count, &send);
    }
    let mut stream = match UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(err) => {
            eprintln!("drain-control-client: connect {socket}: {err}");
            return ExitCode::from(1);
        }
    };
    if !send.is_empty() {
        let mut written = 0;
        while written < send.len() {
            let end = send.len().min(written + 4096);
            match stream.write(&send[written..end]) {
                Ok(n) => written += n,
                Err(err) => {
                    println!("write failed: {err} after {written}");
                    break;
                }
            }
        }
        if written == send.len() {
            println!("wrote {written}");
        }
    }
    if read_when_told {
        let _ = std::io::stdin().lines().next();
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut replies = BufReader::new(&stream);
    loop {
        let mut line = String::new();
        match replies.read_line(&mut line) {
            Ok(0) => {
                println!("closed");
                break;
            }
            Ok(_) => println!("reply {}", line.trim_end()),
            Err(err) => {
                println!("read failed: {err}");
                break;
            }
        }
    }
    ExitCode::SUCCESS
}

/// Opens `count` connections, writes `send` on each, and holds them until stdin says so.
fn flood(socket: &str, count: usize, send: &[u8]) -> ExitCode {
    let held: Vec<UnixStream> = (0..count)
        .filter_map(|_| {
            let mut stream = UnixStream::connect(socket).ok()?;
            stream.write_all(send).ok()?;
            Some(stream)
        })
        .collect();
    println!("connected {}", held.len());
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().lines().next();
    drop(held);
    ExitCode::SUCCESS
}
