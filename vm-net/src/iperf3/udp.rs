//! iperf3's UDP data stream, sans IO (`iperf_udp.c`): the "connect" exchange, the header every
//! datagram starts with, the sender's pacing and the receiver's loss and jitter accounting.
//!
//! ```text
//! client                                     server (the test's port, UDP)
//!   4 bytes UDP_CONNECT_MSG ("9876" on the wire) ->
//!                                            <- 4 bytes UDP_CONNECT_REPLY ("6789")
//!   then data one way, each datagram `len` bytes:
//!   sec u32 BE | usec u32 BE | packet number u32 BE (u64 BE with "udp_counters_64bit") | payload
//! ```
//!
//! iperf3 writes the two connect words as native ints; every host it runs on is
//! little-endian, so the bytes are those of the little-endian word. Either side accepts any
//! datagram as the message (old servers answer 987654321). Packet numbers start at 1. The
//! receiver counts a gap in the numbers as lost datagrams, one that arrives late as out of
//! order (and takes one loss back), and estimates the jitter as RFC 1889 (A.8) does: the
//! running average, gain 1/16, of the change in transit time (arrival time minus the sender's
//! timestamp; the two clocks need not agree, only their rates).

use smoltcp::time::{Duration, Instant};

/// The client's hello, as iperf3 writes it (0x36373839 as a little-endian int).
pub const UDP_CONNECT_MSG: [u8; 4] = 0x3637_3839u32.to_le_bytes();
/// The server's answer (0x39383736 as a little-endian int).
pub const UDP_CONNECT_REPLY: [u8; 4] = 0x3938_3736u32.to_le_bytes();
/// iperf3's UDP block size when the client does not say (`DEFAULT_UDP_BLKSIZE`).
pub const DEFAULT_UDP_BLOCK_LEN: u32 = 1460;
/// iperf3's UDP rate when the client does not say (`-b`): 1 Mbit/s.
pub const DEFAULT_UDP_RATE: u64 = 1_000_000;
/// The largest UDP block iperf3 sends (65535 minus the IPv4 and UDP headers).
pub const MAX_UDP_BLOCK_LEN: u32 = 65_535 - 20 - 8;
/// The smallest: room for the header with 64-bit counters.
pub const MIN_UDP_BLOCK_LEN: u32 = 16;

/// The header's length: 12 bytes, 16 with 64-bit packet counters.
pub const fn header_len(counters_64bit: bool) -> usize {
    if counters_64bit {
        16
    } else {
        12
    }
}

/// Writes a datagram's header into `block` (at least [`header_len`] bytes): the send time
/// (`micros` on the sender's clock) and the packet number.
pub fn write_header(block: &mut [u8], counters_64bit: bool, micros: u64, packet: u64) {
    let sec = (micros / 1_000_000) as u32;
    let usec = (micros % 1_000_000) as u32;
    block[0..4].copy_from_slice(&sec.to_be_bytes());
    block[4..8].copy_from_slice(&usec.to_be_bytes());
    if counters_64bit {
        block[8..16].copy_from_slice(&packet.to_be_bytes());
    } else {
        block[8..12].copy_from_slice(&(packet as u32).to_be_bytes());
    }
}

/// A datagram's header: the send time in microseconds (sender's clock) and the packet number.
/// `None` for a datagram too short to have one (a connect message).
pub fn read_header(block: &[u8], counters_64bit: bool) -> Option<(u64, u64)> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(block.get(at..at + 4)?.try_into().ok()?))
    };
    let micros = u64::from(word(0)?) * 1_000_000 + u64::from(word(4)?);
    let packet = if counters_64bit {
        u64::from_be_bytes(block.get(8..16)?.try_into().ok()?)
    } else {
        u64::from(word(8)?)
    };
    Some((micros, packet))
}

/// What one side of a UDP stream counted (the UDP fields of a results message).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UdpCounts {
    /// Sender: datagrams sent. Receiver: the highest packet number seen.
    pub packets: u64,
    /// Receiver: datagrams lost (gaps in the numbers, less the late arrivals).
    pub errors: u64,
    /// Receiver: datagrams that arrived after a higher number.
    pub out_of_order: u64,
    /// Receiver: the jitter estimate, seconds.
    pub jitter: f64,
    /// `packets` and `errors` when the omitted start ended (subtracted in reports).
    pub omitted_packets: u64,
    pub omitted_errors: u64,
}

impl UdpCounts {
    /// The omitted start is over: what was counted so far is not part of the result (and the
    /// jitter starts afresh, as iperf3's does).
    pub fn mark_omitted(&mut self) {
        self.omitted_packets = self.packets;
        self.omitted_errors = self.errors;
        self.jitter = 0.0;
    }
}

/// The receiving end's accounting.
#[derive(Clone, Debug, Default)]
pub struct UdpReceiver {
    pub counts: UdpCounts,
    /// Datagram bytes received (headers included, as iperf3 counts).
    pub bytes: u64,
    counters_64bit: bool,
    /// The previous datagram's transit time, microseconds.
    prev_transit: Option<i64>,
}

impl UdpReceiver {
    pub fn new(counters_64bit: bool) -> UdpReceiver {
        UdpReceiver {
            counters_64bit,
            ..UdpReceiver::default()
        }
    }

    /// A datagram that arrived at `arrival_micros` (receiver's clock). Returns whether it was
    /// data (counted); shorter ones (connect messages) are not.
    pub fn datagram(&mut self, block: &[u8], arrival_micros: u64) -> bool {
        let Some((sent, packet)) = read_header(block, self.counters_64bit) else {
            return false;
        };
        self.bytes += block.len() as u64;
        let c = &mut self.counts;
        if packet > c.packets {
            c.errors += packet - c.packets - 1;
            c.packets = packet;
        } else {
            c.out_of_order += 1;
            c.errors = c.errors.saturating_sub(1);
        }
        let transit = (arrival_micros as i64).wrapping_sub(sent as i64);
        let prev = self.prev_transit.replace(transit).unwrap_or(transit);
        let d = transit.wrapping_sub(prev).unsigned_abs() as f64 / 1e6;
        c.jitter += (d - c.jitter) / 16.0;
        true
    }
}

/// The sending end: numbers its datagrams and keeps the average rate since the start at or
/// under the target (iperf3's throttle: send while the average is below the rate).
#[derive(Clone, Debug)]
pub struct UdpSender {
    pub counts: UdpCounts,
    /// Datagram bytes sent.
    pub bytes: u64,
    counters_64bit: bool,
    /// bits/s; 0: as fast as the socket takes them.
    rate: u64,
    start: Instant,
}

impl UdpSender {
    pub fn new(counters_64bit: bool, rate: u64, start: Instant) -> UdpSender {
        UdpSender {
            counts: UdpCounts::default(),
            bytes: 0,
            counters_64bit,
            rate,
            start,
        }
    }

    /// Whether another datagram may go at `now`.
    pub fn may_send(&self, now: Instant) -> bool {
        self.next_send().is_none_or(|at| now >= at)
    }

    /// When the average rate falls to the target, so the next datagram may go (`None`:
    /// unlimited).
    pub fn next_send(&self) -> Option<Instant> {
        if self.rate == 0 {
            return None;
        }
        let micros = u128::from(self.bytes) * 8 * 1_000_000 / u128::from(self.rate);
        Some(self.start + Duration::from_micros(micros.min(u128::from(u64::MAX)) as u64))
    }

    /// Fills in the header of the next datagram, `block` (its full length), sent at `now`, and
    /// counts it.
    pub fn fill(&mut self, block: &mut [u8], now: Instant) {
        self.counts.packets += 1;
        self.bytes += block.len() as u64;
        let micros = now.total_micros().max(0) as u64;
        write_header(block, self.counters_64bit, micros, self.counts.packets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn datagram(packet: u64, sent: u64, wide: bool) -> std::vec::Vec<u8> {
        let mut block = vec![0u8; 100];
        write_header(&mut block, wide, sent, packet);
        block
    }

    #[test]
    fn connect_words_on_the_wire() {
        assert_eq!(&UDP_CONNECT_MSG, b"9876");
        assert_eq!(&UDP_CONNECT_REPLY, b"6789");
    }

    #[test]
    fn headers_round_trip() {
        for wide in [false, true] {
            let block = datagram(77, 12_345_678_901, wide);
            assert_eq!(read_header(&block, wide), Some((12_345_678_901, 77)));
            assert_eq!(&block[0..4], &12_345u32.to_be_bytes());
        }
        assert_eq!(read_header(&UDP_CONNECT_MSG, false), None);
        assert_eq!(read_header(&[0; 12], true), None);
        let wide = datagram(1 << 40, 0, true);
        assert_eq!(read_header(&wide, true), Some((0, 1 << 40)));
    }

    #[test]
    fn loss_and_reordering() {
        let mut r = UdpReceiver::new(false);
        assert!(!r.datagram(&UDP_CONNECT_MSG, 0));
        // 1 2 _ 4 6 5 _ 8 _ _: 3 and 7 lost, 5 late.
        for n in [1, 2, 4, 6, 5, 8] {
            assert!(r.datagram(&datagram(n, n * 1000, false), n * 1000 + 500));
        }
        assert_eq!(r.counts.packets, 8);
        assert_eq!(r.counts.errors, 2);
        assert_eq!(r.counts.out_of_order, 1);
        assert_eq!(r.bytes, 600);
        // Constant transit: no jitter.
        assert_eq!(r.counts.jitter, 0.0);
    }

    #[test]
    fn jitter_follows_rfc_1889() {
        let mut r = UdpReceiver::new(true);
        // Transit alternates 1 ms and 3 ms: each change is 2 ms, the estimate climbs to it.
        for n in 1..=200u64 {
            let sent = 1_000_000 + n * 1000;
            let transit = if n % 2 == 0 { 3000 } else { 1000 };
            r.datagram(&datagram(n, sent, true), sent + transit);
        }
        assert!(
            (r.counts.jitter - 0.002).abs() < 1e-6,
            "{}",
            r.counts.jitter
        );
        // One step: 1/16 of the change.
        let mut r = UdpReceiver::new(false);
        r.datagram(&datagram(1, 0, false), 500);
        r.datagram(&datagram(2, 1000, false), 1500 + 1600);
        assert!((r.counts.jitter - 0.0001).abs() < 1e-12);
        r.counts.mark_omitted();
        assert_eq!(r.counts.omitted_packets, 2);
        assert_eq!(r.counts.jitter, 0.0);
    }

    #[test]
    fn pacing_holds_the_average() {
        let start = Instant::from_secs(10);
        // 1 Mbit/s with 1250-byte datagrams: one every 10 ms.
        let mut s = UdpSender::new(false, 1_000_000, start);
        let mut block = vec![0u8; 1250];
        let mut sent = 0;
        let mut now = start;
        while now < start + Duration::from_secs(1) {
            while s.may_send(now) {
                s.fill(&mut block, now);
                sent += 1;
            }
            now += Duration::from_micros(700);
        }
        assert!((100..=101).contains(&sent), "{sent}");
        assert_eq!(s.counts.packets, sent);
        assert_eq!(read_header(&block, false).map(|h| h.1), Some(sent));
        // Unlimited: always.
        let s = UdpSender::new(false, 0, start);
        assert!(s.may_send(start) && s.next_send().is_none());
    }

    /// Packet numbers a hostile sender may pick: anything, and the edges of both widths.
    fn packet_number() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![
            any::<u64>(),
            0u64..64,
            Just(u64::from(u32::MAX)),
            Just(u64::MAX - 1),
            Just(u64::MAX),
        ]
    }

    proptest::proptest! {
        /// Any datagrams (any length, any packet numbers in any order, any send and arrival
        /// times, either counter width): counting them never overflows, losses never exceed
        /// the highest number seen, and the jitter stays a finite, non-negative number.
        #[test]
        fn any_datagrams_are_counted_without_overflow(
            wide in proptest::prelude::any::<bool>(),
            datagrams in proptest::collection::vec(
                (0usize..40, packet_number(), proptest::prelude::any::<u64>(), proptest::prelude::any::<u64>()),
                0..64,
            )
        ) {
            let mut r = UdpReceiver::new(wide);
            let mut counted_bytes = 0u64;
            for (len, packet, sent, arrival) in datagrams {
                let mut block = vec![0xa5u8; len];
                if len >= header_len(wide) {
                    write_header(&mut block, wide, sent, packet);
                }
                let counted = r.datagram(&block, arrival);
                proptest::prop_assert_eq!(counted, len >= header_len(wide));
                if counted {
                    counted_bytes += len as u64;
                }
                let c = r.counts;
                proptest::prop_assert!(c.errors <= c.packets, "{c:?}");
                proptest::prop_assert!(c.jitter.is_finite() && c.jitter >= 0.0, "{c:?}");
            }
            proptest::prop_assert_eq!(r.bytes, counted_bytes);
        }

        /// Any bytes: a header is read exactly when there are enough of them.
        #[test]
        fn a_header_is_read_from_any_bytes_long_enough(
            wide in proptest::prelude::any::<bool>(),
            block in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..32)
        ) {
            proptest::prop_assert_eq!(
                read_header(&block, wide).is_some(),
                block.len() >= header_len(wide)
            );
        }
    }
}
