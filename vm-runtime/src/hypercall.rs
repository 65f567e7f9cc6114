//! The sluice hypercalls: [`hvc`] (`HVC #0`, SMCCC register convention; the instruction is in
//! `arch::hvc`), status decoding, and typed wrappers for the vendor hypercalls in
//! [`shared_abi::hypercall`]. PSCI goes through [`crate::psci`].

pub use crate::arch::hvc::hvc;
pub use shared_abi::hypercall::Status;
use shared_abi::hypercall::{
    pack_console_bytes, CONSOLE_MAX_BYTES, CONSOLE_WRITE, IOREQ_SET_IRQ, TEST_INJECT,
};

/// Maps a raw x0 to a [`Status`]; a code the ABI does not define reads as `NotSupported`.
pub fn status(raw: u64) -> Status {
    Status::from_u64(raw).unwrap_or(Status::NotSupported)
}

/// Maps a raw x0 (or an op's status word) to `Ok(())` or the error it names.
pub fn result(raw: u64) -> Result<(), Status> {
    match status(raw) {
        Status::Ok => Ok(()),
        e => Err(e),
    }
}

/// CONSOLE_WRITE: sends up to [`CONSOLE_MAX_BYTES`] bytes (the rest is ignored).
pub fn console_write(bytes: &[u8]) -> Status {
    let bytes = &bytes[..bytes.len().min(CONSOLE_MAX_BYTES)];
    let [a, b, c, d, e] = pack_console_bytes(bytes);
    status(hvc(CONSOLE_WRITE, [bytes.len() as u64, a, b, c, d, e])[0])
}

/// TEST_INJECT: queue the SGIs in `mask` (bits 0..16) on this vCPU, `repeat` times over.
pub fn test_inject(mask: u64, repeat: u64) -> Status {
    status(hvc(TEST_INJECT, [mask, repeat, 0, 0, 0, 0])[0])
}

/// ACCOUNTING_REPORT: asks the hypervisor to print its per-VM scheduling counters on its
/// console, tagged with `tag` (a bench calls it before and after a measurement and pairs the
/// two reports by tag). `NotSupported` from a hypervisor without it. The hypervisor refuses a
/// report sooner than `ACCOUNTING_MIN_INTERVAL_MS` after this VM's last one (`Busy`); the end
/// of one measurement and the start of the next can be that close, so a `Busy` call waits out
/// the interval and asks once more rather than leave a measurement without its report.
pub fn accounting_report(tag: u64) -> Status {
    let ask = || {
        status(
            hvc(
                shared_abi::hypercall::ACCOUNTING_REPORT,
                [tag, 0, 0, 0, 0, 0],
            )[0],
        )
    };
    match ask() {
        Status::Busy => {
            crate::timer::sleep_ms(shared_abi::hypercall::ACCOUNTING_MIN_INTERVAL_MS + 1);
            ask()
        }
        other => other,
    }
}

/// IOREQ_SET_IRQ: raises the emulated NIC's interrupt in `guest`, whose device model we are.
pub fn ioreq_set_irq(guest: u16) -> Status {
    status(hvc(IOREQ_SET_IRQ, [u64::from(guest), 0, 0, 0, 0, 0])[0])
}
