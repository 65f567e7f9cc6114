//! What the harness reads on the console, in one place: the exact strings VMs print that checks
//! and integration tests rely on. When a VM's wording changes, this is the file to align.
//!
//! Every VM line arrives prefixed with `[<vm name>] ` (the hypervisor adds it); the strings here
//! are what follows the prefix ([`Boot::vm_lines`](crate::qemu::Boot::vm_lines) strips it).
//! Matching is by `contains` unless said otherwise, so a log-level tag before the text does not
//! matter.

/// The driver domain's NIC is usable: a line containing both (`NIC 00:02.0 link up ...`).
pub const NIC_LINK_UP: [&str; 2] = ["NIC ", "link up"];

/// The driver domain pinged its gateway at boot (`NIC ping gateway 10.0.2.2: reply in 812 us`,
/// `...: no reply within 2 s`, or `...: skipped on a restart`), whatever came of it: its first
/// frames have left through the NIC by then.
pub const NIC_PING_GATEWAY: &str = "NIC ping gateway ";

/// A `net` guest is connected and configured:
/// `net up: MAC 02:51:55:00:00:02, IP 10.0.2.16/24, gateway 10.0.2.2`.
pub const NET_UP: &str = "net up:";

/// Start of a `net` guest's per-target ping summary:
/// `PING 10.0.2.17: 10/10 replies, rtt min/avg/max 0.412/0.532/0.811 ms`, or without replies
/// `PING 10.0.2.17: 0/10 replies` (parsed by [`parse_ping_summary`](crate::report::parse_ping_summary)).
/// Upper case: the per-reply lines (`ping 10.0.2.17: seq 3 rtt 0.532 ms`) are lower case.
pub const PING_SUMMARY: &str = "PING ";
/// The word after `r/n` in a ping summary.
pub const PING_REPLIES: &str = "replies";
/// Introduces the round-trip times in a ping summary, after the replies.
pub const PING_RTT: &str = "rtt ";

/// The driver domain accepted front-end `id`: `front-end 3 connected: MAC ..., ...`.
pub fn front_end_connected(id: u16) -> String {
    format!("front-end {id} connected")
}

/// The start of the driver domain's lines about front-end `id`'s misbehaviour:
/// `front-end 4: protocol violation: TX ring: ring violation: ...; port disconnected`,
/// `front-end 4: cannot map pool refs 303..431: BadRef; closing the connection`,
/// `front-end 5: last bad frame: bad frame at head 0: empty chain`. The colon right after the id
/// tells these apart from `front-end 3 connected: ...` and `front-end 3 closed: ...`.
pub fn front_end_said(id: u16) -> String {
    format!("front-end {id}: ")
}

/// The driver domain's periodic look at the control pages found a change no event announced,
/// and none came within its grace: `control page of front-end 4 changed with no event
/// (Connected -> Closed); the 50 ms look found it, and no event followed within 100 ms`.
pub fn control_changed_unannounced(id: u16) -> String {
    format!("control page of front-end {id} changed with no event")
}

/// In a [`front_end_said`] line: the front-end broke the ring protocol.
pub const PROTOCOL_VIOLATION: &str = "protocol violation: ";
/// In a [`front_end_said`] line: and its switch port is gone.
pub const PORT_DISCONNECTED: &str = "port disconnected";
/// In a [`front_end_said`] line: a connection refused because the pool's grant refs are bad
/// (matched loosely).
pub const BAD_REF: &str = "ref";
/// In a [`front_end_said`] line: a frame the back-end dropped (with an error status) without
/// cutting the front-end off (shared-abi `QueueError`'s "bad frame" kinds).
pub const BAD_FRAME: &str = "bad frame";

/// The heading of the driver domain's switch counters (`switch: 3 port(s), 2/256 learned
/// MAC(s)`), followed, on the same line or the next ones, by one entry per port.
pub const SWITCH_COUNTERS: &str = "switch: ";
/// A port entry in the switch counters starts with this and the guest's VM id
/// (`guest 3  02:51:55:00:00:03 rx 12/840B ... drop spoofed 5 runt 0 ...`, also printed when a
/// port closes: `switch port closed: guest 7  02:51:55:00:00:07 rx 5/300B ... spoofed 5 ...`).
pub const SWITCH_GUEST_PORT: &str = "guest ";
/// In a port entry: frames the switch dropped because their source MAC was not the port's.
pub const SWITCH_SPOOFED: &str = "spoofed ";
/// In a port entry: ARP or IPv4 from a guest whose sender address was not its own.
pub const SWITCH_SPOOFED_IP: &str = "spoofip ";
/// In a port entry: ARP from a guest whose sender hardware address was not its MAC.
pub const SWITCH_SPOOFED_ARP_MAC: &str = "arpmac ";
/// In a port entry: floods over the port's flood rate limit.
pub const SWITCH_FLOOD_LIMITED: &str = "floodlim ";

/// The driver domain's closing line for front-end `id`: `front-end 5 closed: sent 3 frames
/// (0 dropped), received 140 (0 over several buffers), 12 not delivered (no buffer), 0 longer
/// than its receive buffers, 7 short receive buffers returned, events 3 sent / 1 suppressed`.
pub fn front_end_closed(id: u16) -> String {
    format!("front-end {id} closed: ")
}
/// In a [`front_end_closed`] line, after a count: frames for it dropped as it had no buffer.
pub const FRONT_END_NO_BUFFER: &str = "not delivered (no buffer)";
/// In a [`front_end_said`] line about a receiver: another guest's frame for it waited the
/// whole hold for a receive buffer (`front-end 4: a frame from front-end 5 waited 100 ms for a
/// receive buffer and was dropped; frames for it are not held for the next 5000 ms`).
pub const HOLD_RAN_OUT: &str = "ms for a receive buffer and was dropped";
/// A para-virtual front-end's pool, once connected: `net: MTU 65535: 128 receive buffers of
/// 9088 B (a frame may take several), 14 transmit buffers of 65561 B, 511 pool pages`.
pub const NET_POOL: &str = "net: MTU ";
/// In a [`NET_POOL`] line: receive buffers that a frame may span (mergeable buffers).
pub const NET_POOL_MERGED: &str = "(a frame may take several)";
/// In a [`front_end_closed`] line, after a count: frames delivered over more than one receive
/// buffer (mergeable receive buffers).
pub const FRONT_END_MERGED: &str = "over several buffers";
/// In a [`front_end_closed`] line, after a count: frames dropped because the receive buffers
/// offered could not hold them (with mergeable buffers: more than a frame may take).
pub const FRONT_END_TOO_SMALL: &str = "longer than its receive buffers";
/// In a [`front_end_closed`] line, after a count: receive buffers too short for any frame.
pub const FRONT_END_SHORT_RX: &str = "short receive buffers returned";
/// The hypervisor's line (after each accounting report and at power-off): its busy time by
/// kind of exit (`hypervisor::accounting::El2Time`).
pub const EL2_BUSY: &str = "[hv] EL2 busy time by exit kind:";
/// A guest's own line: received frames longer than its MTU, dropped (printed when any were).
pub const GUEST_DROPPED_TOO_LONG: &str = "received frames were longer than our MTU and dropped";
/// In a [`front_end_said`] line: it asked for a MAC that is not its own.
pub const MAC_REFUSED: &str = "which is not its own; refused";
/// In a [`front_end_said`] line: its control section was invalid on two looks while connected
/// (`front-end 4: invalid control section (UnknownState { code: 2779096485 } on two looks 10 ms
/// apart); closing`).
pub const INVALID_SECTION_CLOSED: &str = "invalid control section (";
/// In a [`front_end_said`] line: its connection attempts hit the rate limit.
pub const CONNECTING_TOO_OFTEN: &str = "connecting too often";

/// Start of a `net` guest's per-reply ping line: `ping 10.0.2.17: seq 3 rtt 0.532 ms` (parsed
/// by [`parse_ping_reply`](crate::bench::parse_ping_reply); must start the line's text).
pub const PING_REPLY: &str = "ping ";

/// An iperf3 test's result, printed by each side when a test ends (guest `iperf` app, or a
/// driver domain's own server): `IPERF client 10.0.2.16 -> 10.0.2.17: tcp 5.00 s, 12345678
/// bytes, 19.75 Mbit/s, sender` (` (reverse)` appended in reverse mode; parsed by
/// [`parse_result_line`](crate::iperf::parse_result_line)).
pub const IPERF_RESULT: &str = "IPERF ";
/// An iperf3 server is ready for tests: `iperf: server listening on 10.0.2.16:5201`.
pub const IPERF_LISTENING: &str = "server listening";
/// A line that means a VM's iperf3 test failed: `iperf: server 10.0.2.17 <- 10.0.2.16: test
/// failed: the peer went quiet`.
pub const IPERF_FAILED: &str = "test failed";
