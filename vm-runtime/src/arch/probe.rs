//! Deliberate stray accesses, for the apps that show isolation (the `probe` app, a granter
//! that dies with its pages mapped, the lifecycle app's fatal-fault ending): one 8-byte
//! volatile load or store at an address the caller picks. Outside this VM's RAM the boot map
//! lets the access through to stage 2, where the hypervisor must stop it (it kills the VM), so
//! such a call is expected never to return. These are the only accesses of the runtime that
//! are meant to fault.

use shared_abi::layout::GUEST_RAM_BASE;

/// Why a probe was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("address {0:#x} is not 8-byte aligned")]
    Unaligned(u64),
    /// A store into our own RAM shows nothing about isolation and could corrupt the prober.
    #[error("address {0:#x} is this VM's own RAM")]
    OwnRam(u64),
}

/// A probe store may go anywhere 8-byte aligned outside our RAM (`ram_bytes` from
/// `GUEST_RAM_BASE`).
fn store_allowed(addr: u64, ram_bytes: u64) -> Result<(), ProbeError> {
    if !addr.is_multiple_of(8) {
        return Err(ProbeError::Unaligned(addr));
    }
    let ram_end = GUEST_RAM_BASE.saturating_add(ram_bytes);
    if (GUEST_RAM_BASE..ram_end).contains(&addr) {
        return Err(ProbeError::OwnRam(addr));
    }
    Ok(())
}

/// Reads 8 bytes at `addr` (8-byte aligned). May fault: used to show isolation, where the
/// hypervisor must kill this VM instead of letting the read return.
pub fn read_u64_at(addr: u64) -> Result<u64, ProbeError> {
    if !addr.is_multiple_of(8) {
        return Err(ProbeError::Unaligned(addr));
    }
    // SAFETY: aligned (checked). Outside our RAM nothing of this VM lives at `addr`: the access
    // either faults (the point of a probe) or reads what the hypervisor let through, which the
    // caller only prints. Inside our RAM it is a plain read of our own memory; a volatile read
    // cannot break an invariant, and the value is only printed.
    Ok(unsafe { (addr as usize as *const u64).read_volatile() })
}

/// Writes `value` at `addr` (8-byte aligned, outside this VM's RAM). May fault: used to show
/// isolation, where the hypervisor must kill this VM instead of letting the write land.
pub fn write_u64_at(addr: u64, value: u64) -> Result<(), ProbeError> {
    store_allowed(addr, crate::start_info().ram_bytes)?;
    // SAFETY: aligned and outside this VM's RAM (checked), so no Rust object of ours is
    // written: the store reaches stage 2, where it faults or lands in memory the hypervisor
    // gave no one (what the probe exists to detect).
    unsafe { (addr as usize as *mut u64).write_volatile(value) };
    Ok(())
}

/// The address of this VM's own image magic (`shared_abi::image`): a word of the image's
/// read-only part that nothing reads after the boot branch has jumped over it.
pub fn own_image_magic_address() -> u64 {
    GUEST_RAM_BASE + shared_abi::image::MAGIC_OFFSET as u64
}

/// Overwrites this VM's own image magic with `value`. The hypervisor maps the image's read-only
/// part from one copy that every VM of the image runs, read-only, so it must kill this VM
/// instead of letting the write land; on a hypervisor that did not share it, the write changes
/// a word of our own RAM that nothing uses.
pub fn overwrite_own_image_magic(value: u64) {
    // SAFETY: the magic's word in our image header: aligned, inside our RAM, and no Rust object
    // lives there (the header is data inside .text that the boot stub branches over and no
    // code reads except through volatile reads like `read_u64_at`).
    unsafe { (own_image_magic_address() as usize as *mut u64).write_volatile(value) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_are_refused_unaligned_or_inside_our_own_ram_only() {
        const MIB: u64 = 1 << 20;
        let ram = 2 * MIB;
        assert_eq!(
            store_allowed(GUEST_RAM_BASE, ram),
            Err(ProbeError::OwnRam(GUEST_RAM_BASE))
        );
        let last = GUEST_RAM_BASE + ram - 8;
        assert_eq!(store_allowed(last, ram), Err(ProbeError::OwnRam(last)));
        // Just past our RAM (another VM's, to the hypervisor), below it, devices, far away.
        for addr in [
            GUEST_RAM_BASE + ram,
            GUEST_RAM_BASE - 8,
            0x0900_0000,
            u64::MAX - 7,
        ] {
            assert_eq!(store_allowed(addr, ram), Ok(()), "{addr:#x}");
        }
        assert_eq!(
            store_allowed(0x0900_0004, ram),
            Err(ProbeError::Unaligned(0x0900_0004))
        );
        assert_eq!(
            read_u64_at(0x0900_0001),
            Err(ProbeError::Unaligned(0x0900_0001))
        );
        assert_eq!(
            ProbeError::OwnRam(0x4000_0000).to_string(),
            "address 0x40000000 is this VM's own RAM"
        );
    }
}
