//! The para-virtual network front-end (virtio's *driver* side): two split virtqueues (TX, RX)
//! and a buffer pool in this guest's own memory, granted to the driver domain once at connect
//! time, so the data path needs no hypercall per frame — only an event now and then, and only
//! when the other side asked for one (event index).
//!
//! Pool layout (`shared_abi::virtq::PoolPlan`, sized in bytes): transmit buffers big enough
//! for a net header and a frame of the MTU (setting `mtu` up to 65535, a whole 64 KiB TCP
//! segment per frame between guests; default [`DEFAULT_MTU`]; TCP's MSS keeps traffic to the
//! outside at the NIC's 1500), rounded to 64 bytes; receive buffers as big up to a jumbo
//! frame's MTU, and beyond it a whole ring of jumbo-sized ones over which the back-end spreads
//! a frame (mergeable receive buffers, asked for in the handshake). The receive buffers come
//! first, always all offered to the back-end and granted read-write, then, from a page of
//! their own, the transmit buffers, granted read-only. Every chain is one descriptor, tagged
//! with its buffer's index (`DriverQueue::add_tagged`), so no table by head is kept. Buffers
//! may cross page boundaries: the pool is contiguous for both sides.
//!
//! [`NetFront`] is the guest's NIC as a `smoltcp::phy::Device`: these rings ([`Rings`]), or
//! with the setting `nic=emulated` (the packer writes it for `nic = "emulated"` in the
//! topology) the emulated register-FIFO NIC (`crate::emunic`). Apps use either unchanged.
//! Received frames are copied out of the pool before
//! smoltcp sees them (the back-end could rewrite the pool under the parser otherwise, and
//! smoltcp reads header fields more than once), placed co-aligned with their pool buffer so
//! the copy takes `SharedMem`'s 64-byte bulk path, and the buffer goes straight back to the
//! ring; frames to send are built by smoltcp right in a
//! transmit buffer ([`Rings::send_in_place`]): only we can write those pages, so the stack may
//! hold a `&mut [u8]` over them, and the back-end copies the frame out once after we publish
//! it.

use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;

use shared_abi::grant::ENTRIES_PER_PAGE;
use shared_abi::handshake::{Frontend, State};
use shared_abi::virtq::{
    DriverQueue, NetFeatures, NetHdr, PoolMem, PoolPlan, RingLayout, RingMem, RxFrame, Segment,
    BUFFER_HEADROOM, ETH_HDR_LEN, FEATURE_CSUM, FEATURE_EVENT_IDX, FEATURE_MRG_RXBUF, FEATURE_NET,
    MAX_MTU, MIN_MTU, NET_HDR_LEN, NUM_BUFFERS_AT, POOL_BUDGET_PAGES, RING_PAGE_LEN, TX_OK,
};
use vm_net::budget::FrameBudget;
use vm_net::resend::TxLedger;
use vm_net::smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use vm_net::smoltcp::time::Instant as NetInstant;
use vm_runtime::shared::{ExclusiveRun, SharedMem};
use vm_runtime::{evtchn, grant, println, timer};

use crate::emunic::EmuNic;
use crate::link::Link;

mod reconnect;

/// IP MTU without a setting: the largest, so a whole 64 KiB TCP segment crosses to another
/// guest as one frame (to the outside TCP's MSS negotiation keeps segments at the NIC's
/// 1500). Its frames are spread over receive buffers of a jumbo frame's size (mergeable
/// receive buffers), so the ring keeps 128 of them for bursts of small frames (see
/// docs/ARCHITECTURE.md, "Mergeable receive buffers").
pub const DEFAULT_MTU: usize = 65535;
/// Grant-table pages a network guest sets up: room for the largest pool
/// ([`POOL_BUDGET_PAGES`]), the two ring pages and ref 0, which is never handed out.
pub const GRANT_TABLE_PAGES: u32 = (POOL_BUDGET_PAGES + 3).div_ceil(ENTRIES_PER_PAGE);

/// How long an app waits at its end for the back-end to take the frames it sent last
/// ([`NetFront::wait_sent`]).
pub const LAST_FRAMES_MS: u64 = 200;

/// Sets up this guest's grant table at [`GRANT_TABLE_PAGES`]: what an app calls once before
/// [`NetFront::connect`], whatever its MTU.
pub fn init_grant_table() -> Result<(), String> {
    grant::init(GRANT_TABLE_PAGES).map_err(|e| format!("grant table: {e:?}"))
}
/// The IP MTUs a front-end may use: IPv4's minimum to the internal link's largest frame.
pub const MTU_RANGE: core::ops::RangeInclusive<usize> = MIN_MTU..=MAX_MTU;
/// Features we ask for.
const WANTED_FEATURES: u64 = FEATURE_NET | FEATURE_EVENT_IDX | FEATURE_CSUM;

/// What the front-end did, for the closing line and the bench's reasons (`NetFront::stats`
/// snapshots around a measurement; the harness takes the differences).
#[derive(Clone, Copy, Debug, Default)]
pub struct FrontStats {
    pub tx_frames: u64,
    /// Frame bytes queued to the back-end (Ethernet header on, net header off).
    pub tx_bytes: u64,
    pub tx_dropped_by_backend: u64,
    pub rx_frames: u64,
    /// Frame bytes received from the back-end.
    pub rx_bytes: u64,
    pub rx_empty: u64,
    /// Frames that came over more than one receive buffer (mergeable buffers), and frames
    /// longer than our MTU, dropped (a back-end does not know our MTU).
    pub rx_merged_frames: u64,
    pub rx_too_long: u64,
    pub events_sent: u64,
    pub events_suppressed: u64,
    /// Bytes copied at each copy site of this side, counted where the copy is made: the
    /// stack building a frame into our transmit token (from its socket buffer), the frame
    /// into the shared pool, a received frame out of the pool, and the stack taking a
    /// received frame (into its socket buffer).
    pub copied_stack_to_frame: u64,
    pub copied_frame_to_pool: u64,
    pub copied_pool_to_frame: u64,
    pub copied_frame_to_stack: u64,
    /// Reconnections to a restarted back-end, frames refused while it was away, frames the
    /// old back-end had not given back that went again to the new one, and the longest gap
    /// between received data frames across a reconnection.
    pub reconnects: u64,
    pub tx_dropped_disconnected: u64,
    pub tx_resent: u64,
    pub longest_data_gap_ms: u64,
}

/// The para-virtual front-end's rings, pool and connection.
pub struct Rings {
    pub link: Link,
    tx_ring: SharedMem,
    rx_ring: SharedMem,
    /// What we published to connect, to connect again (hostile churn mode).
    offer: Frontend,
    tx: DriverQueue<SharedMem>,
    rx: DriverQueue<SharedMem>,
    pool: SharedMem,
    /// The transmit part of the pool (granted read-only: only we write it), where frames to
    /// send are built in place. Offset 0 is pool offset `plan.tx_start()`.
    tx_area: ExclusiveRun,
    pool_pages: u32,
    reconnect: reconnect::Reconnect,
    pub port: u32,
    pub mac: [u8; 6],
    /// Checksum offload agreed: TCP/UDP checksums are neither computed nor checked here.
    pub csum_offload: bool,
    /// Frames may come over several receive buffers (mergeable buffers agreed).
    merged: bool,
    /// Largest Ethernet frame (header included, as smoltcp counts it).
    frame_limit: usize,
    /// Where the buffers are in the pool, and their lengths.
    plan: PoolPlan,
    /// Transmit buffers not in the ring. Each chain's buffer index is its token
    /// (`DriverQueue::add_tagged`), so no table by head is kept.
    tx_free: Vec<u16>,
    /// The transmit buffers in the ring, oldest first: sent again to a restarted back-end.
    tx_out: TxLedger,
    /// [`Rings::tx_done`] found chains still with the back-end: [`Rings::arm`] asks for an
    /// event on the next completion too.
    draining: bool,
    /// The back-end broke the ring protocol: we stop using the rings.
    pub broken: Option<String>,
    pub stats: FrontStats,
}

/// Options of [`NetFront::connect`].
pub struct ConnectOptions {
    /// The MAC we ask for (zero: let the back-end choose).
    pub mac: [u8; 6],
    /// The IP MTU (within [`MTU_RANGE`]).
    pub mtu: usize,
    /// Test only: name pool refs we never granted, to check the back-end refuses them.
    pub bad_pool_ref: bool,
    /// The NIC is the emulated one (setting `nic=emulated`), not the para-virtual rings.
    pub emulated: bool,
}

impl ConnectOptions {
    /// The options a guest's settings ask for: `mac` (aa:bb:cc:dd:ee:ff, optional), `mtu`
    /// (default [`DEFAULT_MTU`]) and `nic` (`emulated`, or `paravirt`: the default).
    pub fn from_settings(settings: &str) -> Result<ConnectOptions, String> {
        let mac = match vm_runtime::setting(settings, "mac") {
            None => [0; 6],
            Some(text) => vm_net::parse_mac(text)
                .ok_or(format!("setting mac {text:?} is not aa:bb:cc:dd:ee:ff"))?,
        };
        let mtu = vm_runtime::setting_u64_or(settings, "mtu", DEFAULT_MTU as u64)
            .map_err(|e| format!("{e}"))? as usize;
        if !MTU_RANGE.contains(&mtu) {
            return Err(format!(
                "setting mtu = {mtu} is outside {}..={}",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            ));
        }
        let emulated = match vm_runtime::setting(settings, "nic") {
            None | Some("paravirt") => false,
            Some("emulated") => true,
            Some(other) => {
                return Err(format!(
                    "setting nic = {other:?} is not \"emulated\" or \"paravirt\""
                ))
            }
        };
        Ok(ConnectOptions {
            mac,
            mtu,
            bad_pool_ref: false,
            emulated,
        })
    }
}

impl Rings {
    /// Grants rings and pool to our back-end, offers all receive buffers, and runs the
    /// handshake. Needs the event channels and the grant table initialised.
    pub fn connect(
        info: &vm_runtime::StartInfo<'static>,
        options: &ConnectOptions,
    ) -> Result<Rings, String> {
        let mut link = Link::open(info)?;
        let backend = link.backend;
        let tx_ring = SharedMem::leak_pages(1);
        let rx_ring = SharedMem::leak_pages(1);
        // Mergeable receive buffers when a frame of our MTU is longer than a jumbo frame's
        // buffer: a whole ring of those then, instead of a few buffers of the MTU.
        let plan = PoolPlan::for_mtu_merged(options.mtu)
            .ok_or_else(|| format!("no pool for an MTU of {}", options.mtu))?;
        let features = if plan.merges() {
            WANTED_FEATURES | FEATURE_MRG_RXBUF
        } else {
            WANTED_FEATURES
        };
        let frame_limit = plan.frame_limit(options.mtu);
        let pool_pages = plan.pages;
        let pool = SharedMem::leak_pages(pool_pages as usize);
        let event_idx = true;
        let tx = DriverQueue::new(tx_ring, pool_pages, event_idx).map_err(|e| format!("{e}"))?;
        let mut rx =
            DriverQueue::new(rx_ring, pool_pages, event_idx).map_err(|e| format!("{e}"))?;
        let grant_err = |what: &str, e| format!("cannot grant the {what}: {e:?}");
        let tx_ring_ref =
            grant::grant(backend, tx_ring.gpa(), false).map_err(|e| grant_err("TX ring", e))?;
        let rx_ring_ref =
            grant::grant(backend, rx_ring.gpa(), false).map_err(|e| grant_err("RX ring", e))?;
        let (mut pool_first_ref, tx_area) =
            grant::grant_run(backend, &pool, plan.rx_pages).map_err(|e| grant_err("pool", e))?;
        let tx_area = tx_area.ok_or("the pool plan has no transmit pages")?;
        if options.bad_pool_ref {
            // Far past every ref we granted (but inside the table): the back-end's map fails.
            pool_first_ref += 300;
        }
        let port = evtchn::alloc_unbound(backend).map_err(|e| format!("alloc_unbound: {e:?}"))?;

        offer_rx_buffers(&mut rx, &plan)?;

        let layout = RingLayout {
            tx_ring_ref,
            rx_ring_ref,
            pool_first_ref,
            pool_pages,
            pool_writable: plan.rx_pages,
        };
        let mut offer = Frontend {
            state: State::Initialised,
            data_port: port,
            mac: options.mac,
            features,
            ..Frontend::initialising()
        };
        layout.write_to(&mut offer);
        let section = link.connect(offer, 10_000)?;
        let agreed = NetFeatures::from_bits(section.features).ok_or_else(|| {
            format!(
                "back-end did not accept the net protocol (features {:#x})",
                section.features
            )
        })?;
        if !agreed.event_idx {
            return Err("back-end refused event-index suppression, which our rings use".into());
        }
        if plan.merges() && !agreed.mergeable {
            return Err(format!(
                "back-end refused mergeable receive buffers, which an MTU of {} needs (our \
                 receive buffers hold {} bytes); set a smaller mtu",
                options.mtu, plan.rx_buffer_len
            ));
        }
        println!(
            "net: MTU {}: {} receive buffers of {} B{}, {} transmit buffers of {} B, {} pool \
             pages",
            options.mtu,
            plan.rx_buffers,
            plan.rx_buffer_len,
            if plan.merges() {
                " (a frame may take several)"
            } else {
                ""
            },
            plan.tx_buffers,
            plan.buffer_len,
            plan.pages
        );
        Ok(Rings {
            link,
            tx_ring,
            rx_ring,
            offer,
            tx,
            rx,
            pool,
            tx_area,
            pool_pages,
            reconnect: reconnect::Reconnect::default(),
            port,
            mac: section.mac,
            csum_offload: agreed.csum,
            merged: plan.merges(),
            frame_limit,
            plan,
            tx_free: tx_buffers(&plan),
            tx_out: TxLedger::new(plan.rx_buffers + plan.tx_buffers),
            draining: false,
            broken: None,
            stats: FrontStats::default(),
        })
    }

    /// Takes back the transmit buffers the back-end is done with.
    fn reap_tx(&mut self) {
        while self.broken.is_none() {
            match self.tx.pop_used() {
                Ok(Some(used)) => {
                    // A hostile mode's raw chain names no buffer of ours: nothing to free.
                    if used.token != RAW_CHAIN {
                        self.tx_free.push(used.token);
                        self.tx_out.returned(used.token);
                    }
                    if used.len != TX_OK {
                        self.stats.tx_dropped_by_backend += 1;
                    }
                }
                Ok(None) => break,
                Err(e) => self.fail(format!("TX ring: {e}")),
            }
        }
    }

    fn fail(&mut self, why: String) {
        println!("net: back-end broke the ring protocol: {why}; stopping the network");
        self.broken = Some(why);
    }

    /// The next received frame, copied out of the pool into `frame` (whose bytes outside the
    /// frame are left as they were, so a reused vector is never cleared) at the place in it
    /// co-aligned with the pool buffer, so the copy runs at memcpy speed (see
    /// `SharedMem::read_into_reused`); its pool buffer is offered again at once. Returns where
    /// the frame starts in `frame` and its length. `now_us`: the stack's clock.
    pub fn next_rx_into(&mut self, frame: &mut Vec<u8>, now_us: u64) -> Option<(usize, usize)> {
        while self.broken.is_none() && self.up() {
            let (pool, plan) = (self.pool, self.plan);
            // With mergeable buffers the first buffer's header says how many the frame took:
            // read once, checked by the queue.
            let num_buffers = |buffer: u16| {
                let mut count = [0u8; 2];
                pool.read(
                    buffer_offset(usize::from(buffer), &plan) + NUM_BUFFERS_AT,
                    &mut count,
                );
                u16::from_le_bytes(count)
            };
            let taken = match self.rx.pop_rx_frame(self.merged, num_buffers) {
                Ok(Some(taken)) => taken,
                Ok(None) => return None,
                Err(e) => {
                    self.fail(format!("RX ring: {e}"));
                    return None;
                }
            };
            let place = self.copy_out(&taken, frame);
            // Each chain's token is its buffer: no lookup by head, which a chain offered again
            // here could already have taken.
            for &buffer in taken.tokens() {
                if let Err(e) = offer_rx_buffer(&mut self.rx, usize::from(buffer), &self.plan) {
                    self.fail(e);
                }
            }
            match place {
                Some((start, frame_len)) => {
                    self.on_rx(frame_len, now_us);
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += frame_len as u64;
                    return Some((start, frame_len));
                }
                None => self.stats.rx_empty += 1,
            }
        }
        None
    }

    /// Copies a received frame out of its buffers into `frame`, co-aligned with the first
    /// buffer (the later ones of a merged frame then line up too: see
    /// `MERGED_RX_BUFFER_LEN`). Returns where the frame starts in `frame` and its length;
    /// `None` for a buffer given back empty or a frame longer than our MTU (a back-end does
    /// not know our MTU; dropped).
    fn copy_out(&mut self, taken: &RxFrame, frame: &mut Vec<u8>) -> Option<(usize, usize)> {
        let frame_len = taken.frame_len();
        if taken.is_empty() || frame_len < ETH_HDR_LEN {
            return None;
        }
        if frame_len > self.frame_limit {
            self.stats.rx_too_long += 1;
            return None;
        }
        // Room for the whole frame at any placement, so that placing the first piece does not
        // grow (and move) the vector.
        if frame.len() < frame_len + 64 {
            frame.resize(frame_len + 64, 0);
        }
        let buffer_at = |buffer: u16| buffer_offset(usize::from(buffer), &self.plan);
        let (buffers, lens) = (taken.tokens(), taken.lens());
        let first_len = lens[0] as usize - NET_HDR_LEN;
        let start =
            self.pool
                .read_into_reused(buffer_at(buffers[0]) + NET_HDR_LEN, first_len, frame);
        let mut end = start + first_len;
        for (&buffer, &len) in buffers.iter().zip(lens).skip(1) {
            let len = len as usize;
            self.pool
                .read(buffer_at(buffer), &mut frame[end..end + len]);
            end += len;
        }
        self.stats.copied_pool_to_frame += frame_len as u64;
        if buffers.len() > 1 {
            self.stats.rx_merged_frames += 1;
        }
        Some((start, frame_len))
    }

    /// Queues `frame` (an Ethernet frame) for sending, copied into a transmit buffer; false
    /// if it cannot go now. The stack's frames do not come this way ([`Self::send_in_place`]);
    /// the hostile modes' do.
    pub fn send_frame(&mut self, frame: &[u8]) -> bool {
        let sent = self.send_in_place(frame.len(), |buf| buf.copy_from_slice(frame));
        if sent.is_ok() {
            self.stats.copied_frame_to_pool += frame.len() as u64;
        }
        sent.is_ok()
    }

    /// Queues a frame of `len` bytes built by `build` right in a free transmit buffer (the
    /// slice it gets has its first [`HEADER_BYTES_CLEARED`] bytes zeroed, the rest holds an
    /// earlier frame's bytes) and returns what `build` returned; gives `build` back unused if
    /// the frame cannot go now (not connected, too long, no free buffer, a broken ring).
    ///
    /// The transmit buffers are ours alone (granted read-only), so `build` writes them
    /// directly; the back-end sees the frame only once the chain is published, and copies it
    /// out once. The net header is computed from the frame as built.
    pub fn send_in_place<R, F: FnOnce(&mut [u8]) -> R>(
        &mut self,
        len: usize,
        build: F,
    ) -> Result<R, F> {
        if !self.up() {
            self.stats.tx_dropped_disconnected += 1;
            return Err(build);
        }
        self.reap_tx();
        if self.broken.is_some() || len > self.frame_limit {
            return Err(build);
        }
        let Some(buffer) = self.tx_free.pop() else {
            return Err(build);
        };
        let at = buffer_offset(usize::from(buffer), &self.plan);
        let csum_offload = self.csum_offload;
        let result = self
            .tx_area
            .with_mut(at - self.plan.tx_start(), NET_HDR_LEN + len, |bytes| {
                let (hdr, frame) = bytes.split_at_mut(NET_HDR_LEN);
                frame[..len.min(HEADER_BYTES_CLEARED)].fill(0);
                let result = build(frame);
                hdr.copy_from_slice(&NetHdr::for_tx_frame(frame, csum_offload).encode());
                result
            });
        let segment = Segment {
            offset: at as u32,
            len: (NET_HDR_LEN + len) as u32,
        };
        match self.tx.add_tagged(&[segment], false, buffer) {
            Ok(_) => {
                self.tx_out.sent(buffer, segment.len);
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += len as u64;
            }
            Err(e) => {
                // Cannot happen with a buffer free (the ring has room for every buffer): the
                // frame is lost, as a full ring would lose it.
                self.tx_free.push(buffer);
                self.fail(format!("adding transmit buffer {buffer}: {e}"));
            }
        }
        Ok(result)
    }

    /// Publishes what was added since the last flush and sends the back-end one event if it
    /// asked for one.
    pub fn flush(&mut self) {
        self.service();
        self.publish();
    }

    fn publish(&mut self) {
        if self.broken.is_some() || !self.up() {
            return;
        }
        let (tx_old, tx_new) = self.tx.publish();
        let (rx_old, rx_new) = self.rx.publish();
        if tx_old == tx_new && rx_old == rx_new {
            return;
        }
        if self.tx.should_notify_device(tx_old, tx_new)
            || self.rx.should_notify_device(rx_old, rx_new)
        {
            self.stats.events_sent += 1;
            let _ = evtchn::send(self.port);
        } else {
            self.stats.events_suppressed += 1;
        }
    }

    /// Before sleeping: asks for an event on the next received frame, and on the next
    /// transmit completion only if we are out of transmit buffers (otherwise completions are
    /// reaped when we next send, and waking for them would only spin). True if what we asked
    /// for is already there (then do not sleep: its event may have been suppressed).
    pub fn arm(&mut self) -> bool {
        self.service();
        if !self.up() {
            return false;
        }
        self.reap_tx();
        if self.broken.is_some() {
            return false;
        }
        let rx_waiting = self.rx.enable_notify();
        let tx_waiting = (self.tx_free.is_empty() || self.draining) && self.tx.enable_notify();
        rx_waiting || tx_waiting
    }

    /// Whether every transmit chain handed to the back-end came back (completions taken
    /// first): what was sent has left this VM. True when the rings are down, as nothing more
    /// comes back then. While it is false, [`arm`](Self::arm) also asks for an event on the
    /// next completion.
    pub fn tx_done(&mut self) -> bool {
        if !self.up() || self.broken.is_some() {
            return true;
        }
        self.reap_tx();
        self.draining = self.broken.is_none() && self.tx.outstanding() > 0;
        !self.draining
    }

    /// Whether the back-end has left the connection (it closes it on a protocol violation).
    pub fn backend_left(&self) -> bool {
        !matches!(
            self.link.backend_section().map(|b| b.state),
            Some(State::Connected)
        )
    }

    /// Hostile test modes write the TX ring page directly: our own page, outside the queue.
    pub fn raw_tx_ring(&self) -> &SharedMem {
        &self.tx_ring
    }

    /// Hostile test modes write the RX ring page directly too.
    pub fn raw_rx_ring(&self) -> &SharedMem {
        &self.rx_ring
    }

    /// Hostile test mode: closes the connection and connects again with the same rings, at
    /// most `times` times or until `until` (ticks); returns how many reconnections completed.
    /// The rings are not used afterwards.
    pub fn churn(&mut self, times: u32, until: u64) -> u32 {
        let mut done = 0;
        while done < times && vm_runtime::timer::now() < until {
            if self.link.close(2_000).is_err() {
                break;
            }
            // A new connection starts from empty rings (indices zero), as the back-end's
            // queues do: otherwise our old avail index would be a ring violation.
            for ring in [self.tx_ring, self.rx_ring] {
                for at in (0..RING_PAGE_LEN).step_by(2) {
                    ring.store_u16(at, 0);
                }
            }
            if self.link.connect(self.offer, 5_000).is_err() {
                break;
            }
            done += 1;
        }
        done
    }

    /// Hostile test modes: adds a well-formed TX chain of `segments` (pool offsets of our
    /// transmit buffers) without publishing it; returns its head.
    pub fn add_raw_tx(&mut self, segments: &[Segment]) -> Option<u16> {
        self.tx.add_tagged(segments, false, RAW_CHAIN).ok()
    }

    /// A free transmit buffer's pool offset, taken for good (hostile modes).
    pub fn take_tx_buffer(&mut self) -> Option<u32> {
        self.reap_tx();
        self.tx_free
            .pop()
            .map(|b| buffer_offset(usize::from(b), &self.plan) as u32)
    }

    /// Whether a frame can be queued now (completions reaped first).
    pub fn can_send(&mut self) -> bool {
        if !self.up() {
            return false;
        }
        self.reap_tx();
        self.broken.is_none() && !self.tx_free.is_empty()
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.frame_limit;
        caps.max_burst_size = Some(self.plan.tx_buffers / 2);
        if self.csum_offload {
            // The back-end fills them in for whoever checks, and checks what comes from
            // outside the machine (see `shared_abi::virtq::FEATURE_CSUM`).
            caps.checksum.tcp = Checksum::None;
            caps.checksum.udp = Checksum::None;
        }
        caps
    }

    /// Pool bytes, for hostile modes that aim outside it.
    pub fn pool_len(&self) -> u32 {
        self.pool.len() as u32
    }

    /// Writes bytes into our pool (hostile modes prepare frames with it).
    pub fn write_pool(&self, offset: u32, bytes: &[u8]) {
        self.pool.write(offset as usize, bytes);
    }
}

/// Offers every receive buffer on a fresh `rx` queue and publishes them.
fn offer_rx_buffers(rx: &mut DriverQueue<SharedMem>, plan: &PoolPlan) -> Result<(), String> {
    for buffer in 0..plan.rx_buffers {
        offer_rx_buffer(rx, buffer, plan)?;
    }
    rx.publish();
    Ok(())
}

/// Offers receive buffer `buffer` (not published), tagged with its index.
fn offer_rx_buffer(
    rx: &mut DriverQueue<SharedMem>,
    buffer: usize,
    plan: &PoolPlan,
) -> Result<(), String> {
    rx.add_tagged(&[buffer_segment(buffer, plan)], true, buffer as u16)
        .map(|_| ())
        .map_err(|e| format!("offering receive buffer {buffer}: {e}"))
}

/// The token of a hostile mode's raw transmit chain ([`Rings::add_raw_tx`]): not one of our
/// buffers (indices stay below the ring's 128), so its completion frees nothing.
const RAW_CHAIN: u16 = u16::MAX;

/// Every transmit buffer, free.
fn tx_buffers(plan: &PoolPlan) -> Vec<u16> {
    (plan.rx_buffers..plan.rx_buffers + plan.tx_buffers)
        .rev()
        .map(|b| b as u16)
        .collect()
}

/// Receive buffer `buffer` as offered.
fn buffer_segment(buffer: usize, plan: &PoolPlan) -> Segment {
    Segment {
        offset: buffer_offset(buffer, plan) as u32,
        len: plan.rx_buffer_len as u32,
    }
}

/// Pool offset of one of our buffers (indices come from the plan itself, so always inside):
/// [`BUFFER_HEADROOM`] into its slot, so that TCP payloads land 8-byte aligned.
fn buffer_offset(buffer: usize, plan: &PoolPlan) -> usize {
    plan.offset(buffer).unwrap_or(0) + BUFFER_HEADROOM
}

/// The guest's NIC, whichever it is. The fields apps read (`port` to sleep on, `mac`,
/// `broken`, `stats`) are the NIC's own, refreshed after every call that moves frames.
pub struct NetFront {
    /// The port to wait on for news: the data port of the rings, or the local port the
    /// emulated NIC's interrupt marks.
    pub port: u32,
    pub mac: [u8; 6],
    pub broken: Option<String>,
    pub stats: FrontStats,
    path: Path,
    /// The stack's copies, counted here (the NIC's own counters are copied over `stats`).
    copied_stack_to_frame: u64,
    copied_frame_to_stack: u64,
    /// Where the stack builds each frame to send: one buffer for the life of the NIC, so no
    /// frame costs an allocation or a clearing pass over its bytes.
    tx_frame: Vec<u8>,
    /// A received frame's buffer, back from the stack ([`FrontRx`] returns it when dropped)
    /// for the next frame: the same, for receiving.
    rx_spare: Rc<Cell<Vec<u8>>>,
    /// Frames handed to the stack since the last [`NetFront::flush`] or [`NetFront::arm`]:
    /// at most [`RX_FRAMES_PER_ROUND`] or [`RX_BYTES_PER_ROUND`].
    rx_round: FrameBudget,
}

/// Frames the stack gets per round (between two flushes). smoltcp takes every frame there is
/// before it sends anything, so a receiver handed a whole window at once acknowledges it with
/// one ACK, published at the end of the round: a sender held to a 64 KiB window (QEMU's user
/// network never scales it) then idles until the whole window has crossed the driver domain
/// and this guest (one ACK per 44 segments, the sender idle two thirds of the time, issue 11).
/// With a budget the ACK for the first frames leaves while the rest are still on their way.
const RX_FRAMES_PER_ROUND: usize = 16;
/// Bytes the stack gets per round: more than 16 frames of the 9000-byte MTU (so those rounds
/// still end on the frame count), three of 64 KiB (the third crosses it). A round of 16 frames
/// of 64 KiB is a whole 1 MiB window: the receiver answered about once per six such frames, the
/// sender waited for those ACKs, and the pCPUs sat idle a fifth of the time (issue 11).
const RX_BYTES_PER_ROUND: usize = 144 * 1024;

/// Bytes at the start of a frame cleared before the stack builds one in the reused transmit
/// buffer: more than any Ethernet, IPv4 and TCP headers with options (14 + 60 + 60), so
/// padding the stack skips never carries an earlier frame's bytes.
const HEADER_BYTES_CLEARED: usize = 160;

enum Path {
    // Boxed: the rings' bookkeeping is several times the emulated driver's.
    Paravirt(Box<Rings>),
    Emulated(EmuNic),
}

impl NetFront {
    /// Connects the NIC the settings choose (`options.emulated`): the para-virtual rings
    /// (needs the event channels and the grant table initialised) or the emulated NIC (needs
    /// the event channels).
    pub fn connect(
        info: &vm_runtime::StartInfo<'static>,
        options: &ConnectOptions,
    ) -> Result<NetFront, String> {
        let path = if options.emulated {
            Path::Emulated(EmuNic::open()?)
        } else {
            Path::Paravirt(Box::new(Rings::connect(info, options)?))
        };
        let (port, mac) = match &path {
            Path::Paravirt(r) => (r.port, r.mac),
            Path::Emulated(e) => (e.port, e.mac),
        };
        Ok(NetFront {
            port,
            mac,
            broken: None,
            stats: FrontStats::default(),
            path,
            copied_stack_to_frame: 0,
            copied_frame_to_stack: 0,
            tx_frame: Vec::new(),
            rx_spare: Rc::new(Cell::new(Vec::new())),
            rx_round: FrameBudget::new(RX_FRAMES_PER_ROUND, RX_BYTES_PER_ROUND),
        })
    }

    /// Copies the NIC's state into the fields apps read.
    fn sync(&mut self) {
        let (stats, broken) = match &self.path {
            Path::Paravirt(r) => {
                // While the back-end is away, news comes on the control port.
                self.port = if r.up() { r.port } else { r.link.control_port };
                (r.stats, &r.broken)
            }
            Path::Emulated(e) => (e.stats, &e.broken),
        };
        self.stats = FrontStats {
            copied_stack_to_frame: self.copied_stack_to_frame,
            copied_frame_to_stack: self.copied_frame_to_stack,
            ..stats
        };
        if self.broken.is_none() && broken.is_some() {
            self.broken = broken.clone();
        }
    }

    /// The para-virtual rings, for the hostile modes that write them directly.
    pub fn rings_mut(&mut self) -> Result<&mut Rings, String> {
        match &mut self.path {
            Path::Paravirt(r) => Ok(r),
            Path::Emulated(_) => Err("this mode needs the para-virtual NIC".into()),
        }
    }

    /// Queues `frame` (an Ethernet frame) for sending; false if it cannot go now.
    pub fn send_frame(&mut self, frame: &[u8]) -> bool {
        let sent = match &mut self.path {
            Path::Paravirt(r) => r.send_frame(frame),
            Path::Emulated(e) => e.send_frame(frame),
        };
        self.sync();
        sent
    }

    /// Publishes what was queued and notifies the other side if it asked (rings only: the
    /// emulated NIC sends each frame as it is written).
    pub fn flush(&mut self) {
        if let Path::Paravirt(r) = &mut self.path {
            r.flush();
        }
        self.rx_round.reset();
        self.sync();
    }

    /// Before this VM powers off: publishes what is queued, then waits up to `timeout_ticks`
    /// (apps give it [`LAST_FRAMES_MS`]) for the back-end to take every frame sent, and says
    /// whether it did. A VM that powered off right after its last send could take that frame
    /// with it, still in its ring: an iperf3 client's last ACK of the close, so its server
    /// sent its FIN again to no one and lingered 3 s before it could stop (1 pair in 2 of the
    /// bench's scaling boots). A back-end that never takes them costs the timeout, no more.
    /// The emulated NIC sends each frame as it is written.
    pub fn wait_sent(&mut self, timeout_ticks: u64) -> bool {
        let deadline = timer::now().saturating_add(timeout_ticks);
        self.flush();
        loop {
            let done = match &mut self.path {
                Path::Paravirt(r) => r.tx_done(),
                Path::Emulated(_) => true,
            };
            self.sync();
            let now = timer::now();
            if done {
                return true;
            }
            if now >= deadline || self.broken.is_some() {
                return false;
            }
            if !self.arm() {
                self.wait(deadline - now);
            }
        }
    }

    /// Whether this is the emulated NIC.
    pub fn is_emulated(&self) -> bool {
        matches!(self.path, Path::Emulated(_))
    }

    /// Before sleeping: asks for a wake-up on news; true if news is already there.
    pub fn arm(&mut self) -> bool {
        self.rx_round.reset();
        let waiting = match &mut self.path {
            Path::Paravirt(r) => r.arm(),
            Path::Emulated(e) => e.arm(),
        };
        self.sync();
        waiting
    }

    /// Whether the back-end has left (rings: it closed the connection; the emulated NIC has
    /// no connection, and a device model that is gone shows as `broken`).
    pub fn backend_left(&self) -> bool {
        match &self.path {
            Path::Paravirt(r) => r.backend_left(),
            Path::Emulated(_) => false,
        }
    }

    /// The next received frame, in the spare buffer, with its place; `now_us`: the stack's
    /// clock.
    fn next_rx(&mut self, now_us: u64) -> Option<FrontRx> {
        if self.rx_round.spent() {
            return None;
        }
        let mut frame = self.rx_spare.take();
        let place = match &mut self.path {
            Path::Paravirt(r) => r.next_rx_into(&mut frame, now_us),
            Path::Emulated(e) => e.next_rx().map(|f| {
                let len = f.len();
                frame = f;
                (0, len)
            }),
        };
        self.sync();
        match place {
            Some((start, len)) => {
                self.rx_round.try_take(len);
                Some(FrontRx {
                    frame,
                    start,
                    len,
                    spare: self.rx_spare.clone(),
                })
            }
            None => {
                self.rx_spare.set(frame);
                None
            }
        }
    }
}

/// A received frame: `len` bytes of `frame` from `start` (where the copy out of the pool was
/// co-aligned), whose buffer goes back to the NIC's spare when the stack is done with it.
pub struct FrontRx {
    frame: Vec<u8>,
    start: usize,
    len: usize,
    spare: Rc<Cell<Vec<u8>>>,
}
pub struct FrontTx<'a>(&'a mut NetFront);

impl RxToken for FrontRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.frame[self.start..self.start + self.len])
    }
}

impl Drop for FrontRx {
    fn drop(&mut self) {
        self.spare.set(core::mem::take(&mut self.frame));
    }
}

impl TxToken for FrontTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // The rings: the stack builds the frame in a transmit buffer, no copy after it.
        let f = match &mut self.0.path {
            Path::Paravirt(r) => match r.send_in_place(len, f) {
                Ok(result) => {
                    self.0.copied_stack_to_frame += len as u64;
                    self.0.sync();
                    return result;
                }
                // `transmit` checked a buffer was free; if it is gone, the frame is lost.
                Err(f) => f,
            },
            Path::Emulated(_) => f,
        };
        let mut frame = core::mem::take(&mut self.0.tx_frame);
        if frame.len() < len {
            frame.resize(len, 0);
        }
        let frame_bytes = &mut frame[..len];
        frame_bytes[..len.min(HEADER_BYTES_CLEARED)].fill(0);
        let result = f(frame_bytes);
        self.0.copied_stack_to_frame += len as u64;
        // `transmit` checked a frame can go; a failure here only loses this frame. (A frame
        // the rings refused above is lost already: the stack had to build it somewhere.)
        if self.0.is_emulated() {
            let _ = self.0.send_frame(&frame[..len]);
        }
        self.0.tx_frame = frame;
        result
    }
}

impl Device for NetFront {
    type RxToken<'a> = FrontRx;
    type TxToken<'a> = FrontTx<'a>;

    fn receive(&mut self, now: NetInstant) -> Option<(FrontRx, FrontTx<'_>)> {
        let frame = self.next_rx(u64::try_from(now.total_micros()).unwrap_or(0))?;
        // Counted as handed over: the stack always consumes the token, parses the frame and
        // copies its payload into a socket buffer.
        self.copied_frame_to_stack += frame.len as u64;
        self.stats.copied_frame_to_stack = self.copied_frame_to_stack;
        Some((frame, FrontTx(self)))
    }

    fn transmit(&mut self, _now: NetInstant) -> Option<FrontTx<'_>> {
        let ready = match &mut self.path {
            Path::Paravirt(r) => r.can_send(),
            Path::Emulated(e) => e.can_send(),
        };
        ready.then_some(FrontTx(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        match &self.path {
            Path::Paravirt(r) => r.capabilities(),
            Path::Emulated(e) => e.capabilities(),
        }
    }
}
