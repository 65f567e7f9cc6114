use core::cell::RefCell;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::collections::{HashMap, VecDeque};
use std::vec::Vec;
use std::{format, vec};

use proptest::prelude::*;

use super::*;
use crate::handshake::Frontend;

// ---- Fixtures ----

struct Page(Vec<AtomicU16>);

impl Page {
    fn new() -> Page {
        Page((0..RING_PAGE_WORDS).map(|_| AtomicU16::new(0)).collect())
    }

    fn from_words(words: &[u16]) -> Page {
        Page(words.iter().map(|&w| AtomicU16::new(w)).collect())
    }

    fn ring(&self) -> SharedRing<'_> {
        SharedRing::new(&self.0).unwrap()
    }
}

struct Pool(Vec<AtomicU8>);

impl Pool {
    fn new(pages: u32) -> Pool {
        Pool(
            (0..pages as usize * RING_PAGE_LEN)
                .map(|_| AtomicU8::new(0))
                .collect(),
        )
    }

    fn shared(&self) -> SharedPool<'_> {
        SharedPool::new(&self.0)
    }
}

const POOL_PAGES: u32 = 32;
const POOL_LEN: u32 = POOL_PAGES * RING_PAGE_LEN as u32;

fn device(page: &Page, dir: Direction) -> DeviceQueue<SharedRing<'_>> {
    DeviceQueue::new(page.ring(), dir, POOL_PAGES, true).unwrap()
}

/// What a hostile guest writes: descriptor `i`, raw.
fn put_desc(page: &Page, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let d = Desc {
        addr,
        len,
        flags,
        next,
    };
    write_desc(&page.ring(), i, d);
}

/// Offers `heads` in avail slots from index `from` on and sets avail.idx past them.
fn offer(page: &Page, from: u16, heads: &[u16]) {
    let r = page.ring();
    let mut idx = from;
    for &h in heads {
        r.store_u16(avail_slot_offset(idx), h);
        idx = idx.wrapping_add(1);
    }
    r.store_u16_release(AVAIL_IDX, idx);
}

/// A device-readable single-descriptor chain of `len` bytes at `addr`, offered at slot 0.
fn single(page: &Page, addr: u64, len: u32, flags: u16) {
    put_desc(page, 0, addr, len, flags, 0);
    offer(page, 0, &[0]);
}

fn pop_err(page: &Page, dir: Direction) -> QueueError {
    let mut q = device(page, dir);
    let e = q.pop().unwrap_err();
    if e.is_violation() {
        assert_eq!(q.pop(), Err(e), "a violation is sticky");
        assert_eq!(q.broken(), Some(e));
    } else {
        let head = e.bad_frame_head().unwrap();
        assert_eq!(q.in_flight(), 1, "a bad frame is consumed and held");
        q.push_used(head, TX_DROPPED).unwrap();
        assert_eq!(q.pop(), Ok(None), "the queue goes on after a bad frame");
    }
    e
}

fn eth_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, seed]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 1, seed]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    for (i, b) in f.iter_mut().enumerate().skip(ETH_HDR_LEN) {
        *b = (i as u8).wrapping_mul(31) ^ seed;
    }
    f
}

// ---- Layout and helpers ----

#[test]
fn need_event_matches_virtio_including_wrap() {
    assert!(vring_need_event(0, 1, 0));
    assert!(!vring_need_event(0, 0, 0));
    assert!(
        !vring_need_event(1, 1, 0),
        "event 1 is not passed by 0 -> 1"
    );
    assert!(vring_need_event(5, 10, 3));
    assert!(
        !vring_need_event(2, 10, 3),
        "event behind old: already notified"
    );
    assert!(
        vring_need_event(u16::MAX, 1, u16::MAX - 1),
        "across the wrap"
    );
    assert!(!vring_need_event(2, 1, u16::MAX));
}

#[test]
fn segment_inside_is_overflow_safe() {
    let s = |offset, len| Segment { offset, len };
    assert!(s(0, 100).inside(100));
    assert!(s(100, 0).inside(100));
    assert!(!s(100, 1).inside(100));
    assert!(!s(101, 0).inside(100));
    assert!(!s(u32::MAX, u32::MAX).inside(100));
    assert!(!s(1, u32::MAX).inside(u32::MAX));
}

#[test]
fn shared_ring_needs_a_whole_page_and_is_little_endian() {
    let short: Vec<AtomicU16> = (0..RING_PAGE_WORDS - 1)
        .map(|_| AtomicU16::new(0))
        .collect();
    assert!(SharedRing::new(&short).is_none());
    let page = Page::new();
    let r = page.ring();
    r.store_u64(8, 0x1122_3344_5566_7788);
    assert_eq!(page.0[4].load(Ordering::Relaxed), 0x7788);
    assert_eq!(page.0[7].load(Ordering::Relaxed), 0x1122);
    assert_eq!(r.load_u64(8), 0x1122_3344_5566_7788);
    assert_eq!(r.load_u32(12), 0x1122_3344);
}

#[test]
fn feature_bits_do_not_collide_and_round_trip() {
    let bits = [
        FEATURE_NET,
        FEATURE_CSUM,
        FEATURE_EVENT_IDX,
        FEATURE_MRG_RXBUF,
        crate::pingpong::FEATURE,
    ];
    for (i, a) in bits.iter().enumerate() {
        assert_eq!(a.count_ones(), 1);
        for b in &bits[i + 1..] {
            assert_eq!(a & b, 0);
        }
    }
    assert_eq!(
        NetFeatures::from_bits(FEATURE_CSUM | FEATURE_EVENT_IDX),
        None
    );
    let offered = FEATURE_NET | FEATURE_CSUM | (1 << 40);
    let f = NetFeatures::from_bits(offered).unwrap();
    assert_eq!(
        f,
        NetFeatures {
            event_idx: false,
            csum: true,
            mergeable: false,
        }
    );
    let merged = NetFeatures::from_bits(FEATURE_NET | FEATURE_MRG_RXBUF).unwrap();
    assert!(merged.mergeable && !merged.csum);
    assert_eq!(merged.bits(), FEATURE_NET | FEATURE_MRG_RXBUF);
    assert_eq!(
        f.bits(),
        FEATURE_NET | FEATURE_CSUM,
        "unknown bits are dropped"
    );
}

#[test]
fn ring_layout_from_the_handshake() {
    let mut section = Frontend {
        features: NET_FEATURES,
        ..Frontend::initialising()
    };
    let good = RingLayout {
        tx_ring_ref: 0,
        rx_ring_ref: 1,
        pool_first_ref: 2,
        pool_pages: 16,
        pool_writable: 10,
    };
    good.write_to(&mut section);
    assert_eq!(section.pool_writable, 10);
    assert_eq!(RingLayout::from_frontend(&section), Ok(good));
    assert_eq!(good.pool_len(), 16 * 4096);
    assert_eq!(good.pool_refs(), 2..18);
    assert_eq!(good.pool_offset(1, 10), Some(4106));
    assert_eq!(good.pool_offset(16, 0), None);
    assert_eq!(good.pool_offset(0, 4096), None);

    let cases = [
        (
            RingLayout {
                pool_pages: 0,
                ..good
            },
            LayoutError::BadPoolSize { pages: 0 },
        ),
        (
            RingLayout {
                pool_pages: MAX_POOL_PAGES + 1,
                ..good
            },
            LayoutError::BadPoolSize {
                pages: MAX_POOL_PAGES + 1,
            },
        ),
        (
            RingLayout {
                rx_ring_ref: 0,
                ..good
            },
            LayoutError::SameRing,
        ),
        (
            RingLayout {
                rx_ring_ref: 17,
                ..good
            },
            LayoutError::RingInPool { gref: 17 },
        ),
        (
            RingLayout {
                tx_ring_ref: crate::grant::MAX_REFS,
                ..good
            },
            LayoutError::RefOutOfRange {
                gref: crate::grant::MAX_REFS,
            },
        ),
        (
            RingLayout {
                pool_first_ref: crate::grant::MAX_REFS - 4,
                ..good
            },
            LayoutError::PoolPastTable {
                first: crate::grant::MAX_REFS - 4,
                pages: 16,
            },
        ),
        (
            RingLayout {
                pool_writable: 0,
                ..good
            },
            LayoutError::BadWritablePart {
                writable: 0,
                pages: 16,
            },
        ),
        (
            RingLayout {
                pool_writable: 17,
                ..good
            },
            LayoutError::BadWritablePart {
                writable: 17,
                pages: 16,
            },
        ),
    ];
    // A whole pool writable is a valid (if old-fashioned) layout.
    assert_eq!(
        RingLayout {
            pool_writable: 16,
            ..good
        }
        .validate(),
        Ok(())
    );
    for (layout, err) in cases {
        assert_eq!(layout.validate(), Err(err), "{layout:?}");
        assert!(!format!("{err}").is_empty());
    }
    section.features = FEATURE_CSUM;
    assert_eq!(
        RingLayout::from_frontend(&section),
        Err(LayoutError::NotNet)
    );
}

#[test]
fn queues_refuse_bad_pool_sizes() {
    let page = Page::new();
    for pages in [0, MAX_POOL_PAGES + 1] {
        assert_eq!(
            DeviceQueue::new(page.ring(), Direction::Tx, pages, true).err(),
            Some(LayoutError::BadPoolSize { pages })
        );
        assert!(DriverQueue::new(page.ring(), pages, true).is_err());
    }
    assert!(DeviceQueue::new(page.ring(), Direction::Tx, MAX_POOL_PAGES, true).is_ok());
}

// ---- Net header ----

#[test]
fn net_header_round_trips_and_plain_headers_pass() {
    for dir in [Direction::Tx, Direction::Rx] {
        let h = NetHdr::plain(dir);
        assert_eq!(NetHdr::decode(&h.encode(), 60, dir, false), Ok(h));
    }
    let h = NetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..NetHdr::plain(Direction::Tx)
    };
    let bytes = h.encode();
    assert_eq!(bytes, [1, 0, 0, 0, 0, 0, 34, 0, 6, 0, 0, 0]);
    assert_eq!(NetHdr::decode(&bytes, 42, Direction::Tx, true), Ok(h));
    let rx = NetHdr {
        flags: VIRTIO_NET_HDR_F_DATA_VALID,
        ..NetHdr::plain(Direction::Rx)
    };
    assert_eq!(rx.validate(60, Direction::Rx, true), Ok(()));
}

#[test]
fn net_header_refusals() {
    use HeaderError::*;
    let tx = NetHdr::plain(Direction::Tx);
    let csum = |start, offset| NetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: start,
        csum_offset: offset,
        ..tx
    };
    let cases = [
        (NetHdr { flags: 4, ..tx }, UnknownFlags { flags: 4 }),
        (
            NetHdr {
                flags: VIRTIO_NET_HDR_F_DATA_VALID,
                ..tx
            },
            DataValidOnTx,
        ),
        (NetHdr { gso_type: 1, ..tx }, UnsupportedGso { gso_type: 1 }),
        (
            NetHdr {
                gso_type: 0x80,
                ..tx
            },
            UnsupportedGso { gso_type: 0x80 },
        ),
        (NetHdr { hdr_len: 54, ..tx }, GsoFieldsSet),
        (
            NetHdr {
                gso_size: 1448,
                ..tx
            },
            GsoFieldsSet,
        ),
        (
            csum(34, 7),
            CsumOutOfFrame {
                start: 34,
                offset: 7,
            },
        ),
        (
            csum(10, 6),
            CsumOutOfFrame {
                start: 10,
                offset: 6,
            },
        ),
        (
            csum(u16::MAX, u16::MAX),
            CsumOutOfFrame {
                start: u16::MAX,
                offset: u16::MAX,
            },
        ),
        (
            NetHdr {
                csum_start: 34,
                ..tx
            },
            CsumFieldsSet,
        ),
        (
            NetHdr {
                csum_offset: 6,
                ..tx
            },
            CsumFieldsSet,
        ),
        (
            NetHdr {
                num_buffers: 1,
                ..tx
            },
            BadNumBuffers { num_buffers: 1 },
        ),
    ];
    for (h, err) in cases {
        // A 42-byte frame: Ethernet + IPv4 + UDP header; checksum at 34+6 just fits.
        assert_eq!(
            NetHdr::decode(&h.encode(), 42, Direction::Tx, true),
            Err(err),
            "{h:?}"
        );
        assert!(!format!("{err}").is_empty());
    }
    assert_eq!(
        csum(34, 6).validate(42, Direction::Tx, false),
        Err(CsumNotNegotiated)
    );
    assert_eq!(
        tx.validate(42, Direction::Rx, false),
        Err(BadNumBuffers { num_buffers: 0 }),
        "RX without mergeable buffers says 1"
    );
}

// ---- Device: violations, one test per class ----

#[test]
fn avail_idx_too_far_ahead() {
    let page = Page::new();
    put_desc(&page, 0, 0, 64, 0, 0);
    offer(&page, 0, &[0]);
    page.ring().store_u16(AVAIL_IDX, QUEUE_SIZE + 1);
    assert_eq!(
        pop_err(&page, Direction::Tx),
        QueueError::AvailTooFarAhead {
            avail_idx: QUEUE_SIZE + 1,
            last_avail: 0
        }
    );
    // Behind the device is "far ahead" modulo 2^16 too.
    page.ring().store_u16(AVAIL_IDX, u16::MAX);
    assert!(matches!(
        pop_err(&page, Direction::Tx),
        QueueError::AvailTooFarAhead { .. }
    ));
}

#[test]
fn a_full_queue_of_entries_is_not_too_far_ahead() {
    let page = Page::new();
    let heads: Vec<u16> = (0..QUEUE_SIZE).collect();
    for &h in &heads {
        put_desc(&page, h, u64::from(h) * 64, 64, 0, 0);
    }
    offer(&page, 0, &heads);
    let mut q = device(&page, Direction::Tx);
    for &h in &heads {
        assert_eq!(q.pop().unwrap().unwrap().head(), h);
    }
    assert_eq!(q.pop(), Ok(None));
    assert_eq!(q.in_flight(), u32::from(QUEUE_SIZE));
}

#[test]
fn descriptor_index_out_of_range() {
    let page = Page::new();
    offer(&page, 0, &[QUEUE_SIZE]);
    assert_eq!(
        pop_err(&page, Direction::Tx),
        QueueError::DescIndexOutOfRange { index: QUEUE_SIZE }
    );
    let page = Page::new();
    put_desc(&page, 3, 0, 32, VIRTQ_DESC_F_NEXT, 200);
    offer(&page, 0, &[3]);
    assert_eq!(
        pop_err(&page, Direction::Tx),
        QueueError::DescIndexOutOfRange { index: 200 }
    );
}

#[test]
fn chain_loop() {
    let page = Page::new();
    put_desc(&page, 0, 0, 32, VIRTQ_DESC_F_NEXT, 1);
    put_desc(&page, 1, 32, 32, VIRTQ_DESC_F_NEXT, 2);
    put_desc(&page, 2, 64, 32, VIRTQ_DESC_F_NEXT, 1);
    offer(&page, 0, &[0]);
    assert_eq!(
        pop_err(&page, Direction::Tx),
        QueueError::ChainLoop { head: 0, index: 1 }
    );
    let page = Page::new();
    put_desc(&page, 7, 0, 32, VIRTQ_DESC_F_NEXT, 7);
    offer(&page, 0, &[7]);
    assert_eq!(
        pop_err(&page, Direction::Tx),
        QueueError::ChainLoop { head: 7, index: 7 }
    );
}

fn straight_chain(page: &Page, descs: u16) {
    for i in 0..descs {
        let flags = if i + 1 < descs { VIRTQ_DESC_F_NEXT } else { 0 };
        put_desc(page, i, u64::from(i) * 64, 64, flags, i + 1);
    }
    offer(page, 0, &[0]);
}

#[test]
fn chain_too_long() {
    let page = Page::new();
    straight_chain(&page, MAX_CHAIN as u16);
    let chain = device(&page, Direction::Tx).pop().unwrap().unwrap();
    assert_eq!(chain.segments().len(), MAX_CHAIN);
    let page = Page::new();
    straight_chain(&page, MAX_CHAIN as u16 + 1);
    assert_eq!(
        pop_err(&page, Direction::Tx),
        QueueError::ChainTooLong { head: 0 }
    );
}

#[test]
fn indirect_and_unknown_flags() {
    let page = Page::new();
    single(&page, 0, 64, VIRTQ_DESC_F_INDIRECT);
    assert_eq!(
        pop_err(&page, Direction::Tx),
        QueueError::Indirect { index: 0 }
    );
    let page = Page::new();
    single(&page, 0, 64, 8);
    assert_eq!(
        pop_err(&page, Direction::Tx),
        QueueError::UnknownDescFlags { index: 0, flags: 8 }
    );
}

#[test]
fn write_only_descriptor_on_tx() {
    let page = Page::new();
    put_desc(&page, 0, 0, 32, VIRTQ_DESC_F_NEXT, 1);
    put_desc(&page, 1, 32, 32, VIRTQ_DESC_F_WRITE, 0);
    offer(&page, 0, &[0]);
    assert_eq!(
        pop_err(&page, Direction::Tx),
        QueueError::WrongDirection {
            index: 1,
            queue: Direction::Tx
        }
    );
}

#[test]
fn read_only_descriptor_on_rx() {
    let page = Page::new();
    put_desc(&page, 0, 0, 32, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
    put_desc(&page, 1, 32, 32, 0, 0);
    offer(&page, 0, &[0]);
    assert_eq!(
        pop_err(&page, Direction::Rx),
        QueueError::WrongDirection {
            index: 1,
            queue: Direction::Rx
        }
    );
    let page = Page::new();
    single(&page, 0, 64, VIRTQ_DESC_F_WRITE);
    assert!(device(&page, Direction::Rx).pop().unwrap().is_some());
}

#[test]
fn buffer_crossing_the_pool_end() {
    let pool = u64::from(POOL_LEN);
    let outside = [
        (pool - 10, 11),
        (pool, 1),
        (pool + 1, 0),
        (u64::MAX, 64),
        (u64::MAX - 5, 10), // addr + len overflows u64
        (u64::MAX - 5, u32::MAX),
        (0, POOL_LEN + 1),
        (1 << 32, 64), // in range if truncated to u32
    ];
    for (addr, len) in outside {
        let page = Page::new();
        single(&page, addr, len, 0);
        assert_eq!(
            pop_err(&page, Direction::Tx),
            QueueError::OutsidePool {
                index: 0,
                addr,
                len
            },
            "{addr:#x}+{len:#x}"
        );
    }
    // Exactly up to the end is fine.
    let page = Page::new();
    single(&page, pool - 64, 64, 0);
    let chain = device(&page, Direction::Tx).pop().unwrap().unwrap();
    assert_eq!(
        chain.segments(),
        &[Segment {
            offset: POOL_LEN - 64,
            len: 64
        }]
    );
}

#[test]
fn head_offered_again_while_in_flight() {
    let page = Page::new();
    put_desc(&page, 5, 0, 64, 0, 0);
    offer(&page, 0, &[5, 5]);
    let mut q = device(&page, Direction::Tx);
    assert_eq!(q.pop().unwrap().unwrap().head(), 5);
    assert_eq!(q.pop(), Err(QueueError::HeadInFlight { head: 5 }));
    // Once given back, the same head may come again.
    let page = Page::new();
    put_desc(&page, 5, 0, 64, 0, 0);
    offer(&page, 0, &[5, 5]);
    let mut q = device(&page, Direction::Tx);
    let c = q.pop().unwrap().unwrap();
    q.push_used(c.head(), TX_OK).unwrap();
    assert_eq!(q.pop().unwrap().unwrap().head(), 5);
}

// ---- Device: bad frames ----

#[test]
fn zero_length_frame() {
    let page = Page::new();
    single(&page, 0, 0, 0);
    assert_eq!(
        pop_err(&page, Direction::Tx),
        QueueError::FrameEmpty { head: 0 }
    );
    // Two empty descriptors are still empty.
    let page = Page::new();
    put_desc(&page, 0, 0, 0, VIRTQ_DESC_F_NEXT, 1);
    put_desc(&page, 1, 0, 0, 0, 0);
    offer(&page, 0, &[0]);
    assert_eq!(
        pop_err(&page, Direction::Tx),
        QueueError::FrameEmpty { head: 0 }
    );
}

#[test]
fn frame_shorter_than_net_and_ethernet_header() {
    let page = Page::new();
    single(&page, 0, MIN_FRAME - 1, 0);
    assert_eq!(
        pop_err(&page, Direction::Tx),
        QueueError::FrameTooShort {
            head: 0,
            len: u64::from(MIN_FRAME - 1)
        }
    );
    let page = Page::new();
    single(&page, 0, MIN_FRAME, 0);
    assert_eq!(
        device(&page, Direction::Tx)
            .pop()
            .unwrap()
            .unwrap()
            .total_len(),
        MIN_FRAME
    );
    // RX buffers too small for a minimal frame are bad the same way.
    let page = Page::new();
    single(&page, 0, 12, VIRTQ_DESC_F_WRITE);
    assert_eq!(
        pop_err(&page, Direction::Rx),
        QueueError::FrameTooShort { head: 0, len: 12 }
    );
}

#[test]
fn oversized_frame() {
    let page = Page::new();
    put_desc(&page, 0, 0, 12, VIRTQ_DESC_F_NEXT, 1);
    put_desc(&page, 1, 4096, MAX_FRAME - 12, 0, 0);
    offer(&page, 0, &[0]);
    assert_eq!(
        device(&page, Direction::Tx)
            .pop()
            .unwrap()
            .unwrap()
            .total_len(),
        MAX_FRAME
    );
    put_desc(&page, 1, 4096, MAX_FRAME - 11, 0, 0);
    assert_eq!(
        pop_err(&page, Direction::Tx),
        QueueError::FrameTooLong {
            head: 0,
            len: u64::from(MAX_FRAME) + 1
        }
    );
    // Sixteen whole-pool buffers: the total does not fit a u32, the check still holds.
    let page = Page::new();
    for i in 0..16 {
        let flags = if i < 15 { VIRTQ_DESC_F_NEXT } else { 0 };
        put_desc(&page, i, 0, POOL_LEN, flags, i + 1);
    }
    offer(&page, 0, &[0]);
    assert_eq!(
        pop_err(&page, Direction::Tx),
        QueueError::FrameTooLong {
            head: 0,
            len: 16 * u64::from(POOL_LEN)
        }
    );
}

#[test]
fn bad_net_header_is_a_bad_frame() {
    let page = Page::new();
    let pool = Pool::new(POOL_PAGES);
    let hdr = NetHdr {
        gso_type: 3,
        ..NetHdr::plain(Direction::Tx)
    };
    pool.shared().write(0, &hdr.encode());
    pool.shared().write(NET_HDR_LEN, &eth_frame(60, 1));
    single(&page, 0, 72, 0);
    let mut q = device(&page, Direction::Tx);
    let chain = q.pop().unwrap().unwrap();
    let mut buf = vec![0u8; MAX_FRAME as usize];
    let e = chain.read_tx(&pool.shared(), &mut buf, true).unwrap_err();
    assert_eq!(
        e,
        QueueError::BadNetHeader {
            head: 0,
            reason: HeaderError::UnsupportedGso { gso_type: 3 }
        }
    );
    assert_eq!(e.severity(), Severity::BadFrame);
    q.push_used(e.bad_frame_head().unwrap(), TX_DROPPED)
        .unwrap();
    // A back-end buffer smaller than the chain is its frame limit.
    pool.shared()
        .write(0, &NetHdr::plain(Direction::Tx).encode());
    offer(&page, 1, &[0]);
    let chain = q.pop().unwrap().unwrap();
    assert_eq!(
        chain.read_tx(&pool.shared(), &mut buf[..71], false),
        Err(QueueError::FrameTooLong { head: 0, len: 72 })
    );
    let (h, n) = chain.read_tx(&pool.shared(), &mut buf, false).unwrap();
    assert_eq!((h, n), (NetHdr::plain(Direction::Tx), 60));
    assert_eq!(&buf[NET_HDR_LEN..72], &eth_frame(60, 1)[..]);
}

#[test]
fn severity_and_messages() {
    use QueueError::*;
    let violations = [
        AvailTooFarAhead {
            avail_idx: 300,
            last_avail: 2,
        },
        DescIndexOutOfRange { index: 128 },
        HeadInFlight { head: 1 },
        ChainLoop { head: 1, index: 2 },
        ChainTooLong { head: 1 },
        Indirect { index: 1 },
        UnknownDescFlags { index: 1, flags: 8 },
        WrongDirection {
            index: 1,
            queue: Direction::Tx,
        },
        WrongDirection {
            index: 1,
            queue: Direction::Rx,
        },
        OutsidePool {
            index: 1,
            addr: 5,
            len: 6,
        },
        UsedTooFarAhead {
            used_idx: 9,
            last_used: 1,
        },
        UsedIdOutOfRange { id: 999 },
        UsedIdNotOutstanding { id: 3 },
        UsedLenInvalid { id: 3, len: 7 },
    ];
    let bad = [
        FrameEmpty { head: 4 },
        FrameTooShort { head: 4, len: 3 },
        FrameTooLong {
            head: 4,
            len: 1 << 20,
        },
        BadNetHeader {
            head: 4,
            reason: HeaderError::GsoFieldsSet,
        },
    ];
    let mut seen = std::collections::HashSet::new();
    for e in violations {
        assert!(e.is_violation() && e.bad_frame_head().is_none());
        let msg = format!("{e}");
        assert!(msg.starts_with("ring violation: ") && !msg.contains('\n'));
        assert!(seen.insert(msg));
    }
    for e in bad {
        assert_eq!(e.severity(), Severity::BadFrame);
        assert_eq!(e.bad_frame_head(), Some(4));
        let msg = format!("{e}");
        assert!(msg.starts_with("bad frame at head 4: "));
        assert!(seen.insert(msg));
    }
}

#[test]
fn push_used_refuses_heads_not_held() {
    let page = Page::new();
    let mut q = device(&page, Direction::Tx);
    assert_eq!(q.push_used(0, TX_OK), Err(NotInFlight { head: 0 }));
    assert_eq!(q.push_used(500, TX_OK), Err(NotInFlight { head: 500 }));
    assert_eq!(q.used_idx(), 0);
    assert_eq!(page.ring().load_u16(USED_IDX), 0, "nothing written");
}

/// A ring page as a hostile guest makes it look: every load goes through `load` (which sees
/// the real page and may change it); stores and fences reach the page.
struct Hooked<'a, F> {
    ring: SharedRing<'a>,
    load: F,
}

impl<F: Fn(&SharedRing<'_>, usize) -> u16> RingMem for Hooked<'_, F> {
    fn load_u16(&self, offset: usize) -> u16 {
        (self.load)(&self.ring, offset)
    }
    fn load_u16_acquire(&self, offset: usize) -> u16 {
        self.load_u16(offset)
    }
    fn store_u16(&self, offset: usize, value: u16) {
        self.ring.store_u16(offset, value)
    }
    fn store_u16_release(&self, offset: usize, value: u16) {
        self.ring.store_u16_release(offset, value)
    }
    fn fence(&self) {
        self.ring.fence()
    }
}

#[test]
fn every_field_is_fetched_once() {
    let page = Page::new();
    put_desc(&page, 9, 100, 12, VIRTQ_DESC_F_NEXT, 4);
    put_desc(&page, 4, 4000, 100, VIRTQ_DESC_F_NEXT, 60);
    put_desc(&page, 60, POOL_LEN as u64 - 50, 50, 0, 0);
    offer(&page, 0, &[9]);
    // The guest rewrites every field with garbage right after the device reads it, and the
    // reads are counted: a device that fetched a field twice would see the garbage.
    let loads: RefCell<HashMap<usize, u32>> = RefCell::new(HashMap::new());
    let racing = Hooked {
        ring: page.ring(),
        load: |ring: &SharedRing<'_>, offset| {
            *loads.borrow_mut().entry(offset).or_default() += 1;
            let v = ring.load_u16(offset);
            ring.store_u16(offset, 0xffff);
            v
        },
    };
    let mut q = DeviceQueue::new(&racing, Direction::Tx, POOL_PAGES, true).unwrap();
    let chain = q.pop().unwrap().unwrap();
    assert_eq!(
        chain.segments(),
        &[
            Segment {
                offset: 100,
                len: 12
            },
            Segment {
                offset: 4000,
                len: 100
            },
            Segment {
                offset: POOL_LEN - 50,
                len: 50
            },
        ]
    );
    assert_eq!(chain.total_len(), 162);
    let loads = loads.borrow();
    assert!(loads.values().all(|&n| n == 1), "{loads:?}");
    // avail.idx, one slot, and 8 words for each of 3 descriptors.
    assert_eq!(loads.len(), 2 + 3 * 8);
}

// ---- Driver: the back-end is not trusted either ----

fn tx_pair(page: &Page) -> (DriverQueue<SharedRing<'_>>, DeviceQueue<SharedRing<'_>>) {
    let drv = DriverQueue::new(page.ring(), POOL_PAGES, true).unwrap();
    let dev = device(page, Direction::Tx);
    (drv, dev)
}

fn seg(offset: u32, len: u32) -> Segment {
    Segment { offset, len }
}

/// A raw used element and used.idx, as a hostile back-end writes them.
fn put_used(page: &Page, idx: u16, id: u32, len: u32) {
    let r = page.ring();
    r.store_u32(used_slot_offset(idx), id);
    r.store_u32(used_slot_offset(idx) + 4, len);
    r.store_u16_release(USED_IDX, idx.wrapping_add(1));
}

#[test]
fn driver_add_refusals() {
    let page = Page::new();
    let (mut drv, _) = tx_pair(&page);
    assert_eq!(drv.add(&[], false), Err(AddError::Empty));
    let many = [seg(0, 64); MAX_CHAIN + 1];
    assert_eq!(
        drv.add(&many, false),
        Err(AddError::TooManySegments {
            count: MAX_CHAIN + 1
        })
    );
    assert_eq!(
        drv.add(&[seg(POOL_LEN - 10, 64)], false),
        Err(AddError::OutsidePool {
            segment: seg(POOL_LEN - 10, 64)
        })
    );
    assert_eq!(
        drv.add(&[seg(0, 20)], false),
        Err(AddError::BadLength { len: 20 })
    );
    assert_eq!(
        drv.add(&[seg(0, 65_536), seg(0, 65_536)], false),
        Err(AddError::BadLength { len: 131_072 })
    );
    for _ in 0..QUEUE_SIZE / 2 {
        drv.add(&[seg(0, 32), seg(32, 32)], false).unwrap();
    }
    assert_eq!(
        drv.add(&[seg(0, 64)], false),
        Err(AddError::NoSpace { needed: 1, free: 0 })
    );
    assert_eq!(drv.outstanding(), u32::from(QUEUE_SIZE / 2));
    assert!(!format!("{}", AddError::Empty).is_empty());
}

#[test]
fn used_idx_too_far_ahead() {
    let page = Page::new();
    let (mut drv, _) = tx_pair(&page);
    drv.add(&[seg(0, 64)], false).unwrap();
    drv.publish();
    page.ring().store_u16(USED_IDX, 2);
    assert_eq!(
        drv.pop_used(),
        Err(QueueError::UsedTooFarAhead {
            used_idx: 2,
            last_used: 0
        })
    );
    assert!(drv.pop_used().is_err(), "sticky");
}

#[test]
fn used_id_out_of_range_or_not_outstanding() {
    let page = Page::new();
    let (mut drv, _) = tx_pair(&page);
    let head = drv.add(&[seg(0, 64)], false).unwrap();
    drv.publish();
    put_used(&page, 0, 0x1_0000 + u32::from(head), TX_OK);
    assert_eq!(
        drv.pop_used(),
        Err(QueueError::UsedIdOutOfRange {
            id: 0x1_0000 + u32::from(head)
        })
    );

    // An id that was never offered, one added but not published, one returned twice.
    let page = Page::new();
    let (mut drv, _) = tx_pair(&page);
    let a = drv.add(&[seg(0, 64)], false).unwrap();
    drv.publish();
    let unpublished = drv.add(&[seg(64, 64)], false).unwrap();
    put_used(&page, 0, 77, TX_OK);
    assert_eq!(
        drv.pop_used(),
        Err(QueueError::UsedIdNotOutstanding { id: 77 })
    );
    let page = Page::new();
    let (mut drv, _) = tx_pair(&page);
    let _ = drv.add(&[seg(0, 64)], false).unwrap();
    drv.publish();
    let unpublished2 = drv.add(&[seg(64, 64)], false).unwrap();
    assert_eq!(unpublished2, unpublished);
    put_used(&page, 0, u32::from(unpublished2), TX_OK);
    assert_eq!(
        drv.pop_used(),
        Err(QueueError::UsedIdNotOutstanding { id: unpublished2 })
    );
    let page = Page::new();
    let (mut drv, _) = tx_pair(&page);
    let a2 = drv.add(&[seg(0, 64)], false).unwrap();
    drv.add(&[seg(64, 64)], false).unwrap();
    drv.publish();
    assert_eq!(a, a2);
    put_used(&page, 0, u32::from(a2), TX_OK);
    assert_eq!(
        drv.pop_used(),
        Ok(Some(Used {
            head: a2,
            token: a2,
            len: TX_OK
        }))
    );
    put_used(&page, 1, u32::from(a2), TX_OK);
    assert_eq!(
        drv.pop_used(),
        Err(QueueError::UsedIdNotOutstanding { id: a2 })
    );
}

#[test]
fn used_len_invalid() {
    // TX: only the two statuses.
    let page = Page::new();
    let (mut drv, _) = tx_pair(&page);
    let h = drv.add(&[seg(0, 64)], false).unwrap();
    drv.publish();
    put_used(&page, 0, u32::from(h), 64);
    assert_eq!(
        drv.pop_used(),
        Err(QueueError::UsedLenInvalid { id: h, len: 64 })
    );
    // RX: 0, or a minimal frame up to the buffer's size.
    for (len, ok) in [
        (0, true),
        (MIN_FRAME - 1, false),
        (MIN_FRAME, true),
        (100, true),
        (101, false),
        (u32::MAX, false),
    ] {
        let page = Page::new();
        let mut drv = DriverQueue::new(page.ring(), POOL_PAGES, true).unwrap();
        let h = drv.add(&[seg(0, 40), seg(1000, 60)], true).unwrap();
        drv.publish();
        put_used(&page, 0, u32::from(h), len);
        let got = drv.pop_used();
        if ok {
            assert_eq!(
                got,
                Ok(Some(Used {
                    head: h,
                    token: h,
                    len
                }))
            );
            assert_eq!(drv.free_descriptors(), QUEUE_SIZE);
        } else {
            assert_eq!(got, Err(QueueError::UsedLenInvalid { id: h, len }));
        }
    }
}

#[test]
fn driver_frees_its_own_record_of_the_chain_not_the_page() {
    let page = Page::new();
    let (mut drv, mut dev) = tx_pair(&page);
    let h = drv
        .add(&[seg(0, 12), seg(12, 30), seg(42, 30)], false)
        .unwrap();
    drv.publish();
    let c = dev.pop().unwrap().unwrap();
    // A hostile back-end scribbles over the descriptor table before giving the chain back.
    for i in 0..QUEUE_SIZE {
        put_desc(&page, i, 0, 0, VIRTQ_DESC_F_NEXT, h);
    }
    dev.push_used(c.head(), TX_OK).unwrap();
    assert_eq!(
        drv.pop_used(),
        Ok(Some(Used {
            head: h,
            token: h,
            len: TX_OK
        }))
    );
    assert_eq!(drv.free_descriptors(), QUEUE_SIZE);
    assert_eq!(drv.outstanding(), 0);
}

// ---- Round trips with real frames ----

#[test]
fn tx_round_trip_with_real_frames() {
    let page = Page::new();
    let pool = Pool::new(POOL_PAGES);
    let (mut drv, mut dev) = tx_pair(&page);
    let sizes = [14usize, 42, 60, 1514, 9014, 65_550];
    let mut heads = Vec::new();
    let mut at = 0u32;
    for (i, &size) in sizes.iter().enumerate() {
        let frame = eth_frame(size, i as u8);
        let hdr_at = at;
        pool.shared()
            .write(hdr_at as usize, &NetHdr::plain(Direction::Tx).encode());
        // Header and data in separate buffers, as a stack prepending a header would have them.
        let data_at = hdr_at + 64;
        pool.shared().write(data_at as usize, &frame);
        let segs = [seg(hdr_at, NET_HDR_LEN as u32), seg(data_at, size as u32)];
        heads.push(drv.add(&segs, false).unwrap());
        at = (data_at + size as u32 + 63) & !63;
        if at > POOL_LEN - 70_000 {
            at = 0;
        }
    }
    let (old, new) = drv.publish();
    assert_eq!((old, new), (0, sizes.len() as u16));
    assert!(
        drv.should_notify_device(old, new),
        "the device asked for the first"
    );

    let mut buf = vec![0u8; MAX_FRAME as usize];
    let old_used = dev.used_idx();
    for (i, &size) in sizes.iter().enumerate() {
        let chain = dev.pop().unwrap().unwrap();
        assert_eq!(chain.head(), heads[i]);
        let (hdr, len) = chain.read_tx(&pool.shared(), &mut buf, false).unwrap();
        assert_eq!(hdr, NetHdr::plain(Direction::Tx));
        assert_eq!(len, size);
        assert_eq!(
            &buf[NET_HDR_LEN..NET_HDR_LEN + len],
            &eth_frame(size, i as u8)[..]
        );
        dev.push_used(chain.head(), TX_OK).unwrap();
    }
    assert_eq!(dev.pop(), Ok(None));
    assert!(!dev.enable_notify(), "nothing pending: may sleep");
    assert!(dev.should_notify_driver(old_used, dev.used_idx()));
    for &h in &heads {
        assert_eq!(
            drv.pop_used(),
            Ok(Some(Used {
                head: h,
                token: h,
                len: TX_OK
            }))
        );
    }
    assert_eq!(drv.pop_used(), Ok(None));
    assert_eq!(drv.free_descriptors(), QUEUE_SIZE);
}

#[test]
fn rx_round_trip_with_real_frames() {
    let page = Page::new();
    let pool = Pool::new(POOL_PAGES);
    let mut drv = DriverQueue::new(page.ring(), POOL_PAGES, true).unwrap();
    let mut dev = device(&page, Direction::Rx);
    // Four 2 KiB buffers; the guest remembers which buffer each head is.
    let mut buffer_of = HashMap::new();
    for i in 0..4u32 {
        let h = drv.add(&[seg(i * 2048, 2048)], true).unwrap();
        buffer_of.insert(h, i * 2048);
    }
    let (old, new) = drv.publish();
    assert!(drv.should_notify_device(old, new));

    let frames = [eth_frame(60, 7), eth_frame(1514, 8), eth_frame(4000, 9)];
    let hdr = NetHdr {
        flags: VIRTIO_NET_HDR_F_DATA_VALID,
        ..NetHdr::plain(Direction::Rx)
    };
    let mut expect = Vec::new();
    for f in &frames {
        let write = |pool: &SharedPool<'_>, chain: &Chain, at: usize, bytes: Range<usize>| {
            chain.write(pool, at, &f[bytes]);
        };
        let done = dev
            .deliver(&pool.shared(), &hdr, f.len(), 1, 4, write)
            .unwrap();
        match done.outcome {
            RxOutcome::Delivered { buffers: 1 } => expect.push(Some(f.clone())),
            // Too big for this guest's buffer: the buffer went back empty.
            RxOutcome::TooSmall => expect.push(None),
            other => panic!("{other:?}"),
        }
    }
    for want in expect {
        let used = drv.pop_used().unwrap().unwrap();
        let at = buffer_of[&used.head] as usize;
        match want {
            None => assert_eq!(used.len, 0),
            Some(frame) => {
                // The guest copies once, then checks its copy.
                let mut copy = vec![0u8; used.len as usize];
                pool.shared().read(at, &mut copy);
                let mut h = [0u8; NET_HDR_LEN];
                h.copy_from_slice(&copy[..NET_HDR_LEN]);
                let got = NetHdr::decode(&h, copy.len() - NET_HDR_LEN, Direction::Rx, true);
                assert_eq!(got, Ok(hdr));
                assert_eq!(&copy[NET_HDR_LEN..], &frame[..]);
            }
        }
    }
    assert_eq!(drv.outstanding(), 1);
    assert_eq!(
        drv.free_descriptors(),
        QUEUE_SIZE - 1,
        "the unused buffer is still out"
    );
}

#[test]
fn checksum_offload_needs_the_feature() {
    let page = Page::new();
    let pool = Pool::new(POOL_PAGES);
    let (mut drv, mut dev) = tx_pair(&page);
    let hdr = NetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..NetHdr::plain(Direction::Tx)
    };
    let mut bytes = hdr.encode().to_vec();
    bytes.extend(eth_frame(42, 3));
    pool.shared().write(0, &bytes);
    for _ in 0..2 {
        drv.add(&[seg(0, bytes.len() as u32)], false).unwrap();
    }
    drv.publish();
    let mut buf = vec![0u8; 2048];
    let c = dev.pop().unwrap().unwrap();
    assert_eq!(c.read_tx(&pool.shared(), &mut buf, true), Ok((hdr, 42)));
    let c = dev.pop().unwrap().unwrap();
    assert_eq!(
        c.read_tx(&pool.shared(), &mut buf, false),
        Err(QueueError::BadNetHeader {
            head: c.head(),
            reason: HeaderError::CsumNotNegotiated
        })
    );
}

#[test]
fn event_indices_suppress_while_busy_and_wake_when_asked() {
    let page = Page::new();
    let (mut drv, mut dev) = tx_pair(&page);
    let add_publish = |drv: &mut DriverQueue<SharedRing<'_>>| {
        drv.add(&[seg(0, 64)], false).unwrap();
        let (old, new) = drv.publish();
        drv.should_notify_device(old, new)
    };
    assert!(
        add_publish(&mut drv),
        "first entry: the device asked for it"
    );
    assert!(!add_publish(&mut drv), "device busy: suppressed");
    assert!(!add_publish(&mut drv));
    for _ in 0..3 {
        let c = dev.pop().unwrap().unwrap();
        dev.push_used(c.head(), TX_OK).unwrap();
    }
    assert!(!dev.enable_notify());
    assert!(add_publish(&mut drv), "device went to sleep: notified");
    // A publish that lands between the drain and enable_notify is seen by the re-check.
    assert!(dev.enable_notify(), "the re-check finds it");

    // Without event indices every publish notifies.
    let page = Page::new();
    let mut drv = DriverQueue::new(page.ring(), POOL_PAGES, false).unwrap();
    for _ in 0..3 {
        assert!(add_publish(&mut drv));
    }
    let (old, new) = drv.publish();
    assert!(!drv.should_notify_device(old, new), "nothing published");
}

/// Two real threads, each side sleeping only through enable_notify's re-check: a lost wake-up
/// hangs a side, which the deadline turns into a failure.
#[test]
fn threads_never_lose_a_wakeup() {
    const FRAMES: u32 = 20_000;
    let page = Page::new();
    let pool = Pool::new(4);
    let device_kick = AtomicBool::new(false);
    let driver_kick = AtomicBool::new(false);
    let wait = |kick: &AtomicBool, who: &str| {
        let start = std::time::Instant::now();
        while !kick.swap(false, Ordering::AcqRel) {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "{who} lost a wake-up"
            );
            std::thread::yield_now();
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut drv = DriverQueue::new(page.ring(), 4, true).unwrap();
            let pool = pool.shared();
            let mut returned = 0;
            for seq in 0..FRAMES {
                while drv.free_descriptors() == 0 {
                    while let Some(u) = drv.pop_used().unwrap() {
                        assert_eq!(u.len, TX_OK);
                        returned += 1;
                    }
                    if drv.free_descriptors() == 0 && !drv.enable_notify() {
                        wait(&driver_kick, "driver");
                    }
                }
                let at = (seq % u32::from(QUEUE_SIZE)) * 64;
                let mut frame = NetHdr::plain(Direction::Tx).encode().to_vec();
                frame.extend(eth_frame(40, seq as u8));
                frame[NET_HDR_LEN + 14..NET_HDR_LEN + 18].copy_from_slice(&seq.to_le_bytes());
                pool.write(at as usize, &frame);
                drv.add(&[seg(at, frame.len() as u32)], false).unwrap();
                let (old, new) = drv.publish();
                if drv.should_notify_device(old, new) {
                    device_kick.store(true, Ordering::Release);
                }
            }
            while returned < FRAMES {
                while let Some(_u) = drv.pop_used().unwrap() {
                    returned += 1;
                }
                if returned < FRAMES && !drv.enable_notify() {
                    wait(&driver_kick, "driver");
                }
            }
        });
        s.spawn(|| {
            let mut dev = DeviceQueue::new(page.ring(), Direction::Tx, 4, true).unwrap();
            let pool = pool.shared();
            let mut buf = [0u8; 256];
            let mut seq = 0u32;
            while seq < FRAMES {
                let old = dev.used_idx();
                while let Some(c) = dev.pop().unwrap() {
                    let (_, len) = c.read_tx(&pool, &mut buf, false).unwrap();
                    assert_eq!(len, 40);
                    let got = &buf[NET_HDR_LEN + 14..NET_HDR_LEN + 18];
                    assert_eq!(got, seq.to_le_bytes(), "frames in order, intact");
                    seq += 1;
                    dev.push_used(c.head(), TX_OK).unwrap();
                }
                if dev.should_notify_driver(old, dev.used_idx()) {
                    driver_kick.store(true, Ordering::Release);
                }
                if seq < FRAMES && !dev.enable_notify() {
                    wait(&device_kick, "device");
                }
            }
        });
    });
}

// ---- Properties ----

/// Pops until the ring is empty or broken, applying one hostile write before each pop and
/// holding some chains; checks every returned chain against the pool.
fn check_pops(
    words: &[u16],
    pool_pages: u32,
    dir: Direction,
    event_idx: bool,
    writes: &[(usize, u16)],
    hold: u64,
) -> Result<(), TestCaseError> {
    let page = Page::from_words(words);
    let mut q = DeviceQueue::new(page.ring(), dir, pool_pages, event_idx).unwrap();
    let pool_len = pool_pages * RING_PAGE_LEN as u32;
    let mut held = Vec::new();
    for step in 0..400 {
        if let Some(&(w, v)) = writes.get(step) {
            page.0[w % RING_PAGE_WORDS].store(v, Ordering::Relaxed);
        }
        let old_used = q.used_idx();
        let popped = q.pop();
        match popped {
            Ok(None) if step >= writes.len() => break,
            Ok(None) => {}
            Ok(Some(c)) => {
                let segs = c.segments();
                prop_assert!(!segs.is_empty() && segs.len() <= MAX_CHAIN);
                for s in segs {
                    prop_assert!(s.inside(pool_len), "{s:?} outside {pool_len}");
                    prop_assert!(u64::from(s.offset) + u64::from(s.len) <= u64::from(pool_len));
                }
                let total: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
                prop_assert_eq!(total, u64::from(c.total_len()));
                prop_assert!((MIN_FRAME..=MAX_FRAME).contains(&c.total_len()));
                if hold >> (step % 64) & 1 == 1 {
                    held.push(c.head());
                } else {
                    prop_assert_eq!(q.push_used(c.head(), TX_OK), Ok(()));
                }
            }
            Err(e) if e.is_violation() => {
                prop_assert_eq!(q.pop(), Err(e));
                let msg = format!("{e}");
                prop_assert!(!msg.is_empty());
                break;
            }
            Err(e) => {
                let head = e.bad_frame_head();
                prop_assert!(head.is_some());
                prop_assert_eq!(q.push_used(head.unwrap_or(0), TX_DROPPED), Ok(()));
            }
        }
        prop_assert_eq!(q.in_flight() as usize, held.len());
        let _ = q.should_notify_driver(old_used, q.used_idx());
        let _ = q.enable_notify();
        if step % 7 == 6 {
            if let Some(h) = held.pop() {
                prop_assert_eq!(q.push_used(h, 0), Ok(()));
            }
        }
    }
    Ok(())
}

/// A ring page built field by field, mostly plausible for `dir` and a pool of `pool_pages`
/// (buffers near and across its end, some wrong flags, chains of every length, repeated heads),
/// so pops get past the first check and reach every outcome.
fn hostile_page(dir: Direction, pool_pages: u32) -> impl Strategy<Value = Vec<u16>> {
    let pool = u64::from(pool_pages) * RING_PAGE_LEN as u64;
    let addr = prop_oneof![
        60 => 0..pool - 1_500,
        2 => pool - 1_500..pool + 100,
        1 => any::<u64>(),
        1 => (u64::MAX - 70_000)..=u64::MAX,
    ];
    let len = prop_oneof![
        60 => 0u32..1_500,
        2 => 0u32..70_000,
        1 => any::<u32>(),
    ];
    let write = if dir == Direction::Rx {
        VIRTQ_DESC_F_WRITE
    } else {
        0
    };
    let chain_density = prop_oneof![Just(0.1), Just(0.5), Just(0.97)];
    let next = prop_oneof![16 => 0u16..QUEUE_SIZE, 1 => any::<u16>()];
    let slot = prop_oneof![16 => 0u16..QUEUE_SIZE, 1 => any::<u16>()];
    let avail = prop_oneof![8 => 0u16..=QUEUE_SIZE, 1 => any::<u16>()];
    chain_density
        .prop_flat_map(move |p| {
            let odd_flags = prop_oneof![1 => 0u16..8, 1 => any::<u16>()];
            let flags = prop_oneof![
                100 => prop::bool::weighted(p).prop_map(move |more| {
                    write | if more { VIRTQ_DESC_F_NEXT } else { 0 }
                }),
                1 => odd_flags,
            ];
            (
                prop::collection::vec((addr.clone(), len.clone(), flags, next.clone()), Q),
                prop::collection::vec(slot.clone(), Q),
                avail.clone(),
                any::<u16>(),
            )
        })
        .prop_map(|(descs, slots, avail, used_event)| {
            let page = Page::new();
            let r = page.ring();
            for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
                write_desc(
                    &r,
                    i as u16,
                    Desc {
                        addr,
                        len,
                        flags,
                        next,
                    },
                );
            }
            for (i, &h) in slots.iter().enumerate() {
                r.store_u16(avail_slot_offset(i as u16), h);
            }
            r.store_u16(AVAIL_IDX, avail);
            r.store_u16(USED_EVENT, used_event);
            page.0.iter().map(|w| w.load(Ordering::Relaxed)).collect()
        })
}

/// (direction, pool pages, page words): random bytes or a plausible hostile page.
fn pop_case() -> impl Strategy<Value = (Direction, u32, Vec<u16>)> {
    let pool_pages = prop_oneof![4 => 1u32..=10, 1 => 1u32..=MAX_POOL_PAGES];
    (direction(), pool_pages).prop_flat_map(|(dir, pages)| {
        let words = prop_oneof![
            1 => prop::collection::vec(any::<u16>(), RING_PAGE_WORDS),
            6 => hostile_page(dir, pages),
        ];
        (Just(dir), Just(pages), words)
    })
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::Tx), Just(Direction::Rx)]
}

fn writes() -> impl Strategy<Value = Vec<(usize, u16)>> {
    prop::collection::vec((0..RING_PAGE_WORDS, any::<u16>()), 0..24)
}

#[derive(Clone, Debug)]
enum Op {
    Add(Vec<(u32, u32)>),
    Publish,
    Pop,
    Push(usize, u32),
    PopUsed,
    DeviceSleeps,
    DriverSleeps,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec((any::<u32>(), 7u32..1600), 1..=4).prop_map(Op::Add),
        2 => Just(Op::Publish),
        3 => Just(Op::Pop),
        3 => (any::<usize>(), any::<u32>()).prop_map(|(i, l)| Op::Push(i, l)),
        3 => Just(Op::PopUsed),
        1 => Just(Op::DeviceSleeps),
        1 => Just(Op::DriverSleeps),
    ]
}

/// Runs `ops` on a driver and a device sharing one page, against a model of what each side
/// should see, including "a side that went to sleep is notified of the next entry".
fn check_pair(dir: Direction, event_idx: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    const PAGES: u32 = 8;
    let pool_len = PAGES * RING_PAGE_LEN as u32;
    let page = Page::new();
    let mut drv = DriverQueue::new(page.ring(), PAGES, event_idx).unwrap();
    let mut dev = DeviceQueue::new(page.ring(), dir, PAGES, event_idx).unwrap();
    let writable = dir == Direction::Rx;
    // (head, segments) in each stage of a chain's life.
    let mut added: Vec<(u16, Vec<Segment>)> = Vec::new();
    let mut published: VecDeque<(u16, Vec<Segment>)> = VecDeque::new();
    let mut held: Vec<(u16, u32)> = Vec::new();
    let mut used: VecDeque<Used> = VecDeque::new();
    let mut descs_out: HashMap<u16, usize> = HashMap::new();
    let (mut device_asleep, mut driver_asleep) = (false, false);
    for op in ops {
        match op {
            Op::Add(raw) => {
                let segs: Vec<Segment> = raw
                    .iter()
                    .map(|&(o, l)| seg(o % (pool_len - l + 1), l))
                    .collect();
                let free = usize::from(drv.free_descriptors());
                let total: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
                let expect_err = if segs.len() > free {
                    Some(AddError::NoSpace {
                        needed: segs.len(),
                        free: free as u16,
                    })
                } else if total < u64::from(MIN_FRAME) {
                    Some(AddError::BadLength { len: total })
                } else {
                    None
                };
                match drv.add(&segs, writable) {
                    Ok(h) => {
                        prop_assert_eq!(expect_err, None);
                        prop_assert!(descs_out.insert(h, segs.len()).is_none());
                        added.push((h, segs));
                    }
                    Err(e) => prop_assert_eq!(Some(e), expect_err),
                }
            }
            Op::Publish => {
                let (old, new) = drv.publish();
                prop_assert_eq!(new.wrapping_sub(old) as usize, added.len());
                published.extend(added.drain(..));
                let notify = drv.should_notify_device(old, new);
                if device_asleep && old != new {
                    prop_assert!(notify, "device asleep and not notified");
                    device_asleep = false;
                }
            }
            Op::Pop => {
                device_asleep = false;
                let got = dev.pop();
                match published.pop_front() {
                    None => prop_assert_eq!(got, Ok(None)),
                    Some((h, segs)) => {
                        let c = got.unwrap().unwrap();
                        prop_assert_eq!(c.head(), h);
                        prop_assert_eq!(c.segments(), &segs[..]);
                        held.push((h, c.total_len()));
                    }
                }
            }
            Op::Push(pick, seed) => {
                if held.is_empty() {
                    continue;
                }
                let (h, total) = held.remove(pick % held.len());
                let len = match dir {
                    Direction::Tx => [TX_OK, TX_DROPPED][(*seed % 2) as usize],
                    Direction::Rx if seed % 3 == 0 => 0,
                    Direction::Rx => MIN_FRAME + seed % (total - MIN_FRAME + 1),
                };
                let old = dev.used_idx();
                prop_assert_eq!(dev.push_used(h, len), Ok(()));
                used.push_back(Used {
                    head: h,
                    token: h,
                    len,
                });
                let notify = dev.should_notify_driver(old, dev.used_idx());
                if driver_asleep {
                    prop_assert!(notify, "driver asleep and not notified");
                    driver_asleep = false;
                }
            }
            Op::PopUsed => {
                driver_asleep = false;
                let got = drv.pop_used();
                match used.pop_front() {
                    None => prop_assert_eq!(got, Ok(None)),
                    Some(u) => {
                        prop_assert_eq!(got, Ok(Some(u)));
                        prop_assert!(descs_out.remove(&u.head).is_some());
                    }
                }
            }
            Op::DeviceSleeps => {
                let pending = dev.enable_notify();
                prop_assert_eq!(pending, !published.is_empty());
                device_asleep = !pending;
            }
            Op::DriverSleeps => {
                let pending = drv.enable_notify();
                prop_assert_eq!(pending, !used.is_empty());
                driver_asleep = !pending;
            }
        }
        let out: usize = descs_out.values().sum();
        prop_assert_eq!(usize::from(drv.free_descriptors()) + out, Q);
        prop_assert_eq!(drv.outstanding() as usize, descs_out.len());
        prop_assert_eq!(dev.in_flight() as usize, held.len());
        prop_assert_eq!(dev.broken(), None);
        prop_assert_eq!(drv.broken(), None);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the page holds and the guest writes meanwhile, pop never panics and never
    /// returns a buffer outside the pool.
    #[test]
    fn pop_never_panics_and_stays_in_the_pool(
        (dir, pool_pages, words) in pop_case(),
        event_idx in any::<bool>(),
        writes in writes(),
        hold in any::<u64>(),
    ) {
        check_pops(&words, pool_pages, dir, event_idx, &writes, hold)?;
    }

    /// Honest sides stay consistent under any order of operations.
    #[test]
    fn driver_and_device_stay_consistent(
        dir in direction(),
        event_idx in any::<bool>(),
        ops in prop::collection::vec(op(), 1..300),
    ) {
        check_pair(dir, event_idx, &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100_000))]

    /// The same properties, long: `cargo test -p shared-abi -- --ignored virtq`.
    #[test]
    #[ignore]
    fn long_fuzz_pop(
        (dir, pool_pages, words) in pop_case(),
        event_idx in any::<bool>(),
        writes in writes(),
        hold in any::<u64>(),
    ) {
        check_pops(&words, pool_pages, dir, event_idx, &writes, hold)?;
    }

    #[test]
    #[ignore]
    fn long_fuzz_pair(
        dir in direction(),
        event_idx in any::<bool>(),
        ops in prop::collection::vec(op(), 1..1000),
    ) {
        check_pair(dir, event_idx, &ops)?;
    }
}

/// A TX chain of `lens` buffers (laid out with gaps) holding `frame` behind a plain header,
/// popped by a device; returns the chain.
fn tx_chain_with(page: &Page, pool: &Pool, at: u32, lens: &[u32], frame: &[u8]) -> Chain {
    let mut bytes = NetHdr::plain(Direction::Tx).encode().to_vec();
    bytes.extend_from_slice(frame);
    let mut segs = Vec::new();
    let (mut offset, mut taken) = (at, 0usize);
    for &len in lens {
        let len = len.min((bytes.len() - taken) as u32);
        pool.shared()
            .write(offset as usize, &bytes[taken..taken + len as usize]);
        segs.push(seg(offset, len));
        taken += len as usize;
        offset += len + 40;
    }
    assert_eq!(taken, bytes.len(), "lens cover the frame");
    let mut drv = DriverQueue::new(page.ring(), POOL_PAGES, true).unwrap();
    drv.add(&segs, false).unwrap();
    drv.publish();
    device(page, Direction::Tx).pop().unwrap().unwrap()
}

#[test]
fn tx_header_is_read_once_and_checked_without_the_body() {
    let page = Page::new();
    let pool = Pool::new(POOL_PAGES);
    let frame = eth_frame(1000, 7);
    // Header split across buffers: 5 bytes, then 30, then the rest.
    let chain = tx_chain_with(&page, &pool, 0, &[5, 30, 2000], &frame);
    let got = chain.read_tx_header(&pool.shared(), false, 1514).unwrap();
    assert_eq!(got.hdr, NetHdr::plain(Direction::Tx));
    assert_eq!(got.head(), &frame[..TX_HEAD_LEN]);
    assert_eq!(got.frame_len, 1000);
    // A frame shorter than the head: all of it, and nothing past its end.
    let short_page = Page::new();
    let short_pool = Pool::new(POOL_PAGES);
    let short = eth_frame(30, 9);
    let short_chain = tx_chain_with(&short_page, &short_pool, 0, &[3, 100], &short);
    let got = short_chain
        .read_tx_header(&short_pool.shared(), false, 1514)
        .unwrap();
    assert_eq!((got.head(), got.frame_len), (&short[..], 30));
    // Over the back-end's limit: a bad frame, not a violation.
    let e = chain
        .read_tx_header(&pool.shared(), false, 999)
        .unwrap_err();
    assert!(
        matches!(e, QueueError::FrameTooLong { len: 1012, .. }),
        "{e:?}"
    );
    assert_eq!(e.severity(), Severity::BadFrame);
    // A header asking for an offload that was not negotiated.
    let mut bad = NetHdr::plain(Direction::Tx).encode();
    bad[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    pool.shared().write(0, &bad[..5]);
    pool.shared().write(45, &bad[5..]);
    let e = chain
        .read_tx_header(&pool.shared(), false, 1514)
        .unwrap_err();
    assert!(matches!(e, QueueError::BadNetHeader { .. }), "{e:?}");
}

#[test]
fn copy_plan_moves_a_frame_between_differently_split_chains() {
    let src_page = Page::new();
    let dst_page = Page::new();
    let src_pool = Pool::new(POOL_PAGES);
    let dst_pool = Pool::new(POOL_PAGES);
    let frame = eth_frame(1500, 3);
    let src = tx_chain_with(&src_page, &src_pool, 100, &[12, 0, 700, 1, 2000], &frame);
    // An RX chain of three buffers.
    let mut drv = DriverQueue::new(dst_page.ring(), POOL_PAGES, true).unwrap();
    drv.add(&[seg(0, 20), seg(4096, 1000), seg(9000, 600)], true)
        .unwrap();
    drv.publish();
    let dst = device(&dst_page, Direction::Rx).pop().unwrap().unwrap();
    let mut runs = Vec::new();
    let copied = copy_plan(
        &src,
        NET_HDR_LEN,
        &dst,
        NET_HDR_LEN,
        frame.len(),
        |s, d, n| {
            assert!(n > 0, "no empty runs");
            runs.push((s, d, n));
            let mut bytes = vec![0u8; n];
            src_pool.shared().read(s, &mut bytes);
            dst_pool.shared().write(d, &bytes);
        },
    );
    assert_eq!(copied, frame.len());
    let mut out = vec![0u8; frame.len()];
    assert_eq!(
        dst.read(&dst_pool.shared(), NET_HDR_LEN, &mut out),
        frame.len()
    );
    assert_eq!(out, frame);
    assert_eq!(runs.iter().map(|r| r.2).sum::<usize>(), frame.len());
    // The destination is too short for more: the plan stops where it ends.
    let short = copy_plan(&src, 0, &dst, 1000, 5000, |_, _, _| {});
    assert_eq!(short, 1620 - 1000);
}

proptest! {
    #[test]
    fn copy_plan_covers_exactly_the_bytes_both_chains_have(
        src_lens in proptest::collection::vec(0u32..300, 1..8),
        dst_lens in proptest::collection::vec(1u32..300, 1..8),
        src_skip in 0usize..200,
        dst_skip in 0usize..200,
        len in 0usize..2000,
    ) {
        let total_src: u32 = src_lens.iter().sum();
        prop_assume!(total_src as usize >= MIN_FRAME as usize);
        let total_dst: u32 = dst_lens.iter().sum();
        prop_assume!(total_dst as usize >= MIN_FRAME as usize);
        let mk = |lens: &[u32], writable: bool| {
            let page = Page::new();
            let mut segs = Vec::new();
            let mut at = 0;
            for &l in lens {
                segs.push(seg(at, l));
                at += l + 8;
            }
            let mut drv = DriverQueue::new(page.ring(), POOL_PAGES, true).unwrap();
            drv.add(&segs, writable).unwrap();
            drv.publish();
            let dir = if writable { Direction::Rx } else { Direction::Tx };
            device(&page, dir).pop().unwrap().unwrap()
        };
        let src = mk(&src_lens, false);
        let dst = mk(&dst_lens, true);
        let mut covered = 0;
        let mut runs = Vec::new();
        let done = copy_plan(&src, src_skip, &dst, dst_skip, len, |s, _d, n| {
            runs.push((s, n));
            covered += n;
        });
        prop_assert!(runs.iter().all(|&(_, n)| n > 0), "no empty runs");
        prop_assert!(runs.windows(2).all(|w| w[1].0 >= w[0].0 + w[0].1), "source in order");
        let expect = len
            .min((total_src as usize).saturating_sub(src_skip))
            .min((total_dst as usize).saturating_sub(dst_skip));
        prop_assert_eq!(done, expect);
        prop_assert_eq!(covered, expect);
    }
}

/// An Ethernet + IPv4 frame with protocol `proto`, IHL `ihl` words, `payload` bytes after the
/// IP header, and the given fragment word.
fn ipv4_frame(proto: u8, ihl: u8, fragment: u16, payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; ETH_HDR_LEN + usize::from(ihl) * 4 + payload];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x40 | ihl;
    f[20..22].copy_from_slice(&fragment.to_be_bytes());
    f[23] = proto;
    f
}

#[test]
fn tx_headers_point_at_the_l4_checksum_of_ipv4_tcp_and_udp_only() {
    let tcp = ipv4_frame(6, 5, 0x4000, 20);
    assert_eq!(l4_checksum_field(&tcp), Some((34, 16)));
    let hdr = NetHdr::for_tx_frame(&tcp, true);
    assert_eq!(hdr.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
    assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 16));
    assert_eq!(hdr.validate(tcp.len(), Direction::Tx, true), Ok(()));
    // Without offload the same frame goes plain; the back-end would refuse the flag anyway.
    assert_eq!(
        NetHdr::for_tx_frame(&tcp, false),
        NetHdr::plain(Direction::Tx)
    );
    // IP options move the L4 header.
    assert_eq!(l4_checksum_field(&ipv4_frame(17, 7, 0, 8)), Some((42, 6)));
    // Not ours to fill: ICMP, fragments, truncated headers, IPv6, ARP, garbage.
    assert_eq!(l4_checksum_field(&ipv4_frame(1, 5, 0, 8)), None);
    assert_eq!(l4_checksum_field(&ipv4_frame(6, 5, 0x2000, 20)), None);
    assert_eq!(l4_checksum_field(&ipv4_frame(6, 5, 0x0001, 20)), None);
    assert_eq!(l4_checksum_field(&ipv4_frame(6, 5, 0, 17)), None);
    assert_eq!(l4_checksum_field(&ipv4_frame(17, 5, 0, 7)), None);
    assert_eq!(l4_checksum_field(&ipv4_frame(6, 4, 0, 40)), None);
    let mut v6 = ipv4_frame(6, 5, 0, 20);
    v6[14] = 0x65;
    assert_eq!(l4_checksum_field(&v6), None);
    let mut arp = ipv4_frame(6, 5, 0, 20);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(l4_checksum_field(&arp), None);
    assert_eq!(l4_checksum_field(&[0u8; 13]), None);
    assert_eq!(
        NetHdr::for_tx_frame(&arp, true),
        NetHdr::plain(Direction::Tx)
    );
}

proptest! {
    #[test]
    fn checksum_field_lookup_never_panics_and_stays_in_the_frame(
        frame in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        if let Some((start, offset)) = l4_checksum_field(&frame) {
            prop_assert!(usize::from(start) >= ETH_HDR_LEN);
            prop_assert!(usize::from(start) + usize::from(offset) + 2 <= frame.len());
            let hdr = NetHdr::for_tx_frame(&frame, true);
            prop_assert_eq!(hdr.validate(frame.len(), Direction::Tx, true), Ok(()));
        }
    }
}

#[test]
fn short_receive_buffers_cost_a_bounded_number_of_pops() {
    let page = Page::new();
    put_desc(&page, 0, 0, 10, VIRTQ_DESC_F_WRITE, 0);
    // The guest re-offers its one short buffer (descriptor 0, 10 bytes) the moment it comes
    // back: every read of avail.idx shows one more entry, every slot names head 0.
    let offered = core::cell::Cell::new(0u16);
    let recycler = Hooked {
        ring: page.ring(),
        load: |ring: &SharedRing<'_>, offset| {
            if offset == AVAIL_IDX {
                offered.set(offered.get().wrapping_add(1));
                offered.get()
            } else if (AVAIL_RING..AVAIL_RING + 2 * usize::from(QUEUE_SIZE)).contains(&offset) {
                0
            } else {
                ring.load_u16(offset)
            }
        },
    };
    let mut q = DeviceQueue::new(&recycler, Direction::Rx, POOL_PAGES, true).unwrap();
    // An endless supply of short buffers: the pick gives up after the bound.
    let pick = q.pop_rx_buffer(8).unwrap();
    assert_eq!((pick.chain, pick.skipped), (None, 8));
    assert_eq!(q.used_idx(), 8, "each short buffer went back empty");
    assert_eq!(q.in_flight(), 0);

    // Short buffers, then a usable one: it is found and the short ones are given back.
    let page = Page::new();
    put_desc(&page, 0, 0, 10, VIRTQ_DESC_F_WRITE, 0);
    put_desc(&page, 1, 64, 20, VIRTQ_DESC_F_WRITE, 0);
    put_desc(&page, 2, 4096, 2048, VIRTQ_DESC_F_WRITE, 0);
    offer(&page, 0, &[0, 1, 2]);
    let mut q = device(&page, Direction::Rx);
    let pick = q.pop_rx_buffer(8).unwrap();
    assert_eq!(pick.skipped, 2);
    assert_eq!(pick.chain.map(|c| c.head()), Some(2));
    assert_eq!(
        q.pop_rx_buffer(8).unwrap(),
        RxPick {
            chain: None,
            skipped: 0
        }
    );
    // A violation still ends the queue.
    offer(&page, 3, &[200]);
    assert!(q.pop_rx_buffer(8).unwrap_err().is_violation());
}

#[test]
fn a_64k_frame_passes_the_back_ends_check_and_one_byte_more_or_gso_metadata_does_not() {
    // The largest frame of the internal link, as one buffer: taken whole.
    let page = Page::new();
    let pool = Pool::new(POOL_PAGES);
    let frame = eth_frame(MAX_ETH_FRAME, 3);
    let chain = tx_chain_with(&page, &pool, 0, &[200_000], &frame);
    let got = chain
        .read_tx_header(&pool.shared(), true, MAX_ETH_FRAME)
        .unwrap();
    assert_eq!(got.frame_len, MAX_ETH_FRAME);
    assert_eq!(got.head(), &frame[..TX_HEAD_LEN]);
    // One byte more: a bad frame (dropped, the guest stays connected), never cut short.
    let page = Page::new();
    let frame = eth_frame(MAX_ETH_FRAME + 1, 3);
    let chain = tx_chain_with(&page, &pool, 0, &[200_000], &frame);
    let e = chain
        .read_tx_header(&pool.shared(), true, MAX_ETH_FRAME)
        .unwrap_err();
    assert_eq!(
        e,
        QueueError::FrameTooLong {
            head: 0,
            len: (NET_HDR_LEN + MAX_ETH_FRAME + 1) as u64
        }
    );
    assert_eq!(e.severity(), Severity::BadFrame);
    // Segmentation metadata was never negotiated: a front-end that sets it on a large frame
    // (TCPv4 GSO, or a size without a type) has sent a bad frame.
    for hdr in [
        NetHdr {
            gso_type: 1,
            gso_size: 1448,
            hdr_len: 54,
            ..NetHdr::plain(Direction::Tx)
        },
        NetHdr {
            gso_size: 65_000,
            ..NetHdr::plain(Direction::Tx)
        },
    ] {
        let page = Page::new();
        let frame = eth_frame(MAX_ETH_FRAME, 4);
        let chain = tx_chain_with(&page, &pool, 0, &[200_000], &frame);
        pool.shared().write(0, &hdr.encode());
        let e = chain
            .read_tx_header(&pool.shared(), true, MAX_ETH_FRAME)
            .unwrap_err();
        assert!(
            matches!(e, QueueError::BadNetHeader { head: 0, .. }),
            "{e:?}"
        );
        assert_eq!(e.severity(), Severity::BadFrame);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Transmit in place: a back-end whose receive queue checks against the writable part
    /// (`RingLayout::pool_writable` = the plan's `rx_pages`) takes every receive buffer the
    /// plan offers, and a transmit buffer (read-only pages) named as a receive buffer is a
    /// violation, never a store into a read-only page; its transmit queue takes the transmit
    /// buffers over the whole pool.
    #[test]
    fn receive_buffers_only_in_the_writable_part_transmit_buffers_anywhere(
        mtu in MIN_MTU..=MAX_MTU,
        pick in any::<prop::sample::Index>(),
    ) {
        let plan = PoolPlan::for_mtu(mtu).unwrap();
        let rx_index = pick.index(plan.rx_buffers);
        let tx_index = plan.rx_buffers + pick.index(plan.tx_buffers);
        let rx_at = plan.offset(rx_index).unwrap() as u64;
        let tx_at = plan.offset(tx_index).unwrap() as u64;
        let len = plan.buffer_len as u32;
        // A receive buffer: taken.
        let page = Page::new();
        single(&page, rx_at, len, VIRTQ_DESC_F_WRITE);
        let mut q = DeviceQueue::new(page.ring(), Direction::Rx, plan.rx_pages, true).unwrap();
        let chain = q.pop().unwrap().unwrap();
        prop_assert_eq!(chain.segments(), &[Segment { offset: rx_at as u32, len }]);
        // A transmit buffer offered for receiving: outside the part we may write.
        let page = Page::new();
        single(&page, tx_at, len, VIRTQ_DESC_F_WRITE);
        let mut q = DeviceQueue::new(page.ring(), Direction::Rx, plan.rx_pages, true).unwrap();
        let e = q.pop().unwrap_err();
        prop_assert_eq!(e, QueueError::OutsidePool { index: 0, addr: tx_at, len });
        prop_assert!(e.is_violation());
        // The same buffer on the transmit ring: fine (the back-end only reads it).
        let page = Page::new();
        single(&page, tx_at, len, 0);
        let mut q = DeviceQueue::new(page.ring(), Direction::Tx, plan.pages, true).unwrap();
        let chain = q.pop().unwrap().unwrap();
        prop_assert_eq!(chain.segments(), &[Segment { offset: tx_at as u32, len }]);
    }
}

mod merged;
