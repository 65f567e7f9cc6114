//! How a front-end sizes its buffer pool: in bytes, not slots.
//!
//! Every connection's pool has the same page budget, [`POOL_BUDGET_PAGES`]: the back-end maps
//! at most that much per guest (its grant window and mapping budget are shared by every
//! front-end). How many buffers fit follows from the MTU: a buffer holds a net header and a
//! frame of the MTU, so 1500-byte and 9000-byte MTUs get a full ring of receive buffers (128)
//! and half a ring of transmit buffers (64), while a 64 KiB MTU (a whole TCP segment of 64 KiB
//! in one frame between guests) gets 31 buffers of 16 pages each, two thirds of them for
//! receiving: about the same bytes in flight, far fewer frames.
//!
//! With mergeable receive buffers ([`FEATURE_MRG_RXBUF`](super::FEATURE_MRG_RXBUF),
//! [`PoolPlan::for_mtu_merged`]) an MTU whose frames do not fit [`MERGED_RX_BUFFER_LEN`] keeps
//! a whole ring of receive buffers of that length, a jumbo frame's, and a larger frame takes
//! several of them; only the transmit buffers grow to the MTU. A 64 KiB MTU then has 128
//! receive buffers (a burst of small frames from the NIC still finds room) holding 16 frames
//! of 64 KiB, and 14 transmit buffers.
//!
//! The transmit buffers start on a page of their own ([`PoolPlan::rx_pages`]): the receive part
//! is granted read-write, the transmit part read-only, so the front-end builds frames in its
//! transmit buffers in place and no other VM can write them meanwhile.

use super::{ETH_HDR_LEN, NET_HDR_LEN, QUEUE_SIZE};
use crate::layout::PAGE_SIZE;

/// Largest IP MTU a front-end may use: IPv4's total-length field is 16 bits.
pub const MAX_MTU: usize = 65535;
/// Smallest IP MTU a front-end may use: the least every IPv4 host must take (RFC 791).
pub const MIN_MTU: usize = 576;
/// Largest Ethernet frame (no FCS) on the internal link: the header and [`MAX_MTU`] bytes.
/// It fits [`MAX_FRAME`](super::MAX_FRAME) with the net header.
pub const MAX_ETH_FRAME: usize = ETH_HDR_LEN + MAX_MTU;
const _: () = assert!(NET_HDR_LEN + MAX_ETH_FRAME <= super::MAX_FRAME as usize);

/// Pages of one connection's buffer pool at most: what a back-end maps per guest. With the two
/// ring pages, [`MAX_VMS`](crate::layout::MAX_VMS) - 1 front-ends fit the driver domain's
/// mapping budget.
pub const POOL_BUDGET_PAGES: u32 = 512;
const _: () = assert!(
    (crate::layout::MAX_VMS as u32 - 1) * (POOL_BUDGET_PAGES + 2)
        <= crate::grant::MAX_MAPPINGS_PER_DRIVER_DOMAIN
);

/// Where a buffer's net header starts in its slot: 6 bytes in, so that the frame starts 18 bytes
/// past a 64-byte boundary and a TCP payload behind Ethernet, IPv4 and TCP headers without
/// options (14 + 20 + 20 bytes) starts on an 8-byte boundary. The stack's copies between its
/// socket buffers (8-byte aligned, moving in whole segments of an MSS that is a multiple of 8
/// at the 1500, 9000 and 65535 MTUs) and frames are then co-aligned: the profiler found both
/// guests of a TCP stream spending 60 % of their samples in memcpy's misaligned-word path,
/// whose unaligned 8-byte loads QEMU runs through a helper on `-cpu max`. Both ends of the
/// driver domain's copy move with it, so that copy stays co-aligned.
pub const BUFFER_HEADROOM: usize = 6;

/// Bytes of a receive buffer when frames are merged: a multiple of 64 that holds a net header
/// and a 9000-byte-MTU frame, so frames from the NIC and jumbo frames take one buffer. Being a
/// multiple of 64, and every buffer starting [`BUFFER_HEADROOM`] into a 64-byte-aligned slot,
/// keeps a merged frame co-aligned with a transmit buffer and with the receiver's copy across
/// every buffer boundary: a frame byte at offset `o` of the frame sits at the same address
/// modulo 64 in whichever buffer holds it.
pub const MERGED_RX_BUFFER_LEN: usize = 9088;
const _: () = assert!(MERGED_RX_BUFFER_LEN.is_multiple_of(64));
const _: () = assert!(MERGED_RX_BUFFER_LEN >= NET_HDR_LEN + ETH_HDR_LEN + 9000);
const _: () = assert!(
    MERGED_RX_BUFFER_LEN * super::MAX_MERGED_BUFFERS as usize >= super::MAX_FRAME as usize,
    "the largest frame fits the most buffers a frame may take"
);

/// Most receive buffers: a whole ring.
pub const MAX_RX_BUFFERS: usize = QUEUE_SIZE as usize;
/// Most transmit buffers: half a ring (frames leave as fast as the back-end takes them).
pub const MAX_TX_BUFFERS: usize = QUEUE_SIZE as usize / 2;

/// A front-end's pool for one MTU: `rx_buffers` receive buffers `rx_stride` bytes apart in
/// the first `rx_pages` pages, then `tx_buffers` transmit buffers `stride` bytes apart from
/// page `rx_pages` on, in `pages` pages in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolPlan {
    /// Bytes of a transmit buffer as offered: a net header and the largest frame (at most
    /// [`MAX_FRAME`](super::MAX_FRAME), the longest chain). Receive buffers are as long
    /// unless frames are merged ([`rx_buffer_len`](Self::rx_buffer_len)).
    pub buffer_len: usize,
    /// Bytes from one transmit buffer to the next: `buffer_len` and [`BUFFER_HEADROOM`]
    /// rounded up to 64, so every buffer's slot starts on a cache line.
    pub stride: usize,
    /// Bytes of a receive buffer as offered: `buffer_len`, or [`MERGED_RX_BUFFER_LEN`] when
    /// a frame may take several ([`merges`](Self::merges)).
    pub rx_buffer_len: usize,
    /// Bytes from one receive buffer to the next, as `stride`.
    pub rx_stride: usize,
    pub rx_buffers: usize,
    pub tx_buffers: usize,
    /// Pages of the receive part (the writable one); the transmit part starts after them.
    pub rx_pages: u32,
    pub pages: u32,
}

impl PoolPlan {
    /// The pool for an IP MTU in [`MIN_MTU`]`..=`[`MAX_MTU`] (`None` outside): as many buffers
    /// as [`POOL_BUDGET_PAGES`] hold, two thirds receive buffers (at most a ring), the rest
    /// transmit buffers (at most half a ring).
    pub const fn for_mtu(mtu: usize) -> Option<PoolPlan> {
        if mtu < MIN_MTU || mtu > MAX_MTU {
            return None;
        }
        let buffer_len = NET_HDR_LEN + ETH_HDR_LEN + mtu;
        let stride = slot(buffer_len);
        let budget = POOL_BUDGET_PAGES as usize * PAGE_SIZE as usize;
        let buffers = budget / stride;
        let rx_buffers = min(buffers * 2 / 3, MAX_RX_BUFFERS);
        Some(PoolPlan::with_rx(
            buffer_len,
            buffer_len,
            rx_buffers,
            MAX_TX_BUFFERS,
        ))
    }

    /// The pool for an IP MTU when the back-end merges frames over receive buffers
    /// ([`FEATURE_MRG_RXBUF`](super::FEATURE_MRG_RXBUF)): [`for_mtu`](Self::for_mtu) if a
    /// frame fits [`MERGED_RX_BUFFER_LEN`]; else a whole ring of receive buffers of that
    /// length, and the rest of the budget in transmit buffers for the MTU (at most half a
    /// ring).
    pub const fn for_mtu_merged(mtu: usize) -> Option<PoolPlan> {
        let Some(plain) = PoolPlan::for_mtu(mtu) else {
            return None;
        };
        if plain.buffer_len <= MERGED_RX_BUFFER_LEN {
            return Some(plain);
        }
        Some(PoolPlan::with_rx(
            plain.buffer_len,
            MERGED_RX_BUFFER_LEN,
            MAX_RX_BUFFERS,
            MAX_TX_BUFFERS,
        ))
    }

    /// `rx_buffers` receive buffers of `rx_buffer_len` bytes, then as many transmit buffers
    /// of `buffer_len` bytes as the rest of the budget holds, at most `max_tx`.
    const fn with_rx(
        buffer_len: usize,
        rx_buffer_len: usize,
        rx_buffers: usize,
        max_tx: usize,
    ) -> PoolPlan {
        let stride = slot(buffer_len);
        let rx_stride = slot(rx_buffer_len);
        let page = PAGE_SIZE as usize;
        let budget = POOL_BUDGET_PAGES as usize * page;
        let rx_pages = (rx_buffers * rx_stride).div_ceil(page);
        // The transmit part starts on a page of its own, so what it may take is whole pages.
        let tx_buffers = min((budget - rx_pages * page) / stride, max_tx);
        let pages = rx_pages + (tx_buffers * stride).div_ceil(page);
        PoolPlan {
            buffer_len,
            stride,
            rx_buffer_len,
            rx_stride,
            rx_buffers,
            tx_buffers,
            rx_pages: rx_pages as u32,
            pages: pages as u32,
        }
    }

    /// Whether a largest frame takes more than one receive buffer (only plans made by
    /// [`for_mtu_merged`](Self::for_mtu_merged) do).
    pub const fn merges(&self) -> bool {
        self.rx_buffer_len < self.buffer_len
    }

    /// Pool offset of buffer `index`: receive buffers are `0..rx_buffers`, transmit buffers
    /// `rx_buffers..rx_buffers + tx_buffers` (`None` past them).
    pub const fn offset(&self, index: usize) -> Option<usize> {
        if index < self.rx_buffers {
            Some(index * self.rx_stride)
        } else if index < self.rx_buffers + self.tx_buffers {
            Some(self.tx_start() + (index - self.rx_buffers) * self.stride)
        } else {
            None
        }
    }

    /// Pool offset of the transmit part: the first byte past the receive pages.
    pub const fn tx_start(&self) -> usize {
        self.rx_pages as usize * PAGE_SIZE as usize
    }

    /// Largest Ethernet frame a buffer takes (net header off).
    pub const fn frame_limit(&self, mtu: usize) -> usize {
        ETH_HDR_LEN + mtu
    }
}

/// Bytes from one buffer of `len` bytes to the next: with [`BUFFER_HEADROOM`], rounded up to
/// 64.
const fn slot(len: usize) -> usize {
    (len + BUFFER_HEADROOM).next_multiple_of(64)
}

const fn min(a: usize, b: usize) -> usize {
    if a < b {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn standard_and_jumbo_mtus_keep_full_rings() {
        let plan = PoolPlan::for_mtu(9000).unwrap();
        assert_eq!((plan.buffer_len, plan.stride), (9026, 9088));
        assert_eq!((plan.rx_buffers, plan.tx_buffers), (128, 64));
        assert_eq!(plan.pages, 426, "the pool a 9000-byte front-end always had");
        assert_eq!(
            plan.rx_pages, 284,
            "128 buffers of 9088 bytes are 284 pages exactly"
        );
        assert_eq!(plan.offset(127), Some(127 * 9088));
        assert_eq!(plan.offset(128), Some(284 * 4096));
        assert_eq!(plan.offset(191), Some(284 * 4096 + 63 * 9088));
        assert_eq!(plan.offset(192), None);
        let plan = PoolPlan::for_mtu(1500).unwrap();
        assert_eq!((plan.rx_buffers, plan.tx_buffers), (128, 64));
    }

    #[test]
    fn a_64k_mtu_gets_fewer_bigger_buffers_within_the_budget() {
        let plan = PoolPlan::for_mtu(MAX_MTU).unwrap();
        assert_eq!((plan.buffer_len, plan.stride), (65561, 65600));
        assert!(
            plan.buffer_len <= super::super::MAX_FRAME as usize,
            "a chain may be that long"
        );
        assert_eq!((plan.rx_buffers, plan.tx_buffers), (20, 11));
        assert_eq!((plan.rx_pages, plan.pages), (321, 498));
        assert!(plan.pages <= POOL_BUDGET_PAGES);
        assert!(plan.buffer_len >= NET_HDR_LEN + MAX_ETH_FRAME);
    }

    #[test]
    fn a_64k_mtu_with_merged_frames_keeps_a_whole_ring_of_jumbo_buffers() {
        let plan = PoolPlan::for_mtu_merged(MAX_MTU).unwrap();
        assert!(plan.merges());
        assert_eq!((plan.rx_buffer_len, plan.rx_stride), (9088, 9152));
        assert_eq!((plan.buffer_len, plan.stride), (65561, 65600));
        assert_eq!((plan.rx_buffers, plan.tx_buffers), (128, 14));
        assert_eq!((plan.rx_pages, plan.pages), (286, 511));
        assert_eq!(plan.offset(1), Some(9152));
        assert_eq!(plan.offset(128), Some(286 * 4096));
        assert_eq!(plan.offset(129), Some(286 * 4096 + 65600));
        // Up to jumbo frames nothing changes: a frame fits one buffer.
        for mtu in [MIN_MTU, 1500, 9000] {
            let plan = PoolPlan::for_mtu_merged(mtu).unwrap();
            assert_eq!(Some(plan), PoolPlan::for_mtu(mtu));
            assert!(!plan.merges());
        }
        // At an MTU of 9062 the net header, Ethernet header and frame fill a buffer exactly.
        assert!(!PoolPlan::for_mtu_merged(9062).unwrap().merges());
        assert!(PoolPlan::for_mtu_merged(9063).unwrap().merges());
        assert_eq!(PoolPlan::for_mtu_merged(MAX_MTU + 1), None);
    }

    #[test]
    fn mtus_outside_the_range_have_no_plan() {
        assert_eq!(PoolPlan::for_mtu(MIN_MTU - 1), None);
        assert_eq!(PoolPlan::for_mtu(MAX_MTU + 1), None);
        assert!(PoolPlan::for_mtu(MIN_MTU).is_some());
    }

    proptest! {
        #[test]
        fn every_plan_fits_its_frames_and_the_budget(mtu in MIN_MTU..=MAX_MTU) {
            let plan = PoolPlan::for_mtu(mtu).unwrap();
            prop_assert_eq!(plan.buffer_len, NET_HDR_LEN + plan.frame_limit(mtu));
            prop_assert!(plan.buffer_len <= super::super::MAX_FRAME as usize);
            prop_assert!(plan.stride >= plan.buffer_len && plan.stride.is_multiple_of(64));
            prop_assert!(plan.pages <= POOL_BUDGET_PAGES);
            prop_assert!(
                (plan.rx_buffers + plan.tx_buffers) * plan.stride
                    <= plan.pages as usize * PAGE_SIZE as usize
            );
            // The receive buffers fit their pages and the transmit part starts on its own
            // page (granted read-only, while the receive pages are writable), and every
            // buffer lies inside its part without overlapping the next.
            let page = PAGE_SIZE as usize;
            prop_assert!(plan.rx_pages >= 1 && plan.rx_pages < plan.pages);
            prop_assert!(plan.rx_buffers * plan.stride <= plan.tx_start());
            prop_assert!(plan.tx_start().is_multiple_of(page));
            let total = plan.rx_buffers + plan.tx_buffers;
            for index in 0..total {
                let at = plan.offset(index).unwrap();
                let end = at + plan.buffer_len;
                if index < plan.rx_buffers {
                    prop_assert!(end <= plan.tx_start());
                } else {
                    prop_assert!(at >= plan.tx_start() && end <= plan.pages as usize * page);
                }
                if index + 1 < total {
                    prop_assert!(end <= plan.offset(index + 1).unwrap());
                }
            }
            prop_assert_eq!(plan.offset(total), None);
            prop_assert!(plan.rx_buffers >= 16 && plan.tx_buffers >= 8, "{plan:?}");
            prop_assert!(plan.rx_buffers <= MAX_RX_BUFFERS && plan.tx_buffers <= MAX_TX_BUFFERS);
        }

        #[test]
        fn every_merged_plan_fits_its_frames_and_the_budget(mtu in MIN_MTU..=MAX_MTU) {
            let plan = PoolPlan::for_mtu_merged(mtu).unwrap();
            let page = PAGE_SIZE as usize;
            prop_assert_eq!(plan.buffer_len, NET_HDR_LEN + plan.frame_limit(mtu));
            prop_assert!(plan.rx_buffer_len <= plan.buffer_len);
            prop_assert!(plan.rx_buffer_len >= super::super::MIN_FRAME as usize);
            // A largest frame fits the most buffers one frame may take.
            let buffers = plan.buffer_len.div_ceil(plan.rx_buffer_len);
            prop_assert!(buffers <= usize::from(super::super::MAX_MERGED_BUFFERS));
            prop_assert!(plan.rx_stride >= plan.rx_buffer_len + BUFFER_HEADROOM);
            prop_assert!(plan.rx_stride.is_multiple_of(64));
            if plan.merges() {
                // Co-aligned across buffer boundaries (see MERGED_RX_BUFFER_LEN).
                prop_assert!(plan.rx_buffer_len.is_multiple_of(64));
                prop_assert_eq!(plan.rx_buffers, MAX_RX_BUFFERS);
            }
            prop_assert!(plan.pages <= POOL_BUDGET_PAGES);
            prop_assert!(plan.rx_buffers * plan.rx_stride <= plan.tx_start());
            prop_assert!(plan.tx_start().is_multiple_of(page));
            let last_tx = plan.offset(plan.rx_buffers + plan.tx_buffers - 1).unwrap();
            prop_assert!(last_tx + plan.buffer_len <= plan.pages as usize * page);
            prop_assert!(plan.tx_buffers >= 8, "{plan:?}");
        }
    }
}
