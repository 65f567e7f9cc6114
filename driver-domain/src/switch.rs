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
//! - floods (broadcast, multicast, unknown unicast) are rate-limited per ingress port
//!   ([`Config::flood_burst`], [`Config::flood_period_ms`]), so a storm from one port costs the
//!   others a bounded number of copies;
//! - the learned-MAC table is bounded (aging by the caller's clock, then eviction of the oldest), so
//!   a flood of made-up sources from outside cannot grow it;
//! - every port's egress has a byte budget, so a guest that stops draining its receive ring (or
//!   one that sends faster than the others drain) costs at most that budget of queued data per
//!   port, and the excess is dropped and counted as "queue full".
//!
//! Counters are kept per port; `Display` on [`Switch`] gives a table for logs.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Runt,
    /// Multicast, broadcast or all-zero source MAC.
    BadSource,
    /// A guest sent with a source other than its own MAC, or the uplink sent with a local guest's
    /// MAC as source.
    Spoofed,
    /// The destination sits on the port the frame came in on.
    Hairpin,
    /// The ingress port does not exist (a frame racing with the port's removal); not counted
    /// anywhere, as there is no port to count it on.
    UnknownPort,
    /// ARP whose sender address, or IPv4 whose source address, is not the guest's own.
    SpoofedIp,
    /// ARP whose sender hardware address is not the guest's own MAC.
    SpoofedArpMac,
    /// An EtherType a guest may not send (only ARP and IPv4 are allowed).
    Protocol,
    /// ARP or IPv4 too short or not for IPv4 over Ethernet, so its sender cannot be checked.
    Malformed,
    /// A flood over the ingress port's flood budget.
    FloodLimited,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::Runt => "runt",
            DropReason::BadSource => "bad source",
            DropReason::Spoofed => "spoofed",
            DropReason::Hairpin => "hairpin",
            DropReason::UnknownPort => "unknown port",
            DropReason::SpoofedIp => "spoofed IP address",
            DropReason::SpoofedArpMac => "spoofed ARP sender MAC",
            DropReason::Protocol => "EtherType not allowed",
            DropReason::Malformed => "malformed ARP/IPv4 header",
            DropReason::FloodLimited => "flood rate limit",
        })
    }
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
}

impl Drops {
    /// All drops, whatever the reason.
    pub fn total(&self) -> u64 {
        self.spoofed
            + self.runt
            + self.bad_source
            + self.hairpin
            + self.queue_full
            + self.spoofed_ip
            + self.spoofed_arp_mac
            + self.protocol
            + self.malformed
            + self.flood_limited
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
    /// Floods a port may send back to back.
    pub flood_burst: u32,
    /// One more flood allowed per this many milliseconds once the burst is used (0: no limit).
    pub flood_period_ms: u64,
}

impl Default for Config {
    /// 256 learned MACs, 802.1D's 300 s aging time, and a 64 KiB budget per port (about 43
    /// full-size frames: enough to ride out a scheduling slice, small next to the domain's heap).
    /// Floods: 64 back to back, then 250 a second per port, far above what ARP and the odd
    /// unknown destination need, far below what a storm would cost every other port.
    fn default() -> Self {
        Config {
            table_capacity: 256,
            max_age_ms: 300_000,
            egress_budget: 64 * 1024,
            flood_burst: 64,
            flood_period_ms: 4,
        }
    }
}

/// Why a port could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortError {
    /// That port already exists.
    Exists,
    /// Guest id above [`MAX_GUEST_ID`].
    IdOutOfRange,
    /// The owner MAC is not a valid unicast source.
    BadOwnerMac,
    /// Another guest port already owns that MAC.
    OwnerMacInUse,
}

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortError::Exists => "port already exists",
            PortError::IdOutOfRange => "guest id out of range",
            PortError::BadOwnerMac => "owner MAC is not a unicast address",
            PortError::OwnerMacInUse => "owner MAC already used by another guest",
        })
    }
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
        }
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
            None => owners.contains_key(&src),
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
    /// success the frame counts as transmitted on the port; on failure it counts as a queue-full
    /// drop and the caller must not copy it. False for a missing port as well.
    pub fn try_reserve(&mut self, port: PortId, bytes: usize) -> bool {
        let Some(p) = self.port_mut(port) else {
            return false;
        };
        if bytes > p.budget.saturating_sub(p.queued) {
            p.counters.drops.queue_full += 1;
            return false;
        }
        p.queued += bytes;
        p.counters.tx_frames += 1;
        p.counters.tx_bytes += bytes as u64;
        true
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
             spoofip {} arpmac {} proto {} malformed {} floodlim {} queued {}/{}B",
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
            d.spoofed_ip,
            d.spoofed_arp_mac,
            d.protocol,
            d.malformed,
            d.flood_limited,
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
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const G1: PortId = PortId::Guest(1);
    const G2: PortId = PortId::Guest(2);
    const G3: PortId = PortId::Guest(3);
    const UP: PortId = PortId::Uplink;

    fn guest_mac(id: u8) -> MacAddr {
        MacAddr([0x02, 0x51, 0x55, 0x00, 0x00, id])
    }

    fn ext_mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, n])
    }

    const MCAST: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);

    fn frame(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len.max(ETH_HEADER_LEN)];
        f[0..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src.0);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f
    }

    fn set(ports: &[PortId]) -> PortSet {
        let mut s = PortSet::EMPTY;
        for &p in ports {
            s.insert(p);
        }
        s
    }

    /// Uplink plus guests 1..=3, each owning guest_mac(id).
    fn switch_with(config: Config) -> Switch {
        let mut sw = Switch::new(config);
        sw.add_uplink().unwrap();
        for id in 1..=3 {
            sw.add_guest(id, guest_mac(id as u8)).unwrap();
        }
        sw
    }

    fn switch() -> Switch {
        switch_with(Config::default())
    }

    #[test]
    fn mac_classes() {
        assert!(MacAddr::BROADCAST.is_multicast() && MacAddr::BROADCAST.is_broadcast());
        assert!(MCAST.is_multicast() && !MCAST.is_broadcast());
        assert!(guest_mac(1).is_valid_source());
        assert!(!MacAddr::ZERO.is_valid_source());
        assert!(!MCAST.is_valid_source());
        assert_eq!(guest_mac(10).to_string(), "02:51:55:00:00:0a");
    }

    #[test]
    fn forwarding_on_the_header_alone_counts_the_whole_frame() {
        let mut sw = switch();
        let f = frame(MacAddr::BROADCAST, guest_mac(1), 14);
        assert_eq!(
            sw.forward_header(G1, &f, 1514, 0),
            Forward::Flood(set(&[UP, G2, G3]))
        );
        let c = sw.counters(G1).unwrap();
        assert_eq!((c.rx_frames, c.rx_bytes), (1, 1514));
        // A frame_len below the header is a runt even if the header bytes are there.
        assert_eq!(
            sw.forward_header(G1, &f, 10, 0),
            Forward::Drop(DropReason::Runt)
        );
    }

    #[test]
    fn the_local_port_owns_the_nic_mac_against_guests_and_the_outside() {
        let mut sw = switch();
        let nic = ext_mac(1);
        assert_eq!(sw.add_local(nic), Ok(PortId::Local));
        assert_eq!(sw.add_local(nic), Err(PortError::Exists));
        assert_eq!(
            sw.add_guest(9, nic),
            Err(PortError::OwnerMacInUse),
            "a guest cannot take the driver domain's MAC"
        );
        // The outside reaches the local stack by its MAC; the local stack floods its ARP.
        let from_host = frame(nic, ext_mac(2), 60);
        assert_eq!(sw.forward(UP, &from_host, 0), Forward::One(PortId::Local));
        let arp = frame(MacAddr::BROADCAST, nic, 60);
        assert_eq!(
            sw.forward(PortId::Local, &arp, 0),
            Forward::Flood(set(&[UP, G1, G2, G3]))
        );
        // A guest sending as the driver domain is spoofing, and so is the outside.
        assert_eq!(
            sw.forward(G1, &frame(ext_mac(2), nic, 60), 0),
            Forward::Drop(DropReason::Spoofed)
        );
        assert_eq!(
            sw.forward(UP, &frame(guest_mac(1), nic, 60), 0),
            Forward::Drop(DropReason::Spoofed)
        );
        assert_eq!(PortId::Local.to_string(), "local");
    }

    #[test]
    fn port_set_iterates_uplink_first_then_guests_by_id() {
        let s = set(&[PortId::Guest(63), G2, UP, PortId::Guest(0)]);
        let v: Vec<PortId> = s.into_iter().collect();
        assert_eq!(v, [UP, PortId::Guest(0), G2, PortId::Guest(63)]);
        assert_eq!(s.len(), 4);
        assert!(s.contains(PortId::Guest(63)) && !s.contains(G1));
        assert!(!s.contains(PortId::Guest(64)));
        assert!(PortSet::single(PortId::Guest(64)).is_empty());
    }

    #[test]
    fn add_port_errors() {
        let mut sw = switch();
        assert_eq!(sw.add_uplink(), Err(PortError::Exists));
        assert_eq!(sw.add_guest(1, guest_mac(9)), Err(PortError::Exists));
        assert_eq!(
            sw.add_guest(MAX_GUEST_ID + 1, guest_mac(9)),
            Err(PortError::IdOutOfRange)
        );
        assert_eq!(sw.add_guest(9, MCAST), Err(PortError::BadOwnerMac));
        assert_eq!(sw.add_guest(9, MacAddr::ZERO), Err(PortError::BadOwnerMac));
        assert_eq!(sw.add_guest(9, guest_mac(2)), Err(PortError::OwnerMacInUse));
        assert_eq!(
            sw.add_guest(MAX_GUEST_ID, guest_mac(9)),
            Ok(PortId::Guest(MAX_GUEST_ID))
        );
        assert_eq!(sw.ports().len(), 5);
        assert_eq!(sw.owner(G2), Some(guest_mac(2)));
        assert_eq!(sw.owner(UP), None);
    }

    #[test]
    fn learns_uplink_sources_and_forwards_known_unicast() {
        let mut sw = switch();
        let a = ext_mac(1);
        // Unknown yet: floods to every other port.
        assert_eq!(
            sw.forward(G1, &frame(a, guest_mac(1), 60), 0),
            Forward::Flood(set(&[UP, G2, G3]))
        );
        assert_eq!(sw.lookup(a, 0), None);
        // a answers from outside: learned on the uplink, delivered to guest 1 only.
        assert_eq!(
            sw.forward(UP, &frame(guest_mac(1), a, 60), 1),
            Forward::One(G1)
        );
        assert_eq!(sw.lookup(a, 1), Some(UP));
        assert_eq!(sw.learned_len(), 1);
        // Now known: to the uplink only.
        assert_eq!(
            sw.forward(G1, &frame(a, guest_mac(1), 60), 2),
            Forward::One(UP)
        );
        assert_eq!(
            sw.forward(G3, &frame(a, guest_mac(3), 60), 2),
            Forward::One(UP)
        );
    }

    #[test]
    fn guest_macs_are_known_without_learning() {
        let mut sw = switch();
        assert_eq!(
            sw.forward(G1, &frame(guest_mac(2), guest_mac(1), 60), 0),
            Forward::One(G2)
        );
        assert_eq!(
            sw.forward(UP, &frame(guest_mac(3), ext_mac(1), 60), 0),
            Forward::One(G3)
        );
        // Owner MACs are static entries, not learned ones.
        assert_eq!(sw.learned_len(), 1);
        assert_eq!(sw.lookup(guest_mac(2), u64::MAX), Some(G2));
    }

    #[test]
    fn floods_broadcast_multicast_and_unknown_unicast() {
        let mut sw = switch();
        let others = Forward::Flood(set(&[UP, G1, G3]));
        let src = guest_mac(2);
        assert_eq!(
            sw.forward(G2, &frame(MacAddr::BROADCAST, src, 42), 0),
            others
        );
        assert_eq!(sw.forward(G2, &frame(MCAST, src, 42), 0), others);
        assert_eq!(sw.forward(G2, &frame(ext_mac(7), src, 42), 0), others);
        assert_eq!(sw.counters(G2).unwrap().flooded, 3);
        // From the uplink: to every guest.
        assert_eq!(
            sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(1), 42), 0),
            Forward::Flood(set(&[G1, G2, G3]))
        );
        // A multicast destination floods even if it was somehow in the table.
        assert_eq!(sw.lookup(MCAST, 0), None);
        // A lone port floods to nobody.
        let mut lone = Switch::new(Config::default());
        lone.add_guest(1, guest_mac(1)).unwrap();
        let f = lone.forward(G1, &frame(MacAddr::BROADCAST, guest_mac(1), 60), 0);
        assert_eq!(f, Forward::Flood(PortSet::EMPTY));
        assert!(f.destinations().is_empty());
    }

    #[test]
    fn never_hairpins() {
        let mut sw = switch();
        // A guest sending to itself.
        assert_eq!(
            sw.forward(G1, &frame(guest_mac(1), guest_mac(1), 60), 0),
            Forward::Drop(DropReason::Hairpin)
        );
        assert_eq!(sw.counters(G1).unwrap().drops.hairpin, 1);
        // Two outside hosts talking past us: the destination is behind the uplink already.
        sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(1), 60), 0);
        assert_eq!(
            sw.forward(UP, &frame(ext_mac(1), ext_mac(2), 60), 1),
            Forward::Drop(DropReason::Hairpin)
        );
        assert_eq!(sw.counters(UP).unwrap().drops.hairpin, 1);
        // Floods leave out the ingress port.
        let f = sw.forward(G3, &frame(MacAddr::BROADCAST, guest_mac(3), 60), 1);
        assert!(!f.destinations().contains(G3));
    }

    #[test]
    fn spoofed_guest_source_is_dropped_and_counted() {
        let mut sw = switch();
        let bcast = MacAddr::BROADCAST;
        assert_eq!(
            sw.forward(G1, &frame(bcast, ext_mac(5), 60), 0),
            Forward::Drop(DropReason::Spoofed)
        );
        assert_eq!(
            sw.forward(G1, &frame(guest_mac(3), guest_mac(2), 60), 0),
            Forward::Drop(DropReason::Spoofed)
        );
        let c = sw.counters(G1).unwrap();
        assert_eq!(c.drops.spoofed, 2);
        assert_eq!(c.rx_frames, 2);
        assert_eq!(c.flooded, 0);
        // Nothing was learned from the spoofed frames.
        assert_eq!(sw.lookup(ext_mac(5), 0), None);
        assert_eq!(sw.lookup(guest_mac(2), 0), Some(G2));
        assert_eq!(sw.learned_len(), 0);
    }

    #[test]
    fn owner_mac_cannot_be_stolen() {
        let mut sw = switch();
        // By the uplink: dropped, not learned.
        assert_eq!(
            sw.forward(UP, &frame(MacAddr::BROADCAST, guest_mac(1), 60), 0),
            Forward::Drop(DropReason::Spoofed)
        );
        assert_eq!(sw.counters(UP).unwrap().drops.spoofed, 1);
        assert_eq!(sw.lookup(guest_mac(1), 0), Some(G1));
        // By another guest: dropped, not learned.
        assert_eq!(
            sw.forward(G2, &frame(ext_mac(1), guest_mac(1), 60), 0),
            Forward::Drop(DropReason::Spoofed)
        );
        assert_eq!(sw.lookup(guest_mac(1), 0), Some(G1));
        // Not even through the learning path itself.
        sw.learn(guest_mac(1), UP, 1);
        assert_eq!(sw.lookup(guest_mac(1), 1), Some(G1));
        // Frames for guest 1 still go to guest 1.
        assert_eq!(
            sw.forward(G2, &frame(guest_mac(1), guest_mac(2), 60), 2),
            Forward::One(G1)
        );
    }

    #[test]
    fn new_guest_takes_over_a_mac_learned_on_the_uplink() {
        let mut sw = switch();
        let m = guest_mac(9);
        sw.forward(UP, &frame(MacAddr::BROADCAST, m, 60), 0);
        assert_eq!(sw.lookup(m, 0), Some(UP));
        sw.add_guest(9, m).unwrap();
        assert_eq!(sw.lookup(m, 0), Some(PortId::Guest(9)));
        assert_eq!(sw.learned_len(), 0);
        assert_eq!(
            sw.forward(UP, &frame(MacAddr::BROADCAST, m, 60), 1),
            Forward::Drop(DropReason::Spoofed)
        );
    }

    #[test]
    fn learned_mac_moves_port() {
        let mut sw = switch();
        let m = ext_mac(1);
        sw.learn(m, G1, 0);
        assert_eq!(sw.lookup(m, 0), Some(G1));
        sw.learn(m, UP, 1);
        assert_eq!(sw.lookup(m, 1), Some(UP));
        assert_eq!(sw.learned_len(), 1);
    }

    #[test]
    fn bad_sources_are_dropped() {
        let mut sw = switch();
        for src in [MacAddr::BROADCAST, MCAST, MacAddr::ZERO] {
            for port in [UP, G1] {
                assert_eq!(
                    sw.forward(port, &frame(guest_mac(2), src, 60), 0),
                    Forward::Drop(DropReason::BadSource)
                );
            }
        }
        assert_eq!(sw.counters(UP).unwrap().drops.bad_source, 3);
        assert_eq!(sw.counters(G1).unwrap().drops.bad_source, 3);
        assert_eq!(sw.learned_len(), 0);
    }

    #[test]
    fn runts_are_dropped() {
        let mut sw = switch();
        let full = frame(MacAddr::BROADCAST, guest_mac(1), ETH_HEADER_LEN);
        for len in [0, 1, ETH_HEADER_LEN - 1] {
            assert_eq!(
                sw.forward(G1, &full[..len], 0),
                Forward::Drop(DropReason::Runt)
            );
        }
        // A bare header is enough.
        assert!(matches!(sw.forward(G1, &full, 0), Forward::Flood(_)));
        let c = sw.counters(G1).unwrap();
        assert_eq!(c.drops.runt, 3);
        assert_eq!(c.rx_frames, 4);
        assert_eq!(c.rx_bytes, (1 + 13 + 14) as u64);
    }

    #[test]
    fn unknown_ingress_port_is_dropped() {
        let mut sw = switch();
        let f = frame(MacAddr::BROADCAST, guest_mac(7), 60);
        assert_eq!(
            sw.forward(PortId::Guest(7), &f, 0),
            Forward::Drop(DropReason::UnknownPort)
        );
        assert_eq!(
            sw.forward(PortId::Guest(500), &f, 0),
            Forward::Drop(DropReason::UnknownPort)
        );
    }

    #[test]
    fn removing_a_port_forgets_its_macs() {
        let mut sw = switch();
        sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(1), 60), 0);
        sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(2), 60), 0);
        sw.learn(ext_mac(3), G2, 0);
        assert_eq!(sw.learned_len(), 3);

        assert!(sw.remove_port(G2));
        assert!(!sw.remove_port(G2));
        assert_eq!(sw.lookup(guest_mac(2), 0), None);
        assert_eq!(sw.lookup(ext_mac(3), 0), None);
        assert_eq!(sw.learned_len(), 2);
        assert_eq!(sw.counters(G2), None);
        // Frames for it now flood among the remaining ports.
        assert_eq!(
            sw.forward(G1, &frame(guest_mac(2), guest_mac(1), 60), 1),
            Forward::Flood(set(&[UP, G3]))
        );
        assert_eq!(
            sw.forward(G2, &frame(guest_mac(1), guest_mac(2), 60), 1),
            Forward::Drop(DropReason::UnknownPort)
        );

        assert!(sw.remove_port(UP));
        assert_eq!(sw.lookup(ext_mac(1), 1), None);
        assert_eq!(sw.learned_len(), 0);

        // The id and the MAC are free again, with fresh counters.
        sw.add_guest(2, guest_mac(22)).unwrap();
        sw.add_guest(4, guest_mac(2)).unwrap();
        assert_eq!(sw.lookup(guest_mac(2), 1), Some(PortId::Guest(4)));
        assert_eq!(sw.counters(G2), Some(PortCounters::default()));
    }

    #[test]
    fn table_is_bounded_and_evicts_the_oldest() {
        let mut sw = switch_with(Config {
            table_capacity: 4,
            ..Config::default()
        });
        for n in 0..4u8 {
            sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(n), 60), n as u64);
        }
        assert_eq!(sw.learned_len(), 4);
        // Refresh the oldest, so ext_mac(1) becomes the oldest.
        sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(0), 60), 10);
        sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(4), 60), 11);
        assert_eq!(sw.learned_len(), 4);
        assert_eq!(sw.lookup(ext_mac(1), 11), None);
        for n in [0, 2, 3, 4] {
            assert_eq!(sw.lookup(ext_mac(n), 11), Some(UP), "{n}");
        }
        for n in 5..100u8 {
            sw.forward(
                UP,
                &frame(MacAddr::BROADCAST, ext_mac(n), 60),
                12 + n as u64,
            );
            assert!(sw.learned_len() <= 4);
        }
        // Owner MACs are not in the bound and never evicted.
        for id in 1..=3 {
            assert_eq!(
                sw.lookup(guest_mac(id), 1000),
                Some(PortId::Guest(id as u16))
            );
        }
        // Zero capacity: nothing is learned, everything unknown floods.
        let mut none = switch_with(Config {
            table_capacity: 0,
            ..Config::default()
        });
        none.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(1), 60), 0);
        assert_eq!(none.learned_len(), 0);
        assert!(matches!(
            none.forward(G1, &frame(ext_mac(1), guest_mac(1), 60), 0),
            Forward::Flood(_)
        ));
    }

    #[test]
    fn learned_macs_age_out() {
        let mut sw = switch_with(Config {
            table_capacity: 2,
            max_age_ms: 1000,
            ..Config::default()
        });
        let a = ext_mac(1);
        sw.forward(UP, &frame(MacAddr::BROADCAST, a, 60), 0);
        assert_eq!(sw.lookup(a, 1000), Some(UP));
        assert_eq!(sw.lookup(a, 1001), None);
        assert_eq!(
            sw.forward(G1, &frame(a, guest_mac(1), 60), 1001),
            Forward::Flood(set(&[UP, G2, G3]))
        );
        // Seen again: known again.
        sw.forward(UP, &frame(MacAddr::BROADCAST, a, 60), 1500);
        assert_eq!(sw.lookup(a, 2400), Some(UP));
        // A clock running backwards does not age anything.
        assert_eq!(sw.lookup(a, 0), Some(UP));
        assert_eq!(sw.expire(2400), 0);
        assert_eq!(sw.expire(2501), 1);
        assert_eq!(sw.learned_len(), 0);

        // When full, expired entries go before live ones, however old.
        sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(1), 60), 3000);
        sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(2), 60), 4500);
        sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(3), 60), 4600);
        assert_eq!(sw.learned_len(), 2);
        assert_eq!(sw.lookup(ext_mac(2), 4600), Some(UP));
        assert_eq!(sw.lookup(ext_mac(3), 4600), Some(UP));
    }

    #[test]
    fn egress_budget_bounds_queued_bytes() {
        let mut sw = switch_with(Config {
            egress_budget: 3000,
            ..Config::default()
        });
        assert!(sw.try_reserve(G1, 1500));
        assert!(sw.try_reserve(G1, 1500));
        assert!(!sw.try_reserve(G1, 1));
        assert_eq!(sw.queued(G1), Some(3000));
        // Other ports have their own budget.
        assert!(sw.try_reserve(G2, 3000));
        sw.release(G1, 1500);
        assert!(sw.try_reserve(G1, 1000));
        assert!(!sw.try_reserve(G1, 501));
        assert!(sw.try_reserve(G1, 500));
        let c = sw.counters(G1).unwrap();
        assert_eq!(c.drops.queue_full, 2);
        assert_eq!(c.tx_frames, 4);
        assert_eq!(c.tx_bytes, 4500);
        // Over-release cannot buy extra room.
        sw.release(G1, 1_000_000);
        assert_eq!(sw.queued(G1), Some(0));
        assert!(!sw.try_reserve(G1, 3001));
        // Lowering the budget below the queue refuses until enough is released.
        assert!(sw.try_reserve(G1, 2000));
        assert!(sw.set_egress_budget(G1, 1000));
        assert_eq!(sw.egress_budget(G1), Some(1000));
        assert!(!sw.try_reserve(G1, 1));
        sw.release(G1, 1500);
        assert!(sw.try_reserve(G1, 500));
        // Missing ports.
        assert!(!sw.try_reserve(PortId::Guest(9), 1));
        assert!(!sw.set_egress_budget(PortId::Guest(9), 1));
        sw.release(PortId::Guest(9), 1);
    }

    #[test]
    fn counters_and_summary() {
        let mut sw = switch();
        fn deliver(sw: &mut Switch, ingress: PortId, f: &[u8]) {
            for dst in sw.forward(ingress, f, 0).destinations() {
                assert!(sw.try_reserve(dst, f.len()));
            }
        }
        deliver(&mut sw, G1, &frame(MacAddr::BROADCAST, guest_mac(1), 100));
        deliver(&mut sw, G1, &frame(guest_mac(2), guest_mac(1), 200));
        deliver(&mut sw, UP, &frame(guest_mac(2), ext_mac(1), 300));
        deliver(&mut sw, G2, &frame(ext_mac(1), guest_mac(2), 400));
        deliver(&mut sw, G2, &frame(ext_mac(1), ext_mac(1), 50));
        deliver(&mut sw, G3, &[0; 10]);

        let g1 = sw.counters(G1).unwrap();
        assert_eq!((g1.rx_frames, g1.rx_bytes, g1.flooded), (2, 300, 1));
        assert_eq!((g1.tx_frames, g1.tx_bytes), (0, 0));
        let g2 = sw.counters(G2).unwrap();
        assert_eq!((g2.rx_frames, g2.rx_bytes, g2.drops.spoofed), (2, 450, 1));
        assert_eq!((g2.tx_frames, g2.tx_bytes), (3, 600));
        let g3 = sw.counters(G3).unwrap();
        assert_eq!((g3.rx_frames, g3.drops.runt, g3.tx_frames), (1, 1, 1));
        let up = sw.counters(UP).unwrap();
        assert_eq!((up.rx_frames, up.tx_frames, up.tx_bytes), (1, 2, 500));
        assert_eq!(g2.drops.total(), 1);

        let text = sw.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 4, "{text}");
        assert_eq!(lines[0], "switch: 4 port(s), 1/256 learned MAC(s)");
        assert!(
            lines[1].starts_with("uplink   -                 rx 1/300B tx 2/500B"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("guest 2  02:51:55:00:00:02 rx 2/450B tx 3/600B"),
            "{text}"
        );
        assert!(lines[3].contains("spoofed 1 "), "{text}");
        assert!(lines[4].contains("runt 1 "), "{text}");
        assert!(lines[4].ends_with("queued 100/65536B"), "{text}");
        assert_eq!(sw.port_summary(G1).unwrap().to_string(), lines[2]);
        assert!(sw.port_summary(PortId::Guest(9)).is_none());
    }

    /// xorshift64: deterministic, so a failure replays exactly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    #[derive(Default, Clone, Copy)]
    struct Shadow {
        rx: u64,
        forwarded: u64,
        tx: u64,
    }

    /// Thousands of random frames, port churn, and random reservations and releases, checking the
    /// switch's promises after every step.
    const IP1: [u8; 4] = [10, 0, 2, 16];
    const IP2: [u8; 4] = [10, 0, 2, 17];

    /// An ARP frame from `src` with sender `sha`/`spa` (a request for `tpa`).
    fn arp(src: MacAddr, sha: MacAddr, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        let mut f = frame(MacAddr::BROADCAST, src, IDENTITY_HEADER_LEN);
        f[12..14].copy_from_slice(&ETHERTYPE_ARP);
        f[14..20].copy_from_slice(&ARP_IPV4_ETHERNET);
        f[20..22].copy_from_slice(&[0, 1]);
        f[22..28].copy_from_slice(&sha.0);
        f[28..32].copy_from_slice(&spa);
        f[38..42].copy_from_slice(&tpa);
        f
    }

    /// An IPv4 frame (header only) from `src`, address `from`, to `dst`.
    fn ipv4(dst: MacAddr, src: MacAddr, from: [u8; 4]) -> Vec<u8> {
        let mut f = frame(dst, src, ETH_HEADER_LEN + IPV4_MIN_HEADER + 8);
        f[14] = 0x45;
        f[26..30].copy_from_slice(&from);
        f[30..34].copy_from_slice(&IP2);
        f
    }

    /// Uplink, guest 1 held to (guest_mac(1), IP1), guest 2 to (guest_mac(2), IP2), guest 3
    /// to guest_mac(3) and no address.
    fn identity_switch() -> Switch {
        let mut sw = Switch::new(Config::default());
        sw.add_uplink().unwrap();
        sw.add_guest_with_ip(1, guest_mac(1), Some(IP1)).unwrap();
        sw.add_guest_with_ip(2, guest_mac(2), Some(IP2)).unwrap();
        sw.add_guest_with_ip(3, guest_mac(3), None).unwrap();
        sw
    }

    #[test]
    fn guests_send_arp_and_ipv4_only_as_themselves() {
        let mut sw = identity_switch();
        let (m1, m2) = (guest_mac(1), guest_mac(2));
        let gateway = [10, 0, 2, 2];
        // Their own identity passes.
        let own_arp = arp(m1, m1, IP1, IP2);
        assert_eq!(
            sw.forward(G1, &own_arp, 0),
            Forward::Flood(set(&[UP, G2, G3]))
        );
        assert_eq!(sw.forward(G1, &ipv4(m2, m1, IP1), 0), Forward::One(G2));
        // The gateway's or another guest's address, as ARP sender or IPv4 source.
        let cases = [
            (arp(m1, m1, gateway, IP2), DropReason::SpoofedIp),
            (arp(m1, m1, IP2, IP2), DropReason::SpoofedIp),
            (arp(m1, m1, [0; 4], IP2), DropReason::SpoofedIp),
            (ipv4(m2, m1, IP2), DropReason::SpoofedIp),
            (ipv4(m2, m1, gateway), DropReason::SpoofedIp),
            // Its own address with another sender MAC inside the ARP body.
            (arp(m1, m2, IP1, IP2), DropReason::SpoofedArpMac),
            (arp(m1, ext_mac(1), IP1, IP2), DropReason::SpoofedArpMac),
        ];
        for (f, reason) in &cases {
            assert_eq!(sw.forward(G1, f, 0), Forward::Drop(*reason), "{f:02x?}");
        }
        // Other protocols (IPv6, a VLAN tag that could hide an ARP) and headers too short or
        // not for IPv4 over Ethernet to check.
        let mut ipv6 = ipv4(m2, m1, IP1);
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        let mut vlan = arp(m1, m1, IP2, IP2);
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        let mut short_arp = arp(m1, m1, IP1, IP2);
        short_arp.truncate(ETH_HEADER_LEN + 20);
        let mut arp_for_ipv6 = arp(m1, m1, IP1, IP2);
        arp_for_ipv6[16..18].copy_from_slice(&[0x86, 0xdd]);
        let mut not_v4 = ipv4(m2, m1, IP1);
        not_v4[14] = 0x65;
        let mut short_ip = ipv4(m2, m1, IP1);
        short_ip.truncate(ETH_HEADER_LEN + 19);
        for (f, reason) in [
            (ipv6, DropReason::Protocol),
            (vlan, DropReason::Protocol),
            (short_arp, DropReason::Malformed),
            (arp_for_ipv6, DropReason::Malformed),
            (not_v4, DropReason::Malformed),
            (short_ip, DropReason::Malformed),
        ] {
            assert_eq!(sw.forward(G1, &f, 0), Forward::Drop(reason), "{reason}");
        }
        let d = sw.counters(G1).unwrap().drops;
        assert_eq!((d.spoofed_ip, d.spoofed_arp_mac), (5, 2));
        assert_eq!((d.protocol, d.malformed, d.spoofed), (2, 4, 0));
        // A guest without an address sends neither ARP nor IPv4, even "its own".
        assert_eq!(
            sw.forward(G3, &arp(guest_mac(3), guest_mac(3), IP1, IP2), 0),
            Forward::Drop(DropReason::SpoofedIp)
        );
        assert_eq!(
            sw.forward(G3, &ipv4(m1, guest_mac(3), [0; 4]), 0),
            Forward::Drop(DropReason::SpoofedIp)
        );
        // The uplink and a guest added by MAC alone are not held to addresses.
        assert_eq!(
            sw.forward(UP, &ipv4(m1, ext_mac(1), IP2), 0),
            Forward::One(G1)
        );
        let summary = sw.port_summary(G1).unwrap().to_string();
        assert!(
            summary.contains("spoofip 5 arpmac 2 proto 2 malformed 4"),
            "{summary}"
        );
    }

    #[test]
    fn the_identity_check_reads_only_the_header_it_is_given() {
        let (m1, m2) = (guest_mac(1), guest_mac(2));
        let f = arp(m1, m1, IP1, IP2);
        // The caller's copy of the header decides, whatever the rest of the frame holds.
        assert_eq!(
            check_identity(m1, Some(IP1), &f[..IDENTITY_HEADER_LEN], 1500),
            Ok(())
        );
        // A frame that ends before the ARP body is malformed even if the buffer is longer.
        assert_eq!(
            check_identity(m1, Some(IP1), &f, ETH_HEADER_LEN + 10),
            Err(DropReason::Malformed)
        );
        let ip = ipv4(m2, m1, IP1);
        assert_eq!(check_identity(m1, Some(IP1), &ip[..34], 34), Ok(()));
        assert_eq!(
            check_identity(m1, Some(IP1), &ip[..12], 12),
            Err(DropReason::Runt)
        );
    }

    #[test]
    fn drops_are_logged_at_powers_of_ten() {
        let logged: Vec<u64> = (0..=20_000).filter(|&n| worth_logging(n)).collect();
        assert_eq!(logged, [1, 10, 100, 1_000, 10_000]);
        assert!(worth_logging(10u64.pow(19)));
        let mut d = Drops::default();
        d.count(DropReason::SpoofedIp);
        d.count(DropReason::SpoofedIp);
        d.count(DropReason::FloodLimited);
        assert_eq!(d.of(DropReason::SpoofedIp), 2);
        assert_eq!(d.of(DropReason::FloodLimited), 1);
        assert_eq!(d.of(DropReason::Runt), 0);
        assert_eq!(d.of(DropReason::UnknownPort), 0);
    }

    #[test]
    fn floods_are_rate_limited_per_ingress_port() {
        let mut sw = Switch::new(Config {
            flood_burst: 4,
            flood_period_ms: 100,
            ..Config::default()
        });
        sw.add_uplink().unwrap();
        for id in 1..=2 {
            sw.add_guest(id, guest_mac(id as u8)).unwrap();
        }
        let storm = frame(MacAddr::BROADCAST, guest_mac(1), 60);
        let verdicts: Vec<Forward> = (0..10).map(|_| sw.forward(G1, &storm, 1_000)).collect();
        assert!(verdicts[..4].iter().all(|v| matches!(v, Forward::Flood(_))));
        assert!(verdicts[4..]
            .iter()
            .all(|v| *v == Forward::Drop(DropReason::FloodLimited)));
        // Known unicast is not a flood and is not limited.
        sw.forward(G2, &frame(guest_mac(1), guest_mac(2), 60), 1_000);
        assert_eq!(
            sw.forward(G1, &frame(guest_mac(2), guest_mac(1), 60), 1_000),
            Forward::One(G2)
        );
        // Another port's budget is its own.
        let other = frame(MacAddr::BROADCAST, guest_mac(2), 60);
        assert!(matches!(sw.forward(G2, &other, 1_000), Forward::Flood(_)));
        // Unknown unicast counts as a flood too; one more is allowed a period later.
        let unknown = frame(ext_mac(9), guest_mac(1), 60);
        assert_eq!(
            sw.forward(G1, &unknown, 1_050),
            Forward::Drop(DropReason::FloodLimited)
        );
        assert!(matches!(sw.forward(G1, &unknown, 1_100), Forward::Flood(_)));
        let c = sw.counters(G1).unwrap();
        assert_eq!((c.flooded, c.drops.flood_limited), (5, 7));
        assert!(sw
            .port_summary(G1)
            .unwrap()
            .to_string()
            .contains("floodlim 7"));
    }

    #[test]
    fn random_traffic_keeps_invariants() {
        const CAPACITY: usize = 16;
        const BUDGET: usize = 8 * 1514;
        const GUESTS: u16 = 6;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut sw = Switch::new(Config {
            table_capacity: CAPACITY,
            max_age_ms: 5_000,
            egress_budget: BUDGET,
            // Floods are counted below as forwarded: no limit here (tested on its own).
            flood_burst: 0,
            flood_period_ms: 0,
        });
        let all: Vec<PortId> = core::iter::once(UP)
            .chain((1..=GUESTS).map(PortId::Guest))
            .collect();
        let slot = |p: PortId| p.slot().unwrap();
        let mut generation = 0u8;
        let mut shadow = [Shadow::default(); SLOTS];
        let mut inflight: VecDeque<(PortId, usize)> = VecDeque::new();
        for &p in &all {
            match p {
                PortId::Uplink => sw.add_uplink().unwrap(),
                PortId::Local => sw.add_local(ext_mac(200)).unwrap(),
                PortId::Guest(id) => sw.add_guest(id, guest_mac(id as u8)).unwrap(),
            };
        }
        let outside: Vec<MacAddr> = (0..40).map(ext_mac).collect();
        let mut now = 0u64;
        let (mut delivered, mut flooded, mut dropped) = (0u64, 0u64, 0u64);

        for step in 0..50_000 {
            now += rng.below(40);

            // Port churn: remove a port, or bring a missing one back (a guest with a new MAC).
            if rng.chance(1) {
                let p = all[rng.below(all.len() as u64) as usize];
                if sw.ports().contains(p) {
                    assert!(sw.remove_port(p));
                    inflight.retain(|&(q, _)| q != p);
                    shadow[slot(p)] = Shadow::default();
                } else {
                    generation = generation.wrapping_add(1);
                    match p {
                        PortId::Uplink => sw.add_uplink().unwrap(),
                        PortId::Local => sw.add_local(ext_mac(200)).unwrap(),
                        PortId::Guest(id) => sw
                            .add_guest(id, MacAddr([0x02, 0x51, 0x55, 0x01, generation, id as u8]))
                            .unwrap(),
                    };
                }
            }
            let owners: Vec<(PortId, MacAddr)> = sw
                .ports()
                .into_iter()
                .filter_map(|p| sw.owner(p).map(|m| (p, m)))
                .collect();
            let any_owner = |rng: &mut Rng| match owners.len() {
                0 => guest_mac(1),
                n => owners[rng.below(n as u64) as usize].1,
            };

            let ingress = all[rng.below(all.len() as u64) as usize];
            let src = match rng.below(20) {
                0..=9 => sw
                    .owner(ingress)
                    .unwrap_or_else(|| outside[rng.below(40) as usize]),
                10..=12 => outside[rng.below(40) as usize],
                13..=14 => any_owner(&mut rng),
                15 => MacAddr::BROADCAST,
                16 => MCAST,
                17 => MacAddr::ZERO,
                _ => {
                    let mut m = [0u8; 6];
                    m.iter_mut().for_each(|b| *b = rng.next() as u8);
                    MacAddr(m)
                }
            };
            let dst = match rng.below(10) {
                0 => MacAddr::BROADCAST,
                1 => MCAST,
                2..=5 => any_owner(&mut rng),
                6..=8 => outside[rng.below(40) as usize],
                _ => MacAddr(rng.next().to_le_bytes()[..6].try_into().unwrap()),
            };
            let len = if rng.chance(5) {
                rng.below(ETH_HEADER_LEN as u64) as usize
            } else {
                ETH_HEADER_LEN + rng.below(1500) as usize
            };
            let mut f = frame(dst, src, len);
            f.truncate(len);

            let present = sw.ports();
            let fwd = sw.forward(ingress, &f, now);
            let dests = fwd.destinations();
            let ctx = || std::format!("step {step}: {ingress} {src} -> {dst} len {len}: {fwd:?}");

            // Never back out of the ingress port, never to a missing port.
            assert!(!dests.contains(ingress), "{}", ctx());
            assert!(dests.iter().all(|d| present.contains(d)), "{}", ctx());
            // The table stays bounded and owner MACs stay where they belong.
            assert!(sw.learned_len() <= CAPACITY, "{}", ctx());
            for &(p, m) in &owners {
                assert_eq!(sw.lookup(m, now), Some(p), "{}", ctx());
            }
            if present.contains(ingress) {
                shadow[slot(ingress)].rx += 1;
            }
            match fwd {
                Forward::Drop(reason) => {
                    dropped += 1;
                    match reason {
                        DropReason::UnknownPort => assert!(!present.contains(ingress)),
                        DropReason::Runt => assert!(len < ETH_HEADER_LEN),
                        DropReason::BadSource => assert!(!src.is_valid_source()),
                        DropReason::Spoofed => assert!(match sw.owner(ingress) {
                            Some(own) => src != own,
                            None => owners.iter().any(|&(_, m)| m == src),
                        }),
                        DropReason::Hairpin => assert_eq!(sw.lookup(dst, now), Some(ingress)),
                        // Ports here have no identity filter and no flood limit.
                        other => panic!("unexpected drop: {other}"),
                    }
                    continue;
                }
                Forward::One(p) => {
                    assert!(!dst.is_multicast(), "{}", ctx());
                    assert_eq!(sw.lookup(dst, now), Some(p), "{}", ctx());
                    delivered += 1;
                }
                Forward::Flood(set) => {
                    assert_eq!(set, present.without(ingress), "{}", ctx());
                    assert!(
                        dst.is_multicast() || sw.lookup(dst, now).is_none(),
                        "{}",
                        ctx()
                    );
                    flooded += 1;
                }
            }
            shadow[slot(ingress)].forwarded += 1;
            // Whatever got through has a well-formed header and an honest source.
            assert!(len >= ETH_HEADER_LEN && src.is_valid_source(), "{}", ctx());
            match sw.owner(ingress) {
                Some(own) => assert_eq!(src, own, "{}", ctx()),
                None => assert!(owners.iter().all(|&(_, m)| m != src), "{}", ctx()),
            }
            // A known owner destination goes to its owner and nowhere else.
            if let Some(&(p, _)) = owners.iter().find(|&&(_, m)| m == dst) {
                assert_eq!(fwd, Forward::One(p), "{}", ctx());
            }

            for d in dests {
                if sw.try_reserve(d, len) {
                    inflight.push_back((d, len));
                    shadow[slot(d)].tx += 1;
                }
            }
            // Drain at a random pace, sometimes not at all, so budgets fill up.
            for _ in 0..rng.below(3) {
                if let Some((p, n)) = inflight.pop_front() {
                    sw.release(p, n);
                }
            }
            for p in sw.ports() {
                let queued: usize = inflight
                    .iter()
                    .filter(|&&(q, _)| q == p)
                    .map(|&(_, n)| n)
                    .sum();
                assert_eq!(sw.queued(p), Some(queued), "{}", ctx());
                assert!(queued <= BUDGET, "{}", ctx());
            }
        }

        // Every frame is accounted for on its ingress port.
        for p in sw.ports() {
            let c = sw.counters(p).unwrap();
            let s = shadow[slot(p)];
            let d = c.drops;
            assert_eq!(c.rx_frames, s.rx, "{p}");
            assert_eq!(
                c.rx_frames,
                s.forwarded + d.spoofed + d.runt + d.bad_source + d.hairpin,
                "{p}"
            );
            assert_eq!(c.tx_frames, s.tx, "{p}");
        }
        // The mix exercised every path.
        assert!(delivered > 1000 && flooded > 1000 && dropped > 1000);
        let totals = sw
            .ports()
            .into_iter()
            .map(|p| sw.counters(p).unwrap().drops)
            .fold(Drops::default(), |a, d| Drops {
                spoofed: a.spoofed + d.spoofed,
                runt: a.runt + d.runt,
                bad_source: a.bad_source + d.bad_source,
                hairpin: a.hairpin + d.hairpin,
                queue_full: a.queue_full + d.queue_full,
                ..Drops::default()
            });
        assert!(totals.spoofed > 0 && totals.runt > 0 && totals.bad_source > 0);
        assert!(totals.hairpin > 0 && totals.queue_full > 0, "{totals:?}");
    }
}
