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
//! | offset  | size | field                                                  | written by |
//! |--------:|-----:|--------------------------------------------------------|------------|
//! |       0 |    8 | magic `b"SLCTRL\0\0"`                                  | hypervisor |
//! |       8 |    4 | version, `1`                                           | hypervisor |
//! |      12 |    2 | front-end VM id                                        | hypervisor |
//! |      14 |    2 | back-end VM id                                         | hypervisor |
//! |      16 |    4 | front-end control port (in the front-end's table)      | hypervisor |
//! |      20 |    4 | back-end control port (in the back-end's table)        | hypervisor |
//! |   24-63 |      | reserved                                               |            |
//! |      64 |    4 | front-end state                                        | front-end  |
//! |      68 |    4 | tx ring grant ref                                      | front-end  |
//! |      72 |    4 | rx ring grant ref                                      | front-end  |
//! |      76 |    4 | buffer pool: first grant ref                           | front-end  |
//! |      80 |    4 | buffer pool: ref count                                 | front-end  |
//! |      84 |    4 | data event port (front-end's, unbound for the back-end)| front-end  |
//! |      88 |    6 | MAC it asks for (zero: "assign one")                   | front-end  |
//! |   94-95 |      | reserved                                               |            |
//! |      96 |    8 | feature bits                                           | front-end  |
//! |     104 |    4 | back-end generation the offer is for (see Restarts)    | front-end  |
//! |     108 |    4 | buffer pool: pages the back-end may write (the first   | front-end  |
//! |         |      | ones; the rest are granted read-only), <= ref count    |            |
//! | 112-127 |      | reserved                                               |            |
//! |     128 |    4 | back-end state                                         | back-end   |
//! | 132-135 |      | reserved                                               |            |
//! |     136 |    8 | feature bits (accepted subset)                         | back-end   |
//! |     144 |    6 | MAC it assigned or accepted                            | back-end   |
//! | 150-191 |      | reserved                                               |            |
//! |     192 |    4 | stop word ([`STOPPED_WORD`]): bit 0 front-end, bit 1   | hypervisor |
//! |         |      | back-end stopped for good                              |            |
//! |     196 |    4 | back-end generation ([`GENERATION_WORD`]): how many    | hypervisor |
//! |         |      | times the back-end VM has restarted                    |            |
//! |200-4095 |      | unused: zeroed by the hypervisor, never read           |            |
//!
//! States are `u32`: `Initialising = 1, InitWait = 2, Initialised = 3, Connected = 4,
//! Closing = 5, Closed = 6`; any other number is an error. Readers refuse a part whose reserved
//! bytes are not zero, a ref beyond the largest grant table, a buffer pool running past it, a port
//! out of range (a control port of 0 too), a multicast MAC, a front-end `Initialised`/`Connected`
//! without a data port and a back-end `Connected` without a MAC; writers refuse to write such a
//! section.
//!
//! # Protocol
//!
//! **Writing and reading.** A side encodes its whole section and publishes it with the state word
//! last (the other bytes first, then the state word with release ordering), then sends an event on
//! its control port. The peer, after an event, takes a copy of the page, loading the state word
//! first (acquire ordering), and reacts to the peer's state in its copy with [`next_state`]: it
//! does the work attached to the step, then writes the new state. A side takes a new copy for
//! every step, after its own last write; it never decides two steps on one copy. A copy may be
//! stale (the peer wrote again since) or torn (an older state word with newer fields). A copy that
//! fails validation (e.g. an old `Initialised` with the fields of a fresh section, which lack the
//! data port) is dropped, and the reader waits for the next event.
//!
//! **Connecting.**
//! 1. The hypervisor initialises the page ([`Header::init_page`]): both sections `Initialising`.
//! 2. The back-end, `Initialising`, seeing `Initialising` or `Initialised`, writes `InitWait`: it
//!    is ready to accept a front-end.
//! 3. The front-end, `Initialising`, seeing `InitWait`, allocates its rings and buffers, grants
//!    them to the back-end, allocates an unbound data port for the back-end, writes the refs, the
//!    port, its MAC and features, and `Initialised`.
//! 4. The back-end, `InitWait`, seeing `Initialised`, maps the rings named in that copy, binds the
//!    data port, writes its features and MAC and `Connected`. If GRANT_MAP fails (a stale copy
//!    naming refs no longer granted, or a broken front-end) it either writes nothing and waits for
//!    the next event or goes `Closing`; the protocol works with either (closing relies on the
//!    hypervisor marking a dead front-end `Closed`, else it would map, fail and close again and
//!    again on a dead front-end's last `Initialised` until the next incarnation starts).
//! 5. The front-end, `Initialised`, seeing `Connected`, writes `Connected`. Data flows. Whatever
//!    else it sees, an `Initialised` front-end just waits: the back-end always comes round to map
//!    what it published (step 8), unless the back-end restarted since (step 10).
//!
//! **Closing.**
//! 6. Either side may go `Closing` from any state but `Closing`/`Closed`, to reset the connection
//!    (a side leaving for good goes `Closing`, `Closed` and stops following [`next_state`]). A
//!    `Connected` side goes `Closing` as soon as its peer shows anything but `Connected`
//!    (front-end) or anything but `Initialised`/`Connected` (back-end). An `InitWait` back-end
//!    goes `Closing` when the front-end shows `Closed` (it has closed or died; see Restarts).
//! 7. A `Closing` side tears down, then writes `Closed`: the back-end unmaps the rings and closes
//!    its end of the data port (it may do so before writing `Closing` already); the front-end
//!    ends its grants, which GRANT_END refuses (`Busy`) while the back-end still maps them, so it
//!    retries on the next event, and closes the data port.
//!
//! **Reconnecting**, the back-end leading:
//! 8. The back-end goes `Closed → Initialising` once the front-end shows `Initialising`,
//!    `Initialised` or `Closed`, then `InitWait` once it shows `Initialising` or `Initialised`
//!    (step 2).
//! 9. The front-end goes `Closed → Initialising` once the back-end shows `Initialising` (not
//!    `InitWait`, see below), then follows step 3.
//!
//! **Restarts.** A side may die at any point. The hypervisor then marks its section `Closed`
//! ([`mark_closed`]; for a VM stopped for good it also sets the side's bit in the stop word,
//! [`mark_stopped`], so the peer need not wait for it). It tears down a dead back-end's mappings
//! and forgets a dead front-end's grant table, but the back-end's mappings of the dead front-end's
//! frames stay valid until the back-end unmaps them, and they do not hold up the next
//! incarnation's grant table. A new incarnation starts in `Initialising` if its section shows
//! `Initialising` (the page is new, or it died before getting further); otherwise it writes its
//! section fresh as `Closed` (normally the hypervisor has already) and starts in `Closed`. Then it
//! follows the protocol (steps 8-9). A back-end may also always start in `Initialising`; a
//! front-end may not, and leaves `Closed` on `Initialising` only: a back-end's `InitWait` can be
//! older than the front-end's death, with GRANT_MAP of the dead incarnation's rings done and its
//! `Connected` not yet written, and a new front-end that published rings on that `InitWait` would
//! take that `Connected` for its own. A back-end that shows `Initialising` after the front-end
//! started holds no mapping and maps only what a later copy shows; the `InitWait → Closing` of
//! step 6 makes sure the front-end gets to see one.
//!
//! **Generations** (a restarted back-end while the front-end lives on). Rings carry state
//! (indices) that a back-end which used them moved, and a new back-end's queues start from
//! zero, so rings an earlier back-end incarnation may have used must be reset (zeroed, all
//! receive buffers offered again) before another maps them. The hypervisor counts the back-end's
//! restarts in the page ([`GENERATION_WORD`], [`bump_generation`], done before the new
//! incarnation runs, with [`mark_closed`]); the front-end writes the generation it saw into
//! every offer ([`Frontend::backend_generation`]).
//! 10. A front-end `Initialised` or `Connected` whose copy shows another generation than its
//!     offer was made for goes `Closing` ([`frontend_next`]), and so resets its rings on the
//!     way to its next `Initialised`, whatever the new back-end's state shows (it may have
//!     seen none of the states in between).
//! 11. A back-end maps only an offer for its own generation (read from the page when it
//!     starts); an offer for another one it treats as not yet made and waits (the front-end
//!     closes and offers again by step 10).
//! 12. A front-end `Closed` that has made an offer in this incarnation, for another generation
//!     than its copy shows, goes `Initialising` when the back-end shows `Closed` (the
//!     hypervisor's mark of the dead back-end, or a new incarnation that starts `Closed`)
//!     instead of waiting for the new back-end's `Initialising` ([`frontend_next`]). The
//!     back-end that died can no longer act on anything, and the next one maps only offers
//!     made for its own generation (step 11), so nothing stale can connect; a new back-end
//!     incarnation that starts `Initialising` then answers `InitWait` in its first step, and
//!     the reconnection is one round trip shorter. A front-end before its first offer (a new
//!     incarnation) still leaves `Closed` on `Initialising` only (Restarts, above).
//!
//! State sequences with current copies, the front-end stepping first (the restarts start from
//! connected; the hypervisor has marked the dead side `Closed`):
//! - connect: back-end `Initialising → InitWait`; front-end `Initialising → Initialised`;
//!   back-end `InitWait → Connected`; front-end `Initialised → Connected`.
//! - front-end restart: front-end (new, starts) `Closed`; back-end `Connected → Closing → Closed
//!   → Initialising`; front-end `Closed → Initialising`; back-end `Initialising → InitWait`;
//!   front-end `Initialising → Initialised`; back-end `InitWait → Connected`; front-end
//!   `Initialised → Connected`.
//! - back-end restart: back-end (new, starts) `Closed`; front-end `Connected → Closing → Closed
//!   → Initialising` (step 12 on the hypervisor's or the new back-end's `Closed`); back-end
//!   `Closed → Initialising → InitWait`; front-end `Initialising → Initialised`; back-end
//!   `InitWait → Connected`; front-end `Initialised → Connected`. sluice's driver domain
//!   starts `Initialising` and, when the front-end's section already shows `Initialising`,
//!   takes its first step on the copy it started from at once, writing `InitWait` as its
//!   first write (the front-end reacts to nothing but `InitWait` there); it does so before it
//!   brings its NIC up, so the front-ends offer their rings meanwhile.
//!
//! **Guarantee**, checked exhaustively by the tests for bounded numbers of disturbances (and by
//! a property test on real pages), with or without [`mark_closed`] and for both reactions to a
//! failed GRANT_MAP: after any interleaving of steps, stale and torn copies, resets and deaths of
//! either side at any point (also between a back-end's GRANT_MAP and its `Connected`), once the
//! disturbances stop both sides end `Connected`, with the back-end mapping the rings the
//! front-end currently grants. No sequence of steps can loop, and each disturbance costs at most
//! one reconnection. A front-end only connects on a back-end `Connected` written for its current
//! rings, unless the back-end that wrote it has died since (which no page can tell; the
//! hypervisor's `Closed` then closes the connection).

use core::ops::Range;

use thiserror::Error;

use crate::evtchn::{MAX_PORTS, NO_PORT};
use crate::grant::MAX_REFS;
use crate::layout::{MAX_VMS, PAGE_SIZE};
use crate::wire::{Format, Reader, WireError, Writer, HEADER_LEN};

pub const MAGIC: [u8; 8] = *b"SLCTRL\0\0";
pub const VERSION: u32 = 1;
pub const PAGE_LEN: usize = PAGE_SIZE as usize;

/// The shared header check: magic, version, and a whole page.
pub const FORMAT: Format = Format {
    name: "control page",
    magic: MAGIC,
    version: VERSION,
    min_len: PAGE_LEN,
};

/// Byte range of each part; everything outside the listed fields is reserved.
pub const HEADER: Range<usize> = 0..64;
pub const FRONTEND: Range<usize> = 64..128;
pub const BACKEND: Range<usize> = 128..192;

const H_VERSION: usize = 8;
const H_FRONTEND_ID: usize = 12;
const H_END: usize = 24;

// Offsets relative to the section start (fields between them follow the table above).
const F_STATE: usize = 0;
const F_MAC: usize = 24;
const F_FEATURES: usize = 32;
const F_GENERATION: usize = 40;
const F_POOL_WRITABLE: usize = 44;
const F_END: usize = 48;
/// Reserved bytes between the MAC and the features.
const F_MAC_PAD: usize = 2;

const B_STATE: usize = 0;
const B_FEATURES: usize = 8;
const B_MAC: usize = 16;
const B_END: usize = 22;
/// Reserved bytes between the state and the features.
const B_STATE_PAD: usize = 4;

/// Bytes in one section.
const SECTION_LEN: usize = 64;
/// Both sections start with the state word, which is published last.
const STATE_LEN: usize = 4;

// The field types the readers and writers use, laid end to end, fill each part exactly.
const _: () = {
    assert!(HEADER_LEN == H_VERSION + size_of::<u32>());
    assert!(H_END == HEADER_LEN + 2 * size_of::<u16>() + 2 * size_of::<u32>());
    assert!(F_MAC == F_STATE + 6 * size_of::<u32>());
    assert!(F_FEATURES == F_MAC + size_of::<[u8; 6]>() + F_MAC_PAD);
    assert!(F_GENERATION == F_FEATURES + size_of::<u64>());
    assert!(F_POOL_WRITABLE == F_GENERATION + size_of::<u32>());
    assert!(F_END == F_POOL_WRITABLE + size_of::<u32>());
    assert!(B_FEATURES == B_STATE + STATE_LEN + B_STATE_PAD);
    assert!(B_END == B_MAC + size_of::<[u8; 6]>() && B_MAC == B_FEATURES + size_of::<u64>());
    assert!(STATE_LEN == size_of::<u32>());
    assert!(HEADER.end == FRONTEND.start && FRONTEND.end == BACKEND.start);
    assert!(FRONTEND.end - FRONTEND.start == SECTION_LEN);
    assert!(BACKEND.end - BACKEND.start == SECTION_LEN);
    assert!(H_END <= HEADER.end && F_END <= SECTION_LEN && B_END <= SECTION_LEN);
    assert!(F_STATE == 0 && B_STATE == 0);
    assert!(STOPPED_WORD >= BACKEND.end && STOPPED_WORD + 4 <= PAGE_LEN);
    assert!(GENERATION_WORD == STOPPED_WORD + 4 && GENERATION_WORD + 4 <= PAGE_LEN);
};

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
/// `Initialised → Connected`, any state but `Closing`/`Closed` → `Closing`, `Closing → Closed`,
/// and `Closed → Initialising` to start over. Staying in a state is not a transition (false). A
/// new incarnation's first state is a start, not checked here.
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
/// peer's state `peer` (from a copy taken after its own last write); `None` means wait for the
/// next event. Work attached to a step (granting rings before `Initialised`, mapping them before
/// `Connected`, tearing down before `Closed`) is done by the caller before it writes the returned
/// state; if GRANT_MAP fails the back-end waits or goes `Closing` instead. Every returned step
/// satisfies [`transition_allowed`].
///
/// | side      | own            | peer                                    | next           |
/// |-----------|----------------|-----------------------------------------|----------------|
/// | front-end | `Initialising` | `InitWait`                              | `Initialised`  |
/// | front-end | `Initialised`  | `Connected`                             | `Connected`    |
/// | front-end | `Connected`    | anything but `Connected`                | `Closing`      |
/// | front-end | `Closing`      | anything                                | `Closed`       |
/// | front-end | `Closed`       | `Initialising`                          | `Initialising` |
/// | back-end  | `Initialising` | `Initialising`, `Initialised`           | `InitWait`     |
/// | back-end  | `InitWait`     | `Initialised`                           | `Connected`    |
/// | back-end  | `InitWait`     | `Closed`                                | `Closing`      |
/// | back-end  | `Connected`    | anything but `Initialised`, `Connected` | `Closing`      |
/// | back-end  | `Closing`      | anything                                | `Closed`       |
/// | back-end  | `Closed`       | `Initialising`, `Initialised`, `Closed` | `Initialising` |
///
/// Anything else waits. A front-end never writes `InitWait` and a back-end never writes
/// `Initialised`; a `Connected` side seeing them closes as for any other state.
pub const fn next_state(side: Side, own: State, peer: State) -> Option<State> {
    use State::*;
    match side {
        Side::Frontend => match (own, peer) {
            (Initialising, InitWait) => Some(Initialised),
            (Initialised, Connected) => Some(Connected),
            (Connected, Initialising | InitWait | Initialised | Closing | Closed) => Some(Closing),
            (Closing, _) => Some(Closed),
            (Closed, Initialising) => Some(Initialising),
            _ => None,
        },
        Side::Backend => match (own, peer) {
            (Initialising, Initialising | Initialised) => Some(InitWait),
            (InitWait, Initialised) => Some(Connected),
            (InitWait, Closed) => Some(Closing),
            (Connected, Initialising | InitWait | Closing | Closed) => Some(Closing),
            (Closing, _) => Some(Closed),
            (Closed, Initialising | Initialised | Closed) => Some(Initialising),
            _ => None,
        },
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
    /// The back-end generation ([`generation`]) this offer was made for: a back-end maps only
    /// an offer for its own generation, because rings offered to an earlier one may have been
    /// used by it (their indices moved) and must be reset first.
    pub backend_generation: u32,
    /// How many pool pages, from the first, the back-end may write (the receive buffers);
    /// the rest of the pool (the transmit buffers) is granted read-only, so the front-end
    /// can build frames there in place. At most `pool_count`.
    pub pool_writable: u32,
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
            backend_generation: 0,
            pool_writable: 0,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// Too short for a page, bad magic or unknown version (the header checks every format
    /// shares).
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("control page reserved bytes are not zero")]
    ReservedNotZero,
    /// A VM id is 0, above `MAX_VMS`, or both ids are the same VM.
    #[error("control page VM ids are zero, out of range or equal")]
    BadVmIds,
    /// A control port is 0 or out of range, or a data port is out of range.
    #[error("control page port {port} is invalid")]
    BadPort { port: u32 },
    #[error("control page state {code} is unknown")]
    UnknownState { code: u32 },
    /// A grant ref beyond the largest grant table.
    #[error("control page grant ref {gref} is out of range")]
    BadRef { gref: u32 },
    /// The buffer pool runs past the largest grant table.
    #[error("control page buffer pool runs past the grant table")]
    BadPool,
    /// More writable pool pages than pool pages.
    #[error("control page names {writable} writable pool pages of {pages}")]
    BadWritablePool { writable: u32, pages: u32 },
    /// A MAC with the multicast bit set.
    #[error("control page MAC is a multicast address")]
    MulticastMac,
    /// A front-end `Initialised`/`Connected` without a data port, or a back-end `Connected`
    /// without a MAC.
    #[error("control page section lacks a port or MAC for its state")]
    Incomplete,
}

fn page_of_mut(page: &mut [u8]) -> Result<&mut [u8], HandshakeError> {
    Ok(FORMAT.fixed_part_mut(page)?)
}
/// Stores an encoded section into `dest` (the section's bytes in the page): everything but the
/// state word, then the state word, so a reader racing the write sees the old state or a
/// validation error, never the new state with old fields. `dest` is a plain slice, so this orders
/// the stores only as the program sees them; publishing on a shared page needs the same order
/// with a release store of the state word.
fn store_section(dest: &mut [u8], encoded: &[u8; SECTION_LEN]) {
    dest[STATE_LEN..].copy_from_slice(&encoded[STATE_LEN..]);
    dest[..STATE_LEN].copy_from_slice(&encoded[..STATE_LEN]);
}

/// Reserved bytes, as read: every one must be zero.
fn reserved_zero(reserved: &[&[u8]]) -> Result<(), HandshakeError> {
    if reserved.iter().all(|part| part.iter().all(|&b| b == 0)) {
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
        FORMAT.write_header(&mut Writer::new(page))?;
        self.write(page)?;
        Frontend::initialising().write_to(page)?;
        Backend::initialising().write_to(page)
    }

    /// Hypervisor: rewrites only the header (e.g. a new control port after a restart).
    pub fn write(&self, page: &mut [u8]) -> Result<(), HandshakeError> {
        let page = page_of_mut(page)?;
        self.validate()?;
        let mut w = Writer::new(page);
        w.skip_to(H_FRONTEND_ID)?;
        w.u16(self.frontend)?;
        w.u16(self.backend)?;
        w.u32(self.frontend_port)?;
        w.u32(self.backend_port)?;
        Ok(())
    }

    pub fn read_from(page: &[u8]) -> Result<Header, HandshakeError> {
        let mut r = FORMAT.check(page)?;
        let header = Header {
            frontend: r.u16()?,
            backend: r.u16()?,
            frontend_port: r.u32()?,
            backend_port: r.u32()?,
        };
        reserved_zero(&[r.bytes(HEADER.end - H_END)?])?;
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
        if self.pool_writable > self.pool_count {
            return Err(HandshakeError::BadWritablePool {
                writable: self.pool_writable,
                pages: self.pool_count,
            });
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

    /// The section's bytes, without validation.
    fn encode(&self) -> [u8; SECTION_LEN] {
        let mut s = [0; SECTION_LEN];
        // Cannot overrun: the fields end at F_END <= SECTION_LEN (asserted at compile time).
        let _ = self.encode_fields(&mut Writer::new(&mut s));
        s
    }

    fn encode_fields(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u32(self.state.code())?;
        w.u32(self.tx_ring_ref)?;
        w.u32(self.rx_ring_ref)?;
        w.u32(self.pool_first_ref)?;
        w.u32(self.pool_count)?;
        w.u32(self.data_port)?;
        w.bytes(&self.mac)?;
        w.skip(F_MAC_PAD)?;
        w.u64(self.features)?;
        w.u32(self.backend_generation)?;
        w.u32(self.pool_writable)
    }

    /// Front-end: writes its whole section (only bytes 64..128, reserved bytes zeroed), the state
    /// word last.
    pub fn write_to(&self, page: &mut [u8]) -> Result<(), HandshakeError> {
        let page = page_of_mut(page)?;
        self.validate()?;
        store_section(&mut page[FRONTEND], &self.encode());
        Ok(())
    }

    pub fn read_from(page: &[u8]) -> Result<Frontend, HandshakeError> {
        let mut r = Reader::new(FORMAT.fixed_part(page)?);
        r.skip_to(FRONTEND.start)?;
        let state = r.u32()?;
        let (tx_ring_ref, rx_ring_ref) = (r.u32()?, r.u32()?);
        let (pool_first_ref, pool_count, data_port) = (r.u32()?, r.u32()?, r.u32()?);
        let mac = r.array()?;
        let pad = r.bytes(F_MAC_PAD)?;
        let features = r.u64()?;
        let backend_generation = r.u32()?;
        let pool_writable = r.u32()?;
        reserved_zero(&[pad, r.bytes(SECTION_LEN - F_END)?])?;
        let section = Frontend {
            state: state_of(state)?,
            tx_ring_ref,
            rx_ring_ref,
            pool_first_ref,
            pool_count,
            data_port,
            mac,
            features,
            backend_generation,
            pool_writable,
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

    /// The section's bytes, without validation.
    fn encode(&self) -> [u8; SECTION_LEN] {
        let mut s = [0; SECTION_LEN];
        // Cannot overrun: the fields end at B_END <= SECTION_LEN (asserted at compile time).
        let _ = self.encode_fields(&mut Writer::new(&mut s));
        s
    }

    fn encode_fields(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u32(self.state.code())?;
        w.skip(B_STATE_PAD)?;
        w.u64(self.features)?;
        w.bytes(&self.mac)
    }

    /// Back-end: writes its whole section (only bytes 128..192, reserved bytes zeroed), the state
    /// word last.
    pub fn write_to(&self, page: &mut [u8]) -> Result<(), HandshakeError> {
        let page = page_of_mut(page)?;
        self.validate()?;
        store_section(&mut page[BACKEND], &self.encode());
        Ok(())
    }

    pub fn read_from(page: &[u8]) -> Result<Backend, HandshakeError> {
        let mut r = Reader::new(FORMAT.fixed_part(page)?);
        r.skip_to(BACKEND.start)?;
        let state = r.u32()?;
        let pad = r.bytes(B_STATE_PAD)?;
        let features = r.u64()?;
        let mac = r.array()?;
        reserved_zero(&[pad, r.bytes(SECTION_LEN - B_END)?])?;
        let section = Backend {
            state: state_of(state)?,
            features,
            mac,
        };
        section.validate()?;
        Ok(section)
    }
}

// ---- What the hypervisor writes when a VM of the connection stops ----------------------------

/// Byte offset of the hypervisor's stop word (a little-endian `u32`, past both sections): bit 0
/// set = the front-end VM has stopped for good (powered off or killed), bit 1 = the back-end has.
/// A restart (SYSTEM_RESET) does not set it: the VM comes back and reconnects.
pub const STOPPED_WORD: usize = 192;
pub const FRONTEND_STOPPED: u32 = 1 << 0;
pub const BACKEND_STOPPED: u32 = 1 << 1;

/// Hypervisor side: `side`'s VM has stopped for good.
pub fn mark_stopped(page: &mut [u8], side: Side) {
    let bit = match side {
        Side::Frontend => FRONTEND_STOPPED,
        Side::Backend => BACKEND_STOPPED,
    };
    let flags = stopped(page) | bit;
    if let Some(word) = page.get_mut(STOPPED_WORD..STOPPED_WORD + 4) {
        word.copy_from_slice(&flags.to_le_bytes());
    }
}

/// The stop word (0 when the page is too short).
pub fn stopped(page: &[u8]) -> u32 {
    let mut r = Reader::new(page);
    r.skip_to(STOPPED_WORD).and_then(|()| r.u32()).unwrap_or(0)
}

/// Byte offset of the back-end generation (a little-endian `u32` the hypervisor writes): how
/// many times the back-end VM has restarted (wrapping). It tells the front-end that the back-end
/// it offered its rings to is gone even when it saw none of the states in between, and lets a
/// back-end recognise an offer made to an earlier incarnation (see the protocol's Restarts).
pub const GENERATION_WORD: usize = 196;

/// Hypervisor side: the back-end VM restarts; its next incarnation is a new generation.
pub fn bump_generation(page: &mut [u8]) {
    let next = generation(page).wrapping_add(1);
    if let Some(word) = page.get_mut(GENERATION_WORD..GENERATION_WORD + 4) {
        word.copy_from_slice(&next.to_le_bytes());
    }
}

/// The back-end generation (0 when the page is too short).
pub fn generation(page: &[u8]) -> u32 {
    let mut r = Reader::new(page);
    r.skip_to(GENERATION_WORD)
        .and_then(|()| r.u32())
        .unwrap_or(0)
}

/// The front-end's step ([`next_state`]) with the back-end generation it sees in the same copy
/// of the page as `peer`. `offered_for` is the generation this front-end incarnation's last
/// offer was made for, `None` before its first offer. A front-end whose offer was made for
/// another generation than it sees (its back-end restarted since):
/// - `Initialised` or `Connected`, goes `Closing`, whatever state the new back-end shows, so
///   that it resets its rings before offering them again (step 10 of the protocol);
/// - `Closed`, with the back-end showing `Closed` (the hypervisor's mark of the dead back-end,
///   or the new incarnation's start), goes `Initialising` at once instead of waiting for the
///   new back-end's `Initialising` (step 12): that saves a round trip of the reconnection.
pub const fn frontend_next(
    own: State,
    peer: State,
    offered_for: Option<u32>,
    seen: u32,
) -> Option<State> {
    if let Some(offered_for) = offered_for {
        if offered_for != seen {
            match (own, peer) {
                (State::Initialised | State::Connected, _) => return Some(State::Closing),
                (State::Closed, State::Closed) => return Some(State::Initialising),
                _ => {}
            }
        }
    }
    next_state(Side::Frontend, own, peer)
}

#[cfg(test)]
mod stop_tests {
    use super::*;

    #[test]
    fn marks_touch_only_their_fields() {
        let mut page = std::vec![0u8; PAGE_LEN];
        assert_eq!(stopped(&page), 0);
        mark_stopped(&mut page, Side::Backend);
        mark_stopped(&mut page, Side::Frontend);
        assert_eq!(stopped(&page), FRONTEND_STOPPED | BACKEND_STOPPED);
        let mut short = [0u8; 8];
        mark_stopped(&mut short, Side::Backend);
        assert_eq!(stopped(&short), 0);
    }

    #[test]
    fn the_generation_counts_restarts_and_wraps() {
        let mut page = std::vec![0u8; PAGE_LEN];
        assert_eq!(generation(&page), 0);
        bump_generation(&mut page);
        bump_generation(&mut page);
        assert_eq!(generation(&page), 2);
        assert_eq!(stopped(&page), 0, "the stop word is not touched");
        page[GENERATION_WORD..GENERATION_WORD + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        bump_generation(&mut page);
        assert_eq!(generation(&page), 0);
        let mut short = [0u8; 8];
        bump_generation(&mut short);
        assert_eq!(generation(&short), 0);
    }

    #[test]
    fn a_front_end_offered_to_another_generation_closes() {
        use State::*;
        for own in State::ALL {
            for peer in State::ALL {
                let same = frontend_next(own, peer, Some(3), 3);
                assert_eq!(same, next_state(Side::Frontend, own, peer));
                // Before its first offer, a front-end follows the plain protocol.
                assert_eq!(frontend_next(own, peer, None, 4), same, "{own:?} {peer:?}");
                let other = frontend_next(own, peer, Some(3), 4);
                if matches!(own, Initialised | Connected) {
                    assert_eq!(other, Some(Closing), "{own:?} {peer:?}");
                    assert!(transition_allowed(own, Closing));
                } else if (own, peer) == (Closed, Closed) {
                    assert_eq!(other, Some(Initialising));
                    assert!(transition_allowed(own, Initialising));
                } else {
                    assert_eq!(other, same, "{own:?} {peer:?}");
                }
            }
        }
    }
}

/// Hypervisor: marks `side`'s section `Closed` (a fresh section, everything else zero) when that
/// side's VM dies, so the peer sees it gone and closes its end at once, and its next incarnation
/// starts in `Closed` (see the protocol's Restarts). A page shorter than [`PAGE_LEN`] is left
/// alone.
pub fn mark_closed(page: &mut [u8], side: Side) {
    let Ok(page) = page_of_mut(page) else {
        return;
    };
    match side {
        Side::Frontend => {
            let section = Frontend {
                state: State::Closed,
                ..Frontend::initialising()
            };
            store_section(&mut page[FRONTEND], &section.encode());
        }
        Side::Backend => {
            let section = Backend {
                state: State::Closed,
                ..Backend::initialising()
            };
            store_section(&mut page[BACKEND], &section.encode());
        }
    }
}

#[cfg(test)]
mod tests;
