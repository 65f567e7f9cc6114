//! iperf3 for the benchmarks: reading the result lines the VMs' iperf3 ends print, driving the
//! host's stock `iperf3` client and reading its `-J` JSON, and [`HostIperfs`], the host side of
//! a topology's `host_iperf` settings (like [`HostChecks`](crate::net::HostChecks) for
//! `host_echo`).
//!
//! - [`parse_result_line`]: `IPERF client 10.0.2.16 -> 10.0.2.17: tcp 5.00 s, 12345678 bytes,
//!   19.75 Mbit/s, sender` (see [`console::IPERF_RESULT`]).
//! - [`check_host_iperf3`], [`run_client`], [`parse_client_json`]: `iperf3 -c 127.0.0.1 -p PORT
//!   -t N -J [-R]` through a QEMU port forward, with a hard time limit and retries while the
//!   server in the VM is not listening yet.
//! - [`HostIperfs::plan`]: every VM with `host_iperf` in its settings (a harness-only key: the
//!   VM ignores it) gets a host port forwarded to its iperf3 server (its `ip`, port
//!   `iperf_port`, default 5201); once its console says the server is up, a thread runs the
//!   host's client in the directions the key names:
//!   `host_iperf = true` or `"both"`: the host sends, then receives (`-R`); `"send"`: the host
//!   sends only; `"receive"`: the host receives only. The VM must run an iperf3 server
//!   (`iperf = "server"`), and the topology needs a NIC.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared_abi::bundle::VmKind;

use crate::console;
use crate::net::{free_port, Proto};
use crate::process::run_with_limit;
use crate::qemu::HostForward;
use crate::topology::{Topology, VmDef};

/// iperf3's port, the default of the VMs' servers (`iperf_port`).
pub const IPERF_PORT: u16 = 5201;

/// Which end of a test printed a result line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// A VM's iperf3 result line.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultLine {
    /// The VM that printed it (the console prefix), if the line had one.
    pub vm: Option<String>,
    pub role: Role,
    /// The printing side's address and its peer's, as printed (empty if absent).
    pub local: String,
    pub peer: String,
    /// How long the test counted, if printed.
    pub seconds: Option<f64>,
    /// Bytes this side moved, if printed.
    pub bytes: Option<u64>,
    /// This side's throughput, in Mbit/s.
    pub mbps: f64,
    /// This side received the data (its figure is the one that counts).
    pub receiver: bool,
    /// A reverse-mode test (the server sent).
    pub reverse: bool,
}

/// Parses a VM's iperf3 result line, with or without the `[vm] ` console prefix:
///
/// ```text
/// [guest1] IPERF client 10.0.2.16 -> 10.0.2.17: tcp 5.00 s, 12345678 bytes, 19.75 Mbit/s, sender
/// [guest2] IPERF server 10.0.2.17 <- 10.0.2.16: tcp 4.99 s, 12345678 bytes, 19.76 Mbit/s, receiver (reverse)
/// ```
///
/// `None` when the line's text (after the prefix and any `[TAG] `) does not start with `IPERF `:
/// the per-second `iperf: ...` lines are lower case, and a `REPORT ok: ...` line quoting a
/// result is not one.
/// What it relies on: `IPERF `, then the role word `client` or `server`, the addresses, `: `,
/// then comma-separated parts in any order, of which a rate (`<number> Mbit/s`; `Kbit/s`,
/// `Gbit/s` and `bit/s` are converted) and the word `sender` or `receiver` are required;
/// `<number> s` and `<number> bytes` are read if present, other parts are ignored, and
/// `(reverse)` anywhere after the colon marks a reverse test. A line that starts like a
/// result but lacks a required part is an `Err` saying what is missing.
pub fn parse_result_line(line: &str) -> Option<Result<ResultLine, String>> {
    let (vm, text) = match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((vm, text)) => (Some(vm.to_string()), text),
        None => (None, line),
    };
    // Log-level tags like `[INFO] ` may come first; anything else (a `REPORT ok: ... last:
    // IPERF ...` summary quoting a result) is not a result line.
    let mut text = text;
    while let Some((_, after)) = text.strip_prefix('[').and_then(|t| t.split_once("] ")) {
        text = after;
    }
    let rest = text.strip_prefix(console::IPERF_RESULT)?;
    Some(parse_result(vm, rest).map_err(|why| format!("{why} in iperf result line '{line}'")))
}

fn parse_result(vm: Option<String>, rest: &str) -> Result<ResultLine, String> {
    let (head, tail) = rest.split_once(": ").ok_or("no ': ' after the addresses")?;
    let words: Vec<&str> = head.split_whitespace().collect();
    let role = match words.first() {
        Some(&"client") => Role::Client,
        Some(&"server") => Role::Server,
        _ => return Err("no role word (client or server)".into()),
    };
    let local = words.get(1).copied().unwrap_or_default().to_string();
    let peer = if words.len() >= 3 {
        words[words.len() - 1].to_string()
    } else {
        String::new()
    };
    let mut line = ResultLine {
        vm,
        role,
        local,
        peer,
        seconds: None,
        bytes: None,
        mbps: f64::NAN,
        receiver: false,
        reverse: tail.contains("(reverse)"),
    };
    let mut side = None;
    for part in tail.split(',').map(str::trim) {
        let part = part.replace("(reverse)", "");
        let words: Vec<&str> = part.split_whitespace().collect();
        match words.as_slice() {
            [word, ..] if *word == "sender" || *word == "receiver" => {
                side = Some(*word == "receiver")
            }
            [.., number, unit] if unit.ends_with("bit/s") => {
                let scale = match *unit {
                    "bit/s" => 1e-6,
                    "Kbit/s" | "kbit/s" => 1e-3,
                    "Mbit/s" => 1.0,
                    "Gbit/s" => 1e3,
                    _ => return Err(format!("unknown rate unit '{unit}'")),
                };
                let value: f64 = number
                    .parse()
                    .map_err(|_| format!("rate '{number}' is not a number"))?;
                line.mbps = value * scale;
            }
            [.., number, "bytes"] => line.bytes = number.parse().ok(),
            [.., number, "s"] => line.seconds = number.parse().ok(),
            _ => {}
        }
    }
    line.receiver = side.ok_or("no 'sender' or 'receiver'")?;
    if !line.mbps.is_finite() || line.mbps < 0.0 {
        return Err("no rate (like '19.75 Mbit/s')".into());
    }
    Ok(line)
}

/// What the host's `iperf3 -c ... -J` measured.
#[derive(Clone, Debug, PartialEq)]
pub struct HostRun {
    /// The receiving side's throughput (`end.sum_received`): the VM's count when the host
    /// sends (iperf3 gets it from the server's results), the host's own with `-R`.
    pub receiver_mbps: f64,
    /// The sending side's throughput (`end.sum_sent`).
    pub sender_mbps: f64,
    /// Bytes the receiver counted, and over how long.
    pub bytes: u64,
    pub seconds: f64,
    /// `-R`: the server (the VM) sent.
    pub reverse: bool,
}

/// Reads the JSON `iperf3 -c ... -J` prints: `end.sum_received` and `end.sum_sent`
/// (`bits_per_second`, `bytes`, `seconds`) and `start.test_start.reverse`. iperf3 reports a
/// failure as a top-level `"error"` string, which becomes the `Err`.
pub fn parse_client_json(text: &str) -> Result<HostRun, String> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        let head: String = text.chars().take(200).collect();
        format!("iperf3 did not print JSON ({e}): {head}")
    })?;
    if let Some(error) = doc.get("error") {
        return Err(format!(
            "iperf3: {}",
            error
                .as_str()
                .map(str::to_owned)
                .unwrap_or(error.to_string())
        ));
    }
    let sum = |key: &str| -> Result<&serde_json::Value, String> {
        doc.pointer(&format!("/end/{key}"))
            .filter(|v| v.is_object())
            .ok_or_else(|| format!("iperf3's JSON has no end.{key}"))
    };
    let number = |v: &serde_json::Value, key: &str| v.get(key).and_then(serde_json::Value::as_f64);
    let received = sum("sum_received")?;
    let sent = sum("sum_sent")?;
    let receiver_bps = number(received, "bits_per_second")
        .ok_or("iperf3's JSON has no end.sum_received.bits_per_second")?;
    Ok(HostRun {
        receiver_mbps: receiver_bps / 1e6,
        sender_mbps: number(sent, "bits_per_second").unwrap_or(0.0) / 1e6,
        bytes: number(received, "bytes").unwrap_or(0.0) as u64,
        seconds: number(received, "seconds").unwrap_or(0.0),
        reverse: doc
            .pointer("/start/test_start/reverse")
            .and_then(serde_json::Value::as_u64)
            .is_some_and(|r| r != 0),
    })
}

/// The host's iperf3: `$SLUICE_IPERF3` if set, else `iperf3` from `PATH`.
pub fn iperf3_binary() -> String {
    std::env::var("SLUICE_IPERF3").unwrap_or_else(|_| "iperf3".to_string())
}

/// The host's iperf3 version line, or a clear error if it is missing or does not run.
pub fn check_host_iperf3() -> Result<String, String> {
    check_iperf3_at(&iperf3_binary())
}

/// [`check_host_iperf3`] for the iperf3 at `binary`.
pub fn check_iperf3_at(binary: &str) -> Result<String, String> {
    let missing = |why: String| {
        format!(
            "the host's iperf3 ('{binary}') {why}: the throughput benchmarks need it; \
             run ./run.sh setup (it installs Debian's iperf3 package)"
        )
    };
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            missing(if e.kind() == std::io::ErrorKind::NotFound {
                "is not installed".to_string()
            } else {
                format!("cannot be started ({e})")
            })
        })?;
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let first = text.lines().next().unwrap_or_default().trim().to_string();
    if !first.starts_with("iperf 3") {
        return Err(missing(format!(
            "does not look like iperf3 (said '{first}')"
        )));
    }
    Ok(first)
}

/// How long after the first attempt [`run_client`] still starts new ones.
pub const RETRY_FOR: Duration = Duration::from_secs(20);

/// Where the host's iperf3 client reaches a VM's server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientTarget {
    /// A QEMU port forward (user networking, passt): 127.0.0.1 at the forward's host port.
    Forward { host_port: u16 },
    /// The VM's own address, from inside the tap option's network namespace (see
    /// [`crate::tap`]): no forward, the host's kernel talks to the VM directly.
    Netns {
        netns: String,
        ip: Ipv4Addr,
        port: u16,
    },
}

impl ClientTarget {
    /// The program and arguments of one `iperf3 -c` test against this target, `seconds` long,
    /// `-R` when `reverse`, JSON output.
    pub fn command_line(&self, binary: &str, seconds: u32, reverse: bool) -> Vec<String> {
        let (mut line, address, port) = match self {
            ClientTarget::Forward { host_port } => (
                vec![binary.to_string()],
                "127.0.0.1".to_string(),
                *host_port,
            ),
            ClientTarget::Netns { netns, ip, port } => (
                std::iter::once("ip".to_string())
                    .chain(crate::tap::in_netns_args(netns, binary))
                    .collect(),
                ip.to_string(),
                *port,
            ),
        };
        line.extend(
            [
                "-c",
                &address,
                "-p",
                &port.to_string(),
                "-t",
                &seconds.to_string(),
                "-J",
            ]
            .map(String::from),
        );
        if reverse {
            line.push("-R".into());
        }
        line
    }
}

/// Runs `iperf3 -c 127.0.0.1 -p host_port -t seconds -J` (with `-R` when `reverse`: the server
/// sends) until it succeeds or `limit` runs out: QEMU user networking accepts a connection on
/// the host at once and drops it when nothing listens in the VM yet, so a failed attempt is
/// retried every second for [`RETRY_FOR`], as long as a whole test still fits in the time
/// left. Each attempt is killed when it overruns the time left. The error is the last
/// attempt's.
pub fn run_client(
    host_port: u16,
    seconds: u32,
    reverse: bool,
    limit: Duration,
) -> Result<HostRun, String> {
    run_client_on(
        &ClientTarget::Forward { host_port },
        seconds,
        reverse,
        limit,
    )
}

/// [`run_client`] against any [`ClientTarget`].
pub fn run_client_on(
    target: &ClientTarget,
    seconds: u32,
    reverse: bool,
    limit: Duration,
) -> Result<HostRun, String> {
    let start = Instant::now();
    let deadline = start + limit;
    let test = Duration::from_secs(u64::from(seconds) + 5);
    let line = target.command_line(&iperf3_binary(), seconds, reverse);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match run_once(&line, left) {
            Ok(run) => return Ok(run),
            Err(e) => e,
        };
        let wait = Duration::from_secs(1);
        if Instant::now() + wait + test > deadline || start.elapsed() + wait > RETRY_FOR {
            return Err(format!(
                "{error} (attempt {attempts}, after {:.0} s of retries)",
                start.elapsed().as_secs_f64()
            ));
        }
        std::thread::sleep(wait);
    }
}

/// One `iperf3 -c` attempt (`line`: program and arguments), killed after `timeout`.
fn run_once(line: &[String], timeout: Duration) -> Result<HostRun, String> {
    let Some((program, args)) = line.split_first() else {
        return Err("an empty iperf3 command line".into());
    };
    let mut command = Command::new(program);
    command.args(args);
    let shown = line.join(" ");
    let (status, stdout, stderr) =
        run_with_limit(command, timeout).map_err(|e| format!("{e}: run ./run.sh setup"))?;
    let Some(status) = status else {
        return Err(format!(
            "{shown} did not finish within {timeout:?} (killed)"
        ));
    };
    parse_client_json(&stdout).map_err(|e| {
        let stderr = stderr.trim();
        if stderr.is_empty() {
            format!("{e} ({status})")
        } else {
            format!("{e} ({status}; stderr: {stderr})")
        }
    })
}

/// The host's stock `iperf3 -s -1 -J` on 127.0.0.1 (one test, then it exits), for a VM that
/// runs the client: reached by a guest at its gateway address, which passt (like slirp) maps to
/// the host's loopback. [`HostServer::finish`] gives the server's JSON, read like the client's
/// ([`parse_client_json`]): its `end.sum_received` is the receiver's figure when the VM sends;
/// when the server sends (the VM's `-R`), the VM's own result line has the receiver's figure.
pub struct HostServer {
    port: u16,
    thread: std::thread::JoinHandle<Result<HostRun, String>>,
}

impl HostServer {
    /// Starts the server on a free port; it is killed if it has not finished within `limit`.
    pub fn start(limit: Duration) -> HostServer {
        let port = free_port(Proto::Tcp);
        let binary = iperf3_binary();
        let thread = std::thread::spawn(move || {
            let mut command = Command::new(&binary);
            command.args(["-s", "-1", "-J", "-B", "127.0.0.1", "-p", &port.to_string()]);
            let (status, stdout, stderr) =
                run_with_limit(command, limit).map_err(|e| format!("{e}: run ./run.sh setup"))?;
            if status.is_none() {
                return Err(format!(
                    "iperf3 -s -p {port} ran no test within {limit:?} (killed)"
                ));
            }
            parse_client_json(&stdout).map_err(|e| format!("{e} (stderr: {})", stderr.trim()))
        });
        HostServer { port, thread }
    }

    /// The port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server has exited (its test done, or given up).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the server to finish (at most the limit given to `start`).
    pub fn finish(self) -> Result<HostRun, String> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err("the iperf3 server thread panicked".into()))
    }
}

/// Which way the data of a host iperf3 test flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The host sends to the VM (plain `iperf3 -c`).
    ToVm,
    /// The VM sends to the host (`iperf3 -c -R`).
    FromVm,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::ToVm => "host -> vm",
            Direction::FromVm => "vm -> host",
        }
    }
}

/// The directions a `host_iperf` value asks for; `Err` for a value that is not one of
/// `true`, `"both"`, `"send"`, `"receive"`, `false`.
pub fn parse_host_iperf(vm: &str, value: &str) -> Result<Vec<Direction>, String> {
    match value {
        "true" | "both" => Ok(vec![Direction::ToVm, Direction::FromVm]),
        "send" => Ok(vec![Direction::ToVm]),
        "receive" => Ok(vec![Direction::FromVm]),
        "false" => Ok(Vec::new()),
        other => Err(format!(
            "vm {vm:?}: host_iperf = {other:?} must be true, false, \"both\", \"send\" or \
             \"receive\""
        )),
    }
}

/// The outcome of each direction, in the order they ran.
type Outcomes = Arc<Mutex<Vec<(Direction, Result<HostRun, String>)>>>;

/// The host's iperf3 client against one VM's iperf3 server, through a QEMU port forward or
/// (the tap option) from inside the NIC's network namespace, started once that VM's console
/// says the server is up: a guest's [`console::IPERF_LISTENING`] line, or for a driver domain
/// its gateway ping's line ([`console::NIC_PING_GATEWAY`], printed after its server listens).
/// Not before: passt sends a connection to the address it last saw from the guest side, so a
/// driver domain that has sent nothing yet loses the first SYN, and passt gives a connection
/// 10 s to be answered (one lost attempt cost each `passthrough_passt` boot 10 s). The retries
/// of [`run_client`] cover a server that is not quite listening yet.
pub struct HostIperf {
    vm: String,
    kind: VmKind,
    ip: Ipv4Addr,
    vm_port: u16,
    target: ClientTarget,
    directions: Vec<Direction>,
    seconds: u32,
    /// Per direction, connection retries included.
    limit: Duration,
    started: AtomicBool,
    done: Arc<AtomicBool>,
    outcomes: Outcomes,
}

impl HostIperf {
    /// The client against `vm`'s server: through a port forward, or from inside `netns` (the
    /// tap option's namespace) when given.
    pub fn new(
        vm: &VmDef,
        directions: Vec<Direction>,
        seconds: u32,
        netns: Option<&str>,
    ) -> Result<HostIperf, String> {
        let vm_port = match vm.setting("iperf_port") {
            None => IPERF_PORT,
            Some(text) => text
                .parse()
                .map_err(|_| format!("vm {:?}: iperf_port = {text:?} is not a port", vm.name))?,
        };
        let ip = vm.ip()?;
        let target = match netns {
            Some(netns) => ClientTarget::Netns {
                netns: netns.to_string(),
                ip,
                port: vm_port,
            },
            None => ClientTarget::Forward {
                host_port: free_port(Proto::Tcp),
            },
        };
        Ok(HostIperf {
            vm: vm.name.clone(),
            kind: vm.kind,
            ip,
            vm_port,
            target,
            directions,
            seconds,
            limit: Duration::from_secs(u64::from(seconds) + 60),
            started: AtomicBool::new(false),
            done: Arc::new(AtomicBool::new(false)),
            outcomes: Default::default(),
        })
    }

    /// The VM whose server this runs against.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    pub fn directions(&self) -> &[Direction] {
        &self.directions
    }

    /// The port forward QEMU needs: 127.0.0.1:<free port> to the VM's iperf3 port; none from
    /// a namespace.
    pub fn forward(&self) -> Option<HostForward> {
        match self.target {
            ClientTarget::Forward { host_port } => {
                Some(HostForward::tcp(host_port, self.ip, self.vm_port))
            }
            ClientTarget::Netns { .. } => None,
        }
    }

    /// How the client reaches the server.
    pub fn target(&self) -> &ClientTarget {
        &self.target
    }

    /// Whether `line` (a whole console line, `[vm] ` prefix included) says this VM's server
    /// is up.
    pub fn starts_on(&self, line: &str) -> bool {
        let Some(text) = line
            .strip_prefix('[')
            .and_then(|l| l.strip_prefix(self.vm.as_str()))
            .and_then(|l| l.strip_prefix("] "))
        else {
            return false;
        };
        match self.kind {
            VmKind::DriverDomain => text.contains(console::NIC_PING_GATEWAY),
            _ => text.contains(console::IPERF_LISTENING),
        }
    }

    /// Feed every console line; the first one that [`starts_on`](Self::starts_on) starts the
    /// client on a thread of its own, one test per direction, one after the other.
    pub fn on_line(&self, line: &str) {
        if !self.starts_on(line) || self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let (target, seconds, limit) = (self.target.clone(), self.seconds, self.limit);
        let directions = self.directions.clone();
        let (done, outcomes) = (Arc::clone(&self.done), Arc::clone(&self.outcomes));
        std::thread::spawn(move || {
            for direction in directions {
                let result = run_client_on(&target, seconds, direction == Direction::FromVm, limit);
                outcomes
                    .lock()
                    .expect("not poisoned")
                    .push((direction, result));
            }
            done.store(true, Ordering::SeqCst);
        });
    }

    /// Every direction has run (either way).
    pub fn done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// The outcome of `direction`, or why there is none.
    pub fn outcome(&self, direction: Direction) -> Result<HostRun, String> {
        if !self.started.load(Ordering::SeqCst) {
            return Err(format!(
                "{} never said its iperf3 server is up ('{}'{})",
                self.vm,
                console::IPERF_LISTENING,
                if self.kind == VmKind::DriverDomain {
                    " or its NIC link-up line"
                } else {
                    ""
                }
            ));
        }
        let outcomes = self.outcomes.lock().expect("not poisoned");
        match outcomes.iter().find(|(d, _)| *d == direction) {
            Some((_, result)) => result
                .clone()
                .map_err(|e| format!("{} {}: {e}", self.vm, direction.name())),
            None if self.directions.contains(&direction) => Err(format!(
                "{} {}: the host's iperf3 did not finish before the boot ended",
                self.vm,
                direction.name()
            )),
            None => Err(format!(
                "{}: host_iperf does not ask for {}",
                self.vm,
                direction.name()
            )),
        }
    }
}

/// Every host iperf3 client a topology asks for (`host_iperf`), in VM order.
pub struct HostIperfs {
    clients: Vec<HostIperf>,
}

impl HostIperfs {
    /// `Err` for a `host_iperf` the boot cannot honour: a bad value, a VM that runs no iperf3
    /// server (`iperf = "server"`), no usable `ip`, or no NIC in the topology.
    pub fn plan(topology: &Topology, seconds: u32) -> Result<HostIperfs, String> {
        HostIperfs::plan_in(topology, seconds, None)
    }

    /// [`HostIperfs::plan`], the clients run inside network namespace `netns` when given (a
    /// topology with `nic = "tap"`: they reach each VM at its own address, with no forwards).
    pub fn plan_in(
        topology: &Topology,
        seconds: u32,
        netns: Option<&str>,
    ) -> Result<HostIperfs, String> {
        let mut clients = Vec::new();
        for vm in &topology.vms {
            let Some(value) = vm.setting("host_iperf") else {
                continue;
            };
            let directions = parse_host_iperf(&vm.name, value)?;
            if directions.is_empty() {
                continue;
            }
            if vm.setting("iperf") != Some("server") {
                return Err(format!(
                    "vm {:?}: host_iperf needs an iperf3 server in the VM (iperf = \"server\")",
                    vm.name
                ));
            }
            if topology.passthrough().is_none() {
                return Err(format!(
                    "vm {:?}: host_iperf needs a NIC, but no driver domain of the topology has \
                     a passthrough",
                    vm.name
                ));
            }
            clients.push(HostIperf::new(vm, directions, seconds, netns)?);
        }
        Ok(HostIperfs { clients })
    }

    pub fn clients(&self) -> &[HostIperf] {
        &self.clients
    }

    /// The client against VM `vm`, if it has one.
    pub fn get(&self, vm: &str) -> Option<&HostIperf> {
        self.clients.iter().find(|c| c.vm == vm)
    }

    /// Every port forward QEMU needs.
    pub fn forwards(&self) -> Vec<HostForward> {
        self.clients.iter().filter_map(HostIperf::forward).collect()
    }

    /// Feed every console line.
    pub fn on_line(&self, line: &str) {
        for client in &self.clients {
            client.on_line(line);
        }
    }

    /// Every client has finished (true when there are none).
    pub fn done(&self) -> bool {
        self.clients.iter().all(HostIperf::done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_result_lines_of_the_contract() {
        let l = parse_result_line(
            "[client1] IPERF client 10.0.2.16 -> 10.0.2.17: tcp 5.00 s, 12345678 bytes, \
             19.75 Mbit/s, sender",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            l,
            ResultLine {
                vm: Some("client1".into()),
                role: Role::Client,
                local: "10.0.2.16".into(),
                peer: "10.0.2.17".into(),
                seconds: Some(5.0),
                bytes: Some(12_345_678),
                mbps: 19.75,
                receiver: false,
                reverse: false,
            }
        );
        let l = parse_result_line(
            "IPERF server 10.0.2.17 <- 10.0.2.16: tcp 4.99 s, 12345678 bytes, 19.76 Mbit/s, \
             receiver (reverse)",
        )
        .unwrap()
        .unwrap();
        assert_eq!(l.vm, None);
        assert_eq!((l.role, l.receiver, l.reverse), (Role::Server, true, true));
        assert_eq!(
            (l.local.as_str(), l.peer.as_str()),
            ("10.0.2.17", "10.0.2.16")
        );
        assert_eq!((l.seconds, l.mbps), (Some(4.99), 19.76));
    }

    #[test]
    fn result_lines_tolerate_small_format_shifts() {
        // A log tag before it, ports on the addresses, other units, parts reordered or extra.
        let l = parse_result_line(
            "[dd] [INFO] IPERF server 10.0.2.15:5201 <- 10.0.2.2:40000: tcp, 1.5 Gbit/s, \
             receiver, 10.00 s, retransmits 0",
        )
        .unwrap()
        .unwrap();
        assert_eq!(l.vm.as_deref(), Some("dd"));
        assert_eq!((l.mbps, l.receiver, l.bytes), (1500.0, true, None));
        assert_eq!(l.peer, "10.0.2.2:40000");
        let l = parse_result_line("[g] IPERF client 1.2.3.4 -> 5.6.7.8: 900 Kbit/s, sender")
            .unwrap()
            .unwrap();
        assert!((l.mbps - 0.9).abs() < 1e-12 && !l.receiver);
    }

    #[test]
    fn other_lines_are_not_results_and_broken_results_are_errors() {
        for other in [
            "[g] iperf: 1 s, 2469135 bytes, 19.75 Mbit/s",
            "[g] iperf: client 10.0.2.16 -> 10.0.2.17: tcp test started, 5 s, this side sends",
            "[g] iperf: server listening on 10.0.2.16:5201",
            "[g] REPORT ok: iperf done",
            "[server1] REPORT ok: iperf server: 1 test(s); last: IPERF server 10.0.2.17 <- \
             10.0.2.16: tcp 2.01 s, 1345760 bytes, 5.35 Mbit/s, receiver",
            "[g] iperf: the receiver counted 1345760 bytes",
        ] {
            assert!(parse_result_line(other).is_none(), "{other}");
        }
        for (bad, why) in [
            (
                "[g] IPERF client 1.2.3.4 -> 5.6.7.8: tcp 5.00 s, sender",
                "no rate",
            ),
            (
                "[g] IPERF client 1.2.3.4 -> 5.6.7.8: tcp 5.00 s, 3 Mbit/s",
                "no 'sender'",
            ),
            (
                "[g] IPERF tester 1.2.3.4 -> 5.6.7.8: 3 Mbit/s, sender",
                "no role word",
            ),
            (
                "[g] IPERF client 1.2.3.4 -> 5.6.7.8 3 Mbit/s sender",
                "no ': '",
            ),
            (
                "[g] IPERF client a -> b: x Mbit/s, sender",
                "is not a number",
            ),
            (
                "[g] IPERF client a -> b: 3 Tbit/s, sender",
                "unknown rate unit",
            ),
        ] {
            let e = parse_result_line(bad).unwrap().unwrap_err();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    /// Trimmed from a real `iperf3 -c 127.0.0.1 -p 5999 -t 1 -J` (iperf 3.12).
    const CLIENT_JSON: &str = r#"{
        "start": {"connected": [{"socket": 5, "local_host": "127.0.0.1", "local_port": 51792,
                   "remote_host": "127.0.0.1", "remote_port": 5999}],
                  "version": "iperf 3.12",
                  "test_start": {"protocol": "TCP", "num_streams": 1, "blksize": 131072,
                                 "omit": 0, "duration": 1, "bytes": 0, "blocks": 0,
                                 "reverse": 0, "tos": 0, "target_bitrate": 0}},
        "intervals": [],
        "end": {"streams": [],
                "sum_sent": {"start": 0, "end": 1.001152, "seconds": 1.001152,
                             "bytes": 1850736640, "bits_per_second": 14788856357.476187,
                             "retransmits": 4, "sender": true},
                "sum_received": {"start": 0, "end": 1.003311, "seconds": 1.003311,
                                 "bytes": 1849425920, "bits_per_second": 14746581428.888948,
                                 "sender": true}}
    }"#;

    #[test]
    fn parses_the_client_json() {
        let run = parse_client_json(CLIENT_JSON).unwrap();
        assert!((run.receiver_mbps - 14_746.581_428_888_948).abs() < 1e-6);
        assert!((run.sender_mbps - 14_788.856_357_476_187).abs() < 1e-6);
        assert_eq!((run.bytes, run.reverse), (1_849_425_920, false));
        assert!((run.seconds - 1.003311).abs() < 1e-12);
        let reverse = CLIENT_JSON.replace("\"reverse\": 0", "\"reverse\": 1");
        assert!(parse_client_json(&reverse).unwrap().reverse);
    }

    #[test]
    fn client_json_errors_say_why() {
        // What iperf 3.12 prints when nothing listens.
        let refused = r#"{"start": {"connected": [], "version": "iperf 3.12"}, "intervals": [],
            "end": {}, "error": "unable to connect to server: Connection refused"}"#;
        assert_eq!(
            parse_client_json(refused).unwrap_err(),
            "iperf3: unable to connect to server: Connection refused"
        );
        let e = parse_client_json("iperf3: error - unable to connect").unwrap_err();
        assert!(e.starts_with("iperf3 did not print JSON"), "{e}");
        let e = parse_client_json(r#"{"end": {"sum_sent": {}}}"#).unwrap_err();
        assert_eq!(e, "iperf3's JSON has no end.sum_received");
        let e = parse_client_json(r#"{"end": {"sum_sent": {}, "sum_received": {}}}"#).unwrap_err();
        assert!(e.contains("bits_per_second"), "{e}");
    }

    #[test]
    fn an_empty_command_line_is_an_error_not_a_panic() {
        let e = run_once(&[], Duration::from_secs(1)).unwrap_err();
        assert_eq!(e, "an empty iperf3 command line");
    }

    #[test]
    fn a_missing_iperf3_says_to_run_setup() {
        let e = check_iperf3_at("/nonexistent/iperf3").unwrap_err();
        let line =
            ClientTarget::Forward { host_port: 1 }.command_line("/nonexistent/iperf3", 1, false);
        let e2 = run_once(&line, Duration::from_secs(1)).unwrap_err();
        assert!(
            e.contains("is not installed") && e.contains("run ./run.sh setup"),
            "{e}"
        );
        assert!(e2.contains("run ./run.sh setup"), "{e2}");
        // Something that runs but is not iperf3.
        let e = check_iperf3_at("true").unwrap_err();
        assert!(e.contains("does not look like iperf3"), "{e}");
    }

    const TOPOLOGY: &str = r#"
[machine]
cpus = 2
memory_mib = 256
[[vm]]
name = "dd"
kind = "driver-domain"
image = "driver-domain"
memory_mib = 16
vcpus = 1
passthrough = "00:02.0"
settings = { iperf = "server", host_iperf = "send" }
[[vm]]
name = "g1"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
backend = "dd"
settings = { app = "iperf", ip = "10.0.2.16/24", iperf = "server", host_iperf = true }
[[vm]]
name = "g2"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
backend = "dd"
settings = { app = "iperf", ip = "10.0.2.17/24", iperf = "server", iperf_port = 5300, host_iperf = "receive" }
[[vm]]
name = "g3"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
backend = "dd"
settings = { app = "iperf", ip = "10.0.2.18/24", iperf = "client", host_iperf = false }
"#;

    #[test]
    fn a_plan_in_a_namespace_reaches_each_vm_at_its_own_address_without_forwards() {
        let t = Topology::from_toml_str(TOPOLOGY).unwrap();
        let plan = HostIperfs::plan_in(&t, 2, Some("sluice-7-0")).unwrap();
        assert!(plan.forwards().is_empty(), "{:?}", plan.forwards());
        let targets: Vec<&ClientTarget> = plan.clients().iter().map(HostIperf::target).collect();
        let ns = |ip: &str, port| ClientTarget::Netns {
            netns: "sluice-7-0".into(),
            ip: ip.parse().unwrap(),
            port,
        };
        assert_eq!(
            targets,
            [
                &ns("10.0.2.15", 5201),
                &ns("10.0.2.16", 5201),
                &ns("10.0.2.17", 5300)
            ]
        );
        // The same rules as through forwards: who starts on what.
        assert!(plan
            .get("g1")
            .unwrap()
            .starts_on("[g1] iperf: server listening on 10.0.2.16:5201"));
    }

    #[test]
    fn client_command_lines_reach_a_forward_or_a_vm_inside_a_namespace() {
        let forward = ClientTarget::Forward { host_port: 40123 };
        assert_eq!(
            forward.command_line("iperf3", 5, false).join(" "),
            "iperf3 -c 127.0.0.1 -p 40123 -t 5 -J"
        );
        let inside = ClientTarget::Netns {
            netns: "sluice-9-1".into(),
            ip: "10.0.2.16".parse().unwrap(),
            port: 5201,
        };
        assert_eq!(
            inside.command_line("/opt/iperf3", 2, true).join(" "),
            "ip netns exec sluice-9-1 /opt/iperf3 -c 10.0.2.16 -p 5201 -t 2 -J -R"
        );
    }

    #[test]
    fn host_iperf_follows_the_topology() {
        let t = Topology::from_toml_str(TOPOLOGY).unwrap();
        let plan = HostIperfs::plan(&t, 2).unwrap();
        let rows: Vec<(String, Vec<Direction>, String)> = plan
            .clients()
            .iter()
            .map(|c| {
                let f = c.forward().expect("a forward without a namespace");
                (
                    c.vm().to_string(),
                    c.directions().to_vec(),
                    format!("{}:{}:{}", f.proto, f.guest_ip, f.guest_port),
                )
            })
            .collect();
        use Direction::*;
        assert_eq!(
            rows,
            [
                ("dd".into(), vec![ToVm], "tcp:10.0.2.15:5201".into()),
                ("g1".into(), vec![ToVm, FromVm], "tcp:10.0.2.16:5201".into()),
                ("g2".into(), vec![FromVm], "tcp:10.0.2.17:5300".into()),
            ]
        );
        let mut ports: Vec<u16> = plan.forwards().iter().map(|f| f.host_port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 3);
        assert!(plan.get("g3").is_none());
        assert!(!plan.done());
        // Who starts on what.
        let dd = plan.get("dd").unwrap();
        let g1 = plan.get("g1").unwrap();
        // A driver domain: once its first frames are out, not at link up or listening.
        assert!(!dd.starts_on("[dd] NIC 00:02.0 link up: virtio-net, MAC 52:54:00:12:34:56"));
        assert!(!dd.starts_on("[dd] iperf: server listening on 10.0.2.15:5201"));
        assert!(dd.starts_on("[dd] NIC ping gateway 10.0.2.2: no reply within 2 s"));
        assert!(dd.starts_on("[dd] NIC ping gateway 10.0.2.2: reply in 812 us"));
        assert!(dd.starts_on("[dd] NIC ping gateway 10.0.2.2: skipped on a restart"));
        assert!(!g1.starts_on("[g1] NIC ping gateway 10.0.2.2: reply in 812 us"));
        assert!(!g1.starts_on("[g1] NIC 00:02.0 link up"));
        assert!(!g1.starts_on("[g10] iperf: server listening on 10.0.2.26:5201"));
        assert!(!g1.starts_on("[g1] net up: MAC 02:51:55:00:00:02, IP 10.0.2.16/24"));
        assert!(g1.starts_on("[g1] iperf: server listening on 10.0.2.16:5201"));
        // Nothing started: the outcome says so.
        let e = g1.outcome(Direction::ToVm).unwrap_err();
        assert!(e.contains("g1 never said its iperf3 server is up"), "{e}");
        let e = dd.outcome(Direction::ToVm).unwrap_err();
        assert!(e.contains("NIC link-up"), "{e}");
    }

    #[test]
    fn host_iperf_refuses_what_cannot_be_done() {
        let case = |from: &str, to: &str| {
            assert!(TOPOLOGY.contains(from), "{from}");
            let t = Topology::from_toml_str(&TOPOLOGY.replacen(from, to, 1)).unwrap();
            HostIperfs::plan(&t, 2).err().unwrap_or_default()
        };
        let e = case("host_iperf = false", "host_iperf = \"sometimes\"");
        assert!(
            e.contains("vm \"g3\": host_iperf = \"sometimes\" must be"),
            "{e}"
        );
        let e = case("host_iperf = false", "host_iperf = true");
        assert!(
            e.contains("vm \"g3\": host_iperf needs an iperf3 server"),
            "{e}"
        );
        let e = case("passthrough = \"00:02.0\"\n", "");
        assert!(e.contains("needs a NIC"), "{e}");
        let e = case("iperf_port = 5300", "iperf_port = 70000");
        assert!(e.contains("is not a port"), "{e}");
        assert_eq!(parse_host_iperf("x", "false").unwrap(), []);
    }

    #[test]
    fn a_host_client_runs_against_a_local_iperf3_server() {
        // Only where iperf3 is installed (./run.sh setup installs it).
        if check_host_iperf3().is_err() {
            eprintln!("skipped: no iperf3 on this host");
            return;
        }
        let port = free_port(Proto::Tcp);
        let mut server = Command::new(iperf3_binary())
            .args(["-s", "-1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The first attempts may find no server yet: run_client retries.
        let run = run_client(port, 1, true, Duration::from_secs(30));
        let _ = server.kill();
        let _ = server.wait();
        let run = run.unwrap();
        assert!(
            run.reverse && run.receiver_mbps > 0.0 && run.bytes > 0,
            "{run:?}"
        );
        // Nothing listening: it gives up within the limit, with iperf3's reason.
        let start = Instant::now();
        let e = run_client(free_port(Proto::Tcp), 1, false, Duration::from_secs(3)).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(e.contains("unable to connect"), "{e}");
    }

    #[test]
    fn the_host_server_reports_what_it_received_and_gives_up_without_a_client() {
        if check_host_iperf3().is_err() {
            eprintln!("skipped: no iperf3 on this host");
            return;
        }
        let server = HostServer::start(Duration::from_secs(30));
        // The client retries until the server listens.
        let client = run_client(server.port(), 1, false, Duration::from_secs(30)).unwrap();
        let run = server.finish().unwrap();
        assert!(run.bytes > 0);
        assert!(
            !run.reverse && run.receiver_mbps > 0.0 && run.bytes > 0,
            "{run:?}"
        );
        // Its count is the one the client was told.
        assert_eq!(run.bytes, client.bytes, "{run:?} {client:?}");
        let idle = HostServer::start(Duration::from_secs(1));
        assert!(!idle.is_finished());
        let e = idle.finish().unwrap_err();
        assert!(e.contains("ran no test within"), "{e}");
    }
}
