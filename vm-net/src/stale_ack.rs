//! The one workaround for smoltcp's too-strict ACK check (smoltcp issue #12, open since 2017 and
//! still in 0.14): a TCP segment whose acknowledgment number is below what the peer already
//! acknowledged is dropped *with its data*, although RFC 9293 only asks to ignore the stale ACK
//! field (and RFC 5961 accepts ACKs down to SND.UNA - MAX.SND.WND).
//!
//! passt sends exactly such segments: data frames carrying an older ACK than a pure ACK it sent
//! just before. smoltcp then dropped in-window data, answered every following segment with a
//! duplicate ACK, and passt retransmitted its whole window per duplicate: tens of thousands of
//! frames a second until passt reset the connection (the passt TCP-echo QEMU test failed that
//! way about one run in six).
//!
//! [`Repairing`] wraps the stack's device for each poll. For every TCP segment it remembers,
//! per flow, the highest acknowledgment the peer has sent; a later segment that carries data
//! (or FIN) with a lower one gets that highest value instead, which is what the peer had
//! already said, so the stack takes its data. Pure ACKs keep their acknowledgment (smoltcp
//! ignores stale ones correctly, and they drive duplicate-ACK counting).
//!
//! The second repair is for passt's pure ACKs that run *ahead* of its data: a pure ACK whose
//! sequence number already counts data frames that reach us after it. When our receive window
//! is full, that sequence number sits at (or past) the window's right edge; smoltcp holds a
//! zero-length segment there to be out of window (Linux accepts `SEG.SEQ = RCV.NXT + RCV.WND`),
//! ignores its acknowledgment and answers with a duplicate ACK. passt retransmitted its window
//! on it, smoltcp answered each retransmitted (already received) segment with another duplicate
//! ACK, and the two fed each other until passt reset the connection: captured with the NIC
//! dump, seen in about one passt test run in ten after the first repair. A pure ACK whose
//! sequence number is past the end of the data the peer has sent us so far gets that end
//! instead (the peer's data in flight is not ours to count yet), which every receiver accepts.
//!
//! The table is small and bounded; a flow it forgot is simply not repaired.

use smoltcp::phy::{Device, DeviceCapabilities, RxToken};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket};

/// Flows remembered at once (the endpoints here hold a handful of connections).
pub const FLOWS: usize = 16;

/// A stale ACK is repaired only if it is at most this far behind (sequence space is circular:
/// anything farther is not "stale" but garbage, left for the stack to judge).
const MAX_STALENESS: u32 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowKey {
    src: [u8; 4],
    dst: [u8; 4],
    src_port: u16,
    dst_port: u16,
}

#[derive(Clone, Copy, Debug)]
struct Flow {
    key: FlowKey,
    highest_ack: u32,
    /// The end (in sequence space) of the furthest data or FIN the peer sent us, once any.
    data_end: Option<u32>,
}

/// What to rewrite in a segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repair {
    /// A stale acknowledgment on data, raised to the peer's highest.
    pub ack: Option<u32>,
    /// A pure ACK's sequence number ahead of the peer's data, pulled back to its end.
    pub seq: Option<u32>,
}

/// The highest acknowledgment each recent flow's peer has sent, and what was repaired.
#[derive(Debug, Default)]
pub struct AckTable {
    flows: heapless::Vec<Flow, FLOWS>,
    /// The slot the next new flow replaces once the table is full (round robin).
    next_victim: usize,
    /// Segments whose stale ACK was raised.
    pub repaired: u64,
    /// Pure ACKs whose sequence number was pulled back to the peer's data.
    pub pulled_back: u64,
}

/// `a` is after `b` in sequence space.
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl AckTable {
    /// Notes the segment in `frame` (an Ethernet frame) and returns what must be rewritten in
    /// it, if anything. Anything that is not a well-formed, unfragmented IPv4 TCP segment with
    /// the ACK flag is ignored.
    pub fn inspect(&mut self, frame: &[u8]) -> Option<Repair> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return None;
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
            return None;
        }
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        let key = FlowKey {
            src: ip.src_addr().octets(),
            dst: ip.dst_addr().octets(),
            src_port: tcp.src_port(),
            dst_port: tcp.dst_port(),
        };
        let index = self.flows.iter().position(|f| f.key == key);
        if tcp.rst() || tcp.syn() {
            // A connection ends or (re)starts: what was known of it no longer holds.
            if let Some(i) = index {
                self.flows.swap_remove(i);
            }
            return None;
        }
        if !tcp.ack() {
            return None;
        }
        let ack = tcp.ack_number().0 as u32;
        let seq = tcp.seq_number().0 as u32;
        let length = tcp.payload().len() as u32 + u32::from(tcp.fin());
        let carries_data = length > 0;
        let end = carries_data.then(|| seq.wrapping_add(length));
        let Some(i) = index else {
            self.remember(Flow {
                key,
                highest_ack: ack,
                data_end: end,
            });
            return None;
        };
        let flow = &mut self.flows[i];
        let mut repair = Repair::default();
        if let Some(end) = end {
            if flow.data_end.is_none_or(|known| seq_after(end, known)) {
                flow.data_end = Some(end);
            }
        } else if let Some(known) = flow.data_end {
            if seq_after(seq, known) && seq.wrapping_sub(known) <= MAX_STALENESS {
                repair.seq = Some(known);
            }
        }
        let highest = flow.highest_ack;
        if seq_after(ack, highest) || ack == highest {
            flow.highest_ack = ack;
        } else if carries_data && highest.wrapping_sub(ack) <= MAX_STALENESS {
            repair.ack = Some(highest);
        }
        self.repaired += u64::from(repair.ack.is_some());
        self.pulled_back += u64::from(repair.seq.is_some());
        (repair != Repair::default()).then_some(repair)
    }

    fn remember(&mut self, flow: Flow) {
        if self.flows.push(flow).is_err() {
            let slot = self.next_victim % FLOWS;
            self.flows[slot] = flow;
            self.next_victim = (slot + 1) % FLOWS;
        }
    }
}

/// Writes `repair` into the TCP segment of `frame` (already checked by [`AckTable::inspect`]).
fn rewrite(frame: &mut [u8], repair: Repair) {
    if let Some(seq) = repair.seq {
        rewrite_word(frame, 4, seq);
    }
    if let Some(ack) = repair.ack {
        rewrite_word(frame, 8, ack);
    }
}

/// Writes `value` into the 32-bit TCP header field at `field` (4: sequence number, 8:
/// acknowledgment number) and adjusts the checksum incrementally (RFC 1624), so a checksum that
/// was right stays right, a wrong one stays wrong, and a partial one left for offload is not
/// made into a full one.
fn rewrite_word(frame: &mut [u8], field: usize, value: u32) {
    let ip_start = 14;
    let Some(ihl) = frame.get(ip_start).map(|b| usize::from(b & 0x0f) * 4) else {
        return;
    };
    let tcp_start = ip_start + ihl;
    let (at, csum_at) = (tcp_start + field, tcp_start + 16);
    let (Some(old), Some(old_csum)) = (frame.get(at..at + 4), frame.get(csum_at..csum_at + 2))
    else {
        return;
    };
    let old = u32::from_be_bytes([old[0], old[1], old[2], old[3]]);
    let old_csum = u16::from_be_bytes([old_csum[0], old_csum[1]]);
    // HC' = ~(~HC + ~m + m'), over the two 16-bit words of the field.
    let mut sum = u32::from(!old_csum);
    for (old, new) in [
        ((old >> 16) as u16, (value >> 16) as u16),
        (old as u16, value as u16),
    ] {
        sum += u32::from(!old) + u32::from(new);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[at..at + 4].copy_from_slice(&value.to_be_bytes());
    frame[csum_at..csum_at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// A device that passes frames through and makes the repairs on the way in.
pub struct Repairing<'a, D> {
    pub device: &'a mut D,
    pub table: &'a mut AckTable,
}

pub struct RepairingRx<'a, R> {
    token: R,
    table: &'a mut AckTable,
}

impl<R: RxToken> RxToken for RepairingRx<'_, R> {
    fn consume<T, F: FnOnce(&[u8]) -> T>(self, f: F) -> T {
        let table = self.table;
        self.token.consume(|frame| match table.inspect(frame) {
            None => f(frame),
            Some(repair) => {
                // Rare (a stale segment): the copy is cheaper than a writable token for all.
                let mut copy = alloc::vec::Vec::from(frame);
                rewrite(&mut copy, repair);
                f(&copy)
            }
        })
    }

    fn meta(&self) -> smoltcp::phy::PacketMeta {
        self.token.meta()
    }
}

impl<D: Device> Device for Repairing<'_, D> {
    type RxToken<'b>
        = RepairingRx<'b, D::RxToken<'b>>
    where
        Self: 'b;
    type TxToken<'b>
        = D::TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let (rx, tx) = self.device.receive(now)?;
        Some((
            RepairingRx {
                token: rx,
                table: self.table,
            },
            tx,
        ))
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        self.device.transmit(now)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.device.capabilities()
    }
}

#[cfg(test)]
mod tests;
