//! The sluice hypercall instruction (`HVC #0`, SMCCC register convention) and typed wrappers for
//! the vendor hypercalls in [`shared_abi::hypercall`]. PSCI goes through [`crate::psci`].

use core::arch::asm;

pub use shared_abi::hypercall::Status;
use shared_abi::hypercall::{pack_console_bytes, CONSOLE_MAX_BYTES, CONSOLE_WRITE, TEST_INJECT};

/// Issues `HVC #0` with x0 = `id` and x1..x6 = `args`; returns x0..x3.
pub fn hvc(id: u64, args: [u64; 6]) -> [u64; 4] {
    let (r0, r1, r2, r3): (u64, u64, u64, u64);
    // SAFETY: the hypervisor follows the SMCCC: it may change x0..x17 (declared clobbered via the
    // C ABI) and never writes this VM's memory on our behalf. Not `nomem`: calls such as CPU_ON
    // must see our earlier memory writes, so the asm is a compiler barrier.
    unsafe {
        asm!(
            "hvc #0",
            inlateout("x0") id => r0,
            inlateout("x1") args[0] => r1,
            inlateout("x2") args[1] => r2,
            inlateout("x3") args[2] => r3,
            inlateout("x4") args[3] => _,
            inlateout("x5") args[4] => _,
            inlateout("x6") args[5] => _,
            clobber_abi("C"),
            options(nostack),
        )
    };
    [r0, r1, r2, r3]
}

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
