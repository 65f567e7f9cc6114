//! The network back-end of one connected guest: its two rings and its buffer pool, mapped once
//! at connect time from the refs the handshake names, and the device side of both queues
//! (`shared_abi::virtq::DeviceQueue`), which validates everything the guest wrote.
//!
//! The port moves frames only when asked by the switch loop (`fabric`): [`NetPort::take_tx`]
//! checks the next frame the guest sends and reads its headers once (the switch decides on
//! that copy, and every destination gets that copy of the frame's first `TX_HEAD_LEN` bytes,
//! so a guest that rewrites its buffer meanwhile cannot smuggle another source MAC, ARP
//! sender or IPv4 source past the check);
//! [`NetPort::deliver_from`] then copies the body straight from that guest's pool into
//! another guest's receive buffers (one copy; with mergeable receive buffers a frame may take
//! several, see `DeviceQueue::deliver`), [`NetPort::deliver`] does the same for frames
//! from the NIC or the local endpoint, and [`NetPort::complete_tx`] gives the chain back with
//! the switch's verdict. Events go out at most once per loop round, and only when the guest asked
//! for one (event index), in [`NetPort::flush_events`]. A frame for another guest whose ring
//! has no room waits in its sender's port ([`NetPort::hold`], see
//! `driver_domain::backpressure`), its chain not completed, the sender's later frames behind it.

use alloc::format;
use alloc::string::String;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use shared_abi::handshake::Frontend;
use shared_abi::virtq::{
    copy_plan, Chain, DeviceQueue, Direction, NetFeatures, NetHdr, QueueError, RingLayout,
    RxOutcome, TxHeader, FEATURE_EVENT_IDX, FEATURE_MRG_RXBUF, MAX_MERGED_BUFFERS, NET_HDR_LEN,
    TX_DROPPED, TX_OK,
};
use vm_runtime::grant::{self, MappedRun, Mapping};
use vm_runtime::shared::SharedMem;
use vm_runtime::{evtchn, timer};

use driver_domain::backpressure::Held;
use driver_domain::budget::EventWindow;

/// Largest pool a guest may ask us to map: our grant-window and mapping budget per guest.
pub const MAX_POOL_PAGES: u32 = shared_abi::virtq::POOL_BUDGET_PAGES;
/// Largest frame we accept from a guest (net header excluded): a 64 KiB IP packet between
/// guests. The switch holds frames for the NIC to its 1514 ([`NIC_MAX_FRAME`]).
pub const MAX_TX_FRAME: usize = shared_abi::virtq::MAX_ETH_FRAME;
/// Largest frame the NIC (and the outside behind it) takes: standard Ethernet without FCS.
pub const NIC_MAX_FRAME: usize = 1514;
/// Most events we send one guest per second; beyond that, events wait for the next second's
/// budget (the guest sees its rings anyway when it polls).
const EVENTS_PER_SECOND: u32 = 20_000;
/// Receive buffers too short for any frame given back per frame delivered (over all the
/// buffers a merged frame takes), at most: beyond that the frame is dropped as if the ring
/// were empty.
const SHORT_RX_PER_FRAME: u32 = 4;

/// What a guest's port did, for the counters line.
#[derive(Clone, Copy, Debug, Default)]
pub struct PortStats {
    pub tx_frames: u64,
    pub tx_bad_frames: u64,
    pub rx_frames: u64,
    /// Frames dropped because the guest offered too few receive buffers (after a hold ran
    /// out, or where no hold applies: frames from the NIC, floods).
    pub rx_no_buffer: u64,
    /// Frames from other guests that found too few receive buffers and waited for them
    /// (delivered later, or counted in `rx_no_buffer` if the wait ran out).
    pub rx_held: u64,
    /// Receive buffers too short for any frame, given back empty.
    pub rx_short_buffers: u64,
    /// Frames dropped because the buffers offered could not hold them (without mergeable
    /// buffers one too short; with them more than a frame may take).
    pub rx_too_small: u64,
    pub events_sent: u64,
    pub events_suppressed: u64,
    /// Why the last bad frame was dropped.
    pub last_bad_frame: Option<QueueError>,
    /// Frame bytes of the well-formed frames the guest sent (before the switch's verdict).
    pub tx_bytes: u64,
    /// Frame bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Bytes we copied into the guest's receive buffers (net header and frame): the bench's
    /// count of this copy site.
    pub copied_to_guest: u64,
    /// Frames delivered over more than one receive buffer (mergeable buffers).
    pub rx_merged_frames: u64,
}

/// Bytes [`read_guest_frame`] copied out of any guest's pool (toward the NIC, the local
/// endpoint or a guest that checks its checksums), for the bench's count of copies. One
/// counter for the driver domain: the copy does not know its port.
static COPIED_FROM_GUESTS: AtomicU64 = AtomicU64::new(0);

impl PortStats {
    /// The `netback <guest> k=v ...` line printed when the port closes, which the bench
    /// parses (`bench::BackendStats`): this port's counters over its connection, and the
    /// driver domain's [`COPIED_FROM_GUESTS`] so far.
    pub fn line(&self, guest: u16) -> String {
        format!(
            "netback {guest} tx_frames={} tx_bytes={} rx_frames={} rx_bytes={} \
             copied_to_guest={} events_sent={} events_suppressed={} copied_from_guests={}",
            self.tx_frames,
            self.tx_bytes,
            self.rx_frames,
            self.rx_bytes,
            self.copied_to_guest,
            self.events_sent,
            self.events_suppressed,
            COPIED_FROM_GUESTS.load(Ordering::Relaxed)
        )
    }

    /// A second `netback <guest> k=v ...` line, with the receive side's drops and waits: the
    /// first is near the console's 200 bytes already, and a line cut there loses its last
    /// value (the bench's reader merges the lines of a guest).
    pub fn receive_line(&self, guest: u16) -> String {
        format!(
            "netback {guest} rx_no_buffer={} rx_held={}",
            self.rx_no_buffer, self.rx_held
        )
    }
}

/// Why a frame could not be delivered to a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliverError {
    /// The guest offered no receive buffer (it is not draining its ring).
    NoBuffer,
    /// The offered buffer is too small for the frame: the buffer is given back empty.
    TooSmall,
    /// The guest broke the protocol on its receive ring.
    Violation(QueueError),
}

/// The next thing a guest's TX ring holds.
// Returned once per frame on the stack; boxing the frame's variant would allocate per frame.
#[allow(clippy::large_enum_variant)]
pub enum TxItem {
    /// A frame, still in the guest's pool: its chain (to copy from, then to complete with
    /// [`NetPort::complete_tx`]) and its headers, read once and checked.
    Frame {
        chain: Chain,
        header: TxHeader,
    },
    /// A bad frame, already completed with `TX_DROPPED`.
    Dropped,
    Empty,
}

/// A frame of this port's guest, taken from its TX ring and not yet completed, that waits for
/// another guest's receive buffers.
#[derive(Clone, Copy, Debug)]
pub struct HeldTx {
    pub chain: Chain,
    pub header: TxHeader,
}

pub struct NetPort {
    guest: u16,
    tx_ring: Mapping,
    rx_ring: Mapping,
    pool_run: MappedRun,
    pool: SharedMem,
    tx: DeviceQueue<SharedMem>,
    rx: DeviceQueue<SharedMem>,
    features: NetFeatures,
    pub port: u32,
    /// used.idx of each queue at the last flush, to decide about events.
    tx_used_flushed: u16,
    rx_used_flushed: u16,
    /// At most [`EVENTS_PER_SECOND`] events a second to this guest; one held back is owed.
    events: EventWindow,
    /// Our guest's frame that waits for its receiver (nothing more is taken from the TX ring
    /// meanwhile, so its frames stay in order).
    held: Option<Held<HeldTx>>,
    pub stats: PortStats,
}

/// Features we offer: the net ring protocol, event-index suppression, checksum offload (we
/// fill in checksums for frames that leave the machine and check those that come in: see
/// `csum`) and mergeable receive buffers.
pub const OFFERED_FEATURES: u64 = shared_abi::virtq::FEATURE_NET
    | FEATURE_EVENT_IDX
    | shared_abi::virtq::FEATURE_CSUM
    | FEATURE_MRG_RXBUF;

impl NetPort {
    /// Maps what `section` names and binds its data port. On error nothing stays mapped or
    /// bound and the reason says what the guest got wrong.
    pub fn attach(guest: u16, section: &Frontend) -> Result<NetPort, String> {
        let layout = RingLayout::from_frontend(section).map_err(|e| format!("ring layout: {e}"))?;
        if layout.pool_pages > MAX_POOL_PAGES {
            return Err(format!(
                "pool of {} pages is more than the {MAX_POOL_PAGES} a guest may have mapped",
                layout.pool_pages
            ));
        }
        let features = NetFeatures::from_bits(section.features & OFFERED_FEATURES)
            .ok_or_else(|| format!("unsupported features {:#x}", section.features))?;
        let tx_ring = grant::map(guest, layout.tx_ring_ref, false)
            .map_err(|e| format!("cannot map TX ring ref {}: {e:?}", layout.tx_ring_ref))?;
        let rx_ring = match grant::map(guest, layout.rx_ring_ref, false) {
            Ok(m) => m,
            Err(e) => {
                let _ = tx_ring.unmap();
                return Err(format!(
                    "cannot map RX ring ref {}: {e:?}",
                    layout.rx_ring_ref
                ));
            }
        };
        // The transmit part read-only, as the guest granted it: it builds frames there in place.
        let pool_run = match grant::map_run(
            guest,
            layout.pool_first_ref,
            layout.pool_pages,
            layout.pool_writable,
        ) {
            Ok(run) => run,
            Err(e) => {
                let _ = tx_ring.unmap();
                let _ = rx_ring.unmap();
                return Err(format!(
                    "cannot map pool refs {}..{}: {e:?}",
                    layout.pool_first_ref,
                    layout.pool_first_ref + layout.pool_pages
                ));
            }
        };
        let port = match evtchn::bind_interdomain(guest, section.data_port) {
            Ok(port) => port,
            Err(e) => {
                let _ = tx_ring.unmap();
                let _ = rx_ring.unmap();
                let _ = pool_run.unmap();
                return Err(format!("cannot bind port {}: {e:?}", section.data_port));
            }
        };
        let event_idx = features.event_idx;
        let pages = layout.pool_pages;
        // The layout was validated, so these cannot fail.
        let tx = DeviceQueue::new(tx_ring.memory(), Direction::Tx, pages, event_idx)
            .map_err(|e| format!("{e}"))?;
        // Receive buffers only in the writable part: a guest naming a read-only page would
        // otherwise make us fault on our own store (a ring violation instead).
        let rx = DeviceQueue::new(
            rx_ring.memory(),
            Direction::Rx,
            layout.pool_writable,
            event_idx,
        )
        .map_err(|e| format!("{e}"))?;
        let pool = pool_run.memory();
        Ok(NetPort {
            guest,
            tx_ring,
            rx_ring,
            pool_run,
            pool,
            tx,
            rx,
            features,
            port,
            tx_used_flushed: 0,
            rx_used_flushed: 0,
            events: EventWindow::new(EVENTS_PER_SECOND, timer::ms_to_ticks(1000), timer::now()),
            held: None,
            stats: PortStats::default(),
        })
    }

    pub fn features(&self) -> u64 {
        self.features.bits()
    }

    /// Whether the guest leaves TCP/UDP checksums to us (and does not check them).
    pub fn csum_offload(&self) -> bool {
        self.features.csum
    }

    /// The next frame the guest sends, checked but not copied. A violation is returned as
    /// `Err` and ends the port; the caller disconnects it.
    pub fn take_tx(&mut self) -> Result<TxItem, QueueError> {
        let chain = match self.tx.pop() {
            Ok(Some(chain)) => chain,
            Ok(None) => return Ok(TxItem::Empty),
            Err(e) if e.is_violation() => return Err(e),
            Err(e) => {
                self.drop_bad(e);
                return Ok(TxItem::Dropped);
            }
        };
        match chain.read_tx_header(&self.pool, self.features.csum, MAX_TX_FRAME) {
            Ok(header) => {
                self.stats.tx_bytes += header.frame_len as u64;
                Ok(TxItem::Frame { chain, header })
            }
            Err(e) => {
                let _ = self.tx.push_used(chain.head(), TX_DROPPED);
                self.stats.tx_bad_frames += 1;
                self.stats.last_bad_frame = Some(e);
                Ok(TxItem::Dropped)
            }
        }
    }

    /// Keeps our guest's frame `held` until its receiver has room; take nothing from our TX
    /// ring until [`take_held`](Self::take_held) hands it back.
    pub fn hold(&mut self, held: Held<HeldTx>) {
        self.held = Some(held);
    }

    /// The frame waiting for its receiver, if any (taken out: hold it again if it must wait).
    pub fn take_held(&mut self) -> Option<Held<HeldTx>> {
        self.held.take()
    }

    /// The frame waiting for its receiver, if any.
    pub fn held(&self) -> Option<&Held<HeldTx>> {
        self.held.as_ref()
    }

    /// Another guest's frame of `frame_len` bytes found too few of our receive buffers and
    /// waits: asks our guest for an event once it has offered enough, and says whether it has
    /// already (then retry instead of sleeping).
    pub fn notify_when_room(&self, frame_len: usize) -> bool {
        self.rx.notify_when_room(frame_len, self.most_buffers())
    }

    /// Receive buffers one frame may take.
    fn most_buffers(&self) -> usize {
        if self.features.mergeable {
            usize::from(MAX_MERGED_BUFFERS)
        } else {
            1
        }
    }

    /// A frame for our guest is dropped for lack of receive buffers (counted here: a
    /// [`DeliverError::NoBuffer`] from a delivery that will be tried again is not a drop).
    pub fn count_no_buffer(&mut self) {
        self.stats.rx_no_buffer += 1;
    }

    /// A frame for our guest waits for receive buffers.
    pub fn count_held(&mut self) {
        self.stats.rx_held += 1;
    }

    /// The guest's pool, to copy a frame out of (valid while this port is attached: the
    /// fabric uses it within one round, before any disconnect).
    pub fn pool(&self) -> SharedMem {
        self.pool
    }

    fn drop_bad(&mut self, e: QueueError) {
        if let Some(head) = e.bad_frame_head() {
            let _ = self.tx.push_used(head, TX_DROPPED);
        }
        self.stats.tx_bad_frames += 1;
        self.stats.last_bad_frame = Some(e);
    }

    /// Gives a frame's chain back once the switch has dealt with it: `TX_OK` if it was
    /// forwarded, `TX_DROPPED` if the switch refused it (spoofed source, say).
    pub fn complete_tx(&mut self, head: u16, forwarded: bool) {
        let status = if forwarded { TX_OK } else { TX_DROPPED };
        let _ = self.tx.push_used(head, status);
        if forwarded {
            self.stats.tx_frames += 1;
        } else {
            self.stats.tx_bad_frames += 1;
        }
    }

    /// Writes `frame` (from our own memory: the NIC's or the local endpoint's) into the next
    /// receive buffers the guest offered. `hdr` is the receive header to give it (plain, or
    /// `DATA_VALID` for a checked frame).
    pub fn deliver(&mut self, frame: &[u8], hdr: &NetHdr) -> Result<(), DeliverError> {
        self.deliver_with(hdr, frame.len(), |pool, chain, at, bytes| {
            chain.write(pool, at, &frame[bytes]);
        })
    }

    /// Moves a frame from another guest's TX chain straight into our next receive buffers:
    /// headers from the checked copy, the body pool to pool, one copy in all. `hdr` is the
    /// receive header (it carries the sender's `NEEDS_CSUM` to a guest that offloads too).
    pub fn deliver_from(
        &mut self,
        src_pool: &SharedMem,
        src: &Chain,
        header: &TxHeader,
        hdr: &NetHdr,
    ) -> Result<(), DeliverError> {
        self.deliver_with(hdr, header.frame_len, |pool, chain, mut at, bytes| {
            let mut from = bytes.start;
            if from < header.head_len {
                let to = bytes.end.min(header.head_len);
                chain.write(pool, at, &header.head()[from..to]);
                at += to - from;
                from = to;
            }
            if from < bytes.end {
                copy_plan(
                    src,
                    NET_HDR_LEN + from,
                    chain,
                    at,
                    bytes.end - from,
                    |s, d, n| src_pool.copy_to(s, pool, d, n),
                );
            }
        })
    }

    /// Writes a frame of `frame_len` bytes behind `hdr` into the guest's receive buffers
    /// (`DeviceQueue::deliver`: one, or with mergeable buffers as many as it takes) and
    /// counts what happened. `write(pool, chain, at, bytes)` copies frame bytes `bytes` into
    /// `chain` from chain byte `at`.
    fn deliver_with(
        &mut self,
        hdr: &NetHdr,
        frame_len: usize,
        write: impl FnMut(&SharedMem, &Chain, usize, Range<usize>),
    ) -> Result<(), DeliverError> {
        let most = self.most_buffers();
        let done = self
            .rx
            .deliver(&self.pool, hdr, frame_len, most, SHORT_RX_PER_FRAME, write)
            .map_err(DeliverError::Violation)?;
        self.stats.rx_short_buffers += u64::from(done.skipped);
        match done.outcome {
            RxOutcome::Delivered { buffers } => {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += frame_len as u64;
                self.stats.copied_to_guest += (NET_HDR_LEN + frame_len) as u64;
                if buffers > 1 {
                    self.stats.rx_merged_frames += 1;
                }
                Ok(())
            }
            // Counted by the caller if it drops the frame (`count_no_buffer`).
            RxOutcome::NoBuffer => Err(DeliverError::NoBuffer),
            RxOutcome::TooSmall => {
                self.stats.rx_too_small += 1;
                Err(DeliverError::TooSmall)
            }
        }
    }

    /// Sends the guest one event if either queue completed chains it asked to hear about since
    /// the last flush, or an event the budget held back is owed, within the event budget.
    /// `now`: the caller's counter reading for its round (the budget counts per second, and
    /// under TCG each reading is a helper call that ends a translated block).
    pub fn flush_events(&mut self, now: u64) {
        let (tx_old, tx_new) = (self.tx_used_flushed, self.tx.used_idx());
        let (rx_old, rx_new) = (self.rx_used_flushed, self.rx.used_idx());
        let owed = self.events.owed();
        if tx_old == tx_new && rx_old == rx_new && !owed {
            return;
        }
        let wanted = self.tx.should_notify_driver(tx_old, tx_new)
            || self.rx.should_notify_driver(rx_old, rx_new);
        self.tx_used_flushed = tx_new;
        self.rx_used_flushed = rx_new;
        if !wanted && !owed {
            self.stats.events_suppressed += 1;
            return;
        }
        if !self.events.try_send(now) {
            // Owed: the driver domain's loop wakes for it at the next window
            // (`owed_event_at`), as the guest may be asleep waiting for exactly this.
            self.stats.events_suppressed += 1;
            return;
        }
        self.stats.events_sent += 1;
        let _ = evtchn::send(self.port);
    }

    /// When an event the budget held back may go (counter ticks), if one is owed.
    pub fn owed_event_at(&self) -> Option<u64> {
        self.events.owed_at()
    }

    /// Before the loop sleeps: re-arms the TX ring's event and says whether frames are already
    /// waiting (then the loop must not sleep: their event may have been suppressed). With a
    /// frame held, what waits behind it cannot move, so only the event is re-armed.
    pub fn arm(&self) -> bool {
        self.tx.enable_notify() && self.held.is_none()
    }

    /// Unmaps everything and closes the port; prints the port's counters line for the bench.
    pub fn detach(self) -> Result<(), String> {
        let _ = evtchn::close(self.port);
        let guest = self.guest;
        vm_runtime::println!("{}", self.stats.line(guest));
        vm_runtime::println!("{}", self.stats.receive_line(guest));
        // A line of its own (the counters line is near the console's 200 bytes): how the
        // driver domain's shared-memory copies went so far, in co-aligned 64-byte blocks or
        // word by word (co-aligned pool buffers make nearly all of copy 2 blocks; see
        // vm_runtime::shared).
        let copies = vm_runtime::shared::copy_counters();
        vm_runtime::println!(
            "shared copies (driver domain, all ports): bulk_bytes={} word_bytes={}",
            copies.bulk_bytes,
            copies.word_bytes
        );
        let results = [
            self.tx_ring.unmap(),
            self.rx_ring.unmap(),
            self.pool_run.unmap(),
        ];
        match results.iter().find(|r| r.is_err()) {
            Some(Err(e)) => Err(format!("front-end {guest}: unmap failed: {e:?}")),
            _ => Ok(()),
        }
    }
}

/// Copies a TX frame out of a guest's pool into `dst` (the first `header.frame_len` bytes):
/// the head from the checked copy, the rest from the pool, once.
pub fn read_guest_frame(pool: &SharedMem, chain: &Chain, header: &TxHeader, dst: &mut [u8]) {
    let len = header.frame_len.min(dst.len());
    let head = header.head_len.min(len);
    dst[..head].copy_from_slice(&header.head()[..head]);
    chain.read(pool, NET_HDR_LEN + head, &mut dst[head..len]);
    COPIED_FROM_GUESTS.fetch_add(len as u64, Ordering::Relaxed);
}
