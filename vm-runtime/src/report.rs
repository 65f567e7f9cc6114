//! Diagnostic reports shared by the guest and the driver domain: the `hello` vCPU report that
//! proves a VM boots, brings up all its vCPUs and sleeps on its timer.

use core::sync::atomic::{AtomicU32, Ordering};

use shared_abi::start_info::StartInfo;

use crate::timer::{self, Instant};
use crate::{println, smp};

/// How long `hello` waits for the secondary vCPUs to come online.
const ONLINE_TIMEOUT_MS: u64 = 5_000;

/// Secondary vCPUs that have reported in.
static ONLINE: AtomicU32 = AtomicU32::new(0);

fn secondary(index: usize) {
    println!("vcpu {index} online");
    ONLINE.fetch_add(1, Ordering::Release);
}

/// Starts vCPUs 1..vcpus; each prints `vcpu <i> online`. Waits (sleeping 1 ms at a time) until all
/// have reported or the timeout passes. Returns an error text for a `REPORT fail` line.
pub fn start_secondaries(info: &StartInfo) -> Result<(), alloc::string::String> {
    use alloc::format;
    let others = info.vcpus.saturating_sub(1);
    for index in 1..info.vcpus as usize {
        smp::cpu_on(index, secondary).map_err(|e| format!("{e}"))?;
    }
    let start = Instant::now();
    while ONLINE.load(Ordering::Acquire) < others {
        if start.elapsed_ms() >= ONLINE_TIMEOUT_MS {
            let online = ONLINE.load(Ordering::Acquire);
            return Err(format!(
                "only {online} of {others} secondary vCPU(s) came online within {ONLINE_TIMEOUT_MS} ms"
            ));
        }
        timer::sleep_ms(1);
    }
    Ok(())
}

/// The `hello` report: identity line, every vCPU online, a 50 ms timer sleep, then
/// `REPORT ok: <name> done` (or `REPORT fail: ...`). The caller powers off.
pub fn hello(info: &StartInfo) {
    println!(
        "hello from {}: vm {}, {} vCPU(s), {} MiB RAM",
        info.name,
        info.vm_id,
        info.vcpus,
        info.ram_bytes >> 20
    );
    if let Err(why) = start_secondaries(info) {
        println!("REPORT fail: {why}");
        return;
    }
    timer::sleep_ms(50);
    println!("REPORT ok: {} done", info.name);
}
