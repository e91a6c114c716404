//! What an operator sees of drain-daemon: its Prometheus metrics after and during real
//! drains (scraped over plain TCP and parsed as the exposition format), and its log
//! reaching journald with priorities when stderr is the journal.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::net::UnixDatagram,
    process::Command,
    time::{Duration, Instant},
};

use drain_tests::{
    bin_path, busy_client, daemon_socket_path, drain_through_daemon, idle_client, run_drainctl,
    spawn_daemon_with, spawn_drainctl, start_server, ChildGuard, Closed, EventReader, Netns,
    PrivateMounts, SERVING,
};

const SECOND: Duration = Duration::from_secs(1);

/// A port on 127.0.0.1 free in the test's network namespace.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// `drain-daemon --socket SOCKET --metrics-address ADDRESS`, once it serves.
fn spawn_daemon_with_metrics(name: &str) -> (ChildGuard, EventReader, String, SocketAddr) {
    let socket = daemon_socket_path(name);
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = Command::new(bin_path("drain-daemon"));
    command
        .arg("--socket")
        .arg(&socket)
        .arg("--metrics-address")
        .arg(address.to_string());
    let (daemon, log) = spawn_daemon_with(command, SERVING);
    (daemon, log, socket.to_str().unwrap().to_owned(), address)
}

/// One scrape: `GET /metrics` over a plain TcpStream; the status line, headers and body.
fn scrape(address: SocketAddr) -> (String, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the metrics address");
    stream.set_read_timeout(Some(5 * SECOND)).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the scrape");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    (head.to_owned(), body.to_owned())
}

/// The samples of an exposition, `name{labels}` to value, after checking its format:
/// every sample belongs to a family declared by a `# TYPE` line (counters' samples end
/// in `_total`), every value is a number, and the text ends with `# EOF`.
fn parse_exposition(text: &str) -> Exposition {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end: {text}");
    for line in text.lines() {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let (family, kind) = declaration
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
            assert!(
                ["counter", "gauge"].contains(&kind),
                "unexpected type in {line:?}"
            );
            types.insert(family.to_owned(), kind.to_owned());
        } else if line.starts_with("# HELP ") || line == "# EOF" {
        } else {
            assert!(!line.starts_with('#'), "unknown comment line {line:?}");
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("non-numeric sample {line:?}"));
            let name = series.split('{').next().unwrap();
            let family = match name.strip_suffix("_total") {
                Some(family) if types.get(family).map(String::as_str) == Some("counter") => family,
                _ => name,
            };
            assert!(
                types.contains_key(family),
                "sample {line:?} before or without its # TYPE line"
            );
            assert!(
                series.ends_with('}') || !series.contains('{'),
                "bad labels in {line:?}"
            );
            samples.insert(series.to_owned(), value);
        }
    }
    Exposition { types, samples }
}

/// A parsed exposition: the families declared (`# TYPE`) and the samples.
struct Exposition {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
}

#[test]
fn a_drain_through_the_daemon_shows_in_its_prometheus_metrics() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_daemon, _log, socket, address) = spawn_daemon_with_metrics("metrics");
    let (head, body) = scrape(address);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text"),
        "{head}"
    );
    // Families without a sample are left out: nothing before the first drain.
    assert!(parse_exposition(&body).samples.is_empty(), "{body}");

    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut clients = [idle_client(addr), idle_client(addr)];
    let output = drain_through_daemon(
        &socket,
        &["--port", "8080", "--quiet-period", "200ms", "--json"],
    );
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(output.json()["closed_gracefully"], 2);
    for client in &mut clients {
        assert_eq!(client.wait_closed(5 * SECOND), Closed::Eof);
    }

    let (_, body) = scrape(address);
    let Exposition { types, samples } = parse_exposition(&body);
    for (family, kind) in [
        ("drain_daemon_drains", "counter"),
        ("drain_daemon_connections_closed", "counter"),
        ("drain_daemon_new_connections", "counter"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(kind), "{body}");
    }
    let sample = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
    };
    assert_eq!(
        sample(r#"drain_daemon_drains_total{outcome="drained"}"#),
        1.0
    );
    assert_eq!(
        sample(r#"drain_daemon_connections_closed_total{method="graceful",kind="idle"}"#),
        2.0
    );
    assert_eq!(
        sample(r#"drain_daemon_connections_closed_total{method="abortive",kind="idle"}"#),
        0.0
    );
    assert_eq!(
        sample(r#"drain_daemon_new_connections_total{port="8080",action="steered"}"#),
        0.0
    );
    assert_eq!(
        sample(r#"drain_daemon_new_connections_total{port="8080",action="refused"}"#),
        0.0
    );
    assert!(
        !body.contains("drain_daemon_draining_connections{"),
        "no gauge once the drain ended:\n{body}"
    );
    let (head, _) = scrape_path(address, "/");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

/// A response the drain wrote `Connection: close` into counts under
/// `close_requested{protocol="http"}`, and the connection its client then closed is not
/// counted as closed by the drain.
#[test]
fn a_response_asking_the_client_to_close_shows_in_the_metrics() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_daemon, _log, socket, address) = spawn_daemon_with_metrics("metrics-close");
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut busy = busy_client(addr, &events, "/sleep/1000");
    let drain = {
        let socket = socket.clone();
        std::thread::spawn(move || drain_through_daemon(&socket, &["--port", "8080", "--json"]))
    };
    let first = busy.read_response().expect("answered");
    assert_eq!(first.status, 200);
    // The program is loaded and the connection armed a few passes into the drain, and the
    // first write the program sees only shows it where the server is
    // (docs/in-band-close.md): a later response carries the header.
    let asking_since = Instant::now();
    while !busy
        .request("GET", "/sleep/100", b"")
        .expect("answered")
        .headers
        .iter()
        .any(|(name, value)| name.eq_ignore_ascii_case("connection") && value == "close")
    {
        assert!(
            asking_since.elapsed() < 10 * SECOND,
            "no response within 10 s said Connection: close"
        );
    }
    drop(busy);
    let output = drain.join().unwrap();
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(output.json()["connection_close_sent"], 1);

    let (_, body) = scrape(address);
    let Exposition { types, samples } = parse_exposition(&body);
    assert_eq!(
        types
            .get("drain_daemon_close_requested")
            .map(String::as_str),
        Some("counter"),
        "{body}"
    );
    let sample = |series: &str| samples.get(series).copied();
    assert_eq!(
        sample(r#"drain_daemon_close_requested_total{protocol="http"}"#),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(r#"drain_daemon_close_requested_total{protocol="websocket"}"#),
        Some(0.0),
        "{body}"
    );
    let closed: f64 = samples
        .iter()
        .filter(|(series, _)| series.starts_with("drain_daemon_connections_closed_total"))
        .map(|(_, value)| value)
        .sum();
    assert_eq!(closed, 0.0, "{body}");
}

/// Like [`scrape`], for another path.
fn scrape_path(address: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the metrics address");
    stream.set_read_timeout(Some(5 * SECOND)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the reply");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.to_owned(), body.to_owned())
}

#[test]
fn a_running_drain_shows_its_in_flight_connections_and_refusals() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_daemon, _log, socket, address) = spawn_daemon_with_metrics("gauges");
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let _busy = busy_client(addr, &events, "/sleep/60000");
    let drain = spawn_drainctl([
        "--daemon-socket",
        &socket,
        "drain",
        "--port",
        "8080",
        "--timeout",
        "3s",
        "--json",
    ]);
    let in_flight = r#"drain_daemon_draining_connections{port="8080",state="in_flight"}"#;
    let started = Instant::now();
    loop {
        let (_, body) = scrape(address);
        let exposition = parse_exposition(&body);
        if exposition.samples.get(in_flight) == Some(&1.0) {
            assert_eq!(
                exposition.types["drain_daemon_draining_connections"],
                "gauge"
            );
            break;
        }
        assert!(
            started.elapsed() < 5 * SECOND,
            "no in-flight gauge of 1 during the drain:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A new client during the drain is refused by the eBPF program, and counted.
    assert!(
        TcpStream::connect(addr).is_err(),
        "refused during the drain"
    );
    let refused = r#"drain_daemon_new_connections_total{port="8080",action="refused"}"#;
    loop {
        let (_, body) = scrape(address);
        if parse_exposition(&body).samples.get(refused) == Some(&1.0) {
            break;
        }
        assert!(
            started.elapsed() < 10 * SECOND,
            "the refused connection was not counted:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // drainctl status shows the same eBPF counts, from the drain's record.
    let status = run_drainctl(["status", "--port", "8080", "--json"], 10 * SECOND);
    assert_eq!(status.code, Some(0), "{}", status.stderr_text());
    let port_drain = &status.json()["ports"][0]["drain"];
    assert_eq!(port_drain["running"], true, "{port_drain}");
    assert_eq!(port_drain["refused"], 1, "{port_drain}");
    assert_eq!(port_drain["steered"], 0, "{port_drain}");
    let output = drain.wait(30 * SECOND);
    assert_eq!(output.json()["outcome"], "deadline_reached");
    assert_eq!(output.json()["refused_connections"], 1);
    let (_, body) = scrape(address);
    let samples = parse_exposition(&body).samples;
    assert_eq!(
        samples.get(r#"drain_daemon_drains_total{outcome="deadline_reached"}"#),
        Some(&1.0),
        "{body}"
    );
    assert!(!samples.contains_key(in_flight), "gauge gone:\n{body}");
}

/// tracing-journald writes to /run/systemd/journal/socket and takes no other path, so
/// the daemon runs in a private mount namespace where that path is a datagram socket
/// the test reads, with `$JOURNAL_STREAM` naming its stderr as systemd would.
#[test]
fn under_systemd_the_daemon_logs_to_journald_with_priorities() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let mounts = PrivateMounts::new(true);
    let socket = daemon_socket_path("journal");
    let dir = socket.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let journal_path = dir.join("journal.sock");
    let _ = std::fs::remove_file(&journal_path);
    let journal = UnixDatagram::bind(&journal_path).expect("bind the fake journal");
    journal.set_read_timeout(Some(SECOND)).unwrap();
    let status = mounts
        .command("sh")
        .arg("-c")
        .arg(format!(
            "set -e; mkdir -p /run/systemd/journal; touch /run/systemd/journal/socket; \
             mount --bind '{}' /run/systemd/journal/socket",
            journal_path.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "bind-mounting the fake journal");

    // A notify socket that is not there: the daemon warns it cannot notify systemd.
    let mut command = mounts.command("sh");
    command
        .arg("-c")
        .arg(
            "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); export JOURNAL_STREAM; \
             echo started >&2; exec \"$0\" --socket \"$1\"",
        )
        .arg(bin_path("drain-daemon"))
        .arg(&socket)
        .env("NOTIFY_SOCKET", dir.join("no-such-notify.sock"));
    let (_daemon, log) = spawn_daemon_with(command, "started");

    let mut entries: Vec<BTreeMap<String, String>> = Vec::new();
    let has = |entries: &[BTreeMap<String, String>], priority: &str, message: &str| {
        entries.iter().any(|entry| {
            entry.get("PRIORITY").map(String::as_str) == Some(priority)
                && entry.get("MESSAGE").is_some_and(|m| m.starts_with(message))
        })
    };
    let deadline = Instant::now() + 10 * SECOND;
    while !(has(&entries, "5", SERVING) && has(&entries, "4", "cannot notify systemd")) {
        assert!(
            Instant::now() < deadline,
            "journal entries: {entries:#?}\nstderr: {:?}",
            log.all_lines()
        );
        let mut buf = vec![0u8; 64 * 1024];
        if let Ok(n) = journal.recv(&mut buf) {
            // Layer::new() checks the socket with an empty datagram.
            if n > 0 {
                entries.push(parse_journal_entry(&buf[..n]));
            }
        }
    }
    assert!(
        entries
            .iter()
            .all(|entry| entry["SYSLOG_IDENTIFIER"] == "drain-daemon"),
        "{entries:#?}"
    );
    assert!(
        !log.all_lines().iter().any(|line| line.contains(SERVING)),
        "logged to stderr as well: {:?}",
        log.all_lines()
    );
}

/// One datagram of journald's native protocol: fields `KEY=value\n`, or `KEY\n`, a
/// little-endian u64 length, the value and `\n` (for values that may hold newlines).
fn parse_journal_entry(mut data: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while !data.is_empty() {
        let end = data
            .iter()
            .position(|&b| b == b'\n' || b == b'=')
            .unwrap_or_else(|| panic!("field without = or newline: {data:?}"));
        let key = String::from_utf8(data[..end].to_vec()).unwrap();
        let value;
        if data[end] == b'=' {
            let rest = &data[end + 1..];
            let len = rest.iter().position(|&b| b == b'\n').expect("newline");
            value = &rest[..len];
            data = &rest[len + 1..];
        } else {
            let rest = &data[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            value = &rest[8..8 + len];
            assert_eq!(
                rest[8 + len],
                b'\n',
                "value of {key} not ended by a newline"
            );
            data = &rest[8 + len + 1..];
        }
        fields.insert(key, String::from_utf8_lossy(value).into_owned());
    }
    fields
}
