//! Entry points: the primary CPU's `_start` (from QEMU) and `secondary_entry` (from PSCI CPU_ON).
//!
//! The image starts with an arm64 Linux `Image` header so QEMU boots it with the Linux protocol:
//! it loads the image at RAM base + text_offset (2 MiB, the link address), loads the boot bundle
//! given with `-initrd` and records it in the DTB's /chosen node, and enters at EL2 with x0 = the
//! DTB's address. (For a plain ELF QEMU would not load an initrd at all.)
//!
//! Each pCPU gets its own EL2 stack from [`STACKS`]; the primary clears .bss before any Rust runs.

use core::arch::global_asm;

use super::MAX_PCPUS;

pub const STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
pub struct Stacks(pub [[u8; STACK_SIZE]; MAX_PCPUS]);

/// EL2 stacks, one per pCPU. Only touched by the boot assembly (through the symbol).
#[no_mangle]
static mut STACKS: Stacks = Stacks([[0; STACK_SIZE]; MAX_PCPUS]);

global_asm!(
    r#"
.section .text.boot, "ax"
.global _start
_start:
    b       1f                      // code0: jump over the header
    .word   0                       // code1
    .quad   0x200000                // text_offset: loaded 2 MiB above the start of RAM
    .quad   __image_size            // image_size, including .bss
    .quad   0x2                     // flags: little-endian, 4 KiB pages
    .quad   0, 0, 0                 // reserved
    .ascii  "ARM\x64"               // magic
    .word   0                       // reserved (PE header offset)
1:  mov     x20, x0                 // DTB pointer (Linux boot protocol)
    mrs     x19, mpidr_el1
    and     x19, x19, #0xff
    // Clear .bss (stacks live there too, but nothing uses them yet).
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
1:  cmp     x1, x2
    b.hs    2f
    stp     xzr, xzr, [x1], #16
    b       1b
2:  mov     x0, x19
    bl      3f
    mov     x0, x20
    mrs     x1, CurrentEL
    lsr     x1, x1, #2
    b       primary_main

.global secondary_entry
secondary_entry:
    // x0 = context id = pCPU index, set by the primary in PSCI CPU_ON.
    mov     x19, x0
    bl      3f
    mov     x0, x19
    b       secondary_main

// Sets sp to the top of the stack of pCPU x0; clobbers x1, x2.
3:  adrp    x1, STACKS
    add     x1, x1, :lo12:STACKS
    mov     x2, #{stack_size}
    madd    x1, x0, x2, x1
    add     sp, x1, x2
    ret
"#,
    stack_size = const STACK_SIZE,
);
