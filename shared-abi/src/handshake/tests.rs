//! Host tests of `handshake`.

use super::*;
use proptest::prelude::*;
use std::vec::Vec;

fn too_small(len: usize) -> HandshakeError {
    HandshakeError::Wire(WireError::TooShort {
        format: "control page",
        len,
        need: PAGE_LEN,
    })
}

fn bad_magic(found: &[u8; 8]) -> HandshakeError {
    HandshakeError::Wire(WireError::BadMagic {
        format: "control page",
        found: *found,
        expected: MAGIC,
    })
}

fn unsupported(found: u32) -> HandshakeError {
    HandshakeError::Wire(WireError::UnsupportedVersion {
        format: "control page",
        found,
        supported: VERSION,
    })
}

fn header() -> Header {
    Header {
        frontend: 2,
        backend: 1,
        frontend_port: 1,
        backend_port: 3,
    }
}

fn fresh_page() -> Vec<u8> {
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
        backend_generation: 7,
        pool_writable: 200,
    }
}

fn backend() -> Backend {
    Backend {
        state: State::Connected,
        features: 0b001,
        mac: [0x02, 0, 0, 0, 0, 0x22],
    }
}

/// A page holding `frontend()` and `backend()`.
fn full_page() -> Vec<u8> {
    let mut page = fresh_page();
    frontend().write_to(&mut page).unwrap();
    backend().write_to(&mut page).unwrap();
    page
}

/// The reserved bytes of each part, as the documented table lists them.
const RESERVED: [Range<usize>; 5] = [24..64, 94..96, 112..128, 132..136, 150..192];

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
    let header = Header {
        frontend: 0x0b,
        backend: 0x0c,
        frontend_port: 0xf1,
        backend_port: 0xf2,
    };
    let fe = Frontend {
        state: State::Initialised,
        tx_ring_ref: 0x101,
        rx_ring_ref: 0x102,
        pool_first_ref: 0x103,
        pool_count: 0x104,
        data_port: 0xf5,
        mac: [0x02, 0x11, 0x12, 0x13, 0x14, 0x15],
        features: 0x2122_2324_2526_2728,
        backend_generation: 0x4142_4344,
        pool_writable: 0x100,
    };
    let be = Backend {
        state: State::Connected,
        features: 0x3132_3334_3536_3738,
        mac: [0x06, 0x41, 0x42, 0x43, 0x44, 0x45],
    };
    let mut page = vec![0; PAGE_LEN];
    header.init_page(&mut page).unwrap();
    fe.write_to(&mut page).unwrap();
    be.write_to(&mut page).unwrap();
    let mut expect = vec![0u8; PAGE_LEN];
    let mut at = |offset: usize, bytes: &[u8]| {
        expect[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    at(0, b"SLCTRL\0\0");
    at(8, &1u32.to_le_bytes());
    at(12, &0x0bu16.to_le_bytes());
    at(14, &0x0cu16.to_le_bytes());
    at(16, &0xf1u32.to_le_bytes());
    at(20, &0xf2u32.to_le_bytes());
    at(64, &3u32.to_le_bytes());
    at(68, &0x101u32.to_le_bytes());
    at(72, &0x102u32.to_le_bytes());
    at(76, &0x103u32.to_le_bytes());
    at(80, &0x104u32.to_le_bytes());
    at(84, &0xf5u32.to_le_bytes());
    at(88, &[0x02, 0x11, 0x12, 0x13, 0x14, 0x15]);
    at(96, &0x2122_2324_2526_2728u64.to_le_bytes());
    at(104, &0x4142_4344u32.to_le_bytes());
    at(108, &0x100u32.to_le_bytes());
    at(128, &4u32.to_le_bytes());
    at(136, &0x3132_3334_3536_3738u64.to_le_bytes());
    at(144, &[0x06, 0x41, 0x42, 0x43, 0x44, 0x45]);
    assert_eq!(page, expect);
    assert_eq!(Header::read_from(&page), Ok(header));
    assert_eq!(Frontend::read_from(&page), Ok(fe));
    assert_eq!(Backend::read_from(&page), Ok(be));
    for (code, s) in (1..).zip(State::ALL) {
        assert_eq!(s.code(), code);
    }
}

#[test]
fn every_reserved_byte_is_checked_and_no_field_byte_is() {
    for at in 0..PAGE_LEN {
        let mut page = full_page();
        page[at] ^= 0x80;
        let result = if HEADER.contains(&at) {
            Header::read_from(&page).map(drop)
        } else if FRONTEND.contains(&at) {
            Frontend::read_from(&page).map(drop)
        } else if BACKEND.contains(&at) {
            Backend::read_from(&page).map(drop)
        } else {
            // Past the sections: nobody reads it.
            assert_eq!(Header::read_from(&page), Ok(header()));
            assert_eq!(Frontend::read_from(&page), Ok(frontend()));
            assert_eq!(Backend::read_from(&page), Ok(backend()));
            continue;
        };
        let reserved = RESERVED.iter().any(|r| r.contains(&at));
        assert_eq!(
            result == Err(HandshakeError::ReservedNotZero),
            reserved,
            "byte {at}: {result:?}"
        );
    }
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
    assert_eq!(page[BACKEND.end..], before[BACKEND.end..]);
    assert_eq!(Frontend::read_from(&page), Ok(frontend()));
    assert_eq!(Backend::read_from(&page), Ok(backend()));
    // A write replaces the whole section: reserved bytes are zeroed, stale fields cleared.
    page[FRONTEND.start + 30] = 0xff;
    page[BACKEND.start + 60] = 0xff;
    Frontend::initialising().write_to(&mut page).unwrap();
    Backend::initialising().write_to(&mut page).unwrap();
    assert_eq!(Frontend::read_from(&page), Ok(Frontend::initialising()));
    assert_eq!(Backend::read_from(&page), Ok(Backend::initialising()));
}

#[test]
fn short_page_is_refused() {
    let page = fresh_page();
    let short = &page[..PAGE_LEN - 1];
    let err = too_small(PAGE_LEN - 1);
    assert_eq!(Header::read_from(short), Err(err));
    assert_eq!(Frontend::read_from(short), Err(err));
    assert_eq!(Backend::read_from(short), Err(err));
    let err = too_small(10);
    let mut small = [0u8; 10];
    assert_eq!(header().init_page(&mut small), Err(err));
    assert_eq!(header().write(&mut small), Err(err));
    assert_eq!(frontend().write_to(&mut small), Err(err));
    assert_eq!(backend().write_to(&mut small), Err(err));
    // A longer buffer is fine: only the first page counts.
    let mut long = vec![0; PAGE_LEN + 1];
    header().init_page(&mut long).unwrap();
    assert_eq!(Header::read_from(&long), Ok(header()));
}

#[test]
fn bad_header_is_refused() {
    let corrupt = |f: fn(&mut [u8])| {
        let mut page = fresh_page();
        f(&mut page);
        Header::read_from(&page).unwrap_err()
    };
    assert_eq!(corrupt(|p| p[0] = b'X'), bad_magic(b"XLCTRL\0\0"));
    assert_eq!(corrupt(|p| p[7] = 1), bad_magic(b"SLCTRL\0\x01"));
    assert_eq!(corrupt(|p| p[8] = 2), unsupported(2));
    assert_eq!(corrupt(|p| p[8] = 0), unsupported(0));
    assert_eq!(corrupt(|p| p[11] = 1), unsupported(0x0100_0001));
    assert_eq!(corrupt(|p| p[24] = 1), HandshakeError::ReservedNotZero);
    assert_eq!(corrupt(|p| p[63] = 1), HandshakeError::ReservedNotZero);
    assert_eq!(corrupt(|p| p[12] = 0), HandshakeError::BadVmIds);
    assert_eq!(corrupt(|p| p[14] = 0), HandshakeError::BadVmIds);
    assert_eq!(corrupt(|p| p[12] = 1), HandshakeError::BadVmIds);
    assert_eq!(
        corrupt(|p| p[14] = MAX_VMS as u8 + 1),
        HandshakeError::BadVmIds
    );
    assert_eq!(corrupt(|p| p[13] = 1), HandshakeError::BadVmIds);
    assert_eq!(corrupt(|p| p[16] = 0), HandshakeError::BadPort { port: 0 });
    assert_eq!(corrupt(|p| p[20] = 0), HandshakeError::BadPort { port: 0 });
    assert_eq!(
        corrupt(|p| p[17] = 1),
        HandshakeError::BadPort { port: 257 }
    );
    assert_eq!(
        corrupt(|p| p[21] = 1),
        HandshakeError::BadPort { port: 259 }
    );
    // The hypervisor's writers refuse the same values.
    let mut page = vec![0; PAGE_LEN];
    let cases = [
        (
            Header {
                backend: 2,
                ..header()
            },
            HandshakeError::BadVmIds,
        ),
        (
            Header {
                frontend: 0,
                ..header()
            },
            HandshakeError::BadVmIds,
        ),
        (
            Header {
                backend: MAX_VMS as u16 + 1,
                ..header()
            },
            HandshakeError::BadVmIds,
        ),
        (
            Header {
                frontend_port: NO_PORT,
                ..header()
            },
            HandshakeError::BadPort { port: NO_PORT },
        ),
        (
            Header {
                backend_port: MAX_PORTS,
                ..header()
            },
            HandshakeError::BadPort { port: MAX_PORTS },
        ),
    ];
    for (bad, err) in cases {
        assert_eq!(bad.init_page(&mut page), Err(err), "{bad:?}");
        assert_eq!(bad.write(&mut page), Err(err), "{bad:?}");
    }
    assert!(page.iter().all(|&b| b == 0), "a refused write wrote");
    // The largest ids and ports are fine.
    let edge = Header {
        frontend: MAX_VMS as u16,
        backend: 1,
        frontend_port: MAX_PORTS - 1,
        backend_port: 1,
    };
    edge.init_page(&mut page).unwrap();
    assert_eq!(Header::read_from(&page), Ok(edge));
    // `write` rewrites only the header fields.
    frontend().write_to(&mut page).unwrap();
    header().write(&mut page).unwrap();
    assert_eq!(Header::read_from(&page), Ok(header()));
    assert_eq!(Frontend::read_from(&page), Ok(frontend()));
}

#[test]
fn unknown_states_are_refused() {
    for code in [0, 7, 0x100, u32::MAX] {
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

/// `section`'s bytes put on a fresh page past the writer's validation.
fn forged(section: [u8; SECTION_LEN], at: Range<usize>) -> Vec<u8> {
    let mut page = fresh_page();
    page[at].copy_from_slice(&section);
    page
}

#[test]
fn bad_frontend_values_are_refused() {
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
                pool_first_ref: MAX_REFS,
                pool_count: 0,
                ..frontend()
            },
            HandshakeError::BadRef { gref: MAX_REFS },
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
                pool_count: u32::MAX,
                ..frontend()
            },
            HandshakeError::BadPool,
        ),
        (
            Frontend {
                pool_writable: 257,
                ..frontend()
            },
            HandshakeError::BadWritablePool {
                writable: 257,
                pages: 256,
            },
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
                state: State::Connected,
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
        let mut page = fresh_page();
        let before = page.clone();
        assert_eq!(section.write_to(&mut page), Err(err), "{section:?}");
        assert_eq!(page, before, "a refused write wrote");
        // The same values, written past the writer's check, are refused by the reader.
        let page = forged(section.encode(), FRONTEND);
        assert_eq!(Frontend::read_from(&page), Err(err), "{section:?}");
    }
    // The limits themselves are fine, and so is a missing port before `Initialised`.
    let edge = Frontend {
        pool_first_ref: MAX_REFS - 2,
        pool_count: 2,
        pool_writable: 2,
        data_port: MAX_PORTS - 1,
        mac: [0; 6],
        ..frontend()
    };
    let mut page = fresh_page();
    edge.write_to(&mut page).unwrap();
    assert_eq!(Frontend::read_from(&page), Ok(edge));
    for state in [State::Initialising, State::Closing, State::Closed] {
        let section = Frontend {
            state,
            data_port: NO_PORT,
            ..frontend()
        };
        section.write_to(&mut page).unwrap();
        assert_eq!(Frontend::read_from(&page), Ok(section));
    }
    // Reserved bytes, by absolute offset as the table gives them.
    for at in [94, 95, 112, 127] {
        let mut page = full_page();
        page[at] = 1;
        assert_eq!(
            Frontend::read_from(&page),
            Err(HandshakeError::ReservedNotZero),
            "byte {at}"
        );
    }
}

#[test]
fn bad_backend_values_are_refused() {
    let cases = [
        (
            Backend {
                mac: [0xff; 6],
                ..backend()
            },
            HandshakeError::MulticastMac,
        ),
        (
            Backend {
                state: State::InitWait,
                mac: [0x03, 0, 0, 0, 0, 0],
                ..backend()
            },
            HandshakeError::MulticastMac,
        ),
        (
            Backend {
                mac: [0; 6],
                ..backend()
            },
            HandshakeError::Incomplete,
        ),
    ];
    for (section, err) in cases {
        let mut page = fresh_page();
        let before = page.clone();
        assert_eq!(section.write_to(&mut page), Err(err), "{section:?}");
        assert_eq!(page, before, "a refused write wrote");
        let page = forged(section.encode(), BACKEND);
        assert_eq!(Backend::read_from(&page), Err(err), "{section:?}");
    }
    // Only `Connected` needs the MAC.
    let mut page = fresh_page();
    for state in State::ALL.into_iter().filter(|&s| s != State::Connected) {
        let section = Backend {
            state,
            mac: [0; 6],
            ..backend()
        };
        section.write_to(&mut page).unwrap();
        assert_eq!(Backend::read_from(&page), Ok(section));
    }
    for at in [132, 135, 150, 191] {
        let mut page = full_page();
        page[at] = 1;
        assert_eq!(
            Backend::read_from(&page),
            Err(HandshakeError::ReservedNotZero),
            "byte {at}"
        );
    }
}

#[test]
fn every_error_displays_distinctly() {
    use HandshakeError::*;
    let all = [
        too_small(10),
        bad_magic(b"XLCTRL\0\0"),
        unsupported(2),
        ReservedNotZero,
        BadVmIds,
        BadPort { port: 300 },
        UnknownState { code: 9 },
        BadRef { gref: 5000 },
        BadPool,
        MulticastMac,
        Incomplete,
    ];
    let shown: Vec<_> = all.iter().map(std::string::ToString::to_string).collect();
    for (i, text) in shown.iter().enumerate() {
        assert!(!text.is_empty());
        assert!(!shown[..i].contains(text), "{text}");
    }
    assert!(shown[0].contains("10") && shown[2].contains('2') && shown[5].contains("300"));
    assert!(shown[6].contains('9') && shown[7].contains("5000"));
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
fn next_state_is_the_documented_table() {
    use State::*;
    let not = |except: &[State]| -> Vec<State> {
        State::ALL
            .into_iter()
            .filter(|s| !except.contains(s))
            .collect()
    };
    let rules: [(Side, State, Vec<State>, State); 11] = [
        (Side::Frontend, Initialising, vec![InitWait], Initialised),
        (Side::Frontend, Initialised, vec![Connected], Connected),
        (Side::Frontend, Connected, not(&[Connected]), Closing),
        (Side::Frontend, Closing, State::ALL.to_vec(), Closed),
        (Side::Frontend, Closed, vec![Initialising], Initialising),
        (
            Side::Backend,
            Initialising,
            vec![Initialising, Initialised],
            InitWait,
        ),
        (Side::Backend, InitWait, vec![Initialised], Connected),
        (Side::Backend, InitWait, vec![Closed], Closing),
        (
            Side::Backend,
            Connected,
            vec![Initialising, InitWait, Closing, Closed],
            Closing,
        ),
        (Side::Backend, Closing, State::ALL.to_vec(), Closed),
        (
            Side::Backend,
            Closed,
            vec![Initialising, Initialised, Closed],
            Initialising,
        ),
    ];
    for side in [Side::Frontend, Side::Backend] {
        for own in State::ALL {
            for peer in State::ALL {
                let expect = rules
                    .iter()
                    .find(|(s, o, p, _)| *s == side && *o == own && p.contains(&peer))
                    .map(|r| r.3);
                assert_eq!(
                    next_state(side, own, peer),
                    expect,
                    "{side:?} {own:?} (peer {peer:?})"
                );
            }
        }
    }
}

#[test]
fn every_protocol_step_is_an_allowed_transition_of_its_side() {
    for side in [Side::Frontend, Side::Backend] {
        for own in State::ALL {
            for peer in State::ALL {
                if let Some(next) = next_state(side, own, peer) {
                    assert!(
                        transition_allowed(own, next),
                        "{side:?} {own:?} (peer {peer:?}) -> {next:?}"
                    );
                    let never = match side {
                        Side::Frontend => State::InitWait,
                        Side::Backend => State::Initialised,
                    };
                    assert_ne!(next, never, "{side:?} {own:?} (peer {peer:?})");
                }
            }
        }
    }
}

#[test]
fn mark_closed_closes_only_that_section() {
    for side in [Side::Frontend, Side::Backend] {
        let mut page = full_page();
        let before = page.clone();
        mark_closed(&mut page, side);
        let (mine, other) = match side {
            Side::Frontend => (FRONTEND, BACKEND),
            Side::Backend => (BACKEND, FRONTEND),
        };
        assert_eq!(page[..mine.start], before[..mine.start]);
        assert_eq!(page[mine.end..], before[mine.end..]);
        assert_eq!(page[other.clone()], before[other]);
        match side {
            Side::Frontend => assert_eq!(
                Frontend::read_from(&page),
                Ok(Frontend {
                    state: State::Closed,
                    ..Frontend::initialising()
                })
            ),
            Side::Backend => assert_eq!(
                Backend::read_from(&page),
                Ok(Backend {
                    state: State::Closed,
                    ..Backend::initialising()
                })
            ),
        }
        let mut small = [0u8; 100];
        mark_closed(&mut small, side);
        assert_eq!(small, [0; 100]);
    }
}

/// The protocol on a real page: both sides act on real (possibly stale or torn) copies of it,
/// with grants and mappings as the hypervisor enforces them.
mod paged {
    use super::*;

    #[derive(Clone, Copy, Debug)]
    pub(super) enum Ev {
        /// The side takes a copy of the page; if it had loaded the peer's state word before
        /// (`LoadState`), the copy has that older state word with the current fields.
        Copy(Side),
        /// The side loads the peer's state word, the first part of a copy.
        LoadState(Side),
        /// The side takes one step on its copy, or, if dead, its next incarnation starts.
        Step(Side),
        /// The side's VM dies.
        Die(Side),
        /// The side resets the connection: `Closing`.
        Close(Side),
    }

    struct Fe {
        state: State,
        /// The tx ref of the rings it currently grants (rx and pool follow).
        granted: Option<u32>,
        copy: Vec<u8>,
        /// `copy` was taken after its last write.
        unused: bool,
        /// The back-end's state word, loaded for the next copy.
        loaded: Option<[u8; STATE_LEN]>,
        dead: bool,
    }

    struct Be {
        state: State,
        /// The tx ref of the rings it maps.
        mapped: Option<u32>,
        /// Has mapped, not yet written `Connected`.
        connecting: bool,
        copy: Vec<u8>,
        unused: bool,
        loaded: Option<[u8; STATE_LEN]>,
        dead: bool,
    }

    pub(super) struct World {
        page: Vec<u8>,
        fe: Fe,
        be: Be,
        next_ref: u32,
        /// The hypervisor marks a dead side's section `Closed`.
        marks_dead: bool,
        /// A back-end whose GRANT_MAP fails goes `Closing` (otherwise it waits).
        map_failure_closes: bool,
        /// Every write of a side (and start), in order.
        pub log: Vec<(Side, State)>,
    }

    impl World {
        pub fn new(marks_dead: bool, map_failure_closes: bool) -> World {
            let page = fresh_page();
            World {
                fe: Fe {
                    state: State::Initialising,
                    granted: None,
                    copy: page.clone(),
                    unused: true,
                    loaded: None,
                    dead: false,
                },
                be: Be {
                    state: State::Initialising,
                    mapped: None,
                    connecting: false,
                    copy: page.clone(),
                    unused: true,
                    loaded: None,
                    dead: false,
                },
                page,
                next_ref: 10,
                marks_dead,
                map_failure_closes,
                log: Vec::new(),
            }
        }

        /// The front-end writes `next`; `start`: its new incarnation's first write.
        fn write_fe(&mut self, next: State, start: bool) {
            assert!(start || transition_allowed(self.fe.state, next));
            self.fe.state = next;
            self.fe.unused = false;
            self.fe.loaded = None;
            let section = match (next, self.fe.granted) {
                (State::Initialised | State::Connected | State::Closing, Some(r)) => Frontend {
                    state: next,
                    tx_ring_ref: r,
                    rx_ring_ref: r + 1,
                    pool_first_ref: r + 2,
                    pool_count: 1,
                    pool_writable: 1,
                    ..frontend()
                },
                _ => Frontend {
                    state: next,
                    ..Frontend::initialising()
                },
            };
            section.write_to(&mut self.page).unwrap();
            self.log.push((Side::Frontend, next));
        }

        fn write_be(&mut self, next: State, start: bool) {
            assert!(start || transition_allowed(self.be.state, next));
            self.be.state = next;
            self.be.unused = false;
            self.be.loaded = None;
            let section = if next == State::Connected {
                backend()
            } else {
                Backend {
                    state: next,
                    ..Backend::initialising()
                }
            };
            section.write_to(&mut self.page).unwrap();
            self.log.push((Side::Backend, next));
        }

        /// A new incarnation starts where its section says (see the protocol's Restarts).
        fn start_state(shown: Result<State, HandshakeError>) -> State {
            if shown == Ok(State::Initialising) {
                State::Initialising
            } else {
                State::Closed
            }
        }

        /// The front-end's step; whether it did anything.
        fn fe_step(&mut self) -> bool {
            if self.fe.dead {
                self.fe.dead = false;
                let shown = Frontend::read_from(&self.page).map(|f| f.state);
                self.write_fe(Self::start_state(shown), true);
                self.fe.copy = self.page.clone();
                self.fe.unused = true;
                return true;
            }
            if !self.fe.unused {
                return false;
            }
            let Ok(peer) = Backend::read_from(&self.fe.copy) else {
                return false;
            };
            let Some(next) = next_state(Side::Frontend, self.fe.state, peer.state) else {
                return false;
            };
            match next {
                State::Initialised => {
                    self.fe.granted = Some(self.next_ref);
                    self.next_ref += 3;
                }
                // GRANT_END is Busy while the back-end maps the rings.
                State::Closed if self.fe.granted.is_some() => {
                    if self.be.mapped == self.fe.granted {
                        return false;
                    }
                    self.fe.granted = None;
                }
                State::Connected => assert_eq!(peer, backend()),
                _ => {}
            }
            self.write_fe(next, false);
            true
        }

        /// The back-end's step; whether it did anything.
        fn be_step(&mut self) -> bool {
            if self.be.dead {
                self.be.dead = false;
                let shown = Backend::read_from(&self.page).map(|b| b.state);
                self.write_be(Self::start_state(shown), true);
                self.be.copy = self.page.clone();
                self.be.unused = true;
                return true;
            }
            if self.be.connecting {
                self.be.connecting = false;
                self.write_be(State::Connected, false);
                return true;
            }
            if !self.be.unused {
                return false;
            }
            let Ok(peer) = Frontend::read_from(&self.be.copy) else {
                return false;
            };
            let Some(next) = next_state(Side::Backend, self.be.state, peer.state) else {
                return false;
            };
            match next {
                State::Connected => {
                    // GRANT_MAP of the refs in the copy fails unless they are granted now.
                    let tx = peer.tx_ring_ref;
                    if Some(tx) != self.fe.granted
                        || peer.rx_ring_ref != tx + 1
                        || peer.pool_first_ref != tx + 2
                    {
                        if self.map_failure_closes {
                            self.write_be(State::Closing, false);
                            return true;
                        }
                        return false;
                    }
                    self.be.mapped = Some(tx);
                    self.be.connecting = true;
                    self.be.unused = false;
                    return true;
                }
                State::Closed => self.be.mapped = None,
                _ => {}
            }
            self.write_be(next, false);
            true
        }

        pub fn apply(&mut self, ev: Ev) {
            let fe_state = FRONTEND.start..FRONTEND.start + STATE_LEN;
            let be_state = BACKEND.start..BACKEND.start + STATE_LEN;
            match ev {
                Ev::LoadState(Side::Frontend) if !self.fe.dead => {
                    self.fe.loaded = Some(self.page[be_state].try_into().unwrap());
                }
                Ev::LoadState(Side::Backend) if !self.be.dead => {
                    self.be.loaded = Some(self.page[fe_state].try_into().unwrap());
                }
                Ev::Copy(Side::Frontend) if !self.fe.dead => {
                    self.fe.copy = self.page.clone();
                    if let Some(word) = self.fe.loaded.take() {
                        self.fe.copy[be_state].copy_from_slice(&word);
                    }
                    self.fe.unused = true;
                }
                Ev::Copy(Side::Backend) if !self.be.dead => {
                    self.be.copy = self.page.clone();
                    if let Some(word) = self.be.loaded.take() {
                        self.be.copy[fe_state].copy_from_slice(&word);
                    }
                    self.be.unused = true;
                }
                Ev::Step(Side::Frontend) => {
                    self.fe_step();
                }
                Ev::Step(Side::Backend) => {
                    self.be_step();
                }
                // A dead front-end's grants die with it; the back-end's mappings of them
                // stay until it unmaps.
                Ev::Die(Side::Frontend) if !self.fe.dead => {
                    self.fe.dead = true;
                    self.fe.granted = None;
                    if self.marks_dead {
                        mark_closed(&mut self.page, Side::Frontend);
                    }
                }
                // The hypervisor tears down a dead back-end's mappings.
                Ev::Die(Side::Backend) if !self.be.dead => {
                    self.be.dead = true;
                    self.be.mapped = None;
                    self.be.connecting = false;
                    if self.marks_dead {
                        mark_closed(&mut self.page, Side::Backend);
                    }
                }
                Ev::Close(Side::Frontend)
                    if !self.fe.dead
                        && !matches!(self.fe.state, State::Closing | State::Closed) =>
                {
                    self.write_fe(State::Closing, false);
                }
                Ev::Close(Side::Backend)
                    if !self.be.dead
                        && !matches!(self.be.state, State::Closing | State::Closed) =>
                {
                    self.be.connecting = false;
                    self.write_be(State::Closing, false);
                }
                _ => {}
            }
        }

        /// No more disturbances: each side in turn takes a current copy and steps, until
        /// neither does anything. Then both must be connected on the current rings.
        pub fn settle(&mut self) {
            // Copies from here on are current: drop state words loaded before.
            self.fe.loaded = None;
            self.be.loaded = None;
            for _ in 0..64 {
                self.apply(Ev::Copy(Side::Frontend));
                let a = self.fe_step();
                self.apply(Ev::Copy(Side::Backend));
                let b = self.be_step();
                if !a && !b {
                    break;
                }
            }
            assert_eq!(self.fe.state, State::Connected, "{:?}", self.log);
            assert_eq!(self.be.state, State::Connected, "{:?}", self.log);
            assert!(self.fe.granted.is_some(), "{:?}", self.log);
            assert_eq!(self.be.mapped, self.fe.granted, "{:?}", self.log);
            let fe = Frontend::read_from(&self.page).unwrap();
            assert_eq!(fe.state, State::Connected);
            assert_eq!(Some(fe.tx_ring_ref), self.fe.granted);
            assert_eq!(Backend::read_from(&self.page), Ok(backend()));
            assert_eq!(Header::read_from(&self.page), Ok(header()));
        }
    }
}

use paged::Ev;

/// Runs `events` (the hypervisor marking dead sections, a back-end that waits on a failed
/// map), then settles; panics unless connected.
fn run(events: &[Ev]) -> paged::World {
    run_with(events, true, false)
}

fn run_with(events: &[Ev], marks_dead: bool, map_failure_closes: bool) -> paged::World {
    let mut world = paged::World::new(marks_dead, map_failure_closes);
    for &ev in events {
        world.apply(ev);
    }
    world.settle();
    world
}

/// `side` takes a current copy and a step, `n` times.
fn steps(side: Side, n: usize) -> Vec<Ev> {
    [Ev::Copy(side), Ev::Step(side)].repeat(n)
}

/// Both sides take turns with current copies, long enough to settle.
fn settle_events() -> Vec<Ev> {
    [steps(Side::Frontend, 1), steps(Side::Backend, 1)]
        .concat()
        .repeat(16)
}

#[test]
fn model_follows_the_documented_sequences() {
    use State::*;
    let (f, b) = (Side::Frontend, Side::Backend);
    let world = run(&[]);
    assert_eq!(
        world.log,
        [
            (b, InitWait),
            (f, Initialised),
            (b, Connected),
            (f, Connected)
        ]
    );
    let restart = |side| {
        let world = run(&[settle_events(), vec![Ev::Die(side), Ev::Step(side)]].concat());
        world.log[4..].to_vec()
    };
    assert_eq!(
        restart(f),
        [
            (f, Closed),
            (b, Closing),
            (b, Closed),
            (b, Initialising),
            (f, Initialising),
            (b, InitWait),
            (f, Initialised),
            (b, Connected),
            (f, Connected),
        ]
    );
    assert_eq!(
        restart(b),
        [
            (b, Closed),
            (f, Closing),
            (f, Closed),
            (b, Initialising),
            (f, Initialising),
            (b, InitWait),
            (f, Initialised),
            (b, Connected),
            (f, Connected),
        ]
    );
}

#[test]
fn model_connects_and_reconnects_after_either_restart() {
    let (f, b) = (Side::Frontend, Side::Backend);
    for (marks_dead, map_failure_closes) in [(true, false), (true, true), (false, false)] {
        let run = |events: &[Ev]| run_with(events, marks_dead, map_failure_closes);
        // Connect; then each side in turn dies, comes back, and they reconnect.
        let mut events = settle_events();
        for side in [f, b, f, b] {
            run(&events);
            events.extend([Ev::Die(side), Ev::Step(side)]);
            events.extend(settle_events());
        }
        run(&events);
        // Both die at once; one dies while the other waits on it; a reset by each side.
        run(&[Ev::Die(f), Ev::Die(b), Ev::Step(b), Ev::Step(f)]);
        run(&[Ev::Die(b), Ev::Copy(f), Ev::Step(f), Ev::Step(b)]);
        run(&[Ev::Close(f)]);
        run(&[Ev::Close(b)]);
        // The case that used to end with both sides `Closed`: the back-end restarts while
        // the front-end is `Initialised`.
        let mut events = steps(b, 8);
        events.extend(steps(f, 1));
        events.extend([Ev::Die(b), Ev::Step(b)]);
        events.extend(steps(f, 1));
        events.extend(steps(b, 2));
        run(&events);
        // The front-end dies between the back-end's GRANT_MAP and its `Connected`, and its
        // new incarnation reads the back-end's old `InitWait`: it must not publish on it.
        let mut events = [steps(b, 1), steps(f, 1), steps(b, 1)].concat();
        events.extend([Ev::Die(f), Ev::Step(f)]);
        events.extend(steps(f, 2));
        events.push(Ev::Step(b));
        let world = run(&events);
        assert!(world.log.contains(&(b, State::Closing)), "{:?}", world.log);
    }
}

// ---- a hostile peer: any bytes in the control page ----

/// A valid page with up to 16 bytes of the used part (header, sections, stop word) set to
/// anything: mostly one field broken at a time, so each check is reached.
fn scribbled_page() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((0..STOPPED_WORD + 8, any::<u8>()), 0..16).prop_map(|edits| {
        let mut page = full_page();
        for (at, byte) in edits {
            page[at] = byte;
        }
        page
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Whatever a peer wrote, every reader returns a value or an error, and a value it
    /// returns is exactly what writing it back produces: nothing half-checked gets through.
    #[test]
    fn readers_accept_only_what_writers_produce(page in scribbled_page()) {
        if let Ok(h) = Header::read_from(&page) {
            let mut again = vec![0; PAGE_LEN];
            h.init_page(&mut again).unwrap();
            prop_assert_eq!(Header::read_from(&again), Ok(h));
            prop_assert_eq!(&page[HEADER], &again[HEADER]);
        }
        if let Ok(f) = Frontend::read_from(&page) {
            let mut again = fresh_page();
            f.write_to(&mut again).unwrap();
            prop_assert_eq!(&page[FRONTEND], &again[FRONTEND]);
        }
        if let Ok(b) = Backend::read_from(&page) {
            let mut again = fresh_page();
            b.write_to(&mut again).unwrap();
            prop_assert_eq!(&page[BACKEND], &again[BACKEND]);
        }
    }

    /// The hypervisor's writes into a page a guest scribbled on touch only their own bytes
    /// and leave a section the peer reads as `Closed`.
    #[test]
    fn hypervisor_marks_touch_only_their_bytes(
        page in scribbled_page(),
        front in any::<bool>(),
        stop in any::<bool>(),
    ) {
        let (side, range) = if front {
            (Side::Frontend, FRONTEND)
        } else {
            (Side::Backend, BACKEND)
        };
        let mut marked = page.clone();
        mark_closed(&mut marked, side);
        if stop {
            mark_stopped(&mut marked, side);
        }
        for (i, (a, b)) in page.iter().zip(&marked).enumerate() {
            let stop_word = stop && (STOPPED_WORD..STOPPED_WORD + 4).contains(&i);
            prop_assert!(a == b || range.contains(&i) || stop_word, "byte {} changed", i);
        }
        let state = if front {
            Frontend::read_from(&marked).map(|f| f.state)
        } else {
            Backend::read_from(&marked).map(|b| b.state)
        };
        prop_assert_eq!(state, Ok(State::Closed));
    }

    /// A page shorter than the layout is refused by every reader and left alone by every
    /// writer.
    #[test]
    fn short_pages_are_refused(len in 0..PAGE_LEN, front in any::<bool>()) {
        let mut page = full_page();
        page.truncate(len);
        let before = page.clone();
        let too_small = Some(too_small(len));
        prop_assert_eq!(Header::read_from(&page).err(), too_small);
        prop_assert_eq!(Frontend::read_from(&page).err(), too_small);
        prop_assert_eq!(Backend::read_from(&page).err(), too_small);
        let side = if front { Side::Frontend } else { Side::Backend };
        mark_closed(&mut page, side);
        prop_assert_eq!(&page, &before);
        if len < STOPPED_WORD + 4 {
            mark_stopped(&mut page, side);
            prop_assert_eq!(&page, &before);
        }
    }
}

fn event() -> impl Strategy<Value = Ev> {
    let side = prop_oneof![Just(Side::Frontend), Just(Side::Backend)];
    (0..12u8, side).prop_map(|(kind, side)| match kind {
        0..=3 => Ev::Copy(side),
        4 => Ev::LoadState(side),
        5..=9 => Ev::Step(side),
        10 => Ev::Die(side),
        _ => Ev::Close(side),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn model_survives_any_interleaving_of_steps_and_restarts(
        events in prop::collection::vec(event(), 0..120),
        opts in prop_oneof![Just((true, false)), Just((true, true)), Just((false, false))],
    ) {
        run_with(&events, opts.0, opts.1);
    }
}

/// Exhaustive model check of [`next_state`] over every interleaving, on an abstract page.
mod exhaustive {
    use super::*;
    use std::collections::HashMap;
    use std::string::String;
    use std::vec::Vec;

    /// How the parts outside this module behave; the protocol must work with either choice.
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Opts {
        /// The hypervisor marks a dead side's section `Closed` ([`mark_closed`]) at once;
        /// otherwise the section keeps its last contents until the next incarnation starts.
        pub marks_dead: bool,
        /// A back-end whose GRANT_MAP fails goes `Closing`; otherwise it waits.
        pub map_failure_closes: bool,
    }

    /// One set of rings (and data port) the front-end granted: incarnation and session.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Ring {
        inc: u8,
        sess: u8,
    }

    /// The front-end section as written: its state and the rings it names (if any).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct FeSec {
        state: State,
        ring: Option<Ring>,
        /// The back-end generation the offer was made for.
        gen: u8,
    }

    /// The back-end section as written: its state and, as ghost data the page does not hold,
    /// the writer's incarnation and the rings it had mapped when it wrote `Connected`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct BeSec {
        state: State,
        inc: u8,
        ring: Option<Ring>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Fe {
        inc: u8,
        /// Sessions (sets of rings) granted by this incarnation so far.
        sess: u8,
        state: State,
        /// The rings it grants and has not ended.
        granted: Option<Ring>,
        /// Its copy of the back-end's section, possibly stale.
        view: BeSec,
        /// `view` was taken after its last write (a step needs such a copy).
        unused: bool,
        /// Died; its next incarnation has not started yet.
        dead: bool,
        /// The back-end generation in its copy of the page.
        gen_seen: u8,
        /// The generation its current rings were offered for (reset for).
        offered_for: u8,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Be {
        inc: u8,
        state: State,
        mapped: Option<Ring>,
        /// Has mapped the rings but not yet written `Connected`.
        connecting: bool,
        /// Its copy of the front-end's section, possibly stale or torn.
        view: FeSec,
        /// A copy in progress: the state word it has loaded (after its last write).
        loading: Option<State>,
        /// `view` was taken after its last write (a step needs such a copy).
        unused: bool,
        /// Died; its next incarnation has not started yet.
        dead: bool,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct World {
        fe: Fe,
        be: Be,
        /// The page.
        fsec: FeSec,
        bsec: BeSec,
        /// Disturbances left.
        restarts: u8,
        closes: u8,
        /// The hypervisor's back-end generation word (back-end deaths so far; the back-end's
        /// incarnation number is its generation).
        generation: u8,
        /// Ghost: the rings the last back-end `Connected` was written for, and by which
        /// incarnation (that one may have moved their indices).
        used: Option<(Ring, u8)>,
    }

    fn ring_code(r: Option<Ring>) -> u8 {
        r.map_or(0xff, |r| r.inc << 4 | r.sess)
    }

    fn key(w: &World) -> [u8; 23] {
        let st = |s: State| s as u8;
        let flags = u8::from(w.fe.unused)
            | u8::from(w.be.unused) << 1
            | u8::from(w.fe.dead) << 2
            | u8::from(w.be.dead) << 3
            | u8::from(w.be.connecting) << 4;
        let loading = w.be.loading.map_or(0, |s| s as u8);
        [
            w.fe.inc << 4 | w.fe.sess,
            st(w.fe.state) | st(w.be.state) << 4,
            ring_code(w.fe.granted),
            st(w.fe.view.state) | w.fe.view.inc << 4,
            ring_code(w.fe.view.ring),
            w.be.inc,
            ring_code(w.be.mapped),
            st(w.be.view.state),
            ring_code(w.be.view.ring),
            st(w.fsec.state),
            ring_code(w.fsec.ring),
            st(w.bsec.state) | w.bsec.inc << 4,
            ring_code(w.bsec.ring),
            flags,
            w.restarts,
            w.closes,
            loading,
            w.generation,
            w.fe.gen_seen,
            w.fe.offered_for,
            w.fsec.gen,
            ring_code(w.used.map(|(r, _)| r)),
            w.used.map_or(0xff, |(_, inc)| inc),
        ]
    }

    fn show_ring(r: Option<Ring>) -> String {
        r.map_or("-".into(), |r| std::format!("{}.{}", r.inc, r.sess))
    }

    /// One line per world, for failure traces.
    fn show(w: &World) -> String {
        let used = |unused| if unused { "" } else { " (used)" };
        std::format!(
            "fe#{}{} {:?} granted {} sees {:?}({}){} | be#{}{} {:?}{} mapped {} sees \
                 {:?}({}){} | page fe {:?}({}) be {:?} gen {} | restarts {} closes {}",
            w.fe.inc,
            if w.fe.dead { " dead" } else { "" },
            w.fe.state,
            show_ring(w.fe.granted),
            w.fe.view.state,
            show_ring(w.fe.view.ring),
            used(w.fe.unused),
            w.be.inc,
            if w.be.dead { " dead" } else { "" },
            w.be.state,
            if w.be.connecting { "+mapping" } else { "" },
            show_ring(w.be.mapped),
            w.be.view.state,
            show_ring(w.be.view.ring),
            used(w.be.unused),
            w.fsec.state,
            show_ring(w.fsec.ring),
            w.bsec.state,
            w.generation,
            w.restarts,
            w.closes,
        )
    }

    /// Where a new incarnation starts, from what its section shows.
    fn start_state(shown: State) -> State {
        if shown == State::Initialising {
            State::Initialising
        } else {
            State::Closed
        }
    }

    /// The front-end writes `next`; `start`: its new incarnation's first write.
    fn write_fe(w: &mut World, next: State, start: bool) {
        assert!(start || transition_allowed(w.fe.state, next), "{}", show(w));
        w.fe.state = next;
        w.fe.unused = false;
        let ring = match next {
            State::Initialised | State::Connected | State::Closing => w.fe.granted,
            _ => None,
        };
        w.fsec = FeSec {
            state: next,
            ring,
            gen: w.fe.offered_for,
        };
    }

    /// The front-end takes a current copy: the back-end's section and the generation word.
    fn fe_copy(w: &mut World) {
        (w.fe.view, w.fe.unused, w.fe.gen_seen) = (w.bsec, true, w.generation);
    }

    fn write_be(w: &mut World, next: State, start: bool) {
        assert!(start || transition_allowed(w.be.state, next), "{}", show(w));
        w.be.loading = None;
        w.be.state = next;
        w.be.unused = false;
        let ring = w.be.mapped.filter(|_| next == State::Connected);
        w.bsec = BeSec {
            state: next,
            inc: w.be.inc,
            ring,
        };
    }

    /// The front-end's step on its copy, with its work, if it can take one; or, dead, its
    /// next incarnation's start.
    fn fe_step(w: &World) -> Option<World> {
        let mut n = *w;
        if w.fe.dead {
            n.fe.inc += 1;
            n.fe.sess = 0;
            n.fe.dead = false;
            write_fe(&mut n, start_state(w.fsec.state), true);
            fe_copy(&mut n);
            return Some(n);
        }
        if !w.fe.unused {
            return None;
        }
        // An incarnation that has granted no rings yet has made no offer.
        let offered_for = (w.fe.sess > 0).then_some(u32::from(w.fe.offered_for));
        let next = frontend_next(
            w.fe.state,
            w.fe.view.state,
            offered_for,
            u32::from(w.fe.gen_seen),
        )?;
        match next {
            State::Initialised => {
                // New (reset) rings, offered for the generation this copy shows.
                n.fe.offered_for = w.fe.gen_seen;
                n.fe.sess += 1;
                n.fe.granted = Some(Ring {
                    inc: n.fe.inc,
                    sess: n.fe.sess,
                });
            }
            // GRANT_END is Busy while the back-end maps the rings.
            State::Closed if w.fe.granted.is_some() && w.be.mapped == w.fe.granted => return None,
            State::Closed => n.fe.granted = None,
            _ => {}
        }
        write_fe(&mut n, next, false);
        Some(n)
    }

    /// The back-end's step on its copy, with its work, if it can take one; or, dead, its
    /// next incarnation's start.
    fn be_step(w: &World, opts: Opts) -> Option<World> {
        let mut n = *w;
        if w.be.dead {
            n.be.inc += 1;
            n.be.dead = false;
            write_be(&mut n, start_state(w.bsec.state), true);
            (n.be.view, n.be.unused) = (w.fsec, true);
            return Some(n);
        }
        if w.be.connecting {
            n.be.connecting = false;
            n.used = w.be.mapped.map(|r| (r, w.be.inc));
            write_be(&mut n, State::Connected, false);
            return Some(n);
        }
        if !w.be.unused || w.be.loading.is_some() {
            return None;
        }
        let next = next_state(Side::Backend, w.be.state, w.be.view.state)?;
        match next {
            State::Connected => {
                // An offer made to an earlier generation is not for it: it waits.
                if w.be.view.gen != w.be.inc {
                    return None;
                }
                // GRANT_MAP of the refs in its copy fails unless they are granted now.
                let ring = w.be.view.ring;
                if ring.is_none() || ring != w.fe.granted {
                    if !opts.map_failure_closes {
                        return None;
                    }
                    write_be(&mut n, State::Closing, false);
                    return Some(n);
                }
                if let (Some(r), Some((used, by))) = (ring, w.used) {
                    assert!(
                        r != used || by == w.be.inc,
                        "back-end #{} maps rings back-end #{by} used:\n{}",
                        w.be.inc,
                        show(w)
                    );
                }
                n.be.mapped = ring;
                n.be.connecting = true;
                n.be.unused = false;
                return Some(n);
            }
            State::Closed => n.be.mapped = None,
            _ => {}
        }
        write_be(&mut n, next, false);
        Some(n)
    }

    fn successors(w: &World, opts: Opts, out: &mut Vec<World>) {
        out.clear();
        // Copies: a current one, or (back-end) one in two parts: the state word now, the rest
        // later, after the front-end may have written again (a torn copy, which validation
        // refuses if it is `Initialised`/`Connected` without rings).
        if !w.fe.dead {
            let mut n = *w;
            fe_copy(&mut n);
            out.push(n);
        }
        if !w.be.dead {
            match w.be.loading {
                None => {
                    let mut n = *w;
                    (n.be.view, n.be.unused) = (w.fsec, true);
                    out.push(n);
                    let mut n = *w;
                    n.be.loading = Some(w.fsec.state);
                    out.push(n);
                }
                Some(state) => {
                    let mut n = *w;
                    n.be.loading = None;
                    let torn = FeSec { state, ..w.fsec };
                    if !past_setup(state) || torn.ring.is_some() {
                        (n.be.view, n.be.unused) = (torn, true);
                    }
                    out.push(n);
                }
            }
        }
        out.extend(fe_step(w));
        out.extend(be_step(w, opts));
        // A side dies at any point. A dead front-end's grants die with it, though the
        // back-end's mappings of them stay until it unmaps; the hypervisor tears down a dead
        // back-end's mappings.
        if w.restarts > 0 && !w.fe.dead {
            let mut n = *w;
            n.restarts -= 1;
            n.fe.dead = true;
            n.fe.granted = None;
            if opts.marks_dead {
                n.fsec = FeSec {
                    state: State::Closed,
                    ring: None,
                    gen: 0,
                };
            }
            out.push(n);
        }
        if w.restarts > 0 && !w.be.dead {
            let mut n = *w;
            n.restarts -= 1;
            n.be.dead = true;
            n.be.mapped = None;
            n.be.connecting = false;
            n.be.loading = None;
            n.generation += 1;
            if opts.marks_dead {
                n.bsec.state = State::Closed;
                n.bsec.ring = None;
            }
            out.push(n);
        }
        if w.closes > 0 {
            // A side resets the connection on its own (step 6) and then keeps following
            // the protocol.
            if !w.fe.dead && !matches!(w.fe.state, State::Closing | State::Closed) {
                let mut n = *w;
                n.closes -= 1;
                write_fe(&mut n, State::Closing, false);
                out.push(n);
            }
            if !w.be.dead && !matches!(w.be.state, State::Closing | State::Closed) {
                let mut n = *w;
                n.closes -= 1;
                n.be.connecting = false;
                write_be(&mut n, State::Closing, false);
                out.push(n);
            }
        }
        out.retain(|n| n != w);
    }

    /// Whether `b` differs from `a` only in the sides' copies.
    fn only_copies(a: &World, b: &World) -> bool {
        let forget = |w: &World| {
            let mut w = *w;
            w.fe.view = w.bsec;
            w.fe.gen_seen = w.generation;
            w.fe.unused = false;
            w.be.view = w.fsec;
            w.be.unused = false;
            w.be.loading = None;
            w
        };
        forget(a) == forget(b)
    }

    /// Strongly connected component of each node.
    fn components(edges: &[Vec<usize>]) -> Vec<usize> {
        const NONE: usize = usize::MAX;
        let n = edges.len();
        let (mut index, mut low, mut comp) = (vec![NONE; n], vec![0; n], vec![NONE; n]);
        let (mut stack, mut on_stack) = (Vec::new(), vec![false; n]);
        let (mut next_index, mut next_comp) = (0, 0);
        for root in 0..n {
            if index[root] != NONE {
                continue;
            }
            // (node, next edge to look at)
            let mut calls = vec![(root, 0)];
            index[root] = next_index;
            low[root] = next_index;
            next_index += 1;
            stack.push(root);
            on_stack[root] = true;
            while let Some(&mut (v, ref mut e)) = calls.last_mut() {
                if let Some(&w) = edges[v].get(*e) {
                    *e += 1;
                    if index[w] == NONE {
                        index[w] = next_index;
                        low[w] = next_index;
                        next_index += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        calls.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    continue;
                }
                calls.pop();
                if let Some(&(u, _)) = calls.last() {
                    low[u] = low[u].min(low[v]);
                }
                if low[v] == index[v] {
                    loop {
                        let w = stack.pop().unwrap();
                        on_stack[w] = false;
                        comp[w] = next_comp;
                        if w == v {
                            break;
                        }
                    }
                    next_comp += 1;
                }
            }
        }
        comp
    }

    /// A cycle through the edge `from → to`, both in one component.
    fn cycle_through(edges: &[Vec<usize>], comp: &[usize], from: usize, to: usize) -> Vec<usize> {
        // Breadth-first from `to` back to `from` inside the component.
        let mut back = HashMap::from([(to, to)]);
        let mut queue = std::collections::VecDeque::from([to]);
        while let Some(v) = queue.pop_front() {
            if v == from {
                break;
            }
            for &w in &edges[v] {
                if comp[w] == comp[from] && !back.contains_key(&w) {
                    back.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        let mut path = vec![from];
        let mut at = from;
        while at != to {
            at = back[&at];
            path.push(at);
        }
        path.reverse();
        path
    }

    pub(super) struct Report {
        pub worlds: usize,
        pub max_sessions: u8,
    }

    /// Explores every world reachable with up to `restarts` deaths and `closes` resets of
    /// either side at any point, and checks that
    /// 1. no run cycles, so the sides cannot churn forever, whatever copies they act on, and
    ///    each disturbance costs the front-end at most one new set of rings;
    /// 2. every world in which neither side can step on a current copy has both sides
    ///    `Connected`, the back-end mapping the rings the current front-end grants;
    /// 3. the front-end only connects on a `Connected` written for its current rings, or by a
    ///    back-end incarnation that has died since;
    /// 4. no back-end incarnation maps rings an earlier one connected on (and so may have
    ///    used: their indices moved): the generation rules reset them first.
    ///
    /// Each write is followed by an event after which the peer takes a current copy, so by
    /// 1 the sides stop writing once the disturbances stop, and then by 2 they are connected.
    pub(super) fn check(restarts: u8, closes: u8, opts: Opts) -> Report {
        assert!(restarts < 8 && closes < 8);
        let fresh_fe = FeSec {
            state: State::Initialising,
            ring: None,
            gen: 0,
        };
        let fresh_be = BeSec {
            state: State::Initialising,
            inc: 0,
            ring: None,
        };
        let start = World {
            fe: Fe {
                inc: 0,
                sess: 0,
                state: State::Initialising,
                granted: None,
                view: fresh_be,
                unused: true,
                dead: false,
                gen_seen: 0,
                offered_for: 0,
            },
            be: Be {
                inc: 0,
                state: State::Initialising,
                mapped: None,
                connecting: false,
                view: fresh_fe,
                loading: None,
                unused: true,
                dead: false,
            },
            fsec: fresh_fe,
            bsec: fresh_be,
            restarts,
            closes,
            generation: 0,
            used: None,
        };
        let mut index = HashMap::from([(key(&start), 0)]);
        let mut worlds = vec![start];
        let mut parent = vec![usize::MAX];
        let mut edges: Vec<Vec<usize>> = Vec::new();
        let trace = |worlds: &[World], parent: &[usize], mut i: usize| {
            let mut t = Vec::new();
            while i != usize::MAX {
                t.push(show(&worlds[i]));
                i = parent[i];
            }
            t.reverse();
            t.join("\n")
        };
        let mut succ = Vec::new();
        let mut i = 0;
        while i < worlds.len() {
            let w = worlds[i];
            successors(&w, opts, &mut succ);
            let mut out = Vec::with_capacity(succ.len());
            for n in &succ {
                let disturbances = restarts - n.restarts + closes - n.closes;
                assert!(
                    n.fe.sess <= 1 + disturbances,
                    "reconnects more than once per disturbance:\n{}\n{}",
                    trace(&worlds, &parent, i),
                    show(n)
                );
                let writer_alive = w.fe.view.inc == w.be.inc && !w.be.dead;
                if w.fe.state != State::Connected && n.fe.state == State::Connected && writer_alive
                {
                    assert_eq!(
                        w.fe.view.ring,
                        w.fe.granted,
                        "connects on a `Connected` for other rings:\n{}\n{}",
                        trace(&worlds, &parent, i),
                        show(n)
                    );
                }
                let j = *index.entry(key(n)).or_insert_with(|| {
                    worlds.push(*n);
                    parent.push(i);
                    worlds.len() - 1
                });
                out.push(j);
            }
            edges.push(out);
            i += 1;
        }
        for (i, w) in worlds.iter().enumerate() {
            let mut r = *w;
            if !r.fe.dead {
                fe_copy(&mut r);
            }
            if !r.be.dead {
                (r.be.view, r.be.unused, r.be.loading) = (w.fsec, true, None);
            }
            if fe_step(&r).is_none() && be_step(&r, opts).is_none() {
                let connected = r.fe.state == State::Connected
                    && r.be.state == State::Connected
                    && r.fe.granted.is_some_and(|g| g.inc == r.fe.inc)
                    && r.be.mapped == r.fe.granted;
                assert!(
                    connected,
                    "stuck in\n{}\nafter\n{}",
                    show(&r),
                    trace(&worlds, &parent, i)
                );
            }
        }
        // No cycle may contain a write (cycles of copies alone are harmless): find the
        // strongly connected components (Tarjan, iteratively) and look for a write inside one.
        let component = components(&edges);
        for (i, out) in edges.iter().enumerate() {
            for &j in out {
                if component[i] == component[j] && !only_copies(&worlds[i], &worlds[j]) {
                    let cycle = cycle_through(&edges, &component, i, j);
                    let cycle: Vec<String> = cycle.iter().map(|&k| show(&worlds[k])).collect();
                    panic!(
                        "the sides can churn forever:\n{}\nthen round and round:\n{}",
                        trace(&worlds, &parent, i),
                        cycle.join("\n")
                    );
                }
            }
        }
        Report {
            worlds: worlds.len(),
            max_sessions: worlds.iter().map(|w| w.fe.sess).max().unwrap_or(0),
        }
    }
}

/// The combinations of outside behaviour the protocol must work with. A back-end that goes
/// `Closing` on a failed map needs the hypervisor to mark dead sections `Closed`: otherwise
/// it would map, fail and close over and over while a dead front-end's last `Initialised`
/// stays on the page (it still reconnects once the front-end is back).
const OPTS: [exhaustive::Opts; 3] = [
    exhaustive::Opts {
        marks_dead: true,
        map_failure_closes: false,
    },
    exhaustive::Opts {
        marks_dead: true,
        map_failure_closes: true,
    },
    exhaustive::Opts {
        marks_dead: false,
        map_failure_closes: false,
    },
];

#[test]
fn exhaustive_model_always_reconnects() {
    // Budgets are "up to", so each run covers every smaller mix as well.
    for opts in OPTS {
        for (restarts, closes) in [(3, 1), (1, 3)] {
            let report = exhaustive::check(restarts, closes, opts);
            assert!(report.worlds > 10_000, "{opts:?}");
            assert_eq!(report.max_sessions, 1 + restarts + closes, "{opts:?}");
        }
    }
}

/// The same with more disturbances (seconds in a release build):
/// `cargo test -p shared-abi --release -- --ignored exhaustive`.
#[test]
#[ignore]
fn exhaustive_model_always_reconnects_larger_budgets() {
    for opts in OPTS {
        for (restarts, closes) in [(5, 2), (1, 5), (7, 0)] {
            exhaustive::check(restarts, closes, opts);
        }
    }
}
