//! GICv3: the physical distributor/redistributors (through the `arm-gic` crate), the EL2 view of
//! the physical CPU interface, and the virtual CPU interface's list registers (ICH_*_EL2), which
//! `arm-gic` does not cover.

use core::ptr::NonNull;

use arm_gic::gicv3::{GicCpuInterface, GicV3, Group, SgiTarget, SgiTargetGroup};
use arm_gic::{IntId, UniqueMmioPointer};
use arm_gic::{InterruptGroup, Trigger};
use spin::Mutex;

use super::cpu::{mrs, msr};

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

pub fn intid(raw: u32) -> IntId {
    match raw {
        0..=15 => IntId::sgi(raw),
        16..=31 => IntId::ppi(raw - 16),
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
}

/// Acknowledges the highest-priority pending physical interrupt, if any.
pub fn acknowledge() -> Option<u32> {
    GicCpuInterface::get_and_acknowledge_interrupt(InterruptGroup::Group1).map(|id| id.into())
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
    pub lrs: [u64; 4],
    pub hcr: u64,
    pub vmcr: u64,
    pub ap1r0: u64,
}

impl VgicContext {
    pub fn save(&mut self) {
        self.lrs = [
            mrs!("ich_lr0_el2"),
            mrs!("ich_lr1_el2"),
            mrs!("ich_lr2_el2"),
            mrs!("ich_lr3_el2"),
        ];
        self.hcr = mrs!("ich_hcr_el2");
        self.vmcr = mrs!("ich_vmcr_el2");
        self.ap1r0 = mrs!("ich_ap1r0_el2");
    }

    /// Empties the live list registers and turns maintenance interrupts off, keeping the
    /// virtual interface enabled: the state after [`save`](Self::save) when no vCPU is loaded.
    pub fn quiesce() {
        msr!("ich_hcr_el2", ICH_HCR_EN);
        msr!("ich_lr0_el2", 0);
        msr!("ich_lr1_el2", 0);
        msr!("ich_lr2_el2", 0);
        msr!("ich_lr3_el2", 0);
    }

    pub fn restore(&self) {
        msr!("ich_lr0_el2", self.lrs[0]);
        msr!("ich_lr1_el2", self.lrs[1]);
        msr!("ich_lr2_el2", self.lrs[2]);
        msr!("ich_lr3_el2", self.lrs[3]);
        msr!("ich_vmcr_el2", self.vmcr);
        msr!("ich_ap1r0_el2", self.ap1r0);
        msr!("ich_hcr_el2", self.hcr | ICH_HCR_EN);
    }
}
