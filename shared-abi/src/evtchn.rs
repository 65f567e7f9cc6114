//! Event channels: the event page a VM shares with the hypervisor, and its pending/mask rules.
//!
//! This module owns the event-page layout, the port numbering and the pure bit operations both
//! sides use on it. Port state (who is bound to whom) lives only in the hypervisor
//! (`hypervisor/src/evtchn.rs`); the hypercalls are in [`hypercall`](crate::hypercall).
//!
//! # Ports
//!
//! A VM has ports `1..MAX_PORTS`; port 0 ([`NO_PORT`]) is never allocated, so a zeroed field in a
//! shared structure (e.g. the control page) can mean "no port".
//!
//! # Event page
//!
//! One page of the VM's RAM, registered with EVTCHN_SETUP. Only the first 64 bytes are used:
//!
//! | offset | size | field                                                      |
//! |-------:|-----:|------------------------------------------------------------|
//! |      0 |   32 | `pending: [u64; 4]`, bit `p % 64` of word `p / 64` = port p |
//! |     32 |   32 | `mask: [u64; 4]`, same numbering                           |
//!
//! Rules:
//! - The hypervisor sets a pending bit atomically (fetch_or) and raises the virtual PPI
//!   [`EVTCHN_INTID`] only when the bit was clear and the port is not masked
//!   ([`Delivery::Notify`]). A bit that is already pending needs no second interrupt: the guest has
//!   not consumed the first one yet and will see this port when it does.
//! - The guest clears pending bits atomically after taking them ([`take_pending`]), and must
//!   acknowledge the interrupt *before* taking, so an event arriving after the take raises a new
//!   interrupt instead of being left unseen.
//! - A set mask bit means "do not interrupt me for this port"; the pending bit is still set and
//!   [`take_pending`] leaves masked ports pending. Unmasking through EVTCHN_UNMASK makes the
//!   hypervisor raise the interrupt again if the port is pending. A guest that clears the mask
//!   itself with [`clear_mask`] must handle the returned "was pending" itself.
//!
//! All accesses are `SeqCst`: "set pending, then read mask" (hypervisor) races with "clear mask,
//! then read pending" (guest), and only a total order guarantees at least one side sees the other.

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// Ports per VM (port 0 included, never allocated).
pub const MAX_PORTS: u32 = 256;
/// Port 0: "no port".
pub const NO_PORT: u32 = 0;
/// Words in each bitmap.
pub const BITMAP_WORDS: usize = (MAX_PORTS / 64) as usize;
/// Byte offsets of the bitmaps in the event page.
pub const PENDING_OFFSET: usize = 0;
pub const MASK_OFFSET: usize = 32;
/// `u64` words of the page the helpers use (pending, then mask).
pub const PAGE_WORDS: usize = 2 * BITMAP_WORDS;

/// The one virtual interrupt (a PPI no QEMU virt device uses) that says "some port is pending".
pub const EVTCHN_INTID: u32 = 20;

/// What [`set_pending`] did, i.e. whether the hypervisor must raise [`EVTCHN_INTID`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The port was already pending: no new interrupt.
    AlreadyPending,
    /// Now pending but masked: no interrupt until unmasked.
    Masked,
    /// Newly pending and unmasked: raise the interrupt.
    Notify,
}

/// Word index and bit of `port` in a bitmap, if the port and page are in range.
fn locate(page: &[AtomicU64], port: u32) -> Option<(usize, u64)> {
    if port >= MAX_PORTS || page.len() < PAGE_WORDS {
        return None;
    }
    Some(((port / 64) as usize, 1u64 << (port % 64)))
}

/// Hypervisor side: marks `port` pending. `None` if the port is out of range or `page` is shorter
/// than [`PAGE_WORDS`].
pub fn set_pending(page: &[AtomicU64], port: u32) -> Option<Delivery> {
    let (word, bit) = locate(page, port)?;
    let before = page[word].fetch_or(bit, SeqCst);
    Some(if before & bit != 0 {
        Delivery::AlreadyPending
    } else if page[BITMAP_WORDS + word].load(SeqCst) & bit != 0 {
        Delivery::Masked
    } else {
        Delivery::Notify
    })
}

pub fn is_pending(page: &[AtomicU64], port: u32) -> bool {
    locate(page, port).is_some_and(|(word, bit)| page[word].load(SeqCst) & bit != 0)
}

pub fn is_masked(page: &[AtomicU64], port: u32) -> bool {
    locate(page, port).is_some_and(|(word, bit)| page[BITMAP_WORDS + word].load(SeqCst) & bit != 0)
}

/// Sets the mask bit; false if the port or page is out of range.
pub fn set_mask(page: &[AtomicU64], port: u32) -> bool {
    let Some((word, bit)) = locate(page, port) else {
        return false;
    };
    page[BITMAP_WORDS + word].fetch_or(bit, SeqCst);
    true
}

/// Clears the mask bit and returns whether the port is pending (the caller must then handle it,
/// because no interrupt was raised for it while masked). `None` if out of range.
pub fn clear_mask(page: &[AtomicU64], port: u32) -> Option<bool> {
    let (word, bit) = locate(page, port)?;
    page[BITMAP_WORDS + word].fetch_and(!bit, SeqCst);
    Some(page[word].load(SeqCst) & bit != 0)
}

/// Guest side: atomically takes every pending, unmasked port (clearing those pending bits) and
/// returns them in ascending order. Masked ports stay pending. A too-short page yields nothing.
pub fn take_pending(page: &[AtomicU64]) -> PendingPorts {
    let mut taken = [0u64; BITMAP_WORDS];
    if page.len() >= PAGE_WORDS {
        for (word, out) in taken.iter_mut().enumerate() {
            let mask = page[BITMAP_WORDS + word].load(SeqCst);
            // fetch_and with the mask keeps only masked bits; the unmasked ones we clear are
            // exactly the ones we return, even if the hypervisor sets more meanwhile.
            *out = page[word].fetch_and(mask, SeqCst) & !mask;
        }
    }
    PendingPorts::from_bits(taken)
}

/// Ports taken by [`take_pending`], ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingPorts {
    bits: [u64; BITMAP_WORDS],
}

impl PendingPorts {
    pub const fn from_bits(bits: [u64; BITMAP_WORDS]) -> PendingPorts {
        PendingPorts { bits }
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }
}

impl Iterator for PendingPorts {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let (word, bits) = self.bits.iter_mut().enumerate().find(|(_, b)| **b != 0)?;
        let bit = bits.trailing_zeros();
        *bits &= *bits - 1;
        Some(word as u32 * 64 + bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn page() -> [AtomicU64; PAGE_WORDS] {
        Default::default()
    }

    fn taken(page: &[AtomicU64]) -> std::vec::Vec<u32> {
        take_pending(page).collect()
    }

    #[test]
    fn layout_constants() {
        assert_eq!(BITMAP_WORDS, 4);
        assert_eq!(MASK_OFFSET, PENDING_OFFSET + BITMAP_WORDS * 8);
        assert_eq!(PAGE_WORDS * 8, 64);
    }

    #[test]
    fn first_send_notifies_second_coalesces() {
        let p = page();
        assert_eq!(set_pending(&p, 70), Some(Delivery::Notify));
        assert_eq!(p[1].load(SeqCst), 1 << 6);
        assert_eq!(set_pending(&p, 70), Some(Delivery::AlreadyPending));
        assert_eq!(taken(&p), [70]);
        assert!(!is_pending(&p, 70));
        assert_eq!(set_pending(&p, 70), Some(Delivery::Notify));
    }

    #[test]
    fn masked_port_stays_pending_until_unmasked() {
        let p = page();
        assert!(set_mask(&p, 5));
        assert!(is_masked(&p, 5));
        assert_eq!(p[BITMAP_WORDS].load(SeqCst), 1 << 5);
        assert_eq!(set_pending(&p, 5), Some(Delivery::Masked));
        assert_eq!(set_pending(&p, 6), Some(Delivery::Notify));
        assert_eq!(taken(&p), [6], "masked port must not be taken");
        assert!(is_pending(&p, 5));
        assert_eq!(clear_mask(&p, 5), Some(true));
        assert_eq!(taken(&p), [5]);
        assert_eq!(clear_mask(&p, 5), Some(false));
    }

    #[test]
    fn out_of_range_port_or_short_page_is_refused() {
        let p = page();
        assert_eq!(set_pending(&p, MAX_PORTS), None);
        assert!(!set_mask(&p, MAX_PORTS));
        assert_eq!(clear_mask(&p, MAX_PORTS), None);
        assert!(!is_pending(&p, MAX_PORTS) && !is_masked(&p, MAX_PORTS));
        let short: [AtomicU64; 7] = Default::default();
        assert_eq!(set_pending(&short, 1), None);
        assert!(take_pending(&short).is_empty());
        assert!(p.iter().all(|w| w.load(SeqCst) == 0));
    }

    #[test]
    fn take_returns_ports_in_order_across_words() {
        let p = page();
        for port in [255, 0, 64, 63, 128] {
            set_pending(&p, port);
        }
        assert_eq!(taken(&p), [0, 63, 64, 128, 255]);
        assert!(take_pending(&p).is_empty());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Send(u32),
        Take,
        Mask(u32),
        Unmask(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        // A few ports so sequences collide often.
        let port = prop::sample::select(vec![1u32, 2, 63, 64, 200]);
        prop_oneof![
            port.clone().prop_map(Op::Send),
            Just(Op::Take),
            port.clone().prop_map(Op::Mask),
            port.prop_map(Op::Unmask),
        ]
    }

    fn page_of(words: [u64; PAGE_WORDS]) -> [AtomicU64; PAGE_WORDS] {
        words.map(AtomicU64::new)
    }

    proptest! {
        /// Whatever a guest left in its event page: a send sets exactly its bit and reports
        /// what the bits said before, and a take returns exactly the pending unmasked ports and
        /// leaves every other bit alone.
        #[test]
        fn any_page_contents(words in any::<[u64; PAGE_WORDS]>(), port in 0..MAX_PORTS + 2) {
            let before = page_of(words);
            let p = page_of(words);
            let delivery = set_pending(&p, port);
            if port >= MAX_PORTS {
                prop_assert_eq!(delivery, None);
                prop_assert!((0..PAGE_WORDS).all(|i| p[i].load(SeqCst) == words[i]));
            } else {
                let was_pending = is_pending(&before, port);
                let masked = is_masked(&before, port);
                let expect = match (was_pending, masked) {
                    (true, _) => Delivery::AlreadyPending,
                    (false, true) => Delivery::Masked,
                    (false, false) => Delivery::Notify,
                };
                prop_assert_eq!(delivery, Some(expect));
                prop_assert!(is_pending(&p, port));
            }
            let pending: std::vec::Vec<u64> = (0..PAGE_WORDS).map(|i| p[i].load(SeqCst)).collect();
            let expect: std::vec::Vec<u32> = (0..MAX_PORTS)
                .filter(|&q| {
                    let (w, b) = ((q / 64) as usize, 1u64 << (q % 64));
                    pending[w] & b != 0 && pending[BITMAP_WORDS + w] & b == 0
                })
                .collect();
            prop_assert_eq!(taken(&p), expect);
            for w in 0..BITMAP_WORDS {
                let mask = pending[BITMAP_WORDS + w];
                prop_assert_eq!(p[w].load(SeqCst), pending[w] & mask);
                prop_assert_eq!(p[BITMAP_WORDS + w].load(SeqCst), mask);
            }
        }

        /// Against a model: every send is taken exactly once per pending episode, an interrupt is
        /// reported exactly when a port becomes pending unmasked, and unmask reports pending work.
        #[test]
        fn matches_model(ops in prop::collection::vec(op(), 1..60)) {
            let p = page();
            let mut pending = std::collections::BTreeSet::new();
            let mut masked = std::collections::BTreeSet::new();
            for op in ops {
                match op {
                    Op::Send(port) => {
                        let expect = if pending.contains(&port) {
                            Delivery::AlreadyPending
                        } else if masked.contains(&port) {
                            Delivery::Masked
                        } else {
                            Delivery::Notify
                        };
                        pending.insert(port);
                        prop_assert_eq!(set_pending(&p, port), Some(expect));
                    }
                    Op::Take => {
                        let expect: std::vec::Vec<u32> =
                            pending.iter().copied().filter(|q| !masked.contains(q)).collect();
                        pending.retain(|q| masked.contains(q));
                        prop_assert_eq!(taken(&p), expect);
                    }
                    Op::Mask(port) => {
                        masked.insert(port);
                        prop_assert!(set_mask(&p, port));
                    }
                    Op::Unmask(port) => {
                        masked.remove(&port);
                        prop_assert_eq!(clear_mask(&p, port), Some(pending.contains(&port)));
                    }
                }
            }
        }
    }
}
