//! The real NIC, passed through by the hypervisor: PCI enumeration through the emulated ECAM, BAR
//! placement inside the window the hypervisor allows, and `virtio-drivers`' virtio-net driver on
//! its PCI transport, wrapped so VIRTIO_F_ACCESS_PLATFORM is negotiated (see [`PlatformAccess`]).
//!
//! The hypervisor shows us exactly one function; everything else on the bus reads as absent. Its
//! INTx arrives as `PASSTHROUGH_INTX` through a hardware-linked list register, so our EOI
//! deactivates the physical line; the handler reads the device's ISR (which drops the line) and
//! leaves the work to the service loop.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use shared_abi::layout::intid::PASSTHROUGH_INTX;
use shared_abi::layout::{PCI_ECAM_IPA, PCI_WINDOW_IPA};
use spin::Mutex;
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::pci::bus::{
    BarInfo, Cam, Command, DeviceFunction, MemoryBarType, MmioCam, PciRoot,
};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::Error as VirtioError;
use vm_runtime::{gic, irq};

use crate::dma::DmaHal;

/// Receive and transmit queue size: enough frames in flight for a busy link on an emulator.
pub const QUEUE_SIZE: usize = 64;
/// Receive buffer size: a 1514-byte frame plus the virtio-net header, rounded up.
pub const RX_BUFFER_LEN: usize = 2048;

/// VIRTIO_F_ACCESS_PLATFORM: the device's DMA goes through the platform's IOMMU.
const F_ACCESS_PLATFORM: u64 = 1 << 33;

/// A transport that negotiates VIRTIO_F_ACCESS_PLATFORM when the device offers it and checks
/// that the device kept FEATURES_OK.
///
/// Why: virtio-drivers 0.13 negotiates only the features its drivers know, and
/// `iommu_platform=on` devices refuse a driver that does not accept ACCESS_PLATFORM by clearing
/// FEATURES_OK, which the crate never reads back: the device would then silently do nothing. This
/// is the one place that works around it.
pub struct PlatformAccess<T: Transport> {
    inner: T,
}

/// Set when the device refused our features (FEATURES_OK did not stick).
static FEATURES_REFUSED: AtomicBool = AtomicBool::new(false);

impl<T: Transport> PlatformAccess<T> {
    pub fn new(inner: T) -> Self {
        PlatformAccess { inner }
    }
}

impl<T: Transport> Transport for PlatformAccess<T> {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.inner.read_device_features()
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        let offered = self.inner.read_device_features() & F_ACCESS_PLATFORM;
        self.inner.write_driver_features(driver_features | offered);
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue)
    }
    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status);
        if status.contains(DeviceStatus::FEATURES_OK)
            && !self.inner.get_status().contains(DeviceStatus::FEATURES_OK)
        {
            FEATURES_REFUSED.store(true, Ordering::Relaxed);
        }
    }
    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
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
            .queue_set(queue, size, descriptors, driver_area, device_area)
    }
    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }
    fn read_config_space<V: zerocopy::FromBytes + zerocopy::IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<V> {
        self.inner.read_config_space(offset)
    }
    fn write_config_space<V: zerocopy::IntoBytes + zerocopy::Immutable>(
        &mut self,
        offset: usize,
        value: V,
    ) -> virtio_drivers::Result<()> {
        self.inner.write_config_space(offset, value)
    }
}

pub type NetDevice = VirtIONet<DmaHal, PlatformAccess<PciTransport>, QUEUE_SIZE>;

/// The NIC, shared between the service loop and the interrupt handler. The loop only holds the
/// lock with IRQs masked, so the handler (same vCPU) never finds it taken.
pub static NIC: Mutex<Option<NetDevice>> = Mutex::new(None);
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

/// Runs `f` on the NIC with IRQs masked (see [`NIC`]).
pub fn with_nic<R>(f: impl FnOnce(&mut NetDevice) -> R) -> Option<R> {
    gic::without_irqs(|| NIC.lock().as_mut().map(f))
}

/// What [`probe`] found.
pub struct NicInfo {
    pub function: String,
    pub mac: [u8; 6],
}

/// Finds the passed virtio-net function, places its BARs, starts the driver and its interrupt.
pub fn probe(routing_id: u16) -> Result<NicInfo, String> {
    // SAFETY: the hypervisor emulates a 256-bus ECAM at PCI_ECAM_IPA for us (we own a passed
    // function, or we would not be here); it is identity-mapped as Device memory and nothing
    // else in this VM touches it.
    let cam = unsafe { MmioCam::new(PCI_ECAM_IPA as *mut u8, Cam::Ecam) };
    let mut root = PciRoot::new(cam);
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
    place_bars(&mut root, wanted)?;
    root.set_command(wanted, Command::MEMORY_SPACE | Command::BUS_MASTER);
    let transport = PciTransport::new::<DmaHal, _>(&mut root, wanted)
        .map_err(|e| format!("virtio PCI transport: {e}"))?;
    irq::register(PASSTHROUGH_INTX, on_interrupt).map_err(|e| format!("{e}"))?;
    // The device may raise INTx as soon as it is live, and only the handler can lower it (by
    // reading the ISR through the device in NIC): keep IRQs masked until NIC holds it.
    let mac = gic::without_irqs(|| {
        let device = NetDevice::new(PlatformAccess::new(transport), RX_BUFFER_LEN);
        if FEATURES_REFUSED.load(Ordering::Relaxed) {
            return Err(String::from(
                "the device refused our features (FEATURES_OK cleared) even with ACCESS_PLATFORM",
            ));
        }
        let mut device = device.map_err(|e: VirtioError| format!("virtio-net init: {e}"))?;
        let mac = device.mac_address();
        device.enable_interrupts();
        *NIC.lock() = Some(device);
        Ok(mac)
    })?;
    Ok(NicInfo {
        function: format!("{wanted}"),
        mac,
    })
}

/// Places every memory BAR in the window the hypervisor maps for us, naturally aligned.
fn place_bars(root: &mut PciRoot<MmioCam<'_>>, function: DeviceFunction) -> Result<(), String> {
    let (start, end) = PCI_WINDOW_IPA;
    let mut next = start;
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
        next = address + size;
    }
    Ok(())
}
