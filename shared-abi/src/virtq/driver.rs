//! The front-end's side of a queue (virtio's driver): offers chains, publishes them, and takes
//! them back, trusting the back-end's used ring no more than it must.

use thiserror::Error;

use super::net::check_pool_pages;
use super::{
    avail_slot_offset, bit, used_slot_offset, vring_need_event, write_desc, Desc, LayoutError,
    QueueError, RingMem, Segment, AVAIL_EVENT, AVAIL_IDX, MAX_CHAIN, MAX_FRAME, MIN_FRAME, Q,
    QUEUE_SIZE, RING_PAGE_LEN, TX_DROPPED, TX_OK, USED_EVENT, USED_IDX, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};

/// A chain the device gave back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Its head, as [`DriverQueue::add`] returned it.
    pub head: u16,
    /// RX: bytes written (0: no frame); TX: [`TX_OK`] or [`TX_DROPPED`].
    pub len: u32,
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
    /// Per head: descriptors and bytes in its chain.
    descs: [u8; Q],
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
        if let Some(e) = self.broken {
            return Err(e);
        }
        let taken = self.take_used();
        if let Err(e) = taken {
            self.broken = Some(e);
        }
        taken
    }

    fn take_used(&mut self) -> Result<Option<Used>, QueueError> {
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
            len == 0 || (MIN_FRAME..=self.bytes[h]).contains(&len)
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
        Ok(Some(Used { head, len }))
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
