//! Register accesses to the emulated NIC's window
//! ([`EMULATED_NIC_IPA`](shared_abi::layout::EMULATED_NIC_IPA)): one volatile load or store of
//! 1, 2, 4 or 8 bytes. The window is never mapped at stage 2, so each access traps to the
//! hypervisor, which forwards it to the device model (`shared_abi::ioreq`) and resumes us with
//! the answer. The boot map gives the window Device-nGnRE attributes, so an access at an
//! offset that is not a multiple of its size is an alignment fault here, before any trap (the
//! hostile tests rely on exactly that); the caller decides whether to risk one.

use shared_abi::layout::{EMULATED_NIC_IPA, EMULATED_NIC_SIZE};

/// Why an access was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MmioError {
    #[error("access size {0} is not 1, 2, 4 or 8 bytes")]
    Size(u8),
    #[error("offset {0:#x} is outside the emulated NIC's window")]
    Outside(u64),
}

/// The address of `size` bytes at `offset` in the window, if they lie inside it.
fn address(offset: u64, size: u8) -> Result<usize, MmioError> {
    if !matches!(size, 1 | 2 | 4 | 8) {
        return Err(MmioError::Size(size));
    }
    let end = offset.checked_add(u64::from(size));
    if end.is_none_or(|end| end > EMULATED_NIC_SIZE) {
        return Err(MmioError::Outside(offset));
    }
    Ok((EMULATED_NIC_IPA + offset) as usize)
}

/// Reads `size` bytes of register at `offset`.
pub fn read(offset: u64, size: u8) -> Result<u64, MmioError> {
    let addr = address(offset, size)?;
    // SAFETY: `addr` lies in the emulated NIC's window (checked), which is no memory of this
    // VM: it is outside RAM and the grant and control windows, mapped at stage 1 as Device
    // memory and never at stage 2, so the load traps to the hypervisor and returns whatever
    // the device model answers; no Rust object is read. A misaligned address faults in this
    // VM (Device memory), which stops it: never undefined behaviour.
    let value = unsafe {
        match size {
            1 => u64::from((addr as *const u8).read_volatile()),
            2 => u64::from((addr as *const u16).read_volatile()),
            4 => u64::from((addr as *const u32).read_volatile()),
            _ => (addr as *const u64).read_volatile(),
        }
    };
    Ok(value)
}

/// Writes the low `size` bytes of `value` to the register at `offset`.
pub fn write(offset: u64, size: u8, value: u64) -> Result<(), MmioError> {
    let addr = address(offset, size)?;
    // SAFETY: as in `read`: the store traps to the hypervisor and goes to the device model; it
    // never lands in memory of this VM.
    unsafe {
        match size {
            1 => (addr as *mut u8).write_volatile(value as u8),
            2 => (addr as *mut u16).write_volatile(value as u16),
            4 => (addr as *mut u32).write_volatile(value as u32),
            _ => (addr as *mut u64).write_volatile(value),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_accesses_inside_the_window_are_made() {
        assert_eq!(address(0, 4), Ok(EMULATED_NIC_IPA as usize));
        assert_eq!(address(0xff8, 8), Ok((EMULATED_NIC_IPA + 0xff8) as usize));
        // Odd offsets are the caller's choice (the hostile tests make them).
        assert_eq!(address(0x3, 2), Ok((EMULATED_NIC_IPA + 3) as usize));
        assert_eq!(address(0xffc, 8), Err(MmioError::Outside(0xffc)));
        assert_eq!(address(0x1000, 1), Err(MmioError::Outside(0x1000)));
        assert_eq!(address(u64::MAX, 1), Err(MmioError::Outside(u64::MAX)));
        for size in [0, 3, 5, 16] {
            assert_eq!(address(0, size), Err(MmioError::Size(size)));
        }
    }
}
