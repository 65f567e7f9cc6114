//! vm-net: the IP endpoint of a sluice VM, the same in guests and in the driver domain. It owns
//! a smoltcp interface with one static IPv4 address and default route, and the services every
//! endpoint offers: ARP and ping replies (smoltcp's own), UDP and TCP echo on port 7 (RFC 862),
//! and ping as a client (send an echo request, collect replies with their round-trip times).
//!
//! The frames come and go through whatever `smoltcp::phy::Device` the VM has: the driver domain
//! its switch port, a guest its para-virtual front-end. Waiting for news is the caller's
//! business too (it knows which event channel or interrupt brings it), so nothing here blocks.
#![no_std]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, Device};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::Instant as NetInstant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, Ipv4Address,
};
use vm_runtime::timer;

pub use smoltcp;

/// The echo service port (RFC 862), for UDP and TCP.
pub const ECHO_PORT: u16 = 7;
/// ICMP identifier of our echo requests.
const ICMP_IDENT: u16 = 0x51ce;
/// Payload of our echo requests (56 bytes, like `ping`).
const PING_PAYLOAD: [u8; 56] = *b"sluice ping payload, 56 bytes like the ping of iputils!!";
/// Requests awaiting a reply that we remember; older ones count as lost.
const MAX_OUTSTANDING_PINGS: usize = 64;
/// TCP echo connections served at once.
const TCP_ECHO_SOCKETS: usize = 4;

/// Socket buffer sizes of a [`Stack`].
#[derive(Clone, Copy, Debug)]
pub struct Buffers {
    /// Each TCP socket's receive and send buffer.
    pub tcp: usize,
    /// The UDP echo socket's buffers.
    pub udp: usize,
}

impl Default for Buffers {
    /// Room for a few full frames each way.
    fn default() -> Self {
        Buffers {
            tcp: 16 * 1024,
            udp: 16 * 1024,
        }
    }
}

/// What the services did, for counters lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServiceCounters {
    pub udp_echoed: u64,
    pub tcp_echoed_bytes: u64,
    pub pings_sent: u64,
    pub ping_replies: u64,
}

/// A reply to one of our echo requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingReply {
    pub from: Ipv4Address,
    pub seq: u16,
    pub rtt_us: u64,
}

/// smoltcp's clock: the virtual timer.
pub fn now() -> NetInstant {
    NetInstant::from_micros(timer::ticks_to_us(timer::now()) as i64)
}

/// The interface, its device and its services.
pub struct Stack<D: Device> {
    iface: Interface,
    sockets: SocketSet<'static>,
    /// The device frames move through (the caller's, to drain or count).
    pub device: D,
    udp: SocketHandle,
    /// Several listeners, so a new connection finds one while an old one is still closing.
    tcp: Vec<SocketHandle>,
    icmp: SocketHandle,
    gateway: Ipv4Address,
    /// Echo requests sent and not yet answered: (target, seq, sent at in ticks).
    outstanding: Vec<(Ipv4Address, u16, u64)>,
    pub counters: ServiceCounters,
}

fn socket_buffers<T: Clone>(empty: T, slots: usize) -> (Vec<T>, Vec<T>) {
    (vec![empty.clone(); slots], vec![empty; slots])
}

impl<D: Device> Stack<D> {
    /// An endpoint with `address` (and its subnet) on `device`, routing the rest to `gateway`.
    pub fn new(
        mut device: D,
        mac: [u8; 6],
        address: IpCidr,
        gateway: Ipv4Address,
        buffers: Buffers,
    ) -> Stack<D> {
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = timer::now();
        let mut iface = Interface::new(config, &mut device, now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(address);
        });
        let _ = iface.routes_mut().add_default_ipv4_route(gateway);

        let mut sockets = SocketSet::new(Vec::new());
        let (rx_meta, tx_meta) = socket_buffers(udp::PacketMetadata::EMPTY, 16);
        let (rx, tx) = socket_buffers(0u8, buffers.udp);
        let mut udp_socket = udp::Socket::new(
            udp::PacketBuffer::new(rx_meta, rx),
            udp::PacketBuffer::new(tx_meta, tx),
        );
        udp_socket.bind(ECHO_PORT).expect("fresh socket binds");
        let udp = sockets.add(udp_socket);

        let tcp = (0..TCP_ECHO_SOCKETS)
            .map(|_| {
                let (rx, tx) = socket_buffers(0u8, buffers.tcp);
                sockets.add(tcp::Socket::new(
                    tcp::SocketBuffer::new(rx),
                    tcp::SocketBuffer::new(tx),
                ))
            })
            .collect();

        let (rx_meta, tx_meta) = socket_buffers(icmp::PacketMetadata::EMPTY, 8);
        let (rx, tx) = socket_buffers(0u8, 2048);
        let mut icmp_socket = icmp::Socket::new(
            icmp::PacketBuffer::new(rx_meta, rx),
            icmp::PacketBuffer::new(tx_meta, tx),
        );
        icmp_socket
            .bind(icmp::Endpoint::Ident(ICMP_IDENT))
            .expect("fresh socket binds");
        let icmp = sockets.add(icmp_socket);

        Stack {
            iface,
            sockets,
            device,
            udp,
            tcp,
            icmp,
            gateway,
            outstanding: Vec::new(),
            counters: ServiceCounters::default(),
        }
    }

    pub fn gateway(&self) -> Ipv4Address {
        self.gateway
    }

    /// Moves frames both ways and runs the echo services. True if a socket changed state
    /// (callers that need to know whether frames moved ask their device).
    pub fn poll(&mut self) -> bool {
        let first = self.iface.poll(now(), &mut self.device, &mut self.sockets);
        self.serve_udp_echo();
        self.serve_tcp_echo();
        let second = self.iface.poll(now(), &mut self.device, &mut self.sockets);
        first == PollResult::SocketStateChanged || second == PollResult::SocketStateChanged
    }

    /// When smoltcp next needs to run (retransmissions, ARP), in microseconds from now.
    pub fn poll_delay_us(&mut self) -> Option<u64> {
        self.iface
            .poll_delay(now(), &self.sockets)
            .map(|d| d.total_micros())
    }

    fn serve_udp_echo(&mut self) {
        let socket = self.sockets.get_mut::<udp::Socket>(self.udp);
        let mut datagram = [0u8; 1500];
        while socket.can_send() {
            let Ok((len, meta)) = socket.recv_slice(&mut datagram) else {
                break;
            };
            if socket.send_slice(&datagram[..len], meta.endpoint).is_ok() {
                self.counters.udp_echoed += 1;
            }
        }
    }

    fn serve_tcp_echo(&mut self) {
        for i in 0..self.tcp.len() {
            let handle = self.tcp[i];
            self.serve_tcp_socket(handle);
        }
    }

    fn serve_tcp_socket(&mut self, handle: SocketHandle) {
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        if !socket.is_open() {
            let _ = socket.listen(ECHO_PORT);
            return;
        }
        // `may_recv` is false while listening, so this only runs on a connection.
        if socket.may_recv() && socket.can_send() {
            let room = socket.send_capacity() - socket.send_queue();
            let mut chunk = vec![0u8; room.min(8192)];
            if let Ok(n) = socket.recv_slice(&mut chunk) {
                let _ = socket.send_slice(&chunk[..n]);
                self.counters.tcp_echoed_bytes += n as u64;
            }
        } else if socket.state() == tcp::State::CloseWait && socket.send_queue() == 0 {
            // The peer finished sending and everything was echoed: close our half.
            socket.close();
        }
    }

    /// Queues an echo request to `target` with sequence number `seq` (sent by the next poll).
    pub fn send_ping(&mut self, target: Ipv4Address, seq: u16) -> Result<(), &'static str> {
        let repr = Icmpv4Repr::EchoRequest {
            ident: ICMP_IDENT,
            seq_no: seq,
            data: &PING_PAYLOAD,
        };
        let socket = self.sockets.get_mut::<icmp::Socket>(self.icmp);
        let buffer = socket
            .send(repr.buffer_len(), IpAddress::Ipv4(target))
            .map_err(|_| "ICMP send buffer full")?;
        let mut packet = Icmpv4Packet::new_unchecked(buffer);
        repr.emit(&mut packet, &ChecksumCapabilities::default());
        if self.outstanding.len() >= MAX_OUTSTANDING_PINGS {
            self.outstanding.remove(0);
        }
        self.outstanding.push((target, seq, timer::now()));
        self.counters.pings_sent += 1;
        Ok(())
    }

    /// Replies to our echo requests that arrived since the last call; duplicates and replies
    /// to requests we do not remember are ignored.
    pub fn ping_replies(&mut self) -> Vec<PingReply> {
        let mut replies = Vec::new();
        let socket = self.sockets.get_mut::<icmp::Socket>(self.icmp);
        while let Ok((reply, from)) = socket.recv() {
            let IpAddress::Ipv4(from) = from;
            let Ok(packet) = Icmpv4Packet::new_checked(reply) else {
                continue;
            };
            let Ok(Icmpv4Repr::EchoReply { seq_no, .. }) =
                Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default())
            else {
                continue;
            };
            let Some(i) = self
                .outstanding
                .iter()
                .position(|&(t, s, _)| t == from && s == seq_no)
            else {
                continue;
            };
            let (_, _, sent) = self.outstanding.swap_remove(i);
            replies.push(PingReply {
                from,
                seq: seq_no,
                rtt_us: timer::ticks_to_us(timer::now() - sent),
            });
        }
        self.counters.ping_replies += replies.len() as u64;
        replies
    }
}
