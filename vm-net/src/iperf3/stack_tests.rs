//! Host tests of the iperf3 [`Server`] and [`Client`] on smoltcp: two [`Stack`]s joined by an
//! in-memory cable of limited rate, in virtual time (1 ms per round), running whole tests in
//! both directions, back to back, and against nothing; UDP tests over a cable that loses
//! every n-th datagram.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::vec::Vec;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpCidr, Ipv4Address};

use super::{Client, ClientConfig, Event, Report, Role, ServerConfig};
use crate::{Buffers, Stack};

type Queue = Rc<RefCell<VecDeque<Vec<u8>>>>;

/// Frames a side may have waiting for the cable before its device says "busy".
const TX_QUEUE: usize = 64;
/// Frames the cable carries each way per round (1 ms): 8 full frames, ~97 Mbit/s.
const FRAMES_PER_ROUND: usize = 8;

/// One end of the cable.
struct End {
    rx: Queue,
    tx: Queue,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a Queue);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = std::vec![0u8; len];
        let r = f(&mut frame);
        self.0.borrow_mut().push_back(frame);
        r
    }
}

impl Device for End {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.rx.borrow_mut().pop_front()?;
        Some((Rx(frame), Tx(&self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        (self.tx.borrow().len() < TX_QUEUE).then_some(Tx(&self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

const SERVER_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 17);
const CLIENT_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 16);

struct Net {
    server: Stack<End>,
    client: Stack<End>,
    /// server -> client, client -> server
    cable: (Queue, Queue, Queue, Queue),
    now: Instant,
    server_events: Vec<Event>,
    /// Drop every n-th UDP data frame (either way).
    drop_every: Option<usize>,
    /// Every n-th round the cable carries nothing (frames wait: jitter).
    stall_every: Option<u64>,
    udp_frames: usize,
    dropped: usize,
    /// What the server sent over TCP, in order.
    server_segments: Vec<Segment>,
}

/// A TCP segment the server sent: the client's port, its length, and whether it carries
/// a test's results.
struct Segment {
    client_port: u16,
    len: usize,
    results: bool,
}

/// The TCP segment in an Ethernet frame, if it carries one.
fn tcp_segment(frame: &[u8]) -> Option<Segment> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 6 {
        return None;
    }
    let tcp = 14 + usize::from(frame[14] & 0x0f) * 4;
    let header = frame.get(tcp..tcp + 20)?;
    let payload = frame.get(tcp + usize::from(header[12] >> 4) * 4..)?;
    Some(Segment {
        client_port: u16::from_be_bytes([header[2], header[3]]),
        len: payload.len(),
        results: payload.windows(9).any(|w| w == b"\"streams\""),
    })
}

/// Whether an Ethernet frame carries an IPv4 UDP datagram bigger than a connect message.
fn is_udp_data(frame: &[u8]) -> bool {
    frame.len() > 100 && frame[12..14] == [0x08, 0x00] && frame[14 + 9] == 17
}

fn stack(rx: Queue, tx: Queue, ip: Ipv4Address, last: u8) -> Stack<End> {
    Stack::new_at(
        End { rx, tx },
        [0x02, 0, 0, 0, 0, last],
        IpCidr::new(ip.into(), 24),
        Ipv4Address::new(10, 0, 2, 2),
        Buffers::default(),
        Instant::ZERO,
        u64::from(last),
    )
}

impl Net {
    fn new() -> Net {
        let queue = || Rc::new(RefCell::new(VecDeque::new()));
        let (s_rx, s_tx, c_rx, c_tx) = (queue(), queue(), queue(), queue());
        let mut server = stack(s_rx.clone(), s_tx.clone(), SERVER_IP, 17);
        server.serve_iperf3(ServerConfig::default());
        let client = stack(c_rx.clone(), c_tx.clone(), CLIENT_IP, 16);
        Net {
            server,
            client,
            cable: (s_tx, c_rx, c_tx, s_rx),
            now: Instant::ZERO,
            server_events: Vec::new(),
            drop_every: None,
            stall_every: None,
            udp_frames: 0,
            dropped: 0,
            server_segments: Vec::new(),
        }
    }

    /// One millisecond: both stacks run, the cable carries what it can.
    fn round(&mut self, client: &mut Client) {
        self.server.poll_at(self.now);
        while let Some(e) = self.server.iperf3_server().and_then(|s| s.next_event()) {
            self.server_events.push(e);
        }
        self.client.poll_at(self.now);
        client.poll(&mut self.client, self.now);
        self.client.poll_at(self.now);
        let (drop_every, udp_frames, dropped, server_segments) = (
            self.drop_every,
            &mut self.udp_frames,
            &mut self.dropped,
            &mut self.server_segments,
        );
        let mut carry = |from: &Queue, to: &Queue, from_server: bool| {
            for _ in 0..FRAMES_PER_ROUND {
                let Some(frame) = from.borrow_mut().pop_front() else {
                    break;
                };
                if from_server {
                    server_segments.extend(tcp_segment(&frame));
                }
                if is_udp_data(&frame) {
                    *udp_frames += 1;
                    if drop_every.is_some_and(|n| udp_frames.is_multiple_of(n)) {
                        *dropped += 1;
                        continue;
                    }
                }
                to.borrow_mut().push_back(frame);
            }
        };
        let round = self.now.total_millis() as u64;
        if self.stall_every.is_none_or(|n| !round.is_multiple_of(n)) {
            carry(&self.cable.0, &self.cable.1, true);
            carry(&self.cable.2, &self.cable.3, false);
        }
        self.now += Duration::from_millis(1);
    }

    /// Runs `client` to its end (and a little more, for the server to see it); its events.
    fn run(&mut self, client: &mut Client, limit: Duration) -> Vec<Event> {
        let end = self.now + limit;
        let mut events = Vec::new();
        while !client.is_closed() && self.now < end {
            self.round(client);
            while let Some(e) = client.next_event() {
                events.push(e);
            }
        }
        for _ in 0..100 {
            self.round(client);
        }
        events
    }

    fn client_config(&self, reverse: bool) -> ClientConfig {
        let mut config = ClientConfig::new(SERVER_IP);
        config.seconds = 1;
        config.reverse = reverse;
        config.seed = 7;
        config
    }
}

fn report(events: &[Event]) -> Report {
    events
        .iter()
        .find_map(|e| match e {
            Event::Finished(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no report in {events:?}"))
}

fn check_pair(client: &Report, server: &Report, reverse: bool) {
    assert_eq!(client.role, Role::Client);
    assert_eq!(server.role, Role::Server);
    assert_eq!(client.sender, !reverse);
    assert_eq!(server.sender, reverse);
    assert_eq!(client.params.reverse, reverse);
    // The cable carries ~97 Mbit/s; a one-second test moves most of that.
    for r in [client, server] {
        assert!(r.bytes > 4_000_000, "{r}");
        assert!((900_000..=1_200_000).contains(&r.micros), "{r}");
        assert!(r.centi_mbit_per_s() < 10_000, "{r}");
    }
    // Each side got the other's numbers, and they agree to within what was in flight.
    assert_eq!(client.peer_bytes(), Some(server.bytes));
    assert_eq!(server.peer_bytes(), Some(client.bytes));
    let diff = client.bytes.abs_diff(server.bytes);
    assert!(diff < 512 * 1024, "{client} / {server}");
}

#[test]
fn tests_run_both_ways_back_to_back() {
    let mut net = Net::new();
    for reverse in [false, true, false] {
        net.server_events.clear();
        let mut client = Client::new(net.client_config(reverse), net.now);
        let events = net.run(&mut client, Duration::from_secs(10));
        let client_report = report(&events);
        let server_report = report(&net.server_events);
        check_pair(&client_report, &server_report, reverse);
        assert!(
            events.iter().any(|e| matches!(e, Event::Started(_))),
            "{events:?}"
        );
        assert!(
            events.iter().any(|e| matches!(e, Event::Interval(_))),
            "{events:?}"
        );
        assert!(
            !net.server_events
                .iter()
                .any(|e| matches!(e, Event::Failed(_))),
            "{:?}",
            net.server_events
        );
        // Everything the test opened is gone again (echo, ICMP and the server's listener
        // stay).
        assert_eq!(net.client.sockets().iter().count(), 6);
    }
    assert_eq!(net.server.iperf3_server().map(|s| s.finished), Some(3));
}

/// iperf3's server closes a test's data stream when the test ends, and iperf3 3.12's client
/// relies on it: it drains a reverse test with blocking reads of whole blocks, and would wait
/// forever for the rest of one. So when our server sends its results, its data socket is
/// already closing (its FIN queued behind the data).
#[test]
fn the_server_closes_its_data_stream_when_the_test_ends() {
    let mut net = Net::new();
    let mut client = Client::new(net.client_config(true), net.now);
    while !net.server_segments.iter().any(|s| s.results) {
        assert!(
            net.now < Instant::from_secs(10),
            "no results from the server"
        );
        net.round(&mut client);
    }
    let data_port = net
        .server_segments
        .iter()
        .find(|s| s.len > 1000)
        .map(|s| s.client_port)
        .expect("the server sent data");
    let data_state = net
        .server
        .sockets()
        .iter()
        .find_map(|(_, socket)| match socket {
            smoltcp::socket::Socket::Tcp(tcp)
                if tcp.remote_endpoint().is_some_and(|e| e.port == data_port) =>
            {
                Some(tcp.state())
            }
            _ => None,
        })
        .expect("the server's data socket");
    use smoltcp::socket::tcp::State;
    assert!(
        matches!(
            data_state,
            State::FinWait1 | State::FinWait2 | State::Closing | State::TimeWait
        ),
        "the data socket is {data_state} when the results go out"
    );
    report(&net.run(&mut client, Duration::from_secs(10)));
}

#[test]
fn a_second_client_is_denied_while_a_test_runs() {
    let mut net = Net::new();
    let mut first = Client::new(net.client_config(false), net.now);
    for _ in 0..300 {
        net.round(&mut first);
    }
    let mut second = Client::new(net.client_config(false), net.now);
    let mut events = Vec::new();
    for _ in 0..500 {
        net.round(&mut first);
        second.poll(&mut net.client, net.now);
        net.client.poll_at(net.now);
        while let Some(e) = second.next_event() {
            events.push(e);
        }
    }
    let failure = events
        .iter()
        .find_map(|e| match e {
            Event::Failed(f) => Some(f.reason.clone()),
            _ => None,
        })
        .expect("the second client was not denied");
    assert!(failure.contains("busy"), "{failure}");
    let first_events = net.run(&mut first, Duration::from_secs(10));
    report(&first_events);
}

#[test]
fn nobody_there() {
    let mut net = Net::new();
    let mut config = ClientConfig::new(Ipv4Address::new(10, 0, 2, 99));
    config.connect_wait = Duration::from_secs(2);
    let mut client = Client::new(config, net.now);
    let events = net.run(&mut client, Duration::from_secs(10));
    assert!(
        matches!(events.as_slice(), [Event::Failed(f)] if f.reason.contains("no iperf3 server")),
        "{events:?}"
    );
    // A host that is there but serves nothing on the port: refused, retried, given up.
    let mut config = net.client_config(false);
    config.port = 5999;
    config.connect_wait = Duration::from_secs(2);
    let mut client = Client::new(config, net.now);
    let started = net.now;
    let events = net.run(&mut client, Duration::from_secs(10));
    assert!(
        matches!(events.as_slice(), [Event::Failed(_)]),
        "{events:?}"
    );
    assert!(net.now - started >= Duration::from_secs(2));
}

/// A one-second UDP test at 20 Mbit/s one way; the client's and the server's reports.
fn udp_test(net: &mut Net, reverse: bool) -> (Report, Report) {
    net.server_events.clear();
    let mut config = net.client_config(reverse).udp(20_000_000);
    config.seed = 11;
    let mut client = Client::new(config, net.now);
    let events = net.run(&mut client, Duration::from_secs(10));
    assert!(
        !net.server_events
            .iter()
            .any(|e| matches!(e, Event::Failed(_))),
        "{:?}",
        net.server_events
    );
    let c = report(&events);
    let s = report(&net.server_events);
    assert_eq!((c.sender, s.sender), (!reverse, reverse));
    for r in [&c, &s] {
        assert!(r.to_string().contains(": udp 1."), "{r}");
        // 20 Mbit/s for a second: 2.5 MB in 1460-byte datagrams, give or take a burst.
        assert!((2_200_000..=2_700_000).contains(&r.bytes), "{r}");
        let udp = r.udp.expect("UDP summary");
        assert!((1500..=1850).contains(&udp.packets), "{r}");
        assert!(udp.jitter_ms < 2.0, "{r}");
    }
    assert_eq!(c.udp.map(|u| u.lost), s.udp.map(|u| u.lost));
    // Everything the test opened is gone again.
    assert_eq!(net.client.sockets().iter().count(), 6);
    (c, s)
}

#[test]
fn udp_tests_run_both_ways() {
    let mut net = Net::new();
    for reverse in [false, true] {
        let (c, s) = udp_test(&mut net, reverse);
        assert_eq!(c.udp.map(|u| u.lost), Some(0), "{c}");
        assert_eq!(c.peer_bytes(), Some(s.bytes));
        std::println!("{c}\n{s}");
    }
    // TCP still works after UDP on the same port.
    let mut client = Client::new(net.client_config(false), net.now);
    let events = net.run(&mut client, Duration::from_secs(10));
    assert!(report(&events).to_string().contains(": tcp "));
}

#[test]
fn udp_losses_are_counted() {
    let mut net = Net::new();
    net.drop_every = Some(50);
    net.stall_every = Some(7);
    for reverse in [false, true] {
        let before = net.dropped;
        let (c, s) = udp_test(&mut net, reverse);
        let dropped = (net.dropped - before) as u64;
        let lost = c.udp.map_or(0, |u| u.lost);
        // A loss shows once a later datagram arrives: the last ones may go unnoticed, and
        // datagrams still on the way when the test ended are neither lost nor received.
        assert!(dropped >= 30, "{dropped}");
        assert!(
            lost + 2 >= dropped && lost <= dropped,
            "{lost} of {dropped} dropped"
        );
        assert!(
            c.to_string().contains(&std::format!(", lost {lost}/")),
            "{c}"
        );
        // Every 7th millisecond waits: the transit time varies by up to a millisecond.
        let jitter = c.udp.map_or(0.0, |u| u.jitter_ms);
        assert!(jitter > 0.05 && jitter < 1.0, "{c}");
        std::println!("{c}\n{s}");
    }
}

impl Net {
    /// One millisecond with no iperf3 client: both stacks run, the cable carries everything.
    fn exchange(&mut self) {
        self.server.poll_at(self.now);
        self.client.poll_at(self.now);
        for (from, to) in [
            (&self.cable.0, &self.cable.1),
            (&self.cable.2, &self.cable.3),
        ] {
            to.borrow_mut().extend(from.borrow_mut().drain(..));
        }
        self.now += Duration::from_millis(1);
    }
}

#[test]
fn an_echo_connection_is_in_progress_from_its_first_segment_until_it_is_closed() {
    use smoltcp::socket::tcp;
    let mut net = Net::new();
    let buffer = || tcp::SocketBuffer::new(std::vec![0u8; 4096]);
    let handle = net
        .client
        .sockets_mut()
        .add(tcp::Socket::new(buffer(), buffer()));
    let port = net.client.ephemeral_port();
    assert!(!net.server.echo_in_progress(), "only listening");
    net.client
        .tcp_connect(handle, (SERVER_IP, crate::stack::ECHO_PORT).into(), port)
        .expect("connects");
    fn socket(net: &mut Net, handle: smoltcp::iface::SocketHandle) -> &mut tcp::Socket<'static> {
        net.client.sockets_mut().get_mut::<tcp::Socket>(handle)
    }
    for _ in 0..200 {
        if socket(&mut net, handle).may_send() {
            break;
        }
        net.exchange();
    }
    assert!(net.server.echo_in_progress(), "connected");
    socket(&mut net, handle)
        .send_slice(b"twelve bytes")
        .expect("room");
    let mut echoed = std::vec::Vec::new();
    for _ in 0..200 {
        net.exchange();
        let mut buf = [0u8; 64];
        if let Ok(n) = socket(&mut net, handle).recv_slice(&mut buf) {
            echoed.extend_from_slice(&buf[..n]);
        }
        if echoed.len() == 12 {
            break;
        }
    }
    assert_eq!(echoed, b"twelve bytes");
    assert!(net.server.echo_in_progress(), "still open after the echo");
    socket(&mut net, handle).close();
    for _ in 0..200 {
        net.exchange();
    }
    assert!(!net.server.echo_in_progress(), "closed by both sides");
}

/// A peer that keeps opening control connections while a test runs, and never closes them,
/// cannot make the server hold a socket (and its buffers) for each: the sockets the server
/// keeps stay bounded, however many connections it denied, and the running test finishes.
#[test]
fn a_flood_of_connections_that_never_close_keeps_the_servers_sockets_bounded() {
    use smoltcp::socket::tcp;
    /// Connections the flooder keeps open at once (more than the server may linger on).
    const FLOODERS: usize = 48;
    let mut net = Net::new();
    let mut config = net.client_config(false);
    config.seconds = 2;
    let mut client = Client::new(config, net.now);
    for _ in 0..300 {
        net.round(&mut client);
    }
    let buffer = || tcp::SocketBuffer::new(std::vec![0u8; 256]);
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            net.client
                .sockets_mut()
                .add(tcp::Socket::new(buffer(), buffer()))
        })
        .collect();
    let baseline = net.server.sockets().iter().count();
    let mut most = baseline;
    let mut denied = 0;
    for _ in 0..1500 {
        // One new connection a round: a closed flooder (never opened, or reset) tries again.
        // Open ones never read nor close, so the server's end waits for them.
        if let Some(&handle) = flooders
            .iter()
            .find(|&&h| net.client.sockets().get::<tcp::Socket>(h).state() == tcp::State::Closed)
        {
            let port = net.client.ephemeral_port();
            let _ = net
                .client
                .tcp_connect(handle, (SERVER_IP, super::DEFAULT_PORT).into(), port);
        }
        net.round(&mut client);
        most = most.max(net.server.sockets().iter().count());
        denied = flooders
            .iter()
            .filter(|&&h| net.client.sockets().get::<tcp::Socket>(h).recv_queue() > 0)
            .count()
            .max(denied);
    }
    assert!(denied > 0, "the flood never reached the server");
    assert!(
        most <= baseline + super::stream::MAX_RETIRING + 2,
        "the server held {most} sockets ({baseline} before the flood)"
    );
    let events = net.run(&mut client, Duration::from_secs(10));
    report(&events);
}
