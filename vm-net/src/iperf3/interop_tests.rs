//! Interoperability with the real thing: the sans-IO [`ClientControl`] and [`ServerControl`]
//! driven over std TCP sockets against the `iperf3` binary on the host (one-second tests, both
//! directions, both roles, refusals; TCP and UDP). Without `iperf3` installed the tests say so
//! and pass.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::string::String;
use std::time::{Duration, Instant};

use smoltcp::time::Instant as SmolInstant;

use super::json::{self, Value};
use super::{
    ClientControl, ClientEvent, ClientPhase, Cookie, ProtoError, Results, ServerControl,
    ServerEvent, TestParams, COOKIE_LEN,
};
use super::{UdpCounts, UdpReceiver, UdpSender, UDP_CONNECT_MSG, UDP_CONNECT_REPLY};

const TIMEOUT: Duration = Duration::from_secs(20);

fn have_iperf3() -> bool {
    let ok = Command::new("iperf3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        std::eprintln!(
            "SKIPPED: iperf3 is not installed (apt-get install iperf3) - no interop test run"
        );
    }
    ok
}

/// A child process killed when dropped (also when a test panics), so no iperf3 outlives its test.
struct Reaped(Child);

impl Reaped {
    /// Ends the process and says what it wrote: the other half of a failed test. It gets a
    /// few seconds to end by itself first: iperf3 closes its sockets before it prints why,
    /// and its stdout (a pipe) is only flushed when it exits.
    fn stop_and_say(&mut self) -> String {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if !matches!(self.0.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(mut o) = self.0.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = self.0.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        std::format!("stdout: {out:?}, stderr: {err:?}")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A listener on a port below the kernel's ephemeral range (`ip_local_port_range`), each call
/// of this process on another one. A port from that range (`bind` to port 0), free when we
/// looked, can be any connection's source port by the time iperf3 binds it: beside two busy
/// loops iperf3 -s then could not listen (1 run in 90).
fn server_listener() -> TcpListener {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST).max(1_000);
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = LOWEST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port as u16)) {
            return listener;
        }
    }
    panic!("no free port between {LOWEST} and {}", LOWEST + span);
}

/// A port of [`server_listener`] for a server of ours to bind.
fn free_port() -> u16 {
    server_listener().local_addr().expect("a bound port").port()
}

/// Writes what the machine has to say; returns whether anything went.
fn flush(stream: &mut TcpStream, out: &[u8]) -> usize {
    match stream.write(out) {
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
        // The peer is gone: reading says so.
        Err(e) if e.kind() == ErrorKind::ConnectionReset => out.len(),
        Err(e) => panic!("control write: {e}"),
    }
}

/// Reads what is there: Some(bytes) (empty: nothing yet), None at EOF.
fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> Option<usize> {
    match stream.read(buf) {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Some(0),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
        Err(e) => panic!("read: {e}"),
    }
}

/// `iperf3 -s -1` on a free port, and our control connection to it (non-blocking).
fn real_server() -> (u16, Reaped, TcpStream) {
    let port = free_port();
    let server = Reaped(
        Command::new("iperf3")
            .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("iperf3 -s starts"),
    );
    let ctrl = connect_control(port);
    (port, server, ctrl)
}

/// A control connection to the real server on `port` once it listens (non-blocking).
fn connect_control(port: u16) -> TcpStream {
    let start = Instant::now();
    let ctrl = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("iperf3 -s did not come up: {e}"),
        }
    };
    ctrl.set_nonblocking(true).unwrap();
    ctrl
}

/// How often a client test connects again after [`reset_before_hello`].
const HELLO_RETRIES: u32 = 3;

/// Whether the real server reset a fresh control connection before it said anything (no
/// PARAM_EXCHANGE yet): beside two busy loops 4 runs in 300 of the client tests, and still 2
/// in 150 with the port below the ephemeral range; iperf3 silent and still listening
/// afterwards, with no connection of its own (`ss`). Why is not known; a new connection gets
/// past it, and nothing of ours but the cookie went out by then.
fn reset_before_hello(phase: ClientPhase, e: &ProtoError) -> bool {
    phase == ClientPhase::ParamExchange && matches!(e, ProtoError::Closed)
}

/// After our client machine failed with `e` in `phase` against the real server on `port`: a
/// new control connection and machine if it was [`reset_before_hello`] and `retries` are left,
/// else the test fails with what iperf3 printed.
fn again_or_fail(
    e: &ProtoError,
    phase: ClientPhase,
    retries: &mut u32,
    port: u16,
    params: TestParams,
    server: &mut Reaped,
) -> (TcpStream, ClientControl) {
    if reset_before_hello(phase, e) && *retries < HELLO_RETRIES {
        *retries += 1;
        std::eprintln!("iperf3 -s reset our control connection at once: again");
        let machine = ClientControl::new(Cookie::generate(port.into()), params);
        return (connect_control(port), machine);
    }
    panic!(
        "client failed in {phase:?}: {e}; iperf3 -s: {}",
        server.stop_and_say()
    )
}

/// Waits for a real `iperf3 -s -1` to end and asserts it was content.
fn expect_success(mut server: Reaped) {
    let status = server.0.wait().unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = server.0.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(status.success(), "iperf3 -s failed: {stderr}");
}

/// A real `iperf3 -c` with `args` against a listener of ours (non-blocking).
fn real_client(args: &[&str]) -> (TcpListener, Reaped) {
    let listener = server_listener();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let client = Reaped(
        Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("iperf3 -c starts"),
    );
    (listener, client)
}

/// The next connection to `listener`, within the test's time.
fn accept(listener: &TcpListener, start: Instant, what: &str) -> TcpStream {
    loop {
        assert!(start.elapsed() < TIMEOUT, "no {what} connection");
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// What a real `iperf3 -c` printed, once it ended.
fn client_output(mut client: Reaped) -> Output {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if let Some(mut out) = client.0.stdout.take() {
        let _ = out.read_to_end(&mut stdout);
    }
    if let Some(mut err) = client.0.stderr.take() {
        let _ = err.read_to_end(&mut stderr);
    }
    let status = client.0.wait().unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

struct ClientOutcome {
    ours: u64,
    theirs: Results,
}

/// Our client machine against `iperf3 -s -1`.
fn client_against_real_server(reverse: bool) -> Option<ClientOutcome> {
    if !have_iperf3() {
        return None;
    }
    let (port, mut server, mut ctrl) = real_server();
    let start = Instant::now();
    let mut params = TestParams::tcp(1);
    params.reverse = reverse;
    let mut machine = ClientControl::new(Cookie::generate(port.into()), params);
    let mut retries = 0;
    let mut data: Option<TcpStream> = None;
    let block = std::vec![0x5au8; 128 * 1024];
    let mut buf = std::vec![0u8; 128 * 1024];
    let (mut moved, mut running_since, mut totals) = (0u64, None, None);
    let mut theirs = None;
    loop {
        let phase = machine.phase();
        if start.elapsed() >= TIMEOUT {
            panic!(
                "test hangs in {phase:?}; iperf3 -s: {}",
                server.stop_and_say()
            );
        }
        let n = flush(&mut ctrl, machine.output());
        machine.consume_output(n);
        match read_some(&mut ctrl, &mut buf) {
            Some(n) => machine.receive(&buf[..n]),
            None => machine.peer_closed(),
        }
        while let Some(event) = machine.next_event() {
            match event {
                ClientEvent::CreateStreams => {
                    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    stream.write_all(machine.cookie().as_bytes()).unwrap();
                    stream.set_nonblocking(true).unwrap();
                    data = Some(stream);
                }
                ClientEvent::TestStart => {}
                ClientEvent::TestRunning => running_since = Some(Instant::now()),
                ClientEvent::ResultsWanted => {
                    let (bytes, secs): (u64, f64) = totals.expect("ended");
                    machine.send_results(&Results::one_stream(!reverse, bytes, secs));
                }
                ClientEvent::PeerResults(r) => theirs = Some(r),
                ClientEvent::Done => {}
                ClientEvent::Failed(e) => {
                    (ctrl, machine) =
                        again_or_fail(&e, phase, &mut retries, port, params, &mut server);
                }
            }
        }
        if machine.is_finished() && machine.output().is_empty() {
            break;
        }
        if let (Some(stream), Some(since)) = (data.as_mut(), running_since) {
            if reverse {
                // Drain, also after the end.
                while let Some(n) = read_some(stream, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    if totals.is_none() {
                        moved += n as u64;
                    }
                }
            } else if totals.is_none() {
                match stream.write(&block) {
                    Ok(n) => moved += n as u64,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("data write: {e}"),
                }
            }
            if totals.is_none() && since.elapsed() >= Duration::from_secs(1) {
                totals = Some((moved, since.elapsed().as_secs_f64()));
                machine.end_test();
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    expect_success(server);
    Some(ClientOutcome {
        ours: totals.unwrap().0,
        theirs: theirs.expect("server results"),
    })
}

#[test]
fn our_client_sends_to_the_real_server() {
    let Some(out) = client_against_real_server(false) else {
        return;
    };
    assert!(out.ours > 1_000_000, "sent only {}", out.ours);
    let received = out.theirs.streams[0].bytes;
    assert!(
        received > 0 && received <= out.ours,
        "{received} of {}",
        out.ours
    );
    assert_eq!(out.theirs.sender_has_retransmits, -1);
}

#[test]
fn our_client_receives_from_the_real_server() {
    let Some(out) = client_against_real_server(true) else {
        return;
    };
    assert!(out.ours > 1_000_000, "received only {}", out.ours);
    let sent = out.theirs.streams[0].bytes;
    assert!(sent >= out.ours, "{sent} sent, {} received", out.ours);
}

/// `iperf3 -c` against our server machine; returns the client's output.
fn real_client_against_our_server(args: &[&str]) -> Option<(Output, Option<TestParams>)> {
    if !have_iperf3() {
        return None;
    }
    let (listener, mut client) = real_client(args);
    let start = Instant::now();
    let mut ctrl = accept(&listener, start, "control");
    ctrl.set_nonblocking(true).unwrap();
    let mut machine = ServerControl::new();
    let mut data: Option<TcpStream> = None;
    let mut params = None;
    let block = std::vec![0xa5u8; 128 * 1024];
    let mut buf = std::vec![0u8; 128 * 1024];
    let (mut moved, mut running_since) = (0u64, None::<Instant>);
    let mut ended = false;
    loop {
        if start.elapsed() >= TIMEOUT {
            panic!(
                "test hangs in {:?}; iperf3 -c: {}",
                machine.phase(),
                client.stop_and_say()
            );
        }
        match read_some(&mut ctrl, &mut buf) {
            Some(n) => machine.receive(&buf[..n]),
            None => machine.peer_closed(),
        }
        while let Some(event) = machine.next_event() {
            match event {
                ServerEvent::CreateStreams(p) => {
                    params = Some(p);
                    // CREATE_STREAMS has to go out for the client to connect.
                    while !machine.output().is_empty() {
                        let n = flush(&mut ctrl, machine.output());
                        machine.consume_output(n);
                    }
                    let mut stream = accept(&listener, start, "data");
                    stream.set_nonblocking(false).unwrap();
                    let mut cookie = [0u8; COOKIE_LEN];
                    stream.read_exact(&mut cookie).unwrap();
                    assert!(machine.check_stream_cookie(&cookie));
                    stream.set_nonblocking(true).unwrap();
                    data = Some(stream);
                    machine.stream_connected();
                    running_since = Some(Instant::now());
                }
                ServerEvent::TestEnd => {
                    ended = true;
                    // As iperf3's server does: a client reading the rest of a block gets EOF.
                    if let Some(stream) = &data {
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                    }
                    let secs = running_since.map_or(0.0, |s| s.elapsed().as_secs_f64());
                    let sending = params.is_some_and(|p| p.reverse);
                    machine.test_ended(&Results::one_stream(sending, moved, secs));
                }
                ServerEvent::PeerResults(_) => {}
                ServerEvent::Done => {}
                ServerEvent::Failed(_) => {}
            }
        }
        let n = flush(&mut ctrl, machine.output());
        machine.consume_output(n);
        if machine.is_finished() && machine.output().is_empty() {
            break;
        }
        if let (Some(stream), Some(p)) = (data.as_mut(), params) {
            if p.reverse && !ended {
                match stream.write(&block) {
                    Ok(n) => moved += n as u64,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("data write: {e}"),
                }
            } else if !p.reverse {
                while let Some(n) = read_some(stream, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    if !ended {
                        moved += n as u64;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    drop(data);
    drop(ctrl);
    Some((client_output(client), params))
}

fn check_real_client(reverse: bool) {
    let args: &[&str] = if reverse {
        &["-t", "1", "-J", "-R"]
    } else {
        &["-t", "1", "-J"]
    };
    let Some((out, params)) = real_client_against_our_server(args) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "iperf3 -c failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let params = params.unwrap();
    assert_eq!((params.seconds, params.reverse), (1, reverse));
    let sent = json_sum_field(&out.stdout, b"sum_sent", b"bytes")
        .map(|b| b as u64)
        .expect("sum_sent");
    let received = json_sum_field(&out.stdout, b"sum_received", b"bytes")
        .map(|b| b as u64)
        .expect("sum_received");
    assert!(received > 1_000_000, "{stdout}");
    assert!(sent >= received, "{stdout}");
}

#[test]
fn the_real_client_sends_to_our_server() {
    check_real_client(false);
}

#[test]
fn the_real_client_receives_from_our_server() {
    check_real_client(true);
}

#[test]
fn the_real_client_hears_why_it_was_refused() {
    for (args, expect) in [
        (&["-t", "1", "-P", "2"][..], "parallel"),
        (&["-t", "1", "--sctp"][..], "not implemented"),
        (&["-t", "1", "--bidir"][..], "not implemented"),
    ] {
        let Some((out, _)) = real_client_against_our_server(args) else {
            return;
        };
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{args:?} accepted: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}

// UDP (`-u`): the connect exchange and datagrams over std UDP sockets, counted by our
// `UdpSender`/`UdpReceiver` on a clock that starts with the test.

/// Microseconds since `epoch`, as the smoltcp clock our UDP code takes.
fn smol_now(epoch: Instant) -> SmolInstant {
    SmolInstant::from_micros(epoch.elapsed().as_micros() as i64)
}

/// Sends the datagrams the pacing allows (a few at most) until the socket is full.
fn send_paced(socket: &UdpSocket, sender: &mut UdpSender, block: &mut [u8], epoch: Instant) {
    for _ in 0..64 {
        let now = smol_now(epoch);
        if !sender.may_send(now) {
            return;
        }
        let mut next = block.to_vec();
        let mut probe = sender.clone();
        probe.fill(&mut next, now);
        match socket.send(&next) {
            Ok(_) => *sender = probe,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
            Err(e) => panic!("UDP send: {e}"),
        }
    }
}

/// Everything waiting on `socket` into `receiver` (if counting).
fn receive_all(socket: &UdpSocket, receiver: &mut UdpReceiver, counting: bool, epoch: Instant) {
    let mut buf = std::vec![0u8; 65536];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => {
                if counting {
                    let at = epoch.elapsed().as_micros() as u64;
                    receiver.datagram(&buf[..n], at);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
            Err(e) => panic!("UDP recv: {e}"),
        }
    }
}

struct UdpOutcome {
    bytes: u64,
    counts: UdpCounts,
    theirs: Results,
}

/// Our client machine and UDP code against `iperf3 -s -1`: one second at 10 Mbit/s.
fn udp_client_against_real_server(reverse: bool) -> Option<UdpOutcome> {
    if !have_iperf3() {
        return None;
    }
    let (port, mut server, mut ctrl) = real_server();
    let start = Instant::now();
    let mut params = TestParams::udp(1, 10_000_000);
    params.reverse = reverse;
    let mut machine = ClientControl::new(Cookie::generate(port.into()), params);
    let mut retries = 0;
    let mut data: Option<UdpSocket> = None;
    let mut buf = std::vec![0u8; 4096];
    let mut block = std::vec![0x5au8; params.block_len as usize];
    let mut sender: Option<UdpSender> = None;
    let mut receiver = UdpReceiver::new(false);
    let (mut running_since, mut totals, mut theirs) = (None::<Instant>, None, None);
    let epoch = Instant::now();
    loop {
        let phase = machine.phase();
        if start.elapsed() >= TIMEOUT {
            panic!(
                "test hangs in {phase:?}; iperf3 -s: {}",
                server.stop_and_say()
            );
        }
        let n = flush(&mut ctrl, machine.output());
        machine.consume_output(n);
        match read_some(&mut ctrl, &mut buf) {
            Some(n) => machine.receive(&buf[..n]),
            None => machine.peer_closed(),
        }
        while let Some(event) = machine.next_event() {
            match event {
                ClientEvent::CreateStreams => {
                    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
                    socket.connect(("127.0.0.1", port)).unwrap();
                    socket.send(&UDP_CONNECT_MSG).unwrap();
                    socket
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    let n = socket.recv(&mut buf).expect("the server's UDP reply");
                    assert_eq!(n, 4, "reply {:?}", &buf[..n]);
                    socket.set_nonblocking(true).unwrap();
                    data = Some(socket);
                }
                ClientEvent::TestStart => {}
                ClientEvent::TestRunning => {
                    running_since = Some(Instant::now());
                    if !reverse {
                        sender = Some(UdpSender::new(false, 10_000_000, smol_now(epoch)));
                    }
                }
                ClientEvent::ResultsWanted => {
                    let (bytes, secs): (u64, f64) = totals.expect("ended");
                    let counts = sender.as_ref().map_or(receiver.counts, |s| s.counts);
                    machine.send_results(&Results::udp_stream(!reverse, bytes, secs, &counts));
                }
                ClientEvent::PeerResults(r) => theirs = Some(r),
                ClientEvent::Done => {}
                ClientEvent::Failed(e) => {
                    (ctrl, machine) =
                        again_or_fail(&e, phase, &mut retries, port, params, &mut server);
                }
            }
        }
        if machine.is_finished() && machine.output().is_empty() {
            break;
        }
        if let (Some(socket), Some(since)) = (data.as_ref(), running_since) {
            match sender.as_mut() {
                Some(sender) if totals.is_none() => send_paced(socket, sender, &mut block, epoch),
                Some(_) => {}
                None => receive_all(socket, &mut receiver, totals.is_none(), epoch),
            }
            if totals.is_none() && since.elapsed() >= Duration::from_secs(1) {
                let bytes = sender.as_ref().map_or(receiver.bytes, |s| s.bytes);
                totals = Some((bytes, since.elapsed().as_secs_f64()));
                machine.end_test();
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    expect_success(server);
    Some(UdpOutcome {
        bytes: totals.unwrap().0,
        counts: sender.map_or(receiver.counts, |s| s.counts),
        theirs: theirs.expect("server results"),
    })
}

#[test]
fn our_udp_client_sends_to_the_real_server() {
    let Some(out) = udp_client_against_real_server(false) else {
        return;
    };
    // 10 Mbit/s for a second in 1460-byte datagrams: ~856.
    assert!(
        (800..=900).contains(&out.counts.packets),
        "{}",
        out.counts.packets
    );
    let theirs = out.theirs.streams[0];
    assert!(theirs.packets > 800 && theirs.packets as u64 <= out.counts.packets);
    assert!(theirs.bytes > 0 && theirs.bytes <= out.bytes);
    assert!(theirs.errors <= 2, "{theirs:?}");
    assert!(theirs.jitter >= 0.0 && theirs.jitter < 0.01, "{theirs:?}");
}

#[test]
fn our_udp_client_receives_from_the_real_server() {
    let Some(out) = udp_client_against_real_server(true) else {
        return;
    };
    let theirs = out.theirs.streams[0];
    assert!(out.counts.packets > 800, "{:?}", out.counts);
    assert!(theirs.packets as u64 >= out.counts.packets, "{theirs:?}");
    assert!(out.counts.errors <= 2, "{:?}", out.counts);
    assert!(out.counts.jitter < 0.01, "{:?}", out.counts);
    assert!(out.bytes > 1_000_000, "{}", out.bytes);
}

/// `iperf3 -c -u` against our server machine and UDP code; the client's output, the
/// parameters and what we counted.
fn real_udp_client_against_our_server(args: &[&str]) -> Option<(Output, TestParams, UdpCounts)> {
    if !have_iperf3() {
        return None;
    }
    let args: Vec<&str> = ["-u", "-J"].iter().chain(args).copied().collect();
    let (listener, mut client) = real_client(&args);
    let port = listener.local_addr().unwrap().port();
    let start = Instant::now();
    let mut ctrl = accept(&listener, start, "control");
    ctrl.set_nonblocking(true).unwrap();
    let mut machine = ServerControl::new();
    let mut data: Option<UdpSocket> = None;
    let mut params = None;
    let mut buf = std::vec![0u8; 65536];
    let mut block = std::vec![];
    let mut sender: Option<UdpSender> = None;
    let mut receiver = UdpReceiver::new(false);
    let mut ended = false;
    let epoch = Instant::now();
    loop {
        if start.elapsed() >= TIMEOUT {
            panic!(
                "test hangs in {:?}; iperf3 -c: {}",
                machine.phase(),
                client.stop_and_say()
            );
        }
        match read_some(&mut ctrl, &mut buf) {
            Some(n) => machine.receive(&buf[..n]),
            None => machine.peer_closed(),
        }
        while let Some(event) = machine.next_event() {
            match event {
                ServerEvent::CreateStreams(p) => {
                    params = Some(p);
                    receiver = UdpReceiver::new(p.counters_64bit);
                    block = std::vec![0xa5u8; p.block_len as usize];
                    let socket = UdpSocket::bind(("127.0.0.1", port)).unwrap();
                    while !machine.output().is_empty() {
                        let n = flush(&mut ctrl, machine.output());
                        machine.consume_output(n);
                    }
                    socket
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    let (n, from) = socket.recv_from(&mut buf).expect("connect message");
                    assert_eq!(&buf[..n], &UDP_CONNECT_MSG);
                    socket.connect(from).unwrap();
                    socket.send(&UDP_CONNECT_REPLY).unwrap();
                    socket.set_nonblocking(true).unwrap();
                    data = Some(socket);
                    machine.stream_connected();
                    if p.reverse {
                        let now = smol_now(epoch);
                        sender = Some(UdpSender::new(p.counters_64bit, p.bandwidth, now));
                    }
                }
                ServerEvent::TestEnd => {
                    ended = true;
                    let secs = epoch.elapsed().as_secs_f64();
                    let (bytes, counts) = match &sender {
                        Some(s) => (s.bytes, s.counts),
                        None => (receiver.bytes, receiver.counts),
                    };
                    let sending = sender.is_some();
                    machine.test_ended(&Results::udp_stream(sending, bytes, secs, &counts));
                }
                ServerEvent::PeerResults(_) | ServerEvent::Done | ServerEvent::Failed(_) => {}
            }
        }
        let n = flush(&mut ctrl, machine.output());
        machine.consume_output(n);
        if machine.is_finished() && machine.output().is_empty() {
            break;
        }
        if let Some(socket) = data.as_ref() {
            match sender.as_mut() {
                Some(sender) if !ended => send_paced(socket, sender, &mut block, epoch),
                Some(_) => {}
                None => receive_all(socket, &mut receiver, !ended, epoch),
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    drop(data);
    drop(ctrl);
    let counts = sender.map_or(receiver.counts, |s| s.counts);
    Some((client_output(client), params.expect("parameters"), counts))
}

/// `end.<sum>.<field>` of `iperf3 -J` output, as a number.
fn json_sum_field(stdout: &[u8], sum: &[u8], field: &[u8]) -> Option<f64> {
    let mut end = None;
    json::members(stdout, |k, v| {
        if k == b"end" {
            end = Some(v)
        }
    })
    .ok()?;
    let Some(Value::Object(end)) = end else {
        return None;
    };
    let mut total = None;
    json::members(end, |k, v| {
        if k == sum {
            total = Some(v)
        }
    })
    .ok()?;
    let Some(Value::Object(total)) = total else {
        return None;
    };
    let mut value = None;
    json::members(total, |k, v| {
        if k == field {
            value = v.as_number().map(|n| n.value)
        }
    })
    .ok()?;
    value
}

fn check_real_udp_client(reverse: bool) {
    let mut args = std::vec!["-b", "10M", "-t", "1", "-l", "1400"];
    if reverse {
        args.push("-R");
    }
    let Some((out, params, ours)) = real_udp_client_against_our_server(&args) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "iperf3 -c -u failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(params.protocol, super::Protocol::Udp);
    assert_eq!(
        (
            params.seconds,
            params.reverse,
            params.bandwidth,
            params.block_len
        ),
        (1, reverse, 10_000_000, 1400)
    );
    let field = |name: &[u8]| json_sum_field(&out.stdout, b"sum", name).expect("end.sum");
    let (packets, lost, jitter) = (
        field(b"packets"),
        field(b"lost_packets"),
        field(b"jitter_ms"),
    );
    // 10 Mbit/s for a second in 1400-byte datagrams: ~893.
    assert!((800.0..=950.0).contains(&packets), "{stdout}");
    assert!(lost <= 2.0, "{stdout}");
    assert!((0.0..10.0).contains(&jitter), "{stdout}");
    if reverse {
        // The client received what we sent, and lost what it did not.
        assert_eq!(packets as u64, ours.packets, "{stdout}");
    } else {
        assert!(ours.packets > 800 && ours.errors <= 2, "{ours:?}");
        let received = json_sum_field(&out.stdout, b"sum_received", b"bytes").unwrap_or(0.0);
        assert!(received > 1_000_000.0, "{stdout}");
    }
}

#[test]
fn the_real_udp_client_sends_to_our_server() {
    check_real_udp_client(false);
}

#[test]
fn the_real_udp_client_receives_from_our_server() {
    check_real_udp_client(true);
}
