//! The fallback source: `/proc/net/tcp` and `/proc/net/tcp6`.
//!
//! Used where netlink sock_diag is unavailable (a kernel without `CONFIG_INET_DIAG`, a
//! sandbox that forbids the netlink family). These tables list every TCP socket of the
//! namespace with its queues and inode, but no TCP_INFO and no socket cookie: every
//! connection is then judged in flight (the drain never closes what it cannot judge),
//! and the whole table is read and parsed for each scan, whatever the port.

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::sock_diag::{SocketId, TcpSocket, TcpState, TcpStates};

/// The TCP sockets whose local port is `port` and state in `states`, from this thread's
/// network namespace (`/proc/thread-self/net`, which follows the thread, unlike
/// `/proc/self/net`).
pub fn read_port(port: u16, states: TcpStates) -> io::Result<Vec<TcpSocket>> {
    read_all(states).map(|sockets| {
        sockets
            .into_iter()
            .filter(|socket| socket.id.local.port() == port)
            .collect()
    })
}

/// Every TCP socket whose state is in `states`.
pub fn read_all(states: TcpStates) -> io::Result<Vec<TcpSocket>> {
    let mut sockets = Vec::new();
    for table in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        let text = match fs::read_to_string(table) {
            Ok(text) => text,
            // No IPv6 in this kernel: nothing to list.
            Err(err) if err.kind() == io::ErrorKind::NotFound && table.ends_with('6') => continue,
            Err(err) => return Err(err),
        };
        sockets.extend(
            text.lines()
                .skip(1)
                .filter_map(parse_line)
                .filter(|socket| states.contains(socket.state)),
        );
    }
    Ok(sockets)
}

/// Parses one table line:
/// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...`
fn parse_line(line: &str) -> Option<TcpSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 10 {
        return None;
    }
    let local = parse_address(fields[1])?;
    let remote = parse_address(fields[2])?;
    let state = TcpState::try_from(u8::from_str_radix(fields[3], 16).ok()?).ok()?;
    let (tx_queue, rx_queue) = fields[4].split_once(':')?;
    Some(TcpSocket {
        id: SocketId {
            local,
            remote,
            cookie: SocketId::NO_COOKIE,
            interface: 0,
        },
        state,
        recv_queue: u32::from_str_radix(rx_queue, 16).ok()?,
        send_queue: u32::from_str_radix(tx_queue, 16).ok()?,
        uid: fields[7].parse().ok()?,
        inode: fields[9].parse().ok()?,
        info: None,
    })
}

/// `0100007F:1F90` or 32 hex digits and a port. The kernel prints each 32-bit word of the
/// (network order) address as a native-endian integer, and the port in host order.
fn parse_address(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(address)?)),
        32 => {
            let mut octets = [0u8; 16];
            for (i, chunk) in octets.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(address.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_ipv4_listener_and_connection() {
        let listener = parse_line(
            "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0",
        )
        .unwrap();
        assert_eq!(listener.id.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(listener.state, TcpState::Listen);
        assert_eq!((listener.recv_queue, listener.inode), (2, 4242));
        assert!(listener.info.is_none());

        let connection = parse_line(
            "   1: 0100007F:1F90 0100007F:B4A2 01 00000012:00000005 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1",
        )
        .unwrap();
        assert_eq!(connection.id.remote, "127.0.0.1:46242".parse().unwrap());
        assert_eq!(connection.state, TcpState::Established);
        assert_eq!((connection.send_queue, connection.recv_queue), (0x12, 5));
        assert_eq!(connection.uid, 1000);
    }

    #[test]
    fn parses_ipv6_and_v4_mapped_addresses() {
        let loopback = parse_line(
            "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 100 0 0 10 0",
        )
        .unwrap();
        assert_eq!(loopback.id.local, "[::1]:8080".parse().unwrap());
        let mapped = parse_line(
            "   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 5252 1 0000000000000000 20 4 30 10 -1",
        )
        .unwrap();
        assert_eq!(mapped.id.local, "[::ffff:127.0.0.1]:8080".parse().unwrap());
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for line in [
            "",
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
            "   0: 0100007F 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
            "   0: 0100007F:1F90 00000000:0000 0D 00000000:00000000 00:00000000 00000000 0 0 1",
            "   0: 0100:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
        ] {
            assert!(parse_line(line).is_none(), "{line:?}");
        }
    }

    #[test]
    fn reads_this_namespace_tables() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sockets = read_port(port, TcpStates::LISTEN).unwrap();
        assert_eq!(sockets.len(), 1);
        assert_eq!(sockets[0].id.local, listener.local_addr().unwrap());
    }
}
