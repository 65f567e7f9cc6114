//! The gratuitous ARP a host sends when its link comes back (Xen's netfront does on resume):
//! a broadcast ARP request for its own address, so switches learn its port again and its
//! neighbours refresh their caches. A guest's front-end sends one after reconnecting to a
//! restarted driver domain.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Ipv4Address,
};

/// A gratuitous ARP request for `ip` from `mac`, as an Ethernet frame to the broadcast address.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Address) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(mac),
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: ip,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(mac),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let mut frame = vec![0u8; eth.buffer_len() + arp.buffer_len()];
    let mut eth_frame = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.emit(&mut eth_frame);
    arp.emit(&mut ArpPacket::new_unchecked(eth_frame.payload_mut()));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_parses_back_as_a_broadcast_request_for_our_own_address() {
        let mac = [0x02, 0x51, 0x55, 0, 0, 7];
        let ip = Ipv4Address::new(10, 0, 2, 21);
        let frame = gratuitous_arp(mac, ip);
        assert_eq!(
            frame.len(),
            42,
            "Ethernet header and an ARP body, no padding"
        );
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(eth.src_addr(), EthernetAddress(mac));
        assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        assert_eq!(
            arp,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: EthernetAddress(mac),
                source_protocol_addr: ip,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: ip,
            }
        );
    }
}
