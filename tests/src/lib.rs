//! sluice-harness: the host side of sluice. It turns a user's topology file into the boot bundle
//! the hypervisor parses (`sluice-pack`), and hosts the QEMU runner and integration tests.
// The trusted base is kept small: unsafe code lives only in the arch/driver modules of the
// binaries and in vm-runtime, never in this library.
#![forbid(unsafe_code)]

pub mod balloon;
pub mod bench;
pub mod benchsuite;
pub mod console;
pub mod hostnet;
pub mod iperf;
pub mod linux_guest;
pub mod net;
pub mod passt;
pub mod pcap;
pub mod pinning;
pub mod plot;
pub mod process;
pub mod profile;
pub mod qemu;
pub mod report;
pub mod restart;
pub mod tap;
pub mod topology;
