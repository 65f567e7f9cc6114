//! Hypercall dispatch: which call a trapped HVC or SMC is ([`decode`]), whether its register
//! arguments are acceptable, and what it does ([`execute`]), including PSCI emulation
//! (VERSION, FEATURES, CPU_ON, CPU_OFF, SYSTEM_OFF, SYSTEM_RESET). The machine it acts on is
//! the small [`Machine`] trait: the binary implements it over the hypervisor state (taking its
//! lock inside each method, so a GRANT_COPY batch or a TEST_INJECT loop never holds it across
//! steps), the tests over a model. The binary's trap entry only calls [`execute`] and applies
//! the [`Outcome`] to the vCPU.
//!
//! Calls that read guest memory (grants, event channels) are only routed here; their rules are
//! in [`crate::grant`] and [`crate::evtchn`].

use shared_abi::grant::{CopyOp, MAX_BATCH};
use shared_abi::hypercall::{self, psci, Status, CONSOLE_MAX_BYTES};
use shared_abi::layout::{intid, GUEST_RAM_BASE, MAX_VCPUS_PER_VM};
use shared_abi::pci::Bdf;

use crate::its::msi;

/// PSCI version the hypervisor emulates (1.1), as PSCI_VERSION returns it.
pub const PSCI_VERSION_1_1: u64 = 0x1_0001;
/// Most repeats of TEST_INJECT's SGI mask in one call.
pub const TEST_INJECT_MAX_REPEAT: u64 = 8;

/// A decoded hypercall with checked register arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// CONSOLE_WRITE: `len` bytes packed in x2..x6.
    Console {
        bytes: [u8; CONSOLE_MAX_BYTES],
        len: usize,
    },
    Yield,
    /// TEST_INJECT: raise the SGIs of `mask` on the caller, `repeat` times.
    TestInject {
        mask: u16,
        repeat: u8,
    },
    /// GRANT_COPY of `count` ops at `ops_gpa` (run op by op by the binary).
    GrantCopy {
        ops_gpa: u64,
        count: u64,
    },
    /// Another grant or event-channel call (or CONNECTION_PORT): the sharing layer checks it.
    Sharing {
        function: u64,
    },
    /// PSCI CPU_ON of vCPU `index` of the caller's VM (checked against the VM by
    /// [`check_cpu_on`]).
    CpuOn {
        target: u64,
        entry: u64,
        context: u64,
    },
    CpuOff,
    SystemOff,
    SystemReset,
    /// IOREQ_SET_IRQ: raise the emulated NIC's interrupt in guest `guest` (a guest-given id,
    /// checked by the machine: the caller must be that guest's device model).
    IoreqSetIrq {
        guest: u64,
    },
    /// ACCOUNTING_REPORT: print the per-VM accounting, tagged `tag`.
    AccountingReport {
        tag: u64,
    },
    /// BALLOON_RELEASE, BALLOON_POPULATE, BALLOON_INFO, BALLOON_TARGET or BALLOON_SET_TARGET,
    /// with x1 and x2 (checked by the balloon's rules, `balloon` and `balloon::targets`).
    Balloon {
        function: u64,
        x1: u64,
        x2: u64,
    },
    /// MSIX_MAP: vectors `0..vectors` of PCI function `routing_id` as vLPIs of the caller
    /// (both checked by [`msix_map`] against what the machine knows).
    MsixMap {
        routing_id: u64,
        vectors: u64,
    },
    /// A call answered from the registers alone: x0 gets this value.
    Answer(u64),
}

/// Decodes the trapped vCPU's x0..x6. `Err` is the x0 to return for a call refused on its
/// registers alone.
pub fn decode(x: &[u64; 31]) -> Result<Call, u64> {
    let function = x[0];
    Ok(match function {
        hypercall::CONSOLE_WRITE => {
            if x[1] > CONSOLE_MAX_BYTES as u64 {
                return Err(Status::InvalidArgument.as_u64());
            }
            let (bytes, len) =
                hypercall::unpack_console_bytes(x[1], &[x[2], x[3], x[4], x[5], x[6]]);
            Call::Console { bytes, len }
        }
        hypercall::YIELD => Call::Yield,
        hypercall::TEST_INJECT => {
            let (mask, repeat) = (x[1], x[2]);
            if mask >> intid::SGI_COUNT != 0 || repeat == 0 || repeat > TEST_INJECT_MAX_REPEAT {
                return Err(Status::InvalidArgument.as_u64());
            }
            Call::TestInject {
                mask: mask as u16,
                repeat: repeat as u8,
            }
        }
        hypercall::GRANT_COPY => Call::GrantCopy {
            ops_gpa: x[1],
            count: x[2],
        },
        hypercall::GRANT_TABLE_SETUP..=hypercall::GRANT_END
        | hypercall::EVTCHN_SETUP..=hypercall::EVTCHN_UNMASK
        | hypercall::CONNECTION_PORT => Call::Sharing { function },
        hypercall::IOREQ_SET_IRQ => Call::IoreqSetIrq { guest: x[1] },
        hypercall::ACCOUNTING_REPORT => Call::AccountingReport { tag: x[1] },
        hypercall::BALLOON_RELEASE
        | hypercall::BALLOON_POPULATE
        | hypercall::BALLOON_INFO
        | hypercall::BALLOON_TARGET
        | hypercall::BALLOON_SET_TARGET => Call::Balloon {
            function,
            x1: x[1],
            x2: x[2],
        },
        hypercall::MSIX_MAP => Call::MsixMap {
            routing_id: x[1],
            vectors: x[2],
        },
        psci::VERSION => Call::Answer(PSCI_VERSION_1_1),
        psci::FEATURES => Call::Answer(psci_features(x[1]) as u64),
        psci::CPU_ON_64 => Call::CpuOn {
            target: x[1],
            entry: x[2],
            context: x[3],
        },
        psci::CPU_OFF => Call::CpuOff,
        psci::SYSTEM_OFF => Call::SystemOff,
        psci::SYSTEM_RESET => Call::SystemReset,
        _ => return Err(Status::NotSupported.as_u64()),
    })
}

/// PSCI_FEATURES: 0 for the calls the hypervisor emulates, NOT_SUPPORTED for the rest.
pub fn psci_features(function: u64) -> i64 {
    let supported = matches!(
        function,
        psci::VERSION
            | psci::CPU_OFF
            | psci::CPU_ON_64
            | psci::SYSTEM_OFF
            | psci::SYSTEM_RESET
            | psci::FEATURES
    );
    if supported {
        psci::SUCCESS
    } else {
        psci::NOT_SUPPORTED
    }
}

/// What CPU_ON needs to know of the caller's VM.
#[derive(Clone, Copy, Debug)]
pub struct CallerVm {
    pub vcpus: usize,
    pub ram_bytes: u64,
    /// A stop (power off, reset, kill) has been requested: no vCPU may start any more.
    pub stopping: bool,
}

/// PSCI CPU_ON's checks against the caller's VM: the vCPU index to start, or the PSCI error.
/// The caller still answers ALREADY_ON for a vCPU that is not off, and must do both under the
/// lock that also starts the vCPU.
pub fn check_cpu_on(vm: CallerVm, target: u64, entry: u64) -> Result<usize, i64> {
    if vm.stopping {
        return Err(psci::DENIED);
    }
    // MPIDR affinity: only Aff0 may be set, and it is the vCPU index.
    let index = (target & 0xff) as usize;
    if target >> 8 != 0 || index >= vm.vcpus || index >= MAX_VCPUS_PER_VM as usize {
        return Err(psci::INVALID_PARAMETERS);
    }
    let in_ram = entry
        .checked_sub(GUEST_RAM_BASE)
        .is_some_and(|offset| offset < vm.ram_bytes);
    if !in_ram || !entry.is_multiple_of(4) {
        return Err(psci::INVALID_PARAMETERS);
    }
    Ok(index)
}

/// What the vCPU that made a hypercall does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Back into the guest with x0 (and x1, x2 when `Some`).
    Return {
        x0: u64,
        x1: Option<u64>,
        x2: Option<u64>,
    },
    /// x0 = `Status::Ok`, then the pCPU goes to another runnable vCPU if there is one.
    Yield,
    /// PSCI CPU_OFF: this vCPU powers off (a successful CPU_OFF does not return).
    VcpuOff,
    /// PSCI SYSTEM_OFF: the VM stops for good.
    SystemOff,
    /// PSCI SYSTEM_RESET: the VM stops and boots again.
    SystemReset,
}

impl Outcome {
    fn x0(value: u64) -> Self {
        Outcome::Return {
            x0: value,
            x1: None,
            x2: None,
        }
    }

    fn status(status: Status) -> Self {
        Outcome::x0(status.as_u64())
    }
}

/// The caller's VM as PSCI CPU_ON sees it, its checks and its effect in one step (the binary
/// holds its lock for the whole [`Machine::with_vcpus`] call, so a stop requested by another
/// vCPU cannot slip in between the check and the start).
pub trait VcpuControl {
    fn caller_vm(&self) -> CallerVm;
    /// Whether vCPU `index` (below `caller_vm().vcpus`) is off.
    fn is_off(&mut self, index: usize) -> bool;
    /// Resets vCPU `index` to start at `entry` with x0 = `context`, and makes it runnable.
    fn start(&mut self, index: usize, entry: u64, context: u64);
}

/// What MSIX_MAP needs of the machine. The binary holds its lock from [`MsixControl::facts`]
/// to the end of [`MsixControl::map`], so two vCPUs of the owner cannot both pass the
/// "mapped once" check.
pub trait MsixControl {
    /// What the hypervisor knows of the caller's function and of direct injection.
    fn facts(&mut self) -> msi::Facts;
    /// Maps vectors `0..vectors` of `bdf` (already checked against [`MsixControl::facts`]) as
    /// vLPIs of the caller: the doorbell IOVA and the vINTID of vector 0, or the status when
    /// the machine cannot (`NoSpace`: no memory for the ITT or the window's table;
    /// `NotSupported`: the ITS went out of service).
    fn map(&mut self, bdf: Bdf, vectors: u16) -> Result<(u64, u32), Status>;
}

/// MSIX_MAP's checks ([`msi::check`]: one status per refusal) and, if they pass, the mapping.
pub fn msix_map(
    ctl: &mut dyn MsixControl,
    routing_id: u64,
    vectors: u64,
) -> Result<(u64, u32), Status> {
    let facts = ctl.facts();
    let (bdf, vectors) = msi::check(&facts, routing_id, vectors).map_err(msi::Refusal::status)?;
    ctl.map(bdf, vectors)
}

/// Everything a hypercall may do, on behalf of the calling vCPU.
pub trait Machine {
    /// Prints `bytes` on the caller VM's console.
    fn console(&mut self, bytes: &[u8]);
    /// Queues SGI `sgi` for the calling vCPU; `NoSpace` when its queue is full.
    fn inject_sgi(&mut self, sgi: u32) -> Result<(), Status>;
    /// GRANT_COPY's batch-level rule ([`crate::grant::batch_array_ok`]) for the caller.
    fn copy_batch_ok(&mut self, ops_gpa: u64, count: u64) -> bool;
    /// Runs the one GRANT_COPY op at `op_gpa` (its own status goes into its status word); a
    /// status other than `Ok` ends the batch with that status (the caller's VM is going away).
    fn copy_op(&mut self, op_gpa: u64) -> Status;
    /// A grant, event-channel or CONNECTION_PORT call (its rules are the sharing layer's): the
    /// status for x0 and, for calls that return a port, the value for x1.
    fn sharing(&mut self, function: u64, x: &[u64; 31]) -> (Status, Option<u64>);
    /// Runs `f` on the caller's VM; `None` when the VM is gone.
    fn with_vcpus<R>(&mut self, f: impl FnOnce(&mut dyn VcpuControl) -> R) -> Option<R>;
    /// IOREQ_SET_IRQ: raises the emulated NIC's interrupt in guest `guest` if the caller is
    /// that guest's device model (`Denied` otherwise, `InvalidArgument` for an id that is no
    /// VM).
    fn ioreq_set_irq(&mut self, guest: u64) -> Status;
    /// ACCOUNTING_REPORT: prints every live VM's counters, tagged `tag`; `Busy` (nothing
    /// printed) when the caller asked too recently.
    fn accounting_report(&mut self, tag: u64) -> Status;
    /// A balloon call (`function` with the caller's x1 and x2): x0's status, then x1 and x2.
    fn balloon(&mut self, function: u64, x1: u64, x2: u64) -> (Status, Option<u64>, Option<u64>);
    /// Runs `f` on the caller's MSI-X state under one lock; `None` when the caller's VM is
    /// gone.
    fn with_msix<R>(&mut self, f: impl FnOnce(&mut dyn MsixControl) -> R) -> Option<R>;
}

/// Carries out the hypercall in the trapped vCPU's `x` on `machine`.
pub fn execute(x: &[u64; 31], machine: &mut impl Machine) -> Outcome {
    let call = match decode(x) {
        Ok(call) => call,
        Err(refused) => return Outcome::x0(refused),
    };
    match call {
        Call::Answer(value) => Outcome::x0(value),
        Call::Console { bytes, len } => {
            machine.console(bytes.get(..len).unwrap_or(&[]));
            Outcome::status(Status::Ok)
        }
        Call::Yield => Outcome::Yield,
        Call::TestInject { mask, repeat } => Outcome::status(test_inject(machine, mask, repeat)),
        Call::GrantCopy { ops_gpa, count } => Outcome::status(grant_copy(machine, ops_gpa, count)),
        Call::Sharing { function } => {
            let (status, x1) = machine.sharing(function, x);
            Outcome::Return {
                x0: status.as_u64(),
                x1,
                x2: None,
            }
        }
        Call::CpuOn {
            target,
            entry,
            context,
        } => {
            let code = machine
                .with_vcpus(|vm| cpu_on(vm, target, entry, context))
                .unwrap_or(psci::DENIED);
            Outcome::x0(code as u64)
        }
        Call::CpuOff => Outcome::VcpuOff,
        Call::SystemOff => Outcome::SystemOff,
        Call::SystemReset => Outcome::SystemReset,
        Call::IoreqSetIrq { guest } => Outcome::status(machine.ioreq_set_irq(guest)),
        Call::AccountingReport { tag } => Outcome::status(machine.accounting_report(tag)),
        Call::Balloon { function, x1, x2 } => {
            let (status, x1, x2) = machine.balloon(function, x1, x2);
            Outcome::Return {
                x0: status.as_u64(),
                x1,
                x2,
            }
        }
        Call::MsixMap {
            routing_id,
            vectors,
        } => match machine.with_msix(|ctl| msix_map(ctl, routing_id, vectors)) {
            Some(Ok((doorbell, vintid))) => Outcome::Return {
                x0: Status::Ok.as_u64(),
                x1: Some(doorbell),
                x2: Some(u64::from(vintid)),
            },
            Some(Err(status)) => Outcome::status(status),
            None => Outcome::status(Status::Denied),
        },
    }
}

/// TEST_INJECT: the SGIs of `mask`, lowest first, `repeat` times; stops at the first refusal.
fn test_inject(machine: &mut impl Machine, mask: u16, repeat: u8) -> Status {
    for _ in 0..repeat {
        for sgi in (0..intid::SGI_COUNT).filter(|b| mask & (1 << b) != 0) {
            if let Err(status) = machine.inject_sgi(sgi) {
                return status;
            }
        }
    }
    Status::Ok
}

/// GRANT_COPY one op at a time: a batch can move `MAX_BATCH` pages, and the binary releases its
/// lock between ops so that no VM keeps the others' traps waiting that long. The batch is still
/// refused as a whole when its array is bad; each op's status is written as it runs.
fn grant_copy(machine: &mut impl Machine, ops_gpa: u64, count: u64) -> Status {
    // The machine's rule bounds `count` too; the loop does not rely on it.
    if count > MAX_BATCH || !machine.copy_batch_ok(ops_gpa, count) {
        return Status::InvalidArgument;
    }
    let op_bytes = CopyOp::WORDS as u64 * 8;
    for i in 0..count {
        let status = machine.copy_op(ops_gpa + i * op_bytes);
        if status != Status::Ok {
            return status;
        }
    }
    Status::Ok
}

/// PSCI CPU_ON: checked ([`check_cpu_on`]), refused with ALREADY_ON for a vCPU that is not off,
/// else started.
pub fn cpu_on(vm: &mut dyn VcpuControl, target: u64, entry: u64, context: u64) -> i64 {
    let index = match check_cpu_on(vm.caller_vm(), target, entry) {
        Ok(index) => index,
        Err(code) => return code,
    };
    if !vm.is_off(index) {
        return psci::ALREADY_ON;
    }
    vm.start(index, entry, context);
    psci::SUCCESS
}

pub mod sharing;

#[cfg(test)]
mod tests;
