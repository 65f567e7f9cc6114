//! `hello`: identity line, every vCPU reports online, a short timer sleep, `REPORT ok`.

use vm_runtime::{report, StartInfo};

pub fn run(info: &StartInfo<'static>) {
    report::hello(info);
}
