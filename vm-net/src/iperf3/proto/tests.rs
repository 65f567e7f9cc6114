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
