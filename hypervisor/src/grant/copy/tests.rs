//! The per-VM copy checks: the view's RAM and balloon rules, the ranking of refusals, and the
//! pins (taken on every side's VM, before its entry is read, and released when an op is
//! refused). The rules themselves are tested rule by rule through `GrantTables` in
//! `grant/tests.rs`, which runs the same checks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::vec;
use std::vec::Vec;

use shared_abi::grant::{CopyOp, CopyPtr, GrantEntry, PERMIT, READONLY};
use shared_abi::hypercall::Status;
use shared_abi::layout::{GUEST_RAM_BASE, PAGE_SIZE};

use super::*;
use crate::balloon::{BalloonEnv, VmBalloon};
use crate::grant::pins::{CopyPins, Pin};
use crate::grant::Table;

const RAM: u64 = 16 * PAGE_SIZE;
const TABLE_GPA: u64 = GUEST_RAM_BASE + PAGE_SIZE;

/// Host RAM of VM `vm` starts here (VM ids 1..=3).
fn ram_pa(vm: VmId) -> u64 {
    0x1000_0000 * u64::from(vm)
}

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Pin(VmId),
    Read(VmId, u64),
}

/// Three VMs, each with a view, memory as a map of words by host address.
struct World {
    views: Vec<CopyView>,
    words: HashMap<u64, u64>,
    pins: &'static CopyPins,
    events: RefCell<Vec<Event>>,
}

struct Vm<'a> {
    world: &'a World,
    vm: VmId,
}

impl CopyVm for Vm<'_> {
    type Pin = Pin<'static>;
    type Addr = u64;
    fn pin(&self) -> Option<Pin<'static>> {
        self.world.events.borrow_mut().push(Event::Pin(self.vm));
        self.world.pins.pin(self.vm)
    }
    fn in_ram(&self, gpa: u64, len: u64) -> bool {
        self.view().host_pa(gpa, len).is_some()
    }
    fn read_u64(&self, gpa: u64) -> u64 {
        self.world
            .events
            .borrow_mut()
            .push(Event::Read(self.vm, gpa));
        let pa = self.view().host_pa(gpa, 8).expect("checked");
        self.world.words.get(&pa).copied().unwrap_or(0)
    }
    fn table(&self) -> Option<Table> {
        self.view().table()
    }
    fn address(&self, gpa: u64, len: u64) -> Option<u64> {
        self.view().host_pa(gpa, len)
    }
}

impl Vm<'_> {
    fn view(&self) -> &CopyView {
        &self.world.views[usize::from(self.vm) - 1]
    }
}

impl CopyVms for &World {
    type Pin = Pin<'static>;
    type Addr = u64;
    fn with_vm<R>(
        &mut self,
        vm: VmId,
        f: impl FnOnce(&dyn CopyVm<Pin = Pin<'static>, Addr = u64>) -> R,
    ) -> Option<R> {
        (1..=3).contains(&vm).then(|| f(&Vm { world: self, vm }))
    }
}

impl World {
    /// VMs 1..=3 open, each with a one-page table; VM 1 grants ref 0 (its page 4) to VM 2
    /// read-write and ref 1 (page 5) to VM 2 read-only.
    fn new() -> World {
        let mut views = vec![CopyView::default(); 3];
        for (i, view) in views.iter_mut().enumerate() {
            view.open(RamExtent {
                pa: ram_pa(i as VmId + 1),
                bytes: RAM,
                code_bytes: 0,
            });
            view.set_table(Some(Table {
                gpa: TABLE_GPA,
                refs: 512,
            }));
        }
        let mut world = World {
            views,
            words: HashMap::new(),
            pins: Box::leak(Box::new(CopyPins::new())),
            events: RefCell::new(Vec::new()),
        };
        world.grant(1, 0, 2, 4, PERMIT);
        world.grant(1, 1, 2, 5, PERMIT | READONLY);
        world
    }

    fn grant(&mut self, granter: VmId, gref: u64, peer: VmId, page: u32, flags: u16) {
        let entry = GrantEntry {
            flags,
            peer,
            frame: (GUEST_RAM_BASE >> 12) as u32 + page,
        };
        let pa = ram_pa(granter) + PAGE_SIZE + gref * 8;
        self.words.insert(pa, entry.to_u64());
    }

    fn check(
        &self,
        caller: VmId,
        src: CopyPtr,
        dst: CopyPtr,
        len: u16,
    ) -> Result<[u64; 2], Status> {
        let op = CopyOp {
            src,
            dst,
            len,
            status: 0,
        };
        let mut vms = self;
        check_op(&mut vms, caller, &op).map(|[s, d]| [s.addr, d.addr])
    }

    fn pinned(&self) -> [u32; 3] {
        [self.pins.count(1), self.pins.count(2), self.pins.count(3)]
    }
}

fn own(page: u64, offset: u64) -> CopyPtr {
    CopyPtr::own(GUEST_RAM_BASE + page * PAGE_SIZE + offset)
}

#[test]
fn a_view_answers_only_for_its_ram_while_open() {
    let mut view = CopyView::default();
    assert_eq!(view.host_pa(GUEST_RAM_BASE, 8), None);
    view.open(RamExtent {
        pa: 0x8000_0000,
        bytes: RAM,
        code_bytes: 0,
    });
    assert_eq!(view.host_pa(GUEST_RAM_BASE, 8), Some(0x8000_0000));
    assert_eq!(
        view.host_pa(GUEST_RAM_BASE + RAM - 8, 8),
        Some(0x8000_0000 + RAM - 8)
    );
    assert_eq!(view.host_pa(GUEST_RAM_BASE + RAM - 8, 9), None);
    assert_eq!(view.host_pa(GUEST_RAM_BASE, 0), None);
    assert_eq!(view.host_pa(GUEST_RAM_BASE - 8, 8), None);
    assert_eq!(view.host_pa(u64::MAX - 4, 8), None);
    view.set_table(Some(Table { gpa: 0, refs: 1 }));
    view.close();
    assert_eq!(view.host_pa(GUEST_RAM_BASE, 8), None);
    assert_eq!(view.table(), None);
    assert_eq!(view.ram(), None);
}

/// The balloon's record, as a release batch leaves it.
struct Lender;
impl BalloonEnv for Lender {
    fn in_use(&self, _gpa: u64) -> bool {
        false
    }
    fn unmap(&mut self, _gpa: u64) -> bool {
        true
    }
    fn map(&mut self, _gpa: u64, _pa: u64) -> bool {
        true
    }
    fn give_ram_frame(&mut self, _pa: u64) {}
    fn give_frame(&mut self, _pa: u64) {}
    fn take_frame(&mut self) -> Option<u64> {
        None
    }
    fn heap_low(&self) -> bool {
        false
    }
}

#[test]
fn pages_given_back_to_the_balloon_are_not_the_vms_once_the_view_has_the_record() {
    let ram = 64 * 1024 * 1024;
    let mut balloon = VmBalloon::new(ram, 0);
    let mut view = CopyView::default();
    view.open(RamExtent {
        pa: 0,
        bytes: ram,
        code_bytes: 0,
    });
    let page = GUEST_RAM_BASE + 100 * PAGE_SIZE;
    let result = balloon.release(&mut Lender, 0, &[page]);
    assert_eq!(result.status, Status::Ok);
    // Until the record is copied the view still answers (the release waits for the pins
    // taken meanwhile before the frame is scrubbed).
    assert!(view.host_pa(page, 8).is_some());
    assert!(view.set_given(&balloon));
    assert_eq!(view.host_pa(page, 8), None);
    assert_eq!(view.host_pa(page - 8, 16), None);
    assert_eq!(
        view.host_pa(page - PAGE_SIZE, PAGE_SIZE),
        Some(99 * PAGE_SIZE)
    );
    assert_eq!(view.host_pa(page + PAGE_SIZE, 8), Some(101 * PAGE_SIZE));
    // A new incarnation starts with its whole RAM.
    view.open(RamExtent {
        pa: 0,
        bytes: ram,
        code_bytes: 0,
    });
    assert!(view.host_pa(page, 8).is_some());
}

#[test]
fn the_earliest_rule_decides_and_src_wins_a_tie() {
    let r = |rule, status| Err::<(), _>(Refusal { rule, status });
    let bad_ref = r(Rule::Entry, Status::BadRef);
    let peer = r(Rule::Peer, Status::InvalidArgument);
    let range = r(Rule::Range, Status::InvalidArgument);
    let frame = r(Rule::Frame, Status::BadFrame);
    assert_eq!(first_refusal(bad_ref, peer), Err(Status::InvalidArgument));
    assert_eq!(first_refusal(frame, range), Err(Status::BadFrame));
    assert_eq!(first_refusal(range, frame), Err(Status::BadFrame));
    assert_eq!(
        first_refusal(r(Rule::Entry, Status::BadRef), r(Rule::Entry, Status::Busy)),
        Err(Status::BadRef)
    );
    assert_eq!(first_refusal(Ok(()), frame), Err(Status::BadFrame));
    assert_eq!(first_refusal(Ok(1), Ok(2)), Ok([1, 2]));
}

#[test]
fn a_good_op_pins_every_vm_it_touches_before_reading_their_entries() {
    let world = World::new();
    let [src, dst] = world
        .check(2, CopyPtr::grant(1, 0, 16), own(3, 8), 32)
        .unwrap();
    assert_eq!(src, ram_pa(1) + 4 * PAGE_SIZE + 16);
    assert_eq!(dst, ram_pa(2) + 3 * PAGE_SIZE + 8);
    // The pins were dropped with the claims.
    assert_eq!(world.pinned(), [0, 0, 0]);
    assert_eq!(
        *world.events.borrow(),
        [Event::Pin(1), Event::Read(1, TABLE_GPA), Event::Pin(2)]
    );
    // Held while the claims live.
    let op = CopyOp {
        src: CopyPtr::grant(1, 0, 0),
        dst: own(3, 0),
        len: 8,
        status: 0,
    };
    let claims = check_op(&mut &world, 2, &op).unwrap();
    assert_eq!(world.pinned(), [1, 1, 0]);
    drop(claims);
    assert_eq!(world.pinned(), [0, 0, 0]);
}

#[test]
fn a_refused_op_leaves_no_pin() {
    let world = World::new();
    let cases = [
        // Read-only entry as the destination.
        (own(3, 0), CopyPtr::grant(1, 1, 0), Status::ReadOnly),
        // Granted to VM 2, asked by VM 3.
        (CopyPtr::grant(2, 0, 0), own(3, 0), Status::BadRef),
        // Beyond the frame.
        (
            CopyPtr::grant(1, 0, 4090),
            own(3, 0),
            Status::InvalidArgument,
        ),
        // Own side outside its RAM.
        (CopyPtr::grant(1, 0, 0), own(20, 0), Status::InvalidArgument),
        // Itself as a granter.
        (CopyPtr::grant(2, 0, 0), own(3, 0), Status::InvalidArgument),
    ];
    for (i, (src, dst, status)) in cases.into_iter().enumerate() {
        let caller = if i == 1 { 3 } else { 2 };
        assert_eq!(world.check(caller, src, dst, 8), Err(status), "case {i}");
        assert_eq!(world.pinned(), [0, 0, 0], "case {i}");
    }
}

#[test]
fn a_closed_view_or_a_page_given_back_refuses_the_side_in_it() {
    let mut world = World::new();
    assert!(world
        .check(2, CopyPtr::grant(1, 0, 0), own(3, 0), 8)
        .is_ok());
    // The caller's own page 3, given back (a record of a RAM above the balloon's floor: the
    // view takes only its bitmap).
    let mut balloon = VmBalloon::new(64 * 1024 * 1024, 0);
    let page = GUEST_RAM_BASE + 3 * PAGE_SIZE;
    assert_eq!(balloon.release(&mut Lender, 0, &[page]).status, Status::Ok);
    assert!(world.views[1].set_given(&balloon));
    assert_eq!(
        world.check(2, CopyPtr::grant(1, 0, 0), own(3, 0), 8),
        Err(Status::InvalidArgument)
    );
    assert!(world
        .check(2, CopyPtr::grant(1, 0, 0), own(2, 0), 8)
        .is_ok());
    assert!(world.views[1].set_given(&VmBalloon::new(RAM, 0)));
    assert!(world
        .check(2, CopyPtr::grant(1, 0, 0), own(3, 0), 8)
        .is_ok());
    // The granter stopped: its table and RAM are gone from its view.
    world.views[0].close();
    assert_eq!(
        world.check(2, CopyPtr::grant(1, 0, 0), own(3, 0), 8),
        Err(Status::BadRef)
    );
    assert_eq!(world.pinned(), [0, 0, 0]);
}

#[test]
fn the_shared_code_of_a_vm_is_no_side_of_any_copy() {
    let mut world = World::new();
    // VM 2's first two pages are its image's shared code; its page 2 onwards is its own.
    world.views[1].open(RamExtent {
        pa: ram_pa(2),
        bytes: RAM,
        code_bytes: 2 * PAGE_SIZE,
    });
    assert_eq!(world.views[1].host_pa(GUEST_RAM_BASE, 8), None);
    assert_eq!(
        world.views[1].host_pa(GUEST_RAM_BASE + PAGE_SIZE + 4088, 16),
        None
    );
    assert_eq!(
        world.views[1].host_pa(GUEST_RAM_BASE + 2 * PAGE_SIZE, 8),
        Some(ram_pa(2) + 2 * PAGE_SIZE)
    );
    // Into its code, out of its code: refused like any address that is not its RAM.
    for (src, dst) in [
        (CopyPtr::grant(1, 0, 0), own(1, 0)),
        (own(0, 64), CopyPtr::grant(1, 0, 0)),
    ] {
        assert_eq!(
            world.check(2, src, dst, 8),
            Err(Status::InvalidArgument),
            "{src:?} -> {dst:?}"
        );
    }
    assert!(world
        .check(2, CopyPtr::grant(1, 0, 0), own(2, 0), 8)
        .is_ok());
    assert_eq!(world.pinned(), [0, 0, 0]);
}

#[test]
fn a_revoke_after_the_pin_is_seen_by_the_wait_and_one_before_it_by_the_read() {
    // GRANT_END clears PERMIT with no view lock and then waits for the granter's pins; the
    // check pins the granter before it reads the entry. Either order ends safe.
    let mut world = World::new();
    // Revoke first: the check reads PERMIT clear and refuses.
    world.grant(1, 0, 2, 4, 0);
    assert_eq!(
        world.check(2, CopyPtr::grant(1, 0, 0), own(3, 0), 8),
        Err(Status::BadRef)
    );
    // Check first: while its claims live the revoke's wait sees the granter pinned.
    world.grant(1, 0, 2, 4, PERMIT);
    let op = CopyOp {
        src: CopyPtr::grant(1, 0, 0),
        dst: own(3, 0),
        len: 8,
        status: 0,
    };
    let claims = check_op(&mut &world, 2, &op).unwrap();
    world.grant(1, 0, 2, 4, 0);
    assert_eq!(world.pins.count(1), 1);
    drop(claims);
    assert_eq!(
        world.pins.wait_unpinned(1, || panic!("no copy in flight")),
        0
    );
}
