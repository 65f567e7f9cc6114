//! The iperf3 server on smoltcp sockets: serves tests one after another on its port, the
//! control protocol run by [`ServerControl`], the data moved by `stream::DataStream`. It owns
//! its sockets inside the endpoint's socket set and is advanced by [`Server::pump`], which
//! [`Stack::poll_at`](crate::Stack::poll_at) calls when the stack runs it
//! ([`Stack::serve_iperf3`](crate::Stack::serve_iperf3)), or by [`Server::poll`] next to a
//! stack.
//!
//! Sockets: one listener on the port takes the next test's control connection; while a test
//! runs, it answers anyone else with ACCESS_DENIED. After the parameters, a data socket sized
//! for the direction of the test listens on the same port for the stream with the test's
//! cookie (until then no other listener is open, so the stream cannot go astray). A UDP test
//! binds a UDP socket to the port instead; the first datagram from the control connection's
//! address is the client's connect message, answered, and names the endpoint of the data.

use alloc::collections::VecDeque;
use alloc::string::ToString;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::IpAddress;

use super::proto::{
    ProtoError, Protocol, Results, ServerControl, ServerEvent, ServerPhase, State, TestParams,
    COOKIE_LEN, DEFAULT_PORT,
};
use super::report::{Event, Failure, Report, Role, TestInfo, UdpSummary};
use super::stream::{self, DataStream, Meter, Retiring, UdpStream, CONTROL_BUFFER, SMALL_BUFFER};
use crate::Stack;

/// Data streams with a wrong cookie a test tolerates before it gives up.
const MAX_REJECTED_STREAMS: u32 = 4;
/// How long past its announced end a running test may go before it is given up.
const RUN_GRACE: Duration = Duration::from_secs(10);
/// Events kept for a caller that does not collect them.
const MAX_EVENTS: usize = 64;

/// How a [`Server`] runs.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    /// The port (iperf3's 5201).
    pub port: u16,
    /// The data socket's buffer in the direction of the data (1 MiB: a window big enough
    /// for smoltcp to scale it).
    pub buffer: usize,
    /// How long a client may keep a test waiting (cookie, parameters, data stream, results).
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            port: DEFAULT_PORT,
            buffer: super::DEFAULT_BUFFER,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// An iperf3 server: one test at a time, any number of tests.
pub struct Server {
    config: ServerConfig,
    /// Takes the next control connection (no test) or denies (a test is running).
    listener: Option<SocketHandle>,
    test: Option<ServerTest>,
    retiring: Retiring,
    events: VecDeque<Event>,
    /// Tests finished and failed so far.
    pub finished: u32,
    pub failed: u32,
}

/// The test being served.
struct ServerTest {
    ctrl: SocketHandle,
    local: IpAddress,
    peer: IpAddress,
    machine: ServerControl,
    params: Option<TestParams>,
    data: Option<DataStream>,
    /// A UDP test's data stream (instead of `data`).
    udp: Option<UdpStream>,
    /// The data stream's cookie, as far as it came.
    cookie: [u8; COOKIE_LEN],
    cookie_len: usize,
    /// The data stream passed the cookie check.
    streaming: bool,
    rejected: u32,
    meter: Option<Meter>,
    /// When the client last did something.
    active_at: Instant,
    /// When a running test is given up.
    deadline: Option<Instant>,
    /// Bytes and microseconds counted when the client ended the test.
    totals: Option<(u64, u64)>,
    peer_results: Option<Results>,
}

impl Server {
    /// A server; its sockets are made by the first pump.
    pub fn new(config: ServerConfig) -> Server {
        Server {
            config,
            listener: None,
            test: None,
            retiring: Retiring::default(),
            events: VecDeque::new(),
            finished: 0,
            failed: 0,
        }
    }

    /// News since the last call.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether a test is in progress.
    pub fn busy(&self) -> bool {
        self.test.is_some()
    }

    /// No test in progress and the sockets of the last one are gone.
    pub fn is_quiet(&self) -> bool {
        self.test.is_none() && self.retiring.is_empty()
    }

    /// [`Server::pump`] on `stack`'s sockets (for a server that is not the stack's own); call
    /// between two polls of the stack.
    pub fn poll<D: Device>(&mut self, stack: &mut Stack<D>, now: Instant) {
        self.pump(stack.sockets_mut(), now);
    }

    /// When the server next needs a pump even if no frame arrives (timeouts, interval ends).
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.retiring.next_deadline();
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n: Instant| n.min(at)));
            }
        };
        if let Some(test) = &self.test {
            consider(test.meter.as_ref().map(|m| m.next_tick()));
            if test.totals.is_none() {
                consider(test.udp.as_ref().and_then(|u| u.next_send()));
            }
            match test.deadline {
                Some(deadline) => consider(Some(deadline)),
                None => consider(Some(test.active_at + self.config.idle_timeout)),
            }
        }
        next
    }

    /// Runs the server: accepts and denies connections, moves the test's control messages
    /// and data. Call between two polls of the interface.
    pub fn pump(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        self.retiring.run(sockets, now);
        self.serve_listener(sockets, now);
        let Some(test) = self.test.as_mut() else {
            return;
        };
        test.pump(
            sockets,
            now,
            &self.config,
            &mut self.retiring,
            &mut self.events,
        );
        if test.machine.is_finished() {
            let flushed = test.machine.output().is_empty()
                || !sockets.get::<tcp::Socket>(test.ctrl).may_send();
            if flushed || now >= test.active_at + self.config.idle_timeout {
                self.end_test(sockets, now);
            }
        }
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// Keeps a listener open while one may be: always without a test, while a test runs once
    /// its data stream is in (before, the data listener must be the only one on the port).
    fn serve_listener(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        let deny = match &self.test {
            None => false,
            Some(test) if test.streaming || test.machine.is_finished() => true,
            Some(_) => return,
        };
        let handle = match self.listener {
            Some(handle) => handle,
            None => {
                let socket = stream::tcp_socket(CONTROL_BUFFER, CONTROL_BUFFER);
                let handle = sockets.add(socket);
                self.listener = Some(handle);
                handle
            }
        };
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        if !socket.is_open() {
            // Only port 0 fails; there is nothing to serve then.
            let _ = socket.listen(self.config.port);
            return;
        }
        if !socket.may_send() {
            return; // listening, or the handshake is under way
        }
        self.listener = None;
        if deny {
            let _ = stream::write(socket, &[State::AccessDenied.byte()]);
            self.retiring.close(sockets, handle, now);
            return;
        }
        let (local, peer) = match (socket.local_endpoint(), socket.remote_endpoint()) {
            (Some(l), Some(p)) => (l.addr, p.addr),
            _ => {
                self.retiring.abort(sockets, handle);
                return;
            }
        };
        self.test = Some(ServerTest::new(handle, local, peer, now));
    }

    /// The test is over: its report or failure, its sockets closed.
    fn end_test(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        let Some(test) = self.test.take() else {
            return;
        };
        let queued = sockets.get::<tcp::Socket>(test.ctrl).send_queue();
        let done = test.machine.phase() == ServerPhase::Done;
        if done {
            self.retiring.close(sockets, test.ctrl, now);
        } else {
            // Let a SERVER_ERROR or SERVER_TERMINATE already queued go out first.
            if queued == 0 {
                self.retiring.abort(sockets, test.ctrl);
            } else {
                self.retiring.close(sockets, test.ctrl, now);
            }
        }
        if let Some(udp) = &test.udp {
            sockets.remove(udp.handle);
        }
        if let Some(data) = &test.data {
            if data.sending && test.streaming {
                // What is queued still goes out; the client drains it.
                self.retiring.close(sockets, data.handle, now);
            } else {
                self.retiring.abort(sockets, data.handle);
            }
        }
        if done {
            self.finished += 1;
            let has_data = test.data.is_some() || test.udp.is_some();
            if let (Some(params), Some((bytes, micros)), true) =
                (test.params, test.totals, has_data)
            {
                let sender = params.reverse;
                let udp = test
                    .udp
                    .as_ref()
                    .map(|u| UdpSummary::new(sender, &u.counts(), test.peer_results.as_ref()));
                self.events.push_back(Event::Finished(Report {
                    role: Role::Server,
                    local: test.local,
                    peer: test.peer,
                    params,
                    sender,
                    bytes,
                    micros,
                    peer_results: test.peer_results,
                    udp,
                }));
            }
        } else {
            self.failed += 1;
        }
    }
}

impl ServerTest {
    fn new(ctrl: SocketHandle, local: IpAddress, peer: IpAddress, now: Instant) -> ServerTest {
        ServerTest {
            ctrl,
            local,
            peer,
            machine: ServerControl::new(),
            params: None,
            data: None,
            udp: None,
            cookie: [0; COOKIE_LEN],
            cookie_len: 0,
            streaming: false,
            rejected: 0,
            meter: None,
            active_at: now,
            deadline: None,
            totals: None,
            peer_results: None,
        }
    }

    fn pump(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now: Instant,
        config: &ServerConfig,
        retiring: &mut Retiring,
        events: &mut VecDeque<Event>,
    ) {
        // Control input.
        let ctrl = sockets.get_mut::<tcp::Socket>(self.ctrl);
        let machine = &mut self.machine;
        if stream::drain(ctrl, |bytes| machine.receive(bytes)) > 0 {
            self.active_at = now;
        }
        let closed = !ctrl.may_recv();
        self.handle_events(sockets, now, config, events);

        // The data stream.
        if (self.data.is_some() || self.udp.is_some()) && !self.machine.is_finished() {
            self.pump_data(sockets, now, config, retiring);
            self.handle_events(sockets, now, config, events);
        }

        // Progress, timeouts.
        if let (Some(meter), None) = (&mut self.meter, self.totals) {
            let counted = match (&self.data, &self.udp) {
                (Some(data), _) => Some(data.counted(sockets.get::<tcp::Socket>(data.handle))),
                (None, Some(udp)) => Some(udp.counted()),
                (None, None) => None,
            };
            if let Some(counted) = counted {
                if let Some(interval) = meter.tick(now, counted) {
                    events.push_back(Event::Interval(interval));
                }
            }
            let omit = self.params.is_some_and(|p| p.omit > 0);
            if let (true, true, Some(udp)) = (omit, meter.omit_over(), self.udp.as_mut()) {
                udp.mark_omitted();
            }
        }
        if closed {
            self.machine.peer_closed();
            self.handle_events(sockets, now, config, events);
        }
        // A timed test that runs has its deadline (a paced client may be quiet for long);
        // everything else must not go quiet.
        let timed_run = self.deadline.is_some();
        let idle = !timed_run && now >= self.active_at + config.idle_timeout;
        if idle || self.deadline.is_some_and(|d| now >= d) {
            self.machine.terminate(ProtoError::TimedOut);
            self.handle_events(sockets, now, config, events);
        }

        // Control output.
        let ctrl = sockets.get_mut::<tcp::Socket>(self.ctrl);
        let n = stream::write(ctrl, self.machine.output());
        self.machine.consume_output(n);
    }

    fn handle_events(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now: Instant,
        config: &ServerConfig,
        events: &mut VecDeque<Event>,
    ) {
        while let Some(event) = self.machine.next_event() {
            match event {
                ServerEvent::CreateStreams(params) => {
                    self.params = Some(params);
                    self.open_data(sockets, config);
                    events.push_back(Event::Started(TestInfo {
                        role: Role::Server,
                        local: self.local,
                        peer: self.peer,
                        params,
                    }));
                }
                ServerEvent::TestEnd => {
                    if let Some(udp) = self.udp.as_mut() {
                        udp.pump(sockets.get_mut::<udp::Socket>(udp.handle), now);
                        udp.stop();
                        let totals = match &self.meter {
                            Some(meter) => meter.total(now, udp.counted()),
                            None => (0, 0),
                        };
                        self.totals = Some(totals);
                        self.deadline = None;
                        let seconds = totals.1 as f64 / 1e6;
                        let results =
                            Results::udp_stream(udp.sending, totals.0, seconds, &udp.counts());
                        self.machine.test_ended(&results);
                        continue;
                    }
                    let (sending, totals) = match (&mut self.data, &self.meter) {
                        (Some(data), Some(meter)) => {
                            data.stop();
                            let socket = sockets.get_mut::<tcp::Socket>(data.handle);
                            // What already arrived counts too.
                            data.pump(socket);
                            let totals = (data.sending, meter.total(now, data.counted(socket)));
                            // Our FIN, as iperf3's server closes its streams at TEST_END:
                            // iperf3 3.12's client drains a reverse test with blocking reads
                            // of whole blocks and would wait forever for the rest of one.
                            socket.close();
                            totals
                        }
                        (data, _) => (data.as_ref().is_some_and(|d| d.sending), (0, 0)),
                    };
                    self.totals = Some(totals);
                    self.deadline = None;
                    let (bytes, micros) = totals;
                    let seconds = micros as f64 / 1e6;
                    self.machine
                        .test_ended(&Results::one_stream(sending, bytes, seconds));
                }
                ServerEvent::PeerResults(results) => self.peer_results = Some(results),
                ServerEvent::Done => {}
                ServerEvent::Failed(why) => {
                    events.push_back(Event::Failed(Failure {
                        role: Role::Server,
                        local: Some(self.local),
                        peer: Some(self.peer),
                        reason: why.to_string(),
                    }));
                }
            }
        }
    }

    /// A data socket listening on the port, sized for the direction of the test.
    fn open_data(&mut self, sockets: &mut SocketSet<'static>, config: &ServerConfig) {
        let Some(params) = self.params else {
            return;
        };
        let sending = params.reverse;
        if params.protocol == Protocol::Udp {
            let mut socket = stream::udp_socket(sending, config.buffer);
            if socket.bind(config.port).is_err() {
                return self
                    .machine
                    .terminate(ProtoError::DataStream("cannot bind the UDP port"));
            }
            let handle = sockets.add(socket);
            let limit = if sending { params.byte_limit() } else { None };
            self.udp = Some(UdpStream::new(handle, sending, &params, limit, None));
            return;
        }
        let mut socket = stream::data_socket(sending, config.buffer.max(SMALL_BUFFER));
        if socket.listen(config.port).is_err() {
            return self
                .machine
                .terminate(ProtoError::DataStream("cannot listen"));
        }
        let handle = sockets.add(socket);
        let limit = if sending { params.byte_limit() } else { None };
        self.data = Some(DataStream::new(handle, sending, limit));
        self.cookie_len = 0;
    }

    /// The data stream is in: the test runs from `now`.
    fn start_running(&mut self, now: Instant) {
        self.streaming = true;
        self.active_at = now;
        let params = self.params.unwrap_or(TestParams::tcp(0));
        self.meter = Some(Meter::new(now, params.omit));
        if params.seconds != 0 {
            let run = u64::from(params.seconds) + u64::from(params.omit);
            self.deadline = Some(now + Duration::from_secs(run) + RUN_GRACE);
        }
        self.machine.stream_connected();
    }

    fn pump_data(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now: Instant,
        config: &ServerConfig,
        retiring: &mut Retiring,
    ) {
        if let Some(handle) = self.udp.as_ref().map(|u| u.handle) {
            if !self.streaming {
                let peer = self.peer;
                let accepted = self
                    .udp
                    .as_mut()
                    .is_some_and(|u| u.accept(sockets.get_mut::<udp::Socket>(handle), peer));
                if !accepted {
                    return;
                }
                self.start_running(now);
            }
            if let Some(udp) = self.udp.as_mut() {
                udp.start(now);
                if udp.pump(sockets.get_mut::<udp::Socket>(handle), now) > 0 {
                    self.active_at = now;
                }
            }
            return;
        }
        let Some(data) = self.data.as_mut() else {
            return;
        };
        let socket = sockets.get_mut::<tcp::Socket>(data.handle);
        if self.streaming {
            if data.pump(socket) > 0 {
                self.active_at = now;
            }
            if !socket.may_recv() && !socket.may_send() && self.totals.is_none() {
                self.machine
                    .terminate(ProtoError::DataStream("it closed during the test"));
            }
            return;
        }
        // Waiting for the stream and its cookie.
        if socket.state() == tcp::State::Closed {
            // Reset before its cookie arrived: listen again.
            retiring.abort(sockets, data.handle);
            self.data = None;
            return self.open_data(sockets, config);
        }
        while self.cookie_len < COOKIE_LEN && socket.can_recv() {
            let n = socket
                .recv_slice(&mut self.cookie[self.cookie_len..])
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            self.cookie_len += n;
        }
        if self.cookie_len < COOKIE_LEN {
            return;
        }
        if self.machine.check_stream_cookie(&self.cookie) {
            let handle = data.handle;
            self.start_running(now);
            if let Some(data) = self.data.as_mut() {
                data.pump(sockets.get_mut::<tcp::Socket>(handle));
            }
            return;
        }
        // Someone else's stream: deny it and listen again.
        let _ = stream::write(socket, &[State::AccessDenied.byte()]);
        retiring.close(sockets, data.handle, now);
        self.data = None;
        self.rejected += 1;
        if self.rejected > MAX_REJECTED_STREAMS {
            return self
                .machine
                .terminate(ProtoError::DataStream("too many with a bad cookie"));
        }
        self.open_data(sockets, config);
    }
}
