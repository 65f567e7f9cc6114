//! The hypercall instruction, `HVC #0` with the SMCCC register convention, and the SMCCC
//! conduit PSCI goes through (`smccc`'s own HVC).

#[cfg(target_arch = "aarch64")]
use core::arch::asm;

/// The SMCCC conduit for PSCI calls.
#[cfg(target_arch = "aarch64")]
pub(crate) use smccc::Hvc as Conduit;

/// On the host (unit tests of the pure parts) there is no hypervisor to call.
#[cfg(not(target_arch = "aarch64"))]
pub(crate) struct Conduit;

#[cfg(not(target_arch = "aarch64"))]
impl smccc::Call for Conduit {
    fn call32(function: u32, _args: [u32; 7]) -> [u32; 8] {
        unimplemented!("SMCCC call {function:#x}: no hypervisor on the host")
    }

    fn call64(function: u32, _args: [u64; 17]) -> [u64; 18] {
        unimplemented!("SMCCC call {function:#x}: no hypervisor on the host")
    }
}

/// Issues `HVC #0` with x0 = `id` and x1..x6 = `args`; returns x0..x3.
#[cfg(not(target_arch = "aarch64"))]
pub fn hvc(id: u64, _args: [u64; 6]) -> [u64; 4] {
    unimplemented!("hypercall {id:#x}: no hypervisor on the host")
}

/// Issues `HVC #0` with x0 = `id` and x1..x6 = `args`; returns x0..x3.
#[cfg(target_arch = "aarch64")]
pub fn hvc(id: u64, args: [u64; 6]) -> [u64; 4] {
    let (r0, r1, r2, r3): (u64, u64, u64, u64);
    // asm, not `smccc::hvc64`: that takes a 32-bit function id, and the fuzzer must reach the
    // hypervisor with any 64-bit x0.
    // SAFETY: the hypervisor follows the SMCCC: it may change x0..x17 (declared clobbered via the
    // C ABI) and never writes this VM's memory on our behalf except where a call's arguments
    // point. Not `nomem`: calls such as CPU_ON must see our earlier memory writes, and batch
    // calls write status words we read afterwards, so the asm is a compiler barrier.
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
