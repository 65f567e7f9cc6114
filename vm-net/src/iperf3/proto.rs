//! The iperf3 control protocol, sans IO: what goes over the control connection, as two state
//! machines, [`ServerControl`] and [`ClientControl`]. Bytes from the peer go in with
//! `receive`, bytes for the peer come out of `output`/`consume_output`, and what the
//! driver has to do (open the data stream, stop it, hand over its counters) comes out of
//! `next_event`. Nothing here touches a socket or a clock.
//!
//! The protocol (iperf3 3.x, `iperf_api.c`, `iperf_client_api.c`, `iperf_server_api.c`):
//!
//! ```text
//! client                                   server (port 5201)
//!   connect control, cookie (36 chars + NUL) ->
//!                                          <- PARAM_EXCHANGE (9)
//!   u32 BE length + JSON parameters        ->
//!                                          <- CREATE_STREAMS (10)   (or SERVER_ERROR (-2),
//!   connect data stream(s) to the same port,   i_errno and errno as i32 BE)
//!   each sends the cookie first            ->
//!                                          <- TEST_START (1), TEST_RUNNING (2)
//!   data flows (client -> server, or server -> client with "reverse")
//!   TEST_END (4) after the test time       ->
//!                                          <- EXCHANGE_RESULTS (13)
//!   u32 BE length + JSON results           ->
//!                                          <- u32 BE length + JSON results, DISPLAY_RESULTS (14)
//!   IPERF_DONE (16), close                 ->
//! ```
//!
//! A server busy with a test answers other connections with ACCESS_DENIED (-1). Either side
//! may give up with CLIENT_TERMINATE (12) / SERVER_TERMINATE (11).
//!
//! Everything the peer sends is bounded: JSON messages are at most [`MAX_JSON_LEN`] bytes, the
//! input buffered while the driver is busy at most a little more, unknown state bytes and
//! states out of order end the test with an error, never a panic.
//!
//! The code: [`messages`] (what goes over the connection, with its limits and errors),
//! `channel` (the byte buffers and framing of one connection), `server` and `client` (the two
//! state machines).

mod channel;
mod client;
pub mod messages;
mod server;

#[cfg(test)]
mod tests;

pub use client::{ClientControl, ClientEvent, ClientPhase};
pub use messages::*;
pub use server::{ServerControl, ServerEvent, ServerPhase};
