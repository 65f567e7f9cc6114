//! Stage-2 translation tables (guest-physical → physical), one tree per VM.
//!
//! This module owns the stage-2 configuration (VTCR_EL2), the VMSAv8-64 stage-2 descriptor
//! encoding, and the code that builds, edits, walks and tears down a VM's table tree. It never
//! touches memory itself: tables live behind [`TableMemory`], which the hardware layer backs with
//! identity-mapped frames and the tests with a map.
//!
//! Configuration: 4 KiB granule, 40-bit IPA (T0SZ = 24), walk starting at level 0 (SL0 = 0b10), so
//! every walk is 4 levels. A 40-bit IPA could also start at level 1 with two concatenated tables
//! (what KVM does); starting at level 0 keeps one uniform 4 KiB root and matches the 4-level table
//! the lecture discusses. Mappings use 2 MiB level-2 blocks and 4 KiB pages only.
//!
//! TLB maintenance is the caller's job: [`Stage2::unmap`] reports every piece it removed so the
//! caller can invalidate exactly those.

use aarch64_paging::descriptor::Stage2Attributes as S2;

/// Size of a translation granule and of a page.
pub const PAGE_SIZE: u64 = 1 << 12;
/// Size of a level-2 block.
pub const BLOCK_SIZE: u64 = 1 << 21;
/// Guest-physical (input) address width.
pub const IPA_BITS: u32 = 40;
/// Largest output address width we encode (the 52-bit formats are not used).
pub const PA_BITS: u32 = 48;
/// Level the walk starts at.
pub const START_LEVEL: u8 = 0;
/// Number of lookup levels of every walk (0, 1, 2, 3).
pub const LEVELS: u8 = 4;
/// Entries in one table.
pub const ENTRIES: usize = 512;

// VTCR_EL2 field positions, from the Arm ARM register description, cross-checked against the
// aarch64-cpu crate's VTCR_EL2 definition.
/// VTCR_EL2.T0SZ, bits [5:0]: the IPA size is 2^(64 - T0SZ).
pub const VTCR_T0SZ_SHIFT: u32 = 0;
/// VTCR_EL2.SL0, bits [7:6]: starting level (with 4 KiB granule: 0b00 = L2, 0b01 = L1, 0b10 = L0).
pub const VTCR_SL0_SHIFT: u32 = 6;
/// VTCR_EL2.IRGN0, bits [9:8]: inner cacheability of table walks.
pub const VTCR_IRGN0_SHIFT: u32 = 8;
/// VTCR_EL2.ORGN0, bits [11:10]: outer cacheability of table walks.
pub const VTCR_ORGN0_SHIFT: u32 = 10;
/// VTCR_EL2.SH0, bits [13:12]: shareability of table walks.
pub const VTCR_SH0_SHIFT: u32 = 12;
/// VTCR_EL2.TG0, bits [15:14]: granule (0b00 = 4 KiB; note 0b01 is 64 KiB, 0b10 is 16 KiB).
pub const VTCR_TG0_SHIFT: u32 = 14;
/// VTCR_EL2.PS, bits [18:16]: output (physical) address size, same encoding as PARange.
pub const VTCR_PS_SHIFT: u32 = 16;
/// VTCR_EL2.VS, bit 19: 16-bit VMIDs (needs FEAT_VMID16).
pub const VTCR_VS_BIT: u32 = 19;
/// VTCR_EL2 bit 31 is RES1, so software must write it as one.
pub const VTCR_RES1_BIT: u32 = 31;

/// T0SZ for a 40-bit IPA.
pub const VTCR_T0SZ: u64 = 64 - IPA_BITS as u64;
/// SL0 encoding "start at level 0" for the 4 KiB granule.
pub const VTCR_SL0_LEVEL0: u64 = 0b10;
/// IRGN0/ORGN0 encoding for Normal write-back read-allocate write-allocate.
pub const VTCR_RGN_WBWA: u64 = 0b01;
/// SH0 encoding for inner shareable.
pub const VTCR_SH_INNER: u64 = 0b11;
/// TG0 encoding for the 4 KiB granule.
pub const VTCR_TG0_4K: u64 = 0b00;
/// PARange/PS encoding for 48 bits: the cap, because 52-bit output addresses use another format.
pub const PS_48_BITS: u64 = 0b101;

/// VTCR_EL2 for this module's tables. `pa_range_field` is ID_AA64MMFR0_EL1.PARange (bits
/// [3:0]); `vmid16` says whether ID_AA64MMFR1_EL1.VMIDBits (bits [7:4]) is 0b0010.
pub const fn vtcr_el2(pa_range_field: u64, vmid16: bool) -> u64 {
    let pa_range = pa_range_field & 0xf;
    let ps = if pa_range > PS_48_BITS {
        PS_48_BITS
    } else {
        pa_range
    };
    (1 << VTCR_RES1_BIT)
        | (VTCR_T0SZ << VTCR_T0SZ_SHIFT)
        | (VTCR_SL0_LEVEL0 << VTCR_SL0_SHIFT)
        | (VTCR_RGN_WBWA << VTCR_IRGN0_SHIFT)
        | (VTCR_RGN_WBWA << VTCR_ORGN0_SHIFT)
        | (VTCR_SH_INNER << VTCR_SH0_SHIFT)
        | (VTCR_TG0_4K << VTCR_TG0_SHIFT)
        | (ps << VTCR_PS_SHIFT)
        | ((vmid16 as u64) << VTCR_VS_BIT)
}

// Stage-2 descriptor fields (VMSAv8-64, without FEAT_S2FWB). The attribute bits are
// aarch64-paging's typed `Stage2Attributes`; the shifts below are kept only so tests and the
// walk model can pick single fields out of a raw descriptor.
/// Bit 0: the descriptor is valid.
pub const DESC_VALID: u64 = S2::VALID.bits() as u64;
/// Bit 1: table (levels 0-2) or page (level 3); clear means block.
pub const DESC_TABLE_OR_PAGE: u64 = S2::TABLE_OR_PAGE.bits() as u64;
/// Output address / next-level table address, bits [47:12].
pub const DESC_ADDR_MASK: u64 = ((1 << PA_BITS) - 1) & !(PAGE_SIZE - 1);
/// MemAttr, bits [5:2].
pub const DESC_MEMATTR_SHIFT: u32 = 2;
/// S2AP, bits [7:6].
pub const DESC_S2AP_SHIFT: u32 = 6;
/// SH, bits [9:8].
pub const DESC_SH_SHIFT: u32 = 8;
/// AF, bit 10: set up front because nothing here handles Access flag faults.
pub const DESC_AF: u64 = S2::ACCESS_FLAG.bits() as u64;
/// XN, bits [54:53].
pub const DESC_XN_SHIFT: u32 = 53;

/// MemAttr of RAM: Normal, inner and outer write-back cacheable.
const NORMAL_WB: S2 = S2::MEMATTR_NORMAL_INNER_WB.union(S2::MEMATTR_NORMAL_OUTER_WB);
/// The whole MemAttr field.
const MEMATTR_FIELD: S2 = NORMAL_WB;
/// Both XN bits: without FEAT_XNX bit 53 is RES0 and bit 54 alone is XN, so "not executable at
/// any EL" is bit 54 either way ([`S2::XN`]), and executable means both clear.
const XN_FIELD: u64 = 0b11 << DESC_XN_SHIFT;

/// Backing store for translation tables.
pub trait TableMemory {
    /// A zeroed, 4 KiB-aligned page for a translation table; its physical address.
    fn alloc_table(&mut self) -> Option<u64>;
    /// Gives back a page obtained from [`TableMemory::alloc_table`].
    fn free_table(&mut self, pa: u64);
    /// The table at `pa` (an address returned by `alloc_table`).
    fn table(&self, pa: u64) -> &[u64; ENTRIES];
    /// The table at `pa`, writable.
    fn table_mut(&mut self, pa: u64) -> &mut [u64; ENTRIES];
}

/// Memory type of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemType {
    /// Normal, inner/outer write-back cacheable, inner shareable (RAM).
    Normal,
    /// Device-nGnRE (MMIO).
    Device,
}

/// Guest access permission of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// Attributes of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapAttrs {
    pub mem: MemType,
    pub access: Access,
    pub executable: bool,
}

/// Result of a successful [`Stage2::translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub pa: u64,
    pub attrs: MapAttrs,
    /// Level of the leaf descriptor: 2 for a 2 MiB block, 3 for a page.
    pub level: u8,
}

/// Why a stage-2 operation was refused. Every refusal leaves the tables as they were.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stage2Error {
    /// An address or size is not a multiple of 4 KiB.
    #[error("address or size not 4 KiB aligned")]
    Unaligned,
    /// The size is zero.
    #[error("empty range")]
    ZeroSize,
    /// The range leaves the 40-bit IPA space or the 48-bit PA space.
    #[error("range outside the 40-bit IPA or 48-bit PA space")]
    OutOfRange,
    /// Part of the IPA range is already mapped.
    #[error("part of the range is already mapped")]
    AlreadyMapped,
    /// Part of the IPA range is not mapped.
    #[error("part of the range is not mapped")]
    NotMapped,
    /// No page for a translation table.
    #[error("no memory for a translation table")]
    OutOfMemory,
}

/// One VM's stage-2 table tree.
#[derive(Debug)]
pub struct Stage2 {
    root: u64,
}

/// Bytes covered by one entry of a table at `level`.
const fn entry_size(level: u8) -> u64 {
    1 << (12 + 9 * (3 - level as u32))
}

fn index(level: u8, ipa: u64) -> usize {
    ((ipa >> (12 + 9 * (3 - level as u32))) & (ENTRIES as u64 - 1)) as usize
}

fn is_valid(desc: u64) -> bool {
    desc & DESC_VALID != 0
}

fn is_table(level: u8, desc: u64) -> bool {
    level < 3 && is_valid(desc) && desc & DESC_TABLE_OR_PAGE != 0
}

fn table_desc(pa: u64) -> u64 {
    (pa & DESC_ADDR_MASK) | DESC_TABLE_OR_PAGE | DESC_VALID
}

fn leaf_desc(level: u8, pa: u64, attrs: MapAttrs) -> u64 {
    let mut bits = S2::VALID | S2::ACCESS_FLAG;
    if level == 3 {
        bits |= S2::TABLE_OR_PAGE;
    }
    bits |= match attrs.mem {
        MemType::Normal => NORMAL_WB | S2::SH_INNER,
        // Device memory is always treated as outer shareable; SH is ignored, so leave it zero.
        MemType::Device => S2::MEMATTR_DEVICE_nGnRE,
    };
    bits |= match attrs.access {
        Access::ReadWrite => S2::S2AP_ACCESS_RW,
        Access::ReadOnly => S2::S2AP_ACCESS_RO,
    };
    if !attrs.executable {
        bits |= S2::XN;
    }
    (pa & DESC_ADDR_MASK) | bits.bits() as u64
}

fn leaf_attrs(desc: u64) -> MapAttrs {
    let bits = S2::from_bits_truncate(desc as usize);
    let mem = if bits.intersection(MEMATTR_FIELD) == NORMAL_WB {
        MemType::Normal
    } else {
        MemType::Device
    };
    let access = if bits.contains(S2::S2AP_ACCESS_RW) {
        Access::ReadWrite
    } else {
        Access::ReadOnly
    };
    MapAttrs {
        mem,
        access,
        executable: desc & XN_FIELD == 0,
    }
}

/// The part of `[start, end)` that falls into entry `idx` of a table covering `base..`.
fn clip(level: u8, base: u64, idx: usize, start: u64, end: u64) -> (u64, u64, u64) {
    let entry_base = base + idx as u64 * entry_size(level);
    (
        entry_base,
        start.max(entry_base),
        end.min(entry_base + entry_size(level)),
    )
}

/// Entries of a table at `level` (covering from `base`) that `[start, end)` overlaps.
fn entries(level: u8, base: u64, start: u64, end: u64) -> core::ops::RangeInclusive<usize> {
    let first = ((start - base) / entry_size(level)) as usize;
    let last = ((end - 1 - base) / entry_size(level)) as usize;
    first..=last
}

/// Table pages taken before an unmap starts, so that splitting a block cannot fail halfway.
struct Spares {
    pages: [u64; 2],
    count: usize,
}

impl Spares {
    const fn none() -> Spares {
        Spares {
            pages: [0; 2],
            count: 0,
        }
    }

    fn take(&mut self) -> Option<u64> {
        self.count = self.count.checked_sub(1)?;
        Some(self.pages[self.count])
    }
}

impl Stage2 {
    /// An empty tree: just the level-0 root table.
    pub fn new(mem: &mut impl TableMemory) -> Result<Stage2, Stage2Error> {
        let root = mem.alloc_table().ok_or(Stage2Error::OutOfMemory)?;
        Ok(Stage2 { root })
    }

    /// Physical address of the root table, for VTTBR_EL2.BADDR.
    pub fn root_pa(&self) -> u64 {
        self.root
    }

    /// Maps `[ipa, ipa + size)` to `[pa, pa + size)`, with 2 MiB blocks wherever both addresses
    /// and the remaining length allow, pages elsewhere. On any error nothing is changed.
    pub fn map(
        &mut self,
        mem: &mut impl TableMemory,
        ipa: u64,
        pa: u64,
        size: u64,
        attrs: MapAttrs,
    ) -> Result<(), Stage2Error> {
        let end = check_range(ipa, size)?;
        let pa_end = pa.checked_add(size).ok_or(Stage2Error::OutOfRange)?;
        if !pa.is_multiple_of(PAGE_SIZE) {
            return Err(Stage2Error::Unaligned);
        }
        if pa_end > 1 << PA_BITS {
            return Err(Stage2Error::OutOfRange);
        }
        if !range_is_free(mem, self.root, START_LEVEL, 0, ipa, end) {
            return Err(Stage2Error::AlreadyMapped);
        }
        let offset = pa.wrapping_sub(ipa);
        if map_range(mem, self.root, START_LEVEL, 0, ipa, end, offset, attrs).is_err() {
            // The range was free before, so everything valid in it now is ours to remove, and
            // removing it also frees the tables this call allocated.
            let _ = unmap_range(
                mem,
                self.root,
                START_LEVEL,
                0,
                ipa,
                end,
                &mut Spares::none(),
                &mut Callbacks {
                    on_unmapped: &mut |_, _| {},
                    invalidate_now: &mut |_, _| {},
                },
            );
            return Err(Stage2Error::OutOfMemory);
        }
        Ok(())
    }

    /// Unmaps `[ipa, ipa + size)`, splitting a 2 MiB block that is only partly unmapped and freeing
    /// tables that become empty. `on_unmapped(ipa, size)` is called for every removed page or
    /// block; afterwards the caller must issue TLBI IPAS2E1IS for each piece, then DSB ISH,
    /// TLBI VMALLE1IS, DSB ISH, ISB (stage-1 entries cached from the old mapping are combined
    /// entries, and TLBI by IPA does not reach them).
    ///
    /// A split is break-before-make (the architecture's rule for changing a block into a
    /// table while other CPUs may walk it): the block entry is cleared, then
    /// `invalidate_now(ipa, size)` is called for the block's range and must have removed every
    /// TLB entry of it (TLBI IPAS2E1IS, DSB ISH) before it returns, and only then is the table
    /// written. A vCPU touching the block meanwhile takes a stage-2 fault that finds the
    /// mapping back and retries.
    ///
    /// Refused with `NotMapped`, changing nothing, unless the whole range is mapped.
    pub fn unmap(
        &mut self,
        mem: &mut impl TableMemory,
        ipa: u64,
        size: u64,
        on_unmapped: &mut impl FnMut(u64, u64),
        invalidate_now: &mut impl FnMut(u64, u64),
    ) -> Result<(), Stage2Error> {
        let end = check_range(ipa, size)?;
        if !range_is_mapped(mem, self.root, START_LEVEL, 0, ipa, end) {
            return Err(Stage2Error::NotMapped);
        }
        self.unmap_checked(mem, ipa, end, on_unmapped, invalidate_now)
    }

    /// Like [`Stage2::unmap`], but parts of the range that are not mapped are skipped instead of
    /// refused (a VM's RAM with pages given back to the balloon).
    pub fn unmap_present(
        &mut self,
        mem: &mut impl TableMemory,
        ipa: u64,
        size: u64,
        on_unmapped: &mut impl FnMut(u64, u64),
        invalidate_now: &mut impl FnMut(u64, u64),
    ) -> Result<(), Stage2Error> {
        let end = check_range(ipa, size)?;
        self.unmap_checked(mem, ipa, end, on_unmapped, invalidate_now)
    }

    fn unmap_checked(
        &mut self,
        mem: &mut impl TableMemory,
        ipa: u64,
        end: u64,
        on_unmapped: &mut impl FnMut(u64, u64),
        invalidate_now: &mut impl FnMut(u64, u64),
    ) -> Result<(), Stage2Error> {
        // At most the blocks holding the first and the last byte are cut; take their tables now.
        let first = self.leaf(mem, ipa);
        let last = self.leaf(mem, end - 1);
        let mut spares = Spares::none();
        for (n, leaf) in [first, last].into_iter().enumerate() {
            let Some((level, base)) = leaf else { continue };
            let cut = level < 3 && (base < ipa || base + entry_size(level) > end);
            if cut && !(n == 1 && first == last) {
                let Some(page) = mem.alloc_table() else {
                    while let Some(page) = spares.take() {
                        mem.free_table(page);
                    }
                    return Err(Stage2Error::OutOfMemory);
                };
                spares.pages[spares.count] = page;
                spares.count += 1;
            }
        }
        let result = unmap_range(
            mem,
            self.root,
            START_LEVEL,
            0,
            ipa,
            end,
            &mut spares,
            &mut Callbacks {
                on_unmapped,
                invalidate_now,
            },
        );
        debug_assert!(result.is_ok() && spares.count == 0, "split count mismatch");
        while let Some(page) = spares.take() {
            mem.free_table(page);
        }
        result.map_err(|()| Stage2Error::OutOfMemory)
    }

    /// Walks the tree for `ipa`: one read of one descriptor per level.
    pub fn translate(&self, mem: &impl TableMemory, ipa: u64) -> Option<Translation> {
        if ipa >= 1 << IPA_BITS {
            return None;
        }
        let mut table = self.root;
        for level in START_LEVEL..LEVELS {
            let desc = mem.table(table)[index(level, ipa)];
            if !is_valid(desc) {
                return None;
            }
            if is_table(level, desc) {
                table = desc & DESC_ADDR_MASK;
                continue;
            }
            let within = ipa & (entry_size(level) - 1);
            return Some(Translation {
                pa: (desc & DESC_ADDR_MASK) + within,
                attrs: leaf_attrs(desc),
                level,
            });
        }
        None
    }

    /// Frees every table of the tree. The mapped frames themselves stay with the caller.
    pub fn destroy(self, mem: &mut impl TableMemory) {
        free_tree(mem, self.root, START_LEVEL);
    }

    /// Level and IPA base of the leaf mapping `ipa`.
    fn leaf(&self, mem: &impl TableMemory, ipa: u64) -> Option<(u8, u64)> {
        let t = self.translate(mem, ipa)?;
        Some((t.level, ipa & !(entry_size(t.level) - 1)))
    }
}

/// Validates an IPA range; returns its end.
fn check_range(ipa: u64, size: u64) -> Result<u64, Stage2Error> {
    if size == 0 {
        return Err(Stage2Error::ZeroSize);
    }
    if !ipa.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
        return Err(Stage2Error::Unaligned);
    }
    match ipa.checked_add(size) {
        Some(end) if end <= 1 << IPA_BITS => Ok(end),
        _ => Err(Stage2Error::OutOfRange),
    }
}

fn range_is_free(
    mem: &impl TableMemory,
    table: u64,
    level: u8,
    base: u64,
    start: u64,
    end: u64,
) -> bool {
    entries(level, base, start, end).all(|idx| {
        let desc = mem.table(table)[idx];
        let (entry_base, s, e) = clip(level, base, idx, start, end);
        !is_valid(desc)
            || (is_table(level, desc)
                && range_is_free(mem, desc & DESC_ADDR_MASK, level + 1, entry_base, s, e))
    })
}

fn range_is_mapped(
    mem: &impl TableMemory,
    table: u64,
    level: u8,
    base: u64,
    start: u64,
    end: u64,
) -> bool {
    entries(level, base, start, end).all(|idx| {
        let desc = mem.table(table)[idx];
        let (entry_base, s, e) = clip(level, base, idx, start, end);
        is_valid(desc)
            && (!is_table(level, desc)
                || range_is_mapped(mem, desc & DESC_ADDR_MASK, level + 1, entry_base, s, e))
    })
}

/// Fills a free range. `offset` is pa - ipa (wrapping). Errs only when a table allocation fails.
#[allow(clippy::too_many_arguments)]
fn map_range(
    mem: &mut impl TableMemory,
    table: u64,
    level: u8,
    base: u64,
    start: u64,
    end: u64,
    offset: u64,
    attrs: MapAttrs,
) -> Result<(), ()> {
    for idx in entries(level, base, start, end) {
        let (entry_base, s, e) = clip(level, base, idx, start, end);
        let pa = s.wrapping_add(offset);
        let whole = s == entry_base && e == entry_base + entry_size(level);
        if level == 3 || (level == 2 && whole && pa.is_multiple_of(BLOCK_SIZE)) {
            mem.table_mut(table)[idx] = leaf_desc(level, pa, attrs);
            continue;
        }
        let desc = mem.table(table)[idx];
        let next = if is_table(level, desc) {
            desc & DESC_ADDR_MASK
        } else {
            let next = mem.alloc_table().ok_or(())?;
            mem.table_mut(table)[idx] = table_desc(next);
            next
        };
        map_range(mem, next, level + 1, entry_base, s, e, offset, attrs)?;
    }
    Ok(())
}

/// What an unmap tells its caller as it goes.
struct Callbacks<'a, U, I> {
    /// A page or block was removed.
    on_unmapped: &'a mut U,
    /// A block entry was cleared for a split: invalidate it before the table goes in.
    invalidate_now: &'a mut I,
}

/// Clears every valid leaf in the range (skipping holes), splits blocks cut by the range edges
/// with pages from `spares` (break-before-make), and frees tables left empty. Errs only if
/// `spares` runs dry.
#[allow(clippy::too_many_arguments)]
fn unmap_range<U: FnMut(u64, u64), I: FnMut(u64, u64)>(
    mem: &mut impl TableMemory,
    table: u64,
    level: u8,
    base: u64,
    start: u64,
    end: u64,
    spares: &mut Spares,
    callbacks: &mut Callbacks<'_, U, I>,
) -> Result<(), ()> {
    for idx in entries(level, base, start, end) {
        let (entry_base, s, e) = clip(level, base, idx, start, end);
        let desc = mem.table(table)[idx];
        if !is_valid(desc) {
            continue;
        }
        let whole = s == entry_base && e == entry_base + entry_size(level);
        let next = if is_table(level, desc) {
            desc & DESC_ADDR_MASK
        } else if whole {
            mem.table_mut(table)[idx] = 0;
            (callbacks.on_unmapped)(entry_base, entry_size(level));
            continue;
        } else {
            let next = spares.take().ok_or(())?;
            split_block(mem, level, desc, next);
            // Break, invalidate, make: no CPU may hold the block and the new pages at once.
            mem.table_mut(table)[idx] = 0;
            (callbacks.invalidate_now)(entry_base, entry_size(level));
            mem.table_mut(table)[idx] = table_desc(next);
            next
        };
        unmap_range(mem, next, level + 1, entry_base, s, e, spares, callbacks)?;
        if mem.table(next).iter().all(|&d| !is_valid(d)) {
            mem.table_mut(table)[idx] = 0;
            mem.free_table(next);
        }
    }
    Ok(())
}

/// Fills `new_table` with the next-level leaves equivalent to block `desc` at `level`.
fn split_block(mem: &mut impl TableMemory, level: u8, desc: u64, new_table: u64) {
    let attrs = leaf_attrs(desc);
    let pa = desc & DESC_ADDR_MASK;
    let step = entry_size(level + 1);
    for (i, slot) in mem.table_mut(new_table).iter_mut().enumerate() {
        *slot = leaf_desc(level + 1, pa + i as u64 * step, attrs);
    }
}

fn free_tree(mem: &mut impl TableMemory, table: u64, level: u8) {
    if level < 3 {
        for idx in 0..ENTRIES {
            let desc = mem.table(table)[idx];
            if is_table(level, desc) {
                free_tree(mem, desc & DESC_ADDR_MASK, level + 1);
            }
        }
    }
    mem.free_table(table);
}

#[cfg(test)]
pub(crate) mod tests;
