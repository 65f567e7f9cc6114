//! `hostile`: a guest that feeds the hypervisor bad hypercall arguments and checks that each one
//! gets its documented error code instead of crashing anything. The harness checks that the other
//! VMs of the topology finish normally alongside it.

use alloc::vec::Vec;

use shared_abi::hypercall::{self, psci as psci_ids, Status};
use shared_abi::layout::GUEST_RAM_BASE;
use vm_runtime::hypercall::{hvc, status};
use vm_runtime::{println, StartInfo};

/// One probe: a hypercall with arguments, and the x0 it must return.
struct Probe {
    what: &'static str,
    id: u64,
    args: [u64; 6],
    expect: u64,
}

fn probes(info: &StartInfo<'static>) -> Vec<Probe> {
    let invalid = psci_ids::INVALID_PARAMETERS as u64;
    let end_of_ram = GUEST_RAM_BASE + info.ram_bytes;
    let mut list = alloc::vec![
        Probe {
            what: "unknown vendor hypercall",
            id: hypercall::VENDOR_HYP_BASE | 0xfff,
            args: [0; 6],
            expect: Status::NotSupported.as_u64(),
        },
        Probe {
            what: "unknown SMCCC id",
            id: 0x1234_5678,
            args: [0; 6],
            expect: Status::NotSupported.as_u64(),
        },
        Probe {
            what: "console write longer than the register payload",
            id: hypercall::CONSOLE_WRITE,
            args: [1 << 40, 0, 0, 0, 0, 0],
            expect: Status::InvalidArgument.as_u64(),
        },
        Probe {
            what: "the control port of a connection this VM does not have",
            id: hypercall::CONNECTION_PORT,
            args: [u64::from(info.vm_id) + 1, 0, 0, 0, 0, 0],
            expect: Status::InvalidArgument.as_u64(),
        },
        Probe {
            // Issue 15: only the driver domain that owns the function may map its vectors;
            // a guest owns none, on a GICv3 or a GICv4 machine alike.
            what: "MSI-X vectors of the NIC, which this VM does not own",
            id: hypercall::MSIX_MAP,
            args: [0x10, 1, 0, 0, 0, 0],
            expect: Status::Denied.as_u64(),
        },
        Probe {
            what: "interrupt injection of a non-SGI",
            id: hypercall::TEST_INJECT,
            args: [1 << 20, 1, 0, 0, 0, 0],
            expect: Status::InvalidArgument.as_u64(),
        },
        Probe {
            what: "interrupt injection repeated too often",
            id: hypercall::TEST_INJECT,
            args: [1, 1000, 0, 0, 0, 0],
            expect: Status::InvalidArgument.as_u64(),
        },
        Probe {
            what: "CPU_ON of a vCPU this VM does not have",
            id: psci_ids::CPU_ON_64,
            args: [7, GUEST_RAM_BASE, 0, 0, 0, 0],
            expect: invalid,
        },
        Probe {
            what: "CPU_ON with affinity above Aff0",
            id: psci_ids::CPU_ON_64,
            args: [1 << 8, GUEST_RAM_BASE, 0, 0, 0, 0],
            expect: invalid,
        },
        Probe {
            what: "CPU_ON of the running boot vCPU",
            id: psci_ids::CPU_ON_64,
            args: [0, GUEST_RAM_BASE, 0, 0, 0, 0],
            expect: psci_ids::ALREADY_ON as u64,
        },
    ];
    // Its image's read-only part (`shared_abi::image`) starts at GUEST_RAM_BASE: it is mapped
    // from the copy every VM of the image shares, so no hypercall may use it as memory of ours
    // to keep a table in, to read ops from, or to write into.
    let code = GUEST_RAM_BASE;
    let in_code = [
        (
            "a grant table in its read-only code",
            hypercall::GRANT_TABLE_SETUP,
        ),
        (
            "an event page in its read-only code",
            hypercall::EVTCHN_SETUP,
        ),
        (
            "GRANT_MAP ops read from its read-only code",
            hypercall::GRANT_MAP,
        ),
        (
            "GRANT_COPY ops read from its read-only code",
            hypercall::GRANT_COPY,
        ),
        (
            "a balloon batch read from its read-only code",
            hypercall::BALLOON_RELEASE,
        ),
    ];
    for (what, id) in in_code {
        list.push(Probe {
            what,
            id,
            args: [code, 1, 0, 0, 0, 0],
            expect: Status::InvalidArgument.as_u64(),
        });
    }
    // The entry-address checks need a vCPU 1 that exists, or the target check answers first.
    if info.vcpus >= 2 {
        list.push(Probe {
            what: "CPU_ON entry outside RAM",
            id: psci_ids::CPU_ON_64,
            args: [1, end_of_ram, 0, 0, 0, 0],
            expect: invalid,
        });
        list.push(Probe {
            what: "CPU_ON entry not word aligned",
            id: psci_ids::CPU_ON_64,
            args: [1, GUEST_RAM_BASE + 2, 0, 0, 0, 0],
            expect: invalid,
        });
    }
    list
}

pub fn run(info: &StartInfo<'static>) {
    let mut failures = 0;
    let list = probes(info);
    for probe in &list {
        let got = hvc(probe.id, probe.args)[0];
        // PSCI calls answer in PSCI's own codes; vendor calls in sluice's `Status`.
        let is_psci = probe.id & 0x3f00_0000 == 0x0400_0000;
        if got == probe.expect && is_psci {
            println!(
                "hostile: {} -> PSCI {} as documented",
                probe.what, got as i64
            );
        } else if got == probe.expect {
            println!("hostile: {} -> {:?} as documented", probe.what, status(got));
        } else {
            failures += 1;
            println!(
                "hostile: {} -> {:#x}, expected {:#x}",
                probe.what, got, probe.expect
            );
        }
    }
    if failures == 0 {
        println!(
            "REPORT ok: {} hostile hypercalls refused with their documented codes",
            list.len()
        );
    } else {
        println!(
            "REPORT fail: {failures} of {} hostile hypercalls got the wrong answer",
            list.len()
        );
    }
}
