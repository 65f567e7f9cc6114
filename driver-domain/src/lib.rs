//! The logic of the driver domain that is tested on the host (`cargo test -p driver-domain --lib`).
//!
//! Everything here is safe, hardware-independent Rust; the binary (`main.rs`, a bare-metal VM
//! image) adds the parts that touch the hypervisor and devices: control pages, grants, event
//! channels and the NIC.
#![cfg_attr(not(test), no_std)]
// The trusted base is kept small: code the compiler cannot check lives only in the driver
// modules of the binary (`nic`, `dma`) and in vm-runtime's rooms, never in this library.
#![forbid(unsafe_code)]

extern crate alloc;

pub mod backpressure;
pub mod balloon_control;
pub mod budget;
pub mod crash;
pub mod csum;
pub mod devmodel;
pub mod second_look;
pub mod switch;
pub mod vif;
