//! The hypervisor's console: the UART behind a lock, the `log` backend ("[hv] ..." lines) and
//! every VM's console ("[<vm name>] ..." lines, rate-limited), so output from many pCPUs never
//! interleaves and no VM's flood holds up anyone else.
//!
//! Lock order: the HV lock, then a VM console's lock, then the UART's. A console write takes only
//! its own VM's console lock and the UART's, never the HV lock.

use alloc::string::String;
use core::fmt::Write;

use hypervisor::console::{Admit, LineBuffer, RateLimit};
use shared_abi::layout::MAX_VMS;
use spin::Mutex;

use crate::arch::cpu;
use crate::arch::platform;
use crate::arch::uart::Pl011;

static UART: Mutex<Option<Pl011>> = Mutex::new(None);

/// QEMU virt's PL011, used until the device tree has been read.
pub const EARLY_UART: u64 = 0x0900_0000;

pub fn init(uart_base: u64) {
    *UART.lock() = Some(platform::uart(uart_base));
}

pub fn print_fmt(args: core::fmt::Arguments) {
    if let Some(uart) = UART.lock().as_mut() {
        let _ = uart.write_fmt(args);
    }
}

/// Prints one line of a VM's console output with its name as prefix.
fn print_vm_line(vm_name: &str, line: &[u8]) {
    let text = core::str::from_utf8(line).unwrap_or("<invalid UTF-8>");
    print_fmt(format_args!("[{vm_name}] {text}\n"));
}

/// Bytes a VM may print at once, and per second after that. Generous for what the apps print
/// (a ping line, an iperf3 interval), small next to what a loop of console hypercalls sends.
const CONSOLE_BURST_BYTES: u64 = 16 * 1024;
const CONSOLE_BYTES_PER_SECOND: u64 = 8 * 1024;

/// One VM's console: its name, the line being assembled and its rate limit.
struct VmConsole {
    name: String,
    line: LineBuffer,
    limit: RateLimit,
}

impl VmConsole {
    fn emit(name: &str, limit: &mut RateLimit, line: &[u8]) {
        match limit.admit(line.len(), cpu::counter()) {
            Admit::Print => print_vm_line(name, line),
            Admit::PrintAfterDrops { lines, bytes } => {
                say_dropped(name, lines, bytes);
                print_vm_line(name, line);
            }
            Admit::Drop => {}
        }
    }
}

fn say_dropped(name: &str, lines: u64, bytes: u64) {
    print_fmt(format_args!(
        "[hv] console of {name}: {lines} line(s) ({bytes} bytes) dropped, over the limit of \
         {CONSOLE_BYTES_PER_SECOND} bytes/s\n"
    ));
}

/// Console of every VM id (index = id - 1).
static VM_CONSOLES: [Mutex<Option<VmConsole>>; MAX_VMS] = [const { Mutex::new(None) }; MAX_VMS];

fn vm_console(id: u16) -> Option<&'static Mutex<Option<VmConsole>>> {
    VM_CONSOLES.get(usize::from(id).checked_sub(1)?)
}

/// Gives VM `id` its console (at boot).
pub fn open_vm_console(id: u16, name: &str) {
    if let Some(slot) = vm_console(id) {
        *slot.lock() = Some(VmConsole {
            name: String::from(name),
            line: LineBuffer::default(),
            limit: RateLimit::new(
                CONSOLE_BURST_BYTES,
                CONSOLE_BYTES_PER_SECOND,
                cpu::counter_frequency(),
                cpu::counter(),
            ),
        });
    }
}

/// Bytes VM `id` wrote to its console: complete lines are printed within the rate limit.
pub fn vm_console_write(id: u16, bytes: &[u8]) {
    let Some(slot) = vm_console(id) else {
        return;
    };
    if let Some(console) = slot.lock().as_mut() {
        let VmConsole { name, line, limit } = console;
        line.push(bytes, |l| VmConsole::emit(name, limit, l));
    }
}

/// VM `id` stopped: prints its partial line and says what the rate limit dropped last.
pub fn flush_vm_console(id: u16) {
    let Some(slot) = vm_console(id) else {
        return;
    };
    if let Some(console) = slot.lock().as_mut() {
        let VmConsole { name, line, limit } = console;
        line.flush(|l| VmConsole::emit(name, limit, l));
        let (lines, bytes) = limit.pending_drops();
        if lines > 0 {
            say_dropped(name, lines, bytes);
            // Said once: a restarted VM starts with a clean count.
            *limit = RateLimit::new(
                CONSOLE_BURST_BYTES,
                CONSOLE_BYTES_PER_SECOND,
                cpu::counter_frequency(),
                cpu::counter(),
            );
        }
    }
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
