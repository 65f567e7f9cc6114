//! Hypercall ABI: `HVC #0`, SMCCC calling convention.
//!
//! x0 carries the function id, x1..x6 the arguments; on return x0 is a [`Status`] (as i64) and
//! x1.. carry results. Function ids sit in SMCCC's "vendor specific hypervisor service" range
//! (fast call, SMC64, owning entity 6). PSCI (owning entity 4) is also accepted over HVC and is
//! emulated per VM: SYSTEM_OFF and SYSTEM_RESET act on the calling VM only.

/// SMCCC fast-call, 64-bit convention, owner 6 (vendor hypervisor).
pub const VENDOR_HYP_BASE: u64 = 0xC600_0000;

/// Write bytes to the hypervisor console. x1 = byte count (0..=CONSOLE_MAX_BYTES), x2..x6 carry
/// the bytes little-endian (byte 0 in the low byte of x2). Bytes travel in registers so the
/// hypervisor never reads guest memory for logging. The hypervisor buffers per VM and prints each
/// completed line prefixed with the VM's name. A count above CONSOLE_MAX_BYTES is refused with
/// `InvalidArgument` and nothing is printed.
pub const CONSOLE_WRITE: u64 = VENDOR_HYP_BASE | 0x01;
pub const CONSOLE_MAX_BYTES: usize = 40;

/// Give up the rest of this time slice.
pub const YIELD: u64 = VENDOR_HYP_BASE | 0x02;

/// Diagnostic: queue virtual SGIs on the calling vCPU. x1 = bitmask of SGI INTIDs (bits 0..16),
/// x2 = how many times to repeat the whole mask (each pass queues every set SGI once more, so
/// the pending count can exceed the number of list registers). Used to prove that no virtual
/// interrupt is lost when more are pending than fit in the list registers.
pub const TEST_INJECT: u64 = VENDOR_HYP_BASE | 0x10;

/// Register the caller's grant table. x1 = GPA of the table (page aligned, every page inside the
/// caller's RAM), x2 = pages, `1..=grant::MAX_TABLE_PAGES`. Replaces an earlier table, which is
/// refused with `Busy` while a peer still maps one of the caller's refs (the hypervisor clears
/// IN_USE in the table it recorded, so the table may not move under a mapping).
pub const GRANT_TABLE_SETUP: u64 = VENDOR_HYP_BASE | 0x20;

/// Map peers' granted frames into the caller's stage-2. x1 = GPA of an array of
/// [`grant::MapOp`](crate::grant::MapOp) (8-byte aligned, in the caller's RAM), x2 = count,
/// `1..=grant::MAX_BATCH`. x0 is `Ok` when every op was attempted; each op's own result is
/// written into its `status` word.
pub const GRANT_MAP: u64 = VENDOR_HYP_BASE | 0x21;

/// Unmap grant mappings. x1 = GPA of an array of [`grant::UnmapOp`](crate::grant::UnmapOp),
/// x2 = count, `1..=grant::MAX_BATCH`. Per-op status as for GRANT_MAP.
pub const GRANT_UNMAP: u64 = VENDOR_HYP_BASE | 0x22;

/// The hypervisor copies bytes between granted frames and/or the caller's own RAM (Xen's grant
/// copy). x1 = GPA of an array of [`grant::CopyOp`](crate::grant::CopyOp), x2 = count,
/// `1..=grant::MAX_BATCH`. Per-op status as for GRANT_MAP.
pub const GRANT_COPY: u64 = VENDOR_HYP_BASE | 0x23;

/// The granter revokes one of its refs. x1 = ref. `Busy` while any peer has it mapped; otherwise
/// the hypervisor clears PERMIT in the entry and the granter may reuse it.
pub const GRANT_END: u64 = VENDOR_HYP_BASE | 0x24;

/// Register the caller's event page (see [`evtchn`](crate::evtchn)). x1 = GPA, page aligned,
/// inside the caller's RAM.
pub const EVTCHN_SETUP: u64 = VENDOR_HYP_BASE | 0x30;

/// Allocate a port that VM x1 (the remote VM id) may bind to. Returns x1 = the local port.
pub const EVTCHN_ALLOC_UNBOUND: u64 = VENDOR_HYP_BASE | 0x31;

/// Bind to an unbound port of another VM. x1 = remote VM id, x2 = remote port, which must be
/// unbound for the caller. Returns x1 = the new local port connected to it.
pub const EVTCHN_BIND_INTERDOMAIN: u64 = VENDOR_HYP_BASE | 0x32;

/// Signal the remote end of a bound port. x1 = local port.
pub const EVTCHN_SEND: u64 = VENDOR_HYP_BASE | 0x33;

/// Close a local port. x1 = local port. A bound peer's end becomes unbound (for the closer).
pub const EVTCHN_CLOSE: u64 = VENDOR_HYP_BASE | 0x34;

/// Clear the mask bit of a local port (x1) and raise the event interrupt again if the port is
/// pending, so an event that arrived while masked is not lost.
pub const EVTCHN_UNMASK: u64 = VENDOR_HYP_BASE | 0x35;

/// The caller's own event-channel port of the connection it shares with VM x1 (its back-end or
/// one of its front-ends), as the hypervisor set it up. Returns x1 = the port. This is the
/// trusted copy of the port in the control page's header, which the peer can write too.
/// `InvalidArgument` when the caller has no connection with that VM.
pub const CONNECTION_PORT: u64 = VENDOR_HYP_BASE | 0x40;

/// Device model only: raise the emulated NIC's interrupt
/// ([`layout::intid::EMULATED_NIC`](crate::layout::intid::EMULATED_NIC)) in guest x1, whose
/// emulated device the caller serves (see [`ioreq`](crate::ioreq)). `Denied` for any other
/// caller or guest; `NoSpace` when the guest's vCPU 0 already holds too many pending virtual
/// interrupts (the interrupt is then lost, as a device's edge would be while the line is
/// masked; the guest's driver polls the status register when it next runs).
pub const IOREQ_SET_IRQ: u64 = VENDOR_HYP_BASE | 0x50;

/// Print the hypervisor's per-VM accounting on its console, tagged with x1 (any value the
/// caller chooses, so a harness can pair the report before a measurement with the one after).
/// One line per live VM: `accounting <tag> vm=<name> run_us=<n> exits=<n> hypercalls=<n>
/// mmio_exits=<n> ioreqs=<n> virqs=<n> device_irqs=<n> vmid_switches=<n> gave_way=<n>`
/// (device_irqs: its passed-through device's interrupts that went through EL2, INTx or vPE
/// doorbells; vmid_switches: loads of its vCPUs onto a pCPU that held another VM's stage 2;
/// gave_way: times one of its running vCPUs was preempted for a woken one), then
/// `accounting <tag> idle_us=<n> pcpus=<n>`; every
/// counter counts from boot (a restarted VM's keep counting). Any VM may ask: the figures
/// describe scheduling, not another VM's data. At most one report per VM every
/// [`ACCOUNTING_MIN_INTERVAL_MS`]: a call sooner is `Busy` and prints nothing, so no VM can
/// flood the console with the hypervisor's lines.
pub const ACCOUNTING_REPORT: u64 = VENDOR_HYP_BASE | 0x60;
pub const ACCOUNTING_MIN_INTERVAL_MS: u64 = 20;

/// Driver domain only (issue 15; ids 0x80..=0x8f are the interrupt-virtualization calls):
/// deliver vectors `0..x2` of the MSI-X table of PCI function x1 (its routing id, bus << 8 |
/// device << 3 | function) as virtual LPIs straight into the caller's vCPU 0 (GICv4 direct
/// injection). The caller must own the function (`Denied` otherwise) and ask for
/// 1..=its MSI-X table size vectors (`InvalidArgument` otherwise); `NotSupported` without
/// direct injection (GICv3, or the ITS failed): the driver then uses INTx. On `Ok`, x1 is the
/// doorbell IOVA to program in every vector's Message Address (the ITS's translation page,
/// mapped there and nowhere else in the caller's stage 2 and the device's SMMU view), vector n's
/// Message Data is n, and x2 is the vINTID of vector 0 (vector n arrives as x2 + n). A second
/// call for the same function is `Busy`; a stop or restart of the caller unmaps everything.
pub const MSIX_MAP: u64 = VENDOR_HYP_BASE | 0x80;

/// Give pages of the caller's memory back to the balloon. x1 = GPA of an array of page GPAs,
/// x2 = count, `1..=balloon::MAX_BATCH`. Returns x1 = pages taken; x0 is the status of the
/// first page refused (see [`balloon`](crate::balloon)).
pub const BALLOON_RELEASE: u64 = VENDOR_HYP_BASE | 0x70;

/// Populate pages of the caller's memory window from the balloon. x1 = GPA of an array of page
/// GPAs, x2 = count, `1..=balloon::MAX_BATCH`. Returns x1 = pages populated; x0 is the status
/// of the first page refused (see [`balloon`](crate::balloon)).
pub const BALLOON_POPULATE: u64 = VENDOR_HYP_BASE | 0x71;

/// The caller's memory in pages (x1) and the balloon's credit in pages (x2).
pub const BALLOON_INFO: u64 = VENDOR_HYP_BASE | 0x72;

/// The caller's balloon target in pages (x1): how much memory the hypervisor wants it to have
/// (see [`balloon`](crate::balloon)'s "Targets"). Any VM may ask about itself.
pub const BALLOON_TARGET: u64 = VENDOR_HYP_BASE | 0x73;

/// Driver domains only: set VM x1's balloon target to x2 pages and raise
/// [`TARGET_INTID`](crate::layout::intid::TARGET_INTID) in it. `Denied` for any other caller
/// (not logged); `InvalidArgument` for an id that is no live VM or a target outside
/// `FLOOR_BYTES..=MAX_TARGET_BYTES`; `NoSpace` when the growth cannot be met from the
/// balloon's free memory (see [`balloon`](crate::balloon)).
pub const BALLOON_SET_TARGET: u64 = VENDOR_HYP_BASE | 0x74;

/// Every vendor-range hypercall the hypervisor answers.
pub const VENDOR_CALLS: [u64; 23] = [
    CONSOLE_WRITE,
    YIELD,
    TEST_INJECT,
    GRANT_TABLE_SETUP,
    GRANT_MAP,
    GRANT_UNMAP,
    GRANT_COPY,
    GRANT_END,
    EVTCHN_SETUP,
    EVTCHN_ALLOC_UNBOUND,
    EVTCHN_BIND_INTERDOMAIN,
    EVTCHN_SEND,
    EVTCHN_CLOSE,
    EVTCHN_UNMASK,
    CONNECTION_PORT,
    IOREQ_SET_IRQ,
    ACCOUNTING_REPORT,
    BALLOON_RELEASE,
    BALLOON_POPULATE,
    BALLOON_INFO,
    BALLOON_TARGET,
    BALLOON_SET_TARGET,
    MSIX_MAP,
];

/// Status codes returned in x0. Zero is success; errors are negative like SMCCC's.
#[repr(i64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    /// Unknown function id (also SMCCC's NOT_SUPPORTED value).
    NotSupported = -1,
    /// An argument is out of range or malformed.
    InvalidArgument = -2,
    /// The caller may not do this (not its object, or not its peer).
    Denied = -3,
    /// The object is busy (e.g. a grant still mapped).
    Busy = -4,
    /// Out of a bounded resource.
    NoSpace = -5,
    /// A grant ref is out of the granter's table, the granter has no (live) table, or the
    /// entry's PERMIT bit is clear.
    BadRef = -6,
    /// Write access asked of a read-only grant (a read-write map, or a copy into it).
    ReadOnly = -7,
    /// The frame named by a grant entry is not in the granter's RAM.
    BadFrame = -8,
    /// The address is not a grant mapping of the caller.
    NotMapped = -9,
    /// An event-channel port is out of range, free, or in the wrong state for the call.
    BadPort = -10,
}

impl Status {
    pub const fn as_u64(self) -> u64 {
        self as i64 as u64
    }

    pub fn from_u64(raw: u64) -> Option<Status> {
        Some(match raw as i64 {
            0 => Status::Ok,
            -1 => Status::NotSupported,
            -2 => Status::InvalidArgument,
            -3 => Status::Denied,
            -4 => Status::Busy,
            -5 => Status::NoSpace,
            -6 => Status::BadRef,
            -7 => Status::ReadOnly,
            -8 => Status::BadFrame,
            -9 => Status::NotMapped,
            -10 => Status::BadPort,
            _ => return None,
        })
    }
}

/// PSCI function ids the hypervisor emulates for guests (PSCI 1.1, SMC64 where it matters), as
/// the `smccc` crate defines them, widened to the register width the hypervisor decodes.
pub mod psci {
    use smccc::psci::{self as ids, error as codes};

    pub const VERSION: u64 = ids::PSCI_VERSION as u64;
    pub const CPU_OFF: u64 = ids::PSCI_CPU_OFF as u64;
    pub const CPU_ON_64: u64 = ids::PSCI_CPU_ON_64 as u64;
    pub const SYSTEM_OFF: u64 = ids::PSCI_SYSTEM_OFF as u64;
    pub const SYSTEM_RESET: u64 = ids::PSCI_SYSTEM_RESET as u64;
    pub const FEATURES: u64 = ids::PSCI_FEATURES as u64;
    /// PSCI return codes.
    pub const SUCCESS: i64 = 0;
    pub const NOT_SUPPORTED: i64 = codes::NOT_SUPPORTED as i64;
    pub const INVALID_PARAMETERS: i64 = codes::INVALID_PARAMETERS as i64;
    /// CPU_ON while the caller's VM is being stopped or reset: no vCPU may start any more.
    pub const DENIED: i64 = codes::DENIED as i64;
    pub const ALREADY_ON: i64 = codes::ALREADY_ON as i64;
}

/// Packs up to [`CONSOLE_MAX_BYTES`] bytes into the five argument registers of CONSOLE_WRITE.
pub fn pack_console_bytes(bytes: &[u8]) -> [u64; 5] {
    let mut regs = [0u64; 5];
    for (i, &b) in bytes.iter().take(CONSOLE_MAX_BYTES).enumerate() {
        regs[i / 8] |= (b as u64) << ((i % 8) * 8);
    }
    regs
}

/// The inverse of [`pack_console_bytes`]; `len` is clamped to [`CONSOLE_MAX_BYTES`].
pub fn unpack_console_bytes(len: u64, regs: &[u64; 5]) -> ([u8; CONSOLE_MAX_BYTES], usize) {
    let len = (len as usize).min(CONSOLE_MAX_BYTES);
    let mut out = [0u8; CONSOLE_MAX_BYTES];
    for (i, byte) in out.iter_mut().enumerate().take(len) {
        *byte = (regs[i / 8] >> ((i % 8) * 8)) as u8;
    }
    (out, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psci_ids_and_codes_are_the_specifications() {
        // PSCI (Arm DEN 0022): the values every guest OS uses, whatever the crate says.
        assert_eq!(
            [psci::VERSION, psci::CPU_OFF, psci::CPU_ON_64],
            [0x8400_0000, 0x8400_0002, 0xC400_0003]
        );
        assert_eq!(
            [psci::SYSTEM_OFF, psci::SYSTEM_RESET, psci::FEATURES],
            [0x8400_0008, 0x8400_0009, 0x8400_000A]
        );
        assert_eq!(
            [
                psci::NOT_SUPPORTED,
                psci::INVALID_PARAMETERS,
                psci::DENIED,
                psci::ALREADY_ON
            ],
            [-1, -2, -3, -4]
        );
    }

    #[test]
    fn console_bytes_round_trip() {
        let msg = b"hello from a guest, forty bytes long!!!!";
        assert_eq!(msg.len(), CONSOLE_MAX_BYTES);
        let regs = pack_console_bytes(msg);
        let (out, len) = unpack_console_bytes(msg.len() as u64, &regs);
        assert_eq!(&out[..len], msg);
    }

    #[test]
    fn console_length_is_clamped() {
        let regs = pack_console_bytes(b"abc");
        let (out, len) = unpack_console_bytes(u64::MAX, &regs);
        assert_eq!(len, CONSOLE_MAX_BYTES);
        assert_eq!(&out[..3], b"abc");
    }

    proptest::proptest! {
        /// Any length and registers a guest passes: at most the register payload comes out,
        /// byte for byte.
        #[test]
        fn console_unpack_takes_any_registers(len in proptest::prelude::any::<u64>(), regs in proptest::prelude::any::<[u64; 5]>()) {
            let (bytes, n) = unpack_console_bytes(len, &regs);
            proptest::prop_assert_eq!(n as u64, len.min(CONSOLE_MAX_BYTES as u64));
            proptest::prop_assert_eq!(pack_console_bytes(&bytes[..n]), {
                let mut expect = regs;
                for (i, reg) in expect.iter_mut().enumerate() {
                    let keep = n.saturating_sub(i * 8).min(8);
                    *reg &= if keep == 8 { u64::MAX } else { (1u64 << (keep * 8)) - 1 };
                }
                expect
            });
        }
    }

    #[test]
    fn status_round_trips() {
        for s in [
            Status::Ok,
            Status::NotSupported,
            Status::InvalidArgument,
            Status::Denied,
            Status::Busy,
            Status::NoSpace,
            Status::BadRef,
            Status::ReadOnly,
            Status::BadFrame,
            Status::NotMapped,
            Status::BadPort,
        ] {
            assert_eq!(Status::from_u64(s.as_u64()), Some(s));
        }
        assert_eq!(Status::from_u64(12345), None);
        assert_eq!(Status::from_u64(-11i64 as u64), None);
    }

    #[test]
    fn function_ids_are_distinct_vendor_fast_calls() {
        let ids = VENDOR_CALLS;
        for (i, a) in ids.iter().enumerate() {
            assert_eq!(a & !0xffff, VENDOR_HYP_BASE);
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
