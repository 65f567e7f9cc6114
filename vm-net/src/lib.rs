//! vm-net: the IP endpoint of a sluice VM, the same in guests and in the driver domain.
//!
//! - [`Stack`] (module `stack`): a smoltcp interface with one static IPv4 address and default
//!   route, and the services every endpoint offers: ARP and ping replies (smoltcp's own), UDP and
//!   TCP echo on port 7 (RFC 862), ping as a client, and optionally an iperf3 server.
//! - [`iperf3`]: the iperf3 protocol (control messages as a sans-IO state machine, both roles)
//!   and its server and client on smoltcp sockets.
//! - `stale_ack`: the workaround for smoltcp dropping data that arrives with a stale ACK
//!   (applied to every stack's device while it polls).
//! - [`budget`]: a count of frames against a limit, pacing work in rounds (front-end and
//!   driver domain alike).
//! - [`resend`]: the frames a front-end has handed to its back-end and not had back, oldest
//!   first, to send again to a restarted back-end.
//! - [`udp_echo`]: a UDP echo client's requests and the tally of their answers (which came
//!   back, the longest silence between them), for the restart test.
//!
//! The frames come and go through whatever `smoltcp::phy::Device` the VM has: the driver domain
//! its switch port, a guest its para-virtual front-end. Waiting for news is the caller's
//! business too (it knows which event channel or interrupt brings it), so nothing here blocks.
//! Time is a parameter (`*_at(now)` methods), so everything runs in host tests; the VM build
//! adds the clock-reading conveniences (`Stack::new`, `poll`, ...) on top.
#![cfg_attr(not(test), no_std)]
// The trusted base is kept small: unsafe code lives only in the arch/driver modules of the
// binaries and in vm-runtime, never in this library.
#![forbid(unsafe_code)]

extern crate alloc;

mod announce;
pub mod budget;
pub mod frame_queues;
pub mod iperf3;
pub mod resend;
mod stack;
mod stale_ack;
#[cfg(test)]
mod test_peer;
pub mod udp_echo;

pub use announce::gratuitous_arp;

pub use smoltcp;
pub use stack::{Buffers, PingReply, ServiceCounters, Stack, ECHO_PORT};

#[cfg(target_os = "none")]
pub use stack::{instant_at, now};

pub use shared_abi::identity::parse_mac;
