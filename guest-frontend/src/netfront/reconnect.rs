//! Reconnecting the rings to a restarted back-end (issue 14): the front-end sees its back-end
//! gone (a new back-end generation in the control page, or its section no longer
//! `Connected`), keeps its smoltcp interface and sockets, and follows the handshake with the
//! new incarnation on its own: same grants and data port offered again, the rings reset
//! (zeroed, every receive buffer offered again) before the new `Initialised`. The frames the
//! old back-end had not given back are still in our transmit buffers: they go on the new
//! transmit ring first, oldest first (`vm_net::resend`), so a restart costs a stream no
//! retransmission timeout (smoltcp's is at least a second); frames on their way to us are
//! lost, and their senders send them again the same way. While it is down, frames are not
//! taken: `send_frame` refuses and counts them, smoltcp's transmit finds no buffer and
//! keeps its segments (so they leave at once when the rings are back). Once connected again it
//! announces itself with a gratuitous ARP (as Xen's netfront does on resume), so the new
//! switch learns its port at once and its peers hear from it. A back-end the
//! hypervisor left stopped for good ends the network (`broken`); one that closed on us while
//! alive (a protocol violation) is not reconnected to, as before.

use alloc::format;
use alloc::string::String;

use shared_abi::handshake::State;
use shared_abi::virtq::{DriverQueue, RingMem, Segment, RING_PAGE_LEN};
use vm_net::smoltcp::wire::Ipv4Address;
use vm_runtime::{evtchn, println, timer};

use super::{buffer_offset, offer_rx_buffers, tx_buffers, Rings};

/// Control-page steps taken per call: a handshake is at most a handful, and a hostile
/// back-end flipping its state cannot keep us here.
const STEPS_PER_CALL: usize = 8;
/// Frames at least this long count as data for the gap figure (ACKs and ARP are shorter).
const DATA_FRAME: usize = 256;

/// What the front-end remembers about the back-end going away and coming back.
#[derive(Default)]
pub(super) struct Reconnect {
    /// When (ticks) we saw the back-end go away; until the first frame after reconnecting.
    gone_at: Option<u64>,
    /// Connected again, waiting for the first frame and for the first data frame.
    first_frame_due: bool,
    first_data_due: bool,
    /// The last data frame received (microseconds of the virtual counter, the stack's clock
    /// at the poll that took it), and the last one before the back-end went.
    last_data_at: u64,
    data_before_gap: u64,
    /// The back-end closed on us while alive: not followed any more.
    abandoned: bool,
}

impl Rings {
    /// Whether the rings are connected and may carry frames.
    pub(super) fn up(&self) -> bool {
        self.link.state() == State::Connected
    }

    /// Follows the control page: notices the back-end going away, and reconnects. Cheap while
    /// connected (one event bit); reads the page on a control event or while reconnecting.
    pub(super) fn service(&mut self) {
        if self.broken.is_some() || self.reconnect.abandoned {
            return;
        }
        if self.up() && !evtchn::take(self.link.control_port) {
            return;
        }
        if self.link.control.backend_gone() {
            let why = format!(
                "back-end {} stopped for good (the hypervisor left it stopped)",
                self.link.backend
            );
            println!("net: {why}; the network is down, sends fail");
            self.broken = Some(why);
            return;
        }
        for _ in 0..STEPS_PER_CALL {
            let Some(step) = self.link.decide() else {
                return;
            };
            if self.up() {
                if step.generation == self.link.offered_for() {
                    // A live back-end closed on us (it logs why): as before, we stay off.
                    self.reconnect.abandoned = true;
                    return;
                }
                let now = timer::now();
                println!(
                    "net: back-end {} went away (generation {} -> {}); reconnecting, {} frames \
                     it had not given back go again (at {} us)",
                    self.link.backend,
                    self.link.offered_for(),
                    step.generation,
                    self.tx_out.out(),
                    timer::ticks_to_us(now)
                );
                self.reconnect.gone_at = Some(now);
                self.reconnect.data_before_gap = self.reconnect.last_data_at;
            }
            if step.next == State::Initialised {
                if let Err(why) = self.reset_rings() {
                    self.fail(why);
                    return;
                }
            }
            if let Err(why) = self.link.take(step, &self.offer) {
                self.fail(why);
                return;
            }
            if step.next == State::Connected {
                self.stats.reconnects += 1;
                self.reconnect.first_frame_due = true;
                self.reconnect.first_data_due = true;
                let (after_ms, at) = (self.since_gone_ms(), timer::now());
                if let Some(ip) = own_address() {
                    self.send_frame(&vm_net::gratuitous_arp(self.mac, ip));
                }
                // Publishes the announcement; the back-end looks at the fresh receive ring
                // when it hears from us.
                self.publish();
                let _ = evtchn::send(self.port);
                // Said once the announcement is out: a console line can take milliseconds
                // when every VM prints at once (as they do around a restart).
                println!(
                    "net: reconnected to back-end {} (generation {}) {after_ms} ms after it went \
                     away (at {} us)",
                    self.link.backend,
                    step.generation,
                    timer::ticks_to_us(at)
                );
                return;
            }
        }
    }

    fn since_gone_ms(&self) -> u64 {
        self.reconnect
            .gone_at
            .map_or(0, |at| timer::ticks_to_ms(timer::now().saturating_sub(at)))
    }

    /// A frame of `len` bytes arrived: the figures of a recovery.
    /// A frame of `len` bytes arrived at `now_us` (the stack's clock: no counter read per
    /// frame, which under TCG cost 13 % of a receiving guest's samples, issue 11).
    pub(super) fn on_rx(&mut self, len: usize, now_us: u64) {
        if self.reconnect.first_frame_due {
            let now = timer::now();
            self.reconnect.first_frame_due = false;
            println!(
                "net: first frame through the back-end again {} ms after it went away (at {} \
                 us)",
                self.since_gone_ms(),
                timer::ticks_to_us(now)
            );
        }
        if len >= DATA_FRAME {
            if self.reconnect.first_data_due && self.reconnect.data_before_gap != 0 {
                self.reconnect.first_data_due = false;
                let gap = now_us.saturating_sub(self.reconnect.data_before_gap) / 1000;
                self.stats.longest_data_gap_ms = self.stats.longest_data_gap_ms.max(gap);
                println!("net: data frames again after a gap of {gap} ms");
            }
            self.reconnect.last_data_at = now_us;
        }
    }

    /// Empty rings over the same pages, every receive buffer offered, the frames the old
    /// back-end had not given back queued again oldest first (not published: that waits for
    /// `Connected`), every other transmit buffer free: what a new back-end's queues (starting
    /// from index zero) expect. At most the ring's transmit buffers go again.
    fn reset_rings(&mut self) -> Result<(), String> {
        for ring in [self.tx_ring, self.rx_ring] {
            for at in (0..RING_PAGE_LEN).step_by(2) {
                ring.store_u16(at, 0);
            }
        }
        self.tx =
            DriverQueue::new(self.tx_ring, self.pool_pages, true).map_err(|e| format!("{e}"))?;
        let mut rx =
            DriverQueue::new(self.rx_ring, self.pool_pages, true).map_err(|e| format!("{e}"))?;
        offer_rx_buffers(&mut rx, &self.plan)?;
        self.rx = rx;
        let again = self.tx_out.take_out();
        self.tx_free = tx_buffers(&self.plan);
        self.tx_free
            .retain(|b| !again.iter().any(|&(out, _)| out == *b));
        for (buffer, len) in again {
            let segment = Segment {
                offset: buffer_offset(usize::from(buffer), &self.plan) as u32,
                len,
            };
            self.tx
                .add_tagged(&[segment], false, buffer)
                .map_err(|e| format!("sending transmit buffer {buffer} again: {e}"))?;
            self.tx_out.sent(buffer, len);
            self.stats.tx_resent += 1;
        }
        Ok(())
    }
}

impl super::NetFront {
    /// Sleeps until [`NetFront::port`](super::NetFront) has an event (taken), or, while the
    /// rings are connected, the control port has one (left for [`Rings::service`]: the back-end
    /// may have gone away), or `timeout_ticks` pass. Waiting on the data port alone, an idle
    /// guest slept through a restart of its back-end until its own timer ran out.
    pub fn wait(&mut self, timeout_ticks: u64) {
        let port = self.port;
        let control = match &self.path {
            super::Path::Paravirt(r) if r.up() => Some(r.link.control_port),
            _ => None,
        };
        // A new balloon target (issue 16) ends the wait too: the app follows it at once.
        let balloon = vm_runtime::balloon::target_changed;
        if evtchn::take(port) || control.is_some_and(evtchn::pending) || balloon() {
            return;
        }
        let deadline = timer::now().saturating_add(timeout_ticks);
        timer::wait_until(deadline, || {
            evtchn::take(port) || control.is_some_and(evtchn::pending) || balloon()
        });
    }
}

/// This guest's IPv4 address, from its `ip` setting (CIDR), if it has one.
fn own_address() -> Option<Ipv4Address> {
    let cidr = vm_runtime::setting(vm_runtime::start_info().settings, "ip")?;
    cidr.split('/').next()?.parse().ok()
}
