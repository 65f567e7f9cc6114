//! The front-end side of a connection to this guest's back-end (driver domain): finding the
//! control page, and driving the handshake of `shared_abi::handshake` to `Connected` and back to
//! `Closed`. What the connection carries (rings, a test page) is the caller's business: it grants
//! it and passes the refs and data port to [`Link::connect`].

use alloc::format;
use alloc::string::String;

use shared_abi::handshake::{frontend_next, Backend, Frontend, State};
use vm_runtime::control::ControlPage;
use vm_runtime::timer::{self, Instant};
use vm_runtime::{evtchn, StartInfo};

/// An open connection to the back-end.
pub struct Link {
    pub control: ControlPage,
    pub backend: u16,
    /// Our end of the control event channel.
    pub control_port: u32,
    state: State,
    /// The back-end generation our current offer was made for (`shared_abi::handshake`,
    /// Generations); `None` before our first offer.
    offered_for: Option<u32>,
}

/// A step [`Link::decide`] chose: what to write, on which copy of the page.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub next: State,
    /// The back-end's section and the generation in that copy.
    pub peer: Backend,
    pub generation: u32,
}

impl Link {
    /// The connection of this guest, if the topology gives it a back-end. Needs the event
    /// channels initialised (`evtchn::init`).
    pub fn open(info: &StartInfo<'static>) -> Result<Link, String> {
        if info.peers.count_ones() != 1 {
            return Err(format!(
                "this guest has no back-end (set `backend = \"...\"` for {} in the topology)",
                info.name
            ));
        }
        let backend = info.peers.trailing_zeros() as u16;
        let control = ControlPage::of(info.vm_id).ok_or("no control page")?;
        let header = control
            .header()
            .map_err(|e| format!("control page header is invalid: {e:?}"))?;
        if header.frontend != info.vm_id || header.backend != backend {
            return Err(format!(
                "control page names front-end {} / back-end {}, expected {} / {backend}",
                header.frontend, header.backend, info.vm_id
            ));
        }
        // A new incarnation starts in Initialising only on a section that says so (a new page);
        // otherwise in Closed, because the back-end may still act on what an earlier incarnation
        // published (the Restarts rule of the protocol).
        let start = match control.frontend().map(|f| f.state) {
            Ok(State::Initialising) => State::Initialising,
            _ => State::Closed,
        };
        let mut link = Link {
            control,
            backend,
            control_port: header.frontend_port,
            state: start,
            offered_for: None,
        };
        link.publish(&Frontend {
            state: start,
            ..Frontend::initialising()
        })?;
        link.state = start;
        Ok(link)
    }

    fn publish(&self, section: &Frontend) -> Result<(), String> {
        self.control
            .write_frontend(section)
            .map_err(|e| format!("cannot write our section: {e:?}"))?;
        // The back-end may not have an event page yet; it reads the page when it starts anyway.
        let _ = evtchn::send(self.control_port);
        Ok(())
    }

    /// The back-end's section, if it holds a valid one.
    pub fn backend_section(&self) -> Option<Backend> {
        self.control.backend().ok()
    }

    /// Our state, as we last wrote it.
    pub fn state(&self) -> State {
        self.state
    }

    /// The back-end generation our current offer was made for (0 before the first).
    pub fn offered_for(&self) -> u32 {
        self.offered_for.unwrap_or(0)
    }

    /// The next step of the handshake on a fresh copy of the page, if there is one to take
    /// (`shared_abi::handshake::frontend_next`). The caller does the work the step needs (rings
    /// reset before `Initialised`) and then [`Link::take`]s it.
    pub fn decide(&self) -> Option<Step> {
        let (peer, generation) = self.control.backend_and_generation().ok()?;
        let next = frontend_next(self.state, peer.state, self.offered_for, generation)?;
        Some(Step {
            next,
            peer,
            generation,
        })
    }

    /// Writes the step [`Link::decide`] chose: `offer` (refs, data port, MAC, features) for
    /// `Initialised` and `Connected`, made for the generation of the copy it decided on.
    pub fn take(&mut self, step: Step, offer: &Frontend) -> Result<(), String> {
        if step.next == State::Initialised {
            self.offered_for = Some(step.generation);
        }
        let section = match step.next {
            State::Initialised | State::Connected => Frontend {
                state: step.next,
                backend_generation: self.offered_for(),
                ..*offer
            },
            other => Frontend {
                state: other,
                ..Frontend::initialising()
            },
        };
        self.publish(&section)?;
        self.state = step.next;
        Ok(())
    }

    /// Runs the handshake until `Connected`, publishing `offer` (refs, data port, MAC, features)
    /// when the back-end is ready. Returns the back-end's section. The caller's rings must be
    /// fresh (nothing used them since they were offered last).
    pub fn connect(&mut self, offer: Frontend, timeout_ms: u64) -> Result<Backend, String> {
        let start = Instant::now();
        loop {
            if let Some(step) = self.decide() {
                self.take(step, &offer)?;
                if step.next == State::Connected {
                    return Ok(step.peer);
                }
                continue;
            }
            let waited = start.elapsed_ms();
            if waited >= timeout_ms {
                return Err(format!(
                    "no connection after {timeout_ms} ms: we are {:?}, back-end is {:?}",
                    self.state,
                    self.backend_section().map(|b| b.state)
                ));
            }
            evtchn::wait(
                self.control_port,
                timer::ms_to_ticks((timeout_ms - waited).min(100)),
            );
        }
    }

    /// Announces `Closing`, waits (bounded) for the back-end to close its end, then `Closed`.
    /// The caller ends its grants after this returns.
    pub fn close(&mut self, timeout_ms: u64) -> Result<(), String> {
        self.publish(&Frontend {
            state: State::Closing,
            ..Frontend::initialising()
        })?;
        self.state = State::Closing;
        let start = Instant::now();
        while !matches!(
            self.backend_section().map(|b| b.state),
            Some(State::Closing | State::Closed | State::Initialising | State::InitWait)
        ) {
            if start.elapsed_ms() >= timeout_ms {
                return Err(format!("back-end did not close within {timeout_ms} ms"));
            }
            evtchn::wait(self.control_port, timer::ms_to_ticks(50));
        }
        self.publish(&Frontend {
            state: State::Closed,
            ..Frontend::initialising()
        })?;
        self.state = State::Closed;
        Ok(())
    }
}
