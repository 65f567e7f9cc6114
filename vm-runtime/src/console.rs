//! Console output: `print!`/`println!` over the CONSOLE_WRITE hypercall, the `log` backend, and
//! the emergency path the panic and fault handlers use. Bytes are buffered and sent in chunks of
//! up to 40 (what fits in the hypercall's registers); a newline flushes. The hypervisor prefixes
//! each line with the VM's name.
//!
//! The writer is an `embedded_io::Write` byte sink (writes never fail: a refused hypercall
//! just loses the chunk); `core::fmt::Write`, which `print!` and the logger use, goes through
//! it.

use core::convert::Infallible;
use core::fmt::{self, Write as _};

use log::{LevelFilter, Log, Metadata, Record};
use shared_abi::hypercall::CONSOLE_MAX_BYTES;
use spin::Mutex;

use crate::{gic, hypercall};

/// One chunk of pending console bytes.
struct Writer {
    buf: [u8; CONSOLE_MAX_BYTES],
    len: usize,
    /// Where a full chunk goes: the hypercall (host tests record it instead).
    send: fn(&[u8]),
}

/// Sends one chunk. Nothing useful to do if the console refuses bytes.
fn send_chunk(bytes: &[u8]) {
    let _ = hypercall::console_write(bytes);
}

impl Writer {
    const fn new() -> Writer {
        Writer::with_sink(send_chunk)
    }

    const fn with_sink(send: fn(&[u8])) -> Writer {
        Writer {
            buf: [0; CONSOLE_MAX_BYTES],
            len: 0,
            send,
        }
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
        if self.len == CONSOLE_MAX_BYTES || byte == b'\n' {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            (self.send)(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl embedded_io::ErrorType for Writer {
    type Error = Infallible;
}

impl embedded_io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        buf.iter().for_each(|&b| self.push(b));
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        Writer::flush(self);
        Ok(())
    }
}

impl fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match embedded_io::Write::write_all(self, s.as_bytes()) {
            Ok(()) => Ok(()),
        }
    }
}

/// Shared by all vCPUs of the VM; taken with IRQs masked so an IRQ handler that prints cannot
/// deadlock against the code it interrupted. One `print!` holds it throughout, so lines from
/// different vCPUs do not interleave.
static CONSOLE: Mutex<Writer> = Mutex::new(Writer::new());

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    gic::without_irqs(|| {
        let _ = CONSOLE.lock().write_fmt(args);
    });
}

#[doc(hidden)]
pub fn _print_line(args: fmt::Arguments) {
    gic::without_irqs(|| {
        let mut console = CONSOLE.lock();
        let _ = console.write_fmt(args);
        console.push(b'\n');
    });
}

/// Sends any buffered partial line now.
pub fn flush() {
    gic::without_irqs(|| CONSOLE.lock().flush());
}

/// For the panic and fatal-exception paths: prints a whole line even if the console lock is held
/// (by a vCPU that is now stuck, possibly this one), falling back to an unshared writer.
pub(crate) fn emergency_line(args: fmt::Arguments) {
    gic::disable_irqs();
    let mut tries = 0u32;
    loop {
        if let Some(mut console) = CONSOLE.try_lock() {
            if console.len > 0 {
                // Finish whatever partial line was pending so ours starts on its own line.
                console.push(b'\n');
            }
            let _ = console.write_fmt(args);
            console.push(b'\n');
            return;
        }
        tries += 1;
        if tries > 100_000 {
            break;
        }
        core::hint::spin_loop();
    }
    let mut writer = Writer::new();
    writer.push(b'\n');
    let _ = writer.write_fmt(args);
    writer.push(b'\n');
}

/// Prints to the hypervisor console (no newline; the text is sent once 40 bytes or a newline
/// have accumulated, or on [`console::flush`](crate::console::flush)).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!($($arg)*))
    };
}

/// Prints a line to the hypervisor console.
#[macro_export]
macro_rules! println {
    () => {
        $crate::print!("\n")
    };
    ($($arg:tt)*) => {
        $crate::console::_print_line(::core::format_args!($($arg)*))
    };
}

struct ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            _print_line(format_args!("[{}] {}", record.level(), record.args()));
        }
    }

    fn flush(&self) {
        flush();
    }
}

static LOGGER: ConsoleLogger = ConsoleLogger;

/// Installs the console as the `log` backend. The level comes from the setting `log`
/// (`off`, `error`, `warn`, `info`, `debug`, `trace`; default `info`).
pub fn init_log(settings: &str) {
    let requested = shared_abi::start_info::setting(settings, "log");
    let level = requested
        .and_then(|value| value.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    // Fails only if a logger is already installed, which then stays.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
    if let Some(value) = requested.filter(|v| v.parse::<LevelFilter>().is_err()) {
        log::warn!("setting log={value} is not a log level; using info");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;
    use std::vec::Vec;

    /// Chunks sent by the writer under test (one test uses it).
    static SENT: StdMutex<Vec<Vec<u8>>> = StdMutex::new(Vec::new());

    fn record(bytes: &[u8]) {
        SENT.lock().unwrap().push(bytes.to_vec());
    }

    #[test]
    fn bytes_go_out_in_chunks_of_forty_and_a_newline_ends_a_chunk() {
        let mut w = Writer::with_sink(record);
        let long = [b'x'; 100];
        assert_eq!(embedded_io::Write::write(&mut w, &long), Ok(100));
        // Two full chunks are out; 20 bytes wait for more or a flush.
        let sent: Vec<usize> = SENT.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sent, [CONSOLE_MAX_BYTES, CONSOLE_MAX_BYTES]);
        assert_eq!(w.len, 100 - 2 * CONSOLE_MAX_BYTES);
        // core::fmt goes through the same byte sink; the newline sends the partial chunk.
        writeln!(w, "{}", 7).unwrap();
        let last = SENT.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.len(), 22);
        assert!(last.ends_with(b"x7\n"));
        assert_eq!(w.len, 0);
        // An explicit flush sends a partial line; flushing nothing sends nothing.
        embedded_io::Write::write_all(&mut w, b"ab").unwrap();
        embedded_io::Write::flush(&mut w).unwrap();
        embedded_io::Write::flush(&mut w).unwrap();
        let sent = SENT.lock().unwrap();
        assert_eq!(sent.len(), 4);
        assert_eq!(sent[3], b"ab");
    }
}
