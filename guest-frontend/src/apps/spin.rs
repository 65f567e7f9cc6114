//! `spin`: busy-loops on the counter for `spin_ms` without WFI or hypercalls, so only the
//! hypervisor's preemption timer can take the pCPU away.

use vm_runtime::timer::{self, Instant};
use vm_runtime::{println, StartInfo};

pub fn run(info: &StartInfo<'static>) {
    let Some(ms) = super::number(info, "spin_ms", 3000) else {
        return;
    };
    println!("spinning for {ms} ms without yielding");
    let start = Instant::now();
    let ticks = timer::ms_to_ticks(ms);
    while start.elapsed_ticks() < ticks {}
    println!("REPORT ok: spin done");
}
