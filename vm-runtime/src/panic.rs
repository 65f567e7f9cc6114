//! The panic handler: one `panic: <message> at <location>` line, then PSCI SYSTEM_OFF.

use core::panic::PanicInfo;

use crate::{console, psci};

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
    psci::system_off()
}
