//! `cargo xtask demo`: one real drain, narrated.
//!
//! In a private network namespace made for the demo: a real HTTP keep-alive server
//! process, idle keep-alive clients and requests in flight, then `drainctl drain`.
//! It prints what each side saw: new connections refused at once, idle connections
//! closed with a FIN, in-flight requests answered in full, and a new server on the same
//! port accepting again once the old listener is gone.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use drain_tests::{
    connect_refused_quickly, set_echo, spawn_demo_server, spawn_drainctl, Closed, ConnectOutcome,
    KeepAliveClient, Netns,
};

const IDLE_CLIENTS: usize = 20;
const SECOND: Duration = Duration::from_secs(1);

pub fn run() -> Result<()> {
    set_echo(false);
    let netns = Netns::new().context("creating a private network namespace (run as root)")?;
    println!(
        "== drain-daemon demo, in a private network namespace (inode {}) ==",
        netns.inode()
    );

    let (mut server, events) = spawn_demo_server(["--listen", "127.0.0.1:8080"]);
    let addr = events
        .wait_listening(5 * SECOND)
        .ok_or_else(|| anyhow!("the demo server did not start"))?;
    println!(
        "server   drain-demo-server pid {} listening on {addr}",
        server.pid()
    );

    let mut idle = Vec::new();
    for _ in 0..IDLE_CLIENTS {
        let mut client = KeepAliveClient::connect(addr)?;
        ensure!(
            client.request("GET", "/", b"")?.status == 200,
            "warm-up request failed"
        );
        idle.push(client);
    }
    let in_flight = [
        ("GET", "/sleep/2000", &b""[..]),
        ("POST", "/sleep/2500", &b"order=42&qty=1"[..]),
        ("GET", "/stream/25", &b""[..]),
    ];
    let workers: Vec<_> = in_flight
        .iter()
        .map(|&(method, path, body)| {
            let mut client = KeepAliveClient::connect(addr)?;
            client.send_request(method, path, body)?;
            Ok(thread::spawn(move || {
                let sent = Instant::now();
                let response = client.read_response();
                let answered_after = sent.elapsed();
                let closed = client.wait_closed(10 * SECOND);
                (method, path, response, answered_after, closed)
            }))
        })
        .collect::<Result<_>>()?;
    thread::sleep(Duration::from_millis(300));
    println!(
        "clients  {IDLE_CLIENTS} idle keep-alive connections (one GET answered each), {} requests in flight",
        in_flight.len()
    );

    println!("\n$ drainctl drain --port 8080 --timeout 15s");
    let drain_started = Instant::now();
    let drainctl = spawn_drainctl(["drain", "--port", "8080", "--timeout", "15s"]);
    drainctl
        .log()
        .wait_for_line(10 * SECOND, |line| {
            line.contains("new connections are refused")
        })
        .ok_or_else(|| anyhow!("drainctl never reported refusing new connections"))?;
    let refusal = match connect_refused_quickly(addr) {
        ConnectOutcome::Refused(elapsed) => elapsed,
        other => bail!("a new connection during the drain was not refused: {other:?}"),
    };
    println!(
        "during   a new client connecting to {addr}: refused in {:.2} ms (RST, ECONNREFUSED)",
        refusal.as_secs_f64() * 1000.0
    );

    let mut fin = 0;
    let mut other = Vec::new();
    for client in &mut idle {
        match client.wait_closed(10 * SECOND) {
            Closed::Eof => fin += 1,
            outcome => other.push(outcome),
        }
    }
    println!("idle     {fin}/{IDLE_CLIENTS} closed gracefully (the client read EOF after a FIN); others: {other:?}");
    let mut answered = 0;
    for worker in workers {
        let (method, path, response, after, closed) = worker
            .join()
            .map_err(|_| anyhow!("a client thread panicked"))?;
        let status = match &response {
            Ok(response) => {
                if response.status == 200 {
                    answered += 1;
                }
                format!("{} with {} bytes", response.status, response.body.len())
            }
            Err(err) => format!("failed: {err}"),
        };
        println!(
            "inflight {method} {path}: answered {status} after {:.1}s, then the connection was {}",
            after.as_secs_f64(),
            match closed {
                Closed::Eof => "closed with a FIN".to_string(),
                other => format!("{other:?}"),
            }
        );
    }

    let output = drainctl.wait(30 * SECOND);
    println!("\ndrainctl log (stderr):");
    for line in &output.stderr {
        println!("  {line}");
    }
    println!(
        "drainctl report (stdout), exit code {:?} after {:.1}s:",
        output.code,
        drain_started.elapsed().as_secs_f64()
    );
    for line in output.stdout.lines() {
        println!("  {line}");
    }

    server.terminate(5 * SECOND)?;
    let (_successor, successor_events) = spawn_demo_server(["--listen", "127.0.0.1:8080"]);
    successor_events
        .wait_listening(5 * SECOND)
        .ok_or_else(|| anyhow!("the successor server did not start"))?;
    let status = KeepAliveClient::connect(addr)?
        .request("GET", "/", b"")?
        .status;
    println!(
        "\nafter    old server stopped; a new server on the same port answers {status}: the refusal ended with the old listener"
    );

    ensure!(
        output.code == Some(0),
        "drainctl exited with {:?}",
        output.code
    );
    ensure!(
        fin == IDLE_CLIENTS,
        "not every idle client saw a graceful close"
    );
    ensure!(
        answered == in_flight.len(),
        "an in-flight request was not answered"
    );
    ensure!(status == 200, "the successor did not answer");
    println!("\ndemo: no request lost, {IDLE_CLIENTS} idle connections closed gracefully, new connections refused at once");
    drop(netns);
    Ok(())
}
