//! Host tests of the control protocol: both roles against each other and against hostile bytes.

use super::super::json::JsonError;
use super::messages::{splitmix64, COOKIE_CHARS, MAX_STREAMS_KEPT};
use super::*;
use std::vec;

fn events_server(s: &mut ServerControl) -> Vec<ServerEvent> {
    core::iter::from_fn(|| s.next_event()).collect()
}

fn events_client(c: &mut ClientControl) -> Vec<ClientEvent> {
    core::iter::from_fn(|| c.next_event()).collect()
}

/// Moves everything each side has to say to the other, `chunk` bytes at a time.
fn exchange(c: &mut ClientControl, s: &mut ServerControl, chunk: usize) {
    loop {
        let to_server = c.output().to_vec();
        let to_client = s.output().to_vec();
        if to_server.is_empty() && to_client.is_empty() {
            return;
        }
        c.consume_output(to_server.len());
        s.consume_output(to_client.len());
        for piece in to_server.chunks(chunk) {
            s.receive(piece);
        }
        for piece in to_client.chunks(chunk) {
            c.receive(piece);
        }
    }
}

fn full_test(reverse: bool, chunk: usize) {
    let mut params = TestParams::tcp(3);
    params.reverse = reverse;
    let cookie = Cookie::generate(42);
    let mut c = ClientControl::new(cookie, params);
    let mut s = ServerControl::new();

    exchange(&mut c, &mut s, chunk);
    assert_eq!(s.cookie(), Some(&cookie));
    assert_eq!(
        events_server(&mut s),
        vec![ServerEvent::CreateStreams(params)]
    );
    assert_eq!(events_client(&mut c), vec![ClientEvent::CreateStreams]);
    assert_eq!(s.phase(), ServerPhase::CreateStreams);
    assert!(s.check_stream_cookie(c.cookie().as_bytes()));
    assert!(!s.check_stream_cookie(Cookie::generate(43).as_bytes()));
    assert!(!s.check_stream_cookie(&c.cookie().as_bytes()[..36]));

    s.stream_connected();
    exchange(&mut c, &mut s, chunk);
    assert_eq!(
        events_client(&mut c),
        vec![ClientEvent::TestStart, ClientEvent::TestRunning]
    );
    assert_eq!(c.phase(), ClientPhase::Running);

    c.end_test();
    exchange(&mut c, &mut s, chunk);
    assert_eq!(events_server(&mut s), vec![ServerEvent::TestEnd]);
    let server_results = Results::one_stream(reverse, 1_000_000, 3.0);
    s.test_ended(&server_results);
    exchange(&mut c, &mut s, chunk);
    assert_eq!(events_client(&mut c), vec![ClientEvent::ResultsWanted]);
    let client_results = Results::one_stream(!reverse, 999_000, 3.001);
    c.send_results(&client_results);
    exchange(&mut c, &mut s, chunk);
    assert_eq!(
        events_server(&mut s),
        vec![
            ServerEvent::PeerResults(client_results.clone()),
            ServerEvent::Done
        ]
    );
    assert_eq!(
        events_client(&mut c),
        vec![ClientEvent::PeerResults(server_results), ClientEvent::Done]
    );
    assert_eq!(s.phase(), ServerPhase::Done);
    assert_eq!(c.phase(), ClientPhase::Done);
}

#[test]
fn a_whole_test_both_directions_any_split() {
    for chunk in [1, 2, 3, 7, 4096] {
        full_test(false, chunk);
        full_test(true, chunk);
    }
}

#[test]
fn states_round_trip() {
    for s in State::ALL {
        assert_eq!(State::from_byte(s.byte()), Some(s));
    }
    assert_eq!(State::AccessDenied.byte(), 0xff);
    assert_eq!(State::ServerError.byte(), 0xfe);
    for unused in [0, 3, 5, 6, 7, 8, 15, 17, 100, 0xfd] {
        assert_eq!(State::from_byte(unused), None);
    }
}

#[test]
fn cookies() {
    let c = Cookie::generate(7);
    let bytes = c.as_bytes();
    assert_eq!(bytes[36], 0);
    assert!(bytes[..36].iter().all(|b| COOKIE_CHARS.contains(b)));
    assert_ne!(Cookie::generate(8), c);
    assert_eq!(Cookie::parse(bytes), Ok(c));
    let mut bad = *bytes;
    bad[36] = b'x';
    assert_eq!(Cookie::parse(&bad), Err(ProtoError::BadCookie));
    let mut bad = *bytes;
    bad[3] = 0;
    assert_eq!(Cookie::parse(&bad), Err(ProtoError::BadCookie));
    let mut bad = *bytes;
    bad[3] = b' ';
    assert_eq!(Cookie::parse(&bad), Err(ProtoError::BadCookie));
    assert_eq!(Cookie::parse(&bytes[..36]), Err(ProtoError::BadCookie));
}

#[test]
fn parameters_of_a_real_client() {
    // What iperf3 3.12 sends for `iperf3 -c host -t 5 -R -l 64K -O 1`.
    let text = br#"{"tcp":true,"omit":1,"time":5,"num":0,"blockcount":0,"parallel":1,"reverse":true,"len":65536,"pacing_timer":1000,"client_version":"3.12"}"#;
    let p = TestParams::from_json(text).unwrap();
    assert_eq!(p.protocol, Protocol::Tcp);
    assert_eq!((p.seconds, p.omit, p.block_len), (5, 1, 65536));
    assert!(p.reverse && !p.bidirectional);
    assert_eq!(p.byte_limit(), None);
    assert_eq!(p.check(), Ok(()));
    let ours = TestParams::from_json(p.to_json().as_bytes()).unwrap();
    assert_eq!(ours, p);

    let udp = TestParams::from_json(br#"{"udp":true,"parallel":1}"#).unwrap();
    assert_eq!(udp.check(), Ok(()));
    assert_eq!((udp.block_len, udp.bandwidth), (1460, 1_000_000));
    let sctp = TestParams::from_json(br#"{"sctp":true,"parallel":1}"#).unwrap();
    assert_eq!(sctp.check().unwrap_err().i_errno, errno::IEUNIMP);
    let big = TestParams::from_json(br#"{"udp":true,"len":65508}"#).unwrap();
    assert_eq!(big.check().unwrap_err().i_errno, errno::IEUDPBLOCKSIZE);
    let p4 = TestParams::from_json(br#"{"tcp":true,"parallel":4}"#).unwrap();
    assert_eq!(p4.check().unwrap_err().i_errno, errno::IENUMSTREAMS);
    let n = TestParams::from_json(br#"{"tcp":true,"num":1000,"len":100}"#).unwrap();
    assert_eq!(n.byte_limit(), Some(1000));
    let k = TestParams::from_json(br#"{"tcp":true,"blockcount":3,"len":100}"#).unwrap();
    assert_eq!(k.byte_limit(), Some(300));
    assert_eq!(
        TestParams::from_json(br#"{"time":-1}"#),
        Err(ProtoError::BadParameter("time"))
    );
    assert_eq!(
        TestParams::from_json(br#"{"len":"big"}"#),
        Err(ProtoError::BadParameter("len"))
    );
    let huge = TestParams::from_json(br#"{"time":1e30,"len":0}"#).unwrap();
    assert_eq!(huge.seconds, u32::MAX);
    assert!(huge.check().is_err());
}

#[test]
fn results_of_a_real_server() {
    let text = br#"{"cpu_util_total":2.1,"cpu_util_user":0.3,"cpu_util_system":1.8,"sender_has_retransmits":1,"congestion_used":"cubic","streams":[{"id":1,"bytes":3355443200,"retransmits":12,"jitter":0,"errors":0,"omitted_errors":0,"packets":0,"omitted_packets":0,"start_time":0,"end_time":5.000161}]}"#;
    let r = Results::from_json(text).unwrap();
    assert_eq!(r.sender_has_retransmits, 1);
    assert_eq!(r.streams.len(), 1);
    assert_eq!(r.streams[0].bytes, 3_355_443_200);
    assert_eq!(r.streams[0].retransmits, 12);
    assert!((r.streams[0].end_time - 5.000161).abs() < 1e-9);
    let back = Results::from_json(r.to_json().as_bytes()).unwrap();
    assert_eq!(back.streams, r.streams);
    // Many streams: only the first 16 kept.
    let mut many = String::from("{\"streams\":[");
    for i in 0..100 {
        many.push_str(if i == 0 { "" } else { "," });
        many.push_str(&std::format!("{{\"id\":{i},\"bytes\":{i}}}"));
    }
    many.push_str("]}");
    assert_eq!(
        Results::from_json(many.as_bytes()).unwrap().streams.len(),
        MAX_STREAMS_KEPT
    );
}

fn server_after_cookie() -> ServerControl {
    let mut s = ServerControl::new();
    s.receive(Cookie::generate(1).as_bytes());
    assert_eq!(s.output(), &[State::ParamExchange.byte()]);
    s.consume_output(1);
    s
}

fn server_error_of(s: &ServerControl) -> Option<i32> {
    let out = s.output();
    (out.len() == 9 && out[0] == State::ServerError.byte())
        .then(|| i32::from_be_bytes([out[1], out[2], out[3], out[4]]))
}

#[test]
fn server_refuses_bad_input() {
    // A bad cookie: no answer, failed.
    let mut s = ServerControl::new();
    s.receive(&[b'a'; COOKIE_LEN]);
    assert_eq!(s.phase(), ServerPhase::Failed);
    assert!(s.output().is_empty());
    assert_eq!(
        events_server(&mut s),
        vec![ServerEvent::Failed(ProtoError::BadCookie)]
    );

    // A JSON length past the limit: SERVER_ERROR before reading it.
    let mut s = server_after_cookie();
    s.receive(&u32::MAX.to_be_bytes());
    assert_eq!(server_error_of(&s), Some(errno::IERECVPARAMS));
    assert_eq!(
        events_server(&mut s),
        vec![ServerEvent::Failed(ProtoError::MessageTooLong(u32::MAX))]
    );

    // Garbage JSON.
    let mut s = server_after_cookie();
    s.receive(&5u32.to_be_bytes());
    s.receive(b"{\"a\":");
    assert_eq!(server_error_of(&s), Some(errno::IERECVPARAMS));

    // Two streams: refused with the error a real client understands.
    let mut s = server_after_cookie();
    let text = br#"{"tcp":true,"time":1,"parallel":2}"#;
    s.receive(&(text.len() as u32).to_be_bytes());
    s.receive(text);
    assert_eq!(server_error_of(&s), Some(errno::IENUMSTREAMS));
    assert!(matches!(
        events_server(&mut s).as_slice(),
        [ServerEvent::Failed(ProtoError::Refused(_))]
    ));

    // A truncated message just waits; nothing happens.
    let mut s = server_after_cookie();
    s.receive(&[0, 0, 0, 40]);
    s.receive(b"{\"tcp\":true");
    assert_eq!(s.phase(), ServerPhase::Parameters);
    assert!(s.output().is_empty() && s.next_event().is_none());
}

fn running_server() -> ServerControl {
    let mut s = server_after_cookie();
    let text = TestParams::tcp(1).to_json();
    s.receive(&(text.len() as u32).to_be_bytes());
    s.receive(text.as_bytes());
    s.stream_connected();
    s.consume_output(s.output().len());
    let _ = events_server(&mut s);
    assert_eq!(s.phase(), ServerPhase::Running);
    s
}

#[test]
fn server_state_bytes_out_of_place() {
    let mut s = running_server();
    s.receive(&[3]);
    assert_eq!(
        events_server(&mut s),
        vec![ServerEvent::Failed(ProtoError::UnknownState(3))]
    );
    let mut s = running_server();
    s.receive(&[State::DisplayResults.byte()]);
    assert_eq!(
        events_server(&mut s),
        vec![ServerEvent::Failed(ProtoError::UnexpectedState(
            State::DisplayResults
        ))]
    );
    let mut s = running_server();
    s.receive(&[State::ClientTerminate.byte()]);
    assert_eq!(
        events_server(&mut s),
        vec![ServerEvent::Failed(ProtoError::ClientTerminated)]
    );
    // Input while the driver has the turn is buffered, up to a limit.
    let mut s = running_server();
    s.receive(&[State::TestEnd.byte()]);
    assert_eq!(events_server(&mut s), vec![ServerEvent::TestEnd]);
    s.receive(&vec![0u8; INBOX_LIMIT]);
    assert!(s.next_event().is_none());
    s.receive(&[0]);
    assert_eq!(
        events_server(&mut s),
        vec![ServerEvent::Failed(ProtoError::InputOverflow)]
    );
    // Driver calls out of place fail the test rather than panicking.
    let mut s = ServerControl::new();
    s.test_ended(&Results::default());
    assert!(matches!(
        events_server(&mut s).as_slice(),
        [ServerEvent::Failed(ProtoError::Misuse(_))]
    ));
    // Closing before the results is a failure, after them the end.
    let mut s = running_server();
    s.peer_closed();
    assert_eq!(
        events_server(&mut s),
        vec![ServerEvent::Failed(ProtoError::Closed)]
    );
}

#[test]
fn client_handles_refusals() {
    let start = |bytes: &[u8]| {
        let mut c = ClientControl::new(Cookie::generate(5), TestParams::tcp(1));
        c.consume_output(COOKIE_LEN);
        c.receive(bytes);
        events_client(&mut c)
    };
    assert_eq!(
        start(&[0xff]),
        vec![ClientEvent::Failed(ProtoError::AccessDenied)]
    );
    let mut error = vec![State::ParamExchange.byte(), State::ServerError.byte()];
    error.extend_from_slice(&6i32.to_be_bytes());
    error.extend_from_slice(&0i32.to_be_bytes());
    assert_eq!(
        start(&error),
        vec![ClientEvent::Failed(ProtoError::ServerError {
            i_errno: 6,
            errno: 0
        })]
    );
    // Truncated error codes: still waiting.
    assert_eq!(start(&error[..6]), vec![]);
    assert_eq!(
        start(&[State::TestRunning.byte()]),
        vec![ClientEvent::Failed(ProtoError::UnexpectedState(
            State::TestRunning
        ))]
    );
    assert_eq!(
        start(&[77]),
        vec![ClientEvent::Failed(ProtoError::UnknownState(77))]
    );
    assert_eq!(
        start(&[11]),
        vec![ClientEvent::Failed(ProtoError::ServerTerminated)]
    );
}

#[test]
fn client_refuses_hostile_results() {
    let mut c = ClientControl::new(Cookie::generate(5), TestParams::tcp(1));
    c.receive(&[9, 10, 1, 2]);
    c.end_test();
    c.receive(&[13]);
    c.send_results(&Results::one_stream(true, 1, 1.0));
    let _ = events_client(&mut c);
    c.receive(&(MAX_JSON_LEN as u32 + 1).to_be_bytes());
    assert_eq!(
        events_client(&mut c),
        vec![ClientEvent::Failed(ProtoError::MessageTooLong(
            MAX_JSON_LEN as u32 + 1
        ))]
    );
    // After failing, more input is ignored.
    c.receive(&[1, 2, 3]);
    assert!(c.next_event().is_none());
}

#[test]
fn a_flood_of_ignored_bytes_is_cheap() {
    // 64 KiB of TEST_START (ignored while running), many times over: linear, not
    // quadratic, and the test still ends normally afterwards.
    let mut s = running_server();
    let flood = vec![State::TestStart.byte(); INBOX_LIMIT];
    for _ in 0..64 {
        s.receive(&flood);
    }
    for _ in 0..10_000 {
        s.receive(&[State::TestStart.byte()]);
    }
    assert!(s.next_event().is_none());
    s.receive(&[State::TestEnd.byte()]);
    assert_eq!(events_server(&mut s), vec![ServerEvent::TestEnd]);
}

#[test]
fn random_input_never_panics() {
    let mut seed = 99u64;
    for round in 0..2000 {
        let len = (splitmix64(&mut seed) % 200) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| splitmix64(&mut seed) as u8).collect();
        // Half the time, start with a valid cookie and length so deeper states are hit.
        if round % 2 == 0 {
            let mut prefix = Cookie::generate(round).as_bytes().to_vec();
            prefix.extend_from_slice(&(len as u32).to_be_bytes());
            prefix.append(&mut bytes);
            bytes = prefix;
        }
        let mut s = ServerControl::new();
        s.receive(&bytes);
        s.stream_connected();
        s.receive(&bytes);
        let _ = events_server(&mut s);
        let mut c = ClientControl::new(Cookie::generate(round), TestParams::tcp(1));
        c.receive(&bytes);
        c.end_test();
        c.receive(&bytes);
        let _ = events_client(&mut c);
    }
}

/// The texts the drivers log and the harness matches on, pinned across the move to thiserror.
#[test]
fn error_texts_are_unchanged() {
    use std::string::ToString;
    let says = |e: ProtoError, text: &str| assert_eq!(e.to_string(), text);
    says(ProtoError::BadCookie, "bad cookie");
    says(
        ProtoError::MessageTooLong(70000),
        "JSON message of 70000 bytes (limit 65536)",
    );
    says(
        ProtoError::BadJson(JsonError::Syntax(12)),
        "bad JSON at byte 12",
    );
    says(
        ProtoError::BadJson(JsonError::TooDeep),
        "JSON nested too deeply",
    );
    says(
        ProtoError::BadJson(JsonError::NotAnObject),
        "JSON is not an object",
    );
    says(ProtoError::BadParameter("time"), "bad parameter \"time\"");
    says(ProtoError::UnknownState(0xfe), "unknown control message -2");
    says(
        ProtoError::UnexpectedState(State::TestEnd),
        "unexpected control message TestEnd",
    );
    says(
        ProtoError::Refused(Refusal {
            i_errno: 5,
            reason: "test duration too long",
        }),
        "refused: test duration too long",
    );
    says(
        ProtoError::ServerError {
            i_errno: 3,
            errno: 0,
        },
        "the server refused the test (i_errno 3, errno 0)",
    );
    says(ProtoError::DataStream("reset"), "data stream: reset");
    says(ProtoError::Misuse("twice"), "driver error: twice");
    says(ProtoError::TimedOut, "the peer went quiet");
}

// Property tests: whatever the peer sends, in whatever pieces, the state machines answer with
// an event or an error, never a panic, and what they buffer and send stays bounded.

use proptest::prelude::*;

use super::channel::Channel;

/// `text` as it goes over the connection: its length (u32 BE), then itself.
fn framed(text: &str) -> Vec<u8> {
    let mut bytes = (text.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

/// A piece of what a hostile peer sends: mostly state bytes (so the machines move on), some
/// real messages, and any bytes, any length prefix, in between.
fn peer_piece() -> impl Strategy<Value = Vec<u8>> {
    let states: Vec<u8> = State::ALL.iter().map(|s| s.byte()).collect();
    prop_oneof![
        4 => prop::sample::select(states).prop_map(|b| vec![b]),
        2 => any::<u8>().prop_map(|b| vec![b]),
        1 => any::<u32>().prop_map(|len| len.to_be_bytes().to_vec()),
        1 => Just(framed(&TestParams::tcp(1).to_json())),
        1 => Just(framed(&Results::one_stream(true, 5, 1.0).to_json())),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// Does what a server's driver does when the machine waits for it, until it waits for input.
fn drive_server(s: &mut ServerControl) {
    loop {
        match s.phase() {
            ServerPhase::CreateStreams => s.stream_connected(),
            ServerPhase::TestEnded => s.test_ended(&Results::one_stream(false, 1, 1.0)),
            _ => return,
        }
    }
}

/// Does what a client's driver does when the machine waits for it, until it waits for input.
fn drive_client(c: &mut ClientControl) {
    loop {
        match c.phase() {
            ClientPhase::Running => c.end_test(),
            ClientPhase::ResultsWanted => c.send_results(&Results::one_stream(true, 1, 1.0)),
            _ => return,
        }
    }
}

/// A well-behaved peer's side of a whole test: its bytes, where its messages start (and where
/// they end), and the point it only passes after our driver acted (past it: no gate).
struct Transcript {
    bytes: Vec<u8>,
    boundaries: Vec<usize>,
    gate: usize,
}

impl Transcript {
    fn new(messages: Vec<Vec<u8>>, gate_before_message: usize) -> Transcript {
        let mut boundaries = vec![0];
        let mut bytes = Vec::new();
        for message in messages {
            bytes.extend(message);
            boundaries.push(bytes.len());
        }
        let gate = boundaries
            .get(gate_before_message)
            .copied()
            .unwrap_or(bytes.len());
        Transcript {
            bytes,
            boundaries,
            gate,
        }
    }

    /// What a client sends.
    fn client() -> Transcript {
        let messages = vec![
            Cookie::generate(9).as_bytes().to_vec(),
            framed(&TestParams::tcp(1).to_json()),
            vec![State::TestEnd.byte()],
            framed(&Results::one_stream(true, 5, 1.0).to_json()),
            vec![State::IperfDone.byte()],
        ];
        Transcript::new(messages, usize::MAX)
    }

    /// What a server sends; EXCHANGE_RESULTS only after the client's TEST_END.
    fn server() -> Transcript {
        let state = |s: State| vec![s.byte()];
        let messages = vec![
            state(State::ParamExchange),
            state(State::CreateStreams),
            state(State::TestStart),
            state(State::TestRunning),
            state(State::ExchangeResults),
            framed(&Results::one_stream(false, 5, 1.0).to_json()),
            state(State::DisplayResults),
        ];
        Transcript::new(messages, 4)
    }

    /// The transcript with `hostile` spliced in (between two messages or anywhere, as
    /// `between` says), cut into pieces of the sizes in `cuts` (over and over); no piece
    /// straddles the gate.
    fn spliced(
        &self,
        between: bool,
        at: prop::sample::Index,
        hostile: &[u8],
        cuts: &[usize],
    ) -> Vec<Vec<u8>> {
        let at = if between {
            self.boundaries[at.index(self.boundaries.len())]
        } else {
            at.index(self.bytes.len() + 1)
        };
        let mut input = self.bytes[..at].to_vec();
        input.extend_from_slice(hostile);
        input.extend_from_slice(&self.bytes[at..]);
        let gate = if at <= self.gate {
            self.gate + hostile.len()
        } else {
            self.gate
        };
        let mut pieces = Vec::new();
        for mut rest in [&input[..gate], &input[gate..]] {
            for &cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, after) = rest.split_at(cut.min(rest.len()));
                pieces.push(piece.to_vec());
                rest = after;
            }
        }
        pieces
    }
}

/// A failure, if any, is the last event, only one, and the phase says so.
fn failure_is_final<E: core::fmt::Debug>(
    events: &[E],
    is_failure: impl Fn(&E) -> bool,
    failed: bool,
) -> Result<(), TestCaseError> {
    let failures = events.iter().filter(|e| is_failure(e)).count();
    prop_assert!(failures <= 1, "{events:?}");
    prop_assert_eq!(failures == 1, failed, "{:?}", events);
    if failures == 1 {
        prop_assert!(events.last().is_some_and(is_failure), "{events:?}");
    }
    Ok(())
}

proptest! {
    /// A JSON length past [`MAX_JSON_LEN`] is refused as soon as its four bytes are in, in
    /// every place a peer's JSON is read: nothing waits for (or makes room for) the body.
    #[test]
    fn every_json_length_past_the_limit_is_refused_on_its_prefix_alone(
        len in (MAX_JSON_LEN as u32 + 1)..=u32::MAX
    ) {
        let prefix = len.to_be_bytes();
        let too_long = ProtoError::MessageTooLong(len);

        let mut parameters = server_after_cookie();
        parameters.receive(&prefix);
        prop_assert_eq!(server_error_of(&parameters), Some(errno::IERECVPARAMS));
        prop_assert_eq!(events_server(&mut parameters), vec![ServerEvent::Failed(too_long)]);

        let mut results = running_server();
        results.receive(&[State::TestEnd.byte()]);
        results.test_ended(&Results::default());
        results.receive(&prefix);
        prop_assert_eq!(
            events_server(&mut results).pop(),
            Some(ServerEvent::Failed(too_long))
        );

        let mut client = ClientControl::new(Cookie::generate(3), TestParams::tcp(1));
        client.receive(&[9, 10, 1, 2]);
        client.end_test();
        client.receive(&[13]);
        client.send_results(&Results::default());
        client.receive(&prefix);
        prop_assert_eq!(events_client(&mut client).pop(), Some(ClientEvent::Failed(too_long)));

        let mut channel = Channel::default();
        prop_assert_eq!(channel.append(&prefix), Ok(&[][..]));
        prop_assert_eq!(channel.take_json(), Some(Err(too_long)));
    }

    /// The input buffer holds at most `INBOX_LIMIT` bytes however the input comes and
    /// whatever is taken from it: the rest is handed back, and a full buffer is an error.
    #[test]
    fn the_input_buffer_never_grows_past_its_limit(
        steps in prop::collection::vec((0usize..3 * INBOX_LIMIT, 0u8..4), 1..24)
    ) {
        let mut channel = Channel::default();
        let input = vec![0u8; 3 * INBOX_LIMIT];
        for (len, take) in steps {
            let before = channel.pending().len();
            match channel.append(&input[..len]) {
                Ok(rest) => {
                    let taken = len - rest.len();
                    prop_assert_eq!(channel.pending().len(), before + taken);
                    prop_assert!(rest.is_empty() || channel.pending().len() == INBOX_LIMIT);
                }
                Err(e) => {
                    prop_assert_eq!(e, ProtoError::InputOverflow);
                    prop_assert_eq!(before, INBOX_LIMIT);
                }
            }
            prop_assert!(channel.pending().len() <= INBOX_LIMIT);
            match take {
                0 => drop(channel.take_byte()),
                1 => drop(channel.take_array::<COOKIE_LEN>()),
                2 => drop(channel.take_json()),
                _ => channel.skip(len),
            }
        }
    }

    /// A client's conversation with anything spliced in anywhere (nothing, stray state
    /// bytes, any length prefix, a message out of place, any bytes), between its messages
    /// or inside one, in any pieces, the
    /// driver doing its part: the server never panics, ends in at most one failure, sends no
    /// more than its protocol's few bytes and one results message, and without the splice
    /// the test completes.
    #[test]
    fn a_server_takes_anything_anywhere_in_a_test(
        between in any::<bool>(),
        at in any::<prop::sample::Index>(),
        hostile in prop::collection::vec(peer_piece(), 0..4),
        cuts in prop::collection::vec(1usize..80, 1..16)
    ) {
        let hostile = hostile.concat();
        let mut s = ServerControl::new();
        let mut events = Vec::new();
        let mut sent = 0;
        for piece in Transcript::client().spliced(between, at, &hostile, &cuts) {
            s.receive(&piece);
            drive_server(&mut s);
            events.extend(events_server(&mut s));
            sent += s.output().len();
            s.consume_output(s.output().len());
        }
        let ours = Results::one_stream(false, 1, 1.0).to_json();
        prop_assert!(sent <= 32 + ours.len(), "sent {sent}");
        prop_assert!(events.len() <= 5, "{events:?}");
        failure_is_final(
            &events,
            |e| matches!(e, ServerEvent::Failed(_)),
            s.phase() == ServerPhase::Failed,
        )?;
        if hostile.is_empty() {
            prop_assert_eq!(s.phase(), ServerPhase::Done, "{:?}", events);
        }
    }

    /// A server's conversation with anything spliced in anywhere, in any pieces, the driver
    /// doing its part: the client never panics, ends in at most one failure, sends no more
    /// than its cookie, its parameters, its results and a few state bytes, and without the
    /// splice the test completes.
    #[test]
    fn a_client_takes_anything_anywhere_in_a_test(
        between in any::<bool>(),
        at in any::<prop::sample::Index>(),
        hostile in prop::collection::vec(peer_piece(), 0..4),
        cuts in prop::collection::vec(1usize..80, 1..16)
    ) {
        let hostile = hostile.concat();
        let params = TestParams::tcp(1);
        let mut c = ClientControl::new(Cookie::generate(4), params);
        let mut events = Vec::new();
        let mut sent = 0;
        for piece in Transcript::server().spliced(between, at, &hostile, &cuts) {
            c.receive(&piece);
            drive_client(&mut c);
            events.extend(events_client(&mut c));
            sent += c.output().len();
            c.consume_output(c.output().len());
        }
        let ours = Results::one_stream(true, 1, 1.0).to_json();
        prop_assert!(
            sent <= COOKIE_LEN + 4 + params.to_json().len() + 4 + ours.len() + 8,
            "sent {sent}"
        );
        prop_assert!(events.len() <= 7, "{events:?}");
        failure_is_final(
            &events,
            |e| matches!(e, ClientEvent::Failed(_)),
            c.phase() == ClientPhase::Failed,
        )?;
        if hostile.is_empty() {
            prop_assert_eq!(c.phase(), ClientPhase::Done, "{:?}", events);
        }
    }

    /// Any values for the parameters a client sends (wrong types, signs, fractions, huge
    /// numbers, repeated keys): reading them never panics, and what the server accepts is
    /// within its limits; everything else is refused with SERVER_ERROR.
    #[test]
    fn parameters_the_server_accepts_are_within_its_limits(
        members in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "tcp", "udp", "sctp", "time", "omit", "parallel", "len", "bandwidth",
                    "num", "blockcount", "reverse", "bidirectional", "udp_counters_64bit", "x",
                ]),
                prop_oneof![
                    any::<i64>().prop_map(|n| n.to_string()),
                    any::<u64>().prop_map(|n| n.to_string()),
                    (0u32..5).prop_map(|n| n.to_string()),
                    (0u32..70_000).prop_map(|n| n.to_string()),
                    any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(|x| std::format!("{x:e}")),
                    prop::sample::select(vec![
                        "true", "false", "null", "\"1\"", "[1]", "{}", "1e999", "-0",
                        "-1e999", "0.5", "99999999999999999999999999999999999999999",
                    ])
                    .prop_map(String::from),
                ],
            ),
            0..12,
        )
    ) {
        let body: Vec<String> = members.iter().map(|(k, v)| std::format!("\"{k}\":{v}")).collect();
        let text = std::format!("{{{}}}", body.join(","));
        if let Ok(params) = TestParams::from_json(text.as_bytes()) {
            if params.check().is_ok() {
                prop_assert_eq!(params.parallel, 1);
                prop_assert!(!params.bidirectional);
                prop_assert!(params.seconds <= MAX_SECONDS && params.omit <= MAX_OMIT);
                prop_assert!((1..=MAX_BLOCK_LEN).contains(&params.block_len));
                if params.protocol == Protocol::Udp {
                    prop_assert!(params.block_len as usize >= crate::iperf3::header_len(true));
                }
            }
        }
        let mut s = server_after_cookie();
        s.receive(&framed(&text));
        match events_server(&mut s).as_slice() {
            [ServerEvent::CreateStreams(params)] => prop_assert_eq!(params.check(), Ok(())),
            [ServerEvent::Failed(_)] => prop_assert!(server_error_of(&s).is_some()),
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// A results message keeps at most its first `MAX_STREAMS_KEPT` streams, whatever the
    /// number of elements and whatever they are.
    #[test]
    fn results_keep_at_most_the_first_streams(
        streams in prop::collection::vec(
            prop_oneof![
                Just("{}".to_string()),
                any::<i64>().prop_map(|n| std::format!("{{\"id\":{n},\"bytes\":{n},\"packets\":{n}}}")),
                Just("1".to_string()),
                Just("[{}]".to_string()),
            ],
            0..64,
        )
    ) {
        let text = std::format!("{{\"streams\":[{}]}}", streams.join(","));
        let objects = streams.iter().filter(|s| s.starts_with('{')).count();
        let results = Results::from_json(text.as_bytes());
        prop_assert_eq!(
            results.map(|r| r.streams.len()),
            Ok(objects.min(MAX_STREAMS_KEPT))
        );
    }

    /// Any bytes for a cookie: accepted only as 36 printable characters and a NUL.
    #[test]
    fn a_cookie_is_accepted_only_as_36_printable_characters_and_a_nul(
        bytes in prop::collection::vec(any::<u8>(), 0..40),
        printable in "[!-~]{36}"
    ) {
        let valid = bytes.len() == COOKIE_LEN
            && bytes[COOKIE_LEN - 1] == 0
            && bytes[..COOKIE_LEN - 1].iter().all(u8::is_ascii_graphic);
        prop_assert_eq!(Cookie::parse(&bytes).is_ok(), valid);
        let mut good = printable.into_bytes();
        good.push(0);
        prop_assert_eq!(Cookie::parse(&good).map(|c| *c.as_bytes()), Ok(good.clone().try_into().unwrap()));
    }
}
