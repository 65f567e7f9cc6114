//! The client side of the control protocol ([`ClientControl`]): sends the cookie and the
//! parameters, follows the server's state bytes, and exchanges results.

use alloc::collections::VecDeque;

use super::channel::Channel;
use super::messages::{Cookie, ProtoError, Results, State, TestParams};

/// Where a client's test is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientPhase {
    /// Cookie sent; waiting for PARAM_EXCHANGE.
    ParamExchange,
    /// Parameters sent; waiting for CREATE_STREAMS.
    CreateStreams,
    /// Waiting for TEST_START.
    TestStart,
    /// Waiting for TEST_RUNNING.
    TestRunning,
    /// Data flows until the driver's [`ClientControl::end_test`].
    Running,
    /// TEST_END sent; waiting for EXCHANGE_RESULTS.
    TestEnded,
    /// Waiting for the driver's [`ClientControl::send_results`].
    ResultsWanted,
    /// Our results sent; waiting for the server's.
    ServerResults,
    /// Waiting for DISPLAY_RESULTS.
    DisplayResults,
    /// SERVER_ERROR arrived; waiting for its two error numbers.
    ServerError,
    Done,
    Failed,
}

/// What a client's driver has to do.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// Connect the data stream to the server's port and send it the cookie first.
    CreateStreams,
    TestStart,
    /// Data may flow: start the clock.
    TestRunning,
    /// The server wants our results: call [`ClientControl::send_results`].
    ResultsWanted,
    /// The server's results.
    PeerResults(Results),
    /// The test is over; IPERF_DONE is in the output: close the control connection after it.
    Done,
    Failed(ProtoError),
}

/// The client side of one test's control connection.
pub struct ClientControl {
    phase: ClientPhase,
    channel: Channel,
    cookie: Cookie,
    params: TestParams,
    events: VecDeque<ClientEvent>,
}

impl ClientControl {
    /// A test with `params`, named `cookie`; the cookie is the first output.
    pub fn new(cookie: Cookie, params: TestParams) -> ClientControl {
        let mut channel = Channel::default();
        channel.push_bytes(cookie.as_bytes());
        ClientControl {
            phase: ClientPhase::ParamExchange,
            channel,
            cookie,
            params,
            events: VecDeque::new(),
        }
    }

    pub fn phase(&self) -> ClientPhase {
        self.phase
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.phase, ClientPhase::Done | ClientPhase::Failed)
    }

    pub fn cookie(&self) -> &Cookie {
        &self.cookie
    }

    pub fn params(&self) -> &TestParams {
        &self.params
    }

    /// Bytes the server sent on the control connection.
    pub fn receive(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.is_finished() {
            match self.channel.append(bytes) {
                Ok(rest) => bytes = rest,
                Err(e) => return self.fail(e),
            }
            self.process();
        }
    }

    /// Bytes to send to the server.
    pub fn output(&self) -> &[u8] {
        self.channel.output()
    }

    /// `n` bytes of [`ClientControl::output`] were sent.
    pub fn consume_output(&mut self, n: usize) {
        self.channel.consume_output(n);
    }

    pub fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The test time is up: TEST_END.
    pub fn end_test(&mut self) {
        if self.phase != ClientPhase::Running {
            return self.fail(ProtoError::Misuse("end_test outside Running"));
        }
        self.channel.push_state(State::TestEnd);
        self.phase = ClientPhase::TestEnded;
        self.process();
    }

    /// After [`ClientEvent::ResultsWanted`]: our counters.
    pub fn send_results(&mut self, results: &Results) {
        if self.phase != ClientPhase::ResultsWanted {
            return self.fail(ProtoError::Misuse("send_results outside ResultsWanted"));
        }
        self.channel.push_json(&results.to_json());
        self.phase = ClientPhase::ServerResults;
        self.process();
    }

    /// We give up on the test: CLIENT_TERMINATE.
    pub fn terminate(&mut self, why: ProtoError) {
        if !self.is_finished() {
            self.channel.push_state(State::ClientTerminate);
            self.fail(why);
        }
    }

    /// The server closed the control connection.
    pub fn peer_closed(&mut self) {
        self.fail(ProtoError::Closed);
    }

    fn fail(&mut self, why: ProtoError) {
        if !self.is_finished() {
            self.phase = ClientPhase::Failed;
            self.events.push_back(ClientEvent::Failed(why));
        }
    }

    fn process(&mut self) {
        loop {
            match self.phase {
                ClientPhase::ResultsWanted | ClientPhase::Done | ClientPhase::Failed => return,
                ClientPhase::ServerError => {
                    let Some(codes) = self.channel.take_array::<8>() else {
                        return;
                    };
                    let i_errno = i32::from_be_bytes([codes[0], codes[1], codes[2], codes[3]]);
                    let errno = i32::from_be_bytes([codes[4], codes[5], codes[6], codes[7]]);
                    return self.fail(ProtoError::ServerError { i_errno, errno });
                }
                ClientPhase::ServerResults => {
                    let results = match self.channel.take_json() {
                        None => return,
                        Some(Err(e)) => return self.fail(e),
                        Some(Ok(text)) => match Results::from_json(&text) {
                            Ok(results) => results,
                            Err(e) => return self.fail(e),
                        },
                    };
                    self.phase = ClientPhase::DisplayResults;
                    self.events.push_back(ClientEvent::PeerResults(results));
                }
                _ => {
                    let Some(byte) = self.channel.take_byte() else {
                        return;
                    };
                    let Some(state) = State::from_byte(byte) else {
                        return self.fail(ProtoError::UnknownState(byte));
                    };
                    self.on_state(state);
                }
            }
        }
    }

    fn on_state(&mut self, state: State) {
        let (next, event) = match (self.phase, state) {
            (_, State::AccessDenied) => return self.fail(ProtoError::AccessDenied),
            (_, State::ServerTerminate) => return self.fail(ProtoError::ServerTerminated),
            (_, State::ServerError) => {
                self.phase = ClientPhase::ServerError;
                return;
            }
            (ClientPhase::ParamExchange, State::ParamExchange) => {
                let text = self.params.to_json();
                self.channel.push_json(&text);
                (ClientPhase::CreateStreams, None)
            }
            (ClientPhase::CreateStreams, State::CreateStreams) => {
                (ClientPhase::TestStart, Some(ClientEvent::CreateStreams))
            }
            (ClientPhase::TestStart, State::TestStart) => {
                (ClientPhase::TestRunning, Some(ClientEvent::TestStart))
            }
            (ClientPhase::TestRunning, State::TestRunning) => {
                (ClientPhase::Running, Some(ClientEvent::TestRunning))
            }
            (ClientPhase::TestEnded, State::ExchangeResults) => {
                (ClientPhase::ResultsWanted, Some(ClientEvent::ResultsWanted))
            }
            (ClientPhase::DisplayResults, State::DisplayResults) => {
                self.channel.push_state(State::IperfDone);
                (ClientPhase::Done, Some(ClientEvent::Done))
            }
            (_, other) => return self.fail(ProtoError::UnexpectedState(other)),
        };
        self.phase = next;
        if let Some(event) = event {
            self.events.push_back(event);
        }
    }
}
