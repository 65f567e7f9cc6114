//! The boot stub and everything it needs before Rust can run: `_start` (vCPU 0) and the secondary
//! vCPU entry in assembly, the per-vCPU stacks, the static identity-map page table, the EL1
//! MMU/cache/FP/VBAR setup, and the few raw-memory views the runtime takes of its own image
//! (linker symbols, the start-info page, the heap region).

#[cfg(target_arch = "aarch64")]
use core::arch::global_asm;
use core::cell::UnsafeCell;

use shared_abi::grant::{GRANT_WINDOW_BASE, GRANT_WINDOW_SIZE};
use shared_abi::layout::{GUEST_RAM_BASE, MAX_VCPUS_PER_VM, MAX_VM_RAM, PAGE_SIZE};
use shared_abi::start_info::StartInfo;

/// Stack per vCPU. 64 KiB: device drivers keep whole virtqueue shadows in structures that are
/// built on the stack and moved (virtio-drivers' VirtIONet is several KiB), and an overflow has no
/// guard page here (1 GiB stage-1 blocks): it silently runs into .data and .rodata, where it once
/// zeroed the identity map's first entry.
pub const STACK_SIZE: usize = 64 * 1024;
const MAX_VCPUS: usize = MAX_VCPUS_PER_VM as usize;

/// The stacks live in .bss; the boot code points SP at the top of slot `vCPU index`.
#[repr(C, align(16))]
struct Stacks(UnsafeCell<[[u8; STACK_SIZE]; MAX_VCPUS]>);

// SAFETY: Rust code never touches the stack memory through this static; each slot is used only as
// the stack of one vCPU, handed out by the assembly below.
unsafe impl Sync for Stacks {}

static STACKS: Stacks = Stacks(UnsafeCell::new([[0; STACK_SIZE]; MAX_VCPUS]));

/// A level-1 translation table (39-bit VA, 4 KiB granule: 512 entries of 1 GiB).
#[repr(C, align(4096))]
struct PageTable([u64; 512]);

/// MAIR_EL1 attribute indexes.
const ATTR_DEVICE_NGNRE: u64 = 0;
const ATTR_NORMAL_WB: u64 = 1;
/// Attr0 = Device-nGnRE (0x04), Attr1 = Normal, inner/outer write-back read/write-allocate (0xff).
const MAIR: u64 = 0x04 | (0xff << 8);

const DESC_BLOCK: u64 = 0b01;
const DESC_AF: u64 = 1 << 10;
const DESC_SH_INNER: u64 = 0b11 << 8;
const DESC_PXN: u64 = 1 << 53;
const DESC_UXN: u64 = 1 << 54;
const GIB: u64 = 1 << 30;

/// The identity map: [1 GiB, 2 GiB) (all VM RAM lies there) and the gigabyte holding the grant
/// window (where the hypervisor maps peers' granted frames) are Normal write-back; everything else
/// the 39-bit space covers, including [0, 1 GiB) with QEMU virt's devices, is Device-nGnRE and
/// never executable. Only RAM is mapped at stage 2, so any access outside it faults into the
/// hypervisor (and addresses above 2 GiB reach stage 2 too, instead of faulting here).
static IDMAP: PageTable = PageTable(identity_map());

const fn identity_map() -> [u64; 512] {
    let mut table = [0u64; 512];
    let mut i = 0;
    while i < 512 {
        let base = i as u64 * GIB;
        table[i] = if base == GUEST_RAM_BASE || base == GRANT_WINDOW_BASE {
            base | DESC_BLOCK | DESC_AF | DESC_SH_INNER | (ATTR_NORMAL_WB << 2) | DESC_UXN
        } else {
            base | DESC_BLOCK | DESC_AF | (ATTR_DEVICE_NGNRE << 2) | DESC_PXN | DESC_UXN
        };
        i += 1;
    }
    table
}

// All VM RAM must be inside the one Normal gigabyte.
const _: () = assert!(GUEST_RAM_BASE == GIB && MAX_VM_RAM <= GIB);
// The grant window must be inside its one Normal gigabyte too.
const _: () = assert!(
    GRANT_WINDOW_BASE.is_multiple_of(GIB)
        && GRANT_WINDOW_SIZE <= GIB
        && GRANT_WINDOW_BASE < 512 * GIB
);

/// TCR_EL1: T0SZ = 25 (39-bit VA), inner/outer write-back walks, inner shareable, 4 KiB granule,
/// TTBR1 walks disabled (EPD1), IPS = 40 bits (covers the whole 512 GiB map).
const TCR: u64 =
    25 | (0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (25 << 16) | (1 << 23) | (0b010 << 32);

/// SCTLR_EL1: RES1 bits (0x30d0_0800) + M (MMU) + C (data cache) + SA (SP alignment) + I
/// (instruction cache). Alignment checking (A) stays off.
const SCTLR: u64 = 0x30d0_0800 | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 12);

/// CPACR_EL1.FPEN = 0b11: FP/SIMD does not trap (Rust uses NEON registers freely).
const CPACR_FPEN: u64 = 0b11 << 20;

// The stub below lays the image header out as shared_abi::image describes it: a 4-byte branch,
// 4 bytes of zero, then the magic and the read-only length.
const _: () = assert!(
    shared_abi::image::MAGIC_OFFSET == 8
        && shared_abi::image::READ_ONLY_OFFSET == 16
        && shared_abi::image::HEADER_BYTES == 24
);

// asm: this code runs before there is a stack or an MMU, so it cannot be Rust (aarch64-cpu's
// register writes are Rust functions that need both).
#[cfg(target_arch = "aarch64")]
global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    // The image header (shared_abi::image): a branch over it, the magic, the read-only bytes.
    b       4f
    .word   0
    .quad   {image_magic}
    .quad   __readonly_bytes
4:
    // x0 = GPA of the start-info page; keep it in a callee-saved register.
    mov     x19, x0
    bl      __sluice_cpu_setup

    // With the MMU and caches on, zero .bss (which also holds the stacks).
    adrp    x0, __bss_start
    add     x0, x0, :lo12:__bss_start
    adrp    x1, __bss_end
    add     x1, x1, :lo12:__bss_end
1:  cmp     x0, x1
    b.hs    2f
    stp     xzr, xzr, [x0], #16
    b       1b
2:
    // vCPU 0 stack: top of slot 0.
    adrp    x0, {stacks}
    add     x0, x0, :lo12:{stacks}
    mov     x1, #{stack_size}
    add     sp, x0, x1
    mov     x29, xzr
    mov     x30, xzr
    mov     x0, x19
    bl      {primary_main}
3:  wfi
    b       3b

    // Secondary vCPUs (PSCI CPU_ON): x0 = context = vCPU index.
    .section .text.sluice_boot, "ax"
    .global __sluice_secondary_entry
__sluice_secondary_entry:
    mov     x19, x0
    bl      __sluice_cpu_setup
    cmp     x19, #{max_vcpus}
    b.hs    9f
    adrp    x0, {stacks}
    add     x0, x0, :lo12:{stacks}
    add     x1, x19, #1
    mov     x2, #{stack_size}
    madd    x0, x1, x2, x0
    mov     sp, x0
    mov     x29, xzr
    mov     x30, xzr
    mov     x0, x19
    bl      {secondary_main}
9:  wfi
    b       9b

    // Per-vCPU EL1 setup, before any Rust and without a stack: identity-map MMU with caches,
    // FP/SIMD, vectors. Clobbers x0 only.
__sluice_cpu_setup:
    ldr     x0, ={mair}
    msr     mair_el1, x0
    ldr     x0, ={tcr}
    msr     tcr_el1, x0
    adrp    x0, {idmap}
    add     x0, x0, :lo12:{idmap}
    msr     ttbr0_el1, x0
    msr     ttbr1_el1, xzr
    isb
    tlbi    vmalle1
    ic      iallu
    dsb     nsh
    isb
    ldr     x0, ={sctlr}
    msr     sctlr_el1, x0
    isb
    mov     x0, #{cpacr}
    msr     cpacr_el1, x0
    adrp    x0, __sluice_vectors
    add     x0, x0, :lo12:__sluice_vectors
    msr     vbar_el1, x0
    isb
    ret
    .ltorg
    "#,
    stacks = sym STACKS,
    idmap = sym IDMAP,
    stack_size = const STACK_SIZE,
    max_vcpus = const MAX_VCPUS,
    mair = const MAIR,
    tcr = const TCR,
    sctlr = const SCTLR,
    cpacr = const CPACR_FPEN,
    image_magic = const shared_abi::image::IMAGE_MAGIC,
    primary_main = sym crate::rt::primary_main,
    secondary_main = sym crate::rt::secondary_main,
);

extern "C" {
    static __heap_start: u8;
    fn __sluice_secondary_entry() -> !;
}

/// GPA of the secondary-vCPU entry point, for PSCI CPU_ON.
pub(crate) fn secondary_entry_address() -> u64 {
    let entry: unsafe extern "C" fn() -> ! = __sluice_secondary_entry;
    entry as usize as u64
}

/// First byte after the image's .bss (page aligned): where the heap starts.
pub(crate) fn heap_start() -> usize {
    // Only the address of the linker-defined symbol is taken; it is never read.
    (&raw const __heap_start) as usize
}

/// The start-info page the hypervisor passed in x0, if `gpa` is a plausible address for it:
/// page aligned, inside the largest possible RAM, and above this image.
pub(crate) fn start_info_page(gpa: usize) -> Option<&'static [u8]> {
    let gpa_u64 = gpa as u64;
    let plausible = gpa_u64.is_multiple_of(PAGE_SIZE)
        && gpa >= heap_start()
        && gpa_u64 + PAGE_SIZE <= GUEST_RAM_BASE + MAX_VM_RAM;
    if !plausible {
        return None;
    }
    // SAFETY: the page is inside this VM's RAM (the hypervisor's contract for x0, checked for
    // plausibility above), mapped Normal by IDMAP, above everything the image and .bss use, and
    // excluded from the heap, so nothing writes it while this shared view exists.
    Some(unsafe { core::slice::from_raw_parts(gpa as *const u8, PAGE_SIZE as usize) })
}

extern "Rust" {
    /// Defined by `vm_runtime::entry!` in the application crate.
    fn __sluice_vm_main(info: &'static StartInfo<'static>) -> !;
}

/// Enters the application's main (see [`crate::entry!`]).
pub(crate) fn call_app_main(info: &'static StartInfo<'static>) -> ! {
    // SAFETY: `entry!` defines `__sluice_vm_main` with exactly this signature; linking fails if
    // the application did not use it.
    unsafe { __sluice_vm_main(info) }
}
