//! driver-domain: the sluice driver domain. It will own the passthrough NIC and serve the guests'
//! virtual NICs; for now it boots on vm-runtime, reports its vCPUs and powers off.
#![no_std]
#![no_main]

use vm_runtime::{println, report, StartInfo};

vm_runtime::entry!(main);

fn main(info: &StartInfo<'static>) {
    println!(
        "driver domain {} up: vm {}, {} MiB; NIC passthrough not configured yet",
        info.name,
        info.vm_id,
        info.ram_bytes >> 20
    );
    report::hello(info);
}
