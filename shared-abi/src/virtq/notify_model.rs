//! Exhaustive check of notification suppression (event indices) on a small model.
//!
//! One producer publishes `items` entries; one consumer drains them and sleeps between bursts.
//! Each step below is one shared-memory access of the real code, in the real order:
//!
//! - producer ([`DriverQueue::publish`] + [`DriverQueue::should_notify_device`]): store the
//!   index; full fence; load the consumer's event index; notify if [`vring_need_event`] says so.
//! - consumer ([`DeviceQueue::pop`] until empty, then [`DeviceQueue::enable_notify`]): load the
//!   index and take one entry while there is one; store its event index (= entries taken); full
//!   fence; re-load the index and go back to draining if it moved; otherwise sleep until
//!   notified.
//!
//! Memory is modelled with per-thread store buffers (TSO): a store becomes visible at some later
//! step, a fence waits for the thread's own stores to be visible. That is the reordering
//! (store → later load) the fences exist for; Arm's weaker orderings are excluded by the
//! release/acquire accesses and do not matter to this pattern. A notification is latched like an
//! event-channel pending bit: it wakes the consumer's next sleep even if sent while it was
//! awake. Every reachable state of every interleaving is explored; a final state (nothing can
//! step) with entries left means the consumer sleeps forever: a lost wake-up.
//!
//! [`DriverQueue::publish`]: super::DriverQueue::publish
//! [`DriverQueue::should_notify_device`]: super::DriverQueue::should_notify_device
//! [`DeviceQueue::pop`]: super::DeviceQueue::pop
//! [`DeviceQueue::enable_notify`]: super::DeviceQueue::enable_notify

use std::collections::HashMap;
use std::vec::Vec;

use super::vring_need_event;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Producer {
    Publish,
    Fence,
    CheckEvent,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Consumer {
    Drain,
    Enable,
    Fence,
    Recheck,
    Sleep,
}

/// Which safeguards the consumer and producer use.
#[derive(Clone, Copy, Debug)]
struct Variant {
    recheck: bool,
    fences: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    /// Shared memory: the producer's index and the consumer's event index.
    idx: u16,
    event: u16,
    /// Stores not yet visible, oldest first.
    producer_buf: Vec<u16>,
    consumer_buf: Vec<u16>,
    producer: Producer,
    published: u16,
    consumer: Consumer,
    taken: u16,
    /// The latched notification.
    notified: bool,
}

struct Checker {
    variant: Variant,
    start: u16,
    items: u16,
    /// Per state: how many interleavings lead from it to a final state.
    paths: HashMap<State, u128>,
    lost: Option<State>,
}

impl Checker {
    fn successors(&self, s: &State) -> Vec<State> {
        let mut out = Vec::new();
        let v = self.variant;
        // Store buffers drain at any time.
        if !s.producer_buf.is_empty() {
            let mut n = s.clone();
            n.idx = n.producer_buf.remove(0);
            out.push(n);
        }
        if !s.consumer_buf.is_empty() {
            let mut n = s.clone();
            n.event = n.consumer_buf.remove(0);
            out.push(n);
        }
        let new = self.start.wrapping_add(s.published);
        match s.producer {
            Producer::Publish => {
                let mut n = s.clone();
                n.published += 1;
                n.producer_buf.push(new.wrapping_add(1));
                n.producer = if v.fences {
                    Producer::Fence
                } else {
                    Producer::CheckEvent
                };
                out.push(n);
            }
            Producer::Fence if s.producer_buf.is_empty() => {
                let mut n = s.clone();
                n.producer = Producer::CheckEvent;
                out.push(n);
            }
            Producer::CheckEvent => {
                // One entry per publish: old = new - 1. The producer never stores `event`, so
                // it reads memory.
                let mut n = s.clone();
                if vring_need_event(s.event, new, new.wrapping_sub(1)) {
                    n.notified = true;
                }
                n.producer = if s.published == self.items {
                    Producer::Done
                } else {
                    Producer::Publish
                };
                out.push(n);
            }
            Producer::Fence | Producer::Done => {}
        }
        let last = self.start.wrapping_add(s.taken);
        match s.consumer {
            Consumer::Drain => {
                let mut n = s.clone();
                if s.idx != last {
                    n.taken += 1;
                } else {
                    n.consumer = Consumer::Enable;
                }
                out.push(n);
            }
            Consumer::Enable => {
                let mut n = s.clone();
                n.consumer_buf.push(last);
                n.consumer = match (v.fences, v.recheck) {
                    (true, _) => Consumer::Fence,
                    (false, true) => Consumer::Recheck,
                    (false, false) => Consumer::Sleep,
                };
                out.push(n);
            }
            Consumer::Fence if s.consumer_buf.is_empty() => {
                let mut n = s.clone();
                n.consumer = if v.recheck {
                    Consumer::Recheck
                } else {
                    Consumer::Sleep
                };
                out.push(n);
            }
            Consumer::Recheck => {
                let mut n = s.clone();
                n.consumer = if s.idx != last {
                    Consumer::Drain
                } else {
                    Consumer::Sleep
                };
                out.push(n);
            }
            Consumer::Sleep if s.notified => {
                let mut n = s.clone();
                n.notified = false;
                n.consumer = Consumer::Drain;
                out.push(n);
            }
            Consumer::Fence | Consumer::Sleep => {}
        }
        out
    }

    /// Interleavings from `s` to a final state; records a final state that lost a wake-up.
    /// The state graph has no cycles: every consumer loop takes an entry or a notification.
    fn explore(&mut self, s: &State) -> u128 {
        if let Some(&n) = self.paths.get(s) {
            return n;
        }
        let next = self.successors(s);
        let n = if next.is_empty() {
            assert!(s.producer == Producer::Done && s.consumer == Consumer::Sleep);
            if s.taken != self.items && self.lost.is_none() {
                self.lost = Some(s.clone());
            }
            1
        } else {
            next.iter().map(|n| self.explore(n)).sum()
        };
        self.paths.insert(s.clone(), n);
        n
    }
}

/// Explores every interleaving; returns (interleavings, reachable states, a lost-wake-up state).
fn check(variant: Variant, start: u16, items: u16) -> (u128, usize, Option<State>) {
    let mut c = Checker {
        variant,
        start,
        items,
        paths: HashMap::new(),
        lost: None,
    };
    let init = State {
        idx: start,
        // Both sides start at the same index; the consumer asks for the first entry.
        event: start,
        producer_buf: Vec::new(),
        consumer_buf: Vec::new(),
        producer: Producer::Publish,
        published: 0,
        consumer: Consumer::Drain,
        taken: 0,
        notified: false,
    };
    let paths = c.explore(&init);
    (paths, c.paths.len(), c.lost)
}

const STARTS: [u16; 3] = [0, u16::MAX - 1, 0x7fff];

#[test]
fn recheck_and_fences_never_lose_a_wakeup() {
    let full = Variant {
        recheck: true,
        fences: true,
    };
    for items in 1..=4 {
        for start in STARTS {
            let (paths, states, lost) = check(full, start, items);
            assert!(paths > 1 && states > 1);
            assert_eq!(lost, None, "{items} items from index {start}");
        }
    }
}

#[test]
fn without_recheck_a_wakeup_is_lost() {
    let no_recheck = Variant {
        recheck: false,
        fences: true,
    };
    for start in STARTS {
        let (_, _, lost) = check(no_recheck, start, 3);
        let lost = lost.expect("the model must catch the missing re-check");
        assert_eq!(lost.consumer, Consumer::Sleep);
        assert!(!lost.notified && lost.taken < 3);
    }
}

#[test]
fn without_fences_a_wakeup_is_lost_despite_the_recheck() {
    let no_fences = Variant {
        recheck: true,
        fences: false,
    };
    for start in STARTS {
        let (_, _, lost) = check(no_fences, start, 3);
        assert!(
            lost.is_some(),
            "store buffering must defeat the unfenced re-check"
        );
    }
}

#[test]
fn interleaving_counts_are_reported() {
    let full = Variant {
        recheck: true,
        fences: true,
    };
    let (paths, states, _) = check(full, 0, 4);
    std::println!("4 items: {paths} interleavings over {states} states, none loses a wake-up");
    assert!(paths > 10_000);
}
