//! The back-end's side of a queue (virtio's device): takes chains the guest offers, checks them
//! against its own state, and gives them back.

use core::ops::Range;
use thiserror::Error;

use super::net::check_pool_pages;
use super::{
    avail_slot_offset, bit, read_desc, used_slot_offset, Desc, Direction, LayoutError, NetHdr,
    PoolMem, QueueError, RingMem, Segment, AVAIL_EVENT, AVAIL_IDX, ETH_HDR_LEN, MAX_CHAIN,
    MAX_FRAME, MAX_MERGED_BUFFERS, MIN_FRAME, NET_HDR_LEN, QUEUE_SIZE, TX_HEAD_LEN, USED_EVENT,
    USED_IDX, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use crate::virtq::vring_need_event;

/// A chain taken from the avail ring: its head and its buffers, copied out of the ring page and
/// checked, so nothing the guest writes later can change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    head: u16,
    count: u8,
    total: u32,
    segments: [Segment; MAX_CHAIN],
}

impl Chain {
    /// The head descriptor id, to hand back with [`DeviceQueue::push_used`].
    pub const fn head(&self) -> u16 {
        self.head
    }

    /// Bytes in all buffers, `MIN_FRAME..=MAX_FRAME`.
    pub const fn total_len(&self) -> u32 {
        self.total
    }

    /// The buffers, in chain order; each lies inside the pool.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..usize::from(self.count)]
    }

    /// Calls `f(pool offset, range in the caller's buffer)` for each piece of chain bytes
    /// `[skip, skip + want)`; returns the bytes covered. Stops early at a buffer past
    /// `pool_size`, which only a pool smaller than the queue was told can cause.
    fn pieces(
        &self,
        pool_size: usize,
        mut skip: usize,
        want: usize,
        mut f: impl FnMut(usize, Range<usize>),
    ) -> usize {
        let mut done = 0;
        for seg in self.segments() {
            if done == want {
                break;
            }
            let len = seg.len as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            let start = seg.offset as usize + skip;
            let n = (len - skip).min(want - done);
            skip = 0;
            if start > pool_size || n > pool_size - start {
                break;
            }
            f(start, done..done + n);
            done += n;
        }
        done
    }

    /// Copies chain bytes from `skip` on into `dst`; returns how many (fewer when the chain
    /// ends first). Each pool byte is read once: check the copy, not the pool.
    pub fn read<P: PoolMem + ?Sized>(&self, pool: &P, skip: usize, dst: &mut [u8]) -> usize {
        let want = dst.len();
        self.pieces(pool.size(), skip, want, |at, range| {
            pool.read(at, &mut dst[range])
        })
    }

    /// Copies `src` into the chain's buffers from `skip` on; returns how many bytes fitted.
    pub fn write<P: PoolMem + ?Sized>(&self, pool: &P, skip: usize, src: &[u8]) -> usize {
        self.pieces(pool.size(), skip, src.len(), |at, range| {
            pool.write(at, &src[range])
        })
    }

    /// TX: copies the whole chain into `buf` and checks its net header. Returns the header and
    /// the Ethernet frame's length; the frame is `buf[NET_HDR_LEN..NET_HDR_LEN + len]`. A chain
    /// longer than `buf` is [`QueueError::FrameTooLong`], so `buf`'s size is the back-end's
    /// frame limit.
    pub fn read_tx<P: PoolMem + ?Sized>(
        &self,
        pool: &P,
        buf: &mut [u8],
        csum_offload: bool,
    ) -> Result<(NetHdr, usize), QueueError> {
        let head = self.head;
        let total = self.total as usize;
        let Some(dst) = buf.get_mut(..total) else {
            return Err(QueueError::FrameTooLong {
                head,
                len: u64::from(self.total),
            });
        };
        let got = self.read(pool, 0, dst);
        if got < total || total < NET_HDR_LEN {
            // Only a pool shorter than the one the queue checks against gets here.
            return Err(QueueError::FrameTooShort {
                head,
                len: got as u64,
            });
        }
        let mut hdr = [0; NET_HDR_LEN];
        hdr.copy_from_slice(&dst[..NET_HDR_LEN]);
        let frame_len = total - NET_HDR_LEN;
        let hdr = NetHdr::decode(&hdr, frame_len, Direction::Tx, csum_offload)
            .map_err(|reason| QueueError::BadNetHeader { head, reason })?;
        Ok((hdr, frame_len))
    }

    /// TX without copying the frame: reads the net header and the frame's first bytes (the
    /// Ethernet header and up to [`TX_HEAD_LEN`] in all, once) and checks the header and the
    /// frame length against `max_frame` (the back-end's limit, net header excluded). The caller
    /// then moves the rest of the frame with [`copy_plan`], straight into its destination, and
    /// writes the head from this copy, so what it forwards is what it checked even if the
    /// guest rewrites its buffer meanwhile.
    pub fn read_tx_header<P: PoolMem + ?Sized>(
        &self,
        pool: &P,
        csum_offload: bool,
        max_frame: usize,
    ) -> Result<TxHeader, QueueError> {
        let head = self.head;
        let total = self.total as usize;
        if total > NET_HDR_LEN + max_frame {
            return Err(QueueError::FrameTooLong {
                head,
                len: u64::from(self.total),
            });
        }
        let mut both = [0u8; NET_HDR_LEN + TX_HEAD_LEN];
        let want = total.min(both.len());
        let got = self.read(pool, 0, &mut both[..want]);
        if got < want || got < NET_HDR_LEN + ETH_HDR_LEN {
            // `pop` guarantees MIN_FRAME bytes; only a pool shorter than the queue's gets here.
            return Err(QueueError::FrameTooShort {
                head,
                len: got as u64,
            });
        }
        let mut hdr = [0; NET_HDR_LEN];
        hdr.copy_from_slice(&both[..NET_HDR_LEN]);
        let frame_len = total - NET_HDR_LEN;
        let hdr = NetHdr::decode(&hdr, frame_len, Direction::Tx, csum_offload)
            .map_err(|reason| QueueError::BadNetHeader { head, reason })?;
        let mut first = [0; TX_HEAD_LEN];
        first.copy_from_slice(&both[NET_HDR_LEN..]);
        Ok(TxHeader {
            hdr,
            head: first,
            head_len: got - NET_HDR_LEN,
            frame_len,
        })
    }
}

/// What [`DeviceQueue::pop_rx_buffer`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxPick {
    /// A buffer that can hold a frame; `None`: the ring had none (or only short ones, up to
    /// the bound).
    pub chain: Option<Chain>,
    /// Buffers too short for any frame, given back empty.
    pub skipped: u32,
}

/// How [`DeviceQueue::deliver`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// The frame is in `buffers` receive buffers, given back together.
    Delivered { buffers: usize },
    /// Too few receive buffers offered: the frame is dropped, and any buffer taken for it
    /// went back empty.
    NoBuffer,
    /// The buffers offered cannot hold the frame (without merging, one too short; with it,
    /// more than the bound would be needed): the frame is dropped and the buffers taken for
    /// it went back empty.
    TooSmall,
}

/// What [`DeviceQueue::deliver`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxDelivery {
    pub outcome: RxOutcome,
    /// Buffers too short for any frame, given back empty on the way.
    pub skipped: u32,
}

/// [`DeviceQueue::push_used`] of a head the device does not hold: a bug in the back-end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("push_used of head {head}, which the device does not hold")]
pub struct NotInFlight {
    pub head: u16,
}

/// What [`Chain::read_tx_header`] read and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxHeader {
    pub hdr: NetHdr,
    /// The frame's first `head_len` bytes as read, once: the Ethernet header (destination,
    /// source, EtherType), then the start of what it carries.
    pub head: [u8; TX_HEAD_LEN],
    /// Bytes of `head` that are the frame's: `min(frame_len, TX_HEAD_LEN)`, at least
    /// [`ETH_HDR_LEN`].
    pub head_len: usize,
    /// Bytes of the Ethernet frame (net header excluded).
    pub frame_len: usize,
}

impl TxHeader {
    /// The frame's first bytes, as read once.
    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len]
    }
}

/// Plans a copy of `len` bytes from chain `src` (from byte `src_skip` of it) to chain `dst`
/// (from byte `dst_skip`), buffer by buffer: calls `f(src pool offset, dst pool offset, n)`
/// for each run that is contiguous on both sides, and returns the bytes covered (fewer when
/// either chain ends first). Lets a back-end move a frame between two guests' pools in one
/// copy, without a bounce buffer.
pub fn copy_plan(
    src: &Chain,
    src_skip: usize,
    dst: &Chain,
    dst_skip: usize,
    len: usize,
    mut f: impl FnMut(usize, usize, usize),
) -> usize {
    let mut src_pieces = Pieces::new(src, src_skip);
    let mut dst_pieces = Pieces::new(dst, dst_skip);
    let mut done = 0;
    while done < len {
        let (Some((s_at, s_len)), Some((d_at, d_len))) = (src_pieces.peek(), dst_pieces.peek())
        else {
            break;
        };
        let n = s_len.min(d_len).min(len - done);
        f(s_at, d_at, n);
        src_pieces.advance(n);
        dst_pieces.advance(n);
        done += n;
    }
    done
}

/// A cursor over a chain's bytes as (pool offset, bytes left in this buffer).
struct Pieces<'a> {
    segments: &'a [Segment],
    index: usize,
    offset: usize,
}

impl<'a> Pieces<'a> {
    fn new(chain: &'a Chain, skip: usize) -> Pieces<'a> {
        let mut pieces = Pieces {
            segments: chain.segments(),
            index: 0,
            offset: 0,
        };
        pieces.advance(skip);
        pieces
    }

    fn peek(&self) -> Option<(usize, usize)> {
        let seg = self.segments.get(self.index)?;
        Some((
            seg.offset as usize + self.offset,
            seg.len as usize - self.offset,
        ))
    }

    /// Moves `n` bytes on, past every buffer that is then used up (empty ones included, so
    /// [`peek`](Self::peek) never offers a zero-length run).
    fn advance(&mut self, n: usize) {
        self.offset += n;
        while let Some(seg) = self.segments.get(self.index) {
            if self.offset < seg.len as usize {
                break;
            }
            self.offset -= seg.len as usize;
            self.index += 1;
        }
    }
}

/// The device side of one queue. Its indices live here and are never read back from the page,
/// so the guest can only lie about its own fields, and every lie is caught by [`pop`](Self::pop).
pub struct DeviceQueue<M> {
    mem: M,
    dir: Direction,
    pool_len: u32,
    event_idx: bool,
    /// Avail entries consumed.
    last_avail: u16,
    /// Used entries published.
    used_idx: u16,
    /// Heads popped and not yet pushed back, so a head offered twice is caught.
    in_flight: u128,
    /// The violation that ended the queue: nothing is taken from it after that.
    broken: Option<QueueError>,
    /// RX: bytes of the last receive buffer taken, by which [`deliver`](Self::deliver) judges
    /// how many buffers a merged frame needs before it takes any.
    rx_buffer_hint: u32,
}

impl<M: RingMem> DeviceQueue<M> {
    /// The device side of the ring in `mem`, carrying `dir` frames in a pool of `pool_pages`
    /// pages, with event-index suppression if negotiated. Writes nothing: the page is the
    /// front-end's to initialise.
    pub fn new(
        mem: M,
        dir: Direction,
        pool_pages: u32,
        event_idx: bool,
    ) -> Result<DeviceQueue<M>, LayoutError> {
        Ok(DeviceQueue {
            mem,
            dir,
            pool_len: check_pool_pages(pool_pages)?,
            event_idx,
            last_avail: 0,
            used_idx: 0,
            in_flight: 0,
            broken: None,
            rx_buffer_hint: 0,
        })
    }

    /// The next chain the guest offers, `None` when there is none. A bad-frame error has
    /// consumed its chain, which must still be completed (`push_used(head, TX_DROPPED)` or
    /// `push_used(head, 0)`); a violation ends the queue: it is returned again on every call.
    pub fn pop(&mut self) -> Result<Option<Chain>, QueueError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let taken = self.take();
        if let Err(e) = taken {
            if e.is_violation() {
                self.broken = Some(e);
            }
        }
        taken
    }

    /// RX: the next receive buffer that can hold a frame, with how many buffers too short for
    /// any frame were given back empty (`push_used(head, 0)`) on the way. At most `max_short`
    /// of those per call, then `chain` is `None` as if the ring were empty: the guest can
    /// re-offer each one as soon as it comes back, so without the bound one delivery would
    /// loop for as long as it likes. A violation is returned as with [`pop`](Self::pop).
    pub fn pop_rx_buffer(&mut self, max_short: u32) -> Result<RxPick, QueueError> {
        let mut pick = RxPick {
            chain: None,
            skipped: 0,
        };
        while pick.skipped < max_short {
            match self.pop() {
                Ok(chain) => {
                    pick.chain = chain;
                    return Ok(pick);
                }
                Err(e) if e.is_violation() => return Err(e),
                Err(e) => {
                    if let Some(head) = e.bad_frame_head() {
                        let _ = self.push_used(head, 0);
                    }
                    pick.skipped += 1;
                }
            }
        }
        Ok(pick)
    }

    /// RX: writes a frame of `frame_len` bytes behind the net header `hdr` into the next
    /// receive buffers and gives them back. One buffer, or with mergeable buffers up to `most`
    /// (clamped to `1..=`[`MAX_MERGED_BUFFERS`]), filled in ring order and published with one
    /// store of used.idx, the first one's header (written last) saying how many
    /// (`num_buffers`). `write(pool, chain, at, bytes)` copies frame bytes `bytes` into `chain`
    /// from chain byte `at`; only the first chain holds the header, so `at` is
    /// [`NET_HDR_LEN`] there and 0 in the others.
    ///
    /// Bounded whatever the guest offers: at most `most` buffers taken and `max_short` buffers
    /// too short for any frame skipped (given back empty) per frame. A merged frame first
    /// checks that enough buffers are offered, judging by the last buffer's size, so a full
    /// ring costs nothing; if the guest's buffers turn out shorter, those taken go back
    /// empty. A violation is returned as with [`pop`](Self::pop).
    pub fn deliver<P: PoolMem + ?Sized>(
        &mut self,
        pool: &P,
        hdr: &NetHdr,
        frame_len: usize,
        most: usize,
        max_short: u32,
        mut write: impl FnMut(&P, &Chain, usize, Range<usize>),
    ) -> Result<RxDelivery, QueueError> {
        let most = most.clamp(1, usize::from(MAX_MERGED_BUFFERS));
        let need = NET_HDR_LEN + frame_len;
        let mut done = RxDelivery {
            outcome: RxOutcome::NoBuffer,
            skipped: 0,
        };
        let hint = self.rx_buffer_hint as usize;
        if most > 1 && hint > 0 && usize::from(self.offered()) < need.div_ceil(hint) {
            return Ok(done);
        }
        let mut taken = [(0u16, 0u32); MAX_MERGED_BUFFERS as usize];
        let mut count = 0;
        let mut first = None;
        let mut written = 0;
        while written < need {
            let pick = self.pop_rx_buffer(max_short - done.skipped)?;
            done.skipped += pick.skipped;
            let Some(chain) = pick.chain else {
                self.give_back_empty(&taken[..count]);
                return Ok(done);
            };
            let room = chain.total_len() as usize;
            self.rx_buffer_hint = chain.total_len();
            taken[count] = (chain.head(), 0);
            count += 1;
            if count == most && room < need - written {
                self.give_back_empty(&taken[..count]);
                done.outcome = RxOutcome::TooSmall;
                return Ok(done);
            }
            let n = room.min(need - written);
            // Chains hold at least MIN_FRAME bytes, so the first one holds the whole header.
            let at = NET_HDR_LEN.saturating_sub(written);
            let bytes = (written + at - NET_HDR_LEN)..(written + n - NET_HDR_LEN);
            if !bytes.is_empty() {
                write(pool, &chain, at, bytes);
            }
            taken[count - 1].1 = n as u32;
            first.get_or_insert(chain);
            written += n;
        }
        if let Some(first) = first {
            let hdr = NetHdr {
                num_buffers: count as u16,
                ..*hdr
            };
            first.write(pool, 0, &hdr.encode());
        }
        // Every head was popped above and is held until now.
        let _ = self.push_used_batch(&taken[..count]);
        done.outcome = RxOutcome::Delivered { buffers: count };
        Ok(done)
    }

    /// Gives the receive buffers taken for a frame that was then dropped back without one.
    fn give_back_empty(&mut self, taken: &[(u16, u32)]) {
        let mut empty = [(0u16, 0u32); MAX_MERGED_BUFFERS as usize];
        for (slot, &(head, _)) in empty.iter_mut().zip(taken) {
            *slot = (head, 0);
        }
        let _ = self.push_used_batch(&empty[..taken.len()]);
    }

    fn take(&mut self) -> Result<Option<Chain>, QueueError> {
        let avail_idx = self.mem.load_u16_acquire(AVAIL_IDX);
        let pending = avail_idx.wrapping_sub(self.last_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > QUEUE_SIZE {
            return Err(QueueError::AvailTooFarAhead {
                avail_idx,
                last_avail: self.last_avail,
            });
        }
        let head = self.mem.load_u16(avail_slot_offset(self.last_avail));
        if head >= QUEUE_SIZE {
            return Err(QueueError::DescIndexOutOfRange { index: head });
        }
        if self.in_flight & bit(head) != 0 {
            return Err(QueueError::HeadInFlight { head });
        }
        let mut chain = Chain {
            head,
            count: 0,
            total: 0,
            segments: [Segment::default(); MAX_CHAIN],
        };
        // Every descriptor is read once into `d`; checks and use both look at that copy only.
        let mut seen = 0u128;
        let mut total = 0u64;
        let mut index = head;
        loop {
            if index >= QUEUE_SIZE {
                return Err(QueueError::DescIndexOutOfRange { index });
            }
            if seen & bit(index) != 0 {
                return Err(QueueError::ChainLoop { head, index });
            }
            if usize::from(chain.count) == MAX_CHAIN {
                return Err(QueueError::ChainTooLong { head });
            }
            seen |= bit(index);
            let d = read_desc(&self.mem, index);
            let segment = self.check(index, d)?;
            chain.segments[usize::from(chain.count)] = segment;
            chain.count += 1;
            total += u64::from(d.len);
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            index = d.next;
        }
        // The chain is well formed: consumed and held whatever its length, so a bad frame is
        // completed like any other.
        self.last_avail = self.last_avail.wrapping_add(1);
        self.in_flight |= bit(head);
        if total == 0 {
            return Err(QueueError::FrameEmpty { head });
        }
        if total < u64::from(MIN_FRAME) {
            return Err(QueueError::FrameTooShort { head, len: total });
        }
        if total > u64::from(MAX_FRAME) {
            return Err(QueueError::FrameTooLong { head, len: total });
        }
        chain.total = total as u32;
        Ok(Some(chain))
    }

    /// One descriptor's flags and buffer.
    fn check(&self, index: u16, d: Desc) -> Result<Segment, QueueError> {
        if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            return Err(QueueError::Indirect { index });
        }
        if d.flags & !(VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE) != 0 {
            return Err(QueueError::UnknownDescFlags {
                index,
                flags: d.flags,
            });
        }
        let writable = d.flags & VIRTQ_DESC_F_WRITE != 0;
        if writable != (self.dir == Direction::Rx) {
            return Err(QueueError::WrongDirection {
                index,
                queue: self.dir,
            });
        }
        let pool = u64::from(self.pool_len);
        if d.addr > pool || u64::from(d.len) > pool - d.addr {
            return Err(QueueError::OutsidePool {
                index,
                addr: d.addr,
                len: d.len,
            });
        }
        Ok(Segment {
            offset: d.addr as u32,
            len: d.len,
        })
    }

    /// Gives chain `head` back with `len` (RX: bytes written, 0 for none; TX: [`TX_OK`] or
    /// [`TX_DROPPED`]): the element first, then used.idx with release, so the guest sees the
    /// element and the pool data written before it. Refused for a head the device does not
    /// hold, which would corrupt the guest's accounting.
    ///
    /// [`TX_OK`]: super::TX_OK
    /// [`TX_DROPPED`]: super::TX_DROPPED
    pub fn push_used(&mut self, head: u16, len: u32) -> Result<(), NotInFlight> {
        self.push_used_batch(&[(head, len)])
    }

    /// Gives several chains back (`(head, len)` each, as [`push_used`](Self::push_used)) with
    /// one store of used.idx after all their elements, so the guest sees all of them or none:
    /// the buffers of one merged frame ([`FEATURE_MRG_RXBUF`](super::FEATURE_MRG_RXBUF)).
    /// Refused, with nothing written, if any head is not held or appears twice
    /// ([`NotInFlight`] names it).
    pub fn push_used_batch(&mut self, entries: &[(u16, u32)]) -> Result<(), NotInFlight> {
        let mut heads = 0u128;
        for &(head, _) in entries {
            if head >= QUEUE_SIZE || self.in_flight & bit(head) == 0 || heads & bit(head) != 0 {
                return Err(NotInFlight { head });
            }
            heads |= bit(head);
        }
        if entries.is_empty() {
            return Ok(());
        }
        for &(head, len) in entries {
            let at = used_slot_offset(self.used_idx);
            self.mem.store_u32(at, u32::from(head));
            self.mem.store_u32(at + 4, len);
            self.used_idx = self.used_idx.wrapping_add(1);
        }
        self.mem.store_u16_release(USED_IDX, self.used_idx);
        self.in_flight &= !heads;
        Ok(())
    }

    /// Chains the guest has published and we have not taken yet, as avail.idx shows now (a
    /// guest that lies gets a wrong count here, and its lie is caught by [`pop`](Self::pop)).
    pub fn offered(&self) -> u16 {
        self.mem
            .load_u16_acquire(AVAIL_IDX)
            .wrapping_sub(self.last_avail)
            .min(QUEUE_SIZE)
    }

    /// After moving used.idx from `old_used` to `new_used` (read [`used_idx`](Self::used_idx)
    /// before and after a batch): whether to send the guest an event. The full fence orders
    /// our used.idx store before the used_event load; without it both sides could miss each
    /// other's latest write and the guest would sleep with work pending.
    pub fn should_notify_driver(&self, old_used: u16, new_used: u16) -> bool {
        if old_used == new_used {
            return false;
        }
        if !self.event_idx {
            return true;
        }
        self.mem.fence();
        vring_need_event(self.mem.load_u16(USED_EVENT), new_used, old_used)
    }

    /// Before sleeping: asks for an event on the next publish (avail_event = what we consumed),
    /// then, after a full fence, re-checks avail.idx. True means chains are already waiting:
    /// pop them instead of sleeping, as their event may have been suppressed.
    pub fn enable_notify(&self) -> bool {
        if self.event_idx {
            self.mem.store_u16(AVAIL_EVENT, self.last_avail);
            self.mem.fence();
        }
        self.mem.load_u16_acquire(AVAIL_IDX) != self.last_avail
    }

    /// RX, before waiting for room for a frame of `frame_len` bytes that found too few buffers
    /// (the driver domain holds such a frame instead of dropping it): asks for an event once
    /// the guest has offered as many buffers as the frame takes, judged by the last buffer's
    /// size as [`deliver`](Self::deliver) judges (one buffer without merging or before any
    /// size is known; at most `most`), then, after a full fence, re-checks. True means that
    /// many are offered already: deliver instead of sleeping.
    pub fn notify_when_room(&self, frame_len: usize, most: usize) -> bool {
        let needed = self.buffers_needed(frame_len, most);
        if self.event_idx {
            // The guest notifies when avail.idx passes avail_event, i.e. reaches
            // last_avail + needed.
            self.mem
                .store_u16(AVAIL_EVENT, self.last_avail.wrapping_add(needed - 1));
            self.mem.fence();
        }
        self.offered() >= needed
    }

    /// Receive buffers a frame of `frame_len` bytes takes, as far as we can tell: 1 to
    /// `most` (and to the ring's size).
    fn buffers_needed(&self, frame_len: usize, most: usize) -> u16 {
        let most = most.clamp(1, usize::from(MAX_MERGED_BUFFERS.min(QUEUE_SIZE)));
        let hint = self.rx_buffer_hint as usize;
        if most == 1 || hint == 0 {
            return 1;
        }
        // `most` fits in a u16 (clamped above).
        (NET_HDR_LEN + frame_len).div_ceil(hint).clamp(1, most) as u16
    }

    /// Used entries published so far (free-running).
    pub const fn used_idx(&self) -> u16 {
        self.used_idx
    }

    /// Avail entries consumed so far (free-running).
    pub const fn last_avail(&self) -> u16 {
        self.last_avail
    }

    /// Chains popped and not yet pushed back.
    pub const fn in_flight(&self) -> u32 {
        self.in_flight.count_ones()
    }

    /// Which way the queue carries frames.
    pub const fn direction(&self) -> Direction {
        self.dir
    }

    /// The violation that ended the queue, if any.
    pub const fn broken(&self) -> Option<QueueError> {
        self.broken
    }
}
