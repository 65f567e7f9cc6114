//! Host tests of `smmu`.

use super::*;

/// Bits [hi:lo] of a 64-bit word.
fn bits(word: u64, hi: u32, lo: u32) -> u64 {
    (word >> lo) & ((1u64 << (hi - lo + 1)) - 1)
}

/// Bits [hi:lo] of a whole STE, numbered 0..511 as in the architecture's STE layout.
fn ste_bits(ste: &Ste, hi: u32, lo: u32) -> u64 {
    assert_eq!(hi / 64, lo / 64, "field crosses a doubleword");
    bits(ste[(lo / 64) as usize], hi % 64, lo % 64)
}

/// What QEMU's stage=2 SMMUv3 reports (hw/arm/smmuv3.c, smmuv3_init_regs): S2P, TTF = 0b10,
/// COHACC, ASID16, VMID16, TTENDIAN = 0b10, STALL_MODEL = 1, TERM_MODEL, ST_LEVEL = 1;
/// SIDSIZE 16, EVENTQS/CMDQS 19; OAS 0b100 (44 bits), GRAN4K/16K/64K.
fn qemu_features() -> Features {
    let idr0 = IDR0_S2P
        | (0b10 << IDR0_TTF_SHIFT)
        | IDR0_COHACC
        | (1 << 12)
        | IDR0_VMID16
        | (0b10 << IDR0_TTENDIAN_SHIFT)
        | (1 << 24)
        | (1 << 26)
        | (1 << IDR0_ST_LEVEL_SHIFT);
    let idr1 = 16 | (19 << IDR1_EVENTQS_SHIFT) | (19 << IDR1_CMDQS_SHIFT);
    let idr5 = 0b100 | IDR5_GRAN4K | (1 << 5) | (1 << 6);
    Features::decode(idr0, idr1, idr5)
}

#[test]
fn qemu_stage2_smmu_is_usable() {
    let f = qemu_features();
    assert!(f.stage2 && !f.stage1 && f.coherent && f.vmid16 && f.two_level_strtab);
    assert_eq!(
        (f.sid_bits, f.cmdq_log2, f.evtq_log2, f.oas_field),
        (16, 19, 19, 4)
    );
    assert_eq!(f.check_usable(), Ok(()));
    assert_eq!(f.max_vmid(), u16::MAX);
}

#[test]
fn missing_features_are_named() {
    let f = qemu_features();
    let cases = [
        (Features { stage2: false, ..f }, Unsupported::NoStage2),
        (
            Features {
                aarch64_tables: false,
                ..f
            },
            Unsupported::NoAarch64Tables,
        ),
        (
            Features {
                coherent: false,
                ..f
            },
            Unsupported::NotCoherent,
        ),
        (
            Features {
                little_endian: false,
                ..f
            },
            Unsupported::BigEndianOnly,
        ),
        (Features { gran4k: false, ..f }, Unsupported::No4kGranule),
        (Features { oas_field: 1, ..f }, Unsupported::OutputTooSmall),
    ];
    let mut texts = std::collections::BTreeSet::new();
    for (features, expected) in cases {
        assert_eq!(features.check_usable(), Err(expected));
        texts.insert(expected.to_string());
    }
    assert_eq!(texts.len(), 6);
    // Stage 1 only (QEMU's default arm-smmuv3.stage=1).
    let stage1_only = Features::decode(IDR0_S1P | (0b10 << 2) | IDR0_COHACC, 16, 0b100 | 16);
    assert_eq!(stage1_only.check_usable(), Err(Unsupported::NoStage2));
    // Big-endian-only tables; mixed endianness is fine.
    assert!(!Features::decode(0b11 << IDR0_TTENDIAN_SHIFT, 0, 0).little_endian);
    assert!(Features::decode(0, 0, 0).little_endian);
}

#[test]
fn abort_ste() {
    let ste = ste_abort();
    assert_eq!(ste_bits(&ste, 0, 0), 1, "V");
    assert_eq!(ste_bits(&ste, 3, 1), 0b000, "Config = abort");
    assert!(ste[1..].iter().all(|&w| w == 0));
    assert_eq!(ste_config(&ste), Some(STE_CONFIG_ABORT));
    assert_eq!(ste_config(&[0; 8]), None);
}

#[test]
fn stage2_ste_fields_at_architected_positions() {
    let f = qemu_features();
    let vtcr = stage2::vtcr_el2(0b0101, true); // a 48-bit PA CPU with 16-bit VMIDs
    let root = 0x4123_4000;
    let ste = ste_stage2(&f, 0x1234, root, vtcr).unwrap();
    // STE layout (IHI 0070): V [0], Config [3:1], S2VMID [143:128], S2T0SZ [165:160],
    // S2SL0 [167:166], S2IR0 [169:168], S2OR0 [171:170], S2SH0 [173:172], S2TG [175:174],
    // S2PS [178:176], S2AA64 [179], S2ENDI [180], S2AFFD [181], S2PTW [182], S2HD [183],
    // S2HA [184], S2S [185], S2R [186], S2TTB [243:196].
    assert_eq!(ste_bits(&ste, 0, 0), 1);
    assert_eq!(ste_bits(&ste, 3, 1), 0b110);
    assert_eq!(ste_bits(&ste, 143, 128), 0x1234);
    assert_eq!(ste_bits(&ste, 165, 160), 24, "S2T0SZ: 40-bit IPA");
    assert_eq!(ste_bits(&ste, 167, 166), 0b10, "S2SL0: start at level 0");
    assert_eq!(ste_bits(&ste, 169, 168), 0b01, "S2IR0: WB RA WA");
    assert_eq!(ste_bits(&ste, 171, 170), 0b01, "S2OR0: WB RA WA");
    assert_eq!(ste_bits(&ste, 173, 172), 0b11, "S2SH0: inner shareable");
    assert_eq!(ste_bits(&ste, 175, 174), 0b00, "S2TG: 4 KiB");
    assert_eq!(
        ste_bits(&ste, 178, 176),
        0b100,
        "S2PS capped at the SMMU's 44-bit OAS"
    );
    assert_eq!(ste_bits(&ste, 179, 179), 1, "S2AA64");
    assert_eq!(ste_bits(&ste, 180, 180), 0, "S2ENDI little endian");
    assert_eq!(ste_bits(&ste, 181, 181), 0, "S2AFFD: AF faults on");
    assert_eq!(ste_bits(&ste, 182, 182), 1, "S2PTW");
    assert_eq!(ste_bits(&ste, 184, 183), 0, "S2HD/S2HA off");
    assert_eq!(ste_bits(&ste, 185, 185), 0, "S2S: no stall");
    assert_eq!(ste_bits(&ste, 186, 186), 1, "S2R: record faults");
    assert_eq!(ste_bits(&ste, 243, 196) << 4, root);
    // Nothing else: VTCR_EL2's RES1 bit 31 and VS bit 19 are not copied into the STE.
    assert_eq!(ste[1], 0, "no SHCFG without ATTR_TYPES_OVR");
    assert_eq!(ste_bits(&ste, 159, 144), 0);
    assert_eq!(ste_bits(&ste, 191, 187), 0);
    assert_eq!(ste_bits(&ste, 195, 192), 0);
    assert_eq!(ste_bits(&ste, 255, 244), 0);
    assert!(ste[4..].iter().all(|&w| w == 0));
    assert_eq!(ste_config(&ste), Some(STE_CONFIG_S2_TRANS));
}

#[test]
fn stage2_ste_ps_is_the_smaller_of_cpu_and_smmu() {
    let f = qemu_features();
    let narrow_cpu = stage2::vtcr_el2(0b0010, false); // 40-bit PA CPU
    let ste = ste_stage2(&f, 1, 0x4000_0000, narrow_cpu).unwrap();
    assert_eq!(ste_bits(&ste, 178, 176), 0b010);
    let wide_smmu = Features { oas_field: 6, ..f };
    let ste = ste_stage2(&wide_smmu, 1, 0x4000_0000, stage2::vtcr_el2(0b0110, true)).unwrap();
    assert_eq!(
        ste_bits(&ste, 178, 176),
        0b101,
        "vtcr_el2 caps PS at 48 bits"
    );
}

#[test]
fn stage2_ste_shcfg_with_attribute_overrides() {
    let f = Features {
        attr_types_ovr: true,
        ..qemu_features()
    };
    let ste = ste_stage2(&f, 1, 0x4000_0000, stage2::vtcr_el2(5, true)).unwrap();
    assert_eq!(ste_bits(&ste, 109, 108), 0b01, "SHCFG = use incoming");
    assert_eq!(ste[1] & !(0b11 << 44), 0);
}

#[test]
fn stage2_ste_refusals() {
    let f = qemu_features();
    let vtcr = stage2::vtcr_el2(5, true);
    let vmid8 = Features { vmid16: false, ..f };
    assert_eq!(
        ste_stage2(&vmid8, 256, 0x4000_0000, vtcr),
        Err(SteError::VmidTooWide)
    );
    assert!(ste_stage2(&vmid8, 255, 0x4000_0000, vtcr).is_ok());
    assert_eq!(
        ste_stage2(&f, 1, 0x4000_0800, vtcr),
        Err(SteError::RootUnaligned)
    );
    assert_eq!(
        ste_stage2(&f, 1, 1 << 44, vtcr),
        Err(SteError::RootOutOfRange)
    );
    assert!(ste_stage2(&f, 1, (1 << 44) - 4096, vtcr).is_ok());
    let texts: std::collections::BTreeSet<String> = [
        SteError::VmidTooWide,
        SteError::RootUnaligned,
        SteError::RootOutOfRange,
    ]
    .iter()
    .map(|e| e.to_string())
    .collect();
    assert_eq!(texts.len(), 3);
}

#[test]
fn command_encodings() {
    // CMD_CFGI_STE: opcode 0x03, SID [63:32], Leaf = word 1 bit 0.
    let c = cmd_cfgi_ste(0x0010);
    assert_eq!(bits(c[0], 7, 0), 0x03);
    assert_eq!(bits(c[0], 63, 32), 0x10);
    assert_eq!(bits(c[0], 31, 8), 0, "SSec/SSV/SubstreamID clear");
    assert_eq!(c[1], 1);
    // CMD_CFGI_ALL: opcode 0x04 with Range = 31.
    let c = cmd_cfgi_all();
    assert_eq!(c, [0x04, 31]);
    // CMD_TLBI_S12_VMALL: opcode 0x28, VMID [47:32].
    let c = cmd_tlbi_s12_vmall(0xbeef);
    assert_eq!(bits(c[0], 7, 0), 0x28);
    assert_eq!(bits(c[0], 47, 32), 0xbeef);
    assert_eq!(bits(c[0], 63, 48), 0);
    assert_eq!(c[1], 0);
    // CMD_TLBI_NSNH_ALL: opcode 0x30, nothing else.
    assert_eq!(cmd_tlbi_nsnh_all(), [0x30, 0]);
    // CMD_TLBI_S2_IPA: opcode 0x2a, VMID [47:32], word 1: Leaf [0], TTL [9:8], TG [11:10],
    // IPA [51:12]; NUM [16:12] and SCALE [24:20] of word 0 stay 0 (not a range).
    let c = cmd_tlbi_s2_ipa(7, 0xab_cdef_1234, true);
    assert_eq!(bits(c[0], 7, 0), 0x2a);
    assert_eq!(bits(c[0], 47, 32), 7);
    assert_eq!(bits(c[0], 31, 8), 0);
    assert_eq!(bits(c[1], 51, 12) << 12, 0xab_cdef_1000);
    assert_eq!(bits(c[1], 0, 0), 1);
    assert_eq!(bits(c[1], 11, 1), 0);
    assert_eq!(bits(c[1], 63, 52), 0);
    let c = cmd_tlbi_s2_ipa(7, 1 << 52 | 0x5000, false);
    assert_eq!(c[1], 0x5000, "IPA bits above 51 dropped");
    // CMD_SYNC: opcode 0x46, CS [13:12] = 0 (none), no MSI.
    let c = cmd_sync();
    assert_eq!(c, [0x46, 0]);
    assert_eq!(opcode(&c), OP_CMD_SYNC);
    assert_eq!(opcode_name(opcode(&c)), "CMD_SYNC");
    assert_eq!(opcode_name(0xff), "unknown command");
}

#[test]
fn base_register_encodings() {
    assert_eq!(strtab_base(0x4010_0000), (1 << 62) | 0x4010_0000);
    assert_eq!(strtab_base(0x4010_0000 | 0x3f), (1 << 62) | 0x4010_0000);
    assert_eq!(strtab_base_cfg_linear(8), 8);
    assert_eq!(queue_base(0x4020_0000, 8), (1 << 62) | 0x4020_0000 | 8);
    assert_eq!(queue_base(0x4020_0010, 40), (1 << 62) | 0x4020_0000 | 8);
    assert_eq!(CR1_WB_ISH, 0b11_01_01_11_01_01);
    assert_eq!(sid_bits_for(0), 1);
    assert_eq!(sid_bits_for(0x10), 5);
    assert_eq!(sid_bits_for(0xff), 8);
    assert_eq!(sid_bits_for(0x100), 9);
    assert_eq!(sid_bits_for(u32::MAX), 32);
    assert_eq!(pa_bits(4), 44);
    assert_eq!(pa_bits(7), 52);
}

#[test]
fn cmdq_error_codes() {
    assert_eq!(CmdqError::from_cons(0x0100_0005), CmdqError::Illegal);
    assert_eq!(CmdqError::from_cons(0x0200_0005), CmdqError::Abort);
    assert_eq!(CmdqError::from_cons(0x0300_0000), CmdqError::AtcInvSync);
    assert_eq!(CmdqError::from_cons(0x0000_00ff), CmdqError::None);
    assert_eq!(CmdqError::from_cons(0xff00_0000), CmdqError::Other(0x7f));
    assert!(CmdqError::Illegal.to_string().contains("CERROR_ILL"));
}

#[test]
fn queue_wrap_arithmetic() {
    let q = QueueIndex::new(2).unwrap(); // 4 entries; wrap bit is bit 2
    assert_eq!(q.entries(), 4);
    assert!(q.is_empty(0, 0));
    assert!(!q.is_full(0, 0));
    let mut prod = 0;
    for _ in 0..4 {
        assert!(!q.is_full(prod, 0));
        prod = q.next(prod);
    }
    assert_eq!(prod, 0b100, "index 0 with the wrap bit set");
    assert!(q.is_full(prod, 0));
    assert!(!q.is_empty(prod, 0));
    assert_eq!(q.used(prod, 0), 4);
    assert_eq!(q.free(prod, 0), 0);
    // The consumer catches up: same index, same wrap.
    assert!(q.is_empty(0b100, 0b100));
    // Second pass wraps back to wrap = 0.
    assert_eq!(q.next(0b111), 0);
    assert_eq!(q.index(0b110), 2);
    assert!(q.wrap(0b110) && !q.wrap(0b010));
    // Consumer ahead in index, behind in wrap: prod = 1 (wrap 1), cons = 3 (wrap 0).
    assert_eq!(q.used(0b101, 0b011), 2);
    assert_eq!(q.free(0b101, 0b011), 2);
    // Bits above the wrap bit (overflow flag, CMDQ error field) do not count.
    let cons_with_err = 0b100 | (1 << 24) | Q_OVERFLOW_FLAG;
    assert!(q.is_full(0, cons_with_err) && !q.is_empty(0, cons_with_err));
    assert!(q.is_empty(0b100, cons_with_err));
    assert_eq!(q.next(cons_with_err), 0b101);
    assert!(QueueIndex::new(19).is_some() && QueueIndex::new(20).is_none());
}

#[test]
fn queue_consumed_across_the_wrap() {
    let q = QueueIndex::new(3).unwrap(); // 8 entries
                                         // A SYNC written at position 7 (wrap 0, index 7) is consumed once cons reaches 8.
    assert!(!q.consumed(7, 7));
    assert!(q.consumed(7, 0b1000));
    assert!(q.consumed(7, 0b1011));
    // Written at position 15 (wrap 1, index 7): consumed when cons wraps to 0.
    assert!(!q.consumed(15, 15));
    assert!(q.consumed(15, 0));
    assert!(!q.consumed(15, 14), "cons behind the entry");
    for target in 0..16u32 {
        for cons in 0..16u32 {
            let ahead = cons.wrapping_sub(target) & 15;
            assert_eq!(q.consumed(target, cons), (1..=8).contains(&ahead));
        }
    }
}

#[test]
fn event_queue_overflow_flags() {
    let q = QueueIndex::new(7).unwrap();
    assert!(!evtq_overflowed(5, 5));
    assert!(evtq_overflowed(Q_OVERFLOW_FLAG | 5, 5));
    let cons = evtq_cons_value(q, 0x80 | 5, Q_OVERFLOW_FLAG | 5);
    assert_eq!(cons, Q_OVERFLOW_FLAG | 0x85);
    assert!(!evtq_overflowed(Q_OVERFLOW_FLAG | 5, cons));
    assert_eq!(evtq_cons_value(q, 0x1ff, 0), 0xff);
}

#[test]
fn gerror_active_bits_and_names() {
    assert!(Gerror::active(0x5, 0x5).is_empty());
    let g = Gerror::active(GERROR_CMDQ_ERR | GERROR_SFM_ERR, 0);
    assert!(g.cmdq_error());
    assert_eq!(g.to_string(), "CMDQ_ERR, SFM_ERR (service failure mode)");
    assert_eq!(Gerror::active(0xffff_ffff, 0).0, GERROR_MASK);
    assert_eq!(Gerror(0).to_string(), "none");
}

/// An event record laid out as QEMU writes it (smmuv3-internal.h EVT_SET_*): type word 0
/// [7:0], SSV [11], SSID [31:12], SID word 0 [63:32]; STAG word 1 [15:0], Stall [31], PnU [33],
/// InD [34], RnW [35], S2 [39], CLASS [41:40]; input address word 2; ADDR2 word 3.
fn record(kind: u8, sid: u32, w1: u64, addr: u64, addr2: u64) -> [u64; 4] {
    [kind as u64 | ((sid as u64) << 32), w1, addr, addr2]
}

#[test]
fn translation_fault_event() {
    let words = record(0x10, 0x10, EVT1_S2 | (0b10 << 40), 0x4800_0000, 0x4800_0000);
    let e = Event::decode(&words);
    assert_eq!(e.kind, EventKind::FTranslation);
    assert_eq!(e.stream_id, 0x10);
    assert_eq!(e.substream_id, None);
    assert_eq!(e.input_address, 0x4800_0000);
    assert!(!e.read && e.stage2 && !e.stalled && !e.privileged && !e.instruction);
    assert_eq!(e.class, FaultClass::Input);
    assert_eq!(
        e.to_string(),
        "SMMU F_TRANSLATION: stream 0x10 write at IOVA 0x48000000 (stage 2)"
    );
}

#[test]
fn permission_fault_read_event() {
    let words = record(
        0x13,
        0x208,
        EVT1_S2 | EVT1_RNW | (0b10 << 40),
        0x9000_0010,
        0,
    );
    let e = Event::decode(&words);
    assert_eq!(e.kind, EventKind::FPermission);
    assert!(e.read);
    assert_eq!(
        e.to_string(),
        "SMMU F_PERMISSION: stream 0x208 read at IOVA 0x90000010 (stage 2)"
    );
}

#[test]
fn configuration_events() {
    let e = Event::decode(&record(0x04, 0x10, 0, 0, 0));
    assert_eq!(e.kind, EventKind::CBadSte);
    assert_eq!(e.to_string(), "SMMU C_BAD_STE: stream 0x10");
    let e = Event::decode(&record(0x02, 0x1_0000, 0, 0, 0));
    assert_eq!(e.to_string(), "SMMU C_BAD_STREAMID: stream 0x10000");
    let e = Event::decode(&record(0x03, 0x10, 0, 0, 0x4010_0400 | 0x7));
    assert_eq!(e.kind, EventKind::FSteFetch);
    assert_eq!(e.address2, 0x4010_0400);
    assert_eq!(
        e.to_string(),
        "SMMU F_STE_FETCH: stream 0x10 fetching PA 0x40100400"
    );
    let mut words = record(
        0x0b,
        0x10,
        EVT1_S2 | EVT1_RNW | (0b10 << 40),
        0x1000,
        0x5000,
    );
    words[0] |= EVT0_SSV | (0x42 << 12);
    let e = Event::decode(&words);
    assert_eq!(e.substream_id, Some(0x42));
    assert_eq!(
        e.to_string(),
        "SMMU F_WALK_EABT: stream 0x10 substream 0x42 read at IOVA 0x1000 (stage 2) \
             fetching PA 0x5000"
    );
}

#[test]
fn every_event_code_decodes() {
    let named = [
        (0x01, "F_UUT"),
        (0x02, "C_BAD_STREAMID"),
        (0x03, "F_STE_FETCH"),
        (0x04, "C_BAD_STE"),
        (0x05, "F_BAD_ATS_TREQ"),
        (0x06, "F_STREAM_DISABLED"),
        (0x07, "F_TRANSL_FORBIDDEN"),
        (0x08, "C_BAD_SUBSTREAMID"),
        (0x09, "F_CD_FETCH"),
        (0x0a, "C_BAD_CD"),
        (0x0b, "F_WALK_EABT"),
        (0x10, "F_TRANSLATION"),
        (0x11, "F_ADDR_SIZE"),
        (0x12, "F_ACCESS"),
        (0x13, "F_PERMISSION"),
        (0x20, "F_TLB_CONFLICT"),
        (0x21, "F_CFG_CONFLICT"),
        (0x24, "E_PAGE_REQUEST"),
        (0x25, "F_VMS_FETCH"),
    ];
    for (code, name) in named {
        assert_eq!(EventKind::from_code(code).name(), name);
    }
    for code in 0..=255u8 {
        let words = [code as u64 | (u64::MAX << 8), u64::MAX, u64::MAX, u64::MAX];
        let e = Event::decode(&words);
        let line = e.to_string();
        assert!(line.starts_with("SMMU ") && !line.contains('\n'));
    }
    let e = Event::decode(&record(0xe0, 1, 0, 0, 0));
    assert_eq!(e.to_string(), "SMMU event 0xe0: stream 0x1");
}

#[test]
fn stage1_class_and_stall_are_shown() {
    let words = record(0x10, 3, EVT1_STALL | (0b01 << 40) | EVT1_IND, 0x2000, 0);
    let e = Event::decode(&words);
    assert_eq!(e.class, FaultClass::TranslationTable);
    assert_eq!(
        e.to_string(),
        "SMMU F_TRANSLATION: stream 0x3 fetch at IOVA 0x2000 (stage 1, walking stage-1 \
             tables) [stalled]"
    );
}
