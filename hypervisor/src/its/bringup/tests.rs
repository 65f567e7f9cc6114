//! Host tests of the ITS bring-up and command writer, against a model ITS that behaves as
//! QEMU 10's `hw/intc/arm_gicv3_its.c` does where it matters here: GITS_BASER<n> reset to
//! device/collection/vPE tables with 64 KiB pages and 8-byte entries, Type and Entry_Size
//! read-only, BASER and CBASER read-only once enabled, a CBASER write resetting CREADR and
//! CWRITER, enabling resetting CREADR, and commands executed on the CWRITER write.

use std::collections::HashMap;

use super::*;
use crate::its::{self, cmd, PageSize, RdBase, CREADR_STALLED};

/// QEMU's GITS_TYPER under gic-version=4 (docs/ARCHITECTURE.md, read from the running model).
const QEMU_V4_TYPER: u64 = 0x0000_003f_0001_efb3;
/// The same without GITS_TYPER.Virtual: QEMU's gic-version=3 ITS.
const QEMU_V3_TYPER: u64 = QEMU_V4_TYPER & !0b10;

fn reset_baser(table_type: u64) -> u64 {
    (table_type << 56) | (7 << 48) | (0b10 << 8)
}

const RO_MASK: u64 = (0x1f << 48) | (0b111 << 56);

#[derive(Default)]
struct Model {
    ctlr: u32,
    baser: [u64; 8],
    cbaser: u64,
    cwriter: u64,
    creadr: u64,
    queue: HashMap<u64, Command>,
    executed: Vec<Command>,
    /// Stall at the command with this index (of `executed`).
    stall_at: Option<usize>,
    /// Never advance CREADR.
    hang: bool,
    /// This BASER ignores writes.
    stuck_baser: Option<usize>,
    /// CREADR reads as this, whatever happened.
    creadr_override: Option<u64>,
    /// GITS_CTLR.Enabled ignores writes of 1.
    refuse_enable: bool,
    /// The command queue's memory is unknown to the driver (`store_command` refuses).
    refuse_store: bool,
}

impl Model {
    fn qemu_v4() -> Model {
        let mut m = Model {
            ctlr: GITS_CTLR_QUIESCENT,
            ..Model::default()
        };
        m.baser[0] = reset_baser(0b001);
        m.baser[1] = reset_baser(0b100);
        m.baser[2] = reset_baser(0b010);
        m
    }

    fn enabled(&self) -> bool {
        self.ctlr & GITS_CTLR_ENABLED != 0
    }

    fn queue_bytes(&self) -> u64 {
        ((self.cbaser & 0xff) + 1) * 4096
    }

    fn process(&mut self) {
        if !self.enabled() || self.hang || self.creadr & CREADR_STALLED != 0 {
            return;
        }
        while self.creadr != self.cwriter {
            if self.stall_at == Some(self.executed.len()) {
                self.creadr |= CREADR_STALLED;
                return;
            }
            let c = self.queue[&self.creadr];
            self.executed.push(c);
            self.creadr = (self.creadr + 32) % self.queue_bytes();
        }
    }
}

impl ItsHw for Model {
    fn read32(&mut self, offset: usize) -> u32 {
        assert_eq!(offset, GITS_CTLR, "only GITS_CTLR is read 32-bit");
        self.ctlr
    }

    fn write32(&mut self, offset: usize, value: u32) {
        assert_eq!(offset, GITS_CTLR, "only GITS_CTLR is written 32-bit");
        if value & GITS_CTLR_ENABLED != 0 {
            if self.refuse_enable {
                return;
            }
            self.ctlr = GITS_CTLR_ENABLED;
            self.creadr = 0;
            self.process();
        } else {
            self.ctlr = GITS_CTLR_QUIESCENT;
        }
    }

    fn read64(&mut self, offset: usize) -> u64 {
        match offset {
            GITS_CBASER => self.cbaser,
            GITS_CWRITER => self.cwriter,
            GITS_CREADR => self.creadr_override.unwrap_or(self.creadr),
            o if (GITS_BASER0..GITS_BASER0 + 64).contains(&o) => self.baser[(o - GITS_BASER0) / 8],
            o => panic!("unexpected 64-bit read at {o:#x}"),
        }
    }

    fn write64(&mut self, offset: usize, value: u64) {
        match offset {
            GITS_CBASER if !self.enabled() => {
                self.cbaser = value;
                self.creadr = 0;
                self.cwriter = 0;
            }
            GITS_CWRITER => {
                self.cwriter = value & !1;
                self.process();
            }
            o if (GITS_BASER0..GITS_BASER0 + 64).contains(&o) => {
                let n = (o - GITS_BASER0) / 8;
                if !self.enabled() && self.stuck_baser != Some(n) {
                    self.baser[n] = (self.baser[n] & RO_MASK) | (value & !RO_MASK);
                }
            }
            o => panic!("unexpected 64-bit write at {o:#x}"),
        }
    }

    fn store_command(&mut self, offset: u64, command: &Command) -> bool {
        if self.refuse_store || offset >= self.queue_bytes() || !offset.is_multiple_of(32) {
            return false;
        }
        self.queue.insert(offset, *command);
        true
    }
}

/// A bump allocator that hands out aligned addresses from 0x4800_0000 and records them.
struct Bump {
    next: u64,
    given: Vec<(u64, u64)>,
    limit: u64,
}

impl Bump {
    fn new() -> Bump {
        Bump {
            next: 0x4800_0000,
            given: Vec::new(),
            limit: u64::MAX,
        }
    }

    fn alloc(&mut self, bytes: u64, align: u64) -> Option<u64> {
        let addr = self.next.next_multiple_of(align);
        if addr + bytes > self.limit {
            return None;
        }
        self.next = addr + bytes;
        self.given.push((addr, bytes));
        Some(addr)
    }
}

fn v4_features() -> GicFeatures {
    GicFeatures {
        its_typer: Some(QEMU_V4_TYPER),
        lpis: true,
        id_bits: 16,
        redistributor_vlpis: true,
    }
}

fn up(model: &mut Model, bump: &mut Bump) -> Result<Its, ItsFault> {
    let typer = Typer::decode(QEMU_V4_TYPER);
    Its::bring_up(model, typer, 2, &mut |b, a| bump.alloc(b, a))
}

// ----- the path decision ------------------------------------------------------------------

#[test]
fn qemus_gicv4_its_allows_direct_injection() {
    let typer = direct_injection(&v4_features()).unwrap();
    assert!(typer.virtual_lpis && !typer.pta);
}

#[test]
fn each_missing_feature_falls_back_to_intx_with_its_reason() {
    let f = v4_features();
    let cases = [
        (
            GicFeatures {
                its_typer: None,
                ..f
            },
            NoDirectInjection::NoIts,
        ),
        (
            GicFeatures {
                its_typer: Some(QEMU_V3_TYPER),
                ..f
            },
            NoDirectInjection::NotVirtual,
        ),
        (GicFeatures { lpis: false, ..f }, NoDirectInjection::NoLpis),
        (
            GicFeatures { id_bits: 13, ..f },
            NoDirectInjection::FewIdBits(13),
        ),
        (
            GicFeatures {
                its_typer: Some(QEMU_V4_TYPER | 1 << 40),
                ..f
            },
            NoDirectInjection::Gicv41,
        ),
        (
            GicFeatures {
                redistributor_vlpis: false,
                ..f
            },
            NoDirectInjection::NoRedistributorVlpis,
        ),
        (
            // DeviceID bits [17:13] = 6: 7 bits, fewer than bus 0's 256 requester IDs.
            GicFeatures {
                its_typer: Some((QEMU_V4_TYPER & !(0x1f << 13)) | (6 << 13)),
                ..f
            },
            NoDirectInjection::FewDeviceIdBits {
                bits: 7,
                needed: 256,
            },
        ),
    ];
    for (features, why) in cases {
        assert_eq!(direct_injection(&features), Err(why), "{features:?}");
    }
    assert_eq!(
        NoDirectInjection::NotVirtual.to_string(),
        "the ITS translates physical LPIs only (GICv3: GITS_TYPER.Virtual = 0)"
    );
}

// ----- bring-up ---------------------------------------------------------------------------

#[test]
fn bring_up_gives_qemus_three_tables_and_the_queue_then_enables() {
    let mut model = Model::qemu_v4();
    let mut bump = Bump::new();
    let its = up(&mut model, &mut bump).unwrap();
    assert!(model.enabled());
    for (n, t) in [(0, 0b001), (1, 0b100), (2, 0b010)] {
        let b = Baser::decode(model.baser[n]);
        assert!(b.valid, "BASER{n}");
        assert_eq!(model.baser[n] >> 56 & 0b111, t, "type kept");
        assert_eq!(b.entry_bytes, 8, "entry size kept");
        // 256 devices, 2 collections, 64 vPEs of 8 bytes: one 64 KiB page each.
        assert_eq!((b.pages, b.page_size), (1, PageSize::Size64K));
        assert_eq!(b.addr % 0x1_0000, 0);
        let placed = its.tables[n].unwrap();
        assert_eq!((placed.addr, placed.bytes), (b.addr, 0x1_0000));
    }
    assert!(its.tables[3..].iter().all(Option::is_none));
    // The queue: 16 pages at a 64 KiB boundary, valid; CWRITER at 0.
    assert_eq!(model.cbaser & 0xff, 15);
    assert_eq!(model.cbaser >> 63, 1);
    assert_eq!(model.cbaser & 0x000f_ffff_ffff_f000, its.queue_addr);
    assert_eq!(its.queue_addr % 0x1_0000, 0);
    assert_eq!(model.cwriter, 0);
    // Nothing the allocator handed out overlaps.
    let mut given = bump.given.clone();
    given.sort();
    assert!(given.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
    assert_eq!(given.len(), 4);
}

#[test]
fn an_its_left_enabled_is_disabled_first() {
    let mut model = Model::qemu_v4();
    model.ctlr = GITS_CTLR_ENABLED;
    let mut bump = Bump::new();
    up(&mut model, &mut bump).unwrap();
    assert!(model.enabled());
    // The tables went in, which the model only allows while disabled.
    assert!(Baser::decode(model.baser[0]).valid);
}

#[test]
fn a_baser_that_does_not_take_its_value_is_a_fault() {
    let mut model = Model::qemu_v4();
    model.stuck_baser = Some(1);
    let err = up(&mut model, &mut Bump::new()).unwrap_err();
    assert!(matches!(err, ItsFault::BaserRefused { n: 1, .. }), "{err}");
    assert!(!model.enabled());
}

#[test]
fn an_its_without_a_vpe_table_is_refused() {
    let mut model = Model::qemu_v4();
    model.baser[2] = 0;
    assert_eq!(
        up(&mut model, &mut Bump::new()).unwrap_err(),
        ItsFault::MissingTable("vPE")
    );
    assert!(!model.enabled());
}

#[test]
fn no_memory_for_the_queue_is_a_fault() {
    let mut model = Model::qemu_v4();
    let mut bump = Bump::new();
    // Room for the three 64 KiB tables, not the 64 KiB queue.
    bump.limit = bump.next + 3 * 0x1_0000;
    assert_eq!(
        up(&mut model, &mut bump).unwrap_err(),
        ItsFault::OutOfMemory("command queue")
    );
}

#[test]
fn enabled_must_stick() {
    let mut model = Model::qemu_v4();
    model.refuse_enable = true;
    assert_eq!(
        up(&mut model, &mut Bump::new()).unwrap_err(),
        ItsFault::NotEnabled
    );
}

// ----- the command writer -----------------------------------------------------------------

fn mapc(icid: u16) -> Command {
    its::mapc(icid, Some(RdBase::ProcessorNumber(icid))).unwrap()
}

#[test]
fn commands_run_in_order_and_the_writer_waits_for_them() {
    let mut model = Model::qemu_v4();
    let mut its = up(&mut model, &mut Bump::new()).unwrap();
    let batch = [
        mapc(0),
        mapc(1),
        its::sync(RdBase::ProcessorNumber(1)).unwrap(),
    ];
    its.run(&mut model, &batch).unwrap();
    assert_eq!(model.executed, batch);
    assert_eq!(model.cwriter, 3 * 32);
    assert_eq!(model.creadr, 3 * 32);
}

#[test]
fn more_commands_than_the_queue_holds_wrap_and_all_run() {
    let mut model = Model::qemu_v4();
    let mut its = up(&mut model, &mut Bump::new()).unwrap();
    // 2048 slots, 2047 usable at once: 5000 commands in three calls wrap the ring twice.
    let all: Vec<Command> = (0..5000u32).map(|e| its::inv(0x10, e)).collect();
    its.run(&mut model, &all[..1]).unwrap();
    its.run(&mut model, &all[1..4000]).unwrap();
    its.run(&mut model, &all[4000..]).unwrap();
    assert_eq!(model.executed, all);
    assert_eq!(model.creadr, (5000 % 2048) * 32);
}

#[test]
fn a_stall_puts_the_its_out_of_service() {
    let mut model = Model::qemu_v4();
    let mut its = up(&mut model, &mut Bump::new()).unwrap();
    model.stall_at = Some(1);
    assert_eq!(
        its.run(&mut model, &[mapc(0), mapc(1)]),
        Err(ItsFault::Stalled(32))
    );
    assert!(its.failed());
    let executed = model.executed.len();
    assert_eq!(its.run(&mut model, &[mapc(2)]), Err(ItsFault::OutOfService));
    assert_eq!(
        model.executed.len(),
        executed,
        "nothing more reached the ITS"
    );
}

#[test]
fn a_command_the_driver_cannot_store_puts_the_its_out_of_service() {
    let mut model = Model::qemu_v4();
    let mut its = up(&mut model, &mut Bump::new()).unwrap();
    model.refuse_store = true;
    assert_eq!(
        its.run(&mut model, &[mapc(0)]),
        Err(ItsFault::QueueUnknown(0))
    );
    assert!(its.failed());
    assert!(model.executed.is_empty());
    model.refuse_store = false;
    assert_eq!(its.run(&mut model, &[mapc(0)]), Err(ItsFault::OutOfService));
    assert!(model.executed.is_empty(), "nothing reached the ITS");
}

#[test]
fn a_hung_its_times_out() {
    let mut model = Model::qemu_v4();
    let mut its = up(&mut model, &mut Bump::new()).unwrap();
    model.hang = true;
    assert_eq!(its.run(&mut model, &[mapc(0)]), Err(ItsFault::Timeout));
    assert!(its.failed());
}

#[test]
fn a_creadr_outside_the_queue_is_not_used_as_an_index() {
    let mut model = Model::qemu_v4();
    let mut its = up(&mut model, &mut Bump::new()).unwrap();
    // Offset field [19:5] at its maximum: slot 32767 of a 2048-slot queue.
    model.creadr_override = Some(0x000f_ffe0);
    assert_eq!(
        its.run(&mut model, &[mapc(0)]),
        Err(ItsFault::Encoding(ItsError::QueueOffset(0x000f_ffe0)))
    );
    assert!(its.failed());
    assert!(model.executed.is_empty());
    assert!(model.queue.is_empty(), "no command was stored anywhere");
}

#[test]
fn the_mapc_words_name_the_collection_and_processor() {
    // MAPC ICID 1 -> processor 1, valid: DW2 = V | 1 << 16 | 1.
    assert_eq!(mapc(1), [cmd::MAPC as u64, 0, (1 << 63) | (1 << 16) | 1, 0]);
}

// ----- redistributor LPI registers --------------------------------------------------------

#[test]
fn propbaser_and_pendbaser_words() {
    // IDbits 13 (14 bits), InnerCache 0b111 at [9:7], Inner Shareable at [11:10].
    assert_eq!(
        propbaser(0x4812_3000, 14),
        Ok(0x4812_3000 | (1 << 10) | (0b111 << 7) | 13)
    );
    assert_eq!(
        pendbaser(0x4813_0000),
        Ok(0x4813_0000 | (1 << 10) | (0b111 << 7))
    );
    assert!(matches!(
        pendbaser(0x4813_1000),
        Err(ItsError::Misaligned {
            align: 0x1_0000,
            ..
        })
    ));
    assert!(matches!(
        propbaser(0x4812_3800, 14),
        Err(ItsError::Misaligned { align: 0x1000, .. })
    ));
    assert!(matches!(
        propbaser(0x4812_3000, 13),
        Err(ItsError::IdBits { bits: 13, .. })
    ));
    let both = RedistributorLpis::new(0x4812_3000, 0x4813_0000).unwrap();
    assert_eq!(both.propbaser & 0x1f, u64::from(PHYSICAL_LPI_ID_BITS - 1));
}

#[test]
fn a_redistributor_took_the_tables_if_addresses_and_id_bits_read_back() {
    let lpis = RedistributorLpis::new(0x4812_3000, 0x4813_0000).unwrap();
    assert!(lpis.taken(lpis.propbaser, lpis.pendbaser));
    // Non-shareable, non-cacheable read back: still taken.
    let lowered = |v: u64| v & !((0b11 << 10) | (0b111 << 7));
    assert!(lpis.taken(lowered(lpis.propbaser), lowered(lpis.pendbaser)));
    // RAZ/WI registers, a clipped IDbits, another address: not taken.
    assert!(!lpis.taken(0, 0));
    assert!(!lpis.taken(lpis.propbaser & !0x1f, lpis.pendbaser));
    assert!(!lpis.taken(lpis.propbaser, lpis.pendbaser ^ 0x1_0000));
}

#[test]
fn physical_lpi_tables_cover_8192_lpis() {
    assert_eq!(physical_lpi_table_bytes(), (8192, 2048));
}
