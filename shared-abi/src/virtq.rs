//! Para-virtual network rings: virtio 1.x split virtqueues in granted pages, both sides.
//!
//! A front-end (the guest, virtio's *driver*) and the driver domain (the back-end, virtio's
//! *device*) exchange Ethernet frames through two queues per connection: TX (frames the guest
//! sends; descriptors the device only reads) and RX (empty buffers the guest offers; the device
//! fills them). Each queue lives in one 4 KiB page the front-end grants read-write to the
//! back-end; the frames live in a separate *buffer pool*. The handshake carries the grant refs
//! ([`RingLayout`] reads them from the front-end's section of the control page) and the feature
//! bits ([`NetFeatures`]).
//!
//! This module is the one definition of the page layout and of both sides' logic
//! ([`DeviceQueue`], [`DriverQueue`]); the VMs only supply the memory ([`RingMem`],
//! [`PoolMem`]).
//!
//! # Ring page, one queue (little-endian; `QUEUE_SIZE` = 128)
//!
//! | offset    | size | field                                                  | written by |
//! |----------:|-----:|--------------------------------------------------------|------------|
//! |         0 | 2048 | descriptor table: 128 × 16 B (below)                   | front-end  |
//! |      2048 |    2 | avail.flags (ignored: suppression uses event indices)  | front-end  |
//! |      2050 |    2 | avail.idx: free-running count of published chains      | front-end  |
//! |      2052 |  256 | avail.ring\[128\]: `u16` head descriptor ids           | front-end  |
//! |      2308 |    2 | used_event: "notify me when used.idx passes this"      | front-end  |
//! | 2310-2559 |      | unused                                                 |            |
//! |      2560 |    2 | used.flags (ignored)                                   | back-end   |
//! |      2562 |    2 | used.idx: free-running count of completed chains       | back-end   |
//! |      2564 | 1024 | used.ring\[128\]: { id `u32`, len `u32` }              | back-end   |
//! |      3588 |    2 | avail_event: "notify me when avail.idx passes this"    | back-end   |
//! | 3590-4095 |      | unused                                                 |            |
//!
//! Descriptor (16 bytes): `addr: u64` (offset 0), `len: u32` (8), `flags: u16` (12),
//! `next: u16` (14). Flags: [`VIRTQ_DESC_F_NEXT`] (the chain continues at `next`),
//! [`VIRTQ_DESC_F_WRITE`] (the device writes this buffer), [`VIRTQ_DESC_F_INDIRECT`] (refused:
//! an indirect table would be one more guest structure to walk, for nothing a 128-entry ring
//! needs). Any other flag bit is refused too.
//!
//! **`addr` is not a physical address.** It is a byte offset into the connection's buffer pool:
//! `pool_pages` consecutive grant refs starting at the pool's first ref, which the back-end maps
//! contiguously (the front-end need not have them contiguous in its RAM). The back-end can
//! therefore check a buffer with one range comparison, `[addr, addr + len)` inside
//! `[0, pool_pages * 4096)`, and never translates a guest address. A back-end maps at most
//! [`POOL_BUDGET_PAGES`] per connection; [`PoolPlan`] sizes a front-end's buffers from its
//! MTU (up to [`MAX_MTU`], so one frame of up to [`MAX_ETH_FRAME`] bytes carries a 64 KiB TCP
//! segment between guests) within that budget.
//!
//! # Frames
//!
//! A chain carries one frame: the 12-byte `virtio_net_hdr_v1` ([`NetHdr`]), then the Ethernet
//! frame, possibly split over several descriptors. With mergeable receive buffers
//! ([`FEATURE_MRG_RXBUF`]) a received frame may instead take several receive chains, in ring
//! order, published together with one store of used.idx ([`DeviceQueue::deliver`]); the
//! first chain's header says how many (`num_buffers`), the later ones hold frame bytes only,
//! and the front-end takes them as one ([`DriverQueue::pop_rx_frame`]). A chain holds at most [`MAX_CHAIN`]
//! descriptors and [`MIN_FRAME`]`..=`[`MAX_FRAME`] bytes. An RX buffer the guest offers obeys
//! the same bounds (it must be able to hold a minimal frame). `used.len` is what the device
//! wrote for RX (0: buffer given back without a frame), and for TX a status: [`TX_OK`] or
//! [`TX_DROPPED`] (the device refused the frame).
//!
//! # Trust and ordering
//!
//! The back-end treats every field the guest writes as hostile, and the guest trusts the
//! back-end little more. Each side keeps its own indices privately and never reads them back
//! from the page; it reads each shared field it needs once, into a local, and checks and uses
//! that copy (no double fetch). A broken rule is classified ([`QueueError::severity`]): a
//! [`Severity::Violation`] means the peer broke the ring protocol and the connection is torn
//! down (the queue then refuses all further work); a [`Severity::BadFrame`] only drops that one
//! frame and completes its chain.
//!
//! The producer writes entries (descriptors and avail slots, or used elements and pool data)
//! with plain stores and then the index with a release store; the consumer loads the index with
//! acquire and only then reads the entries. Notification suppression follows
//! `VIRTIO_F_EVENT_IDX` ([`vring_need_event`]); a consumer about to sleep publishes its event
//! index, issues a full fence and re-checks the producer's index (`enable_notify`), and a
//! producer issues a full fence between publishing its index and reading the consumer's event
//! index (`should_notify_*`), so one of the two always sees the other (see the model test).

mod device;
mod driver;
mod mem;
mod net;
#[cfg(test)]
mod notify_model;
mod pool;
#[cfg(test)]
mod tests;

use thiserror::Error;

pub use device::{
    copy_plan, Chain, DeviceQueue, NotInFlight, RxDelivery, RxOutcome, RxPick, TxHeader,
};
pub use driver::{AddError, DriverQueue, RxFrame, Used};
pub use mem::{PoolMem, RingMem, SharedPool, SharedRing};
pub use net::{
    l4_checksum_field, HeaderError, LayoutError, NetFeatures, NetHdr, RingLayout, FEATURE_CSUM,
    FEATURE_EVENT_IDX, FEATURE_MRG_RXBUF, FEATURE_NET, MAX_MERGED_BUFFERS, NET_FEATURES,
    NUM_BUFFERS_AT, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
};
pub use pool::{
    PoolPlan, BUFFER_HEADROOM, MAX_ETH_FRAME, MAX_MTU, MAX_RX_BUFFERS, MAX_TX_BUFFERS,
    MERGED_RX_BUFFER_LEN, MIN_MTU, POOL_BUDGET_PAGES,
};

use crate::grant::MAX_REFS;
use crate::layout::PAGE_SIZE;

/// Entries per queue; a power of two, so `idx % QUEUE_SIZE` stays right across `u16` wrap.
pub const QUEUE_SIZE: u16 = 128;
/// Bytes of one ring page.
pub const RING_PAGE_LEN: usize = PAGE_SIZE as usize;
/// The ring page viewed as `u16` words, as [`SharedRing`] takes it.
pub const RING_PAGE_WORDS: usize = RING_PAGE_LEN / 2;

/// Byte offsets in the ring page (see the layout table).
pub const DESC_TABLE: usize = 0;
pub const DESC_LEN: usize = 16;
pub const AVAIL_FLAGS: usize = 2048;
pub const AVAIL_IDX: usize = 2050;
pub const AVAIL_RING: usize = 2052;
pub const USED_EVENT: usize = 2308;
pub const USED_FLAGS: usize = 2560;
pub const USED_IDX: usize = 2562;
pub const USED_RING: usize = 2564;
pub const USED_ELEM_LEN: usize = 8;
pub const AVAIL_EVENT: usize = 3588;

const Q: usize = QUEUE_SIZE as usize;
const _: () = {
    assert!(QUEUE_SIZE.is_power_of_two() && Q <= 128, "bitmaps are u128");
    assert!(DESC_TABLE + Q * DESC_LEN == AVAIL_FLAGS);
    assert!(AVAIL_IDX == AVAIL_FLAGS + 2 && AVAIL_RING == AVAIL_IDX + 2);
    assert!(USED_EVENT == AVAIL_RING + 2 * Q && USED_EVENT + 2 <= USED_FLAGS);
    assert!(USED_IDX == USED_FLAGS + 2 && USED_RING == USED_IDX + 2);
    assert!(
        USED_RING.is_multiple_of(4),
        "virtio aligns used elements to 4"
    );
    assert!(AVAIL_EVENT == USED_RING + Q * USED_ELEM_LEN);
    assert!(AVAIL_EVENT + 2 <= RING_PAGE_LEN);
};

/// Descriptor flag: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes the buffer (RX); clear for buffers it reads (TX).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: an indirect table. Always refused.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// Most descriptors in one chain. The pool is contiguous for the back-end, so a frame never
/// needs more than two (header, data); the bound keeps [`Chain`] a small array and also ends a
/// looping chain.
pub const MAX_CHAIN: usize = 16;
/// Largest buffer pool, in pages: as many as one grant table can name. Keeps pool offsets in a
/// `u32`; the back-end's mapping budget (`grant::MAX_MAPPINGS_PER_DRIVER_DOMAIN`) is the tighter limit.
pub const MAX_POOL_PAGES: u32 = MAX_REFS;

/// Bytes of `virtio_net_hdr_v1` in front of every frame.
pub const NET_HDR_LEN: usize = 12;
/// Bytes of an Ethernet header (destination, source, EtherType).
pub const ETH_HDR_LEN: usize = 14;
/// Bytes at the start of a TX frame that the back-end reads once and decides on (see
/// [`TxHeader`]): the Ethernet header and an ARP body for IPv4 over Ethernet (28 bytes), which
/// also covers an IPv4 header's source address, so the switch can check who the sender
/// claims to be on a copy the guest cannot change.
pub const TX_HEAD_LEN: usize = ETH_HDR_LEN + 28;
/// Fewest bytes in a chain: a net header and an Ethernet header.
pub const MIN_FRAME: u32 = (NET_HDR_LEN + ETH_HDR_LEN) as u32;
/// Most bytes in a chain: a net header and 65550 bytes of frame (64 KiB of IP payload plus
/// Ethernet and VLAN headers), so GSO can come later without an ABI change. A back-end may take
/// less: [`Chain::read_tx`] refuses a frame larger than the buffer it is given.
pub const MAX_FRAME: u32 = (NET_HDR_LEN + 65550) as u32;

/// TX `used.len`: the frame was taken.
pub const TX_OK: u32 = 0;
/// TX `used.len`: the device refused the frame (a [`Severity::BadFrame`] error).
pub const TX_DROPPED: u32 = 1;

/// Which way a queue carries frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Guest to back-end: every descriptor is read-only for the device.
    Tx,
    /// Back-end to guest: every descriptor is device-writable.
    Rx,
}

/// A buffer: `len` bytes at byte `offset` of the buffer pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub offset: u32,
    pub len: u32,
}

impl Segment {
    /// Whether the segment lies inside a pool of `pool_len` bytes (overflow-safe).
    pub const fn inside(self, pool_len: u32) -> bool {
        self.offset <= pool_len && self.len <= pool_len - self.offset
    }
}

/// `VIRTIO_F_EVENT_IDX`: whether moving the producer's index from `old` to `new` passes the
/// consumer's `event` index, i.e. `event` is in `[old, new)` modulo 2^16, so it must be
/// notified.
pub const fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// How bad a [`QueueError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The peer broke the ring protocol: tear the connection down.
    Violation,
    /// One frame is unusable: complete its chain ([`TX_DROPPED`] or RX length 0) and go on.
    BadFrame,
}

/// Everything that can be wrong with what the peer wrote in a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum QueueError {
    // ---- Violations by the front-end, found by the device ----
    /// avail.idx runs more than `QUEUE_SIZE` entries ahead of what the device consumed.
    #[error(
        "ring violation: avail idx {avail_idx} is {} entries past the device's {last_avail} \
         (at most {QUEUE_SIZE})",
        avail_idx.wrapping_sub(*last_avail)
    )]
    AvailTooFarAhead { avail_idx: u16, last_avail: u16 },
    /// A head or `next` descriptor id is not below `QUEUE_SIZE`.
    #[error("ring violation: descriptor id {index} out of range (queue size {QUEUE_SIZE})")]
    DescIndexOutOfRange { index: u16 },
    /// A head is offered again while the device still holds it.
    #[error("ring violation: head {head} offered again while the device holds it")]
    HeadInFlight { head: u16 },
    /// A chain comes back to a descriptor it already went through.
    #[error("ring violation: chain at head {head} loops back to descriptor {index}")]
    ChainLoop { head: u16, index: u16 },
    /// A chain has more than [`MAX_CHAIN`] descriptors.
    #[error("ring violation: chain at head {head} has more than {MAX_CHAIN} descriptors")]
    ChainTooLong { head: u16 },
    /// A descriptor asks for an indirect table.
    #[error("ring violation: descriptor {index} is indirect (not supported)")]
    Indirect { index: u16 },
    /// A descriptor has flag bits this version does not define.
    #[error("ring violation: descriptor {index} has unknown flags {flags:#x}")]
    UnknownDescFlags { index: u16, flags: u16 },
    /// A device-writable descriptor in a TX chain, or a read-only one in an RX chain.
    #[error("ring violation: descriptor {index} is {}", match queue {
        Direction::Tx => "device-writable in a TX chain",
        Direction::Rx => "read-only in an RX chain",
    })]
    WrongDirection { index: u16, queue: Direction },
    /// A buffer is not inside the pool.
    #[error("ring violation: descriptor {index} buffer {addr:#x}+{len:#x} is outside the pool")]
    OutsidePool { index: u16, addr: u64, len: u32 },
    // ---- Violations by the back-end, found by the driver ----
    /// used.idx runs ahead of the number of chains the device holds.
    #[error(
        "ring violation: used idx {used_idx} is {} entries past {last_used}, more than \
         outstanding",
        used_idx.wrapping_sub(*last_used)
    )]
    UsedTooFarAhead { used_idx: u16, last_used: u16 },
    /// A used element names a descriptor id not below `QUEUE_SIZE`.
    #[error("ring violation: used id {id} out of range (queue size {QUEUE_SIZE})")]
    UsedIdOutOfRange { id: u32 },
    /// A used element names a chain that is not published and outstanding.
    #[error("ring violation: used id {id} is not an outstanding chain")]
    UsedIdNotOutstanding { id: u16 },
    /// A used length that the chain cannot have (see the module doc).
    #[error("ring violation: used length {len} impossible for chain {id}")]
    UsedLenInvalid { id: u16, len: u32 },
    /// With mergeable buffers: a frame's first buffer says it takes no buffer or more than
    /// [`MAX_MERGED_BUFFERS`].
    #[error(
        "ring violation: frame at used id {id} says it takes {num_buffers} buffers (must be \
         1..={MAX_MERGED_BUFFERS})"
    )]
    MergedCountInvalid { id: u16, num_buffers: u16 },
    /// With mergeable buffers: a frame's buffers were not all published with its first.
    #[error(
        "ring violation: frame at used id {id} takes {num_buffers} buffers, {published} \
         published"
    )]
    MergedFrameIncomplete {
        id: u16,
        num_buffers: u16,
        published: u16,
    },
    // ---- Bad frames: drop this one and complete its chain ----
    /// The chain has no bytes.
    #[error("bad frame at head {head}: empty chain")]
    FrameEmpty { head: u16 },
    /// The chain is shorter than [`MIN_FRAME`].
    #[error(
        "bad frame at head {head}: {len} bytes, shorter than net + Ethernet header ({MIN_FRAME})"
    )]
    FrameTooShort { head: u16, len: u64 },
    /// The chain is longer than [`MAX_FRAME`] (or than the back-end's buffer).
    #[error("bad frame at head {head}: {len} bytes is too long")]
    FrameTooLong { head: u16, len: u64 },
    /// The net header is malformed or asks for an offload not negotiated.
    #[error("bad frame at head {head}: {reason}")]
    BadNetHeader { head: u16, reason: HeaderError },
}

impl QueueError {
    /// Whether the connection must go or only this frame.
    pub const fn severity(&self) -> Severity {
        use QueueError::*;
        match self {
            FrameEmpty { .. }
            | FrameTooShort { .. }
            | FrameTooLong { .. }
            | BadNetHeader { .. } => Severity::BadFrame,
            _ => Severity::Violation,
        }
    }

    /// Shorthand for `severity() == Violation`.
    pub const fn is_violation(&self) -> bool {
        matches!(self.severity(), Severity::Violation)
    }

    /// For a bad frame, the head the device must still complete with `push_used`.
    pub const fn bad_frame_head(&self) -> Option<u16> {
        use QueueError::*;
        match *self {
            FrameEmpty { head }
            | FrameTooShort { head, .. }
            | FrameTooLong { head, .. }
            | BadNetHeader { head, .. } => Some(head),
            _ => None,
        }
    }
}

// ---- Where things are in the page ----

const fn desc_offset(index: u16) -> usize {
    DESC_TABLE + index as usize * DESC_LEN
}

const fn avail_slot_offset(idx: u16) -> usize {
    AVAIL_RING + (idx % QUEUE_SIZE) as usize * 2
}

const fn used_slot_offset(idx: u16) -> usize {
    USED_RING + (idx % QUEUE_SIZE) as usize * USED_ELEM_LEN
}

const fn bit(index: u16) -> u128 {
    1u128 << index
}

/// A descriptor as read: one load of each field.
#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc<M: RingMem + ?Sized>(mem: &M, index: u16) -> Desc {
    let at = desc_offset(index);
    Desc {
        addr: mem.load_u64(at),
        len: mem.load_u32(at + 8),
        flags: mem.load_u16(at + 12),
        next: mem.load_u16(at + 14),
    }
}

fn write_desc<M: RingMem + ?Sized>(mem: &M, index: u16, d: Desc) {
    let at = desc_offset(index);
    mem.store_u64(at, d.addr);
    mem.store_u32(at + 8, d.len);
    mem.store_u16(at + 12, d.flags);
    mem.store_u16(at + 14, d.next);
}
