//! The hypervisor's console: the UART behind a lock, the `log` backend ("[hv] ..." lines) and
//! every VM's console ("[<vm name>] ..." lines, rate-limited), so output from many pCPUs never
//! interleaves and no VM's flood holds up anyone else.
//!
//! Lock order: the HV lock, then a VM console's lock, then the UART's. A console write takes only
//! its own VM's console lock and the UART's, never the HV lock.
//!
//! Nothing is printed holding the HV lock, though: a pCPU that holds it (`locks::HvLocked` says
//! so through [`hv_lock_taken`]) keeps its log lines and console flushes, and prints them once
//! it has dropped the lock ([`hv_lock_dropped`]). A stop or a restart logs several lines, and
//! the UART (shared with every VM's console) must not keep other VMs' traps waiting for the HV
//! lock. Kept output still comes out in the order the HV lock was held: a holder with output
//! draws a turn ([`hv_lock_releasing`]) before it releases the lock and prints when its turn
//! comes, after the lock is released, so a stop's lines never come after the next holder's.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hypervisor::console::{Admit, LineBuffer, RateLimit};
use shared_abi::layout::MAX_VMS;
use spin::Mutex;

use crate::arch::cpu;
use crate::arch::platform;
use crate::arch::uart::Pl011;
use crate::arch::MAX_PCPUS;

/// Output a pCPU holding the HV lock keeps for when it drops it.
enum Deferred {
    Line(String),
    FlushConsole(u16),
}

/// Which pCPUs hold the HV lock (each writes only its own).
static HOLDS_HV: [AtomicBool; MAX_PCPUS] = [const { AtomicBool::new(false) }; MAX_PCPUS];
/// Which pCPUs have kept output not yet printed (set under the HV lock, cleared once printed),
/// for [`wait_for_kept_lines`].
static KEPT: [AtomicBool; MAX_PCPUS] = [const { AtomicBool::new(false) }; MAX_PCPUS];
/// Each pCPU's kept output (each takes only its own: never contended).
static DEFERRED: [Mutex<Vec<Deferred>>; MAX_PCPUS] = [const { Mutex::new(Vec::new()) }; MAX_PCPUS];

/// This pCPU's index if it holds the HV lock now.
fn holding_hv() -> Option<usize> {
    let pcpu = cpu::pcpu_index();
    HOLDS_HV
        .get(pcpu)
        .is_some_and(|held| held.load(Ordering::Relaxed))
        .then_some(pcpu)
}

/// Keeps `item` if this pCPU holds the HV lock; gives it back otherwise.
fn defer(item: Deferred) -> Option<Deferred> {
    match holding_hv().and_then(|pcpu| DEFERRED.get(pcpu)) {
        Some(kept) => {
            kept.lock().push(item);
            if let Some(flag) = KEPT.get(cpu::pcpu_index()) {
                flag.store(true, Ordering::Release);
            }
            None
        }
        None => Some(item),
    }
}

/// This pCPU took the HV lock: its output waits until [`hv_lock_dropped`].
pub fn hv_lock_taken() {
    if let Some(held) = HOLDS_HV.get(cpu::pcpu_index()) {
        held.store(true, Ordering::Relaxed);
    }
}

/// The next print turn to hand out, and the turn now printing: the HV lock's holders with kept
/// output print in the order they held it.
static NEXT_TURN: AtomicU64 = AtomicU64::new(0);
static NOW_PRINTING: AtomicU64 = AtomicU64::new(0);

/// A place in the order kept output is printed (see [`hv_lock_releasing`]).
pub struct PrintTurn(Option<u64>);

/// Called holding the HV lock, just before releasing it: a pCPU that kept output draws its turn
/// to print it, in the lock's order; one that kept nothing needs none.
pub fn hv_lock_releasing() -> PrintTurn {
    let kept = KEPT
        .get(cpu::pcpu_index())
        .is_some_and(|flag| flag.load(Ordering::Relaxed));
    PrintTurn(kept.then(|| NEXT_TURN.fetch_add(1, Ordering::Relaxed)))
}

/// This pCPU dropped the HV lock: prints what it kept meanwhile, once the holders before it
/// have printed theirs (they do so without any lock, so the wait is for their printing only).
pub fn hv_lock_dropped(PrintTurn(turn): PrintTurn) {
    let pcpu = cpu::pcpu_index();
    if let Some(held) = HOLDS_HV.get(pcpu) {
        held.store(false, Ordering::Relaxed);
    }
    // No turn: nothing was kept (the usual release), so there is nothing to print or wait for.
    let Some(turn) = turn else {
        return;
    };
    let items = DEFERRED
        .get(pcpu)
        .map(|kept| core::mem::take(&mut *kept.lock()))
        .unwrap_or_default();
    while NOW_PRINTING.load(Ordering::Acquire) != turn {
        core::hint::spin_loop();
    }
    for item in items {
        match item {
            Deferred::Line(line) => print_fmt(format_args!("{line}")),
            Deferred::FlushConsole(id) => flush_vm_console(id),
        }
    }
    NOW_PRINTING.fetch_add(1, Ordering::Release);
    if let Some(flag) = KEPT.get(pcpu) {
        flag.store(false, Ordering::Release);
    }
}

/// Before powering off: waits until the other pCPUs have printed what they kept under the HV
/// lock (the last VM's stop lines). Call it after taking and dropping the HV lock once, so every
/// line kept before that is flagged. Bounded, so a pCPU that never finishes cannot hold the
/// power-off forever.
pub fn wait_for_kept_lines() {
    let me = cpu::pcpu_index();
    for _ in 0..(1u64 << 24) {
        let busy = KEPT
            .iter()
            .enumerate()
            .any(|(pcpu, flag)| pcpu != me && flag.load(Ordering::Acquire));
        if !busy {
            return;
        }
        core::hint::spin_loop();
    }
}

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

/// A panic: prints the lines this pCPU kept under the HV lock (they may say what led to it).
pub fn print_kept_on_panic() {
    let Some(mut kept) = DEFERRED
        .get(cpu::pcpu_index())
        .and_then(|kept| kept.try_lock())
    else {
        return;
    };
    for item in kept.drain(..) {
        if let Deferred::Line(line) = item {
            print_fmt(format_args!("{line}"));
        }
    }
}

/// VM `id` stopped: prints its partial line and says what the rate limit dropped last (once
/// the HV lock is dropped, if this pCPU holds it).
pub fn flush_vm_console(id: u16) {
    if defer(Deferred::FlushConsole(id)).is_none() {
        return;
    }
    let Some(slot) = vm_console(id) else {
        return;
    };
    if let Some(console) = slot.lock().as_mut() {
        let VmConsole { name, line, limit } = console;
        line.flush(|l| VmConsole::emit(name, limit, l));
        // The limit itself stays: a VM that resets in a loop gets no fresh burst.
        if let Some((lines, bytes)) = limit.note_drops(cpu::counter()) {
            say_dropped(name, lines, bytes);
        }
    }
}

struct HvLogger;

impl log::Log for HvLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let prefix = match record.level() {
            log::Level::Error => "ERROR: ",
            log::Level::Warn => "warning: ",
            _ => "",
        };
        if holding_hv().is_some() {
            let line = alloc::format!("[hv] {prefix}{}\n", record.args());
            if let Some(Deferred::Line(line)) = defer(Deferred::Line(line)) {
                print_fmt(format_args!("{line}"));
            }
        } else {
            print_fmt(format_args!("[hv] {prefix}{}\n", record.args()));
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
