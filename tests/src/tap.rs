//! The tap networking option (`[machine] nic = "tap"`): the NIC's host side is a tap device in
//! a network namespace of its own, so real host tools (`ping`, `iperf3`, std sockets) reach the
//! VMs' addresses directly, without port forwards and without touching the host's own network.
//!
//! [`TapNet::create`] makes a fresh namespace (`sluice-<pid>-<n>`), a tap device [`TAP_IFNAME`]
//! in it with [`TAP_ADDRESS`] (10.0.2.2/24, the gateway every VM's `gateway` setting defaults
//! to, as with user networking), and brings it and `lo` up. QEMU runs inside the namespace
//! (`ip netns exec NS qemu-system-aarch64 ... -netdev tap,ifname=sluice-tap,script=no,...`, see
//! [`crate::qemu`]); host tools run there through [`TapNet::command`] (`ip netns exec NS TOOL`),
//! and a thread can move itself there with [`enter_netns`] (what the host echo checks do).
//!
//! Dropping the [`TapNet`] deletes the namespace and with it the tap, also when a test panics.
//! A process that dies without dropping it (killed, or a panic in a binary built with
//! `panic = "abort"`) leaves its namespace behind; the next [`TapNet::create`] deletes every
//! `sluice-<pid>-<n>` namespace whose process is gone.
//!
//! It needs root and a usable /dev/net/tun ([`tap_support`]); user networking needs neither.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::process::run_with_limit;
use crate::report::PingSummary;
use crate::topology::{NicBackend, Topology};

/// The tap device's name inside its namespace (every namespace has its own, so one name does).
pub const TAP_IFNAME: &str = "sluice-tap";
/// The tap's address: the VMs' default gateway, the host side of the NIC's network.
pub const TAP_ADDRESS: &str = "10.0.2.2/24";
/// Start of the names of the namespaces the harness creates: `sluice-<pid>-<n>`.
pub const NETNS_PREFIX: &str = "sluice-";
/// Where `ip netns` keeps its named namespaces (one bind-mounted file each).
pub const NETNS_DIR: &str = "/var/run/netns";
/// The device QEMU opens to attach to the tap.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// Why the tap option cannot run here (followed by the detail in parentheses).
pub const TAP_NEEDS: &str = "the tap option needs root and /dev/net/tun; use nic = \"user\"";

/// `Ok` when this process can use the tap option: it runs as root and can open /dev/net/tun.
/// The error is the user-facing explanation ([`TAP_NEEDS`] and what is missing).
pub fn tap_support() -> Result<(), String> {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_effective_uid(&status));
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map(drop);
    support_verdict(euid, tun)
}

/// The effective user id from `/proc/self/status` (`Uid:` real, effective, saved, fs).
fn parse_effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn support_verdict(euid: Option<u32>, tun: std::io::Result<()>) -> Result<(), String> {
    match euid {
        Some(0) => {}
        Some(uid) => return Err(format!("{TAP_NEEDS} (running as uid {uid})")),
        None => {
            return Err(format!(
                "{TAP_NEEDS} (cannot tell the user id from /proc/self/status)"
            ))
        }
    }
    tun.map_err(|e| format!("{TAP_NEEDS} (cannot open {TUN_DEVICE}: {e})"))
}

/// `sluice-<pid>-<n>`.
fn netns_name(pid: u32, n: u32) -> String {
    format!("{NETNS_PREFIX}{pid}-{n}")
}

/// A namespace name this process has not used yet.
fn next_netns_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    netns_name(std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The pid in a name made by [`netns_name`]; `None` for any other name.
fn netns_owner(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix(NETNS_PREFIX)?.split_once('-')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(pid) || !all_digits(n) {
        return None;
    }
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// The `ip` invocations that set up namespace `netns` once it exists, each with whether it
/// must succeed. Turning off IPv6 address generation on the tap keeps the kernel from sending
/// router and neighbour solicitations to the VMs; a kernel without IPv6 refuses it, which
/// does not matter.
fn setup_steps(netns: &str) -> Vec<(bool, Vec<String>)> {
    let ip = |required: bool, args: &[&str]| {
        let mut argv = vec!["-n".to_string(), netns.to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        (required, argv)
    };
    vec![
        ip(true, &["tuntap", "add", "dev", TAP_IFNAME, "mode", "tap"]),
        ip(
            false,
            &["link", "set", "dev", TAP_IFNAME, "addrgenmode", "none"],
        ),
        ip(true, &["addr", "add", TAP_ADDRESS, "dev", TAP_IFNAME]),
        ip(true, &["link", "set", "dev", TAP_IFNAME, "up"]),
        ip(true, &["link", "set", "dev", "lo", "up"]),
    ]
}

/// The arguments of `ip` that run `program` (arguments follow) in namespace `netns`.
pub fn in_netns_args(netns: &str, program: &str) -> Vec<String> {
    ["netns", "exec", netns, program].map(String::from).to_vec()
}

/// Runs `ip ARGS`; the error has the command and what ip said.
fn run_ip(args: &[String]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip ({e}): install iproute2 (./run.sh setup does)"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "'ip {}' failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

/// Deletes the `sluice-<pid>-<n>` namespaces whose process no longer exists (left behind by a
/// harness that was killed). Best effort.
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = netns_owner(&name) else {
            continue;
        };
        if pid != me && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = run_ip(&["netns".into(), "delete".into(), name]);
        }
    }
}

/// A network namespace with the NIC's tap device in it; deleted when dropped. See the module
/// documentation.
#[derive(Debug)]
pub struct TapNet {
    netns: String,
}

impl TapNet {
    /// Creates a fresh namespace and its tap (10.0.2.2/24, up) and brings `lo` up. `Err` when
    /// the host cannot ([`tap_support`]), or an `ip` command fails (then nothing is left).
    pub fn create() -> Result<TapNet, String> {
        tap_support()?;
        remove_stale_namespaces();
        let netns = next_netns_name();
        run_ip(&["netns".into(), "add".into(), netns.clone()])
            .map_err(|e| format!("cannot create network namespace {netns}: {e}"))?;
        // From here on, dropping it deletes the namespace, also on the errors below.
        let net = TapNet { netns };
        for (required, args) in setup_steps(&net.netns) {
            match run_ip(&args) {
                Err(e) if required => {
                    return Err(format!(
                        "cannot set up the tap network in {}: {e}",
                        net.netns
                    ))
                }
                _ => {}
            }
        }
        Ok(net)
    }

    /// A [`TapNet`] when `topology` asks for the tap option, `None` otherwise.
    pub fn for_topology(topology: &Topology) -> Result<Option<TapNet>, String> {
        match topology.machine.nic {
            Some(NicBackend::Tap) => TapNet::create().map(Some),
            Some(NicBackend::User | NicBackend::Passt) | None => Ok(None),
        }
    }

    /// The namespace's name (for `ip netns exec` and [`enter_netns`]).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The tap device's name inside the namespace.
    pub fn ifname(&self) -> &'static str {
        TAP_IFNAME
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NS program`); add
    /// the program's arguments to it.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(in_netns_args(&self.netns, program));
        command
    }
}

impl Drop for TapNet {
    fn drop(&mut self) {
        // The tap goes with the namespace; deleting it first also works while something in the
        // namespace still holds the namespace open.
        let ns = self.netns.clone();
        let _ = run_ip(&[
            "-n".into(),
            ns.clone(),
            "link".into(),
            "delete".into(),
            "dev".into(),
            TAP_IFNAME.into(),
        ]);
        if let Err(e) = run_ip(&["netns".into(), "delete".into(), ns]) {
            eprintln!(
                "sluice: could not delete network namespace {}: {e}",
                self.netns
            );
        }
    }
}

/// Whether a namespace of this name exists (`ip netns list` would show it).
pub fn netns_exists(netns: &str) -> bool {
    Path::new(NETNS_DIR).join(netns).exists()
}

/// Moves the calling thread into network namespace `netns` for good: sockets it creates from
/// then on live there (reach the VMs at their own addresses). Other threads are not affected;
/// use it on a thread of its own.
pub fn enter_netns(netns: &str) -> Result<(), String> {
    use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
    let path = Path::new(NETNS_DIR).join(netns);
    let file = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
        .map_err(|e| format!("cannot enter network namespace {netns}: {e}"))
}

/// The arguments of the host's `ping` (iputils) for `count` requests to `target`: numeric
/// output (no name lookups in a namespace without DNS), each reply waited for at most 2 s.
pub fn ping_args(target: Ipv4Addr, count: u32) -> Vec<String> {
    vec![
        "-n".into(),
        "-c".into(),
        count.to_string(),
        "-W".into(),
        "2".into(),
        target.to_string(),
    ]
}

/// Parses the statistics `ping` prints at the end (iputils; busybox's wording too):
///
/// ```text
/// --- 10.0.2.15 ping statistics ---
/// 5 packets transmitted, 5 received, 0% packet loss, time 4006ms
/// rtt min/avg/max/mdev = 0.352/0.513/0.804/0.161 ms
/// ```
///
/// into the summary the guests' pings use too (`5/5, rtt min/avg/max 0.352/0.513/0.804 ms`).
/// `None` without a `packets transmitted` line.
pub fn parse_ping_output(output: &str) -> Option<PingSummary> {
    let target = output
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("--- ")?
                .strip_suffix(" ping statistics ---")
                .map(str::to_string)
        })
        .unwrap_or_default();
    let counts = output.lines().find(|l| l.contains("packets transmitted"))?;
    let mut fields = counts.split(',').map(str::trim);
    let sent = fields
        .next()?
        .strip_suffix("packets transmitted")?
        .trim()
        .parse()
        .ok()?;
    let received = fields.next()?;
    let replies = received
        .strip_suffix("packets received")
        .or_else(|| received.strip_suffix("received"))?
        .trim()
        .parse()
        .ok()?;
    let rtt = output.lines().find_map(|l| {
        let l = l.trim();
        let rest = l
            .strip_prefix("rtt ")
            .or_else(|| l.strip_prefix("round-trip "))?;
        let (_, values) = rest.split_once(" = ")?;
        // `0.352/0.513/0.804/0.161 ms`, possibly followed by `, pipe 2`.
        let (values, _) = values.split_once(" ms")?;
        let v: Vec<&str> = values.trim().split('/').collect();
        let numbers = v.len() >= 3 && v[..3].iter().all(|x| x.parse::<f64>().is_ok());
        numbers.then(|| format!("min/avg/max {}/{}/{} ms", v[0], v[1], v[2]))
    });
    Some(PingSummary {
        target,
        replies,
        sent,
        rtt,
    })
}

/// Runs the host's `ping` inside namespace `netns`: `count` requests to `target`, the whole run
/// killed after `limit`. `Err` when ping could not run or printed no statistics.
pub fn ping_in_netns(
    netns: &str,
    target: Ipv4Addr,
    count: u32,
    limit: Duration,
) -> Result<PingSummary, String> {
    let mut command = Command::new("ip");
    command
        .args(in_netns_args(netns, "ping"))
        .args(ping_args(target, count));
    let (status, stdout, stderr) = run_with_limit(command, limit)?;
    if let Some(summary) = parse_ping_output(&stdout) {
        return Ok(summary);
    }
    let how = match status {
        Some(status) => format!("it exited with {status}"),
        None => format!("it was killed after {limit:?}"),
    };
    let said = format!("{}\n{}", stdout.trim(), stderr.trim());
    let hint = if said.contains("No such file") || said.contains("not found") {
        " (install iputils-ping; ./run.sh setup does)"
    } else {
        ""
    };
    Err(format!(
        "ping {target} in namespace {netns} printed no statistics; {how}{hint}: {}",
        said.trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_unique_and_tell_their_process() {
        assert_eq!(netns_name(1234, 0), "sluice-1234-0");
        let a = next_netns_name();
        let b = next_netns_name();
        assert_ne!(a, b);
        let me = std::process::id();
        assert_eq!(netns_owner(&a), Some(me));
        assert_eq!(netns_owner(&b), Some(me));
        assert!(a.starts_with(&format!("sluice-{me}-")), "{a}");
        assert_eq!(netns_owner("sluice-77-3"), Some(77));
        for other in [
            "sluice-77",
            "sluice--3",
            "sluice-77-",
            "sluice-x-1",
            "sluice-1-2-3",
            "sluice-+1-2",
            "other-77-3",
            "sluice-99999999999-1",
        ] {
            assert_eq!(netns_owner(other), None, "{other}");
        }
        // Interface names have at most 15 characters.
        assert!(TAP_IFNAME.len() <= 15);
    }

    #[test]
    fn setup_makes_the_tap_with_the_gateway_address_inside_the_namespace() {
        let steps = setup_steps("sluice-1-0");
        let lines: Vec<(bool, String)> = steps.iter().map(|(r, a)| (*r, a.join(" "))).collect();
        let step = |r: bool, s: &str| (r, s.to_string());
        assert_eq!(
            lines,
            [
                step(true, "-n sluice-1-0 tuntap add dev sluice-tap mode tap"),
                step(
                    false,
                    "-n sluice-1-0 link set dev sluice-tap addrgenmode none"
                ),
                step(true, "-n sluice-1-0 addr add 10.0.2.2/24 dev sluice-tap"),
                step(true, "-n sluice-1-0 link set dev sluice-tap up"),
                step(true, "-n sluice-1-0 link set dev lo up"),
            ]
        );
        // The tap's address is every VM's default gateway.
        let gateway: Ipv4Addr = TAP_ADDRESS.split('/').next().unwrap().parse().unwrap();
        assert_eq!(gateway, crate::hostnet::DEFAULT_GATEWAY);
        assert_eq!(
            in_netns_args("sluice-1-0", "ping"),
            ["netns", "exec", "sluice-1-0", "ping"]
        );
    }

    #[test]
    fn support_needs_root_and_the_tun_device() {
        assert_eq!(support_verdict(Some(0), Ok(())), Ok(()));
        let e = support_verdict(Some(1000), Ok(())).unwrap_err();
        assert_eq!(
            e,
            "the tap option needs root and /dev/net/tun; use nic = \"user\" (running as uid 1000)"
        );
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = support_verdict(Some(0), Err(missing)).unwrap_err();
        assert!(
            e.starts_with(TAP_NEEDS) && e.contains("cannot open /dev/net/tun"),
            "{e}"
        );
        let e = support_verdict(None, Ok(())).unwrap_err();
        assert!(e.starts_with(TAP_NEEDS), "{e}");
        let status = "Name:\tx\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(parse_effective_uid(status), Some(0));
        assert_eq!(parse_effective_uid("Uid:\t5\t6\t7\t8\n"), Some(6));
        assert_eq!(parse_effective_uid("Name:\tx\n"), None);
        // Whatever this machine is, the answer is a clear one.
        if let Err(e) = tap_support() {
            assert!(e.starts_with(TAP_NEEDS), "{e}");
        }
    }

    #[test]
    fn ping_arguments() {
        assert_eq!(
            ping_args(Ipv4Addr::new(10, 0, 2, 15), 5).join(" "),
            "-n -c 5 -W 2 10.0.2.15"
        );
    }

    #[test]
    fn ping_statistics_are_parsed() {
        let all = "PING 10.0.2.15 (10.0.2.15) 56(84) bytes of data.\n\
                   64 bytes from 10.0.2.15: icmp_seq=1 ttl=64 time=0.804 ms\n\
                   \n\
                   --- 10.0.2.15 ping statistics ---\n\
                   5 packets transmitted, 5 received, 0% packet loss, time 4006ms\n\
                   rtt min/avg/max/mdev = 0.352/0.513/0.804/0.161 ms\n";
        let s = parse_ping_output(all).unwrap();
        assert_eq!((s.target.as_str(), s.replies, s.sent), ("10.0.2.15", 5, 5));
        assert!(s.all_answered());
        assert_eq!(s.detail(), "5/5, rtt min/avg/max 0.352/0.513/0.804 ms");

        let none = "--- 10.0.2.16 ping statistics ---\n\
                    5 packets transmitted, 0 received, +3 errors, 100% packet loss, time 4090ms\n\
                    pipe 3\n";
        let s = parse_ping_output(none).unwrap();
        assert_eq!((s.replies, s.sent, s.rtt.as_deref()), (0, 5, None));
        assert!(!s.all_answered());
        assert_eq!(s.detail(), "0/5 replies");

        let some = "--- 10.0.2.16 ping statistics ---\n\
                    5 packets transmitted, 3 received, +1 duplicates, 40% packet loss, time 4005ms\n\
                    rtt min/avg/max/mdev = 1.000/2.000/3.000/0.500 ms, pipe 2\n";
        let s = parse_ping_output(some).unwrap();
        assert_eq!((s.replies, s.sent), (3, 5));
        assert_eq!(
            s.detail(),
            "3/5 replies, rtt min/avg/max 1.000/2.000/3.000 ms"
        );

        // BusyBox.
        let busybox = "--- 10.0.2.2 ping statistics ---\n\
                       2 packets transmitted, 2 packets received, 0% packet loss\n\
                       round-trip min/avg/max = 0.1/0.2/0.3 ms\n";
        let s = parse_ping_output(busybox).unwrap();
        assert_eq!(s.detail(), "2/2, rtt min/avg/max 0.1/0.2/0.3 ms");

        for bad in [
            "",
            "ping: connect: Network is unreachable\n",
            "x packets transmitted, 1 received\n",
            "5 packets transmitted\n",
        ] {
            assert_eq!(parse_ping_output(bad), None, "{bad:?}");
        }
    }
}
