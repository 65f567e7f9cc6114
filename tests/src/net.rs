//! Host-side network helpers for tests that talk to a VM through the NIC passed through to the
//! driver domain: QEMU forwards host ports on 127.0.0.1 to the guest network
//! ([`HostForward`](crate::qemu::HostForward)), and these helpers pick the ports and run the
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

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared_abi::bundle::VmKind;

use crate::console;
use crate::qemu::HostForward;
use crate::report::Check;
use crate::topology::Topology;

/// A transport protocol, as QEMU's `hostfwd=` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    pub const fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the helpers connect: QEMU's host forwards listen on the loopback address only.
const HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A port that is free on 127.0.0.1 for `proto` at the time of the call: binds port 0, reads
/// the port the kernel chose and releases it. Another process may take it before QEMU binds it
/// (the usual race of this technique); the kernel hands out ephemeral ports round-robin, so
/// that is rare. Panics if no socket can be bound at all, which means the host has no loopback
/// networking and no network test can run.
pub fn free_port(proto: Proto) -> u16 {
    let addr = SocketAddr::from((HOST, 0));
    let port = match proto {
        Proto::Udp => UdpSocket::bind(addr).and_then(|s| s.local_addr()),
        Proto::Tcp => TcpListener::bind(addr).and_then(|s| s.local_addr()),
    }
    .map(|a| a.port());
    port.unwrap_or_else(|e| panic!("cannot bind a {proto} socket on {HOST}: {e}"))
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
    let payload_len = payload_len.max(UDP_HEADER_LEN);
    let socket = UdpSocket::bind(SocketAddr::from((HOST, 0)))
        .unwrap_or_else(|e| panic!("cannot bind a UDP socket on {HOST}: {e}"));
    let peer = SocketAddr::from((HOST, host_port));
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
    let start = Instant::now();
    let deadline = start + timeout;
    let data: Arc<[u8]> = (0..bytes as u64).map(pattern_byte).collect();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let attempt_start = Instant::now();
        match tcp_attempt(host_port, &data, deadline) {
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
                    "TCP echo via 127.0.0.1:{host_port} failed (attempt {attempts}): {why}"
                ))
            }
            Attempt::Retry(why) => {
                let now = Instant::now();
                if now + ms(100) >= deadline {
                    return Err(format!(
                        "no TCP echo via 127.0.0.1:{host_port} within {timeout:?} \
                         ({attempts} attempt(s)); last: {why}"
                    ));
                }
                std::thread::sleep(ms(100));
            }
        }
    }
}

fn tcp_attempt(host_port: u16, data: &Arc<[u8]>, deadline: Instant) -> Attempt {
    let remaining = || deadline.saturating_duration_since(Instant::now());
    if remaining().is_zero() {
        return Attempt::Retry("timed out before connecting".into());
    }
    let peer = SocketAddr::from((HOST, host_port));
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

/// The driver domain's address on QEMU's user network (its default `ip` setting).
pub const DRIVER_DOMAIN_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// QEMU user networking's host side, every VM's default gateway (the `gateway` setting).
pub const DEFAULT_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
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

/// Time limits of a [`HostEcho`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Per UDP datagram.
    pub udp_each: Duration,
    /// For the whole TCP echo, connection retries included.
    pub tcp: Duration,
}

/// What a [`HostEcho`] runs, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EchoKind {
    /// The driver domain's own stack: UDP echo then TCP echo, once it says its NIC link is up
    /// ([`console::NIC_LINK_UP`]). Check `host -> <vm>`.
    DriverDomain,
    /// A `net` guest behind the driver domain's switch: TCP echo, once the guest prints
    /// [`console::NET_UP`]. Check `tcp host -> <vm> echo`.
    Guest,
}

/// The host reaching one VM's echo service (port 7) through the NIC: QEMU forwards host ports
/// on 127.0.0.1 to the VM's address, and once the VM's console says its network is up, a
/// thread runs the echo while the boot goes on. The demo (`sluice-run`) and the integration
/// tests use the same checks (see [`HostChecks`]), so both report the same thing.
pub struct HostEcho {
    vm: String,
    ip: Ipv4Addr,
    kind: EchoKind,
    udp_port: Option<u16>,
    tcp_port: u16,
    timeouts: Timeouts,
    started: AtomicBool,
    outcome: Arc<Mutex<Option<Result<String, String>>>>,
}

impl HostEcho {
    /// The driver domain `vm` at `ip`: UDP and TCP echo (`host -> <vm>`).
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

    /// The guest `vm` at `ip`: TCP echo (`tcp host -> <vm> echo`).
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

    fn with_ports(
        vm: &str,
        ip: Ipv4Addr,
        kind: EchoKind,
        udp_port: Option<u16>,
        tcp_port: u16,
        timeouts: Timeouts,
    ) -> HostEcho {
        HostEcho {
            vm: vm.to_string(),
            ip,
            kind,
            udp_port,
            tcp_port,
            timeouts,
            started: AtomicBool::new(false),
            outcome: Default::default(),
        }
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

    /// The port forwards QEMU needs.
    pub fn forwards(&self) -> Vec<HostForward> {
        let mut out: Vec<HostForward> = self
            .udp_port
            .map(|port| HostForward::udp(port, self.ip, ECHO_PORT))
            .into_iter()
            .collect();
        out.push(HostForward::tcp(self.tcp_port, self.ip, ECHO_PORT));
        out
    }

    /// Whether `line` (a whole console line, `[vm] ` prefix included) is the VM saying its
    /// network is up.
    pub fn starts_on(&self, line: &str) -> bool {
        let Some(text) = line
            .strip_prefix('[')
            .and_then(|l| l.strip_prefix(self.vm.as_str()))
            .and_then(|l| l.strip_prefix("] "))
        else {
            return false;
        };
        match self.kind {
            EchoKind::DriverDomain => console::NIC_LINK_UP.iter().all(|s| text.contains(s)),
            EchoKind::Guest => text.contains(console::NET_UP),
        }
    }

    /// Feed every console line; the first line that [`starts_on`](Self::starts_on) starts the
    /// echo on a thread of its own.
    pub fn on_line(&self, line: &str) {
        if !self.starts_on(line) || self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let (kind, udp_port, tcp_port, timeouts) =
            (self.kind, self.udp_port, self.tcp_port, self.timeouts);
        let outcome = Arc::clone(&self.outcome);
        std::thread::spawn(move || {
            let result = run_echo(kind, udp_port, tcp_port, timeouts);
            *outcome.lock().expect("not poisoned") = Some(result);
        });
    }

    /// True once the echo has finished (either way).
    pub fn done(&self) -> bool {
        self.outcome.lock().expect("not poisoned").is_some()
    }

    /// The echo's outcome: a summary, or why it failed.
    pub fn outcome(&self) -> Result<String, String> {
        if !self.started.load(Ordering::SeqCst) {
            return Err(match self.kind {
                EchoKind::DriverDomain => format!(
                    "{} never said its NIC link is up (see its console lines)",
                    self.vm
                ),
                EchoKind::Guest => format!(
                    "{} never printed '{}' (see its console lines)",
                    self.vm,
                    console::NET_UP
                ),
            });
        }
        self.outcome
            .lock()
            .expect("not poisoned")
            .clone()
            .unwrap_or_else(|| {
                Err(String::from(
                    "the echo did not finish before the boot ended",
                ))
            })
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
    udp_port: Option<u16>,
    tcp_port: u16,
    timeouts: Timeouts,
) -> Result<String, String> {
    let udp = match udp_port {
        Some(port) => {
            let udp = udp_echo(port, UDP_COUNT, 64, timeouts.udp_each);
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
    let tcp = tcp_echo(tcp_port, TCP_BYTES, timeouts.tcp).map_err(|e| format!("tcp echo: {e}"))?;
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

/// Every host echo a topology asks for: `host -> <driver domain>` when a driver domain owns
/// the NIC, and `tcp host -> <guest> echo` for each guest with `host_echo = true`.
pub struct HostChecks {
    echoes: Vec<HostEcho>,
}

impl HostChecks {
    /// The echoes of `topology`, in VM order. `Err` for a `host_echo` the boot cannot honour:
    /// no NIC in the topology, no usable `ip` on the guest, or a value other than true/false.
    pub fn plan(topology: &Topology) -> Result<HostChecks, String> {
        let mut echoes = Vec::new();
        let nic = topology.passthrough().map(|(vm, _)| vm.name.clone());
        for vm in &topology.vms {
            if vm.passthrough.is_some() {
                echoes.push(HostEcho::driver_domain(&vm.name, vm.ip()?));
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
            echoes.push(HostEcho::guest(&vm.name, vm.ip()?));
        }
        Ok(HostChecks { echoes })
    }

    pub fn echoes(&self) -> &[HostEcho] {
        &self.echoes
    }

    /// The echo of VM `vm`, if it has one.
    pub fn get(&self, vm: &str) -> Option<&HostEcho> {
        self.echoes.iter().find(|e| e.vm == vm)
    }

    /// Every port forward QEMU needs (for [`BootOptions::host_forwards`](crate::qemu::BootOptions)).
    pub fn forwards(&self) -> Vec<HostForward> {
        self.echoes.iter().flat_map(HostEcho::forwards).collect()
    }

    /// Feed every console line (for [`BootOptions::on_line`](crate::qemu::BootOptions)).
    pub fn on_line(&self, line: &str) {
        for echo in &self.echoes {
            echo.on_line(line);
        }
    }

    /// One check per echo, after the boot.
    pub fn checks(&self) -> Vec<Check> {
        self.echoes.iter().map(HostEcho::check).collect()
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
            run_echo(e.kind, e.udp_port, e.tcp_port, e.timeouts).unwrap_err(),
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
    fn host_checks_follow_the_topology() {
        let t = Topology::from_toml_str(NET_TOPOLOGY).unwrap();
        let plan = HostChecks::plan(&t).unwrap();
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
        let names: Vec<String> = HostChecks::plan(&default)
            .unwrap()
            .echoes()
            .iter()
            .map(HostEcho::name)
            .collect();
        assert_eq!(names, ["host -> driver-domain", "tcp host -> guest1 echo"]);
    }

    #[test]
    fn host_checks_refuse_what_cannot_be_done() {
        let case = |from: &str, to: &str| {
            assert!(NET_TOPOLOGY.contains(from), "{from}");
            let t = Topology::from_toml_str(&NET_TOPOLOGY.replacen(from, to, 1)).unwrap();
            HostChecks::plan(&t).err().unwrap_or_default()
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
        let plan = HostChecks::plan(&t).unwrap();
        assert!(plan.echoes().is_empty() && plan.forwards().is_empty());
    }
}
