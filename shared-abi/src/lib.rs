//! shared-abi: the single definition of every format that crosses a trust boundary in sluice.
//!
//! The hypervisor, the driver domain and the guests all link this crate, so a constant or layout
//! defined here cannot drift between them. Everything that parses untrusted bytes (the boot bundle
//! from a file, later ring descriptors from a guest) lives here so it can be tested on the host.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
// The trusted base is kept small: unsafe code lives only in the arch/driver modules of the
// binaries and in vm-runtime, never in this library.
#![forbid(unsafe_code)]

pub mod balloon;
pub mod bundle;
pub mod emunic;
pub mod evtchn;
pub mod grant;
pub mod handshake;
pub mod hypercall;
pub mod identity;
pub mod image;
pub mod ioreq;
pub mod layout;
pub mod pci;
pub mod pingpong;
pub mod profile;
pub mod start_info;
pub mod virtq;
pub mod window;
pub mod wire;

#[cfg(test)]
mod error_texts;
