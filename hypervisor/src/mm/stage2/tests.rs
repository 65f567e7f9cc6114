//! Host tests of `stage2`.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const RAM: MapAttrs = MapAttrs {
    mem: MemType::Normal,
    access: Access::ReadWrite,
    executable: true,
};
const MMIO: MapAttrs = MapAttrs {
    mem: MemType::Device,
    access: Access::ReadWrite,
    executable: false,
};
const GRANT_RO: MapAttrs = MapAttrs {
    mem: MemType::Normal,
    access: Access::ReadOnly,
    executable: false,
};

/// Tables in a map, with an optional allocation budget and counters (also used by the tests
/// of `ram_map`).
#[derive(Default)]
pub(crate) struct MockMem {
    tables: HashMap<u64, Box<[u64; ENTRIES]>>,
    next: u64,
    budget: Option<usize>,
    allocs: usize,
    frees: usize,
}

impl MockMem {
    pub(crate) fn new() -> Self {
        MockMem {
            next: 0x8000_0000,
            ..Default::default()
        }
    }
    fn live(&self) -> usize {
        self.tables.len()
    }
    fn snapshot(&self) -> BTreeMap<u64, [u64; ENTRIES]> {
        self.tables.iter().map(|(&pa, t)| (pa, **t)).collect()
    }
}

impl TableMemory for MockMem {
    fn alloc_table(&mut self) -> Option<u64> {
        if let Some(budget) = self.budget.as_mut() {
            *budget = budget.checked_sub(1)?;
        }
        let pa = self.next;
        self.next += PAGE_SIZE;
        self.allocs += 1;
        self.tables.insert(pa, Box::new([0; ENTRIES]));
        Some(pa)
    }
    fn free_table(&mut self, pa: u64) {
        assert!(
            self.tables.remove(&pa).is_some(),
            "double free of table {pa:#x}"
        );
        self.frees += 1;
    }
    fn table(&self, pa: u64) -> &[u64; ENTRIES] {
        &self.tables[&pa]
    }
    fn table_mut(&mut self, pa: u64) -> &mut [u64; ENTRIES] {
        self.tables.get_mut(&pa).expect("unknown table")
    }
}

/// The raw leaf descriptor for `ipa`, found by an independent walk.
fn raw_leaf(mem: &MockMem, s2: &Stage2, ipa: u64) -> u64 {
    let mut table = s2.root_pa();
    for level in 0..4u32 {
        let desc = mem.table(table)[((ipa >> (39 - 9 * level)) & 511) as usize];
        if level == 3 || desc & 0b11 != 0b11 {
            return desc;
        }
        table = desc & 0x0000_ffff_ffff_f000;
    }
    unreachable!()
}

fn setup() -> (MockMem, Stage2) {
    let mut mem = MockMem::new();
    let s2 = Stage2::new(&mut mem).unwrap();
    (mem, s2)
}

fn collect_unmap(
    s2: &mut Stage2,
    mem: &mut MockMem,
    ipa: u64,
    size: u64,
) -> Result<Vec<(u64, u64)>, Stage2Error> {
    let mut pieces = Vec::new();
    s2.unmap(
        mem,
        ipa,
        size,
        &mut |a, s| pieces.push((a, s)),
        &mut |_, _| {},
    )
    .map(|()| pieces)
}

#[test]
fn a_split_breaks_the_block_and_invalidates_it_before_the_table_goes_in() {
    let (mut mem, mut s2) = setup();
    s2.map(&mut mem, GIB, 0x4_0000_0000, 4 * MIB, RAM).unwrap();
    let mut broken = Vec::new();
    let mut pieces = Vec::new();
    // One page out of each of the two blocks, in one call: two splits.
    s2.unmap(
        &mut mem,
        GIB + 2 * MIB - PAGE_SIZE,
        2 * PAGE_SIZE,
        &mut |a, s| pieces.push((a, s)),
        &mut |a, s| broken.push((a, s)),
    )
    .unwrap();
    assert_eq!(broken, vec![(GIB, 2 * MIB), (GIB + 2 * MIB, 2 * MIB)]);
    assert_eq!(
        pieces,
        vec![
            (GIB + 2 * MIB - PAGE_SIZE, PAGE_SIZE),
            (GIB + 2 * MIB, PAGE_SIZE)
        ]
    );
    // Everything else still maps where it did, now with pages.
    for ipa in [
        GIB,
        GIB + 2 * MIB - 2 * PAGE_SIZE,
        GIB + 2 * MIB + PAGE_SIZE,
    ] {
        let t = s2.translate(&mem, ipa).unwrap();
        assert_eq!((t.pa, t.level), (0x4_0000_0000 + (ipa - GIB), 3));
    }
    assert!(s2.translate(&mem, GIB + 2 * MIB).is_none());
    // A page unmapped out of a table needs no break.
    broken.clear();
    s2.unmap(&mut mem, GIB, PAGE_SIZE, &mut |_, _| {}, &mut |a, s| {
        broken.push((a, s))
    })
    .unwrap();
    assert!(broken.is_empty());
}

#[test]
fn unmap_present_skips_holes_that_unmap_refuses() {
    let (mut mem, mut s2) = setup();
    s2.map(&mut mem, GIB, 0x4_0000_0000, 4 * MIB, RAM).unwrap();
    collect_unmap(&mut s2, &mut mem, GIB + MIB, PAGE_SIZE).unwrap();
    assert_eq!(
        collect_unmap(&mut s2, &mut mem, GIB, 4 * MIB),
        Err(Stage2Error::NotMapped)
    );
    let mut pieces = Vec::new();
    s2.unmap_present(
        &mut mem,
        GIB,
        4 * MIB,
        &mut |a, s| pieces.push((a, s)),
        &mut |_, _| {},
    )
    .unwrap();
    let unmapped: u64 = pieces.iter().map(|&(_, s)| s).sum();
    assert_eq!(unmapped, 4 * MIB - PAGE_SIZE);
    assert!(s2.translate(&mem, GIB).is_none());
    assert!(s2.translate(&mem, GIB + 3 * MIB).is_none());
    // Only the root is left.
    assert_eq!(mem.live(), 1);
}

#[test]
fn vtcr_fields() {
    // RES1 | PS=48 bits | SH0=IS | ORGN0=IRGN0=WBWA | SL0=level 0 | T0SZ=24.
    assert_eq!(vtcr_el2(0b101, false), 0x8005_3598);
    assert_eq!(vtcr_el2(0b101, true), 0x800D_3598);
    // 52-bit PARange (QEMU max) is capped at 48 bits; a smaller one passes through.
    assert_eq!(vtcr_el2(0b110, false), vtcr_el2(0b101, false));
    assert_eq!((vtcr_el2(0b010, false) >> VTCR_PS_SHIFT) & 0b111, 0b010);
    // Only PARange's own four bits are looked at.
    assert_eq!(vtcr_el2(0xf0 | 0b001, false), vtcr_el2(0b001, false));
}

#[test]
fn ram_uses_blocks_when_aligned() {
    let (mut mem, mut s2) = setup();
    s2.map(&mut mem, GIB, 0x4_0000_0000, 8 * MIB, RAM).unwrap();
    // Root, one level-1 and one level-2 table: four 2 MiB blocks need no level-3 table.
    assert_eq!(mem.live(), 3);
    let t = s2.translate(&mem, GIB + 3 * MIB + 0x123).unwrap();
    assert_eq!(
        t,
        Translation {
            pa: 0x4_0030_0123,
            attrs: RAM,
            level: 2
        }
    );
    let desc = raw_leaf(&mem, &s2, GIB);
    assert_eq!(desc & 0b11, 0b01, "block descriptor");
    assert_eq!((desc >> DESC_MEMATTR_SHIFT) & 0b1111, 0b1111);
    assert_eq!((desc >> DESC_S2AP_SHIFT) & 0b11, 0b11);
    assert_eq!((desc >> DESC_SH_SHIFT) & 0b11, 0b11);
    assert_ne!(desc & DESC_AF, 0);
    assert_eq!((desc >> DESC_XN_SHIFT) & 0b11, 0);
    assert_eq!(s2.translate(&mem, GIB + 8 * MIB), None);
    assert_eq!(s2.translate(&mem, GIB - 1), None);
}

#[test]
fn unaligned_edges_use_pages() {
    let (mut mem, mut s2) = setup();
    let ipa = GIB - 3 * PAGE_SIZE;
    let size = 3 * PAGE_SIZE + 4 * MIB + 2 * PAGE_SIZE;
    s2.map(&mut mem, ipa, 0x8_0000_0000 - 3 * PAGE_SIZE, size, RAM)
        .unwrap();
    let level = |a| s2.translate(&mem, a).unwrap().level;
    assert_eq!(level(ipa), 3);
    assert_eq!(level(GIB - PAGE_SIZE), 3);
    assert_eq!(level(GIB), 2);
    assert_eq!(level(GIB + 2 * MIB), 2);
    assert_eq!(level(GIB + 4 * MIB + PAGE_SIZE), 3);
    assert_eq!(s2.translate(&mem, GIB + 4 * MIB + 2 * PAGE_SIZE), None);
    assert_eq!(
        s2.translate(&mem, ipa + 5).unwrap().pa,
        0x8_0000_0000 - 3 * PAGE_SIZE + 5
    );
    assert_eq!(
        s2.translate(&mem, GIB + 4 * MIB + PAGE_SIZE).unwrap().pa,
        0x8_0040_1000
    );
}

#[test]
fn misaligned_pa_forces_pages() {
    let (mut mem, mut s2) = setup();
    s2.map(&mut mem, GIB, 0x4000_1000, 2 * MIB, RAM).unwrap();
    let t = s2.translate(&mem, GIB + MIB).unwrap();
    assert_eq!((t.level, t.pa), (3, 0x4010_1000));
}

#[test]
fn device_attrs_encode() {
    let (mut mem, mut s2) = setup();
    s2.map(&mut mem, 0x0800_0000, 0x0800_0000, 0x1_0000, MMIO)
        .unwrap();
    let desc = raw_leaf(&mem, &s2, 0x0800_0000);
    assert_eq!(desc & 0b11, 0b11, "page descriptor");
    assert_eq!((desc >> DESC_MEMATTR_SHIFT) & 0b1111, 0b0001);
    assert_eq!((desc >> DESC_S2AP_SHIFT) & 0b11, 0b11);
    assert_eq!((desc >> DESC_XN_SHIFT) & 0b11, 0b10);
    assert_ne!(desc & DESC_AF, 0);
    assert_eq!(desc & DESC_ADDR_MASK, 0x0800_0000);
    let t = s2.translate(&mem, 0x0800_f004).unwrap();
    assert_eq!(
        t,
        Translation {
            pa: 0x0800_f004,
            attrs: MMIO,
            level: 3
        }
    );
}

#[test]
fn read_only_grant_page() {
    let (mut mem, mut s2) = setup();
    s2.map(&mut mem, 0x9000_0000, 0x1234_5000, PAGE_SIZE, GRANT_RO)
        .unwrap();
    let desc = raw_leaf(&mem, &s2, 0x9000_0000);
    assert_eq!((desc >> DESC_S2AP_SHIFT) & 0b11, 0b01);
    assert_eq!((desc >> DESC_XN_SHIFT) & 0b11, 0b10);
    assert_eq!((desc >> DESC_MEMATTR_SHIFT) & 0b1111, 0b1111);
    let t = s2.translate(&mem, 0x9000_0010).unwrap();
    assert_eq!(
        t,
        Translation {
            pa: 0x1234_5010,
            attrs: GRANT_RO,
            level: 3
        }
    );
}

#[test]
fn bad_map_arguments_refused() {
    let (mut mem, mut s2) = setup();
    let before = mem.snapshot();
    let top = 1u64 << IPA_BITS;
    let cases = [
        (GIB, GIB, 0, Stage2Error::ZeroSize),
        (GIB + 1, GIB, PAGE_SIZE, Stage2Error::Unaligned),
        (GIB, GIB + 8, PAGE_SIZE, Stage2Error::Unaligned),
        (GIB, GIB, PAGE_SIZE + 1, Stage2Error::Unaligned),
        (top - PAGE_SIZE, GIB, 2 * PAGE_SIZE, Stage2Error::OutOfRange),
        (top, GIB, PAGE_SIZE, Stage2Error::OutOfRange),
        (!0xfff, GIB, PAGE_SIZE, Stage2Error::OutOfRange),
        (
            GIB,
            (1 << PA_BITS) - PAGE_SIZE,
            2 * PAGE_SIZE,
            Stage2Error::OutOfRange,
        ),
        (GIB, !0xfff, 2 * PAGE_SIZE, Stage2Error::OutOfRange),
    ];
    for (ipa, pa, size, err) in cases {
        assert_eq!(
            s2.map(&mut mem, ipa, pa, size, RAM),
            Err(err),
            "{ipa:#x} {pa:#x} {size:#x}"
        );
    }
    assert_eq!(mem.snapshot(), before);
    // The last page below the IPA limit is usable.
    s2.map(&mut mem, top - PAGE_SIZE, GIB, PAGE_SIZE, RAM)
        .unwrap();
    assert_eq!(s2.translate(&mem, top - 1).unwrap().pa, GIB + PAGE_SIZE - 1);
    assert_eq!(s2.translate(&mem, top), None);
}

#[test]
fn overlapping_map_refused_and_nothing_changed() {
    let (mut mem, mut s2) = setup();
    s2.map(&mut mem, GIB, GIB, 4 * MIB, RAM).unwrap();
    s2.map(&mut mem, 2 * GIB, 2 * GIB, PAGE_SIZE, RAM).unwrap();
    let before = mem.snapshot();
    // Ends inside a block; starts inside a block; swallows a page; exact duplicate.
    let cases = [
        (GIB - 2 * MIB, 3 * MIB),
        (GIB + 4 * MIB - PAGE_SIZE, 4 * MIB),
        (2 * GIB - 2 * MIB, 4 * MIB),
        (2 * GIB, PAGE_SIZE),
    ];
    for (ipa, size) in cases {
        assert_eq!(
            s2.map(&mut mem, ipa, 0x10_0000_0000, size, RAM),
            Err(Stage2Error::AlreadyMapped)
        );
    }
    assert_eq!(mem.snapshot(), before);
    // The neighbours are still free.
    s2.map(&mut mem, GIB + 4 * MIB, 0x10_0000_0000, PAGE_SIZE, RAM)
        .unwrap();
    s2.map(
        &mut mem,
        2 * GIB + PAGE_SIZE,
        0x10_0000_1000,
        PAGE_SIZE,
        RAM,
    )
    .unwrap();
}

#[test]
fn unmap_page_inside_block_splits_it() {
    let (mut mem, mut s2) = setup();
    s2.map(&mut mem, GIB, 0x4_0000_0000, 2 * MIB, RAM).unwrap();
    let hole = GIB + 0x5000;
    assert_eq!(
        collect_unmap(&mut s2, &mut mem, hole, PAGE_SIZE).unwrap(),
        vec![(hole, PAGE_SIZE)]
    );
    assert_eq!(s2.translate(&mem, hole), None);
    for ipa in (GIB..GIB + 2 * MIB)
        .step_by(PAGE_SIZE as usize)
        .filter(|&a| a != hole)
    {
        let t = s2.translate(&mem, ipa + 8).unwrap();
        assert_eq!(
            t,
            Translation {
                pa: 0x4_0000_0008 + (ipa - GIB),
                attrs: RAM,
                level: 3
            }
        );
    }
    // Cutting both ends of one block takes a single new table.
    let (mut mem, mut s2) = setup();
    s2.map(&mut mem, GIB, GIB, 2 * MIB, RAM).unwrap();
    let tables = mem.live();
    assert_eq!(
        collect_unmap(&mut s2, &mut mem, GIB + PAGE_SIZE, 2 * PAGE_SIZE)
            .unwrap()
            .len(),
        2
    );
    assert_eq!(mem.live(), tables + 1);
    // Cutting two different blocks takes two.
    s2.map(&mut mem, GIB + 2 * MIB, GIB + 2 * MIB, 2 * MIB, RAM)
        .unwrap();
    let pieces =
        collect_unmap(&mut s2, &mut mem, GIB + 2 * MIB - PAGE_SIZE, 2 * PAGE_SIZE).unwrap();
    assert_eq!(
        pieces,
        vec![
            (GIB + 2 * MIB - PAGE_SIZE, PAGE_SIZE),
            (GIB + 2 * MIB, PAGE_SIZE)
        ]
    );
    assert_eq!(mem.live(), tables + 2);
}

#[test]
fn unmap_whole_blocks_reports_blocks_and_frees_tables() {
    let (mut mem, mut s2) = setup();
    s2.map(
        &mut mem,
        GIB - PAGE_SIZE,
        GIB - PAGE_SIZE,
        4 * MIB + 2 * PAGE_SIZE,
        RAM,
    )
    .unwrap();
    s2.map(&mut mem, 0x0800_0000, 0x0800_0000, 0x1_0000, MMIO)
        .unwrap();
    assert!(mem.live() > 1);
    let pieces =
        collect_unmap(&mut s2, &mut mem, GIB - PAGE_SIZE, 4 * MIB + 2 * PAGE_SIZE).unwrap();
    let expected = vec![
        (GIB - PAGE_SIZE, PAGE_SIZE),
        (GIB, 2 * MIB),
        (GIB + 2 * MIB, 2 * MIB),
        (GIB + 4 * MIB, PAGE_SIZE),
    ];
    assert_eq!(pieces, expected);
    assert_eq!(
        collect_unmap(&mut s2, &mut mem, 0x0800_0000, 0x1_0000)
            .unwrap()
            .len(),
        16
    );
    assert_eq!(mem.live(), 1, "only the root is left");
    assert_eq!(
        mem.tables.keys().copied().collect::<Vec<_>>(),
        vec![s2.root_pa()]
    );
}

#[test]
fn unmap_of_unmapped_range_refused() {
    let (mut mem, mut s2) = setup();
    assert_eq!(
        collect_unmap(&mut s2, &mut mem, GIB, PAGE_SIZE),
        Err(Stage2Error::NotMapped)
    );
    s2.map(&mut mem, GIB, GIB, 2 * MIB, RAM).unwrap();
    let before = mem.snapshot();
    // Partly mapped on either side.
    assert_eq!(
        collect_unmap(&mut s2, &mut mem, GIB - PAGE_SIZE, 2 * PAGE_SIZE),
        Err(Stage2Error::NotMapped)
    );
    assert_eq!(
        collect_unmap(&mut s2, &mut mem, GIB, 2 * MIB + PAGE_SIZE),
        Err(Stage2Error::NotMapped)
    );
    assert_eq!(
        collect_unmap(&mut s2, &mut mem, GIB, 0),
        Err(Stage2Error::ZeroSize)
    );
    assert_eq!(
        collect_unmap(&mut s2, &mut mem, GIB + 1, PAGE_SIZE),
        Err(Stage2Error::Unaligned)
    );
    assert_eq!(
        collect_unmap(&mut s2, &mut mem, 1 << IPA_BITS, PAGE_SIZE),
        Err(Stage2Error::OutOfRange)
    );
    assert_eq!(mem.snapshot(), before);
}

#[test]
fn out_of_memory_midway_rolls_back() {
    let (mut mem, mut s2) = setup();
    s2.map(&mut mem, GIB, GIB, PAGE_SIZE, RAM).unwrap();
    let before = mem.snapshot();
    // Needs an L2 for the two blocks below 512 GiB, then L1 + L2 + L3 for the page above it;
    // with three tables it fails after mapping the blocks.
    mem.budget = Some(3);
    let ipa = (512 * GIB) - 4 * MIB;
    let err = s2.map(&mut mem, ipa, 0x10_0000_0000, 4 * MIB + PAGE_SIZE, RAM);
    assert_eq!(err, Err(Stage2Error::OutOfMemory));
    assert_eq!(mem.snapshot(), before);
    assert_eq!(
        (mem.allocs, mem.frees),
        (7, 3),
        "three tables were taken, then given back"
    );
    assert_eq!(
        mem.allocs - mem.frees,
        4,
        "root and the first mapping's three tables only"
    );
    // With enough tables the same call works.
    mem.budget = None;
    s2.map(&mut mem, ipa, 0x10_0000_0000, 4 * MIB + PAGE_SIZE, RAM)
        .unwrap();
    assert_eq!(s2.translate(&mem, 512 * GIB).unwrap().level, 3);
}

#[test]
fn out_of_memory_for_split_changes_nothing() {
    let (mut mem, mut s2) = setup();
    s2.map(&mut mem, GIB, GIB, 4 * MIB, RAM).unwrap();
    let before = mem.snapshot();
    mem.budget = Some(0);
    assert_eq!(
        collect_unmap(&mut s2, &mut mem, GIB + PAGE_SIZE, PAGE_SIZE),
        Err(Stage2Error::OutOfMemory)
    );
    // Two blocks to cut, one table available: the one taken is given back.
    mem.budget = Some(1);
    let straddle = collect_unmap(&mut s2, &mut mem, GIB + 2 * MIB - PAGE_SIZE, 2 * PAGE_SIZE);
    assert_eq!(straddle, Err(Stage2Error::OutOfMemory));
    assert_eq!(mem.snapshot(), before);
}

#[test]
fn new_without_memory_fails() {
    let mut mem = MockMem {
        budget: Some(0),
        ..MockMem::new()
    };
    assert_eq!(Stage2::new(&mut mem).unwrap_err(), Stage2Error::OutOfMemory);
}

#[test]
fn destroy_frees_all_tables() {
    let (mut mem, mut s2) = setup();
    s2.map(&mut mem, GIB - PAGE_SIZE, GIB, 6 * MIB, RAM)
        .unwrap();
    s2.map(&mut mem, 600 * GIB, GIB, 2 * MIB, RAM).unwrap();
    s2.map(&mut mem, 0x0800_0000, 0x0800_0000, 0x1_0000, MMIO)
        .unwrap();
    assert!(mem.live() > 5);
    s2.destroy(&mut mem);
    assert_eq!(mem.live(), 0);
    assert_eq!(mem.allocs, mem.frees);
}

#[test]
fn errors_display() {
    let all = [
        Stage2Error::Unaligned,
        Stage2Error::ZeroSize,
        Stage2Error::OutOfRange,
        Stage2Error::AlreadyMapped,
        Stage2Error::NotMapped,
        Stage2Error::OutOfMemory,
    ];
    let texts: std::collections::BTreeSet<String> = all.iter().map(|e| e.to_string()).collect();
    assert_eq!(texts.len(), all.len());
}

#[derive(Clone, Debug)]
enum Op {
    Map { page: u64, pages: u64, pa_page: u64 },
    Unmap { page: u64, pages: u64 },
}

/// A 6 MiB window that straddles a level-1 boundary, so blocks, pages and table freeing all
/// happen.
const WINDOW: u64 = GIB - 2 * MIB;
const WINDOW_PAGES: u64 = 1536;

fn op() -> impl Strategy<Value = Op> {
    let span = (0..WINDOW_PAGES, prop_oneof![1..4u64, 1..1100u64]);
    prop_oneof![
        (span.clone(), 0..4u64, 0..2048u64).prop_map(|((page, pages), kind, off)| {
            // Often make pa congruent to ipa modulo 2 MiB so blocks get used.
            let pa_page = if kind == 0 {
                0x10_0000 + off
            } else {
                0x10_0000 + page
            };
            Op::Map {
                page,
                pages,
                pa_page,
            }
        }),
        span.prop_map(|(page, pages)| Op::Unmap { page, pages }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_map_unmap_matches_model(ops in proptest::collection::vec(op(), 1..25)) {
        let (mut mem, mut s2) = setup();
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Map { page, pages, pa_page } => {
                    let pages = pages.min(WINDOW_PAGES - page);
                    let free = (page..page + pages).all(|p| !model.contains_key(&p));
                    let r = s2.map(&mut mem, WINDOW + page * PAGE_SIZE, pa_page * PAGE_SIZE, pages * PAGE_SIZE, RAM);
                    prop_assert_eq!(r.is_ok(), free);
                    if free {
                        for i in 0..pages {
                            model.insert(page + i, (pa_page + i) * PAGE_SIZE);
                        }
                    } else {
                        prop_assert_eq!(r, Err(Stage2Error::AlreadyMapped));
                    }
                }
                Op::Unmap { page, pages } => {
                    let pages = pages.min(WINDOW_PAGES - page);
                    let mapped = (page..page + pages).all(|p| model.contains_key(&p));
                    let r = collect_unmap(&mut s2, &mut mem, WINDOW + page * PAGE_SIZE, pages * PAGE_SIZE);
                    prop_assert_eq!(r.is_ok(), mapped);
                    if let Ok(pieces) = r {
                        // The pieces tile the range exactly, in order.
                        let mut at = WINDOW + page * PAGE_SIZE;
                        for (ipa, size) in pieces {
                            prop_assert_eq!(ipa, at);
                            prop_assert!(size == PAGE_SIZE || size == BLOCK_SIZE);
                            at += size;
                        }
                        prop_assert_eq!(at, WINDOW + (page + pages) * PAGE_SIZE);
                        for p in page..page + pages {
                            model.remove(&p);
                        }
                    } else {
                        prop_assert_eq!(r, Err(Stage2Error::NotMapped));
                    }
                }
            }
            for p in 0..WINDOW_PAGES {
                let got = s2.translate(&mem, WINDOW + p * PAGE_SIZE).map(|t| t.pa);
                prop_assert_eq!(got, model.get(&p).copied(), "page {}", p);
            }
        }
        // Unmapping what is left, run by run, leaves only the root.
        let pages: Vec<u64> = model.keys().copied().collect();
        for p in pages {
            collect_unmap(&mut s2, &mut mem, WINDOW + p * PAGE_SIZE, PAGE_SIZE).unwrap();
        }
        prop_assert_eq!(mem.live(), 1);
        s2.destroy(&mut mem);
        prop_assert_eq!(mem.live(), 0);
    }
}
