//! Mergeable receive buffers: the device spreading a frame over several buffers
//! ([`DeviceQueue::deliver`]) and the driver taking it back whole ([`DriverQueue::pop_rx_frame`]),
//! with a hostile peer on either side.

use core::cell::Cell;

use super::*;

/// Pool bytes for these tests: room for 14 buffers of `MERGED_RX_BUFFER_LEN`.
const BUFFER: u32 = MERGED_RX_BUFFER_LEN as u32;

/// A receive pair with `count` buffers of `len` bytes offered and published, each tagged with
/// its index (buffer `i` is at pool offset `i * len`).
fn rx_pair(
    page: &Page,
    count: u32,
    len: u32,
) -> (
    DriverQueue<SharedRing<'_>>,
    DeviceQueue<SharedRing<'_>>,
    Buffers,
) {
    let mut drv = DriverQueue::new(page.ring(), POOL_PAGES, true).unwrap();
    let dev = device(page, Direction::Rx);
    let buffers = Buffers { len };
    for i in 0..count {
        buffers.offer(&mut drv, i as u16);
    }
    drv.publish();
    (drv, dev, buffers)
}

/// A guest's receive buffers: all `len` bytes, buffer `i` at pool offset `i * len`.
struct Buffers {
    len: u32,
}

impl Buffers {
    fn at(&self, token: u16) -> usize {
        usize::from(token) * self.len as usize
    }

    /// Offers buffer `token` (not published).
    fn offer(&self, drv: &mut DriverQueue<SharedRing<'_>>, token: u16) -> u16 {
        let segment = seg(self.at(token) as u32, self.len);
        drv.add_tagged(&[segment], true, token).unwrap()
    }

    /// Offers again every buffer a frame took, as the front-end does, and publishes them.
    fn reoffer(&self, drv: &mut DriverQueue<SharedRing<'_>>, taken: &RxFrame) {
        for &token in taken.tokens() {
            self.offer(drv, token);
        }
        drv.publish();
    }
}

/// The device delivers `frame` with up to `most` buffers, copying with `Chain::write`.
fn deliver(
    dev: &mut DeviceQueue<SharedRing<'_>>,
    pool: &Pool,
    frame: &[u8],
    most: usize,
) -> RxDelivery {
    let hdr = NetHdr::plain(Direction::Rx);
    dev.deliver(
        &pool.shared(),
        &hdr,
        frame.len(),
        most,
        4,
        |pool, chain, at, bytes| {
            assert_eq!(chain.write(pool, at, &frame[bytes.clone()]), bytes.len());
        },
    )
    .unwrap()
}

/// The driver takes the next frame (merged or not) and copies it out as a guest does: the
/// count read from the first buffer's header once, then each buffer's bytes in order.
fn take(
    drv: &mut DriverQueue<SharedRing<'_>>,
    pool: &Pool,
    buffers: &Buffers,
    merged: bool,
) -> Result<Option<(RxFrame, Vec<u8>)>, QueueError> {
    let mut reads = 0;
    let taken = drv.pop_rx_frame(merged, |token| {
        reads += 1;
        let mut count = [0u8; 2];
        pool.shared()
            .read(buffers.at(token) + NUM_BUFFERS_AT, &mut count);
        u16::from_le_bytes(count)
    })?;
    assert!(reads <= 1, "the count is read once");
    let Some(taken) = taken else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    for (i, (&token, &len)) in taken.tokens().iter().zip(taken.lens()).enumerate() {
        let skip = if i == 0 { NET_HDR_LEN } else { 0 };
        let mut piece = vec![0u8; (len as usize).saturating_sub(skip)];
        pool.shared().read(buffers.at(token) + skip, &mut piece);
        bytes.extend_from_slice(&piece);
    }
    assert_eq!(bytes.len(), taken.frame_len());
    Ok(Some((taken, bytes)))
}

/// Delivers `frame` with up to `most` buffers, expects it in `buffers_used` of them, and
/// checks the driver gets it back byte for byte.
fn round_trip(
    (drv, dev): (
        &mut DriverQueue<SharedRing<'_>>,
        &mut DeviceQueue<SharedRing<'_>>,
    ),
    pool: &Pool,
    buffers: &Buffers,
    frame: &[u8],
    most: usize,
    buffers_used: usize,
) {
    assert_eq!(
        deliver(dev, pool, frame, most).outcome,
        RxOutcome::Delivered {
            buffers: buffers_used
        }
    );
    let (taken, bytes) = take(drv, pool, buffers, most > 1).unwrap().unwrap();
    assert_eq!(taken.heads().len(), buffers_used);
    assert_eq!(bytes, frame);
}

#[test]
fn a_64k_frame_spreads_over_merged_buffers_and_comes_back_whole() {
    let page = Page::new();
    let pool = Pool::new(POOL_PAGES);
    let (mut drv, mut dev, buffers) = rx_pair(&page, 14, BUFFER);
    let big = eth_frame(65550, 3);
    let small = eth_frame(60, 4);
    let merged = usize::from(MAX_MERGED_BUFFERS);
    let done = deliver(&mut dev, &pool, &big, merged);
    assert_eq!(done.outcome, RxOutcome::Delivered { buffers: 8 });
    assert_eq!(
        deliver(&mut dev, &pool, &small, merged).outcome,
        RxOutcome::Delivered { buffers: 1 }
    );
    assert_eq!(dev.in_flight(), 0, "every buffer taken went back");
    let (taken, bytes) = take(&mut drv, &pool, &buffers, true).unwrap().unwrap();
    assert_eq!(taken.heads().len(), 8);
    assert_eq!(
        taken.lens()[..7],
        [BUFFER; 7],
        "all but the last buffer are full"
    );
    assert_eq!(bytes, big);
    // The first buffer's header says how many, and is otherwise the header given.
    let mut hdr = [0u8; NET_HDR_LEN];
    pool.shared().read(buffers.at(taken.tokens()[0]), &mut hdr);
    let want = NetHdr {
        num_buffers: 8,
        ..NetHdr::plain(Direction::Rx)
    };
    assert_eq!(hdr, want.encode());
    let (taken, bytes) = take(&mut drv, &pool, &buffers, true).unwrap().unwrap();
    assert_eq!((taken.heads().len(), bytes), (1, small));
    assert_eq!(take(&mut drv, &pool, &buffers, true), Ok(None));
}

#[test]
fn without_merging_a_frame_longer_than_its_buffer_is_dropped_and_the_buffer_returned() {
    let page = Page::new();
    let pool = Pool::new(POOL_PAGES);
    let (mut drv, mut dev, buffers) = rx_pair(&page, 2, BUFFER);
    let done = deliver(&mut dev, &pool, &eth_frame(10_000, 1), 1);
    assert_eq!(done.outcome, RxOutcome::TooSmall);
    assert_eq!(dev.in_flight(), 0);
    let (taken, _) = take(&mut drv, &pool, &buffers, false).unwrap().unwrap();
    assert!(taken.is_empty(), "given back without a frame");
    let frame = eth_frame(9000, 2);
    round_trip((&mut drv, &mut dev), &pool, &buffers, &frame, 1, 1);
}

#[test]
fn a_merged_frame_that_runs_out_of_buffers_takes_none_the_next_time() {
    let page = Page::new();
    let pool = Pool::new(POOL_PAGES);
    let (mut drv, mut dev, buffers) = rx_pair(&page, 3, BUFFER);
    let big = eth_frame(65550, 5);
    let merged = usize::from(MAX_MERGED_BUFFERS);
    // No buffer size known yet: it takes the three, runs out and gives them back empty.
    assert_eq!(
        deliver(&mut dev, &pool, &big, merged).outcome,
        RxOutcome::NoBuffer
    );
    assert_eq!(dev.in_flight(), 0);
    for _ in 0..3 {
        let (taken, _) = take(&mut drv, &pool, &buffers, true).unwrap().unwrap();
        assert!(taken.is_empty());
    }
    // Offered again: judged by the buffer size it now knows, nothing is taken at all.
    for token in 0..3 {
        buffers.offer(&mut drv, token);
    }
    drv.publish();
    let before = dev.last_avail();
    assert_eq!(
        deliver(&mut dev, &pool, &big, merged).outcome,
        RxOutcome::NoBuffer
    );
    assert_eq!(dev.last_avail(), before, "no buffer taken");
    assert_eq!(dev.offered(), 3);
    // A frame that fits still goes.
    let small = eth_frame(1514, 6);
    assert_eq!(
        deliver(&mut dev, &pool, &small, merged).outcome,
        RxOutcome::Delivered { buffers: 1 }
    );
}

#[test]
fn a_held_frame_asks_for_an_event_once_enough_buffers_are_offered() {
    let page = Page::new();
    let pool = Pool::new(POOL_PAGES);
    let (mut drv, mut dev, buffers) = rx_pair(&page, 3, BUFFER);
    let merged = usize::from(MAX_MERGED_BUFFERS);
    // Before any delivery the buffers' size is not known: one buffer is what it waits for.
    assert!(dev.notify_when_room(65_000, merged));
    // A small frame teaches the queue the buffers' size.
    let small = eth_frame(1514, 1);
    round_trip((&mut drv, &mut dev), &pool, &buffers, &small, merged, 1);
    let big = eth_frame(65_550, 2);
    let needed = (NET_HDR_LEN + big.len()).div_ceil(BUFFER as usize) as u16;
    assert!(needed > 2);
    assert_eq!(dev.offered(), 2);
    assert!(
        !dev.notify_when_room(big.len(), merged),
        "two buffers are too few"
    );
    assert_eq!(
        deliver(&mut dev, &pool, &big, merged).outcome,
        RxOutcome::NoBuffer
    );
    // The guest offers one buffer at a time: no event until the frame fits.
    let mut notified_at = None;
    for token in 3..3 + needed {
        buffers.offer(&mut drv, token % 14);
        let (old, new) = drv.publish();
        if drv.should_notify_device(old, new) {
            notified_at.get_or_insert(dev.offered());
        }
    }
    assert_eq!(
        notified_at,
        Some(needed),
        "the event comes with the last buffer needed"
    );
    assert!(dev.notify_when_room(big.len(), merged));
    assert_eq!(
        deliver(&mut dev, &pool, &big, merged).outcome,
        RxOutcome::Delivered {
            buffers: usize::from(needed)
        }
    );
    // Without merging a frame takes one buffer.
    assert!(dev.notify_when_room(big.len(), 1) == (dev.offered() >= 1));
}

#[test]
fn a_frame_needing_more_buffers_than_the_bound_is_too_small() {
    let page = Page::new();
    let pool = Pool::new(POOL_PAGES);
    // 40 minimal buffers: a 2000-byte frame would need 78.
    let (mut drv, mut dev, buffers) = rx_pair(&page, 40, MIN_FRAME);
    let most = usize::from(MAX_MERGED_BUFFERS);
    let done = deliver(&mut dev, &pool, &eth_frame(2000, 7), most);
    assert_eq!(done.outcome, RxOutcome::TooSmall);
    assert_eq!(dev.in_flight(), 0);
    assert_eq!(
        dev.used_idx(),
        MAX_MERGED_BUFFERS,
        "the bound, given back empty"
    );
    for _ in 0..MAX_MERGED_BUFFERS {
        let (taken, _) = take(&mut drv, &pool, &buffers, true).unwrap().unwrap();
        assert!(taken.is_empty());
        buffers.reoffer(&mut drv, &taken);
    }
    // A frame that fits the bound goes: 26 + 24 * 26 bytes.
    let frame = eth_frame(NET_HDR_LEN + 24 * MIN_FRAME as usize, 8);
    round_trip((&mut drv, &mut dev), &pool, &buffers, &frame, most, 25);
}

#[test]
fn short_buffers_are_skipped_a_bounded_number_of_times_per_frame() {
    let page = Page::new();
    let pool = Pool::new(POOL_PAGES);
    let mut dev = device(&page, Direction::Rx);
    // Ten buffers a byte short of any frame, then a good one, raw (the driver refuses them).
    for i in 0..10u16 {
        put_desc(
            &page,
            i,
            u64::from(i) * 64,
            MIN_FRAME - 1,
            VIRTQ_DESC_F_WRITE,
            0,
        );
    }
    put_desc(&page, 10, 4096, BUFFER, VIRTQ_DESC_F_WRITE, 0);
    offer(&page, 0, &(0..11).collect::<Vec<_>>());
    let frame = eth_frame(100, 9);
    let most = usize::from(MAX_MERGED_BUFFERS);
    let first = deliver(&mut dev, &pool, &frame, most);
    assert_eq!((first.outcome, first.skipped), (RxOutcome::NoBuffer, 4));
    let second = deliver(&mut dev, &pool, &frame, most);
    assert_eq!((second.outcome, second.skipped), (RxOutcome::NoBuffer, 4));
    let third = deliver(&mut dev, &pool, &frame, most);
    assert_eq!(
        (third.outcome, third.skipped),
        (RxOutcome::Delivered { buffers: 1 }, 2)
    );
}

/// A ring page that counts the release stores of used.idx.
struct CountingUsedIdx<'a> {
    ring: SharedRing<'a>,
    stores: Cell<u32>,
}

impl RingMem for CountingUsedIdx<'_> {
    fn load_u16(&self, offset: usize) -> u16 {
        self.ring.load_u16(offset)
    }
    fn load_u16_acquire(&self, offset: usize) -> u16 {
        self.ring.load_u16_acquire(offset)
    }
    fn store_u16(&self, offset: usize, value: u16) {
        self.ring.store_u16(offset, value)
    }
    fn store_u16_release(&self, offset: usize, value: u16) {
        if offset == USED_IDX {
            self.stores.set(self.stores.get() + 1);
        }
        self.ring.store_u16_release(offset, value)
    }
    fn fence(&self) {
        self.ring.fence()
    }
}

#[test]
fn push_used_batch_publishes_all_at_once_or_nothing() {
    let page = Page::new();
    let (mut drv, _, _) = rx_pair(&page, 4, BUFFER);
    let counting = CountingUsedIdx {
        ring: page.ring(),
        stores: Cell::new(0),
    };
    let mut dev = DeviceQueue::new(&counting, Direction::Rx, POOL_PAGES, true).unwrap();
    let heads: Vec<u16> = (0..4).map(|_| dev.pop().unwrap().unwrap().head()).collect();
    // A head twice, or one not held: refused, nothing written.
    assert_eq!(
        dev.push_used_batch(&[(heads[0], 100), (heads[0], 100)]),
        Err(NotInFlight { head: heads[0] })
    );
    assert_eq!(
        dev.push_used_batch(&[(heads[0], 100), (99, 100)]),
        Err(NotInFlight { head: 99 })
    );
    assert_eq!((counting.stores.get(), dev.in_flight()), (0, 4));
    assert_eq!(page.ring().load_u16(USED_IDX), 0);
    // Three at once: used.idx moves by three in one store, after the three elements.
    let batch = [(heads[0], 100), (heads[1], 200), (heads[2], 300)];
    dev.push_used_batch(&batch).unwrap();
    assert_eq!(counting.stores.get(), 1);
    assert_eq!(page.ring().load_u16(USED_IDX), 3);
    assert_eq!(dev.in_flight(), 1);
    for (head, len) in batch {
        assert_eq!(
            drv.pop_used().unwrap(),
            Some(Used {
                head,
                token: head,
                len
            })
        );
    }
    assert_eq!(dev.push_used_batch(&[]), Ok(()));
    assert_eq!(counting.stores.get(), 1, "an empty batch stores nothing");
}

/// What the driver must make of a merged frame: the frame's length, or the violation (made
/// from the heads in buffer order).
type Expected = Result<usize, fn(&[u16]) -> QueueError>;

#[test]
fn a_back_end_lying_about_a_merged_frame_breaks_the_queue() {
    // The count the back-end writes in the first header, the lengths it publishes after the
    // first buffer (filled), and what the driver must say: a violation, or the frame length.
    let full = BUFFER as usize - NET_HDR_LEN;
    let cases: [(u16, &[u32], Expected); 7] = [
        (
            0,
            &[],
            Err(|h| QueueError::MergedCountInvalid {
                id: h[0],
                num_buffers: 0,
            }),
        ),
        (
            MAX_MERGED_BUFFERS + 1,
            &[],
            Err(|h| QueueError::MergedCountInvalid {
                id: h[0],
                num_buffers: MAX_MERGED_BUFFERS + 1,
            }),
        ),
        (
            3,
            &[BUFFER],
            Err(|h| QueueError::MergedFrameIncomplete {
                id: h[0],
                num_buffers: 3,
                published: 2,
            }),
        ),
        (
            2,
            &[0],
            Err(|h| QueueError::UsedLenInvalid { id: h[1], len: 0 }),
        ),
        (
            2,
            &[BUFFER + 1],
            Err(|h| QueueError::UsedLenInvalid {
                id: h[1],
                len: BUFFER + 1,
            }),
        ),
        // A later buffer may hold a few bytes: the frame's tail.
        (2, &[5], Ok(full + 5)),
        (1, &[], Ok(full)),
    ];
    for (case, (claimed, rest, want)) in cases.into_iter().enumerate() {
        let page = Page::new();
        let pool = Pool::new(POOL_PAGES);
        let (mut drv, _, buffers) = rx_pair(&page, 8, BUFFER);
        // Heads are handed out in order from a fresh queue: buffer i is head i.
        let heads: Vec<u16> = (0..8).collect();
        let hdr = NetHdr {
            num_buffers: claimed,
            ..NetHdr::plain(Direction::Rx)
        };
        pool.shared().write(buffers.at(0), &hdr.encode());
        put_used(&page, 0, u32::from(heads[0]), BUFFER);
        for (i, &len) in rest.iter().enumerate() {
            put_used(&page, 1 + i as u16, u32::from(heads[1 + i]), len);
        }
        let got = take(&mut drv, &pool, &buffers, true);
        match want {
            Err(violation) => {
                let e = violation(&heads);
                assert_eq!(got.map(|_| ()), Err(e), "case {case}");
                assert!(e.is_violation());
                assert_eq!(drv.broken(), Some(e), "case {case}: sticky");
                assert_eq!(drv.pop_used(), Err(e));
            }
            Ok(len) => {
                let (_, bytes) = got.unwrap().unwrap();
                assert_eq!(bytes.len(), len, "case {case}");
            }
        }
    }
}

#[test]
fn merged_frames_count_only_when_negotiated() {
    // Without merging the header's count is not even read: one chain is one frame.
    let page = Page::new();
    let pool = Pool::new(POOL_PAGES);
    let (mut drv, _, buffers) = rx_pair(&page, 2, BUFFER);
    let mut hdr = NetHdr::plain(Direction::Rx);
    hdr.num_buffers = 7;
    pool.shared().write(buffers.at(0), &hdr.encode());
    let head = 0;
    put_used(&page, 0, u32::from(head), 100);
    let taken = drv
        .pop_rx_frame(false, |_| panic!("read without merging"))
        .unwrap()
        .unwrap();
    assert_eq!(taken.heads(), &[head]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Any frame, any buffer size, any number of buffers offered: either the driver gets the
    /// frame back byte for byte, in no more than the bound of buffers, or the frame is dropped
    /// and every buffer taken comes back empty; the device never holds a buffer afterwards.
    #[test]
    fn merged_delivery_is_whole_or_nothing(
        frame_len in ETH_HDR_LEN..=65550usize,
        buffer_len in MIN_FRAME..=BUFFER,
        offered in 1u32..=40,
        merged in any::<bool>(),
        seed in any::<u8>(),
    ) {
        let page = Page::new();
        let pool = Pool::new(POOL_PAGES);
        let count = offered.min(POOL_LEN / buffer_len).min(u32::from(QUEUE_SIZE));
        let (mut drv, mut dev, buffers) = rx_pair(&page, count, buffer_len);
        let frame = eth_frame(frame_len, seed);
        let most = if merged { usize::from(MAX_MERGED_BUFFERS) } else { 1 };
        let done = deliver(&mut dev, &pool, &frame, most);
        prop_assert_eq!(dev.in_flight(), 0);
        let need = (NET_HDR_LEN + frame_len).div_ceil(buffer_len as usize);
        let fits = need <= most && need <= count as usize;
        match done.outcome {
            RxOutcome::Delivered { buffers: used } => {
                prop_assert!(fits);
                prop_assert_eq!(used, need);
                let (taken, bytes) = take(&mut drv, &pool, &buffers, merged).unwrap().unwrap();
                prop_assert_eq!(taken.heads().len(), need);
                prop_assert!(bytes == frame);
            }
            RxOutcome::NoBuffer | RxOutcome::TooSmall => {
                prop_assert!(!fits);
                while let Some((taken, _)) = take(&mut drv, &pool, &buffers, merged).unwrap() {
                    prop_assert!(taken.is_empty());
                }
            }
        }
        prop_assert_eq!(take(&mut drv, &pool, &buffers, merged), Ok(None));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// A stream of frames of any size through a ring the guest keeps full, offering each
    /// frame's buffers again as soon as it has copied the frame out: new chains reuse the heads
    /// of buffers still to be looked at, and every frame still comes back whole, because the
    /// guest names its buffers by token, not by head.
    #[test]
    fn frames_stay_whole_while_their_buffers_are_offered_again(
        lens in proptest::collection::vec(ETH_HDR_LEN..=65550usize, 1..40),
        seed in any::<u8>(),
    ) {
        let page = Page::new();
        let pool = Pool::new(POOL_PAGES);
        let (mut drv, mut dev, buffers) = rx_pair(&page, 14, BUFFER);
        let most = usize::from(MAX_MERGED_BUFFERS);
        for (i, &len) in lens.iter().enumerate() {
            let frame = eth_frame(len, seed.wrapping_add(i as u8));
            let done = deliver(&mut dev, &pool, &frame, most);
            prop_assert!(matches!(done.outcome, RxOutcome::Delivered { .. }), "{done:?}");
            let (taken, bytes) = take(&mut drv, &pool, &buffers, true).unwrap().unwrap();
            prop_assert!(bytes == frame, "frame {i} of {len} bytes came back changed");
            buffers.reoffer(&mut drv, &taken);
        }
        prop_assert_eq!(drv.outstanding(), 14);
    }
}
