//! A model of the two-stage page walk that answers the lecture's question — why can one guest
//! memory access cost 24 table reads? — by walking real tables and counting the reads.
//!
//! It owns a simulated physical memory ([`PhysMem`]) that holds both a stage-2 tree built with
//! this crate's [`Stage2`] (so the real descriptor format is walked) and the guest's RAM, in which
//! the guest's stage-1 tables live at guest-physical addresses.
//!
//! The count: with an n-level stage-1 walk and an m-level stage-2 walk,
//!
//! ```text
//! total = n·(m + 1) + m = (n + 1)(m + 1) − 1
//! ```
//!
//! because the stage-1 base in TTBR0_EL1 and every next-table address in a stage-1 descriptor
//! are guest-physical: before each of the n stage-1 descriptor reads, its GPA goes through a full
//! stage-2 walk (m reads), then the descriptor itself is read (1 read); finally the output GPA of
//! the stage-1 walk goes through one more stage-2 walk (m reads). Reading TTBR0_EL1 and
//! VTTBR_EL2 costs nothing: they are registers, not memory. With 4 + 4 levels that is
//! 5·5 − 1 = 24 (4 stage-1 reads, 20 stage-2 reads); if stage-2 maps guest RAM with 2 MiB blocks
//! the stage-2 walk stops at level 2 (m = 3) and the total is 5·4 − 1 = 19. TLBs and walk caches
//! exist because of this multiplication; the model counts a walk with both empty.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use core::cell::Cell;

use super::stage2::{
    Access, MapAttrs, MemType, Stage2, Stage2Error, TableMemory, DESC_ADDR_MASK, ENTRIES, PAGE_SIZE,
};

/// Where the guest's RAM starts in its physical address space (as on QEMU virt).
pub const GUEST_RAM_GPA: u64 = 0x4000_0000;
/// Size of the guest's RAM.
pub const GUEST_RAM_SIZE: u64 = 16 << 20;
/// Where the guest's RAM really is.
pub const GUEST_RAM_PA: u64 = 0x2_0000_0000;
/// Where the stage-2 tables are allocated from.
const STAGE2_TABLES_PA: u64 = 0x1_0000_0000;

// Stage-1 descriptor bits used by the model (VMSAv8-64, 4 KiB granule).
const S1_VALID: u64 = 1 << 0;
const S1_TABLE_OR_PAGE: u64 = 1 << 1;
const S1_AF: u64 = 1 << 10;

/// Simulated physical memory: 4 KiB pages, absent pages read as zero. Every stage-2 descriptor
/// read goes through [`TableMemory::table`], which counts it.
pub struct PhysMem {
    pages: BTreeMap<u64, Box<[u64; ENTRIES]>>,
    next_table: u64,
    stage2_reads: Cell<u32>,
}

impl PhysMem {
    fn new() -> Self {
        PhysMem {
            pages: BTreeMap::new(),
            next_table: STAGE2_TABLES_PA,
            stage2_reads: Cell::new(0),
        }
    }

    fn read(&self, pa: u64) -> u64 {
        let slot = ((pa % PAGE_SIZE) / 8) as usize;
        self.pages
            .get(&(pa - pa % PAGE_SIZE))
            .map_or(0, |page| page[slot])
    }

    fn write(&mut self, pa: u64, value: u64) {
        let slot = ((pa % PAGE_SIZE) / 8) as usize;
        self.pages
            .entry(pa - pa % PAGE_SIZE)
            .or_insert_with(|| Box::new([0; ENTRIES]))[slot] = value;
    }
}

impl TableMemory for PhysMem {
    fn alloc_table(&mut self) -> Option<u64> {
        let pa = self.next_table;
        self.next_table += PAGE_SIZE;
        self.pages.insert(pa, Box::new([0; ENTRIES]));
        Some(pa)
    }

    fn free_table(&mut self, pa: u64) {
        self.pages.remove(&pa);
    }

    fn table(&self, pa: u64) -> &[u64; ENTRIES] {
        self.stage2_reads.set(self.stage2_reads.get() + 1);
        &self.pages[&pa]
    }

    fn table_mut(&mut self, pa: u64) -> &mut [u64; ENTRIES] {
        self.pages
            .get_mut(&pa)
            .expect("stage-2 table was allocated here")
    }
}

/// How stage-2 maps the guest's RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage2Layout {
    /// 4 KiB pages: every stage-2 walk reads 4 descriptors.
    Pages,
    /// 2 MiB blocks: every stage-2 walk reads 3 descriptors.
    Blocks,
}

/// Why the model could not be set up as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Stage-1 start level above 2, or a leaf level other than 2 or 3 or above the start level.
    #[error("unsupported stage-1 level")]
    BadLevel,
    /// GVA or GPA not aligned to the leaf size.
    #[error("address not aligned to the leaf size")]
    Unaligned,
    /// GVA outside the stage-1 input range, or GPA outside guest RAM.
    #[error("address outside the modelled spaces")]
    OutOfRange,
    /// The stage-1 path already holds a mapping there.
    #[error("stage-1 already maps that address")]
    Stage1Conflict,
    /// No guest page left for a stage-1 table.
    #[error("no guest RAM left for a stage-1 table")]
    GuestRamFull,
    /// Building stage-2 failed.
    #[error("stage-2: {0}")]
    Stage2(Stage2Error),
}

/// Where a counted walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkFault {
    /// The GVA is outside the stage-1 input range.
    AddressSize,
    /// An invalid stage-1 descriptor at this level.
    Stage1 { level: u8 },
    /// This GPA (of a stage-1 table or of the output) is not mapped at stage 2.
    Stage2 { gpa: u64 },
}

/// Memory reads of one two-stage walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkCount {
    pub stage1_reads: u32,
    pub stage2_reads: u32,
    pub total: u32,
    /// Where the GVA ends up.
    pub output_pa: u64,
}

/// A guest with stage-1 tables in its RAM, behind a stage-2 tree.
pub struct TwoStageModel {
    phys: PhysMem,
    stage2: Stage2,
    stage1_start: u8,
    ttbr: u64,
    next_guest_page: u64,
}

const fn s1_entry_size(level: u8) -> u64 {
    1 << (12 + 9 * (3 - level as u32))
}

impl TwoStageModel {
    /// A guest whose RAM is mapped at stage 2 as `layout` says, with an empty stage-1 tree that
    /// starts at `stage1_start_level` (0 → 48-bit, 1 → 39-bit, 2 → 30-bit VAs).
    pub fn new(layout: Stage2Layout, stage1_start_level: u8) -> Result<Self, ModelError> {
        if stage1_start_level > 2 {
            return Err(ModelError::BadLevel);
        }
        let mut phys = PhysMem::new();
        let mut stage2 = Stage2::new(&mut phys).map_err(ModelError::Stage2)?;
        let ram = MapAttrs {
            mem: MemType::Normal,
            access: Access::ReadWrite,
            executable: true,
        };
        let chunk = match layout {
            Stage2Layout::Pages => PAGE_SIZE,
            Stage2Layout::Blocks => GUEST_RAM_SIZE,
        };
        for offset in (0..GUEST_RAM_SIZE).step_by(chunk as usize) {
            let (ipa, pa) = (GUEST_RAM_GPA + offset, GUEST_RAM_PA + offset);
            stage2
                .map(&mut phys, ipa, pa, chunk, ram)
                .map_err(ModelError::Stage2)?;
        }
        let mut model = TwoStageModel {
            phys,
            stage2,
            stage1_start: stage1_start_level,
            ttbr: 0,
            next_guest_page: GUEST_RAM_GPA,
        };
        model.ttbr = model.alloc_guest_table()?;
        Ok(model)
    }

    /// TTBR0_EL1's base address: the GPA of the stage-1 root table.
    pub fn ttbr(&self) -> u64 {
        self.ttbr
    }

    /// Number of bits of a GVA the stage-1 tree translates.
    pub fn va_bits(&self) -> u32 {
        12 + 9 * (4 - u32::from(self.stage1_start))
    }

    /// Maps the stage-1 leaf at `leaf_level` (3: 4 KiB page, 2: 2 MiB block) for `gva` to `gpa`,
    /// creating stage-1 tables in guest RAM as needed.
    pub fn map_stage1(&mut self, gva: u64, gpa: u64, leaf_level: u8) -> Result<(), ModelError> {
        if !(2..=3).contains(&leaf_level) || leaf_level < self.stage1_start {
            return Err(ModelError::BadLevel);
        }
        let size = s1_entry_size(leaf_level);
        if !gva.is_multiple_of(size) || !gpa.is_multiple_of(size) {
            return Err(ModelError::Unaligned);
        }
        if gva >> self.va_bits() != 0
            || !(GUEST_RAM_GPA..GUEST_RAM_GPA + GUEST_RAM_SIZE).contains(&gpa)
        {
            return Err(ModelError::OutOfRange);
        }
        let mut table = self.ttbr;
        for level in self.stage1_start..leaf_level {
            let slot = table + 8 * Self::index(level, gva);
            let desc = self.read_guest(slot);
            table = if desc & S1_VALID == 0 {
                let next = self.alloc_guest_table()?;
                self.write_guest(slot, next | S1_TABLE_OR_PAGE | S1_VALID);
                next
            } else if desc & S1_TABLE_OR_PAGE != 0 {
                desc & DESC_ADDR_MASK
            } else {
                return Err(ModelError::Stage1Conflict);
            };
        }
        let slot = table + 8 * Self::index(leaf_level, gva);
        if self.read_guest(slot) & S1_VALID != 0 {
            return Err(ModelError::Stage1Conflict);
        }
        let kind = if leaf_level == 3 {
            S1_TABLE_OR_PAGE | S1_VALID
        } else {
            S1_VALID
        };
        self.write_guest(slot, gpa | S1_AF | kind);
        Ok(())
    }

    fn index(level: u8, va: u64) -> u64 {
        (va >> (12 + 9 * (3 - u32::from(level)))) & (ENTRIES as u64 - 1)
    }

    fn alloc_guest_table(&mut self) -> Result<u64, ModelError> {
        if self.next_guest_page >= GUEST_RAM_GPA + GUEST_RAM_SIZE {
            return Err(ModelError::GuestRamFull);
        }
        let gpa = self.next_guest_page;
        self.next_guest_page += PAGE_SIZE;
        Ok(gpa)
    }

    /// Setup-time access to guest RAM; guest RAM is always mapped, so the walk cannot fail.
    fn guest_pa(&self, gpa: u64) -> u64 {
        self.stage2.translate(&self.phys, gpa).map_or(0, |t| t.pa)
    }

    fn read_guest(&self, gpa: u64) -> u64 {
        self.phys.read(self.guest_pa(gpa))
    }

    fn write_guest(&mut self, gpa: u64, value: u64) {
        let pa = self.guest_pa(gpa);
        self.phys.write(pa, value);
    }

    /// A counted stage-2 walk of `gpa`.
    fn stage2_walk(&self, gpa: u64) -> Result<u64, WalkFault> {
        self.stage2
            .translate(&self.phys, gpa)
            .map(|t| t.pa)
            .ok_or(WalkFault::Stage2 { gpa })
    }
}

/// Walks `gva` through stage 1 and stage 2 with cold TLBs, counting every descriptor read.
pub fn count_walk_accesses(model: &TwoStageModel, gva: u64) -> Result<WalkCount, WalkFault> {
    if gva >> model.va_bits() != 0 {
        return Err(WalkFault::AddressSize);
    }
    model.phys.stage2_reads.set(0);
    let mut stage1_reads = 0;
    // TTBR0_EL1 is a register: getting the root's GPA reads no memory.
    let mut table_gpa = model.ttbr;
    let mut level = model.stage1_start;
    let output_gpa = loop {
        let desc_gpa = table_gpa + 8 * TwoStageModel::index(level, gva);
        let desc_pa = model.stage2_walk(desc_gpa)?;
        let desc = model.phys.read(desc_pa);
        stage1_reads += 1;
        let is_table_or_page = desc & S1_TABLE_OR_PAGE != 0;
        if desc & S1_VALID == 0 || (level == 3 && !is_table_or_page) {
            return Err(WalkFault::Stage1 { level });
        }
        if level < 3 && is_table_or_page {
            table_gpa = desc & DESC_ADDR_MASK;
            level += 1;
            continue;
        }
        let size = s1_entry_size(level);
        break (desc & DESC_ADDR_MASK & !(size - 1)) + (gva & (size - 1));
    };
    let output_pa = model.stage2_walk(output_gpa)?;
    let stage2_reads = model.phys.stage2_reads.get();
    Ok(WalkCount {
        stage1_reads,
        stage2_reads,
        total: stage1_reads + stage2_reads,
        output_pa,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GVA: u64 = 0x0000_7f12_3456_7000;
    const DATA_GPA: u64 = GUEST_RAM_GPA + (8 << 20) + 0x5000;

    fn formula(n: u32, m: u32) -> u32 {
        (n + 1) * (m + 1) - 1
    }

    #[test]
    fn four_plus_four_levels_is_24() {
        let mut model = TwoStageModel::new(Stage2Layout::Pages, 0).unwrap();
        model.map_stage1(GVA, DATA_GPA, 3).unwrap();
        let count = count_walk_accesses(&model, GVA + 0x10).unwrap();
        assert_eq!(count.stage1_reads, 4);
        assert_eq!(count.stage2_reads, 20);
        assert_eq!(count.total, 24);
        assert_eq!(
            count.output_pa,
            GUEST_RAM_PA + (DATA_GPA - GUEST_RAM_GPA) + 0x10
        );
    }

    #[test]
    fn stage2_blocks_give_19() {
        let mut model = TwoStageModel::new(Stage2Layout::Blocks, 0).unwrap();
        model.map_stage1(GVA, DATA_GPA, 3).unwrap();
        let count = count_walk_accesses(&model, GVA).unwrap();
        assert_eq!(
            (count.stage1_reads, count.stage2_reads, count.total),
            (4, 15, 19)
        );
        assert_eq!(count.total, formula(4, 3));
        assert_eq!(count.output_pa, GUEST_RAM_PA + (DATA_GPA - GUEST_RAM_GPA));
    }

    #[test]
    fn general_formula_holds() {
        let mut checked = 0;
        for (layout, m) in [(Stage2Layout::Pages, 4), (Stage2Layout::Blocks, 3)] {
            for start in 0..=2u8 {
                for leaf in start.max(2)..=3 {
                    let mut model = TwoStageModel::new(layout, start).unwrap();
                    let gva = (0x1234_5678_9000u64 & ((1 << model.va_bits()) - 1))
                        & !(s1_entry_size(leaf) - 1);
                    let gpa = GUEST_RAM_GPA + (4 << 20);
                    model.map_stage1(gva, gpa, leaf).unwrap();
                    let n = u32::from(leaf - start) + 1;
                    let count = count_walk_accesses(&model, gva + 0x88).unwrap();
                    assert_eq!(count.stage1_reads, n, "start {start} leaf {leaf}");
                    assert_eq!(count.stage2_reads, (n + 1) * m);
                    assert_eq!(count.total, formula(n, m), "n = {n}, m = {m}");
                    assert_eq!(count.output_pa, GUEST_RAM_PA + (4 << 20) + 0x88);
                    checked += 1;
                }
            }
        }
        // Six stage-1 shapes (n from 1 to 4) against m ∈ {3, 4}.
        assert_eq!(checked, 12);
    }

    #[test]
    fn walk_faults() {
        let mut model = TwoStageModel::new(Stage2Layout::Blocks, 1).unwrap();
        assert_eq!(
            count_walk_accesses(&model, 1 << 39),
            Err(WalkFault::AddressSize)
        );
        assert_eq!(
            count_walk_accesses(&model, 0x1000),
            Err(WalkFault::Stage1 { level: 1 })
        );
        model.map_stage1(0x20_0000, DATA_GPA & !0xfff, 3).unwrap();
        assert_eq!(
            count_walk_accesses(&model, 0x40_0000),
            Err(WalkFault::Stage1 { level: 2 })
        );
        assert_eq!(
            count_walk_accesses(&model, 0x20_1000),
            Err(WalkFault::Stage1 { level: 3 })
        );
        // A stage-1 descriptor pointing outside guest RAM faults at stage 2.
        let leaf_slot = {
            let l2 = model.read_guest(model.ttbr()) & DESC_ADDR_MASK;
            let l3 = model.read_guest(l2 + 8) & DESC_ADDR_MASK;
            l3 + 8 * 0x20
        };
        model.write_guest(leaf_slot, 0x8000_0000 | S1_AF | S1_TABLE_OR_PAGE | S1_VALID);
        assert_eq!(
            count_walk_accesses(&model, 0x22_0000),
            Err(WalkFault::Stage2 { gpa: 0x8000_0000 })
        );
    }

    #[test]
    fn setup_errors() {
        assert_eq!(
            TwoStageModel::new(Stage2Layout::Pages, 3).err(),
            Some(ModelError::BadLevel)
        );
        let mut model = TwoStageModel::new(Stage2Layout::Blocks, 1).unwrap();
        let gpa = GUEST_RAM_GPA + (2 << 20);
        assert_eq!(model.map_stage1(0, gpa, 1), Err(ModelError::BadLevel));
        assert_eq!(model.map_stage1(0x1000, gpa, 2), Err(ModelError::Unaligned));
        assert_eq!(
            model.map_stage1(0, gpa + 0x1000, 2),
            Err(ModelError::Unaligned)
        );
        assert_eq!(
            model.map_stage1(1 << 39, gpa, 3),
            Err(ModelError::OutOfRange)
        );
        assert_eq!(model.map_stage1(0, 0x1000, 3), Err(ModelError::OutOfRange));
        model.map_stage1(0, gpa, 2).unwrap();
        assert_eq!(
            model.map_stage1(0, gpa, 2),
            Err(ModelError::Stage1Conflict),
            "leaf taken"
        );
        assert_eq!(
            model.map_stage1(0x1000, gpa, 3),
            Err(ModelError::Stage1Conflict),
            "block on the path"
        );
        let mut small = TwoStageModel::new(Stage2Layout::Blocks, 2).unwrap();
        assert_eq!(
            small.map_stage1(0, gpa, 1),
            Err(ModelError::BadLevel),
            "leaf above the start level"
        );
        small.next_guest_page = GUEST_RAM_GPA + GUEST_RAM_SIZE;
        assert_eq!(small.map_stage1(0, gpa, 3), Err(ModelError::GuestRamFull));
        let texts: alloc::vec::Vec<_> = [
            ModelError::BadLevel,
            ModelError::Unaligned,
            ModelError::OutOfRange,
            ModelError::Stage1Conflict,
            ModelError::GuestRamFull,
            ModelError::Stage2(Stage2Error::OutOfMemory),
        ]
        .iter()
        .map(|e| e.to_string())
        .collect();
        assert!(texts.iter().all(|t| !t.is_empty()));
        assert!(texts[5].contains("no memory"));
    }
}
