//! sluice hypervisor binary: boots on every pCPU at EL2, reads the device tree and the boot
//! bundle, builds one VM per bundle entry, and hands the pCPUs to the scheduler.
//!
//! Unsafe code lives in `arch` only; every other module forbids it.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
#[forbid(unsafe_code)]
mod ballooning;
#[cfg(target_os = "none")]
#[forbid(unsafe_code)]
mod dtb;
// No unsafe block either, but its trap entry points are `#[no_mangle]` (the vectors branch to
// them by name), which the `unsafe_code` lint counts as unsafe.
#[cfg(target_os = "none")]
#[forbid(unsafe_code)]
mod gicv4;
#[cfg(target_os = "none")]
mod hv;
#[cfg(target_os = "none")]
#[forbid(unsafe_code)]
mod iommu;
#[cfg(target_os = "none")]
#[forbid(unsafe_code)]
mod locks;
#[cfg(target_os = "none")]
#[forbid(unsafe_code)]
mod machine;
#[cfg(target_os = "none")]
#[macro_use]
#[forbid(unsafe_code)]
mod logger;
#[cfg(target_os = "none")]
#[forbid(unsafe_code)]
mod mmio;
#[cfg(target_os = "none")]
#[forbid(unsafe_code)]
mod passthrough;
#[cfg(target_os = "none")]
#[forbid(unsafe_code)]
mod sampler;
#[cfg(target_os = "none")]
#[forbid(unsafe_code)]
mod sharing;
#[cfg(target_os = "none")]
#[forbid(unsafe_code)]
mod spare;
#[cfg(target_os = "none")]
#[forbid(unsafe_code)]
mod vm;

#[cfg(target_os = "none")]
mod boot {
    use alloc::string::String;
    use alloc::vec::Vec;
    use core::sync::atomic::{AtomicUsize, Ordering};

    use hypervisor::mm::frame_alloc::FrameAllocator;
    use hypervisor::mm::ram_map::SharedCode;
    use hypervisor::mm::stage2::vtcr_el2;
    use hypervisor::mm::vmid::VmidAllocator;
    use hypervisor::sched::{Fairness, Scheduler};
    use log::{error, info};
    use shared_abi::bundle::Bundle;
    use shared_abi::grant::MAPPING_HEAP_BYTES;
    use shared_abi::layout::{start_info_gpa, GUEST_RAM_BASE};

    use crate::arch::heap::{self, HEAP_SIZE};
    use crate::arch::{self, cpu, gic, mem, platform};
    use crate::hv::{self, Hv};
    use crate::iommu::Iommu;
    use crate::passthrough::Passthrough;
    use crate::sharing::ConnectionKind;
    use crate::vm::{Vcpu, VcpuRun, Vm};
    use crate::{dtb, logger};

    // What the bundle's check lets grant-mapping budgets promise away (a bundle whose budgets
    // could need more is refused by `Bundle::parse`) is at most three quarters of the heap; the
    // rest is for everything else.
    const _: () = assert!(MAPPING_HEAP_BYTES <= (HEAP_SIZE as u64 / 4) * 3);
    /// Hypercalls that grow the heap are refused (`NoSpace`) below this much free heap, so
    /// that no guest-triggered allocation can fail (which would stop the hypervisor) even if
    /// `shared_abi::grant::HEAP_PER_MAPPING` were too optimistic.
    pub const HEAP_RESERVE: usize = 1 << 20;

    /// Where QEMU puts the DTB when it boots an ELF instead of the Image (e.g. under gdb).
    const DEFAULT_DTB: u64 = 0x4000_0000;

    /// The value written to VTCR_EL2 on every pCPU.
    static VTCR: AtomicUsize = AtomicUsize::new(0);

    extern "C" {
        static __image_start: u8;
        static __image_end: u8;
    }

    fn fail(what: &str, hint: &str) -> ! {
        error!("{what}");
        error!("what to do: {hint}");
        cpu::system_off();
    }

    #[no_mangle]
    extern "C" fn primary_main(dtb_arg: u64, current_el: u64) -> ! {
        logger::init(logger::EARLY_UART);
        logger::init_log();
        if current_el != 2 {
            println!("[hv] ERROR: sluice runs at EL2 but was entered at EL{current_el}");
            println!("[hv] what to do: start QEMU with -M virt,virtualization=on");
            loop {
                cpu::wait_for_interrupt();
            }
        }
        heap::init();
        let dtb_pa = if dtb_arg != 0 { dtb_arg } else { DEFAULT_DTB };
        let blob = platform::device_tree(dtb_pa).unwrap_or_else(|| {
            fail(
                "no device tree found",
                "boot the hypervisor ELF with QEMU's -kernel",
            )
        });
        let machine = dtb::parse(blob).unwrap_or_else(|why| fail(why, "use QEMU's virt machine"));
        let profile_hz = shared_abi::profile::from_bootargs(dtb::bootargs(blob).unwrap_or(""))
            .unwrap_or_else(|why| {
                error!("{why}");
                fail(
                    "the kernel command line's profile_hz is refused",
                    "set [machine] profile_hz in the topology (or -append profile_hz=N) to a \
                     rate in 100..=10000, or leave it out",
                )
            });
        logger::init(machine.uart);
        info!(
            "sluice hypervisor: {} pCPU(s), RAM {:#x}..{:#x}, GICv3 at {:#x}",
            machine.cpus, machine.ram_start, machine.ram_end, machine.gicd
        );

        mem::build_el2_identity_map(machine.ram_start, machine.ram_end);
        mem::enable_el2_mmu();

        let (bundle_start, bundle_end) = machine.bundle.unwrap_or_else(|| {
            fail(
                "no boot bundle: QEMU was started without -initrd",
                "pass the bundle built by ./run.sh with -initrd",
            )
        });
        let bundle_bytes = platform::boot_bundle(bundle_start, bundle_end);
        let bundle = Bundle::parse(bundle_bytes).unwrap_or_else(|e| {
            error!("boot bundle rejected: {e}");
            fail(
                "cannot boot without a valid bundle",
                "rebuild it with ./run.sh (sluice-pack validates topologies)",
            )
        });

        let mut frames = FrameAllocator::new();
        let (image_start, image_end) = (
            core::ptr::addr_of!(__image_start) as u64,
            core::ptr::addr_of!(__image_end) as u64,
        );
        let reserved = [
            (image_start, image_end),
            (bundle_start, bundle_end),
            (dtb_pa, dtb_pa + blob.len() as u64),
            // Below the image: where QEMU would put a DTB for ELF boots; kept out of VM reach.
            (machine.ram_start, image_start),
        ];
        add_free_ram(&mut frames, machine.ram_start, machine.ram_end, &reserved);

        let mmfr0 = cpu::id_aa64mmfr0();
        let vmid16 = cpu::has_vmid16();
        let vtcr = vtcr_el2(mmfr0 & 0xf, vmid16);
        VTCR.store(vtcr as usize, Ordering::Relaxed);
        cpu::init_el2(vtcr);
        let pcpus = machine.cpus.min(arch::MAX_PCPUS);
        platform::init_gic(machine.gicd, machine.gicr, pcpus);
        info!(
            "{} list registers, {}-bit VMIDs, PCI ECAM {}, SMMUv3 {}",
            gic::list_register_count(),
            if vmid16 { 16 } else { 8 },
            machine
                .pci_ecam
                .map_or("absent".into(), |a| alloc::format!("at {a:#x}")),
            machine
                .smmu
                .map_or("absent".into(), |a| alloc::format!("at {a:#x}")),
        );

        let mut vcpus: Vec<Vcpu> = Vec::new();
        let mut sched = Scheduler::new(Fairness::at(cpu::counter_frequency()));
        let mut hv = Hv {
            frames,
            vmids: VmidAllocator::new(if vmid16 { 16 } else { 8 }),
            vms: Vec::new(),
            vcpu_vm: Vec::new(),
            sharing: crate::sharing::Sharing::default(),
            iommu: Iommu::none(),
            passthrough: None,
            reloading: 0,
            spare: None,
            balloon_credit: 0,
            balloon_in_transit: 0,
            its: None,
        };
        // After the GIC, before any VM: the NIC's interrupt path is known before its owner
        // is created.
        hv.its = crate::gicv4::probe(&machine, &mut hv.frames, pcpus);
        // Before any VM exists: from here on no device DMA gets through unless attached.
        hv.iommu = Iommu::take_over(&machine, &mut hv.frames).unwrap_or_else(|why| {
            fail(
                &alloc::format!("cannot take the SMMU over: {why}"),
                "check QEMU's -M virt,iommu=smmuv3 and the SMMU model",
            )
        });
        // One copy of each image's read-only part, mapped into every VM that runs the image.
        let mut shared_code: Vec<(&'static [u8], SharedCode)> = Vec::new();
        for spec in bundle.vms() {
            hv.sharing
                .grants
                .set_mapping_budget(spec.id, spec.kind.mapping_budget());
            let known = shared_code
                .iter()
                .find(|(image, _)| core::ptr::eq(*image, spec.image))
                .map(|&(_, code)| code);
            let code = match known {
                Some(code) => Some(code),
                None if spec.code_bytes == 0 => None,
                None => {
                    let code = mem::share_image_code(&mut hv.frames, spec.image, spec.code_bytes)
                        .unwrap_or_else(|| {
                            fail(
                                "not enough free RAM for the shared code of the VM images",
                                "lower VM memory or raise QEMU's -m",
                            )
                        });
                    shared_code.push((spec.image, code));
                    Some(code)
                }
            };
            let grant = hv
                .vmids
                .alloc()
                .unwrap_or_else(|| fail("out of VMIDs", "use fewer VMs"));
            let peers = bundle.peers_of(spec.id);
            let mut vm =
                Vm::create(&spec, peers, grant.vmid, code, &mut hv.frames).unwrap_or_else(|e| {
                    error!("cannot create VM {}: {e}", spec.name);
                    fail(
                        "not enough resources for the topology",
                        "lower VM memory or raise QEMU's -m",
                    )
                });
            let vm_index = hv.vms.len();
            for index in 0..spec.vcpus {
                let id = sched.add();
                let run = VcpuRun {
                    vm_id: vm.id,
                    vmid: vm.vmid,
                    stage2_root: vm.stage2.root_pa(),
                    flush_vmid: grant.needs_flush,
                    stopping: false,
                };
                vcpus.push(Vcpu::new(index, run));
                hv.vcpu_vm.push(vm_index);
                vm.vcpus.push(id);
            }
            let first = vm.vcpus[0];
            vcpus[first].reset(GUEST_RAM_BASE, start_info_gpa(spec.ram_bytes));
            sched.wake(first);
            info!(
                "VM {} (id {}, {:?}): {} vCPU(s), {} MiB RAM at PA {:#x}, VMID {}, image {} KiB, {}",
                vm.name,
                vm.id,
                vm.kind,
                spec.vcpus,
                spec.ram_bytes >> 20,
                vm.ram.pa(),
                vm.vmid,
                spec.image.len() / 1024,
                match code {
                    Some(code) => alloc::format!(
                        "its first {} KiB read-only from the shared copy at PA {:#x}",
                        code.bytes / 1024,
                        code.pa
                    ),
                    None => String::from("no shared code (the image has no header)"),
                }
            );
            logger::open_vm_console(vm.id, &vm.name);
            hv.vms.push(Some(vm));
        }
        let mut owners = bundle
            .vms()
            .filter_map(|spec| spec.passthrough.map(|bdf| (spec, bdf)));
        let first_owner = owners.next();
        if let Some((second, bdf)) = owners.next() {
            // The bundle format can describe several owners, but this hypervisor drives one
            // passed-through function (one attached stream, one INTx): refuse rather than
            // silently leave the second device unattached.
            fail(
                &alloc::format!(
                    "the bundle passes more than one PCI function ({bdf} to {}, besides {}); \
                     this hypervisor passes through exactly one",
                    second.name,
                    first_owner.map_or("", |(s, _)| s.name)
                ),
                "give one driver domain a passthrough device in the topology",
            );
        }
        if let Some((spec, bdf)) = first_owner {
            let Some(vm) = usize::from(spec.id)
                .checked_sub(1)
                .and_then(|i| hv.vms.get_mut(i))
                .and_then(Option::as_mut)
            else {
                fail(
                    &alloc::format!("the passthrough owner {} was not created", spec.name),
                    "check the bundle",
                );
            };
            let vtcr = VTCR.load(Ordering::Relaxed) as u64;
            crate::gicv4::add_vm(vm.id, &vm.name, &vm.vcpus, &mut hv.frames);
            match Passthrough::setup(&machine, blob, vm, bdf, &mut hv.frames, &mut hv.iommu, vtcr) {
                Ok(p) => hv.passthrough = Some(p),
                Err(why) => fail(
                    &alloc::format!("cannot pass PCI {bdf} to {}: {why}", spec.name),
                    "start QEMU with the NIC at that address behind the SMMU (./run.sh does)",
                ),
            }
        }
        for spec in bundle.vms() {
            let Some(backend) = spec.backend else {
                continue;
            };
            let kind = if spec.emulated_nic {
                ConnectionKind::Emulated
            } else {
                ConnectionKind::Paravirt
            };
            if let Err(why) = hv.sharing.connect(
                // Boot: no vCPU runs yet, no lock is held.
                &mut crate::sharing::events(&mut crate::locks::Unlocked::entry()),
                &mut hv.vms,
                &mut hv.frames,
                spec.id,
                backend,
                kind,
            ) {
                error!("cannot connect VM {} to its back-end: {why}", spec.name);
                fail("connection setup failed", "lower the number of VMs");
            }
            let page_ipa = shared_abi::layout::control_page_ipa(spec.id);
            match kind {
                ConnectionKind::Paravirt => info!(
                    "connection {} -> back-end {backend}: control page at IPA {page_ipa:#x} in \
                     both",
                    spec.name
                ),
                ConnectionKind::Emulated => info!(
                    "emulated NIC of {} at IPA {:#x}: every access trapped and forwarded to its \
                     device model in back-end {backend} (request page at IPA {page_ipa:#x} there)",
                    spec.name,
                    shared_abi::layout::EMULATED_NIC_IPA
                ),
            }
        }
        let slice_ticks = cpu::counter_frequency() * hv::SLICE_MS / 1000;
        if let Some(hz) = profile_hz {
            crate::sampler::start(
                hz,
                pcpus,
                hv.vms
                    .iter()
                    .flatten()
                    .map(|vm| (vm.id, vm.name.clone()))
                    .collect(),
            );
        }
        hv::install(hv, vcpus, sched, slice_ticks, pcpus);

        for index in 1..pcpus {
            if let Err(e) = cpu::start_secondary(index) {
                error!("pCPU {index} did not start: {e:?}");
            }
        }
        hv::run_first(0)
    }

    #[no_mangle]
    extern "C" fn secondary_main(index: usize) -> ! {
        mem::enable_el2_mmu();
        cpu::init_el2(VTCR.load(Ordering::Relaxed) as u64);
        gic::init_this_cpu(index);
        info!("pCPU {index} online");
        hv::run_first(index)
    }

    /// Adds [start, end) minus the reserved ranges to the frame allocator.
    fn add_free_ram(frames: &mut FrameAllocator, start: u64, end: u64, reserved: &[(u64, u64)]) {
        let mut sorted: Vec<(u64, u64)> = reserved.to_vec();
        sorted.sort();
        let mut cursor = start;
        for &(r_start, r_end) in &sorted {
            if r_start > cursor {
                frames.add_region(cursor, r_start.min(end));
            }
            cursor = cursor.max(r_end);
        }
        if cursor < end {
            frames.add_region(cursor, end);
        }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        logger::print_kept_on_panic();
        println!("[hv] PANIC on pCPU {}: {info}", cpu::pcpu_index());
        cpu::system_off();
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the sluice hypervisor is an EL2 image: build it with --target aarch64-unknown-none-softfloat");
}
