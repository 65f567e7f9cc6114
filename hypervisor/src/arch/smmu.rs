//! The SMMUv3 driver: owns the SMMU's registers and the memory it reads and writes (a linear
//! stream table, the command queue and the event queue).
//!
//! Every encoding comes from `hypervisor::smmu`; this file only moves values to and from the
//! device and orders those moves. Policy: everything aborts unless attached. GBPA is set to abort
//! before anything else, so a failure anywhere below leaves the SMMU refusing DMA rather than
//! letting it through, and every stream table entry starts as an abort entry. A passed-through
//! stream is attached with [`Smmu::attach_stage2`] to its VM's own stage-2 table and VMID.
//!
//! Memory model: the SMMU must be IO-coherent (checked at probe), so tables and queues live in
//! ordinary write-back RAM from the frame allocator, reached through the EL2 identity map, and
//! only barriers (no cache maintenance) order the CPU's stores against the SMMU's reads. Stores
//! the SMMU reads are volatile so the compiler neither drops nor reorders them.
//!
//! Every wait is bounded (by time, from the generic counter) and ends in an error naming what did
//! not happen.

use alloc::vec::Vec;
use core::arch::asm;
use core::ptr;

use hypervisor::smmu::{self, Command, Event, Features, Gerror, QueueIndex, Ste};

use super::cpu;

/// Command queue of 256 entries: one 4 KiB page. The hypervisor issues a handful of commands at
/// a time and waits for each batch, so it never needs more.
const CMDQ_LOG2: u8 = 8;
/// Event queue of 128 records: one 4 KiB page. Overflow loses events, never DMA isolation.
const EVTQ_LOG2: u8 = 7;
/// A linear stream table beyond 2^16 entries (4 MiB) is not worth its memory here; PCI stream
/// IDs are 16 bits anyway.
const MAX_LINEAR_SID_BITS: u8 = 16;
/// How long any single wait may take. QEMU answers at once; real SMMUs within microseconds.
const TIMEOUT_US: u64 = 100_000;
const PAGE: usize = 4096;

/// Why the SMMU could not be set up or did not do what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SmmuError {
    /// The SMMU lacks something the hypervisor needs.
    #[error("unusable SMMU: {0}")]
    Unsupported(smmu::Unsupported),
    /// No memory for the stream table or a queue.
    #[error("no memory for the SMMU stream table or queues")]
    OutOfMemory,
    /// `what` did not happen within the timeout.
    #[error("SMMU timeout: {0}")]
    Timeout(&'static str),
    /// The command queue stopped on a command; it was skipped and the queue restarted.
    #[error("SMMU rejected {}: {error}", smmu::opcode_name(*opcode))]
    Command { error: smmu::CmdqError, opcode: u8 },
    /// The stream ID is beyond the stream table (those streams abort anyway).
    #[error("stream {sid:#x} is beyond the SMMU stream table ({streams} streams)")]
    StreamOutOfRange { sid: u32, streams: u32 },
    /// The stage-2 entry could not be built.
    #[error("cannot build the stream table entry: {0}")]
    Ste(smmu::SteError),
    /// A stream-ID width of 0 was asked for.
    #[error("an SMMU stream table needs at least one stream")]
    NoStreams,
}

impl From<smmu::SteError> for SmmuError {
    fn from(e: smmu::SteError) -> Self {
        SmmuError::Ste(e)
    }
}

/// Events read by [`Smmu::poll_events`].
#[derive(Debug, Default)]
pub struct EventPoll {
    pub events: Vec<Event>,
    /// The event queue overflowed since the last poll: some events were lost.
    pub overflowed: bool,
}

/// Stores to memory are complete before any later store, including a register write that tells
/// the SMMU to look at them.
fn store_barrier() {
    // SAFETY: a barrier has no effect besides ordering.
    unsafe { asm!("dsb st", options(nostack, preserves_flags)) };
}

/// Loads before this complete before any later load (reading PROD, then the records it covers).
fn load_barrier() {
    // SAFETY: a barrier has no effect besides ordering.
    unsafe { asm!("dsb ld", options(nostack, preserves_flags)) };
}

/// All memory accesses before this complete before any access after it.
fn full_barrier() {
    // SAFETY: a barrier has no effect besides ordering.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// A point in time `TIMEOUT_US` from now, on the generic counter.
struct Deadline(u64);

impl Deadline {
    fn start() -> Deadline {
        let ticks = cpu::counter_frequency().saturating_mul(TIMEOUT_US) / 1_000_000;
        Deadline(cpu::counter().saturating_add(ticks.max(1)))
    }

    fn passed(&self) -> bool {
        cpu::counter() > self.0
    }
}

/// The SMMU, enabled, with every stream aborting until attached.
pub struct Smmu {
    base: usize,
    features: Features,
    strtab_pa: u64,
    strtab_log2: u8,
    cmdq_pa: u64,
    cmdq: QueueIndex,
    /// Our producer position (we are the only producer).
    cmdq_prod: u32,
    evtq_pa: u64,
    evtq: QueueIndex,
    /// Our consumer position.
    evtq_cons: u32,
}

impl Smmu {
    /// Probes, sets up and enables the SMMU at `base`: GBPA abort, SMMU off, a linear stream table
    /// for 2^`sid_bits` streams (capped by the SMMU and at 16 bits) filled with abort entries,
    /// command and event queues, caches invalidated, then queues and translation on.
    ///
    /// `alloc(pages, align_pages)` returns the physical address of `pages` 4 KiB frames aligned
    /// to `align_pages` frames, inside the EL2 identity map; the SMMU keeps them forever.
    /// Stream IDs at or beyond 2^`sid_bits` are aborted by the SMMU (with a C_BAD_STREAMID event).
    ///
    /// # Safety
    /// `base` must be the SMMUv3 register frame from the device tree (two 64 KiB pages, mapped as
    /// Device memory by the EL2 identity map), and nothing else may drive this SMMU.
    pub unsafe fn new(
        base: u64,
        sid_bits: u8,
        alloc: &mut dyn FnMut(usize, usize) -> Option<u64>,
    ) -> Result<Smmu, SmmuError> {
        if sid_bits == 0 {
            return Err(SmmuError::NoStreams);
        }
        let mut s = Smmu {
            base: base as usize,
            features: Features::decode(0, 0, 0),
            strtab_pa: 0,
            strtab_log2: 0,
            cmdq_pa: 0,
            cmdq: QueueIndex::new(0).ok_or(SmmuError::NoStreams)?,
            cmdq_prod: 0,
            evtq_pa: 0,
            evtq: QueueIndex::new(0).ok_or(SmmuError::NoStreams)?,
            evtq_cons: 0,
        };
        s.features = Features::decode(
            s.read32(smmu::IDR0),
            s.read32(smmu::IDR1),
            s.read32(smmu::IDR5),
        );
        s.features.check_usable().map_err(SmmuError::Unsupported)?;

        // First of all: transactions abort (instead of bypassing) whenever SMMUEN is 0, so from
        // here on any failure leaves DMA refused. QEMU resets GBPA to bypass.
        s.set_gbpa_abort()?;
        // The SMMU may have been left enabled (by firmware or a previous boot): turn everything
        // off before pointing it at new tables.
        s.write_cr0(0)?;

        // Stream table: 64 bytes per entry, aligned to its size (QEMU masks the base with the
        // table size; the architecture requires it).
        s.strtab_log2 = sid_bits
            .min(s.features.sid_bits.max(1))
            .min(MAX_LINEAR_SID_BITS);
        let table_bytes = (1usize << s.strtab_log2) * smmu::STE_BYTES;
        let table_pages = table_bytes.div_ceil(PAGE);
        s.strtab_pa = alloc(table_pages, table_pages).ok_or(SmmuError::OutOfMemory)?;
        for sid in 0..1u32 << s.strtab_log2 {
            s.store_ste_words(sid, &smmu::ste_abort(), 0..8);
        }

        // Queues: one page each, page aligned (they must be aligned to their size).
        let cmdq_log2 = s.features.cmdq_log2.clamp(1, CMDQ_LOG2);
        s.cmdq = QueueIndex::new(cmdq_log2).ok_or(SmmuError::NoStreams)?;
        s.cmdq_pa = alloc(1, 1).ok_or(SmmuError::OutOfMemory)?;
        let evtq_log2 = s.features.evtq_log2.clamp(1, EVTQ_LOG2);
        s.evtq = QueueIndex::new(evtq_log2).ok_or(SmmuError::NoStreams)?;
        s.evtq_pa = alloc(1, 1).ok_or(SmmuError::OutOfMemory)?;
        // SAFETY: both pages were just allocated to the SMMU, are identity-mapped RAM, and are
        // not yet known to the SMMU.
        unsafe {
            ptr::write_bytes(s.cmdq_pa as *mut u8, 0, PAGE);
            ptr::write_bytes(s.evtq_pa as *mut u8, 0, PAGE);
        }
        // The abort entries and empty queues are in memory before the SMMU learns where they are.
        store_barrier();

        s.write32(smmu::CR1, smmu::CR1_WB_ISH);
        s.write32(smmu::CR2, smmu::CR2_PTM | smmu::CR2_RECINVSID);
        s.write64(smmu::STRTAB_BASE, smmu::strtab_base(s.strtab_pa));
        s.write32(
            smmu::STRTAB_BASE_CFG,
            smmu::strtab_base_cfg_linear(s.strtab_log2),
        );
        s.write64(smmu::CMDQ_BASE, smmu::queue_base(s.cmdq_pa, cmdq_log2));
        s.write32(smmu::CMDQ_PROD, 0);
        s.write32(smmu::CMDQ_CONS, 0);
        s.write64(smmu::EVTQ_BASE, smmu::queue_base(s.evtq_pa, evtq_log2));
        s.write32(smmu::EVTQ_PROD, 0);
        s.write32(smmu::EVTQ_CONS, 0);

        // Command queue on, then forget anything cached from before (configuration and TLBs).
        // TLBI_NH_ALL/EL2_ALL are not sent: there is no stage 1 (QEMU's stage=2 SMMU even
        // rejects NH_ALL as illegal).
        s.write_cr0(smmu::CR0_CMDQEN)?;
        s.issue(&[smmu::cmd_cfgi_all(), smmu::cmd_tlbi_nsnh_all()])?;
        s.write_cr0(smmu::CR0_CMDQEN | smmu::CR0_EVTQEN)?;
        // Events are polled; the wired interrupts stay off unless enable_irqs asks for them.
        s.write32(smmu::IRQ_CTRL, 0);
        s.wait_ack(
            smmu::IRQ_CTRLACK,
            0,
            "IRQ_CTRLACK after disabling interrupts",
        )?;
        s.write_cr0(smmu::CR0_CMDQEN | smmu::CR0_EVTQEN | smmu::CR0_SMMUEN)?;
        Ok(s)
    }

    /// What the SMMU reported in its ID registers.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Number of entries of the stream table (stream IDs 0..streams()).
    pub fn streams(&self) -> u32 {
        1 << self.strtab_log2
    }

    /// Makes stream `sid` translate through a VM's stage-2 table: IOVA = the VM's guest-physical
    /// address, tagged with `vmid`. `root_pa` is the VM's stage-2 root (`Stage2::root_pa`) and
    /// `vtcr` the VTCR_EL2 value the CPUs use, so both walk the same tables the same way.
    ///
    /// TLB entries tagged `vmid` are invalidated first: a previous owner of the VMID may have left
    /// some, and the new entry must never hit them.
    pub fn attach_stage2(
        &mut self,
        sid: u32,
        vmid: u16,
        root_pa: u64,
        vtcr: u64,
    ) -> Result<(), SmmuError> {
        self.check_sid(sid)?;
        let ste = smmu::ste_stage2(&self.features, vmid, root_pa, vtcr)?;
        self.issue(&[smmu::cmd_tlbi_s12_vmall(vmid)])?;
        self.write_ste(sid, &ste)
    }

    /// Makes stream `sid` abort again (the VM lost the device or is going away), then drops the
    /// TLB entries of the VMID it used. Stop the device's DMA (clear bus mastering) first.
    pub fn detach(&mut self, sid: u32) -> Result<(), SmmuError> {
        self.check_sid(sid)?;
        let old = self.load_ste(sid);
        self.write_ste(sid, &smmu::ste_abort())?;
        if smmu::ste_config(&old) == Some(smmu::STE_CONFIG_S2_TRANS) {
            let vmid = (old[2] & smmu::STE2_S2VMID_MASK) as u16;
            self.issue(&[smmu::cmd_tlbi_s12_vmall(vmid)])?;
        }
        Ok(())
    }

    /// Invalidates every SMMU TLB entry of `vmid` (after large stage-2 changes).
    pub fn tlbi_vmid(&mut self, vmid: u16) -> Result<(), SmmuError> {
        self.issue(&[smmu::cmd_tlbi_s12_vmall(vmid)])
    }

    /// Invalidates the SMMU TLB entries of `vmid` for the stage-2 pieces `(ipa, size)` that
    /// `Stage2::unmap` reported; one TLBI_S2_IPA per page or block (an entry of any size that
    /// contains the IPA is removed), then one CMD_SYNC. With no stage 1 there are no combined
    /// entries to clean as the CPU side must. Must complete before the unmapped frames are
    /// reused.
    pub fn tlbi_ipas(&mut self, vmid: u16, pieces: &[(u64, u64)]) -> Result<(), SmmuError> {
        for &(ipa, _size) in pieces {
            self.submit(&smmu::cmd_tlbi_s2_ipa(vmid, ipa, false))?;
        }
        self.sync()
    }

    /// Reads and decodes every event recorded since the last poll, and frees their queue slots.
    pub fn poll_events(&mut self) -> EventPoll {
        let mut poll = EventPoll::default();
        let prod = self.read32(smmu::EVTQ_PROD);
        let cons_reg = self.read32(smmu::EVTQ_CONS);
        poll.overflowed = smmu::evtq_overflowed(prod, cons_reg);
        // The records PROD covers are read only after PROD itself.
        load_barrier();
        let q = self.evtq;
        let mut cons = self.evtq_cons;
        let mut taken = 0;
        while !q.is_empty(prod, cons) && taken < q.entries() {
            let record = self.evtq_pa as usize + q.index(cons) as usize * smmu::EVENT_BYTES;
            let mut words = [0u64; 4];
            for (i, word) in words.iter_mut().enumerate() {
                // SAFETY: the record lies inside the event queue page allocated in `new`
                // (index < entries, entries * 32 bytes <= one page); the SMMU finished writing it
                // before it advanced PROD past it.
                *word = unsafe { ptr::read_volatile((record + 8 * i) as *const u64) };
            }
            poll.events.push(Event::decode(&words));
            cons = q.next(cons);
            taken += 1;
        }
        // The records are read before their slots are handed back to the SMMU.
        full_barrier();
        self.evtq_cons = cons;
        // Copying OVFLG into OVACKFLG acknowledges an overflow.
        self.write32(smmu::EVTQ_CONS, smmu::evtq_cons_value(q, cons, prod));
        poll
    }

    /// Reports and acknowledges active global errors; None if there are none. A command-queue
    /// error also skips the failed command so the queue runs again.
    pub fn check_gerror(&mut self) -> Option<Gerror> {
        let gerror = self.read32(smmu::GERROR);
        let active = Gerror::active(gerror, self.read32(smmu::GERRORN));
        if active.is_empty() {
            return None;
        }
        if active.cmdq_error() {
            let _ = self.skip_failed_command();
        }
        // Writing GERRORN = GERROR acknowledges exactly the errors seen.
        self.write32(smmu::GERRORN, gerror);
        Some(active)
    }

    /// Turns the wired event-queue and global-error interrupts on or off (QEMU virt: SPI 74
    /// "eventq" and SPI 77 "gerror", edge-triggered, INTIDs 106 and 109).
    pub fn enable_irqs(&mut self, events: bool, gerror: bool) -> Result<(), SmmuError> {
        let value = if events { smmu::IRQ_CTRL_EVTQ_IRQEN } else { 0 }
            | if gerror {
                smmu::IRQ_CTRL_GERROR_IRQEN
            } else {
                0
            };
        self.write32(smmu::IRQ_CTRL, value);
        self.wait_ack(smmu::IRQ_CTRLACK, value, "IRQ_CTRLACK")
    }

    // --- stream table ---------------------------------------------------------------------

    fn check_sid(&self, sid: u32) -> Result<(), SmmuError> {
        if sid >= self.streams() {
            return Err(SmmuError::StreamOutOfRange {
                sid,
                streams: self.streams(),
            });
        }
        Ok(())
    }

    /// Address of word 0 of the entry of `sid` (< streams()).
    fn ste_addr(&self, sid: u32) -> usize {
        self.strtab_pa as usize + sid as usize * smmu::STE_BYTES
    }

    fn store_ste_words(&self, sid: u32, ste: &Ste, words: core::ops::Range<usize>) {
        let addr = self.ste_addr(sid);
        for i in words {
            // SAFETY: sid < streams() (callers check), so the entry lies inside the stream table
            // allocated in `new`, which only this driver writes; i < 8 words of 8 bytes.
            unsafe { ptr::write_volatile((addr + 8 * i) as *mut u64, ste[i]) };
        }
    }

    fn load_ste(&self, sid: u32) -> Ste {
        let addr = self.ste_addr(sid);
        let mut ste = [0u64; 8];
        for (i, word) in ste.iter_mut().enumerate() {
            // SAFETY: as in store_ste_words.
            *word = unsafe { ptr::read_volatile((addr + 8 * i) as *const u64) };
        }
        ste
    }

    /// Replaces the entry of `sid` so that the SMMU never sees half of it.
    ///
    /// The SMMU may fetch an entry at any moment (a DMA arrives, or it prefetches), and an STE is
    /// 64 bytes that no single store can write. Only word 0 (V and Config) decides how the other
    /// words are read: under Config = abort they are ignored. So:
    /// 1. if the entry currently translates, first store an abort word 0 and make the SMMU drop
    ///    its cached copy (CFGI_STE + SYNC) — break before make; otherwise a fetch could pair the
    ///    old Config with a half-written S2TTB/S2VMID and walk someone else's tables;
    /// 2. store words 1..7 while word 0 still says abort, then a barrier so they are visible
    ///    before word 0;
    /// 3. store word 0, the one store that makes the new entry live, then a barrier;
    /// 4. CFGI_STE + SYNC, so the SMMU drops whatever it cached and uses the new entry from now.
    fn write_ste(&mut self, sid: u32, new: &Ste) -> Result<(), SmmuError> {
        let old = self.load_ste(sid);
        let live = matches!(smmu::ste_config(&old), Some(c) if c != smmu::STE_CONFIG_ABORT);
        if live {
            self.store_ste_words(sid, &smmu::ste_abort(), 0..1);
            store_barrier();
            self.issue(&[smmu::cmd_cfgi_ste(sid)])?;
        }
        self.store_ste_words(sid, new, 1..8);
        store_barrier();
        self.store_ste_words(sid, new, 0..1);
        store_barrier();
        self.issue(&[smmu::cmd_cfgi_ste(sid)])
    }

    // --- command queue --------------------------------------------------------------------

    /// Queues `cmds`, then a CMD_SYNC, and waits until the SMMU has completed all of them.
    fn issue(&mut self, cmds: &[Command]) -> Result<(), SmmuError> {
        for cmd in cmds {
            self.submit(cmd)?;
        }
        self.sync()
    }

    /// Appends one command and publishes it (PROD). Waits for a free slot if the queue is full.
    fn submit(&mut self, cmd: &Command) -> Result<(), SmmuError> {
        let q = self.cmdq;
        let deadline = Deadline::start();
        loop {
            let cons = self.read32(smmu::CMDQ_CONS);
            if !q.is_full(self.cmdq_prod, cons) {
                break;
            }
            if Gerror::active(self.read32(smmu::GERROR), self.read32(smmu::GERRORN)).cmdq_error() {
                return Err(self.skip_failed_command());
            }
            if deadline.passed() {
                return Err(SmmuError::Timeout("a free command queue slot"));
            }
            core::hint::spin_loop();
        }
        let slot = self.cmdq_pa as usize + q.index(self.cmdq_prod) as usize * smmu::CMD_BYTES;
        for (i, word) in cmd.iter().enumerate() {
            // SAFETY: the slot lies inside the command queue page allocated in `new` (index <
            // entries, entries * 16 bytes <= one page), and the SMMU does not read it: it is at
            // or beyond PROD, which has not been advanced past it yet.
            unsafe { ptr::write_volatile((slot + 8 * i) as *mut u64, *word) };
        }
        self.cmdq_prod = q.next(self.cmdq_prod);
        // The command is in memory before PROD says it exists.
        store_barrier();
        self.write32(smmu::CMDQ_PROD, self.cmdq_prod);
        Ok(())
    }

    /// Queues a CMD_SYNC (no completion signal) and polls CMDQ_CONS until the SMMU is past it,
    /// which means every earlier command has completed.
    fn sync(&mut self) -> Result<(), SmmuError> {
        let at = self.cmdq_prod;
        self.submit(&smmu::cmd_sync())?;
        let deadline = Deadline::start();
        loop {
            let cons = self.read32(smmu::CMDQ_CONS);
            if self.cmdq.consumed(at, cons) {
                return Ok(());
            }
            if Gerror::active(self.read32(smmu::GERROR), self.read32(smmu::GERRORN)).cmdq_error() {
                return Err(self.skip_failed_command());
            }
            if deadline.passed() {
                return Err(SmmuError::Timeout("CMD_SYNC completion"));
            }
            core::hint::spin_loop();
        }
    }

    /// The command queue stopped at CONS on a bad command: replace it with a CMD_SYNC (always
    /// legal), then acknowledge GERROR.CMDQ_ERR so the SMMU carries on with the queue. Returns
    /// what went wrong.
    fn skip_failed_command(&mut self) -> SmmuError {
        let cons = self.read32(smmu::CMDQ_CONS);
        let error = smmu::CmdqError::from_cons(cons);
        let slot = self.cmdq_pa as usize + self.cmdq.index(cons) as usize * smmu::CMD_BYTES;
        // SAFETY: the slot lies inside the command queue page (index < entries); the SMMU has
        // stopped on it and reads it again only after the acknowledgement below.
        let opcode = unsafe { ptr::read_volatile(slot as *const u64) } as u8;
        let replacement = smmu::cmd_sync();
        for (i, word) in replacement.iter().enumerate() {
            // SAFETY: as above.
            unsafe { ptr::write_volatile((slot + 8 * i) as *mut u64, *word) };
        }
        store_barrier();
        let gerrorn = self.read32(smmu::GERRORN);
        self.write32(smmu::GERRORN, gerrorn ^ smmu::GERROR_CMDQ_ERR);
        SmmuError::Command { error, opcode }
    }

    // --- control registers ----------------------------------------------------------------

    /// Writes CR0 and waits for CR0ACK to show it.
    fn write_cr0(&self, value: u32) -> Result<(), SmmuError> {
        self.write32(smmu::CR0, value);
        self.wait_ack(smmu::CR0ACK, value, "CR0ACK to follow CR0")
    }

    fn wait_ack(&self, ack: usize, value: u32, what: &'static str) -> Result<(), SmmuError> {
        let deadline = Deadline::start();
        while self.read32(ack) != value {
            if deadline.passed() {
                return Err(SmmuError::Timeout(what));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// Sets GBPA.ABORT through the UPDATE handshake (wait for no update in flight, write the new
    /// value with UPDATE, wait for the SMMU to clear UPDATE).
    fn set_gbpa_abort(&self) -> Result<(), SmmuError> {
        let deadline = Deadline::start();
        let mut gbpa = self.read32(smmu::GBPA);
        while gbpa & smmu::GBPA_UPDATE != 0 {
            if deadline.passed() {
                return Err(SmmuError::Timeout("a pending GBPA update"));
            }
            core::hint::spin_loop();
            gbpa = self.read32(smmu::GBPA);
        }
        self.write32(smmu::GBPA, gbpa | smmu::GBPA_ABORT | smmu::GBPA_UPDATE);
        let deadline = Deadline::start();
        while self.read32(smmu::GBPA) & smmu::GBPA_UPDATE != 0 {
            if deadline.passed() {
                return Err(SmmuError::Timeout("GBPA.UPDATE to clear"));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    // --- MMIO -----------------------------------------------------------------------------

    fn read32(&self, offset: usize) -> u32 {
        debug_assert!(offset < smmu::REGISTER_SPACE);
        // SAFETY: `base` is the SMMU register frame (constructor contract), every offset used is
        // one of the architected registers inside its two pages, and volatile access is how
        // device registers must be read.
        unsafe { ptr::read_volatile((self.base + offset) as *const u32) }
    }

    fn write32(&self, offset: usize, value: u32) {
        debug_assert!(offset < smmu::REGISTER_SPACE);
        // SAFETY: as in read32.
        unsafe { ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }

    /// The 64-bit registers (STRTAB_BASE, CMDQ_BASE, EVTQ_BASE) are written in one access.
    fn write64(&self, offset: usize, value: u64) {
        debug_assert!(offset < smmu::REGISTER_SPACE && offset.is_multiple_of(8));
        // SAFETY: as in read32; the offset is 8-byte aligned.
        unsafe { ptr::write_volatile((self.base + offset) as *mut u64, value) }
    }
}
