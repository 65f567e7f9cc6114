//! The iperf3 control protocol, sans IO: what goes over the control connection, as two state
//! machines, [`ServerControl`] and [`ClientControl`]. Bytes from the peer go in with
//! `receive`, bytes for the peer come out of `output`/`consume_output`, and what the
//! driver has to do (open the data stream, stop it, hand over its counters) comes out of
//! `next_event`. Nothing here touches a socket or a clock.
//!
//! The protocol (iperf3 3.x, `iperf_api.c`, `iperf_client_api.c`, `iperf_server_api.c`):
//!
//! ```text
//! client                                   server (port 5201)
//!   connect control, cookie (36 chars + NUL) ->
//!                                          <- PARAM_EXCHANGE (9)
//!   u32 BE length + JSON parameters        ->
//!                                          <- CREATE_STREAMS (10)   (or SERVER_ERROR (-2),
//!   connect data stream(s) to the same port,   i_errno and errno as i32 BE)
//!   each sends the cookie first            ->
//!                                          <- TEST_START (1), TEST_RUNNING (2)
//!   data flows (client -> server, or server -> client with "reverse")
//!   TEST_END (4) after the test time       ->
//!                                          <- EXCHANGE_RESULTS (13)
//!   u32 BE length + JSON results           ->
//!                                          <- u32 BE length + JSON results, DISPLAY_RESULTS (14)
//!   IPERF_DONE (16), close                 ->
//! ```
//!
//! A server busy with a test answers other connections with ACCESS_DENIED (-1). Either side
//! may give up with CLIENT_TERMINATE (12) / SERVER_TERMINATE (11).
//!
//! Everything the peer sends is bounded: JSON messages are at most [`MAX_JSON_LEN`] bytes, the
//! input buffered while the driver is busy at most a little more, unknown state bytes and
//! states out of order end the test with an error, never a panic.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

use super::json::{self, JsonError, Value};
use super::udp::{
    UdpCounts, DEFAULT_UDP_BLOCK_LEN, DEFAULT_UDP_RATE, MAX_UDP_BLOCK_LEN, MIN_UDP_BLOCK_LEN,
};

/// Length of the cookie that names a test: 36 characters and a NUL.
pub const COOKIE_LEN: usize = 37;
/// iperf3's port.
pub const DEFAULT_PORT: u16 = 5201;
/// iperf3's TCP block size (`-l`).
pub const DEFAULT_BLOCK_LEN: u32 = 128 * 1024;
/// The largest block size we accept (iperf3's MAX_BLOCKSIZE).
pub const MAX_BLOCK_LEN: u32 = 1024 * 1024;
/// The longest JSON message we accept.
pub const MAX_JSON_LEN: usize = 64 * 1024;
/// The longest test we accept, in seconds (iperf3's MAX_TIME).
pub const MAX_SECONDS: u32 = 86_400;
/// The longest omitted warm-up we accept, in seconds.
pub const MAX_OMIT: u32 = 600;
/// Input buffered while no message is complete (a JSON message and its length, and a few
/// state bytes behind it).
const INBOX_LIMIT: usize = MAX_JSON_LEN + 64;
/// Streams of a results message we keep (more are checked, not kept).
const MAX_STREAMS_KEPT: usize = 16;
/// The characters of a cookie (iperf3's `make_cookie` uses the same 32).
const COOKIE_CHARS: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// iperf3's error numbers (`i_errno`, iperf_api.h) we send with SERVER_ERROR; the client
/// prints its text for them (iperf_error.c).
pub mod errno {
    /// "test duration too long"
    pub const IEDURATION: i32 = 5;
    /// "number of parallel streams too large"
    pub const IENUMSTREAMS: i32 = 6;
    /// "block size too large"
    pub const IEBLOCKSIZE: i32 = 7;
    /// "block size invalid" (UDP)
    pub const IEUDPBLOCKSIZE: i32 = 20;
    /// "bogus value for --omit"
    pub const IEOMIT: i32 = 12;
    /// "an option you are trying to set is not implemented yet"
    pub const IEUNIMP: i32 = 13;
    /// "unable to receive parameters from client"
    pub const IERECVPARAMS: i32 = 114;
}

/// The control messages: one signed byte each (iperf_api.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    TestStart,
    TestRunning,
    TestEnd,
    ParamExchange,
    CreateStreams,
    ServerTerminate,
    ClientTerminate,
    ExchangeResults,
    DisplayResults,
    IperfDone,
    AccessDenied,
    ServerError,
}

impl State {
    const ALL: [State; 12] = [
        State::TestStart,
        State::TestRunning,
        State::TestEnd,
        State::ParamExchange,
        State::CreateStreams,
        State::ServerTerminate,
        State::ClientTerminate,
        State::ExchangeResults,
        State::DisplayResults,
        State::IperfDone,
        State::AccessDenied,
        State::ServerError,
    ];

    /// The byte on the wire.
    pub const fn byte(self) -> u8 {
        match self {
            State::TestStart => 1,
            State::TestRunning => 2,
            State::TestEnd => 4,
            State::ParamExchange => 9,
            State::CreateStreams => 10,
            State::ServerTerminate => 11,
            State::ClientTerminate => 12,
            State::ExchangeResults => 13,
            State::DisplayResults => 14,
            State::IperfDone => 16,
            State::AccessDenied => (-1i8) as u8,
            State::ServerError => (-2i8) as u8,
        }
    }

    /// The state a byte names; `None` for bytes iperf3 does not send (including its unused
    /// 3, 5..8 and 15).
    pub fn from_byte(byte: u8) -> Option<State> {
        State::ALL.into_iter().find(|s| s.byte() == byte)
    }
}

/// The cookie that names a test: 36 printable characters and a NUL. The client makes one up,
/// sends it first on the control connection and on every data stream; the server takes a
/// data stream only with the cookie of its test.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cookie([u8; COOKIE_LEN]);

impl Cookie {
    /// A cookie from `seed` (any entropy; the same seed gives the same cookie).
    pub fn generate(seed: u64) -> Cookie {
        let mut bytes = [0u8; COOKIE_LEN];
        let mut state = seed;
        let mut bits = 0u64;
        let mut have = 0;
        for byte in bytes.iter_mut().take(COOKIE_LEN - 1) {
            if have < 5 {
                bits = splitmix64(&mut state);
                have = 64;
            }
            *byte = COOKIE_CHARS[(bits & 31) as usize];
            bits >>= 5;
            have -= 5;
        }
        Cookie(bytes)
    }

    /// Checks what a peer sent for a cookie: exactly 36 printable ASCII characters, then NUL.
    pub fn parse(bytes: &[u8]) -> Result<Cookie, ProtoError> {
        let bytes: [u8; COOKIE_LEN] = bytes.try_into().map_err(|_| ProtoError::BadCookie)?;
        let (text, nul) = bytes.split_at(COOKIE_LEN - 1);
        if nul != [0] || !text.iter().all(|b| b.is_ascii_graphic()) {
            return Err(ProtoError::BadCookie);
        }
        Ok(Cookie(bytes))
    }

    /// The 37 bytes on the wire.
    pub fn as_bytes(&self) -> &[u8; COOKIE_LEN] {
        &self.0
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = core::str::from_utf8(&self.0[..COOKIE_LEN - 1]).unwrap_or("?");
        write!(f, "Cookie({text})")
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The transport a test asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// A test's parameters (the JSON of the parameter exchange; the fields we use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestParams {
    pub protocol: Protocol,
    /// `time`: test length in seconds (0: until `bytes`/`blocks`, or forever).
    pub seconds: u32,
    /// `num`: bytes to send (0: no byte limit).
    pub bytes: u64,
    /// `blockcount`: blocks to send (0: no block limit).
    pub blocks: u64,
    /// `len`: block size.
    pub block_len: u32,
    /// `parallel`: number of streams.
    pub parallel: u32,
    /// `reverse`: the server sends.
    pub reverse: bool,
    /// `bidirectional`: both send.
    pub bidirectional: bool,
    /// `omit`: seconds at the start not counted.
    pub omit: u32,
    /// `bandwidth`: the UDP sender's target rate, bits/s (0: unlimited). TCP is not paced.
    pub bandwidth: u64,
    /// `udp_counters_64bit`: UDP packet numbers are 64-bit.
    pub counters_64bit: bool,
}

impl TestParams {
    /// A one-stream TCP test of `seconds` with iperf3's defaults.
    pub fn tcp(seconds: u32) -> TestParams {
        TestParams {
            protocol: Protocol::Tcp,
            seconds,
            bytes: 0,
            blocks: 0,
            block_len: DEFAULT_BLOCK_LEN,
            parallel: 1,
            reverse: false,
            bidirectional: false,
            omit: 0,
            bandwidth: DEFAULT_UDP_RATE,
            counters_64bit: false,
        }
    }

    /// A one-stream UDP test of `seconds` at `bandwidth` bits/s with iperf3's defaults.
    pub fn udp(seconds: u32, bandwidth: u64) -> TestParams {
        TestParams {
            protocol: Protocol::Udp,
            block_len: DEFAULT_UDP_BLOCK_LEN,
            bandwidth,
            ..TestParams::tcp(seconds)
        }
    }

    /// The bytes the sender sends at most (from `num` or `blockcount`), if limited.
    pub fn byte_limit(&self) -> Option<u64> {
        if self.bytes != 0 {
            Some(self.bytes)
        } else if self.blocks != 0 {
            Some(self.blocks.saturating_mul(u64::from(self.block_len)))
        } else {
            None
        }
    }

    /// The parameters as the client sends them.
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        let protocol = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        };
        let _ = write!(
            s,
            "{{\"{protocol}\":true,\"omit\":{},\"time\":{}",
            self.omit, self.seconds
        );
        if self.bytes != 0 {
            let _ = write!(s, ",\"num\":{}", self.bytes);
        }
        if self.blocks != 0 {
            let _ = write!(s, ",\"blockcount\":{}", self.blocks);
        }
        let _ = write!(s, ",\"parallel\":{}", self.parallel);
        if self.reverse {
            s.push_str(",\"reverse\":true");
        }
        if self.bidirectional {
            s.push_str(",\"bidirectional\":true");
        }
        if self.protocol == Protocol::Udp {
            let _ = write!(s, ",\"bandwidth\":{}", self.bandwidth);
            if self.counters_64bit {
                s.push_str(",\"udp_counters_64bit\":1");
            }
        }
        let _ = write!(s, ",\"len\":{}}}", self.block_len);
        s
    }

    /// The parameters a client sent. Absent fields take iperf3's server defaults; a field of
    /// the wrong type or sign is an error; unknown fields are ignored. A UDP test without
    /// `len` gets iperf3's UDP block size.
    pub fn from_json(text: &[u8]) -> Result<TestParams, ProtoError> {
        let mut params = TestParams::tcp(10);
        let mut len_given = false;
        let mut bad: Option<&'static str> = None;
        let mut check = |ok: bool, key: &'static str| {
            if !ok && bad.is_none() {
                bad = Some(key);
            }
        };
        let count = |v: &Value| v.as_number().and_then(|n| n.as_u64());
        let small = |v: &Value| count(v).map(|n| n.min(u64::from(u32::MAX)) as u32);
        json::members(text, |key, value| match key {
            b"tcp" if value.is_set() => params.protocol = Protocol::Tcp,
            b"udp" if value.is_set() => params.protocol = Protocol::Udp,
            b"sctp" if value.is_set() => params.protocol = Protocol::Sctp,
            b"reverse" => params.reverse = value.is_set(),
            b"bidirectional" => params.bidirectional = value.is_set(),
            b"time" => match small(&value) {
                Some(n) => params.seconds = n,
                None => check(false, "time"),
            },
            b"omit" => match small(&value) {
                Some(n) => params.omit = n,
                None => check(false, "omit"),
            },
            b"parallel" => match small(&value) {
                Some(n) => params.parallel = n,
                None => check(false, "parallel"),
            },
            b"len" => match small(&value) {
                Some(n) => {
                    params.block_len = n;
                    len_given = true;
                }
                None => check(false, "len"),
            },
            b"bandwidth" => match count(&value) {
                Some(n) => params.bandwidth = n,
                None => check(false, "bandwidth"),
            },
            b"udp_counters_64bit" => params.counters_64bit = value.is_set(),
            b"num" => match count(&value) {
                Some(n) => params.bytes = n,
                None => check(false, "num"),
            },
            b"blockcount" => match count(&value) {
                Some(n) => params.blocks = n,
                None => check(false, "blockcount"),
            },
            _ => {}
        })
        .map_err(ProtoError::BadJson)?;
        if params.protocol == Protocol::Udp && !len_given {
            params.block_len = DEFAULT_UDP_BLOCK_LEN;
        }
        match bad {
            Some(key) => Err(ProtoError::BadParameter(key)),
            None => Ok(params),
        }
    }

    /// What this implementation runs: one TCP or UDP stream, one direction, within the
    /// limits.
    pub fn check(&self) -> Result<(), Refusal> {
        let refuse = |i_errno, reason| Err(Refusal { i_errno, reason });
        if self.protocol == Protocol::Sctp {
            return refuse(errno::IEUNIMP, "only TCP and UDP tests are supported");
        }
        if self.parallel != 1 {
            return refuse(errno::IENUMSTREAMS, "only one stream (-P 1) is supported");
        }
        if self.bidirectional {
            return refuse(errno::IEUNIMP, "bidirectional tests are not supported");
        }
        if self.seconds > MAX_SECONDS {
            return refuse(errno::IEDURATION, "the test is too long");
        }
        if self.omit > MAX_OMIT {
            return refuse(errno::IEOMIT, "the omitted time is too long");
        }
        if self.block_len == 0 || self.block_len > MAX_BLOCK_LEN {
            return refuse(errno::IEBLOCKSIZE, "the block size is out of range");
        }
        if self.protocol == Protocol::Udp
            && !(MIN_UDP_BLOCK_LEN..=MAX_UDP_BLOCK_LEN).contains(&self.block_len)
        {
            return refuse(errno::IEUDPBLOCKSIZE, "the UDP block size is out of range");
        }
        Ok(())
    }
}

/// Why a server turned a test down: the error number the client gets and our reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub i_errno: i32,
    pub reason: &'static str,
}

/// One stream's line of a results message.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StreamResult {
    pub id: i64,
    /// Bytes sent (sender) or received (receiver).
    pub bytes: u64,
    /// -1: not counted.
    pub retransmits: i64,
    /// UDP only: the receiver's jitter estimate, seconds.
    pub jitter: f64,
    /// UDP only: lost datagrams (receiver).
    pub errors: i64,
    /// UDP only: of `errors`, those in the omitted start.
    pub omitted_errors: i64,
    /// UDP only: datagrams sent (sender) or the highest packet number seen (receiver).
    pub packets: i64,
    /// UDP only: of `packets`, those in the omitted start.
    pub omitted_packets: i64,
    /// Seconds, relative to the test start.
    pub start_time: f64,
    pub end_time: f64,
}

/// A results message: what one side counted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Results {
    pub cpu_util_total: f64,
    pub cpu_util_user: f64,
    pub cpu_util_system: f64,
    /// 1: the sender counted retransmits, 0: it did not, -1: this side did not send.
    pub sender_has_retransmits: i64,
    /// At most the first 16 streams.
    pub streams: Vec<StreamResult>,
}

impl Results {
    /// One stream (id 1, iperf3's first) that moved `bytes` in `seconds`; `sender`: this side
    /// sent them. Retransmits are not counted (smoltcp does not tell).
    pub fn one_stream(sender: bool, bytes: u64, seconds: f64) -> Results {
        Results {
            sender_has_retransmits: if sender { 0 } else { -1 },
            streams: alloc::vec![StreamResult {
                id: 1,
                bytes,
                retransmits: -1,
                end_time: seconds,
                ..StreamResult::default()
            }],
            ..Results::default()
        }
    }

    /// [`Results::one_stream`] of a UDP test, with its datagram counts.
    pub fn udp_stream(sender: bool, bytes: u64, seconds: f64, counts: &UdpCounts) -> Results {
        let mut results = Results::one_stream(sender, bytes, seconds);
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let stream = &mut results.streams[0];
        stream.jitter = counts.jitter;
        stream.errors = count(counts.errors);
        stream.omitted_errors = count(counts.omitted_errors);
        stream.packets = count(counts.packets);
        stream.omitted_packets = count(counts.omitted_packets);
        results
    }

    /// The results as JSON.
    pub fn to_json(&self) -> String {
        let float = |x: f64| if x.is_finite() { x } else { 0.0 };
        let mut s = String::new();
        let _ = write!(
            s,
            "{{\"cpu_util_total\":{:.6},\"cpu_util_user\":{:.6},\"cpu_util_system\":{:.6},\
             \"sender_has_retransmits\":{},\"streams\":[",
            float(self.cpu_util_total),
            float(self.cpu_util_user),
            float(self.cpu_util_system),
            self.sender_has_retransmits
        );
        for (i, r) in self.streams.iter().enumerate() {
            let _ = write!(
                s,
                "{}{{\"id\":{},\"bytes\":{},\"retransmits\":{},\"jitter\":{:.9},\"errors\":{},\
                 \"omitted_errors\":{},\"packets\":{},\"omitted_packets\":{},\
                 \"start_time\":{:.6},\"end_time\":{:.6}}}",
                if i == 0 { "" } else { "," },
                r.id,
                r.bytes,
                r.retransmits,
                float(r.jitter),
                r.errors,
                r.omitted_errors,
                r.packets,
                r.omitted_packets,
                float(r.start_time),
                float(r.end_time)
            );
        }
        s.push_str("]}");
        s
    }

    /// The results a peer sent; missing fields read as 0, unknown ones are ignored.
    pub fn from_json(text: &[u8]) -> Result<Results, ProtoError> {
        let mut results = Results::default();
        let mut streams: Option<&[u8]> = None;
        let float = |v: &Value| v.as_number().map(|n| n.value).unwrap_or(0.0);
        let int = |v: &Value| v.as_number().and_then(|n| n.as_i64()).unwrap_or(0);
        json::members(text, |key, value| match key {
            b"cpu_util_total" => results.cpu_util_total = float(&value),
            b"cpu_util_user" => results.cpu_util_user = float(&value),
            b"cpu_util_system" => results.cpu_util_system = float(&value),
            b"sender_has_retransmits" => results.sender_has_retransmits = int(&value),
            b"streams" => {
                if let Value::Array(list) = value {
                    streams = Some(list)
                }
            }
            _ => {}
        })
        .map_err(ProtoError::BadJson)?;
        if let Some(list) = streams {
            let mut objects: Vec<&[u8]> = Vec::new();
            json::elements(list, |v| {
                if let Value::Object(o) = v {
                    if objects.len() < MAX_STREAMS_KEPT {
                        objects.push(o);
                    }
                }
            })
            .map_err(ProtoError::BadJson)?;
            for object in objects {
                let mut r = StreamResult::default();
                json::members(object, |key, value| match key {
                    b"id" => r.id = int(&value),
                    b"bytes" => r.bytes = value.as_number().and_then(|n| n.as_u64()).unwrap_or(0),
                    b"retransmits" => r.retransmits = int(&value),
                    b"jitter" => r.jitter = float(&value),
                    b"errors" => r.errors = int(&value),
                    b"omitted_errors" => r.omitted_errors = int(&value),
                    b"packets" => r.packets = int(&value),
                    b"omitted_packets" => r.omitted_packets = int(&value),
                    b"start_time" => r.start_time = float(&value),
                    b"end_time" => r.end_time = float(&value),
                    _ => {}
                })
                .map_err(ProtoError::BadJson)?;
                results.streams.push(r);
            }
        }
        Ok(results)
    }
}

/// Why a test ended badly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// The client's cookie is not 36 printable characters and a NUL.
    BadCookie,
    /// A JSON message announced longer than [`MAX_JSON_LEN`].
    MessageTooLong(u32),
    /// A JSON message that does not parse.
    BadJson(JsonError),
    /// A parameter of the wrong type or sign.
    BadParameter(&'static str),
    /// A byte that is no control message.
    UnknownState(u8),
    /// A control message that does not fit where the test is.
    UnexpectedState(State),
    /// More input than any message needs, at a point where none is expected.
    InputOverflow,
    /// The server refused the parameters (and told the client so).
    Refused(Refusal),
    /// The server is busy with another test.
    AccessDenied,
    /// The server refused the test with this error.
    ServerError {
        i_errno: i32,
        errno: i32,
    },
    ServerTerminated,
    ClientTerminated,
    /// The peer closed the control connection before the test was over.
    Closed,
    /// The peer went quiet for too long (decided by the driver).
    TimedOut,
    /// The data stream failed (decided by the driver).
    DataStream(&'static str),
    /// The driver called a method where the test is not.
    Misuse(&'static str),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::BadCookie => write!(f, "bad cookie"),
            ProtoError::MessageTooLong(n) => {
                write!(f, "JSON message of {n} bytes (limit {MAX_JSON_LEN})")
            }
            ProtoError::BadJson(JsonError::Syntax(at)) => write!(f, "bad JSON at byte {at}"),
            ProtoError::BadJson(JsonError::TooDeep) => write!(f, "JSON nested too deeply"),
            ProtoError::BadJson(JsonError::NotAnObject) => write!(f, "JSON is not an object"),
            ProtoError::BadParameter(key) => write!(f, "bad parameter {key:?}"),
            ProtoError::UnknownState(b) => write!(f, "unknown control message {}", *b as i8),
            ProtoError::UnexpectedState(s) => write!(f, "unexpected control message {s:?}"),
            ProtoError::InputOverflow => write!(f, "too much unexpected input"),
            ProtoError::Refused(r) => write!(f, "refused: {}", r.reason),
            ProtoError::AccessDenied => write!(f, "the server is busy running a test"),
            ProtoError::ServerError { i_errno, errno } => {
                write!(
                    f,
                    "the server refused the test (i_errno {i_errno}, errno {errno})"
                )
            }
            ProtoError::ServerTerminated => write!(f, "the server terminated the test"),
            ProtoError::ClientTerminated => write!(f, "the client terminated the test"),
            ProtoError::Closed => write!(f, "the peer closed the control connection"),
            ProtoError::TimedOut => write!(f, "the peer went quiet"),
            ProtoError::DataStream(what) => write!(f, "data stream: {what}"),
            ProtoError::Misuse(what) => write!(f, "driver error: {what}"),
        }
    }
}

/// The byte buffers of a control connection: input not yet understood (from `start` on),
/// output not yet sent. Taking input only moves `start`; the buffer is compacted when more
/// input arrives, so a flood of single bytes costs linear time.
#[derive(Default)]
struct Channel {
    inbox: Vec<u8>,
    start: usize,
    outbox: Vec<u8>,
}

impl Channel {
    fn push_state(&mut self, state: State) {
        self.outbox.push(state.byte());
    }

    fn push_json(&mut self, text: &str) {
        self.outbox
            .extend_from_slice(&(text.len() as u32).to_be_bytes());
        self.outbox.extend_from_slice(text.as_bytes());
    }

    fn push_server_error(&mut self, i_errno: i32) {
        self.push_state(State::ServerError);
        self.outbox.extend_from_slice(&i_errno.to_be_bytes());
        self.outbox.extend_from_slice(&0i32.to_be_bytes());
    }

    /// The input not yet taken.
    fn pending(&self) -> &[u8] {
        &self.inbox[self.start..]
    }

    fn skip(&mut self, n: usize) {
        self.start = (self.start + n).min(self.inbox.len());
        if self.start == self.inbox.len() {
            self.inbox.clear();
            self.start = 0;
        }
    }

    fn take_byte(&mut self) -> Option<u8> {
        let byte = *self.pending().first()?;
        self.skip(1);
        Some(byte)
    }

    fn take_array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let bytes: [u8; N] = self.pending().get(..N)?.try_into().ok()?;
        self.skip(N);
        Some(bytes)
    }

    /// A length-prefixed JSON message, once all of it is here.
    fn take_json(&mut self) -> Option<Result<Vec<u8>, ProtoError>> {
        let len: [u8; 4] = self.pending().get(..4)?.try_into().ok()?;
        let len = u32::from_be_bytes(len);
        if len as usize > MAX_JSON_LEN {
            return Some(Err(ProtoError::MessageTooLong(len)));
        }
        let end = 4 + len as usize;
        let text = self.pending().get(4..end)?.to_vec();
        self.skip(end);
        Some(Ok(text))
    }

    /// Appends what fits of `bytes` to the input; the rest is returned. Err: the input is full.
    fn append<'b>(&mut self, bytes: &'b [u8]) -> Result<&'b [u8], ProtoError> {
        if self.start > 0 {
            self.inbox.drain(..self.start);
            self.start = 0;
        }
        let room = INBOX_LIMIT.saturating_sub(self.inbox.len());
        if room == 0 {
            return Err(ProtoError::InputOverflow);
        }
        let (now, later) = bytes.split_at(room.min(bytes.len()));
        self.inbox.extend_from_slice(now);
        Ok(later)
    }

    fn consume_output(&mut self, n: usize) {
        let n = n.min(self.outbox.len());
        self.outbox.drain(..n);
    }
}

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
        &self.channel.outbox
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
        channel.outbox.extend_from_slice(cookie.as_bytes());
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
        &self.channel.outbox
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

#[cfg(test)]
mod tests {
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
}
