//! `probe`: one volatile 8-byte access at `probe_addr` (`probe_op` = `read` or `write`). The
//! hypervisor must kill the VM when the address is not its RAM; surviving prints
//! `PROBE SURVIVED`, which the tests treat as an isolation failure. The access itself is
//! `vm_runtime::probe`'s (a write into this VM's own RAM is refused there: it would show
//! nothing about isolation).
//!
//! Two more ops concern the image's shared code (`shared_abi::image`): `write-code` writes
//! its own image magic, in the read-only part every VM of the image shares, which the
//! hypervisor must answer by killing it; `check-code` waits `wait_ms` and then checks that
//! its own magic is still there (run beside a `write-code` twin).

use shared_abi::image::IMAGE_MAGIC;
use vm_runtime::timer;
use vm_runtime::{println, probe, setting, StartInfo};

/// Written by `probe_op=write`.
const PATTERN: u64 = 0x5a5a_dead_beef_a5a5;

pub fn run(info: &StartInfo<'static>) {
    let op = setting(info.settings, "probe_op").unwrap_or("read");
    match op {
        "write-code" => return write_code(),
        "check-code" => return check_code(info),
        "read" | "write" => {}
        _ => {
            println!(
                "REPORT fail: probe_op must be read, write, write-code or check-code, not '{op}'"
            );
            return;
        }
    }
    let Some(addr) = super::number(info, "probe_addr", u64::MAX) else {
        return;
    };
    if addr == u64::MAX {
        println!("REPORT fail: probe needs the setting probe_addr");
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

/// Writes its own image magic: the hypervisor must kill us before the next line.
fn write_code() {
    let addr = probe::own_image_magic_address();
    println!("probing write-code at {addr:#x}");
    probe::overwrite_own_image_magic(PATTERN);
    let now = probe::read_u64_at(addr).unwrap_or(0);
    println!("PROBE SURVIVED at {addr:#x} value={now:#x}");
}

/// Waits for a `write-code` twin to try, then checks its own image magic.
fn check_code(info: &StartInfo<'static>) {
    let Some(wait_ms) = super::number(info, "wait_ms", 1_000) else {
        return;
    };
    timer::sleep_ms(wait_ms);
    let addr = probe::own_image_magic_address();
    match probe::read_u64_at(addr) {
        Ok(IMAGE_MAGIC) => {
            println!("REPORT ok: its code is intact after {wait_ms} ms (magic at {addr:#x})")
        }
        Ok(other) => println!("REPORT fail: its image magic at {addr:#x} became {other:#x}"),
        Err(e) => println!("REPORT fail: cannot read its image magic: {e}"),
    }
}
