//! The sk_lookup program that takes new connections away from a draining listener
//! (`program.rs`), and the sk_msg program that asks HTTP/1.x clients of a draining
//! server to close (`close_http.rs`). The rest of this paragraph is the sk_lookup one.
//!
//! sk_lookup runs when the kernel looks for the listening socket of an incoming SYN
//! (Linux 5.9+). For the port under drain, if one of the draining listeners would match
//! the packet's destination (address, family, `IPV6_V6ONLY`, and the device it arrived
//! on for a listener bound to one, as the kernel's own lookup does), the program hands the connection to a successor listener
//! that matches it (another process on the same port with SO_REUSEPORT, or a listener
//! on another port), bypassing the reuseport group so the old listener gets none. With
//! no successor it returns `SK_DROP`: the kernel answers the SYN with a RST and the
//! client's `connect()` fails at once with ECONNREFUSED, so load balancers and clients
//! retry elsewhere instead of queueing on a listener that is going away. Established
//! connections are untouched: sk_lookup only runs for listener lookup.
//!
//! The refusal is keyed on the draining listeners' presence in a SOCKHASH. The kernel
//! drops a socket from every SOCKHASH when it is closed, so the refusal ends by itself
//! when the draining listener closes, whatever happened to the process that set it up.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod close_http;
#[cfg(target_arch = "bpf")]
mod program;

/// On the host there is no program to run: `cargo build --workspace` builds this stub, and
/// drain-daemon's build script builds the real program for `bpfel-unknown-none`.
#[cfg(not(target_arch = "bpf"))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "drain-ebpf is an eBPF program, embedded in drain-daemon's binaries by its build \
         script (`cargo build -p drain-daemon`); there is nothing to run on the host"
    );
    std::process::ExitCode::FAILURE
}
