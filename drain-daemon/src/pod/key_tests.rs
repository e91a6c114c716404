use std::{os::unix::fs::MetadataExt as _, process::Command, time::Duration};

use super::*;

const STATUS: &str = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n\
                      Ngid:\t0\nPid:\t4242\nPPid:\t4200\nTracerPid:\t0\n\
                      NSpid:\t4242\t17\t1\nNSpgid:\t4242\t17\t1\n";

#[test]
fn a_status_gives_the_parent_and_the_level() {
    assert_eq!(
        parse_place(STATUS),
        Some(Place {
            ppid: 4200,
            level: 2
        })
    );
    let first = "Name:\tinit\nPPid:\t0\nNSpid:\t1\n";
    assert_eq!(parse_place(first), Some(Place { ppid: 0, level: 0 }));
}

#[test]
fn a_status_not_as_the_kernel_writes_it_gives_no_place() {
    for status in [
        "",
        "Name:\tx\nNSpid:\t5\n",
        "Name:\tx\nPPid:\t1\n",
        "PPid:\t1\nNSpid:\t\n",
        "PPid:\t-1\nNSpid:\t5\n",
        "PPid:\t99999999999999999999\nNSpid:\t5\n",
        "PPid:\t1\nNSpid:\t5\t99999999999\n",
        "PPid:\t1\nNSpid:\t5\t0\n",
        "PPid:\t1\nNSpid:\t5\tx\n",
        "PPid:\tone\nNSpid:\t5\n",
        "PPid\t1\nNSpid\t5\n",
    ] {
        assert_eq!(parse_place(status), None, "{status:?}");
    }
    let too_deep = format!("PPid:\t1\nNSpid:{}\n", "\t7".repeat(MAX_LEVEL + 2));
    assert_eq!(parse_place(&too_deep), None);
    let deepest = format!("PPid:\t1\nNSpid:{}\n", "\t7".repeat(MAX_LEVEL + 1));
    assert_eq!(
        parse_place(&deepest).map(|place| place.level),
        Some(MAX_LEVEL)
    );
}

#[test]
fn only_the_first_line_that_starts_with_a_field_counts() {
    // A name is the one field a process writes; it cannot start a line.
    let named = "Name:\tPPid:\t1\nPPid:\t4200\nNSpid:\t4242\t1\nPPid:\t1\nNSpid:\t9\n";
    assert_eq!(
        parse_place(named),
        Some(Place {
            ppid: 4200,
            level: 1
        })
    );
}

#[test]
fn a_process_in_the_daemons_own_pid_namespace_has_no_pod() {
    let own = open_proc(std::process::id() as i32).unwrap();
    if read_place(own.as_fd()).map(|place| place.level) != Some(0) {
        println!("skipping: this test runs below the level of the /proc it reads");
        return;
    }
    assert!(matches!(of(&own), Err(PodPeerError::NoPod)));
}

/// A process two PID namespaces down, as a pod's nested namespace has it, gets the key of
/// the level-1 namespace above it, which its level-1 ancestor gets too.
#[test]
fn a_nested_pid_namespace_has_the_key_of_its_level_1_ancestor() {
    if !rustix::process::geteuid().is_root() {
        println!("skipping: unshare --pid needs root");
        return;
    }
    let mut outer = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .args(["unshare", "--pid", "--fork", "--kill-child", "sleep", "30"])
        .spawn()
        .unwrap();
    let level_1 = child_of(outer.id() as i32);
    let level_2 = child_of(level_1);
    let inode = |pid: i32| {
        std::fs::metadata(format!("/proc/{pid}/ns/pid"))
            .unwrap()
            .ino()
    };
    let (expected, nested) = (inode(level_1), inode(level_2));
    let key_of = |pid| of(&open_proc(pid).unwrap());
    let level_2_key = key_of(level_2);
    let level_1_key = key_of(level_1);
    let _ = outer.kill();
    let _ = outer.wait();
    assert_ne!(expected, nested);
    assert_eq!(level_2_key.unwrap(), PodKey(expected));
    assert_eq!(level_1_key.unwrap(), PodKey(expected));
}

/// The first child of `pid` (from `task/<pid>/children`), waited for up to 5 s.
fn child_of(pid: i32) -> i32 {
    for _ in 0..500 {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        if let Some(child) = children.split_whitespace().next() {
            return child.parse().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("process {pid} started no child within 5 s");
}
