//! Host tests of `its`.
//!
//! Expected words are written out by hand from the field positions of IHI 0069 §5.3 and QEMU's
//! `hw/intc/gicv3_internal.h`; the property tests decode the encoder's output with QEMU's
//! `FIELD(...)` positions (restated here as (shift, length) pairs, not taken from `its.rs`).

use super::*;
use proptest::prelude::*;

/// QEMU's `FIELD_EX64(word, ..., shift, length)`.
fn ex(word: u64, shift: u32, len: u32) -> u64 {
    (word >> shift) & ((1u64 << len) - 1)
}

// ----- commands: hand-derived words --------------------------------------------------------

#[test]
fn mapd_words() {
    let itt = IttMapping {
        itt_addr: 0x4123_4500,
        event_id_bits: 5,
    };
    assert_eq!(
        mapd(0x10, Some(itt)),
        Ok([
            0x0000_0010_0000_0008,
            0x0000_0000_0000_0004,
            0x8000_0000_4123_4500,
            0
        ])
    );
    let widest = IttMapping {
        itt_addr: 0x000f_ffff_ffff_ff00,
        event_id_bits: 32,
    };
    assert_eq!(
        mapd(0xffff_ffff, Some(widest)),
        Ok([0xffff_ffff_0000_0008, 0x1f, 0x800f_ffff_ffff_ff00, 0])
    );
    assert_eq!(mapd(7, None), Ok([0x0000_0007_0000_0008, 0, 0, 0]));
}

#[test]
fn mapd_refuses_out_of_range_fields() {
    let ok = IttMapping {
        itt_addr: 0x4123_4500,
        event_id_bits: 5,
    };
    let bad = [
        IttMapping {
            itt_addr: 0x4123_4580,
            ..ok
        },
        IttMapping {
            itt_addr: 1 << 52,
            ..ok
        },
        IttMapping {
            event_id_bits: 0,
            ..ok
        },
        IttMapping {
            event_id_bits: 33,
            ..ok
        },
    ];
    for m in bad {
        assert!(mapd(1, Some(m)).is_err(), "{m:?} accepted");
    }
    assert!(matches!(
        mapd(1, Some(bad[0])),
        Err(ItsError::Misaligned { align: 256, .. })
    ));
    assert!(matches!(
        mapd(1, Some(bad[1])),
        Err(ItsError::AddressTooHigh { .. })
    ));
}

#[test]
fn mapc_words() {
    assert_eq!(
        mapc(3, Some(RdBase::ProcessorNumber(1))),
        Ok([0x09, 0, 0x8000_0000_0001_0003, 0])
    );
    assert_eq!(
        mapc(0xffff, Some(RdBase::Address(0x080a_0000))),
        Ok([0x09, 0, 0x8000_0000_080a_ffff, 0])
    );
    assert_eq!(
        mapc(0xffff, Some(RdBase::ProcessorNumber(0xffff))),
        Ok([0x09, 0, 0x8000_0000_ffff_ffff, 0])
    );
    assert_eq!(mapc(5, None), Ok([0x09, 0, 5, 0]));
}

#[test]
fn rdbase_addresses_are_checked() {
    assert!(matches!(
        mapc(1, Some(RdBase::Address(0x080a_8000))),
        Err(ItsError::Misaligned {
            align: 0x1_0000,
            ..
        })
    ));
    assert!(matches!(
        sync(RdBase::Address(1 << 52)),
        Err(ItsError::AddressTooHigh { .. })
    ));
    assert!(vmovp(1, RdBase::Address(0x1000), 0, 0).is_err());
    let m = VpeMapping {
        target: RdBase::Address(0x080a_0800),
        vpt_addr: 0x4400_0000,
        vintid_bits: 16,
    };
    assert!(vmapp(1, Some(m)).is_err());
}

#[test]
fn mapti_and_mapi_words() {
    assert_eq!(
        mapti(0x10, 2, 8194, 1),
        Ok([0x0000_0010_0000_000a, 0x0000_2002_0000_0002, 1, 0])
    );
    assert_eq!(
        mapti(0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff),
        Ok([0xffff_ffff_0000_000a, 0xffff_ffff_ffff_ffff, 0xffff, 0])
    );
    assert_eq!(
        mapi(0x10, 8192, 0),
        Ok([0x0000_0010_0000_000b, 0x2000, 0, 0])
    );
    assert_eq!(
        mapti(1, 0, 8191, 0),
        Err(ItsError::NotAnLpi {
            what: "MAPTI pINTID",
            intid: 8191
        })
    );
    assert!(matches!(
        mapi(1, 5, 0),
        Err(ItsError::NotAnLpi { intid: 5, .. })
    ));
}

#[test]
fn plain_device_event_and_collection_commands() {
    assert_eq!(inv(0x10, 3), [0x0000_0010_0000_000c, 3, 0, 0]);
    assert_eq!(
        discard(0xabcd_1234, 0x8765_4321),
        [0xabcd_1234_0000_000f, 0x8765_4321, 0, 0]
    );
    assert_eq!(invall(0x1234), [0x0d, 0, 0x1234, 0]);
    assert_eq!(
        sync(RdBase::ProcessorNumber(0xffff)),
        Ok([0x05, 0, 0x0000_0000_ffff_0000, 0])
    );
    assert_eq!(
        sync(RdBase::Address(0x000f_ffff_ffff_0000)),
        Ok([0x05, 0, 0x000f_ffff_ffff_0000, 0])
    );
}

#[test]
fn vmapp_words() {
    let m = VpeMapping {
        target: RdBase::ProcessorNumber(1),
        vpt_addr: 0x4400_0000,
        vintid_bits: 16,
    };
    assert_eq!(
        vmapp(2, Some(m)),
        Ok([
            0x29,
            0x0000_0002_0000_0000,
            0x8000_0000_0001_0000,
            0x0000_0000_4400_000f
        ])
    );
    let widest = VpeMapping {
        target: RdBase::Address(0x000f_ffff_fffe_0000),
        vpt_addr: 0x000f_ffff_ffff_0000,
        vintid_bits: 32,
    };
    assert_eq!(
        vmapp(0xffff, Some(widest)),
        Ok([
            0x29,
            0x0000_ffff_0000_0000,
            0x800f_ffff_fffe_0000,
            0x000f_ffff_ffff_001f
        ])
    );
    assert_eq!(vmapp(0xffff, None), Ok([0x29, 0x0000_ffff_0000_0000, 0, 0]));
}

#[test]
fn vmapp_refuses_out_of_range_fields() {
    let ok = VpeMapping {
        target: RdBase::ProcessorNumber(1),
        vpt_addr: 0x4400_0000,
        vintid_bits: 16,
    };
    assert!(vmapp(1, Some(ok)).is_ok());
    for bad in [
        VpeMapping {
            vpt_addr: 0x4400_8000,
            ..ok
        },
        VpeMapping {
            vpt_addr: 1 << 52,
            ..ok
        },
        VpeMapping {
            vintid_bits: 13,
            ..ok
        },
        VpeMapping {
            vintid_bits: 33,
            ..ok
        },
    ] {
        assert!(vmapp(1, Some(bad)).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn vmapti_and_vmapi_words() {
    assert_eq!(
        vmapti(0x10, 1, 2, 8193, Doorbell::Lpi(8300)),
        Ok([
            0x0000_0010_0000_002a,
            0x0000_0002_0000_0001,
            0x0000_206c_0000_2001,
            0
        ])
    );
    assert_eq!(
        vmapti(0x10, 1, 2, 8193, Doorbell::None),
        Ok([
            0x0000_0010_0000_002a,
            0x0000_0002_0000_0001,
            0x0000_03ff_0000_2001,
            0
        ])
    );
    assert_eq!(
        vmapi(0x10, 8200, 3, Doorbell::None),
        Ok([
            0x0000_0010_0000_002b,
            0x0000_0003_0000_2008,
            0x0000_03ff_0000_0000,
            0
        ])
    );
}

#[test]
fn virtual_mappings_refuse_non_lpis_and_bad_doorbells() {
    assert!(matches!(
        vmapti(1, 0, 0, 8191, Doorbell::None),
        Err(ItsError::NotAnLpi { intid: 8191, .. })
    ));
    // 1023 means "no doorbell" only as `Doorbell::None`; as an LPI it is refused like any SPI.
    for id in [0, 32, 1022, 1023, 8191] {
        assert_eq!(
            vmapti(1, 0, 0, 8192, Doorbell::Lpi(id)),
            Err(ItsError::BadDoorbell(id))
        );
        assert_eq!(
            vmapi(1, 8192, 0, Doorbell::Lpi(id)),
            Err(ItsError::BadDoorbell(id))
        );
        assert_eq!(
            vmovi(1, 0, 0, Some(Doorbell::Lpi(id))),
            Err(ItsError::BadDoorbell(id))
        );
    }
    assert!(matches!(
        vmapi(1, 100, 0, Doorbell::None),
        Err(ItsError::NotAnLpi { intid: 100, .. })
    ));
}

#[test]
fn vmovp_vmovi_vsync_vinvall_words() {
    assert_eq!(
        vmovp(2, RdBase::ProcessorNumber(1), 0x1234, 0x0005),
        Ok([
            0x0000_1234_0000_0022,
            0x0000_0002_0000_0005,
            0x0000_0000_0001_0000,
            0
        ])
    );
    assert_eq!(
        vmovi(0x10, 1, 4, Some(Doorbell::Lpi(8300))),
        Ok([
            0x0000_0010_0000_0021,
            0x0000_0004_0000_0001,
            0x0000_206c_0000_0001,
            0
        ])
    );
    assert_eq!(
        vmovi(0x10, 1, 4, Some(Doorbell::None)),
        Ok([
            0x0000_0010_0000_0021,
            0x0000_0004_0000_0001,
            0x0000_03ff_0000_0001,
            0
        ])
    );
    assert_eq!(
        vmovi(0x10, 1, 4, None),
        Ok([0x0000_0010_0000_0021, 0x0000_0004_0000_0001, 0, 0])
    );
    assert_eq!(vsync(7), [0x25, 0x0000_0007_0000_0000, 0, 0]);
    assert_eq!(vinvall(0xffff), [0x2d, 0x0000_ffff_0000_0000, 0, 0]);
}

// ----- commands: decoded with QEMU's field positions -----------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// What QEMU's process_mapd/mapc/mapti/vmapp/vmapti/vmovi read is what was asked for.
    #[test]
    fn commands_decode_with_qemu_fields(
        dev in any::<u32>(),
        ev in any::<u32>(),
        lpi in LPI_INTID_BASE..=u32::MAX,
        db in LPI_INTID_BASE..=u32::MAX,
        icid in any::<u16>(),
        vpe in any::<u16>(),
        proc_num in any::<u16>(),
        itt_page in 0u64..(1 << 44),
        ev_bits in 1u32..=32,
        vpt_page in 0u64..(1 << 36),
        vbits in MIN_LPI_ID_BITS..=32,
    ) {
        let rd = RdBase::ProcessorNumber(proc_num);
        // MAPD: DEVID_MASK [63:32], SIZE_MASK 0x1f, ITTADDR (8, 44), CMD_FIELD_VALID_MASK.
        let c = mapd(dev, Some(IttMapping { itt_addr: itt_page << 8, event_id_bits: ev_bits }))
            .unwrap();
        prop_assert_eq!(ex(c[0], 0, 8), 0x08);
        prop_assert_eq!(ex(c[0], 32, 32), u64::from(dev));
        prop_assert_eq!(ex(c[1], 0, 5), u64::from(ev_bits - 1));
        prop_assert_eq!(ex(c[2], 8, 44), itt_page);
        prop_assert_eq!(ex(c[2], 63, 1), 1);
        // MAPC: ICID (0, 16), MAPC.RDBASE (16, 32) & RDBASE_PROCNUM_MASK, V.
        let c = mapc(icid, Some(rd)).unwrap();
        prop_assert_eq!(ex(c[2], 0, 16), u64::from(icid));
        prop_assert_eq!(ex(c[2], 16, 32) & 0xffff, u64::from(proc_num));
        prop_assert_eq!(ex(c[2], 63, 1), 1);
        // MAPTI: EVENTID_MASK [31:0], pINTID [63:32], ICID [15:0].
        let c = mapti(dev, ev, lpi, icid).unwrap();
        prop_assert_eq!(ex(c[0], 0, 8), 0x0a);
        prop_assert_eq!(ex(c[0], 32, 32), u64::from(dev));
        prop_assert_eq!(ex(c[1], 0, 32), u64::from(ev));
        prop_assert_eq!(ex(c[1], 32, 32), u64::from(lpi));
        prop_assert_eq!(ex(c[2], 0, 16), u64::from(icid));
        // VMAPP: VMAPP_1.VPEID (32, 16), VMAPP_2.RDBASE (16, 36), VMAPP_2.V (63, 1),
        // VMAPP_3.VPTSIZE (0, 8), VMAPP_3.VPTADDR (16, 36).
        let m = VpeMapping { target: rd, vpt_addr: vpt_page << 16, vintid_bits: vbits };
        let c = vmapp(vpe, Some(m)).unwrap();
        prop_assert_eq!(ex(c[0], 0, 8), 0x29);
        prop_assert_eq!(ex(c[1], 32, 16), u64::from(vpe));
        prop_assert_eq!(ex(c[2], 16, 36), u64::from(proc_num));
        prop_assert_eq!(ex(c[2], 63, 1), 1);
        prop_assert_eq!(ex(c[3], 0, 8), u64::from(vbits - 1));
        prop_assert_eq!(ex(c[3], 16, 36), vpt_page);
        // VMAPTI: VMAPTI_0.DEVICEID, VMAPTI_1.EVENTID/VPEID, VMAPTI_2.VINTID/DOORBELL.
        let c = vmapti(dev, ev, vpe, lpi, Doorbell::Lpi(db)).unwrap();
        prop_assert_eq!(ex(c[0], 0, 8), 0x2a);
        prop_assert_eq!(ex(c[0], 32, 32), u64::from(dev));
        prop_assert_eq!(ex(c[1], 0, 32), u64::from(ev));
        prop_assert_eq!(ex(c[1], 32, 16), u64::from(vpe));
        prop_assert_eq!(ex(c[2], 0, 32), u64::from(lpi));
        prop_assert_eq!(ex(c[2], 32, 32), u64::from(db));
        // VMOVP: VMOVP_1.VPEID (32, 16), VMOVP_2.RDBASE (16, 36).
        let c = vmovp(vpe, rd, 0, 0).unwrap();
        prop_assert_eq!(ex(c[1], 32, 16), u64::from(vpe));
        prop_assert_eq!(ex(c[2], 16, 36), u64::from(proc_num));
        // VMOVI: VMOVI_1.VPEID, VMOVI_2.D (0, 1), VMOVI_2.DOORBELL (32, 32).
        let c = vmovi(dev, ev, vpe, Some(Doorbell::Lpi(db))).unwrap();
        prop_assert_eq!(ex(c[1], 32, 16), u64::from(vpe));
        prop_assert_eq!(ex(c[2], 0, 1), 1);
        prop_assert_eq!(ex(c[2], 32, 32), u64::from(db));
        // INV, DISCARD: INV_0.DEVICEID, INV_1.EVENTID.
        for c in [inv(dev, ev), discard(dev, ev)] {
            prop_assert_eq!(ex(c[0], 32, 32), u64::from(dev));
            prop_assert_eq!(ex(c[1], 0, 32), u64::from(ev));
        }
        // VINVALL and VSYNC: VINVALL_1.VPEID (32, 16).
        for c in [vinvall(vpe), vsync(vpe)] {
            prop_assert_eq!(ex(c[1], 32, 16), u64::from(vpe));
        }
    }

    /// No out-of-range value is silently truncated: an address with any bit outside its
    /// field is refused.
    #[test]
    fn misplaced_address_bits_are_refused(bit in 0u32..64) {
        let addr = 0x4000_0000u64 | (1u64 << bit);
        let itt = IttMapping { itt_addr: addr, event_id_bits: 4 };
        prop_assert_eq!(mapd(1, Some(itt)).is_ok(), (8..52).contains(&bit));
        let vpe = VpeMapping { target: RdBase::Address(addr), vpt_addr: addr, vintid_bits: 16 };
        prop_assert_eq!(vmapp(1, Some(vpe)).is_ok(), (16..52).contains(&bit));
        prop_assert_eq!(vpendbaser(addr, true).is_ok(), (16..52).contains(&bit));
        prop_assert_eq!(vpropbaser(addr, 16).is_ok(), (12..52).contains(&bit));
    }
}

// ----- GITS_TYPER --------------------------------------------------------------------------

/// QEMU 10's TCG ITS (`gicv3_arm_its_realize`): PHYSICAL = 1, ITT_ENTRY_SIZE = 12 - 1,
/// IDBITS = DEVBITS = CIDBITS = 0xf, CIL = 1, and with gic-version=4 also VIRTUAL = 1 and
/// VMOVP = 1. Worked out by hand: [0] 1, [1] 1 -> 0x3; [7:4] 0xb -> 0xb0; [12:8] 0xf -> 0xf00;
/// [17:13] 0xf -> 0x1e000; [35:32] 0xf, [36], [37] -> 0x3f << 32.
const QEMU_GICV4_TYPER: u64 = 0x0000_003f_0001_efb3;
/// The same ITS with gic-version=3: no VIRTUAL, no VMOVP.
const QEMU_GICV3_TYPER: u64 = 0x0000_001f_0001_efb1;

#[test]
fn qemu_gicv4_its_typer() {
    let t = Typer::decode(QEMU_GICV4_TYPER);
    assert_eq!(
        t,
        Typer {
            physical: true,
            virtual_lpis: true,
            cct: false,
            itt_entry_bytes: 12,
            event_id_bits: 16,
            device_id_bits: 16,
            seis: false,
            pta: false,
            hcc: 0,
            collection_id_bits: 16,
            vmovp_single: true,
            gicv41: false,
        }
    );
    assert!(t.direct_injection());
}

#[test]
fn qemu_gicv3_its_typer_has_no_direct_injection() {
    let t = Typer::decode(QEMU_GICV3_TYPER);
    assert!(t.physical && !t.virtual_lpis && !t.vmovp_single);
    assert!(!t.direct_injection());
}

#[test]
fn typer_fields_decode_independently() {
    let t = Typer::decode((1 << 19) | (0x2a << 24) | (1 << 40) | (1 << 18) | (1 << 2));
    assert!(t.pta && t.seis && t.cct && t.gicv41 && !t.physical);
    assert_eq!(t.hcc, 0x2a);
    // CIL = 0: 16-bit collection IDs whatever CIDbits says.
    assert_eq!(Typer::decode(0x7 << 32).collection_id_bits, 16);
    assert_eq!(Typer::decode((1 << 36) | (0x7 << 32)).collection_id_bits, 8);
    // A GICv4.1 ITS is not driven with GICv4.0 commands.
    assert!(!Typer::decode(QEMU_GICV4_TYPER | (1 << 40)).direct_injection());
}

#[test]
fn rdbase_form_follows_pta() {
    let qemu = Typer::decode(QEMU_GICV4_TYPER);
    assert_eq!(qemu.rdbase(1, 0x080e_0000), Ok(RdBase::ProcessorNumber(1)));
    assert_eq!(
        qemu.rdbase(0x1_0000, 0x080e_0000),
        Err(ItsError::ProcessorNumber(0x1_0000))
    );
    let pta = Typer::decode(QEMU_GICV4_TYPER | (1 << 19));
    assert_eq!(pta.rdbase(1, 0x080e_0000), Ok(RdBase::Address(0x080e_0000)));
    assert!(pta.rdbase(1, 0x080e_8000).is_err());
}

#[test]
fn ids_are_checked_against_typer() {
    let t = Typer::decode(QEMU_GICV4_TYPER);
    assert_eq!(t.check_device_id(0xffff), Ok(0xffff));
    assert!(matches!(
        t.check_device_id(0x1_0000),
        Err(ItsError::IdTooLarge { bits: 16, .. })
    ));
    let narrow = Typer::decode((1 << 36) | (0x3 << 32) | (0x7 << 13));
    assert_eq!(narrow.check_collection(15), Ok(15));
    assert!(narrow.check_collection(16).is_err());
    assert_eq!(narrow.check_device_id(255), Ok(255));
    assert!(narrow.check_device_id(256).is_err());
}

// ----- ITT ---------------------------------------------------------------------------------

#[test]
fn itt_size_for_n_events() {
    let t = Typer::decode(QEMU_GICV4_TYPER);
    // (events, EventID bits, bytes at 12 bytes an entry)
    for (events, bits, bytes) in [
        (1, 1, 24),
        (2, 1, 24),
        (3, 2, 48),
        (4, 2, 48),
        (5, 3, 96),
        (64, 6, 768),
        (65, 7, 1536),
        (65536, 16, 786_432),
    ] {
        assert_eq!(
            t.itt_for(events),
            Ok(IttLayout {
                event_id_bits: bits,
                bytes
            }),
            "{events} events"
        );
    }
    assert_eq!(t.itt_for(0), Err(ItsError::NoEvents));
    assert!(matches!(
        t.itt_for(65537),
        Err(ItsError::IdTooLarge { bits: 16, .. })
    ));
    assert_eq!(
        IttLayout::new(u32::MAX, 8, 32).map(|l| l.event_id_bits),
        Ok(32)
    );
}

#[test]
fn itt_layout_feeds_mapd() {
    let layout = Typer::decode(QEMU_GICV4_TYPER).itt_for(3).unwrap();
    let c = mapd(0x10, Some(layout.mapping(0x4123_4500))).unwrap();
    // Size = EventID bits - 1 = 1: QEMU's lookup_ite then accepts EventIDs < 2^(1 + 1) = 4.
    assert_eq!(c[1], 1);
}

// ----- GITS_BASER --------------------------------------------------------------------------

/// QEMU's reset values (`gicv3_its_reset_hold`): Type, Page_Size = 64 KiB (0b10 << 8), and
/// Entry_Size = 8 - 1 (7 << 48). BASER0 Type 0b001 << 56, BASER1 0b100 << 56, BASER2 0b010 << 56.
const QEMU_BASER_DEVICE: u64 = 0x0107_0000_0000_0200;
const QEMU_BASER_COLLECTION: u64 = 0x0407_0000_0000_0200;
const QEMU_BASER_VPE: u64 = 0x0207_0000_0000_0200;

#[test]
fn qemu_baser_reset_values_decode() {
    for (v, ty) in [
        (QEMU_BASER_DEVICE, TableType::Device),
        (QEMU_BASER_COLLECTION, TableType::Collection),
        (QEMU_BASER_VPE, TableType::Vpe),
    ] {
        let b = Baser::decode(v);
        assert_eq!(b.table_type, ty);
        assert_eq!(b.entry_bytes, 8);
        assert_eq!(b.page_size, PageSize::Size64K);
        assert!(!b.valid && !b.indirect);
    }
    assert_eq!(Baser::decode(0).table_type, TableType::Unimplemented);
    assert_eq!(
        Baser::decode(0b011 << 56).table_type,
        TableType::Reserved(3)
    );
}

#[test]
fn baser_values_for_the_three_tables() {
    // Valid [63] | InnerCache 0b111 [61:59] | RO Type/Entry_Size | PA | Shareability 0b01
    // [11:10] | Page_Size [9:8] | Size [7:0].
    assert_eq!(
        baser_value(
            QEMU_BASER_DEVICE,
            TableType::Device,
            0x4100_0000,
            1,
            PageSize::Size64K
        ),
        Ok(0xb907_0000_4100_0600)
    );
    assert_eq!(
        baser_value(
            QEMU_BASER_COLLECTION,
            TableType::Collection,
            0x4100_3000,
            1,
            PageSize::Size4K
        ),
        Ok(0xbc07_0000_4100_3400)
    );
    assert_eq!(
        Baser::decode(0xbc07_0000_4100_3400).addr,
        0x4100_3000,
        "4 KiB pages: Physical_Address is [47:12]"
    );
    assert_eq!(
        baser_value(
            QEMU_BASER_VPE,
            TableType::Vpe,
            0x4101_0000,
            256,
            PageSize::Size16K
        ),
        Ok(0xba07_0000_4101_05ff)
    );
    // 64 KiB pages: address bits [51:48] go in [15:12] (QEMU PHYADDRH_64K).
    let v = baser_value(
        QEMU_BASER_DEVICE,
        TableType::Device,
        0x000a_0000_4100_0000,
        2,
        PageSize::Size64K,
    );
    assert_eq!(v, Ok(0xb907_0000_4100_a601));
    let b = Baser::decode(v.unwrap());
    assert_eq!(
        (b.addr, b.pages, b.valid, b.table_type),
        (0x000a_0000_4100_0000, 2, true, TableType::Device)
    );
}

#[test]
fn baser_value_refusals() {
    let dev = QEMU_BASER_DEVICE;
    assert_eq!(
        baser_value(
            dev,
            TableType::Collection,
            0x4100_0000,
            1,
            PageSize::Size64K
        ),
        Err(ItsError::WrongTableType {
            expected: 0b100,
            found: 0b001
        })
    );
    assert!(baser_value(0, TableType::Device, 0x4100_0000, 1, PageSize::Size64K).is_err());
    assert!(matches!(
        baser_value(dev, TableType::Device, 0x4100_1000, 1, PageSize::Size64K),
        Err(ItsError::Misaligned {
            align: 0x1_0000,
            ..
        })
    ));
    assert!(baser_value(dev, TableType::Device, 0x4100_1000, 1, PageSize::Size16K).is_err());
    assert!(baser_value(dev, TableType::Device, 0x4100_1000, 1, PageSize::Size4K).is_ok());
    assert!(baser_value(dev, TableType::Device, 1 << 52, 1, PageSize::Size64K).is_err());
    for pages in [0, 257] {
        assert_eq!(
            baser_value(
                dev,
                TableType::Device,
                0x4100_0000,
                pages,
                PageSize::Size64K
            ),
            Err(ItsError::PageCount { pages })
        );
    }
}

#[test]
fn flat_table_pages() {
    let b = Baser::decode(QEMU_BASER_DEVICE);
    assert_eq!(b.flat_pages(1, PageSize::Size64K), Ok(1));
    assert_eq!(b.flat_pages(1 << 16, PageSize::Size64K), Ok(8));
    assert_eq!(b.flat_pages((1 << 16) + 1, PageSize::Size64K), Ok(9));
    assert_eq!(b.flat_pages(1 << 16, PageSize::Size4K), Ok(128));
    assert_eq!(b.flat_pages(1 << 17, PageSize::Size4K), Ok(256));
    assert_eq!(
        b.flat_pages(1 << 18, PageSize::Size4K),
        Err(ItsError::PageCount { pages: 512 })
    );
    assert!(b.flat_pages(u64::MAX, PageSize::Size64K).is_err());
}

// ----- the command queue -------------------------------------------------------------------

#[test]
fn cbaser_value() {
    let q = CommandQueue::new(16).unwrap();
    assert_eq!(q.slots(), 2048);
    // Valid | InnerCache 0b111 << 59 | PA | Shareability 0b01 << 10 | Size = 15.
    assert_eq!(q.cbaser(0x4120_0000), Ok(0xb800_0000_4120_040f));
    assert_eq!(
        CommandQueue::new(1).unwrap().cbaser(0x000f_ffff_ffff_0000),
        Ok(0xb80f_ffff_ffff_0400)
    );
    assert!(matches!(
        q.cbaser(0x4120_1000),
        Err(ItsError::Misaligned { .. })
    ));
    assert!(q.cbaser(1 << 52).is_err());
    assert_eq!(CommandQueue::new(0), Err(ItsError::PageCount { pages: 0 }));
    assert_eq!(
        CommandQueue::new(257),
        Err(ItsError::PageCount { pages: 257 })
    );
    assert_eq!(CommandQueue::new(256).unwrap().slots(), 32768);
}

#[test]
fn cwriter_and_creadr() {
    let q = CommandQueue::new(1).unwrap();
    assert_eq!(q.slots(), 128);
    // Offset [19:5] is a byte offset: slot 5 is 0xa0.
    assert_eq!(q.cwriter(5), Ok(0xa0));
    assert_eq!(q.cwriter(127), Ok(0xfe0));
    assert!(q.cwriter(128).is_err());
    assert_eq!(q.creadr(0xa0), Ok((5, false)));
    assert_eq!(q.creadr(0xa1), Ok((5, true)));
    assert_eq!(q.creadr(0x1000), Err(ItsError::QueueOffset(0x1000)));
    // Bits outside [19:5] and [0] are not the offset.
    assert_eq!(q.creadr(0xffff_ffff_fff0_00a0), Ok((5, false)));
}

#[test]
fn queue_wraps_and_fills() {
    let q = CommandQueue::new(1).unwrap();
    assert!(q.is_empty(0, 0));
    assert_eq!(q.free(0, 0), 127);
    assert_eq!(q.claim(127, 0), Err(ItsError::QueueFull));
    assert!(q.is_full(127, 0));
    assert_eq!(q.claim(127, 1), Ok((0xfe0, 0)));
    assert_eq!(q.queued(3, 120), 11);
    assert_eq!(q.claim(200, 0), Err(ItsError::QueueOffset(200 * 32)));
}

/// One step of the property test: software writes `n` commands, or the ITS consumes `n`.
#[derive(Clone, Debug)]
enum QueueOp {
    Write(u8),
    Consume(u8),
}

fn queue_op() -> impl Strategy<Value = QueueOp> {
    prop_oneof![
        (0u8..40).prop_map(QueueOp::Write),
        (0u8..40).prop_map(QueueOp::Consume)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The ring against a model (a count of queued commands and a running total of writes):
    /// empty, full, queued and free agree with it, claim fails exactly when the model holds
    /// slots - 1, and the byte offsets wrap modulo the queue size.
    #[test]
    fn queue_matches_model(pages in 1u64..=3, ops in proptest::collection::vec(queue_op(), 1..80)) {
        let q = CommandQueue::new(pages).unwrap();
        let slots = q.slots();
        let (mut write, mut read) = (0u64, 0u64);
        let (mut queued, mut written) = (0u64, 0u64);
        for op in ops {
            match op {
                QueueOp::Write(n) => {
                    for _ in 0..n {
                        let full = queued == slots - 1;
                        match q.claim(write, read) {
                            Ok((offset, next)) => {
                                prop_assert!(!full);
                                prop_assert_eq!(offset, (written % slots) * 32);
                                prop_assert_eq!(q.cwriter(next).unwrap(), ((written + 1) % slots) * 32);
                                write = next;
                                queued += 1;
                                written += 1;
                            }
                            Err(e) => {
                                prop_assert!(full);
                                prop_assert_eq!(e, ItsError::QueueFull);
                            }
                        }
                    }
                }
                QueueOp::Consume(n) => {
                    let n = u64::from(n).min(queued);
                    // The ITS's view: CREADR advanced by n commands, read back and decoded.
                    let creadr = ((read + n) % slots) * 32;
                    read = q.creadr(creadr).unwrap().0;
                    queued -= n;
                }
            }
            prop_assert!(write < slots && read < slots);
            prop_assert_eq!(q.is_empty(write, read), queued == 0);
            prop_assert_eq!(q.is_full(write, read), queued == slots - 1);
            prop_assert_eq!(q.queued(write, read), queued);
            prop_assert_eq!(q.free(write, read), slots - 1 - queued);
        }
    }
}

// ----- the GICv4.0 redistributor -----------------------------------------------------------

#[test]
fn vpropbaser_value() {
    // PA | Shareability 0b01 << 10 | InnerCache 0b111 << 7 | IDbits = 16 - 1.
    assert_eq!(vpropbaser(0x4130_0000, 16), Ok(0x0000_0000_4130_078f));
    assert_eq!(vpropbaser(0x4130_1000, 32), Ok(0x0000_0000_4130_179f));
    assert!(matches!(
        vpropbaser(0x4130_0800, 16),
        Err(ItsError::Misaligned { align: 0x1000, .. })
    ));
    assert!(vpropbaser(0x4130_0000, 13).is_err());
    assert!(vpropbaser(0x4130_0000, 33).is_err());
    // QEMU's GICR_VPROPBASER fields read back what was asked for.
    let v = vpropbaser(0x000f_ffff_ffff_f000, 20).unwrap();
    assert_eq!(ex(v, 0, 5), 19);
    assert_eq!(ex(v, 12, 40), 0xff_ffff_ffff);
    assert_eq!(ex(v, 10, 2), 1);
    assert_eq!(ex(v, 7, 3), 0b111);
    assert_eq!(ex(v, 56, 3), 0);
}

#[test]
fn vpendbaser_value_and_decode() {
    assert_eq!(vpendbaser(0x4140_0000, true), Ok(0x8000_0000_4140_0780));
    assert_eq!(vpendbaser(0x4140_0000, false), Ok(0x0000_0000_4140_0780));
    assert!(matches!(
        vpendbaser(0x4140_1000, true),
        Err(ItsError::Misaligned {
            align: 0x1_0000,
            ..
        })
    ));
    assert!(vpendbaser(1 << 52, false).is_err());
    // QEMU's GICR_VPENDBASER fields: VALID 63, IDAI 62, PENDINGLAST 61, DIRTY 60, PHYADDR (16, 36).
    let read_back = Vpendbaser::decode(0xe000_0000_4140_0780);
    assert_eq!(
        read_back,
        Vpendbaser {
            valid: true,
            idai: true,
            pending_last: true,
            dirty: false,
            addr: 0x4140_0000
        }
    );
    let after_exit = Vpendbaser::decode(0x3000_0000_4140_0780);
    assert!(!after_exit.valid && after_exit.pending_last && after_exit.dirty && !after_exit.idai);
    let v = vpendbaser(0x000f_ffff_ffff_0000, true).unwrap();
    assert_eq!(ex(v, 16, 36), 0xf_ffff_ffff);
    assert_eq!(ex(v, 63, 1), 1);
    assert_eq!(ex(v, 61, 1), 0);
}

#[test]
fn lpi_tables_and_config_bytes() {
    assert_eq!(lpi_config_table_bytes(14), Ok(8192));
    assert_eq!(lpi_config_table_bytes(16), Ok(57_344));
    assert_eq!(pending_table_bytes(14), Ok(2048));
    assert_eq!(pending_table_bytes(16), Ok(8192));
    assert_eq!(pending_table_bytes(32), Ok(1 << 29));
    assert!(lpi_config_table_bytes(13).is_err());
    assert!(pending_table_bytes(33).is_err());
    assert_eq!(lpi_config_byte(0xa0, true), Ok(0xa3));
    assert_eq!(lpi_config_byte(0xa0, false), Ok(0xa2));
    assert_eq!(lpi_config_byte(0, true), Ok(0x03));
    assert_eq!(lpi_config_byte(0xa1, true), Err(ItsError::Priority(0xa1)));
}

#[test]
fn register_offsets() {
    // IHI 0069 GITS register map; QEMU gicv3_internal.h GICR_VLPI_OFFSET + 0x70/0x78.
    assert_eq!(
        (GITS_CBASER, GITS_CWRITER, GITS_CREADR, GITS_BASER0),
        (0x80, 0x88, 0x90, 0x100)
    );
    assert_eq!((GICR_VPROPBASER, GICR_VPENDBASER), (0x2_0070, 0x2_0078));
    assert_eq!(GITS_TRANSLATER, 0x1_0040);
}
