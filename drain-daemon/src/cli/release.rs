//! `drainctl release`: stop refusing new connections to a port, through drain-daemon
//! when one serves this network namespace, from this process otherwise.

use super::{view, Route};
use crate::{
    app::{Exit, Failure},
    drain::DrainError,
    steer,
};

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    /// The TCP port to stop refusing (1-65535).
    #[arg(short, long, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Print the result as one JSON object on stdout: `{"port":P,"released":BOOL}`.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(args: ReleaseArgs, route: Route) -> Result<Exit, Failure> {
    let released = match route {
        Route::Daemon(mut client) => client.release(args.port).await,
        Route::Standalone => Ok(None),
    };
    let released = match released {
        Ok(Some(released)) => Ok(released),
        Ok(None) if !nix::unistd::geteuid().is_root() => Err(Failure::new(
            Exit::Environment,
            "releasing a drain needs root: run drainctl as root".into(),
        )),
        Ok(None) => steer::release(args.port).map_err(|err| Failure::of(&DrainError::from(err))),
        Err(failure) => Err(failure),
    };
    let released = released?;
    let port = args.port;
    let printed = view::to_stdout(|out| match (args.json, released) {
        (true, _) => writeln!(out, r#"{{"port":{port},"released":{released}}}"#),
        (false, true) => writeln!(out, "port {port}: new connections are accepted again"),
        (false, false) => writeln!(
            out,
            "port {port}: no drain to release in this network namespace"
        ),
    });
    if let Err(err) = printed {
        view::error_line(&format!("cannot print the result on stdout: {err}"));
    }
    Ok(Exit::Drained)
}
