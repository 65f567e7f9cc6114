//! EL2 exception vectors and the trap frame.
//!
//! Every exception saves the interrupted context's general registers, ELR_EL2 and SPSR_EL2 into a
//! [`TrapFrame`] on the pCPU's EL2 stack and calls Rust with a pointer to it. Rust may rewrite the
//! whole frame (that is how the scheduler switches vCPUs); the common exit restores it and ERETs.
//! The hypervisor runs with interrupts masked, so exceptions never nest.

use core::arch::global_asm;

/// The register file of the interrupted context, as laid out by the vector assembly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapFrame {
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
    _pad: u64,
}

const FRAME_SIZE: usize = core::mem::size_of::<TrapFrame>();
const _: () = assert!(FRAME_SIZE == 272);

global_asm!(
    r#"
.macro SAVE_AND_CALL handler
    sub     sp, sp, #{frame}
    stp     x0, x1, [sp, #16 * 0]
    stp     x2, x3, [sp, #16 * 1]
    stp     x4, x5, [sp, #16 * 2]
    stp     x6, x7, [sp, #16 * 3]
    stp     x8, x9, [sp, #16 * 4]
    stp     x10, x11, [sp, #16 * 5]
    stp     x12, x13, [sp, #16 * 6]
    stp     x14, x15, [sp, #16 * 7]
    stp     x16, x17, [sp, #16 * 8]
    stp     x18, x19, [sp, #16 * 9]
    stp     x20, x21, [sp, #16 * 10]
    stp     x22, x23, [sp, #16 * 11]
    stp     x24, x25, [sp, #16 * 12]
    stp     x26, x27, [sp, #16 * 13]
    stp     x28, x29, [sp, #16 * 14]
    mrs     x0, elr_el2
    stp     x30, x0, [sp, #16 * 15]
    mrs     x1, spsr_el2
    str     x1, [sp, #16 * 16]
    mov     x0, sp
    bl      \handler
    b       exception_return
.endm

.section .text.vectors, "ax"
.balign 0x800
.global el2_vectors
el2_vectors:
// Current EL with SP_EL0: never used.
.balign 0x80
    SAVE_AND_CALL el2_unexpected
.balign 0x80
    SAVE_AND_CALL el2_unexpected
.balign 0x80
    SAVE_AND_CALL el2_unexpected
.balign 0x80
    SAVE_AND_CALL el2_unexpected
// Current EL with SP_ELx: a fault in the hypervisor itself.
.balign 0x80
    SAVE_AND_CALL el2_unexpected
.balign 0x80
    SAVE_AND_CALL el2_unexpected
.balign 0x80
    SAVE_AND_CALL el2_unexpected
.balign 0x80
    SAVE_AND_CALL el2_unexpected
// Lower EL, AArch64: the guests.
.balign 0x80
    SAVE_AND_CALL lower_sync
.balign 0x80
    SAVE_AND_CALL lower_irq
.balign 0x80
    SAVE_AND_CALL lower_irq
.balign 0x80
    SAVE_AND_CALL lower_serror
// Lower EL, AArch32: not supported (HCR_EL2.RW forces AArch64).
.balign 0x80
    SAVE_AND_CALL el2_unexpected
.balign 0x80
    SAVE_AND_CALL el2_unexpected
.balign 0x80
    SAVE_AND_CALL el2_unexpected
.balign 0x80
    SAVE_AND_CALL el2_unexpected

.global exception_return
exception_return:
    ldr     x1, [sp, #16 * 16]
    msr     spsr_el2, x1
    ldp     x30, x0, [sp, #16 * 15]
    msr     elr_el2, x0
    ldp     x0, x1, [sp, #16 * 0]
    ldp     x2, x3, [sp, #16 * 1]
    ldp     x4, x5, [sp, #16 * 2]
    ldp     x6, x7, [sp, #16 * 3]
    ldp     x8, x9, [sp, #16 * 4]
    ldp     x10, x11, [sp, #16 * 5]
    ldp     x12, x13, [sp, #16 * 6]
    ldp     x14, x15, [sp, #16 * 7]
    ldp     x16, x17, [sp, #16 * 8]
    ldp     x18, x19, [sp, #16 * 9]
    ldp     x20, x21, [sp, #16 * 10]
    ldp     x22, x23, [sp, #16 * 11]
    ldp     x24, x25, [sp, #16 * 12]
    ldp     x26, x27, [sp, #16 * 13]
    ldp     x28, x29, [sp, #16 * 14]
    add     sp, sp, #{frame}
    eret

// Leave the boot path for a guest: x0 = source TrapFrame. The frame is copied just below the
// current sp (so it cannot overlap the source, which lives above sp), then restored as any trap.
// Later traps of this pCPU reuse the stack from the same depth.
.global enter_guest_frame
enter_guest_frame:
    sub     sp, sp, #{frame}
    mov     x2, sp
    mov     x3, #{frame}
1:  ldp     x4, x5, [x0], #16
    stp     x4, x5, [x2], #16
    subs    x3, x3, #16
    b.ne    1b
    b       exception_return
"#,
    frame = const FRAME_SIZE,
);

extern "C" {
    static el2_vectors: u8;
    fn enter_guest_frame(frame: *const TrapFrame) -> !;
}

/// Address of the vector table for VBAR_EL2.
pub fn vector_base() -> u64 {
    core::ptr::addr_of!(el2_vectors) as u64
}

/// Leaves Rust for good on this pCPU's boot path: loads `frame` and ERETs into the guest.
pub fn enter_guest(frame: &TrapFrame) -> ! {
    // SAFETY: the assembly copies `frame` below the current sp (the source lives above it, so the
    // copy cannot overlap), abandons the Rust frames above, and ERETs; it never returns.
    unsafe { enter_guest_frame(frame) }
}
