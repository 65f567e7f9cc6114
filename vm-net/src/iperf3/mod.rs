//! iperf3 for sluice VMs: the real iperf3 protocol (3.x), so the stock `iperf3` binary talks to
//! a VM and VMs talk to each other, TCP or UDP (`-u`), one stream, either direction.
//!
//! - `proto`: the control protocol as sans-IO state machines, [`ServerControl`] and
//!   [`ClientControl`] (bytes in, bytes out, events), and its messages ([`Cookie`],
//!   [`TestParams`], [`Results`], [`State`]).
//! - `json`: the bounded JSON reader the messages a peer sends go through.
//! - `udp`: the UDP data stream, sans IO: the connect exchange ([`UDP_CONNECT_MSG`],
//!   [`UDP_CONNECT_REPLY`]), the datagram header (send time, packet number; 32- or 64-bit
//!   counters as the client asks), the sender's pacing ([`UdpSender`]) and the receiver's loss,
//!   reordering and RFC 1889 jitter accounting ([`UdpReceiver`]).
//! - `server`, `client`: [`Server`] and [`Client`], the two roles on smoltcp sockets inside a
//!   [`Stack`](crate::Stack), advanced by polls with the current time.
//! - `report`: what they tell their user ([`Event`]: started, one [`Interval`] per second,
//!   [`Report`], [`Failure`]) and its one-line text forms; a UDP result ends with the
//!   receiver's jitter and losses ([`UdpSummary`]).
//!
//! UDP: the sender keeps its average rate since the start at the client's `-b` (`bandwidth`;
//! iperf3's 1 Mbit/s if unset, 0 unlimited), paced by the time of the polls, so datagrams go
//! in bursts of what came due since the last poll; the block size is the client's `len`
//! (1460 unless it says; the stock client picks its control connection's MSS). smoltcp here
//! does no IP fragmentation: a block must fit the path MTU, larger datagrams are dropped on
//! the way out. Bytes count datagrams queued to (sent) or taken from (received) the socket.
//!
//! Limits: TCP and UDP, no SCTP; one stream (`-P 1`); no bidirectional test (`--bidir`); no
//! pacing for TCP (`-b` is ignored there); the sender does not count retransmits (smoltcp
//! does not say). A client asking for more gets SERVER_ERROR with iperf3's error number for
//! it, so `iperf3 -c` prints e.g. "number of parallel streams too large". Data is not copied:
//! the sender's socket buffer is filled once with a pattern and then only re-queued (UDP: only
//! each datagram's header is written), the receiver counts and drops.

mod client;
pub mod json;
mod proto;
mod report;
mod server;
mod stream;
mod udp;

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
pub use report::{
    centi_mbit, Event, Failure, Interval, Listening, Report, Role, TestInfo, TestMarks, UdpSummary,
};
pub use server::{Server, ServerConfig};
pub use udp::{
    header_len, read_header, write_header, UdpCounts, UdpReceiver, UdpSender,
    DEFAULT_UDP_BLOCK_LEN, DEFAULT_UDP_RATE, MAX_UDP_BLOCK_LEN, MIN_UDP_BLOCK_LEN, UDP_CONNECT_MSG,
    UDP_CONNECT_REPLY,
};

/// The data socket's buffer in the direction of the data unless configured: 1 MiB. The
/// throughput of a para-virtual path is window / round trip, and a round trip through two
/// event channels and a scheduler is long; 256 KiB measured 254 Mbit/s guest to guest where
/// 1 MiB measured 356 (same boot setup, one run each).
pub const DEFAULT_BUFFER: usize = 1024 * 1024;
