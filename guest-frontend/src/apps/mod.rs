//! The guest's diagnostic apps, one module each. Every app prints `REPORT ok...` or
//! `REPORT fail: ...` (the test harness reads the first REPORT line) and returns; `main` then
//! powers the VM off.

pub mod attack;
pub mod granter;
pub mod hello;
pub mod hostile;
pub mod iperf;
pub mod memcpy;
pub mod net;
pub mod pingpong;
pub mod probe;
pub mod reset;
pub mod sleep;
pub mod spin;
pub mod virq;

use vm_runtime::{println, setting_u64_or, StartInfo};

/// A numeric setting with a default; a malformed value prints `REPORT fail` and gives `None`.
fn number(info: &StartInfo<'static>, key: &'static str, default: u64) -> Option<u64> {
    setting_u64_or(info.settings, key, default)
        .map_err(|e| println!("REPORT fail: {e}"))
        .ok()
}
