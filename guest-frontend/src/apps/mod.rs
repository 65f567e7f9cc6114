//! The guest's diagnostic apps, one module each. Every app prints `REPORT ok...` or
//! `REPORT fail: ...` (the test harness reads the first REPORT line) and returns; `main` then
//! powers the VM off.

pub mod attack;
pub mod balloon;
pub mod fuzz;
pub mod granter;
pub mod hello;
pub mod hostile;
pub mod iperf;
pub mod lifecycle;
pub mod load;
pub mod memcpy;
pub mod net;
pub mod nicabuse;
pub mod pingpong;
pub mod probe;
pub mod reset;
pub mod sleep;
pub mod spin;
pub mod virq;

use vm_net::smoltcp::wire::{IpCidr, Ipv4Address};
use vm_runtime::{println, setting, setting_u64_or, StartInfo};

/// A numeric setting with a default; a malformed value prints `REPORT fail` and gives `None`.
fn number(info: &StartInfo<'static>, key: &'static str, default: u64) -> Option<u64> {
    setting_u64_or(info.settings, key, default)
        .map_err(|e| println!("REPORT fail: {e}"))
        .ok()
}

/// A network guest's address and gateway: settings `ip` (an IPv4 CIDR, required) and `gateway`
/// (default 10.0.2.2, QEMU user networking's host side).
fn address(info: &StartInfo<'static>) -> Result<(IpCidr, Ipv4Address), &'static str> {
    let address = setting(info.settings, "ip")
        .ok_or("setting ip is required (e.g. ip = \"10.0.2.16/24\")")?
        .parse()
        .map_err(|_| "setting ip is not an IPv4 CIDR like 10.0.2.16/24")?;
    let gateway = setting(info.settings, "gateway")
        .unwrap_or("10.0.2.2")
        .parse()
        .map_err(|_| "setting gateway is not an IPv4 address")?;
    Ok((address, gateway))
}
