//! The logic of the driver domain that is tested on the host (`cargo test -p driver-domain --lib`).
//!
//! Everything here is safe, hardware-independent Rust; the binary (`main.rs`, a bare-metal VM
//! image) adds the parts that touch the hypervisor and devices: control pages, grants, event
//! channels and the NIC.
#![cfg_attr(not(test), no_std)]
// The trusted base is kept small: unsafe code lives only in the arch/driver modules of the
// binaries and in vm-runtime, never in this library.
#![forbid(unsafe_code)]

extern crate alloc;

pub mod budget;
pub mod csum;
pub mod switch;
pub mod vif;
