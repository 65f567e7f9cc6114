//! Host tests of hypercall decoding and execution.
use super::*;
use shared_abi::hypercall::VENDOR_HYP_BASE;

/// The vendor calls with a case of their own; the sharing layer checks all the others.
const OWN_CASE: [u64; 12] = [
    hypercall::CONSOLE_WRITE,
    hypercall::YIELD,
    hypercall::TEST_INJECT,
    hypercall::GRANT_COPY,
    hypercall::IOREQ_SET_IRQ,
    hypercall::ACCOUNTING_REPORT,
    hypercall::BALLOON_RELEASE,
    hypercall::BALLOON_POPULATE,
    hypercall::BALLOON_INFO,
    hypercall::BALLOON_TARGET,
    hypercall::BALLOON_SET_TARGET,
    hypercall::MSIX_MAP,
];

fn regs(function: u64, args: &[u64]) -> [u64; 31] {
    let mut x = [0; 31];
    x[0] = function;
    x[1..=args.len()].copy_from_slice(args);
    x
}

#[test]
fn every_hypercall_id_decodes_to_its_call() {
    use hypercall::*;
    for function in VENDOR_CALLS.into_iter().filter(|f| !OWN_CASE.contains(f)) {
        assert_eq!(
            decode(&regs(function, &[1, 2])),
            Ok(Call::Sharing { function })
        );
    }
    assert_eq!(decode(&regs(YIELD, &[])), Ok(Call::Yield));
    assert_eq!(
        decode(&regs(IOREQ_SET_IRQ, &[u64::MAX])),
        Ok(Call::IoreqSetIrq { guest: u64::MAX })
    );
    assert_eq!(
        decode(&regs(ACCOUNTING_REPORT, &[7])),
        Ok(Call::AccountingReport { tag: 7 })
    );
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

/// What a hypercall did to the [`Model`] machine, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Effect {
    Console(Vec<u8>),
    Sgi(u32),
    BatchCheck {
        ops_gpa: u64,
        count: u64,
    },
    CopyOp(u64),
    Sharing {
        function: u64,
        x1: u64,
        x2: u64,
    },
    Start {
        index: usize,
        entry: u64,
        context: u64,
    },
    SetIrq(u64),
    Accounting(u64),
    Balloon {
        function: u64,
        x1: u64,
        x2: u64,
    },
    MsixMap {
        bdf: Bdf,
        vectors: u16,
    },
}

/// A machine that records every effect and answers as configured.
struct Model {
    effects: Vec<Effect>,
    vm: Option<CallerVm>,
    off: Vec<bool>,
    /// SGIs accepted before the queue is full.
    sgi_room: usize,
    batch_ok: bool,
    /// The status of each GRANT_COPY op in turn (then `Ok`).
    copy_statuses: Vec<Status>,
    sharing_answer: (Status, Option<u64>),
    set_irq_answer: Status,
    /// What MSIX_MAP finds, and what its mapping answers.
    msix: msi::Facts,
    msix_map_answer: Result<(u64, u32), Status>,
}

impl Model {
    fn new() -> Model {
        Model {
            effects: Vec::new(),
            vm: Some(CallerVm {
                vcpus: 3,
                ram_bytes: 0x40_0000,
                stopping: false,
            }),
            off: vec![false, true, true],
            sgi_room: usize::MAX,
            batch_ok: true,
            copy_statuses: Vec::new(),
            sharing_answer: (Status::Ok, None),
            set_irq_answer: Status::Ok,
            msix: msi::Facts {
                direct_injection: true,
                owned: Bdf::new(0, 2, 0),
                table_size: Some(3),
                mapped: 0,
            },
            msix_map_answer: Ok((0x800_0040, 8192)),
        }
    }

    fn run(&mut self, function: u64, args: &[u64]) -> Outcome {
        execute(&regs(function, args), self)
    }
}

struct ModelVcpus<'a> {
    vm: CallerVm,
    off: &'a mut Vec<bool>,
    effects: &'a mut Vec<Effect>,
}

impl VcpuControl for ModelVcpus<'_> {
    fn caller_vm(&self) -> CallerVm {
        self.vm
    }

    fn is_off(&mut self, index: usize) -> bool {
        self.off[index]
    }

    fn start(&mut self, index: usize, entry: u64, context: u64) {
        self.off[index] = false;
        self.effects.push(Effect::Start {
            index,
            entry,
            context,
        });
    }
}

struct ModelMsix<'a> {
    facts: &'a mut msi::Facts,
    answer: Result<(u64, u32), Status>,
    effects: &'a mut Vec<Effect>,
}

impl MsixControl for ModelMsix<'_> {
    fn facts(&mut self) -> msi::Facts {
        *self.facts
    }

    fn map(&mut self, bdf: Bdf, vectors: u16) -> Result<(u64, u32), Status> {
        self.effects.push(Effect::MsixMap { bdf, vectors });
        if self.answer.is_ok() {
            self.facts.mapped = vectors;
        }
        self.answer
    }
}

impl Machine for Model {
    fn with_msix<R>(&mut self, f: impl FnOnce(&mut dyn MsixControl) -> R) -> Option<R> {
        self.vm?;
        let mut view = ModelMsix {
            facts: &mut self.msix,
            answer: self.msix_map_answer,
            effects: &mut self.effects,
        };
        Some(f(&mut view))
    }

    fn ioreq_set_irq(&mut self, guest: u64) -> Status {
        self.effects.push(Effect::SetIrq(guest));
        self.set_irq_answer
    }

    fn accounting_report(&mut self, tag: u64) -> Status {
        self.effects.push(Effect::Accounting(tag));
        if tag == 13 {
            Status::Busy
        } else {
            Status::Ok
        }
    }

    fn balloon(&mut self, function: u64, x1: u64, x2: u64) -> (Status, Option<u64>, Option<u64>) {
        self.effects.push(Effect::Balloon { function, x1, x2 });
        (Status::Busy, Some(x1 + 1), Some(x2 + 1))
    }

    fn console(&mut self, bytes: &[u8]) {
        self.effects.push(Effect::Console(bytes.to_vec()));
    }

    fn inject_sgi(&mut self, sgi: u32) -> Result<(), Status> {
        if self.sgi_room == 0 {
            return Err(Status::NoSpace);
        }
        self.sgi_room -= 1;
        self.effects.push(Effect::Sgi(sgi));
        Ok(())
    }

    fn copy_batch_ok(&mut self, ops_gpa: u64, count: u64) -> bool {
        self.effects.push(Effect::BatchCheck { ops_gpa, count });
        self.batch_ok
    }

    fn copy_op(&mut self, op_gpa: u64) -> Status {
        self.effects.push(Effect::CopyOp(op_gpa));
        if self.copy_statuses.is_empty() {
            Status::Ok
        } else {
            self.copy_statuses.remove(0)
        }
    }

    fn sharing(&mut self, function: u64, x: &[u64; 31]) -> (Status, Option<u64>) {
        self.effects.push(Effect::Sharing {
            function,
            x1: x[1],
            x2: x[2],
        });
        self.sharing_answer
    }

    fn with_vcpus<R>(&mut self, f: impl FnOnce(&mut dyn VcpuControl) -> R) -> Option<R> {
        let mut view = ModelVcpus {
            vm: self.vm?,
            off: &mut self.off,
            effects: &mut self.effects,
        };
        Some(f(&mut view))
    }
}

fn ok() -> Outcome {
    Outcome::Return {
        x0: Status::Ok.as_u64(),
        x1: None,
        x2: None,
    }
}

fn returns(x0: u64) -> Outcome {
    Outcome::Return {
        x0,
        x1: None,
        x2: None,
    }
}

#[test]
fn every_call_has_exactly_its_effect_and_outcome() {
    use hypercall::*;
    let hi = u64::from_le_bytes(*b"hi\0\0\0\0\0\0");
    let entry = GUEST_RAM_BASE + 0x2000;
    let cases: Vec<(u64, Vec<u64>, Outcome, Vec<Effect>)> = vec![
        (
            CONSOLE_WRITE,
            vec![2, hi],
            ok(),
            vec![Effect::Console(b"hi".to_vec())],
        ),
        (YIELD, vec![], Outcome::Yield, vec![]),
        (
            TEST_INJECT,
            vec![0b101, 2],
            ok(),
            vec![
                Effect::Sgi(0),
                Effect::Sgi(2),
                Effect::Sgi(0),
                Effect::Sgi(2),
            ],
        ),
        (
            GRANT_COPY,
            vec![0x4000_1000, 2],
            ok(),
            vec![
                Effect::BatchCheck {
                    ops_gpa: 0x4000_1000,
                    count: 2,
                },
                Effect::CopyOp(0x4000_1000),
                Effect::CopyOp(0x4000_1000 + CopyOp::WORDS as u64 * 8),
            ],
        ),
        (psci::VERSION, vec![], returns(PSCI_VERSION_1_1), vec![]),
        (psci::FEATURES, vec![psci::CPU_ON_64], returns(0), vec![]),
        (
            psci::CPU_ON_64,
            vec![2, entry, 9],
            returns(psci::SUCCESS as u64),
            vec![Effect::Start {
                index: 2,
                entry,
                context: 9,
            }],
        ),
        (psci::CPU_OFF, vec![], Outcome::VcpuOff, vec![]),
        (psci::SYSTEM_OFF, vec![], Outcome::SystemOff, vec![]),
        (psci::SYSTEM_RESET, vec![], Outcome::SystemReset, vec![]),
        (IOREQ_SET_IRQ, vec![3], ok(), vec![Effect::SetIrq(3)]),
        (
            ACCOUNTING_REPORT,
            vec![42],
            ok(),
            vec![Effect::Accounting(42)],
        ),
        (
            VENDOR_HYP_BASE | 0xfff,
            vec![1, 2],
            returns(Status::NotSupported.as_u64()),
            vec![],
        ),
    ];
    for (function, args, outcome, effects) in cases {
        let mut m = Model::new();
        assert_eq!(m.run(function, &args), outcome, "{function:#x}");
        assert_eq!(m.effects, effects, "{function:#x}");
    }
    // Every other vendor call goes to the sharing layer with its registers, and nothing else.
    for function in VENDOR_CALLS.into_iter().filter(|f| !OWN_CASE.contains(f)) {
        let mut m = Model::new();
        assert_eq!(m.run(function, &[7, 8]), ok(), "{function:#x}");
        assert_eq!(
            m.effects,
            vec![Effect::Sharing {
                function,
                x1: 7,
                x2: 8
            }]
        );
    }
}

#[test]
fn set_irq_refusals_reach_the_device_model_unchanged() {
    for status in [Status::Denied, Status::InvalidArgument, Status::NoSpace] {
        let mut m = Model::new();
        m.set_irq_answer = status;
        assert_eq!(
            m.run(hypercall::IOREQ_SET_IRQ, &[9]),
            returns(status.as_u64())
        );
        assert_eq!(m.effects, vec![Effect::SetIrq(9)]);
    }
}

#[test]
fn calls_refused_on_their_registers_have_no_effect() {
    for (function, args) in [
        (hypercall::CONSOLE_WRITE, vec![CONSOLE_MAX_BYTES as u64 + 1]),
        (hypercall::TEST_INJECT, vec![1 << 16, 1]),
        (hypercall::TEST_INJECT, vec![1, 0]),
    ] {
        let mut m = Model::new();
        assert_eq!(
            m.run(function, &args),
            returns(Status::InvalidArgument.as_u64())
        );
        assert!(m.effects.is_empty(), "{function:#x}: {:?}", m.effects);
    }
}

#[test]
fn every_sharing_status_and_port_reaches_the_guest_unchanged() {
    for raw in 0..=20u64 {
        let Some(status) = Status::from_u64(raw.wrapping_neg()) else {
            continue;
        };
        for x1 in [None, Some(0), Some(41)] {
            let mut m = Model::new();
            m.sharing_answer = (status, x1);
            assert_eq!(
                m.run(hypercall::EVTCHN_ALLOC_UNBOUND, &[2]),
                Outcome::Return {
                    x0: status.as_u64(),
                    x1,
                    x2: None
                }
            );
        }
    }
}

#[test]
fn test_inject_stops_at_the_first_full_queue() {
    let mut m = Model::new();
    m.sgi_room = 5;
    assert_eq!(
        m.run(hypercall::TEST_INJECT, &[0xffff, 8]),
        returns(Status::NoSpace.as_u64())
    );
    assert_eq!(m.effects.len(), 5);
}

#[test]
fn grant_copy_is_refused_whole_or_runs_op_by_op_until_one_ends_it() {
    // A bad array: no op runs.
    let mut m = Model::new();
    m.batch_ok = false;
    assert_eq!(
        m.run(hypercall::GRANT_COPY, &[0x4000_0000, 3]),
        returns(Status::InvalidArgument.as_u64())
    );
    assert_eq!(m.effects.len(), 1);
    // A failing op ends the batch with its status; later ops do not run.
    let mut m = Model::new();
    m.copy_statuses = vec![Status::Ok, Status::Denied];
    assert_eq!(
        m.run(hypercall::GRANT_COPY, &[0x4000_0000, 5]),
        returns(Status::Denied.as_u64())
    );
    let ops = m
        .effects
        .iter()
        .filter(|e| matches!(e, Effect::CopyOp(_)))
        .count();
    assert_eq!(ops, 2);
    // More than MAX_BATCH ops never run, whatever the machine's rule says.
    let mut m = Model::new();
    assert_eq!(
        m.run(hypercall::GRANT_COPY, &[0x4000_0000, MAX_BATCH + 1]),
        returns(Status::InvalidArgument.as_u64())
    );
    assert!(m.effects.is_empty());
    let mut m = Model::new();
    assert_eq!(
        m.run(hypercall::GRANT_COPY, &[0x4000_0000, MAX_BATCH]),
        ok()
    );
    assert_eq!(m.effects.len() as u64, MAX_BATCH + 1);
}

#[test]
fn cpu_on_answers_every_psci_status() {
    let entry = GUEST_RAM_BASE + 0x1000;
    let cpu_on = |m: &mut Model, target: u64, entry: u64| match m
        .run(psci::CPU_ON_64, &[target, entry, 5])
    {
        Outcome::Return {
            x0,
            x1: None,
            x2: None,
        } => x0 as i64,
        other => panic!("{other:?}"),
    };
    let mut m = Model::new();
    assert_eq!(cpu_on(&mut m, 1, entry), psci::SUCCESS);
    // Started once: a second CPU_ON of it is ALREADY_ON, and so is one of the running caller.
    assert_eq!(cpu_on(&mut m, 1, entry), psci::ALREADY_ON);
    assert_eq!(cpu_on(&mut m, 0, entry), psci::ALREADY_ON);
    assert_eq!(m.effects.len(), 1);
    assert_eq!(cpu_on(&mut m, 3, entry), psci::INVALID_PARAMETERS);
    assert_eq!(cpu_on(&mut m, 2, entry + 2), psci::INVALID_PARAMETERS);
    // A stopping VM, or one that is gone, starts nothing.
    let mut m = Model::new();
    m.vm = m.vm.map(|vm| CallerVm {
        stopping: true,
        ..vm
    });
    assert_eq!(cpu_on(&mut m, 1, entry), psci::DENIED);
    let mut m = Model::new();
    m.vm = None;
    assert_eq!(cpu_on(&mut m, 1, entry), psci::DENIED);
    assert!(m.effects.is_empty());
}

#[test]
fn balloon_target_calls_reach_the_balloon_with_their_registers() {
    for function in [hypercall::BALLOON_TARGET, hypercall::BALLOON_SET_TARGET] {
        assert_eq!(
            decode(&regs(function, &[3, u64::MAX])),
            Ok(Call::Balloon {
                function,
                x1: 3,
                x2: u64::MAX
            })
        );
    }
}

/// BALLOON_SET_TARGET's every status (`balloon::targets::check_set_target`, which the binary
/// runs under the HV lock).
#[test]
fn balloon_set_target_answers_every_status() {
    use crate::balloon::targets::{check_set_target, free_for_targets, VmMemory};
    use shared_abi::balloon::{FLOOR_BYTES, MAX_TARGET_BYTES};
    let mib = (1u64 << 20) / 4096;
    let guest = Some(VmMemory {
        pages: 8 * mib,
        target: 8 * mib,
    });
    // Only a driver domain, and a guest's refusal comes before anything else is looked at.
    assert_eq!(
        check_set_target(false, guest, 16 * mib, u64::MAX),
        Status::Denied
    );
    assert_eq!(check_set_target(false, None, 0, 0), Status::Denied);
    // No such live VM.
    assert_eq!(
        check_set_target(true, None, 16 * mib, u64::MAX),
        Status::InvalidArgument
    );
    // Outside floor..=1 GiB.
    let floor = FLOOR_BYTES / 4096;
    assert_eq!(
        check_set_target(true, guest, floor - 1, u64::MAX),
        Status::InvalidArgument
    );
    assert_eq!(
        check_set_target(true, guest, MAX_TARGET_BYTES / 4096 + 1, u64::MAX),
        Status::InvalidArgument
    );
    assert_eq!(check_set_target(true, guest, floor, 0), Status::Ok);
    // Growth: from the balloon's free memory (credit + promised gives - promised takes).
    let giver = VmMemory {
        pages: 144 * mib,
        target: 16 * mib,
    };
    let free = free_for_targets(0, [giver]);
    assert_eq!(check_set_target(true, guest, 136 * mib, free), Status::Ok);
    assert_eq!(
        check_set_target(true, guest, 137 * mib, free),
        Status::NoSpace
    );
    assert_eq!(
        check_set_target(true, guest, 9 * mib, free_for_targets(0, [])),
        Status::NoSpace
    );
    // Shrinking never needs free memory.
    assert_eq!(check_set_target(true, guest, 4 * mib, 0), Status::Ok);
}

#[test]
fn msix_map_answers_the_doorbell_and_first_vintid_once_then_busy() {
    let mut m = Model::new();
    assert_eq!(
        m.run(hypercall::MSIX_MAP, &[0x10, 2]),
        Outcome::Return {
            x0: Status::Ok.as_u64(),
            x1: Some(0x800_0040),
            x2: Some(8192)
        }
    );
    assert_eq!(
        m.effects,
        vec![Effect::MsixMap {
            bdf: Bdf::new(0, 2, 0).unwrap(),
            vectors: 2
        }]
    );
    // A second call for the function, whatever it asks: Busy, and nothing mapped again.
    for vectors in [1, 2, 3] {
        assert_eq!(
            m.run(hypercall::MSIX_MAP, &[0x10, vectors]),
            returns(Status::Busy.as_u64())
        );
    }
    assert_eq!(m.effects.len(), 1);
}

#[test]
fn msix_map_refusals_each_have_their_status_and_map_nothing() {
    let base = Model::new().msix;
    let cases = [
        // A function the caller does not own (another device, high bits, an owner of none).
        (base, 0x18, 1, Status::Denied),
        (base, 0x10 | 1 << 16, 1, Status::Denied),
        (base, u64::MAX, 1, Status::Denied),
        (
            msi::Facts {
                owned: None,
                ..base
            },
            0x10,
            1,
            Status::Denied,
        ),
        (
            msi::Facts {
                owned: None,
                direct_injection: false,
                ..base
            },
            0x10,
            1,
            Status::Denied,
        ),
        // 0 vectors, or more than the table has.
        (base, 0x10, 0, Status::InvalidArgument),
        (base, 0x10, 4, Status::InvalidArgument),
        (base, 0x10, u64::MAX, Status::InvalidArgument),
        // No direct injection (GICv3, the ITS failed), or no MSI-X: the INTx cue.
        (
            msi::Facts {
                direct_injection: false,
                ..base
            },
            0x10,
            2,
            Status::NotSupported,
        ),
        (
            msi::Facts {
                table_size: None,
                ..base
            },
            0x10,
            2,
            Status::NotSupported,
        ),
        // Mapped already.
        (msi::Facts { mapped: 2, ..base }, 0x10, 2, Status::Busy),
    ];
    for (facts, routing_id, vectors, status) in cases {
        let mut m = Model::new();
        m.msix = facts;
        assert_eq!(
            m.run(hypercall::MSIX_MAP, &[routing_id, vectors]),
            returns(status.as_u64()),
            "{facts:?} {routing_id:#x} x {vectors}"
        );
        assert!(m.effects.is_empty(), "{:?}", m.effects);
    }
}

#[test]
fn msix_map_failures_of_the_machine_reach_the_caller_and_a_gone_vm_is_denied() {
    for status in [Status::NoSpace, Status::NotSupported] {
        let mut m = Model::new();
        m.msix_map_answer = Err(status);
        assert_eq!(
            m.run(hypercall::MSIX_MAP, &[0x10, 3]),
            returns(status.as_u64())
        );
        assert_eq!(m.msix.mapped, 0, "a failed mapping is not counted");
    }
    let mut m = Model::new();
    m.vm = None;
    assert_eq!(
        m.run(hypercall::MSIX_MAP, &[0x10, 1]),
        returns(Status::Denied.as_u64())
    );
    assert!(m.effects.is_empty());
}
