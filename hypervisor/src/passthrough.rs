//! Device passthrough: the one PCI function the topology gives a driver domain.
//!
//! The function's stream is attached (through [`Iommu`]) to its owner's stage-2 table and VMID,
//! so its DMA addresses are the owner's guest-physical addresses and reach exactly what the
//! owner's stage 2 maps (its RAM, and pages granted to it, read-only ones read-only).
//!
//! The owner sees PCI through an emulated ECAM ([`PCI_ECAM_IPA`]): no ECAM is mapped at stage 2,
//! every config access traps here and `hypervisor::pci::ConfigFilter` decides (other functions
//! are absent, BARs can only be placed in [`PCI_WINDOW_IPA`], which is mapped IPA = PA as Device
//! memory). The function's INTx line is taken by the hypervisor with only a priority drop and
//! injected into the owner's vCPU 0 as [`PASSTHROUGH_INTX`] with the list register's hardware
//! bit: the owner's deactivation deactivates the physical line. On a GICv4 machine the owner
//! asks for the function's MSI-X vectors as vLPIs instead (MSIX_MAP, `crate::gicv4`): the
//! device's MSI writes are DMA through the SMMU into the owner's stage 2, where the ITS's
//! translation page is mapped at the MSI window for that; without an ITS with virtual LPIs
//! no doorbell is mapped and the owner stays on INTx.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hypervisor::esr::MmioAccess;
use hypervisor::mm::frame_alloc::FrameAllocator;
use hypervisor::mm::stage2::{Access, MapAttrs, MemType};
use hypervisor::pci::{self, Bdf, ConfigFilter, ReadDecision, Window};
use log::{error, info, warn};
use shared_abi::layout::intid::PASSTHROUGH_INTX;
use shared_abi::layout::{PCI_ECAM_IPA, PCI_ECAM_SIZE, PCI_WINDOW_IPA};

use crate::arch::ecam::Ecam;
use crate::arch::mem::PhysTableMemory;
use crate::arch::vectors::TrapFrame;
use crate::arch::{gic, platform};
use crate::dtb::{self, Machine};
use crate::iommu::Iommu;
use crate::vm::Vm;

/// Configuration register holding the function's INTx pin (0 none, 1 INTA .. 4 INTD).
const REG_INTERRUPT_PIN: u16 = 0x3d;

/// The passed function and its owner.
pub struct Passthrough {
    /// VM id of the owning driver domain.
    pub owner_id: u16,
    pub bdf: Bdf,
    filter: ConfigFilter,
    ecam: Ecam,
    /// Physical INTID of the function's INTx line, if it has one.
    pub intx: Option<u32>,
    vtcr: u64,
}

/// How the PCI window is mapped into the owner.
const WINDOW_ATTRS: MapAttrs = MapAttrs {
    mem: MemType::Device,
    access: Access::ReadWrite,
    executable: false,
};

impl Passthrough {
    /// Gives `bdf` to `vm`: quiets every other function on bus 0, takes the function over
    /// (BARs outside the window unassigned), maps the window into the owner, attaches the stream
    /// to the owner's stage 2 and routes INTx to the hypervisor.
    pub fn setup(
        machine: &Machine,
        dtb_blob: &[u8],
        vm: &mut Vm,
        bdf: Bdf,
        frames: &mut FrameAllocator,
        iommu: &mut Iommu,
        vtcr: u64,
    ) -> Result<Passthrough, String> {
        let ecam_base = machine
            .pci_ecam
            .ok_or("the topology passes a PCI function but the machine has no PCI host bridge")?;
        if !iommu.present() {
            return Err(String::from(
                "the topology passes a PCI function but the machine has no SMMUv3 to confine \
                 its DMA (start QEMU with -M virt,iommu=smmuv3)",
            ));
        }
        let window = Window::new(PCI_WINDOW_IPA.0, PCI_WINDOW_IPA.1).ok_or("bad PCI window")?;
        let ecam = platform::ecam(ecam_base).ok_or("the PCI ECAM is driven already")?;
        quiet_other_functions(&ecam, bdf);
        let (filter, events) = ConfigFilter::probe(bdf, window, &mut ecam.function(bdf))
            .map_err(|e| format!("{e}"))?;
        for event in events {
            info!("PCI {bdf} for {}: {event}", vm.name);
        }
        let mut tables = PhysTableMemory { frames };
        vm.stage2
            .map(
                &mut tables,
                window.start(),
                window.start(),
                window.end() - window.start(),
                WINDOW_ATTRS,
            )
            .map_err(|e| format!("cannot map the PCI window into {}: {e:?}", vm.name))?;
        let pin = ecam.read(bdf, REG_INTERRUPT_PIN, 1) as u8;
        let intx = if pin == 0 {
            None
        } else {
            let irq = dtb::pci_intx(dtb_blob, bdf.routing_id(), pin).ok_or_else(|| {
                format!(
                    "the device tree's interrupt-map has no entry for {bdf} INT{}",
                    (b'A' + pin - 1) as char
                )
            })?;
            gic::configure_spi(irq.intid, irq.level, true)?;
            Some(irq.intid)
        };
        let passthrough = Passthrough {
            owner_id: vm.id,
            bdf,
            filter,
            ecam,
            intx,
            vtcr,
        };
        passthrough.attach(iommu, vm)?;
        info!(
            "PCI {bdf} passed to {}: stream {:#x} -> its stage 2 (VMID {}), BAR window {window}, \
             INTx {} -> virtual INTID {PASSTHROUGH_INTX}",
            vm.name,
            bdf.routing_id(),
            vm.vmid,
            intx.map_or(String::from("none"), |i| format!("INTID {i}")),
        );
        Ok(passthrough)
    }

    fn attach(&self, iommu: &mut Iommu, vm: &Vm) -> Result<(), String> {
        let sid = u32::from(self.bdf.routing_id());
        iommu.attach(sid, vm.vmid, vm.stage2.root_pa(), self.vtcr, &vm.name)
    }

    /// The owner is stopping (killed, powered off or restarting): stop the function's DMA and
    /// decoding, abort its stream before the owner's RAM can be reused, and release an INTx
    /// the owner never deactivated.
    pub fn owner_stopped(&mut self, iommu: &mut Iommu) {
        // No decoding, no DMA, and no INTx either, so the line cannot stay asserted.
        self.ecam.write(
            self.bdf,
            pci::REG_COMMAND,
            2,
            u32::from(pci::CMD_INTX_DISABLE),
        );
        // MSI-X off too (issue 15): the next incarnation's driver enables it again once its
        // vectors are mapped; until then the device must not write to an MSI window that is
        // no longer mapped.
        if let Some(cap) = hypervisor::its::msi::find_msix(|reg| self.ecam.read(self.bdf, reg, 4)) {
            let reg = cap.message_control();
            let control = self.ecam.read(self.bdf, reg, 2) as u16;
            let off = control & !hypervisor::its::msi::MSIX_ENABLE;
            self.ecam.write(self.bdf, reg, 2, u32::from(off));
        }
        iommu.detach(u32::from(self.bdf.routing_id()));
        if let Some(intx) = self.intx {
            gic::deactivate(intx);
        }
    }

    /// The owner starts again (after a reset): a fresh view of the function, attached again.
    pub fn owner_restarted(&mut self, iommu: &mut Iommu, vm: &Vm) {
        let window = self.filter.window();
        match ConfigFilter::probe(self.bdf, window, &mut self.ecam.function(self.bdf)) {
            Ok((filter, _)) => self.filter = filter,
            Err(e) => {
                error!("PCI {}: cannot take the function back: {e}", self.bdf);
                return;
            }
        }
        if let Err(e) = self.attach(iommu, vm) {
            error!(
                "PCI {}: cannot attach it to {} again: {e}",
                self.bdf, vm.name
            );
        }
    }

    /// The function's MSI-X table size, read from its capability list (`None`: no MSI-X).
    pub fn msix_table_size(&self) -> Option<u16> {
        hypervisor::its::msi::find_msix_table_size(|reg| self.ecam.read(self.bdf, reg, 4))
    }

    /// Emulates a config access of the owner to its ECAM. None if `ipa` is not in the ECAM.
    pub fn config_access(
        &mut self,
        owner_name: &str,
        ipa: u64,
        access: MmioAccess,
        frame: &mut TrapFrame,
    ) -> Option<()> {
        let offset = ipa
            .checked_sub(PCI_ECAM_IPA)
            .filter(|&o| o < PCI_ECAM_SIZE)?;
        let reg = usize::from(access.reg);
        if access.write {
            let value = if reg == 31 { 0 } else { frame.x[reg] };
            let decision = self
                .filter
                .write(offset, access.size, access.store_value(value) as u32);
            for write in decision.hardware_writes() {
                self.ecam
                    .write(self.bdf, write.reg, write.size, write.value);
            }
            if let Some(event) = decision.event {
                match event {
                    pci::FilterEvent::BarRefused { .. } => {
                        warn!("PCI {} of {owner_name}: {event}", self.bdf)
                    }
                    _ => info!("PCI {} of {owner_name}: {event}", self.bdf),
                }
            }
        } else {
            let raw = match self.filter.read(offset, access.size) {
                ReadDecision::Absent => {
                    if access.size == 8 {
                        u64::MAX
                    } else {
                        u64::from(pci::all_ones(access.size))
                    }
                }
                ReadDecision::Value(v) => u64::from(v),
                ReadDecision::Hardware { reg, size } => {
                    u64::from(self.ecam.read(self.bdf, reg, size))
                }
            };
            if reg != 31 {
                frame.x[reg] = access.load_value(raw);
            }
        }
        frame.elr += 4;
        Some(())
    }
}

/// Turns memory decoding and bus mastering off on every other function of bus 0 (except the host
/// bridge at 00:00.0): nothing owns them, so nothing may decode inside the owner's window.
fn quiet_other_functions(ecam: &Ecam, passed: Bdf) {
    let mut quieted: Vec<String> = Vec::new();
    for device in 0..32u8 {
        for function in 0..8u8 {
            let Some(bdf) = Bdf::new(0, device, function) else {
                continue;
            };
            if bdf == passed || (device == 0 && function == 0) {
                continue;
            }
            if ecam.read(bdf, pci::REG_VENDOR_DEVICE, 2) == 0xffff {
                if function == 0 {
                    break;
                }
                continue;
            }
            let quiesce = ConfigFilter::quiesce_write();
            ecam.write(bdf, quiesce.reg, quiesce.size, quiesce.value);
            quieted.push(format!("{bdf}"));
        }
    }
    if !quieted.is_empty() {
        info!(
            "PCI functions not passed to anyone (decoding and DMA off): {}",
            quieted.join(", ")
        );
    }
}
