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
}
