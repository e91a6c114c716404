//! haproxy as a load balancer in front of two backends, configured the same way for the
//! tests and the busy benchmark: HTTP keep-alive on both sides, round robin, health
//! checks every 500 ms, and a failed connect retried on the other backend (`retries 3`,
//! `option redispatch`), as a production balancer would be set up.

use std::{
    io,
    path::{Path, PathBuf},
    process::Command,
};

/// Writes haproxy's configuration into `dir`: a frontend on 127.0.0.1:`port` balancing
/// over 127.0.0.1:`backends`. Returns its path.
pub fn config(dir: &Path, port: u16, backends: [u16; 2]) -> io::Result<PathBuf> {
    let [first, second] = backends;
    let conf = format!(
        "global\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  \
         timeout server 30s\n  retries 3\n  option redispatch\n\
         frontend web\n  bind 127.0.0.1:{port}\n  default_backend servers\n\
         backend servers\n  balance roundrobin\n  \
         server a 127.0.0.1:{first} check inter 500ms fall 2 rise 2\n  \
         server b 127.0.0.1:{second} check inter 500ms fall 2 rise 2\n"
    );
    std::fs::create_dir_all(dir)?;
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// The command that runs haproxy in the foreground with the configuration at `config`.
pub fn command(config: &Path) -> Command {
    let mut command = Command::new("haproxy");
    command.arg("-db").arg("-f").arg(config);
    command
}
