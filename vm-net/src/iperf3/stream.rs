//! What the iperf3 server and client share on smoltcp: making their sockets, moving a data
//! stream's bytes (sending from a send buffer filled once with a pattern, so nothing is copied;
//! receiving by counting, so nothing is copied either), counting what a test moved per second
//! ([`Meter`]), and closing sockets without waiting for them ([`Retiring`]). A UDP test's
//! data goes through a [`UdpStream`] instead: the connect exchange, paced sending, loss and
//! jitter accounting (the sans-IO parts in `udp`).

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::proto::TestParams;
use super::report::Interval;
use super::udp::{
    UdpCounts, UdpReceiver, UdpSender, MAX_UDP_BLOCK_LEN, UDP_CONNECT_MSG, UDP_CONNECT_REPLY,
};

/// Control connection buffers: parameters and results are a few hundred bytes.
pub(crate) const CONTROL_BUFFER: usize = 4 * 1024;
/// The small direction of a data stream (the cookie, the odd ACCESS_DENIED).
pub(crate) const SMALL_BUFFER: usize = 1024;
/// How long a closing socket may take before it is aborted.
pub(crate) const LINGER: Duration = Duration::from_secs(3);
/// Sockets a [`Retiring`] lets linger at most; past that it aborts instead of closing. A
/// peer that opens connections (each denied, or failing its test) and never closes them would
/// otherwise hold a socket and its buffers per connection for [`LINGER`] each.
pub(crate) const MAX_RETIRING: usize = 16;
/// What the data is made of (like iperf3's `--repeating-payload`).
const PATTERN: &[u8; 10] = b"0123456789";

/// A TCP socket with `rx`/`tx` bytes of buffers; the send buffer holds the data pattern.
/// Nagle is off: control messages are single bytes that must not wait for an ACK.
pub(crate) fn tcp_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    let send: Vec<u8> = PATTERN.iter().copied().cycle().take(tx).collect();
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; rx]),
        tcp::SocketBuffer::new(send),
    );
    socket.set_nagle_enabled(false);
    socket
}

/// A data stream socket: big buffer in the direction the data goes, ACKs without delay.
pub(crate) fn data_socket(sending: bool, buffer: usize) -> tcp::Socket<'static> {
    let mut socket = if sending {
        tcp_socket(SMALL_BUFFER, buffer)
    } else {
        tcp_socket(buffer, SMALL_BUFFER)
    };
    socket.set_ack_delay(None);
    socket
}

/// Reads what `socket` received into `f`, a chunk at a time; returns the bytes read.
pub(crate) fn drain(socket: &mut tcp::Socket, mut f: impl FnMut(&[u8])) -> usize {
    let mut total = 0;
    while socket.can_recv() {
        let n = socket
            .recv(|data| {
                f(data);
                (data.len(), data.len())
            })
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        total += n;
    }
    total
}

/// Writes as much of `bytes` into `socket` as fits; returns how much.
pub(crate) fn write(socket: &mut tcp::Socket, bytes: &[u8]) -> usize {
    if bytes.is_empty() || !socket.may_send() {
        return 0;
    }
    socket.send_slice(bytes).unwrap_or(0)
}

/// One test's data stream: the socket and what went through it.
pub(crate) struct DataStream {
    pub handle: SocketHandle,
    /// This side sends the data.
    pub sending: bool,
    /// Bytes queued before the data (the client's cookie), not counted.
    prefix: u64,
    /// Data bytes queued (sending).
    queued: u64,
    /// Data bytes received (receiving).
    received: u64,
    /// Data bytes to send at most.
    limit: Option<u64>,
    /// No more data is queued (the test ended).
    stopped: bool,
}

impl DataStream {
    pub fn new(handle: SocketHandle, sending: bool, limit: Option<u64>) -> DataStream {
        DataStream {
            handle,
            sending,
            prefix: 0,
            queued: 0,
            received: 0,
            limit,
            stopped: false,
        }
    }

    /// Queues the cookie ahead of the data (client side). False if it did not fit.
    pub fn send_prefix(&mut self, socket: &mut tcp::Socket, bytes: &[u8]) -> bool {
        let n = write(socket, bytes);
        self.prefix += n as u64;
        n == bytes.len()
    }

    /// Moves data: fills the send buffer (without writing it: it holds the pattern) or counts
    /// and drops what arrived. Returns the bytes moved.
    pub fn pump(&mut self, socket: &mut tcp::Socket) -> u64 {
        if !self.sending {
            let n = drain(socket, |_| {}) as u64;
            self.received += n;
            return n;
        }
        let mut moved = 0;
        while !self.stopped && socket.can_send() {
            let allowed = match self.limit {
                Some(limit) => limit.saturating_sub(self.queued),
                None => u64::MAX,
            };
            if allowed == 0 {
                break;
            }
            // The free space may wrap around the ring: at most two rounds.
            let n = socket
                .send(|free| {
                    let n = free
                        .len()
                        .min(usize::try_from(allowed).unwrap_or(usize::MAX));
                    (n, n)
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            self.queued += n as u64;
            moved += n as u64;
        }
        moved
    }

    /// Queue no more data.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// The data bytes the test moved so far: acknowledged by the peer when sending (queued
    /// minus still in the send buffer), received when receiving.
    pub fn counted(&self, socket: &tcp::Socket) -> u64 {
        if self.sending {
            (self.prefix + self.queued)
                .saturating_sub(socket.send_queue() as u64)
                .saturating_sub(self.prefix)
        } else {
            self.received
        }
    }
}

/// The clock of a running test: per-second intervals and the total, the omitted start
/// excluded.
pub(crate) struct Meter {
    start: Instant,
    omit_until: Instant,
    /// Count and time when the omitted start ended.
    omit_mark: Option<(u64, Instant)>,
    last_tick: (u64, Instant),
    next_tick: Instant,
}

impl Meter {
    pub fn new(start: Instant, omit_seconds: u32) -> Meter {
        let omit_until = start + Duration::from_secs(u64::from(omit_seconds));
        Meter {
            start,
            omit_until,
            omit_mark: (omit_seconds == 0).then_some((0, start)),
            last_tick: (0, start),
            next_tick: start + Duration::from_secs(1),
        }
    }

    /// The interval that ended by `now`, if one did; `total`: bytes counted so far.
    pub fn tick(&mut self, now: Instant, total: u64) -> Option<Interval> {
        if self.omit_mark.is_none() && now >= self.omit_until {
            self.omit_mark = Some((total, now));
        }
        if now < self.next_tick {
            return None;
        }
        let (bytes, at) = self.last_tick;
        let second = ((now - self.start).total_millis() / 1000) as u32;
        let interval = Interval {
            second,
            bytes: total.saturating_sub(bytes),
            micros: (now - at).total_micros(),
            omitted: now <= self.omit_until && self.omit_until != self.start,
        };
        self.last_tick = (total, now);
        self.next_tick = self.start + Duration::from_secs(u64::from(second) + 1);
        Some(interval)
    }

    /// Whether the omitted start is over (as of the last tick).
    pub fn omit_over(&self) -> bool {
        self.omit_mark.is_some()
    }

    /// When the next interval ends.
    pub fn next_tick(&self) -> Instant {
        self.next_tick
    }

    /// Bytes and microseconds counted by `now` (`total`: bytes so far), the omitted start
    /// excluded.
    pub fn total(&self, now: Instant, total: u64) -> (u64, u64) {
        match self.omit_mark {
            Some((bytes, at)) => (total.saturating_sub(bytes), (now - at).total_micros()),
            None => (0, 0),
        }
    }
}

/// Sockets on their way out: drained (so a peer still sending is not stuck) until they are
/// closed or their time is up, then aborted and removed from the set.
#[derive(Default)]
pub(crate) struct Retiring {
    sockets: Vec<(SocketHandle, Instant, bool)>,
}

impl Retiring {
    /// Closes `handle` gracefully (what was queued is still sent) and lets it go later; aborts
    /// it if [`MAX_RETIRING`] sockets linger already.
    pub fn close(&mut self, sockets: &mut SocketSet<'static>, handle: SocketHandle, now: Instant) {
        if self.sockets.len() >= MAX_RETIRING {
            return self.abort(sockets, handle);
        }
        sockets.get_mut::<tcp::Socket>(handle).close();
        self.sockets.push((handle, now + LINGER, false));
    }

    /// Aborts `handle` (a RST) and removes it on the next round, after the RST went out.
    pub fn abort(&mut self, sockets: &mut SocketSet<'static>, handle: SocketHandle) {
        sockets.get_mut::<tcp::Socket>(handle).abort();
        self.sockets.push((handle, Instant::ZERO, true));
    }

    /// Removes the sockets that are done.
    pub fn run(&mut self, sockets: &mut SocketSet<'static>, now: Instant) {
        self.sockets.retain_mut(|(handle, until, aborted)| {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            if *aborted {
                // The abort's RST went out with the poll since.
                sockets.remove(*handle);
                return false;
            }
            drain(socket, |_| {});
            let state = socket.state();
            if state == tcp::State::Closed || state == tcp::State::TimeWait {
                sockets.remove(*handle);
                return false;
            }
            if now >= *until {
                socket.abort();
                *aborted = true;
            }
            true
        });
    }

    /// When a closing socket times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.sockets
            .iter()
            .map(|&(_, until, aborted)| if aborted { Instant::ZERO } else { until })
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

/// How often a UDP client repeats its connect message while no answer came.
const HELLO_AGAIN: Duration = Duration::from_secs(1);
/// Datagrams the small direction of a UDP stream holds (connect messages).
const SMALL_SLOTS: usize = 8;

/// A UDP data socket: `buffer` bytes (at least two of the largest datagrams) in the direction
/// of the data, a slot per 512 of them; the send buffer holds the data pattern, so a datagram
/// only needs its header written.
pub(crate) fn udp_socket(sending: bool, buffer: usize) -> udp::Socket<'static> {
    let big = buffer.max(2 * MAX_UDP_BLOCK_LEN as usize);
    let slots = (big / 512).clamp(64, 4096);
    let (rx, tx) = if sending {
        ((SMALL_SLOTS, SMALL_BUFFER), (slots, big))
    } else {
        ((slots, big), (SMALL_SLOTS, SMALL_BUFFER))
    };
    let send: Vec<u8> = PATTERN.iter().copied().cycle().take(tx.1).collect();
    udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; rx.0], vec![0u8; rx.1]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; tx.0], send),
    )
}

/// One UDP test's data stream: the socket, the peer's endpoint and the counts.
pub(crate) struct UdpStream {
    pub handle: SocketHandle,
    /// This side sends the data.
    pub sending: bool,
    /// Where the data goes / comes from: the server's port (client), the client's endpoint
    /// once its connect message arrived (server).
    peer: Option<IpEndpoint>,
    /// The other side answered (client: the server's reply arrived).
    connected: bool,
    hello_at: Option<Instant>,
    counters_64bit: bool,
    block_len: usize,
    rate: u64,
    /// Data bytes to send at most.
    limit: Option<u64>,
    sender: Option<UdpSender>,
    receiver: UdpReceiver,
    stopped: bool,
    omit_marked: bool,
}

impl UdpStream {
    /// The stream of a test with `params`; `peer`: the server's endpoint (client side).
    pub fn new(
        handle: SocketHandle,
        sending: bool,
        params: &TestParams,
        limit: Option<u64>,
        peer: Option<IpEndpoint>,
    ) -> UdpStream {
        UdpStream {
            handle,
            sending,
            peer,
            connected: false,
            hello_at: None,
            counters_64bit: params.counters_64bit,
            block_len: params.block_len as usize,
            rate: params.bandwidth,
            limit,
            sender: None,
            receiver: UdpReceiver::new(params.counters_64bit),
            stopped: false,
            omit_marked: false,
        }
    }

    /// Client: sends the connect message (again, if no answer came for a while).
    pub fn hello(&mut self, socket: &mut udp::Socket, now: Instant) {
        let Some(peer) = self.peer else {
            return;
        };
        if self.connected || self.hello_at.is_some_and(|at| now < at + HELLO_AGAIN) {
            return;
        }
        if socket.send_slice(&UDP_CONNECT_MSG, peer).is_ok() {
            self.hello_at = Some(now);
        }
    }

    /// When the client sends its connect message again.
    pub fn next_hello(&self) -> Option<Instant> {
        match (self.connected, self.hello_at) {
            (false, Some(at)) => Some(at + HELLO_AGAIN),
            _ => None,
        }
    }

    /// Server: takes the first datagram from `client` (its connect message), remembers where
    /// it came from and answers. True once that happened.
    pub fn accept(&mut self, socket: &mut udp::Socket, client: IpAddress) -> bool {
        while self.peer.is_none() {
            let Ok((_, meta)) = socket.recv() else {
                break;
            };
            if meta.endpoint.addr == client {
                self.peer = Some(meta.endpoint);
            }
        }
        let Some(peer) = self.peer else {
            return false;
        };
        if !self.connected && socket.send_slice(&UDP_CONNECT_REPLY, peer).is_ok() {
            self.connected = true;
        }
        self.connected
    }

    /// The test runs: the sender's pacing starts now.
    pub fn start(&mut self, now: Instant) {
        self.connected = true;
        if self.sending && self.sender.is_none() {
            self.sender = Some(UdpSender::new(self.counters_64bit, self.rate, now));
        }
    }

    /// Moves data: sends what the pacing allows and the socket takes, or accounts for what
    /// arrived from the peer (after [`UdpStream::stop`], drops it). Returns the datagrams moved.
    pub fn pump(&mut self, socket: &mut udp::Socket, now: Instant) -> u64 {
        let mut moved = 0;
        let arrival = now.total_micros().max(0) as u64;
        while let Ok((data, meta)) = socket.recv() {
            if Some(meta.endpoint) != self.peer {
                continue;
            }
            self.connected = true;
            if !self.sending && !self.stopped && self.receiver.datagram(data, arrival) {
                moved += 1;
            }
        }
        let (Some(sender), Some(peer)) = (self.sender.as_mut(), self.peer) else {
            return moved;
        };
        while !self.stopped && sender.may_send(now) {
            if self.limit.is_some_and(|limit| sender.bytes >= limit) {
                break;
            }
            match socket.send(self.block_len, peer) {
                Ok(block) => sender.fill(block, now),
                Err(_) => break,
            }
            moved += 1;
        }
        moved
    }

    /// When the sender may send again (None: not sending, or not paced).
    pub fn next_send(&self) -> Option<Instant> {
        self.sender
            .as_ref()
            .filter(|_| !self.stopped)
            .and_then(|s| s.next_send())
    }

    /// Send no more; count no more.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// The omitted start is over: what was counted so far is not part of the result.
    pub fn mark_omitted(&mut self) {
        if !self.omit_marked {
            self.omit_marked = true;
            self.receiver.counts.mark_omitted();
            if let Some(sender) = self.sender.as_mut() {
                sender.counts.mark_omitted();
            }
        }
    }

    /// Data bytes sent or received so far.
    pub fn counted(&self) -> u64 {
        match &self.sender {
            Some(sender) => sender.bytes,
            None => self.receiver.bytes,
        }
    }

    /// The datagram counts this side keeps.
    pub fn counts(&self) -> UdpCounts {
        match &self.sender {
            Some(sender) => sender.counts,
            None => self.receiver.counts,
        }
    }
}
