//! Checksum offload for guests (`shared_abi::virtq::FEATURE_CSUM`): guests that negotiate it
//! leave TCP and UDP checksums of IPv4 frames to the driver domain, which fills them in only
//! when a frame leaves for someone who checks (the NIC, its own endpoint, a guest without the
//! feature) and checks frames from the outside before a guest that no longer checks gets them.
//! Between two offloading guests no checksum is ever computed, as between Linux VMs on virtio.
//!
//! Only unfragmented IPv4 TCP and UDP are touched (`virtq::l4_checksum_field` finds them);
//! every other frame passes as it is.

use shared_abi::virtq::l4_checksum_field;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket};

/// What [`verify`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A TCP or UDP checksum, and it is right.
    Valid,
    /// A TCP or UDP checksum, and it is wrong (or the packet is malformed).
    Invalid,
    /// Nothing we check (not IPv4 TCP/UDP, a fragment, or a UDP packet without checksum).
    NotApplicable,
}

/// The IPv4 packet and its L4 part, if `frame` is one we handle.
fn ipv4(frame: &[u8]) -> Option<(Ipv4Packet<&[u8]>, usize)> {
    let (start, _) = l4_checksum_field(frame)?;
    let packet = Ipv4Packet::new_checked(&frame[14..]).ok()?;
    // The L4 part ends where the IP header's total length says, not at the frame's end
    // (Ethernet pads short frames).
    let end = 14 + usize::from(packet.total_len());
    (end <= frame.len() && end >= usize::from(start)).then_some((packet, end))
}

/// Fills in the TCP or UDP checksum of `frame`. False if the frame is one we should handle but
/// is malformed (its IP lengths do not fit the frame): the caller drops it.
pub fn fill(frame: &mut [u8]) -> bool {
    let Some((start, _)) = l4_checksum_field(frame) else {
        return true;
    };
    let Some((packet, end)) = ipv4(frame) else {
        return false;
    };
    let (src, dst, proto) = (
        IpAddress::Ipv4(packet.src_addr()),
        IpAddress::Ipv4(packet.dst_addr()),
        packet.next_header(),
    );
    let l4 = &mut frame[usize::from(start)..end];
    match proto {
        IpProtocol::Tcp => match TcpPacket::new_checked(l4) {
            Ok(mut tcp) => {
                tcp.fill_checksum(&src, &dst);
                true
            }
            Err(_) => false,
        },
        IpProtocol::Udp => match UdpPacket::new_checked(l4) {
            Ok(mut udp) => {
                udp.fill_checksum(&src, &dst);
                true
            }
            Err(_) => false,
        },
        _ => true,
    }
}

/// Checks the TCP or UDP checksum of `frame`.
pub fn verify(frame: &[u8]) -> Verdict {
    let Some((start, _)) = l4_checksum_field(frame) else {
        return Verdict::NotApplicable;
    };
    let Some((packet, end)) = ipv4(frame) else {
        return Verdict::Invalid;
    };
    let (src, dst) = (
        IpAddress::Ipv4(packet.src_addr()),
        IpAddress::Ipv4(packet.dst_addr()),
    );
    let l4 = &frame[usize::from(start)..end];
    let caps = ChecksumCapabilities::default();
    let ok = match packet.next_header() {
        IpProtocol::Tcp => TcpPacket::new_checked(l4)
            .map(|t| !caps.tcp.rx() || t.verify_checksum(&src, &dst))
            .unwrap_or(false),
        IpProtocol::Udp => match UdpPacket::new_checked(l4) {
            Ok(u) if u.checksum() == 0 => return Verdict::NotApplicable,
            Ok(u) => u.verify_checksum(&src, &dst),
            Err(_) => false,
        },
        _ => return Verdict::NotApplicable,
    };
    if ok {
        Verdict::Valid
    } else {
        Verdict::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Ipv4Address, Ipv4Repr,
        TcpControl, TcpRepr, TcpSeqNumber, UdpRepr,
    };

    const SRC: Ipv4Address = Ipv4Address::new(10, 0, 2, 16);
    const DST: Ipv4Address = Ipv4Address::new(10, 0, 2, 17);

    fn eth_ipv4(proto: IpProtocol, l4_len: usize) -> (Vec<u8>, usize) {
        let ip = Ipv4Repr {
            src_addr: SRC,
            dst_addr: DST,
            next_header: proto,
            payload_len: l4_len,
            hop_limit: 64,
        };
        let mut frame = vec![0u8; 14 + ip.buffer_len() + l4_len];
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut eth);
        let mut packet = Ipv4Packet::new_unchecked(&mut frame[14..]);
        ip.emit(&mut packet, &ChecksumCapabilities::default());
        (frame, 14 + ip.buffer_len())
    }

    /// A TCP segment whose checksum was left out, as an offloading guest sends it.
    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let repr = TcpRepr {
            src_port: 5201,
            dst_port: 40000,
            control: TcpControl::Psh,
            seq_number: TcpSeqNumber(1000),
            ack_number: Some(TcpSeqNumber(2000)),
            window_len: 1024,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let (mut frame, at) = eth_ipv4(IpProtocol::Tcp, repr.buffer_len());
        let mut tcp = TcpPacket::new_unchecked(&mut frame[at..]);
        let mut caps = ChecksumCapabilities::default();
        caps.tcp = smoltcp::phy::Checksum::None;
        repr.emit(&mut tcp, &SRC.into(), &DST.into(), &caps);
        frame
    }

    fn udp_frame(payload: &[u8]) -> Vec<u8> {
        let repr = UdpRepr {
            src_port: 7,
            dst_port: 7,
        };
        let (mut frame, at) = eth_ipv4(IpProtocol::Udp, 8 + payload.len());
        let mut udp = UdpPacket::new_unchecked(&mut frame[at..]);
        let mut caps = ChecksumCapabilities::default();
        caps.udp = smoltcp::phy::Checksum::None;
        repr.emit(
            &mut udp,
            &SRC.into(),
            &DST.into(),
            payload.len(),
            |p| p.copy_from_slice(payload),
            &caps,
        );
        frame
    }

    #[test]
    fn filled_checksums_verify_and_corruption_is_caught() {
        for mut frame in [tcp_frame(b"hello, checksum"), udp_frame(b"echo me")] {
            assert_ne!(verify(&frame), Verdict::Valid, "left out by the sender");
            assert!(fill(&mut frame));
            assert_eq!(verify(&frame), Verdict::Valid);
            let last = frame.len() - 1;
            frame[last] ^= 0x40;
            assert_eq!(verify(&frame), Verdict::Invalid);
        }
    }

    #[test]
    fn udp_without_checksum_and_other_frames_pass_untouched() {
        let udp = udp_frame(b"x");
        assert_eq!(
            verify(&udp),
            Verdict::NotApplicable,
            "UDP checksum 0 means none"
        );
        let mut arp = tcp_frame(b"abc");
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let before = arp.clone();
        assert!(fill(&mut arp));
        assert_eq!(arp, before);
        assert_eq!(verify(&arp), Verdict::NotApplicable);
    }

    #[test]
    fn ethernet_padding_is_not_summed_and_lying_lengths_are_refused() {
        let mut frame = tcp_frame(b"");
        frame.resize(60, 0xee); // a minimal Ethernet frame's padding
        assert!(fill(&mut frame));
        assert_eq!(verify(&frame), Verdict::Valid);
        // An IP total length past the frame's end.
        let mut lying = tcp_frame(b"abcd");
        let len = (lying.len() - 14 + 100) as u16;
        lying[16..18].copy_from_slice(&len.to_be_bytes());
        assert!(!fill(&mut lying));
        assert_eq!(verify(&lying), Verdict::Invalid);
    }
}
