//! The driver domain's own network endpoint on the NIC (lecture method 3, passthrough): smoltcp
//! with a static IPv4 address, answering ARP and ping, plus UDP and TCP echo on port 7, which is
//! what the host reaches through QEMU's user networking (port forwards) to check the whole path:
//! host socket, QEMU's NIC model, SMMU-translated DMA, INTx injection, virtio-net driver, stack.

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::Instant as NetInstant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, Ipv4Address,
};
use virtio_drivers::device::net::RxBuffer;
use vm_runtime::{println, timer};

use crate::nic::{self, with_nic};

/// The echo service port (RFC 862), for UDP and TCP.
pub const ECHO_PORT: u16 = 7;
const ICMP_IDENT: u16 = 0x51ce;
/// smoltcp socket buffers: room for a few full frames each way.
const SOCKET_BUFFER: usize = 16 * 1024;
/// TCP echo connections served at once.
const TCP_ECHO_SOCKETS: usize = 4;

/// Frames moved by the stack's device, for the counters line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
    pub udp_echoed: u64,
    pub tcp_echoed_bytes: u64,
}

/// smoltcp's view of the NIC.
struct NicPhy {
    counters: Counters,
}

struct NicRx(RxBuffer);
struct NicTx<'a>(&'a mut Counters);

impl RxToken for NicRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let result = f(self.0.packet());
        // The buffer goes straight back to the device; if that fails the queue shrinks by one,
        // which the counters line would show as a stalled receive.
        let _ = with_nic(|nic| nic.recycle_rx_buffer(self.0));
        result
    }
}

impl TxToken for NicTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let result = f(&mut frame);
        let sent = with_nic(|nic| {
            let mut buffer = nic.new_tx_buffer(len);
            buffer.packet_mut().copy_from_slice(&frame);
            nic.send(buffer)
        });
        match sent {
            Some(Ok(())) => {
                self.0.tx_frames += 1;
                self.0.tx_bytes += len as u64;
            }
            _ => self.0.tx_errors += 1,
        }
        result
    }
}

impl Device for NicPhy {
    type RxToken<'a> = NicRx;
    type TxToken<'a> = NicTx<'a>;

    fn receive(&mut self, _now: NetInstant) -> Option<(NicRx, NicTx<'_>)> {
        let buffer = with_nic(|nic| nic.receive().ok()).flatten()?;
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += buffer.packet_len() as u64;
        Some((NicRx(buffer), NicTx(&mut self.counters)))
    }

    fn transmit(&mut self, _now: NetInstant) -> Option<NicTx<'_>> {
        with_nic(|nic| nic.can_send())
            .unwrap_or(false)
            .then_some(NicTx(&mut self.counters))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps.max_burst_size = Some(nic::QUEUE_SIZE / 2);
        caps
    }
}

pub fn now() -> NetInstant {
    NetInstant::from_micros(timer::ticks_to_us(timer::now()) as i64)
}

/// The stack and its services.
pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    phy: NicPhy,
    udp: SocketHandle,
    /// Several listeners, so a new connection finds one while an old one is still closing.
    tcp: Vec<SocketHandle>,
    icmp: SocketHandle,
    gateway: Ipv4Address,
}

fn socket_buffers<T: Clone>(empty: T, slots: usize) -> (Vec<T>, Vec<T>) {
    (vec![empty.clone(); slots], vec![empty; slots])
}

impl Stack {
    pub fn new(mac: [u8; 6], address: IpCidr, gateway: Ipv4Address) -> Stack {
        let mut phy = NicPhy {
            counters: Counters::default(),
        };
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = timer::now();
        let mut iface = Interface::new(config, &mut phy, now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(address);
        });
        let _ = iface.routes_mut().add_default_ipv4_route(gateway);

        let mut sockets = SocketSet::new(Vec::new());
        let (rx_meta, tx_meta) = socket_buffers(udp::PacketMetadata::EMPTY, 16);
        let (rx, tx) = socket_buffers(0u8, SOCKET_BUFFER);
        let mut udp_socket = udp::Socket::new(
            udp::PacketBuffer::new(rx_meta, rx),
            udp::PacketBuffer::new(tx_meta, tx),
        );
        udp_socket.bind(ECHO_PORT).expect("fresh socket binds");
        let udp = sockets.add(udp_socket);

        let tcp = (0..TCP_ECHO_SOCKETS)
            .map(|_| {
                let (rx, tx) = socket_buffers(0u8, SOCKET_BUFFER);
                sockets.add(tcp::Socket::new(
                    tcp::SocketBuffer::new(rx),
                    tcp::SocketBuffer::new(tx),
                ))
            })
            .collect();

        let (rx_meta, tx_meta) = socket_buffers(icmp::PacketMetadata::EMPTY, 4);
        let (rx, tx) = socket_buffers(0u8, 1024);
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
            phy,
            udp,
            tcp,
            icmp,
            gateway,
        }
    }

    pub fn counters(&self) -> Counters {
        self.phy.counters
    }

    /// Moves frames both ways and runs the echo services. True if anything happened.
    pub fn poll(&mut self) -> bool {
        nic::NEWS.store(false, Ordering::Release);
        let before = (self.phy.counters.rx_frames, self.phy.counters.tx_frames);
        self.iface.poll(now(), &mut self.phy, &mut self.sockets);
        self.serve_udp_echo();
        self.serve_tcp_echo();
        self.iface.poll(now(), &mut self.phy, &mut self.sockets);
        before != (self.phy.counters.rx_frames, self.phy.counters.tx_frames)
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
                self.phy.counters.udp_echoed += 1;
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
        if socket.may_recv() && socket.can_send() {
            let room = socket.send_capacity() - socket.send_queue();
            let mut chunk = vec![0u8; room.min(4096)];
            if let Ok(n) = socket.recv_slice(&mut chunk) {
                let _ = socket.send_slice(&chunk[..n]);
                self.phy.counters.tcp_echoed_bytes += n as u64;
            }
        } else if socket.state() == tcp::State::CloseWait && socket.send_queue() == 0 {
            // The peer finished sending and everything was echoed: close our half.
            socket.close();
        }
    }

    /// Pings the gateway once; the round trip in microseconds, or None after `timeout_ms`.
    pub fn ping_gateway(&mut self, seq: u16, timeout_ms: u64) -> Option<u64> {
        let gateway = IpAddress::Ipv4(self.gateway);
        let payload = b"sluice driver domain";
        let repr = Icmpv4Repr::EchoRequest {
            ident: ICMP_IDENT,
            seq_no: seq,
            data: payload,
        };
        let start = timer::now();
        {
            let socket = self.sockets.get_mut::<icmp::Socket>(self.icmp);
            let buffer = socket.send(repr.buffer_len(), gateway).ok()?;
            let mut packet = Icmpv4Packet::new_unchecked(buffer);
            repr.emit(&mut packet, &smoltcp::phy::ChecksumCapabilities::default());
        }
        let deadline = start + timer::ms_to_ticks(timeout_ms);
        while timer::now() < deadline {
            self.poll();
            let socket = self.sockets.get_mut::<icmp::Socket>(self.icmp);
            while let Ok((reply, from)) = socket.recv() {
                let Ok(packet) = Icmpv4Packet::new_checked(reply) else {
                    continue;
                };
                let caps = smoltcp::phy::ChecksumCapabilities::default();
                if let Ok(Icmpv4Repr::EchoReply { seq_no, .. }) = Icmpv4Repr::parse(&packet, &caps)
                {
                    if seq_no == seq && from == gateway {
                        return Some(timer::ticks_to_us(timer::now() - start));
                    }
                }
            }
            timer::wait_until((timer::now() + timer::ms_to_ticks(2)).min(deadline), || {
                nic::NEWS.load(Ordering::Acquire)
            });
        }
        None
    }
}

/// One line of NIC and stack counters.
pub fn print_counters(name: &str, stack: &Stack) {
    let c = stack.counters();
    println!(
        "{name} NIC counters: rx {} frames / {} B, tx {} frames / {} B, tx errors {}, \
         interrupts {}, udp echoed {}, tcp echoed {} B",
        c.rx_frames,
        c.rx_bytes,
        c.tx_frames,
        c.tx_bytes,
        c.tx_errors,
        nic::INTERRUPTS.load(Ordering::Relaxed),
        c.udp_echoed,
        c.tcp_echoed_bytes
    );
}
