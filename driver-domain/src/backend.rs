//! One back-end per connected guest: the back-end side of the handshake on the connection's
//! control page, and what a connection carries, chosen by the features the front-end asks
//! for: a network port (`netback`, plugged into the switch of `fabric`) or the ping-pong test
//! service (`shared_abi::pingpong`).
//!
//! Everything the front-end writes is hostile: a section that does not validate is ignored, a ref
//! that does not map or a port that does not bind closes the connection with a log line, and the
//! request payload is read from shared memory exactly once. The control page is the front-end's
//! to write too, header included, so our control port is read from it once, when the
//! connection is opened, and never again; the MAC the front-end asks for is only a wish (it
//! gets the one the topology gives it, `vif`); and connection attempts are rate-limited, so a
//! front-end that reconnects in a loop costs a bounded amount of mapping work.

use core::sync::atomic::Ordering;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;

use driver_domain::budget::TokenBucket;
use driver_domain::second_look::SecondLook;
use log::{info, warn};
use shared_abi::handshake::{next_state, Backend, Frontend, Side, State};
use shared_abi::identity::default_mac;
use shared_abi::pingpong::{self, PAYLOAD_WORDS, REPLY, REPLY_WORDS, REQUEST_WORDS, SEQ_WORD};
use shared_abi::virtq::FEATURE_NET;
use vm_runtime::control::ControlPage;
use vm_runtime::{evtchn, grant, println, timer};

use crate::fabric::{Fabric, GuestLink};
use crate::netback::NetPort;

/// Connection attempts a front-end may make back to back, then one per
/// [`CONNECT_PERIOD_MS`]: each maps and unmaps up to 514 pages.
const CONNECT_BURST: u32 = 4;
const CONNECT_PERIOD_MS: u64 = 1_000;
/// Ping-pong requests answered per connection per round of the main loop.
pub const PINGPONG_PER_ROUND: usize = 8;

/// The ping-pong test service of a connected front-end.
struct PingPongPath {
    page: grant::Mapping,
    port: u32,
    last_seq: u64,
}

/// What a connected front-end's connection carries.
enum DataPath {
    PingPong(PingPongPath),
    // Boxed: a port holds both queues' bookkeeping, ten times a ping-pong path.
    Net { port: Box<NetPort>, mac: [u8; 6] },
}

impl DataPath {
    fn port(&self) -> u32 {
        match self {
            DataPath::PingPong(p) => p.port,
            DataPath::Net { port, .. } => port.port,
        }
    }
}

/// Counters of one connection, printed when it closes.
#[derive(Default, Clone, Copy)]
pub struct Counters {
    pub requests: u64,
    pub bad_words: u64,
    pub connects: u64,
}

pub struct Connection {
    control: ControlPage,
    pub frontend: u16,
    control_port: u32,
    /// Our generation (the hypervisor's count of our restarts, read when we start): we map
    /// only offers made for it (`shared_abi::handshake`, Generations).
    generation: u32,
    state: State,
    data: Option<DataPath>,
    pub counters: Counters,
    /// Set when the front-end broke the ring protocol: it stays disconnected.
    banned: Option<String>,
    /// Connection attempts left; when empty, the next attempt waits until `retry_at` (ms).
    attempts: TokenBucket,
    retry_at: Option<u64>,
    /// Invalid reads of the front-end's section while connected: closed on the second.
    invalid_reads: SecondLook,
    /// How long opening took (us): reading the page, asking the hypervisor for our port, the
    /// first write and event (printed on a restart: the last two are hypercalls).
    pub open_us: [u64; 3],
}

impl GuestLink for Connection {
    fn frontend(&self) -> u16 {
        self.frontend
    }

    fn net(&self) -> Option<&NetPort> {
        Connection::net(self)
    }

    fn net_mut(&mut self) -> Option<&mut NetPort> {
        Connection::net_mut(self)
    }
}

impl Connection {
    /// The connection of front-end `frontend` (a peer in our start-info), if its control page is
    /// valid.
    pub fn open(frontend: u16) -> Option<Connection> {
        let t0 = timer::now();
        let control = ControlPage::of(frontend)?;
        // The header must be valid, but its port is not believed: the front-end can write the
        // page (even before we first read it). The hypervisor's record is the trusted copy.
        control.header().ok()?;
        let t1 = timer::now();
        let control_port = match evtchn::connection_port(frontend) {
            Ok(port) => port,
            Err(e) => {
                warn!("front-end {frontend}: the hypervisor knows no connection with it ({e:?})");
                return None;
            }
        };
        let generation = control.generation();
        let mut conn = Connection {
            control,
            frontend,
            control_port,
            generation,
            state: State::Initialising,
            data: None,
            counters: Counters::default(),
            banned: None,
            attempts: TokenBucket::new(CONNECT_BURST, CONNECT_PERIOD_MS),
            retry_at: None,
            invalid_reads: SecondLook::default(),
            open_us: [0; 3],
        };
        let t2 = timer::now();
        // We start `Initialising`; if the front-end's section already asks for our next step
        // (`InitWait`: it is `Initialising`, or shows an earlier offer), that is our first
        // write instead. The front-end reacts to nothing but `InitWait` there, so it misses
        // nothing, and a restart costs one page write and event less per front-end.
        let first = match conn.control.frontend() {
            Ok(peer) => next_state(Side::Backend, State::Initialising, peer.state)
                .filter(|&next| next == State::InitWait)
                .unwrap_or(State::Initialising),
            Err(_) => State::Initialising,
        };
        conn.publish(first);
        let t3 = timer::now();
        conn.open_us = [t1 - t0, t2 - t1, t3 - t2].map(timer::ticks_to_us);
        Some(conn)
    }

    fn publish(&mut self, state: State) {
        let (features, mac) = match (&self.data, state) {
            (Some(DataPath::Net { port, mac }), State::Connected) => (port.features(), *mac),
            (Some(DataPath::PingPong(_)), State::Connected) => {
                (pingpong::FEATURE, default_mac(self.frontend))
            }
            _ => (0, [0; 6]),
        };
        let section = Backend {
            state,
            features,
            mac,
        };
        if let Err(e) = self.control.write_backend(&section) {
            warn!(
                "front-end {}: cannot write our section: {e:?}",
                self.frontend
            );
        }
        self.state = state;
        // Our control port is never reread from the page: the front-end can write the header
        // too. It never changes while we run (a restarted front-end gets a new port of its own,
        // bound to ours; only a restarted back-end would get a new one, and reads it afresh).
        let _ = evtchn::send(self.control_port);
    }

    /// True once the front-end VM has stopped for good and our end is closed.
    pub fn finished(&self) -> bool {
        self.data.is_none() && self.control.frontend_gone()
    }

    /// Our handshake state, as we last wrote it.
    pub fn state(&self) -> State {
        self.state
    }

    pub fn control_port(&self) -> u32 {
        self.control_port
    }

    /// When (ms) this connection must be stepped again even with no event, if it must: a
    /// connection attempt the rate limit held back, or a second look at a section read invalid.
    pub fn look_again_at(&self) -> Option<u64> {
        self.retry_at
            .into_iter()
            .chain(self.invalid_reads.due_at())
            .min()
    }

    /// Follows the front-end's state until there is nothing more to do now.
    pub fn step(&mut self, fabric: &mut Fabric) {
        for _ in 0..8 {
            let peer = match self.control.frontend() {
                Ok(section) => {
                    self.invalid_reads.valid();
                    section
                }
                Err(e) => {
                    // Not written yet, or garbage: nothing to react to. A connected front-end
                    // that scribbles over its section is treated as leaving, on a second look
                    // (`driver_domain::second_look`: one copy of the page can catch the
                    // hypervisor's rewrite of a stopped front-end's section half done).
                    if self.state == State::Connected {
                        let now = timer::ticks_to_ms(timer::now());
                        let since = self.invalid_reads.since().unwrap_or(now);
                        if self.invalid_reads.invalid(now) {
                            warn!(
                                "front-end {}: invalid control section ({e:?} on two looks {} ms \
                                 apart); closing",
                                self.frontend,
                                now - since
                            );
                            self.teardown(fabric);
                            self.publish(State::Closing);
                        }
                    } else {
                        // Nothing is judged outside `Connected`, so no second look is due.
                        self.invalid_reads = SecondLook::default();
                    }
                    return;
                }
            };
            let Some(next) = next_state(Side::Backend, self.state, peer.state) else {
                return;
            };
            match next {
                State::Connected if peer.backend_generation != self.generation => {
                    // Offered to an earlier incarnation of ours, which may have used those
                    // rings: the front-end resets them and offers again.
                    return;
                }
                State::Connected => {
                    let now = timer::ticks_to_ms(timer::now());
                    if let Err(wait) = self.attempts.take(now) {
                        if self.retry_at.is_none() {
                            warn!(
                                "front-end {}: connecting too often; next attempt in {wait} ms",
                                self.frontend
                            );
                        }
                        self.retry_at = Some(now + wait);
                        return;
                    }
                    self.retry_at = None;
                    if let Some(why) = &self.banned {
                        warn!("front-end {}: refusing to reconnect ({why})", self.frontend);
                        self.publish(State::Closing);
                        return;
                    }
                    let attach_start = timer::now();
                    if let Err(why) = self.attach(&peer, fabric) {
                        warn!("front-end {}: {why}; closing the connection", self.frontend);
                        self.publish(State::Closing);
                        continue;
                    }
                    self.counters.connects += 1;
                    // `Connected` goes out before the line that says so: a console line can
                    // take milliseconds when every VM prints at once (as around a restart).
                    self.publish(next);
                    let now = timer::now();
                    match &self.data {
                        Some(DataPath::Net { mac, .. }) => info!(
                            "front-end {} connected: MAC {}, rings {}/{}, pool {} pages from ref {}, \
                             data port {}; mapped in {} us (at {} us)",
                            self.frontend,
                            driver_domain::switch::MacAddr(*mac),
                            peer.tx_ring_ref,
                            peer.rx_ring_ref,
                            peer.pool_count,
                            peer.pool_first_ref,
                            peer.data_port,
                            timer::ticks_to_us(now - attach_start),
                            timer::ticks_to_us(now)
                        ),
                        _ => info!(
                            "front-end {} connected: page ref {}, data port {}",
                            self.frontend, peer.tx_ring_ref, peer.data_port
                        ),
                    }
                    continue;
                }
                State::Closing | State::Closed => self.teardown(fabric),
                _ => {}
            }
            self.publish(next);
        }
    }

    fn attach(&mut self, peer: &Frontend, fabric: &mut Fabric) -> Result<(), String> {
        if peer.features & FEATURE_NET != 0 {
            return self.attach_net(peer, fabric);
        }
        if peer.features & pingpong::FEATURE == 0 {
            return Err(format!("unsupported features {:#x}", peer.features));
        }
        let page = grant::map(self.frontend, peer.tx_ring_ref, false)
            .map_err(|e| format!("cannot map ref {}: {e:?}", peer.tx_ring_ref))?;
        let port = match evtchn::bind_interdomain(self.frontend, peer.data_port) {
            Ok(port) => port,
            Err(e) => {
                let _ = page.unmap();
                return Err(format!("cannot bind port {}: {e:?}", peer.data_port));
            }
        };
        self.data = Some(DataPath::PingPong(PingPongPath {
            page,
            port,
            last_seq: 0,
        }));
        Ok(())
    }

    /// A network port: the identity the topology gives the front-end (whatever MAC it asks
    /// for: a request for another is refused and logged, and it gets its own), then the rings
    /// and pool, then the switch port held to that identity.
    fn attach_net(&mut self, peer: &Frontend, fabric: &mut Fabric) -> Result<(), String> {
        let identity = fabric.vifs.assign(self.frontend, peer.mac);
        if let Some(asked) = identity.refused {
            warn!(
                "front-end {}: asked for MAC {}, which is not its own; refused, it gets {}",
                self.frontend,
                driver_domain::switch::MacAddr(asked),
                identity
            );
        }
        let port = NetPort::attach(self.frontend, peer)?;
        if let Err(why) = fabric.add_guest(self.frontend, &identity) {
            let _ = port.detach();
            return Err(why);
        }
        self.data = Some(DataPath::Net {
            port: Box::new(port),
            mac: identity.mac,
        });
        Ok(())
    }

    fn teardown(&mut self, fabric: &mut Fabric) {
        match self.data.take() {
            Some(DataPath::PingPong(data)) => {
                let _ = evtchn::close(data.port);
                if let Err(e) = data.page.unmap() {
                    warn!("front-end {}: unmap failed: {e:?}", self.frontend);
                }
                println!(
                    "front-end {} closed: {} requests served, {} bad payload words",
                    self.frontend, self.counters.requests, self.counters.bad_words
                );
            }
            Some(DataPath::Net { port, .. }) => {
                let port = *port;
                let s = port.stats;
                fabric.remove_guest(self.frontend);
                if let Err(why) = port.detach() {
                    warn!("{why}");
                }
                println!(
                    "front-end {} closed: sent {} frames ({} dropped), received {} ({} over \
                     several buffers), {} not delivered (no buffer), {} longer than its \
                     receive buffers, {} short receive buffers returned, events {} sent / {} \
                     suppressed",
                    self.frontend,
                    s.tx_frames,
                    s.tx_bad_frames,
                    s.rx_frames,
                    s.rx_merged_frames,
                    s.rx_no_buffer,
                    s.rx_too_small,
                    s.rx_short_buffers,
                    s.events_sent,
                    s.events_suppressed
                );
                if let Some(e) = s.last_bad_frame {
                    println!("front-end {}: last bad frame: {e}", self.frontend);
                }
            }
            None => {}
        }
    }

    /// Cuts the front-end off after a protocol violation: its switch port goes, its rings and
    /// pool are unmapped, it is told `Closing`, and it may not connect again.
    pub fn disconnect(&mut self, reason: &str, fabric: &mut Fabric) {
        if self.data.is_none() {
            return;
        }
        println!(
            "front-end {}: protocol violation: {reason}; port disconnected",
            self.frontend
        );
        self.banned = Some(format!("protocol violation: {reason}"));
        self.teardown(fabric);
        self.publish(State::Closing);
    }

    /// The network port, if this connection carries one.
    pub fn net_mut(&mut self) -> Option<&mut NetPort> {
        match self.data.as_mut() {
            Some(DataPath::Net { port, .. }) => Some(port),
            _ => None,
        }
    }

    pub fn net(&self) -> Option<&NetPort> {
        match self.data.as_ref() {
            Some(DataPath::Net { port, .. }) => Some(port),
            _ => None,
        }
    }

    /// Answers a pending request, if any. Returns true if it did.
    pub fn serve(&mut self) -> bool {
        let Some(DataPath::PingPong(data)) = self.data.as_mut() else {
            return false;
        };
        if !evtchn::take(data.port) {
            return false;
        }
        let words = data.page.words();
        let seq = words[SEQ_WORD].load(Ordering::Acquire);
        if seq & REPLY != 0 || seq == data.last_seq {
            return false;
        }
        // Read the request once into locals: the front-end may rewrite it while we work.
        let mut request = [0u64; PAYLOAD_WORDS];
        for (slot, w) in request.iter_mut().zip(REQUEST_WORDS) {
            *slot = words[w].load(Ordering::Relaxed);
        }
        for (i, (&word, w)) in request.iter().zip(REPLY_WORDS).enumerate() {
            if word != pingpong::payload(seq, i) {
                self.counters.bad_words += 1;
            }
            words[w].store(pingpong::reply(word), Ordering::Relaxed);
        }
        words[SEQ_WORD].store(seq | REPLY, Ordering::Release);
        data.last_seq = seq;
        self.counters.requests += 1;
        let _ = evtchn::send(data.port);
        true
    }

    pub fn data_port(&self) -> Option<u32> {
        self.data.as_ref().map(DataPath::port)
    }
}
