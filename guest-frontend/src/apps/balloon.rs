//! The balloon in a guest (issue 16): the memory move a `net` guest makes once its network is
//! up ([`on_net_up`]), and the diagnostic app `balloon` for the hostile tests ([`run`]).
//!
//! The move: `balloon_give_mib = N` gives N MiB of the heap back (`balloon gave N MiB in T
//! ms`); `balloon_take_mib = N` waits (serving its network, at most [`CREDIT_WAIT_MS`]) until
//! the balloon's credit holds N MiB, takes them (`balloon took N MiB in T ms`), then allocates,
//! fills and checks memory until some of it lies in the new pages. The harness builds the
//! demo's `balloon` check from these lines (`tests/src/balloon.rs`). `balloon_after_ms = T`
//! serves the network for T ms first (to move memory in the middle of other traffic).
//!
//! Targets: a `net` guest with a `balloon_schedule` or `balloon_follow = true` follows its
//! balloon target (`vm_runtime::balloon::follow`, one step
//! of at most 16 MiB per round of its network loop, [`follow_poll`]) and prints
//! `balloon: target N MiB, have M MiB` when it changes, then, once reached, `balloon gave N
//! MiB in T ms` and/or `balloon took N MiB in T ms` (T: the time in the balloon calls, not
//! the waits for credit) and `balloon: reached its target of N MiB`; after a take to a target
//! above its RAM it checks that it can use the new memory, as a `balloon_take_mib` move does. So a topology's
//! `balloon_schedule` (or a driver domain's `balloon_control`) moves memory with the same lines
//! the demo's check reads.
//!
//! The app: `balloon_attack = "floor"` gives until refused and expects `Denied` at the floor;
//! `"granted"` connects its front-end and gives back its TX ring page, which the driver domain
//! maps, expecting `Busy`; `"use_after_give"` gives a page and then reads it, which the
//! hypervisor must answer by killing this VM; `"code"` gives back the first page of its image
//! (its shared, read-only code), expecting `InvalidArgument`; `"set_target"` (a guest) asks to
//! set another VM's target and expects `Denied`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use shared_abi::balloon::FLOOR_BYTES;
use shared_abi::hypercall::Status;
use shared_abi::layout::{GUEST_RAM_BASE, PAGE_SIZE};
use vm_runtime::balloon::{self, Followed, Outcome, Shortfall};
use vm_runtime::timer::Instant;
use vm_runtime::{evtchn, println, setting, setting_u64_or, StartInfo};

use crate::netfront::{ConnectOptions, NetFront};

/// How long a taker waits for the giver's pages to reach the credit.
pub const CREDIT_WAIT_MS: u64 = 20_000;
/// How long it serves its network between two looks at the credit.
const POLL_MS: u64 = 10;
const MIB: u64 = 1 << 20;
/// Size of one allocation of the check after a take.
const CHECK_CHUNK: usize = 2 << 20;

/// Runs the move the settings ask for; `serve(ms)` keeps the network going for `ms` while the
/// taker waits. An error is the guest's `REPORT fail` text.
pub fn on_net_up(info: &StartInfo<'static>, serve: &mut dyn FnMut(u64)) -> Result<(), String> {
    let number = |key| setting_u64_or(info.settings, key, 0).map_err(|e| format!("{e}"));
    let (give, take) = (number("balloon_give_mib")?, number("balloon_take_mib")?);
    let after_ms = number("balloon_after_ms")?;
    if give + take > 0 && after_ms > 0 {
        serve(after_ms);
    }
    if give > 0 {
        let out = balloon::give(give * MIB);
        check_whole("gave", give, &out)?;
        println!("balloon gave {give} MiB in {} ms", out.ms);
        println!("balloon: {} ms of it in BALLOON_RELEASE calls", out.call_ms);
    }
    if take > 0 {
        wait_for_credit(take, serve)?;
        let out = balloon::take(take * MIB);
        check_whole("took", take, &out)?;
        println!("balloon took {take} MiB in {} ms", out.ms);
        println!(
            "balloon: {} ms of it in BALLOON_POPULATE calls",
            out.call_ms
        );
        let (checked, new) = use_new_memory(info.ram_bytes, take * MIB / 2)?;
        println!(
            "balloon: allocated and checked {} MiB, {} MiB of it in the new memory",
            checked / MIB,
            new / MIB
        );
    }
    Ok(())
}

/// True if the guest follows its balloon target: with a `balloon_schedule` or
/// `balloon_follow = true` (a driver domain steers it), and not the fixed `balloon_give_mib`
/// / `balloon_take_mib` settings, whose move a target would undo.
pub fn follows_target(info: &StartInfo<'static>) -> bool {
    let fixed = ["balloon_give_mib", "balloon_take_mib"]
        .iter()
        .any(|key| setting(info.settings, key).is_some());
    let wants = setting(info.settings, shared_abi::balloon::SCHEDULE_KEY).is_some()
        || setting(info.settings, "balloon_follow") == Some("true");
    wants && !fixed
}

/// Serves the network (stepping towards the target on every round) until the target is
/// reached or a chase stops, for at most [`CREDIT_WAIT_MS`].
pub fn reach_target_first(serve: &mut dyn FnMut(u64)) {
    let start = Instant::now();
    // The first round reads the target.
    serve(0);
    while balloon::chasing() && start.elapsed_ms() < CREDIT_WAIT_MS {
        serve(POLL_MS);
    }
}

/// One step towards this guest's balloon target (see the module documentation); called on
/// every round of the `net` app's loop. An error is the guest's `REPORT fail` text.
pub fn follow_poll(ram_bytes: u64) -> Result<(), String> {
    let mib = |pages: u64| pages * PAGE_SIZE / MIB;
    match balloon::follow() {
        None => {}
        Some(Followed::NewTarget { memory, target }) => {
            println!(
                "balloon: target {} MiB, have {} MiB",
                mib(target),
                mib(memory)
            );
        }
        Some(Followed::Reached {
            target,
            gave,
            give_ms,
            took,
            take_ms,
        }) => {
            if gave > 0 {
                println!("balloon gave {} MiB in {give_ms} ms", mib(gave));
            }
            if took > 0 {
                println!("balloon took {} MiB in {take_ms} ms", mib(took));
            }
            println!("balloon: reached its target of {} MiB", mib(target));
            // Memory above RAM now: show it is usable (half of it, as a fixed take does).
            let above_ram = (target * PAGE_SIZE).saturating_sub(ram_bytes);
            if took > 0 && above_ram > 0 {
                let (checked, new) =
                    use_new_memory(ram_bytes, above_ram.min(took * PAGE_SIZE) / 2)?;
                println!(
                    "balloon: allocated and checked {} MiB, {} MiB of it in the new memory",
                    checked / MIB,
                    new / MIB
                );
            }
        }
        Some(Followed::Stuck(why)) => {
            println!("balloon: cannot reach its target: {why}");
        }
    }
    Ok(())
}

fn check_whole(verb: &str, mib: u64, out: &Outcome) -> Result<(), String> {
    match out.shortfall {
        None => Ok(()),
        Some(why) => Err(format!(
            "balloon {verb} only {} KiB of {mib} MiB: {why}",
            out.bytes() / 1024
        )),
    }
}

fn wait_for_credit(mib: u64, serve: &mut dyn FnMut(u64)) -> Result<(), String> {
    let pages = mib * MIB / PAGE_SIZE;
    let start = Instant::now();
    loop {
        let credit = balloon::info().credit_pages;
        if credit >= pages {
            println!(
                "balloon: {} KiB of credit after {} ms",
                credit * PAGE_SIZE / 1024,
                start.elapsed_ms()
            );
            return Ok(());
        }
        if start.elapsed_ms() >= CREDIT_WAIT_MS {
            return Err(format!(
                "balloon: waited {CREDIT_WAIT_MS} ms for {mib} MiB of credit, the balloon holds \
                 {} KiB",
                credit * PAGE_SIZE / 1024
            ));
        }
        serve(POLL_MS);
    }
}

/// Allocates `bytes` in chunks, fills every chunk and checks a word in each page; returns the
/// bytes checked and how many of them lie above `ram_bytes` (in populated pages). Failing to
/// reach the new memory is an error.
fn use_new_memory(ram_bytes: u64, bytes: u64) -> Result<(u64, u64), String> {
    let ram_end = GUEST_RAM_BASE + ram_bytes;
    let words = CHECK_CHUNK / 8;
    let mut chunks: Vec<Vec<u64>> = Vec::new();
    let (mut checked, mut new) = (0u64, 0u64);
    while checked < bytes {
        let seed = 0x5155_0000_0000_0000 | chunks.len() as u64;
        let mut chunk = Vec::new();
        chunk
            .try_reserve_exact(words)
            .map_err(|_| format!("balloon: allocation failed after {checked} bytes"))?;
        chunk.resize(words, seed);
        let bad = (0..words)
            .step_by(PAGE_SIZE as usize / 8)
            .find(|&i| chunk[i] != seed);
        if let Some(i) = bad {
            return Err(format!(
                "balloon: word {i} of a chunk at {:#x} reads {:#x}, wrote {seed:#x}",
                chunk.as_ptr() as u64,
                chunk[i]
            ));
        }
        if chunk.as_ptr() as u64 >= ram_end {
            new += CHECK_CHUNK as u64;
        }
        checked += CHECK_CHUNK as u64;
        chunks.push(chunk);
    }
    if new == 0 {
        return Err(format!(
            "balloon: {checked} bytes allocated, none of them above RAM ({ram_end:#x})"
        ));
    }
    Ok((checked, new))
}

/// The `balloon` app: one attack (setting `balloon_attack`), one REPORT line.
pub fn run(info: &StartInfo<'static>) {
    let attack = setting(info.settings, "balloon_attack").unwrap_or("");
    let result = match attack {
        "floor" => floor(info),
        "granted" => granted(info),
        "use_after_give" => use_after_give(),
        "set_target" => set_target(),
        "code" => code(),
        other => Err(format!(
            "unknown balloon_attack {other:?} (known: floor, granted, use_after_give, \
             set_target, code)"
        )),
    };
    match result {
        Ok(what) => println!("REPORT ok: balloon {attack}: {what}"),
        Err(why) => println!("REPORT fail: balloon {attack}: {why}"),
    }
}

/// Gives everything the heap has: the hypervisor must stop at the floor.
fn floor(info: &StartInfo<'static>) -> Result<String, String> {
    let out = balloon::give(info.ram_bytes);
    let memory = balloon::info().memory_pages * PAGE_SIZE;
    let gave = out.bytes() / 1024;
    match out.shortfall {
        Some(Shortfall::Refused {
            status: Status::Denied,
            ..
        }) if memory >= FLOOR_BYTES => Ok(format!(
            "refused with Denied after {gave} KiB given; {} KiB kept (floor {} KiB)",
            memory / 1024,
            FLOOR_BYTES / 1024
        )),
        other => Err(format!(
            "expected Denied at the floor, got {other:?} after {gave} KiB given; {} KiB kept",
            memory / 1024
        )),
    }
}

/// Gives back the TX ring page the driver domain maps through a grant: `Busy`.
fn granted(info: &StartInfo<'static>) -> Result<String, String> {
    evtchn::init().map_err(|e| format!("event channels: {e:?}"))?;
    crate::netfront::init_grant_table()?;
    let mut front = NetFront::connect(info, &ConnectOptions::from_settings(info.settings)?)?;
    let ring = front.rings_mut()?.raw_tx_ring().gpa();
    match balloon::release_raw(&[ring]) {
        (Status::Busy, 0) => Ok(format!(
            "the TX ring page {ring:#x}, mapped by the back-end, was refused with Busy"
        )),
        (status, taken) => Err(format!(
            "giving the mapped TX ring page {ring:#x} answered {status:?}, {taken} taken"
        )),
    }
}

/// Gives back the first page of its image, which is its image's shared code, not RAM of its
/// own to give: `InvalidArgument`, and it keeps running that code.
fn code() -> Result<String, String> {
    match balloon::release_raw(&[GUEST_RAM_BASE]) {
        (Status::InvalidArgument, 0) => Ok(format!(
            "its code page {GUEST_RAM_BASE:#x} was refused with InvalidArgument"
        )),
        (status, taken) => Err(format!(
            "giving its code page {GUEST_RAM_BASE:#x} answered {status:?}, {taken} taken"
        )),
    }
}

/// Gives one page and reads it: the hypervisor must kill us.
fn use_after_give() -> Result<String, String> {
    let out = balloon::give(PAGE_SIZE);
    if let Some(why) = out.shortfall {
        return Err(format!("could not give a page: {why}"));
    }
    let page = balloon::given()
        .first()
        .map(|r| r.gpa)
        .ok_or("gave a page but the driver remembers none")?;
    println!("balloon use_after_give: gave page {page:#x}, reading it now");
    let value = vm_runtime::probe::read_u64_at(page).map_err(|e| format!("{e}"))?;
    Err(format!(
        "read {value:#x} from page {page:#x} after giving it back, and was not stopped"
    ))
}

/// A guest asks to set another VM's target (VM 1's, and its own): `Denied` both times.
fn set_target() -> Result<String, String> {
    let pages = 64 * MIB / PAGE_SIZE;
    let own = vm_runtime::start_info().vm_id;
    for vm in [1, u64::from(own)] {
        let status = balloon::set_target(vm, pages);
        if status != Status::Denied {
            return Err(format!("BALLOON_SET_TARGET of VM {vm} answered {status:?}"));
        }
    }
    Ok(format!(
        "BALLOON_SET_TARGET of VM 1 and of itself refused with Denied; its target is {} MiB",
        balloon::target() * PAGE_SIZE / MIB
    ))
}
