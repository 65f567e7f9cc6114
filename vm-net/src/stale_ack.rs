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
//! already said, so the stack takes its data. Pure ACKs are left alone (smoltcp ignores stale
//! ones correctly, and they drive duplicate-ACK counting). The table is small and bounded; a
//! flow it forgot is simply not repaired.

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
}

/// The highest acknowledgment each recent flow's peer has sent, and what was repaired.
#[derive(Debug, Default)]
pub struct AckTable {
    flows: heapless::Vec<Flow, FLOWS>,
    /// The slot the next new flow replaces once the table is full (round robin).
    next_victim: usize,
    /// Segments whose stale ACK was raised.
    pub repaired: u64,
}

/// `a` is after `b` in sequence space.
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl AckTable {
    /// Notes the segment in `frame` (an Ethernet frame) and returns the acknowledgment number
    /// it should carry if it must be repaired. Anything that is not a well-formed, unfragmented
    /// IPv4 TCP segment with the ACK flag is ignored.
    pub fn inspect(&mut self, frame: &[u8]) -> Option<u32> {
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
        let carries_data = !tcp.payload().is_empty() || tcp.fin();
        let Some(i) = index else {
            self.remember(Flow {
                key,
                highest_ack: ack,
            });
            return None;
        };
        let highest = self.flows[i].highest_ack;
        if seq_after(ack, highest) || ack == highest {
            self.flows[i].highest_ack = ack;
            return None;
        }
        if carries_data && highest.wrapping_sub(ack) <= MAX_STALENESS {
            self.repaired += 1;
            return Some(highest);
        }
        None
    }

    fn remember(&mut self, flow: Flow) {
        if self.flows.push(flow).is_err() {
            let slot = self.next_victim % FLOWS;
            self.flows[slot] = flow;
            self.next_victim = (slot + 1) % FLOWS;
        }
    }
}

/// Writes `ack` into the TCP segment of `frame` (already checked by [`AckTable::inspect`])
/// and adjusts the checksum incrementally (RFC 1624), so a checksum that was right stays right,
/// a wrong one stays wrong, and a partial one left for offload is not made into a full one.
fn rewrite_ack(frame: &mut [u8], ack: u32) {
    let ip_start = 14;
    let Some(ihl) = frame.get(ip_start).map(|b| usize::from(b & 0x0f) * 4) else {
        return;
    };
    let tcp_start = ip_start + ihl;
    let (ack_at, csum_at) = (tcp_start + 8, tcp_start + 16);
    let (Some(old_ack), Some(old_csum)) = (
        frame.get(ack_at..ack_at + 4),
        frame.get(csum_at..csum_at + 2),
    ) else {
        return;
    };
    let old_ack = u32::from_be_bytes([old_ack[0], old_ack[1], old_ack[2], old_ack[3]]);
    let old_csum = u16::from_be_bytes([old_csum[0], old_csum[1]]);
    // HC' = ~(~HC + ~m + m'), over the two 16-bit words of the field.
    let mut sum = u32::from(!old_csum);
    for (old, new) in [
        ((old_ack >> 16) as u16, (ack >> 16) as u16),
        (old_ack as u16, ack as u16),
    ] {
        sum += u32::from(!old) + u32::from(new);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[ack_at..ack_at + 4].copy_from_slice(&ack.to_be_bytes());
    frame[csum_at..csum_at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// A device that passes frames through and repairs stale ACKs on the way in.
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
            Some(ack) => {
                // Rare (a stale segment): the copy is cheaper than a writable token for all.
                let mut copy = alloc::vec::Vec::from(frame);
                rewrite_ack(&mut copy, ack);
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
