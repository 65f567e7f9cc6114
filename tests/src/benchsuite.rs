//! The benchmark suite of `./run.sh bench` (`sluice-bench`): which topologies it boots, how it
//! reads each boot's figures, and the results it reports (table, JSON, SVG plot).
//!
//! Every scenario is booted `runs` times (QEMU with a hard timeout, always killed at the end, see
//! [`boot`]); each figure is the median over runs (see [`Stat`]). The scenarios:
//!
//! | key | boot | figures |
//! |---|---|---|
//! | `guest_to_guest` | driver domain (NIC), one iperf3 client/server guest pair at the default MTU (65535: 64 KiB frames over mergeable receive buffers), a `memcpy` guest | `paravirt_tcp_mbps.guest_to_guest` (the server's receiver figure), `memcpy_mbps` and the other placements (`figures.memcpy_*`, `shared_copy_mbps`), `scaling` at 1 pair |
//! | `guest_to_guest_64k` | driver domain, one pair with `mtu = 65535` set (64 KiB TCP segments cross the internal link unsegmented; the default MTU too since mergeable receive buffers, so this boot now differs from `guest_to_guest` only by the memcpy guest, and stays for comparison with earlier rounds) | `paravirt_tcp_mbps.guest_to_guest_64k`, `ratios.guest_to_guest_64k_over_memcpy` (over the `guest_to_guest` boots' memcpy) |
//! | `scaling_N_pairs` | driver domain, N pairs at once | `scaling`: the sum of the N receiver figures, the fastest pair over the slowest, the reasons of all pairs together |
//! | `host_guest` | driver domain (NIC), one iperf3 server guest (`host_iperf`) | `paravirt_tcp_mbps.host_to_guest`, `.guest_to_host` (host `iperf3 -c`, then `-c -R`) |
//! | `linux` | ONE boot of the stock Debian Linux guest ([`crate::linux_guest`]: its kernel and iperf3 on the same QEMU, virtio-net-pci on user networking, 2 vCPUs, no EL2), `runs` host tests each way | `linux_guest_tcp_mbps.host_to_guest`, `.guest_to_host`; `ratios.host_to_guest_over_linux`, `.guest_to_host_over_linux` (issue 11's goal: >= 1.2) |
//! | `passthrough` | driver domain running an iperf3 server on its own endpoint; the host sends, then receives (`-R`) | `passthrough_tcp_mbps.host_to_driver_domain`, `.driver_domain_to_host`, its costs per packet (`three_way.passthrough`) |
//! | `host_guest_passt` | as `host_guest` but the NIC on passt, and the guest runs the iperf3 client against the host's `iperf3 -s` (two boots: forward, then `-R`) | `paravirt_tcp_mbps.passt.guest_to_host` (the host server's receiver figure), `.host_to_guest` (the guest's) |
//! | `passthrough_passt` | `passthrough` with the NIC on passt | `passthrough_tcp_mbps.passt.host_to_driver_domain` |
//! | `host_guest_tap`, `passthrough_tap` (group `tap`, run only when named: see [`OPT_IN_GROUPS`]) | `host_guest` and the `passthrough` boot (both ways) with the NIC on a tap device in a network namespace of its own ([`crate::tap`]); the host's iperf3 client runs inside it and reaches each VM at its own address: the host's own TCP stack, window scaling, no user-mode network in between. Needs root and /dev/net/tun | `paravirt_tcp_mbps.tap.{host_to_guest,guest_to_host}`, `passthrough_tcp_mbps.tap.{host_to_driver_domain,driver_domain_to_host}`, `ratios.tap_*_over_passthrough`, `reasons.tap_*` |
//! | `passthrough_vlpi` | `passthrough` on a GICv4 machine (`gic = 4`): the NIC's MSI-X as vLPIs (issue 15) | `passthrough_tcp_mbps.vlpi.host_to_driver_domain`, `nic_interrupt_exits.vlpi` (and `passthrough` gives `nic_interrupt_exits.intx`): the hypervisor's `device_irqs` between the test's accounting reports over the driver domain's NIC interrupts between its counters lines around them (2 s apart, so a lower bound) |
//! | `ping` | driver domain, two `net` guests: guest1 pings guest2 20 x 50 ms apart, then guest2 pings guest1 100 x 1 ms apart | `ping_rtt_us.guest_to_guest`, `.guest_to_guest_1ms_apart`, their ratios to the event channel |
//! | `evtchn`, `grant` | the ping-pong and grant `BENCH` apps | `evtchn_roundtrip_us`, `figures` (ticks) |
//! | `bystander_LOAD` | the `evtchn` boot beside a `load` guest (see [`BYSTANDER_LOADS`]) | `bystander_evtchn_us.LOAD` |
//! | `emulated` | ONE boot: driver domain (NIC), an iperf3 server guest `emu` with the emulated NIC, a para-virtual client guest `pv`; `runs` tests pv -> emu (`iperf_repeat`), then `runs` tests host -> emu | `emulated_tcp_mbps.{guest_to_guest,host_to_guest}`, `three_way.emulated` |
//! | `balloon` | driver domain, a `net` guest giving 128 MiB back and one taking them | `balloon_mib_per_s.{inflate,deflate}` |
//! | `restart` | the NIC's driver domain panics 4 s in, under an iperf3 stream guest -> guest and one host -> guest (8 s each) | `driver_domain_recovery_ms` (crash -> first frame through the new incarnation), `driver_domain_restart_gap_ms.{guest_to_guest,host_to_guest}` (each stream's receiver's longest data gap), from [`crate::restart::recovery`] |
//!
//! Throughput is TCP, one stream, in Mbit/s (10^6 bit/s) as iperf3 counts it; in every case the
//! receiving side's figure is used. Nothing here asserts a speed. A figure whose run values
//! differ by more than 2x is flagged (`spread_over_2x`).
//!
//! Beside each para-virtual path's throughput, `reasons` (see [`bench::PathRun::reasons`]):
//! events per frame, bytes per notification, copies per byte (per copy site too), VMID switches
//! per frame, data frames per ACK and each VM's share of the pCPU time (the one-pair paths at
//! both MTUs and the host paths), from the iperf guests' `netstats` marks
//! around their test, the driver domain's `netback` port lines and the hypervisor's
//! `accounting` reports.
//!
//! The three-way table (issue 12: emulation, para-virtualization, passthrough): for each
//! method, TCP host -> guest and guest -> guest, and per data packet the receiver got (its
//! front-end's received frames between the `netstats` marks of its test; for passthrough the
//! driver domain's payload over [`bench::NIC_MSS`]) the exits to EL2, device-model requests and
//! virtual interrupts of the path's VMs between the accounting reports around the test
//! ([`bench::packet_costs`]). `exits_per_packet`, `ioreqs_per_packet` and
//! `interrupts_per_packet` are the host -> guest figures (the test all three methods have; a
//! passed-through NIC has one owner, so it has no guest pair); `three_way` has both tests.
//! The emulated NIC carries at most about 0.3 Mbit/s (every 4 bytes a trapped access), and
//! a test's set-up takes seconds through it, so all its tests run in one boot, one after
//! another: still `runs` values per figure, each test's own.
//!
//! Why the guest is the client over passt: passt sends everything to the last address it saw
//! from the guest side (see [`crate::passt`]), so the guest has to speak first; a connection it
//! opens does that. Its `mtu` is 1500 there: passt follows the MSS a guest announces, and a
//! guest's default 9000 would have it send frames the NIC cannot take (slirp clamps to its own).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::balloon;
use crate::bench::{
    self, parse_ping_reply, round_to, Figure, PacketCosts, PathRun, Reasons, RunReasons, Sample,
    Stat, Unit,
};
use crate::console;
use crate::hostnet::HostForward;
use crate::iperf::{
    parse_result_line, run_client, Direction, HostIperfs, HostServer, ResultLine, IPERF_PORT,
};
use crate::net::{free_port, Proto};
use crate::plot::{self, PathBar, PlotPoint};
use crate::qemu::{boot, Artifacts, Boot, BootOptions};
use crate::report::parse_ping_summary;
use crate::tap::TapNet;
use crate::topology::{NicBackend, Topology};

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Boots per scenario.
    pub runs: usize,
    /// Length of each iperf3 test.
    pub seconds: u32,
    /// Rounds of the ping-pong and grant `BENCH` apps per run.
    pub rounds: u64,
    /// Guest pair counts of the scaling figure (1 is the `guest_to_guest` boot).
    pub pair_counts: Vec<usize>,
    pub short: bool,
    /// Run only these scenario groups ([`SCENARIO_GROUPS`]); empty: all of them.
    pub only: Vec<String>,
}

/// The scenario groups `--only` can pick: the scenario keys of the module docs, with every
/// `scaling_N_pairs` under `scaling` and every `bystander_LOAD` under `bystander`.
pub const SCENARIO_GROUPS: [&str; 17] = [
    "guest_to_guest",
    "guest_to_guest_64k",
    "scaling",
    "host_guest",
    "linux",
    "passthrough",
    "host_guest_passt",
    "passthrough_passt",
    "passthrough_vlpi",
    "tap",
    "ping",
    "evtchn",
    "grant",
    "bystander",
    "emulated",
    "balloon",
    "restart",
];

/// Groups that run only when `--only` names them. `tap` needs root and /dev/net/tun, and its
/// ten boots (about two minutes) would take the whole bench past its 10-minute goal.
pub const OPT_IN_GROUPS: [&str; 1] = ["tap"];

/// How to ask for the tap group next to the host paths it is compared with.
pub const TAP_HINT: &str = "./run.sh bench --only host_guest,passthrough,tap (root and \
                            /dev/net/tun; about 2 minutes)";

impl Options {
    /// `./run.sh bench`: 5 runs, 5-second tests, 1, 2 and 4 pairs.
    pub fn full() -> Options {
        Options {
            runs: 5,
            seconds: 5,
            rounds: 2_000,
            pair_counts: vec![1, 2, 4],
            short: false,
            only: Vec::new(),
        }
    }

    /// `--short`: 1 run, 2-second tests, 1 and 2 pairs.
    pub fn short() -> Options {
        Options {
            runs: 1,
            seconds: 2,
            rounds: 2_000,
            pair_counts: vec![1, 2],
            short: true,
            only: Vec::new(),
        }
    }

    /// Whether scenario group `group` (one of [`SCENARIO_GROUPS`]) runs: every group but the
    /// [`OPT_IN_GROUPS`] when no `--only` is given.
    pub fn runs_group(&self, group: &str) -> bool {
        if self.only.is_empty() {
            !OPT_IN_GROUPS.contains(&group)
        } else {
            self.only.iter().any(|g| g == group)
        }
    }
}

// ---- Topologies -------------------------------------------------------------------------------

/// The driver domain's name in every scenario.
pub const DRIVER_DOMAIN: &str = "driver-domain";

/// A 2-pCPU machine with room for nine VMs.
const MACHINE: &str = "[machine]\ncpus = 2\nmemory_mib = 1024\nnic = \"user\"\n";
/// The pCPUs of [`MACHINE`].
const MACHINE_CPUS: usize = 2;

/// [`MACHINE`] with the NIC on `nic` instead.
fn machine_on(nic: NicBackend) -> String {
    MACHINE.replace("nic = \"user\"", &format!("nic = \"{}\"", nic.as_str()))
}

/// The driver domain as in topologies/default.toml (NIC at 00:02.0, switch), 32 MiB so that
/// eight front-ends fit, with extra settings.
fn driver_domain(settings: &str) -> String {
    format!(
        "[[vm]]\nname = \"{DRIVER_DOMAIN}\"\nkind = \"driver-domain\"\nimage = \"driver-domain\"\n\
         memory_mib = 32\nvcpus = 1\npassthrough = \"00:02.0\"\n\
         settings = {{ role = \"switch\", ip = \"10.0.2.15/24\"{settings} }}\n"
    )
}

/// A guest of 8 MiB; a front-end of the driver domain unless `backend` is false.
fn guest(name: &str, backend: bool, settings: &str) -> String {
    format!(
        "[[vm]]\nname = \"{name}\"\nkind = \"guest\"\nimage = \"guest-frontend\"\nmemory_mib = 8\n\
         vcpus = 1\n{}settings = {{ {settings} }}\n",
        if backend {
            format!("backend = \"{DRIVER_DOMAIN}\"\n")
        } else {
            String::new()
        }
    )
}

/// Pair `i` (from 1): `client<i>` at 10.0.2.(14+2i) sends to `server<i>` at 10.0.2.(15+2i).
pub fn pair_ips(i: usize) -> (String, String) {
    (
        format!("10.0.2.{}", 14 + 2 * i),
        format!("10.0.2.{}", 15 + 2 * i),
    )
}

/// The memcpy guest's RAM: its arena holds buffers 4 MiB apart and 4 MiB copies.
const MEMCPY_GUEST_MIB: u32 = 64;

/// `pairs` iperf3 pairs, all starting at boot (the clients retry until their server listens),
/// plus a `memcpy` guest when `memcpy` (the `guest_to_guest` boot).
pub fn pairs_topology(pairs: usize, seconds: u32, memcpy: bool) -> String {
    pairs_topology_mtu(pairs, seconds, memcpy, None)
}

/// The largest IP MTU of the internal link: a whole 64 KiB TCP segment in one frame.
pub const LARGE_FRAME_MTU: usize = shared_abi::virtq::MAX_MTU;

/// [`pairs_topology`] with every pair guest at IP MTU `mtu` (default: the front-end's).
pub fn pairs_topology_mtu(pairs: usize, seconds: u32, memcpy: bool, mtu: Option<usize>) -> String {
    let mtu = mtu.map_or(String::new(), |m| format!(", mtu = {m}"));
    let mut toml = format!("{MACHINE}{}", driver_domain(", nic_serve_ms = 1000"));
    for i in 1..=pairs {
        let (client_ip, server_ip) = pair_ips(i);
        toml += &guest(
            &format!("server{i}"),
            true,
            &format!(
                "app = \"iperf\", ip = \"{server_ip}/24\", iperf = \"server\", iperf_tests = 1{mtu}"
            ),
        );
        toml += &guest(
            &format!("client{i}"),
            true,
            &format!(
                "app = \"iperf\", ip = \"{client_ip}/24\", iperf = \"client\", \
                 iperf_server = \"{server_ip}\", iperf_seconds = {seconds}, \
                 iperf_wait_ms = 30000, iperf_accounting = {}{mtu}",
                // The accounting reports around pair 1's test give the boot's reasons (the
                // pairs' tests run at once).
                i == 1
            ),
        );
    }
    if memcpy {
        // After the iperf3 test: the ceiling of a quiet machine. The pair is connected about
        // 0.7 s into the boot and powered off about a second after its test; 5 s over the
        // test leaves a margin for a slower boot without idling the bench (it was 12 s: 7 s of
        // every `guest_to_guest` boot waited for nothing).
        let delay_ms = (u64::from(seconds) + MEMCPY_MARGIN_S) * 1000;
        toml += &guest(
            "memcpy",
            false,
            &format!("app = \"memcpy\", memcpy_delay_ms = {delay_ms}"),
        )
        .replace(
            "memory_mib = 8\n",
            &format!("memory_mib = {MEMCPY_GUEST_MIB}\n"),
        );
    }
    toml
}

/// Seconds past the iperf3 test the `memcpy` guest of a `guest_to_guest` boot waits before it
/// measures.
pub const MEMCPY_MARGIN_S: u64 = 5;

/// How long the driver domain keeps its NIC up when the host has to reach it: past anything
/// the host does (the boot is stopped as soon as the host is done).
fn nic_serve_ms(seconds: u32) -> u64 {
    (u64::from(seconds) * 2 + 150) * 1000
}

/// One iperf3 server guest the host tests in both directions (`host_iperf = true`).
pub fn host_topology(seconds: u32) -> String {
    host_topology_on(NicBackend::User, seconds)
}

/// [`host_topology`] with the NIC on `nic`.
pub fn host_topology_on(nic: NicBackend, seconds: u32) -> String {
    format!(
        "{}{}{}",
        machine_on(nic),
        driver_domain(&format!(", nic_serve_ms = {}", nic_serve_ms(seconds))),
        guest(
            "guest1",
            true,
            "app = \"iperf\", ip = \"10.0.2.16/24\", iperf = \"server\", iperf_tests = 2, \
             host_iperf = true, iperf_accounting = true"
        )
    )
}

/// The guest client's data socket buffer, which bounds its receive window (`-R`): passt
/// fills whatever window a guest offers at once, and nothing on the way queues (the driver
/// domain drops what a guest has no receive buffer for), so a large window buys losses, from
/// which passt and smoltcp recover badly (with 1 MiB and with 128 KiB the host -> guest test
/// mostly stalled after a second: passt kept sending past the hole while the guest repeated
/// its ACK). 64 KiB, slirp's window, is what the path holds.
pub const GUEST_CLIENT_WINDOW: usize = 64 * 1024;

/// One iperf3 client guest against the host's server at `port` (reached at the gateway
/// address), the NIC on `nic`; `reverse`: the host sends.
pub fn guest_client_topology(nic: NicBackend, seconds: u32, port: u16, reverse: bool) -> String {
    format!(
        "{}{}{}",
        machine_on(nic),
        driver_domain(&format!(", nic_serve_ms = {}", nic_serve_ms(seconds))),
        guest(
            "guest1",
            true,
            &format!(
                "app = \"iperf\", ip = \"10.0.2.16/24\", mtu = 1500, iperf = \"client\", \
                 iperf_server = \"10.0.2.2\", iperf_port = {port}, iperf_seconds = {seconds}, \
                 iperf_reverse = {reverse}, iperf_wait_ms = 30000, \
                 iperf_window = {GUEST_CLIENT_WINDOW}, iperf_accounting = true"
            )
        )
    )
}

/// The driver domain alone, running an iperf3 server on its own endpoint next to the NIC.
pub fn passthrough_topology(seconds: u32) -> String {
    passthrough_topology_on(NicBackend::User, seconds)
}

/// [`passthrough_topology`] with the NIC on `nic`.
pub fn passthrough_topology_on(nic: NicBackend, seconds: u32) -> String {
    passthrough_topology_gic(nic, 3, seconds)
}

/// [`passthrough_topology_on`] on a machine with GIC version `gic` (4: the NIC's MSI-X
/// arrives as vLPIs).
pub fn passthrough_topology_gic(nic: NicBackend, gic: u8, seconds: u32) -> String {
    passthrough_topology_with(nic, gic, seconds, false)
}

/// [`passthrough_topology_gic`]; with `both`, the host also receives from the driver domain
/// (`-R`), the passthrough figure the para-virtual guest -> host path is compared with.
pub fn passthrough_topology_with(nic: NicBackend, gic: u8, seconds: u32, both: bool) -> String {
    let (tests, directions) = if both { (2, "both") } else { (1, "send") };
    format!(
        "{}gic = {gic}\n{}",
        machine_on(nic),
        driver_domain(&format!(
            ", nic_serve_ms = {}, iperf = \"server\", iperf_tests = {tests}, \
             host_iperf = \"{directions}\", iperf_accounting = true",
            nic_serve_ms(seconds)
        ))
    )
}

/// One `passthrough` boot: host -> driver domain, driver domain -> host if asked for, and the
/// first test's costs per packet.
struct PassthroughRun {
    to: f64,
    from: Option<Result<f64, String>>,
    costs: Result<PacketCosts, String>,
}

/// Two `net` guests: guest1 pings guest2 20 times 50 ms apart (every VM asleep between two),
/// then guest2 pings guest1 100 times 1 ms apart (what stays warm). guest2 waits 1.5 s after
/// its first reply so that its pings do not warm up guest1's.
pub fn ping_topology() -> String {
    let net = |ip: &str, peer: &str, pings: &str| {
        format!("app = \"net\", ip = \"{ip}/24\", ping = \"{peer}\", {pings}, serve_ms = 3000")
    };
    format!(
        "{MACHINE}{}{}{}",
        driver_domain(", nic_serve_ms = 1000"),
        guest(
            "guest1",
            true,
            &net(
                "10.0.2.16",
                "10.0.2.17",
                "ping_count = 20, ping_interval_ms = 50"
            )
        ),
        guest(
            "guest2",
            true,
            &net(
                "10.0.2.17",
                "10.0.2.16",
                "ping_count = 100, ping_interval_ms = 1, ping_delay_ms = 1500"
            )
        ),
    )
}

/// The emulated guest's address: the `emulated` boot's iperf3 server.
pub const EMU_IP: &str = "10.0.2.18";
/// The para-virtual client guest's address in the `emulated` boot.
pub const PV_IP: &str = "10.0.2.16";

/// How long the iperf3 ends of the `emulated` boot wait for each other outside the data
/// phase (the default 10 s is less than some round trips through the emulated NIC take on a
/// loaded machine).
pub const EMU_TIMEOUT_MS: u64 = 30_000;

/// The `emulated` boot: `emu` (emulated NIC) serves `2 * tests` iperf3 tests: `tests` from
/// the para-virtual guest `pv` (its `iperf_repeat`), then `tests` from the host. Both ask for
/// the accounting: `pv`'s test k is `emu`'s test k (it runs first), so they tag it alike and
/// the first report of a tag counts; `pv`'s own report keeps it in the report that ends its
/// last test (it stops right after, possibly before `emu`'s).
pub fn emulated_topology(seconds: u32, tests: usize) -> String {
    let serve_ms = (tests as u64 * 2 * (u64::from(seconds) + 60) + 150) * 1000;
    format!(
        "{MACHINE}{}{}{}",
        driver_domain(&format!(", nic_serve_ms = {serve_ms}")),
        guest(
            "emu",
            true,
            &format!(
                "app = \"iperf\", ip = \"{EMU_IP}/24\", iperf = \"server\", iperf_tests = {}, \
                 iperf_accounting = true, iperf_idle_ms = 120000, \
                 iperf_timeout_ms = {EMU_TIMEOUT_MS}",
                2 * tests
            )
        )
        .replacen("backend = ", "nic = \"emulated\"\nbackend = ", 1),
        guest(
            "pv",
            true,
            &format!(
                "app = \"iperf\", ip = \"{PV_IP}/24\", iperf = \"client\", \
                 iperf_server = \"{EMU_IP}\", iperf_seconds = {seconds}, iperf_repeat = {tests}, \
                 iperf_wait_ms = 60000, iperf_timeout_ms = {EMU_TIMEOUT_MS}, \
                 iperf_accounting = true"
            )
        ),
    )
}

/// The MiB the `balloon` boot moves (the demo's figure).
pub const BALLOON_MIB: u64 = 128;

/// The balloon's move: `giver` (8 MiB it uses plus [`BALLOON_MIB`]) gives [`BALLOON_MIB`] back
/// once its network is up, `taker` takes them once the credit holds them. No NIC: the `net`
/// app only needs its front-end connected.
pub fn balloon_topology() -> String {
    let net = |ip: &str, setting: &str| {
        format!("app = \"net\", ip = \"{ip}/24\", serve_ms = 1000, {setting} = {BALLOON_MIB}")
    };
    format!(
        "[machine]\ncpus = 2\nmemory_mib = 1024\n\
         [[vm]]\nname = \"{DRIVER_DOMAIN}\"\nkind = \"driver-domain\"\nimage = \"driver-domain\"\n\
         memory_mib = 8\nvcpus = 1\n{}{}",
        guest("giver", true, &net("10.0.2.16", "balloon_give_mib")).replace(
            "memory_mib = 8\n",
            &format!("memory_mib = {}\n", BALLOON_MIB + 16)
        ),
        guest("taker", true, &net("10.0.2.17", "balloon_take_mib")),
    )
}

/// How long after it starts the driver domain of the `restart` boot crashes.
pub const RESTART_CRASH_AFTER_MS: u64 = 4_000;
/// The length of the `restart` boot's streams: past the crash by as long again (fixed, so the
/// figure does not depend on `--short`).
pub const RESTART_STREAM_SECONDS: u32 = 8;
/// The receivers of the `restart` boot's streams: guest -> guest, host -> guest.
pub const RESTART_RECEIVERS: [(&str, &str); 2] = [
    ("guest_to_guest", "g-server"),
    ("host_to_guest", "h-server"),
];

/// The demo's restart (topologies/restart.toml) with a host -> guest stream beside the guest
/// -> guest one: the NIC's driver domain panics [`RESTART_CRASH_AFTER_MS`] after it starts.
pub fn restart_topology() -> String {
    let seconds = RESTART_STREAM_SECONDS;
    format!(
        "{MACHINE}{}{}{}{}",
        driver_domain(&format!(
            ", nic_serve_ms = 2000, test_crash = \"panic\", \
             test_crash_after_ms = {RESTART_CRASH_AFTER_MS}"
        )),
        guest(
            "g-server",
            true,
            "app = \"iperf\", ip = \"10.0.2.20/24\", iperf = \"server\", iperf_tests = 1"
        ),
        guest(
            "g-client",
            true,
            &format!(
                "app = \"iperf\", ip = \"10.0.2.21/24\", iperf = \"client\", \
                 iperf_server = \"10.0.2.20\", iperf_seconds = {seconds}, iperf_wait_ms = 30000"
            )
        ),
        guest(
            "h-server",
            true,
            "app = \"iperf\", ip = \"10.0.2.22/24\", iperf = \"server\", iperf_tests = 1, \
             host_iperf = \"send\""
        ),
    )
}

/// The event-channel ping-pong between a guest and a driver domain (`evtchn_roundtrip_ticks`).
pub fn evtchn_topology(rounds: u64) -> String {
    format!(
        r#"[machine]
cpus = 2
memory_mib = 512
[[vm]]
name = "dd"
kind = "driver-domain"
image = "driver-domain"
memory_mib = 8
vcpus = 1
[[vm]]
name = "pinger"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
backend = "dd"
settings = {{ app = "pingpong", rounds = {rounds} }}
"#
    )
}

/// Grant map/unmap/copy between two guests (`grant_*_ticks`).
pub fn grant_topology(rounds: u64) -> String {
    format!(
        r#"[machine]
cpus = 2
memory_mib = 512
[[vm]]
name = "granter"
kind = "guest"
image = "guest-frontend"
memory_mib = 4
vcpus = 1
settings = {{ app = "granter", peer = 2, other = 2 }}
[[vm]]
name = "mapper"
kind = "guest"
image = "guest-frontend"
memory_mib = 4
vcpus = 1
settings = {{ app = "attack", peer = 1, mode = "bench", rounds = {rounds} }}
"#
    )
}

/// The neighbours the bystander figure is measured beside: the key in
/// `bystander_evtchn_us`, and the VMs added to [`evtchn_topology`] (ids 3 and 4). Each load
/// lasts longer than the measurement; the boot is stopped once the ping-pong has reported.
pub const BYSTANDER_LOADS: [(&str, &str); 5] = [
    ("idle", ""),
    (
        "copy_loop",
        "source:4:load = \"source\", peer = 4, duration_ms = 120000|\
         copier:4:load = \"copy\", peer = 3, duration_ms = 120000",
    ),
    (
        "reset_loop",
        "resetter:128:load = \"reset\", rounds = 100000",
    ),
    (
        "console_flood",
        "flooder:4:load = \"console\", duration_ms = 120000",
    ),
    (
        "evtchn_storm",
        "source:4:load = \"source\", peer = 4, duration_ms = 120000|\
         sender:4:load = \"evtchn\", peer = 3, duration_ms = 120000",
    ),
];

/// [`evtchn_topology`] with the VMs of bystander load `load` (a key of [`BYSTANDER_LOADS`]).
pub fn bystander_topology(rounds: u64, load: &str) -> Option<String> {
    let (_, vms) = BYSTANDER_LOADS.iter().find(|(key, _)| *key == load)?;
    let mut toml = evtchn_topology(rounds);
    for vm in vms.split('|').filter(|v| !v.trim().is_empty()) {
        let mut fields = vm.trim().splitn(3, ':');
        let (name, mib, settings) = (fields.next()?, fields.next()?, fields.next()?);
        toml += &format!(
            "[[vm]]\nname = \"{name}\"\nkind = \"guest\"\nimage = \"guest-frontend\"\n\
             memory_mib = {mib}\nvcpus = 1\nsettings = {{ app = \"load\", {settings} }}\n"
        );
    }
    Some(toml)
}

// ---- Results ----------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Paravirt {
    pub guest_to_guest: Option<Stat>,
    /// One pair at [`LARGE_FRAME_MTU`]: 64 KiB segments guest to guest.
    pub guest_to_guest_64k: Option<Stat>,
    /// Over QEMU user networking (slirp), the host's iperf3 the client.
    pub host_to_guest: Option<Stat>,
    pub guest_to_host: Option<Stat>,
    /// The host paths with the NIC on passt (the guest the client).
    pub passt: HostPaths,
    /// The host paths with the NIC on a tap device, the host's iperf3 the client inside the
    /// tap's namespace (group `tap`, run only when asked for).
    pub tap: HostPaths,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HostPaths {
    pub host_to_guest: Option<Stat>,
    pub guest_to_host: Option<Stat>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Passthrough {
    /// Over QEMU user networking (slirp).
    pub host_to_driver_domain: Option<Stat>,
    /// The same boot's second test (`iperf3 -R`): the driver domain sends to the host.
    pub driver_domain_to_host: Option<Stat>,
    pub passt: PassthroughPasst,
    /// On a GICv4 machine, the NIC's MSI-X delivered as vLPIs.
    pub vlpi: PassthroughPasst,
    /// With the NIC on a tap device (group `tap`), both ways.
    pub tap: PassthroughBothWays,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PassthroughBothWays {
    pub host_to_driver_domain: Option<Stat>,
    pub driver_domain_to_host: Option<Stat>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PassthroughPasst {
    pub host_to_driver_domain: Option<Stat>,
}

/// The NIC's interrupts through EL2 per NIC interrupt the driver domain took (issue 15), on
/// each interrupt path of the `passthrough` boot.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NicInterruptExits {
    /// GICv4: MSI-X as vLPIs (only doorbells for a blocked vCPU exit).
    pub vlpi: Option<Stat>,
    /// GICv3: INTx through a list register (every one exits).
    pub intx: Option<Stat>,
}

/// TCP through the emulated NIC (the receiver's figure: the emulated guest's).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Emulated {
    /// From a para-virtual guest to the emulated one.
    pub guest_to_guest: Option<Stat>,
    /// From the host (user networking) to the emulated guest.
    pub host_to_guest: Option<Stat>,
}

/// One per-packet cost of the host -> guest test, for each of the lecture's three methods.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ByMethod {
    pub emulated: Option<Stat>,
    pub paravirt: Option<Stat>,
    pub passthrough: Option<Stat>,
}

/// The methods and tests of the three-way table: the key in `three_way` and the label.
pub const METHODS: [(&str, &str); 3] = [
    ("emulated", "emulated"),
    ("paravirt", "para-virtual"),
    ("passthrough", "passthrough"),
];
pub const TESTS: [(&str, &str); 2] = [
    ("host_to_guest", "host -> guest"),
    ("guest_to_guest", "guest -> guest"),
];

/// The balloon's speed: MiB a guest gave back (inflate) or took (deflate) per second, as
/// the guest timed its whole give or take.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Balloon {
    pub inflate: Option<Stat>,
    pub deflate: Option<Stat>,
}

/// The longest gap between data frames a stream's receiver saw across a driver-domain restart.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RestartGap {
    pub guest_to_guest: Option<Stat>,
    pub host_to_guest: Option<Stat>,
}

/// The anchors beside the restart figures (issue 14).
pub const RESTART_ANCHOR: &str = "goal < 100 ms; a warm-spare driver VM: < 10 ms (Le et al., \
                                  2009); Linux netfront: no reconnect by itself";

/// The anchor beside the balloon figures: Linux virtio-balloon inflating 7 GiB in 0.49 s
/// batched, 4.1 s page by page (LKML, 2017).
pub const BALLOON_ANCHOR: &str = "Linux virtio-balloon: 7 GiB in 0.49 s batched (14629 MiB/s), \
                                  4.1 s page by page (1748 MiB/s)";

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PingRtt {
    /// guest1's pings of guest2, 50 ms apart: each finds every VM asleep.
    pub guest_to_guest: Option<Stat>,
    /// guest2's pings of guest1 after guest1's, 1 ms apart: every VM's caches, translations
    /// and host threads still warm, closer to how the event-channel round trip is measured
    /// (back to back).
    pub guest_to_guest_1ms_apart: Option<Stat>,
}

/// Guest-to-guest throughput with `pairs` pairs running at once.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScalingPoint {
    pub pairs: usize,
    /// Per run, the sum of the pairs' receiver figures.
    pub aggregate_tcp_mbps: Option<Stat>,
    /// The aggregate median divided by `pairs`.
    pub per_pair_tcp_mbps: Option<f64>,
    /// Each run's per-pair figures, in pair order.
    pub pair_mbps: Vec<Vec<f64>>,
    /// Per run, the fastest pair's figure over the slowest's: 1.0 when the driver domain and
    /// the scheduler share the pCPUs evenly between the pairs (none at one pair).
    pub fastest_over_slowest_pair: Option<Stat>,
    /// The reasons of all the pairs together (each guest's counters over its test summed, the
    /// accounting around pair 1's test); at one pair, `reasons.guest_to_guest`.
    pub reasons: Reasons,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Ratios {
    /// `paravirt_tcp_mbps.guest_to_guest` / `memcpy_mbps` (medians): how close the one-copy
    /// data path comes to the machine's single-copy memory bandwidth.
    pub guest_to_guest_over_memcpy: Option<f64>,
    /// `paravirt_tcp_mbps.host_to_guest` / `passthrough_tcp_mbps.host_to_driver_domain`
    /// (medians): what the split driver costs on the way from the NIC to a guest.
    pub host_to_guest_over_passthrough: Option<f64>,
    /// `paravirt_tcp_mbps.guest_to_host` / `passthrough_tcp_mbps.driver_domain_to_host`
    /// (medians): the same, from a guest to the NIC.
    pub guest_to_host_over_passthrough: Option<f64>,
    /// `paravirt_tcp_mbps.tap.host_to_guest` / `passthrough_tcp_mbps.tap.host_to_driver_domain`
    /// (medians): the split driver's cost where the host side is the host's own TCP stack.
    pub tap_host_to_guest_over_passthrough: Option<f64>,
    /// `paravirt_tcp_mbps.tap.guest_to_host` / `passthrough_tcp_mbps.tap.driver_domain_to_host`.
    pub tap_guest_to_host_over_passthrough: Option<f64>,
    /// `paravirt_tcp_mbps.guest_to_guest_64k` / `memcpy_mbps` (medians).
    pub guest_to_guest_64k_over_memcpy: Option<f64>,
    /// Two pairs at once over one pair (the `scaling` aggregates' medians).
    pub two_pairs_over_one: Option<f64>,
    /// What two pairs could get over one if the pCPU time one pair leaves idle were all they
    /// gained: `1 / (1 - idle)` with `idle` the one-pair stream's idle share
    /// (`reasons.guest_to_guest.pcpu_share.idle`), at most 2. The bound
    /// [`Ratios::two_pairs_over_one`] meets unless more pairs make each byte cheaper.
    pub two_pairs_pcpu_bound: Option<f64>,
    /// `paravirt_tcp_mbps.host_to_guest` / `linux_guest_tcp_mbps.host_to_guest` (medians, same
    /// run): our para-virtual path over a stock Linux guest's on the same QEMU and slirp.
    pub host_to_guest_over_linux: Option<f64>,
    /// `paravirt_tcp_mbps.guest_to_host` / `linux_guest_tcp_mbps.guest_to_host`.
    pub guest_to_host_over_linux: Option<f64>,
    /// `ping_rtt_us.guest_to_guest` / `evtchn_roundtrip_us` (medians): a ping crosses the
    /// event channel four times (two round trips) and three network stacks.
    pub ping_over_evtchn_roundtrip: Option<f64>,
    /// `ping_rtt_us.guest_to_guest_1ms_apart` / `evtchn_roundtrip_us` (medians).
    pub ping_1ms_apart_over_evtchn_roundtrip: Option<f64>,
}

/// [`Ratios::two_pairs_pcpu_bound`] for a one-pair idle share `idle` (0..1).
pub fn pcpu_bound(pairs: usize, idle: f64) -> Option<f64> {
    (pairs > 0 && (0.0..1.0).contains(&idle))
        .then(|| round_to((1.0 / (1.0 - idle)).min(pairs as f64), 4))
}

/// Everything `./run.sh bench` reports; serialised as `target/bench/results.json`. A figure
/// that could not be measured is `null` and the reason is in `errors`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Results {
    pub schema: u32,
    pub short: bool,
    pub runs: usize,
    pub iperf_seconds: u32,
    pub rounds_per_run: u64,
    /// How QEMU's vCPU threads ran on the host ([`crate::pinning::policy`]): pinned, or why not.
    pub vcpu_pinning: String,
    pub paravirt_tcp_mbps: Paravirt,
    /// The stock Linux guest's host paths (the `linux` group, [`crate::linux_guest`]): the
    /// baseline of issue 11's host-path goal.
    pub linux_guest_tcp_mbps: HostPaths,
    pub passthrough_tcp_mbps: Passthrough,
    pub nic_interrupt_exits: NicInterruptExits,
    pub emulated_tcp_mbps: Emulated,
    /// Exits to EL2 of the path's VMs per data packet, host -> guest (see the module docs).
    pub exits_per_packet: ByMethod,
    /// Device-model requests (forwarded I/O requests) per data packet, host -> guest.
    pub ioreqs_per_packet: ByMethod,
    /// Virtual interrupts injected into the path's VMs per data packet, host -> guest.
    pub interrupts_per_packet: ByMethod,
    /// Method ([`METHODS`]) -> test ([`TESTS`]) -> costs per packet.
    pub three_way: BTreeMap<String, BTreeMap<String, bench::PathCosts>>,
    pub balloon_mib_per_s: Balloon,
    /// A driver-domain restart under load (issue 14): its crash to the first frame a guest
    /// received through the new incarnation.
    pub driver_domain_recovery_ms: Option<Stat>,
    pub driver_domain_restart_gap_ms: RestartGap,
    /// Where the recovery's time goes: each of [`crate::restart::PHASES`], ms after the crash.
    pub driver_domain_restart_phases_ms: BTreeMap<String, Option<Stat>>,
    /// The recovery cut into consecutive spans: each of [`crate::restart::SPANS`], ms.
    pub driver_domain_restart_spans_ms: BTreeMap<String, Option<Stat>>,
    pub memcpy_mbps: Option<Stat>,
    pub ping_rtt_us: PingRtt,
    pub evtchn_roundtrip_us: Option<Stat>,
    /// The event-channel round trip of a bystander pair with each of [`BYSTANDER_LOADS`]
    /// running beside it (`idle`: nothing beside it); goal: every load under 2x idle.
    pub bystander_evtchn_us: BTreeMap<String, Option<Stat>>,
    pub scaling: Vec<ScalingPoint>,
    pub ratios: Ratios,
    /// The raw `BENCH` figures (event channel, grants: counter ticks; memcpy: Mbit/s).
    pub figures: BTreeMap<String, Figure>,
    /// The reasons beside each para-virtual path's throughput, by [`REASON_PATHS`] key.
    pub reasons: BTreeMap<String, Reasons>,
    pub errors: Vec<String>,
}

/// The para-virtual paths that get reasons: the key in `reasons` and the table's label.
pub const REASON_PATHS: [(&str, &str); 8] = [
    ("guest_to_guest", "guest -> guest"),
    ("guest_to_guest_64k", "64K frames g -> g"),
    ("host_to_guest", "host -> guest"),
    ("guest_to_host", "guest -> host"),
    ("passt_host_to_guest", "passt: host -> guest"),
    ("passt_guest_to_host", "passt: guest -> host"),
    ("tap_host_to_guest", "tap: host -> guest"),
    ("tap_guest_to_host", "tap: guest -> host"),
];

/// JSON pointers of the figures every complete run has, each a [`Stat`] with a positive
/// median, or (ratios) a positive number.
pub const REQUIRED_FIGURES: [&str; 73] = [
    "/paravirt_tcp_mbps/guest_to_guest",
    "/paravirt_tcp_mbps/host_to_guest",
    "/paravirt_tcp_mbps/guest_to_host",
    "/paravirt_tcp_mbps/passt/host_to_guest",
    "/paravirt_tcp_mbps/passt/guest_to_host",
    "/passthrough_tcp_mbps/host_to_driver_domain",
    "/passthrough_tcp_mbps/driver_domain_to_host",
    "/paravirt_tcp_mbps/guest_to_guest_64k",
    "/ratios/guest_to_guest_64k_over_memcpy",
    "/passthrough_tcp_mbps/passt/host_to_driver_domain",
    "/passthrough_tcp_mbps/vlpi/host_to_driver_domain",
    "/nic_interrupt_exits/vlpi",
    "/nic_interrupt_exits/intx",
    "/memcpy_mbps",
    "/ping_rtt_us/guest_to_guest",
    "/ping_rtt_us/guest_to_guest_1ms_apart",
    "/ratios/ping_over_evtchn_roundtrip",
    "/ratios/ping_1ms_apart_over_evtchn_roundtrip",
    "/evtchn_roundtrip_us",
    "/ratios/guest_to_guest_over_memcpy",
    "/ratios/host_to_guest_over_passthrough",
    "/ratios/guest_to_host_over_passthrough",
    "/linux_guest_tcp_mbps/host_to_guest",
    "/linux_guest_tcp_mbps/guest_to_host",
    "/ratios/host_to_guest_over_linux",
    "/ratios/guest_to_host_over_linux",
    "/figures/grant_map_ticks",
    "/figures/grant_copy_4k_ticks",
    "/bystander_evtchn_us/idle",
    "/bystander_evtchn_us/copy_loop",
    "/bystander_evtchn_us/reset_loop",
    "/bystander_evtchn_us/console_flood",
    "/bystander_evtchn_us/evtchn_storm",
    "/reasons/guest_to_guest/events_per_frame",
    "/reasons/guest_to_guest/bytes_per_notification",
    "/reasons/guest_to_guest/copies_per_byte",
    "/reasons/guest_to_guest/vmid_switches_per_frame",
    "/reasons/guest_to_guest/frames_per_ack",
    "/reasons/guest_to_guest/el2_busy_share",
    "/reasons/guest_to_guest_64k/events_per_frame",
    "/reasons/guest_to_guest_64k/frames_per_ack",
    "/reasons/host_to_guest/frames_per_ack",
    "/reasons/host_to_guest/events_per_frame",
    "/reasons/host_to_guest/bytes_per_notification",
    "/reasons/host_to_guest/copies_per_byte",
    "/reasons/guest_to_host/events_per_frame",
    "/reasons/guest_to_host/bytes_per_notification",
    "/reasons/guest_to_host/copies_per_byte",
    "/reasons/passt_host_to_guest/events_per_frame",
    "/reasons/passt_host_to_guest/bytes_per_notification",
    "/reasons/passt_host_to_guest/copies_per_byte",
    "/reasons/passt_guest_to_host/events_per_frame",
    "/reasons/passt_guest_to_host/bytes_per_notification",
    "/reasons/passt_guest_to_host/copies_per_byte",
    "/reasons/guest_to_guest/pcpu_share/driver-domain",
    "/reasons/host_to_guest/pcpu_share/driver-domain",
    "/reasons/guest_to_host/pcpu_share/driver-domain",
    "/reasons/passt_host_to_guest/pcpu_share/driver-domain",
    "/reasons/passt_guest_to_host/pcpu_share/driver-domain",
    "/emulated_tcp_mbps/guest_to_guest",
    "/emulated_tcp_mbps/host_to_guest",
    "/exits_per_packet/emulated",
    "/exits_per_packet/paravirt",
    "/exits_per_packet/passthrough",
    "/ioreqs_per_packet/emulated",
    "/interrupts_per_packet/emulated",
    "/interrupts_per_packet/paravirt",
    "/interrupts_per_packet/passthrough",
    "/balloon_mib_per_s/inflate",
    "/balloon_mib_per_s/deflate",
    "/driver_domain_recovery_ms",
    "/driver_domain_restart_gap_ms/guest_to_guest",
    "/driver_domain_restart_gap_ms/host_to_guest",
];

/// JSON pointers of the `tap` group's figures (it runs only when asked for, so they are not
/// among [`REQUIRED_FIGURES`]).
pub const TAP_FIGURES: [&str; 10] = [
    "/paravirt_tcp_mbps/tap/host_to_guest",
    "/paravirt_tcp_mbps/tap/guest_to_host",
    "/passthrough_tcp_mbps/tap/host_to_driver_domain",
    "/passthrough_tcp_mbps/tap/driver_domain_to_host",
    "/ratios/tap_host_to_guest_over_passthrough",
    "/ratios/tap_guest_to_host_over_passthrough",
    "/reasons/tap_host_to_guest/events_per_frame",
    "/reasons/tap_host_to_guest/pcpu_share/driver-domain",
    "/reasons/tap_guest_to_host/events_per_frame",
    "/reasons/tap_guest_to_host/pcpu_share/driver-domain",
];

/// Whether `v` is a positive finite number, or a [`Stat`] with such a median.
fn positive(v: Option<&serde_json::Value>) -> bool {
    let v = match v {
        Some(v) if v.is_object() => v.get("median"),
        other => other,
    };
    v.and_then(serde_json::Value::as_f64)
        .is_some_and(|x| x > 0.0 && x.is_finite())
}

/// Each of `pointers` that is absent from `doc` or not positive.
pub fn missing_of(doc: &serde_json::Value, pointers: &[&str]) -> Vec<String> {
    pointers
        .iter()
        .filter(|p| !positive(doc.pointer(p)))
        .map(|p| p.to_string())
        .collect()
}

/// What is missing from a results document: each [`REQUIRED_FIGURES`] entry that is absent or
/// not positive, each of `pair_counts` without a positive aggregate in `scaling`, and each count
/// above one without its fastest-over-slowest pair figure or its VMID switches per frame. Empty
/// when the document is complete.
pub fn missing_figures(doc: &serde_json::Value, pair_counts: &[usize]) -> Vec<String> {
    let mut missing = missing_of(doc, &REQUIRED_FIGURES);
    for pairs in pair_counts {
        let point = doc
            .get("scaling")
            .and_then(serde_json::Value::as_array)
            .and_then(|points| {
                points.iter().find(|p| {
                    p.get("pairs").and_then(serde_json::Value::as_u64) == Some(*pairs as u64)
                })
            });
        if !positive(point.and_then(|p| p.get("aggregate_tcp_mbps"))) {
            missing.push(format!("/scaling[pairs={pairs}]/aggregate_tcp_mbps"));
        }
        if *pairs > 1 {
            for key in [
                "fastest_over_slowest_pair",
                "reasons/vmid_switches_per_frame",
            ] {
                let value = point.and_then(|p| p.pointer(&format!("/{key}")));
                if !positive(value) {
                    missing.push(format!("/scaling[pairs={pairs}]/{key}"));
                }
            }
        }
    }
    if pair_counts.contains(&1) && pair_counts.contains(&2) {
        for p in ["/ratios/two_pairs_over_one", "/ratios/two_pairs_pcpu_bound"] {
            if !positive(doc.pointer(p)) {
                missing.push(p.to_string());
            }
        }
    }
    missing
}

/// What the runs measured, before combining.
#[derive(Default)]
struct Raw {
    guest_to_guest: Vec<f64>,
    /// One pair at [`LARGE_FRAME_MTU`].
    guest_to_guest_64k: Vec<f64>,
    host_to_guest: Vec<f64>,
    guest_to_host: Vec<f64>,
    /// The stock Linux guest's tests, all from its one boot.
    linux_host_to_guest: Vec<f64>,
    linux_guest_to_host: Vec<f64>,
    passthrough: Vec<f64>,
    /// The `passthrough` boot's `-R` test: driver domain -> host.
    passthrough_from: Vec<f64>,
    passt_host_to_guest: Vec<f64>,
    passt_guest_to_host: Vec<f64>,
    passt_passthrough: Vec<f64>,
    vlpi_passthrough: Vec<f64>,
    tap_host_to_guest: Vec<f64>,
    tap_guest_to_host: Vec<f64>,
    tap_passthrough: Vec<f64>,
    tap_passthrough_from: Vec<f64>,
    nic_exits_vlpi: Vec<f64>,
    nic_exits_intx: Vec<f64>,
    ping_rtts_us: Vec<Vec<f64>>,
    ping_1ms_apart_rtts_us: Vec<Vec<f64>>,
    /// Pair count -> per run, each pair's figure.
    scaling: BTreeMap<usize, Vec<Vec<f64>>>,
    /// Pair count (above one) -> each run's reasons of all its pairs together.
    scaling_reasons: BTreeMap<usize, Vec<RunReasons>>,
    /// Bystander load -> per run, the event-channel round trip median in us.
    bystander_us: BTreeMap<String, Vec<f64>>,
    samples: Vec<Sample>,
    /// Path key ([`REASON_PATHS`]) -> each run's reasons.
    reasons: BTreeMap<&'static str, Vec<RunReasons>>,
    emulated_host_to_guest: Vec<f64>,
    emulated_guest_to_guest: Vec<f64>,
    /// (method, test) of [`METHODS`] and [`TESTS`] -> each run's costs per packet.
    costs: BTreeMap<(&'static str, &'static str), Vec<PacketCosts>>,
    balloon_inflate: Vec<f64>,
    balloon_deflate: Vec<f64>,
    restart_recovery: Vec<f64>,
    /// [`RESTART_RECEIVERS`] key -> each run's longest gap.
    restart_gaps: BTreeMap<&'static str, Vec<f64>>,
    /// [`crate::restart::PHASES`] entry -> each run's ms after the crash.
    restart_phases: BTreeMap<&'static str, Vec<f64>>,
    /// [`crate::restart::SPANS`] entry -> each run's ms.
    restart_spans: BTreeMap<&'static str, Vec<f64>>,
    errors: Vec<String>,
}

/// Which figures and reasons a host-paths boot (`host_guest` or its tap twin) feeds: its
/// reason paths ([`REASON_PATHS`] keys) for host -> guest and guest -> host, and whether the NIC
/// was on a tap device.
#[derive(Clone, Copy)]
struct HostPathKeys {
    to: &'static str,
    from: &'static str,
    tap: bool,
}

const HOST_PATHS: HostPathKeys = HostPathKeys {
    to: "host_to_guest",
    from: "guest_to_host",
    tap: false,
};

const TAP_HOST_PATHS: HostPathKeys = HostPathKeys {
    to: "tap_host_to_guest",
    from: "tap_guest_to_host",
    tap: true,
};

impl Raw {
    /// Records a host-paths run: each way's figure (or why it is missing) and reasons under
    /// `keys`. Returns the host -> guest test's costs per packet for the caller to file.
    fn add_host_run(
        &mut self,
        run: usize,
        r: HostRun,
        keys: HostPathKeys,
    ) -> Result<PacketCosts, String> {
        self.add_reasons(keys.to, run, r.to_reasons);
        self.add_reasons(keys.from, run, r.from_reasons);
        let (to, from) = if keys.tap {
            (&mut self.tap_host_to_guest, &mut self.tap_guest_to_host)
        } else {
            (&mut self.host_to_guest, &mut self.guest_to_host)
        };
        for (key, figure, figures) in [(keys.to, r.to, to), (keys.from, r.from, from)] {
            match figure {
                Ok(v) => figures.push(v),
                Err(e) => self.errors.push(format!("{key} run {run}: {e}")),
            }
        }
        r.to_costs
    }

    /// Records a run's reasons for `path`, or why they could not be had (the throughput
    /// figure still counts).
    fn add_reasons(&mut self, path: &'static str, run: usize, reasons: Result<RunReasons, String>) {
        match reasons {
            Ok(r) => self.reasons.entry(path).or_default().push(r),
            Err(e) => self.errors.push(format!("{path} run {run}, reasons: {e}")),
        }
    }

    /// Records a run's costs per packet for `method`'s `test`, or why there are none.
    fn add_costs(
        &mut self,
        method: &'static str,
        test: &'static str,
        run: usize,
        costs: Result<PacketCosts, String>,
    ) {
        match costs {
            Ok(c) => self.costs.entry((method, test)).or_default().push(c),
            Err(e) => self
                .errors
                .push(format!("{method} {test} run {run}, costs per packet: {e}")),
        }
    }
}

/// pCPU shares by role: `client3` counts under `clients`, `server3` under `servers`; a name
/// without a number (the driver domain, idle) stays as it is. Four pairs' nine VMs make one
/// table line of four shares.
fn shares_by_role(shares: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut by_role = BTreeMap::new();
    for (vm, share) in shares {
        let base = vm.trim_end_matches(|c: char| c.is_ascii_digit());
        let role = if base.len() < vm.len() && !base.is_empty() {
            format!("{base}s")
        } else {
            vm.clone()
        };
        *by_role.entry(role).or_insert(0.0) += share;
    }
    by_role
}

/// One run's fastest pair over its slowest (how evenly the pairs shared the machine); none
/// for one pair, or when a pair measured nothing.
fn fastest_over_slowest(pairs: &[f64]) -> Option<f64> {
    let slowest = pairs.iter().copied().fold(f64::INFINITY, f64::min);
    let fastest = pairs.iter().copied().fold(0.0, f64::max);
    (pairs.len() > 1 && slowest > 0.0).then(|| round_to(fastest / slowest, 3))
}

impl Results {
    fn from_raw(options: &Options, raw: Raw) -> Results {
        let figures: BTreeMap<String, Figure> = bench::combine(&raw.samples)
            .into_iter()
            .map(|f| (f.name.clone(), f))
            .collect();
        let stat_of = |name: &str| figures.get(name).and_then(Figure::stat);
        let scaling = options
            .pair_counts
            .iter()
            .map(|&pairs| {
                let runs = raw.scaling.get(&pairs).cloned().unwrap_or_default();
                let sums: Vec<f64> = runs.iter().map(|r| r.iter().sum()).collect();
                let aggregate = Stat::of_runs(&sums);
                let spreads: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| fastest_over_slowest(r))
                    .collect();
                let reasons = if pairs == 1 {
                    raw.reasons.get("guest_to_guest")
                } else {
                    raw.scaling_reasons.get(&pairs)
                };
                ScalingPoint {
                    reasons: Reasons::of_runs(reasons.map(Vec::as_slice).unwrap_or_default()),
                    fastest_over_slowest_pair: Stat::of_runs(&spreads),
                    pairs,
                    per_pair_tcp_mbps: aggregate
                        .as_ref()
                        .map(|s| round_to(s.median / pairs as f64, 3)),
                    aggregate_tcp_mbps: aggregate,
                    pair_mbps: runs,
                }
            })
            .collect();
        let mut results = Results {
            schema: 1,
            short: options.short,
            runs: options.runs,
            iperf_seconds: options.seconds,
            rounds_per_run: options.rounds,
            vcpu_pinning: crate::pinning::policy(MACHINE_CPUS),
            paravirt_tcp_mbps: Paravirt {
                guest_to_guest: Stat::of_runs(&raw.guest_to_guest),
                guest_to_guest_64k: Stat::of_runs(&raw.guest_to_guest_64k),
                host_to_guest: Stat::of_runs(&raw.host_to_guest),
                guest_to_host: Stat::of_runs(&raw.guest_to_host),
                passt: HostPaths {
                    host_to_guest: Stat::of_runs(&raw.passt_host_to_guest),
                    guest_to_host: Stat::of_runs(&raw.passt_guest_to_host),
                },
                tap: HostPaths {
                    host_to_guest: Stat::of_runs(&raw.tap_host_to_guest),
                    guest_to_host: Stat::of_runs(&raw.tap_guest_to_host),
                },
            },
            linux_guest_tcp_mbps: HostPaths {
                host_to_guest: Stat::of_runs(&raw.linux_host_to_guest),
                guest_to_host: Stat::of_runs(&raw.linux_guest_to_host),
            },
            passthrough_tcp_mbps: Passthrough {
                host_to_driver_domain: Stat::of_runs(&raw.passthrough),
                driver_domain_to_host: Stat::of_runs(&raw.passthrough_from),
                passt: PassthroughPasst {
                    host_to_driver_domain: Stat::of_runs(&raw.passt_passthrough),
                },
                vlpi: PassthroughPasst {
                    host_to_driver_domain: Stat::of_runs(&raw.vlpi_passthrough),
                },
                tap: PassthroughBothWays {
                    host_to_driver_domain: Stat::of_runs(&raw.tap_passthrough),
                    driver_domain_to_host: Stat::of_runs(&raw.tap_passthrough_from),
                },
            },
            nic_interrupt_exits: NicInterruptExits {
                vlpi: Stat::of_runs(&raw.nic_exits_vlpi),
                intx: Stat::of_runs(&raw.nic_exits_intx),
            },
            emulated_tcp_mbps: Emulated {
                guest_to_guest: Stat::of_runs(&raw.emulated_guest_to_guest),
                host_to_guest: Stat::of_runs(&raw.emulated_host_to_guest),
            },
            exits_per_packet: ByMethod::default(),
            ioreqs_per_packet: ByMethod::default(),
            interrupts_per_packet: ByMethod::default(),
            three_way: METHODS
                .iter()
                .map(|(method, _)| {
                    let tests = TESTS
                        .iter()
                        .filter(|(test, _)| *method != "passthrough" || *test == "host_to_guest")
                        .map(|(test, _)| {
                            let runs = raw
                                .costs
                                .get(&(*method, *test))
                                .map(Vec::as_slice)
                                .unwrap_or_default();
                            (test.to_string(), bench::PathCosts::of_runs(runs))
                        })
                        .collect();
                    (method.to_string(), tests)
                })
                .collect(),
            balloon_mib_per_s: Balloon {
                inflate: Stat::of_runs(&raw.balloon_inflate),
                deflate: Stat::of_runs(&raw.balloon_deflate),
            },
            driver_domain_recovery_ms: Stat::of_runs(&raw.restart_recovery),
            driver_domain_restart_gap_ms: {
                let gaps = |key: &str| {
                    Stat::of_runs(
                        raw.restart_gaps
                            .get(key)
                            .map(Vec::as_slice)
                            .unwrap_or_default(),
                    )
                };
                RestartGap {
                    guest_to_guest: gaps("guest_to_guest"),
                    host_to_guest: gaps("host_to_guest"),
                }
            },
            driver_domain_restart_phases_ms: crate::restart::PHASES
                .iter()
                .map(|phase| {
                    let runs = raw.restart_phases.get(phase).cloned().unwrap_or_default();
                    (phase.to_string(), Stat::of_runs(&runs))
                })
                .collect(),
            driver_domain_restart_spans_ms: crate::restart::SPANS
                .iter()
                .map(|span| {
                    let runs = raw.restart_spans.get(span).cloned().unwrap_or_default();
                    (span.to_string(), Stat::of_runs(&runs))
                })
                .collect(),
            memcpy_mbps: stat_of("memcpy_mbps"),
            ping_rtt_us: PingRtt {
                guest_to_guest: Stat::of_sampled_runs(&raw.ping_rtts_us),
                guest_to_guest_1ms_apart: Stat::of_sampled_runs(&raw.ping_1ms_apart_rtts_us),
            },
            evtchn_roundtrip_us: stat_of("evtchn_roundtrip_ticks"),
            bystander_evtchn_us: BYSTANDER_LOADS
                .iter()
                .map(|(load, _)| {
                    let runs = raw.bystander_us.get(*load).cloned().unwrap_or_default();
                    (load.to_string(), Stat::of_runs(&runs))
                })
                .collect(),
            scaling,
            ratios: Ratios::default(),
            figures,
            reasons: REASON_PATHS
                .iter()
                .map(|(key, _)| {
                    let runs = raw.reasons.get(key).map(Vec::as_slice).unwrap_or_default();
                    (key.to_string(), Reasons::of_runs(runs))
                })
                .collect(),
            errors: raw.errors,
        };
        let host = |method: &str, f: fn(&bench::PathCosts) -> &Option<Stat>| {
            results
                .three_way
                .get(method)
                .and_then(|t| t.get("host_to_guest"))
                .and_then(|c| f(c).clone())
        };
        let by_method = |f: fn(&bench::PathCosts) -> &Option<Stat>| ByMethod {
            emulated: host("emulated", f),
            paravirt: host("paravirt", f),
            passthrough: host("passthrough", f),
        };
        results.exits_per_packet = by_method(|c| &c.exits_per_packet);
        results.ioreqs_per_packet = by_method(|c| &c.ioreqs_per_packet);
        results.interrupts_per_packet = by_method(|c| &c.interrupts_per_packet);
        let scaling_at = |pairs: usize| {
            results
                .scaling
                .iter()
                .find(|p| p.pairs == pairs)
                .and_then(|p| p.aggregate_tcp_mbps.clone())
        };
        results.ratios = Ratios {
            ping_over_evtchn_roundtrip: ratio(
                &results.ping_rtt_us.guest_to_guest,
                &results.evtchn_roundtrip_us,
            ),
            ping_1ms_apart_over_evtchn_roundtrip: ratio(
                &results.ping_rtt_us.guest_to_guest_1ms_apart,
                &results.evtchn_roundtrip_us,
            ),
            guest_to_guest_over_memcpy: ratio(
                &results.paravirt_tcp_mbps.guest_to_guest,
                &results.memcpy_mbps,
            ),
            host_to_guest_over_passthrough: ratio(
                &results.paravirt_tcp_mbps.host_to_guest,
                &results.passthrough_tcp_mbps.host_to_driver_domain,
            ),
            guest_to_host_over_passthrough: ratio(
                &results.paravirt_tcp_mbps.guest_to_host,
                &results.passthrough_tcp_mbps.driver_domain_to_host,
            ),
            tap_host_to_guest_over_passthrough: ratio(
                &results.paravirt_tcp_mbps.tap.host_to_guest,
                &results.passthrough_tcp_mbps.tap.host_to_driver_domain,
            ),
            tap_guest_to_host_over_passthrough: ratio(
                &results.paravirt_tcp_mbps.tap.guest_to_host,
                &results.passthrough_tcp_mbps.tap.driver_domain_to_host,
            ),
            guest_to_guest_64k_over_memcpy: ratio(
                &results.paravirt_tcp_mbps.guest_to_guest_64k,
                &results.memcpy_mbps,
            ),
            two_pairs_over_one: ratio(&scaling_at(2), &scaling_at(1)),
            two_pairs_pcpu_bound: results
                .reasons
                .get("guest_to_guest")
                .and_then(|r| r.pcpu_share.get("idle"))
                .and_then(|&idle| pcpu_bound(2, idle)),
            host_to_guest_over_linux: ratio(
                &results.paravirt_tcp_mbps.host_to_guest,
                &results.linux_guest_tcp_mbps.host_to_guest,
            ),
            guest_to_host_over_linux: ratio(
                &results.paravirt_tcp_mbps.guest_to_host,
                &results.linux_guest_tcp_mbps.guest_to_host,
            ),
        };
        results
    }

    /// Pretty JSON, ending in a newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data") + "\n"
    }

    /// The scaling plot (see [`plot::scaling_svg`]).
    pub fn scaling_svg(&self) -> String {
        let points: Vec<PlotPoint> = self
            .scaling
            .iter()
            .filter_map(|p| {
                p.aggregate_tcp_mbps.as_ref().map(|s| PlotPoint {
                    pairs: p.pairs,
                    median: s.median,
                    min: s.min,
                    max: s.max,
                })
            })
            .collect();
        let subtitle = format!(
            "2 pCPUs; the pairs run at once through the driver domain's switch; TCP, one stream \
             per pair, {} s tests, median of {} run(s)",
            self.iperf_seconds, self.runs
        );
        plot::scaling_svg(
            &points,
            "Guest-to-guest throughput against guest pairs",
            &subtitle,
        )
    }

    /// The paths plot (see [`plot::paths_svg`]): throughput of each path, user networking
    /// then passt, then the emulated NIC (its bars are a sliver on this scale: the label
    /// says the figure).
    pub fn paths_svg(&self) -> String {
        let bar = |label: &str, stat: &Option<Stat>| PathBar {
            label: label.to_string(),
            figure: stat.as_ref().map(|s| (s.median, s.min, s.max)),
        };
        let p = &self.paravirt_tcp_mbps;
        let mut bars = vec![
            bar("guest <-> guest", &p.guest_to_guest),
            bar("guest <-> guest, 64K frames", &p.guest_to_guest_64k),
            bar("host -> guest", &p.host_to_guest),
            bar("guest -> host", &p.guest_to_host),
            bar(
                "Linux guest: host -> guest",
                &self.linux_guest_tcp_mbps.host_to_guest,
            ),
            bar(
                "Linux guest: guest -> host",
                &self.linux_guest_tcp_mbps.guest_to_host,
            ),
            bar(
                "passthrough: host -> dd",
                &self.passthrough_tcp_mbps.host_to_driver_domain,
            ),
            bar(
                "passthrough: dd -> host",
                &self.passthrough_tcp_mbps.driver_domain_to_host,
            ),
            bar("passt: host -> guest", &p.passt.host_to_guest),
            bar("passt: guest -> host", &p.passt.guest_to_host),
            bar(
                "passt: passthrough",
                &self.passthrough_tcp_mbps.passt.host_to_driver_domain,
            ),
            bar(
                "emulated: host -> guest",
                &self.emulated_tcp_mbps.host_to_guest,
            ),
            bar(
                "emulated: guest -> guest",
                &self.emulated_tcp_mbps.guest_to_guest,
            ),
        ];
        // The tap group runs only when asked for: its bars only when it did.
        let tap = &self.passthrough_tcp_mbps.tap;
        let tap_bars = [
            bar("tap: host -> guest", &p.tap.host_to_guest),
            bar("tap: guest -> host", &p.tap.guest_to_host),
            bar("tap: passthrough host -> dd", &tap.host_to_driver_domain),
            bar("tap: passthrough dd -> host", &tap.driver_domain_to_host),
        ];
        let tap_ran = tap_bars.iter().any(|b| b.figure.is_some());
        if tap_ran {
            bars.extend(tap_bars);
        }
        let subtitle = format!(
            "2 pCPUs; TCP, one stream, {} s tests, median of {} run(s) with min-max; host paths \
             over user networking (ours, then a stock Linux guest's), then passt, then the \
             emulated NIC (all its tests in one boot){}",
            self.iperf_seconds,
            self.runs,
            if tap_ran { ", then tap" } else { "" },
        );
        plot::paths_svg(&bars, "Throughput per path", &subtitle)
    }

    /// The table `sluice-bench` prints.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, Option<&Stat>, &str)> = vec![
            (
                "paravirt TCP guest -> guest".into(),
                self.paravirt_tcp_mbps.guest_to_guest.as_ref(),
                "Mbit/s",
            ),
            (
                "paravirt TCP 64K frames guest -> guest".into(),
                self.paravirt_tcp_mbps.guest_to_guest_64k.as_ref(),
                "Mbit/s",
            ),
            (
                "paravirt TCP host -> guest".into(),
                self.paravirt_tcp_mbps.host_to_guest.as_ref(),
                "Mbit/s",
            ),
            (
                "paravirt TCP guest -> host".into(),
                self.paravirt_tcp_mbps.guest_to_host.as_ref(),
                "Mbit/s",
            ),
            (
                "stock Linux guest TCP host -> guest".into(),
                self.linux_guest_tcp_mbps.host_to_guest.as_ref(),
                "Mbit/s",
            ),
            (
                "stock Linux guest TCP guest -> host".into(),
                self.linux_guest_tcp_mbps.guest_to_host.as_ref(),
                "Mbit/s",
            ),
            (
                "passthrough TCP host -> driver domain".into(),
                self.passthrough_tcp_mbps.host_to_driver_domain.as_ref(),
                "Mbit/s",
            ),
            (
                "passthrough TCP driver domain -> host".into(),
                self.passthrough_tcp_mbps.driver_domain_to_host.as_ref(),
                "Mbit/s",
            ),
            (
                "passthrough (vLPI, gic 4) host -> dd".into(),
                self.passthrough_tcp_mbps
                    .vlpi
                    .host_to_driver_domain
                    .as_ref(),
                "Mbit/s",
            ),
            (
                "NIC exits per NIC interrupt, vLPI".into(),
                self.nic_interrupt_exits.vlpi.as_ref(),
                "",
            ),
            (
                "NIC exits per NIC interrupt, INTx".into(),
                self.nic_interrupt_exits.intx.as_ref(),
                "",
            ),
            (
                "passt: paravirt TCP host -> guest".into(),
                self.paravirt_tcp_mbps.passt.host_to_guest.as_ref(),
                "Mbit/s",
            ),
            (
                "passt: paravirt TCP guest -> host".into(),
                self.paravirt_tcp_mbps.passt.guest_to_host.as_ref(),
                "Mbit/s",
            ),
            (
                "passt: passthrough host -> driver dom.".into(),
                self.passthrough_tcp_mbps
                    .passt
                    .host_to_driver_domain
                    .as_ref(),
                "Mbit/s",
            ),
            (
                "tap: paravirt TCP host -> guest".into(),
                self.paravirt_tcp_mbps.tap.host_to_guest.as_ref(),
                "Mbit/s",
            ),
            (
                "tap: paravirt TCP guest -> host".into(),
                self.paravirt_tcp_mbps.tap.guest_to_host.as_ref(),
                "Mbit/s",
            ),
            (
                "tap: passthrough host -> driver dom.".into(),
                self.passthrough_tcp_mbps.tap.host_to_driver_domain.as_ref(),
                "Mbit/s",
            ),
            (
                "tap: passthrough driver dom. -> host".into(),
                self.passthrough_tcp_mbps.tap.driver_domain_to_host.as_ref(),
                "Mbit/s",
            ),
            (
                "emulated TCP host -> guest".into(),
                self.emulated_tcp_mbps.host_to_guest.as_ref(),
                "Mbit/s",
            ),
            (
                "emulated TCP guest -> guest".into(),
                self.emulated_tcp_mbps.guest_to_guest.as_ref(),
                "Mbit/s",
            ),
            (
                "memcpy in a guest (one copy)".into(),
                self.memcpy_mbps.as_ref(),
                "Mbit/s",
            ),
            (
                "balloon inflate (give back)".into(),
                self.balloon_mib_per_s.inflate.as_ref(),
                "MiB/s",
            ),
            (
                "balloon deflate (take)".into(),
                self.balloon_mib_per_s.deflate.as_ref(),
                "MiB/s",
            ),
            (
                "driver-domain restart: recovery".into(),
                self.driver_domain_recovery_ms.as_ref(),
                "ms",
            ),
            (
                "restart: TCP gap guest -> guest".into(),
                self.driver_domain_restart_gap_ms.guest_to_guest.as_ref(),
                "ms",
            ),
            (
                "restart: TCP gap host -> guest".into(),
                self.driver_domain_restart_gap_ms.host_to_guest.as_ref(),
                "ms",
            ),
        ];
        for p in &self.scaling {
            rows.push((
                format!(
                    "scaling: {} pair{} at once, sum",
                    p.pairs,
                    if p.pairs == 1 { "" } else { "s" }
                ),
                p.aggregate_tcp_mbps.as_ref(),
                "Mbit/s",
            ));
            if p.pairs > 1 {
                rows.push((
                    format!("scaling: {} pairs, fastest / slowest", p.pairs),
                    p.fastest_over_slowest_pair.as_ref(),
                    "x",
                ));
            }
        }
        for phase in crate::restart::PHASES {
            rows.push((
                format!("restart phase: {}", phase.replace('_', " ")),
                self.driver_domain_restart_phases_ms
                    .get(phase)
                    .and_then(Option::as_ref),
                "ms",
            ));
        }
        for span in crate::restart::SPANS {
            rows.push((
                format!("restart span: {}", span.replace('_', " ")),
                self.driver_domain_restart_spans_ms
                    .get(span)
                    .and_then(Option::as_ref),
                "ms",
            ));
        }
        rows.push((
            "ping RTT guest <-> guest".into(),
            self.ping_rtt_us.guest_to_guest.as_ref(),
            "us",
        ));
        rows.push((
            "ping RTT 1 ms apart, guest <-> guest".into(),
            self.ping_rtt_us.guest_to_guest_1ms_apart.as_ref(),
            "us",
        ));
        rows.push((
            "event channel round trip".into(),
            self.evtchn_roundtrip_us.as_ref(),
            "us",
        ));
        for (load, stat) in &self.bystander_evtchn_us {
            rows.push((
                format!("bystander evtchn rtt, {}", load.replace('_', " ")),
                stat.as_ref(),
                "us",
            ));
        }
        // The other `BENCH` figures: the grant costs (ticks, shown in us), and any further
        // rate a VM prints (like the memcpy app's `shared_copy_mbps`).
        let others: Vec<(String, Option<Stat>, &str)> = self
            .figures
            .values()
            .filter(|f| !matches!(f.name.as_str(), "memcpy_mbps" | "evtchn_roundtrip_ticks"))
            .map(|f| {
                let (label, unit) = match f.unit {
                    Unit::Ticks => (f.name.trim_end_matches("_ticks"), "us"),
                    Unit::MbitPerS => (f.name.trim_end_matches("_mbps"), "Mbit/s"),
                };
                (label.replace('_', " "), f.stat(), unit)
            })
            .collect();
        for (label, stat, unit) in &others {
            rows.push((label.clone(), stat.as_ref(), unit));
        }
        let mut out = format!(
            "{:<40} {:>10} {:>10} {:>10}  {:<7} {:>4}\n",
            "figure", "median", "min", "max", "unit", "runs"
        );
        let mut unsteady = false;
        for (label, stat, unit) in rows {
            out += &match stat {
                Some(s) => {
                    let flag = if s.spread_over_2x {
                        unsteady = true;
                        "  !"
                    } else {
                        ""
                    };
                    format!(
                        "{label:<40} {:>10} {:>10} {:>10}  {unit:<7} {:>4}{flag}\n",
                        number(s.median),
                        number(s.min),
                        number(s.max),
                        s.runs
                    )
                }
                None => format!(
                    "{label:<40} {:>10} {:>10} {:>10}  {unit:<7} {:>4}\n",
                    "-", "-", "-", 0
                ),
            };
        }
        out += &format!("{:<40} {}\n", "QEMU vCPU threads", self.vcpu_pinning);
        let tap = [
            &self.paravirt_tcp_mbps.tap.host_to_guest,
            &self.paravirt_tcp_mbps.tap.guest_to_host,
            &self.passthrough_tcp_mbps.tap.host_to_driver_domain,
            &self.passthrough_tcp_mbps.tap.driver_domain_to_host,
        ];
        if tap.iter().all(|s| s.is_none()) {
            out += &format!("{:<40} not run (only when asked): {TAP_HINT}\n", "tap rows");
        }
        if unsteady {
            out +=
                "! run values' max/min over 2x (`spread_over_2x` in the JSON): the figure moved \
                    a lot between runs (a noisy machine, or a bimodal effect); compare ratios \
                    from one run, or add --runs\n";
        }
        for (label, value) in [
            (
                "ratio guest -> guest / memcpy",
                self.ratios.guest_to_guest_over_memcpy,
            ),
            (
                "ratio 64K frames guest -> guest / memcpy",
                self.ratios.guest_to_guest_64k_over_memcpy,
            ),
            (
                "ratio host -> guest / passthrough",
                self.ratios.host_to_guest_over_passthrough,
            ),
            (
                "ratio guest -> host / passthrough",
                self.ratios.guest_to_host_over_passthrough,
            ),
            (
                "ratio tap: host -> guest / passthrough",
                self.ratios.tap_host_to_guest_over_passthrough,
            ),
            (
                "ratio tap: guest -> host / passthrough",
                self.ratios.tap_guest_to_host_over_passthrough,
            ),
            ("ratio 2 pairs / 1 pair", self.ratios.two_pairs_over_one),
            (
                "bound 2 pairs / 1 pair, idle pCPU time",
                self.ratios.two_pairs_pcpu_bound,
            ),
        ] {
            out += &match value {
                Some(r) => format!("{label:<40} {:>10.4}  ({:.1} %)\n", r, r * 100.0),
                None => format!("{label:<40} {:>10}\n", "-"),
            };
        }
        // Issue 11's goal for the ping: at most 3x the event channel's round trip.
        for (label, value) in [
            (
                "ratio ping / event channel",
                self.ratios.ping_over_evtchn_roundtrip,
            ),
            (
                "ratio ping 1 ms apart / event channel",
                self.ratios.ping_1ms_apart_over_evtchn_roundtrip,
            ),
        ] {
            out += &goal_line(label, value, "<= 3x", |r| r <= 3.0);
        }
        // Issue 11's goal for the host paths: at least 1.2x a stock Linux guest's.
        for (label, value) in [
            (
                "ratio host -> guest / Linux guest",
                self.ratios.host_to_guest_over_linux,
            ),
            (
                "ratio guest -> host / Linux guest",
                self.ratios.guest_to_host_over_linux,
            ),
        ] {
            out += &goal_line(label, value, ">= 1.2x", |r| r >= 1.2);
        }
        out += &format!("{:<40} {BALLOON_ANCHOR}\n", "balloon anchor");
        out += &format!("{:<40} {RESTART_ANCHOR}\n", "restart anchor");
        out += &self.three_way_table();
        out += "reasons (medians over runs; see docs/ARCHITECTURE.md, the bench section):\n";
        for (key, label) in REASON_PATHS {
            let summary = self
                .reasons
                .get(key)
                .filter(|r| !r.is_empty())
                .map(Reasons::summary)
                .unwrap_or_else(|| "-".into());
            out += &format!("  {label:<22} {summary}\n");
        }
        for p in self.scaling.iter().filter(|p| p.pairs > 1) {
            let summary = if p.reasons.is_empty() {
                "-".into()
            } else {
                p.reasons.summary()
            };
            out += &format!("  {:<22} {summary}\n", format!("{} pairs at once", p.pairs));
        }
        let idle = self.bystander_evtchn_us.get("idle").cloned().flatten();
        for (load, stat) in self
            .bystander_evtchn_us
            .iter()
            .filter(|(l, _)| *l != "idle")
        {
            let label = format!("bystander {} / idle", load.replace('_', " "));
            out += &goal_line(&label, ratio(stat, &idle), "< 2x", |r| r < 2.0);
        }
        out
    }
}

impl Results {
    /// The lecture's three methods side by side: each test's throughput and its costs per
    /// data packet (medians over runs), then how many times the emulated NIC's figure
    /// para-virtualization carries.
    pub fn three_way_table(&self) -> String {
        let mut out = format!(
            "three-way (TCP; costs per data packet the receiver got, path VMs summed):\n  \
             {:<13} {:<15} {:>9} {:>10} {:>10} {:>10} {:>8}\n",
            "method", "test", "Mbit/s", "exits/pkt", "ioreqs/pkt", "irqs/pkt", "packets"
        );
        let cell = |s: &Option<Stat>| s.as_ref().map_or("-".to_string(), |s| number(s.median));
        for (method, method_label) in METHODS {
            for (test, test_label) in TESTS {
                // The passthrough "guest" is the NIC's owner, the driver domain.
                let test_label = match (method, test) {
                    ("passthrough", "host_to_guest") => "host -> owner",
                    _ => test_label,
                };
                let mbps = self.throughput(method, test);
                let costs = self.three_way.get(method).and_then(|t| t.get(test));
                let line = match costs {
                    None => format!(
                        "  {method_label:<13} {test_label:<15} {:>9}  (one PCI function, one \
                         owner: no guest pair shares it)\n",
                        "-"
                    ),
                    Some(c) => format!(
                        "  {method_label:<13} {test_label:<15} {:>9} {:>10} {:>10} {:>10} {:>8}\n",
                        cell(&mbps),
                        cell(&c.exits_per_packet),
                        cell(&c.ioreqs_per_packet),
                        cell(&c.interrupts_per_packet),
                        cell(&c.packets)
                    ),
                };
                out += &line;
            }
        }
        for (test, label) in TESTS {
            let r = ratio(
                &self.throughput("paravirt", test),
                &self.throughput("emulated", test),
            );
            out += &match r {
                Some(r) => format!(
                    "  para-virtual / emulated, {label}: {r:.0}x (the lecture expects >= 3x)\n"
                ),
                None => format!("  para-virtual / emulated, {label}: -\n"),
            };
        }
        out
    }

    /// The throughput of `method`'s `test` (keys of [`METHODS`] and [`TESTS`]).
    fn throughput(&self, method: &str, test: &str) -> Option<Stat> {
        match (method, test) {
            ("emulated", "host_to_guest") => self.emulated_tcp_mbps.host_to_guest.clone(),
            ("emulated", "guest_to_guest") => self.emulated_tcp_mbps.guest_to_guest.clone(),
            ("paravirt", "host_to_guest") => self.paravirt_tcp_mbps.host_to_guest.clone(),
            ("paravirt", "guest_to_guest") => self.paravirt_tcp_mbps.guest_to_guest.clone(),
            ("passthrough", "host_to_guest") => {
                self.passthrough_tcp_mbps.host_to_driver_domain.clone()
            }
            _ => None,
        }
    }
}

/// A number for the table: three significant decimals for small values, fewer for large.
/// A table line for a ratio with its goal: `name   1.80x (goal >= 1.2x: met)`, or a dash.
fn goal_line(label: &str, value: Option<f64>, goal: &str, met: impl Fn(f64) -> bool) -> String {
    match value {
        Some(r) => format!(
            "{label:<40} {r:>10.2}x (goal {goal}: {})\n",
            if met(r) { "met" } else { "missed" }
        ),
        None => format!("{label:<40} {:>10}\n", "-"),
    }
}

fn number(x: f64) -> String {
    if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn ratio(a: &Option<Stat>, b: &Option<Stat>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(round_to(a.median / b.median, 6)),
        _ => None,
    }
}

// ---- Running ----------------------------------------------------------------------------------

/// Runs the scenarios (see the module docs). Boot transcripts go to `log_dir`, one file per
/// boot, when given.
pub struct Suite<'a> {
    pub artifacts: &'a Artifacts,
    pub options: Options,
    pub log_dir: Option<PathBuf>,
}

impl Suite<'_> {
    /// Every scenario, `runs` times each; progress on stderr. A run that fails is reported
    /// and recorded in `errors`; the others still count.
    pub fn run(&self) -> Results {
        let mut raw = Raw::default();
        let runs = self.options.runs;
        let secs = self.options.seconds;
        let wants = |group: &str| self.options.runs_group(group);
        for run in (1..=runs).filter(|_| wants("guest_to_guest")) {
            let what = format!("1 pair + memcpy, {secs} s iperf");
            match self.scenario("guest_to_guest", run, &what, |s, r| s.pairs_run(1, true, r)) {
                Ok(PairsRun {
                    figures,
                    samples,
                    reasons,
                    costs,
                }) => {
                    raw.guest_to_guest.push(figures[0]);
                    raw.scaling.entry(1).or_default().push(figures);
                    raw.samples.extend(samples);
                    raw.add_reasons("guest_to_guest", run, reasons);
                    raw.add_costs("paravirt", "guest_to_guest", run, costs);
                }
                Err(e) => raw.errors.push(e),
            }
        }
        for run in (1..=runs).filter(|_| wants("guest_to_guest_64k")) {
            let what = format!("1 pair at mtu {LARGE_FRAME_MTU}, {secs} s iperf");
            match self.scenario("guest_to_guest_64k", run, &what, |s, r| {
                s.pairs_run_mtu(1, false, Some(LARGE_FRAME_MTU), r)
            }) {
                Ok(PairsRun {
                    figures, reasons, ..
                }) => {
                    raw.guest_to_guest_64k.push(figures[0]);
                    raw.add_reasons("guest_to_guest_64k", run, reasons);
                }
                Err(e) => raw.errors.push(e),
            }
        }
        for &pairs in self
            .options
            .pair_counts
            .iter()
            .filter(|&&p| p != 1 && wants("scaling"))
        {
            let key = format!("scaling_{pairs}_pairs");
            for run in 1..=runs {
                let what = format!("{pairs} pairs at once, {secs} s iperf");
                match self.scenario(&key, run, &what, |s, r| s.pairs_run(pairs, false, r)) {
                    Ok(r) => {
                        raw.scaling.entry(pairs).or_default().push(r.figures);
                        match r.reasons {
                            Ok(reasons) => {
                                raw.scaling_reasons.entry(pairs).or_default().push(reasons)
                            }
                            Err(e) => raw.errors.push(format!("{key} run {run}, reasons: {e}")),
                        }
                    }
                    Err(e) => raw.errors.push(e),
                }
            }
        }
        for run in (1..=runs).filter(|_| wants("host_guest")) {
            let what = format!("host iperf3 -> guest, then -R, {secs} s each");
            match self.scenario("host_guest", run, &what, |s, r| {
                s.host_run_on(NicBackend::User, r)
            }) {
                Ok(r) => {
                    let costs = raw.add_host_run(run, r, HOST_PATHS);
                    raw.add_costs("paravirt", "host_to_guest", run, costs);
                }
                Err(e) => raw.errors.push(e),
            }
        }
        if wants("linux") {
            self.linux_run(&mut raw);
        }
        for run in (1..=runs).filter(|_| wants("passthrough")) {
            let what = format!("host iperf3 -> driver domain, then -R, {secs} s each");
            match self.scenario("passthrough", run, &what, Suite::passthrough_run) {
                Ok(PassthroughRun { to: v, from, costs }) => {
                    raw.passthrough.push(v);
                    match from {
                        Some(Ok(v)) => raw.passthrough_from.push(v),
                        Some(Err(e)) => raw.errors.push(format!(
                            "passthrough (driver domain -> host) run {run}: {e}"
                        )),
                        None => {}
                    }
                    match Suite::nic_exits(&costs) {
                        Ok(x) => raw.nic_exits_intx.push(x),
                        Err(e) => raw.errors.push(format!("passthrough run {run}: {e}")),
                    }
                    raw.add_costs("passthrough", "host_to_guest", run, costs);
                }
                Err(e) => raw.errors.push(e),
            }
        }
        for run in (1..=runs).filter(|_| wants("passthrough_vlpi")) {
            let what = format!("host iperf3 -> driver domain, NIC on vLPIs (gic 4), {secs} s");
            match self.scenario("passthrough_vlpi", run, &what, |s, r| {
                s.passthrough_run_gic(NicBackend::User, 4, r)
            }) {
                Ok((v, costs)) => {
                    raw.vlpi_passthrough.push(v);
                    match Suite::nic_exits(&costs) {
                        Ok(x) => raw.nic_exits_vlpi.push(x),
                        Err(e) => raw.errors.push(format!("passthrough_vlpi run {run}: {e}")),
                    }
                }
                Err(e) => raw.errors.push(e),
            }
        }
        for run in (1..=runs).filter(|_| wants("host_guest_passt")) {
            for reverse in [false, true] {
                let key = if reverse {
                    "host_guest_passt (host -> guest)"
                } else {
                    "host_guest_passt (guest -> host)"
                };
                let what = format!(
                    "guest iperf3 client{} -> host server over passt, {secs} s",
                    if reverse { " -R" } else { "" }
                );
                match self.scenario(key, run, &what, |s, r| {
                    s.guest_client_run(NicBackend::Passt, reverse, r)
                }) {
                    Ok((v, reasons)) => {
                        let (figures, path) = if reverse {
                            (&mut raw.passt_host_to_guest, "passt_host_to_guest")
                        } else {
                            (&mut raw.passt_guest_to_host, "passt_guest_to_host")
                        };
                        figures.push(v);
                        raw.add_reasons(path, run, reasons);
                    }
                    Err(e) => raw.errors.push(e),
                }
            }
        }
        for run in (1..=runs).filter(|_| wants("passthrough_passt")) {
            let what = format!("host iperf3 -> driver domain over passt, {secs} s");
            match self.scenario("passthrough_passt", run, &what, |s, r| {
                s.passthrough_run_on(NicBackend::Passt, r)
            }) {
                Ok((v, _)) => raw.passt_passthrough.push(v),
                Err(e) => raw.errors.push(e),
            }
        }
        if wants("tap") {
            self.tap_runs(&mut raw);
        }
        for run in (1..=runs).filter(|_| wants("ping")) {
            let what = "20 pings 50 ms apart, then 100 pings 1 ms apart";
            match self.scenario("ping", run, what, Suite::ping_run) {
                Ok(PingRun { spaced, rapid }) => {
                    raw.ping_rtts_us.push(spaced);
                    raw.ping_1ms_apart_rtts_us.push(rapid);
                }
                Err(e) => raw.errors.push(e),
            }
        }
        let rounds = self.options.rounds;
        for (key, toml) in [
            ("evtchn", evtchn_topology(rounds)),
            ("grant", grant_topology(rounds)),
        ] {
            for run in (1..=runs).filter(|_| wants(key)) {
                let what = format!("{rounds} rounds");
                match self.scenario(key, run, &what, |s, r| s.bench_run(key, &toml, r)) {
                    Ok(samples) => raw.samples.extend(samples),
                    Err(e) => raw.errors.push(e),
                }
            }
        }
        for (load, _) in BYSTANDER_LOADS {
            let key = format!("bystander_{load}");
            for run in (1..=runs).filter(|_| wants("bystander")) {
                let what = format!("{rounds} evtchn rounds beside {load}");
                match self.scenario(&key, run, &what, |s, r| s.bystander_run(load, r)) {
                    Ok(Micros(us)) => raw.bystander_us.entry(load.into()).or_default().push(us),
                    Err(e) => raw.errors.push(e),
                }
            }
        }
        if wants("emulated") {
            let seconds = secs;
            let what = format!(
                "{runs} guest -> emulated guest, then {runs} host -> emulated guest, {seconds} s \
                 each, in one boot"
            );
            match self.scenario("emulated", 1, &what, |s, _| s.emulated_run()) {
                Ok(r) => {
                    raw.emulated_guest_to_guest = r.guest_to_guest;
                    raw.emulated_host_to_guest = r.host_to_guest;
                    for (test, costs) in r.costs {
                        for (run, c) in costs.into_iter().enumerate() {
                            raw.add_costs("emulated", test, run + 1, c);
                        }
                    }
                    raw.errors.extend(r.errors);
                }
                Err(e) => raw.errors.push(e),
            }
        }
        for run in (1..=runs).filter(|_| wants("balloon")) {
            let what = format!("{BALLOON_MIB} MiB from one guest to another");
            match self.scenario("balloon", run, &what, Suite::balloon_run) {
                Ok(BalloonRun { inflate, deflate }) => {
                    raw.balloon_inflate.push(inflate);
                    raw.balloon_deflate.push(deflate);
                }
                Err(e) => raw.errors.push(e),
            }
        }
        for run in (1..=runs).filter(|_| wants("restart")) {
            let what =
                format!("driver domain panics under 2 streams of {RESTART_STREAM_SECONDS} s");
            match self.scenario("restart", run, &what, Suite::restart_run) {
                Ok(r) => {
                    raw.restart_recovery.push(r.recovered_ms as f64);
                    for (phase, ms) in r.phases_ms {
                        raw.restart_phases.entry(phase).or_default().push(ms);
                    }
                    for (span, ms) in r.spans_ms {
                        raw.restart_spans.entry(span).or_default().push(ms);
                    }
                    for (key, gap) in r.gaps {
                        match gap {
                            Ok(ms) => raw.restart_gaps.entry(key).or_default().push(ms as f64),
                            Err(e) => raw.errors.push(format!("restart run {run}, {key}: {e}")),
                        }
                    }
                }
                Err(e) => raw.errors.push(e),
            }
        }
        Results::from_raw(&self.options, raw)
    }

    /// One driver-domain restart under load (see [`restart_topology`]): the recovery and each
    /// stream's receiver's longest data gap, as the demo's check reads them.
    fn restart_run(&self, run: usize) -> Result<RestartRun, String> {
        let topology = parse(&restart_topology())?;
        let host = HostIperfs::plan(&topology, RESTART_STREAM_SECONDS)?;
        let received = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let closing = Closing::default();
        let stop = |line: &str| {
            if let Some(Ok(result)) = parse_result_line(line) {
                if let Some(vm) = result.vm.filter(|_| result.receiver) {
                    received.borrow_mut().insert(vm);
                }
            }
            let done = host.done()
                && RESTART_RECEIVERS
                    .iter()
                    .all(|(_, vm)| received.borrow().contains(*vm));
            closing.stop(done, line)
        };
        let timeout = Duration::from_secs(150);
        let booted = self.boot_once("restart", run, &topology, timeout, Some(&host), &stop)?;
        if let Some(problem) = booted.problems().into_iter().next() {
            return Err(booted.failure(&format!("a VM failed: {problem}")));
        }
        let recovery =
            crate::restart::recovery(&topology, &booted.boot).map_err(|e| booted.failure(&e))?;
        let gaps = RESTART_RECEIVERS
            .iter()
            .map(|&(key, vm)| {
                let gap = recovery
                    .gaps_ms
                    .get(vm)
                    .copied()
                    .ok_or_else(|| booted.failure(&format!("{vm} saw no data frames again")));
                (key, gap)
            })
            .collect();
        Ok(RestartRun {
            recovered_ms: recovery.recovered_ms,
            gaps,
            phases_ms: recovery.phases_ms,
            spans_ms: recovery.spans_ms,
        })
    }

    /// The `emulated` boot (see [`emulated_topology`]): the para-virtual client's tests run
    /// first; the host's start once it has reported. Each test's figure is the emulated
    /// guest's receiver line; its costs come from the accounting the emulated guest asks for
    /// around each of its tests and its received frames between its marks.
    fn emulated_run(&self) -> Result<EmulatedRun, String> {
        let tests = self.options.runs;
        let seconds = self.options.seconds;
        let topology = parse(&emulated_topology(seconds, tests))?;
        let emu_ip: std::net::Ipv4Addr = EMU_IP.parse().map_err(|_| "bad EMU_IP")?;
        let host = HostSeries::new(seconds, tests);
        let forward = HostForward::tcp(host.port, emu_ip, IPERF_PORT);
        let start_host = |line: &str| {
            if line.starts_with("[pv] REPORT") {
                host.start();
            }
        };
        let emu_done = std::cell::Cell::new(false);
        let host_done_at = std::cell::Cell::new(None);
        let stop = |line: &str| {
            if line.starts_with("[emu] REPORT") {
                emu_done.set(true);
            }
            if line.contains("killing VM ") {
                return true;
            }
            if !host.done() {
                return false;
            }
            // Past the host's tests: until the emulated guest has reported, at most a while.
            let at = host_done_at.get().unwrap_or_else(Instant::now);
            host_done_at.set(Some(at));
            emu_done.get() || at.elapsed() >= Closing::LINGER
        };
        let per_test = 2 * u64::from(seconds) + 60;
        let timeout = Duration::from_secs(120 + 2 * tests as u64 * per_test);
        let booted = self.boot_with(
            "emulated",
            1,
            &topology,
            timeout,
            BootNetwork {
                forwards: vec![forward],
                tap: None,
            },
            &start_host,
            &stop,
        )?;
        let boot = &booted.boot;
        if let Some(problem) = booted.problems().into_iter().next() {
            // A failed test is only that test's loss; anything else spoils the boot.
            if !problem.contains(console::IPERF_FAILED) && !problem.contains("REPORT fail") {
                return Err(booted.failure(&format!("a VM failed: {problem}")));
            }
        }
        let served = bench::served_tests(boot.vm_lines("emu"))?;
        let mut out = EmulatedRun::default();
        for test in &served {
            let (key, vms): (&'static str, &[&str]) = if test.peer == PV_IP {
                ("guest_to_guest", &["emu", "pv", DRIVER_DOMAIN])
            } else {
                ("host_to_guest", &["emu", DRIVER_DOMAIN])
            };
            let Some(result) = &test.result else {
                out.errors.push(format!(
                    "emulated {key}: test {} of the emulated guest did not finish",
                    test.n
                ));
                continue;
            };
            match key {
                "guest_to_guest" => out.guest_to_guest.push(result.mbps),
                _ => out.host_to_guest.push(result.mbps),
            }
            let costs = received_frames(boot, "emu", test.n)
                .and_then(|packets| test_costs(boot, test.n, vms, packets));
            out.costs.entry(key).or_default().push(costs);
        }
        for (key, got) in [
            ("guest_to_guest", out.guest_to_guest.len()),
            ("host_to_guest", out.host_to_guest.len()),
        ] {
            if got < tests {
                out.errors.push(booted.failure(&format!(
                    "emulated {key}: {got} of {tests} test(s) gave a figure{}",
                    host.failures()
                )));
            }
        }
        if out.guest_to_guest.is_empty() && out.host_to_guest.is_empty() {
            return Err(booted.failure("no test through the emulated NIC finished"));
        }
        Ok(out)
    }

    /// One balloon move: the giver's and the taker's MiB per second.
    fn balloon_run(&self, run: usize) -> Result<BalloonRun, String> {
        let topology = parse(&balloon_topology())?;
        let moved = |vm: &str, prefix: &str, line: &str| {
            line.strip_prefix(&format!("[{vm}] "))
                .and_then(|l| balloon::parse_moved(l, prefix))
        };
        let gave = std::cell::Cell::new(false);
        let stop = |line: &str| {
            if moved("giver", balloon::GAVE, line).is_some() {
                gave.set(true);
            }
            gave.get() && moved("taker", balloon::TOOK, line).is_some()
        };
        let booted = self.boot_once(
            "balloon",
            run,
            &topology,
            Duration::from_secs(120),
            None,
            &stop,
        )?;
        if let Some(problem) = booted.problems().into_iter().next() {
            return Err(booted.failure(&format!("a VM failed: {problem}")));
        }
        let rate = |vm: &str, prefix: &str| -> Result<f64, String> {
            let (mib, ms) = booted
                .boot
                .vm_lines(vm)
                .find_map(|l| balloon::parse_moved(l, prefix))
                .ok_or_else(|| booted.failure(&format!("{vm} printed no '{prefix}...' line")))?;
            if mib != BALLOON_MIB || ms == 0 {
                return Err(booted.failure(&format!(
                    "{vm} moved {mib} MiB in {ms} ms, not {BALLOON_MIB} MiB in a measurable time"
                )));
            }
            Ok(round_to(mib as f64 * 1000.0 / ms as f64, 3))
        };
        Ok(BalloonRun {
            inflate: rate("giver", balloon::GAVE)?,
            deflate: rate("taker", balloon::TOOK)?,
        })
    }

    /// The bystander ping-pong beside `load`: the round trip's median in us. The boot stops
    /// once the ping-pong has reported (the loads would run on).
    fn bystander_run(&self, load: &str, run: usize) -> Result<Micros, String> {
        let toml = bystander_topology(self.options.rounds, load)
            .ok_or_else(|| format!("no bystander load {load}"))?;
        let topology = parse(&toml)?;
        let reported = |line: &str| line.contains("[pinger] BENCH evtchn_roundtrip_ticks");
        let key = format!("bystander_{load}");
        let booted = self.boot_once(
            &key,
            run,
            &topology,
            Duration::from_secs(300),
            None,
            &reported,
        )?;
        if let Some(problem) = booted.problems().into_iter().next() {
            return Err(booted.failure(&format!("a VM failed: {problem}")));
        }
        let samples = bench::collect(&booted.boot.lines)?;
        let sample = samples
            .iter()
            .find(|s| s.vm == "pinger" && s.name == "evtchn_roundtrip_ticks" && s.freq_hz > 0)
            .ok_or_else(|| booted.failure("the ping-pong did not report its round trip"))?;
        Ok(Micros(sample.median as f64 * 1e6 / sample.freq_hz as f64))
    }

    /// Runs one scenario run with progress lines; the error names the scenario and run.
    fn scenario<T: Describe>(
        &self,
        key: &str,
        run: usize,
        what: &str,
        f: impl FnOnce(&Self, usize) -> Result<T, String>,
    ) -> Result<T, String> {
        let runs = self.options.runs;
        eprintln!("bench: {key} run {run}/{runs} ({what}) ...");
        let start = Instant::now();
        let result = f(self, run);
        let took = start.elapsed().as_secs_f64();
        match &result {
            Ok(v) => eprintln!(
                "bench: {key} run {run}/{runs}: {} ({took:.1} s)",
                v.describe()
            ),
            Err(e) => eprintln!("bench: {key} run {run}/{runs} FAILED ({took:.1} s): {e}"),
        }
        result.map_err(|e| format!("{key} run {run}: {e}"))
    }

    /// Boots `topology`, with the host's iperf3 clients of `host` and stopping at the first
    /// line for which `stop` says so (or a `REPORT fail`, or a kill); saves the transcript.
    fn boot_once(
        &self,
        key: &str,
        run: usize,
        topology: &Topology,
        timeout: Duration,
        host: Option<&HostIperfs>,
        stop: &dyn Fn(&str) -> bool,
    ) -> Result<Booted, String> {
        self.boot_once_in(key, run, topology, timeout, (host, None), stop)
    }

    /// [`Suite::boot_once`], QEMU in the namespace of `tap` when given (a topology with
    /// `nic = "tap"`, whose host clients run there too).
    fn boot_once_in(
        &self,
        key: &str,
        run: usize,
        topology: &Topology,
        timeout: Duration,
        (host, tap): (Option<&HostIperfs>, Option<&TapNet>),
        stop: &dyn Fn(&str) -> bool,
    ) -> Result<Booted, String> {
        let on_line = |line: &str| {
            if let Some(host) = host {
                host.on_line(line);
            }
        };
        let forwards = host.map(HostIperfs::forwards).unwrap_or_default();
        let stop_when =
            |line: &str| stop(line) || line.contains("REPORT fail") || line.contains("killing VM ");
        let network = BootNetwork { forwards, tap };
        self.boot_with(key, run, topology, timeout, network, &on_line, &stop_when)
    }

    /// A tap network for a topology with `nic = "tap"` (made here so that the host's clients
    /// can run in its namespace; dropped, and so deleted, after the boot), else none.
    fn tap_for(topology: &Topology) -> Result<Option<TapNet>, String> {
        match topology.machine.nic {
            Some(NicBackend::Tap) => TapNet::create().map(Some),
            _ => Ok(None),
        }
    }

    /// [`Suite::boot_once`] with any port forwards and any `on_line`, stopping only where
    /// `stop` says (not at a `REPORT fail` of its own accord).
    #[allow(clippy::too_many_arguments)]
    fn boot_with(
        &self,
        key: &str,
        run: usize,
        topology: &Topology,
        timeout: Duration,
        network: BootNetwork,
        on_line: &dyn Fn(&str),
        stop: &dyn Fn(&str) -> bool,
    ) -> Result<Booted, String> {
        let boot = boot(
            topology,
            self.artifacts,
            &BootOptions {
                timeout,
                host_forwards: network.forwards,
                tap: network.tap,
                on_line: Some(on_line),
                stop_when: Some(stop),
                ..BootOptions::default()
            },
        )?;
        let log = self.log_dir.as_ref().and_then(|dir| {
            let path = dir.join(format!("{key}-run{run}.log"));
            std::fs::create_dir_all(dir).ok()?;
            std::fs::write(&path, boot.transcript() + "\n").ok()?;
            Some(path)
        });
        Ok(Booted { boot, log })
    }

    /// `pairs` iperf3 pairs (and the memcpy guest): each pair's receiver figure, in pair
    /// order, the `BENCH` samples, and pair 1's reasons and costs per packet.
    fn pairs_run(&self, pairs: usize, memcpy: bool, run: usize) -> Result<PairsRun, String> {
        self.pairs_run_mtu(pairs, memcpy, None, run)
    }

    /// [`Suite::pairs_run`] with the pair guests at IP MTU `mtu` (the scenario
    /// `guest_to_guest_64k` when given).
    fn pairs_run_mtu(
        &self,
        pairs: usize,
        memcpy: bool,
        mtu: Option<usize>,
        run: usize,
    ) -> Result<PairsRun, String> {
        let toml = pairs_topology_mtu(pairs, self.options.seconds, memcpy, mtu);
        let topology = parse(&toml)?;
        // Servers that printed their result (each serves one test).
        let done = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let memcpy_seen = std::cell::Cell::new(!memcpy);
        // Only the `guest_to_guest` boot has a memcpy guest to keep it going after the tests:
        // for the reasons the others wait for the driver domain's lines of every pair guest's
        // port (the last of a port's lines counts `rx_held`), which come after the guests' last
        // marks, when they stop.
        let ports_wanted = if memcpy { 0 } else { 2 * pairs };
        let ports_seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let driver_domain_line = format!("[{DRIVER_DOMAIN}] ");
        let stop = |line: &str| {
            if line.starts_with(&driver_domain_line) {
                if let Some(Ok(port)) = bench::parse_backend_line(line) {
                    if port.counters.contains_key("rx_held") {
                        ports_seen.borrow_mut().insert(port.guest);
                    }
                }
            }
            if let Some(Ok(result)) = parse_result_line(line) {
                if let Some(vm) = result.vm.filter(|vm| vm.starts_with("server")) {
                    if result.receiver && !result.reverse {
                        done.borrow_mut().insert(vm);
                    }
                }
            }
            if line.contains("BENCH memcpy_mbps") {
                memcpy_seen.set(true);
            }
            done.borrow().len() >= pairs
                && memcpy_seen.get()
                && ports_seen.borrow().len() >= ports_wanted
        };
        let timeout =
            Duration::from_secs(90 + 2 * u64::from(self.options.seconds) + 20 * pairs as u64);
        let key = if mtu.is_some() {
            "guest_to_guest_64k".to_string()
        } else if memcpy {
            "guest_to_guest".to_string()
        } else {
            format!("scaling_{pairs}_pairs")
        };
        let booted = self.boot_once(&key, run, &topology, timeout, None, &stop)?;
        let boot = &booted.boot;
        let mut figures = Vec::new();
        for i in 1..=pairs {
            let server = format!("server{i}");
            match receiver_figure(boot, &server, false)? {
                Some(line) => figures.push(line.mbps),
                None => {
                    let client = boot
                        .vm_lines(&format!("client{i}"))
                        .find(|l| l.contains(console::IPERF_RESULT))
                        .map(|l| format!(" (client{i} said: {l})"))
                        .unwrap_or_default();
                    return Err(booted.failure(&format!(
                        "{server} printed no iperf receiver result{client}"
                    )));
                }
            }
        }
        let samples = bench::collect(&boot.lines)?;
        if memcpy && !samples.iter().any(|s| s.name == "memcpy_mbps") {
            return Err(booted.failure("the memcpy guest printed no BENCH memcpy_mbps line"));
        }
        if let Some(problem) = booted.problems().into_iter().next() {
            return Err(booted.failure(&format!("a VM failed: {problem}")));
        }
        // The reasons of pair 1 (the guest_to_guest boot asks for the accounting).
        // The reasons of all pairs together (the `guest_to_guest` boots' is the one pair):
        // client1 asks for the accounting around its test, which the others' tests overlap.
        let clients: Vec<String> = (1..=pairs).map(|i| format!("client{i}")).collect();
        let servers: Vec<String> = (1..=pairs).map(|i| format!("server{i}")).collect();
        let reasons = servers
            .iter()
            .map(|server| {
                result_bytes(boot, server, true, false)
                    .ok_or_else(|| format!("{server} printed no receiver bytes"))
            })
            .sum::<Result<u64, String>>()
            .and_then(|payload| {
                let clients: Vec<&str> = clients.iter().map(String::as_str).collect();
                let servers: Vec<&str> = servers.iter().map(String::as_str).collect();
                path_reasons(boot, &topology, 1, &clients, &servers, payload)
            })
            .map(|mut r| {
                if pairs > 1 {
                    r.pcpu_share = shares_by_role(&r.pcpu_share);
                }
                r
            });
        // Tagged by client1's test 1; the packets are server1's in its test 1.
        let costs = received_frames(boot, "server1", 1).and_then(|packets| {
            test_costs(boot, 1, &["client1", "server1", DRIVER_DOMAIN], packets)
        });
        Ok(PairsRun {
            figures,
            samples,
            reasons,
            costs,
        })
    }

    /// The host's iperf3 against a guest's server: host -> guest, then guest -> host, the NIC
    /// on `nic` (user networking, or a tap device whose namespace the host's client runs in).
    fn host_run_on(&self, nic: NicBackend, run: usize) -> Result<HostRun, String> {
        let key = match nic {
            NicBackend::User => "host_guest".to_string(),
            ref other => format!("host_guest_{}", other.as_str()),
        };
        let topology = parse(&host_topology_on(nic, self.options.seconds))?;
        let tap = Suite::tap_for(&topology)?;
        let host = HostIperfs::plan_in(
            &topology,
            self.options.seconds,
            tap.as_ref().map(TapNet::netns),
        )?;
        let closing = Closing::default();
        let stop = |line: &str| closing.stop(host.done(), line);
        let timeout = Duration::from_secs(60 + 2 * (u64::from(self.options.seconds) + 60));
        let booted = self.boot_once_in(
            &key,
            run,
            &topology,
            timeout,
            (Some(&host), tap.as_ref()),
            &stop,
        )?;
        let client = host.get("guest1").ok_or("no host iperf3 for guest1")?;
        let figure = |direction: Direction| -> Result<f64, String> {
            let run = client.outcome(direction).map_err(|e| booted.failure(&e))?;
            if run.receiver_mbps > 0.0 {
                return Ok(run.receiver_mbps);
            }
            if direction == Direction::FromVm {
                return Err(booted.failure("the host's iperf3 received nothing"));
            }
            // The host's JSON lacks the guest's count (the server's results): the guest's own
            // receiver line.
            match receiver_figure(&booted.boot, "guest1", false)? {
                Some(line) => Ok(line.mbps),
                None => {
                    Err(booted.failure("no receiver figure from the host's iperf3 or the guest"))
                }
            }
        };
        let boot = &booted.boot;
        let reasons = |test: u64, receiver: bool| {
            // Test 1: the guest receives; test 2 (-R): it sends.
            let (sender, receiver_vm): (&[&str], &[&str]) = if receiver {
                (&[], &["guest1"])
            } else {
                (&["guest1"], &[])
            };
            result_bytes(boot, "guest1", receiver, !receiver)
                .ok_or_else(|| format!("guest1 printed no byte count of test {test}"))
                .and_then(|payload| {
                    path_reasons(boot, &topology, test, sender, receiver_vm, payload)
                })
        };
        let to_costs = received_frames(boot, "guest1", 1)
            .and_then(|packets| test_costs(boot, 1, &["guest1", DRIVER_DOMAIN], packets));
        Ok(HostRun {
            to: figure(Direction::ToVm),
            from: figure(Direction::FromVm),
            to_reasons: reasons(1, true),
            from_reasons: reasons(2, false),
            to_costs,
        })
    }

    /// The `tap` group: the `host_guest` and `passthrough` boots (both ways) with the NIC on a
    /// tap device, `runs` of each. Where the machine cannot have one (not root, no
    /// /dev/net/tun) the group says why, records it as an error, and the bench goes on.
    fn tap_runs(&self, raw: &mut Raw) {
        if let Err(why) = crate::tap::tap_support() {
            eprintln!("bench: tap SKIPPED: {why}");
            raw.errors.push(format!("tap: {why}"));
            return;
        }
        let (runs, secs) = (self.options.runs, self.options.seconds);
        for run in 1..=runs {
            let what =
                format!("host iperf3 in the tap's namespace -> guest, then -R, {secs} s each");
            match self.scenario("host_guest_tap", run, &what, |s, r| {
                s.host_run_on(NicBackend::Tap, r)
            }) {
                // The three-way table's costs are user networking's.
                Ok(r) => {
                    let _costs = raw.add_host_run(run, r, TAP_HOST_PATHS);
                }
                Err(e) => raw.errors.push(e),
            }
        }
        for run in 1..=runs {
            let what = format!(
                "host iperf3 in the tap's namespace -> driver domain, then -R, {secs} s each"
            );
            match self.scenario("passthrough_tap", run, &what, |s, r| {
                s.passthrough_run_with(NicBackend::Tap, 3, true, r)
            }) {
                Ok(PassthroughRun { to, from, .. }) => {
                    raw.tap_passthrough.push(to);
                    match from {
                        Some(Ok(v)) => raw.tap_passthrough_from.push(v),
                        Some(Err(e)) => raw.errors.push(format!(
                            "passthrough_tap (driver domain -> host) run {run}: {e}"
                        )),
                        None => {}
                    }
                }
                Err(e) => raw.errors.push(e),
            }
        }
    }

    /// The `linux` group: one boot of the stock Linux guest, `runs` host tests each way (see
    /// [`crate::linux_guest::measure`]). Without the image the group says so and the bench goes
    /// on.
    fn linux_run(&self, raw: &mut Raw) {
        let (runs, secs) = (self.options.runs, self.options.seconds);
        eprintln!(
            "bench: linux (one boot of the stock Linux guest; host iperf3 -> guest, then -R, \
             {runs} x each, {secs} s) ..."
        );
        let start = Instant::now();
        let measured = match crate::linux_guest::measure(secs, runs) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("bench: linux FAILED: {e}");
                raw.errors.push(format!("linux: {e}"));
                return;
            }
        };
        if let Some(dir) = &self.log_dir {
            let _ = std::fs::create_dir_all(dir);
            let _ = std::fs::write(dir.join("linux.log"), measured.boot.transcript() + "\n");
        }
        let mut figures =
            |tests: &[Result<crate::iperf::HostRun, String>], into: &mut Vec<f64>, way: &str| {
                for (i, test) in tests.iter().enumerate() {
                    match test {
                        Ok(r) if r.receiver_mbps > 0.0 => into.push(r.receiver_mbps),
                        Ok(_) => raw
                            .errors
                            .push(format!("linux {way} test {}: nothing received", i + 1)),
                        Err(e) => raw.errors.push(format!(
                            "linux {way} test {}: {}",
                            i + 1,
                            measured.failure(e)
                        )),
                    }
                }
                if tests.len() < runs {
                    raw.errors.push(format!(
                        "linux {way}: {} of {runs} tests ran; {}",
                        tests.len(),
                        measured.failure("the boot ended early")
                    ));
                }
            };
        let (mut to, mut from) = (Vec::new(), Vec::new());
        figures(&measured.to_guest, &mut to, "host_to_guest");
        figures(&measured.from_guest, &mut from, "guest_to_host");
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let kernel = crate::linux_guest::kernel_package(&measured.packages)
            .map_or("?".to_string(), |(p, v)| format!("{p} {v}"));
        eprintln!(
            "bench: linux: host -> guest {} Mbit/s, guest -> host {} Mbit/s ({kernel}; ready after \
             {:.1} s; {:.1} s in all)",
            list(&to),
            list(&from),
            measured.ready_after.map_or(f64::NAN, |d| d.as_secs_f64()),
            start.elapsed().as_secs_f64()
        );
        raw.linux_host_to_guest.extend(to);
        raw.linux_guest_to_host.extend(from);
    }

    /// The guest's iperf3 client against the host's server, the NIC on `nic`: the receiver's
    /// figure (the host server's when the guest sends, the guest's with `reverse`).
    fn guest_client_run(
        &self,
        nic: NicBackend,
        reverse: bool,
        run: usize,
    ) -> Result<(f64, Result<RunReasons, String>), String> {
        let seconds = self.options.seconds;
        let timeout = Duration::from_secs(90 + 2 * u64::from(seconds));
        let server = HostServer::start(timeout + Duration::from_secs(10));
        let topology = parse(&guest_client_topology(
            nic.clone(),
            seconds,
            server.port(),
            reverse,
        ))?;
        // Not at the guest's result line: the host server may still be finishing the exchange
        // over the control connection, which killing QEMU (and passt) would break. The driver
        // domain's counters lines keep coming, so this is looked at again.
        let result_seen = std::cell::Cell::new(false);
        let closing = Closing::default();
        let stop = |line: &str| {
            if line.starts_with("[guest1] ") && parse_result_line(line).is_some_and(|r| r.is_ok()) {
                result_seen.set(true);
            }
            let done = result_seen.get() && (reverse || server.is_finished());
            line.starts_with("[guest1] REPORT fail") || closing.stop(done, line)
        };
        let key = format!(
            "host_guest_{}_{}",
            nic.as_str(),
            if reverse { "reverse" } else { "forward" }
        );
        let booted = self.boot_once(&key, run, &topology, timeout, None, &stop)?;
        if let Some(problem) = booted.problems().into_iter().next() {
            return Err(booted.failure(&format!("a VM failed: {problem}")));
        }
        // The guest receives with -R, else sends; its own byte count is the payload.
        let reasons = result_bytes(&booted.boot, "guest1", reverse, reverse)
            .ok_or_else(|| "guest1 printed no byte count".to_string())
            .and_then(|payload| {
                let (sender, receiver): (&[&str], &[&str]) = if reverse {
                    (&[], &["guest1"])
                } else {
                    (&["guest1"], &[])
                };
                path_reasons(&booted.boot, &topology, 1, sender, receiver, payload)
            });
        if reverse {
            // The server is done once the guest has its result; it only needs reaping.
            let _ = server.finish();
            return match receiver_figure(&booted.boot, "guest1", true)? {
                Some(line) => Ok((line.mbps, reasons)),
                None => Err(booted.failure("guest1 printed no receiver result")),
            };
        }
        let host = server.finish().map_err(|e| booted.failure(&e))?;
        if host.receiver_mbps > 0.0 {
            Ok((host.receiver_mbps, reasons))
        } else {
            Err(booted.failure("the host's iperf3 server received nothing"))
        }
    }

    /// The host's iperf3 against the driver domain's own server (no split driver on the way).
    fn passthrough_run(&self, run: usize) -> Result<PassthroughRun, String> {
        self.passthrough_run_with(NicBackend::User, 3, true, run)
    }

    /// [`Suite::passthrough_run`] with the NIC on `nic`, host -> driver domain only: the figure
    /// and the costs per packet.
    fn passthrough_run_on(
        &self,
        nic: NicBackend,
        run: usize,
    ) -> Result<(f64, Result<PacketCosts, String>), String> {
        let r = self.passthrough_run_with(nic, 3, false, run)?;
        Ok((r.to, r.costs))
    }

    /// [`Suite::passthrough_run_on`] on a machine with GIC version `gic`.
    fn passthrough_run_gic(
        &self,
        nic: NicBackend,
        gic: u8,
        run: usize,
    ) -> Result<(f64, Result<PacketCosts, String>), String> {
        let r = self.passthrough_run_with(nic, gic, false, run)?;
        Ok((r.to, r.costs))
    }

    /// The host's iperf3 against the driver domain's own server, the NIC on `nic` and the GIC
    /// at version `gic`; with `both`, then `-R` (the driver domain sends). The costs per packet
    /// are the first test's (the driver domain's payload over [`bench::NIC_MSS`]: it prints no
    /// per-test frame count).
    fn passthrough_run_with(
        &self,
        nic: NicBackend,
        gic: u8,
        both: bool,
        run: usize,
    ) -> Result<PassthroughRun, String> {
        let key = match (&nic, gic) {
            (NicBackend::User, 4) => "passthrough_vlpi".to_string(),
            (NicBackend::User, _) => "passthrough".to_string(),
            (other, _) => format!("passthrough_{}", other.as_str()),
        };
        let topology = parse(&passthrough_topology_with(
            nic,
            gic,
            self.options.seconds,
            both,
        ))?;
        let tap = Suite::tap_for(&topology)?;
        let host = HostIperfs::plan_in(
            &topology,
            self.options.seconds,
            tap.as_ref().map(TapNet::netns),
        )?;
        // Past the host's tests, until the driver domain's accounting report closing its first
        // test and a NIC counters line after it (its server may end the test after the host's
        // client has its result), at most a while.
        let reported = std::cell::Cell::new(false);
        let counted = std::cell::Cell::new(false);
        let done_at = std::cell::Cell::new(None);
        let stop = |line: &str| {
            if line.starts_with("[hv] accounting 3 idle_us=") {
                reported.set(true);
            } else if reported.get() && bench::nic_interrupts(line).is_some() {
                counted.set(true);
            }
            if !host.done() {
                return false;
            }
            let at = done_at.get().unwrap_or_else(Instant::now);
            done_at.set(Some(at));
            counted.get() || at.elapsed() >= Closing::LINGER
        };
        let tests = if both { 2 } else { 1 };
        let timeout = Duration::from_secs(60 + tests * (u64::from(self.options.seconds) + 60));
        let booted = self.boot_once_in(
            &key,
            run,
            &topology,
            timeout,
            (Some(&host), tap.as_ref()),
            &stop,
        )?;
        let client = host
            .get(DRIVER_DOMAIN)
            .ok_or("no host iperf3 for the driver domain")?;
        let forward = client
            .outcome(Direction::ToVm)
            .map_err(|e| booted.failure(&e))?;
        // The NIC's INTx goes to the owner through a hardware list register, which the
        // hypervisor's `virqs` does not count: the driver domain's own count is added.
        let costs = result_bytes(&booted.boot, DRIVER_DOMAIN, true, false)
            .ok_or_else(|| "the driver domain printed no receiver bytes".to_string())
            .and_then(|payload| {
                let packets = payload / bench::NIC_MSS;
                let mut costs = test_costs(&booted.boot, 1, &[DRIVER_DOMAIN], packets)?;
                let irqs = bench::nic_interrupts_between(&booted.boot.lines, 2, 3)
                    .ok_or("no NIC counters line after the test")?;
                costs.interrupts = round_to(costs.interrupts + irqs as f64 / packets as f64, 4);
                costs.nic_interrupts = Some(irqs);
                Ok(costs)
            });
        // The host is the receiver of `-R`: its own figure, nothing to fall back on.
        let from = both.then(|| match client.outcome(Direction::FromVm) {
            Ok(r) if r.receiver_mbps > 0.0 => Ok(r.receiver_mbps),
            Ok(_) => {
                Err(booted.failure("the host's iperf3 received nothing from the driver domain"))
            }
            Err(e) => Err(booted.failure(&e)),
        });
        let to = if forward.receiver_mbps > 0.0 {
            forward.receiver_mbps
        } else {
            match receiver_figure(&booted.boot, DRIVER_DOMAIN, false)? {
                Some(line) => line.mbps,
                None => {
                    return Err(booted
                        .failure("no receiver figure from the host's iperf3 or the driver domain"))
                }
            }
        };
        Ok(PassthroughRun { to, from, costs })
    }

    /// A passthrough run's NIC interrupts that went through EL2 per NIC interrupt the driver
    /// domain took (see the module docs).
    fn nic_exits(costs: &Result<PacketCosts, String>) -> Result<f64, String> {
        let costs = costs.as_ref().map_err(|e| format!("NIC exits: {e}"))?;
        match costs.nic_interrupts {
            Some(irqs) if irqs > 0 => Ok(round_to(costs.device_irqs as f64 / irqs as f64, 4)),
            _ => Err("NIC exits: no NIC interrupts counted during the test".into()),
        }
    }

    /// Two guests pinging each other: every reply's round trip, in microseconds.
    /// One `ping` boot: guest1's round trips (50 ms apart) and guest2's (1 ms apart).
    fn ping_run(&self, run: usize) -> Result<PingRun, String> {
        let topology = parse(&ping_topology())?;
        let summaries = std::cell::Cell::new(0usize);
        let stop = |line: &str| {
            if (line.starts_with("[guest1] ") || line.starts_with("[guest2] "))
                && parse_ping_summary(line).is_some()
            {
                summaries.set(summaries.get() + 1);
            }
            summaries.get() >= 2
        };
        let booted =
            self.boot_once("ping", run, &topology, Duration::from_secs(90), None, &stop)?;
        let rtts = |vm: &str, peer: &str| {
            let rtts: Vec<f64> = booted
                .boot
                .vm_lines(vm)
                .filter_map(parse_ping_reply)
                .filter(|r| r.target == peer)
                .map(|r| r.rtt_us)
                .collect();
            if rtts.is_empty() {
                return Err(booted.failure(&format!("{vm} printed no ping reply from {peer}")));
            }
            Ok(rtts)
        };
        Ok(PingRun {
            spaced: rtts("guest1", "10.0.2.17")?,
            rapid: rtts("guest2", "10.0.2.16")?,
        })
    }

    /// One of the `BENCH` apps (event channel, grants): its samples.
    fn bench_run(&self, key: &str, toml: &str, run: usize) -> Result<Vec<Sample>, String> {
        let topology = parse(toml)?;
        let booted =
            self.boot_once(key, run, &topology, Duration::from_secs(300), None, &|_| {
                false
            })?;
        let samples = bench::collect(&booted.boot.lines)?;
        if let Some(problem) = booted.problems().into_iter().next() {
            return Err(booted.failure(&format!("a VM failed: {problem}")));
        }
        if samples.is_empty() {
            return Err(booted.failure("no BENCH lines"));
        }
        Ok(samples)
    }
}

fn parse(toml: &str) -> Result<Topology, String> {
    Topology::from_toml_str(toml).map_err(|e| format!("bad scenario topology: {e}"))
}

/// The first receiver result line `vm` printed for a test in the given mode (`reverse`); a
/// malformed result line is an error.
fn receiver_figure(boot: &Boot, vm: &str, reverse: bool) -> Result<Option<ResultLine>, String> {
    for line in boot.vm_lines(vm) {
        if let Some(parsed) = parse_result_line(line) {
            let parsed = parsed.map_err(|e| format!("{vm}: {e}"))?;
            if parsed.receiver && parsed.reverse == reverse {
                return Ok(Some(parsed));
            }
        }
    }
    Ok(None)
}

/// The byte count of the first result line `vm` printed as receiver (or sender) of a test in
/// the given mode.
fn result_bytes(boot: &Boot, vm: &str, receiver: bool, reverse: bool) -> Option<u64> {
    boot.vm_lines(vm)
        .filter_map(|l| parse_result_line(l)?.ok())
        .find(|r| r.receiver == receiver && r.reverse == reverse)?
        .bytes
}

/// The reasons of test `test` (1-based, as the guests count their tests) on one path of a
/// finished boot: the `netstats` marks of the `senders` and `receivers` (guests of the split
/// driver; none for the host's side; several for the pairs of a scaling boot, whose counters
/// are summed), their ports' `netback` lines (summed alike), and the accounting reports
/// tagged 2 `test` and 2 `test` + 1 (see [`PathRun::reasons`]).
fn path_reasons(
    boot: &Boot,
    topology: &Topology,
    test: u64,
    senders: &[&str],
    receivers: &[&str],
    payload: u64,
) -> Result<RunReasons, String> {
    let lines = &boot.lines;
    let stats: Vec<bench::NetStats> = lines
        .iter()
        .filter_map(|l| bench::parse_netstats_line(l))
        .collect::<Result<_, _>>()?;
    let ports: Vec<bench::BackendStats> = lines
        .iter()
        .filter_map(|l| bench::parse_backend_line(l))
        .collect::<Result<_, _>>()?;
    let reports = bench::accounting_reports(lines)?;
    // VM ids follow the topology's order from 1.
    let port_of = |vm: &str| {
        let id = topology.vms.iter().position(|v| v.name == vm)? + 1;
        bench::merged_backend(&ports, id)
    };
    let ports_of = |vms: &[&str]| bench::sum_counters(vms.iter().map(|vm| port_of(vm)));
    let deltas = |vms: &[&str]| -> Result<_, String> {
        let each = vms
            .iter()
            .map(|vm| {
                bench::test_delta(&stats, vm, test)
                    .map(Some)
                    .ok_or_else(|| format!("{vm} printed no netstats marks of test {test}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(bench::sum_counters(each))
    };
    let run = PathRun {
        payload_bytes: payload,
        sender: deltas(senders)?,
        receiver: deltas(receivers)?,
        sender_port: ports_of(senders),
        receiver_port: ports_of(receivers),
        accounting: reports
            .get(&(2 * test))
            .cloned()
            .zip(reports.get(&(2 * test + 1)).cloned()),
    };
    Ok(run.reasons())
}

/// The frames `vm` received in its test `test` (between its `netstats` marks 2 `test` and
/// 2 `test` + 1): the data packets of a test it received.
fn received_frames(boot: &Boot, vm: &str, test: u64) -> Result<u64, String> {
    let stats: Vec<bench::NetStats> = boot
        .lines
        .iter()
        .filter_map(|l| bench::parse_netstats_line(l))
        .collect::<Result<_, _>>()?;
    bench::test_delta(&stats, vm, test)
        .and_then(|d| d.get("rx_frames").copied())
        .ok_or_else(|| format!("{vm} printed no netstats marks of test {test}"))
}

/// The costs per packet of `vms` between the accounting reports tagged 2 `test` and
/// 2 `test` + 1 (see [`bench::packet_costs`]).
fn test_costs(boot: &Boot, test: u64, vms: &[&str], packets: u64) -> Result<PacketCosts, String> {
    let reports = bench::accounting_reports(&boot.lines)?;
    let report = |tag: u64| {
        reports
            .get(&tag)
            .ok_or_else(|| format!("no accounting report tagged {tag}"))
    };
    bench::packet_costs(report(2 * test)?, report(2 * test + 1)?, vms, packets)
}

/// The host's iperf3 client run `count` times one after another against a forwarded port
/// (host -> VM), started from a console line (see [`HostSeries::start`]).
struct HostSeries {
    port: u16,
    seconds: u32,
    count: usize,
    started: std::sync::atomic::AtomicBool,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    outcomes: std::sync::Arc<std::sync::Mutex<Vec<Result<f64, String>>>>,
}

impl HostSeries {
    fn new(seconds: u32, count: usize) -> HostSeries {
        HostSeries {
            port: free_port(Proto::Tcp),
            seconds,
            count,
            started: Default::default(),
            done: Default::default(),
            outcomes: Default::default(),
        }
    }

    /// Starts the tests on a thread of their own (once; later calls do nothing). Each
    /// connection is retried while the VM's server is still busy with its previous test.
    fn start(&self) {
        use std::sync::atomic::Ordering;
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let (port, seconds, count) = (self.port, self.seconds, self.count);
        let (done, outcomes) = (self.done.clone(), self.outcomes.clone());
        std::thread::spawn(move || {
            let limit = Duration::from_secs(u64::from(seconds) + 90);
            for _ in 0..count {
                let outcome = run_client(port, seconds, false, limit).map(|r| r.receiver_mbps);
                outcomes.lock().expect("not poisoned").push(outcome);
            }
            done.store(true, Ordering::SeqCst);
        });
    }

    fn done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The host's errors, for a failure message (empty if none).
    fn failures(&self) -> String {
        let outcomes = self.outcomes.lock().expect("not poisoned");
        let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
        if !self.started.load(std::sync::atomic::Ordering::SeqCst) {
            return "; the host's tests never started (no '[pv] REPORT' line)".into();
        }
        match errors.first() {
            Some(e) => format!("; the host's iperf3: {} failed, e.g. {e}", errors.len()),
            None => String::new(),
        }
    }
}

/// What a `pairs` boot measured.
struct PairsRun {
    figures: Vec<f64>,
    samples: Vec<Sample>,
    reasons: Result<RunReasons, String>,
    costs: Result<PacketCosts, String>,
}

/// What the `emulated` boot measured: each test's figure, by test key, with its costs per
/// packet, and the tests that gave nothing.
#[derive(Default)]
struct EmulatedRun {
    host_to_guest: Vec<f64>,
    guest_to_guest: Vec<f64>,
    costs: BTreeMap<&'static str, Vec<Result<PacketCosts, String>>>,
    errors: Vec<String>,
}

/// One balloon move, in MiB/s.
struct BalloonRun {
    inflate: f64,
    deflate: f64,
}

/// Keeps a boot running a little past the moment it is done, until the driver domain has
/// printed a guest port's `netback` counters (the guest closes its connection as it stops),
/// for at most [`Closing::LINGER`].
#[derive(Default)]
struct Closing {
    done_at: std::cell::Cell<Option<Instant>>,
    seen: std::cell::Cell<bool>,
}

impl Closing {
    const LINGER: Duration = Duration::from_secs(8);

    /// Whether to stop at `line`, given whether the measurement is `done`.
    fn stop(&self, done: bool, line: &str) -> bool {
        if bench::parse_backend_line(line).is_some() {
            self.seen.set(true);
        }
        if !done {
            return false;
        }
        let at = *self.done_at.get().get_or_insert_with(Instant::now);
        self.done_at.set(Some(at));
        self.seen.get() || at.elapsed() >= Closing::LINGER
    }
}

/// What one `host_guest` boot measured: both directions and their reasons.
struct HostRun {
    to: Result<f64, String>,
    from: Result<f64, String>,
    to_reasons: Result<RunReasons, String>,
    from_reasons: Result<RunReasons, String>,
    to_costs: Result<PacketCosts, String>,
}

/// The host side of a boot's NIC network: port forwards (user networking, passt), or the tap
/// network to run QEMU in.
struct BootNetwork<'a> {
    forwards: Vec<HostForward>,
    tap: Option<&'a TapNet>,
}

/// What one `restart` boot measured.
struct RestartRun {
    recovered_ms: u64,
    /// [`RESTART_RECEIVERS`] key -> the receiver's longest data gap.
    gaps: Vec<(&'static str, Result<u64, String>)>,
    phases_ms: BTreeMap<&'static str, f64>,
    spans_ms: BTreeMap<&'static str, f64>,
}

impl Describe for RestartRun {
    fn describe(&self) -> String {
        let gaps: Vec<String> = self
            .gaps
            .iter()
            .map(|(key, gap)| match gap {
                Ok(ms) => format!("{key} gap {ms} ms"),
                Err(_) => format!("{key} gap -"),
            })
            .collect();
        format!(
            "recovered in {} ms, {}; {}; spans (ms): {}",
            self.recovered_ms,
            gaps.join(", "),
            crate::restart::phases_text(&self.phases_ms),
            crate::restart::spans_text(&self.spans_ms)
        )
    }
}

/// A finished boot and where its transcript was saved.
struct Booted {
    boot: Boot,
    log: Option<PathBuf>,
}

impl Booted {
    /// Console lines that say something went wrong: a `REPORT fail`, a kill, a failed iperf3
    /// test, a panic.
    fn problems(&self) -> Vec<String> {
        self.boot
            .lines
            .iter()
            .filter(|l| {
                l.contains("REPORT fail")
                    || l.contains("killing VM ")
                    || l.contains(console::IPERF_FAILED)
                    || l.contains("panicked")
            })
            .cloned()
            .collect()
    }

    /// `why`, then what the console says went wrong, how the boot ended, and where the
    /// transcript is (or its last lines if it was not saved).
    fn failure(&self, why: &str) -> String {
        let mut out = why.to_string();
        for problem in self.problems().iter().take(3) {
            out += &format!("\n    {problem}");
        }
        let b = &self.boot;
        out += &b.end_note();
        match &self.log {
            Some(path) => out += &format!("\n    console: {}", path.display()),
            None => {
                let tail = b.lines.len().saturating_sub(20);
                out += &format!("\n    last console lines:\n{}", b.lines[tail..].join("\n"));
            }
        }
        out
    }
}

/// A one-line summary of a run's result, for the progress lines.
trait Describe {
    fn describe(&self) -> String;
}

/// A round trip in microseconds.
struct Micros(f64);

impl Describe for Micros {
    fn describe(&self) -> String {
        format!("round trip median {:.0} us", self.0)
    }
}

impl Describe for f64 {
    fn describe(&self) -> String {
        format!("{self:.2} Mbit/s")
    }
}

/// One `ping` boot's round trips in microseconds: 50 ms apart and 1 ms apart.
struct PingRun {
    spaced: Vec<f64>,
    rapid: Vec<f64>,
}

impl Describe for PingRun {
    fn describe(&self) -> String {
        format!(
            "{} replies 50 ms apart, rtt median {:.0} us; {} replies 1 ms apart, median {:.0} us",
            self.spaced.len(),
            bench::median(&self.spaced),
            self.rapid.len(),
            bench::median(&self.rapid)
        )
    }
}

impl Describe for Vec<Sample> {
    fn describe(&self) -> String {
        self.iter()
            .map(|s| format!("{} median {}", s.name, s.median))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Describe for PairsRun {
    fn describe(&self) -> String {
        let pairs: Vec<String> = self.figures.iter().map(|m| format!("{m:.2}")).collect();
        let mut out = format!(
            "{:.2} Mbit/s in all (pairs: {})",
            self.figures.iter().sum::<f64>(),
            pairs.join(" + ")
        );
        if let Some(m) = self.samples.iter().find(|s| s.name == "memcpy_mbps") {
            out += &format!(", memcpy median {} Mbit/s", m.median);
        }
        out
    }
}

impl Describe for HostRun {
    fn describe(&self) -> String {
        let one = |r: &Result<f64, String>| match r {
            Ok(v) => format!("{v:.2} Mbit/s"),
            Err(e) => format!("FAILED ({})", e.lines().next().unwrap_or_default()),
        };
        format!(
            "host -> guest {}, guest -> host {}",
            one(&self.to),
            one(&self.from)
        )
    }
}

impl Describe for PassthroughRun {
    fn describe(&self) -> String {
        match &self.from {
            None => format!("{:.2} Mbit/s", self.to),
            Some(Ok(v)) => format!(
                "host -> driver domain {:.2} Mbit/s, driver domain -> host {v:.2} Mbit/s",
                self.to
            ),
            Some(Err(e)) => format!(
                "host -> driver domain {:.2} Mbit/s, driver domain -> host FAILED ({})",
                self.to,
                e.lines().next().unwrap_or_default()
            ),
        }
    }
}

impl<T> Describe for (f64, Result<T, String>) {
    fn describe(&self) -> String {
        self.0.describe()
    }
}

impl Describe for EmulatedRun {
    fn describe(&self) -> String {
        let list = |v: &[f64]| {
            v.iter()
                .map(|m| format!("{m:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "guest -> emulated guest [{}] Mbit/s, host -> emulated guest [{}] Mbit/s",
            list(&self.guest_to_guest),
            list(&self.host_to_guest)
        )
    }
}

impl Describe for BalloonRun {
    fn describe(&self) -> String {
        format!(
            "inflate {:.0} MiB/s, deflate {:.0} MiB/s",
            self.inflate, self.deflate
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcpu_shares_of_many_pairs_are_summed_by_role() {
        let shares: BTreeMap<String, f64> = [
            ("client1", 0.125),
            ("client2", 0.125),
            ("server1", 0.25),
            ("server12", 0.125),
            ("driver-domain", 0.25),
            ("idle", 0.125),
        ]
        .map(|(vm, s)| (vm.to_string(), s))
        .into();
        let by_role = shares_by_role(&shares);
        let expected: BTreeMap<String, f64> = [
            ("clients", 0.25),
            ("servers", 0.375),
            ("driver-domain", 0.25),
            ("idle", 0.125),
        ]
        .map(|(vm, s)| (vm.to_string(), s))
        .into();
        assert_eq!(by_role, expected);
        // A name that is only digits stays as it is.
        let odd: BTreeMap<String, f64> = [("42".to_string(), 1.0)].into();
        assert_eq!(shares_by_role(&odd), odd);
    }

    #[test]
    fn the_fastest_pair_over_the_slowest_needs_two_pairs_that_measured_something() {
        assert_eq!(fastest_over_slowest(&[]), None);
        assert_eq!(fastest_over_slowest(&[5.0]), None);
        assert_eq!(fastest_over_slowest(&[2.0, 4.0, 3.0]), Some(2.0));
        assert_eq!(fastest_over_slowest(&[3.0, 3.0]), Some(1.0));
        assert_eq!(fastest_over_slowest(&[0.0, 3.0]), None);
        assert_eq!(fastest_over_slowest(&[1737.0, 1712.0]), Some(1.015));
    }

    #[test]
    fn the_pinning_policy_is_planned_for_the_bench_machine() {
        let topology = parse(&ping_topology()).unwrap();
        assert_eq!(topology.machine.cpus as usize, MACHINE_CPUS);
    }

    #[test]
    fn the_passt_scenarios_put_the_nic_on_passt_and_the_guest_on_the_host_server() {
        let t = Topology::from_toml_str(&guest_client_topology(NicBackend::Passt, 3, 40123, true))
            .unwrap();
        assert_eq!(t.machine.nic, Some(NicBackend::Passt));
        let guest = t.vms.iter().find(|v| v.name == "guest1").unwrap();
        assert_eq!(guest.setting("iperf"), Some("client"));
        assert_eq!(guest.setting("iperf_server"), Some("10.0.2.2"));
        assert_eq!(guest.setting("iperf_port"), Some("40123"));
        assert_eq!(guest.setting("iperf_reverse"), Some("true"));
        assert_eq!(guest.setting("iperf_seconds"), Some("3"));
        assert_eq!(guest.setting("mtu"), Some("1500"));
        let window = GUEST_CLIENT_WINDOW.to_string();
        assert_eq!(guest.setting("iperf_window"), Some(window.as_str()));
        let forward =
            Topology::from_toml_str(&guest_client_topology(NicBackend::User, 3, 1, false)).unwrap();
        assert_eq!(forward.machine.nic, Some(NicBackend::User));
        let g = forward.vms.iter().find(|v| v.name == "guest1").unwrap();
        assert_eq!(g.setting("iperf_reverse"), Some("false"));
        let p = Topology::from_toml_str(&passthrough_topology_on(NicBackend::Passt, 2)).unwrap();
        assert_eq!(p.machine.nic, Some(NicBackend::Passt));
        assert_eq!(p.vms.len(), 1);
        // The plain passthrough scenario stays on user networking.
        let u = Topology::from_toml_str(&passthrough_topology(2)).unwrap();
        assert_eq!(u.machine.nic, Some(NicBackend::User));
    }

    #[test]
    fn the_restart_scenario_crashes_its_nic_driver_domain_under_both_streams() {
        let t = Topology::from_toml_str(&restart_topology()).unwrap();
        let dd = t.vms.iter().find(|v| v.name == DRIVER_DOMAIN).unwrap();
        assert_eq!(dd.setting("test_crash"), Some("panic"));
        assert!(t.passthrough().is_some());
        let plan = HostIperfs::plan(&t, RESTART_STREAM_SECONDS).unwrap();
        assert_eq!(
            plan.get("h-server").unwrap().directions(),
            [Direction::ToVm]
        );
        for (_, vm) in RESTART_RECEIVERS {
            let v = t.vms.iter().find(|v| v.name == vm).unwrap();
            assert_eq!(v.setting("iperf"), Some("server"), "{vm}");
        }
        let client = t.vms.iter().find(|v| v.name == "g-client").unwrap();
        assert_eq!(client.setting("iperf_server"), Some("10.0.2.20"));
        // The streams outlast the crash by as long again.
        assert!(u64::from(RESTART_STREAM_SECONDS) * 1000 >= 2 * RESTART_CRASH_AFTER_MS);
    }

    #[test]
    fn every_scenario_topology_parses() {
        // The tap group's: the NIC on a tap device, the same VMs as over user networking.
        let host = Topology::from_toml_str(&host_topology_on(NicBackend::Tap, 5)).unwrap();
        assert_eq!(host.machine.nic, Some(NicBackend::Tap));
        let user = Topology::from_toml_str(&host_topology(5)).unwrap();
        assert_eq!(host.vms, user.vms);
        let pt = passthrough_topology_with(NicBackend::Tap, 3, 5, true);
        let pt = Topology::from_toml_str(&pt).unwrap();
        assert_eq!(pt.machine.nic, Some(NicBackend::Tap));
        assert_eq!(pt.vms[0].setting("host_iperf"), Some("both"));
        for pairs in [1, 2, 4] {
            for memcpy in [false, true] {
                let t = Topology::from_toml_str(&pairs_topology(pairs, 5, memcpy)).unwrap();
                assert_eq!(t.vms.len(), 1 + 2 * pairs + usize::from(memcpy));
                assert!(t.passthrough().is_some());
                let client = t
                    .vms
                    .iter()
                    .find(|v| v.name == format!("client{pairs}"))
                    .unwrap();
                assert_eq!(
                    client.setting("iperf_server"),
                    Some(pair_ips(pairs).1.as_str())
                );
                assert_eq!(client.setting("iperf_seconds"), Some("5"));
                assert_eq!(client.backend.as_deref(), Some(DRIVER_DOMAIN));
                let server = t
                    .vms
                    .iter()
                    .find(|v| v.name == format!("server{pairs}"))
                    .unwrap();
                assert_eq!(server.ip().unwrap().to_string(), pair_ips(pairs).1);
                assert_eq!(server.setting("iperf_tests"), Some("1"));
            }
        }
        assert_eq!(
            pair_ips(1),
            ("10.0.2.16".to_string(), "10.0.2.17".to_string())
        );
        assert_eq!(pair_ips(4).1, "10.0.2.23");
        // The host scenarios plan their host clients from the topology.
        let t = Topology::from_toml_str(&host_topology(2)).unwrap();
        let plan = HostIperfs::plan(&t, 2).unwrap();
        assert_eq!(
            plan.get("guest1").unwrap().directions(),
            [Direction::ToVm, Direction::FromVm]
        );
        assert_eq!(plan.forwards()[0].guest_port, 5201);
        let t = Topology::from_toml_str(&passthrough_topology(2)).unwrap();
        assert_eq!(t.vms.len(), 1);
        let plan = HostIperfs::plan(&t, 2).unwrap();
        assert_eq!(
            plan.get(DRIVER_DOMAIN).unwrap().directions(),
            [Direction::ToVm]
        );
        assert_eq!(plan.forwards()[0].guest_ip.to_string(), "10.0.2.15");
        // The bench's own passthrough boot also measures the other direction (`-R`).
        let t = Topology::from_toml_str(&passthrough_topology_with(NicBackend::User, 3, 2, true))
            .unwrap();
        let plan = HostIperfs::plan(&t, 2).unwrap();
        assert_eq!(
            plan.get(DRIVER_DOMAIN).unwrap().directions(),
            [Direction::ToVm, Direction::FromVm]
        );
        assert_eq!(t.vms[0].setting("iperf_tests"), Some("2"));
        // The 64 KiB pair: both guests at the largest MTU, and nothing else changed.
        let t = Topology::from_toml_str(&pairs_topology_mtu(1, 5, false, Some(LARGE_FRAME_MTU)))
            .unwrap();
        for vm in ["server1", "client1"] {
            let v = t.vms.iter().find(|v| v.name == vm).unwrap();
            assert_eq!(v.setting("mtu"), Some("65535"), "{vm}");
        }
        assert_eq!(
            pairs_topology_mtu(1, 5, false, None),
            pairs_topology(1, 5, false)
        );
        let t = Topology::from_toml_str(&ping_topology()).unwrap();
        assert_eq!(crate::report::ping_targets(&t).len(), 2);
        assert_eq!(t.vms[1].setting("ping_count"), Some("20"));
        assert_eq!(t.vms[2].setting("ping_interval_ms"), Some("1"));
        for toml in [evtchn_topology(10), grant_topology(10)] {
            Topology::from_toml_str(&toml).unwrap();
        }
        for ((load, _), expected) in BYSTANDER_LOADS.iter().zip([0, 2, 1, 1, 2]) {
            let t = Topology::from_toml_str(&bystander_topology(10, load).unwrap()).unwrap();
            let loads = t.vms.iter().filter(|v| v.setting("app") == Some("load"));
            assert_eq!(loads.count(), expected, "{load}");
            assert_eq!(t.vms.len(), 2 + expected, "{load}");
            assert_eq!(t.vms[1].name, "pinger", "{load}: the pinger stays VM 2");
        }
        assert!(bystander_topology(10, "no-such-load").is_none());
        // The emulated boot: one server behind the emulated NIC for both kinds of tests.
        let t = Topology::from_toml_str(&emulated_topology(3, 5)).unwrap();
        assert!(t.passthrough().is_some());
        let emu = t.vms.iter().find(|v| v.name == "emu").unwrap();
        assert_eq!(emu.nic, crate::topology::GuestNic::Emulated);
        assert_eq!(emu.setting("iperf_tests"), Some("10"));
        assert_eq!(emu.setting("iperf_accounting"), Some("true"));
        assert_eq!(emu.ip().unwrap().to_string(), EMU_IP);
        let pv = t.vms.iter().find(|v| v.name == "pv").unwrap();
        assert_eq!(
            pv.nic,
            crate::topology::GuestNic::Paravirt,
            "the client is para-virtual"
        );
        assert_eq!(pv.setting("iperf_repeat"), Some("5"));
        assert_eq!(pv.setting("iperf_server"), Some(EMU_IP));
        assert_eq!(pv.setting("iperf_accounting"), Some("true"));
        // The balloon boot: the giver has room for what it gives.
        let t = Topology::from_toml_str(&balloon_topology()).unwrap();
        let giver = t.vms.iter().find(|v| v.name == "giver").unwrap();
        assert_eq!(giver.setting("balloon_give_mib"), Some("128"));
        assert!(giver.memory_mib >= BALLOON_MIB + 8);
        let taker = t.vms.iter().find(|v| v.name == "taker").unwrap();
        assert_eq!(taker.setting("balloon_take_mib"), Some("128"));
        assert_eq!(crate::balloon::sides(&t).0[0].vm, "giver");
        // The passthrough boots mark the driver domain's test for the accounting.
        let p = Topology::from_toml_str(&passthrough_topology(2)).unwrap();
        assert_eq!(p.vms[0].setting("iperf_accounting"), Some("true"));
    }

    fn raw_complete(options: &Options) -> Raw {
        let bench_lines: Vec<String> = [
            "[memcpy] BENCH memcpy_mbps min=7000 median=8000 max=9000 n=32 freq_hz=0 unit=mbit_per_s",
            "[pinger] BENCH evtchn_roundtrip_ticks min=50 median=100 max=900 n=2000 freq_hz=1000000",
            "[mapper] BENCH grant_map_ticks min=10 median=16 max=70 n=2000 freq_hz=1000000",
            "[mapper] BENCH grant_unmap_ticks min=10 median=27 max=70 n=2000 freq_hz=1000000",
            "[mapper] BENCH grant_copy_4k_ticks min=10 median=58 max=70 n=2000 freq_hz=1000000",
            "[mapper] BENCH grant_copy_64x64b_ticks min=10 median=139 max=700 n=2000 freq_hz=1000000",
            "[memcpy] BENCH shared_copy_mbps min=600 median=1700 max=2400 n=32 freq_hz=0 unit=mbit_per_s",
        ]
        .map(String::from)
        .to_vec();
        let mut raw = Raw {
            guest_to_guest: vec![100.0, 120.0, 110.0],
            guest_to_guest_64k: vec![160.0, 150.0, 170.0],
            host_to_guest: vec![50.0, 40.0, 45.0],
            guest_to_host: vec![60.0, 70.0, 65.0],
            linux_host_to_guest: vec![30.0, 40.0, 35.0],
            linux_guest_to_host: vec![100.0, 120.0, 110.0],
            passthrough: vec![90.0, 100.0, 80.0],
            passthrough_from: vec![60.0, 70.0, 50.0],
            passt_host_to_guest: vec![150.0, 160.0, 170.0],
            passt_guest_to_host: vec![140.0, 130.0, 120.0],
            passt_passthrough: vec![200.0, 210.0, 190.0],
            vlpi_passthrough: vec![95.0, 105.0, 85.0],
            nic_exits_vlpi: vec![0.07, 0.05, 0.1],
            nic_exits_intx: vec![1.0, 1.0, 0.98],
            ping_rtts_us: vec![vec![400.0, 500.0, 600.0], vec![450.0, 550.0]],
            ping_1ms_apart_rtts_us: vec![vec![100.0, 120.0], vec![110.0]],
            samples: bench::collect(&bench_lines).unwrap(),
            ..Raw::default()
        };
        for (i, (path, _)) in REASON_PATHS.iter().enumerate() {
            let runs = (0..options.runs)
                .map(|r| RunReasons {
                    events_per_frame: Some(0.5 + i as f64 + r as f64 / 10.0),
                    bytes_per_notification: Some(9000.0),
                    copies_per_byte: Some(6.0),
                    copies: [("backend".to_string(), 1.0)].into(),
                    pcpu_share: [
                        ("driver-domain".to_string(), 0.4),
                        ("idle".to_string(), 0.6),
                    ]
                    .into(),
                    vmid_switches_per_frame: Some(0.25),
                    frames_per_ack: Some(3.0),
                    el2_busy_share: Some(0.08),
                    el2_us_per_exit: [("wait".to_string(), 20.0)].into(),
                    receiver_drops_per_kframe: Some(0.0),
                    receiver_waits_per_kframe: Some(4.0),
                })
                .collect();
            raw.reasons.insert(path, runs);
        }
        raw.emulated_host_to_guest = vec![0.2, 0.3, 0.25];
        raw.emulated_guest_to_guest = vec![0.3, 0.28, 0.35];
        raw.balloon_inflate = vec![80.0, 90.0, 85.0];
        raw.balloon_deflate = vec![250.0, 400.0, 300.0];
        raw.restart_recovery = vec![220.0, 180.0, 250.0];
        raw.restart_gaps
            .insert("guest_to_guest", vec![400.0, 450.0, 350.0]);
        raw.restart_gaps
            .insert("host_to_guest", vec![1300.0, 1500.0, 1400.0]);
        raw.restart_phases
            .insert("first_frame", vec![90.0, 80.0, 85.0]);
        raw.restart_spans
            .insert("hv_teardown", vec![9.0, 8.0, 12.0]);
        for (m, (method, _)) in METHODS.iter().enumerate() {
            for (test, _) in TESTS {
                let runs = (0..options.runs)
                    .map(|r| PacketCosts {
                        packets: 100 + r as u64,
                        exits: [700.0, 0.5, 0.03][m] + r as f64,
                        ioreqs: [300.0, 0.0, 0.0][m],
                        interrupts: [2.0, 0.2, 0.03][m],
                        exits_by_vm: [("driver-domain".to_string(), 1.0)].into(),
                        device_irqs: 3,
                        nic_interrupts: Some(4),
                    })
                    .collect();
                raw.costs.insert((method, test), runs);
            }
        }
        for &pairs in &options.pair_counts {
            let per_run: Vec<Vec<f64>> = (0..options.runs)
                .map(|r| vec![100.0 / pairs as f64 + r as f64; pairs])
                .collect();
            raw.scaling.insert(pairs, per_run);
            if pairs > 1 {
                // The guest -> guest reasons with more switches the more pairs there are.
                let mut runs = raw.reasons["guest_to_guest"].clone();
                for r in &mut runs {
                    r.vmid_switches_per_frame = Some(0.25 * pairs as f64);
                }
                raw.scaling_reasons.insert(pairs, runs);
            }
        }
        for (i, (load, _)) in BYSTANDER_LOADS.iter().enumerate() {
            let us = 200.0 * (1.0 + i as f64);
            raw.bystander_us
                .insert(load.to_string(), vec![us; options.runs]);
        }
        raw
    }

    fn raw_flagged() -> Raw {
        let mut raw = raw_complete(&Options::full());
        raw.passthrough = vec![50.0, 200.0, 100.0];
        raw
    }

    #[test]
    fn figures_that_moved_more_than_2x_between_runs_are_flagged() {
        let options = Options::full();
        let steady = Results::from_raw(&options, raw_complete(&options)).table();
        assert!(
            !steady.contains("  !\n") && !steady.contains("max/min over 2x"),
            "{steady}"
        );
        let mut raw = raw_complete(&options);
        raw.passthrough = vec![50.0, 200.0, 100.0];
        let table = Results::from_raw(&options, raw).table();
        let row = |label: &str| {
            table
                .lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no row {label}:\n{table}"))
                .to_string()
        };
        assert!(row("passthrough TCP").ends_with("  !"), "{table}");
        assert!(
            !row("paravirt TCP guest -> guest").ends_with('!'),
            "{table}"
        );
        assert!(table.contains("! run values' max/min over 2x"), "{table}");
        let doc: serde_json::Value =
            serde_json::from_str(&Results::from_raw(&options, raw_flagged()).to_json()).unwrap();
        assert_eq!(
            doc["passthrough_tcp_mbps"]["host_to_driver_domain"]["spread_over_2x"],
            true
        );
        assert_eq!(
            doc["paravirt_tcp_mbps"]["guest_to_guest"]["spread_over_2x"],
            false
        );
    }

    #[test]
    fn results_have_every_required_key_and_the_ratios() {
        let options = Options::full();
        let results = Results::from_raw(&options, raw_complete(&options));
        let text = results.to_json();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            missing_figures(&doc, &options.pair_counts),
            Vec::<String>::new()
        );
        assert_eq!(doc["paravirt_tcp_mbps"]["guest_to_guest"]["median"], 110.0);
        assert_eq!(doc["paravirt_tcp_mbps"]["guest_to_guest"]["runs"], 3);
        assert_eq!(
            doc["paravirt_tcp_mbps"]["passt"]["host_to_guest"]["median"],
            160.0
        );
        assert_eq!(
            doc["paravirt_tcp_mbps"]["passt"]["guest_to_host"]["median"],
            130.0
        );
        assert_eq!(
            doc["passthrough_tcp_mbps"]["passt"]["host_to_driver_domain"]["median"],
            200.0
        );
        assert_eq!(doc["memcpy_mbps"]["median"], 8000.0);
        assert_eq!(doc["evtchn_roundtrip_us"]["median"], 100.0);
        assert_eq!(doc["ping_rtt_us"]["guest_to_guest"]["min"], 400.0);
        assert_eq!(doc["ping_rtt_us"]["guest_to_guest"]["max"], 600.0);
        assert_eq!(doc["ping_rtt_us"]["guest_to_guest"]["median"], 500.0);
        assert_eq!(doc["ping_rtt_us"]["guest_to_guest"]["samples"], 5);
        assert_eq!(
            doc["ping_rtt_us"]["guest_to_guest_1ms_apart"]["median"],
            110.0
        );
        // Over the event channel's 100 us.
        assert_eq!(doc["ratios"]["ping_over_evtchn_roundtrip"], 5.0);
        assert_eq!(doc["ratios"]["ping_1ms_apart_over_evtchn_roundtrip"], 1.1);
        let ratios = &doc["ratios"];
        assert!(
            (ratios["guest_to_guest_over_memcpy"].as_f64().unwrap() - 110.0 / 8000.0).abs() < 1e-12
        );
        assert!((ratios["host_to_guest_over_passthrough"].as_f64().unwrap() - 0.5).abs() < 1e-12);
        // guest -> guest 64 KiB 160 over memcpy 8000.
        assert!((ratios["guest_to_guest_64k_over_memcpy"].as_f64().unwrap() - 0.02).abs() < 1e-12);
        // guest -> host 65 over driver domain -> host 60 (medians).
        assert!(
            (ratios["guest_to_host_over_passthrough"].as_f64().unwrap() - 1.083333).abs() < 1e-12
        );
        // Two pairs over one: the scaling aggregates' medians; the bound from the one-pair
        // idle share 0.6 is 2.5, capped at 2.
        let one = doc["scaling"][0]["aggregate_tcp_mbps"]["median"]
            .as_f64()
            .unwrap();
        let two = doc["scaling"][1]["aggregate_tcp_mbps"]["median"]
            .as_f64()
            .unwrap();
        assert_eq!(doc["scaling"][1]["pairs"], 2);
        assert!((ratios["two_pairs_over_one"].as_f64().unwrap() - two / one).abs() < 1e-6);
        assert_eq!(ratios["two_pairs_pcpu_bound"], 2.0);
        let scaling = doc["scaling"].as_array().unwrap();
        assert_eq!(scaling.len(), 3);
        assert_eq!(scaling[2]["pairs"], 4);
        // 4 pairs of 25 + run: sums 100, 104, 108, 112, 116.
        assert_eq!(scaling[2]["aggregate_tcp_mbps"]["median"], 108.0);
        assert_eq!(scaling[2]["per_pair_tcp_mbps"], 27.0);
        assert_eq!(
            scaling[2]["pair_mbps"][1],
            serde_json::json!([26.0, 26.0, 26.0, 26.0])
        );
        // Equal pairs in every run: the fastest over the slowest is 1; one pair has no spread.
        assert_eq!(scaling[2]["fastest_over_slowest_pair"]["median"], 1.0);
        assert!(scaling[0]["fastest_over_slowest_pair"].is_null());
        // Each point's reasons: one pair's are guest -> guest's, more pairs' their own.
        let switches =
            |p: usize| scaling[p]["reasons"]["vmid_switches_per_frame"]["median"].clone();
        assert_eq!(switches(0), 0.25);
        assert_eq!(switches(1), 0.5);
        assert_eq!(switches(2), 1.0);
        assert_eq!(
            scaling[0]["reasons"], doc["reasons"]["guest_to_guest"],
            "one pair is the guest_to_guest boot"
        );
        assert_eq!(doc["figures"]["grant_map_ticks"]["median"], 16);
        assert_eq!(doc["bystander_evtchn_us"]["idle"]["median"], 200.0);
        assert_eq!(doc["bystander_evtchn_us"]["evtchn_storm"]["median"], 1000.0);
        let table = results.table();
        let fairness = table
            .lines()
            .find(|l| l.starts_with("scaling: 4 pairs, fastest / slowest"))
            .unwrap_or_else(|| panic!("no fairness row:\n{table}"));
        assert!(fairness.contains(" 1.000 "), "{fairness}");
        let four = table
            .lines()
            .find(|l| l.starts_with("  4 pairs at once"))
            .unwrap_or_else(|| panic!("no reasons of four pairs:\n{table}"));
        assert!(four.contains("1.000 VMID switches/frame"), "{four}");
        assert!(!table.contains("scaling: 1 pairs, fastest"), "{table}");
        assert!(
            table.contains("bystander copy loop / idle")
                && table.contains("2.00x (goal < 2x: missed)"),
            "{table}"
        );
        assert!(
            table.contains("5.00x (goal <= 3x: missed)")
                && table.contains("1.10x (goal <= 3x: met)"),
            "{table}"
        );
        assert_eq!(doc["errors"], serde_json::json!([]));
        // The reasons: medians over runs, per path.
        let g2g = &doc["reasons"]["guest_to_guest"];
        assert_eq!(g2g["events_per_frame"]["median"], 0.7);
        assert_eq!(g2g["events_per_frame"]["runs"], 5);
        assert_eq!(
            doc["reasons"]["guest_to_host"]["events_per_frame"]["median"],
            3.7
        );
        assert_eq!(g2g["frames_per_ack"]["median"], 3.0);
        assert_eq!(g2g["copies"]["backend"], 1.0);
        assert_eq!(g2g["pcpu_share"]["driver-domain"], 0.4);
        let reasons = table
            .lines()
            .find(|l| l.trim_start().starts_with("passt: guest -> host"))
            .unwrap();
        assert!(
            reasons.contains("5.700 events/frame")
                && reasons.contains("3.00 frames/ACK")
                && reasons.contains("6.00 copies/B")
                && reasons.contains("driver-domain 40%"),
            "{reasons}"
        );
        // The stock Linux guest's paths, and ours over them: host -> guest 45 / 35, guest ->
        // host 65 / 110 (medians).
        assert_eq!(doc["linux_guest_tcp_mbps"]["host_to_guest"]["median"], 35.0);
        assert_eq!(doc["linux_guest_tcp_mbps"]["guest_to_host"]["max"], 120.0);
        assert_eq!(ratios["host_to_guest_over_linux"], 1.285714);
        assert_eq!(ratios["guest_to_host_over_linux"], 0.590909);
        let goal = |label: &str| {
            table
                .lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no row {label}:\n{table}"))
                .to_string()
        };
        assert!(
            goal("ratio host -> guest / Linux guest").ends_with("1.29x (goal >= 1.2x: met)"),
            "{table}"
        );
        assert!(
            goal("ratio guest -> host / Linux guest").ends_with("0.59x (goal >= 1.2x: missed)"),
            "{table}"
        );
        let paths = results.paths_svg();
        assert_eq!(paths.matches("class=\"bar\"").count(), 13, "{paths}");
        assert!(paths.contains("Linux guest: guest -&gt; host"), "{paths}");
        assert_eq!(paths.matches("class=\"empty\"").count(), 0, "{paths}");
        assert!(paths.contains("emulated: host -&gt; guest"), "{paths}");
        assert!(paths.contains("passthrough: dd -&gt; host"), "{paths}");
        assert!(paths.contains("64K frames"), "{paths}");
        // The three-way figures: host -> guest on top, both tests in `three_way`.
        assert_eq!(doc["emulated_tcp_mbps"]["host_to_guest"]["median"], 0.25);
        assert_eq!(doc["emulated_tcp_mbps"]["guest_to_guest"]["median"], 0.3);
        // Runs 0..5: 700 + r, median 702.
        assert_eq!(doc["exits_per_packet"]["emulated"]["median"], 702.0);
        assert_eq!(doc["exits_per_packet"]["paravirt"]["median"], 2.5);
        assert_eq!(doc["ioreqs_per_packet"]["emulated"]["median"], 300.0);
        assert_eq!(doc["interrupts_per_packet"]["passthrough"]["median"], 0.03);
        assert_eq!(
            doc["three_way"]["emulated"]["guest_to_guest"]["packets"]["median"],
            102.0
        );
        assert!(doc["three_way"]["passthrough"]
            .get("guest_to_guest")
            .is_none());
        assert_eq!(doc["balloon_mib_per_s"]["deflate"]["median"], 300.0);
        let three = results.three_way_table();
        let row = |label: &str| {
            three
                .lines()
                .find(|l| l.trim_start().starts_with(label))
                .unwrap_or_else(|| panic!("no row {label}:\n{three}"))
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("emulated      host -> guest")[4..],
            ["0.250", "702.0", "300.0", "2.000", "102.0"]
        );
        assert!(row("passthrough   guest -> guest").contains(&"owner:".to_string()));
        assert_eq!(row("passthrough   host -> owner")[4], "90.0");
        // para-virtual 45 over emulated 0.25, 110 over 0.3.
        assert!(
            three.contains("host -> guest: 180x") && three.contains("guest -> guest: 367x"),
            "{three}"
        );
        assert!(table.contains("balloon anchor") && table.contains("0.49 s batched"));
        assert_eq!(
            (doc["runs"].as_u64(), doc["iperf_seconds"].as_u64()),
            (Some(5), Some(5))
        );
        // How QEMU's threads ran, in words, in both.
        let pinning = doc["vcpu_pinning"].as_str().unwrap();
        assert!(
            pinning.starts_with("vCPU threads pinned to host CPUs") || pinning.starts_with("off ("),
            "{pinning}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("QEMU vCPU threads") && l.ends_with(pinning)),
            "{table}"
        );
    }

    #[test]
    fn the_pcpu_bound_is_what_the_idle_time_leaves_and_at_most_the_pairs() {
        assert_eq!(pcpu_bound(2, 0.25), Some(1.3333));
        assert_eq!(pcpu_bound(2, 0.0), Some(1.0));
        assert_eq!(pcpu_bound(2, 0.6), Some(2.0));
        assert_eq!(pcpu_bound(4, 0.6), Some(2.5));
        assert_eq!(pcpu_bound(2, 1.0), None);
        assert_eq!(pcpu_bound(2, -0.1), None);
        assert_eq!(pcpu_bound(0, 0.5), None);
    }

    #[test]
    fn missing_figures_are_null_and_listed() {
        let options = Options::short();
        let mut raw = raw_complete(&options);
        raw.passthrough.clear();
        raw.passthrough_from.clear();
        raw.passt_guest_to_host.clear();
        raw.scaling.remove(&2);
        raw.scaling_reasons.remove(&2);
        raw.ping_rtts_us = vec![vec![]];
        raw.ping_1ms_apart_rtts_us = vec![vec![]];
        raw.bystander_us.remove("reset_loop");
        raw.errors.push("passthrough run 1: it broke".into());
        raw.reasons.remove("host_to_guest");
        raw.emulated_host_to_guest.clear();
        raw.costs.remove(&("passthrough", "host_to_guest"));
        raw.balloon_inflate.clear();
        raw.restart_gaps.remove("host_to_guest");
        // The stock Linux guest could not be fetched: its figures and our ratios over them.
        raw.linux_host_to_guest.clear();
        raw.linux_guest_to_host.clear();
        let results = Results::from_raw(&options, raw);
        assert_eq!(results.ratios.host_to_guest_over_passthrough, None);
        assert_eq!(results.ratios.guest_to_host_over_passthrough, None);
        let doc: serde_json::Value = serde_json::from_str(&results.to_json()).unwrap();
        assert!(doc["passthrough_tcp_mbps"]["host_to_driver_domain"].is_null());
        assert_eq!(
            missing_figures(&doc, &options.pair_counts),
            [
                "/paravirt_tcp_mbps/passt/guest_to_host",
                "/passthrough_tcp_mbps/host_to_driver_domain",
                "/passthrough_tcp_mbps/driver_domain_to_host",
                "/ping_rtt_us/guest_to_guest",
                "/ping_rtt_us/guest_to_guest_1ms_apart",
                "/ratios/ping_over_evtchn_roundtrip",
                "/ratios/ping_1ms_apart_over_evtchn_roundtrip",
                "/ratios/host_to_guest_over_passthrough",
                "/ratios/guest_to_host_over_passthrough",
                "/linux_guest_tcp_mbps/host_to_guest",
                "/linux_guest_tcp_mbps/guest_to_host",
                "/ratios/host_to_guest_over_linux",
                "/ratios/guest_to_host_over_linux",
                "/bystander_evtchn_us/reset_loop",
                "/reasons/host_to_guest/frames_per_ack",
                "/reasons/host_to_guest/events_per_frame",
                "/reasons/host_to_guest/bytes_per_notification",
                "/reasons/host_to_guest/copies_per_byte",
                "/reasons/host_to_guest/pcpu_share/driver-domain",
                "/emulated_tcp_mbps/host_to_guest",
                "/exits_per_packet/passthrough",
                "/interrupts_per_packet/passthrough",
                "/balloon_mib_per_s/inflate",
                "/driver_domain_restart_gap_ms/host_to_guest",
                "/scaling[pairs=2]/aggregate_tcp_mbps",
                "/scaling[pairs=2]/fastest_over_slowest_pair",
                "/scaling[pairs=2]/reasons/vmid_switches_per_frame",
                // No two-pair figure, no ratio of it; the bound needs only the one pair.
                "/ratios/two_pairs_over_one",
            ]
        );
        assert!(doc["ratios"]["two_pairs_pcpu_bound"].as_f64().is_some());
        assert_eq!(doc["errors"][0], "passthrough run 1: it broke");
        // The table shows the gaps as dashes, and the plot only the measured point.
        let table = results.table();
        let row = table
            .lines()
            .find(|l| l.starts_with("passthrough TCP host -> driver domain"))
            .unwrap();
        assert!(row.contains(" - "), "{row}");
        assert!(table
            .lines()
            .any(|l| l.starts_with("ratio host -> guest / passthrough")
                && l.trim_end().ends_with('-')));
        assert!(table
            .lines()
            .any(|l| l.starts_with("ratio guest -> host / Linux guest")
                && l.trim_end().ends_with('-')));
        assert_eq!(
            results
                .scaling_svg()
                .matches("class=\"point aggregate\"")
                .count(),
            1
        );
        // Zero and negative figures are as good as missing.
        let doc = serde_json::json!({"memcpy_mbps": {"median": 0.0}, "ratios": {"guest_to_guest_over_memcpy": -1.0}});
        let missing = missing_figures(&doc, &[1]);
        assert!(missing.contains(&"/memcpy_mbps".to_string()));
        assert!(missing.contains(&"/ratios/guest_to_guest_over_memcpy".to_string()));
        assert_eq!(missing.len(), REQUIRED_FIGURES.len() + 1);
    }

    #[test]
    fn the_tap_group_runs_only_when_asked_and_then_fills_its_figures_rows_and_bars() {
        assert!(!Options::full().runs_group("tap"));
        assert!(Options::full().runs_group("host_guest"));
        let asked = Options {
            only: vec!["host_guest".into(), "tap".into()],
            ..Options::full()
        };
        assert!(asked.runs_group("tap") && !asked.runs_group("ping"));
        // Not run: the table says how to ask for it, the plot has no tap bars.
        let options = Options::full();
        let mut raw = raw_complete(&options);
        raw.reasons.retain(|path, _| !path.starts_with("tap_"));
        let without = Results::from_raw(&options, raw);
        assert!(without.table().contains(TAP_HINT), "{}", without.table());
        assert_eq!(without.paths_svg().matches("tap: ").count(), 0);
        let doc: serde_json::Value = serde_json::from_str(&without.to_json()).unwrap();
        assert_eq!(missing_of(&doc, &TAP_FIGURES).len(), TAP_FIGURES.len());
        // Run: every figure, the ratios to its own passthrough, rows and four more bars.
        let mut raw = raw_complete(&options);
        raw.tap_host_to_guest = vec![700.0, 720.0, 680.0];
        raw.tap_guest_to_host = vec![600.0, 610.0, 590.0];
        raw.tap_passthrough = vec![560.0, 590.0, 580.0];
        raw.tap_passthrough_from = vec![850.0, 860.0, 870.0];
        let with = Results::from_raw(&options, raw);
        let doc: serde_json::Value = serde_json::from_str(&with.to_json()).unwrap();
        assert_eq!(missing_of(&doc, &TAP_FIGURES), Vec::<String>::new());
        assert_eq!(
            doc["paravirt_tcp_mbps"]["tap"]["host_to_guest"]["median"],
            700.0
        );
        assert_eq!(
            doc["passthrough_tcp_mbps"]["tap"]["driver_domain_to_host"]["median"],
            860.0
        );
        let close = |r: Option<f64>, want: f64| r.is_some_and(|r| (r - want).abs() < 1e-6);
        assert!(close(
            with.ratios.tap_host_to_guest_over_passthrough,
            700.0 / 580.0
        ));
        assert!(close(
            with.ratios.tap_guest_to_host_over_passthrough,
            600.0 / 860.0
        ));
        let table = with.table();
        assert!(!table.contains(TAP_HINT), "{table}");
        for label in [
            "tap: paravirt TCP host -> guest",
            "tap: paravirt TCP guest -> host",
            "tap: passthrough host -> driver dom.",
            "tap: passthrough driver dom. -> host",
            "ratio tap: host -> guest / passthrough",
            "ratio tap: guest -> host / passthrough",
            "  tap: host -> guest",
        ] {
            assert_eq!(
                table.lines().filter(|l| l.starts_with(label)).count(),
                1,
                "{label}:\n{table}"
            );
        }
        let paths = with.paths_svg();
        assert_eq!(paths.matches("class=\"bar\"").count(), 17, "{paths}");
        assert!(paths.contains("tap: passthrough dd -&gt; host"), "{paths}");
    }

    #[test]
    fn the_table_has_a_row_per_figure() {
        let options = Options::full();
        let results = Results::from_raw(&options, raw_complete(&options));
        let table = results.table();
        for label in [
            "paravirt TCP guest -> guest",
            "paravirt TCP host -> guest",
            "paravirt TCP guest -> host",
            "passthrough TCP host -> driver domain",
            "passt: paravirt TCP host -> guest",
            "passt: paravirt TCP guest -> host",
            "passt: passthrough host -> driver dom.",
            "emulated TCP host -> guest",
            "emulated TCP guest -> guest",
            "balloon inflate (give back)",
            "balloon deflate (take)",
            "driver-domain restart: recovery",
            "restart: TCP gap guest -> guest",
            "restart: TCP gap host -> guest",
            "restart anchor",
            "restart phase: first frame",
            "restart span: hv teardown",
            "memcpy in a guest (one copy)",
            "scaling: 1 pair at once, sum",
            "scaling: 2 pairs at once, sum",
            "scaling: 4 pairs at once, sum",
            "ping RTT guest <-> guest",
            "ping RTT 1 ms apart, guest <-> guest",
            "ratio ping / event channel",
            "ratio ping 1 ms apart / event channel",
            "event channel round trip",
            "grant map",
            "grant unmap",
            "grant copy 4k",
            "grant copy 64x64b",
            "shared copy",
            "ratio guest -> guest / memcpy",
            "ratio host -> guest / passthrough",
            "ratio guest -> host / passthrough",
            "ratio 64K frames guest -> guest / memcpy",
            "paravirt TCP 64K frames guest -> guest",
            "passthrough TCP driver domain -> host",
            "stock Linux guest TCP host -> guest",
            "stock Linux guest TCP guest -> host",
            "ratio host -> guest / Linux guest",
            "ratio guest -> host / Linux guest",
        ] {
            assert_eq!(
                table.lines().filter(|l| l.starts_with(label)).count(),
                1,
                "{label}:\n{table}"
            );
        }
        let g2g = table
            .lines()
            .find(|l| l.starts_with("paravirt TCP guest -> guest"))
            .unwrap();
        let cols: Vec<&str> = g2g[40..].split_whitespace().collect();
        assert_eq!(cols, ["110.0", "100.0", "120.0", "Mbit/s", "3"]);
        let shared = table
            .lines()
            .find(|l| l.starts_with("shared copy"))
            .unwrap();
        assert!(
            shared.contains("1700") && shared.contains("Mbit/s"),
            "{shared}"
        );
        assert!(!table.contains("evtchn roundtrip"), "{table}");
        let ratio = table.lines().find(|l| l.starts_with("ratio host")).unwrap();
        assert!(
            ratio.contains("0.5000") && ratio.contains("(50.0 %)"),
            "{ratio}"
        );
        assert_eq!(number(0.1234), "0.123");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(12345.6), "12346");
    }
}
