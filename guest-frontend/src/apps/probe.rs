//! `probe`: one volatile 8-byte access at `probe_addr` (`probe_op` = `read` or `write`). The
//! hypervisor must kill the VM when the address is not its RAM; surviving prints
//! `PROBE SURVIVED`, which the tests treat as an isolation failure.

use vm_runtime::{println, setting, StartInfo};

/// Written by `probe_op=write`.
const PATTERN: u64 = 0x5a5a_dead_beef_a5a5;

pub fn run(info: &StartInfo<'static>) {
    let Some(addr) = super::number(info, "probe_addr", u64::MAX) else {
        return;
    };
    if addr == u64::MAX {
        println!("REPORT fail: probe needs the setting probe_addr");
        return;
    }
    let op = setting(info.settings, "probe_op").unwrap_or("read");
    if op != "read" && op != "write" {
        println!("REPORT fail: probe_op must be read or write, not '{op}'");
        return;
    }
    if !addr.is_multiple_of(8) {
        println!("REPORT fail: probe_addr {addr:#x} is not 8-byte aligned");
        return;
    }
    println!("probing {op} at {addr:#x}");
    let value = access(addr, op == "write");
    println!("PROBE SURVIVED at {addr:#x} value={value:#x}");
}

/// One volatile 8-byte access at `addr` (aligned): a write of [`PATTERN`] or a read. Also the
/// fault other apps use when they need their VM killed at stage 2.
pub fn access(addr: u64, write: bool) -> u64 {
    let ptr = addr as usize as *mut u64;
    if write {
        // SAFETY: deliberately not sound in general: this is the isolation probe. The address
        // is aligned and, outside this VM's RAM, mapped (Device) by the runtime's identity map, so
        // the access reaches stage 2, where the hypervisor must stop it. Inside our RAM it may
        // corrupt this VM, which only ever hurts the probe itself.
        unsafe { ptr.write_volatile(PATTERN) };
        PATTERN
    } else {
        // SAFETY: as above, for a read.
        unsafe { ptr.read_volatile() }
    }
}
