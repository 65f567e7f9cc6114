//! The hypervisor's console: the UART behind a lock, the `log` backend ("[hv] ..." lines) and the
//! printer for VM lines ("[<vm name>] ..."), so output from many pCPUs never interleaves.

use core::fmt::Write;

use spin::Mutex;

use crate::arch::uart::Pl011;

static UART: Mutex<Option<Pl011>> = Mutex::new(None);

/// QEMU virt's PL011, used until the device tree has been read.
pub const EARLY_UART: u64 = 0x0900_0000;

pub fn init(uart_base: u64) {
    // SAFETY: the address comes from the device tree (or is QEMU virt's fixed PL011); the
    // hypervisor is the only driver of the UART.
    *UART.lock() = Some(unsafe { Pl011::new(uart_base as usize) });
}

pub fn print_fmt(args: core::fmt::Arguments) {
    if let Some(uart) = UART.lock().as_mut() {
        let _ = uart.write_fmt(args);
    }
}

/// Prints one line of a VM's console output with its name as prefix.
pub fn print_vm_line(vm_name: &str, line: &[u8]) {
    let text = core::str::from_utf8(line).unwrap_or("<invalid UTF-8>");
    print_fmt(format_args!("[{vm_name}] {text}\n"));
}

struct HvLogger;

impl log::Log for HvLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        match record.level() {
            log::Level::Error => print_fmt(format_args!("[hv] ERROR: {}\n", record.args())),
            log::Level::Warn => print_fmt(format_args!("[hv] warning: {}\n", record.args())),
            _ => print_fmt(format_args!("[hv] {}\n", record.args())),
        }
    }

    fn flush(&self) {}
}

static LOGGER: HvLogger = HvLogger;

pub fn init_log() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::logger::print_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
