//! The para-virtual network front-end (virtio's *driver* side): two split virtqueues (TX, RX)
//! and a buffer pool in this guest's own memory, granted to the driver domain once at connect
//! time, so the data path needs no hypercall per frame — only an event now and then, and only
//! when the other side asked for one (event index).
//!
//! Pool layout: buffers big enough for a net header and a frame of the MTU (setting `mtu`,
//! default [`DEFAULT_MTU`]: jumbo frames between guests; TCP's MSS keeps traffic to the outside
//! at the NIC's 1500), rounded to 64 bytes; the first [`RX_BUFFERS`] are receive buffers, always
//! all offered to the back-end, the next [`TX_BUFFERS`] are transmit buffers. Every chain is
//! one descriptor: net header, then frame. Buffers may cross page boundaries: the pool is
//! contiguous for both sides.
//!
//! [`NetFront`] is the guest's NIC as a `smoltcp::phy::Device`: these rings ([`Rings`]), or
//! with the setting `nic=emulated` (the packer writes it for `nic = "emulated"` in the
//! topology) the emulated register-FIFO NIC (`crate::emunic`). Apps use either unchanged.
//! Received frames are copied out of the pool before
//! smoltcp sees them (the back-end could rewrite the pool under the parser otherwise) and the
//! buffer goes straight back to the ring; frames to send are built in private memory and
//! copied into a transmit buffer once.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use shared_abi::handshake::{Frontend, State};
use shared_abi::virtq::{
    DriverQueue, NetFeatures, NetHdr, PoolMem, RingLayout, RingMem, Segment, ETH_HDR_LEN,
    FEATURE_CSUM, FEATURE_EVENT_IDX, FEATURE_NET, NET_HDR_LEN, QUEUE_SIZE, RING_PAGE_LEN, TX_OK,
};
use vm_net::smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use vm_net::smoltcp::time::Instant as NetInstant;
use vm_runtime::shared::SharedMem;
use vm_runtime::{evtchn, grant, println};

use crate::emunic::EmuNic;
use crate::link::Link;

/// Receive buffers: a whole ring of them.
const RX_BUFFERS: usize = QUEUE_SIZE as usize;
/// Transmit buffers: half a ring (frames leave as fast as the back-end takes them).
const TX_BUFFERS: usize = QUEUE_SIZE as usize / 2;
/// IP MTU without a setting: jumbo frames (guest to guest they cut the per-frame costs six
/// times; to the outside TCP's MSS negotiation keeps segments at the NIC's 1500).
pub const DEFAULT_MTU: usize = 9000;
/// The IP MTUs a front-end may use: Ethernet's minimum to the back-end's largest frame.
pub const MTU_RANGE: core::ops::RangeInclusive<usize> = 576..=9000;
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
    pub port: u32,
    pub mac: [u8; 6],
    /// Checksum offload agreed: TCP/UDP checksums are neither computed nor checked here.
    pub csum_offload: bool,
    /// Largest Ethernet frame (header included, as smoltcp counts it).
    frame_limit: usize,
    /// Bytes per pool buffer.
    buffer_len: usize,
    /// Transmit buffers not in the ring.
    tx_free: Vec<u16>,
    /// Buffer index of each outstanding chain, by head.
    tx_buffer_of: [u16; QUEUE_SIZE as usize],
    rx_buffer_of: [u16; QUEUE_SIZE as usize],
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
        let frame_limit = ETH_HDR_LEN + options.mtu;
        let buffer_len = (NET_HDR_LEN + frame_limit).next_multiple_of(64);
        let pool_pages = ((RX_BUFFERS + TX_BUFFERS) * buffer_len).div_ceil(RING_PAGE_LEN) as u32;
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
        let mut pool_first_ref =
            grant::grant_run(backend, pool.gpa(), pool_pages).map_err(|e| grant_err("pool", e))?;
        if options.bad_pool_ref {
            // Far past every ref we granted (but inside the table): the back-end's map fails.
            pool_first_ref += 300;
        }
        let port = evtchn::alloc_unbound(backend).map_err(|e| format!("alloc_unbound: {e:?}"))?;

        let mut rx_buffer_of = [0u16; QUEUE_SIZE as usize];
        for buffer in 0..RX_BUFFERS {
            let head = rx
                .add(&[buffer_segment(buffer, buffer_len)], true)
                .map_err(|e| format!("offering receive buffer {buffer}: {e}"))?;
            rx_buffer_of[usize::from(head)] = buffer as u16;
        }
        rx.publish();

        let layout = RingLayout {
            tx_ring_ref,
            rx_ring_ref,
            pool_first_ref,
            pool_pages,
        };
        let mut offer = Frontend {
            state: State::Initialised,
            data_port: port,
            mac: options.mac,
            features: WANTED_FEATURES,
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
        Ok(Rings {
            link,
            tx_ring,
            rx_ring,
            offer,
            tx,
            rx,
            pool,
            port,
            mac: section.mac,
            csum_offload: agreed.csum,
            frame_limit,
            buffer_len,
            tx_free: (RX_BUFFERS..RX_BUFFERS + TX_BUFFERS)
                .rev()
                .map(|b| b as u16)
                .collect(),
            tx_buffer_of: [0; QUEUE_SIZE as usize],
            rx_buffer_of,
            broken: None,
            stats: FrontStats::default(),
        })
    }

    /// Takes back the transmit buffers the back-end is done with.
    fn reap_tx(&mut self) {
        while self.broken.is_none() {
            match self.tx.pop_used() {
                Ok(Some(used)) => {
                    self.tx_free.push(self.tx_buffer_of[usize::from(used.head)]);
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

    /// The next received frame, copied out of the pool; its buffer is offered again at once.
    pub fn next_rx(&mut self) -> Option<Vec<u8>> {
        while self.broken.is_none() {
            let used = match self.rx.pop_used() {
                Ok(Some(used)) => used,
                Ok(None) => return None,
                Err(e) => {
                    self.fail(format!("RX ring: {e}"));
                    return None;
                }
            };
            let buffer = usize::from(self.rx_buffer_of[usize::from(used.head)]);
            let len = used.len as usize;
            let frame = (len >= NET_HDR_LEN + ETH_HDR_LEN).then(|| {
                let mut frame = vec![0u8; len - NET_HDR_LEN];
                self.pool
                    .read(buffer * self.buffer_len + NET_HDR_LEN, &mut frame);
                self.stats.copied_pool_to_frame += frame.len() as u64;
                frame
            });
            match self
                .rx
                .add(&[buffer_segment(buffer, self.buffer_len)], true)
            {
                Ok(head) => self.rx_buffer_of[usize::from(head)] = buffer as u16,
                Err(e) => self.fail(format!("re-offering receive buffer {buffer}: {e}")),
            }
            match frame {
                Some(frame) => {
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += frame.len() as u64;
                    return Some(frame);
                }
                None => self.stats.rx_empty += 1,
            }
        }
        None
    }

    /// Queues `frame` (an Ethernet frame) for sending; false if no buffer is free.
    pub fn send_frame(&mut self, frame: &[u8]) -> bool {
        self.reap_tx();
        if self.broken.is_some() || frame.len() > self.frame_limit {
            return false;
        }
        let Some(buffer) = self.tx_free.pop() else {
            return false;
        };
        let at = usize::from(buffer) * self.buffer_len;
        let hdr = NetHdr::for_tx_frame(frame, self.csum_offload);
        self.pool.write(at, &hdr.encode());
        self.pool.write(at + NET_HDR_LEN, frame);
        self.stats.copied_frame_to_pool += (NET_HDR_LEN + frame.len()) as u64;
        let segment = Segment {
            offset: at as u32,
            len: (NET_HDR_LEN + frame.len()) as u32,
        };
        match self.tx.add(&[segment], false) {
            Ok(head) => {
                self.tx_buffer_of[usize::from(head)] = buffer;
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += frame.len() as u64;
                true
            }
            Err(_) => {
                self.tx_free.push(buffer);
                false
            }
        }
    }

    /// Publishes what was added since the last flush and sends the back-end one event if it
    /// asked for one.
    pub fn flush(&mut self) {
        if self.broken.is_some() {
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
        self.reap_tx();
        if self.broken.is_some() {
            return false;
        }
        let rx_waiting = self.rx.enable_notify();
        let tx_waiting = self.tx_free.is_empty() && self.tx.enable_notify();
        rx_waiting || tx_waiting
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
        self.tx.add(segments, false).ok()
    }

    /// A free transmit buffer's pool offset, taken for good (hostile modes).
    pub fn take_tx_buffer(&mut self) -> Option<u32> {
        self.reap_tx();
        self.tx_free
            .pop()
            .map(|b| (usize::from(b) * self.buffer_len) as u32)
    }

    /// Whether a frame can be queued now (completions reaped first).
    pub fn can_send(&mut self) -> bool {
        self.reap_tx();
        self.broken.is_none() && !self.tx_free.is_empty()
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.frame_limit;
        caps.max_burst_size = Some(TX_BUFFERS / 2);
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

fn buffer_segment(buffer: usize, buffer_len: usize) -> Segment {
    Segment {
        offset: (buffer * buffer_len) as u32,
        len: buffer_len as u32,
    }
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
}

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
        })
    }

    /// Copies the NIC's state into the fields apps read.
    fn sync(&mut self) {
        let (stats, broken) = match &self.path {
            Path::Paravirt(r) => (r.stats, &r.broken),
            Path::Emulated(e) => (e.stats, &e.broken),
        };
        self.stats = stats;
        if self.broken.is_none() && broken.is_some() {
            self.broken = broken.clone();
        }
    }

    /// Whether this is the emulated NIC.
    pub fn is_emulated(&self) -> bool {
        matches!(self.path, Path::Emulated(_))
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
        self.sync();
    }

    /// Before sleeping: asks for a wake-up on news; true if news is already there.
    pub fn arm(&mut self) -> bool {
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

    fn next_rx(&mut self) -> Option<Vec<u8>> {
        let frame = match &mut self.path {
            Path::Paravirt(r) => r.next_rx(),
            Path::Emulated(e) => e.next_rx(),
        };
        self.sync();
        frame
    }
}

pub struct FrontRx(Vec<u8>);
pub struct FrontTx<'a>(&'a mut NetFront);

impl RxToken for FrontRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for FrontTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let result = f(&mut frame);
        self.0.stats.copied_stack_to_frame += len as u64;
        // `transmit` checked a frame can go; a failure here only loses this frame.
        let _ = self.0.send_frame(&frame);
        result
    }
}

impl Device for NetFront {
    type RxToken<'a> = FrontRx;
    type TxToken<'a> = FrontTx<'a>;

    fn receive(&mut self, _now: NetInstant) -> Option<(FrontRx, FrontTx<'_>)> {
        let frame = self.next_rx()?;
        // Counted as handed over: the stack always consumes the token, parses the frame and
        // copies its payload into a socket buffer.
        self.stats.copied_frame_to_stack += frame.len() as u64;
        Some((FrontRx(frame), FrontTx(self)))
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
