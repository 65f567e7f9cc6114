//! The driver domain's data plane: the learning switch (`switch`, host-tested) wired to its
//! ports — the NIC (uplink), the driver domain's own IP endpoint (local port, `vm_net`), one
//! back-end per connected para-virtual guest (`netback`), and one device model per guest with
//! the emulated NIC (`emunic`), which is a guest port like the others (same identity rules).
//!
//! One call to [`Fabric::pump`] is one round of the main loop: take what each port has to send
//! (bounded per port, so one busy guest cannot starve the others or the NIC), ask the switch
//! where each frame goes, copy it there — once per destination, straight from where it is (a
//! guest's pool, a NIC buffer) to where it goes (another guest's pool, a NIC buffer) — and
//! then send each guest at most one event. Nothing is queued inside the driver domain except
//! the local endpoint's few frames. A guest's frame for one other guest whose ring has no room
//! waits in its sender's port, in the sender's own buffer, its later frames behind it
//! (back-pressure, `driver_domain::backpressure`: at most `HOLD_MS`); any other frame for a
//! destination with no free buffer is dropped (counted), as a switch with a full egress queue
//! would.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use driver_domain::backpressure::{Held, Holds, StillFull, HOLD_MS, UNRESPONSIVE_MS};
use driver_domain::budget::RoundRobin;
use driver_domain::csum::{self, Verdict};
use driver_domain::switch::{self, Config, Forward, MacAddr, PortId, Switch};
use driver_domain::vif::{Assignment, Vifs};
use shared_abi::virtq::{
    Chain, Direction, NetHdr, TxHeader, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
};
use smoltcp::time::Duration;
use smoltcp::wire::{IpCidr, Ipv4Address};
use vm_net::budget::FrameBudget;
use vm_net::frame_queues::FrameQueues;
use vm_net::iperf3::{ServerConfig, TestMarks};
use vm_net::{Buffers, Stack};
use vm_runtime::shared::SharedMem;
use vm_runtime::{hypercall, println, timer};

use crate::emunic::EmuPort;
use crate::netback::{read_guest_frame, DeliverError, HeldTx, NetPort, TxItem, NIC_MAX_FRAME};
use crate::nic::{self, with_nic, Nic};

/// Frames taken from one port per round.
const FRAMES_PER_PORT_PER_ROUND: usize = 32;
/// Frames the local endpoint may have waiting in each direction.
const LOCAL_QUEUE_FRAMES: usize = 64;

/// The local endpoint's device: two small queues the fabric fills and drains.
pub type LocalPort = FrameQueues;

/// Where a frame being switched is.
// Lives on the stack for one dispatch; boxing the guest variant would allocate per frame.
#[allow(clippy::large_enum_variant)]
enum Source<'a> {
    /// In the driver domain's own memory (a NIC buffer, a local endpoint frame).
    Private(&'a [u8]),
    /// Still in a guest's pool: its TX chain and the headers read from it once.
    Guest {
        pool: SharedMem,
        chain: Chain,
        header: TxHeader,
    },
}

impl Source<'_> {
    fn len(&self) -> usize {
        match self {
            Source::Private(frame) => frame.len(),
            Source::Guest { header, .. } => header.frame_len,
        }
    }

    /// The start of the frame the switch decides on (for a guest's frame, the head read once).
    fn header(&self) -> &[u8] {
        match self {
            Source::Private(frame) => frame,
            Source::Guest { header, .. } => header.head(),
        }
    }

    /// Whether the frame's TCP/UDP checksum was left to us (an offloading guest's frame).
    fn needs_csum(&self) -> bool {
        match self {
            Source::Private(_) => false,
            Source::Guest { header, .. } => header.hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0,
        }
    }

    /// Copies the whole frame into `dst` (which is `len()` bytes).
    fn copy_into(&self, dst: &mut [u8]) {
        match self {
            Source::Private(frame) => dst.copy_from_slice(frame),
            Source::Guest {
                pool,
                chain,
                header,
            } => read_guest_frame(pool, chain, header, dst),
        }
    }
}

/// A connected guest as the fabric sees it: its VM id and its network port, if its connection
/// carries one. The back-end's `Connection` implements it; the data plane sits below the
/// handshake code and does not name it.
pub trait GuestLink {
    fn frontend(&self) -> u16;
    fn net(&self) -> Option<&NetPort>;
    fn net_mut(&mut self) -> Option<&mut NetPort>;
}

/// What became of a frame the fabric switched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Switched {
    /// Sent on to its destinations (a destination that could not take it counted the drop).
    Forwarded,
    /// Refused by the switch (spoofed, say).
    Refused,
    /// A guest's frame for guest `to` alone, whose ring had no room: it waits, and nothing was
    /// counted for it at the destination yet.
    Wait { to: u16 },
}

/// A guest whose port broke the protocol: the caller disconnects it.
pub struct Violation {
    pub guest: u16,
    pub reason: String,
}

pub struct Fabric {
    switch: Switch,
    /// Every guest's identity, from the topology: what its port is held to.
    pub vifs: Vifs,
    /// The driver domain's own endpoint (with a NIC only: it shares the NIC's MAC).
    pub local: Option<Stack<LocalPort>>,
    /// The switch's clock for this pump pass (ms), read once per pass: reading the counter is
    /// a QEMU helper call that ends a translated block, and once per frame it cost 12 % of
    /// the driver domain's samples in the guest <-> guest profile (issue 11).
    pass_ms: u64,
    has_uplink: bool,
    /// The device models of the guests with the emulated NIC; their frames are private
    /// copies (the device assembled them word by word), switched like the local endpoint's.
    pub emulated: Vec<EmuPort>,
    pub nic: NicCounters,
    pub csum: CsumOffload,
    /// The back-pressure rules for guests' frames that wait for their receivers.
    holds: Holds,
    /// With `iperf_accounting = true`: the local iperf3 server's tests are marked with
    /// ACCOUNTING_REPORT, tagged as the guests' iperf app tags them (the bench's passthrough
    /// costs per packet).
    pub iperf_marks: Option<TestMarks>,
    /// Which guest port this round serves first.
    round_robin: RoundRobin,
}

/// Checksum work done for offloading guests (see `csum`), with its counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct CsumOffload {
    /// Checksums filled in for frames leaving for a peer that checks.
    pub filled: u64,
    /// Frames from the outside checked for a guest that does not check.
    pub verified: u64,
    /// Frames dropped: a bad checksum from outside, or lengths that do not add up.
    pub dropped: u64,
}

impl CsumOffload {
    fn fill(&mut self, frame: &mut [u8]) -> bool {
        let ok = csum::fill(frame);
        if ok {
            self.filled += 1;
        } else {
            self.dropped += 1;
        }
        ok
    }

    fn verify(&mut self, frame: &[u8]) -> Verdict {
        let verdict = csum::verify(frame);
        match verdict {
            Verdict::Valid => self.verified += 1,
            Verdict::Invalid => self.dropped += 1,
            Verdict::NotApplicable => {}
        }
        verdict
    }
}

/// What went through the NIC, for the counters line.
#[derive(Clone, Copy, Debug, Default)]
pub struct NicCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames for the NIC dropped: its TX queue was full, the frame was bigger than its MTU,
    /// or a checksum to fill in did not add up.
    pub tx_errors: u64,
}

/// Frames switched between two rounds of guest events. A window arrives in a burst faster
/// than this domain forwards it; telling the guests only at the end of a round (up to
/// [`FRAMES_PER_PORT_PER_ROUND`] frames from every port) kept a receiver from starting, and
/// so from acknowledging, until most of the window had crossed (issue 11). A guest that is
/// awake asked for no event, so an early flush usually costs no event at all.
const FRAMES_PER_EVENT_FLUSH: usize = 8;
/// Bytes switched between two rounds of guest events: more than eight frames of the 9000-byte
/// MTU (those rounds end on the frame count), two of 64 KiB (the second crosses it; eight would
/// be half a 1 MiB window).
const BYTES_PER_EVENT_FLUSH: usize = 72 * 1024;

/// Publishes every guest port's completions and sends the events they asked for, and rings the
/// NIC's doorbells for the frames queued for it and the receive buffers given back to it since
/// the last flush (every round ends here, so none is held over a sleep). `now`: the round's
/// counter reading.
fn flush_events<G: GuestLink>(connections: &mut [G], now: u64) {
    if nic::doorbells_pending() {
        with_nic(Nic::ring_doorbells);
    }
    for conn in connections.iter_mut() {
        if let Some(port) = conn.net_mut() {
            port.flush_events(now);
        }
    }
}

/// After one more frame of `bytes` switched: flushes the guests' events once `since_flush`
/// (frames since the last flush) is spent.
fn count_for_events<G: GuestLink>(
    since_flush: &mut FrameBudget,
    bytes: usize,
    connections: &mut [G],
    now: u64,
) {
    since_flush.try_take(bytes);
    if since_flush.spent() {
        flush_events(connections, now);
        since_flush.reset();
    }
}

impl Fabric {
    /// A fabric with the NIC as uplink and the local endpoint on it when there is a NIC; the
    /// local endpoint also serves iperf3 if asked (the passthrough throughput figure).
    pub fn new(
        nic: Option<([u8; 6], IpCidr, Ipv4Address)>,
        iperf_server: bool,
        vifs: Vifs,
    ) -> Fabric {
        let mut switch = Switch::new(Config::default());
        // Every front-end's MAC from the topology, before any connects: a frame for a guest
        // that is not (or not yet again) connected is dropped, not flooded to the outside.
        for mac in vifs.macs() {
            switch.reserve_guest_mac(MacAddr(mac));
        }
        let mut local = None;
        if let Some((mac, address, gateway)) = nic {
            // Neither the NIC nor the endpoint (which announces the NIC's MSS) takes more.
            if switch.add_uplink().is_ok() {
                switch.set_max_frame(PortId::Uplink, NIC_MAX_FRAME);
            }
            if switch.add_local(MacAddr(mac)).is_ok() {
                switch.set_max_frame(PortId::Local, NIC_MAX_FRAME);
                let mut stack = Stack::new(
                    // The NIC's MTU: the endpoint shares the NIC's MAC and mostly talks to the
                    // outside, and its TCP MSS follows this. A back-end that honours the MSS we
                    // announce (passt, a tap peer; slirp clamps to its own) would otherwise send
                    // 9000-byte segments that the NIC's 2 KiB receive buffers cannot take.
                    LocalPort::new(NIC_MAX_FRAME, LOCAL_QUEUE_FRAMES),
                    mac,
                    address,
                    gateway,
                    Buffers::default(),
                );
                if iperf_server {
                    println!("{}", stack.serve_iperf3(ServerConfig::default()));
                }
                local = Some(stack);
            }
        }
        Fabric {
            switch,
            vifs,
            local,
            pass_ms: timer::ticks_to_ms(timer::now()),
            has_uplink: nic.is_some(),
            emulated: Vec::new(),
            nic: NicCounters::default(),
            csum: CsumOffload::default(),
            holds: Holds::new(),
            round_robin: RoundRobin::default(),
            iperf_marks: None,
        }
    }

    /// Connects guest `id`'s port, which may send only as `identity` (its MAC, and ARP and
    /// IPv4 from its address).
    pub fn add_guest(&mut self, id: u16, identity: &Assignment) -> Result<(), String> {
        self.switch
            .add_guest_with_ip(id, MacAddr(identity.mac), identity.ip)
            .map(|_| ())
            .map_err(|e| format!("switch port for front-end {id}: {e}"))
    }

    /// Connects the emulated NIC of guest `port.guest` as its switch port, held to `identity`
    /// like a para-virtual guest's.
    pub fn add_emulated(&mut self, port: EmuPort, identity: &Assignment) -> Result<(), String> {
        self.add_guest(port.guest, identity)?;
        self.switch
            .set_max_frame(PortId::Guest(port.guest), shared_abi::emunic::MAX_FRAME);
        self.emulated.push(port);
        Ok(())
    }

    /// Whether every emulated guest has stopped for good (the hypervisor tells each device
    /// model; see `emunic`).
    pub fn emulated_finished(&self) -> bool {
        self.emulated.iter().all(EmuPort::finished)
    }

    /// Disconnects guest `id`'s port, printing its last counters.
    pub fn remove_guest(&mut self, id: u16) {
        self.holds.forget(id);
        if let Some(line) = self.switch.port_summary(PortId::Guest(id)) {
            println!("switch port closed: {line}");
        }
        self.switch.remove_port(PortId::Guest(id));
    }

    /// One round at counter reading `now` (the caller's, for its whole round): moves what every
    /// port has to send. Returns whether any frame moved and the guests that broke the
    /// protocol (to disconnect outside this loop).
    pub fn pump<G: GuestLink>(
        &mut self,
        connections: &mut [G],
        now: u64,
    ) -> (bool, Vec<Violation>) {
        let mut moved = false;
        let mut violations = Vec::new();
        let mut since_flush = FrameBudget::new(FRAMES_PER_EVENT_FLUSH, BYTES_PER_EVENT_FLUSH);
        self.pass_ms = timer::ticks_to_ms(now);

        // The NIC: frames from the outside, dispatched from the NIC's own buffer.
        if self.has_uplink {
            nic::NEWS.store(false, core::sync::atomic::Ordering::Release);
            for _ in 0..FRAMES_PER_PORT_PER_ROUND {
                if !self.local_has_room() {
                    // Back-pressure: what the NIC holds waits in its ring (and behind it in
                    // the host's back-end) until the stack below has run. Without it a burst
                    // larger than the local queue lost segments, the stack answered each
                    // later one with a duplicate ACK, and passt retransmitted its whole
                    // window per duplicate: a storm that ended in a reset. The NIC has work
                    // left, so this round counts as moving.
                    moved = true;
                    break;
                }
                let Some(frame) = with_nic(|nic| nic.receive()).flatten() else {
                    break;
                };
                let bytes = frame.packet_len();
                self.nic.rx_frames += 1;
                self.nic.rx_bytes += bytes as u64;
                let source = Source::Private(frame.packet());
                self.dispatch(PortId::Uplink, &source, connections, &mut violations);
                with_nic(|nic| nic.recycle(frame));
                moved = true;
                count_for_events(&mut since_flush, bytes, connections, now);
            }
        }

        // The local endpoint: run its stack when it has work (frames from the switch, or a
        // send or timer due now: smoltcp's poll delay is zero then), then switch what it sent.
        // Most rounds carry only guest traffic; polling an idle stack there is wasted.
        if let Some(local) = self.local.as_mut() {
            if !local.device.to_stack.is_empty()
                || local.poll_delay_at(vm_net::instant_at(now)) == Some(Duration::ZERO)
            {
                local.poll();
                while let Some(event) = local.iperf3_server().and_then(|s| s.next_event()) {
                    println!("{event}");
                    if let Some(tag) = self.iperf_marks.as_mut().and_then(|m| m.tag(&event)) {
                        // Refused only by a hypervisor without accounting: no figures then.
                        let _ = hypercall::accounting_report(tag);
                    }
                }
            }
        }
        for _ in 0..FRAMES_PER_PORT_PER_ROUND {
            let Some(frame) = self
                .local
                .as_mut()
                .and_then(|l| l.device.from_stack.pop_front())
            else {
                break;
            };
            let source = Source::Private(&frame);
            self.dispatch(PortId::Local, &source, connections, &mut violations);
            moved = true;
        }

        // The guests: each frame is checked, switched, copied from its pool to each
        // destination, and only then completed.
        for i in self.round_robin.round(connections.len()) {
            let guest = connections[i].frontend();
            // A frame that waits for its receiver goes first; while it waits, nothing of this
            // guest's moves.
            if let Some(held) = connections[i].net_mut().and_then(NetPort::take_held) {
                let bytes = held.frame.header.frame_len;
                if let Some(held) = self.retry_held(guest, held, connections, &mut violations) {
                    if let Some(port) = connections[i].net_mut() {
                        port.hold(held);
                    }
                    continue;
                }
                moved = true;
                count_for_events(&mut since_flush, bytes, connections, now);
            }
            for _ in 0..FRAMES_PER_PORT_PER_ROUND {
                let Some(port) = connections[i].net_mut() else {
                    break;
                };
                let pool = port.pool();
                match port.take_tx() {
                    Ok(TxItem::Frame { chain, header }) => {
                        let bytes = header.frame_len;
                        let source = Source::Guest {
                            pool,
                            chain,
                            header,
                        };
                        let switched = self.dispatch(
                            PortId::Guest(guest),
                            &source,
                            connections,
                            &mut violations,
                        );
                        moved = true;
                        if let Switched::Wait { to } = switched {
                            let held = self.holds.hold(HeldTx { chain, header }, to, self.pass_ms);
                            if let Some(port) = connections[i].net_mut() {
                                port.hold(held);
                            }
                            break;
                        }
                        if let Some(port) = connections[i].net_mut() {
                            port.complete_tx(chain.head(), switched == Switched::Forwarded);
                        }
                        count_for_events(&mut since_flush, bytes, connections, now);
                    }
                    Ok(TxItem::Dropped) => moved = true,
                    Ok(TxItem::Empty) => break,
                    Err(e) => {
                        violations.push(Violation {
                            guest,
                            reason: format!("TX ring: {e}"),
                        });
                        break;
                    }
                }
            }
        }

        // The emulated NICs: one pass over each request page (at most one answer per vCPU,
        // so at most that many frames), then the frames their guests completed.
        let mut sent = Vec::new();
        for i in 0..self.emulated.len() {
            let guest = self.emulated[i].guest;
            moved |= self.emulated[i].serve(&mut sent) > 0;
            for frame in sent.drain(..) {
                let source = Source::Private(&frame);
                // A private frame never waits (only a guest's pool frame can).
                let _ = self.dispatch(PortId::Guest(guest), &source, connections, &mut violations);
            }
        }

        flush_events(connections, now);
        (moved, violations)
    }

    /// Sends a frame received on `ingress` where the switch says, one copy per destination.
    /// A guest's frame for one other guest whose ring has no room comes back as
    /// [`Switched::Wait`] (not delivered, not counted there yet), unless that receiver let a
    /// hold run out lately.
    fn dispatch<G: GuestLink>(
        &mut self,
        ingress: PortId,
        source: &Source<'_>,
        connections: &mut [G],
        violations: &mut Vec<Violation>,
    ) -> Switched {
        let len = source.len();
        let decision = self
            .switch
            .forward_header(ingress, source.header(), len, self.pass_ms);
        if let Forward::Drop(reason) = decision {
            let count = self
                .switch
                .counters(ingress)
                .map_or(0, |c| c.drops.of(reason));
            if switch::worth_logging(count) {
                println!("switch port {ingress}: dropped a frame: {reason} ({count} so far)");
            }
            return Switched::Refused;
        }
        // Only a guest's frame can wait (it stays in the guest's buffer), and only for one
        // receiver: a flood goes on to the ports that have room.
        let may_wait = matches!(source, Source::Guest { .. })
            && matches!(decision, Forward::One(PortId::Guest(_)));
        // A guest's frame whose TCP/UDP checksum it left to us; a frame from the NIC that a
        // checksum-offloading guest will not check itself (checked once, on first need).
        let needs_csum = source.needs_csum();
        let mut outside_verdict: Option<Verdict> = None;
        for port in decision.destinations() {
            if !self.switch.try_reserve(port, len) {
                continue;
            }
            match port {
                PortId::Uplink => {
                    let csum = &mut self.csum;
                    // `try_reserve` held the frame to the uplink's largest (NIC_MAX_FRAME).
                    let sent = with_nic(|nic| {
                        nic.send(len, |frame| {
                            source.copy_into(frame);
                            !needs_csum || csum.fill(frame)
                        })
                    });
                    if sent == Some(true) {
                        self.nic.tx_frames += 1;
                        self.nic.tx_bytes += len as u64;
                    } else {
                        self.nic.tx_errors += 1;
                    }
                }
                PortId::Local => {
                    if let Some(local) = self.local.as_mut() {
                        if local.device.to_stack.len() < LOCAL_QUEUE_FRAMES {
                            let mut frame = vec![0; len];
                            source.copy_into(&mut frame);
                            if !needs_csum || self.csum.fill(&mut frame) {
                                local.device.to_stack.push_back(frame);
                            }
                        } else {
                            // Counted, never silent: a lost segment here once set off a
                            // retransmission storm with passt (see `local_has_room`).
                            self.switch.refuse_reserved(port, len);
                            continue;
                        }
                    }
                }
                PortId::Guest(id) if self.emulated.iter().any(|p| p.guest == id) => {
                    // The device takes frames from private memory: a para-virtual guest's is
                    // copied out of its pool first, with the checksum it left to us (the
                    // emulated guest checks checksums).
                    let mut copy = Vec::new();
                    let frame = match source {
                        Source::Private(frame) => *frame,
                        Source::Guest { .. } => {
                            copy.resize(len, 0);
                            source.copy_into(&mut copy);
                            if needs_csum && !self.csum.fill(&mut copy) {
                                continue;
                            }
                            &copy
                        }
                    };
                    if let Some(port) = self.emulated.iter_mut().find(|p| p.guest == id) {
                        port.deliver(frame);
                    }
                }
                PortId::Guest(id) => {
                    let Some(target) = connections
                        .iter_mut()
                        .find(|c| c.frontend() == id)
                        .and_then(G::net_mut)
                    else {
                        continue;
                    };
                    let delivered = to_guest(
                        &mut self.csum,
                        target,
                        ingress,
                        source,
                        needs_csum,
                        &mut outside_verdict,
                    );
                    match delivered {
                        Some(Err(DeliverError::NoBuffer))
                            if may_wait && self.holds.may_hold(id, self.pass_ms) =>
                        {
                            target.count_held();
                            self.switch.unreserve(port, len);
                            return Switched::Wait { to: id };
                        }
                        Some(Err(DeliverError::NoBuffer)) => target.count_no_buffer(),
                        Some(Err(DeliverError::Violation(e))) => violations.push(Violation {
                            guest: id,
                            reason: format!("RX ring: {e}"),
                        }),
                        _ => {}
                    }
                }
            }
            // Nothing waits inside the driver domain: the copy is done, the room is free.
            self.switch.release(port, len);
        }
        Switched::Forwarded
    }

    /// Offers guest `sender`'s held frame to its receiver again: delivered if it has room now,
    /// dropped if its hold ran out (that receiver then gets no holds for a while) or it is gone.
    /// The sender's chain is completed unless the frame waits on: then it comes back, to be
    /// held again.
    fn retry_held<G: GuestLink>(
        &mut self,
        sender: u16,
        held: Held<HeldTx>,
        connections: &mut [G],
        violations: &mut Vec<Violation>,
    ) -> Option<Held<HeldTx>> {
        // A sender that left took its frame with it.
        let pool = connections
            .iter()
            .find(|c| c.frontend() == sender)
            .and_then(G::net)
            .map(NetPort::pool)?;
        let source = Source::Guest {
            pool,
            chain: held.frame.chain,
            header: held.frame.header,
        };
        let (len, port) = (source.len(), PortId::Guest(held.to));
        let target = connections
            .iter_mut()
            .find(|c| c.frontend() == held.to)
            .and_then(G::net_mut);
        // A receiver that left (or a port the switch no longer has): the frame goes nowhere.
        if let Some(target) = target.filter(|_| self.switch.try_reserve(port, len)) {
            let delivered = to_guest(
                &mut self.csum,
                target,
                PortId::Guest(sender),
                &source,
                source.needs_csum(),
                &mut None,
            );
            match delivered {
                Some(Err(DeliverError::NoBuffer)) => {
                    self.switch.unreserve(port, len);
                    if self.holds.still_full(&held, self.pass_ms) == StillFull::Wait {
                        return Some(held);
                    }
                    target.count_no_buffer();
                    println!(
                        "front-end {}: a frame from front-end {sender} waited {HOLD_MS} ms for \
                         a receive buffer and was dropped; frames for it are not held for the \
                         next {UNRESPONSIVE_MS} ms",
                        held.to
                    );
                }
                Some(Err(DeliverError::Violation(e))) => {
                    violations.push(Violation {
                        guest: held.to,
                        reason: format!("RX ring: {e}"),
                    });
                    self.switch.release(port, len);
                }
                _ => {
                    self.holds.delivered(&held);
                    self.switch.release(port, len);
                }
            }
        }
        if let Some(port) = connections
            .iter_mut()
            .find(|c| c.frontend() == sender)
            .and_then(G::net_mut)
        {
            port.complete_tx(held.frame.chain.head(), true);
        }
        None
    }

    /// Whether the local endpoint can take one more frame (or there is none).
    fn local_has_room(&self) -> bool {
        self.local
            .as_ref()
            .is_none_or(|l| l.device.to_stack.len() < LOCAL_QUEUE_FRAMES)
    }

    /// Before sleeping: re-arms every guest's TX event, and for each held frame asks its
    /// receiver for an event once it has room; true if a guest already has frames that can
    /// move, or a held frame's receiver has room (or is gone) (then do not sleep).
    pub fn arm<G: GuestLink>(&self, connections: &[G]) -> bool {
        let mut waiting = false;
        for conn in connections {
            let Some(port) = conn.net() else {
                continue;
            };
            waiting |= port.arm();
            if let Some(held) = port.held() {
                waiting |= connections
                    .iter()
                    .find(|c| c.frontend() == held.to)
                    .and_then(G::net)
                    .is_none_or(|target| target.notify_when_room(held.frame.header.frame_len));
            }
        }
        waiting
    }

    /// When the earliest hold runs out (counter ticks): the loop must look again by then, as
    /// a receiver that never makes room sends no event.
    pub fn hold_ends_at<G: GuestLink>(&self, connections: &[G]) -> Option<u64> {
        connections
            .iter()
            .filter_map(|c| c.net()?.held())
            .map(|held| timer::ms_to_ticks(held.expires_ms()))
            .min()
    }

    /// The earliest time (counter ticks) an event held back by a guest's event budget may go:
    /// the loop must look again by then, or that guest may sleep on.
    pub fn owed_event_at<G: GuestLink>(&self, connections: &[G]) -> Option<u64> {
        connections
            .iter()
            .filter_map(|c| c.net()?.owed_event_at())
            .min()
    }

    /// When the local endpoint next needs to run, in microseconds.
    pub fn poll_delay_us(&mut self) -> Option<u64> {
        let local = self.local.as_mut()?;
        if !local.device.to_stack.is_empty() {
            return Some(0);
        }
        local.poll_delay_us()
    }

    /// The switch's counters table, and each emulated NIC's line.
    pub fn print_counters(&self) {
        println!("{}", self.switch);
        for port in &self.emulated {
            println!("{}", port.summary());
        }
    }
}

/// Delivers a switched frame to the para-virtual guest `target` as it wants it: a frame from
/// the outside checked for a guest that does not check checksums itself (`outside_verdict`:
/// checked once for all destinations), a guest's frame whose checksum it left to us filled in
/// for a guest that checks. `None`: dropped here for its checksum (counted in `csum`).
fn to_guest(
    csum: &mut CsumOffload,
    target: &mut NetPort,
    ingress: PortId,
    source: &Source<'_>,
    needs_csum: bool,
    outside_verdict: &mut Option<Verdict>,
) -> Option<Result<(), DeliverError>> {
    let offloads = target.csum_offload();
    Some(match source {
        Source::Private(frame) if ingress == PortId::Uplink && offloads => {
            let verdict = *outside_verdict.get_or_insert_with(|| csum.verify(frame));
            let mut hdr = NetHdr::plain(Direction::Rx);
            match verdict {
                Verdict::Invalid => return None,
                Verdict::Valid => hdr.flags = VIRTIO_NET_HDR_F_DATA_VALID,
                Verdict::NotApplicable => {}
            }
            target.deliver(frame, &hdr)
        }
        Source::Private(frame) => target.deliver(frame, &NetHdr::plain(Direction::Rx)),
        Source::Guest {
            pool,
            chain,
            header,
        } if offloads || !needs_csum => {
            // NEEDS_CSUM travels on: the receiver does not check either.
            let hdr = NetHdr {
                num_buffers: 1,
                ..header.hdr
            };
            target.deliver_from(pool, chain, header, &hdr)
        }
        Source::Guest { .. } => {
            // A guest that checks gets a completed copy (the rare path: two copies, as it
            // needs the whole frame in hand).
            let mut frame = vec![0; source.len()];
            source.copy_into(&mut frame);
            if !csum.fill(&mut frame) {
                return None;
            }
            target.deliver(&frame, &NetHdr::plain(Direction::Rx))
        }
    })
}
