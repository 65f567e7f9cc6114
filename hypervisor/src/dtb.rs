//! What the hypervisor needs from QEMU's device tree: RAM, the GIC, the UART, CPUs, the boot bundle
//! (as the initrd in /chosen), and whether PCI, an SMMU and a GIC ITS exist.

use fdt::Fdt;
use hypervisor::irqmap::{self, GicIrq};

#[derive(Debug, Default, Clone, Copy)]
pub struct Machine {
    pub ram_start: u64,
    pub ram_end: u64,
    pub gicd: u64,
    pub gicr: u64,
    pub uart: u64,
    pub cpus: usize,
    pub bundle: Option<(u64, u64)>,
    pub pci_ecam: Option<u64>,
    pub smmu: Option<u64>,
    /// The GIC's Interrupt Translation Service (`arm,gic-v3-its`, a child of the GIC node).
    pub its: Option<u64>,
    /// The SMMU's wired event-queue and global-error interrupts.
    pub smmu_eventq_irq: Option<GicIrq>,
    pub smmu_gerror_irq: Option<GicIrq>,
}

fn smmu_irq(fdt: &Fdt, name: &str) -> Option<GicIrq> {
    let node = fdt.find_compatible(&["arm,smmu-v3"])?;
    irqmap::named_irq(
        node.property("interrupts")?.value,
        node.property("interrupt-names")?.value,
        name,
    )
}

/// The GIC interrupt raised by INTx `pin` of PCI function `routing_id`, from the host bridge's
/// interrupt-map.
pub fn pci_intx(blob: &[u8], routing_id: u16, pin: u8) -> Option<GicIrq> {
    let fdt = Fdt::new(blob).ok()?;
    let bridge = fdt.find_compatible(&["pci-host-ecam-generic"])?;
    let gic = fdt.find_compatible(&["arm,gic-v3"])?;
    let parent_address_cells = gic
        .property("#address-cells")
        .and_then(|p| p.as_usize())
        .unwrap_or(0);
    irqmap::pci_intx(
        bridge.property("interrupt-map")?.value,
        bridge.property("interrupt-map-mask")?.value,
        parent_address_cells,
        routing_id,
        pin,
    )
}

fn first_reg(fdt: &Fdt, compatible: &[&str], index: usize) -> Option<u64> {
    let node = fdt.find_compatible(compatible)?;
    node.reg()?.nth(index).map(|r| r.starting_address as u64)
}

fn chosen_u64(fdt: &Fdt, name: &str) -> Option<u64> {
    let prop = fdt.find_node("/chosen")?.property(name)?;
    match prop.value.len() {
        4 => Some(u32::from_be_bytes(prop.value.try_into().ok()?) as u64),
        8 => Some(u64::from_be_bytes(prop.value.try_into().ok()?)),
        _ => None,
    }
}

/// The kernel command line (`/chosen/bootargs`, QEMU's `-append`), if there is one.
pub fn bootargs(blob: &[u8]) -> Option<&str> {
    Fdt::new(blob).ok()?.chosen().bootargs()
}

pub fn parse(blob: &[u8]) -> Result<Machine, &'static str> {
    let fdt = Fdt::new(blob).map_err(|_| "the device tree blob is malformed")?;
    let ram = fdt
        .memory()
        .regions()
        .next()
        .ok_or("the device tree lists no memory")?;
    let ram_start = ram.starting_address as u64;
    let ram_end = ram_start + ram.size.ok_or("memory region without a size")? as u64;
    let bundle = match (
        chosen_u64(&fdt, "linux,initrd-start"),
        chosen_u64(&fdt, "linux,initrd-end"),
    ) {
        (Some(start), Some(end)) if end > start => Some((start, end)),
        _ => None,
    };
    Ok(Machine {
        ram_start,
        ram_end,
        gicd: first_reg(&fdt, &["arm,gic-v3"], 0)
            .ok_or("no GICv3 in the device tree (use -M gic-version=3)")?,
        gicr: first_reg(&fdt, &["arm,gic-v3"], 1).ok_or("GICv3 without redistributors")?,
        uart: first_reg(&fdt, &["arm,pl011"], 0).ok_or("no PL011 UART in the device tree")?,
        cpus: fdt.cpus().count().max(1),
        bundle,
        pci_ecam: first_reg(&fdt, &["pci-host-ecam-generic"], 0),
        smmu: first_reg(&fdt, &["arm,smmu-v3"], 0),
        its: first_reg(&fdt, &["arm,gic-v3-its"], 0),
        smmu_eventq_irq: smmu_irq(&fdt, "eventq"),
        smmu_gerror_irq: smmu_irq(&fdt, "gerror"),
    })
}
