//! `drain-daemon`: the long-lived process that runs drains for `drainctl`.
//!
//! It owns the control socket's life (one daemon per socket, stale sockets replaced,
//! root-only permissions) and serves [`crate::control`] until SIGINT or SIGTERM. Drains
//! in progress when it stops keep their refusal of new connections pinned (it ends when
//! the listeners close), as a killed standalone `drainctl` would.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Parser;
use tokio::net::{UnixListener, UnixStream};
use tracing::{error, info};

use crate::{cli::Exit, control, steer};

#[derive(Debug, Parser)]
#[command(
    name = "drain-daemon",
    version,
    about = "Serve drainctl: run connection drains and hold their eBPF steering state"
)]
pub struct DaemonArgs {
    /// The control socket to listen on.
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Entry point of the `drain-daemon` binary.
pub fn main() -> ExitCode {
    let args = DaemonArgs::parse();
    crate::cli::init_logging(args.verbose, false);
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "drain-daemon: needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_PTRACE): run it as root"
        );
        return Exit::Environment.into();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("drain-daemon: cannot start the async runtime: {err}");
            return Exit::Failure.into();
        }
    };
    match runtime.block_on(run(&args.socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err}");
            eprintln!("drain-daemon: {err}");
            Exit::Environment.into()
        }
    }
}

async fn run(socket: &Path) -> io::Result<()> {
    let listener = bind(socket).await?;
    steer::sweep_stale();
    info!(socket = %socket.display(), "serving drainctl");
    let result = tokio::select! {
        result = control::serve(listener) => result,
        () = shutdown_signal() => {
            info!("stopping");
            Ok(())
        }
    };
    let _ = fs::remove_file(socket);
    result
}

/// Binds the control socket, replacing a stale socket but never a live daemon's, and
/// never anything that is not a socket: the path is an argument, and root must not
/// delete the file a mistyped `--socket` names.
async fn bind(socket: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    match fs::symlink_metadata(socket) {
        Ok(found) if found.file_type().is_socket() => {
            if UnixStream::connect(socket).await.is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another drain-daemon serves {}", socket.display()),
                ));
            }
            fs::remove_file(socket)?;
        }
        Ok(found) => {
            let kind = if found.is_symlink() {
                "a symbolic link"
            } else if found.is_dir() {
                "a directory"
            } else if found.is_file() {
                "a regular file"
            } else {
                "a special file"
            };
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} is {kind}, not a socket: refusing to replace it (choose another --socket)",
                    socket.display()
                ),
            ));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(io::Error::new(
                err.kind(),
                format!("lstat {}: {err}", socket.display()),
            ))
        }
    }
    let listener = UnixListener::bind(socket).map_err(|err| {
        io::Error::new(err.kind(), format!("binding {}: {err}", socket.display()))
    })?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut interrupt), Ok(mut terminate)) => {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
