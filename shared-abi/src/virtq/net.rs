//! What rides on the rings and around them: the virtio-net header, the feature bits of the
//! handshake, and the ring layout named by the front-end's section of the control page.

use core::ops::Range;
use thiserror::Error;

use super::{Direction, ETH_HDR_LEN, MAX_POOL_PAGES, NET_HDR_LEN, RING_PAGE_LEN};
use crate::grant::MAX_REFS;
use crate::handshake::Frontend;
use crate::pingpong;

// ---- Feature bits (the handshake's feature word) ----

/// This connection carries network rings (sluice's own service bit, next to ping-pong's 63).
pub const FEATURE_NET: u64 = 1 << 62;
/// Checksum offload (virtio's `VIRTIO_NET_F_CSUM` bit): both ends are in this machine, so a
/// frame may travel with [`VIRTIO_NET_HDR_F_NEEDS_CSUM`] and no checksum computed, and arrive
/// with [`VIRTIO_NET_HDR_F_DATA_VALID`].
///
/// sluice's meaning, narrower than virtio's: a front-end that negotiates it neither computes
/// nor checks TCP and UDP checksums of IPv4 frames. It marks such a frame it sends with
/// `NEEDS_CSUM` ([`NetHdr::for_tx_frame`]: `csum_start` = the L4 header, `csum_offset` = the
/// checksum field; the field itself may hold anything). The back-end fills the checksum in
/// whenever the frame leaves for a peer that checks (the NIC, the driver domain's own
/// endpoint, a guest without this feature), passes `NEEDS_CSUM` on to a guest with it, and
/// checks frames from the outside before delivering them with `DATA_VALID`.
pub const FEATURE_CSUM: u64 = 1 << 0;
/// Notification suppression by event indices (virtio's `VIRTIO_F_RING_EVENT_IDX` bit); without
/// it every publish notifies.
pub const FEATURE_EVENT_IDX: u64 = 1 << 29;
/// Mergeable receive buffers (virtio's `VIRTIO_NET_F_MRG_RXBUF` bit): the back-end may spread
/// one received frame over several receive buffers, taken from the ring in order and given back
/// in one publish of `used.idx`; the first buffer's net header says how many
/// (`num_buffers`, `1..=`[`MAX_MERGED_BUFFERS`]), and only the first holds the net header. A
/// front-end with a 64 KiB MTU asks for it so that its receive buffers can stay the size of a
/// jumbo frame, a whole ring of them, instead of 20 buffers of 64 KiB
/// ([`PoolPlan::for_mtu_merged`](super::PoolPlan::for_mtu_merged)).
pub const FEATURE_MRG_RXBUF: u64 = 1 << 15;
/// Most receive buffers one frame may take with [`FEATURE_MRG_RXBUF`]: a back-end that would
/// need more (a front-end offering buffers shorter than about 2 KiB for 64 KiB frames) drops
/// the frame and gives the buffers back empty, so a guest's offer cannot make one delivery
/// loop for long.
pub const MAX_MERGED_BUFFERS: u16 = 32;
/// Every bit this version understands for network rings.
pub const NET_FEATURES: u64 = FEATURE_NET | FEATURE_CSUM | FEATURE_EVENT_IDX | FEATURE_MRG_RXBUF;

const _: () = assert!(NET_FEATURES & pingpong::FEATURE == 0);
const _: () = assert!(FEATURE_NET & (FEATURE_CSUM | FEATURE_EVENT_IDX) == 0);
const _: () = assert!(FEATURE_CSUM & FEATURE_EVENT_IDX == 0);
const _: () = assert!(FEATURE_MRG_RXBUF & (FEATURE_NET | FEATURE_CSUM | FEATURE_EVENT_IDX) == 0);

/// The network options of a feature word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetFeatures {
    pub event_idx: bool,
    pub csum: bool,
    /// Mergeable receive buffers ([`FEATURE_MRG_RXBUF`]).
    pub mergeable: bool,
}

impl NetFeatures {
    /// The options in `bits`, or `None` without [`FEATURE_NET`]. Unknown bits are ignored, so
    /// a back-end that answers with `from_bits(offered).bits()` accepts exactly the subset it
    /// understands.
    pub const fn from_bits(bits: u64) -> Option<NetFeatures> {
        if bits & FEATURE_NET == 0 {
            return None;
        }
        Some(NetFeatures {
            event_idx: bits & FEATURE_EVENT_IDX != 0,
            csum: bits & FEATURE_CSUM != 0,
            mergeable: bits & FEATURE_MRG_RXBUF != 0,
        })
    }

    /// The feature word, [`FEATURE_NET`] included.
    pub const fn bits(self) -> u64 {
        FEATURE_NET
            | if self.event_idx { FEATURE_EVENT_IDX } else { 0 }
            | if self.csum { FEATURE_CSUM } else { 0 }
            | if self.mergeable { FEATURE_MRG_RXBUF } else { 0 }
    }
}

// ---- virtio_net_hdr_v1 ----

/// Header flag: the checksum at `csum_start + csum_offset` is to be completed.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// Header flag (RX only): the checksum has been checked or need not be.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// Header `gso_type`: no segmentation offload, the only one accepted for now.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;

/// `struct virtio_net_hdr_v1`, in front of every frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

/// Why a [`NetHdr`] is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// Flag bits beyond NEEDS_CSUM and DATA_VALID.
    #[error("net header has unknown flags {flags:#x}")]
    UnknownFlags { flags: u8 },
    /// DATA_VALID in a TX header (virtio: only the device sets it).
    #[error("net header sets DATA_VALID on transmit")]
    DataValidOnTx,
    /// NEEDS_CSUM or DATA_VALID without [`FEATURE_CSUM`] negotiated.
    #[error("net header asks for checksum offload, not negotiated")]
    CsumNotNegotiated,
    /// A GSO type other than NONE.
    #[error("net header GSO type {gso_type:#x} is not supported")]
    UnsupportedGso { gso_type: u8 },
    /// `hdr_len` or `gso_size` set without GSO.
    #[error("net header sets hdr_len/gso_size without GSO")]
    GsoFieldsSet,
    /// NEEDS_CSUM with the checksum field not inside the frame.
    #[error("net header checksum at {start}+{offset} is outside the frame")]
    CsumOutOfFrame { start: u16, offset: u16 },
    /// `csum_start`/`csum_offset` set without NEEDS_CSUM.
    #[error("net header sets checksum fields without NEEDS_CSUM")]
    CsumFieldsSet,
    /// `num_buffers` other than 0 (TX) or 1 (RX, no mergeable buffers: a merged frame's count
    /// is checked by [`DriverQueue::pop_rx_frame`](super::DriverQueue::pop_rx_frame)).
    #[error("net header num_buffers {num_buffers} is invalid")]
    BadNumBuffers { num_buffers: u16 },
}

/// Where `num_buffers` sits in the encoded header.
pub const NUM_BUFFERS_AT: usize = 10;
const _: () = assert!(NUM_BUFFERS_AT + 2 <= NET_HDR_LEN);

impl NetHdr {
    /// The header of a frame without offloads, for direction `dir`.
    pub const fn plain(dir: Direction) -> NetHdr {
        NetHdr {
            flags: 0,
            gso_type: VIRTIO_NET_HDR_GSO_NONE,
            hdr_len: 0,
            gso_size: 0,
            csum_start: 0,
            csum_offset: 0,
            num_buffers: match dir {
                Direction::Tx => 0,
                Direction::Rx => 1,
            },
        }
    }

    /// The TX header a checksum-offloading front-end puts in front of `frame`: `NEEDS_CSUM`
    /// pointing at the TCP or UDP checksum field of an unfragmented IPv4 frame, plain for
    /// everything else (and always plain without offload).
    pub fn for_tx_frame(frame: &[u8], csum_offload: bool) -> NetHdr {
        let plain = NetHdr::plain(Direction::Tx);
        if !csum_offload {
            return plain;
        }
        match l4_checksum_field(frame) {
            Some((start, offset)) => NetHdr {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                csum_start: start,
                csum_offset: offset,
                ..plain
            },
            None => plain,
        }
    }

    /// The wire bytes.
    pub fn encode(&self) -> [u8; NET_HDR_LEN] {
        let mut b = [0; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Decodes and [`validate`](Self::validate)s a header read from the peer.
    pub fn decode(
        bytes: &[u8; NET_HDR_LEN],
        frame_len: usize,
        dir: Direction,
        csum_offload: bool,
    ) -> Result<NetHdr, HeaderError> {
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let hdr = NetHdr {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        };
        hdr.validate(frame_len, dir, csum_offload)?;
        Ok(hdr)
    }

    /// Whether this header may precede a `frame_len`-byte Ethernet frame going `dir`.
    /// Everything this version does not use must be zero, so a peer expecting an offload we do
    /// not do is refused rather than silently misunderstood.
    pub fn validate(
        &self,
        frame_len: usize,
        dir: Direction,
        csum_offload: bool,
    ) -> Result<(), HeaderError> {
        let known = VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID;
        if self.flags & !known != 0 {
            return Err(HeaderError::UnknownFlags { flags: self.flags });
        }
        if dir == Direction::Tx && self.flags & VIRTIO_NET_HDR_F_DATA_VALID != 0 {
            return Err(HeaderError::DataValidOnTx);
        }
        if self.flags != 0 && !csum_offload {
            return Err(HeaderError::CsumNotNegotiated);
        }
        if self.gso_type != VIRTIO_NET_HDR_GSO_NONE {
            return Err(HeaderError::UnsupportedGso {
                gso_type: self.gso_type,
            });
        }
        if self.hdr_len != 0 || self.gso_size != 0 {
            return Err(HeaderError::GsoFieldsSet);
        }
        if self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            // The 16-bit checksum field must lie in the frame, past the Ethernet header.
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if usize::from(self.csum_start) < ETH_HDR_LEN || end > frame_len {
                return Err(HeaderError::CsumOutOfFrame {
                    start: self.csum_start,
                    offset: self.csum_offset,
                });
            }
        } else if self.csum_start != 0 || self.csum_offset != 0 {
            return Err(HeaderError::CsumFieldsSet);
        }
        let want_buffers = NetHdr::plain(dir).num_buffers;
        if self.num_buffers != want_buffers {
            return Err(HeaderError::BadNumBuffers {
                num_buffers: self.num_buffers,
            });
        }
        Ok(())
    }
}

/// For an Ethernet frame carrying an unfragmented IPv4 TCP or UDP packet: where its L4 header
/// starts in the frame and the offset of the checksum field in it.
pub fn l4_checksum_field(frame: &[u8]) -> Option<(u16, u16)> {
    const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    if frame.get(12..14)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ETH_HDR_LEN..)?;
    let version_ihl = *ip.first()?;
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return None;
    }
    // More-fragments flag or a fragment offset: only the whole packet has a checksum to fill.
    let fragment = u16::from_be_bytes([ip[6], ip[7]]);
    if fragment & 0x3fff != 0 {
        return None;
    }
    let offset = match ip[9] {
        TCP => 16,
        UDP => 6,
        _ => return None,
    };
    let start = ETH_HDR_LEN + ihl;
    if start + offset + 2 > frame.len() {
        return None;
    }
    Some((start as u16, offset as u16))
}

// ---- Ring layout from the handshake ----

/// Where a connection's rings and pool are: the grant refs the front-end publishes in its
/// section of the control page (`tx_ring_ref`, `rx_ring_ref`, `pool_first_ref`, `pool_count`,
/// `pool_writable`). Each ring ref is one ring page; the pool is `pool_pages` consecutive refs,
/// which the back-end maps contiguously so that pool page `i` is bytes `[4096 i, 4096 (i + 1))`
/// of the pool. The first `pool_writable` pages hold the receive buffers and are mapped
/// read-write; the rest hold the transmit buffers, granted and mapped read-only, so the
/// front-end may build frames in them in place (nothing but the front-end can write them). The
/// back-end's receive queue accepts buffers in the writable part only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    pub tx_ring_ref: u32,
    pub rx_ring_ref: u32,
    pub pool_first_ref: u32,
    pub pool_pages: u32,
    pub pool_writable: u32,
}

/// Why a [`RingLayout`] is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// The section's features lack [`FEATURE_NET`]: it does not describe network rings.
    #[error("connection does not offer network rings")]
    NotNet,
    /// A pool of no pages, or of more than [`MAX_POOL_PAGES`].
    #[error("buffer pool of {pages} pages (must be 1..={MAX_POOL_PAGES})")]
    BadPoolSize { pages: u32 },
    /// A ref beyond the largest grant table.
    #[error("ring grant ref {gref} is out of range")]
    RefOutOfRange { gref: u32 },
    /// The pool runs past the largest grant table.
    #[error("buffer pool of {pages} pages from ref {first} runs past the grant table")]
    PoolPastTable { first: u32, pages: u32 },
    /// TX and RX are the same page.
    #[error("TX and RX rings are the same page")]
    SameRing,
    /// A ring page is also a pool page.
    #[error("ring page ref {gref} is inside the buffer pool")]
    RingInPool { gref: u32 },
    /// No writable pool page (nowhere to receive), or more than the pool has.
    #[error(
        "{writable} of the {pages} pool pages writable (must be 1..={pages}: the receive buffers)"
    )]
    BadWritablePart { writable: u32, pages: u32 },
}

/// Pool sizes a queue accepts; the queues check it too, so they never compute with a pool
/// length that does not fit a `u32`.
pub(super) fn check_pool_pages(pages: u32) -> Result<u32, LayoutError> {
    if pages == 0 || pages > MAX_POOL_PAGES {
        return Err(LayoutError::BadPoolSize { pages });
    }
    Ok(pages * RING_PAGE_LEN as u32)
}

const _: () = assert!(MAX_POOL_PAGES as u64 * RING_PAGE_LEN as u64 <= u32::MAX as u64);

impl RingLayout {
    /// The layout named by a front-end section (as read, already validated by
    /// [`Frontend::read_from`]), checked with [`validate`](Self::validate).
    pub fn from_frontend(section: &Frontend) -> Result<RingLayout, LayoutError> {
        if section.features & FEATURE_NET == 0 {
            return Err(LayoutError::NotNet);
        }
        let layout = RingLayout {
            tx_ring_ref: section.tx_ring_ref,
            rx_ring_ref: section.rx_ring_ref,
            pool_first_ref: section.pool_first_ref,
            pool_pages: section.pool_count,
            pool_writable: section.pool_writable,
        };
        layout.validate()?;
        Ok(layout)
    }

    /// Front-end: fills the ring fields of its section.
    pub fn write_to(&self, section: &mut Frontend) {
        section.tx_ring_ref = self.tx_ring_ref;
        section.rx_ring_ref = self.rx_ring_ref;
        section.pool_first_ref = self.pool_first_ref;
        section.pool_count = self.pool_pages;
        section.pool_writable = self.pool_writable;
    }

    /// Refs in range, a pool of `1..=MAX_POOL_PAGES` pages of which `1..=pool_pages` writable,
    /// and no page used twice (a ring page that is also a pool page would let pool data and
    /// ring fields overwrite each other).
    pub fn validate(&self) -> Result<(), LayoutError> {
        check_pool_pages(self.pool_pages)?;
        if self.pool_writable == 0 || self.pool_writable > self.pool_pages {
            return Err(LayoutError::BadWritablePart {
                writable: self.pool_writable,
                pages: self.pool_pages,
            });
        }
        for gref in [self.tx_ring_ref, self.rx_ring_ref, self.pool_first_ref] {
            if gref >= MAX_REFS {
                return Err(LayoutError::RefOutOfRange { gref });
            }
        }
        if u64::from(self.pool_first_ref) + u64::from(self.pool_pages) > u64::from(MAX_REFS) {
            return Err(LayoutError::PoolPastTable {
                first: self.pool_first_ref,
                pages: self.pool_pages,
            });
        }
        if self.tx_ring_ref == self.rx_ring_ref {
            return Err(LayoutError::SameRing);
        }
        for gref in [self.tx_ring_ref, self.rx_ring_ref] {
            if self.pool_refs().contains(&gref) {
                return Err(LayoutError::RingInPool { gref });
            }
        }
        Ok(())
    }

    /// The pool's grant refs, in pool order.
    pub fn pool_refs(&self) -> Range<u32> {
        self.pool_first_ref..self.pool_first_ref.saturating_add(self.pool_pages)
    }

    /// Bytes in the pool (valid layouts only; saturates otherwise).
    pub fn pool_len(&self) -> u32 {
        self.pool_pages.saturating_mul(RING_PAGE_LEN as u32)
    }

    /// Pool offset of byte `offset_in_page` of pool page `page`, if that is inside the pool.
    pub fn pool_offset(&self, page: u32, offset_in_page: u32) -> Option<u32> {
        if page >= self.pool_pages || offset_in_page >= RING_PAGE_LEN as u32 {
            return None;
        }
        page.checked_mul(RING_PAGE_LEN as u32)?
            .checked_add(offset_in_page)
    }
}
