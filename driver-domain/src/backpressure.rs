//! Back-pressure between guests: when a guest's frame for another guest finds that receiver's
//! ring without room, the frame waits where it is (in the sender's transmit buffer, its chain
//! not yet completed) and the sender's later frames wait behind it, instead of being dropped.
//!
//! Dropping was what a switch with a full egress queue does, and TCP recovers from it, but
//! smoltcp recovers slowly: with a receive window larger than the receiver's ring (two 1 MiB
//! streams into one guest, or one `iperf_window` of 2 MiB) guest -> guest throughput fell
//! to a tenth, and even at the default window a stream lost a few frames a second.
//!
//! A receiver that never makes room must not hold its senders for ever: a frame waits at most
//! [`HOLD_MS`], then it is dropped (counted as before) and that receiver is *unresponsive* for
//! [`UNRESPONSIVE_MS`]: frames for it are dropped at once, never held, so a receiver that
//! stops draining costs any sender at most one hold per five seconds (2 % of its time). A
//! healthy receiver drains within a few milliseconds on a quiet host, but one that is not run
//! (three VMs on two pCPUs, and a host whose other load takes the vCPUs' threads) can leave
//! its ring untouched for tens of milliseconds: the hold is long enough for that. Time is the
//! caller's, in milliseconds, so the rules run in host tests.

use alloc::vec::Vec;

/// The longest a frame waits for its receiver's buffers. It was 20 ms: on a host with two
/// other busy threads, receivers that were merely not run let holds run out (a 2 MiB-window
/// stream lost frames in 3 of 20 runs; holds of 10-72 ms were then common, none of 10 ms or
/// more on a quiet host).
pub const HOLD_MS: u64 = 100;
/// How long frames for a receiver whose hold ran out are dropped without waiting.
pub const UNRESPONSIVE_MS: u64 = 5_000;

/// A sender's frame that waits for receiver `to`; `F` is the caller's handle to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held<F> {
    pub frame: F,
    pub to: u16,
    since_ms: u64,
}

impl<F> Held<F> {
    /// When the hold runs out.
    pub fn expires_ms(&self) -> u64 {
        self.since_ms.saturating_add(HOLD_MS)
    }
}

/// What to do with a held frame whose receiver still has no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StillFull {
    /// Keep waiting.
    Wait,
    /// The hold ran out: drop the frame; the receiver is now unresponsive.
    Expired,
}

/// The receivers that let a hold run out, and until when frames for them are not held.
#[derive(Debug, Default)]
pub struct Holds {
    unresponsive: Vec<(u16, u64)>,
    /// Holds that ran out since the start.
    pub expired: u64,
    /// Frames that waited and were then delivered.
    pub delivered_after_wait: u64,
}

impl Holds {
    pub fn new() -> Holds {
        Holds::default()
    }

    /// Whether a frame for `to` that found no room may wait for it (else it is dropped now).
    pub fn may_hold(&self, to: u16, now_ms: u64) -> bool {
        !self
            .unresponsive
            .iter()
            .any(|&(guest, until)| guest == to && now_ms < until)
    }

    /// Holds `frame` for `to` from `now_ms` (the caller checked [`may_hold`](Self::may_hold)).
    pub fn hold<F>(&self, frame: F, to: u16, now_ms: u64) -> Held<F> {
        Held {
            frame,
            to,
            since_ms: now_ms,
        }
    }

    /// A retry of `held` found no room again at `now_ms`.
    pub fn still_full<F>(&mut self, held: &Held<F>, now_ms: u64) -> StillFull {
        if now_ms < held.expires_ms() {
            return StillFull::Wait;
        }
        self.expired += 1;
        let until = now_ms.saturating_add(UNRESPONSIVE_MS);
        self.unresponsive.retain(|&(guest, _)| guest != held.to);
        // One entry per receiver, so the list is no longer than the number of guests.
        self.unresponsive.push((held.to, until));
        StillFull::Expired
    }

    /// A held frame reached its receiver.
    pub fn delivered<F>(&mut self, _held: &Held<F>) {
        self.delivered_after_wait += 1;
    }

    /// Receiver `guest` is gone (or connected anew): a new connection starts with a clean slate.
    pub fn forget(&mut self, guest: u16) {
        self.unresponsive.retain(|&(g, _)| g != guest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_waits_until_its_hold_runs_out() {
        let mut holds = Holds::new();
        assert!(holds.may_hold(3, 100));
        let held = holds.hold("frame", 3, 100);
        assert_eq!(held.expires_ms(), 100 + HOLD_MS);
        assert_eq!(holds.still_full(&held, 100), StillFull::Wait);
        assert_eq!(holds.still_full(&held, 100 + HOLD_MS - 1), StillFull::Wait);
        assert_eq!(holds.still_full(&held, 100 + HOLD_MS), StillFull::Expired);
        assert_eq!(holds.expired, 1);
    }

    #[test]
    fn a_receiver_whose_hold_ran_out_gets_no_holds_for_a_while() {
        let mut holds = Holds::new();
        let held = holds.hold((), 3, 0);
        let end = held.expires_ms();
        assert_eq!(holds.still_full(&held, end), StillFull::Expired);
        // Frames for it are dropped at once for UNRESPONSIVE_MS; others still wait.
        assert!(!holds.may_hold(3, end));
        assert!(!holds.may_hold(3, end + UNRESPONSIVE_MS - 1));
        assert!(holds.may_hold(4, end));
        assert!(holds.may_hold(3, end + UNRESPONSIVE_MS));
    }

    #[test]
    fn a_receiver_that_stops_draining_costs_a_sender_one_hold_per_penalty() {
        // A sender streams to a receiver that never makes room: frames every millisecond for
        // ten seconds. At most one hold per UNRESPONSIVE_MS runs its course.
        let mut holds = Holds::new();
        let mut waited_ms = 0;
        let mut held: Option<Held<u32>> = None;
        for now in 0..10_000u64 {
            if let Some(h) = held {
                waited_ms += 1;
                if holds.still_full(&h, now) == StillFull::Expired {
                    held = None;
                }
                continue;
            }
            if holds.may_hold(7, now) {
                held = Some(holds.hold(now as u32, 7, now));
            }
        }
        let episodes = 10_000 / (UNRESPONSIVE_MS + HOLD_MS) + 1;
        assert!(holds.expired <= episodes, "{} holds ran out", holds.expired);
        assert!(
            waited_ms <= episodes * HOLD_MS,
            "the sender waited {waited_ms} ms"
        );
    }

    #[test]
    fn the_unresponsive_list_keeps_one_entry_per_receiver() {
        let mut holds = Holds::new();
        for round in 0..100u64 {
            let now = round * (UNRESPONSIVE_MS + HOLD_MS);
            let held = holds.hold((), 5, now);
            assert_eq!(
                holds.still_full(&held, held.expires_ms()),
                StillFull::Expired
            );
        }
        assert_eq!(holds.unresponsive.len(), 1);
        holds.forget(5);
        assert!(holds.unresponsive.is_empty());
        assert!(holds.may_hold(5, 0));
    }

    #[test]
    fn a_delivered_hold_is_counted() {
        let mut holds = Holds::new();
        let held = holds.hold((), 2, 10);
        holds.delivered(&held);
        assert_eq!(holds.delivered_after_wait, 1);
        assert_eq!(holds.expired, 0);
        assert!(holds.may_hold(2, 11));
    }
}
