//! The real NIC, passed through by the hypervisor: PCI enumeration through the emulated ECAM, BAR
//! placement inside the window the hypervisor allows, and `virtio-drivers`' virtio-net driver on
//! its PCI transport, wrapped so VIRTIO_F_ACCESS_PLATFORM is negotiated (see [`PlatformAccess`]).
//!
//! The hypervisor shows us exactly one function; everything else on the bus reads as absent.
//! Its interrupts arrive one of two ways (the boot line `NIC interrupts: ...` says which):
//! - **vLPI direct** (GICv4, issue 15; see [`msix`]): the receive and transmit queues' MSI-X
//!   vectors are virtual LPIs the GIC delivers straight to our vCPU, with no exit to the
//!   hypervisor while we run; the handler only notes the news.
//! - **INTx** otherwise: it arrives as `PASSTHROUGH_INTX` through a hardware-linked list
//!   register, so our EOI deactivates the physical line; the handler reads the device's ISR
//!   (which drops the line) and leaves the work to the service loop.
//!
//! [`Nic`] owns the buffers itself on top of `VirtIONetRaw`, so that sending never waits for the
//! device: virtio-drivers' `VirtIONet::send` spins until the device has consumed each frame,
//! which under QEMU means until QEMU's I/O thread got to it (milliseconds on a busy host, with
//! our interrupts masked). Here a frame is handed over and the loop goes on; finished transmit
//! buffers are taken back when the next frame is sent.
//!
//! Both doorbells are rung once per batch, not per frame ([`Doorbells`]): under QEMU a doorbell
//! is a write to an MMIO register served under QEMU's global lock, which its main loop holds
//! while the user network works. On the host -> guest path the driver domain spent 40 % of its
//! samples at the transmit doorbell, once per ACK; and with the NIC on a tap device it spent
//! 60 % at the receive doorbell, rung for every buffer it gave back: a device that has run out
//! of buffers asks for that notification, and QEMU then delivers what waits into the one new
//! buffer inside the exit, so every frame cost an exit.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use shared_abi::layout::intid::PASSTHROUGH_INTX;
use shared_abi::layout::{PCI_ECAM_IPA, PCI_WINDOW_IPA};
use spin::Mutex;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, DeviceFunction, MemoryBarType, PciRoot,
};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::Error as VirtioError;
use vm_runtime::{gic, irq, timer};

use crate::dma::DmaHal;

pub mod msix;

use msix::{Ecam, Mode};

/// Receive and transmit queue size: enough frames in flight for a busy link on an emulator.
pub const QUEUE_SIZE: usize = 64;
/// Receive and transmit buffer size: a 1514-byte frame plus the virtio-net header, rounded up.
pub const RX_BUFFER_LEN: usize = 2048;
/// The longest wait for a free transmit slot before a frame for the NIC is dropped.
pub const TX_FULL_WAIT_US: u64 = 5_000;

/// virtio-net's receive queue.
const RX_QUEUE: u16 = 0;
/// virtio-net's transmit queue.
const TX_QUEUE: u16 = 1;

/// VIRTIO_F_EVENT_IDX (VIRTIO_RING_F_EVENT_IDX).
const F_EVENT_IDX: u64 = 1 << 29;
/// VIRTIO_F_ACCESS_PLATFORM: the device's DMA goes through the platform's IOMMU.
const F_ACCESS_PLATFORM: u64 = 1 << 33;

/// A transport that negotiates VIRTIO_F_ACCESS_PLATFORM when the device offers it and checks
/// that the device kept FEATURES_OK, and holds both queues' doorbells back for
/// [`Doorbells::ring`] (virtio-drivers' `transmit_begin` and `receive_begin` ring them for
/// every buffer and give no other way to batch).
///
/// Why: virtio-drivers 0.13 negotiates only the features its drivers know, and
/// `iommu_platform=on` devices refuse a driver that does not accept ACCESS_PLATFORM by clearing
/// FEATURES_OK, which the crate never reads back: the device would then silently do nothing. This
/// is the one place that works around it.
/// It also points each queue at its MSI-X vector when the NIC is on vLPIs (virtio-drivers
/// 0.13 never writes `queue_msix_vector`).
pub struct PlatformAccess<T: Transport> {
    inner: Arc<Mutex<T>>,
    vectors: Option<msix::QueueVectors>,
}

/// A notification [`PlatformAccess`] held back and [`Doorbells::ring`] has not yet given, per
/// queue (there is one NIC). Statics, so the fabric can see that there is nothing to ring
/// without taking the NIC's lock.
static TX_PENDING: AtomicBool = AtomicBool::new(false);
static RX_PENDING: AtomicBool = AtomicBool::new(false);

/// Whether frames were handed to the NIC, or receive buffers given back to it, since its
/// doorbells last rang.
pub fn doorbells_pending() -> bool {
    TX_PENDING.load(Ordering::Relaxed) || RX_PENDING.load(Ordering::Relaxed)
}

/// Doorbells the driver asked for (the device had not turned notifications off) and those
/// rung, per queue: the `NIC doorbells` and `NIC receive doorbells` lines.
pub static TX_DOORBELLS_ASKED: AtomicU64 = AtomicU64::new(0);
pub static TX_DOORBELLS_RUNG: AtomicU64 = AtomicU64::new(0);
pub static RX_DOORBELLS_ASKED: AtomicU64 = AtomicU64::new(0);
pub static RX_DOORBELLS_RUNG: AtomicU64 = AtomicU64::new(0);

/// The doorbells [`PlatformAccess`] held back: rung at the end of a batch.
pub struct Doorbells<T: Transport> {
    transport: Arc<Mutex<T>>,
}

impl<T: Transport> Doorbells<T> {
    /// Tells the device about the frames queued and the receive buffers given back since the
    /// last ring, if there are any.
    pub fn ring(&self) {
        for (queue, pending, rung) in [
            (TX_QUEUE, &TX_PENDING, &TX_DOORBELLS_RUNG),
            (RX_QUEUE, &RX_PENDING, &RX_DOORBELLS_RUNG),
        ] {
            // A load first: most rings have one queue to tell, and a swap is a store.
            if pending.load(Ordering::Relaxed) && pending.swap(false, Ordering::Relaxed) {
                rung.fetch_add(1, Ordering::Relaxed);
                self.transport.lock().notify(queue);
            }
        }
    }
}

/// Set when the device refused our features (FEATURES_OK did not stick).
static FEATURES_REFUSED: AtomicBool = AtomicBool::new(false);
/// Set when the device did not take a queue's MSI-X vector.
static VECTOR_REFUSED: AtomicBool = AtomicBool::new(false);

impl<T: Transport> PlatformAccess<T> {
    /// The transport, and the doorbells its notifications wait at.
    pub fn new(inner: T, vectors: Option<msix::QueueVectors>) -> (Self, Doorbells<T>) {
        let inner = Arc::new(Mutex::new(inner));
        let doorbell = Doorbells {
            transport: inner.clone(),
        };
        (PlatformAccess { inner, vectors }, doorbell)
    }
}

impl<T: Transport> Transport for PlatformAccess<T> {
    fn device_type(&self) -> DeviceType {
        self.inner.lock().device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.inner.lock().read_device_features() & !F_EVENT_IDX
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        let offered = self.inner.lock().read_device_features() & F_ACCESS_PLATFORM;
        self.inner
            .lock()
            .write_driver_features(driver_features | offered);
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.lock().max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        match queue {
            TX_QUEUE => {
                TX_DOORBELLS_ASKED.fetch_add(1, Ordering::Relaxed);
                TX_PENDING.store(true, Ordering::Relaxed);
            }
            RX_QUEUE => {
                RX_DOORBELLS_ASKED.fetch_add(1, Ordering::Relaxed);
                RX_PENDING.store(true, Ordering::Relaxed);
            }
            _ => self.inner.lock().notify(queue),
        }
    }
    fn get_status(&self) -> DeviceStatus {
        self.inner.lock().get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.lock().set_status(status);
        if status.contains(DeviceStatus::FEATURES_OK)
            && !self
                .inner
                .lock()
                .get_status()
                .contains(DeviceStatus::FEATURES_OK)
        {
            FEATURES_REFUSED.store(true, Ordering::Relaxed);
        }
    }
    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.lock().set_guest_page_size(guest_page_size)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.inner.lock().requires_legacy_layout()
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: virtio_drivers::PhysAddr,
        driver_area: virtio_drivers::PhysAddr,
        device_area: virtio_drivers::PhysAddr,
    ) {
        self.inner
            .lock()
            .queue_set(queue, size, descriptors, driver_area, device_area);
        // Queue n -> vector n: receive queue 0 on vector 0, transmit queue 1 on vector 1.
        if let Some(vectors) = self.vectors {
            if !vectors.assign(queue) {
                VECTOR_REFUSED.store(true, Ordering::Relaxed);
            }
        }
    }
    fn queue_unset(&mut self, queue: u16) {
        self.inner.lock().queue_unset(queue)
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.lock().queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.lock().ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.inner.lock().read_config_generation()
    }
    fn read_config_space<V: zerocopy::FromBytes + zerocopy::IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<V> {
        self.inner.lock().read_config_space(offset)
    }
    fn write_config_space<V: zerocopy::IntoBytes + zerocopy::Immutable>(
        &mut self,
        offset: usize,
        value: V,
    ) -> virtio_drivers::Result<()> {
        self.inner.lock().write_config_space(offset, value)
    }
}

pub type RawNet = VirtIONetRaw<DmaHal, PlatformAccess<PciTransport>, QUEUE_SIZE>;

/// A frame the NIC received, in its own buffer (give it back with [`Nic::recycle`]).
pub struct RxFrame {
    buffer: Box<[u8]>,
    start: usize,
    len: usize,
}

impl RxFrame {
    /// The Ethernet frame (after the virtio-net header).
    pub fn packet(&self) -> &[u8] {
        &self.buffer[self.start..self.start + self.len]
    }

    pub fn packet_len(&self) -> usize {
        self.len
    }
}

/// The virtio-net device and the buffers the device holds: receive buffers always posted,
/// transmit buffers in flight until the device has sent them. Each buffer is one descriptor,
/// so a token (the descriptor's index) names it.
pub struct Nic {
    raw: RawNet,
    doorbells: Doorbells<PciTransport>,
    rx: [Option<Box<[u8]>>; QUEUE_SIZE],
    /// Receive buffers that could not be posted again (never expected: the ring has a slot
    /// for each); posted with the next recycled one.
    rx_spare: Vec<Box<[u8]>>,
    /// In flight: the buffer and the length handed to the device.
    tx: [Option<(Box<[u8]>, usize)>; QUEUE_SIZE],
    tx_free: Vec<Box<[u8]>>,
}

impl Nic {
    /// Takes the device over and posts a receive buffer in every slot.
    pub fn new(raw: RawNet, doorbells: Doorbells<PciTransport>) -> Result<Nic, VirtioError> {
        let mut nic = Nic {
            raw,
            doorbells,
            rx: core::array::from_fn(|_| None),
            rx_spare: Vec::new(),
            tx: core::array::from_fn(|_| None),
            tx_free: Vec::new(),
        };
        for _ in 0..QUEUE_SIZE {
            nic.post_rx(vec![0u8; RX_BUFFER_LEN].into_boxed_slice())?;
        }
        nic.ring_doorbells();
        Ok(nic)
    }

    fn post_rx(&mut self, mut buffer: Box<[u8]>) -> Result<(), VirtioError> {
        // SAFETY: the buffer is kept in `rx` under its token and not touched until the device
        // returns that token (`receive`); a Box's heap memory does not move with the Box.
        let token = unsafe { self.raw.receive_begin(&mut buffer)? };
        match self.rx.get_mut(usize::from(token)) {
            Some(slot) => *slot = Some(buffer),
            None => return Err(VirtioError::WrongToken),
        }
        Ok(())
    }

    pub fn mac_address(&self) -> [u8; 6] {
        self.raw.mac_address()
    }

    pub fn enable_interrupts(&mut self) {
        self.raw.enable_interrupts();
    }

    /// Reads the ISR, which lowers INTx.
    pub fn ack_interrupt(&mut self) -> InterruptStatus {
        self.raw.ack_interrupt()
    }

    /// The next received frame, if any. A used entry that names no buffer of ours, or a length
    /// that does not fit the buffer, is skipped (the buffer is posted again).
    pub fn receive(&mut self) -> Option<RxFrame> {
        loop {
            let token = self.raw.poll_receive()?;
            let mut buffer = self.rx.get_mut(usize::from(token))?.take()?;
            // SAFETY: `buffer` is the one posted under `token`.
            let done = unsafe { self.raw.receive_complete(token, &mut buffer) };
            match done {
                Ok((start, len)) if start + len <= buffer.len() => {
                    return Some(RxFrame { buffer, start, len })
                }
                _ => self.recycle_buffer(buffer),
            }
        }
    }

    /// Gives a received frame's buffer back to the device; the device hears of it at the next
    /// [`Nic::ring_doorbells`].
    pub fn recycle(&mut self, frame: RxFrame) {
        self.recycle_buffer(frame.buffer);
    }

    fn recycle_buffer(&mut self, buffer: Box<[u8]>) {
        self.rx_spare.push(buffer);
        while let Some(buffer) = self.rx_spare.pop() {
            if self.post_rx(buffer).is_err() {
                break;
            }
        }
    }

    /// Takes back the transmit buffers the device has finished with.
    fn reap_tx(&mut self) {
        while let Some(token) = self.raw.poll_transmit() {
            let Some((buffer, len)) = self.tx.get_mut(usize::from(token)).and_then(Option::take)
            else {
                return;
            };
            // SAFETY: the same buffer and length as handed over under `token`.
            let _ = unsafe { self.raw.transmit_complete(token, &buffer[..len]) };
            self.tx_free.push(buffer);
        }
    }

    /// Waits, at most [`TX_FULL_WAIT_US`], for the device to finish a frame when all transmit
    /// slots are in flight. Dropping instead would cost TCP a retransmission timeout (smoltcp's
    /// is at least a second); waiting here happens once per queue-full of frames, not per frame.
    fn wait_for_room(&mut self) -> bool {
        // The device cannot finish frames it was not told about.
        self.ring_doorbells();
        let deadline = timer::now() + timer::us_to_ticks(TX_FULL_WAIT_US);
        while timer::now() < deadline {
            core::hint::spin_loop();
            if self.can_send() {
                return true;
            }
        }
        false
    }

    /// Tells the device about the frames [`Nic::send`] queued and the receive buffers
    /// [`Nic::recycle`] gave back since the last call: the caller rings after a batch (the
    /// fabric every few frames it switches and at the end of each round), so one doorbell
    /// serves many frames.
    pub fn ring_doorbells(&mut self) {
        self.doorbells.ring();
    }

    /// Whether a frame can be handed over now.
    pub fn can_send(&mut self) -> bool {
        self.reap_tx();
        self.raw.can_send()
    }

    /// Hands a frame of `len` bytes to the device without waiting for it to be sent; `fill`
    /// writes the frame and may refuse it (returns false). False when the frame was not sent:
    /// no free transmit slot, too long, or refused. The device hears of it at the next
    /// [`Nic::ring_doorbells`].
    pub fn send(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> bool {
        if !self.can_send() && !self.wait_for_room() {
            return false;
        }
        let mut buffer = self
            .tx_free
            .pop()
            .unwrap_or_else(|| vec![0u8; RX_BUFFER_LEN].into_boxed_slice());
        let sent = match self.raw.fill_buffer_header(&mut buffer) {
            Ok(header)
                if header + len <= buffer.len() && fill(&mut buffer[header..header + len]) =>
            {
                // SAFETY: the buffer is kept in `tx` under its token and not touched until the
                // device returns that token (`reap_tx`).
                match unsafe { self.raw.transmit_begin(&buffer[..header + len]) } {
                    Ok(token) => match self.tx.get_mut(usize::from(token)) {
                        Some(slot) => {
                            *slot = Some((buffer, header + len));
                            return true;
                        }
                        // Never: tokens are descriptor indices below the queue size.
                        None => false,
                    },
                    Err(_) => false,
                }
            }
            _ => false,
        };
        self.tx_free.push(buffer);
        sent
    }
}

/// The NIC, shared between the service loop and the interrupt handler. The loop only holds the
/// lock with IRQs masked, so the handler (same vCPU) never finds it taken.
pub static NIC: Mutex<Option<Nic>> = Mutex::new(None);
/// Interrupts taken (for the counters line).
pub static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// Set by the handler, cleared by the service loop: the device has news.
pub static NEWS: AtomicBool = AtomicBool::new(false);

fn on_interrupt(_intid: u32) {
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    // Reading the ISR lowers the INTx line; without it our EOI would let it fire again at once.
    if let Some(nic) = NIC.lock().as_mut() {
        nic.ack_interrupt();
    }
    NEWS.store(true, Ordering::Release);
}

/// A receive or transmit vector's vLPI: no line to lower (MSI-X is edge-like), only news.
fn on_vlpi(_intid: u32) {
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    NEWS.store(true, Ordering::Release);
}

/// Runs `f` on the NIC with IRQs masked (see [`NIC`]).
pub fn with_nic<R>(f: impl FnOnce(&mut Nic) -> R) -> Option<R> {
    gic::without_irqs(|| NIC.lock().as_mut().map(f))
}

/// What [`probe`] found.
pub struct NicInfo {
    pub function: String,
    pub mac: [u8; 6],
    /// How its interrupts arrive (the boot line's words).
    pub interrupts: String,
}

/// Finds the passed virtio-net function, places its BARs, starts the driver and its interrupts
/// (vLPIs when the hypervisor grants MSIX_MAP, INTx otherwise). `msix_probe`: first check that
/// MSIX_MAP refuses what it must (a function not ours, 0 or too many vectors, a second call).
pub fn probe(routing_id: u16, msix_probe: bool) -> Result<NicInfo, String> {
    // SAFETY: the hypervisor emulates a 256-bus ECAM at PCI_ECAM_IPA for us (we own a passed
    // function, or we would not be here); it is identity-mapped as Device memory, every access
    // traps, and nothing but this module touches it.
    let ecam = unsafe { Ecam::new(PCI_ECAM_IPA) };
    let mut root = PciRoot::new(ecam);
    let wanted = DeviceFunction {
        bus: (routing_id >> 8) as u8,
        device: ((routing_id >> 3) & 0x1f) as u8,
        function: (routing_id & 7) as u8,
    };
    let mut visible = 0;
    let mut found = None;
    for (function, info) in root.enumerate_bus(wanted.bus) {
        visible += 1;
        if function == wanted {
            found = Some(info);
        }
    }
    let info = found.ok_or_else(|| format!("PCI function {wanted} is not visible"))?;
    if virtio_device_type(&info) != Some(DeviceType::Network) {
        return Err(format!(
            "PCI function {wanted} is {:04x}:{:04x}, not a virtio-net device",
            info.vendor_id, info.device_id
        ));
    }
    vm_runtime::println!(
        "PCI: {visible} function(s) visible; {wanted} is virtio-net ({:04x}:{:04x})",
        info.vendor_id,
        info.device_id
    );
    let bars = place_bars(&mut root, wanted)?;
    // INTx stays disabled at the function until the device is reset and NIC holds it: an
    // earlier incarnation of this VM may have died with the device's ISR set, and with the
    // line asserted before anything here can read the ISR, every EOI would let it fire again
    // at once (the hypervisor disabled INTx when that incarnation stopped).
    let running = Command::MEMORY_SPACE | Command::BUS_MASTER;
    root.set_command(wanted, running | Command::INTERRUPT_DISABLE);
    let refusals = msix_probe.then(|| msix::probe_refusals(routing_id));
    let mode = msix::setup(&root, ecam, wanted, routing_id, &bars, on_vlpi);
    if let Some(refusals) = refusals {
        vm_runtime::println!(
            "MSIX_MAP probes: {refusals}{}",
            msix::probe_again(routing_id)
        );
    }
    let (vectors, interrupts) = match mode {
        Mode::Vlpi {
            first_vintid,
            queues,
        } => (
            Some(queues),
            format!(
                "vLPI direct (MSI-X vectors {} -> vINTIDs {first_vintid}..={}; config vector none)",
                msix::VECTORS,
                first_vintid + u32::from(msix::VECTORS) - 1
            ),
        ),
        Mode::Intx(why) => (None, format!("INTx ({why})")),
    };
    let transport = PciTransport::new::<DmaHal, _>(&mut root, wanted)
        .map_err(|e| format!("virtio PCI transport: {e}"))?;
    if vectors.is_none() {
        irq::register(PASSTHROUGH_INTX, on_interrupt).map_err(|e| format!("{e}"))?;
    }
    // The device may raise INTx as soon as it is live, and only the handler can lower it (by
    // reading the ISR through the device in NIC): keep IRQs masked until NIC holds it.
    let mac = gic::without_irqs(|| {
        let (access, doorbell) = PlatformAccess::new(transport, vectors);
        let device = RawNet::new(access).and_then(|raw| Nic::new(raw, doorbell));
        if FEATURES_REFUSED.load(Ordering::Relaxed) {
            return Err(String::from(
                "the device refused our features (FEATURES_OK cleared) even with ACCESS_PLATFORM",
            ));
        }
        if VECTOR_REFUSED.load(Ordering::Relaxed) {
            return Err(String::from(
                "the device did not take a queue's MSI-X vector (read back NO_VECTOR)",
            ));
        }
        let mut device = device.map_err(|e: VirtioError| format!("virtio-net init: {e}"))?;
        let mac = device.mac_address();
        device.enable_interrupts();
        *NIC.lock() = Some(device);
        Ok(mac)
    })?;
    // The reset in RawNet::new cleared the ISR; from here on the handler lowers the line.
    // With MSI-X enabled the function does not use INTx: it stays disabled.
    if vectors.is_none() {
        root.set_command(wanted, running);
    }
    Ok(NicInfo {
        function: format!("{wanted}"),
        mac,
        interrupts,
    })
}

/// Places every memory BAR in the window the hypervisor maps for us, naturally aligned; each
/// BAR's address (0: none).
fn place_bars(root: &mut PciRoot<Ecam>, function: DeviceFunction) -> Result<[u64; 6], String> {
    let (start, end) = PCI_WINDOW_IPA;
    let mut next = start;
    let mut placed = [0u64; 6];
    let bars = root
        .bars(function)
        .map_err(|e| format!("reading BARs: {e}"))?;
    for (index, bar) in bars.iter().enumerate() {
        let Some(BarInfo::Memory {
            address_type, size, ..
        }) = bar
        else {
            continue;
        };
        if *size == 0 {
            continue;
        }
        let address = next.next_multiple_of(*size);
        if address + size > end {
            return Err(format!(
                "BAR{index} ({size} bytes) does not fit in the PCI window {start:#x}..{end:#x}"
            ));
        }
        match address_type {
            MemoryBarType::Width64 => root.set_bar_64(function, index as u8, address),
            _ => root.set_bar_32(function, index as u8, address as u32),
        }
        if let Some(slot) = placed.get_mut(index) {
            *slot = address;
        }
        next = address + size;
    }
    Ok(placed)
}
