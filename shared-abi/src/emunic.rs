//! The emulated NIC: a small register-FIFO Ethernet device (LAN9118-inspired) whose registers a
//! guest with `nic = "emulated"` sees at [`EMULATED_NIC_IPA`](crate::layout::EMULATED_NIC_IPA).
//! Every access there traps to the hypervisor, which forwards it to the device model in the
//! guest's driver domain (see [`crate::ioreq`]); frame bytes move through 32-bit data-port
//! accesses, so a frame of `n` bytes costs about `n / 4` exits. That cost is the point: it is the
//! lecture's "full emulation" column.
//!
//! This module owns the register map and the device's whole state machine ([`Device`]), as pure
//! logic both the device model (driver domain) and the host tests use. The guest's driver is in
//! `guest-frontend`; the device model around [`Device`] in `driver-domain/src/emunic.rs`.
//!
//! # Registers (32 bits each, little-endian, offsets inside the 4 KiB window)
//!
//! | offset | name           | access | meaning |
//! |-------:|----------------|--------|---------|
//! | `0x00` | `ID_REV`       | RO | [`ID_VALUE`]: device id (high half) and revision (low half) |
//! | `0x04` | `BYTE_TEST`    | RO | [`BYTE_TEST_VALUE`] (`0x8765_4321`): shows the byte order |
//! | `0x08` | `INT_STS`      | R/W1C | interrupt status bits ([`INT_RX_FRAME`] ...); writing 1 clears a bit |
//! | `0x0c` | `INT_EN`       | RW | which status bits raise the interrupt (other bits read 0) |
//! | `0x10` | `MAC_LO`       | RO | MAC bytes 0..4 (byte 0 in bits 0..8) |
//! | `0x14` | `MAC_HI`       | RO | MAC bytes 4..6 in bits 0..16 |
//! | `0x18` | `TX_CMD`       | WO | starts a frame of the written length in bytes, [`MIN_FRAME`]`..=`[`MAX_FRAME`] |
//! | `0x1c` | `TX_DATA`      | WO | the next 4 bytes of the frame being sent (byte 0 in bits 0..8) |
//! | `0x20` | `RX_STATUS`    | RO | length of the next received frame in bytes; 0: nothing received |
//! | `0x24` | `RX_DATA`      | RO | the next 4 bytes of that frame; the read that reaches its end pops it |
//! | `0x28` | `RX_SKIP`      | WO | any value: drops the next received frame unread |
//! | `0x2c` | `RX_DROPPED`   | RO | frames lost because the receive FIFO was full (or too long for it) |
//! | `0x30` | `TX_ERRORS`    | RO | transmit commands and data words refused (see below) |
//! | `0x34` | `BAD_ACCESSES` | RO | accesses that were not a 32-bit access to an implemented register |
//!
//! Counters saturate. The MAC is the one the topology gives the guest: the device model sets it
//! and the guest can only read it (the switch port is held to it anyway).
//!
//! # Interrupt
//!
//! Status bits: [`INT_RX_FRAME`] (a frame entered the receive FIFO), [`INT_TX_DONE`] (a frame was
//! sent), [`INT_TX_ERROR`], [`INT_RX_OVERFLOW`] (a frame was dropped), [`INT_BAD_ACCESS`]. When a
//! status bit goes from 0 to 1 while enabled in `INT_EN`, or `INT_EN` is written with a bit that
//! is already set, the device raises its interrupt once (the SPI
//! [`EMULATED_NIC`](crate::layout::intid::EMULATED_NIC), edge-style). A driver clears the bits it
//! saw (W1C) *before* draining the receive FIFO, so a frame arriving after the clear raises a
//! new interrupt.
//!
//! # Hostile use (every case has a defined answer; nothing grows)
//!
//! - An access of another size than 4 bytes, at an offset that is not a multiple of 4, or to an
//!   offset past `BAD_ACCESSES` (unimplemented): a read answers 0, a write is ignored;
//!   `BAD_ACCESSES` counts it and [`INT_BAD_ACCESS`] is set. The same for a write to a read-only
//!   register and a read of a write-only one. (The guest's own stage 1 maps the window as Device
//!   memory, so an unaligned access is an alignment fault inside the guest and never arrives.)
//! - `TX_CMD` with a length outside [`MIN_FRAME`]`..=`[`MAX_FRAME`]: no frame is started,
//!   `TX_ERRORS` + 1, [`INT_TX_ERROR`]. A `TX_CMD` while a frame is half written: the half frame
//!   is dropped (`TX_ERRORS` + 1) and the new command is taken.
//! - `TX_DATA` with no frame started (a flood of the data port): the word is dropped,
//!   `TX_ERRORS` + 1, [`INT_TX_ERROR`]. The frame buffer is [`MAX_FRAME`] bytes, whatever is
//!   written.
//! - `RX_DATA` with an empty FIFO: reads 0 and counts as a bad access.
//! - Frames from the network: at most [`RX_FIFO_FRAMES`] frames and [`RX_FIFO_BYTES`] bytes wait;
//!   a frame that does not fit, or is not [`MIN_FRAME`]`..=`[`MAX_FRAME`] bytes, is dropped
//!   (`RX_DROPPED` + 1, [`INT_RX_OVERFLOW`]).
//!
//! The device never blocks and never fails: every request gets an answer at once.

use heapless::Deque;

/// The MAC a driver reads from `MAC_LO` and `MAC_HI`, if it is one a port may own (unicast, not
/// all zero, nothing above `MAC_HI`'s two bytes): a driver refuses a device that gives another,
/// since its network stack would be built on an address it cannot use.
pub fn mac_from_registers(lo: u32, hi: u32) -> Option<[u8; 6]> {
    let [a, b, c, d] = lo.to_le_bytes();
    let [e, f, rest @ ..] = hi.to_le_bytes();
    let mac = [a, b, c, d, e, f];
    (rest == [0, 0] && crate::identity::is_unicast(mac)).then_some(mac)
}

/// Register offsets.
pub const ID_REV: u64 = 0x00;
pub const BYTE_TEST: u64 = 0x04;
pub const INT_STS: u64 = 0x08;
pub const INT_EN: u64 = 0x0c;
pub const MAC_LO: u64 = 0x10;
pub const MAC_HI: u64 = 0x14;
pub const TX_CMD: u64 = 0x18;
pub const TX_DATA: u64 = 0x1c;
pub const RX_STATUS: u64 = 0x20;
pub const RX_DATA: u64 = 0x24;
pub const RX_SKIP: u64 = 0x28;
pub const RX_DROPPED: u64 = 0x2c;
pub const TX_ERRORS: u64 = 0x30;
pub const BAD_ACCESSES: u64 = 0x34;
/// First offset past the implemented registers.
pub const REGISTERS_END: u64 = 0x38;

/// `ID_REV`: "5E" "4E" (sluice emulated NIC), revision 1.
pub const ID_VALUE: u32 = 0x5e4e_0001;
/// `BYTE_TEST`: LAN9118's value; read as `0x4321_8765` or bytes reversed, the driver has its
/// byte order wrong.
pub const BYTE_TEST_VALUE: u32 = 0x8765_4321;

/// Interrupt status bits.
pub const INT_RX_FRAME: u32 = 1 << 0;
pub const INT_TX_DONE: u32 = 1 << 1;
pub const INT_TX_ERROR: u32 = 1 << 2;
pub const INT_RX_OVERFLOW: u32 = 1 << 3;
pub const INT_BAD_ACCESS: u32 = 1 << 4;
/// Every status bit the device has.
pub const INT_ALL: u32 =
    INT_RX_FRAME | INT_TX_DONE | INT_TX_ERROR | INT_RX_OVERFLOW | INT_BAD_ACCESS;

/// Smallest frame: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Largest frame: standard Ethernet without FCS (the device has no jumbo frames).
pub const MAX_FRAME: usize = 1514;
/// What the receive FIFO holds at most.
pub const RX_FIFO_FRAMES: usize = 64;
pub const RX_FIFO_BYTES: usize = 16 * 1024;

/// What a write did that the device model must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteEffect {
    None,
    /// A frame is complete: take it with [`Device::sent_frame`] before the next access.
    FrameSent,
}

/// What the device did, for the device model's counters line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub tx_frames: u64,
    pub rx_frames: u64,
    pub rx_dropped: u64,
    pub tx_errors: u64,
    pub bad_accesses: u64,
    pub reads: u64,
    pub writes: u64,
}

/// The emulated NIC's state. About 18 KiB: keep it boxed.
pub struct Device {
    mac: [u8; 6],
    int_sts: u32,
    int_en: u32,
    /// An interrupt is owed to the guest ([`Device::take_interrupt`]).
    irq: bool,
    /// The frame being sent: its announced length (0: none) and the bytes written so far.
    tx_len: usize,
    tx_have: usize,
    tx_buf: [u8; MAX_FRAME],
    /// The frame just completed (its length), until the model takes it.
    tx_done: Option<usize>,
    /// Receive FIFO: frames stored back to back in a circular byte buffer.
    rx_buf: [u8; RX_FIFO_BYTES],
    rx_start: usize,
    rx_used: usize,
    rx_lens: Deque<u16, RX_FIFO_FRAMES>,
    /// Bytes of the head frame already read through `RX_DATA`.
    rx_read: usize,
    /// `RX_STATUS` announced the head frame and it has not been read out yet.
    rx_announced: bool,
    pub counters: Counters,
}

impl Device {
    /// A device with MAC `mac`, nothing enabled, empty FIFOs.
    pub fn new(mac: [u8; 6]) -> Device {
        Device {
            mac,
            int_sts: 0,
            int_en: 0,
            irq: false,
            tx_len: 0,
            tx_have: 0,
            tx_buf: [0; MAX_FRAME],
            tx_done: None,
            rx_buf: [0; RX_FIFO_BYTES],
            rx_start: 0,
            rx_used: 0,
            rx_lens: Deque::new(),
            rx_read: 0,
            rx_announced: false,
            counters: Counters::default(),
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// A bus reset, as for a guest that restarted: the power-on state of [`Device::new`] (same
    /// MAC, nothing enabled, FIFOs empty and zeroed, no interrupt owed), done in place since
    /// the device is too large for a stack temporary. The counters keep counting.
    pub fn reset(&mut self) {
        self.int_sts = 0;
        self.int_en = 0;
        self.irq = false;
        self.tx_len = 0;
        self.tx_have = 0;
        self.tx_buf.fill(0);
        self.tx_done = None;
        self.rx_buf.fill(0);
        self.rx_start = 0;
        self.rx_used = 0;
        self.rx_lens.clear();
        self.rx_read = 0;
        self.rx_announced = false;
    }

    /// Sets status bits; owes an interrupt if an enabled bit went from 0 to 1.
    fn raise(&mut self, bits: u32) {
        let new = bits & !self.int_sts;
        self.int_sts |= bits;
        if new & self.int_en != 0 {
            self.irq = true;
        }
    }

    fn bad_access(&mut self) {
        self.counters.bad_accesses = self.counters.bad_accesses.saturating_add(1);
        self.raise(INT_BAD_ACCESS);
    }

    fn tx_error(&mut self) {
        self.counters.tx_errors = self.counters.tx_errors.saturating_add(1);
        self.raise(INT_TX_ERROR);
    }

    /// Whether the device owes the guest an interrupt; clears the debt.
    pub fn take_interrupt(&mut self) -> bool {
        core::mem::take(&mut self.irq)
    }

    /// A register read of `size` bytes at `offset`.
    pub fn read(&mut self, offset: u64, size: u8) -> u64 {
        self.counters.reads = self.counters.reads.saturating_add(1);
        if size != 4 || !offset.is_multiple_of(4) {
            self.bad_access();
            return 0;
        }
        let value = match offset {
            ID_REV => ID_VALUE,
            BYTE_TEST => BYTE_TEST_VALUE,
            INT_STS => self.int_sts,
            INT_EN => self.int_en,
            MAC_LO => u32::from_le_bytes([self.mac[0], self.mac[1], self.mac[2], self.mac[3]]),
            MAC_HI => u32::from(u16::from_le_bytes([self.mac[4], self.mac[5]])),
            RX_STATUS => {
                let len = self.rx_lens.front().map_or(0, |&len| u32::from(len));
                self.rx_announced = len != 0;
                len
            }
            RX_DATA => match self.rx_data() {
                Some(word) => word,
                None => {
                    self.bad_access();
                    0
                }
            },
            RX_DROPPED => saturate32(self.counters.rx_dropped),
            TX_ERRORS => saturate32(self.counters.tx_errors),
            BAD_ACCESSES => saturate32(self.counters.bad_accesses),
            // Write-only and unimplemented registers.
            _ => {
                self.bad_access();
                0
            }
        };
        u64::from(value)
    }

    /// A register write of `size` bytes of `value` at `offset`.
    pub fn write(&mut self, offset: u64, size: u8, value: u64) -> WriteEffect {
        self.counters.writes = self.counters.writes.saturating_add(1);
        if size != 4 || !offset.is_multiple_of(4) {
            self.bad_access();
            return WriteEffect::None;
        }
        let value = value as u32;
        match offset {
            INT_STS => self.int_sts &= !value,
            INT_EN => {
                self.int_en = value & INT_ALL;
                if self.int_sts & self.int_en != 0 {
                    self.irq = true;
                }
            }
            TX_CMD => self.tx_command(value as usize),
            TX_DATA => return self.tx_data(value),
            RX_SKIP => self.pop_rx(),
            // Read-only and unimplemented registers.
            _ => self.bad_access(),
        }
        WriteEffect::None
    }

    fn tx_command(&mut self, len: usize) {
        if self.tx_len != 0 {
            // A half-written frame is abandoned.
            self.tx_error();
        }
        self.tx_have = 0;
        if (MIN_FRAME..=MAX_FRAME).contains(&len) {
            self.tx_len = len;
        } else {
            self.tx_len = 0;
            self.tx_error();
        }
    }

    fn tx_data(&mut self, word: u32) -> WriteEffect {
        if self.tx_len == 0 {
            self.tx_error();
            return WriteEffect::None;
        }
        let n = (self.tx_len - self.tx_have).min(4);
        self.tx_buf[self.tx_have..self.tx_have + n].copy_from_slice(&word.to_le_bytes()[..n]);
        self.tx_have += n;
        if self.tx_have < self.tx_len {
            return WriteEffect::None;
        }
        self.tx_done = Some(self.tx_len);
        self.tx_len = 0;
        self.tx_have = 0;
        self.counters.tx_frames = self.counters.tx_frames.saturating_add(1);
        self.raise(INT_TX_DONE);
        WriteEffect::FrameSent
    }

    /// The frame the last [`WriteEffect::FrameSent`] completed (once).
    pub fn sent_frame(&mut self) -> Option<&[u8]> {
        let len = self.tx_done.take()?;
        Some(&self.tx_buf[..len])
    }

    /// A frame from the network for the guest. False if it was dropped (FIFO full, or not a
    /// frame length the device carries).
    pub fn receive(&mut self, frame: &[u8]) -> bool {
        let fits = (MIN_FRAME..=MAX_FRAME).contains(&frame.len())
            && !self.rx_lens.is_full()
            && self.rx_used + frame.len() <= RX_FIFO_BYTES;
        if !fits {
            self.counters.rx_dropped = self.counters.rx_dropped.saturating_add(1);
            self.raise(INT_RX_OVERFLOW);
            return false;
        }
        let mut at = (self.rx_start + self.rx_used) % RX_FIFO_BYTES;
        for &byte in frame {
            self.rx_buf[at] = byte;
            at = (at + 1) % RX_FIFO_BYTES;
        }
        self.rx_used += frame.len();
        // Cannot fail: checked not full above.
        let _ = self.rx_lens.push_back(frame.len() as u16);
        self.counters.rx_frames = self.counters.rx_frames.saturating_add(1);
        self.raise(INT_RX_FRAME);
        true
    }

    /// Whether the receive FIFO is empty.
    pub fn rx_empty(&self) -> bool {
        self.rx_lens.is_empty()
    }

    /// The next word of the head frame, popping it after its last byte; None if empty.
    fn rx_data(&mut self) -> Option<u32> {
        let len = usize::from(*self.rx_lens.front()?);
        let mut word = [0u8; 4];
        let n = (len - self.rx_read).min(4);
        for (i, byte) in word.iter_mut().enumerate().take(n) {
            *byte = self.rx_buf[(self.rx_start + self.rx_read + i) % RX_FIFO_BYTES];
        }
        self.rx_read += n;
        if self.rx_read >= len {
            self.pop_rx();
        }
        Some(u32::from_le_bytes(word))
    }

    fn pop_rx(&mut self) {
        if let Some(len) = self.rx_lens.pop_front() {
            let len = usize::from(len);
            self.rx_start = (self.rx_start + len) % RX_FIFO_BYTES;
            self.rx_used -= len;
        }
        self.rx_read = 0;
        self.rx_announced = false;
    }

    /// Whether the guest is in the middle of moving a frame (a `TX_CMD` whose data has not all
    /// come, or a received frame announced or partly read): its next access is imminent, which
    /// a device model can use to wait for it instead of sleeping.
    pub fn transfer_in_progress(&self) -> bool {
        self.tx_len != 0 || self.rx_read != 0 || self.rx_announced
    }
}

fn saturate32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
