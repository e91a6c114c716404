//! Empty on purpose: the crate's product is the `drain-ebpf` binary, built for
//! `bpfel-unknown-none` by drain-daemon's build script. This target lets the workspace
//! name the crate as a build dependency.
#![no_std]
