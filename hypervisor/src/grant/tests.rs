//! Host tests of `grant`.

use super::*;
use proptest::prelude::*;
use shared_abi::grant::{
    CopyKind, CopyPtr, GRANT_WINDOW_BASE, GRANT_WINDOW_SIZE, MAP_READONLY, MAX_REFS, READONLY,
};
use shared_abi::layout::GUEST_RAM_BASE;
use std::collections::{HashMap, HashSet};

/// RAM per VM in the model: 64 pages.
const RAM: u64 = 64 * PAGE_SIZE;
/// Where each test VM keeps its grant table (one page) and its op arrays.
pub(crate) const TABLE: u64 = GUEST_RAM_BASE + 0x1000;
pub(crate) const OPS: u64 = GUEST_RAM_BASE + 0x8000;
/// A frame VMs grant, and a second one.
pub(crate) const FRAME: u64 = GUEST_RAM_BASE + 0x10_000;
const FRAME2: u64 = GUEST_RAM_BASE + 0x11_000;
pub(crate) const WIN: u64 = GRANT_WINDOW_BASE;

/// VM RAM as byte vectors, stage-2 as a map, and hooks to inject failures. Any access the
/// env contract forbids panics, which fails the test.
#[derive(Default)]
pub(crate) struct Model {
    ram: HashMap<VmId, Vec<u8>>,
    pub(crate) stage2: HashMap<(VmId, u64), (u64, bool)>,
    unmaps: Vec<(VmId, u64)>,
    /// Pages unmapped by `unmap_page_deferred` whose TLB invalidation has not come yet: their
    /// translations (mapper, ipa) -> host frame may still be used, so they count as mapped.
    stale: HashMap<(VmId, u64), u64>,
    /// `flush_unmapped` calls, in order.
    pub(crate) flushes: Vec<VmId>,
    fail_map: bool,
    /// Applied just before the next compare-exchange: a concurrent guest write.
    tamper: Option<(VmId, u64, u64)>,
    /// VMs whose RAM was freed: touching it is a bug.
    freed: HashSet<VmId>,
    /// Killed VMs: their stage-2 is unreachable (being destroyed, VMID flushed before reuse).
    killed: HashSet<VmId>,
    /// The guests may write anything anywhere, IN_USE bits included, so "IN_USE is only
    /// cleared when nothing maps the frame" is theirs to break and not checked.
    hostile: bool,
    /// Incarnations per VM: a new one gets fresh RAM (other host frames), as the hypervisor
    /// gives a VM whose old frames peers still map.
    generation: HashMap<VmId, u64>,
    /// The VMs `revoked` was called for, in order.
    pub(crate) revokes: Vec<VmId>,
}

impl Model {
    fn new(vms: &[VmId]) -> Model {
        let mut m = Model::default();
        for &vm in vms {
            m.ram.insert(vm, vec![0; RAM as usize]);
        }
        m
    }

    fn offset(&self, vm: VmId, gpa: u64, len: u64) -> usize {
        assert!(!self.freed.contains(&vm), "access to freed RAM of VM {vm}");
        assert!(
            self.in_ram(vm, gpa, len.max(1)),
            "unchecked access {vm}:{gpa:#x}+{len}"
        );
        (gpa - GUEST_RAM_BASE) as usize
    }

    fn word(&self, vm: VmId, gpa: u64) -> u64 {
        let o = self.offset(vm, gpa, 8);
        u64::from_le_bytes(self.ram[&vm][o..o + 8].try_into().unwrap())
    }

    fn set_word(&mut self, vm: VmId, gpa: u64, value: u64) {
        let o = self.offset(vm, gpa, 8);
        self.ram.get_mut(&vm).unwrap()[o..o + 8].copy_from_slice(&value.to_le_bytes());
    }

    fn entry(&self, vm: VmId, gref: u32) -> GrantEntry {
        GrantEntry::from_u64(self.word(vm, entry_gpa(TABLE, gref)))
    }

    pub(crate) fn grant(
        &mut self,
        granter: VmId,
        gref: u32,
        peer: VmId,
        frame_gpa: u64,
        flags: u16,
    ) {
        let e = GrantEntry {
            flags,
            peer,
            frame: (frame_gpa >> 12) as u32,
        };
        self.set_word(granter, entry_gpa(TABLE, gref), e.to_u64());
    }

    fn bytes(&self, vm: VmId, gpa: u64, len: usize) -> Vec<u8> {
        let o = self.offset(vm, gpa, len as u64);
        self.ram[&vm][o..o + len].to_vec()
    }

    fn fill(&mut self, vm: VmId, gpa: u64, data: &[u8]) {
        let o = self.offset(vm, gpa, data.len() as u64);
        self.ram.get_mut(&vm).unwrap()[o..o + data.len()].copy_from_slice(data);
    }

    /// The host frame of `vm`'s `gpa` in its first incarnation.
    pub(crate) fn host(vm: VmId, gpa: u64) -> u64 {
        ((vm as u64) << 32) + (gpa - GUEST_RAM_BASE)
    }

    /// The host frame of `vm`'s `gpa` in its current incarnation.
    fn host_now(&self, vm: VmId, gpa: u64) -> u64 {
        Model::host(vm, gpa) + (self.generation.get(&vm).copied().unwrap_or(0) << 40)
    }

    /// Frees a dead VM's RAM: any later access panics.
    fn free(&mut self, vm: VmId) {
        assert!(
            !self
                .stale
                .values()
                .any(|pa| pa >> 32 & 0xff == u64::from(vm)),
            "RAM of VM {vm} freed while a TLB may still translate to it"
        );
        self.ram.remove(&vm);
        self.freed.insert(vm);
    }

    /// A new incarnation in fresh (zeroed) RAM.
    fn reload(&mut self, vm: VmId) {
        self.freed.remove(&vm);
        *self.generation.entry(vm).or_default() += 1;
        self.ram.insert(vm, vec![0; RAM as usize]);
    }
}

impl GrantEnv for Model {
    fn in_ram(&self, vm: VmId, gpa: u64, len: u64) -> bool {
        self.ram.contains_key(&vm)
            && len >= 1
            && gpa >= GUEST_RAM_BASE
            && gpa
                .checked_add(len)
                .is_some_and(|end| end <= GUEST_RAM_BASE + RAM)
    }

    fn read_u64(&self, vm: VmId, gpa: u64) -> u64 {
        assert_eq!(gpa % 8, 0);
        self.word(vm, gpa)
    }

    fn write_u64(&mut self, vm: VmId, gpa: u64, value: u64) {
        assert_eq!(gpa % 8, 0);
        self.set_word(vm, gpa, value);
    }

    fn compare_exchange_u64(
        &mut self,
        vm: VmId,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<u64, u64> {
        assert_eq!(gpa % 8, 0);
        if let Some((tvm, tgpa, value)) = self.tamper.take() {
            self.set_word(tvm, tgpa, value);
        }
        let actual = self.word(vm, gpa);
        let in_use = IN_USE as u64;
        if !self.hostile && actual == current && current & in_use != 0 && new & in_use == 0 {
            // IN_USE of a ref may only drop once no reachable stage-2 maps its frame, unless
            // another in-use ref of the same VM names the same frame (it covers those).
            let frame = GrantEntry::from_u64(current).frame;
            let pa = self.host_now(vm, (frame as u64) << 12);
            let mapped = self
                .stage2
                .iter()
                .map(|(key, (mapped, _))| (key, mapped))
                .chain(self.stale.iter())
                .any(|((mapper, _), mapped)| *mapped == pa && !self.killed.contains(mapper));
            let covered = (0..MAX_REFS).map(|r| entry_gpa(TABLE, r)).any(|e| {
                e != gpa && self.in_ram(vm, e, 8) && {
                    let other = GrantEntry::from_u64(self.word(vm, e));
                    other.in_use() && other.frame == frame
                }
            });
            assert!(
                !mapped || covered,
                "IN_USE cleared while the frame is still mapped"
            );
        }
        if actual == current {
            self.set_word(vm, gpa, new);
            Ok(actual)
        } else {
            Err(actual)
        }
    }

    fn copy(&mut self, dst_vm: VmId, dst_gpa: u64, src_vm: VmId, src_gpa: u64, len: u64) {
        assert!((1..=PAGE_SIZE).contains(&len));
        assert_eq!(src_gpa / PAGE_SIZE, (src_gpa + len - 1) / PAGE_SIZE);
        assert_eq!(dst_gpa / PAGE_SIZE, (dst_gpa + len - 1) / PAGE_SIZE);
        let data = self.bytes(src_vm, src_gpa, len as usize);
        self.fill(dst_vm, dst_gpa, &data);
    }

    fn host_pa(&self, vm: VmId, gpa: u64) -> u64 {
        assert_eq!(gpa % PAGE_SIZE, 0);
        self.offset(vm, gpa, PAGE_SIZE);
        self.host_now(vm, gpa)
    }

    fn map_page(
        &mut self,
        vm: VmId,
        ipa: u64,
        host_pa: u64,
        readonly: bool,
    ) -> Result<(), MapFailed> {
        assert!(in_grant_window(ipa));
        assert!(!self.freed.contains(&vm));
        if self.fail_map {
            return Err(MapFailed);
        }
        assert!(self.stage2.insert((vm, ipa), (host_pa, readonly)).is_none());
        Ok(())
    }

    fn unmap_page(&mut self, vm: VmId, ipa: u64) {
        assert!(
            self.stage2.remove(&(vm, ipa)).is_some(),
            "unmap of unmapped page"
        );
        self.unmaps.push((vm, ipa));
    }

    fn unmap_page_deferred(&mut self, vm: VmId, ipa: u64) {
        let (pa, _) = self
            .stage2
            .remove(&(vm, ipa))
            .expect("unmap of unmapped page");
        self.unmaps.push((vm, ipa));
        self.stale.insert((vm, ipa), pa);
    }

    fn flush_unmapped(&mut self, vm: VmId) {
        self.stale.retain(|(mapper, _), _| *mapper != vm);
        self.flushes.push(vm);
    }

    fn revoked(&mut self, vm: VmId) {
        assert!(!self.freed.contains(&vm), "revoke by a freed VM {vm}");
        self.revokes.push(vm);
    }
}

/// VMs 1, 2, 3 with a one-page table each.
#[test]
fn the_batch_rule_alone_refuses_exactly_the_batches_a_whole_call_refuses() {
    let (mut gt, mut m) = world();
    let op_bytes = CopyOp::WORDS as u64 * 8;
    let end_of_ram = GUEST_RAM_BASE + RAM;
    for (gpa, count) in [
        (OPS, 0),
        (OPS, 1),
        (OPS, MAX_BATCH),
        (OPS, MAX_BATCH + 1),
        (OPS + 4, 1),
        (end_of_ram - op_bytes, 1),
        (end_of_ram - op_bytes, 2),
        (u64::MAX - 7, 1),
        (0, 1),
    ] {
        let whole = gt.copy_batch(&mut m, 2, gpa, count);
        assert_eq!(
            batch_array_ok(&m, 2, gpa, count, CopyOp::WORDS),
            whole != Status::InvalidArgument,
            "{gpa:#x} x {count}"
        );
    }
}

pub(crate) fn world() -> (GrantTables, Model) {
    let mut gt = GrantTables::new();
    let m = Model::new(&[1, 2, 3]);
    for vm in 1..=3 {
        assert_eq!(gt.setup(&m, vm, TABLE, 1), Status::Ok);
    }
    (gt, m)
}

/// Kills `vm` the way the hypervisor does: its vCPUs are stopped, `vm_died`, then the
/// stage-2 is destroyed.
fn kill(gt: &mut GrantTables, m: &mut Model, vm: VmId) -> Death {
    m.killed.insert(vm);
    let death = gt.vm_died(m, vm, Teardown::Kill);
    m.stage2.retain(|(mapper, _), _| *mapper != vm);
    death
}

pub(crate) fn write_ops(m: &mut Model, caller: VmId, words: &[u64]) {
    for (i, w) in words.iter().enumerate() {
        m.set_word(caller, OPS + 8 * i as u64, *w);
    }
}

/// Status words of `n` ops of `op_words` words each, decoded.
pub(crate) fn statuses(
    m: &Model,
    caller: VmId,
    n: usize,
    op_words: usize,
    status_word: usize,
) -> Vec<Status> {
    (0..n)
        .map(|i| {
            let raw = m.word(caller, OPS + 8 * (i * op_words + status_word) as u64);
            Status::from_u64(raw).expect("a status was written")
        })
        .collect()
}

pub(crate) fn map_op(granter: VmId, gref: u32, dest_gpa: u64, flags: u16) -> MapOp {
    MapOp {
        granter,
        flags,
        gref,
        dest_gpa,
        status: 0x5555, // must be overwritten
    }
}

fn map(gt: &mut GrantTables, m: &mut Model, caller: VmId, ops: &[MapOp]) -> Vec<Status> {
    let words: Vec<u64> = ops.iter().flat_map(|op| op.to_words()).collect();
    write_ops(m, caller, &words);
    assert_eq!(gt.map_batch(m, caller, OPS, ops.len() as u64), Status::Ok);
    statuses(m, caller, ops.len(), MapOp::WORDS, MapOp::STATUS_WORD)
}

fn map1(gt: &mut GrantTables, m: &mut Model, caller: VmId, op: MapOp) -> Status {
    map(gt, m, caller, &[op])[0]
}

fn unmap(
    gt: &mut GrantTables,
    m: &mut Model,
    caller: VmId,
    dests: &[u64],
) -> (Vec<Status>, Vec<RamRelease>) {
    let words: Vec<u64> = dests
        .iter()
        .flat_map(|&dest_gpa| {
            UnmapOp {
                dest_gpa,
                status: 0x5555,
            }
            .to_words()
        })
        .collect();
    write_ops(m, caller, &words);
    let result = gt.unmap_batch(m, caller, OPS, dests.len() as u64);
    assert_eq!(result.status, Status::Ok);
    (
        statuses(m, caller, dests.len(), UnmapOp::WORDS, UnmapOp::STATUS_WORD),
        result.released,
    )
}

fn unmap1(gt: &mut GrantTables, m: &mut Model, caller: VmId, dest: u64) -> Status {
    unmap(gt, m, caller, &[dest]).0[0]
}

fn copy_words(gt: &mut GrantTables, m: &mut Model, caller: VmId, ops: &[[u64; 6]]) -> Vec<Status> {
    let words: Vec<u64> = ops.iter().flatten().copied().collect();
    write_ops(m, caller, &words);
    assert_eq!(gt.copy_batch(m, caller, OPS, ops.len() as u64), Status::Ok);
    statuses(m, caller, ops.len(), CopyOp::WORDS, CopyOp::STATUS_WORD)
}

fn copy1(
    gt: &mut GrantTables,
    m: &mut Model,
    caller: VmId,
    src: CopyPtr,
    dst: CopyPtr,
    len: u16,
) -> Status {
    let op = CopyOp {
        src,
        dst,
        len,
        status: 0x5555,
    };
    copy_words(gt, m, caller, &[op.to_words()])[0]
}

// ---- SETUP ----

#[test]
fn the_balloon_sees_grant_tables_and_lent_frames_as_in_use() {
    let (mut gt, mut m) = world();
    m.grant(1, 7, 2, FRAME, PERMIT);
    // The table page, and nothing lent yet.
    assert!(gt.page_in_use(1, TABLE + 0x10));
    assert!(!gt.page_in_use(1, FRAME));
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 7, WIN, 0)), Status::Ok);
    assert!(gt.page_in_use(1, FRAME + 0x800));
    assert!(!gt.page_in_use(1, FRAME2));
    // The mapper's own pages are not the granter's business, and bad ids are nobody's.
    assert!(!gt.page_in_use(2, FRAME));
    assert!(!gt.page_in_use(0, TABLE));
    assert!(!gt.page_in_use(MAX_VMS as VmId + 1, TABLE));
}

#[test]
fn setup_rejects_bad_arguments() {
    let mut gt = GrantTables::new();
    let m = Model::new(&[1]);
    assert_eq!(gt.setup(&m, 1, TABLE + 8, 1), Status::InvalidArgument);
    assert_eq!(gt.setup(&m, 1, TABLE, 0), Status::InvalidArgument);
    assert_eq!(
        gt.setup(&m, 1, TABLE, MAX_TABLE_PAGES as u64 + 1),
        Status::InvalidArgument
    );
    assert_eq!(gt.setup(&m, 1, TABLE, u64::MAX), Status::InvalidArgument);
    // Last page in RAM, the second one not.
    assert_eq!(
        gt.setup(&m, 1, GUEST_RAM_BASE + RAM - PAGE_SIZE, 2),
        Status::InvalidArgument
    );
    assert_eq!(gt.setup(&m, 1, 0, 1), Status::InvalidArgument);
    assert_eq!(gt.setup(&m, 1, !0xfffu64, 4), Status::InvalidArgument);
    // Caller ids the hypervisor should never pass, but must not crash on.
    assert_eq!(gt.setup(&m, 0, TABLE, 1), Status::InvalidArgument);
    assert_eq!(
        gt.setup(&m, MAX_VMS as VmId + 1, TABLE, 1),
        Status::InvalidArgument
    );
    assert_eq!(
        gt.setup(&m, 1, GUEST_RAM_BASE + RAM - PAGE_SIZE, 1),
        Status::Ok
    );
    assert_eq!(gt.setup(&m, 1, TABLE, MAX_TABLE_PAGES as u64), Status::Ok);
}

#[test]
fn setup_is_busy_while_a_ref_is_mapped_and_table_size_bounds_refs() {
    let (mut gt, mut m) = world();
    m.grant(1, 5, 2, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 5, WIN, 0)), Status::Ok);
    assert_eq!(gt.setup(&m, 1, TABLE, 2), Status::Busy);
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN), Status::Ok);
    assert_eq!(gt.setup(&m, 1, TABLE, 2), Status::Ok);
    // Ref 1023 is now inside the table (2 pages), 1024 is not.
    m.set_word(
        1,
        entry_gpa(TABLE, 1023),
        GrantEntry {
            flags: PERMIT,
            peer: 2,
            frame: (FRAME >> 12) as u32,
        }
        .to_u64(),
    );
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 1023, WIN, 0)),
        Status::Ok
    );
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 1024, WIN + PAGE_SIZE, 0)),
        Status::BadRef
    );
}

// ---- batch-level rules ----

#[test]
fn batch_array_rules_touch_no_op() {
    let (mut gt, mut m) = world();
    let op = map_op(1, 0, WIN, 0);
    write_ops(&mut m, 2, &op.to_words());
    for (gpa, count) in [
        (OPS, 0),
        (OPS, MAX_BATCH + 1),
        (OPS, u64::MAX),
        (OPS + 4, 1),
        (GUEST_RAM_BASE + RAM - 8, 1), // only the first word in RAM
        (0, 1),
        (u64::MAX - 7, 1),
    ] {
        assert_eq!(gt.map_batch(&mut m, 2, gpa, count), Status::InvalidArgument);
        assert_eq!(
            gt.unmap_batch(&mut m, 2, gpa, count).status,
            Status::InvalidArgument
        );
        assert_eq!(
            gt.copy_batch(&mut m, 2, gpa, count),
            Status::InvalidArgument
        );
    }
    assert_eq!(m.word(2, OPS + 16), 0x5555, "status word untouched");
    assert_eq!(gt.map_batch(&mut m, 0, OPS, 1), Status::InvalidArgument);
    assert_eq!(
        gt.unmap_batch(&mut m, 17, OPS, 1).status,
        Status::InvalidArgument
    );
    assert_eq!(gt.copy_batch(&mut m, 0, OPS, 1), Status::InvalidArgument);
    // A full batch of MAX_BATCH is fine.
    let ops: Vec<MapOp> = (0..MAX_BATCH as u32)
        .map(|i| map_op(1, i, WIN + i as u64 * PAGE_SIZE, 0))
        .collect();
    for i in 0..MAX_BATCH as u32 {
        m.grant(1, i, 2, FRAME, PERMIT);
    }
    assert!(map(&mut gt, &mut m, 2, &ops)
        .iter()
        .all(|s| *s == Status::Ok));
}

#[test]
fn batch_partial_failure_reports_each_op() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    m.grant(1, 1, 3, FRAME, PERMIT); // for VM 3, not 2
    m.grant(1, 2, 2, FRAME2, PERMIT);
    let st = map(
        &mut gt,
        &mut m,
        2,
        &[
            map_op(1, 0, WIN, 0),
            map_op(1, 1, WIN + PAGE_SIZE, 0),
            map_op(1, 2, WIN, 0), // dest taken by op 0
            map_op(1, 2, WIN + 2 * PAGE_SIZE, 0),
        ],
    );
    assert_eq!(st, [Status::Ok, Status::Denied, Status::Busy, Status::Ok]);
    assert_eq!(gt.mapping_count(2), 2);
    let (st, rel) = unmap(
        &mut gt,
        &mut m,
        2,
        &[WIN, WIN + PAGE_SIZE, WIN + 2 * PAGE_SIZE, WIN + 1],
    );
    assert_eq!(
        st,
        [
            Status::Ok,
            Status::NotMapped,
            Status::Ok,
            Status::InvalidArgument
        ]
    );
    assert!(rel.is_empty());
    assert!(m.stage2.is_empty());
}

// ---- MAP ----

#[test]
fn map_success_sets_in_use_and_maps_the_frame() {
    let (mut gt, mut m) = world();
    m.grant(1, 7, 2, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 7, WIN, 0)), Status::Ok);
    assert!(m.entry(1, 7).in_use());
    assert_eq!(m.stage2[&(2, WIN)], (Model::host(1, FRAME), false));
    assert_eq!(
        gt.mapping(2, WIN),
        Some(Mapping {
            dest_gpa: WIN,
            granter: 1,
            granter_incarnation: 0,
            gref: 7,
            frame_gpa: FRAME,
            host_pa: Model::host(1, FRAME),
            readonly: false,
        })
    );
    assert_eq!(gt.lent_count(1), 1);
    // Last page of the window is fine too.
    m.grant(1, 8, 2, FRAME2, PERMIT);
    let last = WIN + GRANT_WINDOW_SIZE - PAGE_SIZE;
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 8, last, 0)), Status::Ok);
}

#[test]
fn map_readonly_rules() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT | READONLY);
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)),
        Status::ReadOnly
    );
    assert!(!m.entry(1, 0).in_use());
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, MAP_READONLY)),
        Status::Ok
    );
    assert!(m.stage2[&(2, WIN)].1);
    // A read-write grant may still be mapped read-only on request.
    m.grant(1, 1, 2, FRAME2, PERMIT);
    assert_eq!(
        map1(
            &mut gt,
            &mut m,
            2,
            map_op(1, 1, WIN + PAGE_SIZE, MAP_READONLY)
        ),
        Status::Ok
    );
    assert!(gt.mapping(2, WIN + PAGE_SIZE).unwrap().readonly);
}

#[test]
fn map_argument_rules() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    // Unknown map flag.
    let mut w = map_op(1, 0, WIN, 0).to_words();
    w[0] |= 2 << 16;
    write_ops(&mut m, 2, &w);
    assert_eq!(gt.map_batch(&mut m, 2, OPS, 1), Status::Ok);
    assert_eq!(statuses(&m, 2, 1, 3, 2), [Status::InvalidArgument]);
    // Granter is the caller, 0, or beyond MAX_VMS.
    for granter in [2, 0, MAX_VMS as VmId + 1, u16::MAX] {
        assert_eq!(
            map1(&mut gt, &mut m, 2, map_op(granter, 0, WIN, 0)),
            Status::InvalidArgument
        );
    }
    // Destination outside the window or not page aligned.
    for dest in [
        WIN + 8,
        WIN - PAGE_SIZE,
        WIN + GRANT_WINDOW_SIZE,
        GUEST_RAM_BASE,
        0,
        !0xfffu64,
    ] {
        assert_eq!(
            map1(&mut gt, &mut m, 2, map_op(1, 0, dest, 0)),
            Status::InvalidArgument
        );
    }
    assert!(m.stage2.is_empty() && !m.entry(1, 0).in_use());
}

#[test]
fn map_ref_rules() {
    let (mut gt, mut m) = world();
    // VM 4 exists but has no table; VM 5 does not exist.
    m.ram.insert(4, vec![0; RAM as usize]);
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(4, 0, WIN, 0)),
        Status::BadRef
    );
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(5, 0, WIN, 0)),
        Status::BadRef
    );
    // Beyond a one-page table.
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, ENTRIES_PER_PAGE, WIN, 0)),
        Status::BadRef
    );
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, u32::MAX, WIN, 0)),
        Status::BadRef
    );
    // PERMIT clear.
    m.grant(1, 0, 2, FRAME, 0);
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)),
        Status::BadRef
    );
    // Unknown entry flag.
    m.grant(1, 0, 2, FRAME, PERMIT | 1 << 3);
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)),
        Status::BadRef
    );
    m.grant(1, 0, 2, FRAME, PERMIT | 1 << 15);
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)),
        Status::BadRef
    );
    // Peer is someone else.
    m.grant(1, 0, 3, FRAME, PERMIT);
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)),
        Status::Denied
    );
    // Frame outside the granter's RAM.
    for frame in [GUEST_RAM_BASE + RAM, 0, 0xfff_ffff_f000] {
        m.grant(1, 0, 2, frame, PERMIT);
        assert_eq!(
            map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)),
            Status::BadFrame
        );
    }
    assert!(m.stage2.is_empty() && gt.mapping_count(2) == 0);
    assert!(!m.entry(1, 0).in_use());
}

#[test]
fn map_rule_order_first_broken_rule_wins() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 3, FRAME, PERMIT | READONLY); // Denied and ReadOnly: Denied first
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)),
        Status::Denied
    );
    m.grant(1, 0, 2, GUEST_RAM_BASE + RAM, PERMIT | READONLY); // ReadOnly before BadFrame
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)),
        Status::ReadOnly
    );
    // Bad destination beats a bad ref.
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, u32::MAX, WIN + 1, 0)),
        Status::InvalidArgument
    );
    // Busy destination beats a bad ref.
    m.grant(1, 1, 2, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 1, WIN, 0)), Status::Ok);
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, u32::MAX, WIN, 0)),
        Status::Busy
    );
}

#[test]
fn map_busy_destination_even_for_another_granter() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    m.grant(3, 0, 2, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Ok);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(3, 0, WIN, 0)), Status::Busy);
    assert!(!m.entry(3, 0).in_use());
    assert_eq!(m.stage2[&(2, WIN)].0, Model::host(1, FRAME));
}

#[test]
fn map_limit_is_no_space() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    for i in 0..MAX_MAPPINGS_PER_GUEST as u64 {
        assert_eq!(
            map1(&mut gt, &mut m, 2, map_op(1, 0, WIN + i * PAGE_SIZE, 0)),
            Status::Ok
        );
    }
    let next = WIN + MAX_MAPPINGS_PER_GUEST as u64 * PAGE_SIZE;
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, next, 0)),
        Status::NoSpace
    );
    // NoSpace comes before the ref rules.
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, u32::MAX, next, 0)),
        Status::NoSpace
    );
    // Other VMs have their own budget.
    m.grant(1, 1, 3, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 3, map_op(1, 1, WIN, 0)), Status::Ok);
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN), Status::Ok);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, next, 0)), Status::Ok);
}

/// A driver domain gets a larger budget than a guest (it maps every front-end's pool);
/// each VM is held to its own, so no VM's mappings can use up another's.
#[test]
fn each_vm_is_held_to_its_own_mapping_budget() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    m.grant(1, 1, 3, FRAME, PERMIT);
    let big = MAX_MAPPINGS_PER_GUEST as u64 + 100;
    gt.set_mapping_budget(2, big as u32);
    for i in 0..big {
        assert_eq!(
            map1(&mut gt, &mut m, 2, map_op(1, 0, WIN + i * PAGE_SIZE, 0)),
            Status::Ok
        );
    }
    let next = WIN + big * PAGE_SIZE;
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, next, 0)),
        Status::NoSpace
    );
    // VM 3 keeps the guest budget, whatever VM 2 holds.
    for i in 0..MAX_MAPPINGS_PER_GUEST as u64 {
        assert_eq!(
            map1(&mut gt, &mut m, 3, map_op(1, 1, WIN + i * PAGE_SIZE, 0)),
            Status::Ok
        );
    }
    let next = WIN + MAX_MAPPINGS_PER_GUEST as u64 * PAGE_SIZE;
    assert_eq!(
        map1(&mut gt, &mut m, 3, map_op(1, 1, next, 0)),
        Status::NoSpace
    );
    // An unmap makes room again for that VM.
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN), Status::Ok);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Ok);
}

#[test]
fn double_map_is_refcounted() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Ok);
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN + PAGE_SIZE, 0)),
        Status::Ok
    );
    assert_eq!(gt.lent_count(1), 2);
    assert_eq!(gt.end(&mut m, 1, 0), Status::Busy);
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN), Status::Ok);
    assert!(m.entry(1, 0).in_use(), "still mapped once");
    assert_eq!(gt.end(&mut m, 1, 0), Status::Busy);
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN + PAGE_SIZE), Status::Ok);
    assert!(!m.entry(1, 0).in_use());
    assert_eq!(gt.end(&mut m, 1, 0), Status::Ok);
}

#[test]
fn one_frame_under_two_refs_is_tracked_per_ref() {
    // The granter may grant the same frame to two peers under two refs; each ref's IN_USE
    // follows only its own mappings.
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    m.grant(1, 2, 3, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Ok);
    assert_eq!(map1(&mut gt, &mut m, 3, map_op(1, 2, WIN, 0)), Status::Ok);
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN), Status::Ok);
    assert!(!m.entry(1, 0).in_use() && m.entry(1, 2).in_use());
    assert_eq!(gt.end(&mut m, 1, 0), Status::Ok);
    assert_eq!(gt.end(&mut m, 1, 2), Status::Busy);
}

#[test]
fn map_of_ref_whose_frame_changed_while_mapped_is_busy() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Ok);
    // The granter (illegally) points the in-use entry at another frame.
    m.grant(1, 0, 2, FRAME2, PERMIT | IN_USE);
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN + PAGE_SIZE, 0)),
        Status::Busy
    );
    // The existing mapping is the hypervisor's record, unaffected by the edit.
    assert_eq!(m.stage2[&(2, WIN)].0, Model::host(1, FRAME));
    assert_eq!(gt.mapping(2, WIN).unwrap().frame_gpa, FRAME);
    assert_eq!(m.stage2.len(), 1);
}

#[test]
fn entry_changed_between_read_and_compare_exchange_is_busy() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    // The granter revokes (clears PERMIT) right after the hypervisor read the entry.
    let revoked = GrantEntry {
        flags: 0,
        peer: 2,
        frame: (FRAME >> 12) as u32,
    }
    .to_u64();
    m.tamper = Some((1, entry_gpa(TABLE, 0), revoked));
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Busy);
    assert!(m.stage2.is_empty() && gt.mapping_count(2) == 0 && gt.lent_count(1) == 0);
    assert_eq!(m.word(1, entry_gpa(TABLE, 0)), revoked, "IN_USE not set");
    // The same entry, rewritten with the same value: still fine to map.
    m.grant(1, 0, 2, FRAME, PERMIT);
    let same = m.word(1, entry_gpa(TABLE, 0));
    m.tamper = Some((1, entry_gpa(TABLE, 0), same));
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Ok);
}

#[test]
fn stage2_failure_is_no_space_and_rolls_back_in_use() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    m.fail_map = true;
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)),
        Status::NoSpace
    );
    assert!(!m.entry(1, 0).in_use());
    assert_eq!((gt.mapping_count(2), gt.lent_count(1)), (0, 0));
    // With the ref already mapped once, a failed second map leaves IN_USE set.
    m.fail_map = false;
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Ok);
    m.fail_map = true;
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN + PAGE_SIZE, 0)),
        Status::NoSpace
    );
    assert!(m.entry(1, 0).in_use());
    assert_eq!(gt.lent_count(1), 1);
}

// ---- UNMAP ----

#[test]
fn unmap_rules_and_remap() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN + 8), Status::InvalidArgument);
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN), Status::NotMapped);
    assert_eq!(
        unmap1(&mut gt, &mut m, 2, GUEST_RAM_BASE),
        Status::NotMapped
    );
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Ok);
    // Only the mapper can unmap it.
    assert_eq!(unmap1(&mut gt, &mut m, 3, WIN), Status::NotMapped);
    assert_eq!(unmap1(&mut gt, &mut m, 1, WIN), Status::NotMapped);
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN), Status::Ok);
    assert_eq!(m.unmaps, [(2, WIN)]);
    assert!(!m.entry(1, 0).in_use() && m.stage2.is_empty());
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN), Status::NotMapped);
    // Re-map after unmap, at the same and at another address.
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Ok);
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN), Status::Ok);
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN + 5 * PAGE_SIZE, 0)),
        Status::Ok
    );
    assert!(m.entry(1, 0).in_use());
}

#[test]
fn unmap_clears_in_use_even_if_granter_edited_other_bits() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Ok);
    m.grant(1, 0, 2, FRAME, PERMIT | READONLY | IN_USE);
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN), Status::Ok);
    assert_eq!(m.entry(1, 0).flags, PERMIT | READONLY);
}

// ---- END ----

#[test]
fn end_rules() {
    let (mut gt, mut m) = world();
    let mut fresh = GrantTables::new();
    assert_eq!(fresh.end(&mut m, 1, 0), Status::BadRef, "no table");
    assert_eq!(gt.end(&mut m, 1, ENTRIES_PER_PAGE as u64), Status::BadRef);
    assert_eq!(gt.end(&mut m, 1, u64::MAX), Status::BadRef);
    assert_eq!(gt.end(&mut m, 1, 1 << 32), Status::BadRef);
    assert_eq!(gt.end(&mut m, 0, 0), Status::InvalidArgument);
    m.grant(1, 3, 2, FRAME, PERMIT | READONLY);
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 3, WIN, MAP_READONLY)),
        Status::Ok
    );
    assert_eq!(gt.end(&mut m, 1, 3), Status::Busy);
    // IN_USE cleared by the granter does not fool END: the record counts.
    m.grant(1, 3, 2, FRAME, PERMIT | READONLY);
    assert_eq!(gt.end(&mut m, 1, 3), Status::Busy);
    assert!(m.entry(1, 3).permit());
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN), Status::Ok);
    assert_eq!(gt.end(&mut m, 1, 3), Status::Ok);
    assert_eq!(
        m.entry(1, 3),
        GrantEntry {
            flags: READONLY,
            peer: 2,
            frame: (FRAME >> 12) as u32
        }
    );
    // Revoked: the peer can no longer map or copy it. END again is harmless.
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 3, WIN, MAP_READONLY)),
        Status::BadRef
    );
    assert_eq!(
        copy1(
            &mut gt,
            &mut m,
            2,
            CopyPtr::grant(1, 3, 0),
            CopyPtr::own(OPS + 0x1000),
            8
        ),
        Status::BadRef
    );
    assert_eq!(gt.end(&mut m, 1, 3), Status::Ok);
    // Another VM's END cannot touch VM 1's refs (it ends its own ref 3).
    m.grant(1, 4, 2, FRAME, PERMIT);
    assert_eq!(gt.end(&mut m, 2, 4), Status::Ok);
    assert!(m.entry(1, 4).permit());
}

/// GRANT_END waits for in-flight copies (`GrantEnv::revoked`) only once PERMIT is cleared, so
/// a copy starting after the wait is refused; a refused or failed end waits for nothing.
#[test]
fn end_waits_for_copies_after_permit_is_cleared_and_only_then() {
    struct Watch(Model, Vec<bool>);
    impl GrantEnv for Watch {
        fn in_ram(&self, vm: VmId, gpa: u64, len: u64) -> bool {
            self.0.in_ram(vm, gpa, len)
        }
        fn read_u64(&self, vm: VmId, gpa: u64) -> u64 {
            self.0.read_u64(vm, gpa)
        }
        fn write_u64(&mut self, vm: VmId, gpa: u64, value: u64) {
            self.0.write_u64(vm, gpa, value)
        }
        fn compare_exchange_u64(&mut self, v: VmId, g: u64, c: u64, n: u64) -> Result<u64, u64> {
            self.0.compare_exchange_u64(v, g, c, n)
        }
        fn copy(&mut self, a: VmId, b: u64, c: VmId, d: u64, len: u64) {
            self.0.copy(a, b, c, d, len)
        }
        fn host_pa(&self, vm: VmId, gpa: u64) -> u64 {
            self.0.host_pa(vm, gpa)
        }
        fn map_page(&mut self, vm: VmId, ipa: u64, pa: u64, ro: bool) -> Result<(), MapFailed> {
            self.0.map_page(vm, ipa, pa, ro)
        }
        fn unmap_page(&mut self, vm: VmId, ipa: u64) {
            self.0.unmap_page(vm, ipa)
        }
        fn revoked(&mut self, vm: VmId) {
            // What a copy checked from now on would see.
            self.1.push(self.0.entry(vm, 4).permit());
            self.0.revoked(vm)
        }
    }
    let (mut gt, m) = world();
    let mut w = Watch(m, Vec::new());
    w.0.grant(1, 4, 2, FRAME, PERMIT);
    assert_eq!(gt.end(&mut w, 1, 4), Status::Ok);
    assert_eq!(w.0.revokes, vec![1]);
    assert_eq!(w.1, vec![false], "the wait ran before PERMIT was cleared");
    // Beyond the table, and a lent ref: refused, nothing to wait for.
    assert_eq!(gt.end(&mut w, 1, u64::from(u32::MAX)), Status::BadRef);
    w.0.grant(1, 4, 2, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut w.0, 2, map_op(1, 4, WIN, 0)), Status::Ok);
    assert_eq!(gt.end(&mut w, 1, 4), Status::Busy);
    assert_eq!(w.0.revokes, vec![1]);
}

#[test]
fn end_gives_up_when_the_guest_keeps_rewriting_the_entry() {
    // A model whose CAS always fails: the entry changes under every attempt.
    struct Hostile(Model);
    impl GrantEnv for Hostile {
        fn in_ram(&self, vm: VmId, gpa: u64, len: u64) -> bool {
            self.0.in_ram(vm, gpa, len)
        }
        fn read_u64(&self, vm: VmId, gpa: u64) -> u64 {
            self.0.read_u64(vm, gpa)
        }
        fn write_u64(&mut self, vm: VmId, gpa: u64, value: u64) {
            self.0.write_u64(vm, gpa, value)
        }
        fn compare_exchange_u64(
            &mut self,
            _: VmId,
            _: u64,
            current: u64,
            _: u64,
        ) -> Result<u64, u64> {
            Err(current ^ 0x1_0000_0000)
        }
        fn copy(&mut self, a: VmId, b: u64, c: VmId, d: u64, len: u64) {
            self.0.copy(a, b, c, d, len)
        }
        fn host_pa(&self, vm: VmId, gpa: u64) -> u64 {
            self.0.host_pa(vm, gpa)
        }
        fn map_page(&mut self, vm: VmId, ipa: u64, pa: u64, ro: bool) -> Result<(), MapFailed> {
            self.0.map_page(vm, ipa, pa, ro)
        }
        fn unmap_page(&mut self, vm: VmId, ipa: u64) {
            self.0.unmap_page(vm, ipa)
        }
        fn revoked(&mut self, vm: VmId) {
            self.0.revoked(vm)
        }
    }
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    let mut h = Hostile(m);
    assert_eq!(gt.end(&mut h, 1, 0), Status::Busy);
    write_ops(&mut h.0, 2, &map_op(1, 0, WIN, 0).to_words());
    assert_eq!(gt.map_batch(&mut h, 2, OPS, 1), Status::Ok);
    assert_eq!(statuses(&h.0, 2, 1, 3, 2), [Status::Busy]);
}

// ---- COPY ----

#[test]
fn copy_in_both_directions() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    m.fill(1, FRAME + 100, b"from the granter");
    let mine = GUEST_RAM_BASE + 0x20_000;
    assert_eq!(
        copy1(
            &mut gt,
            &mut m,
            2,
            CopyPtr::grant(1, 0, 100),
            CopyPtr::own(mine + 3),
            16
        ),
        Status::Ok
    );
    assert_eq!(m.bytes(2, mine + 3, 16), b"from the granter");
    m.fill(2, mine, b"reply");
    assert_eq!(
        copy1(
            &mut gt,
            &mut m,
            2,
            CopyPtr::own(mine),
            CopyPtr::grant(1, 0, 4091),
            5
        ),
        Status::Ok
    );
    assert_eq!(m.bytes(1, FRAME + 4091, 5), b"reply");
    // Grant to grant between two granters, and own to own.
    m.grant(3, 9, 2, FRAME2, PERMIT);
    assert_eq!(
        copy1(
            &mut gt,
            &mut m,
            2,
            CopyPtr::grant(1, 0, 100),
            CopyPtr::grant(3, 9, 0),
            4
        ),
        Status::Ok
    );
    assert_eq!(m.bytes(3, FRAME2, 4), b"from"[..].to_vec());
    assert_eq!(
        copy1(
            &mut gt,
            &mut m,
            2,
            CopyPtr::own(mine),
            CopyPtr::own(mine + 10),
            5
        ),
        Status::Ok
    );
    assert_eq!(m.bytes(2, mine + 10, 5), b"reply");
    // Zero length and a whole frame.
    assert_eq!(
        copy1(
            &mut gt,
            &mut m,
            2,
            CopyPtr::grant(1, 0, 4096 - 1),
            CopyPtr::own(mine),
            0
        ),
        Status::Ok
    );
    assert_eq!(
        copy1(
            &mut gt,
            &mut m,
            2,
            CopyPtr::grant(1, 0, 0),
            CopyPtr::own(mine),
            4096
        ),
        Status::Ok
    );
    // Copy needs no mapping and sets no IN_USE.
    assert!(!m.entry(1, 0).in_use() && m.stage2.is_empty());
}

#[test]
fn copy_readonly_rules() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT | READONLY);
    m.fill(1, FRAME, b"ro");
    let mine = GUEST_RAM_BASE + 0x20_000;
    assert_eq!(
        copy1(
            &mut gt,
            &mut m,
            2,
            CopyPtr::grant(1, 0, 0),
            CopyPtr::own(mine),
            2
        ),
        Status::Ok
    );
    assert_eq!(m.bytes(2, mine, 2), b"ro");
    m.fill(2, mine, b"xx");
    assert_eq!(
        copy1(
            &mut gt,
            &mut m,
            2,
            CopyPtr::own(mine),
            CopyPtr::grant(1, 0, 0),
            2
        ),
        Status::ReadOnly
    );
    assert_eq!(m.bytes(1, FRAME, 2), b"ro");
    // Read-only beats BadFrame and InvalidArgument (frame crossing), Denied beats ReadOnly.
    m.grant(1, 1, 2, GUEST_RAM_BASE + RAM, PERMIT | READONLY);
    assert_eq!(
        copy1(
            &mut gt,
            &mut m,
            2,
            CopyPtr::own(mine),
            CopyPtr::grant(1, 1, 4000),
            200
        ),
        Status::ReadOnly
    );
    m.grant(1, 2, 3, FRAME, PERMIT | READONLY);
    assert_eq!(
        copy1(
            &mut gt,
            &mut m,
            2,
            CopyPtr::own(mine),
            CopyPtr::grant(1, 2, 0),
            2
        ),
        Status::Denied
    );
}

#[test]
fn copy_rules_each_error() {
    let (mut gt, mut m) = world();
    let mine = GUEST_RAM_BASE + 0x20_000;
    m.grant(1, 0, 2, FRAME, PERMIT);
    let good = CopyOp {
        src: CopyPtr::grant(1, 0, 0),
        dst: CopyPtr::own(mine),
        len: 8,
        status: 0,
    };
    let w = good.to_words();
    let with = |i: usize, v: u64| {
        let mut w = w;
        w[i] = v;
        w
    };
    let cases: Vec<([u64; 6], Status)> = vec![
        (w, Status::Ok),
        (with(0, 3 | 1 << 16), Status::InvalidArgument), // unknown kind
        (with(2, 0), Status::InvalidArgument),           // kind 0
        (with(4, 8 | 1 << 16), Status::InvalidArgument), // reserved bits beside len
        (with(2, 1 | 1 << 16), Status::InvalidArgument), // own with a granter
        (with(2, 1 | 1 << 32), Status::InvalidArgument), // own with a ref
        (with(0, 2 | 2 << 16), Status::InvalidArgument), // granter is the caller
        (with(0, 2), Status::InvalidArgument),           // granter 0
        (
            with(0, 2 | (MAX_VMS as u64 + 1) << 16),
            Status::InvalidArgument,
        ), // not a VM id
        (with(0, 2 | 1 << 16 | 512 << 32), Status::BadRef), // beyond the table
        (with(0, 2 | 4 << 16), Status::BadRef),          // no table
        (with(1, 4096), Status::InvalidArgument),        // offset beyond the frame
        (with(1, 4089), Status::InvalidArgument),        // crosses the frame end
        (with(1, u64::MAX), Status::InvalidArgument),
        (with(3, mine + 4092), Status::InvalidArgument), // own side crosses a frame
        (with(3, GUEST_RAM_BASE + RAM), Status::InvalidArgument), // own not in RAM
        (with(3, 0), Status::InvalidArgument),
        (with(3, u64::MAX), Status::InvalidArgument),
        (with(4, 4097), Status::InvalidArgument), // longer than a frame
    ];
    let words: Vec<[u64; 6]> = cases.iter().map(|c| c.0).collect();
    let expect: Vec<Status> = cases.iter().map(|c| c.1).collect();
    assert_eq!(copy_words(&mut gt, &mut m, 2, &words), expect);

    // Entry rules on the grant side.
    let from = |gref| CopyPtr::grant(1, gref, 0);
    m.grant(1, 1, 2, FRAME, 0);
    assert_eq!(
        copy1(&mut gt, &mut m, 2, from(1), CopyPtr::own(mine), 8),
        Status::BadRef
    );
    m.grant(1, 1, 2, FRAME, PERMIT | 1 << 4);
    assert_eq!(
        copy1(&mut gt, &mut m, 2, from(1), CopyPtr::own(mine), 8),
        Status::BadRef
    );
    m.grant(1, 1, 3, FRAME, PERMIT);
    assert_eq!(
        copy1(&mut gt, &mut m, 2, from(1), CopyPtr::own(mine), 8),
        Status::Denied
    );
    m.grant(1, 1, 2, GUEST_RAM_BASE + RAM, PERMIT);
    assert_eq!(
        copy1(&mut gt, &mut m, 2, from(1), CopyPtr::own(mine), 8),
        Status::BadFrame
    );
    // BadFrame beats a crossing.
    assert_eq!(
        copy1(
            &mut gt,
            &mut m,
            2,
            CopyPtr::grant(1, 1, 4090),
            CopyPtr::own(mine),
            8
        ),
        Status::BadFrame
    );
    // Rule order across sides: a BadRef on dst beats a Denied on src.
    m.grant(1, 2, 3, FRAME, PERMIT);
    assert_eq!(
        copy1(&mut gt, &mut m, 2, from(2), CopyPtr::grant(1, 600, 0), 8),
        Status::BadRef
    );
    // Nothing was written by any failed op.
    assert_eq!(m.bytes(2, mine, 8), m.bytes(1, FRAME, 8));
}

// ---- death and reset ----

#[test]
fn death_of_a_mapper_clears_in_use_without_unmapping() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    m.grant(3, 0, 2, FRAME, PERMIT);
    assert_eq!(
        map(
            &mut gt,
            &mut m,
            2,
            &[map_op(1, 0, WIN, 0), map_op(3, 0, WIN + PAGE_SIZE, 0)]
        ),
        [Status::Ok; 2]
    );
    let death = kill(&mut gt, &mut m, 2);
    assert_eq!(
        death,
        Death {
            incarnation: 0,
            ram_free_now: true,
            released: vec![]
        }
    );
    assert!(
        m.unmaps.is_empty(),
        "a killed VM's stage-2 is destroyed whole"
    );
    assert!(!m.entry(1, 0).in_use() && !m.entry(3, 0).in_use());
    assert_eq!(
        (gt.mapping_count(2), gt.lent_count(1), gt.lent_count(3)),
        (0, 0, 0)
    );
    assert_eq!(gt.end(&mut m, 1, 0), Status::Ok);
    assert_eq!(gt.incarnation(2), Some(1));
}

#[test]
fn death_of_a_granter_keeps_peer_mappings_until_unmapped() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    m.grant(1, 1, 2, FRAME2, PERMIT);
    m.grant(1, 2, 3, FRAME, PERMIT);
    assert_eq!(
        map(
            &mut gt,
            &mut m,
            2,
            &[map_op(1, 0, WIN, 0), map_op(1, 1, WIN + PAGE_SIZE, 0)]
        ),
        [Status::Ok; 2]
    );
    assert_eq!(map1(&mut gt, &mut m, 3, map_op(1, 2, WIN, 0)), Status::Ok);
    let death = kill(&mut gt, &mut m, 1);
    assert_eq!(
        death,
        Death {
            incarnation: 0,
            ram_free_now: false,
            released: vec![]
        }
    );
    assert_eq!(
        gt.zombies().collect::<Vec<_>>(),
        [(
            RamRelease {
                vm: 1,
                incarnation: 0
            },
            3
        )]
    );
    // The RAM stays (zombie), but its table is forgotten: new MAP/COPY of its refs is BadRef.
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN + 2 * PAGE_SIZE, 0)),
        Status::BadRef
    );
    assert_eq!(
        copy1(
            &mut gt,
            &mut m,
            2,
            CopyPtr::grant(1, 0, 0),
            CopyPtr::own(OPS + 0x1000),
            8
        ),
        Status::BadRef
    );
    // The existing mappings still work (still in the stage-2).
    assert_eq!(m.stage2[&(2, WIN)].0, Model::host(1, FRAME));
    // From now on VM 1's RAM must never be touched: make any access panic.
    let dead_ram = m.ram.remove(&1).unwrap();
    m.freed.insert(1);
    let (st, rel) = unmap(&mut gt, &mut m, 2, &[WIN, WIN + PAGE_SIZE]);
    assert_eq!(st, [Status::Ok; 2]);
    assert!(rel.is_empty(), "VM 3 still maps a frame");
    let (st, rel) = unmap(&mut gt, &mut m, 3, &[WIN]);
    assert_eq!(st, [Status::Ok]);
    assert_eq!(
        rel,
        [RamRelease {
            vm: 1,
            incarnation: 0
        }]
    );
    assert_eq!(gt.zombies().count(), 0);
    // The IN_USE bits in the dead table were left as they were.
    let word = u64::from_le_bytes(dead_ram[0x1000..0x1008].try_into().unwrap());
    assert!(GrantEntry::from_u64(word).in_use());
}

#[test]
fn death_with_no_foreign_mapping_frees_ram_at_once() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Ok);
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN), Status::Ok);
    let death = kill(&mut gt, &mut m, 1);
    assert!(death.ram_free_now && death.released.is_empty());
    assert_eq!(gt.zombies().count(), 0);
    assert_eq!(
        gt.vm_died(&mut m, 0, Teardown::Kill).incarnation,
        0,
        "bad id is harmless"
    );
}

#[test]
fn death_of_the_last_mapper_of_a_zombie_releases_it() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Ok);
    assert!(!kill(&mut gt, &mut m, 1).ram_free_now);
    m.free(1); // would panic if touched (it is not freed for real yet, but must not be written)
    let death = kill(&mut gt, &mut m, 2);
    assert!(death.ram_free_now);
    assert_eq!(
        death.released,
        [RamRelease {
            vm: 1,
            incarnation: 0
        }]
    );
}

#[test]
fn mutual_mappings_and_death() {
    // 1 maps 2's frame and 2 maps 1's frame; 1 dies.
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    m.grant(2, 0, 1, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Ok);
    assert_eq!(map1(&mut gt, &mut m, 1, map_op(2, 0, WIN, 0)), Status::Ok);
    let death = kill(&mut gt, &mut m, 1);
    assert!(!death.ram_free_now);
    assert!(
        !m.entry(2, 0).in_use(),
        "VM 1's mapping of VM 2's frame is gone"
    );
    assert_eq!(
        gt.setup(&m, 2, TABLE, 1),
        Status::Ok,
        "nothing of VM 2 is lent now"
    );
    m.free(1);
    let (_, rel) = unmap(&mut gt, &mut m, 2, &[WIN]);
    assert_eq!(
        rel,
        [RamRelease {
            vm: 1,
            incarnation: 0
        }]
    );
}

#[test]
fn reset_unmaps_own_grant_pages_and_starts_a_new_incarnation() {
    let (mut gt, mut m) = world();
    m.grant(1, 0, 2, FRAME, PERMIT);
    m.grant(2, 0, 1, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 1, map_op(2, 0, WIN, 0)), Status::Ok);
    assert_eq!(map1(&mut gt, &mut m, 2, map_op(1, 0, WIN, 0)), Status::Ok);
    let death = gt.vm_died(&mut m, 1, Teardown::Reset);
    assert_eq!(death.incarnation, 0);
    assert!(!death.ram_free_now);
    assert_eq!(m.unmaps, [(1, WIN)]);
    assert!(!m.entry(2, 0).in_use());
    // Peers still map the old RAM, so the new incarnation gets fresh RAM (in the model: the
    // same id, new contents). It sets up a table at the same GPA and grants ref 0 again.
    m.reload(1);
    assert_eq!(gt.incarnation(1), Some(1));
    assert_eq!(
        gt.end(&mut m, 1, 0),
        Status::BadRef,
        "new incarnation has no table yet"
    );
    assert_eq!(gt.setup(&m, 1, TABLE, 1), Status::Ok);
    m.grant(1, 0, 2, FRAME2, PERMIT);
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, 0, WIN + PAGE_SIZE, 0)),
        Status::Ok
    );
    assert!(m.entry(1, 0).in_use());
    // Unmapping the old-incarnation mapping must not clear IN_USE in the new table, and
    // releases the old RAM.
    let (st, rel) = unmap(&mut gt, &mut m, 2, &[WIN]);
    assert_eq!(st, [Status::Ok]);
    assert_eq!(
        rel,
        [RamRelease {
            vm: 1,
            incarnation: 0
        }]
    );
    assert!(m.entry(1, 0).in_use());
    assert_eq!(gt.end(&mut m, 1, 0), Status::Busy);
    assert_eq!(unmap1(&mut gt, &mut m, 2, WIN + PAGE_SIZE), Status::Ok);
    assert!(!m.entry(1, 0).in_use());
    assert_eq!(gt.end(&mut m, 1, 0), Status::Ok);
}

#[test]
fn a_reset_unmaps_every_grant_page_then_flushes_once_before_any_frame_is_let_go() {
    let (mut gt, mut m) = world();
    // VM 1 (a driver domain, say) maps 8 frames of VM 2 and 8 of VM 3; VM 3 then dies, so
    // its frames are zombie RAM that VM 1's teardown releases.
    let mut ops = Vec::new();
    for r in 0..8u32 {
        let frame = FRAME + u64::from(r) * PAGE_SIZE;
        m.grant(2, r, 1, frame, PERMIT);
        m.grant(3, r, 1, frame, PERMIT);
        ops.push(map_op(2, r, WIN + u64::from(r) * PAGE_SIZE, 0));
        ops.push(map_op(3, r, WIN + u64::from(8 + r) * PAGE_SIZE, 0));
    }
    assert_eq!(map(&mut gt, &mut m, 1, &ops), [Status::Ok; 16]);
    let dead = kill(&mut gt, &mut m, 3);
    assert!(!dead.ram_free_now);
    let death = gt.vm_died(&mut m, 1, Teardown::Reset);
    // Every page unmapped, one flush for all of them; the model panics if IN_USE had been
    // cleared while a translation might still be cached.
    assert_eq!(m.unmaps.len(), 16);
    assert_eq!(m.flushes, [1]);
    assert!(m.stale.is_empty());
    assert!((0..8).all(|r| !m.entry(2, r).in_use()));
    assert_eq!(
        death.released,
        [RamRelease {
            vm: 3,
            incarnation: 0
        }]
    );
    // The caller frees the released RAM after vm_died: no stale translation reaches it.
    m.free(3);
}

#[test]
#[should_panic(expected = "IN_USE cleared while the frame is still mapped")]
fn the_model_catches_in_use_cleared_before_the_flush() {
    let (mut gt, mut m) = world();
    m.grant(2, 0, 1, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 1, map_op(2, 0, WIN, 0)), Status::Ok);
    m.unmap_page_deferred(1, WIN);
    // The wrong order: the granter's IN_USE cleared with the flush still to come.
    let gpa = entry_gpa(TABLE, 0);
    let current = m.word(2, gpa);
    let _ = m.compare_exchange_u64(2, gpa, current, current & !(IN_USE as u64));
}

#[test]
#[should_panic(expected = "freed while a TLB may still translate to it")]
fn the_model_catches_ram_freed_before_the_flush() {
    let (mut gt, mut m) = world();
    m.grant(2, 0, 1, FRAME, PERMIT);
    assert_eq!(map1(&mut gt, &mut m, 1, map_op(2, 0, WIN, 0)), Status::Ok);
    m.unmap_page_deferred(1, WIN);
    m.free(2);
}

#[test]
fn repeated_deaths_keep_separate_zombies() {
    let (mut gt, mut m) = world();
    for round in 0..3u64 {
        if round > 0 {
            m.reload(1);
            assert_eq!(gt.setup(&m, 1, TABLE, 1), Status::Ok);
        }
        m.grant(1, 0, 2, FRAME, PERMIT);
        assert_eq!(
            map1(&mut gt, &mut m, 2, map_op(1, 0, WIN + round * PAGE_SIZE, 0)),
            Status::Ok
        );
        let death = gt.vm_died(&mut m, 1, Teardown::Reset);
        assert_eq!((death.incarnation, death.ram_free_now), (round, false));
    }
    m.free(1);
    for round in [1u64, 0, 2] {
        let (_, rel) = unmap(&mut gt, &mut m, 2, &[WIN + round * PAGE_SIZE]);
        assert_eq!(
            rel,
            [RamRelease {
                vm: 1,
                incarnation: round
            }]
        );
    }
}

// ---- properties ----

#[derive(Clone, Debug)]
enum Op {
    Grant {
        granter: VmId,
        gref: u32,
        peer: VmId,
        frame: u64,
        ro: bool,
    },
    Map {
        caller: VmId,
        granter: VmId,
        gref: u32,
        slot: u64,
        ro: bool,
    },
    Unmap {
        caller: VmId,
        slot: u64,
    },
    End {
        caller: VmId,
        gref: u32,
    },
    Die(VmId, bool),
}

fn op() -> impl Strategy<Value = Op> {
    let vm = 1..=3u16;
    let gref = 0..4u32;
    let slot = 0..4u64;
    prop_oneof![
        (vm.clone(), gref.clone(), vm.clone(), 0..3u64, any::<bool>()).prop_map(
            |(granter, gref, peer, f, ro)| Op::Grant {
                granter,
                gref,
                peer,
                frame: FRAME + f * PAGE_SIZE,
                ro
            }
        ),
        (
            vm.clone(),
            vm.clone(),
            gref.clone(),
            slot.clone(),
            any::<bool>()
        )
            .prop_map(|(caller, granter, gref, slot, ro)| Op::Map {
                caller,
                granter,
                gref,
                slot,
                ro
            }),
        (vm.clone(), slot).prop_map(|(caller, slot)| Op::Unmap { caller, slot }),
        (vm.clone(), gref).prop_map(|(caller, gref)| Op::End { caller, gref }),
        (vm, any::<bool>()).prop_map(|(vm, reset)| Op::Die(vm, reset)),
    ]
}

/// Random sequences keep the invariants: the stage-2 holds exactly the recorded
/// mappings; a live granter's entry has IN_USE iff the hypervisor lends the ref (the
/// guests here never touch IN_USE); every foreign mapping is counted once, either as a
/// live lend or as zombie RAM; a released RAM is never touched again (the model panics).
fn invariants(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (mut gt, mut m) = world();
    for op in ops {
        match op {
            Op::Grant {
                granter,
                gref,
                peer,
                frame,
                ro,
            } => {
                // Guests obey the ABI: never edit an entry that is IN_USE.
                if !m.entry(granter, gref).in_use() {
                    m.grant(
                        granter,
                        gref,
                        peer,
                        frame,
                        PERMIT | if ro { READONLY } else { 0 },
                    );
                }
            }
            Op::Map {
                caller,
                granter,
                gref,
                slot,
                ro,
            } => {
                let flags = if ro { MAP_READONLY } else { 0 };
                map1(
                    &mut gt,
                    &mut m,
                    caller,
                    map_op(granter, gref, WIN + slot * PAGE_SIZE, flags),
                );
            }
            Op::Unmap { caller, slot } => {
                let (_, rel) = unmap(&mut gt, &mut m, caller, &[WIN + slot * PAGE_SIZE]);
                for r in rel {
                    // Only dead incarnations are ever released.
                    prop_assert!(gt.incarnation(r.vm).is_some_and(|now| now > r.incarnation));
                }
            }
            Op::End { caller, gref } => {
                gt.end(&mut m, caller, gref as u64);
            }
            Op::Die(vm, reset) => {
                if reset {
                    gt.vm_died(&mut m, vm, Teardown::Reset);
                } else {
                    kill(&mut gt, &mut m, vm);
                    m.killed.remove(&vm);
                }
                // Fresh RAM for the new incarnation. Writes meant for the old one would
                // land here and break the IN_USE invariant checked below.
                m.reload(vm);
                prop_assert_eq!(gt.setup(&m, vm, TABLE, 1), Status::Ok);
            }
        }
        // Stage-2 == records.
        let mut recorded = 0;
        for vm in 1..=3u16 {
            for slot in 0..4 {
                let dest = WIN + slot * PAGE_SIZE;
                let rec = gt.mapping(vm, dest);
                prop_assert_eq!(
                    rec.map(|r| (r.host_pa, r.readonly)),
                    m.stage2.get(&(vm, dest)).copied()
                );
                recorded += rec.is_some() as usize;
            }
        }
        // IN_USE iff lent, for live tables.
        for vm in 1..=3u16 {
            for gref in 0..4u32 {
                let lent = (1..=3u16).any(|mapper| {
                    (0..4).any(|slot| {
                        gt.mapping(mapper, WIN + slot * PAGE_SIZE).is_some_and(|r| {
                            r.granter == vm
                                && r.gref == gref
                                && Some(r.granter_incarnation) == gt.incarnation(vm)
                        })
                    })
                });
                prop_assert_eq!(m.entry(vm, gref).in_use(), lent);
            }
        }
        let lent: usize = (1..=3u16).map(|vm| gt.lent_count(vm)).sum();
        let zombie: usize = gt.zombies().map(|(_, n)| n).sum();
        prop_assert_eq!(lent + zombie, recorded);
    }
    Ok(())
}

proptest! {
    #[test]
    fn invariants_hold(ops in prop::collection::vec(op(), 1..80)) {
        invariants(ops)?;
    }
}

// ---- hostile guests: any memory contents, any registers ----

/// A step of a hostile guest: it writes words anywhere in its RAM (tables, op arrays), or
/// makes a grant hypercall with raw registers, or dies.
#[derive(Clone, Debug)]
enum Hostile {
    Write {
        vm: VmId,
        gpa: u64,
        words: Vec<u64>,
    },
    Setup {
        vm: VmId,
        x1: u64,
        x2: u64,
    },
    /// The batch calls first store `ops` (op words) at x1, as far as it is in RAM.
    Map {
        vm: VmId,
        x1: u64,
        x2: u64,
        ops: Vec<u64>,
    },
    Unmap {
        vm: VmId,
        x1: u64,
        x2: u64,
        ops: Vec<u64>,
    },
    Copy {
        vm: VmId,
        x1: u64,
        x2: u64,
        ops: Vec<u64>,
    },
    End {
        vm: VmId,
        x1: u64,
    },
    Die(VmId, bool),
}

/// 8-byte aligned GPAs where guests keep things, RAM's edges and beyond, anything.
fn hostile_gpa() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => prop::sample::select(vec![TABLE, OPS, OPS + 8, FRAME, GUEST_RAM_BASE]),
        4 => (0..6u64).prop_map(|gref| entry_gpa(TABLE, gref as u32)),
        1 => prop::sample::select(vec![
            0,
            u64::MAX,
            u64::MAX - 7,
            OPS + 4,
            GUEST_RAM_BASE + RAM - 8,
            GUEST_RAM_BASE + RAM,
            GUEST_RAM_BASE - 8,
            WIN,
        ]),
        2 => (0..RAM / 8).prop_map(|w| GUEST_RAM_BASE + 8 * w),
        1 => any::<u64>(),
    ]
}

/// A grant entry, mostly a usable one: flags (PERMIT, READONLY, IN_USE, reserved), peer,
/// frame.
fn hostile_entry() -> impl Strategy<Value = u64> {
    let frame = prop_oneof![
        4 => Just(FRAME),
        2 => Just(FRAME2),
        1 => Just(TABLE),
        1 => Just(GUEST_RAM_BASE + RAM),
        1 => any::<u64>()
    ];
    let flags = prop_oneof![
        Just(PERMIT as u64),
        Just((PERMIT | READONLY) as u64),
        0..16u64
    ];
    (flags, 0..=4u64, frame).prop_map(|(f, peer, gpa)| f | peer << 16 | (gpa >> 12) << 32)
}

/// Words a hostile guest stores: near-valid entries and ops (so the rules past the format
/// checks are reached), and anything.
fn hostile_word() -> impl Strategy<Value = u64> {
    prop_oneof![
        hostile_entry(),
        // Word 0 of a map op or a copy side: granter or kind, flags or granter, gref.
        (0..=4u64, 0..=3u64, 0..6u64).prop_map(|(a, b, gref)| a | b << 16 | gref << 32),
        // A destination in the grant window, or an offset or GPA for a copy.
        (0..6u64).prop_map(|slot| WIN + slot * PAGE_SIZE),
        (0..PAGE_SIZE + 2).prop_map(|o| FRAME + o),
        0..=PAGE_SIZE + 1,
        any::<u64>(),
    ]
}

fn hostile_count() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 1..=4u64,
        1 => prop::sample::select(vec![0, MAX_BATCH, MAX_BATCH + 1, u64::MAX]),
        1 => any::<u64>(),
    ]
}

/// Op words of `n` plausible ops of one kind (1 = map, 2 = unmap, else copy), some words
/// replaced by hostile ones.
fn hostile_ops(kind: u8) -> impl Strategy<Value = Vec<u64>> {
    let flags = prop_oneof![4 => 0..=1u64, 1 => 0..=4u64];
    let granter = prop_oneof![4 => 1..=3u64, 1 => 0..=4u64];
    let head = (granter, flags, 0..6u64).prop_map(|(a, b, gref)| a | b << 16 | gref << 32);
    let dest = (0..6u64).prop_map(|slot| WIN + slot * PAGE_SIZE);
    let own = (0..PAGE_SIZE + 2).prop_map(|o| vec![1, FRAME + o]);
    let grant = ((1..=3u64, 0..6u64), 0..PAGE_SIZE + 2)
        .prop_map(|((granter, gref), o)| vec![2 | granter << 16 | gref << 32, o]);
    let side = prop_oneof![own, grant];
    let op = match kind {
        1 => (head, dest).prop_map(|(h, d)| vec![h, d, 0]).boxed(),
        2 => dest.prop_map(|d| vec![d, 0]).boxed(),
        _ => (side.clone(), side, 0..=PAGE_SIZE + 1)
            .prop_map(|(src, dst, len)| [src, dst, vec![len, 0]].concat())
            .boxed(),
    };
    let mutation = prop::option::weighted(0.25, (any::<prop::sample::Index>(), hostile_word()));
    prop::collection::vec((op, mutation), 1..6).prop_map(|ops| {
        ops.into_iter()
            .flat_map(|(mut words, mutation)| {
                if let Some((i, w)) = mutation {
                    *i.get_mut(&mut words) = w;
                }
                words
            })
            .collect()
    })
}

fn hostile_step() -> impl Strategy<Value = Hostile> {
    let vm = 1..=3u16;
    let small = prop_oneof![0..=(2 * ENTRIES_PER_PAGE as u64), any::<u64>()];
    // Mostly as many ops as were stored; sometimes any count.
    let count = || prop::option::weighted(0.3, hostile_count());
    prop_oneof![
        6 => (vm.clone(), hostile_gpa(), prop::collection::vec(hostile_word(), 1..12))
            .prop_map(|(vm, gpa, words)| Hostile::Write { vm, gpa, words }),
        6 => (vm.clone(), 0..6u32, hostile_entry()).prop_map(|(vm, gref, entry)| {
            Hostile::Write {
                vm,
                gpa: entry_gpa(TABLE, gref),
                words: vec![entry],
            }
        }),
        1 => (vm.clone(), hostile_gpa(), prop_oneof![0..=5u64, any::<u64>()])
            .prop_map(|(vm, x1, x2)| Hostile::Setup { vm, x1, x2 }),
        3 => (vm.clone(), hostile_gpa(), count(), hostile_ops(1))
            .prop_map(|(vm, x1, x2, ops)| {
                let x2 = x2.unwrap_or(ops.len() as u64 / MapOp::WORDS as u64);
                Hostile::Map { vm, x1, x2, ops }
            }),
        2 => (vm.clone(), hostile_gpa(), count(), hostile_ops(2))
            .prop_map(|(vm, x1, x2, ops)| {
                let x2 = x2.unwrap_or(ops.len() as u64 / UnmapOp::WORDS as u64);
                Hostile::Unmap { vm, x1, x2, ops }
            }),
        3 => (vm.clone(), hostile_gpa(), count(), hostile_ops(3))
            .prop_map(|(vm, x1, x2, ops)| {
                let x2 = x2.unwrap_or(ops.len() as u64 / CopyOp::WORDS as u64);
                Hostile::Copy { vm, x1, x2, ops }
            }),
        1 => (vm.clone(), small).prop_map(|(vm, x1)| Hostile::End { vm, x1 }),
        1 => (vm, any::<bool>()).prop_map(|(vm, reset)| Hostile::Die(vm, reset)),
    ]
}

/// The op statuses the ABI's rule table allows for each batch call.
const MAP_OP_STATUSES: [Status; 8] = [
    Status::Ok,
    Status::InvalidArgument,
    Status::Busy,
    Status::NoSpace,
    Status::BadRef,
    Status::Denied,
    Status::ReadOnly,
    Status::BadFrame,
];
const UNMAP_OP_STATUSES: [Status; 3] = [Status::Ok, Status::InvalidArgument, Status::NotMapped];
const COPY_OP_STATUSES: [Status; 6] = [
    Status::Ok,
    Status::InvalidArgument,
    Status::BadRef,
    Status::Denied,
    Status::ReadOnly,
    Status::BadFrame,
];

/// What a guest storing `words` from `gpa` on gets into its RAM (the rest would fault).
fn store_words(m: &mut Model, vm: VmId, gpa: u64, words: &[u64]) {
    for (i, w) in words.iter().enumerate() {
        let at = gpa.wrapping_add(8 * i as u64);
        if at.is_multiple_of(8) && m.in_ram(vm, at, 8) {
            m.set_word(vm, at, *w);
        }
    }
}

/// Words of `vm`'s RAM that differ between two snapshots.
fn changed_words(before: &HashMap<VmId, Vec<u8>>, m: &Model, vm: VmId) -> Vec<(u64, u64)> {
    let (Some(a), Some(b)) = (before.get(&vm), m.ram.get(&vm)) else {
        return Vec::new();
    };
    a.chunks(8)
        .zip(b.chunks(8))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| {
            let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap());
            (GUEST_RAM_BASE + 8 * i as u64, word(x) ^ word(y))
        })
        .collect()
}

/// One batch call with raw registers: the call status is one the ABI documents, a refused
/// call writes nothing, an accepted one writes a documented status into every op; MAP and
/// UNMAP change no other word of the caller and only IN_USE bits of the other VMs.
fn hostile_batch(gt: &mut GrantTables, m: &mut Model, call: &Hostile) -> Result<(), TestCaseError> {
    let (vm, x1, x2, ops, words, status_word, allowed): (_, _, _, _, usize, usize, &[Status]) =
        match call {
            Hostile::Map { vm, x1, x2, ops } => (
                *vm,
                *x1,
                *x2,
                ops,
                MapOp::WORDS,
                MapOp::STATUS_WORD,
                &MAP_OP_STATUSES,
            ),
            Hostile::Unmap { vm, x1, x2, ops } => (
                *vm,
                *x1,
                *x2,
                ops,
                UnmapOp::WORDS,
                UnmapOp::STATUS_WORD,
                &UNMAP_OP_STATUSES,
            ),
            Hostile::Copy { vm, x1, x2, ops } => (
                *vm,
                *x1,
                *x2,
                ops,
                CopyOp::WORDS,
                CopyOp::STATUS_WORD,
                &COPY_OP_STATUSES,
            ),
            _ => return Ok(()),
        };
    store_words(m, vm, x1, ops);
    let before = m.ram.clone();
    let status = match call {
        Hostile::Map { .. } => gt.map_batch(m, vm, x1, x2),
        Hostile::Unmap { .. } => gt.unmap_batch(m, vm, x1, x2).status,
        _ => gt.copy_batch(m, vm, x1, x2),
    };
    prop_assert!(
        [Status::Ok, Status::InvalidArgument].contains(&status),
        "{call:?}: {status:?}"
    );
    if status != Status::Ok {
        prop_assert!(
            m.ram == before,
            "{call:?} was refused but wrote guest memory"
        );
        return Ok(());
    }
    let status_gpas: HashSet<u64> = (0..x2)
        .map(|i| x1 + 8 * (i * words as u64 + status_word as u64))
        .collect();
    // A copy into its own op array may overwrite status words the hypervisor already wrote
    // (the guest asked for its own memory to change): their contents are the guest's business.
    let array = x1..x1 + x2 * words as u64 * 8;
    let copies_onto_array = matches!(call, Hostile::Copy { .. })
        && ops.chunks(CopyOp::WORDS).any(|w| {
            let words: [u64; CopyOp::WORDS] = w.try_into().unwrap_or([0; CopyOp::WORDS]);
            CopyOp::from_words(words).is_ok_and(|op| {
                op.dst.kind == CopyKind::Own
                    && op.dst.gpa_or_offset < array.end
                    && op.dst.gpa_or_offset + u64::from(op.len) > array.start
            })
        });
    for gpa in status_gpas.iter().filter(|_| !copies_onto_array) {
        let raw = m.word(vm, *gpa);
        prop_assert!(
            Status::from_u64(raw).is_some_and(|s| allowed.contains(&s)),
            "{call:?}: op status {raw:#x}"
        );
    }
    if matches!(call, Hostile::Copy { .. }) {
        return Ok(());
    }
    for other in 1..=3u16 {
        for (gpa, diff) in changed_words(&before, m, other) {
            if other == vm {
                prop_assert!(status_gpas.contains(&gpa), "{call:?} wrote {gpa:#x}");
            } else {
                prop_assert_eq!(
                    diff,
                    IN_USE as u64,
                    "{:?} changed {}:{:#x}",
                    call,
                    other,
                    gpa
                );
            }
        }
    }
    Ok(())
}

/// Hostile guests whatever they do: the env contract holds (the model panics otherwise),
/// every status is documented, writes stay where the ABI says, and the stage-2 holds
/// exactly the recorded mappings, each counted once as lent or zombie.
fn hostile(steps: Vec<Hostile>) -> Result<(), TestCaseError> {
    let (mut gt, mut m) = world();
    m.hostile = true;
    // Refs 0..6 of every VM start granted to the other two, so maps and copies can
    // succeed and the steps have live grants to break.
    for granter in 1..=3u16 {
        for gref in 0..6u32 {
            let peer = (granter + gref as u16 % 2) % 3 + 1;
            let flags = if gref == 5 { PERMIT | READONLY } else { PERMIT };
            m.grant(
                granter,
                gref,
                peer,
                FRAME + u64::from(gref % 2) * PAGE_SIZE,
                flags,
            );
        }
    }
    for step in steps {
        match &step {
            Hostile::Write { vm, gpa, words } => store_words(&mut m, *vm, *gpa, words),
            Hostile::Setup { vm, x1, x2 } => {
                let status = gt.setup(&m, *vm, *x1, *x2);
                let allowed = [Status::Ok, Status::InvalidArgument, Status::Busy];
                prop_assert!(allowed.contains(&status), "{step:?}: {status:?}");
            }
            Hostile::End { vm, x1 } => {
                let before = m.ram.clone();
                let status = gt.end(&mut m, *vm, *x1);
                let allowed = [Status::Ok, Status::BadRef, Status::Busy];
                prop_assert!(allowed.contains(&status), "{step:?}: {status:?}");
                let changed = changed_words(&before, &m, *vm);
                prop_assert!(changed.iter().all(|(_, diff)| *diff == PERMIT as u64));
                prop_assert!(changed.len() <= usize::from(status == Status::Ok));
            }
            Hostile::Die(vm, reset) => {
                if *reset {
                    gt.vm_died(&mut m, *vm, Teardown::Reset);
                } else {
                    kill(&mut gt, &mut m, *vm);
                    m.killed.remove(vm);
                }
                m.reload(*vm);
            }
            batch => hostile_batch(&mut gt, &mut m, batch)?,
        }
        let mut recorded = 0;
        for vm in 1..=3u16 {
            let mapped: Vec<_> = m.stage2.iter().filter(|((v, _), _)| *v == vm).collect();
            prop_assert_eq!(gt.mapping_count(vm), mapped.len());
            for ((_, ipa), (pa, ro)) in mapped {
                let rec = gt.mapping(vm, *ipa).map(|r| (r.host_pa, r.readonly));
                prop_assert_eq!(rec, Some((*pa, *ro)));
            }
            recorded += gt.mapping_count(vm);
        }
        let lent: usize = (1..=3u16).map(|vm| gt.lent_count(vm)).sum();
        let zombie: usize = gt.zombies().map(|(_, n)| n).sum();
        prop_assert_eq!(lent + zombie, recorded);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn hostile_guests_break_no_rule(steps in prop::collection::vec(hostile_step(), 1..60)) {
        hostile(steps)?;
    }
}

#[test]
fn max_refs_matches_largest_table() {
    let mut gt = GrantTables::new();
    let mut m = Model::new(&[1, 2]);
    assert_eq!(gt.setup(&m, 1, TABLE, MAX_TABLE_PAGES as u64), Status::Ok);
    let last = MAX_REFS - 1;
    m.set_word(
        1,
        entry_gpa(TABLE, last),
        GrantEntry {
            flags: PERMIT,
            peer: 2,
            frame: (FRAME >> 12) as u32,
        }
        .to_u64(),
    );
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, last, WIN, 0)),
        Status::Ok
    );
    assert_eq!(
        map1(&mut gt, &mut m, 2, map_op(1, MAX_REFS, WIN + PAGE_SIZE, 0)),
        Status::BadRef
    );
}
