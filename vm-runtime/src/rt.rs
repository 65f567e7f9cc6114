//! The Rust side of start-up: what vCPU 0 does between the boot stub and the application's main
//! (start-info page, logging, heap, interrupts), and what each secondary vCPU does before its
//! function.

use shared_abi::layout::start_info_gpa;
use shared_abi::start_info::StartInfo;
use spin::Once;

use crate::arch::{boot, heap};
use crate::{gic, psci, smp, timer};

static START_INFO: Once<StartInfo<'static>> = Once::new();

/// This VM's start-info (identity, RAM, settings). Panics before the runtime has read it, which
/// cannot happen in code called from `main`.
pub fn start_info() -> &'static StartInfo<'static> {
    START_INFO.get().expect("start-info is read before main")
}

/// This VM's start-info if the runtime has read it (for the panic handler, which may run before).
pub(crate) fn try_start_info() -> Option<&'static StartInfo<'static>> {
    START_INFO.get()
}

/// Entered from `_start` on vCPU 0 with the MMU on, .bss zeroed and a stack.
pub(crate) extern "C" fn primary_main(start_info_page: usize) -> ! {
    let Some(page) = boot::start_info_page(start_info_page) else {
        crate::println!("REPORT fail: x0 = {start_info_page:#x} is not a start-info page address");
        psci::system_off();
    };
    let info = match StartInfo::read_from(page) {
        Ok(info) => info,
        Err(e) => {
            crate::println!("REPORT fail: bad start-info page at {start_info_page:#x}: {e}");
            psci::system_off();
        }
    };
    let info = START_INFO.call_once(|| info);
    crate::console::init_log(info.settings);
    let expected = start_info_gpa(info.ram_bytes);
    if expected != start_info_page as u64 {
        log::warn!("start-info page at {start_info_page:#x}, expected {expected:#x} (end of RAM)");
    }
    // The heap ends where the start-info page starts (the last page of RAM).
    heap::init(boot::heap_start(), start_info_page);
    timer::init();
    crate::balloon::listen_for_targets();
    cpu_init();
    boot::call_app_main(info)
}

/// Entered from `__sluice_secondary_entry` with the MMU on and this vCPU's stack.
pub(crate) extern "C" fn secondary_main(index: usize) -> ! {
    cpu_init();
    if let Some(f) = smp::take_entry(index) {
        f(index);
    }
    psci::cpu_off()
}

/// Per-vCPU set-up common to every vCPU.
fn cpu_init() {
    timer::init_cpu();
    gic::init_cpu();
    gic::enable_irqs();
}
