//! Replies to a pod name only what the pod can see: a process by the number its own PID
//! namespace gives it ([`PidNamespace::number_of`]), and a process outside that
//! namespace (another container's, the node's, the daemon itself) not at all. The
//! daemon's numbers would tell a pod which host pids its neighbours have, and a command
//! line of theirs.
#![forbid(unsafe_code)]

use crate::{
    drain::{DrainError, DrainReport, ProcessRef},
    pidns::PidNamespace,
    steer::{PinError, SteerError},
};

/// `report` as the pod of `scope` may read it: the processes that keep the drained
/// listener open beside the drained ones, those of the pod only, and the owner of each
/// connection left only when it is the pod's; the daemon's holder of the refusal, never
/// one of the pod's processes, not at all.
pub fn report(mut report: DrainReport, scope: PidNamespace) -> DrainReport {
    report.listener_kept_by = visible(std::mem::take(&mut report.listener_kept_by), scope);
    report.refusal_held_by = None;
    for connection in &mut report.remaining {
        connection.owner_pid = connection.owner_pid.and_then(|pid| scope.number_of(pid));
        if connection.owner_pid.is_none() {
            connection.owner_command = None;
        }
    }
    report
}

/// The processes of `scope` among `processes`, by its numbers.
fn visible(processes: Vec<ProcessRef>, scope: PidNamespace) -> Vec<ProcessRef> {
    processes
        .into_iter()
        .filter_map(|mut process| {
            process.pid = scope.number_of(process.pid)?;
            Some(process)
        })
        .collect()
}

/// `err` as the pod of `scope` may read it. `asked_pid` is the pod's own `--pid`, which
/// the daemon's number in [`DrainError::NoListenerOfPid`] stands for.
pub fn drain_error(err: DrainError, scope: PidNamespace, asked_pid: Option<i32>) -> DrainError {
    match err {
        DrainError::NoListenerOfPid { port, pid } => DrainError::NoListenerOfPid {
            port,
            pid: asked_pid.unwrap_or(pid),
        },
        DrainError::SuccessorIsDrained {
            port,
            successor_port,
            pid,
        } => DrainError::SuccessorIsDrained {
            port,
            successor_port,
            pid: pid.and_then(|pid| scope.number_of(pid)),
        },
        DrainError::BorrowListener { port, mut source } => match source.pid_mut() {
            Some(pid) => match scope.number_of(*pid) {
                Some(number) => {
                    *pid = number;
                    DrainError::BorrowListener { port, source }
                }
                None => DrainError::ListenerOwnerUnknown { port },
            },
            None => DrainError::BorrowListener { port, source },
        },
        DrainError::Steer(err) => DrainError::Steer(steer_error(err, scope)),
        other => other,
    }
}

/// `err` as the pod of `scope` may read it: the holder of a busy port named only when
/// it is one of the pod's processes (it is the daemon itself when the pod's other drain
/// holds the port).
pub fn steer_error(err: SteerError, scope: PidNamespace) -> SteerError {
    match err {
        SteerError::Pins(PinError::Busy { port, holder }) => SteerError::Pins(PinError::Busy {
            port,
            holder: holder
                .and_then(|pid| scope.number_of(i32::try_from(pid).ok()?))
                .and_then(|pid| u32::try_from(pid).ok()),
        }),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_outside_the_pods_namespace_are_left_out_and_its_own_renumbered() {
        let own = PidNamespace::own().unwrap();
        let me = std::process::id() as i32;
        let elsewhere = PidNamespace::from_inode(1);
        let kept_by = vec![ProcessRef {
            pid: me,
            command: "drain-daemon".into(),
        }];
        assert_eq!(
            visible(kept_by.clone(), own),
            kept_by,
            "its own, under its own number"
        );
        assert!(
            visible(kept_by, elsewhere).is_empty(),
            "another namespace's"
        );

        let busy = || {
            DrainError::Steer(SteerError::Pins(PinError::Busy {
                port: 8080,
                holder: Some(me as u32),
            }))
        };
        assert_eq!(
            drain_error(busy(), elsewhere, None).to_string(),
            "port 8080 is already being drained by another process"
        );
        assert_eq!(
            drain_error(busy(), own, None).to_string(),
            format!("port 8080 is already being drained by pid {me}")
        );
        let drained = DrainError::SuccessorIsDrained {
            port: 8080,
            successor_port: 8081,
            pid: Some(me),
        };
        let told = drain_error(drained, elsewhere, None).to_string();
        assert!(told.contains("held by a process, which"), "{told}");
        let no_listener = DrainError::NoListenerOfPid {
            port: 8080,
            pid: me,
        };
        assert!(drain_error(no_listener, own, Some(7))
            .to_string()
            .starts_with("process 7 holds no TCP listener"));
    }
}
