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
//! test (`-R`: the server sends) ends the result line with ` (reverse)`.

use alloc::string::String;
use core::fmt;

use smoltcp::wire::IpAddress;

use super::proto::{Results, TestParams};

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
            "iperf: {} {} {} {}: tcp test started, ",
            self.role.name(),
            self.local,
            self.role.arrow(),
            self.peer
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
        Ok(())
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
            "IPERF {} {} {} {}: tcp {}.{:02} s, {} bytes, {} Mbit/s, {}",
            self.role.name(),
            self.local,
            self.role.arrow(),
            self.peer,
            self.micros / 1_000_000,
            self.micros % 1_000_000 / 10_000,
            self.bytes,
            Rate(self.bytes, self.micros),
            if self.sender { "sender" } else { "receiver" }
        )?;
        if self.params.reverse {
            write!(f, " (reverse)")?;
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

#[cfg(test)]
mod tests {
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
        assert_eq!(centi_mbit(1, 0), 0);
    }
}
