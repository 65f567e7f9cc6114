//! `lifecycle`: races PSCI CPU_ON against the end of its own VM. vCPU 1 starts vCPU 2 over and
//! over (vCPU 2 switches itself straight off again), while vCPU 0 ends the VM once the churn is
//! under way: with SYSTEM_OFF (`ending = "off"`), with SYSTEM_RESET (`ending = "reset"`, for
//! `rounds` boots, then a report and SYSTEM_OFF) or with a fatal stage-2 fault
//! (`ending = "fault"`). A vCPU started between the stop request and the teardown must not outlive
//! its VM; the harness checks that the hypervisor and a bystander pair carry on.

use core::sync::atomic::{AtomicU64, Ordering};

use vm_runtime::smp::{self, SmpError};
use vm_runtime::{println, psci, setting, timer, StartInfo};

/// vCPU 2 starts that succeeded, and those refused because the VM was already stopping.
static STARTS: AtomicU64 = AtomicU64::new(0);
static DENIED: AtomicU64 = AtomicU64::new(0);

/// QEMU virt's PL011, which only the hypervisor maps: reading it is a fatal stage-2 fault.
const FAULT_ADDR: u64 = 0x0900_0000;

pub fn run(info: &StartInfo<'static>) {
    let ending = setting(info.settings, "ending").unwrap_or("off");
    if !matches!(ending, "off" | "reset" | "fault") {
        println!("REPORT fail: ending must be off, reset or fault, not '{ending}'");
        return;
    }
    let Some(rounds) = super::number(info, "rounds", 5) else {
        return;
    };
    let Some(min_starts) = super::number(info, "min_starts", 20) else {
        return;
    };
    if info.vcpus < 3 {
        println!(
            "REPORT fail: lifecycle needs 3 vCPUs (vcpus = 3), this VM has {}",
            info.vcpus
        );
        return;
    }
    if let Err(e) = smp::cpu_on(1, churn) {
        println!("REPORT fail: cannot start vCPU 1: {e}");
        return;
    }
    // Wait until vCPU 2 has really been cycled, so the stop lands in the middle of the churn.
    let deadline = timer::now().saturating_add(timer::ms_to_ticks(10_000));
    while STARTS.load(Ordering::Relaxed) < min_starts && timer::now() < deadline {
        timer::sleep_ms(1);
    }
    let starts = STARTS.load(Ordering::Relaxed);
    if starts < min_starts {
        println!("REPORT fail: only {starts} CPU_ON cycles of vCPU 2 in 10 s");
        return;
    }
    let boot = info.boot_count;
    match ending {
        "off" => {
            println!("REPORT ok: SYSTEM_OFF during CPU_ON churn ({starts} cycles)");
            psci::system_off();
        }
        "fault" => {
            println!("REPORT ok: fatal fault during CPU_ON churn ({starts} cycles)");
            let value = vm_runtime::probe::read_u64_at(FAULT_ADDR);
            println!("REPORT fail: reading {FAULT_ADDR:#x} returned {value:x?} instead of a kill");
        }
        _ if u64::from(boot) < rounds => {
            println!("boot {boot}: SYSTEM_RESET during CPU_ON churn ({starts} cycles)");
            psci::system_reset();
        }
        _ => {
            // The last boot powers off (when `run` returns) with the churn still going.
            println!(
                "REPORT ok: {boot} boots ended by SYSTEM_RESET during CPU_ON churn, {} refused \
                 starts so far",
                DENIED.load(Ordering::Relaxed)
            );
        }
    }
}

/// vCPU 1: starts vCPU 2 again and again, as fast as the hypervisor answers.
fn churn(_index: usize) {
    loop {
        match smp::cpu_on(2, switch_off_again) {
            Ok(()) => {
                STARTS.fetch_add(1, Ordering::Relaxed);
            }
            Err(SmpError::Psci(psci::Error::Denied)) => {
                DENIED.fetch_add(1, Ordering::Relaxed);
            }
            // AlreadyOn while vCPU 2 is still on its way off: try again.
            Err(_) => {}
        }
    }
}

/// vCPU 2: returning switches it off (PSCI CPU_OFF).
fn switch_off_again(_index: usize) {}
