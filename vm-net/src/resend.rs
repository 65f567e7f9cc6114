//! The frames a front-end has handed to its back-end and not had back, in the order they went
//! ([`TxLedger`]): what it sends again to a restarted back-end.
//!
//! Why (issue 11, the restart's gap): a back-end that dies takes the frames it had not
//! finished with, and the rings a front-end sets up for its successor start empty. A TCP
//! segment lost that way is only sent again when the sender's retransmission timer runs out,
//! and smoltcp's never runs out sooner than one second (`RTTE_MIN_RTO`), so a 26 ms restart
//! showed as a one-second hole in a stream. The frames are still in the front-end's own
//! transmit buffers (only it writes them), so it queues them again, oldest first, on the new
//! rings. A frame the old back-end had already passed on arrives twice; TCP, UDP and ping all
//! take a duplicate as the network may make one.

use alloc::vec;
use alloc::vec::Vec;

/// For each transmit buffer, whether it is with the back-end, since when (a sequence number,
/// so the oldest goes first) and how long its chain is.
pub struct TxLedger {
    /// Indexed by buffer number: `(sequence, chain length)` while the buffer is out.
    out: Vec<Option<(u64, u32)>>,
    next: u64,
}

impl TxLedger {
    /// A ledger for buffers numbered below `buffers`, none of them out.
    pub fn new(buffers: usize) -> Self {
        Self {
            out: vec![None; buffers],
            next: 0,
        }
    }

    /// Buffer `buffer` went to the back-end with a chain of `len` bytes. A number outside the
    /// ledger is not recorded (it could never be sent again).
    pub fn sent(&mut self, buffer: u16, len: u32) {
        if let Some(slot) = self.out.get_mut(usize::from(buffer)) {
            *slot = Some((self.next, len));
            self.next += 1;
        }
    }

    /// The back-end gave buffer `buffer` back.
    pub fn returned(&mut self, buffer: u16) {
        if let Some(slot) = self.out.get_mut(usize::from(buffer)) {
            *slot = None;
        }
    }

    /// How many buffers are out.
    pub fn out(&self) -> usize {
        self.out.iter().flatten().count()
    }

    /// Every buffer still out, oldest first, with its chain's length; the ledger forgets them
    /// (the caller records each again as it sends it).
    pub fn take_out(&mut self) -> Vec<(u16, u32)> {
        let mut out: Vec<(u64, u16, u32)> = self
            .out
            .iter_mut()
            .enumerate()
            .filter_map(|(buffer, slot)| {
                let (seq, len) = slot.take()?;
                Some((seq, buffer as u16, len))
            })
            .collect();
        out.sort_unstable_by_key(|&(seq, _, _)| seq);
        out.into_iter()
            .map(|(_, buffer, len)| (buffer, len))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_still_out_come_back_oldest_first_with_their_lengths() {
        let mut ledger = TxLedger::new(8);
        for (buffer, len) in [(5, 100), (2, 200), (7, 300), (3, 400)] {
            ledger.sent(buffer, len);
        }
        ledger.returned(2);
        // Buffer 5 went again after it came back: it is now the newest.
        ledger.returned(5);
        ledger.sent(5, 500);
        assert_eq!(ledger.out(), 3);
        assert_eq!(ledger.take_out(), vec![(7, 300), (3, 400), (5, 500)]);
        assert_eq!(ledger.out(), 0);
        assert!(ledger.take_out().is_empty());
    }

    #[test]
    fn numbers_outside_the_ledger_are_neither_recorded_nor_a_panic() {
        let mut ledger = TxLedger::new(4);
        ledger.sent(4, 10);
        ledger.sent(u16::MAX, 10);
        ledger.returned(9);
        assert_eq!(ledger.out(), 0);
        ledger.sent(1, 10);
        ledger.returned(1);
        ledger.returned(1);
        assert!(ledger.take_out().is_empty());
    }

    proptest::proptest! {
        /// Whatever mix of sends and returns: what is taken is exactly the buffers whose last
        /// event was a send, in the order of those sends.
        #[test]
        fn what_is_taken_is_every_buffer_out_in_the_order_it_went(
            events in proptest::collection::vec((0u16..10, proptest::bool::ANY), 0..200)
        ) {
            let mut ledger = TxLedger::new(10);
            let mut model: Vec<(u16, u32)> = Vec::new();
            for (i, (buffer, send)) in events.into_iter().enumerate() {
                model.retain(|&(b, _)| b != buffer);
                if send {
                    ledger.sent(buffer, i as u32);
                    model.push((buffer, i as u32));
                } else {
                    ledger.returned(buffer);
                }
            }
            proptest::prop_assert_eq!(ledger.out(), model.len());
            proptest::prop_assert_eq!(ledger.take_out(), model);
        }
    }
}
