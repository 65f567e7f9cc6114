//! The panic handler: one `panic: <message> at <location>` line, then PSCI SYSTEM_OFF for a
//! guest, SYSTEM_RESET for a driver domain: a driver that panics is restarted by the
//! hypervisor's crash policy (with back-off, and left stopped if it keeps crashing), because its
//! guests depend on it.

use core::panic::PanicInfo;

use shared_abi::bundle::VmKind;

use crate::{console, psci, rt};

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    match info.location() {
        Some(location) => {
            console::emergency_line(format_args!("panic: {} at {location}", info.message()))
        }
        None => console::emergency_line(format_args!(
            "panic: {} at <unknown location>",
            info.message()
        )),
    }
    match rt::try_start_info().map(|info| info.kind) {
        Some(VmKind::DriverDomain) => psci::system_reset(),
        _ => psci::system_off(),
    }
}
