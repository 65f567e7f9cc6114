//! `probe`: one volatile 8-byte access at `probe_addr` (`probe_op` = `read` or `write`). The
//! hypervisor must kill the VM when the address is not its RAM; surviving prints
//! `PROBE SURVIVED`, which the tests treat as an isolation failure. The access itself is
//! `vm_runtime::probe`'s (a write into this VM's own RAM is refused there: it would show
//! nothing about isolation).

use vm_runtime::{println, probe, setting, StartInfo};

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
    let value = if op == "write" {
        probe::write_u64_at(addr, PATTERN).map(|()| PATTERN)
    } else {
        probe::read_u64_at(addr)
    };
    match value {
        Ok(value) => println!("PROBE SURVIVED at {addr:#x} value={value:#x}"),
        Err(e) => println!("REPORT fail: probe not made: {e}"),
    }
}
