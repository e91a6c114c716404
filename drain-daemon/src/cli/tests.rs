use std::time::Duration;

use super::*;
use crate::{app::Exit, drain::Pace};

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("drainctl").chain(args.iter().copied()))
}

#[test]
fn drain_defaults() {
    let cli = parse(&["drain", "--port", "8080"]).unwrap();
    let Command::Drain(args) = cli.command else {
        panic!("expected drain")
    };
    assert_eq!(args.port, 8080);
    assert_eq!(args.timeout, Duration::from_secs(30));
    assert_eq!(args.poll_interval, Duration::from_millis(100));
    assert_eq!(args.quiet_period, Duration::from_secs(1));
    assert_eq!(args.close_grace, Duration::from_secs(2));
    let plan = args.plan();
    assert_eq!(
        plan.pace,
        Pace::Auto {
            max_window: Duration::from_secs(10)
        }
    );
    assert!(!plan.force);
    assert_eq!(plan.accept_grace, Duration::ZERO);
    assert_eq!(plan.keep_refusing, crate::drain::DEFAULT_KEEP_REFUSING);
    assert!(!args.json);
}

#[test]
fn drain_options() {
    let cli = parse(&["drain", "-p", "443", "--timeout", "2m", "--json", "-v"]).unwrap();
    assert_eq!(cli.verbose, 1);
    let Command::Drain(args) = cli.command else {
        panic!("expected drain")
    };
    assert_eq!(
        (args.port, args.timeout, args.json),
        (443, Duration::from_secs(120), true)
    );
}

#[test]
fn pacing_options() {
    let drain_args = |args: &[&str]| match parse(args).unwrap().command {
        Command::Drain(args) => args,
        other => panic!("expected drain, got {other:?}"),
    };
    let short = drain_args(&["drain", "-p", "80", "--timeout", "6s"]);
    assert_eq!(
        short.plan().pace,
        Pace::Auto {
            max_window: Duration::from_secs(2)
        }
    );
    let spread = drain_args(&["drain", "-p", "80", "--spread", "0s", "--force"]);
    assert_eq!(spread.plan().pace, Pace::Spread(Duration::ZERO));
    assert!(spread.plan().force);
    let batches = drain_args(&["drain", "-p", "80", "--batch", "25", "--interval", "200ms"]);
    assert_eq!(
        batches.plan().pace,
        Pace::Batches {
            percent: 25,
            interval: Duration::from_millis(200)
        }
    );
    for bad in [
        &["drain", "-p", "80", "--batch", "0"][..],
        &["drain", "-p", "80", "--batch", "101"],
        &["drain", "-p", "80", "--batch", "10", "--spread", "1s"],
        &["drain", "-p", "80", "--interval", "1s"],
    ] {
        assert_eq!(
            parse(bad).unwrap_err().exit_code(),
            Exit::Usage as i32,
            "{bad:?}"
        );
    }
}

#[test]
fn ports_out_of_range_are_usage_errors() {
    // "-1" reaches the range check (allow_hyphen_values) instead of being taken for
    // an option, so the error names --port.
    for bad in ["0", "65536", "http", "-1"] {
        let err = parse(&["drain", "--port", bad]).unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ValueValidation,
            "port {bad}"
        );
        assert_eq!(err.exit_code(), Exit::Usage as i32);
    }
    assert_eq!(
        parse(&["drain"]).unwrap_err().kind(),
        clap::error::ErrorKind::MissingRequiredArgument
    );
}

#[test]
fn json_is_wanted_from_a_refused_command_line_only_before_the_operands() {
    let wants = |args: &[&str]| {
        wants_json(
            std::iter::once("drainctl")
                .chain(args.iter().copied())
                .map(Into::into),
        )
    };
    assert!(wants(&["drain", "--port", "0", "--json"]));
    assert!(wants(&["status", "--json", "--bogus"]));
    assert!(!wants(&["drain", "--port", "0"]));
    assert!(!wants(&["drain", "--", "--json"]));
    assert!(!wants(&["--jsonx"]));
}

#[test]
fn bad_timeout_is_a_usage_error() {
    let err = parse(&["drain", "--port", "80", "--timeout", "soon"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
}
