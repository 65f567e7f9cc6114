//! One back-end per connected guest: the back-end side of the handshake on the connection's
//! control page, and what a connection carries. For now that is the ping-pong test service
//! (`shared_abi::pingpong`); the network back-end will take its place on the same handshake.
//!
//! Everything the front-end writes is hostile: a section that does not validate is ignored, a ref
//! that does not map or a port that does not bind closes the connection with a log line, and the
//! request payload is read from shared memory exactly once.

use core::sync::atomic::Ordering;

use log::{info, warn};
use shared_abi::handshake::{next_state, Backend, Frontend, Side, State};
use shared_abi::pingpong::{self, PAYLOAD_WORDS, REPLY, REPLY_WORDS, REQUEST_WORDS, SEQ_WORD};
use vm_runtime::control::ControlPage;
use vm_runtime::{evtchn, grant, println};

/// The data path of a connected front-end.
struct DataPath {
    page: grant::Mapping,
    port: u32,
    last_seq: u64,
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
    state: State,
    data: Option<DataPath>,
    pub counters: Counters,
}

impl Connection {
    /// The connection of front-end `frontend` (a peer in our start-info), if its control page is
    /// valid.
    pub fn open(frontend: u16) -> Option<Connection> {
        let control = ControlPage::of(frontend)?;
        let header = control.header().ok()?;
        let mut conn = Connection {
            control,
            frontend,
            control_port: header.backend_port,
            state: State::Initialising,
            data: None,
            counters: Counters::default(),
        };
        conn.publish(State::Initialising);
        Some(conn)
    }

    fn publish(&mut self, state: State) {
        let connected = state == State::Connected;
        let section = Backend {
            state,
            features: if connected { pingpong::FEATURE } else { 0 },
            // Locally administered unicast MAC assigned per front-end (the network back-end will
            // honour a MAC the front-end asks for).
            mac: if connected {
                [0x02, 0x51, 0x55, 0x00, 0x00, self.frontend as u8]
            } else {
                [0; 6]
            },
        };
        if let Err(e) = self.control.write_backend(&section) {
            warn!(
                "front-end {}: cannot write our section: {e:?}",
                self.frontend
            );
        }
        self.state = state;
        // The hypervisor rebinds the control port when the front-end restarts: reread it.
        if let Ok(header) = self.control.header() {
            self.control_port = header.backend_port;
        }
        let _ = evtchn::send(self.control_port);
    }

    /// True once the front-end VM has stopped for good and our end is closed.
    pub fn finished(&self) -> bool {
        self.data.is_none() && self.control.frontend_gone()
    }

    pub fn control_port(&self) -> u32 {
        self.control_port
    }

    /// Follows the front-end's state until there is nothing more to do now.
    pub fn step(&mut self) {
        for _ in 0..8 {
            let peer = match self.control.frontend() {
                Ok(section) => section,
                Err(_) => {
                    // Not written yet, or garbage: nothing to react to. A connected front-end
                    // that scribbles over its section is treated as leaving.
                    if self.state == State::Connected {
                        warn!(
                            "front-end {}: invalid control section; closing",
                            self.frontend
                        );
                        self.teardown();
                        self.publish(State::Closing);
                    }
                    return;
                }
            };
            let Some(next) = next_state(Side::Backend, self.state, peer.state) else {
                return;
            };
            match next {
                State::Connected => {
                    if let Err(why) = self.attach(&peer) {
                        warn!("front-end {}: {why}; closing the connection", self.frontend);
                        self.publish(State::Closing);
                        continue;
                    }
                    self.counters.connects += 1;
                    info!(
                        "front-end {} connected: page ref {}, data port {}",
                        self.frontend, peer.tx_ring_ref, peer.data_port
                    );
                }
                State::Closing | State::Closed => self.teardown(),
                _ => {}
            }
            self.publish(next);
        }
    }

    fn attach(&mut self, peer: &Frontend) -> Result<(), alloc::string::String> {
        use alloc::format;
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
        self.data = Some(DataPath {
            page,
            port,
            last_seq: 0,
        });
        Ok(())
    }

    fn teardown(&mut self) {
        if let Some(data) = self.data.take() {
            let _ = evtchn::close(data.port);
            if let Err(e) = data.page.unmap() {
                warn!("front-end {}: unmap failed: {e:?}", self.frontend);
            }
            println!(
                "front-end {} closed: {} requests served, {} bad payload words",
                self.frontend, self.counters.requests, self.counters.bad_words
            );
        }
    }

    /// Answers a pending request, if any. Returns true if it did.
    pub fn serve(&mut self) -> bool {
        let Some(data) = self.data.as_mut() else {
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
        self.data.as_ref().map(|d| d.port)
    }
}
