//! EL1 exception vectors: the assembly table (`__sluice_vectors`, installed in VBAR_EL1 by the
//! boot code) that saves the interrupted context, and the Rust side that dispatches IRQs to
//! [`crate::irq`] and reports fatal exceptions before powering the VM off.

#[cfg(target_arch = "aarch64")]
use core::arch::global_asm;

use crate::{console, cpu, irq, psci};

/// The saved context, as laid out by the assembly below.
#[repr(C)]
pub(crate) struct Frame {
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
    pub fpsr: u64,
    pub fpcr: u64,
    _pad: u64,
    pub q: [u128; 32],
}

const FRAME_SIZE: usize = core::mem::size_of::<Frame>();
const _: () = assert!(FRAME_SIZE == 800 && FRAME_SIZE.is_multiple_of(16));

/// Exception kinds as passed by the vectors: group * 4 + type.
const KIND_NAMES: [&str; 16] = [
    "sync (EL1, SP_EL0)",
    "IRQ (EL1, SP_EL0)",
    "FIQ (EL1, SP_EL0)",
    "SError (EL1, SP_EL0)",
    "sync (EL1)",
    "IRQ (EL1)",
    "FIQ (EL1)",
    "SError (EL1)",
    "sync (EL0 AArch64)",
    "IRQ (EL0 AArch64)",
    "FIQ (EL0 AArch64)",
    "SError (EL0 AArch64)",
    "sync (EL0 AArch32)",
    "IRQ (EL0 AArch32)",
    "FIQ (EL0 AArch32)",
    "SError (EL0 AArch32)",
];
const KIND_EL1_SYNC: u64 = 4;
const KIND_EL1_IRQ: u64 = 5;

// asm: a vector table is fixed-layout code that must save every register before any Rust
// runs; no crate provides an EL1 one with this frame.
#[cfg(target_arch = "aarch64")]
global_asm!(
    r#"
    .macro SLUICE_VENTRY kind
    .balign 0x80
    sub     sp, sp, #{frame_size}
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       __sluice_exception_common
    .endm

    .section .text.sluice_vectors, "ax"
    .balign 0x800
    .global __sluice_vectors
__sluice_vectors:
    SLUICE_VENTRY 0
    SLUICE_VENTRY 1
    SLUICE_VENTRY 2
    SLUICE_VENTRY 3
    SLUICE_VENTRY 4
    SLUICE_VENTRY 5
    SLUICE_VENTRY 6
    SLUICE_VENTRY 7
    SLUICE_VENTRY 8
    SLUICE_VENTRY 9
    SLUICE_VENTRY 10
    SLUICE_VENTRY 11
    SLUICE_VENTRY 12
    SLUICE_VENTRY 13
    SLUICE_VENTRY 14
    SLUICE_VENTRY 15

    // x0 = kind; x0/x1 of the interrupted code are already saved at [sp].
__sluice_exception_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x1, elr_el1
    stp     x30, x1, [sp, #240]
    mrs     x2, spsr_el1
    mrs     x3, fpsr
    stp     x2, x3, [sp, #256]
    mrs     x4, fpcr
    stp     x4, xzr, [sp, #272]
    stp     q0, q1, [sp, #288]
    stp     q2, q3, [sp, #320]
    stp     q4, q5, [sp, #352]
    stp     q6, q7, [sp, #384]
    stp     q8, q9, [sp, #416]
    stp     q10, q11, [sp, #448]
    stp     q12, q13, [sp, #480]
    stp     q14, q15, [sp, #512]
    stp     q16, q17, [sp, #544]
    stp     q18, q19, [sp, #576]
    stp     q20, q21, [sp, #608]
    stp     q22, q23, [sp, #640]
    stp     q24, q25, [sp, #672]
    stp     q26, q27, [sp, #704]
    stp     q28, q29, [sp, #736]
    stp     q30, q31, [sp, #768]
    mov     x1, sp
    mov     x29, xzr
    bl      {handler}
    ldp     q0, q1, [sp, #288]
    ldp     q2, q3, [sp, #320]
    ldp     q4, q5, [sp, #352]
    ldp     q6, q7, [sp, #384]
    ldp     q8, q9, [sp, #416]
    ldp     q10, q11, [sp, #448]
    ldp     q12, q13, [sp, #480]
    ldp     q14, q15, [sp, #512]
    ldp     q16, q17, [sp, #544]
    ldp     q18, q19, [sp, #576]
    ldp     q20, q21, [sp, #608]
    ldp     q22, q23, [sp, #640]
    ldp     q24, q25, [sp, #672]
    ldp     q26, q27, [sp, #704]
    ldp     q28, q29, [sp, #736]
    ldp     q30, q31, [sp, #768]
    ldr     x4, [sp, #272]
    msr     fpcr, x4
    ldp     x2, x3, [sp, #256]
    msr     spsr_el1, x2
    msr     fpsr, x3
    ldp     x30, x1, [sp, #240]
    msr     elr_el1, x1
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    add     sp, sp, #{frame_size}
    eret
    "#,
    frame_size = const FRAME_SIZE,
    handler = sym exception,
);

/// Called by `__sluice_exception_common` on the interrupted vCPU's stack, IRQs masked.
extern "C" fn exception(kind: u64, frame: &mut Frame) {
    match kind {
        KIND_EL1_IRQ => irq::handle(),
        KIND_EL1_SYNC => {
            let (esr, far, elr) = cpu::fault_registers();
            console::emergency_line(format_args!(
                "fatal: synchronous exception on vCPU {}: ESR_EL1={esr:#x} (EC {:#x}) \
                 FAR_EL1={far:#x} ELR_EL1={elr:#x}",
                cpu::index(),
                esr >> 26,
            ));
            psci::system_off();
        }
        other => {
            let name = KIND_NAMES.get(other as usize).copied().unwrap_or("unknown");
            console::emergency_line(format_args!(
                "fatal: unexpected exception {name} on vCPU {}: ELR_EL1={:#x} SPSR_EL1={:#x}",
                cpu::index(),
                frame.elr,
                frame.spsr,
            ));
            psci::system_off();
        }
    }
}
