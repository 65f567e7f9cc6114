//! Connection handshake: the per-connection control page and its Xen-style state machine.
//!
//! For every front-end/back-end pair the hypervisor allocates one 4 KiB control page, writes the
//! header, preallocates a bound pair of event-channel ports (one per side) that mean "the control
//! page changed", and maps the page into both VMs. Each side then writes only its own section. This
//! module owns the page layout, encoding and validation of each part, the allowed state transitions
//! ([`transition_allowed`]) and the reaction of each side to its peer ([`next_state`]).
//!
//! # Layout, version 1 (little-endian; reserved bytes are zero)
//!
//! Each part sits in its own 64-byte cache line, so the two writers never share a line.
//!
//! | offset | size | field                                            | written by  |
//! |-------:|-----:|--------------------------------------------------|-------------|
//! |      0 |    8 | magic `b"SLCTRL\0\0"`                            | hypervisor  |
//! |      8 |    4 | version, `1`                                     | hypervisor  |
//! |     12 |    2 | front-end VM id                                  | hypervisor  |
//! |     14 |    2 | back-end VM id                                   | hypervisor  |
//! |     16 |    4 | front-end control port (in the front-end's table)| hypervisor  |
//! |     20 |    4 | back-end control port (in the back-end's table)  | hypervisor  |
//! |  24-63 |      | reserved                                         |             |
//! |     64 |    4 | front-end state                                  | front-end   |
//! |     68 |    4 | tx ring grant ref                                | front-end   |
//! |     72 |    4 | rx ring grant ref                                | front-end   |
//! |     76 |    4 | buffer pool: first grant ref                     | front-end   |
//! |     80 |    4 | buffer pool: ref count                           | front-end   |
//! |     84 |    4 | data event port (front-end's, unbound for back-end) | front-end |
//! |     88 |    6 | MAC it asks for (zero: "assign one")             | front-end   |
//! |  94-95 |      | reserved                                         |             |
//! |     96 |    8 | feature bits                                     | front-end   |
//! | 104-127|      | reserved                                         |             |
//! |    128 |    4 | back-end state                                   | back-end    |
//! |132-135 |      | reserved                                         |             |
//! |    136 |    8 | feature bits (accepted subset)                   | back-end    |
//! |    144 |    6 | MAC it assigned or accepted                      | back-end    |
//! | 150-191|      | reserved                                         |             |
//!
//! States are `u32`: `Initialising = 1, InitWait = 2, Initialised = 3, Connected = 4,
//! Closing = 5, Closed = 6`; any other number is an error.
//!
//! # Protocol
//!
//! A side writes its whole section, then sends an event on its control port; the peer reads a copy
//! of the page after the event and reacts. A copy torn by a concurrent write either fails
//! validation or shows the old state; the reader simply waits for the next event.
//!
//! 1. Both sections start `Initialising`.
//! 2. The back-end writes `InitWait`: it is ready to accept a front-end.
//! 3. The front-end, seeing `InitWait`, allocates its rings and buffers, grants them to the
//!    back-end, allocates an unbound data port for the back-end, writes the refs, the port, its
//!    MAC and features, and `Initialised`.
//! 4. The back-end, seeing `Initialised`, maps the rings, binds the data port, writes its
//!    features and MAC and `Connected`.
//! 5. The front-end, seeing `Connected`, writes `Connected`. Data flows.
//! 6. Either side may go `Closing` (from any state but `Closed`), tear down (the back-end unmaps,
//!    the front-end ends its grants once unmapped) and then `Closed`. A side whose peer goes
//!    `Closing`/`Closed` (or backwards, see 7) does the same.
//! 7. A restarted side starts again at `Initialising` (its new incarnation writes its section
//!    fresh; this is a start, not a transition). The peer sees its peer go backwards, closes
//!    (`Closing`, `Closed`), goes `Closed → Initialising` and follows the protocol from step 2:
//!    a back-end back to `InitWait`, a front-end waiting for it.

use core::fmt;

use crate::evtchn::{MAX_PORTS, NO_PORT};
use crate::grant::MAX_REFS;
use crate::layout::{MAX_VMS, PAGE_SIZE};

pub const MAGIC: [u8; 8] = *b"SLCTRL\0\0";
pub const VERSION: u32 = 1;
pub const PAGE_LEN: usize = PAGE_SIZE as usize;

/// Byte range of each part; everything outside the listed fields is reserved.
pub const HEADER: core::ops::Range<usize> = 0..64;
pub const FRONTEND: core::ops::Range<usize> = 64..128;
pub const BACKEND: core::ops::Range<usize> = 128..192;

const H_VERSION: usize = 8;
const H_FRONTEND_ID: usize = 12;
const H_BACKEND_ID: usize = 14;
const H_FRONTEND_PORT: usize = 16;
const H_BACKEND_PORT: usize = 20;
const H_END: usize = 24;

// Offsets relative to the section start.
const F_STATE: usize = 0;
const F_TX_REF: usize = 4;
const F_RX_REF: usize = 8;
const F_POOL_FIRST: usize = 12;
const F_POOL_COUNT: usize = 16;
const F_DATA_PORT: usize = 20;
const F_MAC: usize = 24;
const F_FEATURES: usize = 32;
const F_END: usize = 40;

const B_STATE: usize = 0;
const B_FEATURES: usize = 8;
const B_MAC: usize = 16;
const B_END: usize = 22;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Initialising = 1,
    InitWait = 2,
    Initialised = 3,
    Connected = 4,
    Closing = 5,
    Closed = 6,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Initialising,
        State::InitWait,
        State::Initialised,
        State::Connected,
        State::Closing,
        State::Closed,
    ];

    pub const fn code(self) -> u32 {
        self as u32
    }

    pub const fn from_code(code: u32) -> Option<State> {
        Some(match code {
            1 => State::Initialising,
            2 => State::InitWait,
            3 => State::Initialised,
            4 => State::Connected,
            5 => State::Closing,
            6 => State::Closed,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Frontend,
    Backend,
}

/// Whether a running side may change its state from `from` to `to` (Xen's rules):
/// `Initialising → InitWait` (back-end ready), `Initialising → Initialised` and
/// `InitWait → Initialised` (front-end published), `InitWait → Connected` and
/// `Initialised → Connected`, any state but `Closed` → `Closing`, `Closing → Closed`, and
/// `Closed → Initialising` to reconnect after a peer's restart. Staying in a state is not a
/// transition (false). A restarted side's first `Initialising` is a start, not checked here.
pub const fn transition_allowed(from: State, to: State) -> bool {
    use State::*;
    matches!(
        (from, to),
        (Initialising, InitWait)
            | (Initialising, Initialised)
            | (InitWait, Initialised)
            | (InitWait, Connected)
            | (Initialised, Connected)
            | (Initialising | InitWait | Initialised | Connected, Closing)
            | (Closing, Closed)
            | (Closed, Initialising)
    )
}

/// The protocol as a pure function: what `side`, now in `own`, writes next after reading the
/// peer's state `peer`; `None` means wait for the next event. Work attached to a step (granting
/// rings before `Initialised`, mapping them before `Connected`, tearing down before `Closed`) is
/// done by the caller before it writes the returned state. Every returned step satisfies
/// [`transition_allowed`].
pub const fn next_state(side: Side, own: State, peer: State) -> Option<State> {
    use State::*;
    match (side, own, peer) {
        // A peer that went back to (or is) Initialising/Closing/Closed while we are past setup
        // has restarted or is leaving: close our end.
        (Side::Frontend, Initialised, Initialising | Closing | Closed)
        | (Side::Frontend, Connected, Initialising | InitWait | Initialised | Closing | Closed)
        | (Side::Backend, Connected, Initialising | InitWait | Closing | Closed)
        | (Side::Backend, InitWait, Closing) => Some(Closing),
        (_, Closing, _) => Some(Closed),
        // Reconnect once the peer is starting again.
        (Side::Frontend, Closed, Initialising | InitWait) => Some(Initialising),
        (Side::Backend, Closed, Initialising) => Some(Initialising),
        (Side::Backend, Initialising, _) => Some(InitWait),
        (Side::Frontend, Initialising, InitWait) => Some(Initialised),
        (Side::Backend, InitWait, Initialised) => Some(Connected),
        (Side::Frontend, Initialised, Connected) => Some(Connected),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub frontend: u16,
    pub backend: u16,
    pub frontend_port: u32,
    pub backend_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub state: State,
    pub tx_ring_ref: u32,
    pub rx_ring_ref: u32,
    pub pool_first_ref: u32,
    pub pool_count: u32,
    pub data_port: u32,
    pub mac: [u8; 6],
    pub features: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub state: State,
    pub features: u64,
    pub mac: [u8; 6],
}

impl Frontend {
    /// A fresh section: `Initialising`, everything else zero.
    pub const fn initialising() -> Frontend {
        Frontend {
            state: State::Initialising,
            tx_ring_ref: 0,
            rx_ring_ref: 0,
            pool_first_ref: 0,
            pool_count: 0,
            data_port: NO_PORT,
            mac: [0; 6],
            features: 0,
        }
    }
}

impl Backend {
    pub const fn initialising() -> Backend {
        Backend {
            state: State::Initialising,
            features: 0,
            mac: [0; 6],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    PageTooSmall { len: usize },
    BadMagic,
    UnsupportedVersion { found: u32 },
    ReservedNotZero,
    /// A VM id is 0, above `MAX_VMS`, or both ids are the same VM.
    BadVmIds,
    /// A control port is 0 or out of range, or a data port is out of range.
    BadPort { port: u32 },
    UnknownState { code: u32 },
    /// A grant ref beyond the largest grant table.
    BadRef { gref: u32 },
    /// The buffer pool runs past the largest grant table.
    BadPool,
    /// A MAC with the multicast bit set.
    MulticastMac,
    /// State `Initialised`/`Connected` without a data port (front-end) or a MAC (back-end).
    Incomplete,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HandshakeError::*;
        match *self {
            PageTooSmall { len } => write!(f, "control page is {len} bytes, need {PAGE_LEN}"),
            BadMagic => f.write_str("no control page here: bad magic"),
            UnsupportedVersion { found } => write!(
                f,
                "unsupported control page version {found} (this build reads {VERSION})"
            ),
            ReservedNotZero => f.write_str("control page reserved bytes are not zero"),
            BadVmIds => f.write_str("control page VM ids are zero, out of range or equal"),
            BadPort { port } => write!(f, "control page port {port} is invalid"),
            UnknownState { code } => write!(f, "control page state {code} is unknown"),
            BadRef { gref } => write!(f, "control page grant ref {gref} is out of range"),
            BadPool => f.write_str("control page buffer pool runs past the grant table"),
            MulticastMac => f.write_str("control page MAC is a multicast address"),
            Incomplete => f.write_str("control page section lacks a port or MAC for its state"),
        }
    }
}

impl core::error::Error for HandshakeError {}

fn page_of(page: &[u8]) -> Result<&[u8], HandshakeError> {
    page.get(..PAGE_LEN)
        .ok_or(HandshakeError::PageTooSmall { len: page.len() })
}

fn page_of_mut(page: &mut [u8]) -> Result<&mut [u8], HandshakeError> {
    let len = page.len();
    page.get_mut(..PAGE_LEN)
        .ok_or(HandshakeError::PageTooSmall { len })
}

fn u16_at(s: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([s[at], s[at + 1]])
}

fn u32_at(s: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&s[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(s: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(b)
}

fn mac_at(s: &[u8], at: usize) -> [u8; 6] {
    let mut m = [0; 6];
    m.copy_from_slice(&s[at..at + 6]);
    m
}

fn put(s: &mut [u8], at: usize, bytes: &[u8]) {
    s[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Reserved bytes of a part: everything in `part` outside `fields`.
fn reserved_zero(part: &[u8], fields: &[core::ops::Range<usize>]) -> Result<(), HandshakeError> {
    let used = |i: usize| fields.iter().any(|r| r.contains(&i));
    if part.iter().enumerate().all(|(i, &b)| b == 0 || used(i)) {
        Ok(())
    } else {
        Err(HandshakeError::ReservedNotZero)
    }
}

fn state_of(code: u32) -> Result<State, HandshakeError> {
    State::from_code(code).ok_or(HandshakeError::UnknownState { code })
}

const fn is_multicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

const fn past_setup(state: State) -> bool {
    matches!(state, State::Initialised | State::Connected)
}

impl Header {
    fn validate(&self) -> Result<(), HandshakeError> {
        let id_ok = |id: u16| id != 0 && usize::from(id) <= MAX_VMS;
        if !id_ok(self.frontend) || !id_ok(self.backend) || self.frontend == self.backend {
            return Err(HandshakeError::BadVmIds);
        }
        for port in [self.frontend_port, self.backend_port] {
            if port == NO_PORT || port >= MAX_PORTS {
                return Err(HandshakeError::BadPort { port });
            }
        }
        Ok(())
    }

    /// Hypervisor: initialises the whole page (zeroing it, so nothing stale leaks) with this
    /// header and both sections `Initialising`.
    pub fn init_page(&self, page: &mut [u8]) -> Result<(), HandshakeError> {
        let page = page_of_mut(page)?;
        self.validate()?;
        page.fill(0);
        put(page, 0, &MAGIC);
        put(page, H_VERSION, &VERSION.to_le_bytes());
        self.write(page)?;
        Frontend::initialising().write_to(page)?;
        Backend::initialising().write_to(page)
    }

    /// Hypervisor: rewrites only the header (e.g. a new control port after a restart).
    pub fn write(&self, page: &mut [u8]) -> Result<(), HandshakeError> {
        let page = page_of_mut(page)?;
        self.validate()?;
        put(page, H_FRONTEND_ID, &self.frontend.to_le_bytes());
        put(page, H_BACKEND_ID, &self.backend.to_le_bytes());
        put(page, H_FRONTEND_PORT, &self.frontend_port.to_le_bytes());
        put(page, H_BACKEND_PORT, &self.backend_port.to_le_bytes());
        Ok(())
    }

    pub fn read_from(page: &[u8]) -> Result<Header, HandshakeError> {
        let page = page_of(page)?;
        if page[..8] != MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        let version = u32_at(page, H_VERSION);
        if version != VERSION {
            return Err(HandshakeError::UnsupportedVersion { found: version });
        }
        reserved_zero(&page[HEADER], &[0..H_END])?;
        let header = Header {
            frontend: u16_at(page, H_FRONTEND_ID),
            backend: u16_at(page, H_BACKEND_ID),
            frontend_port: u32_at(page, H_FRONTEND_PORT),
            backend_port: u32_at(page, H_BACKEND_PORT),
        };
        header.validate()?;
        Ok(header)
    }
}

impl Frontend {
    fn validate(&self) -> Result<(), HandshakeError> {
        for gref in [self.tx_ring_ref, self.rx_ring_ref, self.pool_first_ref] {
            if gref >= MAX_REFS {
                return Err(HandshakeError::BadRef { gref });
            }
        }
        if u64::from(self.pool_first_ref) + u64::from(self.pool_count) > u64::from(MAX_REFS) {
            return Err(HandshakeError::BadPool);
        }
        if self.data_port >= MAX_PORTS {
            return Err(HandshakeError::BadPort {
                port: self.data_port,
            });
        }
        if is_multicast(&self.mac) {
            return Err(HandshakeError::MulticastMac);
        }
        if past_setup(self.state) && self.data_port == NO_PORT {
            return Err(HandshakeError::Incomplete);
        }
        Ok(())
    }

    /// Front-end: writes its section (only bytes 64..128), reserved bytes zeroed.
    pub fn write_to(&self, page: &mut [u8]) -> Result<(), HandshakeError> {
        let page = page_of_mut(page)?;
        self.validate()?;
        let s = &mut page[FRONTEND];
        s.fill(0);
        put(s, F_TX_REF, &self.tx_ring_ref.to_le_bytes());
        put(s, F_RX_REF, &self.rx_ring_ref.to_le_bytes());
        put(s, F_POOL_FIRST, &self.pool_first_ref.to_le_bytes());
        put(s, F_POOL_COUNT, &self.pool_count.to_le_bytes());
        put(s, F_DATA_PORT, &self.data_port.to_le_bytes());
        put(s, F_MAC, &self.mac);
        put(s, F_FEATURES, &self.features.to_le_bytes());
        // State last: a reader racing this write sees the old state with new fields at worst.
        put(s, F_STATE, &self.state.code().to_le_bytes());
        Ok(())
    }

    pub fn read_from(page: &[u8]) -> Result<Frontend, HandshakeError> {
        let s = &page_of(page)?[FRONTEND];
        reserved_zero(s, &[0..F_MAC + 6, F_FEATURES..F_END])?;
        let section = Frontend {
            state: state_of(u32_at(s, F_STATE))?,
            tx_ring_ref: u32_at(s, F_TX_REF),
            rx_ring_ref: u32_at(s, F_RX_REF),
            pool_first_ref: u32_at(s, F_POOL_FIRST),
            pool_count: u32_at(s, F_POOL_COUNT),
            data_port: u32_at(s, F_DATA_PORT),
            mac: mac_at(s, F_MAC),
            features: u64_at(s, F_FEATURES),
        };
        section.validate()?;
        Ok(section)
    }
}

impl Backend {
    fn validate(&self) -> Result<(), HandshakeError> {
        if is_multicast(&self.mac) {
            return Err(HandshakeError::MulticastMac);
        }
        if self.state == State::Connected && self.mac == [0; 6] {
            return Err(HandshakeError::Incomplete);
        }
        Ok(())
    }

    /// Back-end: writes its section (only bytes 128..192), reserved bytes zeroed.
    pub fn write_to(&self, page: &mut [u8]) -> Result<(), HandshakeError> {
        let page = page_of_mut(page)?;
        self.validate()?;
        let s = &mut page[BACKEND];
        s.fill(0);
        put(s, B_FEATURES, &self.features.to_le_bytes());
        put(s, B_MAC, &self.mac);
        put(s, B_STATE, &self.state.code().to_le_bytes());
        Ok(())
    }

    pub fn read_from(page: &[u8]) -> Result<Backend, HandshakeError> {
        let s = &page_of(page)?[BACKEND];
        reserved_zero(s, &[B_STATE..B_STATE + 4, B_FEATURES..B_END])?;
        let section = Backend {
            state: state_of(u32_at(s, B_STATE))?,
            features: u64_at(s, B_FEATURES),
            mac: mac_at(s, B_MAC),
        };
        section.validate()?;
        Ok(section)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> Header {
        Header {
            frontend: 2,
            backend: 1,
            frontend_port: 1,
            backend_port: 3,
        }
    }

    fn fresh_page() -> std::vec::Vec<u8> {
        let mut page = vec![0xee; PAGE_LEN];
        header().init_page(&mut page).unwrap();
        page
    }

    fn frontend() -> Frontend {
        Frontend {
            state: State::Initialised,
            tx_ring_ref: 10,
            rx_ring_ref: 11,
            pool_first_ref: 12,
            pool_count: 256,
            data_port: 4,
            mac: [0x02, 0, 0, 0, 0, 0x22],
            features: 0b101,
        }
    }

    fn backend() -> Backend {
        Backend {
            state: State::Connected,
            features: 0b001,
            mac: [0x02, 0, 0, 0, 0, 0x22],
        }
    }

    #[test]
    fn fresh_page_round_trips_and_clears_stale_bytes() {
        let page = fresh_page();
        assert_eq!(Header::read_from(&page), Ok(header()));
        assert_eq!(Frontend::read_from(&page), Ok(Frontend::initialising()));
        assert_eq!(Backend::read_from(&page), Ok(Backend::initialising()));
        assert!(page[BACKEND.end..].iter().all(|&b| b == 0));
    }

    #[test]
    fn byte_offsets_match_the_documented_table() {
        let mut page = fresh_page();
        frontend().write_to(&mut page).unwrap();
        backend().write_to(&mut page).unwrap();
        assert_eq!(&page[0..8], b"SLCTRL\0\0");
        assert_eq!(u16_at(&page, 12), 2);
        assert_eq!(u32_at(&page, 20), 3);
        assert_eq!(u32_at(&page, 64), 3);
        assert_eq!(u32_at(&page, 76), 12);
        assert_eq!(u32_at(&page, 84), 4);
        assert_eq!(page[93], 0x22);
        assert_eq!(u64_at(&page, 96), 0b101);
        assert_eq!(u32_at(&page, 128), 4);
        assert_eq!(u64_at(&page, 136), 0b001);
        assert_eq!(page[149], 0x22);
    }

    #[test]
    fn each_side_writes_only_its_section() {
        let mut page = fresh_page();
        let before = page.clone();
        frontend().write_to(&mut page).unwrap();
        assert_eq!(page[..FRONTEND.start], before[..FRONTEND.start]);
        assert_eq!(page[FRONTEND.end..], before[FRONTEND.end..]);
        let before = page.clone();
        backend().write_to(&mut page).unwrap();
        assert_eq!(page[..BACKEND.start], before[..BACKEND.start]);
        assert_eq!(Frontend::read_from(&page), Ok(frontend()));
        assert_eq!(Backend::read_from(&page), Ok(backend()));
    }

    #[test]
    fn short_page_is_refused() {
        let page = fresh_page();
        let short = &page[..PAGE_LEN - 1];
        let err = HandshakeError::PageTooSmall { len: PAGE_LEN - 1 };
        assert_eq!(Header::read_from(short), Err(err));
        assert_eq!(Frontend::read_from(short), Err(err));
        assert_eq!(Backend::read_from(short), Err(err));
        let mut small = [0u8; 10];
        assert_eq!(
            header().init_page(&mut small),
            Err(HandshakeError::PageTooSmall { len: 10 })
        );
        assert_eq!(
            frontend().write_to(&mut small),
            Err(HandshakeError::PageTooSmall { len: 10 })
        );
        assert_eq!(
            backend().write_to(&mut small),
            Err(HandshakeError::PageTooSmall { len: 10 })
        );
    }

    #[test]
    fn bad_header_is_refused() {
        let corrupt = |f: fn(&mut [u8])| {
            let mut page = fresh_page();
            f(&mut page);
            Header::read_from(&page).unwrap_err()
        };
        assert_eq!(corrupt(|p| p[0] = b'X'), HandshakeError::BadMagic);
        assert_eq!(
            corrupt(|p| p[8] = 2),
            HandshakeError::UnsupportedVersion { found: 2 }
        );
        assert_eq!(corrupt(|p| p[40] = 1), HandshakeError::ReservedNotZero);
        assert_eq!(corrupt(|p| p[12] = 0), HandshakeError::BadVmIds);
        assert_eq!(corrupt(|p| p[12] = 1), HandshakeError::BadVmIds);
        assert_eq!(corrupt(|p| p[14] = 17), HandshakeError::BadVmIds);
        assert_eq!(
            corrupt(|p| p[16] = 0),
            HandshakeError::BadPort { port: 0 }
        );
        assert_eq!(
            corrupt(|p| p[21] = 1),
            HandshakeError::BadPort { port: 259 }
        );
        let mut page = vec![0; PAGE_LEN];
        let same = Header {
            backend: 2,
            ..header()
        };
        assert_eq!(same.init_page(&mut page), Err(HandshakeError::BadVmIds));
        let no_port = Header {
            backend_port: 0,
            ..header()
        };
        assert_eq!(
            no_port.write(&mut page),
            Err(HandshakeError::BadPort { port: 0 })
        );
    }

    #[test]
    fn unknown_states_are_refused() {
        for code in [0, 7, u32::MAX] {
            assert_eq!(State::from_code(code), None);
            let mut page = fresh_page();
            page[FRONTEND.start..FRONTEND.start + 4].copy_from_slice(&code.to_le_bytes());
            page[BACKEND.start..BACKEND.start + 4].copy_from_slice(&code.to_le_bytes());
            assert_eq!(
                Frontend::read_from(&page),
                Err(HandshakeError::UnknownState { code })
            );
            assert_eq!(
                Backend::read_from(&page),
                Err(HandshakeError::UnknownState { code })
            );
        }
        for s in State::ALL {
            assert_eq!(State::from_code(s.code()), Some(s));
        }
    }

    #[test]
    fn bad_frontend_values_are_refused() {
        let mut page = fresh_page();
        let cases = [
            (
                Frontend {
                    tx_ring_ref: MAX_REFS,
                    ..frontend()
                },
                HandshakeError::BadRef { gref: MAX_REFS },
            ),
            (
                Frontend {
                    rx_ring_ref: u32::MAX,
                    ..frontend()
                },
                HandshakeError::BadRef { gref: u32::MAX },
            ),
            (
                Frontend {
                    pool_first_ref: MAX_REFS - 1,
                    pool_count: 2,
                    ..frontend()
                },
                HandshakeError::BadPool,
            ),
            (
                Frontend {
                    data_port: MAX_PORTS,
                    ..frontend()
                },
                HandshakeError::BadPort { port: MAX_PORTS },
            ),
            (
                Frontend {
                    data_port: NO_PORT,
                    ..frontend()
                },
                HandshakeError::Incomplete,
            ),
            (
                Frontend {
                    mac: [0x01, 0, 0x5e, 0, 0, 1],
                    ..frontend()
                },
                HandshakeError::MulticastMac,
            ),
        ];
        for (section, err) in cases {
            assert_eq!(section.write_to(&mut page), Err(err));
        }
        // The same values, written past the writer's check, are refused by the reader.
        let mut page = fresh_page();
        frontend().write_to(&mut page).unwrap();
        page[FRONTEND.start + F_POOL_COUNT..][..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Frontend::read_from(&page), Err(HandshakeError::BadPool));
        let mut page = fresh_page();
        page[FRONTEND.start + 94] = 1;
        assert_eq!(
            Frontend::read_from(&page),
            Err(HandshakeError::ReservedNotZero)
        );
    }

    #[test]
    fn bad_backend_values_are_refused() {
        let mut page = fresh_page();
        assert_eq!(
            Backend {
                mac: [0xff; 6],
                ..backend()
            }
            .write_to(&mut page),
            Err(HandshakeError::MulticastMac)
        );
        assert_eq!(
            Backend {
                mac: [0; 6],
                ..backend()
            }
            .write_to(&mut page),
            Err(HandshakeError::Incomplete)
        );
        page[BACKEND.start + 4] = 1;
        assert_eq!(
            Backend::read_from(&page),
            Err(HandshakeError::ReservedNotZero)
        );
    }

    #[test]
    fn transition_table() {
        use State::*;
        let allowed = [
            (Initialising, InitWait),
            (Initialising, Initialised),
            (InitWait, Initialised),
            (InitWait, Connected),
            (Initialised, Connected),
            (Initialising, Closing),
            (InitWait, Closing),
            (Initialised, Closing),
            (Connected, Closing),
            (Closing, Closed),
            (Closed, Initialising),
        ];
        for from in State::ALL {
            for to in State::ALL {
                assert_eq!(
                    transition_allowed(from, to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn every_protocol_step_is_an_allowed_transition() {
        for side in [Side::Frontend, Side::Backend] {
            for own in State::ALL {
                for peer in State::ALL {
                    if let Some(next) = next_state(side, own, peer) {
                        assert!(
                            transition_allowed(own, next),
                            "{side:?} {own:?} (peer {peer:?}) -> {next:?}"
                        );
                    }
                }
            }
        }
    }

    /// One side of the model: its state and what it set up, reading and writing a real page.
    #[derive(Clone, Copy, Debug)]
    struct Model {
        /// Bumped on restart; the front-end's rings carry it so the model can tell which
        /// incarnation's rings the back-end mapped.
        incarnation: u32,
        state: State,
        /// Back-end: the front-end incarnation whose rings it mapped.
        mapped: Option<u32>,
    }

    fn fe_section(m: &Model) -> Frontend {
        Frontend {
            state: m.state,
            // The model's "rings" are refs naming the incarnation that granted them.
            tx_ring_ref: m.incarnation % MAX_REFS,
            ..frontend()
        }
    }

    /// Lets `side` react once; returns whether it wrote anything.
    fn step(page: &mut [u8], side: Side, me: &mut Model) -> bool {
        let peer = match side {
            Side::Frontend => Backend::read_from(page).unwrap().state,
            Side::Backend => Frontend::read_from(page).unwrap().state,
        };
        let Some(next) = next_state(side, me.state, peer) else {
            return false;
        };
        assert!(transition_allowed(me.state, next));
        match (side, next) {
            (Side::Backend, State::Connected) => {
                let fe = Frontend::read_from(page).unwrap();
                me.mapped = Some(fe.tx_ring_ref);
            }
            (Side::Backend, State::Closed) => me.mapped = None,
            _ => {}
        }
        me.state = next;
        match side {
            Side::Frontend => fe_section(me).write_to(page).unwrap(),
            Side::Backend => Backend {
                state: next,
                ..backend()
            }
            .write_to(page)
            .unwrap(),
        }
        true
    }

    fn restart(page: &mut [u8], side: Side, me: &mut Model) {
        *me = Model {
            incarnation: me.incarnation + 1,
            state: State::Initialising,
            mapped: None,
        };
        match side {
            Side::Frontend => fe_section(me).write_to(page).unwrap(),
            Side::Backend => Backend::initialising().write_to(page).unwrap(),
        }
    }

    fn run(events: &[(bool, bool)]) {
        let mut page = fresh_page();
        let fresh = Model {
            incarnation: 0,
            state: State::Initialising,
            mapped: None,
        };
        let (mut fe, mut be) = (fresh, fresh);
        for &(frontend_side, is_restart) in events {
            let (side, me) = if frontend_side {
                (Side::Frontend, &mut fe)
            } else {
                (Side::Backend, &mut be)
            };
            if is_restart {
                restart(&mut page, side, me);
            } else {
                step(&mut page, side, me);
            }
        }
        // Quiescent: both sides react until neither writes; they must end connected, and the
        // back-end must have mapped the current front-end incarnation's rings.
        for _ in 0..32 {
            let a = step(&mut page, Side::Frontend, &mut fe);
            let b = step(&mut page, Side::Backend, &mut be);
            if !a && !b {
                break;
            }
        }
        assert_eq!(fe.state, State::Connected, "{events:?}");
        assert_eq!(be.state, State::Connected, "{events:?}");
        assert_eq!(be.mapped, Some(fe.incarnation % MAX_REFS), "{events:?}");
    }

    #[test]
    fn model_connects_and_reconnects_after_either_restart() {
        run(&[]);
        // Connect, then restart the front-end; then the back-end.
        let connect = [(false, false), (true, false), (false, false), (true, false)];
        let mut events = connect.to_vec();
        events.push((true, true));
        run(&events);
        events.extend_from_slice(&connect);
        events.push((false, true));
        run(&events);
        // Both restart at once.
        run(&[(true, false), (false, false), (true, true), (false, true)]);
    }

    proptest! {
        #[test]
        fn model_survives_any_interleaving_of_steps_and_restarts(
            events in prop::collection::vec((any::<bool>(), prop::bool::weighted(0.15)), 0..60)
        ) {
            run(&events);
        }
    }
}
