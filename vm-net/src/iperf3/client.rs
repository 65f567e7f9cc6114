//! The iperf3 client on smoltcp sockets: runs one test against an iperf3 server (ours or the
//! real one), the control protocol run by [`ClientControl`], the data moved by
//! `stream::DataStream`. It adds its sockets to a [`Stack`]'s set and is advanced by
//! [`Client::poll`] between two polls of the stack.
//!
//! The server may still be booting: until [`ClientConfig::connect_wait`] is over, a refused
//! or unanswered control connection is tried again every half second.
//!
//! A UDP test ([`ClientConfig::udp`]) sends its data from a UDP socket on an ephemeral port
//! to the server's port: first the connect message (again every second until the server
//! answers), then, once the test runs, datagrams paced to the target rate.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};

use smoltcp::iface::SocketHandle;
use smoltcp::phy::Device;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};

use super::proto::{
    ClientControl, ClientEvent, ClientPhase, Cookie, ProtoError, Results, TestParams,
    DEFAULT_BLOCK_LEN, DEFAULT_PORT,
};
use super::report::{Event, Failure, Report, Role, TestInfo, UdpSummary};
use super::stream::{self, DataStream, Meter, Retiring, UdpStream, CONTROL_BUFFER};
use super::udp::{DEFAULT_UDP_BLOCK_LEN, DEFAULT_UDP_RATE};
use crate::Stack;

/// Between two tries to reach a server that is not there yet.
const RETRY: Duration = Duration::from_millis(500);

/// Whether a client closes its data socket with a FIN at the end (`done`: the test completed)
/// rather than a RST. Only a sending client does: like iperf3's, whose `close()` of a receiving
/// stream with unread data is a RST, a receiving client does not drain what the sender still
/// had queued (through passt, seconds of it: the reverse test's boot took 3 s longer than the
/// forward one) before its test can end. A failed test aborts either way.
fn ends_gracefully(done: bool, sending: bool) -> bool {
    done && sending
}

/// The test a [`Client`] runs.
#[derive(Clone, Copy, Debug)]
pub struct ClientConfig {
    pub server: Ipv4Address,
    pub port: u16,
    /// Test length (`-t`).
    pub seconds: u32,
    /// The server sends (`-R`).
    pub reverse: bool,
    /// Block size (`-l`); the data goes out in whatever segments fit, the server sees it.
    pub block_len: u32,
    /// Seconds at the start not counted (`-O`).
    pub omit: u32,
    /// How long to keep trying to reach the server.
    pub connect_wait: Duration,
    /// The data socket's buffer in the direction of the data.
    pub buffer: usize,
    /// How long the server may keep us waiting once connected.
    pub idle_timeout: Duration,
    /// Entropy for the cookie.
    pub seed: u64,
    /// A UDP test (`-u`).
    pub udp: bool,
    /// The UDP sender's target rate, bits/s (`-b`; 0: unlimited).
    pub bitrate: u64,
}

impl ClientConfig {
    /// A 5-second test against `server` with iperf3's defaults otherwise.
    pub fn new(server: Ipv4Address) -> ClientConfig {
        ClientConfig {
            server,
            port: DEFAULT_PORT,
            seconds: 5,
            reverse: false,
            block_len: DEFAULT_BLOCK_LEN,
            omit: 0,
            connect_wait: Duration::from_secs(15),
            buffer: super::DEFAULT_BUFFER,
            idle_timeout: Duration::from_secs(10),
            seed: 0,
            udp: false,
            bitrate: DEFAULT_UDP_RATE,
        }
    }

    /// This test over UDP at `bitrate` bits/s (0: unlimited), with iperf3's UDP block size.
    pub fn udp(mut self, bitrate: u64) -> ClientConfig {
        self.udp = true;
        self.bitrate = bitrate;
        self.block_len = DEFAULT_UDP_BLOCK_LEN;
        self
    }

    fn params(&self) -> TestParams {
        let mut params = if self.udp {
            TestParams::udp(self.seconds, self.bitrate)
        } else {
            TestParams::tcp(self.seconds)
        };
        params.reverse = self.reverse;
        params.block_len = self.block_len;
        params.omit = self.omit;
        params
    }
}

/// An iperf3 client running one test.
pub struct Client {
    config: ClientConfig,
    machine: ClientControl,
    ctrl: Option<SocketHandle>,
    connected: bool,
    connect_deadline: Instant,
    retry_at: Instant,
    local: Option<IpAddress>,
    data: Option<DataStream>,
    /// A UDP test's data stream (instead of `data`).
    udp: Option<UdpStream>,
    cookie_sent: bool,
    meter: Option<Meter>,
    end_at: Option<Instant>,
    /// Bytes and microseconds counted when we ended the test.
    totals: Option<(u64, u64)>,
    peer_results: Option<Results>,
    active_at: Instant,
    retiring: Retiring,
    events: VecDeque<Event>,
    /// A failure was reported.
    failed: bool,
    /// The test is over (reported or failed) and its sockets are on their way out.
    over: bool,
}

impl Client {
    /// A client for the test `config` describes; the first poll connects.
    pub fn new(config: ClientConfig, now: Instant) -> Client {
        let cookie = Cookie::generate(config.seed ^ (now.total_micros() as u64));
        Client {
            config,
            machine: ClientControl::new(cookie, config.params()),
            ctrl: None,
            connected: false,
            connect_deadline: now + config.connect_wait,
            retry_at: now,
            local: None,
            data: None,
            udp: None,
            cookie_sent: false,
            meter: None,
            end_at: None,
            totals: None,
            peer_results: None,
            active_at: now,
            retiring: Retiring::default(),
            events: VecDeque::new(),
            failed: false,
            over: false,
        }
    }

    /// News since the last call.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The test is over: its [`Event::Finished`] or [`Event::Failed`] was queued.
    pub fn is_finished(&self) -> bool {
        self.over
    }

    /// The test is over and its sockets are closed and gone from the stack.
    pub fn is_closed(&self) -> bool {
        self.over && self.retiring.is_empty()
    }

    /// When the client next needs a poll even if no frame arrives.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.retiring.next_deadline();
        if self.over {
            return next;
        }
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n: Instant| n.min(at)));
            }
        };
        if !self.connected {
            consider(Some(self.connect_deadline));
            if self.ctrl.is_none() {
                consider(Some(self.retry_at));
            }
            return next;
        }
        consider(self.meter.as_ref().map(|m| m.next_tick()));
        if self.totals.is_none() {
            consider(self.end_at);
            if let Some(udp) = &self.udp {
                consider(udp.next_hello());
                if self.meter.is_some() {
                    consider(udp.next_send());
                }
            }
        }
        consider(Some(self.active_at + self.config.idle_timeout));
        next
    }

    /// Runs the test: connects, moves control messages and data, ends the test on time.
    /// Call between two polls of `stack`.
    pub fn poll<D: Device>(&mut self, stack: &mut Stack<D>, now: Instant) {
        self.retiring.run(stack.sockets_mut(), now);
        if self.over {
            return;
        }
        if !self.connected {
            self.connect(stack, now);
            if !self.connected {
                return;
            }
        }
        let Some(ctrl_handle) = self.ctrl else {
            return;
        };

        // Control input.
        let ctrl = stack.sockets_mut().get_mut::<tcp::Socket>(ctrl_handle);
        let machine = &mut self.machine;
        if stream::drain(ctrl, |bytes| machine.receive(bytes)) > 0 {
            self.active_at = now;
        }
        let closed = !ctrl.may_recv();
        self.handle_events(stack, now);

        self.pump_data(stack, now);
        self.handle_events(stack, now);

        if closed {
            self.machine.peer_closed();
        }
        let running = self.meter.is_some() && self.totals.is_none();
        if !running && now >= self.active_at + self.config.idle_timeout {
            self.machine.terminate(ProtoError::TimedOut);
        }
        self.handle_events(stack, now);

        // Control output.
        let ctrl = stack.sockets_mut().get_mut::<tcp::Socket>(ctrl_handle);
        let n = stream::write(ctrl, self.machine.output());
        self.machine.consume_output(n);
        let flushed = self.machine.output().is_empty() || !ctrl.may_send();
        if self.machine.is_finished()
            && (flushed || now >= self.active_at + self.config.idle_timeout)
        {
            self.finish(stack, now);
        }
    }

    fn connect<D: Device>(&mut self, stack: &mut Stack<D>, now: Instant) {
        let server = IpEndpoint::new(IpAddress::Ipv4(self.config.server), self.config.port);
        let Some(handle) = self.ctrl else {
            if now < self.retry_at {
                return;
            }
            let handle = stack
                .sockets_mut()
                .add(stream::tcp_socket(CONTROL_BUFFER, CONTROL_BUFFER));
            let port = stack.ephemeral_port();
            match stack.tcp_connect(handle, server, port) {
                Ok(()) => self.ctrl = Some(handle),
                Err(e) => {
                    stack.sockets_mut().remove(handle);
                    self.fail(format!("cannot connect to {server}: {e}"));
                    self.over = true;
                }
            }
            return;
        };
        let socket = stack.sockets_mut().get_mut::<tcp::Socket>(handle);
        match socket.state() {
            tcp::State::Established => {
                self.connected = true;
                self.local = socket.local_endpoint().map(|e| e.addr);
                self.active_at = now;
            }
            tcp::State::Closed => {
                // Refused (nothing listens yet) or given up: try again until the deadline.
                stack.sockets_mut().remove(handle);
                self.ctrl = None;
                self.retry_at = now + RETRY;
                if now >= self.connect_deadline {
                    self.fail(format!("no iperf3 server answered at {server}"));
                    self.over = true;
                }
            }
            _ if now >= self.connect_deadline => {
                self.retiring.abort(stack.sockets_mut(), handle);
                self.ctrl = None;
                self.fail(format!("no iperf3 server answered at {server}"));
                self.over = true;
            }
            _ => {}
        }
    }

    fn handle_events<D: Device>(&mut self, stack: &mut Stack<D>, now: Instant) {
        while let Some(event) = self.machine.next_event() {
            match event {
                ClientEvent::CreateStreams => self.open_data(stack),
                ClientEvent::TestStart => {}
                ClientEvent::TestRunning => {
                    let params = *self.machine.params();
                    self.meter = Some(Meter::new(now, params.omit));
                    if params.seconds != 0 {
                        let run = u64::from(params.seconds) + u64::from(params.omit);
                        self.end_at = Some(now + Duration::from_secs(run));
                    }
                    self.active_at = now;
                    if let Some(udp) = self.udp.as_mut() {
                        udp.start(now);
                    }
                    self.events.push_back(Event::Started(TestInfo {
                        role: Role::Client,
                        local: self.local_ip(),
                        peer: IpAddress::Ipv4(self.config.server),
                        params,
                    }));
                }
                ClientEvent::ResultsWanted => {
                    let (bytes, micros) = self.totals.unwrap_or((0, 0));
                    let sending = !self.config.reverse;
                    let seconds = micros as f64 / 1e6;
                    let results = match &self.udp {
                        Some(udp) => Results::udp_stream(sending, bytes, seconds, &udp.counts()),
                        None => Results::one_stream(sending, bytes, seconds),
                    };
                    self.machine.send_results(&results);
                }
                ClientEvent::PeerResults(results) => self.peer_results = Some(results),
                ClientEvent::Done => {}
                ClientEvent::Failed(why) => self.fail(why.to_string()),
            }
        }
    }

    fn local_ip(&self) -> IpAddress {
        self.local
            .unwrap_or(IpAddress::Ipv4(Ipv4Address::UNSPECIFIED))
    }

    /// The data stream: connects to the server's port; the cookie goes first.
    fn open_data<D: Device>(&mut self, stack: &mut Stack<D>) {
        let sending = !self.config.reverse;
        if self.config.udp {
            let mut socket = stream::udp_socket(sending, self.config.buffer);
            let port = stack.ephemeral_port();
            if socket.bind(port).is_err() {
                return self
                    .machine
                    .terminate(ProtoError::DataStream("cannot bind a UDP port"));
            }
            let handle = stack.sockets_mut().add(socket);
            let server = IpEndpoint::new(IpAddress::Ipv4(self.config.server), self.config.port);
            let params = *self.machine.params();
            self.udp = Some(UdpStream::new(handle, sending, &params, None, Some(server)));
            return;
        }
        let socket = stream::data_socket(sending, self.config.buffer);
        let handle = stack.sockets_mut().add(socket);
        let server = IpEndpoint::new(IpAddress::Ipv4(self.config.server), self.config.port);
        let port = stack.ephemeral_port();
        if stack.tcp_connect(handle, server, port).is_err() {
            stack.sockets_mut().remove(handle);
            return self
                .machine
                .terminate(ProtoError::DataStream("cannot connect"));
        }
        self.data = Some(DataStream::new(handle, sending, None));
    }

    fn pump_udp<D: Device>(&mut self, stack: &mut Stack<D>, now: Instant) {
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        let socket = stack.sockets_mut().get_mut::<udp::Socket>(udp.handle);
        udp.hello(socket, now);
        let running = self.meter.is_some() && self.totals.is_none();
        if udp.pump(socket, now) > 0 && running {
            self.active_at = now;
        }
        let Some(meter) = self.meter.as_mut() else {
            return;
        };
        if let Some(interval) = meter.tick(now, udp.counted()) {
            if self.totals.is_none() {
                self.events.push_back(Event::Interval(interval));
            }
        }
        if self.machine.params().omit > 0 && meter.omit_over() {
            udp.mark_omitted();
        }
        if running && self.end_at.is_some_and(|end| now >= end) {
            udp.stop();
            self.totals = Some(meter.total(now, udp.counted()));
            self.machine.end_test();
        }
        if self.machine.phase() != ClientPhase::Running {
            udp.stop();
        }
    }

    fn pump_data<D: Device>(&mut self, stack: &mut Stack<D>, now: Instant) {
        if self.udp.is_some() {
            return self.pump_udp(stack, now);
        }
        let Some(data) = self.data.as_mut() else {
            return;
        };
        let socket = stack.sockets_mut().get_mut::<tcp::Socket>(data.handle);
        if !self.cookie_sent {
            match socket.state() {
                tcp::State::SynSent | tcp::State::SynReceived => return,
                tcp::State::Established => {
                    if !data.send_prefix(socket, self.machine.cookie().as_bytes()) {
                        return self
                            .machine
                            .terminate(ProtoError::DataStream("the cookie does not fit"));
                    }
                    self.cookie_sent = true;
                }
                _ => {
                    return self
                        .machine
                        .terminate(ProtoError::DataStream("the server refused it"))
                }
            }
        }
        let running = self.meter.is_some() && self.totals.is_none();
        // The receiver always drains (also after the end, so the server is never stuck).
        if (running || !data.sending) && data.pump(socket) > 0 {
            self.active_at = now;
        }
        let Some(meter) = self.meter.as_mut() else {
            return;
        };
        let counted = data.counted(socket);
        if let Some(interval) = meter.tick(now, counted) {
            if self.totals.is_none() {
                self.events.push_back(Event::Interval(interval));
            }
        }
        if !running {
            return;
        }
        let broken = !socket.may_send() && !socket.may_recv();
        let time_up = self.end_at.is_some_and(|end| now >= end);
        if time_up || broken {
            data.stop();
            self.totals = Some(meter.total(now, counted));
            if broken {
                return self
                    .machine
                    .terminate(ProtoError::DataStream("it closed during the test"));
            }
            self.machine.end_test();
        }
        if self.machine.phase() != ClientPhase::Running {
            data.stop();
        }
    }

    fn fail(&mut self, reason: String) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.events.push_back(Event::Failed(Failure {
            role: Role::Client,
            local: self.local,
            peer: Some(IpAddress::Ipv4(self.config.server)),
            reason,
        }));
    }

    /// The test is over: the report (if it succeeded), the sockets closed.
    fn finish<D: Device>(&mut self, stack: &mut Stack<D>, now: Instant) {
        let sockets = stack.sockets_mut();
        let done = self.machine.phase() == ClientPhase::Done;
        if let Some(ctrl) = self.ctrl.take() {
            if done || sockets.get::<tcp::Socket>(ctrl).send_queue() > 0 {
                self.retiring.close(sockets, ctrl, now);
            } else {
                self.retiring.abort(sockets, ctrl);
            }
        }
        if let Some(udp) = &self.udp {
            sockets.remove(udp.handle);
        }
        if let Some(data) = self.data.take() {
            if ends_gracefully(done, data.sending) {
                self.retiring.close(sockets, data.handle, now);
            } else {
                self.retiring.abort(sockets, data.handle);
            }
        }
        if done && !self.over {
            let (bytes, micros) = self.totals.unwrap_or((0, 0));
            let sender = !self.config.reverse;
            let udp = self
                .udp
                .as_ref()
                .map(|u| UdpSummary::new(sender, &u.counts(), self.peer_results.as_ref()));
            self.events.push_back(Event::Finished(Report {
                role: Role::Client,
                local: self.local_ip(),
                peer: IpAddress::Ipv4(self.config.server),
                params: *self.machine.params(),
                sender,
                bytes,
                micros,
                peer_results: self.peer_results.take(),
                udp,
            }));
        }
        self.over = true;
    }
}

#[cfg(test)]
mod tests {
    use super::ends_gracefully;

    #[test]
    fn only_a_sending_client_that_completed_its_test_closes_with_a_fin() {
        assert!(ends_gracefully(true, true));
        // Receiving (a reverse test): a RST, as iperf3's close() with unread data.
        assert!(!ends_gracefully(true, false));
        // A failed test aborts whichever way its data went.
        assert!(!ends_gracefully(false, true));
        assert!(!ends_gracefully(false, false));
    }
}
