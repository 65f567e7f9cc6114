//! guest-frontend: the sluice unikernel guest. It runs one app, chosen by the start-info setting
//! `app` (default `hello`): the network guest `net` (para-virtual front-end or the emulated
//! NIC, smoltcp, ping and echo; see `netfront` and `emunic`) or a diagnostic one, and powers off when the app returns.
#![no_std]
#![no_main]
// Apps are safe Rust: their deliberate stray accesses go through `vm_runtime::probe`.
#![forbid(unsafe_code)]

extern crate alloc;

mod apps;
mod emunic;
mod link;
mod netfront;

use vm_runtime::{println, setting, StartInfo};

vm_runtime::entry!(main);

fn main(info: &StartInfo<'static>) {
    let app = setting(info.settings, "app").unwrap_or("hello");
    match app {
        "attack" => apps::attack::run(info),
        "balloon" => apps::balloon::run(info),
        "fuzz" => apps::fuzz::run(info),
        "granter" => apps::granter::run(info),
        "hello" => apps::hello::run(info),
        "hostile" => apps::hostile::run(info),
        "iperf" => apps::iperf::run(info),
        "lifecycle" => apps::lifecycle::run(info),
        "load" => apps::load::run(info),
        "memcpy" => apps::memcpy::run(info),
        "net" => apps::net::run(info),
        "nicabuse" => apps::nicabuse::run(info),
        "pingpong" => apps::pingpong::run(info),
        "probe" => apps::probe::run(info),
        "reset" => apps::reset::run(info),
        "sleep" => apps::sleep::run(info),
        "spin" => apps::spin::run(info),
        "virq" => apps::virq::run(info),
        other => println!("REPORT fail: unknown app '{other}'"),
    }
}
