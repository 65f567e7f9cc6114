//! The guest's driver for the emulated NIC (`shared_abi::emunic`): every register access is a
//! volatile access to its window (`vm_runtime::mmio`), which traps to the hypervisor and is
//! answered by the device model in the driver domain. A frame goes out as `TX_CMD` (its
//! length) and one `TX_DATA` write per 4 bytes; one comes in as `RX_STATUS` (its length) and
//! one `RX_DATA` read per 4 bytes. The device's interrupt (SPI
//! [`EMULATED_NIC`](shared_abi::layout::intid::EMULATED_NIC)) is bound to the local event port,
//! so apps sleep on it as on a para-virtual front-end's data port.
//!
//! The answers are the device model's, so they are checked: an `RX_STATUS` beyond a frame's
//! size (all ones is what the hypervisor answers when the device model is gone) marks the NIC
//! broken instead of being believed.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use shared_abi::emunic::{
    mac_from_registers, BYTE_TEST, BYTE_TEST_VALUE, ID_REV, ID_VALUE, INT_ALL, INT_EN,
    INT_RX_FRAME, INT_STS, MAC_HI, MAC_LO, MAX_FRAME, MIN_FRAME, RX_DATA, RX_STATUS, TX_CMD,
    TX_DATA,
};
use shared_abi::layout::intid::EMULATED_NIC;
use vm_net::smoltcp::phy::{DeviceCapabilities, Medium};
use vm_runtime::{evtchn, mmio, println};

use crate::netfront::FrontStats;

pub struct EmuNic {
    /// The local port the device's interrupt marks.
    pub port: u32,
    pub mac: [u8; 6],
    pub broken: Option<String>,
    pub stats: FrontStats,
    /// A frame may be waiting: the last `RX_STATUS` said so, or has not been read since the
    /// device last interrupted. Otherwise a poll costs no access (each one is a trap).
    rx_maybe: bool,
    /// Interrupts seen when `RX_STATUS` was last read.
    irqs_seen: u64,
}

/// A 32-bit register read; the window offsets used here are fixed and valid.
fn read(reg: u64) -> u32 {
    mmio::read(reg, 4).unwrap_or(u64::from(u32::MAX)) as u32
}

fn write(reg: u64, value: u32) {
    let _ = mmio::write(reg, 4, u64::from(value));
}

impl EmuNic {
    /// Checks the device is there and speaks our byte order, reads its MAC, binds its
    /// interrupt and enables it for received frames. Needs the event channels initialised.
    pub fn open() -> Result<EmuNic, String> {
        let id = read(ID_REV);
        if id != ID_VALUE {
            return Err(format!(
                "no emulated NIC: ID_REV reads {id:#x}, expected {ID_VALUE:#x}"
            ));
        }
        let test = read(BYTE_TEST);
        if test != BYTE_TEST_VALUE {
            return Err(format!("emulated NIC: BYTE_TEST reads {test:#x}"));
        }
        let (lo, hi) = (read(MAC_LO), read(MAC_HI));
        let mac = mac_from_registers(lo, hi).ok_or_else(|| {
            format!(
                "emulated NIC: MAC_LO {lo:#010x}, MAC_HI {hi:#010x} is not a unicast MAC; \
                 the device model is broken"
            )
        })?;
        let port = evtchn::bind_local_irq(EMULATED_NIC).map_err(|e| format!("{e}"))?;
        write(INT_STS, INT_ALL);
        write(INT_EN, INT_RX_FRAME);
        Ok(EmuNic {
            port,
            mac,
            broken: None,
            stats: FrontStats::default(),
            rx_maybe: true,
            irqs_seen: evtchn::local_irqs(),
        })
    }

    fn fail(&mut self, why: String) {
        println!("net: emulated NIC: {why}; stopping the network");
        self.broken = Some(why);
    }

    /// Sends `frame` through the data port; false if it is not a frame the device carries.
    pub fn send_frame(&mut self, frame: &[u8]) -> bool {
        if self.broken.is_some() || !(MIN_FRAME..=MAX_FRAME).contains(&frame.len()) {
            return false;
        }
        write(TX_CMD, frame.len() as u32);
        for chunk in frame.chunks(4) {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            write(TX_DATA, u32::from_le_bytes(word));
        }
        self.stats.tx_frames += 1;
        true
    }

    /// Whether to send now: only with the receive FIFO empty. A frame costs hundreds of
    /// accesses, and smoltcp sends a whole TCP window in one poll; without this the peer's
    /// ACKs overflow the FIFO meanwhile and TCP stalls on their loss. One access per frame.
    pub fn can_send(&mut self) -> bool {
        if self.broken.is_some() {
            return false;
        }
        let empty = read(RX_STATUS) == 0;
        self.rx_maybe |= !empty;
        empty
    }

    /// The next received frame, if the device has one.
    pub fn next_rx(&mut self) -> Option<Vec<u8>> {
        if self.broken.is_some() {
            return None;
        }
        // No access while nothing says a frame came: a frame that arrives unannounced (its
        // status bit was still set) is seen by the next send's or sleep's `RX_STATUS` read.
        let irqs = evtchn::local_irqs();
        if !self.rx_maybe && irqs == self.irqs_seen {
            return None;
        }
        self.irqs_seen = irqs;
        let len = read(RX_STATUS) as usize;
        self.rx_maybe = len != 0;
        if len == 0 {
            self.stats.rx_empty += 1;
            return None;
        }
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
            self.fail(format!(
                "RX_STATUS reads {len:#x}, not a frame length (is the device model gone?)"
            ));
            return None;
        }
        let mut frame = Vec::with_capacity(len.next_multiple_of(4));
        for _ in 0..len.div_ceil(4) {
            frame.extend_from_slice(&read(RX_DATA).to_le_bytes());
        }
        frame.truncate(len);
        self.stats.rx_frames += 1;
        Some(frame)
    }

    /// Before sleeping: clears the status bits (the next frame interrupts again), then says
    /// whether a frame is already waiting.
    pub fn arm(&mut self) -> bool {
        if self.broken.is_some() {
            return false;
        }
        write(INT_STS, INT_ALL);
        self.rx_maybe = read(RX_STATUS) != 0;
        self.rx_maybe
    }

    pub fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        // Each frame is written out as it is built: nothing queues.
        caps.max_burst_size = Some(1);
        caps
    }
}
