//! iperf3 for sluice VMs: the real iperf3 protocol (3.x), so the stock `iperf3` binary talks to
//! a VM and VMs talk to each other, TCP, one stream, either direction.
//!
//! - `proto`: the control protocol as sans-IO state machines, [`ServerControl`] and
//!   [`ClientControl`] (bytes in, bytes out, events), and its messages ([`Cookie`],
//!   [`TestParams`], [`Results`], [`State`]).
//! - `json`: the bounded JSON reader the messages a peer sends go through.
//! - `server`, `client`: [`Server`] and [`Client`], the two roles on smoltcp sockets inside a
//!   [`Stack`](crate::Stack), advanced by polls with the current time.
//! - `report`: what they tell their user ([`Event`]: started, one [`Interval`] per second,
//!   [`Report`], [`Failure`]) and its one-line text forms.
//!
//! Limits: TCP only; one stream (`-P 1`); no bidirectional test (`--bidir`); no pacing (`-b`
//! is ignored for TCP); the sender does not count retransmits (smoltcp does not say). A client
//! asking for more gets SERVER_ERROR with iperf3's error number for it, so `iperf3 -c` prints
//! e.g. "number of parallel streams too large". Data is not copied: the sender's socket buffer
//! is filled once with a pattern and then only re-queued, the receiver counts and drops.

mod client;
pub mod json;
mod proto;
mod report;
mod server;
mod stream;

#[cfg(test)]
mod interop_tests;
#[cfg(test)]
mod stack_tests;

pub use client::{Client, ClientConfig};
pub use proto::{
    errno, ClientControl, ClientEvent, ClientPhase, Cookie, ProtoError, Protocol, Refusal, Results,
    ServerControl, ServerEvent, ServerPhase, State, StreamResult, TestParams, COOKIE_LEN,
    DEFAULT_BLOCK_LEN, DEFAULT_PORT, MAX_BLOCK_LEN, MAX_JSON_LEN, MAX_OMIT, MAX_SECONDS,
};
pub use report::{centi_mbit, Event, Failure, Interval, Listening, Report, Role, TestInfo};
pub use server::{Server, ServerConfig};

/// The data socket's buffer in the direction of the data unless configured: 1 MiB. The
/// throughput of a para-virtual path is window / round trip, and a round trip through two
/// event channels and a scheduler is long; 256 KiB measured 254 Mbit/s guest to guest where
/// 1 MiB measured 356 (same boot setup, one run each).
pub const DEFAULT_BUFFER: usize = 1024 * 1024;
