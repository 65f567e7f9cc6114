//! The iperf3 control messages and their limits: the cookie, the state bytes, the test
//! parameters a client sends, the results both sides exchange, iperf3's error numbers, and
//! [`ProtoError`], why a test ended badly. Everything read from the peer goes through the
//! bounded JSON reader.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

use thiserror::Error;

use super::super::json::{self, JsonError, Value};
use super::super::udp::{
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
pub(super) const INBOX_LIMIT: usize = MAX_JSON_LEN + 64;
/// Streams of a results message we keep (more are checked, not kept).
pub(super) const MAX_STREAMS_KEPT: usize = 16;
/// The characters of a cookie (iperf3's `make_cookie` uses the same 32).
pub(super) const COOKIE_CHARS: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

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
    pub(super) const ALL: [State; 12] = [
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

pub(super) fn splitmix64(state: &mut u64) -> u64 {
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// The client's cookie is not 36 printable characters and a NUL.
    #[error("bad cookie")]
    BadCookie,
    /// A JSON message announced longer than [`MAX_JSON_LEN`].
    #[error("JSON message of {0} bytes (limit {MAX_JSON_LEN})")]
    MessageTooLong(u32),
    /// A JSON message that does not parse.
    #[error(transparent)]
    BadJson(JsonError),
    /// A parameter of the wrong type or sign.
    #[error("bad parameter {0:?}")]
    BadParameter(&'static str),
    /// A byte that is no control message.
    #[error("unknown control message {}", *.0 as i8)]
    UnknownState(u8),
    /// A control message that does not fit where the test is.
    #[error("unexpected control message {0:?}")]
    UnexpectedState(State),
    /// More input than any message needs, at a point where none is expected.
    #[error("too much unexpected input")]
    InputOverflow,
    /// The server refused the parameters (and told the client so).
    #[error("refused: {}", .0.reason)]
    Refused(Refusal),
    /// The server is busy with another test.
    #[error("the server is busy running a test")]
    AccessDenied,
    /// The server refused the test with this error.
    #[error("the server refused the test (i_errno {i_errno}, errno {errno})")]
    ServerError { i_errno: i32, errno: i32 },
    #[error("the server terminated the test")]
    ServerTerminated,
    #[error("the client terminated the test")]
    ClientTerminated,
    /// The peer closed the control connection before the test was over.
    #[error("the peer closed the control connection")]
    Closed,
    /// The peer went quiet for too long (decided by the driver).
    #[error("the peer went quiet")]
    TimedOut,
    /// The data stream failed (decided by the driver).
    #[error("data stream: {0}")]
    DataStream(&'static str),
    /// The driver called a method where the test is not.
    #[error("driver error: {0}")]
    Misuse(&'static str),
}
