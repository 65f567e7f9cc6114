//! The request page's state machine, alone and against a model of both sides with a device
//! model that may also write anything into the page.

use core::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;

use super::*;

fn page() -> Vec<AtomicU64> {
    let page: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(u64::MAX)).collect();
    init_page(&page).unwrap();
    page
}

fn read(offset: u64, size: u8) -> Request {
    Request {
        offset,
        size,
        write: false,
        data: 0,
    }
}

#[test]
fn a_request_goes_round_once() {
    let page = page();
    check_header(&page).unwrap();
    let store = Request {
        offset: 0x20,
        size: 2,
        write: true,
        data: 0xdead_beef,
    };
    post(&page, 3, store).unwrap();
    // The stored value arrives truncated to the access size.
    let taken = take_request(&page, 3).unwrap().unwrap();
    assert_eq!(
        taken,
        Request {
            data: 0xbeef,
            ..store
        }
    );
    // Taken once: the slot is IN_PROCESS, not READY, and no answer is there yet.
    assert_eq!(take_request(&page, 3).unwrap(), None);
    assert_eq!(take_response(&page, 3).unwrap(), None);
    respond(&page, 3, 0x1234).unwrap();
    assert_eq!(take_response(&page, 3).unwrap(), Some(0x1234));
    // Taken once: the slot is empty again.
    assert_eq!(take_response(&page, 3).unwrap(), None);
    assert_eq!(take_request(&page, 3).unwrap(), None);
}

#[test]
fn slots_are_independent() {
    let page = page();
    post(&page, 0, read(0, 4)).unwrap();
    post(&page, SLOTS - 1, read(8, 8)).unwrap();
    assert_eq!(take_request(&page, SLOTS - 1).unwrap(), Some(read(8, 8)));
    assert_eq!(take_request(&page, 0).unwrap(), Some(read(0, 4)));
    respond(&page, 0, 7).unwrap();
    assert_eq!(take_response(&page, SLOTS - 1).unwrap(), None);
    assert_eq!(take_response(&page, 0).unwrap(), Some(7));
}

#[test]
fn bad_slots_sizes_and_pages_are_errors_not_panics() {
    let page = page();
    assert_eq!(
        post(&page, SLOTS, read(0, 4)),
        Err(IoreqError::NoSuchSlot { slot: SLOTS })
    );
    assert_eq!(
        post(&page, 0, read(0, 3)),
        Err(IoreqError::BadSize { size: 3 })
    );
    let short: Vec<AtomicU64> = (0..PAGE_WORDS - 1).map(|_| AtomicU64::new(0)).collect();
    assert_eq!(
        init_page(&short),
        Err(IoreqError::PageTooShort {
            words: PAGE_WORDS - 1
        })
    );
    assert!(take_response(&short, 0).is_err());
    assert!(take_request(&short, 0).is_err());
    // A request whose size word was scribbled on is refused by the device model's reader.
    post(&page, 1, read(0, 4)).unwrap();
    page[SLOT_BASE + SLOT_WORDS + 3].store(5, Ordering::Relaxed);
    assert_eq!(take_request(&page, 1), Err(IoreqError::BadSize { size: 5 }));
}

#[test]
fn a_foreign_or_old_page_is_refused() {
    let page = page();
    // Version 1 had no guest epoch and state: a device model of that build must not serve
    // a guest whose stops it cannot see.
    page[0].store(u64::from(MAGIC) | (1 << 32), Ordering::Relaxed);
    assert_eq!(
        check_header(&page),
        Err(IoreqError::BadHeader {
            magic: MAGIC,
            version: 1
        })
    );
    let zero: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    assert!(check_header(&zero).is_err());
}

#[test]
fn the_guests_stops_reach_the_device_model_and_survive_a_page_reset() {
    let page: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
    init_page(&page).unwrap();
    let running = |epoch| GuestStatus { epoch, gone: false };
    assert_eq!(guest_status(&page), Ok(running(0)));
    // A SYSTEM_RESET: a new epoch, still running; the hypervisor then empties the slots.
    post(&page, 0, read(0, 4)).unwrap();
    record_guest_stop(&page, 1, false).unwrap();
    init_page(&page).unwrap();
    assert_eq!(guest_status(&page), Ok(running(1)));
    assert_eq!(take_request(&page, 0), Ok(None));
    // A kill: gone for good.
    record_guest_stop(&page, 2, true).unwrap();
    init_page(&page).unwrap();
    assert_eq!(
        guest_status(&page),
        Ok(GuestStatus {
            epoch: 2,
            gone: true
        })
    );
    // Whatever the device model writes there, only the hypervisor's next write counts.
    page[GUEST_STATE].store(77, Ordering::Relaxed);
    page[GUEST_EPOCH].store(u64::MAX, Ordering::Relaxed);
    assert_eq!(guest_status(&page).map(|s| s.gone), Ok(false));
    record_guest_stop(&page, 3, true).unwrap();
    assert_eq!(
        guest_status(&page),
        Ok(GuestStatus {
            epoch: 3,
            gone: true
        })
    );
    let short: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
    assert!(record_guest_stop(&short, 1, true).is_err());
    assert!(guest_status(&short).is_err());
}

#[test]
fn truncation_keeps_the_access_width() {
    assert_eq!(truncate(u64::MAX, 1), 0xff);
    assert_eq!(truncate(u64::MAX, 2), 0xffff);
    assert_eq!(truncate(u64::MAX, 4), 0xffff_ffff);
    assert_eq!(truncate(u64::MAX, 8), u64::MAX);
}

/// One step of either side, or of a device model writing whatever it likes.
#[derive(Clone, Debug)]
enum Step {
    /// The guest's vCPU `slot` traps (the hypervisor posts if it has nothing outstanding).
    Trap {
        slot: usize,
        offset: u64,
        size_index: usize,
    },
    /// The device model serves slot `slot` (honest: takes, then answers `answer`).
    Serve { slot: usize, answer: u64 },
    /// The device model only takes slot `slot`'s request.
    TakeOnly { slot: usize },
    /// The hypervisor looks for answers in every slot (the device model signalled).
    Collect,
    /// A hostile device model writes `value` to word `word` of the page.
    Scribble { word: usize, value: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..SLOTS, any::<u64>(), 0..4usize).prop_map(|(slot, offset, size_index)| Step::Trap {
            slot,
            offset,
            size_index
        }),
        (0..SLOTS, any::<u64>()).prop_map(|(slot, answer)| Step::Serve { slot, answer }),
        (0..SLOTS).prop_map(|slot| Step::TakeOnly { slot }),
        Just(Step::Collect),
        (0..PAGE_WORDS, prop_oneof![0..5u64, any::<u64>()])
            .prop_map(|(word, value)| Step::Scribble { word, value }),
    ]
}

proptest! {
    /// With an honest device model, every posted request reaches it exactly once, unchanged,
    /// and its answer reaches the hypervisor exactly once; with a scribbling one, the
    /// hypervisor still only ever takes an answer for a slot it has a request outstanding in,
    /// and never more than one per request.
    #[test]
    fn the_hypervisor_takes_only_answers_to_its_own_requests(
        steps in proptest::collection::vec(step(), 1..200)
    ) {
        let page = page();
        // The hypervisor's record: the request outstanding per slot.
        let mut outstanding: [Option<Request>; SLOTS] = [None; SLOTS];
        // The honest device model's record: what it took, and the answers it gave.
        let mut taken: [Option<Request>; SLOTS] = [None; SLOTS];
        let mut answered: [Option<u64>; SLOTS] = [None; SLOTS];
        let mut scribbled = false;
        for step in steps {
            match step {
                Step::Trap { slot, offset, size_index } => {
                    if outstanding[slot].is_none() {
                        let request = read(offset, [1, 2, 4, 8][size_index]);
                        post(&page, slot, request).unwrap();
                        outstanding[slot] = Some(request);
                        taken[slot] = None;
                        answered[slot] = None;
                    }
                }
                Step::TakeOnly { slot } => {
                    if let Ok(Some(request)) = take_request(&page, slot) {
                        if !scribbled {
                            prop_assert_eq!(Some(request), outstanding[slot]);
                            prop_assert!(taken[slot].is_none(), "taken twice");
                        }
                        taken[slot] = Some(request);
                    }
                }
                Step::Serve { slot, answer } => {
                    if let Ok(Some(request)) = take_request(&page, slot) {
                        if !scribbled {
                            prop_assert_eq!(Some(request), outstanding[slot]);
                        }
                        taken[slot] = Some(request);
                    }
                    if taken[slot].is_some() && answered[slot].is_none() {
                        respond(&page, slot, answer).unwrap();
                        answered[slot] = Some(answer);
                    }
                }
                Step::Collect => {
                    for slot in 0..SLOTS {
                        if outstanding[slot].is_none() {
                            continue;
                        }
                        if let Some(data) = take_response(&page, slot).unwrap() {
                            if !scribbled {
                                prop_assert_eq!(Some(data), answered[slot]);
                            }
                            outstanding[slot] = None;
                        }
                    }
                }
                Step::Scribble { word, value } => {
                    page[word].store(value, Ordering::Relaxed);
                    scribbled = true;
                }
            }
        }
        // Once every slot is served honestly (after fresh posts), the hypervisor gets every
        // answer, whatever was scribbled before.
        for (slot, outstanding) in outstanding.iter().enumerate() {
            let Some(request) = *outstanding else {
                continue;
            };
            // Re-post as the hypervisor does when it resets a slot it gave up on.
            reset_slot(&page, slot).unwrap();
            post(&page, slot, request).unwrap();
            prop_assert_eq!(take_request(&page, slot).unwrap(), Some(request));
            respond(&page, slot, slot as u64).unwrap();
            prop_assert_eq!(take_response(&page, slot).unwrap(), Some(slot as u64));
        }
    }
}
