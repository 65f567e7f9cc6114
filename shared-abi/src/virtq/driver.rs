//! The front-end's side of a queue (virtio's driver): offers chains, publishes them, and takes
//! them back, trusting the back-end's used ring no more than it must.

use thiserror::Error;

use super::net::check_pool_pages;
use super::{
    avail_slot_offset, bit, used_slot_offset, vring_need_event, write_desc, Desc, LayoutError,
    QueueError, RingMem, Segment, AVAIL_EVENT, AVAIL_IDX, MAX_CHAIN, MAX_FRAME, MAX_MERGED_BUFFERS,
    MIN_FRAME, NET_HDR_LEN, Q, QUEUE_SIZE, RING_PAGE_LEN, TX_DROPPED, TX_OK, USED_EVENT, USED_IDX,
    VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};

/// A chain the device gave back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Its head, as [`DriverQueue::add`] returned it.
    pub head: u16,
    /// The caller's name for it, as given to [`DriverQueue::add_tagged`] (the head for
    /// [`DriverQueue::add`]): kept by the queue, so the caller needs no table by head, which a
    /// chain added meanwhile could reuse.
    pub token: u16,
    /// RX: bytes written (0: no frame); TX: [`TX_OK`] or [`TX_DROPPED`].
    pub len: u32,
}

/// A received frame's chains as the device gave them back ([`DriverQueue::pop_rx_frame`]):
/// one, or with mergeable buffers as many as the frame took, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxFrame {
    heads: [u16; MAX_MERGED_BUFFERS as usize],
    tokens: [u16; MAX_MERGED_BUFFERS as usize],
    lens: [u32; MAX_MERGED_BUFFERS as usize],
    count: u8,
}

impl RxFrame {
    /// The chains' heads, in frame order.
    pub fn heads(&self) -> &[u16] {
        &self.heads[..usize::from(self.count)]
    }

    /// The chains' tokens ([`DriverQueue::add_tagged`]), in frame order.
    pub fn tokens(&self) -> &[u16] {
        &self.tokens[..usize::from(self.count)]
    }

    /// Bytes the device wrote in each chain: the first has the net header in front.
    pub fn lens(&self) -> &[u32] {
        &self.lens[..usize::from(self.count)]
    }

    /// Bytes of the Ethernet frame (net header off); 0 for a buffer given back without one.
    pub fn frame_len(&self) -> usize {
        let total: usize = self.lens().iter().map(|&l| l as usize).sum();
        total.saturating_sub(NET_HDR_LEN)
    }

    /// A buffer given back without a frame (`used.len` 0).
    pub fn is_empty(&self) -> bool {
        self.lens[0] == 0
    }

    fn push(&mut self, used: Used) {
        let at = usize::from(self.count);
        self.heads[at] = used.head;
        self.tokens[at] = used.token;
        self.lens[at] = used.len;
        self.count += 1;
    }
}

/// Why [`DriverQueue::add`] refused a chain (nothing was written).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum AddError {
    /// No segments.
    #[error("empty chain")]
    Empty,
    /// More than [`MAX_CHAIN`] segments.
    #[error("chain of {count} segments (at most {MAX_CHAIN})")]
    TooManySegments { count: usize },
    /// Fewer free descriptors than segments: wait for used chains.
    #[error("chain needs {needed} descriptors, {free} free")]
    NoSpace { needed: usize, free: u16 },
    /// A segment outside the pool.
    #[error("buffer {:#x}+{:#x} is outside the pool", segment.offset, segment.len)]
    OutsidePool { segment: Segment },
    /// A total length outside `MIN_FRAME..=MAX_FRAME`.
    #[error("chain of {len} bytes (must be {MIN_FRAME}..={MAX_FRAME})")]
    BadLength { len: u64 },
}

/// The driver side of one queue. Everything it needs to take a chain back (its descriptors,
/// length and direction) is kept here, never read back from the page, which the back-end can
/// write.
pub struct DriverQueue<M> {
    mem: M,
    pool_len: u32,
    event_idx: bool,
    /// Stack of free descriptor ids; the top is `free[free_count - 1]`.
    free: [u16; Q],
    free_count: u16,
    /// Our copy of each descriptor's `next`.
    next: [u16; Q],
    /// Per head: descriptors and bytes in its chain, and the caller's token.
    descs: [u8; Q],
    tokens: [u16; Q],
    bytes: [u32; Q],
    /// Heads whose chain is device-writable (RX).
    writable: u128,
    /// Heads added and not yet published.
    added: u128,
    /// Heads published and not yet given back: the only ones the device may return.
    published: u128,
    /// Avail entries written (free-running) and the part of them published.
    avail_idx: u16,
    published_idx: u16,
    /// Used entries taken.
    last_used: u16,
    /// The violation that ended the queue.
    broken: Option<QueueError>,
}

impl<M: RingMem> DriverQueue<M> {
    /// A fresh queue in the page behind `mem`, for a pool of `pool_pages` pages, with
    /// event-index suppression if negotiated. Zeroes the page: call it before granting the
    /// page, as the back-end starts from zero indices.
    pub fn new(mem: M, pool_pages: u32, event_idx: bool) -> Result<DriverQueue<M>, LayoutError> {
        let pool_len = check_pool_pages(pool_pages)?;
        for at in (0..RING_PAGE_LEN).step_by(2) {
            mem.store_u16(at, 0);
        }
        let mut free = [0; Q];
        for (slot, id) in free.iter_mut().zip((0..QUEUE_SIZE).rev()) {
            *slot = id;
        }
        Ok(DriverQueue {
            mem,
            pool_len,
            event_idx,
            free,
            free_count: QUEUE_SIZE,
            next: [0; Q],
            descs: [0; Q],
            tokens: [0; Q],
            bytes: [0; Q],
            writable: 0,
            added: 0,
            published: 0,
            avail_idx: 0,
            published_idx: 0,
            last_used: 0,
            broken: None,
        })
    }

    /// Writes a chain of `segments` (device-writable for RX) and its avail entry; the device
    /// sees it after [`publish`](Self::publish). Returns its head id. A queue carries one
    /// direction: a chain of the other is a violation for the device.
    pub fn add(&mut self, segments: &[Segment], device_writable: bool) -> Result<u16, AddError> {
        self.add_as(segments, device_writable, None)
    }

    /// [`add`](Self::add), with `token`, the caller's name for the chain (its buffer, say),
    /// given back with it in [`Used::token`].
    pub fn add_tagged(
        &mut self,
        segments: &[Segment],
        device_writable: bool,
        token: u16,
    ) -> Result<u16, AddError> {
        self.add_as(segments, device_writable, Some(token))
    }

    fn add_as(
        &mut self,
        segments: &[Segment],
        device_writable: bool,
        token: Option<u16>,
    ) -> Result<u16, AddError> {
        let n = segments.len();
        if n == 0 {
            return Err(AddError::Empty);
        }
        if n > MAX_CHAIN {
            return Err(AddError::TooManySegments { count: n });
        }
        if n > usize::from(self.free_count) {
            return Err(AddError::NoSpace {
                needed: n,
                free: self.free_count,
            });
        }
        if let Some(&segment) = segments.iter().find(|s| !s.inside(self.pool_len)) {
            return Err(AddError::OutsidePool { segment });
        }
        let total: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
        if total < u64::from(MIN_FRAME) || total > u64::from(MAX_FRAME) {
            return Err(AddError::BadLength { len: total });
        }
        let mut ids = [0u16; MAX_CHAIN];
        for id in &mut ids[..n] {
            self.free_count -= 1;
            *id = self.free[usize::from(self.free_count)];
        }
        let write = if device_writable {
            VIRTQ_DESC_F_WRITE
        } else {
            0
        };
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == n;
            let next = if last { 0 } else { ids[i + 1] };
            let flags = write | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let d = Desc {
                addr: u64::from(segment.offset),
                len: segment.len,
                flags,
                next,
            };
            write_desc(&self.mem, ids[i], d);
            self.next[usize::from(ids[i])] = next;
        }
        let head = ids[0];
        let h = usize::from(head);
        self.descs[h] = n as u8;
        self.tokens[h] = token.unwrap_or(head);
        self.bytes[h] = total as u32;
        if device_writable {
            self.writable |= bit(head);
        }
        self.added |= bit(head);
        self.mem.store_u16(avail_slot_offset(self.avail_idx), head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(head)
    }

    /// Makes the chains added so far visible: avail.idx with release, after their descriptors
    /// and slots. Returns avail.idx before and after, for
    /// [`should_notify_device`](Self::should_notify_device).
    pub fn publish(&mut self) -> (u16, u16) {
        let (old, new) = (self.published_idx, self.avail_idx);
        if old != new {
            self.mem.store_u16_release(AVAIL_IDX, new);
            self.published |= self.added;
            self.added = 0;
            self.published_idx = new;
        }
        (old, new)
    }

    /// After [`publish`](Self::publish) moved avail.idx from `old` to `new`: whether to send the
    /// back-end an event. The full fence orders our avail.idx store before the avail_event
    /// load (see [`DeviceQueue::should_notify_driver`](super::DeviceQueue)).
    pub fn should_notify_device(&self, old: u16, new: u16) -> bool {
        if old == new {
            return false;
        }
        if !self.event_idx {
            return true;
        }
        self.mem.fence();
        vring_need_event(self.mem.load_u16(AVAIL_EVENT), new, old)
    }

    /// The next chain the device gave back, `None` if there is none. Its id must be a
    /// published chain not yet returned and its length possible for that chain; anything else
    /// is a violation that ends the queue (returned again on every call).
    pub fn pop_used(&mut self) -> Result<Option<Used>, QueueError> {
        self.pop_used_as(false)
    }

    /// RX with mergeable buffers: the next chain given back as a later buffer of a merged
    /// frame, which holds frame bytes only: its length is `1..=` the chain's bytes (0, "no
    /// frame", and the first buffer's lower bound do not apply). Otherwise as
    /// [`pop_used`](Self::pop_used).
    pub fn pop_used_continuation(&mut self) -> Result<Option<Used>, QueueError> {
        self.pop_used_as(true)
    }

    /// RX: the next frame the device gave back, `None` if there is none. Without mergeable
    /// buffers (`merged` false) one chain. With them, the first chain's net header says how
    /// many the frame took: `num_buffers(token)` reads it (from the pool, once; `token` is the
    /// first chain's, see [`add_tagged`](Self::add_tagged)), and the rest
    /// must have been published with the first ([`pop_used_continuation`]'s rules). A count
    /// outside `1..=`[`MAX_MERGED_BUFFERS`] or a frame published in part is a violation that
    /// ends the queue, as one in [`pop_used`](Self::pop_used). A chain given back empty is a
    /// frame of its own, whose header is not read.
    ///
    /// [`pop_used_continuation`]: Self::pop_used_continuation
    pub fn pop_rx_frame(
        &mut self,
        merged: bool,
        num_buffers: impl FnOnce(u16) -> u16,
    ) -> Result<Option<RxFrame>, QueueError> {
        let Some(first) = self.pop_used()? else {
            return Ok(None);
        };
        let mut frame = RxFrame {
            heads: [0; MAX_MERGED_BUFFERS as usize],
            tokens: [0; MAX_MERGED_BUFFERS as usize],
            lens: [0; MAX_MERGED_BUFFERS as usize],
            count: 0,
        };
        frame.push(first);
        if !merged || frame.is_empty() {
            return Ok(Some(frame));
        }
        let claimed = num_buffers(first.token);
        if claimed == 0 || claimed > MAX_MERGED_BUFFERS {
            return Err(self.break_with(QueueError::MergedCountInvalid {
                id: first.head,
                num_buffers: claimed,
            }));
        }
        while u16::from(frame.count) < claimed {
            match self.pop_used_continuation()? {
                Some(used) => frame.push(used),
                None => {
                    return Err(self.break_with(QueueError::MergedFrameIncomplete {
                        id: first.head,
                        num_buffers: claimed,
                        published: u16::from(frame.count),
                    }))
                }
            }
        }
        Ok(Some(frame))
    }

    /// Ends the queue with violation `e` and returns it.
    fn break_with(&mut self, e: QueueError) -> QueueError {
        self.broken = Some(e);
        e
    }

    fn pop_used_as(&mut self, continuation: bool) -> Result<Option<Used>, QueueError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let taken = self.take_used(continuation);
        if let Err(e) = taken {
            self.broken = Some(e);
        }
        taken
    }

    fn take_used(&mut self, continuation: bool) -> Result<Option<Used>, QueueError> {
        let used_idx = self.mem.load_u16_acquire(USED_IDX);
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending == 0 {
            return Ok(None);
        }
        if u32::from(pending) > self.published.count_ones() {
            return Err(QueueError::UsedTooFarAhead {
                used_idx,
                last_used: self.last_used,
            });
        }
        let at = used_slot_offset(self.last_used);
        let id = self.mem.load_u32(at);
        let len = self.mem.load_u32(at + 4);
        if id >= u32::from(QUEUE_SIZE) {
            return Err(QueueError::UsedIdOutOfRange { id });
        }
        let head = id as u16;
        if self.published & bit(head) == 0 {
            return Err(QueueError::UsedIdNotOutstanding { id: head });
        }
        let h = usize::from(head);
        let len_ok = if self.writable & bit(head) != 0 {
            if continuation {
                (1..=self.bytes[h]).contains(&len)
            } else {
                len == 0 || (MIN_FRAME..=self.bytes[h]).contains(&len)
            }
        } else {
            len == TX_OK || len == TX_DROPPED
        };
        if !len_ok {
            return Err(QueueError::UsedLenInvalid { id: head, len });
        }
        let mut index = head;
        for _ in 0..self.descs[h] {
            self.free[usize::from(self.free_count)] = index;
            self.free_count += 1;
            index = self.next[usize::from(index)];
        }
        self.published &= !bit(head);
        self.writable &= !bit(head);
        self.last_used = self.last_used.wrapping_add(1);
        Ok(Some(Used {
            head,
            token: self.tokens[h],
            len,
        }))
    }

    /// Before sleeping: asks for an event on the next used entry (used_event = what we took),
    /// then, after a full fence, re-checks used.idx. True means entries are already waiting:
    /// take them instead of sleeping, as their event may have been suppressed.
    pub fn enable_notify(&self) -> bool {
        if self.event_idx {
            self.mem.store_u16(USED_EVENT, self.last_used);
            self.mem.fence();
        }
        self.mem.load_u16_acquire(USED_IDX) != self.last_used
    }

    /// Descriptors free for [`add`](Self::add).
    pub const fn free_descriptors(&self) -> u16 {
        self.free_count
    }

    /// Chains added and not yet given back (published or not).
    pub const fn outstanding(&self) -> u32 {
        (self.published | self.added).count_ones()
    }

    /// Used entries taken so far (free-running).
    pub const fn last_used(&self) -> u16 {
        self.last_used
    }

    /// The violation that ended the queue, if any.
    pub const fn broken(&self) -> Option<QueueError> {
        self.broken
    }
}
