//! CPU-level register access for EL2: per-pCPU setup, the vCPU's EL1/timer/FP state, counters,
//! the EL2 timer, PSCI calls to firmware, barriers and WFI.

use core::arch::asm;

use aarch64_cpu::registers::{
    Readable, Writeable, CNTFRQ_EL0, CNTHCTL_EL2, CNTPCT_EL0, CNTVOFF_EL2, CPTR_EL2, ESR_EL2,
    FAR_EL2, HCR_EL2, HPFAR_EL2, MPIDR_EL1, VBAR_EL2, VMPIDR_EL2, VTCR_EL2, VTTBR_EL2,
};

/// Reads a system register by name (for registers aarch64-cpu does not model).
macro_rules! mrs {
    ($reg:literal) => {{
        let value: u64;
        // SAFETY: reading a system register has no memory effects; callers only name registers
        // that are readable at EL2.
        unsafe { ::core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) value, options(nomem, nostack)) };
        value
    }};
}

/// Writes a system register by name.
macro_rules! msr {
    ($reg:literal, $value:expr) => {{
        let value: u64 = $value;
        // SAFETY: callers only name EL1/EL2 context or configuration registers whose new value
        // they own; none of them changes the hypervisor's own memory view.
        unsafe { ::core::arch::asm!(concat!("msr ", $reg, ", {}"), in(reg) value, options(nostack)) };
    }};
}
pub(crate) use {mrs, msr};

pub fn pcpu_index() -> usize {
    (MPIDR_EL1.get() & 0xff) as usize
}

/// Configures this pCPU's EL2 controls for running guests. `vtcr` comes from mm::stage2.
pub fn init_el2(vtcr: u64) {
    VBAR_EL2.set(super::vectors::vector_base());
    HCR_EL2.write(
        HCR_EL2::RW::EL1IsAarch64
            + HCR_EL2::VM::Enable
            + HCR_EL2::SWIO::SET
            + HCR_EL2::FMO::EnableVirtualFIQ
            + HCR_EL2::IMO::EnableVirtualIRQ
            + HCR_EL2::AMO::SET
            + HCR_EL2::TWI::SET
            + HCR_EL2::TWE::SET
            + HCR_EL2::TSC::EnableTrapEl1SmcToEl2
            + HCR_EL2::API::SET
            + HCR_EL2::APK::SET,
    );
    // RES1 bits of the non-VHE layout, SVE trapped (TZ), FP/SIMD not trapped (TFP = 0): guest FP
    // state is saved eagerly on every vCPU switch, and the hypervisor itself never touches FP.
    CPTR_EL2.set(0x33ff);
    // Guests may read the physical counter but must use the virtual timer; EL1 physical timer
    // accesses trap (EL1PCEN = 0) and kill the VM with a clear reason.
    CNTHCTL_EL2.write(CNTHCTL_EL2::EL1PCTEN::SET);
    CNTVOFF_EL2.set(0);
    VTCR_EL2.set(vtcr);
    isb();
}

/// ID_AA64MMFR0_EL1: PARange in bits [3:0].
pub fn id_aa64mmfr0() -> u64 {
    mrs!("id_aa64mmfr0_el1")
}

/// True when the CPU has 16-bit VMIDs (ID_AA64MMFR1_EL1.VMIDBits, bits [7:4], = 0b0010).
pub fn has_vmid16() -> bool {
    (mrs!("id_aa64mmfr1_el1") >> 4) & 0xf == 0b0010
}

pub fn set_vttbr(vmid: u16, root_pa: u64) {
    VTTBR_EL2.set(((vmid as u64) << 48) | root_pa);
    isb();
}

pub fn vttbr() -> u64 {
    VTTBR_EL2.get()
}

/// The VMID loaded in VTTBR_EL2 now.
pub fn vttbr_vmid() -> u16 {
    (VTTBR_EL2.get() >> 48) as u16
}

pub fn restore_vttbr(raw: u64) {
    VTTBR_EL2.set(raw);
    isb();
}

pub fn set_vmpidr(vcpu_index: u32) {
    // Bit 31 is RES1; uniprocessor bit clear; Aff0 = vCPU index.
    VMPIDR_EL2.set((1 << 31) | vcpu_index as u64);
}

pub struct FaultInfo {
    pub esr: u64,
    pub far: u64,
    pub hpfar: u64,
}

pub fn fault_info() -> FaultInfo {
    FaultInfo {
        esr: ESR_EL2.get(),
        far: FAR_EL2.get(),
        hpfar: HPFAR_EL2.get(),
    }
}

/// Physical counter and its frequency.
pub fn counter() -> u64 {
    isb();
    CNTPCT_EL0.get()
}

pub fn counter_frequency() -> u64 {
    CNTFRQ_EL0.get()
}

/// Arms the EL2 physical timer (PPI 26) to fire at absolute counter value `deadline`.
pub fn set_hyp_timer(deadline: u64) {
    msr!("cnthp_cval_el2", deadline);
    msr!("cnthp_ctl_el2", 1);
    isb();
}

/// The deadline the EL2 timer is armed for, if it is enabled.
pub fn hyp_timer_deadline() -> Option<u64> {
    let ctl: u64 = mrs!("cnthp_ctl_el2");
    (ctl & 1 != 0).then(|| mrs!("cnthp_cval_el2"))
}

pub fn stop_hyp_timer() {
    msr!("cnthp_ctl_el2", 0);
}

/// The EL1 virtual timer of the vCPU currently loaded on this pCPU.
pub fn vtimer_ctl() -> u64 {
    mrs!("cntv_ctl_el0")
}

pub fn set_vtimer_ctl(value: u64) {
    msr!("cntv_ctl_el0", value);
    isb();
}

/// EL1 system registers that make up a vCPU's context besides its general registers.
macro_rules! el1_context {
    ($($field:ident => $reg:literal),* $(,)?) => {
        #[derive(Clone, Copy, Debug, Default)]
        pub struct El1Context { $(pub $field: u64),* }
        impl El1Context {
            pub fn save() -> Self {
                El1Context { $($field: mrs!($reg)),* }
            }
            /// Loads the context into the CPU. A register that already holds the value is
            /// left alone: under QEMU a write to TCR_EL1 flushes the whole soft TLB even when
            /// the value does not change, so writing it on every switch made a vCPU that
            /// comes back to the pCPU it left (the common case: it slept in WFI and nothing
            /// else ran there) start again with a cold TLB. Reading a system register costs
            /// far less than refilling the TLB.
            pub fn restore(&self) {
                $(
                    if mrs!($reg) != self.$field {
                        msr!($reg, self.$field);
                    }
                )*
                isb();
            }
        }
    };
}

el1_context! {
    sctlr => "sctlr_el1",
    ttbr0 => "ttbr0_el1",
    ttbr1 => "ttbr1_el1",
    tcr => "tcr_el1",
    mair => "mair_el1",
    amair => "amair_el1",
    vbar => "vbar_el1",
    contextidr => "contextidr_el1",
    tpidr_el1 => "tpidr_el1",
    tpidr_el0 => "tpidr_el0",
    tpidrro_el0 => "tpidrro_el0",
    sp_el0 => "sp_el0",
    sp_el1 => "sp_el1",
    elr_el1 => "elr_el1",
    spsr_el1 => "spsr_el1",
    esr_el1 => "esr_el1",
    far_el1 => "far_el1",
    afsr0 => "afsr0_el1",
    afsr1 => "afsr1_el1",
    par => "par_el1",
    cpacr => "cpacr_el1",
    cntkctl => "cntkctl_el1",
    csselr => "csselr_el1",
    mdscr => "mdscr_el1",
    cntv_cval => "cntv_cval_el0",
    cntv_ctl => "cntv_ctl_el0",
}

impl El1Context {
    /// Architectural reset state for a vCPU entering at EL1 with its MMU off.
    pub fn reset() -> Self {
        El1Context {
            sctlr: 0x30d0_0800,
            ..Default::default()
        }
    }
}

/// FP/SIMD registers of a vCPU.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default)]
pub struct FpContext {
    pub q: [u128; 32],
    pub fpcr: u64,
    pub fpsr: u64,
}

impl FpContext {
    pub fn save(&mut self) {
        let base = self.q.as_mut_ptr();
        // SAFETY: `base` points to 32 writable, 16-byte aligned u128s; the asm stores exactly
        // that. The hypervisor is built soft-float, so FP registers hold only guest state.
        unsafe {
            asm!(
                ".arch_extension fp",
                ".arch_extension simd",
                "stp q0, q1, [{b}, #0]", "stp q2, q3, [{b}, #32]",
                "stp q4, q5, [{b}, #64]", "stp q6, q7, [{b}, #96]",
                "stp q8, q9, [{b}, #128]", "stp q10, q11, [{b}, #160]",
                "stp q12, q13, [{b}, #192]", "stp q14, q15, [{b}, #224]",
                "stp q16, q17, [{b}, #256]", "stp q18, q19, [{b}, #288]",
                "stp q20, q21, [{b}, #320]", "stp q22, q23, [{b}, #352]",
                "stp q24, q25, [{b}, #384]", "stp q26, q27, [{b}, #416]",
                "stp q28, q29, [{b}, #448]", "stp q30, q31, [{b}, #480]",
                b = in(reg) base,
                options(nostack),
            );
        }
        // FPCR and FPSR by encoding: the soft-float target's assembler does not know their names.
        self.fpcr = mrs!("s3_3_c4_c4_0");
        self.fpsr = mrs!("s3_3_c4_c4_1");
    }

    pub fn restore(&self) {
        let base = self.q.as_ptr();
        // SAFETY: `base` points to 32 readable, aligned u128s; only FP registers are written.
        unsafe {
            asm!(
                ".arch_extension fp",
                ".arch_extension simd",
                "ldp q0, q1, [{b}, #0]", "ldp q2, q3, [{b}, #32]",
                "ldp q4, q5, [{b}, #64]", "ldp q6, q7, [{b}, #96]",
                "ldp q8, q9, [{b}, #128]", "ldp q10, q11, [{b}, #160]",
                "ldp q12, q13, [{b}, #192]", "ldp q14, q15, [{b}, #224]",
                "ldp q16, q17, [{b}, #256]", "ldp q18, q19, [{b}, #288]",
                "ldp q20, q21, [{b}, #320]", "ldp q22, q23, [{b}, #352]",
                "ldp q24, q25, [{b}, #384]", "ldp q26, q27, [{b}, #416]",
                "ldp q28, q29, [{b}, #448]", "ldp q30, q31, [{b}, #480]",
                b = in(reg) base,
                options(nostack, readonly),
            );
        }
        msr!("s3_3_c4_c4_0", self.fpcr);
        msr!("s3_3_c4_c4_1", self.fpsr);
    }
}

pub fn isb() {
    // SAFETY: a barrier has no operands.
    unsafe { asm!("isb", options(nostack)) };
}

/// Waits for an interrupt with interrupts masked: the pending interrupt wakes the core and is
/// then polled from the GIC, so the hypervisor never takes nested exceptions.
pub fn wait_for_interrupt() {
    // SAFETY: WFI has no operands.
    unsafe { asm!("wfi", options(nostack)) };
}

/// Starts secondary pCPU `index` at `secondary_entry` through firmware PSCI (QEMU's, via SMC).
pub fn start_secondary(index: usize) -> Result<(), smccc::psci::Error> {
    extern "C" {
        fn secondary_entry();
    }
    let entry = secondary_entry as *const () as u64;
    smccc::psci::cpu_on::<smccc::Smc>(index as u64, entry, index as u64)
}

/// Powers the machine off (QEMU exits).
pub fn system_off() -> ! {
    let _ = smccc::psci::system_off::<smccc::Smc>();
    loop {
        wait_for_interrupt();
    }
}
