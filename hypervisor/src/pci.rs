//! PCI for device passthrough: ECAM address decoding, bus:device.function names, and the
//! configuration-space filter that is the driver domain's whole view of PCI.
//!
//! The driver domain gets one PCI function (named by the topology, e.g. `00:02.0`). Its ECAM is
//! emulated: the hypervisor maps no ECAM into its stage 2, so every config access faults, and the
//! fault path asks [`ConfigFilter`] what to do. The filter owns the policy:
//!
//! - every other bus/device/function is absent: reads return all ones, writes are dropped;
//! - the passed function's BARs (and expansion ROM BAR) are emulated from shadow registers:
//!   sizing (write all ones, read back the size mask) is answered without touching the device,
//!   and an address reaches the device only if the whole BAR lies inside the PCI memory window
//!   the hypervisor gives the driver domain; any other move is refused (dropped and reported);
//! - the command register passes through except the bits that make no sense for the guest (I/O
//!   space: I/O BARs are hidden; special cycles, MWI, VGA snoop, fast back-to-back); bus
//!   mastering is allowed because the SMMU confines the function's DMA (and on QEMU its MSI
//!   writes, which are DMA too) to the driver domain's own stage-2 view;
//! - everything else (IDs, status, capabilities including MSI/MSI-X and PCIe, extended space)
//!   passes through: it only affects the function itself, whose reach is bounded by the SMMU and
//!   by the BAR window.
//!
//! The filter never touches hardware after [`ConfigFilter::probe`]: it returns decisions
//! ([`ReadDecision`], [`WriteDecision`]) that the hypervisor carries out on the real ECAM, so the
//! policy is tested on the host against a model device. Only type-0 headers are passed; bridges
//! are refused at probe time (and, like everything else not passed, absent).

use alloc::vec::Vec;
use core::fmt;

// ECAM layout (bus [27:20], device [19:15], function [14:12], register [11:0]) and the BDF type
// are shared with the topology and the bundle: one definition, in shared-abi.
pub use shared_abi::pci::{
    Bdf, BdfError, BdfField, ECAM_BUS_SHIFT, ECAM_DEVICE_SHIFT, ECAM_FUNCTION_SHIFT,
};
/// Bytes of configuration space per function.
pub const CONFIG_SPACE_BYTES: u16 = 4096;
/// ECAM bytes per bus (32 devices x 8 functions x 4 KiB).
pub const ECAM_BYTES_PER_BUS: u64 = 1 << ECAM_BUS_SHIFT;
/// ECAM bytes for all 256 buses.
pub const ECAM_BYTES: u64 = 256 * ECAM_BYTES_PER_BUS;

// QEMU virt (hw/arm/virt.c memory map, and the `pcie@10000000` node of QEMU 10.0's device tree:
// `reg` and `ranges`). The hypervisor reads the ECAM base from the DTB; the windows are here so
// topologies and tests can name them.
/// High ECAM (256 buses) of QEMU virt.
pub const QEMU_VIRT_ECAM: u64 = 0x40_1000_0000;
/// 32-bit PCI memory window of QEMU virt (CPU address = PCI address).
pub const QEMU_VIRT_MMIO32: (u64, u64) = (0x1000_0000, 0x3eff_0000);
/// 64-bit PCI memory window of QEMU virt: 512 GiB..1 TiB.
pub const QEMU_VIRT_MMIO64: (u64, u64) = (0x80_0000_0000, 0x100_0000_0000);

// Type-0 configuration header registers.
pub const REG_VENDOR_DEVICE: u16 = 0x00;
pub const REG_COMMAND: u16 = 0x04;
pub const REG_HEADER_DWORD: u16 = 0x0c;
pub const REG_BAR0: u16 = 0x10;
pub const REG_ROM: u16 = 0x30;

// Command register bits.
pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_SPECIAL_CYCLES: u16 = 1 << 3;
pub const CMD_MWI: u16 = 1 << 4;
pub const CMD_VGA_SNOOP: u16 = 1 << 5;
pub const CMD_PARITY: u16 = 1 << 6;
pub const CMD_SERR: u16 = 1 << 8;
pub const CMD_FAST_B2B: u16 = 1 << 9;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
/// Command bits the driver domain may set.
pub const CMD_ALLOWED: u16 = CMD_MEMORY | CMD_BUS_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE;

/// Address bits of a memory BAR's low dword.
const MEM_ADDR_MASK: u32 = 0xffff_fff0;
/// Address bits of the expansion ROM BAR.
const ROM_ADDR_MASK: u32 = 0xffff_f800;
/// Expansion ROM BAR enable bit.
const ROM_ENABLE: u32 = 1;
/// Slot number of the expansion ROM in the BAR tables below (after BAR0..BAR5).
const ROM_SLOT: usize = 6;

// ---------------------------------------------------------------------------------------------
// ECAM decoding.

/// A decoded ECAM offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamOffset {
    pub bdf: Bdf,
    /// Register offset inside the function's 4 KiB configuration space.
    pub reg: u16,
}

/// Decodes an offset into an ECAM region; None beyond the 256 buses.
pub const fn decode_ecam(offset: u64) -> Option<EcamOffset> {
    if offset >= ECAM_BYTES {
        return None;
    }
    Some(EcamOffset {
        // Bits [27:12] of an ECAM offset are the routing ID: bus, device, function.
        bdf: Bdf::from_routing_id((offset >> ECAM_FUNCTION_SHIFT) as u16),
        reg: (offset & 0xfff) as u16,
    })
}

/// Whether a config access of `size` bytes at `reg` is one PCI allows: 1, 2 or 4 bytes,
/// naturally aligned (so it never crosses a dword).
pub const fn access_valid(reg: u16, size: u8) -> bool {
    matches!(size, 1 | 2 | 4) && reg.is_multiple_of(size as u16) && reg < CONFIG_SPACE_BYTES
}

/// What an absent function (or a refused access) reads as.
pub const fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

fn size_mask(size: u8) -> u32 {
    all_ones(size)
}

// ---------------------------------------------------------------------------------------------
// The memory window.

/// The PCI memory range the driver domain's BARs must stay in, `[start, end)`. The hypervisor
/// maps it (IPA = PA, Device memory) into the driver domain's stage 2, so BAR moves inside it
/// need no stage-2 change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    start: u64,
    end: u64,
}

impl Window {
    /// None if the range is empty or not 4 KiB aligned (it is mapped into a stage-2 table).
    pub const fn new(start: u64, end: u64) -> Option<Window> {
        if start >= end || !start.is_multiple_of(4096) || !end.is_multiple_of(4096) {
            None
        } else {
            Some(Window { start, end })
        }
    }

    pub const fn start(self) -> u64 {
        self.start
    }

    pub const fn end(self) -> u64 {
        self.end
    }

    /// Whether `[addr, addr + size)` lies inside the window (no overflow possible).
    pub const fn contains(self, addr: u64, size: u64) -> bool {
        match addr.checked_add(size) {
            Some(end) => addr >= self.start && end <= self.end && size > 0,
            None => false,
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..{:#x}", self.start, self.end)
    }
}

// ---------------------------------------------------------------------------------------------
// Hardware access (probe only).

/// Dword access to the real configuration space of the passed function. The arch layer
/// implements it over the host ECAM; tests implement it with a model device.
pub trait ConfigAccess {
    /// Reads the aligned dword at `reg`.
    fn read32(&mut self, reg: u16) -> u32;
    /// Writes the aligned dword at `reg`.
    fn write32(&mut self, reg: u16, value: u32);
}

// ---------------------------------------------------------------------------------------------
// Decisions.

/// A BAR, by register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarId {
    /// BAR0..BAR5 (a 64-bit BAR is named by its low half).
    Bar(u8),
    /// The expansion ROM BAR (0x30).
    Rom,
}

impl fmt::Display for BarId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BarId::Bar(n) => write!(f, "BAR{n}"),
            BarId::Rom => f.write_str("ROM BAR"),
        }
    }
}

/// Kind of an emulated BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Mem32 { prefetchable: bool },
    Mem64 { prefetchable: bool },
    Rom,
}

/// What happened, for one log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterEvent {
    /// A BAR was placed (or moved) inside the window; `from` is 0 if it was unassigned.
    BarMoved {
        bar: BarId,
        from: u64,
        to: u64,
        size: u64,
    },
    /// A BAR write would have put the BAR outside the window: dropped, the BAR stays where it was.
    BarRefused {
        bar: BarId,
        attempted: u64,
        size: u64,
        window: Window,
    },
    /// Command bits the guest may not set were cleared.
    CommandMasked { requested: u16, applied: u16 },
    /// Probe: an I/O BAR, hidden from the guest (reads 0).
    IoBarHidden { bar: BarId },
    /// Probe: a BAR with an unusable type or size mask, hidden from the guest.
    BarUnusable { bar: BarId, raw: u32 },
    /// Probe: a BAR found outside the window was unassigned (set to 0).
    BarCleared { bar: BarId, was: u64, size: u64 },
}

fn fmt_size(f: &mut fmt::Formatter<'_>, size: u64) -> fmt::Result {
    if size >= 1 << 20 && size.is_multiple_of(1 << 20) {
        write!(f, "{} MiB", size >> 20)
    } else if size >= 1 << 10 && size.is_multiple_of(1 << 10) {
        write!(f, "{} KiB", size >> 10)
    } else {
        write!(f, "{size} bytes")
    }
}

impl fmt::Display for FilterEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FilterEvent::BarMoved {
                bar,
                from,
                to,
                size,
            } => {
                write!(f, "{bar} (")?;
                fmt_size(f, size)?;
                if from == 0 {
                    write!(f, ") placed at {to:#x}")
                } else {
                    write!(f, ") moved {from:#x} -> {to:#x}")
                }
            }
            FilterEvent::BarRefused {
                bar,
                attempted,
                size,
                window,
            } => {
                write!(f, "refused to move {bar} (")?;
                fmt_size(f, size)?;
                write!(
                    f,
                    ") to {attempted:#x}: outside the allowed window {window}"
                )
            }
            FilterEvent::CommandMasked { requested, applied } => write!(
                f,
                "command register {requested:#06x} reduced to {applied:#06x} (I/O space, \
                 special cycles, MWI, VGA snoop and fast back-to-back are not allowed)"
            ),
            FilterEvent::IoBarHidden { bar } => write!(f, "{bar} is an I/O BAR: hidden"),
            FilterEvent::BarUnusable { bar, raw } => {
                write!(f, "{bar} is unusable (raw {raw:#010x}): hidden")
            }
            FilterEvent::BarCleared { bar, was, size } => {
                write!(f, "{bar} (")?;
                fmt_size(f, size)?;
                write!(f, ") was at {was:#x}, outside the window: unassigned")
            }
        }
    }
}

/// What a guest config read returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadDecision {
    /// All ones of the access size ([`all_ones`]): no such function, or an invalid access.
    Absent,
    /// This value (already shifted and sized for the access).
    Value(u32),
    /// Read the passed function's real register `reg` with the same size and return it.
    Hardware { reg: u16, size: u8 },
}

/// One write to the passed function's real configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwWrite {
    pub reg: u16,
    /// 1, 2 or 4 bytes, naturally aligned.
    pub size: u8,
    pub value: u32,
}

/// What a guest config write does: zero, one or two hardware writes, performed in order, and
/// possibly an event to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteDecision {
    writes: [HwWrite; 2],
    count: u8,
    pub event: Option<FilterEvent>,
}

const NO_WRITE: HwWrite = HwWrite {
    reg: 0,
    size: 0,
    value: 0,
};

impl WriteDecision {
    const fn ignore() -> WriteDecision {
        WriteDecision {
            writes: [NO_WRITE; 2],
            count: 0,
            event: None,
        }
    }

    fn one(write: HwWrite) -> WriteDecision {
        WriteDecision {
            writes: [write, NO_WRITE],
            count: 1,
            event: None,
        }
    }

    fn push(&mut self, write: HwWrite) {
        // At most two writes are ever pushed (the two halves of a 64-bit BAR).
        if let Some(slot) = self.writes.get_mut(self.count as usize) {
            *slot = write;
            self.count += 1;
        }
    }

    /// The hardware writes to perform, in order.
    pub fn hardware_writes(&self) -> &[HwWrite] {
        &self.writes[..self.count as usize]
    }

    /// Whether the write is dropped entirely.
    pub fn is_dropped(&self) -> bool {
        self.count == 0
    }
}

// ---------------------------------------------------------------------------------------------
// The filter.

/// Why [`ConfigFilter::probe`] refused a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Vendor ID reads all ones: nothing there.
    #[error("no PCI function at {0}")]
    NoFunction(Bdf),
    /// Header type is not 0 (a bridge or CardBus function).
    #[error(
        "PCI function {bdf} has header type {header_type:#x}; only endpoints (type 0) \
             can be passed through"
    )]
    NotType0 { bdf: Bdf, header_type: u8 },
}

/// Public view of one emulated BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    pub id: BarId,
    pub kind: BarKind,
    pub size: u64,
    /// Address programmed into the device (0: unassigned).
    pub address: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EmulatedBar {
    id: BarId,
    kind: BarKind,
    size: u64,
    /// Read-only low bits of the low dword (memory type and prefetchable bits).
    flags: u32,
    /// Address in the device.
    hw: u64,
    /// ROM enable bit in the device.
    hw_enable: bool,
    /// Address the guest reads back (differs from `hw` only while a 64-bit move is half done).
    shadow: u64,
    shadow_enable: bool,
    /// Per dword: the guest wrote all ones and reads the size mask until it writes an address.
    sizing: [bool; 2],
}

impl EmulatedBar {
    fn is_64(&self) -> bool {
        matches!(self.kind, BarKind::Mem64 { .. })
    }

    fn addr_mask_low(&self) -> u32 {
        match self.kind {
            BarKind::Rom => ROM_ADDR_MASK,
            _ => MEM_ADDR_MASK,
        }
    }

    /// The size mask as a 64-bit address mask.
    fn size_mask(&self) -> u64 {
        !(self.size - 1)
    }

    /// What the guest reads from dword `half` (0 low, 1 high).
    fn read(&self, half: usize) -> u32 {
        let value = if self.sizing[half] {
            self.size_mask()
        } else {
            self.shadow
        };
        if half == 1 {
            return (value >> 32) as u32;
        }
        let enable = if self.kind == BarKind::Rom && self.shadow_enable {
            ROM_ENABLE
        } else {
            0
        };
        (value as u32 & self.addr_mask_low()) | self.flags | enable
    }

    /// The hardware writes that program `hw`/`hw_enable` into the device.
    fn program(&self, reg: u16, decision: &mut WriteDecision) {
        let enable = if self.kind == BarKind::Rom && self.hw_enable {
            ROM_ENABLE
        } else {
            0
        };
        decision.push(HwWrite {
            reg,
            size: 4,
            value: (self.hw as u32 & self.addr_mask_low()) | enable,
        });
        if self.is_64() {
            decision.push(HwWrite {
                reg: reg + 4,
                size: 4,
                value: (self.hw >> 32) as u32,
            });
        }
    }
}

/// Which BAR a BAR-area dword belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotUse {
    /// No BAR (unimplemented, hidden I/O BAR, unusable): reads 0, writes dropped.
    Unused,
    /// The (low) dword of the BAR kept at this slot.
    Low,
    /// The high dword of the 64-bit BAR whose low dword is at the given slot.
    High(u8),
}

/// The driver domain's view of PCI configuration space: one passed type-0 function, everything
/// else absent.
#[derive(Clone, Debug)]
pub struct ConfigFilter {
    bdf: Bdf,
    window: Window,
    slots: [SlotUse; 7],
    bars: [Option<EmulatedBar>; 7],
}

/// Register of BAR slot `slot` (6 = ROM).
const fn slot_reg(slot: usize) -> u16 {
    if slot == ROM_SLOT {
        REG_ROM
    } else {
        REG_BAR0 + 4 * slot as u16
    }
}

/// Slot of a dword register in the BAR area, if it is one.
const fn reg_slot(dword: u16) -> Option<usize> {
    match dword {
        0x10..=0x24 => Some(((dword - REG_BAR0) / 4) as usize),
        REG_ROM => Some(ROM_SLOT),
        _ => None,
    }
}

/// Size of a BAR from the 64-bit address mask read back after writing all ones, if usable:
/// a power of two of at least `min`.
fn bar_size(mask: u64, min: u64) -> Option<u64> {
    if mask == 0 {
        return None;
    }
    let size = (!mask).wrapping_add(1);
    (size != 0 && size.is_power_of_two() && size >= min).then_some(size)
}

impl ConfigFilter {
    /// Takes the passed function over: checks it is a type-0 endpoint, turns off its memory/I/O
    /// decoding, bus mastering and INTx (the driver domain turns them on), sizes every BAR and the
    /// expansion ROM with decoding off, and unassigns BARs found outside `window`. Returns the
    /// filter and what it noticed, for the log.
    pub fn probe(
        bdf: Bdf,
        window: Window,
        hw: &mut impl ConfigAccess,
    ) -> Result<(ConfigFilter, Vec<FilterEvent>), ProbeError> {
        if hw.read32(REG_VENDOR_DEVICE) & 0xffff == 0xffff {
            return Err(ProbeError::NoFunction(bdf));
        }
        let header_type = ((hw.read32(REG_HEADER_DWORD) >> 16) & 0x7f) as u8;
        if header_type != 0 {
            return Err(ProbeError::NotType0 { bdf, header_type });
        }
        // Decoding off while BARs hold all ones during sizing, no DMA before the guest asks for
        // it, and INTx held low: after a driver-domain restart the device may still have an
        // interrupt pending from the dead incarnation, which would fire before the new one has
        // a handler (it clears the bit once it has reset the device). Status (the upper half)
        // is write-1-to-clear, so writing 0 there leaves it alone.
        hw.write32(REG_COMMAND, u32::from(CMD_INTX_DISABLE));

        let mut filter = ConfigFilter {
            bdf,
            window,
            slots: [SlotUse::Unused; 7],
            bars: [None; 7],
        };
        let mut events = Vec::new();
        let mut slot = 0;
        while slot < 6 {
            let reg = slot_reg(slot);
            let id = BarId::Bar(slot as u8);
            let original = hw.read32(reg);
            if original & 1 != 0 {
                events.push(FilterEvent::IoBarHidden { bar: id });
                slot += 1;
                continue;
            }
            let prefetchable = original & 0b1000 != 0;
            let is_64 = match (original >> 1) & 0b11 {
                0b00 => false,
                0b10 if slot < 5 => true,
                _ => {
                    events.push(FilterEvent::BarUnusable {
                        bar: id,
                        raw: original,
                    });
                    slot += 1;
                    continue;
                }
            };
            hw.write32(reg, 0xffff_ffff);
            let low_mask = hw.read32(reg) & MEM_ADDR_MASK;
            hw.write32(reg, original);
            let (mask, high) = if is_64 {
                let high = hw.read32(reg + 4);
                hw.write32(reg + 4, 0xffff_ffff);
                let high_mask = hw.read32(reg + 4);
                hw.write32(reg + 4, high);
                (((high_mask as u64) << 32) | low_mask as u64, high)
            } else if low_mask == 0 {
                (0, 0)
            } else {
                (0xffff_ffff_0000_0000 | low_mask as u64, 0)
            };
            let width = if is_64 { 2 } else { 1 };
            if mask == 0 {
                // Unimplemented BAR: stays Unused.
                slot += width;
                continue;
            }
            let Some(size) = bar_size(mask, 16) else {
                events.push(FilterEvent::BarUnusable {
                    bar: id,
                    raw: low_mask,
                });
                slot += width;
                continue;
            };
            let kind = if is_64 {
                BarKind::Mem64 { prefetchable }
            } else {
                BarKind::Mem32 { prefetchable }
            };
            let mut addr = ((high as u64) << 32) | (original & MEM_ADDR_MASK) as u64;
            if addr != 0 && !window.contains(addr, size) {
                hw.write32(reg, original & !MEM_ADDR_MASK);
                if is_64 {
                    hw.write32(reg + 4, 0);
                }
                events.push(FilterEvent::BarCleared {
                    bar: id,
                    was: addr,
                    size,
                });
                addr = 0;
            }
            filter.bars[slot] = Some(EmulatedBar {
                id,
                kind,
                size,
                flags: original & !MEM_ADDR_MASK,
                hw: addr,
                hw_enable: false,
                shadow: addr,
                shadow_enable: false,
                sizing: [false; 2],
            });
            filter.slots[slot] = SlotUse::Low;
            if is_64 {
                filter.slots[slot + 1] = SlotUse::High(slot as u8);
            }
            slot += width;
        }

        // Expansion ROM: sized with its enable bit clear, and left disabled.
        let original = hw.read32(REG_ROM);
        hw.write32(REG_ROM, ROM_ADDR_MASK);
        let rom_mask = hw.read32(REG_ROM) & ROM_ADDR_MASK;
        let mut addr = (original & ROM_ADDR_MASK) as u64;
        hw.write32(REG_ROM, addr as u32);
        if rom_mask != 0 {
            match bar_size(0xffff_ffff_0000_0000 | rom_mask as u64, 2048) {
                Some(size) => {
                    if addr != 0 && !window.contains(addr, size) {
                        hw.write32(REG_ROM, 0);
                        events.push(FilterEvent::BarCleared {
                            bar: BarId::Rom,
                            was: addr,
                            size,
                        });
                        addr = 0;
                    }
                    filter.bars[ROM_SLOT] = Some(EmulatedBar {
                        id: BarId::Rom,
                        kind: BarKind::Rom,
                        size,
                        flags: 0,
                        hw: addr,
                        hw_enable: false,
                        shadow: addr,
                        shadow_enable: false,
                        sizing: [false; 2],
                    });
                    filter.slots[ROM_SLOT] = SlotUse::Low;
                }
                None => events.push(FilterEvent::BarUnusable {
                    bar: BarId::Rom,
                    raw: rom_mask,
                }),
            }
        }
        Ok((filter, events))
    }

    /// The passed function.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    pub fn window(&self) -> Window {
        self.window
    }

    /// The emulated BARs and where the device decodes them now.
    pub fn bars(&self) -> impl Iterator<Item = BarInfo> + '_ {
        self.bars.iter().flatten().map(|bar| BarInfo {
            id: bar.id,
            kind: bar.kind,
            size: bar.size,
            address: bar.hw,
        })
    }

    /// The write that stops the function (no decoding, no DMA): for teardown, before its stream
    /// is set back to abort.
    pub const fn quiesce_write() -> HwWrite {
        HwWrite {
            reg: REG_COMMAND,
            size: 2,
            value: 0,
        }
    }

    /// Which function and register an access at `offset` (from the emulated ECAM base) targets,
    /// if it is a valid access to the passed function.
    fn target(&self, offset: u64, size: u8) -> Option<u16> {
        let decoded = decode_ecam(offset)?;
        (decoded.bdf == self.bdf && access_valid(decoded.reg, size)).then_some(decoded.reg)
    }

    /// The dword the guest reads at BAR slot `slot`.
    fn slot_read(&self, slot: usize) -> u32 {
        match self.slots[slot] {
            SlotUse::Unused => 0,
            SlotUse::Low => self.bars[slot].map_or(0, |bar| bar.read(0)),
            SlotUse::High(low) => self.bars[low as usize].map_or(0, |bar| bar.read(1)),
        }
    }

    /// A guest read of `size` bytes at `offset` in the emulated ECAM.
    pub fn read(&self, offset: u64, size: u8) -> ReadDecision {
        let Some(reg) = self.target(offset, size) else {
            return ReadDecision::Absent;
        };
        let dword = reg & !3;
        let shift = (reg & 3) * 8;
        match reg_slot(dword) {
            Some(slot) => ReadDecision::Value((self.slot_read(slot) >> shift) & size_mask(size)),
            None => ReadDecision::Hardware { reg, size },
        }
    }

    /// A guest write of `size` bytes of `value` at `offset` in the emulated ECAM.
    pub fn write(&mut self, offset: u64, size: u8, value: u32) -> WriteDecision {
        let Some(reg) = self.target(offset, size) else {
            return WriteDecision::ignore();
        };
        let value = value & size_mask(size);
        let dword = reg & !3;
        let shift = (reg & 3) * 8;
        if dword == REG_COMMAND {
            return command_write(reg, size, value, shift);
        }
        let Some(slot) = reg_slot(dword) else {
            return WriteDecision::one(HwWrite { reg, size, value });
        };
        // Sub-dword writes merge into what the guest would read back.
        let mask = size_mask(size) << shift;
        let merged = (self.slot_read(slot) & !mask) | (value << shift);
        match self.slots[slot] {
            SlotUse::Unused => WriteDecision::ignore(),
            SlotUse::Low => self.bar_write(slot, 0, merged),
            SlotUse::High(low) => self.bar_write(low as usize, 1, merged),
        }
    }

    /// A full-dword write to half `half` of the BAR kept at `slot`.
    fn bar_write(&mut self, slot: usize, half: usize, value: u32) -> WriteDecision {
        let window = self.window;
        let Some(bar) = self.bars[slot].as_mut() else {
            return WriteDecision::ignore();
        };
        let addr_bits = if half == 0 {
            bar.addr_mask_low()
        } else {
            0xffff_ffff
        };
        if value & addr_bits == addr_bits {
            // Sizing: every address bit written as one. The device is not touched; the guest
            // reads the size mask until it writes an address again.
            bar.sizing[half] = true;
            return WriteDecision::ignore();
        }
        bar.sizing[half] = false;
        if half == 0 {
            bar.shadow = (bar.shadow & !0xffff_ffff) | (value & addr_bits) as u64;
            if bar.kind == BarKind::Rom {
                bar.shadow_enable = value & ROM_ENABLE != 0;
            }
        } else {
            bar.shadow = (bar.shadow & 0xffff_ffff) | ((value as u64) << 32);
        }
        // Address bits below the BAR's size are hardwired to zero in the device.
        bar.shadow &= bar.size_mask();
        if bar.sizing.iter().any(|&s| s) {
            // The other half still holds the size mask: no address to check yet.
            return WriteDecision::ignore();
        }
        let target = bar.shadow;
        let reg = slot_reg(slot);
        let inside = window.contains(target, bar.size);
        let mut decision = WriteDecision::ignore();
        if target == bar.hw {
            // Same address (e.g. the restore after sizing): re-program it if it is a real
            // placement (the device may have been reset underneath), or just change the ROM
            // enable bit, which is harmless while the ROM is disabled or placed in the window.
            if bar.shadow_enable != bar.hw_enable && (inside || !bar.shadow_enable) {
                bar.hw_enable = bar.shadow_enable;
                bar.program(reg, &mut decision);
            } else if inside {
                bar.program(reg, &mut decision);
            } else if bar.shadow_enable != bar.hw_enable {
                // Enabling a ROM that is not inside the window.
                decision.event = Some(FilterEvent::BarRefused {
                    bar: bar.id,
                    attempted: target,
                    size: bar.size,
                    window,
                });
                bar.shadow_enable = bar.hw_enable;
            }
            return decision;
        }
        if inside {
            let from = bar.hw;
            bar.hw = target;
            bar.hw_enable = bar.shadow_enable;
            bar.program(reg, &mut decision);
            decision.event = Some(FilterEvent::BarMoved {
                bar: bar.id,
                from,
                to: target,
                size: bar.size,
            });
            return decision;
        }
        if bar.is_64() && half == 0 {
            // The low half of a 64-bit move (OSes write low, then high): the address is only
            // complete after the high half, so wait for it instead of refusing.
            return decision;
        }
        decision.event = Some(FilterEvent::BarRefused {
            bar: bar.id,
            attempted: target,
            size: bar.size,
            window,
        });
        bar.shadow = bar.hw;
        bar.shadow_enable = bar.hw_enable;
        decision
    }
}

/// A write that touches the command/status dword: command bits outside [`CMD_ALLOWED`] are
/// cleared; status bits (write-1-to-clear) pass.
fn command_write(reg: u16, size: u8, value: u32, shift: u16) -> WriteDecision {
    let in_dword = value << shift;
    let touched = (size_mask(size) << shift) & 0xffff;
    let requested = (in_dword & touched) as u16;
    let applied = requested & CMD_ALLOWED;
    let filtered = (in_dword & !touched) | applied as u32;
    let mut decision = WriteDecision::one(HwWrite {
        reg,
        size,
        value: (filtered >> shift) & size_mask(size),
    });
    if applied != requested {
        decision.event = Some(FilterEvent::CommandMasked { requested, applied });
    }
    decision
}

#[cfg(test)]
mod tests;
