//! The balloon's rules against a model machine: a stage 2 as a map, a credit of frames, and a
//! property test of release/populate sequences against a simple model of the VM's memory.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

const RAM_PA: u64 = 0x8000_0000;
const RAM_BYTES: u64 = 8 << 20;
const ARRAY: u64 = GUEST_RAM_BASE + 0x1000;

/// The machine as the balloon sees it, for one VM.
struct Model {
    /// GPA → host frame, what the VM's stage 2 maps.
    stage2: BTreeMap<u64, u64>,
    array: Vec<u64>,
    busy: BTreeSet<u64>,
    credit: Vec<u64>,
    scrubbed: Vec<u64>,
    heap_low: bool,
    tables_left: Option<usize>,
}

impl Model {
    /// The array at `gpa` as the binary reads it (only [`ARRAY`] is in RAM).
    fn read(&self, gpa: u64, count: u64) -> Option<Vec<u64>> {
        read_batch(count, |n| {
            (gpa == ARRAY && n <= self.array.len()).then(|| self.array[..n].to_vec())
        })
    }

    fn new() -> Model {
        let stage2 = (0..RAM_BYTES / PAGE_SIZE)
            .map(|p| (GUEST_RAM_BASE + p * PAGE_SIZE, RAM_PA + p * PAGE_SIZE))
            .collect();
        Model {
            stage2,
            array: Vec::new(),
            busy: BTreeSet::new(),
            credit: Vec::new(),
            scrubbed: Vec::new(),
            heap_low: false,
            tables_left: None,
        }
    }

    fn with_array(mut self, gpas: &[u64]) -> Model {
        self.array = gpas.to_vec();
        self
    }
}

impl BalloonEnv for Model {
    fn in_use(&self, gpa: u64) -> bool {
        self.busy.contains(&gpa)
    }
    fn unmap(&mut self, gpa: u64) -> bool {
        if let Some(left) = self.tables_left.as_mut() {
            if *left == 0 {
                return false;
            }
            *left -= 1;
        }
        assert!(
            self.stage2.remove(&gpa).is_some(),
            "unmap of unmapped {gpa:#x}"
        );
        true
    }
    fn map(&mut self, gpa: u64, pa: u64) -> bool {
        if let Some(left) = self.tables_left.as_mut() {
            if *left == 0 {
                return false;
            }
            *left -= 1;
        }
        assert!(self.stage2.insert(gpa, pa).is_none(), "map over {gpa:#x}");
        true
    }
    fn give_ram_frame(&mut self, pa: u64) {
        self.scrubbed.push(pa);
        self.credit.push(pa);
    }
    fn give_frame(&mut self, pa: u64) {
        self.scrubbed.push(pa);
        self.credit.push(pa);
    }
    fn take_frame(&mut self) -> Option<u64> {
        self.credit.pop()
    }
    fn heap_low(&self) -> bool {
        self.heap_low
    }
}

/// A release call as the binary makes it: the array read, then the pages released.
fn release(b: &mut VmBalloon, m: &mut Model, array: u64, count: u64) -> BatchResult {
    match m.read(array, count) {
        Some(pages) => b.release(m, RAM_PA, &pages),
        None => BatchResult {
            status: Status::InvalidArgument,
            done: 0,
        },
    }
}

/// A populate call as the binary makes it.
fn populate(b: &mut VmBalloon, m: &mut Model, array: u64, count: u64) -> BatchResult {
    match m.read(array, count) {
        Some(pages) => b.populate(m, &pages),
        None => BatchResult {
            status: Status::InvalidArgument,
            done: 0,
        },
    }
}

fn page(n: u64) -> u64 {
    GUEST_RAM_BASE + n * PAGE_SIZE
}

#[test]
fn released_pages_leave_the_stage2_scrubbed_and_credited() {
    let mut b = VmBalloon::new(RAM_BYTES, 0);
    let mut m = Model::new().with_array(&[page(100), page(101), page(1000)]);
    let r = release(&mut b, &mut m, ARRAY, 3);
    assert_eq!(
        r,
        BatchResult {
            status: Status::Ok,
            done: 3
        }
    );
    assert_eq!(b.pages(), RAM_BYTES / PAGE_SIZE - 3);
    for n in [100, 101, 1000] {
        assert!(!m.stage2.contains_key(&page(n)));
        assert!(b.gave_page_at(page(n) + 8));
        assert!(m.credit.contains(&(RAM_PA + n * PAGE_SIZE)));
    }
    assert_eq!(m.scrubbed.len(), 3);
    // The hypervisor may not touch a range that overlaps a given page, and may touch the rest.
    assert!(b.off_limits(100 * PAGE_SIZE + 4000, 200));
    assert!(!b.off_limits(99 * PAGE_SIZE, PAGE_SIZE));
    assert!(!b.off_limits(102 * PAGE_SIZE, 8));
    // What it keeps, as runs of its RAM.
    assert_eq!(
        b.kept_runs(),
        vec![(0, 100), (102, 898), (1001, RAM_BYTES / PAGE_SIZE - 1001)]
    );
}

#[test]
fn each_refusal_ends_the_batch_with_its_status() {
    let pages = RAM_BYTES / PAGE_SIZE;
    let cases: Vec<(u64, Status)> = vec![
        (page(5) + 8, Status::InvalidArgument),
        (GUEST_RAM_BASE - PAGE_SIZE, Status::InvalidArgument),
        (WINDOW.1, Status::InvalidArgument),
        // Above its RAM, never populated: not its memory.
        (page(pages), Status::InvalidArgument),
        (page(7), Status::Busy),
    ];
    for (bad, status) in cases {
        let mut b = VmBalloon::new(RAM_BYTES, 0);
        let mut m = Model::new().with_array(&[page(3), bad, page(4)]);
        m.busy.insert(page(7));
        let r = release(&mut b, &mut m, ARRAY, 3);
        assert_eq!(r, BatchResult { status, done: 1 }, "{bad:#x}");
        assert!(m.stage2.contains_key(&page(4)), "nothing after the refusal");
    }
    // Twice the same page: the second is not its memory any more.
    let mut b = VmBalloon::new(RAM_BYTES, 0);
    let mut m = Model::new().with_array(&[page(3), page(3)]);
    assert_eq!(
        release(&mut b, &mut m, ARRAY, 2),
        BatchResult {
            status: Status::InvalidArgument,
            done: 1
        }
    );
    // A bad array or count: nothing at all.
    for (array, count) in [(ARRAY + 8, 1), (ARRAY, 0), (ARRAY, MAX_BATCH + 1)] {
        let r = release(&mut b, &mut m, array, count);
        assert_eq!(r.status, Status::InvalidArgument);
        assert_eq!(r.done, 0);
    }
    // No table for the split: NoSpace, and the page stays the VM's.
    let mut m = Model::new().with_array(&[page(9)]);
    m.tables_left = Some(0);
    let r = release(&mut b, &mut m, ARRAY, 1);
    assert_eq!(r.status, Status::NoSpace);
    assert!(!b.gave_page_at(page(9)));
    assert!(m.credit.is_empty());
}

#[test]
fn shared_code_pages_are_never_given_populated_or_touched() {
    let code_pages = 120;
    let mut b = VmBalloon::new(RAM_BYTES, code_pages * PAGE_SIZE);
    assert_eq!(b.code_bytes(), code_pages * PAGE_SIZE);
    // Its memory is still all of its RAM: the code pages count as the VM's.
    assert_eq!(b.pages(), RAM_BYTES / PAGE_SIZE);
    for (i, code) in [page(0), page(1), page(code_pages - 1)]
        .into_iter()
        .enumerate()
    {
        // One page of its own RAM first (a fresh one each time), then the code page.
        let own = page(code_pages + 10 * i as u64);
        let mut m = Model::new().with_array(&[own, code, own + PAGE_SIZE]);
        assert_eq!(
            release(&mut b, &mut m, ARRAY, 3),
            BatchResult {
                status: Status::InvalidArgument,
                done: 1
            },
            "{code:#x}"
        );
        assert!(m.stage2.contains_key(&code), "the code page stays mapped");
        assert!(!m.credit.contains(&(RAM_PA + (code - GUEST_RAM_BASE))));
        m.array = vec![code];
        assert_eq!(
            populate(&mut b, &mut m, ARRAY, 1).status,
            Status::InvalidArgument
        );
    }
    // The hypervisor does not touch a range that reaches into the code, and does touch the rest.
    assert!(b.off_limits(0, 8));
    assert!(b.off_limits((code_pages - 1) * PAGE_SIZE + 4088, 16));
    assert!(!b.off_limits((code_pages + 5) * PAGE_SIZE, PAGE_SIZE));
    // The code's frames are still its RAM's, freed with it.
    assert_eq!(b.kept_runs().first(), Some(&(0, code_pages)));
    // A record longer than the RAM is clipped to it.
    assert_eq!(
        VmBalloon::new(8 * PAGE_SIZE, 16 * PAGE_SIZE).code_bytes(),
        8 * PAGE_SIZE
    );
}

#[test]
fn a_renewed_record_keeps_the_ram_and_code_and_forgets_the_rest() {
    let code_pages = 120;
    let mut b = VmBalloon::new(RAM_BYTES, code_pages * PAGE_SIZE);
    let mut m = Model::new().with_array(&[page(200), page(201)]);
    assert_eq!(release(&mut b, &mut m, ARRAY, 2).status, Status::Ok);
    m.credit.push(0x9000_0000);
    m.array = vec![page(200)];
    assert_eq!(populate(&mut b, &mut m, ARRAY, 1).status, Status::Ok);
    assert_eq!(b.given_pages(), 2);
    assert_eq!(b.populated_pages(), 1);
    let fresh = b.renewed();
    assert_eq!(fresh.given_pages(), 0);
    assert_eq!(fresh.populated_pages(), 0);
    assert_eq!(fresh.pages(), RAM_BYTES / PAGE_SIZE);
    assert_eq!(fresh.code_bytes(), code_pages * PAGE_SIZE);
    assert!(fresh.off_limits(0, 8));
    assert!(!fresh.off_limits(200 * PAGE_SIZE, 8));
}

#[test]
fn the_floor_is_kept() {
    let floor = FLOOR_BYTES / PAGE_SIZE;
    let pages = RAM_BYTES / PAGE_SIZE;
    let mut b = VmBalloon::new(RAM_BYTES, 0);
    let all: Vec<u64> = (0..pages).map(page).collect();
    let mut m = Model::new().with_array(&all);
    let mut given = 0;
    let mut last = Status::Ok;
    for chunk in 0..pages.div_ceil(MAX_BATCH) {
        m.array = all[(chunk * MAX_BATCH) as usize..]
            .iter()
            .take(MAX_BATCH as usize)
            .copied()
            .collect();
        let count = m.array.len() as u64;
        let r = release(&mut b, &mut m, ARRAY, count);
        given += r.done;
        last = r.status;
        if r.status != Status::Ok {
            break;
        }
    }
    assert_eq!(last, Status::Denied);
    assert_eq!(given, pages - floor);
    assert_eq!(b.pages(), floor);
}

#[test]
fn populate_takes_only_the_credit_and_only_unmapped_pages() {
    let pages = RAM_BYTES / PAGE_SIZE;
    let mut giver = VmBalloon::new(RAM_BYTES, 0);
    let mut m = Model::new().with_array(&[page(10), page(11)]);
    release(&mut giver, &mut m, ARRAY, 2);
    let credit = m.credit.clone();

    // The taker: another VM's machine sharing the credit.
    let mut taker = VmBalloon::new(RAM_BYTES, 0);
    let mut t = Model::new().with_array(&[page(pages), page(pages + 1), page(pages + 2)]);
    t.credit = credit;
    let r = populate(&mut taker, &mut t, ARRAY, 3);
    // Two frames were given, so two pages; the third gets what is free: NoSpace.
    assert_eq!(
        r,
        BatchResult {
            status: Status::NoSpace,
            done: 2
        }
    );
    assert_eq!(taker.pages(), pages + 2);
    assert!(t.stage2.contains_key(&page(pages + 1)));
    assert!(!t.stage2.contains_key(&page(pages + 2)));

    // Mapped already (its RAM, or populated), unaligned, outside: InvalidArgument, no frame used.
    for bad in [page(3), page(pages), page(pages) + 1, WINDOW.1, 0] {
        t.array = vec![bad];
        t.credit = vec![0x9000_0000];
        let r = populate(&mut taker, &mut t, ARRAY, 1);
        assert_eq!(
            r,
            BatchResult {
                status: Status::InvalidArgument,
                done: 0
            },
            "{bad:#x}"
        );
        assert_eq!(t.credit, vec![0x9000_0000]);
    }
    // A hole it gave back can be filled again, and given back again.
    t.array = vec![page(20)];
    assert_eq!(release(&mut taker, &mut t, ARRAY, 1).status, Status::Ok);
    assert!(taker.gave_page_at(page(20)));
    t.credit = vec![0x9000_0000];
    assert_eq!(populate(&mut taker, &mut t, ARRAY, 1).status, Status::Ok);
    assert_eq!(t.stage2[&page(20)], 0x9000_0000);
    assert!(!taker.gave_page_at(page(20)));
    // Still not memory the hypervisor may touch for it: the RAM frame behind it is gone.
    assert!(taker.off_limits(20 * PAGE_SIZE, 1));
    assert_eq!(release(&mut taker, &mut t, ARRAY, 1).status, Status::Ok);
    assert_eq!(t.credit.last(), Some(&0x9000_0000));
    // A low heap, or no table for the mapping: NoSpace, and the frame stays in the credit.
    t.array = vec![page(pages + 5)];
    t.heap_low = true;
    assert_eq!(
        populate(&mut taker, &mut t, ARRAY, 1).status,
        Status::NoSpace
    );
    t.heap_low = false;
    t.tables_left = Some(0);
    let before = t.credit.len();
    assert_eq!(
        populate(&mut taker, &mut t, ARRAY, 1).status,
        Status::NoSpace
    );
    assert_eq!(t.credit.len(), before);
}

#[test]
fn stopping_hands_back_the_populated_frames() {
    let pages = RAM_BYTES / PAGE_SIZE;
    let mut b = VmBalloon::new(RAM_BYTES, 0);
    let mut m = Model::new().with_array(&[page(pages), page(pages + 9)]);
    m.credit = vec![0x9000_0000, 0x9000_1000];
    populate(&mut b, &mut m, ARRAY, 2);
    let mut frames: Vec<u64> = b.take_populated().into_iter().map(|(_, pa)| pa).collect();
    frames.sort();
    assert_eq!(frames, vec![0x9000_0000, 0x9000_1000]);
    assert_eq!(b.pages(), pages);
    assert_eq!(b.kept_runs(), vec![(0, pages)]);
}

#[derive(Clone, Debug)]
enum Op {
    Release(Vec<u64>),
    Populate(Vec<u64>),
}

fn gpa() -> impl Strategy<Value = u64> {
    // Pages of its RAM and above it, and now and then a bad address.
    prop_oneof![
        8 => (0..RAM_BYTES / PAGE_SIZE + 64).prop_map(page),
        1 => any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        proptest::collection::vec(gpa(), 1..20).prop_map(Op::Release),
        proptest::collection::vec(gpa(), 1..20).prop_map(Op::Populate),
    ]
}

proptest! {
    /// Whatever a guest asks, the stage 2 maps exactly the VM's memory as the record says, no
    /// frame is ever in two places (the VM's stage 2 and the credit), and frames are conserved.
    #[test]
    fn the_record_the_stage2_and_the_credit_always_agree(ops in proptest::collection::vec(op(), 1..30)) {
        let mut b = VmBalloon::new(RAM_BYTES, 0);
        let mut m = Model::new();
        // Frames of another VM's giving, so that populate has something to take.
        m.credit = (0..32).map(|i| 0x9000_0000 + i * PAGE_SIZE).collect();
        let total = m.stage2.len() + m.credit.len();
        for op in ops {
            let (gpas, giving) = match op {
                Op::Release(g) => (g, true),
                Op::Populate(g) => (g, false),
            };
            m.array = gpas.clone();
            let r = if giving {
                release(&mut b, &mut m, ARRAY, gpas.len() as u64)
            } else {
                populate(&mut b, &mut m, ARRAY, gpas.len() as u64)
            };
            prop_assert!(r.done <= gpas.len() as u64);
            prop_assert_eq!(r.status == Status::Ok, r.done == gpas.len() as u64);
            prop_assert_eq!(m.stage2.len() as u64, b.pages());
            prop_assert!(b.pages() >= FLOOR_BYTES / PAGE_SIZE);
            prop_assert_eq!(m.stage2.len() + m.credit.len(), total);
            let mapped: BTreeSet<u64> = m.stage2.values().copied().collect();
            prop_assert_eq!(mapped.len(), m.stage2.len());
            for pa in &m.credit {
                prop_assert!(!mapped.contains(pa), "frame {:#x} in both", pa);
            }
            for &gpa in m.stage2.keys() {
                prop_assert!(!b.gave_page_at(gpa));
            }
        }
        let kept: u64 = b.kept_runs().iter().map(|&(_, n)| n).sum();
        prop_assert_eq!(kept + b.given_pages(), RAM_BYTES / PAGE_SIZE);
    }
}

#[test]
fn a_populate_reserves_what_the_batch_can_use_and_no_more() {
    use super::populate_reserve;
    assert_eq!(populate_reserve(10, 100), 10);
    assert_eq!(populate_reserve(100, 10), 10);
    assert_eq!(populate_reserve(MAX_BATCH, u64::MAX), MAX_BATCH);
    // Counts the call refuses (read_batch) reserve nothing, whatever the credit.
    assert_eq!(populate_reserve(0, 100), 0);
    assert_eq!(populate_reserve(MAX_BATCH + 1, u64::MAX), 0);
    assert_eq!(populate_reserve(u64::MAX, u64::MAX), 0);
    assert_eq!(populate_reserve(5, 0), 0);
}
