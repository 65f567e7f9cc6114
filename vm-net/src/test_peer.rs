//! A hand-played network peer for host tests that drive a [`crate::Stack`] frame by frame: its
//! addresses and the stack's, and its answer to the stack's ARP requests.

use std::vec::Vec;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpCidr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl,
    TcpPacket, TcpRepr, TcpSeqNumber,
};

use crate::frame_queues::FrameQueues;
use crate::{Buffers, Stack};

pub const PEER_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
pub const STACK_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const PEER_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);
pub const STACK_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);

/// A stack at [`STACK_IP`] whose gateway is the peer, on a cable of frame queues, started at
/// `now`.
pub fn stack_at(now: Instant) -> Stack<FrameQueues> {
    Stack::new_at(
        FrameQueues::new(1514, 1024),
        STACK_MAC,
        IpCidr::new(STACK_IP.into(), 24),
        PEER_IP,
        Buffers::default(),
        now,
        7,
    )
}

/// The peer's ARP reply to `frame`, if `frame` is an ARP request from the stack.
pub fn arp_reply(frame: &[u8]) -> Option<Vec<u8>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr,
        source_protocol_addr,
        ..
    } = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()?
    else {
        return None;
    };
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(PEER_MAC),
        source_protocol_addr: PEER_IP,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(PEER_MAC),
        dst_addr: source_hardware_addr,
        ethertype: EthernetProtocol::Arp,
    };
    let mut out = std::vec![0u8; eth.buffer_len() + reply.buffer_len()];
    let mut out_frame = EthernetFrame::new_unchecked(&mut out[..]);
    eth.emit(&mut out_frame);
    reply.emit(&mut ArpPacket::new_unchecked(out_frame.payload_mut()));
    Some(out)
}

/// A frame from the peer to the stack: Ethernet and IPv4 headers around `len` bytes of
/// `protocol` that `emit` writes.
pub fn from_peer(protocol: IpProtocol, len: usize, emit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: PEER_IP,
        dst_addr: STACK_IP,
        next_header: protocol,
        payload_len: len,
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(PEER_MAC),
        dst_addr: EthernetAddress(STACK_MAC),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut frame = std::vec![0u8; eth.buffer_len() + ip.buffer_len() + len];
    let mut eth_frame = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.emit(&mut eth_frame);
    let mut ip_packet = Ipv4Packet::new_unchecked(eth_frame.payload_mut());
    ip.emit(&mut ip_packet, &ChecksumCapabilities::default());
    emit(ip_packet.payload_mut());
    frame
}

/// A TCP segment from the peer's port `src_port` to the stack's `dst_port`, checksums filled.
pub fn tcp(
    (src_port, dst_port): (u16, u16),
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port,
        dst_port,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 64_000,
        window_scale: None,
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    from_peer(IpProtocol::Tcp, repr.buffer_len(), |buf| {
        repr.emit(
            &mut TcpPacket::new_unchecked(buf),
            &IpAddress::Ipv4(PEER_IP),
            &IpAddress::Ipv4(STACK_IP),
            &ChecksumCapabilities::default(),
        )
    })
}
