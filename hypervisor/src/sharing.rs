//! Inter-VM sharing in the running hypervisor: the grant and event-channel tables (pure logic in
//! the hypervisor library) wired to physical memory and stage-2, event delivery as a virtual
//! interrupt, the control page of each front-end/back-end connection, RAM kept alive for
//! dead VMs whose frames peers still map, and what all of it does when a VM stops or restarts.
//!
//! Event channels are kept per VM ([`VmEvents`], each under its VM's event lock, see
//! `locks.rs`): every change goes through [`EventChannels`] over [`LockedPorts`] under the HV
//! lock, while EVTCHN_SEND and EVTCHN_UNMASK (`hv.rs`) take only the event locks.
//!
//! GRANT_COPY takes no HV lock either ([`copy_op`]): what its checks need of each VM is that
//! VM's copy view (`hypervisor::grant::copy::CopyView`, under its own lock, `locks.rs`), which
//! the paths that change it update holding the HV lock too ([`open_view`], [`close_view`],
//! [`publish_given`], [`publish_table`]).

use alloc::vec::Vec;
use core::sync::atomic::Ordering::SeqCst;

use hypervisor::dispatch::sharing::SharingEnv;
use hypervisor::evtchn::{own_connection_port, ConnectionLink, EventChannels, PortStore, VmPorts};
use hypervisor::grant::copy::{check_op, CopyView, CopyVm, CopyVms, RamExtent};
use hypervisor::grant::pins::{CopyPins, Pin};
use hypervisor::grant::{
    batch_array_ok_by, GrantEnv, GrantTables, MapFailed, RamRelease, Table, Teardown, VmId,
};
use hypervisor::mm::frame_alloc::FrameAllocator;
use hypervisor::mm::stage2::{Access, MapAttrs, MemType};
use hypervisor::sched::VcpuId;
use log::{info, warn};
use shared_abi::evtchn::{set_pending, Delivery, NO_PORT};
use shared_abi::grant::CopyOp;
use shared_abi::handshake::{self, Header};
use shared_abi::hypercall::Status;
use shared_abi::ioreq;
use shared_abi::layout::{control_page_ipa, GUEST_RAM_BASE, PAGE_SIZE};

use crate::arch::mem::{
    copy_pinned, free_kept_runs, store_pinned, view_word, GuestPage, GuestRam, OwnedFrame,
    PhysTableMemory, ViewRange,
};
use crate::iommu::Iommu;
use crate::locks::{EventsLocked, MayLockEvents, MayLockGrants, ViewLocked};
use crate::vm::Vm;

/// One VM's event channels, under its own lock ([`EventsLocked`]).
#[derive(Default)]
pub struct VmEvents {
    /// Its ports and its event page.
    pub ports: VmPorts<GuestPage>,
    /// The vCPU its events interrupt (its first), while it runs; `None` from the moment its
    /// stop is requested until its next incarnation is installed (an event then only marks
    /// its page, until its death forgets the page).
    pub deliver_to: Option<VcpuId>,
}

/// The event tables as [`EventChannels`] changes them under the HV lock: each VM's taken for
/// the moment it is read or written, one at a time.
pub struct LockedPorts<'a, T: MayLockEvents> {
    pub token: &'a mut T,
}

impl<T: MayLockEvents> PortStore for LockedPorts<'_, T> {
    type Page = GuestPage;
    fn with<R>(&mut self, index: usize, f: impl FnOnce(&mut VmPorts<GuestPage>) -> R) -> R {
        // `index` comes from `vm_index`, so always below MAX_VMS: the slot exists. A missing
        // one would be a bug; `f` then runs on an empty table that is thrown away.
        match EventsLocked::lock_index(self.token, index) {
            Some(mut slot) => f(&mut slot.ports),
            None => f(&mut VmPorts::default()),
        }
    }
}

/// The machine's event channels, seen through `token` (the HV lock's, or none at boot).
pub fn events<T: MayLockEvents>(token: &mut T) -> EventChannels<LockedPorts<'_, T>> {
    EventChannels::over(LockedPorts { token })
}

/// RAM of a dead VM incarnation that a peer still maps; freed when the last mapping goes.
pub struct RetainedRam {
    pub release: RamRelease,
    pub pa: u64,
    /// The runs `(first page, pages)` of it to free (all of it, minus pages the VM gave back to
    /// the balloon, which are not its any more).
    pub kept: Vec<(u64, u64)>,
}

/// How a front-end reaches its back-end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionKind {
    /// A para-virtual front-end: the control page (mapped in both) and a bound pair of ports.
    Paravirt,
    /// An emulated NIC in the front-end: its back-end is the device model. The page is the I/O
    /// request page (`shared_abi::ioreq`), mapped in the back-end only; the back-end's port is
    /// bound to the hypervisor and the front-end has none.
    Emulated,
}

/// One front-end/back-end connection and its hypervisor-owned page.
pub struct Connection {
    pub frontend: VmId,
    pub backend: VmId,
    pub kind: ConnectionKind,
    pub page: OwnedFrame,
    /// `NO_PORT` for an emulated connection.
    pub frontend_port: u32,
    pub backend_port: u32,
    /// How many times the front-end stopped: the epoch an emulated connection's request page
    /// shows its device model (`shared_abi::ioreq`, "The guest's life"), counted here because
    /// the page is the device model's to write.
    pub frontend_stops: u64,
}

/// `caller`'s own port of its connection with `peer`, from the hypervisor's record (not the
/// shared control page, which the peer can write).
pub fn connection_port(connections: &[Connection], caller: VmId, peer: u64) -> Option<u32> {
    let links = connections.iter().map(|c| ConnectionLink {
        frontend: c.frontend,
        backend: c.backend,
        frontend_port: c.frontend_port,
        backend_port: c.backend_port,
    });
    own_connection_port(links, caller, peer).filter(|&port| port != NO_PORT)
}

impl Connection {
    /// The control page header describing this connection as it stands.
    fn header(&self) -> Header {
        Header {
            frontend: self.frontend,
            backend: self.backend,
            frontend_port: self.frontend_port,
            backend_port: self.backend_port,
        }
    }
}

/// What [`Sharing::vm_stopped`] tells the caller.
pub struct Stopped {
    /// No peer maps the VM's frames: its RAM may be freed or reloaded. Otherwise it must be kept
    /// (as [`RetainedRam`] of `incarnation`) until released.
    pub ram_free_now: bool,
    pub incarnation: u64,
    /// RAM of other dead VMs that became free.
    pub released: Vec<RamRelease>,
    /// Interrupts to raise in connection peers (their control port now shows the stop).
    pub notify: Vec<Notify>,
}

#[derive(Default)]
pub struct Sharing {
    pub grants: GrantTables,
    pub retained: Vec<RetainedRam>,
    pub connections: Vec<Connection>,
}

fn vm_slot(vms: &[Option<Vm>], vm: VmId) -> Option<&Vm> {
    vms.get(usize::from(vm).checked_sub(1)?)?.as_ref()
}

fn vm_slot_mut(vms: &mut [Option<Vm>], vm: VmId) -> Option<&mut Vm> {
    vms.get_mut(usize::from(vm).checked_sub(1)?)?.as_mut()
}

/// `vm`'s RAM and the offset of `gpa` in it (range checks are the view's).
fn ram_at(vms: &[Option<Vm>], vm: VmId, gpa: u64) -> Option<(GuestRam<'_>, u64)> {
    Some((vm_slot(vms, vm)?.ram(), gpa.checked_sub(GUEST_RAM_BASE)?))
}

/// Host PA of `[gpa, gpa + len)` of `vm`'s RAM, if the whole range is inside it.
pub fn ram_pa(vms: &[Option<Vm>], vm: VmId, gpa: u64, len: u64) -> Option<u64> {
    let vm = vm_slot(vms, vm)?;
    let offset = gpa.checked_sub(GUEST_RAM_BASE)?;
    let end = offset.checked_add(len)?;
    // Pages given back to the balloon are not the VM's memory any more, nor is its shared
    // code (what it sees there is the hypervisor's copy, not these frames).
    (len >= 1 && end <= vm.ram_bytes && !vm.balloon.off_limits(offset, len))
        .then_some(vm.ram.pa() + offset)
}

/// GRANT_COPY's copies in flight, per VM (see `hypervisor::grant::pins` for the protocol).
pub static COPY_PINS: CopyPins = CopyPins::new();

/// Returns once no GRANT_COPY copy touching `vm`'s RAM is in flight. Call it holding the HV
/// lock and no copy view, after the change that makes new copies of that RAM refuse.
pub fn wait_for_copies(vm: VmId) {
    COPY_PINS.wait_unpinned(vm, core::hint::spin_loop);
}

/// Opens `vm`'s copy view on its RAM: its incarnation is about to run (boot, or a restart's
/// reinstall, before its first vCPU is woken). Under the HV lock (or at boot).
pub fn open_view(token: &mut impl MayLockGrants, vm: &Vm) {
    if let Some(mut view) = ViewLocked::lock(token, vm.id) {
        view.open(RamExtent {
            pa: vm.ram.pa(),
            bytes: vm.ram_bytes,
            code_bytes: vm.balloon.code_bytes(),
        });
    }
}

/// Closes `vm`'s copy view: its stop completes, and its RAM and grant table are about to go.
/// Call it under the HV lock before [`wait_for_copies`] and before any of its RAM changes
/// hands: from here every copy side in `vm` refuses.
pub fn close_view(token: &mut impl MayLockGrants, vm: VmId) {
    if let Some(mut view) = ViewLocked::lock(token, vm) {
        view.close();
    }
}

/// Gives `vm`'s copy view the balloon's record of the pages it gave back: after a release
/// batch, before [`wait_for_copies`] and the scrub.
pub fn publish_given(token: &mut impl MayLockGrants, vm: &Vm) {
    if let Some(mut view) = ViewLocked::lock(token, vm.id) {
        if !view.set_given(&vm.balloon) {
            // Fail safe: with no room for the record its copies are refused until it restarts.
            warn!(
                "VM {}: no heap for its copy view; GRANT_COPY refused",
                vm.name
            );
        }
    }
}

/// Gives `vm`'s copy view its grant table (after GRANT_TABLE_SETUP).
pub fn publish_table(token: &mut impl MayLockGrants, vm: VmId, table: Option<Table>) {
    if let Some(mut view) = ViewLocked::lock(token, vm) {
        view.set_table(table);
    }
}

/// One VM's copy view, locked: the copy checks' [`CopyVm`], its RAM read through the identity
/// map.
struct LockedView<'v> {
    view: &'v CopyView,
    vm: VmId,
}

impl CopyVm for LockedView<'_> {
    type Pin = Pin<'static>;
    type Addr = ViewRange;
    fn pin(&self) -> Option<Pin<'static>> {
        COPY_PINS.pin(self.vm)
    }
    fn in_ram(&self, gpa: u64, len: u64) -> bool {
        self.view.host_pa(gpa, len).is_some()
    }
    fn read_u64(&self, gpa: u64) -> u64 {
        view_word(self.view, gpa).map_or(0, |w| w.load(SeqCst))
    }
    fn table(&self) -> Option<Table> {
        self.view.table()
    }
    fn address(&self, gpa: u64, len: u64) -> Option<ViewRange> {
        ViewRange::of(self.view, gpa, len)
    }
}

/// The VMs of a copy op: each view taken alone, one after the other.
struct Views<'t, T: MayLockGrants> {
    token: &'t mut T,
}

impl<T: MayLockGrants> CopyVms for Views<'_, T> {
    type Pin = Pin<'static>;
    type Addr = ViewRange;
    fn with_vm<R>(
        &mut self,
        vm: VmId,
        f: impl FnOnce(&dyn CopyVm<Pin = Pin<'static>, Addr = ViewRange>) -> R,
    ) -> Option<R> {
        let view = ViewLocked::lock(self.token, vm)?;
        Some(f(&LockedView { view: &view, vm }))
    }
}

/// GRANT_COPY's batch-level rule for `caller`'s array, against its copy view.
pub fn copy_batch_ok(
    token: &mut impl MayLockGrants,
    caller: VmId,
    ops_gpa: u64,
    count: u64,
) -> bool {
    ViewLocked::lock(token, caller).is_some_and(|view| {
        batch_array_ok_by(ops_gpa, count, CopyOp::WORDS, |gpa, bytes| {
            view.host_pa(gpa, bytes).is_some()
        })
    })
}

/// One GRANT_COPY op of VM `caller` at `op_gpa`, holding no HV lock: the caller's view
/// (its op read once, its status word, its RAM pinned), then each side's VM's view alone
/// (pinned, checked: `hypervisor::grant::copy`), then the bytes copied and the status word
/// written with no lock held, then the pins dropped. `Ok` once the op's own status is
/// written; another status ends the batch (the op is no longer in the caller's RAM).
pub fn copy_op(token: &mut impl MayLockGrants, caller: VmId, op_gpa: u64) -> Status {
    let (words, status_word, caller_pin) = {
        let Some(view) = ViewLocked::lock(token, caller) else {
            return Status::InvalidArgument;
        };
        let in_ram = |gpa, bytes| view.host_pa(gpa, bytes).is_some();
        if !batch_array_ok_by(op_gpa, 1, CopyOp::WORDS, in_ram) {
            return Status::InvalidArgument;
        }
        let Some(pin) = COPY_PINS.pin(caller) else {
            return Status::Busy;
        };
        let mut words = [0u64; CopyOp::WORDS];
        for (j, word) in words.iter_mut().enumerate() {
            if j != CopyOp::STATUS_WORD {
                *word = view_word(&view, op_gpa + j as u64 * 8).map_or(0, |w| w.load(SeqCst));
            }
        }
        let status_gpa = op_gpa + CopyOp::STATUS_WORD as u64 * 8;
        let Some(status_word) = ViewRange::of(&view, status_gpa, 8) else {
            return Status::InvalidArgument;
        };
        (words, status_word, pin)
    };
    let result = CopyOp::from_words(words).and_then(|op| {
        let [src, dst] = check_op(&mut Views { token }, caller, &op)?;
        copy_pinned(dst.addr, src.addr, u64::from(op.len), [&dst.pin, &src.pin]);
        Ok(())
    });
    let status = result.err().unwrap_or(Status::Ok);
    store_pinned(status_word, &caller_pin, status.as_u64());
    Status::Ok
}

/// The grant tables' view of the machine: VM RAM through the identity map, stage-2 tables.
pub struct Env<'a> {
    pub vms: &'a mut [Option<Vm>],
    pub frames: &'a mut FrameAllocator,
    pub iommu: &'a mut Iommu,
    pub connections: &'a [Connection],
}

impl Env<'_> {
    fn word(&self, vm: VmId, gpa: u64) -> Option<&core::sync::atomic::AtomicU64> {
        let (ram, offset) = ram_at(self.vms, vm, gpa)?;
        ram.atomics(offset, 1)?.first()
    }

    /// Unmaps one page of `vm`'s stage 2 and invalidates it on the CPUs and in the SMMU now,
    /// or (`defer`) queues the invalidation for [`GrantEnv::flush_unmapped`]. A table frame
    /// freed by the unmap is invalidated at once either way: it goes back to the allocator
    /// before this returns.
    fn unmap_one(&mut self, vm: VmId, ipa: u64, defer: bool) {
        let Some(vm) = vm_slot_mut(self.vms, vm) else {
            return;
        };
        let mut pieces = Vec::new();
        let mut tables = PhysTableMemory {
            frames: self.frames,
        };
        let (vmid, root) = (vm.vmid, vm.stage2.root_pa());
        let iommu = &mut *self.iommu;
        if vm
            .stage2
            .unmap(
                &mut tables,
                ipa,
                PAGE_SIZE,
                &mut |ipa, size| pieces.push((ipa, size)),
                &mut |ipa, size| iommu.invalidate_ipas(vmid, root, &[(ipa, size)]),
            )
            .is_ok()
        {
            if defer {
                iommu.defer_invalidation(vmid, root, &pieces);
            } else {
                iommu.invalidate_ipas(vmid, root, &pieces);
            }
        }
    }
}

impl GrantEnv for Env<'_> {
    fn in_ram(&self, vm: VmId, gpa: u64, len: u64) -> bool {
        ram_pa(self.vms, vm, gpa, len).is_some()
    }

    fn read_u64(&self, vm: VmId, gpa: u64) -> u64 {
        self.word(vm, gpa).map_or(0, |w| w.load(SeqCst))
    }

    fn write_u64(&mut self, vm: VmId, gpa: u64, value: u64) {
        if let Some(w) = self.word(vm, gpa) {
            w.store(value, SeqCst);
        }
    }

    fn compare_exchange_u64(
        &mut self,
        vm: VmId,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<u64, u64> {
        match self.word(vm, gpa) {
            Some(w) => w.compare_exchange(current, new, SeqCst, SeqCst),
            None => Err(!current),
        }
    }

    fn copy(&mut self, dst_vm: VmId, dst_gpa: u64, src_vm: VmId, src_gpa: u64, len: u64) {
        let (Some((dst, dst_offset)), Some((src, src_offset))) = (
            ram_at(self.vms, dst_vm, dst_gpa),
            ram_at(self.vms, src_vm, src_gpa),
        ) else {
            return;
        };
        // Only `sharing_call`'s GRANT_COPY would get here, under the HV lock; the hypervisor
        // routes GRANT_COPY to `copy_op` instead.
        dst.copy_from(dst_offset, &src, src_offset, len);
    }

    fn host_pa(&self, vm: VmId, gpa: u64) -> u64 {
        ram_pa(self.vms, vm, gpa, PAGE_SIZE).unwrap_or(0)
    }

    fn map_page(
        &mut self,
        vm: VmId,
        ipa: u64,
        host_pa: u64,
        readonly: bool,
    ) -> Result<(), MapFailed> {
        let vm = vm_slot_mut(self.vms, vm).ok_or(MapFailed)?;
        let attrs = MapAttrs {
            mem: MemType::Normal,
            access: if readonly {
                Access::ReadOnly
            } else {
                Access::ReadWrite
            },
            executable: false,
        };
        let mut tables = PhysTableMemory {
            frames: self.frames,
        };
        vm.stage2
            .map(&mut tables, ipa, host_pa, PAGE_SIZE, attrs)
            .map_err(|_| MapFailed)
    }

    fn unmap_page(&mut self, vm: VmId, ipa: u64) {
        self.unmap_one(vm, ipa, false);
    }

    fn unmap_page_deferred(&mut self, vm: VmId, ipa: u64) {
        self.unmap_one(vm, ipa, true);
    }

    fn flush_unmapped(&mut self, _vm: VmId) {
        self.iommu.flush_deferred();
    }

    fn revoked(&mut self, vm: VmId) {
        wait_for_copies(vm);
    }
}

impl SharingEnv for Env<'_> {
    type Page = GuestPage;

    fn event_page(&self, vm: VmId, page_gpa: u64) -> Option<GuestPage> {
        let (ram, offset) = ram_at(self.vms, vm, page_gpa)?;
        ram.page(offset)
    }

    fn heap_low(&self) -> bool {
        crate::arch::heap::free_bytes() < crate::boot::HEAP_RESERVE
    }

    fn set_pending(&mut self, _vm: VmId, page: GuestPage, port: u32) -> bool {
        set_pending(page.words(), port) == Some(Delivery::Notify)
    }

    fn clear_mask(&mut self, _vm: VmId, page: GuestPage, port: u32) -> bool {
        shared_abi::evtchn::clear_mask(page.words(), port) == Some(true)
    }

    fn connection_port(&self, caller: VmId, peer: u64) -> Option<u32> {
        connection_port(self.connections, caller, peer)
    }
}

/// A virtual interrupt the caller must inject: [`EVTCHN_INTID`] to VM `vm`'s first vCPU.
///
/// [`EVTCHN_INTID`]: shared_abi::evtchn::EVTCHN_INTID
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notify {
    pub vm: VmId,
}

/// Marks `port` pending in `vm`'s event page, if it has one; `Some` when the VM must be
/// interrupted.
pub fn set_port_pending(
    events: &mut EventChannels<impl PortStore<Page = GuestPage>>,
    vm: VmId,
    port: u32,
) -> Option<Notify> {
    let page = events.event_page_handle(vm)?;
    (set_pending(page.words(), port) == Some(Delivery::Notify)).then_some(Notify { vm })
}

impl Sharing {
    /// Creates the connection of `frontend` to `backend`: a zeroed control page with its header,
    /// a bound pair of control ports, and the page mapped read-write into both VMs at
    /// [`control_page_ipa`]`(frontend)`.
    ///
    /// For an [`ConnectionKind::Emulated`] one: an initialised I/O request page mapped into the
    /// back-end only, at the same IPA, and a back-end port bound to the hypervisor.
    pub fn connect(
        &mut self,
        events: &mut EventChannels<impl PortStore>,
        vms: &mut [Option<Vm>],
        frames: &mut FrameAllocator,
        frontend: VmId,
        backend: VmId,
        kind: ConnectionKind,
    ) -> Result<(), &'static str> {
        let (frontend_port, backend_port) = match kind {
            ConnectionKind::Paravirt => events.bind_pair(frontend, backend),
            ConnectionKind::Emulated => events
                .bind_hypervisor(backend, frontend)
                .map(|port| (NO_PORT, port)),
        }
        .map_err(|_| "no free event-channel ports")?;
        let conn = Connection {
            frontend,
            backend,
            kind,
            page: OwnedFrame::alloc_zeroed(frames).ok_or("no free frame for the control page")?,
            frontend_port,
            backend_port,
            frontend_stops: 0,
        };
        let sides: &[VmId] = match kind {
            ConnectionKind::Paravirt => {
                let header = conn.header();
                conn.page
                    .update(|page| header.init_page(page))
                    .map_err(|_| "control page header rejected")?;
                &[frontend, backend]
            }
            ConnectionKind::Emulated => {
                ioreq::init_page(conn.page.atomics()).map_err(|_| "request page rejected")?;
                &[backend]
            }
        };
        let attrs = MapAttrs {
            mem: MemType::Normal,
            access: Access::ReadWrite,
            executable: false,
        };
        for &vm in sides {
            let vm = vm_slot_mut(vms, vm).ok_or("connection names a missing VM")?;
            vm.stage2
                .map(
                    &mut PhysTableMemory { frames },
                    control_page_ipa(frontend),
                    conn.page.pa(),
                    PAGE_SIZE,
                    attrs,
                )
                .map_err(|_| "mapping the control page failed")?;
        }
        self.connections.push(conn);
        Ok(())
    }

    /// Everything sharing-related when VM `vm` stops (`restart`: SYSTEM_RESET, the same VM boots
    /// again). Returns whether the VM's RAM may be freed or reloaded now, the RAM of other dead
    /// VMs that became free, and the interrupts to inject into connection peers.
    pub fn vm_stopped(
        &mut self,
        events: &mut EventChannels<impl PortStore<Page = GuestPage>>,
        vms: &mut [Option<Vm>],
        frames: &mut FrameAllocator,
        iommu: &mut Iommu,
        vm: VmId,
        restart: bool,
    ) -> Stopped {
        let teardown = if restart {
            Teardown::Reset
        } else {
            Teardown::Kill
        };
        let death = self.grants.vm_died(
            &mut Env {
                vms,
                frames,
                iommu,
                connections: &self.connections,
            },
            vm,
            teardown,
        );
        events.vm_died(vm);
        let mut notify = Vec::new();
        for conn in self
            .connections
            .iter_mut()
            .filter(|c| c.frontend == vm || c.backend == vm)
        {
            if conn.kind == ConnectionKind::Emulated {
                // No handshake here: the page holds I/O requests. The requests of a stopped
                // guest are abandoned; a stopped device model's are answered by the
                // hypervisor (`hv.rs`) before this runs. A restarted device model gets a new
                // request port (its old one died with it) and empty slots.
                if conn.backend == vm && restart {
                    match events.bind_hypervisor(vm, conn.frontend) {
                        Ok(port) => conn.backend_port = port,
                        Err(e) => warn!("VM {vm}: request port not rebound after restart: {e:?}"),
                    }
                } else if conn.backend == vm {
                    conn.backend_port = NO_PORT;
                }
                if ioreq::init_page(conn.page.atomics()).is_err() {
                    warn!("request page {:#x}: reset failed", conn.page.pa());
                }
                if conn.frontend == vm {
                    // The device model learns now, through its request port, that its guest
                    // stopped: it resets the device for a restarted guest and stops serving
                    // one that is gone (before, it had to wait for the guest to fall quiet).
                    conn.frontend_stops += 1;
                    if ioreq::record_guest_stop(conn.page.atomics(), conn.frontend_stops, !restart)
                        .is_err()
                    {
                        warn!(
                            "request page {:#x}: guest stop not recorded",
                            conn.page.pa()
                        );
                    }
                    if conn.backend_port != NO_PORT {
                        notify.extend(set_port_pending(events, conn.backend, conn.backend_port));
                    }
                }
                continue;
            }
            let (side, survivor, survivor_port) = if conn.frontend == vm {
                (handshake::Side::Frontend, conn.backend, conn.backend_port)
            } else {
                (handshake::Side::Backend, conn.frontend, conn.frontend_port)
            };
            if restart && side == handshake::Side::Backend {
                // Before the new incarnation runs: the front-end learns its rings may have
                // been used and must be reset, even if it sees none of the states between.
                conn.page.update(handshake::bump_generation);
            }
            conn.page.update(|page| handshake::mark_closed(page, side));
            if !restart {
                conn.page.update(|page| handshake::mark_stopped(page, side));
            }
            if restart {
                // The new incarnation gets a fresh control port bound to the survivor's.
                match events.bind_interdomain(vm, u64::from(survivor), u64::from(survivor_port)) {
                    Ok(port) => {
                        if conn.frontend == vm {
                            conn.frontend_port = port;
                        } else {
                            conn.backend_port = port;
                        }
                        let header = conn.header();
                        if conn.page.update(|page| header.write(page)).is_err() {
                            warn!("control page {:#x}: header rewrite failed", conn.page.pa());
                        }
                    }
                    Err(e) => {
                        // The survivor's port is gone (it closed it, or stopped for good): the
                        // new incarnation has no control port on this connection. The old
                        // number must not stay in the record, since CONNECTION_PORT would hand
                        // the new incarnation a number a later bind may give another VM.
                        if conn.frontend == vm {
                            conn.frontend_port = NO_PORT;
                        } else {
                            conn.backend_port = NO_PORT;
                        }
                        warn!("VM {vm}: control port not rebound after restart: {e:?}")
                    }
                }
            }
            notify.extend(set_port_pending(events, survivor, survivor_port));
        }
        if !death.ram_free_now {
            info!("VM {vm}: RAM kept until peers unmap its granted frames");
        }
        Stopped {
            ram_free_now: death.ram_free_now,
            incarnation: death.incarnation,
            released: death.released,
            notify,
        }
    }

    /// Frees retained RAM named by `released`.
    pub fn release(&mut self, frames: &mut FrameAllocator, released: &[RamRelease]) {
        for release in released {
            if let Some(i) = self.retained.iter().position(|r| r.release == *release) {
                let ram = self.retained.swap_remove(i);
                free_kept_runs(frames, ram.pa, &ram.kept);
                info!(
                    "RAM of VM {} (incarnation {}) released: its last foreign mapping is gone",
                    release.vm, release.incarnation
                );
            }
        }
    }
}
