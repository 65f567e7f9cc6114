//! The endpoint itself: a smoltcp interface with one static IPv4 address and default route, its
//! socket set, and the services it runs on every poll: UDP and TCP echo on port 7 (RFC 862),
//! ping as a client (echo requests out, replies with round-trip times back), and, when asked
//! for, an [`iperf3::Server`](crate::iperf3::Server). Other code may add its own sockets to the
//! same set (the iperf3 client does).

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, Device};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpEndpoint,
    Ipv4Address,
};

use crate::iperf3;
use crate::stale_ack::{AckTable, Repairing};

/// The echo service port (RFC 862), for UDP and TCP.
pub const ECHO_PORT: u16 = 7;
/// Payload of our echo requests (56 bytes, like `ping`).
const PING_PAYLOAD: [u8; 56] = *b"sluice ping payload, 56 bytes like the ping of iputils!!";
/// Requests awaiting a reply that we remember; older ones count as lost.
const MAX_OUTSTANDING_PINGS: usize = 64;
/// TCP echo connections served at once.
const TCP_ECHO_SOCKETS: usize = 4;
/// First port of the range local ports of outgoing connections come from (RFC 6335's dynamic
/// range, 49152..=65535).
const EPHEMERAL_FIRST: u16 = 49152;

/// Socket buffer sizes of a [`Stack`].
#[derive(Clone, Copy, Debug)]
pub struct Buffers {
    /// Each TCP echo socket's receive and send buffer.
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
#[cfg(target_os = "none")]
pub fn now() -> Instant {
    instant_at(vm_runtime::timer::now())
}

/// The stack's instant of counter reading `ticks` (for a caller that read the clock already).
#[cfg(target_os = "none")]
pub fn instant_at(ticks: u64) -> Instant {
    Instant::from_micros(vm_runtime::timer::ticks_to_us(ticks) as i64)
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
    /// ICMP identifier of our echo requests: from our MAC, so two endpoints pinging each other
    /// do not take each other's requests for replies.
    icmp_ident: u16,
    gateway: Ipv4Address,
    /// Echo requests sent and not yet answered: (target, seq, sent at).
    outstanding: Vec<(Ipv4Address, u16, Instant)>,
    pub counters: ServiceCounters,
    /// The iperf3 server, once [`Stack::serve_iperf3`] started it.
    iperf3: Option<iperf3::Server>,
    /// The next local port [`Stack::ephemeral_port`] hands out.
    next_port: u16,
    /// The peers' highest ACKs, for smoltcp's stale-ACK drop (see `stale_ack`).
    stale_acks: AckTable,
}

fn socket_buffers<T: Clone>(empty: T, slots: usize) -> (Vec<T>, Vec<T>) {
    (vec![empty.clone(); slots], vec![empty; slots])
}

#[cfg(target_os = "none")]
impl<D: Device> Stack<D> {
    /// An endpoint with `address` (and its subnet) on `device`, routing the rest to `gateway`
    /// (the clock and the random seed from the virtual timer).
    pub fn new(
        device: D,
        mac: [u8; 6],
        address: IpCidr,
        gateway: Ipv4Address,
        buffers: Buffers,
    ) -> Stack<D> {
        let seed = vm_runtime::timer::now();
        Stack::new_at(device, mac, address, gateway, buffers, now(), seed)
    }

    /// [`Stack::poll_at`] now.
    pub fn poll(&mut self) -> bool {
        self.poll_at(now())
    }

    /// When the stack next needs a poll (retransmissions, ARP, iperf3 timers), in
    /// microseconds from now.
    pub fn poll_delay_us(&mut self) -> Option<u64> {
        self.poll_delay_at(now()).map(|d| d.total_micros())
    }

    /// [`Stack::send_ping_at`] now.
    pub fn send_ping(&mut self, target: Ipv4Address, seq: u16) -> Result<(), &'static str> {
        self.send_ping_at(target, seq, now())
    }

    /// [`Stack::ping_replies_at`] now.
    pub fn ping_replies(&mut self) -> Vec<PingReply> {
        self.ping_replies_at(now())
    }
}

impl<D: Device> Stack<D> {
    /// An endpoint with `address` (and its subnet) on `device`, routing the rest to `gateway`.
    /// `now` is the current time, `seed` some entropy (TCP initial sequence numbers, local
    /// ports).
    pub fn new_at(
        mut device: D,
        mac: [u8; 6],
        address: IpCidr,
        gateway: Ipv4Address,
        buffers: Buffers,
        now: Instant,
        seed: u64,
    ) -> Stack<D> {
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut device, now);
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
        let icmp_ident = u16::from_be_bytes([mac[4], mac[5]]) ^ 0x5100;
        icmp_socket
            .bind(icmp::Endpoint::Ident(icmp_ident))
            .expect("fresh socket binds");
        let icmp = sockets.add(icmp_socket);

        let span = u64::from(u16::MAX - EPHEMERAL_FIRST) + 1;
        Stack {
            iface,
            sockets,
            device,
            udp,
            tcp,
            icmp,
            icmp_ident,
            gateway,
            outstanding: Vec::new(),
            counters: ServiceCounters::default(),
            iperf3: None,
            next_port: EPHEMERAL_FIRST + (seed % span) as u16,
            stale_acks: AckTable::default(),
        }
    }

    /// TCP segments whose stale ACK was raised so smoltcp would take their data.
    pub fn stale_acks_repaired(&self) -> u64 {
        self.stale_acks.repaired
    }

    /// Pure ACKs whose sequence number ran ahead of the peer's data and was pulled back.
    pub fn ahead_acks_pulled_back(&self) -> u64 {
        self.stale_acks.pulled_back
    }

    pub fn gateway(&self) -> Ipv4Address {
        self.gateway
    }

    /// Our IPv4 address (the one given to `new`).
    pub fn ipv4_address(&self) -> Option<Ipv4Address> {
        self.iface.ipv4_addr()
    }

    /// Moves frames both ways and runs the services (echo, the iperf3 server if started).
    /// True if a socket changed state (callers that need to know whether frames moved ask
    /// their device).
    pub fn poll_at(&mut self, now: Instant) -> bool {
        let mut device = Repairing {
            device: &mut self.device,
            table: &mut self.stale_acks,
        };
        let first = self.iface.poll(now, &mut device, &mut self.sockets);
        self.serve_udp_echo();
        self.serve_tcp_echo();
        if let Some(server) = self.iperf3.as_mut() {
            server.pump(&mut self.sockets, now);
        }
        let mut device = Repairing {
            device: &mut self.device,
            table: &mut self.stale_acks,
        };
        let second = self.iface.poll(now, &mut device, &mut self.sockets);
        first == PollResult::SocketStateChanged || second == PollResult::SocketStateChanged
    }

    /// When the stack next needs a poll (retransmissions, ARP, iperf3 timers), from `now`.
    pub fn poll_delay_at(&mut self, now: Instant) -> Option<Duration> {
        let net = self.iface.poll_delay(now, &self.sockets);
        let iperf = self
            .iperf3
            .as_ref()
            .and_then(|s| s.next_deadline())
            .map(|at| if at > now { at - now } else { Duration::ZERO });
        match (net, iperf) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Starts an iperf3 server on this endpoint; every poll runs it (the first one opens its
    /// listener), next to the echo services. Its news (tests started, progress, results) come
    /// from [`Stack::iperf3_server`]`.next_event()`. Returns the line to print that says so.
    pub fn serve_iperf3(&mut self, config: iperf3::ServerConfig) -> iperf3::Listening {
        self.iperf3 = Some(iperf3::Server::new(config));
        iperf3::Listening {
            address: self.ipv4_address().map(IpAddress::Ipv4),
            port: config.port,
        }
    }

    /// The iperf3 server [`Stack::serve_iperf3`] started.
    pub fn iperf3_server(&mut self) -> Option<&mut iperf3::Server> {
        self.iperf3.as_mut()
    }

    /// The sockets, for code that runs its own (an [`iperf3::Client`]).
    pub fn sockets(&self) -> &SocketSet<'static> {
        &self.sockets
    }

    /// The sockets, to add, use and remove one's own.
    pub fn sockets_mut(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }

    /// Connects TCP socket `handle` (one of ours, added with `sockets_mut().add`) from local
    /// port `local_port` to `remote`.
    pub fn tcp_connect(
        &mut self,
        handle: SocketHandle,
        remote: IpEndpoint,
        local_port: u16,
    ) -> Result<(), tcp::ConnectError> {
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        socket.connect(self.iface.context(), remote, local_port)
    }

    /// A local port for an outgoing connection (the dynamic range, round robin from a random
    /// start).
    pub fn ephemeral_port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = if port == u16::MAX {
            EPHEMERAL_FIRST
        } else {
            port + 1
        };
        port
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

    /// Whether a TCP echo connection is open (connecting, carrying data or closing): a guest
    /// that is about to stop serves on while one is, so that a client is not cut off in the
    /// middle of its echo (a slow host can stretch an echo past the guest's serving time).
    pub fn echo_in_progress(&self) -> bool {
        self.tcp
            .iter()
            .any(|&handle| self.sockets.get::<tcp::Socket>(handle).is_active())
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
        if socket.may_recv() && socket.can_send() && socket.can_recv() {
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

    /// Queues an echo request to `target` with sequence number `seq` (sent by the next poll);
    /// `now` is the send time the round trip is measured from.
    pub fn send_ping_at(
        &mut self,
        target: Ipv4Address,
        seq: u16,
        now: Instant,
    ) -> Result<(), &'static str> {
        let repr = Icmpv4Repr::EchoRequest {
            ident: self.icmp_ident,
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
        self.outstanding.push((target, seq, now));
        self.counters.pings_sent += 1;
        Ok(())
    }

    /// Replies to our echo requests that arrived since the last call (`now`: when they are
    /// collected); duplicates and replies to requests we do not remember are ignored.
    pub fn ping_replies_at(&mut self, now: Instant) -> Vec<PingReply> {
        let mut replies = Vec::new();
        let socket = self.sockets.get_mut::<icmp::Socket>(self.icmp);
        while let Ok((reply, from)) = socket.recv() {
            let IpAddress::Ipv4(from) = from;
            let Ok(packet) = Icmpv4Packet::new_checked(reply) else {
                continue;
            };
            let Ok(Icmpv4Repr::EchoReply { seq_no, ident, .. }) =
                Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default())
            else {
                continue;
            };
            if ident != self.icmp_ident {
                continue;
            }
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
                rtt_us: (now - sent).total_micros(),
            });
        }
        self.counters.ping_replies += replies.len() as u64;
        replies
    }
}

#[cfg(test)]
mod tests;
