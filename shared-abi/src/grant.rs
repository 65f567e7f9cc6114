//! Grant tables: how a VM lets one named peer map or copy one of its frames, Xen-style.
//!
//! This module owns the grant ENTRY format in the granter's memory, the batch op formats of
//! GRANT_MAP / GRANT_UNMAP / GRANT_COPY (see [`hypercall`](crate::hypercall) for the registers),
//! the grant window, and the table of which [`Status`] each broken rule returns. The hypervisor
//! enforces the rules (`hypervisor/src/grant.rs`); guests use the same definitions to build ops.
//!
//! # Grant table
//!
//! A VM registers `1..=MAX_TABLE_PAGES` contiguous pages of its RAM with GRANT_TABLE_SETUP. Ref
//! `r` is the 8-byte entry at `table_gpa + 8 * r`; there are `ENTRIES_PER_PAGE` per page.
//!
//! Entry, one little-endian `u64`:
//!
//! | bits  | field   | meaning                                                                 |
//! |------:|---------|-------------------------------------------------------------------------|
//! |     0 | PERMIT  | set by the granter: `peer` may use this ref                             |
//! |     1 | READONLY| set by the granter: `peer` may only read the frame                      |
//! |     2 | IN_USE  | set/cleared by the hypervisor while `peer` maps the frame; the granter  |
//! |       |         | must not change or reuse the entry while it is set                      |
//! |  3-15 | —       | reserved, zero (an entry with other bits set is refused, so a future    |
//! |       |         | flag is never silently ignored)                                         |
//! | 16-31 | peer    | the only VM id allowed to use the ref                                   |
//! | 32-63 | frame   | the granter's guest frame number (GPA >> 12)                            |
//!
//! The hypervisor reads an entry exactly once per op into a local and both checks and uses that
//! copy, so a granter rewriting the entry concurrently cannot make the check and the use disagree.
//! IN_USE is set with a compare-exchange against the value read, so a mapping is only created if
//! the entry still held that value at that instant. From then on the hypervisor's own record of the
//! mapping (granter, ref, host frame, read-only) is what counts: later edits of the table never
//! change an existing mapping. GRANT_END revokes a ref (clears PERMIT) and is `Busy` while mapped.
//!
//! # Batch ops
//!
//! Ops live in the caller's RAM as arrays of little-endian `u64` words (8-byte aligned), at most
//! [`MAX_BATCH`] per call. The hypervisor reads each op once, as words, and writes back only its
//! `status` word. The `#[repr(C)]` structs below have exactly the word layout on a little-endian
//! machine, so a guest may also build [`MapOp`] and [`UnmapOp`] arrays in place. Not [`CopyOp`]:
//! the six bytes after its `len` are padding, which Rust leaves undefined, and the hypervisor
//! refuses non-zero reserved bits; send [`CopyOp::to_words`] instead.
//!
//! [`MapOp`], 3 words: word 0 = `granter` (bits 0-15) | `flags` (16-31; bit 0 = READONLY
//! requested, others zero) | `gref` (32-63); word 1 = `dest_gpa`; word 2 = `status`.
//!
//! [`UnmapOp`], 2 words: word 0 = `dest_gpa`; word 1 = `status`.
//!
//! [`CopyOp`], 6 words: words 0-1 = `src`, words 2-3 = `dst` (each a [`CopyPtr`]); word 4 =
//! `len` (bits 0-15, others zero); word 5 = `status`. A [`CopyPtr`] is word 0 = `kind` (bits 0-15:
//! 1 = own RAM, 2 = grant) | `granter` (16-31) | `gref` (32-63), word 1 = `gpa_or_offset` (own:
//! a GPA in the caller's RAM; grant: a byte offset in the granted frame). For `Own`, `granter`
//! and `gref` must be zero. Neither side of a copy may cross a 4 KiB frame boundary.
//!
//! # Grant window
//!
//! Foreign frames are mapped only at page-aligned IPAs in
//! `[GRANT_WINDOW_BASE, GRANT_WINDOW_BASE + GRANT_WINDOW_SIZE)` of the caller, far above any VM's
//! RAM (which ends by `GUEST_RAM_BASE + MAX_VM_RAM` = 2 GiB), so a grant mapping can never shadow
//! or be confused with the caller's own RAM.
//!
//! # Rule → status
//!
//! Checked in this order; the first broken rule decides the status.
//!
//! | call        | rule broken                                                       | status            |
//! |-------------|-------------------------------------------------------------------|-------------------|
//! | SETUP       | table GPA not page aligned, pages not `1..=4`, a page not in RAM  | `InvalidArgument` |
//! | SETUP       | a peer still maps one of the caller's refs                        | `Busy`            |
//! | any batch   | count 0 or > `MAX_BATCH`, array not 8-byte aligned or not in RAM  | `InvalidArgument` |
//! | MAP, COPY   | unknown flag/kind or reserved bits set in the op                  | `InvalidArgument` |
//! | MAP, COPY   | granter is the caller, 0, or not a VM id                          | `InvalidArgument` |
//! | MAP         | `dest_gpa` not page aligned or outside the caller's grant window  | `InvalidArgument` |
//! | MAP         | `dest_gpa` already holds a grant mapping                          | `Busy`            |
//! | MAP         | the caller holds its budget of mappings, or the hypervisor's heap is low | `NoSpace` |
//! | MAP, COPY   | granter dead or without a table, ref beyond its table             | `BadRef`          |
//! | MAP, COPY   | entry's PERMIT clear, or unknown entry flag bits set              | `BadRef`          |
//! | MAP, COPY   | entry's `peer` is not the caller                                  | `Denied`          |
//! | MAP         | read-write map of a READONLY entry                                | `ReadOnly`        |
//! | COPY        | copy into a READONLY entry                                        | `ReadOnly`        |
//! | MAP, COPY   | entry's frame not in the granter's RAM                            | `BadFrame`        |
//! | MAP         | ref already mapped with another frame (entry changed while in use)| `Busy`            |
//! | MAP         | the entry changed between the read and setting IN_USE             | `Busy`            |
//! | COPY        | a side crosses a 4 KiB frame boundary; own GPA not in caller's RAM| `InvalidArgument` |
//! | UNMAP       | `dest_gpa` not page aligned                                       | `InvalidArgument` |
//! | UNMAP       | `dest_gpa` is not a grant mapping of the caller                   | `NotMapped`       |
//! | END         | no table, ref beyond the table                                    | `BadRef`          |
//! | END         | a peer maps the ref (hypervisor's record, not the IN_USE bit)     | `Busy`            |

use crate::hypercall::Status;
use crate::layout::PAGE_SIZE;

/// Entries in one 4 KiB table page.
pub const ENTRIES_PER_PAGE: u32 = 512;
/// Largest grant table, in pages.
pub const MAX_TABLE_PAGES: u32 = 4;
/// Largest number of refs a VM can have.
pub const MAX_REFS: u32 = ENTRIES_PER_PAGE * MAX_TABLE_PAGES;
/// Bytes per entry.
pub const ENTRY_SIZE: u64 = 8;
/// Most ops in one GRANT_MAP / GRANT_UNMAP / GRANT_COPY call, so one hypercall is bounded work.
pub const MAX_BATCH: u64 = 64;
/// Most grant mappings a guest may hold at a time (its own mappings of peers' frames), so the
/// hypervisor's record of them is bounded; GRANT_MAP beyond it is `NoSpace`. Guests map little
/// (front-ends grant, they do not map).
pub const MAX_MAPPINGS_PER_GUEST: u32 = 512;
/// The same for a driver domain, which maps every front-end's rings and buffer pool: room for
/// [`MAX_VMS`](crate::layout::MAX_VMS) - 1 front-ends with pools of the largest size
/// ([`POOL_BUDGET_PAGES`](crate::virtq::POOL_BUDGET_PAGES), 512 pages) and their two rings.
pub const MAX_MAPPINGS_PER_DRIVER_DOMAIN: u32 = 16384;
/// Hypervisor heap bytes the records of one grant mapping take at most: its entry in a B-tree
/// leaf (544 bytes for 11 entries, a 1 KiB block from the hypervisor's buddy allocator, at least
/// 5 entries per leaf) plus its share of the inner nodes and of the per-ref count. Measured with
/// a buddy-rounding allocator: about 137 bytes per mapping when guests map in random order;
/// this is the bound for the sparsest tree.
pub const HEAP_PER_MAPPING: u64 = 320;
/// The hypervisor heap set aside for grant-mapping records (three quarters of its heap): a
/// bundle whose VMs' mapping budgets could need more is refused
/// ([`BundleError::MappingBudgets`](crate::bundle::BundleError::MappingBudgets)), so every
/// GRANT_MAP within a VM's budget finds room.
pub const MAPPING_HEAP_BYTES: u64 = 18 << 20;

/// The grant window is part of the guest-physical layout, defined in [`layout`](crate::layout);
/// re-exported here because every grant user needs it next to the op formats.
pub use crate::layout::{GRANT_WINDOW_BASE, GRANT_WINDOW_SIZE};

/// Entry flag bits.
pub const PERMIT: u16 = 1 << 0;
pub const READONLY: u16 = 1 << 1;
pub const IN_USE: u16 = 1 << 2;
const KNOWN_ENTRY_FLAGS: u16 = PERMIT | READONLY | IN_USE;

/// [`MapOp::flags`] bit: map read-only even if the grant allows writing.
pub const MAP_READONLY: u16 = 1 << 0;

const _: () = assert!(ENTRIES_PER_PAGE as u64 * ENTRY_SIZE == PAGE_SIZE);

/// GPA of the entry for `gref` in a table at `table_gpa` (no range check; see [`MAX_REFS`]).
/// The page contents the grant attack tests agree on: guest `granter` writes them, the attacker
/// (a guest, or the driver domain aiming its NIC's DMA) checks or completes them.
pub mod test_pattern {
    /// First word of the granter's pages A (ref 1, read-write) and B (ref 2, read-only).
    pub const MARKER: u64 = 0x5000_0051_0000_cafe;
    /// What the peer writes into word 1 of page A to prove write access and end the test.
    pub const PEER_WROTE: u64 = 0xfeed_f00d;
}

pub const fn entry_gpa(table_gpa: u64, gref: u32) -> u64 {
    table_gpa + gref as u64 * ENTRY_SIZE
}

/// True when `dest` is a page-aligned IPA inside the grant window.
pub const fn in_grant_window(dest: u64) -> bool {
    dest.is_multiple_of(PAGE_SIZE)
        && dest >= GRANT_WINDOW_BASE
        && dest - GRANT_WINDOW_BASE < GRANT_WINDOW_SIZE
}

/// True when `len` bytes from `offset_in_frame` stay inside one 4 KiB frame.
pub const fn within_frame(offset_in_frame: u64, len: u16) -> bool {
    offset_in_frame < PAGE_SIZE && offset_in_frame + len as u64 <= PAGE_SIZE
}

/// One grant entry, decoded. Decoding is total; the hypervisor applies the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantEntry {
    pub flags: u16,
    pub peer: u16,
    pub frame: u32,
}

impl GrantEntry {
    pub const fn from_u64(raw: u64) -> GrantEntry {
        GrantEntry {
            flags: raw as u16,
            peer: (raw >> 16) as u16,
            frame: (raw >> 32) as u32,
        }
    }

    pub const fn to_u64(self) -> u64 {
        self.flags as u64 | (self.peer as u64) << 16 | (self.frame as u64) << 32
    }

    pub const fn permit(self) -> bool {
        self.flags & PERMIT != 0
    }

    pub const fn readonly(self) -> bool {
        self.flags & READONLY != 0
    }

    pub const fn in_use(self) -> bool {
        self.flags & IN_USE != 0
    }

    /// Bits this version does not define; the hypervisor refuses such an entry.
    pub const fn has_unknown_flags(self) -> bool {
        self.flags & !KNOWN_ENTRY_FLAGS != 0
    }

    /// GPA of the granted frame.
    pub const fn frame_gpa(self) -> u64 {
        (self.frame as u64) << 12
    }
}

/// GRANT_MAP op: map `granter`'s ref `gref` at the caller's `dest_gpa`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapOp {
    pub granter: u16,
    /// [`MAP_READONLY`] or 0.
    pub flags: u16,
    pub gref: u32,
    pub dest_gpa: u64,
    /// Written by the hypervisor: a [`Status`] as i64.
    pub status: i64,
}

/// GRANT_UNMAP op: remove the grant mapping at the caller's `dest_gpa`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmapOp {
    pub dest_gpa: u64,
    pub status: i64,
}

#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyKind {
    /// The caller's own RAM; `gpa_or_offset` is a GPA.
    Own = 1,
    /// A frame granted to the caller; `gpa_or_offset` is the byte offset in it.
    Grant = 2,
}

/// One side of a [`CopyOp`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyPtr {
    pub kind: CopyKind,
    /// For [`CopyKind::Grant`]; zero for `Own`.
    pub granter: u16,
    /// For [`CopyKind::Grant`]; zero for `Own`.
    pub gref: u32,
    pub gpa_or_offset: u64,
}

/// GRANT_COPY op: copy `len` bytes from `src` to `dst`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyOp {
    pub src: CopyPtr,
    pub dst: CopyPtr,
    pub len: u16,
    pub status: i64,
}

const _: () = assert!(core::mem::size_of::<MapOp>() == MapOp::WORDS * 8);
const _: () = assert!(core::mem::size_of::<UnmapOp>() == UnmapOp::WORDS * 8);
const _: () = assert!(core::mem::size_of::<CopyOp>() == CopyOp::WORDS * 8);

impl MapOp {
    pub const WORDS: usize = 3;
    /// Index of the word the hypervisor writes back.
    pub const STATUS_WORD: usize = 2;

    pub const fn readonly(&self) -> bool {
        self.flags & MAP_READONLY != 0
    }

    pub const fn to_words(&self) -> [u64; 3] {
        [
            self.granter as u64 | (self.flags as u64) << 16 | (self.gref as u64) << 32,
            self.dest_gpa,
            self.status as u64,
        ]
    }

    /// Unknown flag bits are `InvalidArgument`.
    pub fn from_words(words: [u64; 3]) -> Result<MapOp, Status> {
        let op = MapOp {
            granter: words[0] as u16,
            flags: (words[0] >> 16) as u16,
            gref: (words[0] >> 32) as u32,
            dest_gpa: words[1],
            status: words[2] as i64,
        };
        if op.flags & !MAP_READONLY != 0 {
            return Err(Status::InvalidArgument);
        }
        Ok(op)
    }
}

impl UnmapOp {
    pub const WORDS: usize = 2;
    pub const STATUS_WORD: usize = 1;

    pub const fn to_words(&self) -> [u64; 2] {
        [self.dest_gpa, self.status as u64]
    }

    pub const fn from_words(words: [u64; 2]) -> UnmapOp {
        UnmapOp {
            dest_gpa: words[0],
            status: words[1] as i64,
        }
    }
}

impl CopyPtr {
    pub const fn own(gpa: u64) -> CopyPtr {
        CopyPtr {
            kind: CopyKind::Own,
            granter: 0,
            gref: 0,
            gpa_or_offset: gpa,
        }
    }

    pub const fn grant(granter: u16, gref: u32, offset: u64) -> CopyPtr {
        CopyPtr {
            kind: CopyKind::Grant,
            granter,
            gref,
            gpa_or_offset: offset,
        }
    }

    pub const fn to_words(&self) -> [u64; 2] {
        [
            self.kind as u64 | (self.granter as u64) << 16 | (self.gref as u64) << 32,
            self.gpa_or_offset,
        ]
    }

    /// Unknown kinds, and a granter or ref given for `Own`, are `InvalidArgument`.
    pub fn from_words(words: [u64; 2]) -> Result<CopyPtr, Status> {
        let kind = match words[0] as u16 {
            1 => CopyKind::Own,
            2 => CopyKind::Grant,
            _ => return Err(Status::InvalidArgument),
        };
        let ptr = CopyPtr {
            kind,
            granter: (words[0] >> 16) as u16,
            gref: (words[0] >> 32) as u32,
            gpa_or_offset: words[1],
        };
        if kind == CopyKind::Own && (ptr.granter != 0 || ptr.gref != 0) {
            return Err(Status::InvalidArgument);
        }
        Ok(ptr)
    }
}

impl CopyOp {
    pub const WORDS: usize = 6;
    pub const STATUS_WORD: usize = 5;

    pub const fn to_words(&self) -> [u64; 6] {
        let src = self.src.to_words();
        let dst = self.dst.to_words();
        [
            src[0],
            src[1],
            dst[0],
            dst[1],
            self.len as u64,
            self.status as u64,
        ]
    }

    /// Rejects what [`CopyPtr::from_words`] rejects, and reserved bits set beside `len`.
    pub fn from_words(words: [u64; 6]) -> Result<CopyOp, Status> {
        if words[4] >> 16 != 0 {
            return Err(Status::InvalidArgument);
        }
        Ok(CopyOp {
            src: CopyPtr::from_words([words[0], words[1]])?,
            dst: CopyPtr::from_words([words[2], words[3]])?,
            len: words[4] as u16,
            status: words[5] as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{GUEST_RAM_BASE, MAX_VM_RAM};
    use proptest::prelude::*;

    #[test]
    fn entry_bit_layout() {
        let e = GrantEntry {
            flags: PERMIT | READONLY,
            peer: 3,
            frame: 0x40123,
        };
        assert_eq!(e.to_u64(), 0x0004_0123_0003_0003);
        assert!(e.permit() && e.readonly() && !e.in_use() && !e.has_unknown_flags());
        assert_eq!(e.frame_gpa(), 0x4012_3000);
        assert!(GrantEntry::from_u64(1 << 3).has_unknown_flags());
        assert!(GrantEntry::from_u64(IN_USE as u64).in_use());
    }

    #[test]
    fn table_geometry() {
        assert_eq!(MAX_REFS, 2048);
        assert_eq!(entry_gpa(0x4000_0000, 0), 0x4000_0000);
        assert_eq!(entry_gpa(0x4000_0000, 513), 0x4000_1008);
    }

    #[test]
    fn grant_window_is_above_all_ram_and_page_granular() {
        const { assert!(GUEST_RAM_BASE + MAX_VM_RAM <= GRANT_WINDOW_BASE) };
        assert!(in_grant_window(GRANT_WINDOW_BASE));
        assert!(in_grant_window(
            GRANT_WINDOW_BASE + GRANT_WINDOW_SIZE - PAGE_SIZE
        ));
        assert!(!in_grant_window(GRANT_WINDOW_BASE + GRANT_WINDOW_SIZE));
        assert!(!in_grant_window(GRANT_WINDOW_BASE - PAGE_SIZE));
        assert!(!in_grant_window(GRANT_WINDOW_BASE + 8));
        assert!(!in_grant_window(!0xfff));
    }

    #[test]
    fn frame_boundary_rule() {
        assert!(within_frame(0, 4096));
        assert!(within_frame(4095, 1));
        assert!(within_frame(100, 0));
        assert!(!within_frame(4095, 2));
        assert!(!within_frame(4096, 0));
    }

    #[test]
    fn map_op_word_layout_and_round_trip() {
        let op = MapOp {
            granter: 2,
            flags: MAP_READONLY,
            gref: 77,
            dest_gpa: GRANT_WINDOW_BASE,
            status: Status::BadRef as i64,
        };
        let w = op.to_words();
        assert_eq!(w[0], 2 | 1 << 16 | 77 << 32);
        assert_eq!(w[MapOp::STATUS_WORD] as i64, -6);
        assert_eq!(MapOp::from_words(w), Ok(op));
        assert!(op.readonly());
    }

    #[test]
    fn map_op_rejects_unknown_flags() {
        assert_eq!(
            MapOp::from_words([1 | 2 << 16, 0, 0]),
            Err(Status::InvalidArgument)
        );
    }

    #[test]
    fn unmap_op_round_trip() {
        let op = UnmapOp {
            dest_gpa: 0x1234_5000,
            status: -9,
        };
        assert_eq!(UnmapOp::from_words(op.to_words()), op);
    }

    #[test]
    fn copy_op_round_trip_and_layout() {
        let op = CopyOp {
            src: CopyPtr::grant(4, 9, 0x80),
            dst: CopyPtr::own(0x4000_2000),
            len: 1500,
            status: 0,
        };
        let w = op.to_words();
        assert_eq!(w[0], 2 | 4 << 16 | 9 << 32);
        assert_eq!(w[2], 1);
        assert_eq!(w[4], 1500);
        assert_eq!(CopyOp::from_words(w), Ok(op));
    }

    #[test]
    fn copy_op_rejects_bad_kind_reserved_bits_and_own_with_ref() {
        let good = CopyOp {
            src: CopyPtr::own(0x4000_0000),
            dst: CopyPtr::grant(1, 1, 0),
            len: 8,
            status: 0,
        }
        .to_words();
        for bad in [
            {
                let mut w = good;
                w[0] = 0; // kind 0
                w
            },
            {
                let mut w = good;
                w[2] = 3; // kind 3
                w
            },
            {
                let mut w = good;
                w[4] |= 1 << 16; // reserved beside len
                w
            },
            {
                let mut w = good;
                w[0] |= 5 << 16; // granter on an own pointer
                w
            },
            {
                let mut w = good;
                w[0] |= 1 << 32; // ref on an own pointer
                w
            },
        ] {
            assert_eq!(CopyOp::from_words(bad), Err(Status::InvalidArgument));
        }
    }

    #[test]
    fn repr_c_layout_matches_words() {
        assert_eq!(core::mem::offset_of!(MapOp, gref), 4);
        assert_eq!(core::mem::offset_of!(MapOp, dest_gpa), 8);
        assert_eq!(core::mem::offset_of!(CopyOp, dst), 16);
        assert_eq!(core::mem::offset_of!(CopyOp, len), 32);
        assert_eq!(core::mem::offset_of!(CopyOp, status), 40);
    }

    proptest! {
        #[test]
        fn entry_round_trips(raw in any::<u64>()) {
            prop_assert_eq!(GrantEntry::from_u64(raw).to_u64(), raw);
        }

        #[test]
        fn map_op_decode_is_inverse_when_accepted(w in any::<[u64; 3]>()) {
            match MapOp::from_words(w) {
                Ok(op) => prop_assert_eq!(op.to_words(), w),
                Err(s) => {
                    prop_assert_eq!(s, Status::InvalidArgument);
                    prop_assert!((w[0] >> 16) as u16 & !MAP_READONLY != 0);
                }
            }
        }

        /// Any six words a guest puts in a copy op: accepted exactly when the kinds are known,
        /// an own side names no granter or ref, and the bits beside `len` are zero; an accepted
        /// op encodes back to the same words.
        #[test]
        fn copy_op_decode_is_inverse_when_accepted(
            w in any::<[u64; 6]>(),
            kinds in any::<[u16; 2]>(),
            small in any::<[bool; 3]>(),
        ) {
            let mut w = w;
            // Random words almost never hold a known kind or a clean `len`: plant them often.
            for (i, side) in [0usize, 2].into_iter().enumerate() {
                if small[i] {
                    w[side] = (w[side] & !0xffff) | u64::from(kinds[i] % 3);
                }
            }
            if small[2] {
                w[4] &= 0xffff;
            }
            let side_ok = |head: u64| match head as u16 {
                1 => head >> 16 == 0,
                2 => true,
                _ => false,
            };
            let valid = side_ok(w[0]) && side_ok(w[2]) && w[4] >> 16 == 0;
            match CopyOp::from_words(w) {
                Ok(op) => {
                    prop_assert!(valid);
                    prop_assert_eq!(op.to_words(), w);
                }
                Err(s) => {
                    prop_assert!(!valid);
                    prop_assert_eq!(s, Status::InvalidArgument);
                }
            }
        }

        #[test]
        fn unmap_op_round_trips(w in any::<[u64; 2]>()) {
            prop_assert_eq!(UnmapOp::from_words(w).to_words(), w);
        }

        #[test]
        fn copy_op_round_trips(
            grants in any::<[bool; 2]>(),
            granters in any::<[u16; 2]>(),
            grefs in any::<[u32; 2]>(),
            addrs in any::<[u64; 2]>(),
            len in any::<u16>(),
            status in any::<i64>(),
        ) {
            let ptr = |i: usize| if grants[i] {
                CopyPtr::grant(granters[i], grefs[i], addrs[i])
            } else {
                CopyPtr::own(addrs[i])
            };
            let op = CopyOp { src: ptr(0), dst: ptr(1), len, status };
            prop_assert_eq!(CopyOp::from_words(op.to_words()), Ok(op));
        }
    }
}
