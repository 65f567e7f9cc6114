//! The driver domain's learning L2 switch: one uplink port (the real NIC), one local port (the
//! driver domain's own IP stack) and one port per connected guest, like the VFs of an SR-IOV NIC
//! but in software.
//!
//! This module only decides; the caller moves bytes. For every frame the back-end or the NIC
//! hands in, [`Switch::forward`] looks at the 14-byte Ethernet header (and, for a guest held to
//! its identity, the ARP or IPv4 sender fields after it) and nothing else, and answers
//! with a [`Forward`]: drop (and why), one port, or a flood to an owned [`PortSet`]. The caller then
//! asks [`Switch::try_reserve`] for room on each destination before it copies the frame there (at
//! most one copy per destination) and gives the room back with [`Switch::release`] once that port
//! has consumed it.
//!
//! Guests are not trusted, so:
//! - every guest port has an owner MAC (assigned by the back-end); a frame whose source is not that
//!   MAC is dropped as spoofed. Owner MACs are static entries: learning never moves them, and a
//!   frame arriving on the uplink with a local guest's MAC as its source is dropped as spoofed too
//!   (it is an impersonation or a loop, and either way delivering it would lie to the guests);
//! - a guest port added with its identity ([`Switch::add_guest_with_ip`]) is held to it like a
//!   Xen vif with anti-spoofing: it may send only ARP and IPv4; ARP must name its own MAC as
//!   sender hardware address and its own address as sender address, IPv4 must come from its
//!   own address (a port without an address may send neither). Everything else is dropped and
//!   counted by reason;
//! - a unicast frame for a guest MAC the topology reserved ([`Switch::reserve_guest_mac`]) whose
//!   guest is not connected (not yet, or reconnecting after a driver-domain restart) is dropped
//!   and counted as "absent", never flooded: flooded to the uplink, QEMU's user network answered
//!   a guest's TCP segments for its absent peer with a reset and killed the stream;
//! - floods (broadcast, multicast, unknown unicast) are rate-limited per ingress port
//!   ([`Config::flood_burst`], [`Config::flood_period_ms`]), so a storm from one port costs the
//!   others a bounded number of copies;
//! - the learned-MAC table is bounded (aging by the caller's clock, then eviction of the oldest), so
//!   a flood of made-up sources from outside cannot grow it;
//! - every port's egress has a byte budget, so a guest that stops draining its receive ring (or
//!   one that sends faster than the others drain) costs at most that budget of queued data per
//!   port, and the excess is dropped and counted as "queue full";
//! - every port has a largest frame ([`Switch::set_max_frame`]: the NIC's 1514 on the uplink,
//!   the internal link's 64 KiB frames between guests): a larger frame is never handed to the
//!   port, it is dropped and counted as "oversize" (a 64 KiB segment between guests that was
//!   flooded toward the NIC, say; TCP's MSS keeps real traffic to the outside within 1514).
//!
//! Counters are kept per port; `Display` on [`Switch`] gives a table for logs.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::fmt;

use shared_abi::virtq::MAX_ETH_FRAME;

use crate::budget::TokenBucket;

/// Bytes of an Ethernet header (destination, source, EtherType): all the switch reads, and the
/// shortest frame it forwards.
pub const ETH_HEADER_LEN: usize = 14;

/// Bytes of a frame the identity checks read: the Ethernet header and an ARP body for IPv4
/// over Ethernet (28 bytes), which also covers an IPv4 header's source address. A caller that
/// holds only the start of a frame must hold this much of it (or the whole frame if shorter).
pub const IDENTITY_HEADER_LEN: usize = ETH_HEADER_LEN + ARP_LEN;

const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
/// ARP for IPv4 over Ethernet: htype, ptype, hlen, plen, op, then the four addresses.
const ARP_LEN: usize = 28;
const ARP_IPV4_ETHERNET: [u8; 6] = [0, 1, 0x08, 0x00, 6, 4];
const IPV4_MIN_HEADER: usize = 20;
// A guest's frame is checked on the head the back-end read once; it must cover the checks.
const _: () = assert!(shared_abi::virtq::TX_HEAD_LEN >= IDENTITY_HEADER_LEN);

/// Highest guest port id. Guest ports are named by the front-end's VM id, and VM ids fit the
/// 64-bit peers bitmap of start-info, which also lets [`PortSet`] be a plain bitmap.
pub const MAX_GUEST_ID: u16 = 63;

/// Number of port slots: every guest id plus the uplink and the local port.
const SLOTS: usize = MAX_GUEST_ID as usize + 3;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00, which no real interface uses.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Group address (I/G bit set); broadcast is one too.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 != 0
    }

    /// Whether this is ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(self) -> bool {
        self == Self::BROADCAST
    }

    /// Whether a frame may carry this as its source: a group or all-zero source names no single
    /// sender, so it can be neither learned nor answered.
    pub fn is_valid_source(self) -> bool {
        !self.is_multicast() && self != Self::ZERO
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A port of the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortId {
    /// The real NIC.
    Uplink,
    /// The driver domain's own IP stack, which shares the NIC's MAC.
    Local,
    /// The back-end of front-end VM `id` (at most [`MAX_GUEST_ID`]).
    Guest(u16),
}

impl PortId {
    /// Slot in the port array and bit in a [`PortSet`]; `None` for an id no port can have.
    fn slot(self) -> Option<usize> {
        match self {
            PortId::Uplink => Some(0),
            PortId::Local => Some(1),
            PortId::Guest(id) if id <= MAX_GUEST_ID => Some(id as usize + 2),
            PortId::Guest(_) => None,
        }
    }

    fn from_slot(slot: usize) -> PortId {
        match slot {
            0 => PortId::Uplink,
            1 => PortId::Local,
            n => PortId::Guest((n - 2) as u16),
        }
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortId::Uplink => f.write_str("uplink"),
            PortId::Local => f.write_str("local"),
            PortId::Guest(id) => write!(f, "guest {id}"),
        }
    }
}

/// A set of ports, owned and `Copy` so that a caller can hold a flood's destinations while it
/// calls back into the switch for each of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortSet(u128);

impl PortSet {
    /// No ports.
    pub const EMPTY: PortSet = PortSet(0);

    /// The set holding only `port` (empty for a guest id above [`MAX_GUEST_ID`]).
    pub fn single(port: PortId) -> PortSet {
        let mut set = PortSet::EMPTY;
        set.insert(port);
        set
    }

    /// Whether `port` is in the set.
    pub fn contains(self, port: PortId) -> bool {
        port.slot().is_some_and(|s| self.0 & (1 << s) != 0)
    }

    /// Number of ports in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set has no ports.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The ports, uplink first, then guests by id, so that floods are delivered in a stable order.
    pub fn iter(self) -> PortSetIter {
        PortSetIter(self.0)
    }

    fn insert(&mut self, port: PortId) {
        if let Some(s) = port.slot() {
            self.0 |= 1 << s;
        }
    }

    fn remove(&mut self, port: PortId) {
        if let Some(s) = port.slot() {
            self.0 &= !(1 << s);
        }
    }

    fn without(mut self, port: PortId) -> PortSet {
        self.remove(port);
        self
    }
}

impl IntoIterator for PortSet {
    type Item = PortId;
    type IntoIter = PortSetIter;

    fn into_iter(self) -> PortSetIter {
        self.iter()
    }
}

/// Iterator over a [`PortSet`].
#[derive(Clone, Debug)]
pub struct PortSetIter(u128);

impl Iterator for PortSetIter {
    type Item = PortId;

    fn next(&mut self) -> Option<PortId> {
        if self.0 == 0 {
            return None;
        }
        let slot = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(PortId::from_slot(slot))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.0.count_ones() as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for PortSetIter {}

/// Why [`Switch::forward`] dropped a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    #[error("runt")]
    Runt,
    /// Multicast, broadcast or all-zero source MAC.
    #[error("bad source")]
    BadSource,
    /// A guest sent with a source other than its own MAC, or the uplink sent with a local guest's
    /// MAC as source.
    #[error("spoofed")]
    Spoofed,
    /// The destination sits on the port the frame came in on.
    #[error("hairpin")]
    Hairpin,
    /// The ingress port does not exist (a frame racing with the port's removal); not counted
    /// anywhere, as there is no port to count it on.
    #[error("unknown port")]
    UnknownPort,
    /// ARP whose sender address, or IPv4 whose source address, is not the guest's own.
    #[error("spoofed IP address")]
    SpoofedIp,
    /// ARP whose sender hardware address is not the guest's own MAC.
    #[error("spoofed ARP sender MAC")]
    SpoofedArpMac,
    /// An EtherType a guest may not send (only ARP and IPv4 are allowed).
    #[error("EtherType not allowed")]
    Protocol,
    /// ARP or IPv4 too short or not for IPv4 over Ethernet, so its sender cannot be checked.
    #[error("malformed ARP/IPv4 header")]
    Malformed,
    /// A flood over the ingress port's flood budget.
    #[error("flood rate limit")]
    FloodLimited,
    /// Unicast for a reserved guest MAC whose guest is not connected.
    #[error("destination guest absent")]
    AbsentGuest,
}

/// What to do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// Nowhere.
    Drop(DropReason),
    /// Known unicast: to this port only.
    One(PortId),
    /// Broadcast, multicast or unknown unicast: to each of these ports (every port but the ingress
    /// one; possibly none).
    Flood(PortSet),
}

impl Forward {
    /// The destination ports, whatever the kind of decision.
    pub fn destinations(&self) -> PortSet {
        match *self {
            Forward::Drop(_) => PortSet::EMPTY,
            Forward::One(port) => PortSet::single(port),
            Forward::Flood(set) => set,
        }
    }
}

/// Frames a port dropped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    /// Ingress: source MAC not the port's own (or, on the uplink, a local guest's).
    pub spoofed: u64,
    /// Ingress: shorter than an Ethernet header.
    pub runt: u64,
    /// Ingress: multicast, broadcast or zero source MAC.
    pub bad_source: u64,
    /// Ingress: destination on the ingress port.
    pub hairpin: u64,
    /// Egress: the port's byte budget was used up.
    pub queue_full: u64,
    /// Egress: larger than the port's largest frame.
    pub oversize: u64,
    /// Ingress: ARP sender or IPv4 source address not the guest's own.
    pub spoofed_ip: u64,
    /// Ingress: ARP sender hardware address not the guest's own MAC.
    pub spoofed_arp_mac: u64,
    /// Ingress: an EtherType other than ARP and IPv4 from a guest held to its identity.
    pub protocol: u64,
    /// Ingress: ARP or IPv4 whose sender cannot be checked.
    pub malformed: u64,
    /// Ingress: floods over the port's flood budget.
    pub flood_limited: u64,
    /// Ingress: unicast for a reserved guest MAC whose guest is not connected.
    pub absent: u64,
}

impl Drops {
    /// All drops, whatever the reason.
    pub fn total(&self) -> u64 {
        self.spoofed
            + self.runt
            + self.bad_source
            + self.hairpin
            + self.queue_full
            + self.oversize
            + self.spoofed_ip
            + self.spoofed_arp_mac
            + self.protocol
            + self.malformed
            + self.flood_limited
            + self.absent
    }

    /// Drops for `reason` (0 for [`DropReason::UnknownPort`], which is counted nowhere).
    pub fn of(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::Runt => self.runt,
            DropReason::BadSource => self.bad_source,
            DropReason::Spoofed => self.spoofed,
            DropReason::Hairpin => self.hairpin,
            DropReason::SpoofedIp => self.spoofed_ip,
            DropReason::SpoofedArpMac => self.spoofed_arp_mac,
            DropReason::Protocol => self.protocol,
            DropReason::Malformed => self.malformed,
            DropReason::FloodLimited => self.flood_limited,
            DropReason::AbsentGuest => self.absent,
            DropReason::UnknownPort => 0,
        }
    }

    fn count(&mut self, reason: DropReason) {
        let counter = match reason {
            DropReason::Runt => &mut self.runt,
            DropReason::BadSource => &mut self.bad_source,
            DropReason::Spoofed => &mut self.spoofed,
            DropReason::Hairpin => &mut self.hairpin,
            DropReason::SpoofedIp => &mut self.spoofed_ip,
            DropReason::SpoofedArpMac => &mut self.spoofed_arp_mac,
            DropReason::Protocol => &mut self.protocol,
            DropReason::Malformed => &mut self.malformed,
            DropReason::FloodLimited => &mut self.flood_limited,
            DropReason::AbsentGuest => &mut self.absent,
            DropReason::UnknownPort => return,
        };
        *counter += 1;
    }
}

/// Counters of one port. Ingress counts (`rx_*`, `flooded`, ingress drops) are of frames the port
/// sent into the switch, dropped ones included; egress counts (`tx_*`, `queue_full`) are of frames
/// the switch handed to the port, counted when [`Switch::try_reserve`] is asked for their room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames received from the port.
    pub rx_frames: u64,
    /// Bytes received from the port.
    pub rx_bytes: u64,
    /// Frames given room on the port's egress.
    pub tx_frames: u64,
    /// Bytes given room on the port's egress.
    pub tx_bytes: u64,
    /// Frames from the port that were flooded.
    pub flooded: u64,
    /// Drops by reason.
    pub drops: Drops,
}

/// Tunables of a [`Switch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Most learned (dynamic) MACs kept; guest owner MACs do not count against it.
    pub table_capacity: usize,
    /// A learned MAC not seen for longer than this (in the caller's milliseconds) is forgotten.
    pub max_age_ms: u64,
    /// Egress byte budget a new port starts with.
    pub egress_budget: usize,
    /// Largest frame a new port takes.
    pub max_frame: usize,
    /// Floods a port may send back to back.
    pub flood_burst: u32,
    /// One more flood allowed per this many milliseconds once the burst is used (0: no limit).
    pub flood_period_ms: u64,
}

impl Default for Config {
    /// 256 learned MACs, 802.1D's 300 s aging time, and a 128 KiB budget per port (two of the
    /// internal link's largest frames, about 86 standard ones: enough to ride out a scheduling
    /// slice, small next to the domain's heap); the internal link's largest frame.
    /// Floods: 64 back to back, then 250 a second per port, far above what ARP and the odd
    /// unknown destination need, far below what a storm would cost every other port.
    fn default() -> Self {
        Config {
            table_capacity: 256,
            max_age_ms: 300_000,
            egress_budget: 128 * 1024,
            max_frame: MAX_ETH_FRAME,
            flood_burst: 64,
            flood_period_ms: 4,
        }
    }
}

/// Why a port could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// That port already exists.
    #[error("port already exists")]
    Exists,
    /// Guest id above [`MAX_GUEST_ID`].
    #[error("guest id out of range")]
    IdOutOfRange,
    /// The owner MAC is not a valid unicast source.
    #[error("owner MAC is not a unicast address")]
    BadOwnerMac,
    /// Another guest port already owns that MAC.
    #[error("owner MAC already used by another guest")]
    OwnerMacInUse,
}

/// The addresses a guest port is held to beyond its MAC (see [`Switch::add_guest_with_ip`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L3Filter {
    /// No checks above Ethernet (the uplink, the local port, a guest added by MAC alone).
    Off,
    /// Only ARP and IPv4, from this address (`None`: neither is allowed).
    Only(Option<[u8; 4]>),
}

#[derive(Clone, Debug)]
struct Port {
    /// The only source a guest may send from; `None` for the uplink.
    owner: Option<MacAddr>,
    l3: L3Filter,
    floods: TokenBucket,
    counters: PortCounters,
    queued: usize,
    budget: usize,
    max_frame: usize,
}

#[derive(Clone, Copy, Debug)]
struct Learned {
    port: PortId,
    seen_ms: u64,
}

/// The switch: ports, their owner MACs, the learned-MAC table and the counters.
#[derive(Clone, Debug)]
pub struct Switch {
    config: Config,
    /// Indexed by `PortId::slot`.
    ports: Vec<Option<Port>>,
    present: PortSet,
    /// Static entries: guest owner MACs, which learning never overrides.
    owners: BTreeMap<MacAddr, PortId>,
    /// Dynamic entries, at most `config.table_capacity`.
    learned: BTreeMap<MacAddr, Learned>,
    /// Guest MACs the topology gave out, connected or not (at most one per guest slot).
    reserved: BTreeSet<MacAddr>,
}

impl Switch {
    /// A switch with no ports.
    pub fn new(config: Config) -> Self {
        Switch {
            config,
            ports: (0..SLOTS).map(|_| None).collect(),
            present: PortSet::EMPTY,
            owners: BTreeMap::new(),
            learned: BTreeMap::new(),
            reserved: BTreeSet::new(),
        }
    }

    /// Reserves `mac` for a guest of the topology, connected or not: unicast for it is never
    /// flooded (dropped as "absent" while no port owns it) and the uplink may not send from it.
    /// False (nothing reserved) for a multicast or zero MAC, or once every guest slot has one.
    pub fn reserve_guest_mac(&mut self, mac: MacAddr) -> bool {
        if !mac.is_valid_source() || (self.reserved.len() >= SLOTS && !self.reserved.contains(&mac))
        {
            return false;
        }
        self.reserved.insert(mac);
        true
    }

    /// The tunables it was made with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds the uplink port. It is a port like the others so that a driver domain without a NIC
    /// still switches between its guests.
    pub fn add_uplink(&mut self) -> Result<PortId, PortError> {
        self.add(PortId::Uplink, None)
    }

    /// Adds the local port: the driver domain's own stack, which may only send from `owner`
    /// (the NIC's MAC, so the outside sees one station).
    pub fn add_local(&mut self, owner: MacAddr) -> Result<PortId, PortError> {
        if !owner.is_valid_source() {
            return Err(PortError::BadOwnerMac);
        }
        self.add(PortId::Local, Some(owner))
    }

    /// Adds the port of front-end VM `id`, which may only send from `owner`.
    ///
    /// A MAC learned on the uplink before is taken over: the back-end assigned it, so the guest's
    /// claim wins and the outside sender becomes a spoofer.
    pub fn add_guest(&mut self, id: u16, owner: MacAddr) -> Result<PortId, PortError> {
        if id > MAX_GUEST_ID {
            return Err(PortError::IdOutOfRange);
        }
        if !owner.is_valid_source() {
            return Err(PortError::BadOwnerMac);
        }
        self.add(PortId::Guest(id), Some(owner))
    }

    /// Adds the port of front-end VM `id` held to its whole identity: it may only send from
    /// `owner`, and only ARP and IPv4 whose sender is `owner` and `ip` (with `ip` of `None`,
    /// neither ARP nor IPv4 at all).
    pub fn add_guest_with_ip(
        &mut self,
        id: u16,
        owner: MacAddr,
        ip: Option<[u8; 4]>,
    ) -> Result<PortId, PortError> {
        let port = self.add_guest(id, owner)?;
        if let Some(p) = self.port_mut(port) {
            p.l3 = L3Filter::Only(ip);
        }
        Ok(port)
    }

    fn add(&mut self, port: PortId, owner: Option<MacAddr>) -> Result<PortId, PortError> {
        let slot = port.slot().ok_or(PortError::IdOutOfRange)?;
        if self.ports[slot].is_some() {
            return Err(PortError::Exists);
        }
        if let Some(mac) = owner {
            if self.owners.contains_key(&mac) {
                return Err(PortError::OwnerMacInUse);
            }
            self.learned.remove(&mac);
            self.owners.insert(mac, port);
        }
        self.ports[slot] = Some(Port {
            owner,
            l3: L3Filter::Off,
            floods: TokenBucket::new(self.config.flood_burst, self.config.flood_period_ms),
            counters: PortCounters::default(),
            queued: 0,
            budget: self.config.egress_budget,
            max_frame: self.config.max_frame,
        });
        self.present.insert(port);
        Ok(port)
    }

    /// Removes a port with its counters and every MAC it owned or was learned on, so frames for
    /// them flood (and then fail) instead of going to whoever gets the port id next. Frames still
    /// queued for the port are the caller's to free; their room is forgotten with the port.
    /// Returns false if there was no such port.
    pub fn remove_port(&mut self, port: PortId) -> bool {
        let Some(p) = port.slot().and_then(|s| self.ports[s].take()) else {
            return false;
        };
        if let Some(mac) = p.owner {
            self.owners.remove(&mac);
        }
        self.learned.retain(|_, e| e.port != port);
        self.present.remove(port);
        true
    }

    /// The ports that exist.
    pub fn ports(&self) -> PortSet {
        self.present
    }

    /// A guest port's owner MAC (`None` for the uplink or a missing port).
    pub fn owner(&self, port: PortId) -> Option<MacAddr> {
        self.port(port).and_then(|p| p.owner)
    }

    /// A port's counters.
    pub fn counters(&self, port: PortId) -> Option<PortCounters> {
        self.port(port).map(|p| p.counters)
    }

    /// Bytes reserved and not yet released on a port's egress.
    pub fn queued(&self, port: PortId) -> Option<usize> {
        self.port(port).map(|p| p.queued)
    }

    /// A port's egress byte budget.
    pub fn egress_budget(&self, port: PortId) -> Option<usize> {
        self.port(port).map(|p| p.budget)
    }

    /// Changes a port's egress budget (e.g. the uplink's, to match the NIC's TX ring). Lowering it
    /// below what is queued only refuses new frames until enough is released. Returns false if
    /// there is no such port.
    pub fn set_egress_budget(&mut self, port: PortId, bytes: usize) -> bool {
        match self.port_mut(port) {
            Some(p) => {
                p.budget = bytes;
                true
            }
            None => false,
        }
    }

    /// A port's largest frame.
    pub fn max_frame(&self, port: PortId) -> Option<usize> {
        self.port(port).map(|p| p.max_frame)
    }

    /// Changes a port's largest frame (the uplink's to the NIC's, an emulated NIC's to its
    /// device's). Returns false if there is no such port.
    pub fn set_max_frame(&mut self, port: PortId, bytes: usize) -> bool {
        match self.port_mut(port) {
            Some(p) => {
                p.max_frame = bytes;
                true
            }
            None => false,
        }
    }

    /// Number of learned (dynamic) MACs, expired ones not yet purged included.
    pub fn learned_len(&self) -> usize {
        self.learned.len()
    }

    /// The port a unicast MAC is on, if known at `now_ms`: owner MACs always, learned ones until
    /// they age out.
    pub fn lookup(&self, mac: MacAddr, now_ms: u64) -> Option<PortId> {
        if let Some(&port) = self.owners.get(&mac) {
            return Some(port);
        }
        self.learned
            .get(&mac)
            .filter(|e| !self.expired(e, now_ms))
            .map(|e| e.port)
    }

    /// Forgets learned MACs that have aged out by `now_ms`; returns how many. Optional: lookups
    /// already ignore them and learning purges them when the table is full; calling it now and then
    /// only keeps `learned_len` honest.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.learned.len();
        let max_age = self.config.max_age_ms;
        self.learned
            .retain(|_, e| now_ms.saturating_sub(e.seen_ms) <= max_age);
        before - self.learned.len()
    }

    /// Decides where `frame`, received on `ingress` at `now_ms`, goes, learning its source on the
    /// way. Reads only the Ethernet header, and the sender fields of ARP or IPv4 on a port held
    /// to an identity; counts rx, drops and floods on the ingress port.
    pub fn forward(&mut self, ingress: PortId, frame: &[u8], now_ms: u64) -> Forward {
        self.forward_header(ingress, frame, frame.len(), now_ms)
    }

    /// [`forward`](Self::forward) for a frame of `frame_len` bytes of which the caller holds
    /// only the start (`header`, at least the Ethernet header and [`IDENTITY_HEADER_LEN`] bytes
    /// of a longer frame): a back-end that copies the body straight from one guest's buffer to
    /// another's never holds the whole frame.
    pub fn forward_header(
        &mut self,
        ingress: PortId,
        header: &[u8],
        frame_len: usize,
        now_ms: u64,
    ) -> Forward {
        let owners = &self.owners;
        let Some(port) = ingress.slot().and_then(|s| self.ports[s].as_mut()) else {
            return Forward::Drop(DropReason::UnknownPort);
        };
        let counters = &mut port.counters;
        counters.rx_frames += 1;
        counters.rx_bytes += frame_len as u64;

        let header_all = header;
        let Some(header) = header
            .get(..ETH_HEADER_LEN)
            .filter(|_| frame_len >= ETH_HEADER_LEN)
        else {
            counters.drops.runt += 1;
            return Forward::Drop(DropReason::Runt);
        };
        let mut dst = MacAddr::ZERO;
        let mut src = MacAddr::ZERO;
        dst.0.copy_from_slice(&header[0..6]);
        src.0.copy_from_slice(&header[6..12]);

        if !src.is_valid_source() {
            counters.drops.bad_source += 1;
            return Forward::Drop(DropReason::BadSource);
        }
        let spoofed = match port.owner {
            Some(own) => src != own,
            None => owners.contains_key(&src) || self.reserved.contains(&src),
        };
        if spoofed {
            counters.drops.spoofed += 1;
            return Forward::Drop(DropReason::Spoofed);
        }
        if let L3Filter::Only(ip) = port.l3 {
            if let Err(reason) = check_identity(src, ip, header_all, frame_len) {
                counters.drops.count(reason);
                return Forward::Drop(reason);
            }
        }

        self.learn(src, ingress, now_ms);

        let target = if dst.is_multicast() {
            None
        } else {
            self.lookup(dst, now_ms)
        };
        let present = self.present;
        let absent = target.is_none() && !dst.is_multicast() && self.reserved.contains(&dst);
        let Some(port) = self.port_mut(ingress) else {
            return Forward::Drop(DropReason::UnknownPort);
        };
        let counters = &mut port.counters;
        match target {
            Some(port) if port == ingress => {
                counters.drops.hairpin += 1;
                Forward::Drop(DropReason::Hairpin)
            }
            Some(port) => Forward::One(port),
            None if absent => {
                counters.drops.absent += 1;
                Forward::Drop(DropReason::AbsentGuest)
            }
            None if port.floods.take(now_ms).is_err() => {
                counters.drops.flood_limited += 1;
                Forward::Drop(DropReason::FloodLimited)
            }
            None => {
                counters.flooded += 1;
                Forward::Flood(present.without(ingress))
            }
        }
    }

    /// Asks for `bytes` of room on `port`'s egress before the caller copies a frame there. On
    /// success the frame counts as transmitted on the port; on failure it counts as an oversize
    /// drop (larger than the port's largest frame) or a queue-full one, and the caller must not
    /// copy it. False for a missing port as well.
    pub fn try_reserve(&mut self, port: PortId, bytes: usize) -> bool {
        let Some(p) = self.port_mut(port) else {
            return false;
        };
        if bytes > p.max_frame {
            p.counters.drops.oversize += 1;
            return false;
        }
        if bytes > p.budget.saturating_sub(p.queued) {
            p.counters.drops.queue_full += 1;
            return false;
        }
        p.queued += bytes;
        p.counters.tx_frames += 1;
        p.counters.tx_bytes += bytes as u64;
        true
    }

    /// Undoes a successful [`Switch::try_reserve`] for a frame the port could not take after
    /// all (a queue the switch does not see, such as the local endpoint's frame queue): the
    /// room is given back and the frame counts as a queue-full drop, not as transmitted.
    pub fn refuse_reserved(&mut self, port: PortId, bytes: usize) {
        self.unreserve(port, bytes);
        if let Some(p) = self.port_mut(port) {
            p.counters.drops.queue_full += 1;
        }
    }

    /// Undoes a successful [`Switch::try_reserve`] for a frame that will be offered to the port
    /// again later (a frame held for a receiver with no room, see `backpressure`): the room is
    /// given back and nothing is counted, neither as transmitted nor as dropped.
    pub fn unreserve(&mut self, port: PortId, bytes: usize) {
        let Some(p) = self.port_mut(port) else {
            return;
        };
        p.queued = p.queued.saturating_sub(bytes);
        p.counters.tx_frames = p.counters.tx_frames.saturating_sub(1);
        p.counters.tx_bytes = p.counters.tx_bytes.saturating_sub(bytes as u64);
    }

    /// Gives back room reserved with [`Switch::try_reserve`] once the port has consumed (or the
    /// caller has discarded) the frame. Ignored for a missing port, whose room went with it, and
    /// never takes the queue below zero, so a stale release cannot buy extra budget.
    pub fn release(&mut self, port: PortId, bytes: usize) {
        if let Some(p) = self.port_mut(port) {
            p.queued = p.queued.saturating_sub(bytes);
        }
    }

    /// One line of counters for `port`, for logs that want a line at a time.
    pub fn port_summary(&self, port: PortId) -> Option<PortSummary<'_>> {
        self.port(port).map(|p| PortSummary { id: port, port: p })
    }

    fn learn(&mut self, src: MacAddr, port: PortId, now_ms: u64) {
        if self.owners.contains_key(&src) {
            // Static: a guest's own MAC needs no learning and can never be moved by it.
            return;
        }
        if let Some(entry) = self.learned.get_mut(&src) {
            entry.port = port;
            entry.seen_ms = now_ms;
            return;
        }
        let capacity = self.config.table_capacity;
        if capacity == 0 {
            return;
        }
        if self.learned.len() >= capacity {
            self.expire(now_ms);
        }
        if self.learned.len() >= capacity {
            // Ties go to the lowest MAC (map order), so eviction is deterministic.
            let oldest = self
                .learned
                .iter()
                .min_by_key(|(_, e)| e.seen_ms)
                .map(|(mac, _)| *mac);
            if let Some(mac) = oldest {
                self.learned.remove(&mac);
            }
        }
        self.learned.insert(
            src,
            Learned {
                port,
                seen_ms: now_ms,
            },
        );
    }

    fn expired(&self, entry: &Learned, now_ms: u64) -> bool {
        now_ms.saturating_sub(entry.seen_ms) > self.config.max_age_ms
    }

    fn port(&self, port: PortId) -> Option<&Port> {
        port.slot().and_then(|s| self.ports[s].as_ref())
    }

    fn port_mut(&mut self, port: PortId) -> Option<&mut Port> {
        port.slot().and_then(|s| self.ports[s].as_mut())
    }
}

/// Whether the `n`th drop of one reason on one port deserves a log line: the first, then each
/// power of ten, so a flood of bad frames costs a handful of lines.
pub fn worth_logging(n: u64) -> bool {
    n > 0 && 10u64.pow(n.ilog10()) == n
}

/// The identity checks of a guest held to MAC `mac` and address `ip` (Xen's vif
/// anti-spoofing rules): only ARP and IPv4; ARP for IPv4 over Ethernet with `mac` as sender
/// hardware address and `ip` as sender address; IPv4 from `ip`. `header` is the start of a
/// `frame_len`-byte frame, at least [`IDENTITY_HEADER_LEN`] bytes of it when it is longer.
pub fn check_identity(
    mac: MacAddr,
    ip: Option<[u8; 4]>,
    header: &[u8],
    frame_len: usize,
) -> Result<(), DropReason> {
    let held = header.len().min(frame_len);
    let header = &header[..held];
    let ethertype = header.get(12..14).ok_or(DropReason::Runt)?;
    let payload = &header[ETH_HEADER_LEN..];
    let sender = if ethertype == ETHERTYPE_ARP {
        let arp = payload.get(..ARP_LEN).ok_or(DropReason::Malformed)?;
        if arp[..6] != ARP_IPV4_ETHERNET {
            return Err(DropReason::Malformed);
        }
        if arp[8..14] != mac.0 {
            return Err(DropReason::SpoofedArpMac);
        }
        &arp[14..18]
    } else if ethertype == ETHERTYPE_IPV4 {
        let ipv4 = payload
            .get(..IPV4_MIN_HEADER)
            .ok_or(DropReason::Malformed)?;
        if ipv4[0] >> 4 != 4 {
            return Err(DropReason::Malformed);
        }
        &ipv4[12..16]
    } else {
        return Err(DropReason::Protocol);
    };
    match ip {
        Some(own) if sender == own => Ok(()),
        _ => Err(DropReason::SpoofedIp),
    }
}

/// One port's line of the counters table (see [`Switch::port_summary`]).
pub struct PortSummary<'a> {
    id: PortId,
    port: &'a Port,
}

impl fmt::Display for PortSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.port.counters;
        let d = &c.drops;
        match self.id {
            PortId::Uplink => write!(f, "{:<8}", "uplink")?,
            PortId::Local => write!(f, "{:<8}", "local")?,
            PortId::Guest(id) => write!(f, "guest {id:<2}")?,
        }
        match self.port.owner {
            Some(mac) => write!(f, " {mac}")?,
            None => write!(f, " {:<17}", "-")?,
        }
        write!(
            f,
            " rx {}/{}B tx {}/{}B flood {} drop spoofed {} runt {} badsrc {} hairpin {} qfull {} \
             oversize {} spoofip {} arpmac {} proto {} malformed {} floodlim {} absent {} queued {}/{}B",
            c.rx_frames,
            c.rx_bytes,
            c.tx_frames,
            c.tx_bytes,
            c.flooded,
            d.spoofed,
            d.runt,
            d.bad_source,
            d.hairpin,
            d.queue_full,
            d.oversize,
            d.spoofed_ip,
            d.spoofed_arp_mac,
            d.protocol,
            d.malformed,
            d.flood_limited,
            d.absent,
            self.port.queued,
            self.port.budget
        )
    }
}

/// A heading line (ports, table use) followed by one line of counters per port.
impl fmt::Display for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "switch: {} port(s), {}/{} learned MAC(s)",
            self.present.len(),
            self.learned.len(),
            self.config.table_capacity
        )?;
        for port in self.present {
            if let Some(line) = self.port_summary(port) {
                write!(f, "\n{line}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
