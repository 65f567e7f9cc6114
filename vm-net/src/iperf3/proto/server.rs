//! The server side of the control protocol ([`ServerControl`]): takes the cookie and the
//! parameters, accepts or refuses the test, and exchanges results.

use alloc::collections::VecDeque;
use alloc::string::String;

use super::channel::Channel;
use super::messages::{errno, Cookie, ProtoError, Results, State, TestParams, COOKIE_LEN};

/// Where a server's test is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerPhase {
    /// Waiting for the cookie.
    Cookie,
    /// PARAM_EXCHANGE sent; waiting for the parameters.
    Parameters,
    /// CREATE_STREAMS sent; waiting for the driver's [`ServerControl::stream_connected`].
    CreateStreams,
    /// TEST_START and TEST_RUNNING sent: data flows until the client's TEST_END.
    Running,
    /// TEST_END arrived; waiting for the driver's [`ServerControl::test_ended`].
    TestEnded,
    /// EXCHANGE_RESULTS sent; waiting for the client's results.
    ExchangeResults,
    /// Results exchanged, DISPLAY_RESULTS sent; waiting for IPERF_DONE.
    DisplayResults,
    Done,
    Failed,
}

/// What a server's driver has to do.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerEvent {
    /// The client's parameters are accepted and CREATE_STREAMS is in the output: open the
    /// data stream listener before sending it, take the stream whose first 37 bytes pass
    /// [`ServerControl::check_stream_cookie`], then call [`ServerControl::stream_connected`].
    CreateStreams(TestParams),
    /// The client ended the test: stop the data, freeze the counters and call
    /// [`ServerControl::test_ended`].
    TestEnd,
    /// The client's results; ours and DISPLAY_RESULTS are in the output.
    PeerResults(Results),
    /// IPERF_DONE: the test is over; close the control connection.
    Done,
    /// The test failed; what the client should hear (if anything) is in the output.
    Failed(ProtoError),
}

/// The server side of one test's control connection.
pub struct ServerControl {
    phase: ServerPhase,
    channel: Channel,
    cookie: Option<Cookie>,
    params: Option<TestParams>,
    /// Our results, sent when the client's arrive.
    results: Option<String>,
    events: VecDeque<ServerEvent>,
}

impl Default for ServerControl {
    fn default() -> Self {
        ServerControl::new()
    }
}

impl ServerControl {
    /// A control connection just accepted.
    pub fn new() -> ServerControl {
        ServerControl {
            phase: ServerPhase::Cookie,
            channel: Channel::default(),
            cookie: None,
            params: None,
            results: None,
            events: VecDeque::new(),
        }
    }

    pub fn phase(&self) -> ServerPhase {
        self.phase
    }

    /// Done or failed: nothing more will happen.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, ServerPhase::Done | ServerPhase::Failed)
    }

    /// The test's cookie, once the client sent it.
    pub fn cookie(&self) -> Option<&Cookie> {
        self.cookie.as_ref()
    }

    /// The accepted parameters.
    pub fn params(&self) -> Option<&TestParams> {
        self.params.as_ref()
    }

    /// Whether the first 37 bytes of a data stream name this test.
    pub fn check_stream_cookie(&self, bytes: &[u8]) -> bool {
        self.cookie.is_some_and(|c| c.as_bytes()[..] == *bytes)
    }

    /// Bytes the client sent on the control connection.
    pub fn receive(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.is_finished() {
            match self.channel.append(bytes) {
                Ok(rest) => bytes = rest,
                Err(e) => return self.fail(e),
            }
            self.process();
        }
    }

    /// Bytes to send to the client.
    pub fn output(&self) -> &[u8] {
        self.channel.output()
    }

    /// `n` bytes of [`ServerControl::output`] were sent.
    pub fn consume_output(&mut self, n: usize) {
        self.channel.consume_output(n);
    }

    pub fn next_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The data stream is connected and its cookie checked: the test runs.
    pub fn stream_connected(&mut self) {
        if self.phase != ServerPhase::CreateStreams {
            return self.fail(ProtoError::Misuse("stream_connected outside CreateStreams"));
        }
        self.channel.push_state(State::TestStart);
        self.channel.push_state(State::TestRunning);
        self.phase = ServerPhase::Running;
        self.process();
    }

    /// After [`ServerEvent::TestEnd`]: our counters, sent once the client's arrive.
    pub fn test_ended(&mut self, results: &Results) {
        if self.phase != ServerPhase::TestEnded {
            return self.fail(ProtoError::Misuse("test_ended outside TestEnded"));
        }
        self.results = Some(results.to_json());
        self.channel.push_state(State::ExchangeResults);
        self.phase = ServerPhase::ExchangeResults;
        self.process();
    }

    /// We give up on the test (a timeout, the data stream broke): SERVER_TERMINATE.
    pub fn terminate(&mut self, why: ProtoError) {
        if !self.is_finished() {
            if self.phase != ServerPhase::Cookie {
                self.channel.push_state(State::ServerTerminate);
            }
            self.fail(why);
        }
    }

    /// The client closed the control connection: the end if the results were exchanged, a
    /// failure before.
    pub fn peer_closed(&mut self) {
        match self.phase {
            ServerPhase::DisplayResults => {
                self.phase = ServerPhase::Done;
                self.events.push_back(ServerEvent::Done);
            }
            ServerPhase::Done | ServerPhase::Failed => {}
            _ => self.fail(ProtoError::Closed),
        }
    }

    fn fail(&mut self, why: ProtoError) {
        if !self.is_finished() {
            self.phase = ServerPhase::Failed;
            self.events.push_back(ServerEvent::Failed(why));
        }
    }

    fn refuse(&mut self, i_errno: i32, why: ProtoError) {
        self.channel.push_server_error(i_errno);
        self.fail(why);
    }

    fn process(&mut self) {
        loop {
            match self.phase {
                ServerPhase::Cookie => {
                    let Some(bytes) = self.channel.take_array::<COOKIE_LEN>() else {
                        return;
                    };
                    match Cookie::parse(&bytes) {
                        Ok(cookie) => {
                            self.cookie = Some(cookie);
                            self.channel.push_state(State::ParamExchange);
                            self.phase = ServerPhase::Parameters;
                        }
                        Err(e) => return self.fail(e),
                    }
                }
                ServerPhase::Parameters => {
                    let params = match self.channel.take_json() {
                        None => return,
                        Some(Err(e)) => return self.refuse(errno::IERECVPARAMS, e),
                        Some(Ok(text)) => match TestParams::from_json(&text) {
                            Ok(params) => params,
                            Err(e) => return self.refuse(errno::IERECVPARAMS, e),
                        },
                    };
                    if let Err(refusal) = params.check() {
                        return self.refuse(refusal.i_errno, ProtoError::Refused(refusal));
                    }
                    self.params = Some(params);
                    self.channel.push_state(State::CreateStreams);
                    self.phase = ServerPhase::CreateStreams;
                    self.events.push_back(ServerEvent::CreateStreams(params));
                }
                ServerPhase::Running => {
                    let Some(byte) = self.channel.take_byte() else {
                        return;
                    };
                    match State::from_byte(byte) {
                        // iperf3's server ignores a late TEST_START too.
                        Some(State::TestStart) => {}
                        Some(State::TestEnd) => {
                            self.phase = ServerPhase::TestEnded;
                            self.events.push_back(ServerEvent::TestEnd);
                        }
                        Some(State::ClientTerminate) => {
                            return self.fail(ProtoError::ClientTerminated)
                        }
                        Some(other) => return self.fail(ProtoError::UnexpectedState(other)),
                        None => return self.fail(ProtoError::UnknownState(byte)),
                    }
                }
                ServerPhase::ExchangeResults => {
                    let results = match self.channel.take_json() {
                        None => return,
                        Some(Err(e)) => return self.fail(e),
                        Some(Ok(text)) => match Results::from_json(&text) {
                            Ok(results) => results,
                            Err(e) => return self.fail(e),
                        },
                    };
                    let ours = self.results.take().unwrap_or_default();
                    self.channel.push_json(&ours);
                    self.channel.push_state(State::DisplayResults);
                    self.phase = ServerPhase::DisplayResults;
                    self.events.push_back(ServerEvent::PeerResults(results));
                }
                ServerPhase::DisplayResults => {
                    let Some(byte) = self.channel.take_byte() else {
                        return;
                    };
                    match State::from_byte(byte) {
                        Some(State::IperfDone) => {
                            self.phase = ServerPhase::Done;
                            self.events.push_back(ServerEvent::Done);
                        }
                        Some(State::ClientTerminate) => {
                            return self.fail(ProtoError::ClientTerminated)
                        }
                        Some(other) => return self.fail(ProtoError::UnexpectedState(other)),
                        None => return self.fail(ProtoError::UnknownState(byte)),
                    }
                }
                // Waiting for the driver, or over: input stays buffered (bounded).
                ServerPhase::CreateStreams
                | ServerPhase::TestEnded
                | ServerPhase::Done
                | ServerPhase::Failed => return,
            }
        }
    }
}
