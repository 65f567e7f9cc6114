//! Forwarding a guest's trapped device access to a device model (the hypervisor's half of
//! `shared_abi::ioreq`): which accesses are forwarded, the request a trapped access becomes,
//! and how an answer completes the guest's instruction. The binary does the locking and
//! scheduling around it (`hv.rs`): it posts the request and blocks the vCPU under one lock, and
//! completes it when the device model signals its request port.
//!
//! Policy, decided here and documented in docs/ARCHITECTURE.md:
//! - Only accesses the syndrome describes (ISV set: single-register loads and stores of 1, 2, 4
//!   or 8 bytes) are forwarded; any other access to the window kills the guest with a reason.
//! - While the device model is not running (it stopped, or is restarting), the hypervisor
//!   answers in its place like an absent device on a bus: reads return all ones, writes are
//!   dropped. So the guest never waits on a dead device model.
//! - A device model that runs but never answers leaves the requesting vCPU waiting: there is
//!   no timeout (a slow device model is not a faulty one, and a guest vCPU blocked on its own
//!   device harms no one else). The guest's other vCPUs and every other VM keep running, and
//!   the guest can still be stopped or reset, which abandons the request.

use shared_abi::ioreq::{truncate, Request};
use shared_abi::layout::{EMULATED_NIC_IPA, EMULATED_NIC_SIZE};

use crate::esr::MmioAccess;

/// What a read returns while no device model serves the device.
pub const ABSENT_DEVICE_READ: u64 = u64::MAX;

/// The offset of `ipa` inside the emulated NIC's window, if it is inside.
pub fn window_offset(ipa: u64) -> Option<u64> {
    ipa.checked_sub(EMULATED_NIC_IPA)
        .filter(|&offset| offset < EMULATED_NIC_SIZE)
}

/// The value of register `reg` as a store reads it (31 is the zero register).
fn register(regs: &[u64; 31], reg: u8) -> u64 {
    regs.get(usize::from(reg)).copied().unwrap_or(0)
}

/// The request a trapped `access` at `offset` becomes, given the vCPU's registers.
pub fn request_of(access: &MmioAccess, offset: u64, regs: &[u64; 31]) -> Request {
    Request {
        offset,
        size: access.size,
        write: access.write,
        data: if access.write {
            access.store_value(register(regs, access.reg))
        } else {
            0
        },
    }
}

/// Completes the trapped `access` with `answer`: a load writes the answer (cut to the access
/// size, then sign- or zero-extended as the instruction says) into its register unless that is
/// the zero register; a store ignores it. Either way the guest resumes after the instruction.
pub fn complete(access: &MmioAccess, answer: u64, regs: &mut [u64; 31], pc: &mut u64) {
    if !access.write {
        if let Some(register) = regs.get_mut(usize::from(access.reg)) {
            *register = access.load_value(truncate(answer, access.size));
        }
    }
    *pc = pc.wrapping_add(4);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esr::{mmio_access, EC_DABT_LOWER};

    /// A data abort syndrome with ISV set.
    fn esr(size_log2: u64, write: bool, reg: u64, sign: bool, sf: bool) -> u64 {
        (EC_DABT_LOWER << 26)
            | (1 << 24)
            | (size_log2 << 22)
            | (u64::from(sign) << 21)
            | (reg << 16)
            | (u64::from(sf) << 15)
            | (u64::from(write) << 6)
    }

    #[test]
    fn only_the_window_is_forwarded() {
        assert_eq!(window_offset(EMULATED_NIC_IPA), Some(0));
        assert_eq!(
            window_offset(EMULATED_NIC_IPA + EMULATED_NIC_SIZE - 1),
            Some(EMULATED_NIC_SIZE - 1)
        );
        assert_eq!(window_offset(EMULATED_NIC_IPA + EMULATED_NIC_SIZE), None);
        assert_eq!(window_offset(EMULATED_NIC_IPA - 1), None);
        assert_eq!(window_offset(0), None);
        assert_eq!(window_offset(u64::MAX), None);
    }

    #[test]
    fn a_store_carries_its_register_cut_to_its_width() {
        let mut regs = [0u64; 31];
        regs[5] = 0x1122_3344_5566_7788;
        let strh = mmio_access(esr(1, true, 5, false, false)).unwrap();
        assert_eq!(
            request_of(&strh, 0x24, &regs),
            Request {
                offset: 0x24,
                size: 2,
                write: true,
                data: 0x7788
            }
        );
        // The zero register stores zero; a load carries no data.
        let str_xzr = mmio_access(esr(3, true, 31, false, true)).unwrap();
        assert_eq!(request_of(&str_xzr, 0, &regs).data, 0);
        let ldr = mmio_access(esr(2, false, 5, false, false)).unwrap();
        assert_eq!(request_of(&ldr, 8, &regs).data, 0);
        assert!(!request_of(&ldr, 8, &regs).write);
    }

    #[test]
    fn an_answer_lands_in_the_register_extended_as_the_load_says() {
        let mut regs = [0xaaaa_aaaa_aaaa_aaaa; 31];
        let mut pc = 0x4000_1000;
        // LDR W3: zero-extended, upper half cleared; the answer is cut to 4 bytes first.
        let ldr_w3 = mmio_access(esr(2, false, 3, false, false)).unwrap();
        complete(&ldr_w3, 0xffff_ffff_8000_0001, &mut regs, &mut pc);
        assert_eq!(regs[3], 0x8000_0001);
        assert_eq!(pc, 0x4000_1004);
        // LDRSB X4: sign-extended to 64 bits.
        let ldrsb_x4 = mmio_access(esr(0, false, 4, true, true)).unwrap();
        complete(&ldrsb_x4, 0x80, &mut regs, &mut pc);
        assert_eq!(regs[4], 0xffff_ffff_ffff_ff80);
        // LDRSH W6: sign-extended to 32 bits only.
        let ldrsh_w6 = mmio_access(esr(1, false, 6, true, false)).unwrap();
        complete(&ldrsh_w6, 0x8000, &mut regs, &mut pc);
        assert_eq!(regs[6], 0xffff_8000);
        // A store, or a load into the zero register, changes no register.
        let before = regs;
        let str_w7 = mmio_access(esr(2, true, 7, false, false)).unwrap();
        complete(&str_w7, 0x1234, &mut regs, &mut pc);
        let ldr_xzr = mmio_access(esr(3, false, 31, false, true)).unwrap();
        complete(&ldr_xzr, 0x1234, &mut regs, &mut pc);
        assert_eq!(regs, before);
        assert_eq!(pc, 0x4000_1014, "five instructions completed");
        // An absent device reads all ones at the access width.
        let ldrb_w1 = mmio_access(esr(0, false, 1, false, false)).unwrap();
        complete(&ldrb_w1, ABSENT_DEVICE_READ, &mut regs, &mut pc);
        assert_eq!(regs[1], 0xff);
    }
}
