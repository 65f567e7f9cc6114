//! Hypercall dispatch, the decision half: which call a trapped HVC or SMC is, whether its
//! register arguments are acceptable, and the PSCI answers that need no state (VERSION,
//! FEATURES) or only the caller VM's shape (CPU_ON's checks). The binary's trap entry decodes
//! with [`decode`], carries out the [`Call`] under its locks and writes the answers back; every
//! rule a guest can hit at the register level is here, host-tested.
//!
//! Calls that read guest memory (grants, event channels) are only routed here; their rules are
//! in [`crate::grant`] and [`crate::evtchn`].

use shared_abi::hypercall::{self, psci, Status, CONSOLE_MAX_BYTES};
use shared_abi::layout::{intid, GUEST_RAM_BASE, MAX_VCPUS_PER_VM};

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

#[cfg(test)]
mod tests {
    use super::*;
    use shared_abi::hypercall::VENDOR_HYP_BASE;

    fn regs(function: u64, args: &[u64]) -> [u64; 31] {
        let mut x = [0; 31];
        x[0] = function;
        x[1..=args.len()].copy_from_slice(args);
        x
    }

    #[test]
    fn every_hypercall_id_decodes_to_its_call() {
        use hypercall::*;
        // The vendor calls with a case of their own; the sharing layer checks all the others.
        let own_case = [CONSOLE_WRITE, YIELD, TEST_INJECT, GRANT_COPY];
        for function in VENDOR_CALLS.into_iter().filter(|f| !own_case.contains(f)) {
            assert_eq!(
                decode(&regs(function, &[1, 2])),
                Ok(Call::Sharing { function })
            );
        }
        assert_eq!(decode(&regs(YIELD, &[])), Ok(Call::Yield));
        assert_eq!(
            decode(&regs(GRANT_COPY, &[0x4000_1000, 3])),
            Ok(Call::GrantCopy {
                ops_gpa: 0x4000_1000,
                count: 3
            })
        );
        assert_eq!(
            decode(&regs(psci::CPU_ON_64, &[1, 0x4000_0000, 7])),
            Ok(Call::CpuOn {
                target: 1,
                entry: 0x4000_0000,
                context: 7
            })
        );
        assert_eq!(decode(&regs(psci::CPU_OFF, &[])), Ok(Call::CpuOff));
        assert_eq!(decode(&regs(psci::SYSTEM_OFF, &[])), Ok(Call::SystemOff));
        assert_eq!(
            decode(&regs(psci::SYSTEM_RESET, &[])),
            Ok(Call::SystemReset)
        );
        assert_eq!(
            decode(&regs(psci::VERSION, &[])),
            Ok(Call::Answer(PSCI_VERSION_1_1))
        );
    }

    #[test]
    fn unknown_ids_are_not_supported() {
        let not_supported = Err(Status::NotSupported.as_u64());
        for function in [
            VENDOR_HYP_BASE | 0xfff,
            VENDOR_HYP_BASE | 0x36,
            0,
            0x1234_5678,
            u64::MAX,
            // PSCI calls the hypervisor does not emulate.
            0x8400_0001,
            0xC400_0004,
            0x8400_0012,
        ] {
            assert_eq!(decode(&regs(function, &[])), not_supported, "{function:#x}");
        }
    }

    #[test]
    fn console_write_takes_at_most_the_register_payload() {
        let hello = u64::from_le_bytes(*b"hello, w");
        match decode(&regs(hypercall::CONSOLE_WRITE, &[5, hello])) {
            Ok(Call::Console { bytes, len }) => assert_eq!(&bytes[..len], b"hello"),
            other => panic!("{other:?}"),
        }
        match decode(&regs(hypercall::CONSOLE_WRITE, &[CONSOLE_MAX_BYTES as u64])) {
            Ok(Call::Console { len, .. }) => assert_eq!(len, CONSOLE_MAX_BYTES),
            other => panic!("{other:?}"),
        }
        for len in [CONSOLE_MAX_BYTES as u64 + 1, 1 << 40, u64::MAX] {
            assert_eq!(
                decode(&regs(hypercall::CONSOLE_WRITE, &[len])),
                Err(Status::InvalidArgument.as_u64())
            );
        }
    }

    #[test]
    fn test_inject_takes_sgis_and_a_small_repeat() {
        let invalid = Err(Status::InvalidArgument.as_u64());
        assert_eq!(
            decode(&regs(hypercall::TEST_INJECT, &[0xffff, 8])),
            Ok(Call::TestInject {
                mask: 0xffff,
                repeat: 8
            })
        );
        for (mask, repeat) in [(1 << 16, 1), (1 << 20, 1), (1, 0), (1, 9), (1, 1000)] {
            assert_eq!(
                decode(&regs(hypercall::TEST_INJECT, &[mask, repeat])),
                invalid,
                "{mask:#x} x {repeat}"
            );
        }
    }

    #[test]
    fn psci_features_lists_exactly_the_emulated_calls() {
        for f in [
            psci::VERSION,
            psci::CPU_OFF,
            psci::CPU_ON_64,
            psci::SYSTEM_OFF,
            psci::SYSTEM_RESET,
            psci::FEATURES,
        ] {
            assert_eq!(psci_features(f), psci::SUCCESS, "{f:#x}");
        }
        for f in [0x8400_0001, 0xC400_0004, 0x8400_0003, 0, u64::MAX] {
            assert_eq!(psci_features(f), psci::NOT_SUPPORTED, "{f:#x}");
        }
        assert_eq!(
            decode(&regs(psci::FEATURES, &[psci::CPU_ON_64])),
            Ok(Call::Answer(0))
        );
        assert_eq!(
            decode(&regs(psci::FEATURES, &[7])),
            Ok(Call::Answer(psci::NOT_SUPPORTED as u64))
        );
    }

    #[test]
    fn cpu_on_checks_the_target_the_entry_and_a_stopping_vm() {
        let vm = CallerVm {
            vcpus: 3,
            ram_bytes: 0x40_0000,
            stopping: false,
        };
        let entry = GUEST_RAM_BASE + 0x1000;
        assert_eq!(check_cpu_on(vm, 2, entry), Ok(2));
        assert_eq!(check_cpu_on(vm, 0, GUEST_RAM_BASE), Ok(0));
        let invalid = Err(psci::INVALID_PARAMETERS);
        // Beyond the VM's vCPUs, other affinity levels, the 8-vCPU limit.
        for target in [3, 7, 1 << 8, 1 << 8 | 1, u64::MAX] {
            assert_eq!(check_cpu_on(vm, target, entry), invalid, "{target:#x}");
        }
        // Outside RAM, at its end, misaligned, wrapping.
        for entry in [
            0,
            GUEST_RAM_BASE - 4,
            GUEST_RAM_BASE + 0x40_0000,
            GUEST_RAM_BASE + 2,
            u64::MAX - 3,
        ] {
            assert_eq!(check_cpu_on(vm, 1, entry), invalid, "{entry:#x}");
        }
        let stopping = CallerVm {
            stopping: true,
            ..vm
        };
        assert_eq!(check_cpu_on(stopping, 1, entry), Err(psci::DENIED));
        let huge = CallerVm { vcpus: 64, ..vm };
        assert_eq!(
            check_cpu_on(huge, u64::from(MAX_VCPUS_PER_VM), entry),
            invalid
        );
    }
}
