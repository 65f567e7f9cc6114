//! Host-side network helpers for tests that talk to a VM through the NIC passed through to the
//! driver domain: QEMU forwards host ports on 127.0.0.1 to the guest network
//! ([`HostForward`](crate::hostnet::HostForward)), and these helpers pick the ports and run the
//! traffic.
//!
//! - [`free_port`]: a port that is free on 127.0.0.1 right now (to forward from).
//! - [`udp_echo`]: ping-style UDP echo, one datagram in flight; each datagram carries a sequence
//!   number and a pattern, so lost, late, reordered and corrupted echoes are told apart.
//! - [`tcp_echo`]: one TCP connection, a pattern streamed out and read back and compared. It
//!   retries the connection until the echo service answers, because with QEMU user networking
//!   the host side accepts at once and only drops the connection when the guest refuses it.
//! - [`HostEcho`]: one named check, the host reaching one VM's echo service (the driver
//!   domain's UDP and TCP echo, or a `net` guest's TCP echo through the driver domain's switch),
//!   started when that VM's console says its network is up; [`HostChecks`]: all of a topology's.
//! - With the tap option (`nic = "tap"`, [`crate::tap`]) there are no forwards: the echoes
//!   connect to the VM's own address from a thread inside the network namespace, and
//!   [`HostPing`] runs the host's real `ping` there (`ping host -> <vm>`).

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared_abi::bundle::VmKind;

use crate::console;
use crate::hostnet::HostForward;
pub use crate::hostnet::{Proto, DEFAULT_GATEWAY, DRIVER_DOMAIN_IP};
use crate::report::{Check, PingSummary};
use crate::topology::{GuestNic, NicBackend, Topology};

/// Where the helpers connect: QEMU's host forwards listen on the loopback address only.
const HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A port that is free on 127.0.0.1 for `proto` at the time of the call: binds port 0, reads
/// the port the kernel chose and releases it. Another process may take it before QEMU binds it
/// (the usual race of this technique); the kernel hands out ephemeral ports round-robin, so
/// that is rare. Panics if no socket can be bound at all, which means the host has no loopback
/// networking and no network test can run.
///
/// A port is handed out at most once per process: the kernel may give a just-released port to
/// the next bind of port 0, and two forwards of one boot on the same port make QEMU refuse to
/// start ("Could not set up host forwarding rule", seen once in CI).
pub fn free_port(proto: Proto) -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let addr = SocketAddr::from((HOST, 0));
    let mut last = 0;
    for _ in 0..1000 {
        let port = match proto {
            Proto::Udp => UdpSocket::bind(addr).and_then(|s| s.local_addr()),
            Proto::Tcp => TcpListener::bind(addr).and_then(|s| s.local_addr()),
        }
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a {proto} socket on {HOST}: {e}"));
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if handed_out.insert(port) {
            return port;
        }
        last = port;
    }
    // Every try gave a port this process already has: the set is not the problem then.
    last
}

/// What a UDP echo run saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EchoStats {
    /// Datagrams sent.
    pub sent: usize,
    /// Datagrams echoed intact before their timeout.
    pub received: usize,
    /// Echoes carrying the sequence number being waited for but different bytes, plus
    /// datagrams that match nothing sent (too short, or a sequence number not sent yet).
    pub mismatched: usize,
    /// Intact echoes of an earlier datagram that arrived after its timeout (not in `received`).
    pub late: usize,
    /// Round-trip times of the `received` datagrams; all zero when none was received.
    pub rtt_min: Duration,
    pub rtt_avg: Duration,
    pub rtt_max: Duration,
}

impl EchoStats {
    /// Datagrams sent that were not echoed intact in time.
    pub fn lost(&self) -> usize {
        self.sent - self.received
    }
}

impl fmt::Display for EchoStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent, {} echoed, {} mismatched, {} late; rtt min/avg/max {:?}/{:?}/{:?}",
            self.sent,
            self.received,
            self.mismatched,
            self.late,
            self.rtt_min,
            self.rtt_avg,
            self.rtt_max
        )
    }
}

/// Bytes of the sequence number at the start of every UDP datagram (big-endian `u64`).
pub const UDP_HEADER_LEN: usize = 8;

/// The datagram with sequence number `seq`: the number, then a pattern that depends on it, so an
/// echo of the wrong datagram or with shifted bytes does not compare equal.
fn udp_datagram(seq: u64, len: usize) -> Vec<u8> {
    let mut out = seq.to_be_bytes().to_vec();
    out.extend((0..len - UDP_HEADER_LEN).map(|i| pattern_byte(seq.wrapping_mul(131) + i as u64)));
    out
}

/// A byte sequence that does not repeat with any short period (a shift by 1 or 256 bytes
/// changes it).
fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// Sends `count` datagrams of `payload_len` bytes (at least [`UDP_HEADER_LEN`]; shorter values
/// are raised to it) to 127.0.0.1:`host_port`, one at a time: each waits at most `timeout` for
/// its echo before the next is sent, so the run takes at most `count * timeout`. Echoes are
/// checked byte for byte. A datagram whose echo does not come in time is lost; if its echo comes
/// later it is counted as `late`. Network errors on a send leave that datagram unsent.
pub fn udp_echo(host_port: u16, count: usize, payload_len: usize, timeout: Duration) -> EchoStats {
    udp_echo_at(
        SocketAddr::from((HOST, host_port)),
        count,
        payload_len,
        timeout,
    )
}

/// [`udp_echo`] to any address (e.g. a VM's own, from inside the tap option's namespace).
pub fn udp_echo_at(
    peer: SocketAddr,
    count: usize,
    payload_len: usize,
    timeout: Duration,
) -> EchoStats {
    let payload_len = payload_len.max(UDP_HEADER_LEN);
    let local = if peer.ip().is_loopback() {
        HOST
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let socket = UdpSocket::bind(SocketAddr::from((local, 0)))
        .unwrap_or_else(|e| panic!("cannot bind a UDP socket on {local}: {e}"));
    let mut stats = EchoStats {
        sent: 0,
        received: 0,
        mismatched: 0,
        late: 0,
        rtt_min: Duration::ZERO,
        rtt_avg: Duration::ZERO,
        rtt_max: Duration::ZERO,
    };
    let mut rtts: Vec<Duration> = Vec::with_capacity(count);
    // Room for an echo longer than what was sent, so it is seen as a mismatch, not truncated.
    let mut buf = vec![0u8; payload_len + 1];
    for seq in 0..count as u64 {
        let datagram = udp_datagram(seq, payload_len);
        let sent_at = Instant::now();
        // Nothing listening answers with ICMP port unreachable, which a later call may report as
        // ConnectionRefused; it is a lost datagram, not a reason to stop.
        if socket.send_to(&datagram, peer).is_err() {
            continue;
        }
        stats.sent += 1;
        let deadline = sent_at + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // set_read_timeout refuses zero; the loop condition keeps the wait positive.
            let _ = socket.set_read_timeout(Some(deadline - now));
            let len = match socket.recv_from(&mut buf) {
                Ok((len, from)) if from == peer => len,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // ConnectionRefused (ICMP) and the like: keep waiting out this datagram's time.
                Err(_) => {
                    std::thread::sleep(
                        deadline
                            .saturating_duration_since(Instant::now())
                            .min(ms(10)),
                    );
                    continue;
                }
            };
            let echo = &buf[..len];
            let echo_seq = echo
                .get(..UDP_HEADER_LEN)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
            match echo_seq {
                Some(s) if s == seq => {
                    if echo == datagram.as_slice() {
                        stats.received += 1;
                        rtts.push(sent_at.elapsed());
                    } else {
                        stats.mismatched += 1;
                    }
                    break;
                }
                Some(s) if s < seq && echo == udp_datagram(s, payload_len).as_slice() => {
                    stats.late += 1;
                }
                _ => stats.mismatched += 1,
            }
        }
    }
    if let (Some(min), Some(max)) = (rtts.iter().min(), rtts.iter().max()) {
        stats.rtt_min = *min;
        stats.rtt_max = *max;
        stats.rtt_avg = rtts.iter().sum::<Duration>() / rtts.len() as u32;
    }
    stats
}

/// What a successful TCP echo run measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpEchoStats {
    /// Bytes sent, all of which came back intact.
    pub bytes: usize,
    /// Connections made, the successful one included.
    pub attempts: u32,
    /// From the first connection attempt to the start of the successful one.
    pub connect_time: Duration,
    /// From the successful connection to the last byte read back.
    pub transfer_time: Duration,
}

impl TcpEchoStats {
    /// Echo throughput in one direction, in megabits per second.
    pub fn mbit_per_s(&self) -> f64 {
        let secs = self.transfer_time.as_secs_f64();
        if secs == 0.0 {
            return 0.0;
        }
        self.bytes as f64 * 8.0 / secs / 1e6
    }
}

impl fmt::Display for TcpEchoStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes echoed in {:?} ({:.2} Mbit/s) after {} connection attempt(s) over {:?}",
            self.bytes,
            self.transfer_time,
            self.mbit_per_s(),
            self.attempts,
            self.connect_time
        )
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How one connection attempt ended.
enum Attempt {
    /// The service was not there (refused, or closed before echoing anything): try again.
    Retry(String),
    /// Something was echoed and then it went wrong: final.
    Failed(String),
    Done(Duration),
}

/// Connects to 127.0.0.1:`host_port`, sends `bytes` bytes of a pattern, reads them back and
/// compares them, all within `timeout` from the call. Writing runs on its own thread so a large
/// transfer cannot deadlock on full buffers. A connection that is refused, or closed before the
/// first byte comes back (QEMU's user networking accepts on the host and then drops the
/// connection if the guest is not listening yet), is retried every 100 ms until the timeout. The
/// error says why the last attempt failed, or where the echo first differed.
pub fn tcp_echo(host_port: u16, bytes: usize, timeout: Duration) -> Result<TcpEchoStats, String> {
    tcp_echo_at(SocketAddr::from((HOST, host_port)), bytes, timeout)
}

/// [`tcp_echo`] to any address (e.g. a VM's own, from inside the tap option's namespace).
pub fn tcp_echo_at(
    peer: SocketAddr,
    bytes: usize,
    timeout: Duration,
) -> Result<TcpEchoStats, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let data: Arc<[u8]> = (0..bytes as u64).map(pattern_byte).collect();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let attempt_start = Instant::now();
        match tcp_attempt(peer, &data, deadline) {
            Attempt::Done(transfer_time) => {
                return Ok(TcpEchoStats {
                    bytes,
                    attempts,
                    connect_time: attempt_start - start,
                    transfer_time,
                })
            }
            Attempt::Failed(why) => {
                return Err(format!(
                    "TCP echo via {peer} failed (attempt {attempts}): {why}"
                ))
            }
            Attempt::Retry(why) => {
                let now = Instant::now();
                if now + ms(100) >= deadline {
                    return Err(format!(
                        "no TCP echo via {peer} within {timeout:?} \
                         ({attempts} attempt(s)); last: {why}"
                    ));
                }
                std::thread::sleep(ms(100));
            }
        }
    }
}

fn tcp_attempt(peer: SocketAddr, data: &Arc<[u8]>, deadline: Instant) -> Attempt {
    let remaining = || deadline.saturating_duration_since(Instant::now());
    if remaining().is_zero() {
        return Attempt::Retry("timed out before connecting".into());
    }
    let stream = match TcpStream::connect_timeout(&peer, remaining()) {
        Ok(stream) => stream,
        Err(e) => return Attempt::Retry(format!("connect: {e}")),
    };
    let connected = Instant::now();
    let _ = stream.set_nodelay(true);
    let writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(e) => return Attempt::Failed(format!("cannot clone the socket: {e}")),
    };
    let to_send = Arc::clone(data);
    let write_deadline = deadline;
    let writer = std::thread::spawn(move || -> Result<(), String> {
        let mut writer = writer;
        for chunk in to_send.chunks(16 * 1024) {
            let left = write_deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out while sending".into());
            }
            let _ = writer.set_write_timeout(Some(left));
            writer.write_all(chunk).map_err(|e| format!("send: {e}"))?;
        }
        Ok(())
    });

    let mut reader = stream;
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let outcome = loop {
        if received == data.len() {
            break Attempt::Done(connected.elapsed());
        }
        let left = remaining();
        if left.is_zero() {
            break Attempt::Failed(format!(
                "timed out with {received} of {} bytes echoed",
                data.len()
            ));
        }
        let _ = reader.set_read_timeout(Some(left));
        let want = (data.len() - received).min(buf.len());
        match reader.read(&mut buf[..want]) {
            Ok(0) if received == 0 => {
                break Attempt::Retry("connection closed before anything was echoed".into())
            }
            Ok(0) => {
                break Attempt::Failed(format!(
                    "connection closed after {received} of {} bytes echoed",
                    data.len()
                ))
            }
            Ok(n) => {
                let expected = &data[received..received + n];
                if let Some(i) = (0..n).find(|&i| buf[i] != expected[i]) {
                    break Attempt::Failed(format!(
                        "echo differs at byte {}: sent {:#04x}, got {:#04x}",
                        received + i,
                        expected[i],
                        buf[i]
                    ));
                }
                received += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if received == 0 => break Attempt::Retry(format!("receive: {e}")),
            Err(e) => {
                break Attempt::Failed(format!(
                    "receive after {received} of {} bytes echoed: {e}",
                    data.len()
                ))
            }
        }
    };
    // Unblocks the writer if it is still sending (the peer stopped reading or is gone).
    let _ = reader.shutdown(Shutdown::Both);
    let written = writer
        .join()
        .unwrap_or_else(|_| Err("writer thread panicked".into()));
    match (outcome, written) {
        (Attempt::Done(t), Ok(())) => Attempt::Done(t),
        // Everything came back, so every byte was sent; a late write error cannot matter.
        (Attempt::Done(t), Err(_)) => Attempt::Done(t),
        (other, _) => other,
    }
}

/// The echo service port of every VM's network stack (UDP and TCP).
pub const ECHO_PORT: u16 = 7;
/// UDP datagrams and TCP bytes the checks send.
pub const UDP_COUNT: usize = 10;
pub const TCP_BYTES: usize = 256 * 1024;
/// How long the TCP echo of a check may take, connection retries included, and how long each
/// UDP datagram's echo is waited for.
pub const ECHO_TIMEOUTS: Timeouts = Timeouts {
    udp_each: Duration::from_secs(2),
    tcp: Duration::from_secs(20),
};

/// [`ECHO_TIMEOUTS`] for a guest with the emulated NIC, whose every 4 bytes of frame cost a
/// trapped access: its TCP echo moves at tens of KB/s (0.34 Mbit/s measured guest to guest,
/// 17:12 UTC), so 256 KiB each way needs far more than 20 s.
pub const EMULATED_ECHO_TIMEOUTS: Timeouts = Timeouts {
    udp_each: Duration::from_secs(2),
    tcp: Duration::from_secs(150),
};

/// Time limits of a [`HostEcho`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Per UDP datagram.
    pub udp_each: Duration,
    /// For the whole TCP echo, connection retries included.
    pub tcp: Duration,
}

/// What a [`HostEcho`] or [`HostPing`] talks to, which decides when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EchoKind {
    /// The driver domain's own stack, once it says its NIC link is up
    /// ([`console::NIC_LINK_UP`]). Its echo is UDP then TCP: check `host -> <vm>`.
    DriverDomain,
    /// A `net` guest behind the driver domain's switch, once the guest prints
    /// [`console::NET_UP`]. Its echo is TCP: check `tcp host -> <vm> echo`.
    Guest,
}

/// Whether `line` (a whole console line, `[vm] ` prefix included) is `vm` saying its network
/// is up.
fn ready_line(vm: &str, kind: EchoKind, line: &str) -> bool {
    let Some(text) = line
        .strip_prefix('[')
        .and_then(|l| l.strip_prefix(vm))
        .and_then(|l| l.strip_prefix("] "))
    else {
        return false;
    };
    match kind {
        EchoKind::DriverDomain => console::NIC_LINK_UP.iter().all(|s| text.contains(s)),
        EchoKind::Guest => text.contains(console::NET_UP),
    }
}

/// Why a check of `vm` never started.
fn never_ready(vm: &str, kind: EchoKind) -> String {
    match kind {
        EchoKind::DriverDomain => {
            format!("{vm} never said its NIC link is up (see its console lines)")
        }
        EchoKind::Guest => format!(
            "{vm} never printed '{}' (see its console lines)",
            console::NET_UP
        ),
    }
}

/// Host-side work started once, on a thread of its own, and its outcome.
struct Background<T> {
    started: AtomicBool,
    outcome: Arc<Mutex<Option<Result<T, String>>>>,
}

impl<T: Clone + Send + 'static> Background<T> {
    fn new() -> Background<T> {
        Background {
            started: AtomicBool::new(false),
            outcome: Default::default(),
        }
    }

    /// Runs `work` on a new thread, unless something was started already.
    fn start(&self, work: impl FnOnce() -> Result<T, String> + Send + 'static) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let outcome = Arc::clone(&self.outcome);
        std::thread::spawn(move || {
            let result = work();
            *outcome.lock().expect("not poisoned") = Some(result);
        });
    }

    fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    fn done(&self) -> bool {
        self.outcome.lock().expect("not poisoned").is_some()
    }

    /// The outcome; `Err(not_started)` if nothing was started, and an error if it is still
    /// running.
    fn outcome(&self, not_started: impl FnOnce() -> String, what: &str) -> Result<T, String> {
        if !self.started() {
            return Err(not_started());
        }
        self.outcome
            .lock()
            .expect("not poisoned")
            .clone()
            .unwrap_or_else(|| Err(format!("the {what} did not finish before the boot ended")))
    }
}

/// How a [`HostEcho`] reaches its VM.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    /// User networking: QEMU forwards these ports on 127.0.0.1 to the VM's echo port (UDP for
    /// a driver domain only).
    Forwarded {
        udp_port: Option<u16>,
        tcp_port: u16,
    },
    /// The tap option: straight to the VM's address, from a thread inside this network
    /// namespace.
    Netns(String),
}

/// The host reaching one VM's echo service (port 7) through the NIC. With user networking,
/// QEMU forwards host ports on 127.0.0.1 to the VM's address; with the tap option the echo
/// connects to the VM's address from inside the network namespace. Once the VM's console says
/// its network is up, a thread runs the echo while the boot goes on. The demo (`sluice-run`)
/// and the integration tests use the same checks (see [`HostChecks`]), so both report the same
/// thing.
pub struct HostEcho {
    vm: String,
    ip: Ipv4Addr,
    kind: EchoKind,
    route: Route,
    timeouts: Timeouts,
    run: Background<String>,
}

impl HostEcho {
    /// The driver domain `vm` at `ip` through port forwards: UDP and TCP echo (`host -> <vm>`).
    pub fn driver_domain(vm: &str, ip: Ipv4Addr) -> HostEcho {
        HostEcho::with_ports(
            vm,
            ip,
            EchoKind::DriverDomain,
            Some(free_port(Proto::Udp)),
            free_port(Proto::Tcp),
            ECHO_TIMEOUTS,
        )
    }

    /// The guest `vm` at `ip` through a port forward: TCP echo (`tcp host -> <vm> echo`).
    pub fn guest(vm: &str, ip: Ipv4Addr) -> HostEcho {
        HostEcho::with_ports(
            vm,
            ip,
            EchoKind::Guest,
            None,
            free_port(Proto::Tcp),
            ECHO_TIMEOUTS,
        )
    }

    /// [`HostEcho::driver_domain`] with the tap option: from inside network namespace `netns`.
    pub fn driver_domain_in_netns(vm: &str, ip: Ipv4Addr, netns: &str) -> HostEcho {
        HostEcho::new(
            vm,
            ip,
            EchoKind::DriverDomain,
            Route::Netns(netns.to_string()),
            ECHO_TIMEOUTS,
        )
    }

    /// [`HostEcho::guest`] with the tap option: from inside network namespace `netns`.
    pub fn guest_in_netns(vm: &str, ip: Ipv4Addr, netns: &str) -> HostEcho {
        HostEcho::new(
            vm,
            ip,
            EchoKind::Guest,
            Route::Netns(netns.to_string()),
            ECHO_TIMEOUTS,
        )
    }

    fn with_ports(
        vm: &str,
        ip: Ipv4Addr,
        kind: EchoKind,
        udp_port: Option<u16>,
        tcp_port: u16,
        timeouts: Timeouts,
    ) -> HostEcho {
        HostEcho::new(
            vm,
            ip,
            kind,
            Route::Forwarded { udp_port, tcp_port },
            timeouts,
        )
    }

    fn new(vm: &str, ip: Ipv4Addr, kind: EchoKind, route: Route, timeouts: Timeouts) -> HostEcho {
        HostEcho {
            vm: vm.to_string(),
            ip,
            kind,
            route,
            timeouts,
            run: Background::new(),
        }
    }

    /// The same check with other time limits.
    pub fn with_timeouts(self, timeouts: Timeouts) -> HostEcho {
        HostEcho { timeouts, ..self }
    }

    /// The VM this check talks to.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// The check's name: `host -> driver-domain`, `tcp host -> guest1 echo`.
    pub fn name(&self) -> String {
        match self.kind {
            EchoKind::DriverDomain => format!("host -> {}", self.vm),
            EchoKind::Guest => format!("tcp host -> {} echo", self.vm),
        }
    }

    /// The port forwards QEMU needs (none with the tap option).
    pub fn forwards(&self) -> Vec<HostForward> {
        let Route::Forwarded { udp_port, tcp_port } = self.route else {
            return Vec::new();
        };
        let mut out: Vec<HostForward> = udp_port
            .map(|port| HostForward::udp(port, self.ip, ECHO_PORT))
            .into_iter()
            .collect();
        out.push(HostForward::tcp(tcp_port, self.ip, ECHO_PORT));
        out
    }

    /// Where the UDP echo (driver domains only) and the TCP echo go.
    fn targets(&self) -> (Option<SocketAddr>, SocketAddr) {
        match self.route {
            Route::Forwarded { udp_port, tcp_port } => (
                udp_port.map(|port| SocketAddr::from((HOST, port))),
                SocketAddr::from((HOST, tcp_port)),
            ),
            Route::Netns(_) => {
                let at = SocketAddr::from((self.ip, ECHO_PORT));
                ((self.kind == EchoKind::DriverDomain).then_some(at), at)
            }
        }
    }

    /// Whether `line` (a whole console line, `[vm] ` prefix included) is the VM saying its
    /// network is up.
    pub fn starts_on(&self, line: &str) -> bool {
        ready_line(&self.vm, self.kind, line)
    }

    /// Feed every console line; the first line that [`starts_on`](Self::starts_on) starts the
    /// echo on a thread of its own (which first enters the namespace with the tap option).
    pub fn on_line(&self, line: &str) {
        if !self.starts_on(line) {
            return;
        }
        let (kind, (udp, tcp), timeouts) = (self.kind, self.targets(), self.timeouts);
        let netns = match &self.route {
            Route::Netns(netns) => Some(netns.clone()),
            Route::Forwarded { .. } => None,
        };
        self.run.start(move || {
            if let Some(netns) = netns {
                crate::tap::enter_netns(&netns)?;
            }
            run_echo(kind, udp, tcp, timeouts)
        });
    }

    /// True once the echo has finished (either way).
    pub fn done(&self) -> bool {
        self.run.done()
    }

    /// The echo's outcome: a summary, or why it failed.
    pub fn outcome(&self) -> Result<String, String> {
        self.run
            .outcome(|| never_ready(&self.vm, self.kind), "echo")
    }

    /// The outcome as a named check.
    pub fn check(&self) -> Check {
        let outcome = self.outcome();
        Check::new(
            self.name(),
            outcome.is_ok(),
            outcome.unwrap_or_else(|why| why),
        )
    }
}

/// The traffic of one [`HostEcho`]; the summary or why it failed.
fn run_echo(
    kind: EchoKind,
    udp: Option<SocketAddr>,
    tcp: SocketAddr,
    timeouts: Timeouts,
) -> Result<String, String> {
    let udp = match udp {
        Some(peer) => {
            let udp = udp_echo_at(peer, UDP_COUNT, 64, timeouts.udp_each);
            if udp.received < udp.sent || udp.mismatched > 0 {
                return Err(format!(
                    "udp echo: {}/{} answered, {} corrupted",
                    udp.received, udp.sent, udp.mismatched
                ));
            }
            Some(udp)
        }
        None => None,
    };
    let tcp = tcp_echo_at(tcp, TCP_BYTES, timeouts.tcp).map_err(|e| format!("tcp echo: {e}"))?;
    let tcp_text = format!(
        "{} KiB in {} ms ({:.1} Mbit/s each way)",
        tcp.bytes / 1024,
        tcp.transfer_time.as_millis(),
        tcp.mbit_per_s()
    );
    Ok(match (kind, udp) {
        (EchoKind::DriverDomain, Some(udp)) => format!(
            "udp echo {}/{} (rtt min/avg/max {:.2}/{:.2}/{:.2} ms), tcp echo {tcp_text}",
            udp.received,
            udp.sent,
            udp.rtt_min.as_secs_f64() * 1e3,
            udp.rtt_avg.as_secs_f64() * 1e3,
            udp.rtt_max.as_secs_f64() * 1e3,
        ),
        _ => tcp_text,
    })
}

/// Echo requests each [`HostPing`] sends.
pub const HOST_PING_COUNT: u32 = 5;
/// How long a [`HostPing`]'s `ping` may run before it is killed.
pub const HOST_PING_LIMIT: Duration = Duration::from_secs(30);

/// With the tap option: the host's real `ping` (iputils) run inside the network namespace
/// against one VM's address ([`HOST_PING_COUNT`] requests), started when that VM's console says
/// its network is up, like a [`HostEcho`]. Check `ping host -> <vm>`; it passes when every
/// request was sent and answered.
pub struct HostPing {
    vm: String,
    ip: Ipv4Addr,
    kind: EchoKind,
    netns: String,
    count: u32,
    run: Background<PingSummary>,
}

impl HostPing {
    /// The driver domain `vm` at `ip`, once its NIC link is up.
    pub fn driver_domain(vm: &str, ip: Ipv4Addr, netns: &str) -> HostPing {
        HostPing::new(vm, ip, EchoKind::DriverDomain, netns)
    }

    /// The `net` guest `vm` at `ip`, once it prints [`console::NET_UP`].
    pub fn guest(vm: &str, ip: Ipv4Addr, netns: &str) -> HostPing {
        HostPing::new(vm, ip, EchoKind::Guest, netns)
    }

    fn new(vm: &str, ip: Ipv4Addr, kind: EchoKind, netns: &str) -> HostPing {
        HostPing {
            vm: vm.to_string(),
            ip,
            kind,
            netns: netns.to_string(),
            count: HOST_PING_COUNT,
            run: Background::new(),
        }
    }

    /// The VM this check pings.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// The address pinged.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Requests sent.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// `ping host -> <vm>` (the guests' own pings of the host are `ping <vm> -> host`).
    pub fn name(&self) -> String {
        format!("ping host -> {}", self.vm)
    }

    /// Whether `line` is the VM saying its network is up.
    pub fn starts_on(&self, line: &str) -> bool {
        ready_line(&self.vm, self.kind, line)
    }

    /// Feed every console line; the first line that [`starts_on`](Self::starts_on) starts
    /// `ip netns exec NS ping ...` on a thread of its own.
    pub fn on_line(&self, line: &str) {
        if !self.starts_on(line) {
            return;
        }
        let (netns, ip, count) = (self.netns.clone(), self.ip, self.count);
        self.run
            .start(move || crate::tap::ping_in_netns(&netns, ip, count, HOST_PING_LIMIT));
    }

    /// True once `ping` has finished (either way).
    pub fn done(&self) -> bool {
        self.run.done()
    }

    /// What `ping` printed as its statistics, or why there are none.
    pub fn summary(&self) -> Result<PingSummary, String> {
        self.run
            .outcome(|| never_ready(&self.vm, self.kind), "ping")
    }

    /// The outcome as a named check: passes when all [`count`](Self::count) requests were
    /// sent and answered.
    pub fn check(&self) -> Check {
        match self.summary() {
            Ok(summary) => {
                let mut detail = summary.detail();
                if summary.sent != self.count {
                    detail += &format!(" ({} requests asked for)", self.count);
                }
                Check::new(
                    self.name(),
                    summary.sent == self.count && summary.all_answered(),
                    detail,
                )
            }
            Err(why) => Check::new(self.name(), false, why),
        }
    }
}

/// Every host check a topology asks for: `host -> <driver domain>` when a driver domain owns
/// the NIC, and `tcp host -> <guest> echo` for each guest with `host_echo = true`; with the tap
/// option also `ping host -> <vm>` for each of those VMs.
pub struct HostChecks {
    echoes: Vec<HostEcho>,
    pings: Vec<HostPing>,
}

impl HostChecks {
    /// The checks of `topology`, in VM order. `netns` is the network namespace of the boot's
    /// [`TapNet`](crate::tap::TapNet): required for a topology with `nic = "tap"`, refused for
    /// any other. `Err` also for a `host_echo` the boot cannot honour: no NIC in the topology,
    /// no usable `ip` on the guest, or a value other than true/false.
    pub fn plan(topology: &Topology, netns: Option<&str>) -> Result<HostChecks, String> {
        let tap = match (&topology.machine.nic, netns) {
            (Some(NicBackend::Tap), Some(netns)) => Some(netns),
            (Some(NicBackend::Tap), None) => {
                return Err(
                    "the topology has nic = \"tap\": its host checks run in the boot's \
                            network namespace (TapNet::for_topology), and none was given"
                        .to_owned(),
                )
            }
            (_, Some(netns)) => {
                return Err(format!(
                    "network namespace {netns} was given, but the topology's NIC is not \
                     nic = \"tap\""
                ))
            }
            (_, None) => None,
        };
        let mut echoes = Vec::new();
        let mut pings = Vec::new();
        let nic = topology.passthrough().map(|(vm, _)| vm.name.clone());
        for vm in &topology.vms {
            if vm.passthrough.is_some() {
                let ip = vm.ip()?;
                echoes.push(match tap {
                    None => HostEcho::driver_domain(&vm.name, ip),
                    Some(netns) => {
                        pings.push(HostPing::driver_domain(&vm.name, ip, netns));
                        HostEcho::driver_domain_in_netns(&vm.name, ip, netns)
                    }
                });
            }
            let wanted = match vm.setting("host_echo") {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(format!(
                        "vm {:?}: host_echo = {other:?} must be true or false",
                        vm.name
                    ))
                }
            };
            if !wanted {
                continue;
            }
            if vm.kind != VmKind::Guest {
                return Err(format!(
                    "vm {:?}: host_echo is for guests; a driver domain with a NIC is echoed anyway",
                    vm.name
                ));
            }
            if nic.is_none() {
                return Err(format!(
                    "vm {:?}: host_echo = true needs a NIC, but no driver domain of the topology \
                     has a passthrough",
                    vm.name
                ));
            }
            let ip = vm.ip()?;
            let echo = match tap {
                None => HostEcho::guest(&vm.name, ip),
                Some(netns) => {
                    pings.push(HostPing::guest(&vm.name, ip, netns));
                    HostEcho::guest_in_netns(&vm.name, ip, netns)
                }
            };
            echoes.push(match vm.nic {
                GuestNic::Emulated => echo.with_timeouts(EMULATED_ECHO_TIMEOUTS),
                GuestNic::Paravirt => echo,
            });
        }
        Ok(HostChecks { echoes, pings })
    }

    pub fn echoes(&self) -> &[HostEcho] {
        &self.echoes
    }

    /// The host's pings (only with the tap option).
    pub fn pings(&self) -> &[HostPing] {
        &self.pings
    }

    /// The echo of VM `vm`, if it has one.
    pub fn get(&self, vm: &str) -> Option<&HostEcho> {
        self.echoes.iter().find(|e| e.vm == vm)
    }

    /// The host's ping of VM `vm`, if it has one.
    pub fn ping(&self, vm: &str) -> Option<&HostPing> {
        self.pings.iter().find(|p| p.vm == vm)
    }

    /// Every port forward QEMU needs (for [`BootOptions::host_forwards`](crate::qemu::BootOptions));
    /// none with the tap option.
    pub fn forwards(&self) -> Vec<HostForward> {
        self.echoes.iter().flat_map(HostEcho::forwards).collect()
    }

    /// Feed every console line (for [`BootOptions::on_line`](crate::qemu::BootOptions)).
    pub fn on_line(&self, line: &str) {
        for echo in &self.echoes {
            echo.on_line(line);
        }
        for ping in &self.pings {
            ping.on_line(line);
        }
    }

    /// One check per echo, then one per ping, after the boot.
    pub fn checks(&self) -> Vec<Check> {
        let echoes = self.echoes.iter().map(HostEcho::check);
        echoes
            .chain(self.pings.iter().map(HostPing::check))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A UDP echo service on 127.0.0.1 that passes each datagram through `f` (None: drop it).
    fn udp_server(f: impl Fn(Vec<u8>) -> Option<Vec<u8>> + Send + 'static) -> u16 {
        let socket = UdpSocket::bind((HOST, 0)).unwrap();
        let port = socket.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((len, from)) = socket.recv_from(&mut buf) {
                if let Some(reply) = f(buf[..len].to_vec()) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        port
    }

    /// A TCP echo service on `listener`; connection n (from 0) is passed to `handle(n, stream)`.
    fn tcp_server(
        listener: TcpListener,
        handle: impl Fn(usize, TcpStream) + Send + Sync + 'static,
    ) -> u16 {
        let port = listener.local_addr().unwrap().port();
        let handle = Arc::new(handle);
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let handle = Arc::clone(&handle);
                std::thread::spawn(move || handle(n, stream));
            }
        });
        port
    }

    fn echo(mut stream: TcpStream) {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    }

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port(Proto::Tcp)).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[test]
    fn free_ports_are_bindable() {
        for proto in [Proto::Udp, Proto::Tcp] {
            let port = free_port(proto);
            assert_ne!(port, 0);
            match proto {
                Proto::Udp => drop(UdpSocket::bind((HOST, port)).unwrap()),
                Proto::Tcp => drop(TcpListener::bind((HOST, port)).unwrap()),
            }
        }
        assert_eq!(Proto::Udp.to_string(), "udp");
        assert_eq!(Proto::Tcp.as_str(), "tcp");
    }

    #[test]
    fn udp_datagrams_carry_sequence_and_pattern() {
        let a = udp_datagram(1, 64);
        let b = udp_datagram(2, 64);
        assert_eq!(a.len(), 64);
        assert_eq!(&a[..8], &1u64.to_be_bytes());
        assert_ne!(a[8..], b[8..], "the pattern depends on the sequence number");
        assert_eq!(udp_datagram(7, 8), 7u64.to_be_bytes());
    }

    #[test]
    fn udp_echo_through_a_local_echo_service() {
        let port = udp_server(Some);
        let stats = udp_echo(port, 50, 1000, Duration::from_secs(2));
        assert_eq!(
            (stats.sent, stats.received, stats.mismatched, stats.late),
            (50, 50, 0, 0),
            "{stats}"
        );
        assert_eq!(stats.lost(), 0);
        assert!(stats.rtt_min <= stats.rtt_avg && stats.rtt_avg <= stats.rtt_max);
        assert!(stats.rtt_max > Duration::ZERO && stats.rtt_max < Duration::from_secs(2));
        // Payloads shorter than the sequence number are raised to it.
        let stats = udp_echo(port, 3, 0, Duration::from_secs(2));
        assert_eq!(stats.received, 3, "{stats}");
    }

    #[test]
    fn udp_echo_counts_corrupted_echoes() {
        let port = udp_server(|mut d| {
            let last = d.len() - 1;
            d[last] ^= 0x40;
            Some(d)
        });
        let stats = udp_echo(port, 5, 100, Duration::from_secs(2));
        assert_eq!((stats.sent, stats.received, stats.mismatched), (5, 0, 5));
        assert_eq!(stats.rtt_max, Duration::ZERO);
        // Truncated echoes and garbage are mismatches too.
        let port = udp_server(|d| Some(d[..4].to_vec()));
        let stats = udp_echo(port, 2, 100, ms(300));
        assert_eq!((stats.received, stats.mismatched), (0, 2), "{stats}");
    }

    #[test]
    fn udp_echo_without_a_listener_loses_everything() {
        let port = free_port(Proto::Udp);
        let start = Instant::now();
        let stats = udp_echo(port, 3, 64, ms(100));
        assert_eq!((stats.received, stats.mismatched), (0, 0), "{stats}");
        assert_eq!(stats.lost(), stats.sent);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn udp_echo_counts_late_echoes() {
        // Datagram 0 is echoed after its timeout, arriving while datagram 1 is waited for.
        let port = udp_server(|d| {
            if d[..8] == 0u64.to_be_bytes() {
                std::thread::sleep(ms(300));
            }
            Some(d)
        });
        let stats = udp_echo(port, 2, 32, ms(200));
        assert_eq!(stats.sent, 2);
        assert_eq!(stats.received, 1, "{stats}");
        assert_eq!(stats.late, 1, "{stats}");
        assert_eq!(stats.mismatched, 0, "{stats}");
    }

    #[test]
    fn tcp_echo_through_a_local_echo_service() {
        let port = tcp_server(TcpListener::bind((HOST, 0)).unwrap(), |_, s| echo(s));
        // Larger than the socket buffers together, so a sequential send-then-read would block.
        let stats = tcp_echo(port, 8 * 1024 * 1024, Duration::from_secs(20)).unwrap();
        assert_eq!((stats.bytes, stats.attempts), (8 * 1024 * 1024, 1));
        assert!(stats.mbit_per_s() > 0.0, "{stats}");
        let stats = tcp_echo(port, 0, Duration::from_secs(5)).unwrap();
        assert_eq!(stats.bytes, 0);
    }

    #[test]
    fn tcp_echo_retries_until_the_service_listens() {
        // Like QEMU user networking before the guest listens: accepted, then closed at once.
        let closed = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&closed);
        let port = tcp_server(TcpListener::bind((HOST, 0)).unwrap(), move |n, s| {
            if n < 2 {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(s);
            } else {
                echo(s);
            }
        });
        let stats = tcp_echo(port, 100_000, Duration::from_secs(10)).unwrap();
        assert_eq!(stats.attempts, 3, "{stats}");
        assert_eq!(closed.load(Ordering::SeqCst), 2);
        assert!(stats.connect_time >= ms(200), "{stats}");

        // Nothing listening yet: connection refused until the listener appears.
        let port = free_port(Proto::Tcp);
        std::thread::spawn(move || {
            std::thread::sleep(ms(350));
            tcp_server(TcpListener::bind((HOST, port)).unwrap(), |_, s| echo(s));
        });
        let stats = tcp_echo(port, 1000, Duration::from_secs(10)).unwrap();
        assert!(stats.attempts >= 2, "{stats}");
    }

    #[test]
    fn tcp_echo_reports_where_the_echo_differs() {
        let port = tcp_server(TcpListener::bind((HOST, 0)).unwrap(), |_, mut s| {
            let mut buf = vec![0u8; 1000];
            if s.read_exact(&mut buf).is_ok() {
                buf[777] ^= 1;
                let _ = s.write_all(&buf);
            }
        });
        let e = tcp_echo(port, 1000, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("differs at byte 777"), "{e}");
        // Closing half-way is final, not retried.
        let port = tcp_server(TcpListener::bind((HOST, 0)).unwrap(), |_, mut s| {
            let mut buf = vec![0u8; 10];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&buf);
            }
        });
        let e = tcp_echo(port, 1000, Duration::from_secs(5)).unwrap_err();
        // Closed (FIN) or reset (it had unread data): either way after 10 bytes.
        assert!(e.contains("after 10 of 1000 bytes echoed"), "{e}");
        assert!(e.contains("attempt 1"), "{e}");
    }

    #[test]
    fn tcp_echo_gives_up_at_the_timeout() {
        let port = free_port(Proto::Tcp);
        let start = Instant::now();
        let e = tcp_echo(port, 10, ms(500)).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(3));
        assert!(e.contains("no TCP echo") && e.contains("connect:"), "{e}");
        // A service that accepts and never answers: the read runs into the deadline.
        let port = tcp_server(TcpListener::bind((HOST, 0)).unwrap(), |_, s| {
            std::thread::sleep(Duration::from_secs(3));
            drop(s);
        });
        let e = tcp_echo(port, 10, ms(500)).unwrap_err();
        assert!(e.contains("timed out with 0 of 10 bytes"), "{e}");
    }

    /// Short limits for tests against local services.
    fn quick(tcp_ms: u64) -> Timeouts {
        Timeouts {
            udp_each: ms(50),
            tcp: ms(tcp_ms),
        }
    }

    fn wait_done(echo: &HostEcho) {
        let start = Instant::now();
        while !echo.done() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "echo never finished"
            );
            std::thread::sleep(ms(10));
        }
    }

    #[test]
    fn a_guest_echo_starts_at_its_net_up_line_and_reports_tcp_only() {
        let port = tcp_server(TcpListener::bind((HOST, 0)).unwrap(), |_, s| echo(s));
        let ip = Ipv4Addr::new(10, 0, 2, 16);
        let e = HostEcho::with_ports("guest1", ip, EchoKind::Guest, None, port, quick(5000));
        assert_eq!(e.name(), "tcp host -> guest1 echo");
        assert_eq!(e.vm(), "guest1");
        assert_eq!(e.forwards(), [HostForward::tcp(port, ip, ECHO_PORT)]);
        let up = "[guest1] net up: MAC 02:51:55:00:00:02, IP 10.0.2.16/24, gateway 10.0.2.2";
        for not_yet in [
            "[guest10] net up: MAC 02:51:55:00:00:0b, IP 10.0.2.26/24, gateway 10.0.2.2",
            "[guest2] net up: MAC 02:51:55:00:00:03, IP 10.0.2.17/24, gateway 10.0.2.2",
            "[guest1] ping 10.0.2.17: seq 0 rtt 0.5 ms",
            "[driver-domain] NIC 00:02.0 link up",
            "guest1 net up:",
        ] {
            assert!(!e.starts_on(not_yet), "{not_yet}");
            e.on_line(not_yet);
        }
        let check = e.check();
        assert!(!check.pass);
        assert_eq!(
            check.summary_line(),
            "FAIL tcp host -> guest1 echo: guest1 never printed 'net up:' (see its console lines)"
        );
        assert!(e.starts_on(up));
        e.on_line(up);
        e.on_line(up); // a second start is ignored
        wait_done(&e);
        let check = e.check();
        assert!(check.pass, "{check:?}");
        let detail = check.detail;
        assert!(
            detail.starts_with("256 KiB in ") && detail.ends_with(" Mbit/s each way)"),
            "{detail}"
        );
        assert!(!detail.contains("udp"), "{detail}");
    }

    #[test]
    fn a_driver_domain_echo_does_udp_then_tcp_after_link_up() {
        let udp = udp_server(Some);
        let tcp = tcp_server(TcpListener::bind((HOST, 0)).unwrap(), |_, s| echo(s));
        let ip = DRIVER_DOMAIN_IP;
        let e = HostEcho::with_ports(
            "dd",
            ip,
            EchoKind::DriverDomain,
            Some(udp),
            tcp,
            quick(5000),
        );
        assert_eq!(e.name(), "host -> dd");
        assert_eq!(
            e.forwards(),
            [
                HostForward::udp(udp, ip, ECHO_PORT),
                HostForward::tcp(tcp, ip, ECHO_PORT)
            ]
        );
        assert!(e
            .outcome()
            .unwrap_err()
            .contains("dd never said its NIC link is up"));
        // Only the driver domain's own line counts.
        assert!(!e.starts_on("[guest1] NIC 00:02.0 link up"));
        assert!(!e.starts_on("[dd] net up: MAC 02:51:55:00:00:01"));
        e.on_line("[dd] NIC 00:02.0 link up, MAC 52:54:00:12:34:56");
        wait_done(&e);
        let detail = e.outcome().unwrap();
        assert!(
            detail.starts_with("udp echo 10/10 (rtt min/avg/max "),
            "{detail}"
        );
        assert!(detail.contains(", tcp echo 256 KiB in "), "{detail}");
    }

    #[test]
    fn a_failed_echo_says_why() {
        // No TCP service: the echo gives up at its timeout.
        let port = free_port(Proto::Tcp);
        let e = HostEcho::with_ports(
            "g",
            Ipv4Addr::new(10, 0, 2, 16),
            EchoKind::Guest,
            None,
            port,
            quick(300),
        );
        e.on_line("[g] net up: MAC 02:51:55:00:00:02, IP 10.0.2.16/24, gateway 10.0.2.2");
        wait_done(&e);
        let why = e.outcome().unwrap_err();
        assert!(
            why.starts_with("tcp echo: no TCP echo via 127.0.0.1:"),
            "{why}"
        );
        // UDP echoes that do not come back stop the check before TCP.
        let udp = udp_server(|_| None);
        let e = HostEcho::with_ports(
            "dd",
            DRIVER_DOMAIN_IP,
            EchoKind::DriverDomain,
            Some(udp),
            port,
            quick(300),
        );
        assert_eq!(
            {
                let (udp, tcp) = e.targets();
                run_echo(e.kind, udp, tcp, e.timeouts).unwrap_err()
            },
            "udp echo: 0/10 answered, 0 corrupted"
        );
    }

    const NET_TOPOLOGY: &str = r#"
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
[[vm]]
name = "g1"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
backend = "dd"
settings = { app = "net", ip = "10.0.2.16/24", host_echo = true }
[[vm]]
name = "g2"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
backend = "dd"
settings = { app = "net", ip = "10.0.2.17/24", host_echo = false }
[[vm]]
name = "g3"
kind = "guest"
image = "guest-frontend"
memory_mib = 8
vcpus = 1
backend = "dd"
settings = { app = "net", ip = "10.0.2.18/24", host_echo = true }
"#;

    #[test]
    fn an_emulated_guests_echo_gets_the_emulated_nics_time_limits() {
        let text = NET_TOPOLOGY.replacen(
            "backend = \"dd\"\nsettings = { app = \"net\", ip = \"10.0.2.18/24\"",
            "backend = \"dd\"\nnic = \"emulated\"\nsettings = { app = \"net\", ip = \"10.0.2.18/24\"",
            1,
        );
        assert_ne!(text, NET_TOPOLOGY);
        let plan = HostChecks::plan(&Topology::from_toml_str(&text).unwrap(), None).unwrap();
        assert_eq!(plan.get("g1").unwrap().timeouts, ECHO_TIMEOUTS);
        assert_eq!(plan.get("g3").unwrap().timeouts, EMULATED_ECHO_TIMEOUTS);
        assert!(EMULATED_ECHO_TIMEOUTS.tcp > ECHO_TIMEOUTS.tcp);
    }

    #[test]
    fn host_checks_follow_the_topology() {
        let t = Topology::from_toml_str(NET_TOPOLOGY).unwrap();
        let plan = HostChecks::plan(&t, None).unwrap();
        let names: Vec<String> = plan.echoes().iter().map(HostEcho::name).collect();
        assert_eq!(
            names,
            ["host -> dd", "tcp host -> g1 echo", "tcp host -> g3 echo"]
        );
        let targets: Vec<(Proto, String)> = plan
            .forwards()
            .iter()
            .map(|f| (f.proto, format!("{}:{}", f.guest_ip, f.guest_port)))
            .collect();
        let row = |p, s: &str| (p, s.to_string());
        assert_eq!(
            targets,
            [
                row(Proto::Udp, "10.0.2.15:7"),
                row(Proto::Tcp, "10.0.2.15:7"),
                row(Proto::Tcp, "10.0.2.16:7"),
                row(Proto::Tcp, "10.0.2.18:7"),
            ]
        );
        let mut ports: Vec<u16> = plan.forwards().iter().map(|f| f.host_port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 4, "every forward has its own host port");
        assert!(plan.get("g3").is_some() && plan.get("g2").is_none());
        // Para-virtual guests get the usual limits.
        assert_eq!(plan.get("g3").unwrap().timeouts, ECHO_TIMEOUTS);
        // Nothing has started, so every check fails with the reason.
        plan.on_line("[g2] net up: MAC 02:51:55:00:00:03, IP 10.0.2.17/24, gateway 10.0.2.2");
        let checks = plan.checks();
        assert_eq!(checks.len(), 3);
        assert!(checks.iter().all(|c| !c.pass));
        assert_eq!(
            checks[1].detail,
            "g1 never printed 'net up:' (see its console lines)"
        );
        // The default topology: the driver domain and guest1.
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/default.toml");
        let default = Topology::from_file(&path).unwrap();
        let names: Vec<String> = HostChecks::plan(&default, None)
            .unwrap()
            .echoes()
            .iter()
            .map(HostEcho::name)
            .collect();
        assert_eq!(names, ["host -> driver-domain", "tcp host -> guest1 echo"]);
    }

    #[test]
    fn with_the_tap_option_the_host_pings_and_echoes_without_forwards() {
        let tap =
            NET_TOPOLOGY.replacen("memory_mib = 256\n", "memory_mib = 256\nnic = \"tap\"\n", 1);
        let t = Topology::from_toml_str(&tap).unwrap();
        let plan = HostChecks::plan(&t, Some("sluice-7-0")).unwrap();
        assert!(plan.forwards().is_empty(), "{:?}", plan.forwards());
        let names: Vec<String> = plan.checks().into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "host -> dd",
                "tcp host -> g1 echo",
                "tcp host -> g3 echo",
                "ping host -> dd",
                "ping host -> g1",
                "ping host -> g3",
            ]
        );
        // Straight to the VMs' addresses: UDP and TCP for the driver domain, TCP for guests.
        let dd = plan.get("dd").unwrap();
        let at = |ip: [u8; 4]| SocketAddr::from((Ipv4Addr::from(ip), ECHO_PORT));
        assert_eq!(dd.targets(), (Some(at([10, 0, 2, 15])), at([10, 0, 2, 15])));
        assert_eq!(
            plan.get("g3").unwrap().targets(),
            (None, at([10, 0, 2, 18]))
        );
        assert_eq!(dd.route, Route::Netns("sluice-7-0".into()));
        let ping = plan.ping("g1").unwrap();
        assert_eq!((ping.ip(), ping.count()), (Ipv4Addr::new(10, 0, 2, 16), 5));
        assert_eq!(ping.name(), "ping host -> g1");
        assert!(plan.ping("g2").is_none());
        // Pings start on the same lines as the echoes, and say why when they never did.
        assert!(!ping.starts_on("[g2] net up: MAC 02:51:55:00:00:03, IP 10.0.2.17/24"));
        assert!(ping.starts_on("[g1] net up: MAC 02:51:55:00:00:02, IP 10.0.2.16/24"));
        assert!(plan
            .ping("dd")
            .unwrap()
            .starts_on("[dd] NIC 00:02.0 link up, MAC x"));
        let check = plan.ping("dd").unwrap().check();
        assert_eq!(
            check.summary_line(),
            "FAIL ping host -> dd: dd never said its NIC link is up (see its console lines)"
        );
        // The namespace is required with the tap option, and refused without it.
        let e = HostChecks::plan(&t, None).err().unwrap();
        assert!(e.contains("nic = \"tap\""), "{e}");
        let user = Topology::from_toml_str(NET_TOPOLOGY).unwrap();
        let e = HostChecks::plan(&user, Some("sluice-7-0")).err().unwrap();
        assert!(e.contains("is not nic = \"tap\""), "{e}");
    }

    #[test]
    fn a_host_ping_passes_only_with_every_reply() {
        let ping = HostPing::guest("g1", Ipv4Addr::new(10, 0, 2, 16), "sluice-7-0");
        let judge = |output: &'static str| {
            let p = HostPing::guest("g1", ping.ip(), "sluice-7-0");
            p.run.start(move || {
                crate::tap::parse_ping_output(output).ok_or_else(|| "no statistics".to_string())
            });
            while !p.done() {
                std::thread::sleep(ms(5));
            }
            p.check().summary_line()
        };
        assert_eq!(
            judge(
                "--- 10.0.2.16 ping statistics ---\n5 packets transmitted, 5 received, 0% packet \
                 loss, time 4005ms\nrtt min/avg/max/mdev = 0.3/0.4/0.5/0.1 ms\n"
            ),
            "PASS ping host -> g1: 5/5, rtt min/avg/max 0.3/0.4/0.5 ms"
        );
        assert_eq!(
            judge(
                "--- 10.0.2.16 ping statistics ---\n5 packets transmitted, 4 received, 20% packet \
                 loss, time 4005ms\nrtt min/avg/max/mdev = 0.3/0.4/0.5/0.1 ms\n"
            ),
            "FAIL ping host -> g1: 4/5 replies, rtt min/avg/max 0.3/0.4/0.5 ms"
        );
        assert_eq!(
            judge("--- 10.0.2.16 ping statistics ---\n3 packets transmitted, 3 received\n"),
            "FAIL ping host -> g1: 3/3 (5 requests asked for)"
        );
        assert_eq!(judge("garbage"), "FAIL ping host -> g1: no statistics");
    }

    #[test]
    fn host_checks_refuse_what_cannot_be_done() {
        let case = |from: &str, to: &str| {
            assert!(NET_TOPOLOGY.contains(from), "{from}");
            let t = Topology::from_toml_str(&NET_TOPOLOGY.replacen(from, to, 1)).unwrap();
            HostChecks::plan(&t, None).err().unwrap_or_default()
        };
        let e = case("host_echo = false", "host_echo = \"yes\"");
        assert_eq!(e, "vm \"g2\": host_echo = \"yes\" must be true or false");
        let e = case("ip = \"10.0.2.16/24\", ", "");
        assert!(e.contains("vm \"g1\" has no ip setting"), "{e}");
        let e = case("passthrough = \"00:02.0\"\n", "");
        assert!(e.contains("host_echo = true needs a NIC"), "{e}");
        let e = case(
            "passthrough = \"00:02.0\"\n",
            "passthrough = \"00:02.0\"\nsettings = { host_echo = true }\n",
        );
        assert!(e.contains("host_echo is for guests"), "{e}");
        // No NIC and no host_echo: nothing to check.
        let t = Topology::from_toml_str(
            &NET_TOPOLOGY
                .replacen("passthrough = \"00:02.0\"\n", "", 1)
                .replace("host_echo = true", "host_echo = false"),
        )
        .unwrap();
        let plan = HostChecks::plan(&t, None).unwrap();
        assert!(plan.echoes().is_empty() && plan.forwards().is_empty());
    }
}
