//! Host tests of `pci`.

use super::*;

const WINDOW: Window = match Window::new(0x1000_0000, 0x1100_0000) {
    Some(w) => w,
    None => panic!(),
};
const NIC: Bdf = match Bdf::new(0, 2, 0) {
    Some(b) => b,
    None => panic!(),
};

/// A model of a PCI function's configuration space, behaving like QEMU's: BAR address bits
/// below the size are read-only zero, type bits read-only; every write is logged.
struct Model {
    regs: [u32; 1024],
    /// Writable bits of each BAR-area dword (slots 0..5, then the ROM).
    writable: [u32; 7],
    writes: Vec<(u16, u32)>,
}

impl Model {
    /// virtio-net-pci as QEMU 10 builds it with disable-legacy=on: BAR1 4 KiB 32-bit (MSI-X),
    /// BAR4 16 KiB 64-bit prefetchable (virtio structures), a 256 KiB option ROM.
    fn virtio_net() -> Model {
        let mut m = Model {
            regs: [0; 1024],
            writable: [0; 7],
            writes: Vec::new(),
        };
        m.regs[0] = 0x1041_1af4; // virtio 1.0 network device
        m.regs[3] = 0x0000_0000; // header type 0
        m.regs[(0x14 / 4) as usize] = 0; // BAR1 32-bit memory
        m.writable[1] = !(4096 - 1);
        m.regs[(0x20 / 4) as usize] = 0b1100; // BAR4 64-bit prefetchable
        m.writable[4] = !(16384 - 1) & 0xffff_fff0;
        m.writable[5] = 0xffff_ffff;
        m.writable[6] = !(256 * 1024 - 1) | 1;
        m
    }

    fn slot(reg: u16) -> Option<usize> {
        reg_slot(reg)
    }

    fn apply(&mut self, w: &HwWrite) {
        assert_eq!(w.size, 4, "BAR programming is by dword");
        self.write32(w.reg, w.value);
    }
}

impl ConfigAccess for Model {
    fn read32(&mut self, reg: u16) -> u32 {
        self.regs[(reg / 4) as usize]
    }

    fn write32(&mut self, reg: u16, value: u32) {
        self.writes.push((reg, value));
        let index = (reg / 4) as usize;
        match Model::slot(reg) {
            Some(slot) => {
                let w = self.writable[slot];
                self.regs[index] = (self.regs[index] & !w) | (value & w);
            }
            None if reg == REG_COMMAND => {
                self.regs[index] = (self.regs[index] & 0xffff_0000) | (value & 0xffff)
            }
            None => self.regs[index] = value,
        }
    }
}

fn probed() -> (ConfigFilter, Model) {
    let mut model = Model::virtio_net();
    let (filter, events) = ConfigFilter::probe(NIC, WINDOW, &mut model).unwrap();
    assert!(events.is_empty(), "{events:?}");
    (filter, model)
}

fn at(reg: u16) -> u64 {
    NIC.ecam_offset() + reg as u64
}

fn read(filter: &ConfigFilter, reg: u16) -> u32 {
    match filter.read(at(reg), 4) {
        ReadDecision::Value(v) => v,
        other => panic!("expected an emulated value at {reg:#x}, got {other:?}"),
    }
}

#[test]
fn ecam_decode() {
    assert_eq!(
        decode_ecam(0x0001_0004),
        Some(EcamOffset { bdf: NIC, reg: 4 })
    );
    let d = decode_ecam(0x00ff_fffc).unwrap();
    assert_eq!(d.bdf, Bdf::new(0xf, 0x1f, 7).unwrap());
    assert_eq!(d.reg, 0xffc);
    let d = decode_ecam(ECAM_BYTES - 1).unwrap();
    assert_eq!(
        (d.bdf.bus(), d.bdf.device(), d.bdf.function(), d.reg),
        (255, 31, 7, 0xfff)
    );
    assert_eq!(decode_ecam(ECAM_BYTES), None);
    assert_eq!(decode_ecam(u64::MAX), None);
    for bdf in [NIC, Bdf::new(0x80, 3, 5).unwrap()] {
        assert_eq!(decode_ecam(bdf.ecam_offset() + 0x100).unwrap().bdf, bdf);
    }
    assert!(access_valid(0x10, 4) && access_valid(0x06, 2) && access_valid(0x3d, 1));
    assert!(!access_valid(0x12, 4) && !access_valid(0x05, 2) && !access_valid(0, 8));
    assert!(!access_valid(0, 0) && !access_valid(0, 3) && !access_valid(0x1000, 1));
}

#[test]
fn window_bounds() {
    assert!(WINDOW.contains(0x1000_0000, 0x100_0000));
    assert!(!WINDOW.contains(0x1000_0000, 0x100_1000));
    assert!(!WINDOW.contains(0xfff_f000, 0x2000));
    assert!(!WINDOW.contains(u64::MAX - 1, 16), "no overflow");
    assert!(!WINDOW.contains(0x1000_0000, 0));
    assert_eq!(Window::new(0x2000, 0x1000), None);
    assert_eq!(Window::new(0x1000, 0x1800), None);
    assert_eq!(WINDOW.to_string(), "0x10000000..0x11000000");
}

#[test]
fn other_functions_are_absent() {
    let (mut filter, _) = probed();
    for bdf in [
        Bdf::new(0, 0, 0).unwrap(),
        Bdf::new(0, 2, 1).unwrap(),
        Bdf::new(0, 3, 0).unwrap(),
        Bdf::new(1, 2, 0).unwrap(),
    ] {
        for size in [1, 2, 4] {
            assert_eq!(filter.read(bdf.ecam_offset(), size), ReadDecision::Absent);
            assert!(filter
                .write(bdf.ecam_offset() + 4, size, 0xffff)
                .is_dropped());
        }
    }
    assert_eq!(all_ones(1), 0xff);
    assert_eq!(all_ones(2), 0xffff);
    assert_eq!(all_ones(4), 0xffff_ffff);
    // Beyond the ECAM, misaligned, or of an odd size: treated like an absent function.
    assert_eq!(filter.read(ECAM_BYTES, 4), ReadDecision::Absent);
    assert_eq!(filter.read(at(2), 4), ReadDecision::Absent);
    assert_eq!(filter.read(at(0), 8), ReadDecision::Absent);
    assert!(filter.write(at(0x11), 2, 0).is_dropped());
    assert!(filter.write(at(0x10), 3, 0).is_dropped());
}

#[test]
fn probe_sizes_bars_with_decoding_off() {
    let (filter, model) = probed();
    assert_eq!(
        model.writes[0],
        (REG_COMMAND, u32::from(CMD_INTX_DISABLE)),
        "decoding, DMA and INTx off first"
    );
    let bars: Vec<BarInfo> = filter.bars().collect();
    assert_eq!(
        bars,
        vec![
            BarInfo {
                id: BarId::Bar(1),
                kind: BarKind::Mem32 {
                    prefetchable: false
                },
                size: 4096,
                address: 0
            },
            BarInfo {
                id: BarId::Bar(4),
                kind: BarKind::Mem64 { prefetchable: true },
                size: 16384,
                address: 0
            },
            BarInfo {
                id: BarId::Rom,
                kind: BarKind::Rom,
                size: 256 * 1024,
                address: 0
            },
        ]
    );
    // Every BAR register is back to its original value, the ROM disabled.
    for reg in [0x10, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x30] {
        let mut m = Model::virtio_net();
        assert_eq!(model.regs[reg / 4], m.read32(reg as u16));
    }
    // The guest sees the same: unimplemented BARs read 0, flags are kept.
    assert_eq!(read(&filter, 0x10), 0);
    assert_eq!(read(&filter, 0x20), 0b1100);
    assert_eq!(read(&filter, 0x24), 0);
    // Non-BAR registers come from the device.
    assert_eq!(
        filter.read(at(0), 4),
        ReadDecision::Hardware { reg: 0, size: 4 }
    );
    assert_eq!(
        filter.read(at(0x3d), 1),
        ReadDecision::Hardware { reg: 0x3d, size: 1 }
    );
}

#[test]
fn probe_refuses_bridges_and_missing_functions() {
    let mut model = Model::virtio_net();
    model.regs[3] = 0x0001_0000; // header type 1: PCI-to-PCI bridge
    assert_eq!(
        ConfigFilter::probe(NIC, WINDOW, &mut model).unwrap_err(),
        ProbeError::NotType0 {
            bdf: NIC,
            header_type: 1
        }
    );
    // The multi-function bit alone is fine.
    model.regs[3] = 0x0080_0000;
    assert!(ConfigFilter::probe(NIC, WINDOW, &mut model).is_ok());
    model.regs[0] = 0xffff_ffff;
    let err = ConfigFilter::probe(NIC, WINDOW, &mut model).unwrap_err();
    assert_eq!(err, ProbeError::NoFunction(NIC));
    assert_eq!(err.to_string(), "no PCI function at 00:02.0");
}

#[test]
fn probe_hides_io_and_clears_bars_outside_the_window() {
    let mut model = Model::virtio_net();
    model.regs[4] = 0x0000_c001; // BAR0: I/O
    model.writable[0] = 0xffff_ffe0;
    model.regs[5] = 0x2000_0000; // BAR1 assigned by "firmware" outside the window
    model.regs[8] = 0x1000_400c; // BAR4 inside the window
    let (filter, events) = ConfigFilter::probe(NIC, WINDOW, &mut model).unwrap();
    assert_eq!(
        events,
        vec![
            FilterEvent::IoBarHidden { bar: BarId::Bar(0) },
            FilterEvent::BarCleared {
                bar: BarId::Bar(1),
                was: 0x2000_0000,
                size: 4096
            },
        ]
    );
    assert_eq!(model.regs[5], 0);
    assert_eq!(read(&filter, 0x10), 0, "I/O BAR hidden");
    assert_eq!(read(&filter, 0x20), 0x1000_400c);
    let bar4 = filter.bars().find(|b| b.id == BarId::Bar(4)).unwrap();
    assert_eq!(bar4.address, 0x1000_4000);
    assert!(events.iter().all(|e| !e.to_string().is_empty()));
}

#[test]
fn bar_sizing_is_emulated() {
    let (mut filter, model) = probed();
    let before = model.writes.len();
    // Linux's __pci_read_base: save, write ~0, read back, restore, per dword.
    assert!(filter.write(at(0x14), 4, 0xffff_ffff).is_dropped());
    assert_eq!(read(&filter, 0x14), 0xffff_f000);
    assert!(
        filter.write(at(0x14), 4, 0).is_dropped(),
        "restore of an unassigned BAR"
    );
    assert_eq!(read(&filter, 0x14), 0);
    // 64-bit BAR: low half, then high half.
    filter.write(at(0x20), 4, 0xffff_ffff);
    assert_eq!(read(&filter, 0x20), 0xffff_c00c);
    filter.write(at(0x20), 4, 0x0000_000c);
    filter.write(at(0x24), 4, 0xffff_ffff);
    assert_eq!(read(&filter, 0x24), 0xffff_ffff);
    filter.write(at(0x24), 4, 0);
    assert_eq!(read(&filter, 0x20), 0x0000_000c);
    // ROM: sized with the enable bit clear (Linux writes 0xfffff800).
    filter.write(at(0x30), 4, 0xffff_f800);
    assert_eq!(read(&filter, 0x30), 0xfffc_0000);
    filter.write(at(0x30), 4, 0);
    assert_eq!(read(&filter, 0x30), 0);
    // Sub-dword read of a sizing BAR.
    filter.write(at(0x14), 4, 0xffff_ffff);
    assert_eq!(filter.read(at(0x16), 2), ReadDecision::Value(0xffff));
    assert_eq!(filter.read(at(0x15), 1), ReadDecision::Value(0xf0));
    assert_eq!(model.writes.len(), before, "the device was never touched");
    // Unimplemented BARs ignore sizing.
    assert!(filter.write(at(0x10), 4, 0xffff_ffff).is_dropped());
    assert_eq!(read(&filter, 0x10), 0);
}

#[test]
fn bar_placed_inside_window_reaches_the_device() {
    let (mut filter, mut model) = probed();
    let d = filter.write(at(0x14), 4, 0x1000_0000);
    assert_eq!(
        d.hardware_writes(),
        &[HwWrite {
            reg: 0x14,
            size: 4,
            value: 0x1000_0000
        }]
    );
    assert_eq!(
        d.event,
        Some(FilterEvent::BarMoved {
            bar: BarId::Bar(1),
            from: 0,
            to: 0x1000_0000,
            size: 4096
        })
    );
    for w in d.hardware_writes() {
        model.apply(w);
    }
    assert_eq!(model.regs[5], 0x1000_0000);
    assert_eq!(read(&filter, 0x14), 0x1000_0000);
    // Moving it within the window.
    let d = filter.write(at(0x14), 4, 0x10ff_f000);
    assert_eq!(d.hardware_writes().len(), 1);
    assert_eq!(
        d.event.unwrap().to_string(),
        "BAR1 (4 KiB) moved 0x10000000 -> 0x10fff000"
    );
    // Sizing and restoring an assigned BAR re-programs the same address.
    filter.write(at(0x14), 4, 0xffff_ffff);
    let d = filter.write(at(0x14), 4, 0x10ff_f000);
    assert_eq!(d.hardware_writes()[0].value, 0x10ff_f000);
    assert_eq!(d.event, None);
}

#[test]
fn bar_moves_outside_window_are_refused() {
    let (mut filter, _) = probed();
    filter.write(at(0x14), 4, 0x1000_0000);
    // Elsewhere in the 32-bit PCI window, over the GIC, just below the window.
    for addr in [0x2000_0000u32, 0x0800_0000, 0x0fff_f000] {
        let d = filter.write(at(0x14), 4, addr);
        assert!(d.is_dropped(), "{addr:#x}");
        assert_eq!(
            d.event,
            Some(FilterEvent::BarRefused {
                bar: BarId::Bar(1),
                attempted: addr as u64,
                size: 4096,
                window: WINDOW
            })
        );
        assert_eq!(read(&filter, 0x14), 0x1000_0000, "the BAR did not move");
    }
    // The last page of the window is fine.
    assert!(!filter.write(at(0x14), 4, 0x10ff_f000).is_dropped());
    filter.write(at(0x14), 4, 0x1000_0000);
    // Unassigning is a move outside the window too.
    let d = filter.write(at(0x14), 4, 0);
    assert!(d.is_dropped() && d.event.is_some());
    let text = d.event.unwrap().to_string();
    assert!(
        text.contains("refused") && text.contains("0x10000000..0x11000000"),
        "{text}"
    );
    // A BAR larger than the window never fits.
    let small = Window::new(0x1000_0000, 0x1000_2000).unwrap();
    let mut model = Model::virtio_net();
    let (mut filter, _) = ConfigFilter::probe(NIC, small, &mut model).unwrap();
    assert!(filter.write(at(0x20), 4, 0x1000_0000).is_dropped());
    let d = filter.write(at(0x24), 4, 0);
    assert!(matches!(d.event, Some(FilterEvent::BarRefused { .. })));
}

#[test]
fn sub_dword_bar_writes_merge() {
    let (mut filter, _) = probed();
    filter.write(at(0x14), 4, 0x1000_0000);
    // Upper half only: 0x1080_0000 is inside the window.
    let d = filter.write(at(0x16), 2, 0x1080);
    assert_eq!(d.hardware_writes()[0].value, 0x1080_0000);
    // One byte that would take it outside.
    let d = filter.write(at(0x17), 1, 0x20);
    assert!(d.is_dropped());
    assert_eq!(read(&filter, 0x14), 0x1080_0000);
}

#[test]
fn bar64_low_then_high_in_a_high_window() {
    let high = Window::new(0x80_0000_0000, 0x80_1000_0000).unwrap();
    let mut model = Model::virtio_net();
    let (mut filter, _) = ConfigFilter::probe(NIC, high, &mut model).unwrap();
    // Low half first: 0x4000 alone is outside the window, so it waits for the high half.
    let d = filter.write(at(0x20), 4, 0x0000_400c);
    assert!(d.is_dropped());
    assert_eq!(d.event, None);
    assert_eq!(
        read(&filter, 0x20),
        0x0000_400c,
        "the guest reads what it wrote"
    );
    let d = filter.write(at(0x24), 4, 0x80);
    assert_eq!(
        d.hardware_writes(),
        &[
            HwWrite {
                reg: 0x20,
                size: 4,
                value: 0x4000
            },
            HwWrite {
                reg: 0x24,
                size: 4,
                value: 0x80
            }
        ]
    );
    for w in d.hardware_writes() {
        model.apply(w);
    }
    assert_eq!((model.regs[8], model.regs[9]), (0x400c, 0x80));
    assert_eq!(
        d.event,
        Some(FilterEvent::BarMoved {
            bar: BarId::Bar(4),
            from: 0,
            to: 0x80_0000_4000,
            size: 16384
        })
    );
    // A low half that is complete by itself moves the BAR at once.
    let d = filter.write(at(0x20), 4, 0x0000_800c);
    assert_eq!(d.hardware_writes().len(), 2);
    // A high half that leaves the window is refused; the BAR stays.
    let d = filter.write(at(0x24), 4, 0x81);
    assert!(d.is_dropped());
    assert!(matches!(
        d.event,
        Some(FilterEvent::BarRefused {
            attempted: 0x81_0000_8000,
            ..
        })
    ));
    assert_eq!(read(&filter, 0x20), 0x0000_800c);
    assert_eq!(read(&filter, 0x24), 0x80);
    // A pending low half is dropped too when the high half makes the whole address bad.
    assert!(filter.write(at(0x20), 4, 0x2000_000c).is_dropped());
    assert_eq!(read(&filter, 0x20), 0x2000_000c);
    let d = filter.write(at(0x24), 4, 0x7f);
    assert!(d.is_dropped() && d.event.is_some());
    assert_eq!(read(&filter, 0x20), 0x0000_800c, "both halves snapped back");
    let bar = filter.bars().find(|b| b.id == BarId::Bar(4)).unwrap();
    assert_eq!(bar.address, 0x80_0000_8000);
}

#[test]
fn bar64_in_the_low_window() {
    let (mut filter, _) = probed();
    // Low write completes a move when the high half is already right (0).
    let d = filter.write(at(0x20), 4, 0x1000_4000);
    assert_eq!(d.hardware_writes().len(), 2);
    let d = filter.write(at(0x24), 4, 0);
    assert_eq!(d.event, None, "same address: re-programmed, not moved");
    // A high half that is not 0 takes it out of the 32-bit window.
    let d = filter.write(at(0x24), 4, 1);
    assert!(d.is_dropped() && d.event.is_some());
    // The high half of a 64-bit BAR is only the high half: flags are not involved.
    assert_eq!(read(&filter, 0x24), 0);
    assert_eq!(read(&filter, 0x20), 0x1000_400c);
}

#[test]
fn rom_enable_follows_the_window() {
    let (mut filter, _) = probed();
    // Enabling the unassigned ROM is refused.
    let d = filter.write(at(0x30), 4, 1);
    assert!(d.is_dropped());
    assert!(matches!(
        d.event,
        Some(FilterEvent::BarRefused {
            bar: BarId::Rom,
            ..
        })
    ));
    assert_eq!(read(&filter, 0x30), 0);
    // Placed and enabled at once inside the window.
    let d = filter.write(at(0x30), 4, 0x1080_0001);
    assert_eq!(d.hardware_writes()[0].value, 0x1080_0001);
    assert_eq!(read(&filter, 0x30), 0x1080_0001);
    // Disabled in place.
    let d = filter.write(at(0x30), 4, 0x1080_0000);
    assert_eq!(d.hardware_writes()[0].value, 0x1080_0000);
    // Address bits below the ROM's size read as zero, as on the device: 256 KiB alignment.
    let d = filter.write(at(0x30), 4, 0x1080_1001);
    assert_eq!(read(&filter, 0x30), 0x1080_0001);
    assert_eq!(d.hardware_writes()[0].value, 0x1080_0001);
}

#[test]
fn command_register_policy() {
    let (mut filter, _) = probed();
    // Memory + bus master: allowed as is (the SMMU contains the DMA).
    let d = filter.write(at(4), 2, (CMD_MEMORY | CMD_BUS_MASTER) as u32);
    assert_eq!(
        d.hardware_writes(),
        &[HwWrite {
            reg: 4,
            size: 2,
            value: 0x6
        }]
    );
    assert_eq!(d.event, None);
    // I/O space and MWI are cleared and reported.
    let d = filter.write(at(4), 2, 0x0017);
    assert_eq!(d.hardware_writes()[0].value, 0x0006);
    assert_eq!(
        d.event,
        Some(FilterEvent::CommandMasked {
            requested: 0x17,
            applied: 0x6
        })
    );
    // A dword write keeps the status half (write-1-to-clear) untouched.
    let d = filter.write(at(4), 4, 0xf900_0407);
    assert_eq!(d.hardware_writes()[0].value, 0xf900_0406);
    // Byte writes: the high byte of the command register (INTx disable is bit 10).
    let d = filter.write(at(5), 1, 0x07);
    assert_eq!(d.hardware_writes()[0].value, 0x05);
    assert_eq!(
        d.event,
        Some(FilterEvent::CommandMasked {
            requested: 0x0700,
            applied: 0x0500
        })
    );
    // The status register alone passes.
    let d = filter.write(at(6), 2, 0xffff);
    assert_eq!(
        d.hardware_writes()[0],
        HwWrite {
            reg: 6,
            size: 2,
            value: 0xffff
        }
    );
    assert_eq!(d.event, None);
    assert_eq!(
        ConfigFilter::quiesce_write(),
        HwWrite {
            reg: 4,
            size: 2,
            value: 0
        }
    );
}

#[test]
fn other_registers_pass_through() {
    let (mut filter, _) = probed();
    // MSI-X control, interrupt line, extended space.
    for (reg, size, value) in [(0x42, 2, 0x8000), (0x3c, 1, 0x25), (0x100, 4, 0x1234)] {
        let d = filter.write(at(reg), size, value);
        assert_eq!(d.hardware_writes(), &[HwWrite { reg, size, value }]);
        assert_eq!(d.event, None);
    }
    // Values wider than the access are cut to its size.
    let d = filter.write(at(0x3c), 1, 0x1234);
    assert_eq!(d.hardware_writes()[0].value, 0x34);
}

#[test]
fn arbitrary_guest_accesses_never_panic() {
    let (mut filter, _) = probed();
    let mut seed = 0x1234_5678_9abc_def0u64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let reg = (seed % 0x40) as u16;
        let offset = if seed & 1 == 0 { at(reg) } else { seed >> 20 };
        let size = [1u8, 2, 4, 8, 3][((seed >> 8) % 5) as usize];
        let value = (seed >> 32) as u32;
        let _ = filter.read(offset, size);
        let d = filter.write(offset, size, value);
        for w in d.hardware_writes() {
            assert!(access_valid(w.reg, w.size));
            if reg_slot(w.reg & !3).is_some() {
                // Whatever the guest does, BARs only ever reach the device inside the window.
                let bar = filter.bars().find(|b| slot_reg(bar_slot(b.id)) == w.reg);
                if let Some(bar) = bar {
                    assert!(WINDOW.contains(bar.address, bar.size));
                }
            }
        }
    }
}

fn bar_slot(id: BarId) -> usize {
    match id {
        BarId::Bar(n) => n as usize,
        BarId::Rom => ROM_SLOT,
    }
}
