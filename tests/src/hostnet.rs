//! The guest network as the host sees it: the addresses of the VMs' default network plan
//! (QEMU user networking's 10.0.2.0/24, kept by the tap and passt back-ends), transport
//! protocols, and host port forwards. A leaf: the topology, QEMU, passt, tap and network-check
//! modules all build on it, and it on none of them.

use std::fmt;
use std::net::Ipv4Addr;

/// The driver domain's address on QEMU's user network (its default `ip` setting).
pub const DRIVER_DOMAIN_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// QEMU user networking's host side, every VM's default gateway (the `gateway` setting).
pub const DEFAULT_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// A transport protocol, as QEMU's `hostfwd=` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    pub const fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host port forwarded into the guest network: QEMU listens on 127.0.0.1:`host_port` and
/// relays to `guest_ip`:`guest_port`. Rendered as QEMU's `hostfwd=` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostForward {
    pub proto: Proto,
    pub host_port: u16,
    pub guest_ip: Ipv4Addr,
    pub guest_port: u16,
}

impl HostForward {
    pub const fn udp(host_port: u16, guest_ip: Ipv4Addr, guest_port: u16) -> HostForward {
        HostForward {
            proto: Proto::Udp,
            host_port,
            guest_ip,
            guest_port,
        }
    }

    pub const fn tcp(host_port: u16, guest_ip: Ipv4Addr, guest_port: u16) -> HostForward {
        HostForward {
            proto: Proto::Tcp,
            host_port,
            guest_ip,
            guest_port,
        }
    }
}

/// `udp:127.0.0.1:HOSTPORT-GUESTIP:GUESTPORT`, the value of QEMU's `hostfwd=`.
impl fmt::Display for HostForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:127.0.0.1:{}-{}:{}",
            self.proto, self.host_port, self.guest_ip, self.guest_port
        )
    }
}
