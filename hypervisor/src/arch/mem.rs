//! The hypervisor's own memory view and raw physical-memory access.
//!
//! EL2 runs with an identity map (VA = PA) built once from 1 GiB blocks: device memory below RAM,
//! normal write-back memory for RAM. Because of that identity map, the hypervisor can reach any
//! physical frame by its address; the functions here are the only places that turn a physical
//! address into a reference.

use alloc::vec::Vec;
use core::arch::asm;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use aarch64_cpu::registers::{Writeable, MAIR_EL2, SCTLR_EL2, TCR_EL2, TTBR0_EL2};
use spin::Once;

use hypervisor::balloon::VmBalloon;
use hypervisor::grant::copy::CopyView;
use hypervisor::grant::pins::Pin;
use hypervisor::mm::frame_alloc::FrameAllocator;
use hypervisor::mm::ram_map::SharedCode;
use hypervisor::mm::stage2::TableMemory;
use hypervisor::mm::word_edit;
use shared_abi::layout::{BLOCK_SIZE, PAGE_SIZE};

const GIB: u64 = 1 << 30;
const ENTRIES: usize = 512;

#[repr(C, align(4096))]
struct Level1Table([u64; ENTRIES]);

/// The EL2 level-1 table; written once by the primary before any MMU is enabled.
static EL2_TABLE: Once<&'static Level1Table> = Once::new();
static mut EL2_TABLE_STORAGE: Level1Table = Level1Table([0; ENTRIES]);

const MAIR_NORMAL_WB: u64 = 0; // AttrIndx 0
const MAIR_DEVICE: u64 = 1; // AttrIndx 1
const DESC_BLOCK: u64 = 0b01;
const DESC_AF: u64 = 1 << 10;
const DESC_SH_INNER: u64 = 0b11 << 8;
const DESC_XN: u64 = 1 << 54;

/// Builds the EL2 identity map: 0..RAM start is device memory, RAM is normal memory, and the 1 GiB
/// blocks from 256 GiB (QEMU virt's high PCIe ECAM/MMIO) are device memory for later passthrough.
pub fn build_el2_identity_map(ram_start: u64, ram_end: u64) {
    EL2_TABLE.call_once(|| {
        // SAFETY: called once (Once) on the primary before secondaries start; nothing else
        // references the storage, so the unique &mut is sound, and it is never written again.
        let table = unsafe { &mut *core::ptr::addr_of_mut!(EL2_TABLE_STORAGE) };
        for (index, entry) in table.0.iter_mut().enumerate() {
            let base = index as u64 * GIB;
            *entry = if base < ram_start || (256..512).contains(&index) {
                base | DESC_BLOCK | DESC_AF | (MAIR_DEVICE << 2) | DESC_XN
            } else if base < ram_end {
                base | DESC_BLOCK | DESC_AF | DESC_SH_INNER | (MAIR_NORMAL_WB << 2)
            } else {
                0
            };
        }
        &*table
    });
}

/// Turns the EL2 MMU and caches on with the identity map (every pCPU calls this).
pub fn enable_el2_mmu() {
    let table = EL2_TABLE
        .get()
        .expect("EL2 identity map built before enabling the MMU");
    MAIR_EL2.set(0x04ff); // Attr0 = Normal WB RA/WA, Attr1 = Device-nGnRE
    TCR_EL2.write(
        TCR_EL2::T0SZ.val(25) // 39-bit VA: one level-1 table of 1 GiB blocks
            + TCR_EL2::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL2::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL2::SH0::Inner
            + TCR_EL2::TG0::KiB_4
            + TCR_EL2::PS::Bits_40,
    );
    TTBR0_EL2.set(table.0.as_ptr() as u64);
    // SAFETY: barriers and a full EL2 TLB invalidate before turning translation on; the identity
    // map keeps every address the code uses valid across the switch.
    unsafe { asm!("dsb ish", "tlbi alle2", "dsb ish", "isb", options(nostack)) };
    SCTLR_EL2.write(
        SCTLR_EL2::M::Enable
            + SCTLR_EL2::C::Cacheable
            + SCTLR_EL2::I::Cacheable
            + SCTLR_EL2::SA::Enable,
    );
    super::cpu::isb();
}

/// A physical range as a byte slice.
///
/// # Safety
/// The range must be RAM the caller owns exclusively for the lifetime it picks (a frame it
/// allocated, or the boot bundle before VMs start) and must be inside the identity map.
pub unsafe fn phys_bytes_mut<'a>(pa: u64, len: usize) -> &'a mut [u8] {
    // SAFETY: forwarded to the caller.
    unsafe { core::slice::from_raw_parts_mut(pa as *mut u8, len) }
}

/// # Safety
/// As [`phys_bytes_mut`], for shared read access.
pub unsafe fn phys_bytes<'a>(pa: u64, len: usize) -> &'a [u8] {
    // SAFETY: forwarded to the caller.
    unsafe { core::slice::from_raw_parts(pa as *const u8, len) }
}

/// One page of a VM's RAM that the hypervisor keeps to write words into without the HV lock:
/// the VM's event page, held only in the VM's event-channel slot (`sharing::VmEvents`, under
/// that VM's event lock). Made only by [`GuestRam::page`] from a live VM's RAM under the HV
/// lock. The slot forgets it (under its lock) before that RAM is freed, reloaded or given away:
/// a stop forgets the VM's ports and page before its RAM changes hands, and the balloon refuses
/// to take the registered event page. So the page is the VM's for as long as it is held.
#[derive(Clone, Copy, Debug)]
pub struct GuestPage {
    pa: u64,
}

impl GuestPage {
    /// The page as atomic words.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: a page-aligned page of a VM's RAM in the identity map (`GuestRam::page`
        // checked it), still the VM's while the page is held (the type's rule above); the guest
        // accesses it concurrently, which is what atomics allow.
        unsafe {
            core::slice::from_raw_parts(self.pa as *const AtomicU64, (PAGE_SIZE / 8) as usize)
        }
    }
}

/// A VM's RAM as the hypervisor touches it while the VM may be running: only through atomics and
/// `memmove` on raw pointers (never references to plain bytes), because the VM's vCPUs access it
/// concurrently. Every access is bounds-checked against the range, so the one obligation is at
/// construction.
#[derive(Clone, Copy)]
pub struct GuestRam<'a> {
    pa: u64,
    len: u64,
    /// The VM's balloon record: pages it gave back are not its RAM any more (their frames may
    /// belong to another VM), nor is its shared code (mapped from the hypervisor's copy), so
    /// every range touching either is refused.
    balloon: Option<&'a VmBalloon>,
    _owner: PhantomData<&'a ()>,
}

impl<'a> GuestRam<'a> {
    /// # Safety
    /// `[pa, pa + len)` must be RAM inside the identity map that stays allocated (to the VM it is
    /// a view of) for `'a`.
    pub unsafe fn new(pa: u64, len: u64) -> GuestRam<'a> {
        GuestRam {
            pa,
            len,
            balloon: None,
            _owner: PhantomData,
        }
    }

    /// The same RAM without the pages `balloon` says the VM gave back or runs as shared code.
    pub fn without_given(self, balloon: &'a VmBalloon) -> GuestRam<'a> {
        GuestRam {
            balloon: Some(balloon),
            ..self
        }
    }

    /// The PA of `[offset, offset + len)`, if that range is inside and none of it was given
    /// back or is shared code.
    fn range(&self, offset: u64, len: u64) -> Option<u64> {
        let inside = offset.checked_add(len)? <= self.len;
        let given = self.balloon.is_some_and(|b| b.off_limits(offset, len));
        (inside && !given).then_some(self.pa + offset)
    }

    /// `words` atomic words at byte `offset`; `None` if outside or not 8-byte aligned.
    pub fn atomics(&self, offset: u64, words: usize) -> Option<&'a [AtomicU64]> {
        let pa = self
            .range(offset, (words as u64).checked_mul(8)?)
            .filter(|pa| pa.is_multiple_of(8))?;
        // SAFETY: inside the range `new` vouches for, aligned for AtomicU64 (checked); the guest
        // accesses the same memory concurrently, which is what atomics allow.
        Some(unsafe { core::slice::from_raw_parts(pa as *const AtomicU64, words) })
    }

    /// The page at byte `offset` (page aligned, inside, not given back), to keep as the VM's
    /// event page ([`GuestPage`]).
    pub fn page(&self, offset: u64) -> Option<GuestPage> {
        if !offset.is_multiple_of(PAGE_SIZE) {
            return None;
        }
        let pa = self.range(offset, PAGE_SIZE)?;
        Some(GuestPage { pa })
    }

    /// `memmove` of `len` bytes from `src` at `src_offset` to `self` at `dst_offset` (the two may
    /// be the same RAM and overlap). False, and nothing copied, if either range is outside.
    pub fn copy_from(
        &self,
        dst_offset: u64,
        src: &GuestRam<'_>,
        src_offset: u64,
        len: u64,
    ) -> bool {
        let (Some(dst_pa), Some(src_pa)) =
            (self.range(dst_offset, len), src.range(src_offset, len))
        else {
            return false;
        };
        // SAFETY: both ranges are inside RAM their constructors vouch for (checked); guest RAM is
        // never behind a Rust reference to plain bytes, and `copy` allows overlap.
        unsafe { core::ptr::copy(src_pa as *const u8, dst_pa as *mut u8, len as usize) };
        true
    }
}

/// A range of a VM's RAM as its copy view (`hypervisor::grant::copy::CopyView`) vouched for
/// under the view's lock, for GRANT_COPY to use once that lock is dropped, with a pin on that
/// VM's RAM held ([`copy_pinned`], [`store_pinned`]).
///
/// The view's rule: it has RAM only while that RAM is the VM's, and every path that frees,
/// scrubs, reloads or gives away a VM's RAM first changes the view (under its lock, so not
/// while anyone checks against it) and then waits for the VM's pins (`sharing.rs`,
/// `hypervisor::grant::pins`). So a range taken from the view with the VM pinned stays the
/// VM's RAM until the pin is dropped.
#[derive(Clone, Copy, Debug)]
pub struct ViewRange {
    pa: u64,
    len: u64,
}

impl ViewRange {
    /// `[gpa, gpa + len)` of the VM of `view` (held under its lock), if it is all that VM's RAM.
    pub fn of(view: &CopyView, gpa: u64, len: u64) -> Option<ViewRange> {
        Some(ViewRange {
            pa: view.host_pa(gpa, len)?,
            len,
        })
    }
}

/// The word at `gpa` of the VM of `view`, read under the view's lock; `None` if it is not the
/// VM's RAM or not 8-byte aligned.
pub fn view_word(view: &CopyView, gpa: u64) -> Option<&AtomicU64> {
    let pa = view.host_pa(gpa, 8).filter(|pa| pa.is_multiple_of(8))?;
    // SAFETY: the view has this RAM only while it is the VM's, and cannot change while it is
    // borrowed (its changes need its lock, which the borrow's holder has); aligned (checked);
    // the guest accesses the same memory concurrently, which is what atomics allow.
    Some(unsafe { &*(pa as *const AtomicU64) })
}

/// `memmove` of `len` bytes from `src` to `dst`, each taken from its VM's view with that VM
/// pinned (`_pins`, held for the call).
pub fn copy_pinned(dst: ViewRange, src: ViewRange, len: u64, _pins: [&Pin<'_>; 2]) {
    if len > dst.len || len > src.len {
        return;
    }
    // SAFETY: both ranges came from views under their locks and their VMs are pinned, so they
    // are still those VMs' RAM (the rule on `ViewRange`); `len` is inside both (checked).
    // Guest RAM is never behind a Rust reference to plain bytes, and `copy` allows overlap.
    unsafe { core::ptr::copy(src.pa as *const u8, dst.pa as *mut u8, len as usize) };
}

/// Stores `value` in the word at the start of `range` (a GRANT_COPY op's status word), its VM
/// pinned (`_pin`).
pub fn store_pinned(range: ViewRange, _pin: &Pin<'_>, value: u64) {
    if range.len < 8 || !range.pa.is_multiple_of(8) {
        return;
    }
    // SAFETY: as in `copy_pinned`: the VM's RAM while pinned; aligned and inside (checked).
    unsafe { &*(range.pa as *const AtomicU64) }.store(value, Ordering::SeqCst);
}

impl GuestRam<'_> {
    /// Writes `bytes` at `offset`; false, and nothing written, if the range is outside.
    pub fn write(&self, offset: u64, bytes: &[u8]) -> bool {
        let Some(pa) = self.range(offset, bytes.len() as u64) else {
            return false;
        };
        // SAFETY: inside RAM the constructor vouches for (checked); a private buffer cannot
        // overlap guest RAM, and no reference to guest bytes is made.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), pa as *mut u8, bytes.len()) };
        true
    }

    /// Zeroes the whole range (a VM being loaded, which has given nothing back).
    pub fn zero(&self) {
        if self.balloon.is_some_and(|b| b.given_pages() > 0) {
            return;
        }
        // SAFETY: exactly the range the constructor vouches for, through raw pointers and
        // cache maintenance only.
        unsafe { zero_phys(self.pa, self.len) };
    }
}

/// A VM's RAM: one 2 MiB-aligned run of frames from the frame allocator, owned by this value
/// until it is freed or handed over ([`VmRam::into_pa`]). Everything the hypervisor does to it
/// goes through [`GuestRam`] views, which are sound while the VM's vCPUs run.
pub struct VmRam {
    pa: u64,
    len: u64,
}

impl VmRam {
    /// `len` bytes (a multiple of 2 MiB) of free RAM, or `None`.
    pub fn alloc(frames: &mut FrameAllocator, len: u64) -> Option<VmRam> {
        let pages = (len / PAGE_SIZE) as usize;
        let pa = frames.alloc(pages, (BLOCK_SIZE / PAGE_SIZE) as usize)?;
        Some(VmRam { pa, len })
    }

    /// Takes back a run that an earlier `VmRam` (from [`VmRam::alloc`], of `len` bytes) handed
    /// over with [`VmRam::into_pa`]: a warm spare of RAM, owned by the spare's record meanwhile.
    pub fn from_pa(pa: u64, len: u64) -> VmRam {
        VmRam { pa, len }
    }

    pub fn pa(&self) -> u64 {
        self.pa
    }

    /// The RAM, for access while the VM's vCPUs may run.
    pub fn view(&self) -> GuestRam<'_> {
        // SAFETY: the run was allocated to this value and is freed only by consuming it, which
        // cannot happen while this borrow lives.
        unsafe { GuestRam::new(self.pa, self.len) }
    }

    /// Cleans the caches for code just written into the RAM (see [`sync_for_execution`]).
    pub fn sync_for_execution(&self) {
        sync_for_execution(self.pa, self.len);
    }

    /// As [`VmRam::sync_for_execution`], for `[offset, offset + len)` only (clipped to the RAM):
    /// RAM whose rest is zeroed and already cleaned (a warm spare, [`scrub_run`]).
    pub fn sync_range_for_execution(&self, offset: u64, len: u64) {
        let start = offset.min(self.len);
        let end = offset.saturating_add(len).min(self.len);
        sync_for_execution(self.pa + start, end - start);
    }

    /// Gives the frames back to the allocator, except the pages given back to the balloon
    /// (`kept` lists the runs `(first page, pages)` still owned).
    pub fn free(self, frames: &mut FrameAllocator, kept: &[(u64, u64)]) {
        free_kept_runs(frames, self.pa, kept);
    }

    /// Hands the run over to the caller, which now owns (and must eventually free) `[pa, pa +
    /// len)`: RAM kept for peers that still map it.
    pub fn into_pa(self) -> u64 {
        self.pa
    }
}

/// Frees the runs `(first page, pages)` of the RAM at `pa` (a VM's RAM minus the pages it gave
/// back to the balloon, which went back to the allocator one by one).
pub fn free_kept_runs(frames: &mut FrameAllocator, pa: u64, kept: &[(u64, u64)]) {
    for &(first, pages) in kept {
        let _ = frames.free(pa + first * PAGE_SIZE, pages as usize);
    }
}

/// Zeroes the frame at `pa` (a page given back to the balloon, or about to be given to a VM).
pub fn scrub_frame(pa: u64) {
    // SAFETY: the callers pass a frame they own (just unmapped from its VM and invalidated,
    // with its VM's copy pins drained, and not yet freed; or just allocated), identity-mapped
    // RAM no one else accesses.
    unsafe { zero_phys(pa, PAGE_SIZE) };
}

/// DC ZVA's block in bytes, read once from DCZID_EL0: 0 until read, 1 when DC ZVA is
/// prohibited (DZP), else 4 << BS.
static ZVA_BLOCK: AtomicUsize = AtomicUsize::new(0);

/// The block DC ZVA zeroes, or `None` when this CPU prohibits it.
pub fn zva_block() -> Option<u64> {
    let mut block = ZVA_BLOCK.load(Ordering::Relaxed);
    if block == 0 {
        let dczid: u64;
        // SAFETY: reading an identification register has no side effect.
        unsafe { asm!("mrs {}, dczid_el0", out(reg) dczid, options(nomem, nostack)) };
        // DZP (bit 4) set: DC ZVA is prohibited. Else BS (bits 3:0) is log2 of the block in
        // words.
        block = if dczid & (1 << 4) != 0 {
            1
        } else {
            4usize << (dczid & 0xf)
        };
        ZVA_BLOCK.store(block, Ordering::Relaxed);
    }
    (block > 1).then_some(block as u64)
}

/// Zeroes `[pa, pa + len)`: with DC ZVA, one instruction per block (under QEMU one helper
/// call where a store loop is one translated store per 16 bytes), the unaligned head and tail
/// with stores; all of it with stores when DCZID_EL0 prohibits DC ZVA.
///
/// # Safety
/// The range must be RAM inside the identity map (Normal memory, as DC ZVA needs) that the
/// caller may write; no Rust reference to its bytes may be live.
pub unsafe fn zero_phys(pa: u64, len: u64) {
    let end = pa + len;
    let Some(block) = zva_block().filter(|&b| len >= 2 * b) else {
        // SAFETY: forwarded to the caller.
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, len as usize) };
        return;
    };
    let first = pa.next_multiple_of(block);
    let last = end & !(block - 1);
    // SAFETY: forwarded to the caller; head and tail are inside the range.
    unsafe {
        core::ptr::write_bytes(pa as *mut u8, 0, (first - pa) as usize);
        core::ptr::write_bytes(last as *mut u8, 0, (end - last) as usize);
    }
    let mut at = first;
    while at < last {
        // SAFETY: zeroes the aligned block at `at`, inside the range the caller vouches for;
        // DC ZVA is a store as far as ordering goes.
        unsafe { asm!("dc zva, {}", in(reg) at, options(nostack)) };
        at += block;
    }
    // SAFETY: a barrier only: the zeroes are visible before whatever the caller does next.
    unsafe { asm!("dsb ish", options(nostack)) };
}

/// Copies `bytes` (a page multiple, validated by the bundle) of an image's start into frames of
/// their own, zero past the image's end, for every VM of that image to map read-only
/// (`hypervisor::mm::ram_map`). Cleaned to the point of coherency, because a VM fetches its first
/// instructions with its MMU and caches off. Never freed. `None`: no free run of frames.
pub fn share_image_code(
    frames: &mut FrameAllocator,
    image: &[u8],
    bytes: u64,
) -> Option<SharedCode> {
    if bytes == 0 || !bytes.is_multiple_of(PAGE_SIZE) {
        return None;
    }
    let pa = frames.alloc((bytes / PAGE_SIZE) as usize, 1)?;
    let copied = image.len().min(bytes as usize);
    // SAFETY: just allocated to this copy, which is never freed: identity-mapped RAM that no VM
    // maps yet and nothing else references.
    let copy = unsafe { phys_bytes_mut(pa, bytes as usize) };
    let (head, tail) = copy.split_at_mut(copied);
    if let Some(code) = image.get(..copied) {
        head.copy_from_slice(code);
    }
    tail.fill(0);
    sync_for_execution(pa, bytes);
    Some(SharedCode { pa, bytes })
}

/// A frame the hypervisor owns for the life of the system and may map into VMs (a connection's
/// control page).
pub struct OwnedFrame {
    pa: u64,
}

impl OwnedFrame {
    /// A zeroed frame from the frame allocator, never given back.
    pub fn alloc_zeroed(frames: &mut FrameAllocator) -> Option<Self> {
        let pa = frames.alloc(1, 1)?;
        let frame = OwnedFrame { pa };
        for word in frame.atomics() {
            word.store(0, Ordering::Relaxed);
        }
        Some(frame)
    }

    pub fn pa(&self) -> u64 {
        self.pa
    }

    /// Edits the page through `edit`, which gets a private copy of it (each word loaded once):
    /// only the words `edit` changed are stored back, each with one atomic store, from the
    /// last to the first, with release order (`hypervisor::mm::word_edit`). The VMs the page
    /// is mapped into write it at any time (a control page's sections, its header by a
    /// hostile front-end), so the page is never a `&mut [u8]`, and words the hypervisor did
    /// not change are never written back over a VM's newer ones. A section's state word is
    /// its first: stored last, so a VM that sees the new state also sees the new fields that
    /// go with it.
    pub fn update<R>(&self, edit: impl FnOnce(&mut [u8]) -> R) -> R {
        let words = self.atomics();
        let before: Vec<u64> = words.iter().map(|w| w.load(Ordering::Acquire)).collect();
        let mut copy = word_edit::bytes_of(&before);
        let result = edit(&mut copy);
        for (i, word) in word_edit::changed_words(&before, &copy) {
            if let Some(slot) = words.get(i) {
                slot.store(word, Ordering::Release);
            }
        }
        result
    }

    /// The frame as atomic words, for a page the hypervisor and a VM both write at any time
    /// (an I/O request page, a control page).
    pub fn atomics(&self) -> &[AtomicU64] {
        // SAFETY: the frame came from the allocator in `alloc_zeroed` and is never freed, so
        // it is identity-mapped RAM owned by this value for as long as it lives; page aligned,
        // so aligned for AtomicU64; the VMs it is mapped into access it concurrently, which
        // atomics allow.
        unsafe { core::slice::from_raw_parts(self.pa as *const AtomicU64, 4096 / 8) }
    }
}

/// Like [`tlbi_ipas`], for the VM with `vmid` and stage-2 root `root_pa`, which need not be the
/// one loaded on this pCPU: VTTBR_EL2 is switched for the invalidation and restored after.
pub fn tlbi_ipas_for(vmid: u16, root_pa: u64, pieces: &[(u64, u64)]) {
    let saved = super::cpu::vttbr();
    super::cpu::set_vttbr(vmid, root_pa);
    tlbi_ipas(pieces);
    super::cpu::restore_vttbr(saved);
}

/// Zeroes `[pa, pa + len)` and cleans and invalidates it to the point of coherency, so a VM
/// that gets it next with its caches off sees zeroes and no stale line (a chunk of a warm
/// spare of RAM, scrubbed by an idle pCPU with no lock held).
pub fn scrub_run(pa: u64, len: u64) {
    // SAFETY: the callers (`spare`) pass a run of a spare no VM maps: at boot the whole run,
    // just allocated, before any vCPU runs; later a chunk claimed under the HV lock, which
    // nothing else takes, frees or zeroes until it is reported done. Identity-mapped RAM, no
    // reference to its bytes exists.
    unsafe { zero_phys(pa, len) };
    clean_invalidate(pa, len);
    // SAFETY: a barrier only: the maintenance is complete before the chunk is reported done.
    unsafe { asm!("dsb ish", options(nostack)) };
}

/// DC CIVAC over `[pa, pa + len)`, line by line.
fn clean_invalidate(pa: u64, len: u64) {
    const LINE: u64 = 64;
    let mut line = pa & !(LINE - 1);
    while line < pa + len {
        // SAFETY: cache maintenance by address on mapped RAM has no other effect (the lines
        // are written back before they are dropped).
        unsafe { asm!("dc civac, {}", in(reg) line, options(nostack)) };
        line += LINE;
    }
}

/// Like [`tlbi_current_vmid_all`], for the VM with `vmid` and stage-2 root `root_pa`, which
/// need not be the one loaded on this pCPU (many unmaps of that VM at once).
pub fn tlbi_vmid_all_for(vmid: u16, root_pa: u64) {
    let saved = super::cpu::vttbr();
    super::cpu::set_vttbr(vmid, root_pa);
    tlbi_current_vmid_all();
    super::cpu::restore_vttbr(saved);
}

/// Cleans and invalidates the data cache to the point of coherency and invalidates the
/// instruction cache for a range just written with code, so a vCPU with its MMU and caches off
/// sees it. Invalidate too (DC CIVAC, not DC CVAC): a clean line left in the cache would hide
/// from the VM, once it turns its caches on, what it wrote with them off (its own stack and
/// zeroed BSS), as the arm64 Linux boot protocol's "clean and invalidate" is there for.
pub fn sync_for_execution(pa: u64, len: u64) {
    clean_invalidate(pa, len);
    // SAFETY: barrier and instruction-cache invalidation only.
    unsafe { asm!("dsb ish", "ic ialluis", "dsb ish", "isb", options(nostack)) };
}

/// Invalidates stage-2 TLB entries for the given IPA pieces of the VM whose VMID is in VTTBR_EL2,
/// then the combined stage-1+2 entries for that VMID: TLBI IPAS2E1IS per piece, then
/// VMALLE1IS — the lecture's sequence, not a full flush.
pub fn tlbi_ipas(pieces: &[(u64, u64)]) {
    // SAFETY: TLB maintenance only.
    unsafe { asm!("dsb ishst", options(nostack)) };
    // Each piece is one page or one block descriptor; one TLBI by any address inside a block
    // removes the entry for the whole block.
    for &(ipa, _size) in pieces {
        // SAFETY: TLB maintenance only; the operand is IPA >> 12.
        unsafe { asm!("tlbi ipas2e1is, {}", in(reg) ipa >> 12, options(nostack)) };
    }
    // SAFETY: TLB maintenance only.
    unsafe {
        asm!(
            "dsb ish",
            "tlbi vmalle1is",
            "dsb ish",
            "isb",
            options(nostack)
        )
    };
}

/// Invalidates every stage-1 and stage-2 entry of the VMID currently in VTTBR_EL2 (used when a
/// VMID is reused by a new VM).
pub fn tlbi_current_vmid_all() {
    // SAFETY: TLB maintenance only.
    unsafe {
        asm!(
            "dsb ishst",
            "tlbi vmalls12e1is",
            "dsb ish",
            "isb",
            options(nostack)
        )
    };
}

/// Stage-2 tables live in frames from the hypervisor's frame allocator, reached through the
/// identity map.
pub struct PhysTableMemory<'a> {
    pub frames: &'a mut hypervisor::mm::frame_alloc::FrameAllocator,
}

impl TableMemory for PhysTableMemory<'_> {
    fn alloc_table(&mut self) -> Option<u64> {
        let pa = self.frames.alloc(1, 1)?;
        // SAFETY: the frame was just allocated to us and is identity mapped.
        unsafe { phys_bytes_mut(pa, 4096) }.fill(0);
        Some(pa)
    }

    fn free_table(&mut self, pa: u64) {
        let _ = self.frames.free(pa, 1);
    }

    fn table(&self, pa: u64) -> &[u64; 512] {
        // SAFETY: stage-2 code only passes addresses it got from alloc_table (live table frames
        // owned by this allocator), which are 4 KiB aligned and identity mapped.
        unsafe { &*(pa as *const [u64; 512]) }
    }

    fn table_mut(&mut self, pa: u64) -> &mut [u64; 512] {
        // SAFETY: as in `table`; `&mut self` makes the borrow unique within the hypervisor, which
        // holds the VM lock while editing a VM's tables.
        unsafe { &mut *(pa as *mut [u64; 512]) }
    }
}

/// The device tree blob at `pa`, sized by its header, or None if no DTB is there.
///
/// # Safety
/// `pa` must be readable RAM inside the identity map (QEMU's DTB placement).
pub unsafe fn dtb_blob(pa: u64) -> Option<&'static [u8]> {
    // SAFETY: forwarded to the caller: the header is readable.
    let header = unsafe { phys_bytes(pa, 8) };
    if header[..4] != [0xd0, 0x0d, 0xfe, 0xed] {
        return None;
    }
    let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    // SAFETY: the header says the blob is `size` bytes long and QEMU placed all of it.
    Some(unsafe { phys_bytes(pa, size) })
}
