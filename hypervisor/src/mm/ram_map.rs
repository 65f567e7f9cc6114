//! How a VM's RAM window is mapped at stage 2: its own frames read-write, except the read-only
//! part of its image (`shared_abi::image`), which is mapped read-only and executable from the
//! hypervisor's one copy of it ([`SharedCode`]), in every VM that runs that image.
//!
//! Why: VMs of one image then run the same host pages of code. QEMU keys its translated code by
//! physical address, so it translates the code once instead of once per VM, and the host's
//! caches hold one copy of the hot code instead of one per VM (measured in
//! `docs/ARCHITECTURE.md`, "Shared code pages"). No VM can change what another runs: a write to
//! the range is a stage-2 permission fault that kills the writer.
//!
//! The VM's own frames behind that range stay allocated (its RAM is one run of frames) but are
//! not what it sees, so the hypervisor never touches them on its behalf:
//! `VmBalloon::off_limits` and the copy view refuse the range.

use alloc::vec::Vec;

use shared_abi::layout::{GUEST_RAM_BASE, PAGE_SIZE};

use super::stage2::{Access, MapAttrs, MemType};

/// How a VM's own RAM is mapped at stage 2.
pub const RAM_ATTRS: MapAttrs = MapAttrs {
    mem: MemType::Normal,
    access: Access::ReadWrite,
    executable: true,
};

/// How an image's shared code is mapped at stage 2.
pub const CODE_ATTRS: MapAttrs = MapAttrs {
    mem: MemType::Normal,
    access: Access::ReadOnly,
    executable: true,
};

/// The hypervisor's copy of an image's read-only part: host address and length (a page
/// multiple). Made once at boot and never freed, so every VM of the image, in every
/// incarnation, maps the same frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedCode {
    pub pa: u64,
    pub bytes: u64,
}

/// One stage-2 mapping of a VM's RAM window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamPiece {
    pub ipa: u64,
    pub pa: u64,
    pub bytes: u64,
    pub attrs: MapAttrs,
}

/// The mappings of a VM's RAM window: its shared code (if any) from `code`, then the runs
/// `(first page, pages)` of its own RAM at `ram_pa` (all of it, `[(0, pages)]`, for a fresh
/// VM; what it kept of it after the balloon otherwise), without the part the code covers.
pub fn ram_pieces(ram_pa: u64, runs: &[(u64, u64)], code: Option<SharedCode>) -> Vec<RamPiece> {
    let code_pages = code.map_or(0, |c| c.bytes / PAGE_SIZE);
    let mut pieces = Vec::with_capacity(runs.len() + 1);
    if let Some(code) = code.filter(|c| c.bytes >= PAGE_SIZE) {
        pieces.push(RamPiece {
            ipa: GUEST_RAM_BASE,
            pa: code.pa,
            bytes: code_pages * PAGE_SIZE,
            attrs: CODE_ATTRS,
        });
    }
    for &(first, pages) in runs {
        let start = first.max(code_pages);
        let end = first.saturating_add(pages);
        if start < end {
            pieces.push(RamPiece {
                ipa: GUEST_RAM_BASE + start * PAGE_SIZE,
                pa: ram_pa + start * PAGE_SIZE,
                bytes: (end - start) * PAGE_SIZE,
                attrs: RAM_ATTRS,
            });
        }
    }
    pieces
}

/// Runs `(first page, pages)` of a VM's RAM, in order.
pub type PageRuns = Vec<(u64, u64)>;

/// The RAM pages of guest frames `frames` (guest frame numbers) that lie in a RAM window of
/// `ram_pages` pages, as page indices from its start, sorted and each once.
pub fn ram_pages_of_frames(frames: &[u64], ram_pages: u64) -> Vec<u64> {
    let first = GUEST_RAM_BASE / PAGE_SIZE;
    let mut pages: Vec<u64> = frames
        .iter()
        .filter_map(|&frame| frame.checked_sub(first))
        .filter(|&page| page < ram_pages)
        .collect();
    pages.sort_unstable();
    pages.dedup();
    pages
}

/// Splits the runs `(first page, pages)` of a dead incarnation's RAM into what can be freed now
/// and what peers still map (`lent`: page indices, sorted): the lent pages that lie in a run,
/// as runs of their own, are kept until the last mapping goes, everything else is freed at
/// once. So RAM kept for peers is bounded by what they map (their mapping budgets), not by
/// how many incarnations a VM goes through while one page of each is mapped.
pub fn split_lent(runs: &[(u64, u64)], lent: &[u64]) -> (PageRuns, PageRuns) {
    let (mut free, mut kept) = (Vec::new(), Vec::new());
    let push = |out: &mut Vec<(u64, u64)>, first: u64, end: u64| {
        if end <= first {
            return;
        }
        match out.last_mut() {
            Some((at, pages)) if *at + *pages == first => *pages += end - first,
            _ => out.push((first, end - first)),
        }
    };
    for &(first, pages) in runs {
        let end = first.saturating_add(pages);
        let mut at = first;
        let from = lent.partition_point(|&page| page < first);
        for &page in lent.iter().skip(from).take_while(|&&page| page < end) {
            push(&mut free, at, page);
            push(&mut kept, page, page + 1);
            at = page + 1;
        }
        push(&mut free, at, end);
    }
    (free, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM_PA: u64 = 0x8000_0000;
    const CODE_PA: u64 = 0x7000_0000;
    const PAGES: u64 = 512;

    fn own(first: u64, pages: u64) -> RamPiece {
        RamPiece {
            ipa: GUEST_RAM_BASE + first * PAGE_SIZE,
            pa: RAM_PA + first * PAGE_SIZE,
            bytes: pages * PAGE_SIZE,
            attrs: RAM_ATTRS,
        }
    }

    fn code(pages: u64) -> RamPiece {
        RamPiece {
            ipa: GUEST_RAM_BASE,
            pa: CODE_PA,
            bytes: pages * PAGE_SIZE,
            attrs: CODE_ATTRS,
        }
    }

    fn shared(pages: u64) -> Option<SharedCode> {
        Some(SharedCode {
            pa: CODE_PA,
            bytes: pages * PAGE_SIZE,
        })
    }

    #[test]
    fn without_shared_code_the_ram_is_one_read_write_piece() {
        assert_eq!(ram_pieces(RAM_PA, &[(0, PAGES)], None), [own(0, PAGES)]);
        assert_eq!(
            ram_pieces(RAM_PA, &[(0, PAGES)], shared(0)),
            [own(0, PAGES)]
        );
    }

    #[test]
    fn the_code_comes_from_the_shared_copy_read_only_and_the_rest_is_the_vms_own() {
        assert_eq!(
            ram_pieces(RAM_PA, &[(0, PAGES)], shared(121)),
            [code(121), own(121, PAGES - 121)]
        );
    }

    #[test]
    fn mapped_into_a_stage2_the_code_translates_to_the_copy_read_only() {
        use crate::mm::stage2::tests::MockMem;
        use crate::mm::stage2::Stage2;
        let mut mem = MockMem::new();
        let mut stage2 = Stage2::new(&mut mem).unwrap();
        // 2 MiB of RAM, 121 pages of code: the code's 2 MiB block is split into pages.
        for p in ram_pieces(RAM_PA, &[(0, PAGES)], shared(121)) {
            stage2.map(&mut mem, p.ipa, p.pa, p.bytes, p.attrs).unwrap();
        }
        let at = |page: u64| stage2.translate(&mem, GUEST_RAM_BASE + page * PAGE_SIZE + 8);
        for page in [0, 1, 120] {
            let t = at(page).unwrap();
            assert_eq!(t.pa, CODE_PA + page * PAGE_SIZE + 8);
            assert_eq!(t.attrs.access, Access::ReadOnly);
            assert!(t.attrs.executable);
        }
        for page in [121, 300, PAGES - 1] {
            let t = at(page).unwrap();
            assert_eq!(t.pa, RAM_PA + page * PAGE_SIZE + 8);
            assert_eq!(t.attrs, RAM_ATTRS);
        }
        assert_eq!(at(PAGES), None);
    }

    #[test]
    fn kept_runs_skip_the_code_and_the_holes_given_to_the_balloon() {
        // It gave back pages 200..210 and 300; page 5 lies in the code, which is never given.
        let runs = [(0, 200), (210, 90), (301, PAGES - 301)];
        assert_eq!(
            ram_pieces(RAM_PA, &runs, shared(121)),
            [code(121), own(121, 79), own(210, 90), own(301, PAGES - 301)]
        );
        // A run entirely inside the code adds nothing.
        assert_eq!(
            ram_pieces(RAM_PA, &[(3, 4), (121, 1)], shared(121)),
            [code(121), own(121, 1)]
        );
    }

    #[test]
    fn lent_pages_are_kept_as_runs_of_their_own_and_the_rest_freed() {
        // RAM of 100 pages without 10..20 (given to the balloon); peers map pages 0, 5, 6, 15
        // (not the VM's any more: ignored), 99 and one past the end.
        let runs = [(0, 10), (20, 80)];
        let lent = ram_pages_of_frames(
            &[0, 5, 6, 15, 99, 100, 6].map(|page| GUEST_RAM_BASE / PAGE_SIZE + page),
            100,
        );
        assert_eq!(lent, [0, 5, 6, 15, 99]);
        let (free, kept) = split_lent(&runs, &lent);
        assert_eq!(free, [(1, 4), (7, 3), (20, 79)]);
        assert_eq!(kept, [(0, 1), (5, 2), (99, 1)]);
        assert_eq!(
            ram_pages_of_frames(&[0, 1], 100),
            [] as [u64; 0],
            "below the RAM window"
        );
    }

    proptest::proptest! {
        /// Every page of the runs is either freed now or kept, never both; exactly the lent
        /// pages in the runs are kept; the output runs are in order and do not touch.
        #[test]
        fn split_lent_partitions_the_runs(
            gaps in proptest::collection::vec((0u64..20, 1u64..40), 0..8),
            lent in proptest::collection::btree_set(0u64..400, 0..40),
        ) {
            let mut runs = Vec::new();
            let mut at = 0;
            for (gap, pages) in gaps {
                runs.push((at + gap, pages));
                at += gap + pages;
            }
            let lent: Vec<u64> = lent.into_iter().collect();
            let (free, kept) = split_lent(&runs, &lent);
            let pages = |runs: &[(u64, u64)]| -> Vec<u64> {
                runs.iter().flat_map(|&(first, n)| first..first + n).collect()
            };
            let all = pages(&runs);
            let in_runs: Vec<u64> = lent.iter().copied().filter(|p| all.contains(p)).collect();
            proptest::prop_assert_eq!(pages(&kept), in_runs);
            let mut both = pages(&free);
            both.extend(pages(&kept));
            both.sort_unstable();
            proptest::prop_assert_eq!(both, all);
            for out in [&free, &kept] {
                for pair in out.windows(2) {
                    proptest::prop_assert!(pair[0].0 + pair[0].1 < pair[1].0, "{:?}", out);
                }
            }
        }
    }
}
