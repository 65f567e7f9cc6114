//! GICv3: the physical distributor/redistributors (through the `arm-gic` crate), the EL2 view of
//! the physical CPU interface, and the virtual CPU interface's list registers (ICH_*_EL2), which
//! `arm-gic` does not cover.

use core::arch::asm;
use core::ptr::{self, NonNull};

use arm_gic::gicv3::{GicCpuInterface, GicV3, Group, SgiTarget, SgiTargetGroup};
use arm_gic::{IntId, UniqueMmioPointer};
use arm_gic::{InterruptGroup, Trigger};
use spin::Mutex;

use hypervisor::its::bringup::{
    RedistributorLpis, GICR_CTLR, GICR_CTLR_ENABLE_LPIS, GICR_PENDBASER, GICR_PROPBASER,
};
use hypervisor::its::{GICR_VPENDBASER, GICR_VPROPBASER, GICV4_REDIST_STRIDE, LPI_INTID_BASE};
use hypervisor::vgic::{InterfaceMirror, MIRRORED_LRS};

use super::cpu::{mrs, msr};
use super::MAX_PCPUS;

/// PPIs the hypervisor itself takes.
pub const MAINTENANCE_PPI: u32 = 25;
pub const HYP_TIMER_PPI: u32 = 26;
pub const VTIMER_PPI: u32 = 27;
/// SGI one pCPU sends another to make it reschedule (new work, or a VM being stopped).
pub const KICK_SGI: u32 = 0;

struct Gic(GicV3<'static>);
// SAFETY: the driver holds pointers to the distributor and redistributor MMIO regions, which are
// valid from any pCPU; every access goes through the Mutex below.
unsafe impl Send for Gic {}

static GIC: Mutex<Option<Gic>> = Mutex::new(None);
/// The redistributor region (RD_base of CPU 0) and the distance between two redistributors,
/// for the LPI registers `arm-gic` does not drive.
static GICR: Mutex<(usize, usize)> = Mutex::new((0, 0));

pub fn intid(raw: u32) -> IntId {
    match raw {
        0..=15 => IntId::sgi(raw),
        16..=31 => IntId::ppi(raw - 16),
        // The doorbells (issue 15) are LPIs.
        LPI_INTID_BASE.. => IntId::lpi(raw - LPI_INTID_BASE),
        _ => IntId::spi(raw - 32),
    }
}

/// Initialises the distributor and every redistributor; primary pCPU only, before the others run.
///
/// # Safety
/// `gicd` and `gicr` must be the identity-mapped GICv3 distributor and redistributor regions from
/// the device tree, used by nothing else.
pub unsafe fn init_primary(gicd: usize, gicr: usize, cpu_count: usize) {
    GicCpuInterface::enable_system_register_el2(true);
    // SAFETY: forwarded to the caller: both addresses are the GIC's MMIO regions, exclusively ours.
    let mut gic = unsafe {
        GicV3::new(
            UniqueMmioPointer::new(NonNull::new(gicd as *mut _).expect("GICD base is not null")),
            NonNull::new(gicr as *mut _).expect("GICR base is not null"),
            cpu_count,
        )
    }
    .expect("GICv3 redistributors found");
    gic.setup(0);
    // arm-gic steps by two 64 KiB frames for a GICv3 redistributor and by four for a GICv4
    // one (GICR_TYPER.VLPIS), and so do we.
    let stride = match gic.gicr_typer(0) {
        Ok(t) if t.virtual_lpis_supported() => GICV4_REDIST_STRIDE,
        _ => GICV4_REDIST_STRIDE / 2,
    };
    *GICR.lock() = (gicr, stride);
    *GIC.lock() = Some(Gic(gic));
    init_this_cpu(0);
}

/// Per-pCPU setup: wake this redistributor and enable the interrupts the hypervisor takes.
pub fn init_this_cpu(cpu: usize) {
    GicCpuInterface::enable_system_register_el2(true);
    {
        let mut guard = GIC.lock();
        let gic = &mut guard.as_mut().expect("GIC initialised by the primary").0;
        if cpu != 0 {
            gic.init_cpu(cpu);
        }
        for raw in [MAINTENANCE_PPI, HYP_TIMER_PPI, VTIMER_PPI, KICK_SGI] {
            let id = intid(raw);
            gic.set_group(id, Some(cpu), Group::Group1NS)
                .expect("valid private interrupt");
            gic.set_interrupt_priority(id, Some(cpu), 0x80)
                .expect("valid private interrupt");
            gic.enable_interrupt(id, Some(cpu), true)
                .expect("valid private interrupt");
        }
    }
    GicCpuInterface::set_priority_mask(0xff);
    GicCpuInterface::enable_group1(true);
    // EOImode 1: ending an interrupt only drops its priority, deactivation is a separate write.
    // That lets a passed-through device's interrupt stay active until the guest deactivates it
    // through a hardware list register (see `hypervisor::vgic`).
    msr!("icc_ctlr_el1", mrs!("icc_ctlr_el1") | ICC_CTLR_EOIMODE);
    // The virtual CPU interface: enabled, no maintenance interrupts until a vCPU asks for one.
    msr!("ich_hcr_el2", ICH_HCR_EN);
    // The mirror now knows it (the write it would ask for was just made).
    mirror().hcr_write(ICH_HCR_EN);
}

/// Acknowledges the highest-priority pending physical interrupt, if any.
pub fn acknowledge() -> Option<u32> {
    GicCpuInterface::get_and_acknowledge_interrupt(InterruptGroup::Group1).map(|id| id.into())
}

/// Whether an acknowledged INTID is one of the special ones (1020..=1023), which are never
/// ended. LPIs (8192 and up) are not special.
pub fn is_special(raw: u32) -> bool {
    (1020..=1023).contains(&raw)
}

const ICC_CTLR_EOIMODE: u64 = 1 << 1;

/// Ends a physical interrupt the hypervisor handled itself: priority drop, then deactivation.
pub fn end(raw: u32) {
    drop_priority(raw);
    deactivate(raw);
}

/// Drops the running priority of an acknowledged interrupt but leaves it active: for an
/// interrupt handed to a guest through a hardware list register, which the guest deactivates.
pub fn drop_priority(raw: u32) {
    GicCpuInterface::end_interrupt(intid(raw), InterruptGroup::Group1);
}

/// Deactivates a physical interrupt (also one acknowledged on another pCPU, for an SPI).
pub fn deactivate(raw: u32) {
    msr!("icc_dir_el1", raw as u64);
}

/// Configures and enables (or disables) a shared peripheral interrupt taken by the hypervisor,
/// routed to pCPU 0.
pub fn configure_spi(raw: u32, level: bool, enable: bool) -> Result<(), &'static str> {
    let id = intid(raw);
    if !(32..1020).contains(&raw) {
        return Err("not an SPI");
    }
    let mut guard = GIC.lock();
    let gic = &mut guard.as_mut().ok_or("GIC not initialised")?.0;
    let trigger = if level { Trigger::Level } else { Trigger::Edge };
    (|| {
        gic.enable_interrupt(id, None, false)?;
        gic.set_group(id, None, Group::Group1NS)?;
        gic.set_interrupt_priority(id, None, 0x80)?;
        gic.set_trigger(id, None, trigger)?;
        gic.distributor().set_routing(id, Some(0))?;
        gic.enable_interrupt(id, None, enable)
    })()
    .map_err(|_| "the distributor refused the SPI's configuration")
}

/// What the distributor and the first `cpus` redistributors offer for LPIs: (GICD_TYPER.LPIS,
/// GICD_TYPER.IDbits + 1, GICR_TYPER.VLPIS on every one of them).
pub fn lpi_features(cpus: usize) -> (bool, u32, bool) {
    let mut guard = GIC.lock();
    let Some(Gic(gic)) = guard.as_mut() else {
        return (false, 0, false);
    };
    let typer = gic.typer();
    let vlpis = (0..cpus).all(|cpu| {
        gic.gicr_typer(cpu)
            .is_ok_and(|t| t.virtual_lpis_supported() && t.physical_lpis_supported())
    });
    (typer.lpis_supported(), typer.id_bits(), vlpis)
}

/// GICR_TYPER.Processor_Number of pCPU `cpu`'s redistributor (what an ITS with PTA = 0 takes
/// as RDbase) and the redistributor's RD_base address (what one with PTA = 1 takes).
pub fn redistributor_target(cpu: usize) -> Option<(u16, u64)> {
    let mut guard = GIC.lock();
    let gic = &mut guard.as_mut()?.0;
    let number = gic.gicr_typer(cpu).ok()?.processor_number();
    let (base, stride) = *GICR.lock();
    Some((number, (base + cpu * stride) as u64))
}

/// Gives pCPU `cpu`'s redistributor its LPI tables and enables LPIs on it. Fails (and leaves
/// LPIs off) if the base registers do not take the values, or LPIs were on already with
/// other tables (EnableLPIs cannot be cleared reliably: GICR_CTLR.EnableLPIs is
/// IMPLEMENTATION DEFINED once set).
pub fn enable_lpis(cpu: usize, lpis: RedistributorLpis) -> Result<(), &'static str> {
    let _gic = GIC.lock();
    let (base, stride) = *GICR.lock();
    if base == 0 {
        return Err("the GIC is not initialised");
    }
    let rd = base + cpu * stride;
    let ctlr = (rd + GICR_CTLR) as *mut u32;
    let prop = (rd + GICR_PROPBASER) as *mut u64;
    let pend = (rd + GICR_PENDBASER) as *mut u64;
    // SAFETY: `rd` is RD_base of one of the redistributors arm-gic found in the device tree's
    // region (`cpu` below the count it was created with: the caller's, who got it from
    // `lpi_features`); GICR_CTLR, GICR_PROPBASER and GICR_PENDBASER are aligned registers
    // that arm-gic never touches (only its save/restore does, which sluice does not use), and
    // the GIC lock held here serialises every access to the region. Volatile is how MMIO is
    // reached.
    unsafe {
        if ptr::read_volatile(ctlr) & GICR_CTLR_ENABLE_LPIS != 0 {
            return Err("LPIs were already enabled on this redistributor");
        }
        // The zeroed tables must be visible to the GIC before it is told where they are.
        asm!("dsb st", options(nostack, preserves_flags));
        ptr::write_volatile(prop, lpis.propbaser);
        ptr::write_volatile(pend, lpis.pendbaser);
        if !lpis.taken(ptr::read_volatile(prop), ptr::read_volatile(pend)) {
            return Err("GICR_PROPBASER/PENDBASER did not take the LPI tables");
        }
        ptr::write_volatile(ctlr, ptr::read_volatile(ctlr) | GICR_CTLR_ENABLE_LPIS);
        if ptr::read_volatile(ctlr) & GICR_CTLR_ENABLE_LPIS == 0 {
            return Err("GICR_CTLR.EnableLPIs did not stick");
        }
    }
    Ok(())
}

/// pCPU `cpu`'s GICR_VPROPBASER and GICR_VPENDBASER (in its VLPI frame), if the GIC is up.
fn vlpi_registers(cpu: usize) -> Option<(*mut u64, *mut u64)> {
    let (base, stride) = *GICR.lock();
    if base == 0 || stride < GICV4_REDIST_STRIDE {
        return None;
    }
    let rd = base + cpu * stride;
    Some((
        (rd + GICR_VPROPBASER) as *mut u64,
        (rd + GICR_VPENDBASER) as *mut u64,
    ))
}

/// Makes a vPE resident on pCPU `cpu`'s redistributor (the calling pCPU's own): the VM's vLPI
/// configuration table, then its pending table with Valid. 64-bit writes only: QEMU applies a
/// 32-bit write to either half to the whole register.
pub fn vpe_enter(cpu: usize, vpropbaser: u64, vpendbaser: u64) -> Result<(), &'static str> {
    let (prop, pend) = vlpi_registers(cpu).ok_or("the GIC has no GICv4 redistributors")?;
    // SAFETY: `prop` and `pend` are GICR_VPROPBASER/GICR_VPENDBASER of a redistributor arm-gic
    // found (GICv4 stride, checked above), which arm-gic never touches; only the pCPU that owns
    // that redistributor writes them (vCPU entry and exit run on it), so no lock is needed.
    // VPROPBASER is written while Valid is clear (the previous vPE left in `vpe_leave`).
    unsafe {
        asm!("dsb st", options(nostack, preserves_flags));
        ptr::write_volatile(prop, vpropbaser);
        ptr::write_volatile(pend, vpendbaser);
    }
    Ok(())
}

/// Writes pCPU `cpu`'s GICR_VPENDBASER with `value` (Valid clear) and hands back each later
/// read through `read_back` until it says the vPE is out.
pub fn vpe_leave<R>(
    cpu: usize,
    value: u64,
    read_back: impl FnOnce(&mut dyn FnMut() -> u64) -> R,
) -> Result<R, &'static str> {
    let (_, pend) = vlpi_registers(cpu).ok_or("the GIC has no GICv4 redistributors")?;
    // SAFETY: as in `vpe_enter`: this pCPU's own redistributor's GICR_VPENDBASER.
    unsafe { ptr::write_volatile(pend, value) };
    // SAFETY: as above; a read has no side effect.
    let mut read = || unsafe { ptr::read_volatile(pend) };
    Ok(read_back(&mut read))
}

/// Sends the kick SGI to pCPU `target` (Aff0 on QEMU virt).
pub fn kick(target: usize) {
    let _ = GicCpuInterface::send_sgi(
        intid(KICK_SGI),
        SgiTarget::List {
            affinity3: 0,
            affinity2: 0,
            affinity1: 0,
            target_list: 1 << target,
        },
        SgiTargetGroup::CurrentGroup1,
    );
}

pub const ICH_HCR_EN: u64 = 1 << 0;
pub const ICH_HCR_UIE: u64 = 1 << 1;

/// Number of list registers this GIC implements (QEMU: 4).
pub fn list_register_count() -> usize {
    ((mrs!("ich_vtr_el2") & 0x1f) + 1) as usize
}

/// The virtual CPU interface state that belongs to a vCPU.
#[derive(Clone, Copy, Debug, Default)]
pub struct VgicContext {
    pub lrs: [u64; MIRRORED_LRS],
    /// What [`restore`](Self::restore) programs into ICH_HCR_EL2 (with EN added): the vCPU's
    /// maintenance requests. Not read back by [`save`](Self::save): nothing here uses the
    /// fields the hardware updates (EOIcount).
    pub hcr: u64,
    pub vmcr: u64,
    pub ap1r0: u64,
}

/// Each pCPU's [`InterfaceMirror`]: only its own pCPU takes it (with interrupts masked in
/// EL2), so the lock is never contended.
static MIRRORS: [Mutex<InterfaceMirror>; MAX_PCPUS] =
    [const { Mutex::new(InterfaceMirror::RESET) }; MAX_PCPUS];

fn mirror() -> spin::MutexGuard<'static, InterfaceMirror> {
    // `pcpu_index` is below MAX_PCPUS on every pCPU the boot brought up.
    MIRRORS[super::cpu::pcpu_index() % MAX_PCPUS].lock()
}

fn read_lr(i: usize) -> u64 {
    match i {
        0 => mrs!("ich_lr0_el2"),
        1 => mrs!("ich_lr1_el2"),
        2 => mrs!("ich_lr2_el2"),
        _ => mrs!("ich_lr3_el2"),
    }
}

fn write_lr(i: usize, value: u64) {
    match i {
        0 => msr!("ich_lr0_el2", value),
        1 => msr!("ich_lr1_el2", value),
        2 => msr!("ich_lr2_el2", value),
        _ => msr!("ich_lr3_el2", value),
    }
}

impl VgicContext {
    /// Reads the vCPU's live state from this pCPU: the list registers that may be non-zero
    /// (the others are zero), VMCR and the active priorities.
    pub fn save(&mut self) {
        let mut m = mirror();
        let live = m.lrs_to_read();
        for (i, lr) in self.lrs.iter_mut().enumerate() {
            *lr = if live & (1 << i) != 0 { read_lr(i) } else { 0 };
        }
        self.vmcr = mrs!("ich_vmcr_el2");
        self.ap1r0 = mrs!("ich_ap1r0_el2");
        m.read_back(self.vmcr, self.ap1r0);
    }

    /// Empties the live list registers and turns maintenance interrupts off, keeping the
    /// virtual interface enabled: the state after [`save`](Self::save) when no vCPU is loaded.
    pub fn quiesce() {
        let mut m = mirror();
        if m.hcr_write(ICH_HCR_EN) {
            msr!("ich_hcr_el2", ICH_HCR_EN);
        }
        let live = m.empty_lrs();
        for i in 0..MIRRORED_LRS {
            if live & (1 << i) != 0 {
                write_lr(i, 0);
            }
        }
    }

    /// Programs this pCPU's virtual interface with the vCPU's state, writing only what differs
    /// from what it holds.
    pub fn restore(&self) {
        let mut m = mirror();
        let write = m.lrs_to_write(&self.lrs);
        for (i, &lr) in self.lrs.iter().enumerate() {
            if write & (1 << i) != 0 {
                write_lr(i, lr);
            }
        }
        if m.vmcr_write(self.vmcr) {
            msr!("ich_vmcr_el2", self.vmcr);
        }
        if m.ap1r0_write(self.ap1r0) {
            msr!("ich_ap1r0_el2", self.ap1r0);
        }
        let hcr = self.hcr | ICH_HCR_EN;
        if m.hcr_write(hcr) {
            msr!("ich_hcr_el2", hcr);
        }
    }
}
