//! What the iperf3 server and client tell their user: the [`Event`]s (test started, one
//! progress line per second, the result, a failure) and their one-line text forms, the same in
//! every VM that prints them:
//!
//! ```text
//! iperf: server listening on 10.0.2.17:5201
//! iperf: client 10.0.2.16 -> 10.0.2.17: tcp test started, 5 s, this side sends
//! iperf: 1 s, 2469135 bytes, 19.75 Mbit/s
//! IPERF client 10.0.2.16 -> 10.0.2.17: tcp 5.00 s, 12345678 bytes, 19.75 Mbit/s, sender
//! IPERF server 10.0.2.17 <- 10.0.2.16: tcp 5.00 s, 12345678 bytes, 19.75 Mbit/s, receiver
//! iperf: server 10.0.2.17 <- 10.0.2.16: test failed: the peer went quiet
//! ```
//!
//! The arrow points from the client to the server; the local address comes first. A reverse
//! test (`-R`: the server sends) ends the result line with ` (reverse)`. A UDP test says `udp`
//! for `tcp`, its start line names the target rate, and its result line ends with the
//! receiver's jitter and the datagrams lost of those sent (omitted start excluded), the
//! percentage with two significant digits like iperf3's:
//!
//! ```text
//! iperf: client 10.0.2.16 -> 10.0.2.17: udp test started, 5 s, this side sends, 100.00 Mbit/s target
//! IPERF client 10.0.2.16 -> 10.0.2.17: udp 5.00 s, 62500000 bytes, 100.00 Mbit/s, sender, jitter 0.123 ms, lost 3/1000 (0.3%)
//! ```

use alloc::string::String;
use core::fmt;

use smoltcp::wire::IpAddress;

use super::proto::{Protocol, Results, TestParams};
use super::udp::UdpCounts;

/// Which end of the test this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }

    fn arrow(self) -> &'static str {
        match self {
            Role::Client => "->",
            Role::Server => "<-",
        }
    }
}

/// A server that is up: `iperf: server listening on 10.0.2.17:5201` (what
/// [`Stack::serve_iperf3`](crate::Stack::serve_iperf3) returns, for the caller to print).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listening {
    pub address: Option<IpAddress>,
    pub port: u16,
}

impl fmt::Display for Listening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            Some(address) => write!(f, "iperf: server listening on {address}:{}", self.port),
            None => write!(f, "iperf: server listening on port {}", self.port),
        }
    }
}

/// News from an iperf3 server or client.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A test was accepted (server) or started (client).
    Started(TestInfo),
    /// One second (or more, if polls were late) of a running test.
    Interval(Interval),
    /// A test finished: its result.
    Finished(Report),
    /// A test failed.
    Failed(Failure),
}

impl fmt::Display for Event {
    /// The event's line (see the module doc).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Started(info) => info.fmt(f),
            Event::Interval(interval) => interval.fmt(f),
            Event::Finished(report) => report.fmt(f),
            Event::Failed(failure) => failure.fmt(f),
        }
    }
}

/// A test that starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TestInfo {
    pub role: Role,
    pub local: IpAddress,
    pub peer: IpAddress,
    pub params: TestParams,
}

impl TestInfo {
    /// Whether this side sends the data.
    pub fn sending(&self) -> bool {
        (self.role == Role::Client) != self.params.reverse
    }
}

impl fmt::Display for TestInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "iperf: {} {} {} {}: {} test started, ",
            self.role.name(),
            self.local,
            self.role.arrow(),
            self.peer,
            protocol_name(&self.params)
        )?;
        match self.params.byte_limit() {
            Some(bytes) if self.params.seconds == 0 => write!(f, "{bytes} bytes")?,
            _ => write!(f, "{} s", self.params.seconds)?,
        }
        if self.params.omit != 0 {
            write!(f, " after {} s omitted", self.params.omit)?;
        }
        let side = if self.sending() { "sends" } else { "receives" };
        write!(f, ", this side {side}")?;
        if self.params.reverse {
            write!(f, " (reverse)")?;
        }
        if self.params.protocol == Protocol::Udp {
            match self.params.bandwidth {
                0 => write!(f, ", unlimited rate")?,
                bits => write!(f, ", {} Mbit/s target", Rate(bits, 8_000_000))?,
            }
        }
        Ok(())
    }
}

fn protocol_name(params: &TestParams) -> &'static str {
    match params.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// Bytes moved in a stretch of a running test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    /// Whole seconds since the test started, at the end of the stretch.
    pub second: u32,
    pub bytes: u64,
    /// Length of the stretch.
    pub micros: u64,
    /// Within the omitted warm-up (not counted in the result).
    pub omitted: bool,
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "iperf: {} s, {} bytes, {} Mbit/s",
            self.second,
            self.bytes,
            Rate(self.bytes, self.micros)
        )?;
        if self.omitted {
            write!(f, " (omitted)")?;
        }
        Ok(())
    }
}

/// A finished test as this side saw it, and what the peer said it saw.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub role: Role,
    pub local: IpAddress,
    pub peer: IpAddress,
    pub params: TestParams,
    /// Whether this side sent the data.
    pub sender: bool,
    /// Bytes this side moved while the test ran, the omitted start excluded: acknowledged by
    /// the peer when sending, received when receiving.
    pub bytes: u64,
    /// How long it counted.
    pub micros: u64,
    /// The peer's results message.
    pub peer_results: Option<Results>,
    /// UDP: what the receiver saw.
    pub udp: Option<UdpSummary>,
}

/// A UDP test's loss and jitter, as the receiver counted them, the omitted start excluded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UdpSummary {
    /// The receiver's jitter estimate, milliseconds.
    pub jitter_ms: f64,
    /// Datagrams lost.
    pub lost: u64,
    /// Datagrams sent (the sender's count; the receiver's highest number if it is unknown).
    pub packets: u64,
}

impl UdpSummary {
    /// From this side's counts and the peer's results: the receiver's jitter and losses, the
    /// sender's count of datagrams.
    pub fn new(sender: bool, ours: &UdpCounts, peer: Option<&Results>) -> UdpSummary {
        let theirs = peer.and_then(|r| r.streams.first()).map(|s| UdpCounts {
            packets: s.packets.max(0) as u64,
            errors: s.errors.max(0) as u64,
            omitted_packets: s.omitted_packets.max(0) as u64,
            omitted_errors: s.omitted_errors.max(0) as u64,
            jitter: if s.jitter.is_finite() { s.jitter } else { 0.0 },
            out_of_order: 0,
        });
        let (sent, received) = if sender {
            (Some(*ours), theirs)
        } else {
            (theirs, Some(*ours))
        };
        let received = received.unwrap_or_default();
        let sent = sent.filter(|s| s.packets > 0).unwrap_or(received);
        UdpSummary {
            jitter_ms: received.jitter * 1000.0,
            lost: received.errors.saturating_sub(received.omitted_errors),
            packets: sent.packets.saturating_sub(sent.omitted_packets),
        }
    }
}

impl fmt::Display for UdpSummary {
    /// `jitter 0.123 ms, lost 3/1000 (0.3%)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "jitter {:.3} ms, lost {}/{} (",
            self.jitter_ms, self.lost, self.packets
        )?;
        let percent = if self.packets == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / self.packets as f64
        };
        two_digits(f, percent)?;
        write!(f, "%)")
    }
}

/// `x` (not negative) with two significant digits and no exponent, trailing zeros dropped
/// (C's `%.2g` for the values a percentage takes).
fn two_digits(f: &mut fmt::Formatter<'_>, x: f64) -> fmt::Result {
    if x <= 0.0 || !x.is_finite() {
        return write!(f, "0");
    }
    let (mut decimals, mut scaled) = (0usize, x);
    while scaled < 10.0 && decimals < 6 {
        scaled *= 10.0;
        decimals += 1;
    }
    let mut text = alloc::format!("{x:.decimals$}");
    if text.contains('.') {
        while text.ends_with('0') {
            text.pop();
        }
        if text.ends_with('.') {
            text.pop();
        }
    }
    f.write_str(&text)
}

impl Report {
    /// Throughput in hundredths of a Mbit/s.
    pub fn centi_mbit_per_s(&self) -> u64 {
        centi_mbit(self.bytes, self.micros)
    }

    /// The bytes the peer counted (its first stream), if it said.
    pub fn peer_bytes(&self) -> Option<u64> {
        self.peer_results
            .as_ref()
            .and_then(|r| r.streams.first())
            .map(|s| s.bytes)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IPERF {} {} {} {}: {} {}.{:02} s, {} bytes, {} Mbit/s, {}",
            self.role.name(),
            self.local,
            self.role.arrow(),
            self.peer,
            protocol_name(&self.params),
            self.micros / 1_000_000,
            self.micros % 1_000_000 / 10_000,
            self.bytes,
            Rate(self.bytes, self.micros),
            if self.sender { "sender" } else { "receiver" }
        )?;
        if self.params.reverse {
            write!(f, " (reverse)")?;
        }
        if let Some(udp) = &self.udp {
            write!(f, ", {udp}")?;
        }
        Ok(())
    }
}

/// A test that failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub role: Role,
    pub local: Option<IpAddress>,
    pub peer: Option<IpAddress>,
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iperf: {}", self.role.name())?;
        if let Some(local) = self.local {
            write!(f, " {local}")?;
        }
        if let Some(peer) = self.peer {
            write!(f, " {} {peer}", self.role.arrow())?;
        }
        write!(f, ": test failed: {}", self.reason)
    }
}

/// Hundredths of a Mbit/s for `bytes` in `micros` (bits per microsecond are Mbit/s).
pub fn centi_mbit(bytes: u64, micros: u64) -> u64 {
    if micros == 0 {
        return 0;
    }
    (u128::from(bytes) * 800 / u128::from(micros)).min(u128::from(u64::MAX)) as u64
}

/// `bytes` in `micros` as Mbit/s with two decimals.
struct Rate(u64, u64);

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let centi = centi_mbit(self.0, self.1);
        write!(f, "{}.{:02}", centi / 100, centi % 100)
    }
}

/// The bench's marks around tests (`tests/src/bench.rs` pairs them): test n starts at tag 2n
/// and ends, finished or failed, at tag 2n + 1. A VM that marks its tests (console lines,
/// ACCOUNTING_REPORT) takes its tags from here, so every VM counts them alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestMarks {
    /// Tests started so far.
    pub tests: u64,
}

impl TestMarks {
    /// The tag `event` marks, if any (intervals mark nothing).
    pub fn tag(&mut self, event: &Event) -> Option<u64> {
        match event {
            Event::Started(_) => {
                self.tests += 1;
                Some(2 * self.tests)
            }
            Event::Finished(_) | Event::Failed(_) => Some(2 * self.tests + 1),
            Event::Interval(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::StreamResult;
    use super::*;
    use smoltcp::wire::Ipv4Address;
    use std::string::ToString;

    fn ip(last: u8) -> IpAddress {
        IpAddress::Ipv4(Ipv4Address::new(10, 0, 2, last))
    }

    #[test]
    fn line_formats() {
        let mut report = Report {
            role: Role::Client,
            local: ip(16),
            peer: ip(17),
            params: TestParams::tcp(5),
            sender: true,
            bytes: 12_345_678,
            micros: 5_000_000,
            peer_results: None,
            udp: None,
        };
        assert_eq!(
            report.to_string(),
            "IPERF client 10.0.2.16 -> 10.0.2.17: tcp 5.00 s, 12345678 bytes, 19.75 Mbit/s, sender"
        );
        report.role = Role::Server;
        report.local = ip(17);
        report.peer = ip(16);
        report.sender = false;
        report.params.reverse = true;
        report.micros = 4_996_000;
        assert_eq!(
            report.to_string(),
            "IPERF server 10.0.2.17 <- 10.0.2.16: tcp 4.99 s, 12345678 bytes, 19.76 Mbit/s, \
             receiver (reverse)"
        );
        let interval = Interval {
            second: 1,
            bytes: 2_469_135,
            micros: 1_000_000,
            omitted: false,
        };
        assert_eq!(
            interval.to_string(),
            "iperf: 1 s, 2469135 bytes, 19.75 Mbit/s"
        );
        assert_eq!(Event::Interval(interval).to_string(), interval.to_string());
        let info = TestInfo {
            role: Role::Client,
            local: ip(16),
            peer: ip(17),
            params: TestParams::tcp(5),
        };
        assert_eq!(
            info.to_string(),
            "iperf: client 10.0.2.16 -> 10.0.2.17: tcp test started, 5 s, this side sends"
        );
        let listening = Listening {
            address: Some(ip(17)),
            port: 5201,
        };
        assert_eq!(
            listening.to_string(),
            "iperf: server listening on 10.0.2.17:5201"
        );
        let failure = Failure {
            role: Role::Server,
            local: Some(ip(17)),
            peer: Some(ip(16)),
            reason: "the peer went quiet".into(),
        };
        assert_eq!(
            failure.to_string(),
            "iperf: server 10.0.2.17 <- 10.0.2.16: test failed: the peer went quiet"
        );
        assert_eq!(centi_mbit(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn udp_line_formats() {
        let mut report = Report {
            role: Role::Client,
            local: ip(16),
            peer: ip(17),
            params: TestParams::udp(5, 100_000_000),
            sender: true,
            bytes: 62_500_000,
            micros: 5_000_000,
            peer_results: None,
            udp: Some(UdpSummary {
                jitter_ms: 0.1234,
                lost: 3,
                packets: 1000,
            }),
        };
        assert_eq!(
            report.to_string(),
            "IPERF client 10.0.2.16 -> 10.0.2.17: udp 5.00 s, 62500000 bytes, 100.00 Mbit/s, \
             sender, jitter 0.123 ms, lost 3/1000 (0.3%)"
        );
        report.params.reverse = true;
        report.sender = false;
        report.udp = Some(UdpSummary {
            jitter_ms: 0.0,
            lost: 0,
            packets: 0,
        });
        assert_eq!(
            report.to_string(),
            "IPERF client 10.0.2.16 -> 10.0.2.17: udp 5.00 s, 62500000 bytes, 100.00 Mbit/s, \
             receiver (reverse), jitter 0.000 ms, lost 0/0 (0%)"
        );
        let info = TestInfo {
            role: Role::Client,
            local: ip(16),
            peer: ip(17),
            params: TestParams::udp(5, 100_000_000),
        };
        assert_eq!(
            info.to_string(),
            "iperf: client 10.0.2.16 -> 10.0.2.17: udp test started, 5 s, this side sends, \
             100.00 Mbit/s target"
        );
        let pct = |lost, packets| {
            UdpSummary {
                jitter_ms: 0.0,
                lost,
                packets,
            }
            .to_string()
        };
        assert!(pct(1, 3).ends_with("(33%)"), "{}", pct(1, 3));
        assert!(pct(1, 40).ends_with("(2.5%)"));
        assert!(pct(123, 1_000_000).ends_with("(0.012%)"));
        assert!(pct(5, 5).ends_with("(100%)"));
        // The summary from both sides' counts.
        let sent = UdpCounts {
            packets: 1000,
            ..UdpCounts::default()
        };
        let received = UdpCounts {
            packets: 998,
            errors: 7,
            omitted_errors: 2,
            jitter: 0.0005,
            ..UdpCounts::default()
        };
        let server = Results::udp_stream(false, 1, 1.0, &received);
        let summary = UdpSummary::new(true, &sent, Some(&server));
        assert_eq!((summary.lost, summary.packets), (5, 1000));
        assert!((summary.jitter_ms - 0.5).abs() < 1e-9);
        let client = Results::udp_stream(true, 1, 1.0, &sent);
        assert_eq!(UdpSummary::new(false, &received, Some(&client)), summary);
        assert_eq!(UdpSummary::new(false, &received, None).packets, 998);
        assert_eq!(centi_mbit(1, 0), 0);
    }

    #[test]
    fn tests_are_marked_2n_at_the_start_and_2n_plus_1_at_the_end() {
        let info = TestInfo {
            role: Role::Server,
            local: ip(17),
            peer: ip(16),
            params: TestParams::tcp(5),
        };
        let failure = Failure {
            role: Role::Server,
            local: None,
            peer: None,
            reason: "x".into(),
        };
        let interval = Interval {
            second: 1,
            bytes: 1,
            micros: 1,
            omitted: false,
        };
        let mut marks = TestMarks::default();
        let tags: alloc::vec::Vec<Option<u64>> = [
            Event::Started(info),
            Event::Interval(interval),
            Event::Failed(failure.clone()),
            Event::Started(info),
            Event::Failed(failure),
        ]
        .iter()
        .map(|e| marks.tag(e))
        .collect();
        assert_eq!(tags, [Some(2), None, Some(3), Some(4), Some(5)]);
        assert_eq!(marks.tests, 2);
    }

    /// Numbers a peer may put in a stream's counters: anything, and the edges.
    fn peer_count() -> impl proptest::strategy::Strategy<Value = i64> {
        use proptest::prelude::*;
        prop_oneof![any::<i64>(), -2i64..100_000, Just(i64::MIN), Just(i64::MAX)]
    }

    /// Floating-point values a peer may send, infinities and NaN included (the JSON reader
    /// gives infinity for `1e999`).
    fn peer_float() -> impl proptest::strategy::Strategy<Value = f64> {
        use proptest::prelude::*;
        prop_oneof![
            any::<f64>(),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::NAN),
            Just(f64::MAX),
        ]
    }

    proptest::proptest! {
        /// Whatever a peer reports in its results (any counts, any jitter) and whatever this
        /// side counted: the UDP summary and the result line come out without panics or
        /// overflow, and the line stays a line (bounded length).
        #[test]
        fn any_peer_results_make_a_bounded_result_line(
            sender in proptest::prelude::any::<bool>(),
            ours in proptest::prelude::any::<(u64, u64, u64, u64)>(),
            theirs in (peer_count(), peer_count(), peer_count(), peer_count()),
            jitter in peer_float(),
            bytes in proptest::prelude::any::<u64>(),
            micros in proptest::prelude::any::<u64>(),
        ) {
            let counts = UdpCounts {
                packets: ours.0,
                errors: ours.1,
                omitted_packets: ours.2,
                omitted_errors: ours.3,
                ..UdpCounts::default()
            };
            let peer = Results {
                streams: std::vec![StreamResult {
                    packets: theirs.0,
                    errors: theirs.1,
                    omitted_packets: theirs.2,
                    omitted_errors: theirs.3,
                    jitter,
                    ..StreamResult::default()
                }],
                ..Results::default()
            };
            let summary = UdpSummary::new(sender, &counts, Some(&peer));
            proptest::prop_assert!(!summary.jitter_ms.is_nan());
            let report = Report {
                role: Role::Server,
                local: ip(17),
                peer: ip(16),
                params: TestParams::udp(10, 1_000_000),
                sender,
                bytes,
                micros,
                peer_results: Some(peer),
                udp: Some(summary),
            };
            let line = report.to_string();
            proptest::prop_assert!(line.len() < 1024, "{line}");
        }
    }
}
