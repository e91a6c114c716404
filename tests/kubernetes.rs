//! Kubernetes: the shipped manifests (drain-daemon/deploy/kubernetes) validate offline
//! against the Kubernetes schema and keep the application pod unprivileged within its
//! time budget; and a pod with no capability drains itself through the node daemon's
//! pod socket, in its own network and PID namespaces and nowhere else.
//!
//! The pod is played by [`Pod`]: a network namespace and a PID namespace of their own,
//! the server and the preStop hook's `drainctl` entered into them by `nsenter` and
//! stripped of every capability by `setpriv` (as `nobody`, or as a root without
//! capabilities), the daemon outside, in the test's network namespace, reached by the
//! pod socket's path.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use drain_tests::{
    assert_refused_at_once, assert_untouched, bin_path, busy_client, daemon_socket_path,
    drain_through_daemon, idle_client, spawn_daemon_with, spawn_drainctl_with, start_server,
    start_server_via, systemd::require_tool, ChildGuard, Closed, DrainctlOutput, EventReader,
    Netns, Pod, PodUser, SERVING,
};

const SECOND: Duration = Duration::from_secs(1);

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../drain-daemon/deploy/kubernetes")
}

/// The venv `cargo xtask setup` installs kubernetes-validate into (schemas included, so
/// it validates offline); `None` with a SKIPPED line when missing, a failure under CI.
fn kubernetes_validate_venv() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let venv = home.join(".cache/drain-daemon/kubernetes-validate");
    if venv.join("bin/kubernetes-validate").is_file() {
        return Some(venv);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("kubernetes-validate is missing under CI: `cargo xtask setup` installs it");
    }
    eprintln!("SKIPPED: kubernetes-validate is not installed (cargo xtask setup)");
    None
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schema() {
    let Some(venv) = kubernetes_validate_venv() else {
        return;
    };
    let files: Vec<PathBuf> = ["drain-daemon-daemonset.yaml", "example-deployment.yaml"]
        .iter()
        .map(|name| manifests().join(name))
        .collect();
    let output = Command::new(venv.join("bin/kubernetes-validate"))
        .arg("--strict")
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let said = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    // One "passed" per resource: the Namespace, the DaemonSet and the Deployment.
    assert_eq!(said.matches("passed").count(), 3, "{said}");

    // What the schema cannot say: a misspelt field under --strict fails.
    let broken = std::env::temp_dir().join(format!("drain-k8s-{}.yaml", std::process::id()));
    let text = std::fs::read_to_string(&files[1]).unwrap();
    std::fs::write(
        &broken,
        text.replace("terminationGracePeriodSeconds", "terminationGracePeriod"),
    )
    .unwrap();
    let rejected = Command::new(venv.join("bin/kubernetes-validate"))
        .arg("--strict")
        .arg(&broken)
        .output()
        .unwrap();
    std::fs::remove_file(&broken).unwrap();
    assert!(
        !rejected.status.success(),
        "a misspelt field must not validate"
    );
}

/// The manifests' documents as JSON, read by the venv's PyYAML.
fn documents(venv: &Path, file: &str) -> Vec<serde_json::Value> {
    let output = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(manifests().join(file))
        .output()
        .expect("run the venv's python");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn of_kind<'a>(documents: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    documents
        .iter()
        .find(|document| document["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifests"))
}

/// `--NAME VALUE` of a command line, as seconds (the manifests write whole seconds).
fn seconds_of(command: &[String], name: &str) -> u64 {
    let at = command
        .iter()
        .position(|arg| arg == name)
        .unwrap_or_else(|| panic!("{name} missing from {command:?}"));
    command[at + 1]
        .strip_suffix('s')
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("{name} {} is not whole seconds", command[at + 1]))
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|item| item.as_str().expect("a string").to_string())
        .collect()
}

#[test]
fn the_pod_holds_no_capability_and_its_drain_fits_the_grace_period() {
    let Some(venv) = kubernetes_validate_venv() else {
        return;
    };
    let daemon_set = documents(&venv, "drain-daemon-daemonset.yaml");
    let daemon_pod = &of_kind(&daemon_set, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(
        daemon_pod["hostPID"], true,
        "the daemon must see the pods' processes"
    );
    let daemon = &daemon_pod["containers"][0];
    let security = &daemon["securityContext"];
    assert_ne!(security["privileged"], true);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    let mut added = strings(&security["capabilities"]["add"]);
    added.sort();
    assert_eq!(
        added,
        [
            "BPF",
            "DAC_READ_SEARCH",
            "NET_ADMIN",
            "SYS_ADMIN",
            "SYS_PTRACE"
        ]
    );
    let daemon_command = strings(&daemon["command"]);
    let pod_socket = &daemon_command[daemon_command
        .iter()
        .position(|arg| arg == "--pod-socket")
        .expect("the DaemonSet serves pods")
        + 1];

    let deployment = documents(&venv, "example-deployment.yaml");
    let app_pod = &of_kind(&deployment, "Deployment")["spec"]["template"]["spec"];
    let app = &app_pod["containers"][0];
    assert_eq!(
        strings(&app["securityContext"]["capabilities"]["drop"]),
        ["ALL"]
    );
    assert!(app["securityContext"]["capabilities"]["add"].is_null());
    assert_eq!(app["securityContext"]["allowPrivilegeEscalation"], false);
    assert_ne!(app_pod["hostNetwork"], true);
    assert_ne!(app_pod["hostPID"], true);
    let hook = strings(&app["lifecycle"]["preStop"]["exec"]["command"]);
    // The hook's socket is the daemon's pod socket, through the hostPath it mounts.
    let hook_socket = Path::new(
        &hook[hook
            .iter()
            .position(|arg| arg == "--daemon-socket")
            .expect("the hook names the pod socket")
            + 1],
    );
    let mount = app["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|mount| hook_socket.starts_with(mount["mountPath"].as_str().unwrap()))
        .expect("the socket's directory is mounted into the app container");
    let volume = app_pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|volume| volume["name"] == mount["name"])
        .unwrap();
    let on_node = Path::new(volume["hostPath"]["path"].as_str().unwrap()).join(
        hook_socket
            .strip_prefix(mount["mountPath"].as_str().unwrap())
            .unwrap(),
    );
    assert_eq!(on_node, Path::new(pod_socket));
    // Read-only: a pod's root must not be able to put a symlink where the daemon makes
    // its socket, nor replace the socket. A directory (or the socket itself), never a
    // path the kubelet would create empty.
    assert_eq!(mount["readOnly"], true, "{mount}");
    assert!(
        ["Directory", "Socket"].contains(&volume["hostPath"]["type"].as_str().unwrap_or("")),
        "{volume}"
    );
    // preStop counts against the grace period, and the server still has to stop after
    // it: accept grace + timeout + the server's own stop must fit.
    let server_stop = 5;
    let budget = seconds_of(&hook, "--accept-grace") + seconds_of(&hook, "--timeout") + server_stop;
    // The pod socket's caps (drain-daemon/src/control/pod_limits.rs): 60 s of grace,
    // 10 min of timeout.
    assert!(seconds_of(&hook, "--accept-grace") <= 60);
    assert!(seconds_of(&hook, "--timeout") <= 600);
    let grace = app_pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        budget < grace,
        "{budget}s of drain and stop in a {grace}s grace period"
    );
}

/// What a pod case needs: `setpriv` and `nsenter`, and a network namespace of its own
/// for the node's side; `None` once a missing one was reported ([`require_tool`],
/// [`Netns::require`]).
fn pod_node() -> Option<Netns> {
    require_tool("setpriv")?;
    require_tool("nsenter")?;
    Netns::require()
}

/// The daemon with both sockets, in the calling thread's network namespace.
fn spawn_daemon_for_pods(name: &str) -> (ChildGuard, EventReader, PathBuf, PathBuf) {
    spawn_daemon_for_pods_with(name, &[])
}

/// [`spawn_daemon_for_pods`] with `env` set (failpoints).
fn spawn_daemon_for_pods_with(
    name: &str,
    env: &[(&str, &str)],
) -> (ChildGuard, EventReader, PathBuf, PathBuf) {
    let root_socket = daemon_socket_path(&format!("{name}-root"));
    let pod_socket = daemon_socket_path(&format!("{name}-pods"));
    let mut command = Command::new(bin_path("drain-daemon"));
    command
        .arg("--socket")
        .arg(&root_socket)
        .arg("--pod-socket")
        .arg(&pod_socket)
        .envs(env.iter().copied());
    let (daemon, log) = spawn_daemon_with(command, SERVING);
    (daemon, log, root_socket, pod_socket)
}

/// The preStop hook's drain, quicker to call idle.
const POD_DRAIN: &[&str] = &[
    "--port",
    "8080",
    "--quiet-period",
    "200ms",
    "--timeout",
    "20s",
    "--json",
];

/// `drainctl --daemon-socket SOCKET drain ARGS...` run in `pod` as `user`.
fn drain_in_pod(pod: &Pod, user: PodUser, socket: &Path, args: &[&str]) -> DrainctlOutput {
    let mut command = pod.drainctl(user);
    command
        .arg("--daemon-socket")
        .arg(socket)
        .arg("drain")
        .args(args);
    spawn_drainctl_with(&mut command).wait(30 * SECOND)
}

/// A server of `pod`, as `nobody` with no capability, listening on `listen`.
fn start_pod_server(pod: &Pod, listen: &str) -> (ChildGuard, EventReader, std::net::SocketAddr) {
    let wrapper = pod.wrapper(PodUser::Nobody, true);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    start_server_via(&wrapper, ["--listen", listen])
}

#[test]
fn a_pod_without_capabilities_drains_itself_through_the_pod_socket() {
    pod_drains_itself(PodUser::Nobody);
}

#[test]
fn a_pods_root_without_capabilities_drains_itself_through_the_pod_socket() {
    pod_drains_itself(PodUser::RootWithoutCapabilities);
}

/// The preStop flow: idle keep-alive connections closed gracefully, a request in flight
/// answered first, new connections refused, exit 0, all from a hook run as `user`.
fn pod_drains_itself(user: PodUser) {
    let Some(_node) = pod_node() else {
        return;
    };
    let (_daemon, daemon_log, _root_socket, pod_socket) =
        spawn_daemon_for_pods(&format!("pod-{user:?}"));
    let pod = Pod::enter();
    let status = pod
        .command(user, true, "grep")
        .args(["-E", "^(Cap(Eff|Prm|Bnd)|Uid):", "/proc/self/status"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        status.matches("0000000000000000").count(),
        3,
        "the pod's processes hold no capability: {status}"
    );
    let uid = match user {
        PodUser::Nobody => "Uid:\t65534",
        PodUser::RootWithoutCapabilities => "Uid:\t0",
    };
    assert!(status.contains(uid), "{status}");
    let (_server, events, addr) = start_pod_server(&pod, "127.0.0.1:8080");
    let mut idle: Vec<_> = (0..3).map(|_| idle_client(addr)).collect();
    let mut busy = busy_client(addr, &events, "/sleep/1500");

    let output = drain_in_pod(&pod, user, &pod_socket, POD_DRAIN);
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    let report = output.json();
    assert_eq!(report["outcome"], "drained", "{report}");
    // The idle ones at once, the busy one once answered.
    assert_eq!(report["closed_gracefully"], 4, "{report}");
    assert_eq!(report["closed_abortively"], 0, "{report}");
    for client in &mut idle {
        assert_eq!(client.wait_closed(5 * SECOND), Closed::Eof);
    }
    let answer = busy
        .read_response()
        .expect("the request in flight is answered");
    assert_eq!(answer.status, 200);
    assert_eq!(busy.wait_closed(5 * SECOND), Closed::Eof);
    // Pinned for the pod's namespace: refused after drainctl exited, until the server
    // closes its listener.
    assert_refused_at_once(addr);
    assert_eq!(
        report["steering_pinned_at"]
            .as_str()
            .map(|pinned| pinned.contains(&format!("netns-{}", pod.netns().inode()))),
        Some(true),
        "{report}"
    );
    daemon_log
        .wait_for_line(5 * SECOND, |line| {
            line.contains("drain requested") && line.contains("pod=true")
        })
        .expect("the daemon ran the pod's drain");
}

/// The daemon acts in the peer's network namespace, never its own: a pod with no
/// listener on the port gets "no listener", and the daemon's namespace's server on the
/// same port is not touched.
#[test]
fn a_pod_drains_only_in_its_own_network_namespace() {
    let Some(_setpriv) = require_tool("setpriv") else {
        return;
    };
    let Some(_node) = Netns::require() else {
        return;
    };
    let (_daemon, _log, _root_socket, pod_socket) = spawn_daemon_for_pods("netns");
    let (_node_server, _node_events, node_addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut node_client = idle_client(node_addr);
    let pod = Pod::enter();
    let output = drain_in_pod(
        &pod,
        PodUser::Nobody,
        &pod_socket,
        &[
            "--port",
            "8080",
            "--quiet-period",
            "200ms",
            "--timeout",
            "5s",
        ],
    );
    assert_eq!(output.code, Some(3), "log:\n{}", output.stderr_text());
    assert!(
        output
            .stderr_text()
            .contains("no TCP listener on port 8080 in this network namespace"),
        "{}",
        output.stderr_text()
    );
    drop(pod);
    // Back in the node's namespace: its server was left alone.
    assert_untouched(&mut node_client, node_addr);
}

/// Kills the process `guard`'s nsenter started in a pod and waits until it has exited
/// (a zombie of the pod's pid 1 holds no socket). Killing nsenter alone would leave it.
fn kill_pod_process(guard: &ChildGuard) {
    let pid = guard.first_child();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the pod's process");
    let deadline = std::time::Instant::now() + 5 * SECOND;
    while std::fs::read_to_string(format!("/proc/{pid}/status"))
        .is_ok_and(|status| !status.contains("State:\tZ"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} did not exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Only what the pod's processes hold drains: a process in the pod's network namespace
/// but not in its PID namespace (another container of the pod, or the node's) keeps its
/// listener on the same port, its connections and its new clients.
#[test]
fn a_pod_drains_only_what_its_own_processes_hold() {
    let Some(_setpriv) = require_tool("setpriv") else {
        return;
    };
    let Some(_node) = Netns::require() else {
        return;
    };
    let (_daemon, _log, _root_socket, pod_socket) = spawn_daemon_for_pods("scope");
    let pod = Pod::enter();
    let (pod_server, _pod_events, pod_addr) = start_pod_server(&pod, "127.0.0.1:8080");
    // In the pod's network namespace, in the test's PID namespace.
    let (_other_server, _other_events, other_addr) = start_server(["--listen", "127.0.0.2:8080"]);
    let mut pod_client = idle_client(pod_addr);
    let mut other_client = idle_client(other_addr);

    let output = drain_in_pod(&pod, PodUser::Nobody, &pod_socket, POD_DRAIN);
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(output.json()["closed_gracefully"], 1, "{}", output.stdout);
    assert_eq!(pod_client.wait_closed(5 * SECOND), Closed::Eof);
    assert_refused_at_once(pod_addr);
    assert_untouched(&mut other_client, other_addr);

    // Nothing of the pod's at all: refused, not drained.
    kill_pod_process(&pod_server);
    let output = drain_in_pod(&pod, PodUser::Nobody, &pod_socket, POD_DRAIN);
    assert_eq!(output.code, Some(3), "log:\n{}", output.stderr_text());
    assert!(
        output
            .stderr_text()
            .contains("held by a process of the caller's PID namespace"),
        "{}",
        output.stderr_text()
    );
    assert_untouched(&mut other_client, other_addr);
}

/// The pid the pod's PID namespace gives the process the host numbers `host_pid` (the
/// last of `NSpid:`).
fn pod_pid_of(host_pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .and_then(|pids| pids.split_whitespace().last())
        .and_then(|pid| pid.parse().ok())
        .expect("NSpid of the process")
}

/// `--pid` is read in the pod's PID namespace: the host's number of the pod's own
/// server is not a pid of the pod (refused, nothing done), the pod's number is.
#[test]
fn a_pod_names_processes_by_its_own_pids_and_only_its_own() {
    let Some(_setpriv) = require_tool("setpriv") else {
        return;
    };
    let Some(_node) = Netns::require() else {
        return;
    };
    let (_daemon, _log, _root_socket, pod_socket) = spawn_daemon_for_pods("pid");
    let pod = Pod::enter();
    let (server, _events, addr) = start_pod_server(&pod, "127.0.0.1:8080");
    // The guard holds nsenter; setpriv exec'd the server as its child.
    let host_pid = server.first_child();
    let pod_pid = pod_pid_of(host_pid);
    assert_ne!(
        pod_pid, host_pid,
        "the server is in the pod's PID namespace"
    );
    let mut idle = idle_client(addr);

    // A drainctl that sees the host's /proc passes its own pid check with a host pid.
    let mut command = pod.command(PodUser::Nobody, false, bin_path("drainctl"));
    command
        .arg("--daemon-socket")
        .arg(&pod_socket)
        .args(["drain", "--port", "8080", "--timeout", "5s", "--pid"])
        .arg(host_pid.to_string());
    let output = spawn_drainctl_with(&mut command).wait(30 * SECOND);
    assert_eq!(output.code, Some(3), "log:\n{}", output.stderr_text());
    assert!(
        output.stderr_text().contains(&format!(
            "no process {host_pid} in drainctl's PID namespace"
        )),
        "{}",
        output.stderr_text()
    );
    assert_eq!(
        idle.request("GET", "/", b"").unwrap().status,
        200,
        "left alone"
    );

    let output = drain_in_pod(
        &pod,
        PodUser::Nobody,
        &pod_socket,
        &[POD_DRAIN, &["--pid", &pod_pid.to_string()]].concat(),
    );
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(output.json()["closed_gracefully"], 1, "{}", output.stdout);
    assert_eq!(idle.wait_closed(5 * SECOND), Closed::Eof);
}

/// The pod socket relaxes nothing on the root socket: a pod's drainctl there is refused,
/// as root without capabilities (told what it lacks) and as nobody (no access).
#[test]
fn a_peer_without_capabilities_is_still_refused_on_the_root_socket() {
    let Some(_setpriv) = require_tool("setpriv") else {
        return;
    };
    let Some(_node) = Netns::require() else {
        return;
    };
    let (_daemon, _log, root_socket, _pod_socket) = spawn_daemon_for_pods("root");
    let pod = Pod::enter();
    let (_server, _events, addr) = start_pod_server(&pod, "127.0.0.1:8080");
    let mut idle = idle_client(addr);
    for (user, said) in [
        (PodUser::RootWithoutCapabilities, "lacks CAP_NET_ADMIN"),
        (PodUser::Nobody, "Permission denied"),
    ] {
        let output = drain_in_pod(
            &pod,
            user,
            &root_socket,
            &["--port", "8080", "--timeout", "5s"],
        );
        assert_eq!(output.code, Some(3), "{user:?}: {}", output.stderr_text());
        assert!(
            output.stderr_text().contains(said),
            "{user:?}: {}",
            output.stderr_text()
        );
    }
    assert_untouched(&mut idle, addr);
}

/// A peer sharing the daemon's namespaces (a hostNetwork or hostPID pod) would have the
/// node's scope: the pod socket refuses it before reading its request.
#[test]
fn a_peer_in_the_daemons_namespaces_is_refused_on_the_pod_socket() {
    let Some(_node) = Netns::require() else {
        return;
    };
    let (_daemon, _log, _root_socket, pod_socket) = spawn_daemon_for_pods("host");
    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut idle = idle_client(addr);
    let output = drain_through_daemon(
        pod_socket.to_str().unwrap(),
        &["--port", "8080", "--timeout", "5s"],
    );
    assert_eq!(output.code, Some(3), "{}", output.stderr_text());
    assert!(
        output
            .stderr_text()
            .contains("shares the node's network namespace"),
        "{}",
        output.stderr_text()
    );
    assert_eq!(idle.request("GET", "/", b"").unwrap().status, 200);
}

/// `--successor-port` from a pod: the new connections go only to a listener the pod's
/// own processes hold. One held from outside its PID namespace is refused (exit 3,
/// nothing steered); the pod's own successor takes the new connections.
#[test]
fn a_pod_hands_its_new_connections_only_to_a_successor_of_its_own() {
    let Some(_setpriv) = require_tool("setpriv") else {
        return;
    };
    let Some(_node) = Netns::require() else {
        return;
    };
    let (_daemon, _log, _root_socket, pod_socket) = spawn_daemon_for_pods("successor");
    let pod = Pod::enter();
    let (_pod_server, _pod_events, pod_addr) = start_pod_server(&pod, "127.0.0.1:8080");
    // In the pod's network namespace, in the test's PID namespace.
    let (_other_server, _other_events, other_addr) = start_server(["--listen", "127.0.0.1:8081"]);
    let mut other_client = idle_client(other_addr);
    let drain_to = |port: &str| {
        let mut args = POD_DRAIN.to_vec();
        args.extend(["--successor-port", port]);
        drain_in_pod(&pod, PodUser::Nobody, &pod_socket, &args)
    };

    let output = drain_to("8081");
    assert_eq!(output.code, Some(3), "log:\n{}", output.stderr_text());
    assert!(
        output
            .stderr_text()
            .contains("successor port 8081 is held by a process of the caller's PID namespace"),
        "{}",
        output.stderr_text()
    );
    assert_untouched(&mut other_client, other_addr);
    let mut client = drain_tests::KeepAliveClient::connect(pod_addr).expect("nothing steered");
    assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
    drop(client);

    let (_successor, successor_events, _) = start_pod_server(&pod, "127.0.0.1:8082");
    let output = drain_to("8082");
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(output.json()["successors"], 1, "{}", output.stdout);
    let mut client =
        drain_tests::KeepAliveClient::connect(pod_addr).expect("taken by the pod's successor");
    assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
    successor_events
        .wait_for(&format!("accepted {}", client.local_addr()), 5 * SECOND)
        .expect("the pod's successor on 8082 accepted it");
}

/// A drain request for `port` in the network namespace `netns`, as drainctl sends it.
fn drain_request(port: u16, netns: u64, accept_grace_ms: u64) -> String {
    format!(
        r#"{{"request":"drain","plan":{{"port":{port},"timeout_ms":10000,"poll_interval_ms":100,"quiet_period_ms":200,"close_grace_ms":0,"pace":{{"spread":0}},"force":false,"accept_grace_ms":{accept_grace_ms}}},"netns_inode":{netns}}}"#
    )
}

/// `drain-control-client POD_SOCKET ARGS...` run in `pod` as nobody.
fn control_client_in_pod(pod: &Pod, socket: &Path, args: &[&str]) -> Command {
    let mut command = pod.command(PodUser::Nobody, true, bin_path("drain-control-client"));
    command.arg(socket).args(args);
    command
}

/// One pod opens 260 drain requests at once on the pod socket and holds them (each with
/// the longest accept grace a pod may ask for, on a listener of its own): it gets a few
/// at once, the port's lock refuses a second drain of the same port before its grace,
/// and the rest are refused at once. Another pod's drain meanwhile takes what it takes
/// alone, under 2 s, and a request with a grace past the cap is refused.
#[test]
fn a_pod_flooding_the_pod_socket_holds_up_no_other_pods_drain() {
    let Some(_node) = pod_node() else {
        return;
    };
    let (_daemon, _log, _root_socket, pod_socket) = spawn_daemon_for_pods("flood");

    let attacker = Pod::enter();
    let (_attacker_server, _attacker_events, _) = start_pod_server(&attacker, "127.0.0.1:8080");
    let flood_line = drain_request(8080, attacker.netns().inode(), 60_000);
    let mut flood = ChildGuard(
        control_client_in_pod(
            &attacker,
            &pod_socket,
            &["--send", &flood_line, "--connections", "260"],
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let mut connected = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flood.0.stdout.as_mut().unwrap()),
        &mut connected,
    )
    .unwrap();
    eprintln!("the attacker's flood: {}", connected.trim());

    let victim = Pod::enter();
    let (_victim_server, _victim_events, _) = start_pod_server(&victim, "127.0.0.1:9090");
    let mut command = victim.drainctl(PodUser::Nobody);
    command
        .arg("--daemon-socket")
        .arg(&pod_socket)
        .args(["drain", "--port", "9090", "--quiet-period", "200ms"])
        .args(["--timeout", "3s", "--json"]);
    let started = std::time::Instant::now();
    let output = spawn_drainctl_with(&mut command).wait(15 * SECOND);
    let took = started.elapsed();
    eprintln!("the victim's drain during the flood took {took:?}");
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(output.json()["outcome"], "drained");
    assert!(took < 2 * SECOND, "the victim's drain took {took:?}");
    drop(victim);
    drop(flood);
    let too_long = control_client_in_pod(
        &attacker,
        &pod_socket,
        &[
            "--send",
            &drain_request(8080, attacker.netns().inode(), 86_400_000),
        ],
    )
    .output()
    .unwrap();
    let too_long = String::from_utf8_lossy(&too_long.stdout);
    assert!(
        too_long.contains("--accept-grace 86400s is longer than the pod socket allows"),
        "{too_long}"
    );
}

/// `MAX_NAMESPACES_PER_POD` (drain-daemon/src/control/pod_limits.rs).
const MAX_NAMESPACES_PER_POD: usize = 16;

/// A pod whose user may create user namespaces (uid 65534, no capability) makes a network
/// namespace for each drain, each with a listener that stays open, so each drain's record
/// stays: its drains in 16 namespaces run, the next is refused at once (exit 3) with the
/// limit and what to do, a drain in a namespace it has records in already still runs,
/// and another pod's drain runs.
#[test]
fn a_pod_making_network_namespaces_has_drain_records_in_a_bounded_number_of_them() {
    let Some(_node) = pod_node() else {
        return;
    };
    let Some(_unshare) = require_tool("unshare") else {
        return;
    };
    let (_daemon, _log, _root_socket, pod_socket) = spawn_daemon_for_pods("namespaces");
    let attacker = Pod::enter();
    let mut made: Vec<MadeNamespace> = (0..MAX_NAMESPACES_PER_POD)
        .map(|n| {
            let mut namespace = MadeNamespace::start(&attacker, &pod_socket);
            let (code, output) = namespace.drain();
            assert_eq!(code, 0, "the drain in namespace {n}:\n{output}");
            namespace
        })
        .collect();
    let (code, output) = MadeNamespace::start(&attacker, &pod_socket).drain();
    assert_eq!(code, 3, "{output}");
    assert!(
        output.contains(&format!(
            "has drain records in {MAX_NAMESPACES_PER_POD} network namespaces already, the most \
             one pod may have: drain in one of those, or close the listeners"
        )),
        "{output}"
    );
    let (code, output) = made[0].drain();
    assert_eq!(code, 0, "a namespace the pod has records in:\n{output}");

    let victim = Pod::enter();
    let (_victim_server, _victim_events, _) = start_pod_server(&victim, "127.0.0.1:9090");
    let output = drain_in_pod(
        &victim,
        PodUser::Nobody,
        &pod_socket,
        &["--port", "9090", "--quiet-period", "200ms", "--json"],
    );
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
}

/// A network namespace (and user namespace) a pod made with `unshare -Urn` as its user:
/// a server that keeps its listener on port 8080, and a shell that drains the port
/// through the pod socket for each line it is sent.
struct MadeNamespace {
    shell: ChildGuard,
    output: EventReader,
}

impl MadeNamespace {
    fn start(pod: &Pod, pod_socket: &Path) -> MadeNamespace {
        let script = format!(
            "exec 3<&0; {server} --listen 0.0.0.0:8080 | {{ read -r _; echo listening; \
             while read -r _ <&3; do {drainctl} --daemon-socket {socket} drain --port 8080 \
             --quiet-period 50ms --timeout 5s 2>&1; echo \"exit $?\"; done; }}",
            server = bin_path("drain-demo-server").display(),
            drainctl = bin_path("drainctl").display(),
            socket = pod_socket.display(),
        );
        let mut shell = pod
            .command(PodUser::Nobody, true, "unshare")
            .args(["-Urn", "sh", "-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map(ChildGuard)
            .expect("spawn unshare -Urn in the pod");
        let stdout = shell.0.stdout.take().expect("piped");
        let output = EventReader::from_reader("made namespace", stdout);
        output
            .wait_for("listening", 5 * SECOND)
            .expect("the server in the namespace the pod made listens (user namespaces allowed?)");
        MadeNamespace { shell, output }
    }

    /// Drains port 8080 in the namespace: drainctl's exit code and output.
    fn drain(&mut self) -> (i32, String) {
        let stdin = self.shell.0.stdin.as_mut().expect("piped");
        std::io::Write::write_all(stdin, b"drain\n").expect("ask the shell for a drain");
        let mut output = Vec::new();
        let exit = self.output.wait_for_line(15 * SECOND, |line| {
            output.push(line.to_owned());
            line.starts_with("exit ")
        });
        let code = exit
            .and_then(|exit| exit.strip_prefix("exit ")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no drain ended within 15 s: {output:?}"));
        (code, output.join("\n"))
    }
}

/// A pod that sends a drain request and then bytes without end and no newline: the
/// daemon reads no more than a line's bound of them, cuts the pod (its drain ends as if
/// it had left), and its memory stays small (the peak, VmHWM, under 64 MiB).
#[test]
fn a_pod_streaming_a_line_without_end_costs_the_daemon_no_memory() {
    let Some(_node) = pod_node() else {
        return;
    };
    let (daemon, _log, _root_socket, pod_socket) = spawn_daemon_for_pods("endless");
    let pod = Pod::enter();
    let (_server, _events, _) = start_pod_server(&pod, "127.0.0.1:8080");
    // In its accept grace, the drain reads nothing but the cancel line.
    let request = drain_request(8080, pod.netns().inode(), 30_000);
    let junk = (256usize << 20).to_string();
    let started = std::time::Instant::now();
    let output = control_client_in_pod(
        &pod,
        &pod_socket,
        &["--send", &request, "--send-junk", &junk],
    )
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    let peak_kib = vm_kib(daemon.pid(), "VmHWM:");
    eprintln!(
        "after {:?}: daemon peak RSS {peak_kib} KiB; the pod saw: {}",
        started.elapsed(),
        said.lines().next().unwrap_or_default()
    );
    assert!(
        said.starts_with("write failed"),
        "the pod was not cut: {said}"
    );
    assert!(peak_kib < 64 * 1024, "daemon peak RSS {peak_kib} KiB");
    assert!(said.contains(r#""outcome":"cancelled""#), "{said}");
}

/// A `/proc/PID/status` figure in KiB (`VmRSS:`, `VmHWM:`).
fn vm_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Where the kernel cannot name the peer by a pidfd (`SO_PEERPIDFD`, Linux 6.5+; here a
/// failpoint answers `ENOPROTOOPT` as such a kernel does), the pod is refused and told
/// what to do: its `SO_PEERCRED` pid is never opened instead, since by then it could be
/// another pod's process. Its server is left alone.
#[test]
fn a_pod_the_kernel_cannot_name_by_a_pidfd_is_refused_not_looked_up_by_pid() {
    let Some(_node) = pod_node() else {
        return;
    };
    let (_daemon, _log, _root_socket, pod_socket) = spawn_daemon_for_pods_with(
        "no-peerpidfd",
        &[("DRAIN_FAILPOINTS", "peerpidfd:0=enoprotoopt")],
    );
    let pod = Pod::enter();
    let (_server, _events, addr) = start_pod_server(&pod, "127.0.0.1:8080");
    let mut idle = idle_client(addr);
    let output = drain_in_pod(&pod, PodUser::Nobody, &pod_socket, POD_DRAIN);
    assert_eq!(output.code, Some(3), "log:\n{}", output.stderr_text());
    assert!(
        output
            .stderr_text()
            .contains("SO_PEERPIDFD) on the pod socket: this kernel cannot name a peer by a pidfd")
            && output.stderr_text().contains("upgrade the node's kernel"),
        "{}",
        output.stderr_text()
    );
    assert_untouched(&mut idle, addr);
}

/// `drainctl --daemon-socket SOCKET release --port 8080 --json` run by `drainctl`.
fn release_with(mut drainctl: Command, socket: &Path) -> DrainctlOutput {
    drainctl
        .arg("--daemon-socket")
        .arg(socket)
        .args(["release", "--port", "8080", "--json"]);
    spawn_drainctl_with(&mut drainctl).wait(30 * SECOND)
}

/// `release` is scoped like `drain`: another container of the pod (its network
/// namespace, a PID namespace of its own) cannot end the pinned refusal of the first
/// container's listener; the first container can.
#[test]
fn a_container_ends_only_the_refusal_of_its_own_listeners() {
    let Some(_node) = pod_node() else {
        return;
    };
    let (_daemon, _log, _root_socket, pod_socket) = spawn_daemon_for_pods("release-scope");
    let pod = Pod::enter();
    let (_server, _events, addr) = start_pod_server(&pod, "127.0.0.1:8080");
    let output = drain_in_pod(&pod, PodUser::Nobody, &pod_socket, POD_DRAIN);
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_refused_at_once(addr);

    let other = pod.another_container();
    let output = release_with(other.drainctl(PodUser::Nobody), &pod_socket);
    assert_eq!(output.code, Some(3), "log:\n{}", output.stderr_text());
    assert!(
        output
            .stderr_text()
            .contains("a pod ends only the refusal of its own listeners"),
        "{}",
        output.stderr_text()
    );
    assert_refused_at_once(addr);

    let output = release_with(pod.drainctl(PodUser::Nobody), &pod_socket);
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(output.json()["released"], true, "{}", output.stdout);
    let mut client = idle_client(addr);
    assert_eq!(
        client.request("GET", "/", b"").unwrap().status,
        200,
        "accepted again"
    );
    drop(other);
}

/// A pod is told of no process outside its PID namespace: a second drain of its port
/// is busy "by another process" (the daemon itself holds the port for the first, and
/// its host pid is not the pod's business), and a process of the node that keeps the
/// drained listener open beside the pod's server is not in `listener_kept_by`.
#[test]
fn replies_to_a_pod_name_no_process_outside_its_pid_namespace() {
    let Some(_node) = pod_node() else {
        return;
    };
    let (_daemon, daemon_log, _root_socket, pod_socket) = spawn_daemon_for_pods("pod-view");
    let pod = Pod::enter();
    // Bound by the test (a process of the node) and inherited by the pod's server: both
    // hold it.
    let listener = std::net::TcpListener::bind("127.0.0.1:8080").unwrap();
    let inherited = nix::unistd::dup(&listener).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&inherited).to_string();
    let wrapper = pod.wrapper(PodUser::Nobody, true);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let (_server, _events, addr) = start_server_via(&wrapper, ["--listen-fd", fd.as_str()]);
    drop(inherited);

    let mut first = pod.drainctl(PodUser::Nobody);
    first
        .arg("--daemon-socket")
        .arg(&pod_socket)
        .arg("drain")
        .args(POD_DRAIN)
        .args(["--accept-grace", "3s"]);
    let first = spawn_drainctl_with(&mut first);
    daemon_log
        .wait_for_line(10 * SECOND, |line| {
            line.contains("still accepting new connections")
        })
        .expect("the first drain holds the port");
    let second = drain_in_pod(&pod, PodUser::Nobody, &pod_socket, POD_DRAIN);
    assert_eq!(second.code, Some(3), "log:\n{}", second.stderr_text());
    assert!(
        second
            .stderr_text()
            .contains("port 8080 is already being drained by another process"),
        "{}",
        second.stderr_text()
    );

    let first = first.wait(30 * SECOND);
    assert_eq!(first.code, Some(0), "log:\n{}", first.stderr_text());
    let report = first.json();
    assert_eq!(
        report["listener_kept_by"],
        serde_json::json!([]),
        "{report}"
    );
    drop(listener);
    let _ = addr;
}

/// A connection left at the deadline is reported with its owner as the pod numbers it
/// (the server is pid 2 or so in the pod, not its host pid).
#[test]
fn a_pods_report_names_the_owner_of_a_connection_left_by_the_pods_pid() {
    let Some(_node) = pod_node() else {
        return;
    };
    let (_daemon, _log, _root_socket, pod_socket) = spawn_daemon_for_pods("pod-remaining");
    let pod = Pod::enter();
    let (server, events, addr) = start_pod_server(&pod, "127.0.0.1:8080");
    let host_pid = server.first_child();
    let mut busy = busy_client(addr, &events, "/sleep/6000");
    let output = drain_in_pod(
        &pod,
        PodUser::Nobody,
        &pod_socket,
        &[
            "--port",
            "8080",
            "--quiet-period",
            "200ms",
            "--timeout",
            "2s",
            "--json",
        ],
    );
    assert_eq!(output.code, Some(1), "log:\n{}", output.stderr_text());
    let report = output.json();
    let owner = &report["remaining"][0]["owner_pid"];
    let owner = owner.as_i64().unwrap_or_else(|| panic!("{report}"));
    assert_ne!(owner, i64::from(host_pid), "{report}");
    assert_eq!(owner, i64::from(pod_pid_of(host_pid)), "{report}");
    let _ = busy.read_response();
}
