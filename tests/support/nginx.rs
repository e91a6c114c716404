//! nginx as a real reverse proxy in front of the demo server, configured the same way
//! for the tests and the busy benchmark: it is the server whose behaviour (its graceful
//! QUIT, its watching the client while proxying a response) the drain is measured
//! against.

use std::{io, path::Path, process::Command, time::Duration};

use crate::ChildGuard;

/// An nginx master stopped with TERM when dropped, so that it stops its worker too (a
/// KILL would leave the worker running).
pub struct Nginx(pub ChildGuard);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.terminate(Duration::from_secs(5));
    }
}

/// Writes an nginx prefix at `prefix`: one worker, `reuseport` on 127.0.0.1:`port`,
/// keep-alive to the demo server on 127.0.0.1:`backend`, no access log.
pub fn proxy_prefix(prefix: &Path, port: u16, backend: u16) -> io::Result<()> {
    std::fs::create_dir_all(prefix.join("logs"))?;
    let dir = prefix.display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n\
         \x20 upstream app {{ server 127.0.0.1:{backend}; keepalive 64; }}\n\
         \x20 server {{\n    listen 127.0.0.1:{port} reuseport;\n    keepalive_requests 100000;\n\
         \x20   location / {{ proxy_pass http://app; proxy_http_version 1.1; \
         proxy_set_header Connection \"\"; }}\n  }}\n}}\n"
    );
    std::fs::write(prefix.join("nginx.conf"), conf)
}

/// Writes an nginx prefix at `prefix` serving the files under `root` on
/// 127.0.0.1:`port`: one worker, bodies by `sendfile`, keep-alive without a request
/// limit, no access log.
pub fn static_prefix(prefix: &Path, port: u16, root: &Path) -> io::Result<()> {
    std::fs::create_dir_all(prefix.join("logs"))?;
    let dir = prefix.display();
    let root = root.display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  keepalive_requests 100000;\n\
         \x20 keepalive_timeout 60s;\n  default_type application/octet-stream;\n\
         \x20 server {{\n    listen 127.0.0.1:{port};\n    root {root};\n  }}\n}}\n"
    );
    std::fs::write(prefix.join("nginx.conf"), conf)
}

/// Starts nginx (`nginx`: its path) as a reverse proxy ([`proxy_prefix`]) on
/// 127.0.0.1:`port` in front of 127.0.0.1:`backend`, from a prefix under the temporary
/// directory named after `name`, this process and the calling thread.
pub fn spawn_proxy(nginx: &Path, name: &str, port: u16, backend: u16) -> Nginx {
    let prefix = std::env::temp_dir().join(format!(
        "drain-{name}-nginx-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    proxy_prefix(&prefix, port, backend).expect("write the nginx prefix");
    let child = command(nginx, &prefix)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start nginx");
    Nginx(ChildGuard(child))
}

/// The command that runs nginx (`nginx`: its path) in the foreground from `prefix`.
pub fn command(nginx: &Path, prefix: &Path) -> Command {
    let mut command = Command::new(nginx);
    command
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .arg("-e")
        .arg(prefix.join("error.log"));
    command
}
