//! `reset`: proves PSCI SYSTEM_RESET restarts only this VM, from a fresh image. On its first
//! boot it dirties a static (which a real reload must put back) and resets; on the second boot it
//! checks the static and `boot_count`, then reports.

use core::sync::atomic::{AtomicU32, Ordering};

use vm_runtime::{println, psci, StartInfo};

/// Initialised data from the image: a reload restores this value; a restart that merely jumped
/// back to the entry point would keep the value the first boot wrote.
static FROM_IMAGE: AtomicU32 = AtomicU32::new(0x5eed);

pub fn run(info: &StartInfo<'static>) {
    let seen = FROM_IMAGE.swap(0xdead, Ordering::Relaxed);
    match info.boot_count {
        1 => {
            println!("boot 1: resetting this VM (PSCI SYSTEM_RESET)");
            psci::system_reset();
        }
        2 if seen == 0x5eed => {
            println!("REPORT ok: boot 2 after SYSTEM_RESET, image data fresh");
        }
        2 => println!("REPORT fail: boot 2 saw stale data {seen:#x}: the image was not reloaded"),
        n => println!("REPORT fail: unexpected boot_count {n}"),
    }
}
