//! `fuzz`: a hypercall fuzzer. Every vCPU of the VM issues random and mutated hypercalls (every
//! id of `shared_abi::hypercall`, the emulated PSCI queries and CPU_ON, and random ids) with
//! plausible and edge-value arguments, and counts the statuses it gets back. It proves that
//! nothing a guest passes crashes the hypervisor or reaches another VM; the harness checks that
//! the hypervisor and the other VMs of the topology carry on.
//!
//! Settings: `calls` (total over all vCPUs, default 1 000 000), `duration_ms` (stop earlier;
//! 0 = no limit), `seed` (default: from the counter; printed at start so a run can be replayed),
//! `partner` (the VM id of another fuzzer: grants and ports are aimed at it often, so the calls
//! also succeed and the success paths are fuzzed too), `trace = 1` (print every call before it is
//! made: with `seed` and one vCPU, the exact sequence that broke something), `only` (a
//! comma-separated list of the call names the histogram prints, e.g. `GRANT_MAP,GRANT_TABLE_SETUP`:
//! issue only those, to aim at one path or to keep away from one), `window_pages` (how many pages
//! of the grant window maps and unmaps aim at, default 128 so both often meet a mapping; up to
//! the whole window, so mappings pile up to the limits), `restarts` (after its run, the VM
//! restarts itself with PSCI SYSTEM_RESET this many times and fuzzes again each boot, so its
//! partner's mappings of its frames and its ports die under the partner's calls; default 0).
//!
//! The fuzzer must survive its own calls: it never issues SYSTEM_OFF, SYSTEM_RESET or CPU_OFF,
//! keeps every vCPU on (so CPU_ON can only be refused), and points everything a hypercall may
//! write (grant tables, event pages, op arrays, copy destinations, frames it grants read-write)
//! into a scratch region of its own RAM, or at addresses outside RAM that must be refused.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

use shared_abi::evtchn::{EVTCHN_INTID, MAX_PORTS};
use shared_abi::grant::{
    CopyOp, MapOp, UnmapOp, ENTRIES_PER_PAGE, GRANT_WINDOW_BASE, GRANT_WINDOW_SIZE, IN_USE,
    MAX_BATCH, MAX_REFS, PERMIT, READONLY,
};
use shared_abi::hypercall::{self as hc, psci as psci_ids, Status};
use shared_abi::layout::{
    intid::SGI_COUNT, CONTROL_WINDOW_BASE, GUEST_RAM_BASE, MAX_VMS, PAGE_SIZE,
};
use spin::{Mutex, Once};
use vm_runtime::hypercall::hvc;
use vm_runtime::page::Page;
use vm_runtime::timer::{self, Instant};
use vm_runtime::{cpu, irq, println, setting, smp, StartInfo};

/// The hypercalls the fuzzer issues, by histogram row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Console,
    Yield,
    TestInject,
    TableSetup,
    Map,
    Unmap,
    Copy,
    End,
    EvtchnSetup,
    AllocUnbound,
    Bind,
    Send,
    Close,
    Unmask,
    ConnectionPort,
    PsciVersion,
    PsciFeatures,
    CpuOn,
    /// An id in the vendor range the ABI does not define.
    VendorUnknown,
    /// Any other id.
    RandomId,
}

const CALLS: [Call; 20] = [
    Call::Console,
    Call::Yield,
    Call::TestInject,
    Call::TableSetup,
    Call::Map,
    Call::Unmap,
    Call::Copy,
    Call::End,
    Call::EvtchnSetup,
    Call::AllocUnbound,
    Call::Bind,
    Call::Send,
    Call::Close,
    Call::Unmask,
    Call::ConnectionPort,
    Call::PsciVersion,
    Call::PsciFeatures,
    Call::CpuOn,
    Call::VendorUnknown,
    Call::RandomId,
];

/// How often each call is drawn, relative to the others: the grant and event-channel calls,
/// which parse guest memory and change shared state, get most of the budget; YIELD costs a
/// whole time slice under a busy scheduler, so it stays rare.
const WEIGHTS: [u32; 20] = [2, 1, 3, 4, 12, 8, 12, 5, 4, 6, 6, 6, 5, 5, 2, 1, 2, 3, 4, 4];

/// Ids a random id must never be: they would stop or reset this VM or one of its vCPUs.
const FORBIDDEN: [u64; 3] = [
    psci_ids::SYSTEM_OFF,
    psci_ids::SYSTEM_RESET,
    psci_ids::CPU_OFF,
];

/// Every id the hypervisor answers; a random id that hits one is not "unknown".
const KNOWN: [u64; 21] = [
    hc::CONSOLE_WRITE,
    hc::YIELD,
    hc::TEST_INJECT,
    hc::GRANT_TABLE_SETUP,
    hc::GRANT_MAP,
    hc::GRANT_UNMAP,
    hc::GRANT_COPY,
    hc::GRANT_END,
    hc::EVTCHN_SETUP,
    hc::EVTCHN_ALLOC_UNBOUND,
    hc::EVTCHN_BIND_INTERDOMAIN,
    hc::EVTCHN_SEND,
    hc::EVTCHN_CLOSE,
    hc::EVTCHN_UNMASK,
    hc::CONNECTION_PORT,
    psci_ids::VERSION,
    psci_ids::FEATURES,
    psci_ids::CPU_ON_64,
    psci_ids::CPU_OFF,
    psci_ids::SYSTEM_OFF,
    psci_ids::SYSTEM_RESET,
];

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Console => "CONSOLE_WRITE",
            Call::Yield => "YIELD",
            Call::TestInject => "TEST_INJECT",
            Call::TableSetup => "GRANT_TABLE_SETUP",
            Call::Map => "GRANT_MAP",
            Call::Unmap => "GRANT_UNMAP",
            Call::Copy => "GRANT_COPY",
            Call::End => "GRANT_END",
            Call::EvtchnSetup => "EVTCHN_SETUP",
            Call::AllocUnbound => "EVTCHN_ALLOC_UNBOUND",
            Call::Bind => "EVTCHN_BIND_INTERDOMAIN",
            Call::Send => "EVTCHN_SEND",
            Call::Close => "EVTCHN_CLOSE",
            Call::Unmask => "EVTCHN_UNMASK",
            Call::ConnectionPort => "CONNECTION_PORT",
            Call::PsciVersion => "PSCI_VERSION",
            Call::PsciFeatures => "PSCI_FEATURES",
            Call::CpuOn => "PSCI_CPU_ON",
            Call::VendorUnknown => "unknown vendor id",
            Call::RandomId => "random id",
        }
    }

    fn is_psci(self) -> bool {
        matches!(self, Call::PsciVersion | Call::PsciFeatures | Call::CpuOn)
    }

    /// Whether `raw` (x0) is an answer the ABI documents for this call. Status codes a call
    /// cannot return by its rule table count as undocumented too, so a wrong code is a finding.
    fn documented(self, raw: u64) -> bool {
        use Status::*;
        if self.is_psci() {
            let code = raw as i64;
            return match self {
                Call::PsciVersion => raw == 0x1_0001,
                Call::PsciFeatures => code == psci_ids::SUCCESS || code == psci_ids::NOT_SUPPORTED,
                // Every vCPU is on, so CPU_ON can only be refused.
                _ => code == psci_ids::INVALID_PARAMETERS || code == psci_ids::ALREADY_ON,
            };
        }
        let Some(status) = Status::from_u64(raw) else {
            return false;
        };
        let allowed: &[Status] = match self {
            Call::Console => &[Ok, InvalidArgument],
            Call::TestInject => &[Ok, InvalidArgument, NoSpace],
            Call::Yield => &[Ok],
            Call::TableSetup => &[Ok, InvalidArgument, Busy],
            Call::Map | Call::Unmap | Call::Copy => &[Ok, InvalidArgument],
            Call::End => &[Ok, BadRef, Busy],
            Call::EvtchnSetup => &[Ok, InvalidArgument],
            Call::AllocUnbound => &[Ok, InvalidArgument, NoSpace],
            Call::Bind => &[Ok, InvalidArgument, BadPort, Denied, NoSpace],
            Call::Send | Call::Close => &[Ok, BadPort],
            Call::Unmask => &[Ok, BadPort, InvalidArgument],
            Call::ConnectionPort => &[Ok, InvalidArgument],
            Call::VendorUnknown | Call::RandomId => &[NotSupported],
            Call::PsciVersion | Call::PsciFeatures | Call::CpuOn => &[],
        };
        allowed.contains(&status)
    }
}

/// Extra histogram rows: the per-op statuses of the batch calls that returned `Ok`, which show
/// whether the fuzzer reaches the rules past the call-level checks.
const OP_ROWS: [(Call, &str, &[Status]); 3] = {
    use Status::*;
    [
        (
            Call::Map,
            "GRANT_MAP ops",
            &[
                Ok,
                InvalidArgument,
                Busy,
                NoSpace,
                BadRef,
                Denied,
                ReadOnly,
                BadFrame,
            ],
        ),
        (
            Call::Unmap,
            "GRANT_UNMAP ops",
            &[Ok, InvalidArgument, NotMapped],
        ),
        (
            Call::Copy,
            "GRANT_COPY ops",
            &[Ok, InvalidArgument, BadRef, Denied, ReadOnly, BadFrame],
        ),
    ]
};
const ROWS: usize = CALLS.len() + OP_ROWS.len();

/// Histogram columns: the eleven `Status` codes (0 down to -10), then "other" (PSCI codes are
/// mapped onto the same columns by value and printed with PSCI names).
const COLUMNS: usize = 12;
const OTHER: usize = COLUMNS - 1;

fn column(raw: u64) -> usize {
    match raw as i64 {
        code @ -10..=0 => (-code) as usize,
        _ => OTHER,
    }
}

fn column_name(call: Call, col: usize) -> String {
    if call == Call::PsciVersion && col == OTHER {
        return String::from("1.1");
    }
    if call.is_psci() {
        return String::from(match -(col as i64) {
            psci_ids::SUCCESS => "SUCCESS",
            psci_ids::NOT_SUPPORTED => "NOT_SUPPORTED",
            psci_ids::INVALID_PARAMETERS => "INVALID_PARAMETERS",
            psci_ids::ALREADY_ON => "ALREADY_ON",
            _ => "other",
        });
    }
    match Status::from_u64(-(col as i64) as u64) {
        Some(status) if col != OTHER => format!("{status:?}"),
        _ => String::from("other"),
    }
}

/// splitmix64: tiny, statistically fine for fuzzing, and the whole state is one seed to print.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    /// The GPA of a random page of `zone`.
    fn page(&mut self, zone: &[Page]) -> u64 {
        zone[self.below(zone.len() as u64) as usize].gpa()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Scratch pages, by zone, each used for one purpose so that what a zone holds stays safe:
/// table entries are only ever written whole and sanitized, so random op words never land in a
/// grant table the partner can act on.
const TABLE_PAGES: usize = 8;
const EVENT_PAGES: usize = 2;
const FRAME_PAGES: usize = 8;
/// One op page per vCPU: another vCPU must not rewrite an array (unsanitized) while the
/// hypervisor reads it.
const OPS_PAGES: usize = shared_abi::layout::MAX_VCPUS_PER_VM as usize;
const SCRATCH_PAGES: usize = TABLE_PAGES + EVENT_PAGES + FRAME_PAGES + OPS_PAGES;
/// Grant-window pages the fuzzer maps at and unmaps, few enough that MAP meets Busy and UNMAP
/// finds real mappings.
const WINDOW_PAGES: u64 = 128;
const WINDOW_MAX_PAGES: u64 = GRANT_WINDOW_SIZE / PAGE_SIZE;
/// Ports remembered from successful ALLOC_UNBOUND/BIND calls, to reuse them.
const KNOWN_PORTS: usize = 16;

struct Fuzz {
    vm_id: u16,
    vcpus: usize,
    ram_end: u64,
    limit: u64,
    deadline: Option<u64>,
    seed: u64,
    partner: Option<u16>,
    trace: bool,
    /// How often each of [`CALLS`] is drawn (zero: never, see `only`).
    weights: [u32; CALLS.len()],
    window_pages: u64,
    scratch: &'static [Page],
    /// Calls issued so far, by every vCPU.
    issued: AtomicU64,
    /// Calls whose x0 the ABI does not document for them.
    undocumented: AtomicU64,
    /// The last grant table GRANT_TABLE_SETUP accepted (GPA, pages), where entries are written.
    table: AtomicU64,
    table_pages: AtomicU64,
    ports: [AtomicU32; KNOWN_PORTS],
    histogram: Mutex<[[u64; COLUMNS]; ROWS]>,
    finished: AtomicU32,
}

static FUZZ: Once<Fuzz> = Once::new();
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

fn on_irq(intid: u32) {
    INTERRUPTS.fetch_add(1, Relaxed);
    if intid == EVTCHN_INTID {
        // Take what is pending so later sends raise the interrupt again.
        if let Some(f) = FUZZ.get() {
            for page in f.zone(EVENT_PAGES, TABLE_PAGES) {
                let _ = shared_abi::evtchn::take_pending(page.words());
            }
        }
    }
}

impl Fuzz {
    /// Pages `[skip, skip + len)` of the scratch region.
    fn zone(&self, len: usize, skip: usize) -> &'static [Page] {
        &self.scratch[skip..skip + len]
    }

    fn tables(&self) -> &'static [Page] {
        self.zone(TABLE_PAGES, 0)
    }

    fn events(&self) -> &'static [Page] {
        self.zone(EVENT_PAGES, TABLE_PAGES)
    }

    fn frames(&self) -> &'static [Page] {
        self.zone(FRAME_PAGES, TABLE_PAGES + EVENT_PAGES)
    }

    fn ops(&self, vcpu: usize) -> &'static Page {
        &self.scratch[TABLE_PAGES + EVENT_PAGES + FRAME_PAGES + vcpu]
    }

    fn in_ram(&self, gpa: u64) -> bool {
        (GUEST_RAM_BASE..self.ram_end).contains(&gpa)
    }

    /// True if a write at `gpa` (any length up to a page, not crossing its frame) stays in the
    /// frames zone.
    fn in_frames(&self, gpa: u64) -> bool {
        let zone = self.frames();
        (zone[0].gpa()..zone[zone.len() - 1].gpa() + PAGE_SIZE).contains(&gpa)
    }

    /// Addresses outside RAM and around its edges, which every call must refuse.
    fn outside(&self, rng: &mut Rng) -> u64 {
        let edges = [
            0,
            u64::MAX,
            !(PAGE_SIZE - 1),
            GUEST_RAM_BASE - PAGE_SIZE,
            GUEST_RAM_BASE - 8,
            self.ram_end,
            self.ram_end + PAGE_SIZE,
            GRANT_WINDOW_BASE,
            GRANT_WINDOW_BASE + GRANT_WINDOW_SIZE - PAGE_SIZE,
            CONTROL_WINDOW_BASE + u64::from(self.vm_id) * PAGE_SIZE,
            1 << 48,
        ];
        match rng.below(4) {
            0 => rng.next(),
            1 => (rng.next() | 1 << 40) & !7,
            _ => rng.pick(&edges),
        }
    }

    /// A page-aligned address for a call that writes a page: one of `zone`, another zone
    /// (unaligned, so refused), or outside RAM.
    fn page_in(&self, rng: &mut Rng, zone: &[Page]) -> u64 {
        match rng.below(8) {
            0 | 1 => self.outside(rng),
            2 => rng.page(zone) + 8 * (1 + rng.below(511)),
            _ => rng.page(zone),
        }
    }

    /// Any address in RAM, for calls that only read there.
    fn anywhere(&self, rng: &mut Rng) -> u64 {
        match rng.below(4) {
            0 => self.outside(rng),
            1 => self.ram_end - PAGE_SIZE + rng.below(PAGE_SIZE),
            _ => GUEST_RAM_BASE + rng.below(self.ram_end - GUEST_RAM_BASE),
        }
    }

    /// A VM id as grants and event channels take it: the partner often, and every other kind.
    fn vm(&self, rng: &mut Rng) -> u64 {
        if let Some(p) = self.partner.filter(|_| rng.chance(2)) {
            return u64::from(p);
        }
        match rng.below(6) {
            0 => u64::from(self.vm_id),
            1 => rng.pick(&[0, MAX_VMS as u64 + 1, u64::from(u16::MAX), u64::MAX]),
            // The id plus bits above 16, so a truncating decoder would see a valid id.
            2 => (1 << 16) | u64::from(self.partner.unwrap_or(1)),
            3 => rng.next(),
            _ => 1 + rng.below(MAX_VMS as u64),
        }
    }

    fn gref(&self, rng: &mut Rng) -> u64 {
        let table_refs = self.table_pages.load(Relaxed) * u64::from(ENTRIES_PER_PAGE);
        match rng.below(8) {
            0 => rng.pick(&[
                u64::from(ENTRIES_PER_PAGE - 1),
                u64::from(ENTRIES_PER_PAGE),
                u64::from(MAX_REFS - 1),
                u64::from(MAX_REFS),
                table_refs,
                table_refs.wrapping_sub(1),
                u64::from(u32::MAX),
            ]),
            1 => rng.next() & 0xffff_ffff,
            _ => rng.below(8),
        }
    }

    fn port(&self, rng: &mut Rng) -> u64 {
        match rng.below(6) {
            0 => rng.pick(&[
                0,
                u64::from(MAX_PORTS - 1),
                u64::from(MAX_PORTS),
                u64::from(u32::MAX),
                1 << 32 | 1,
                u64::MAX,
            ]),
            1 => rng.next(),
            2 => 1 + rng.below(8),
            _ => u64::from(self.ports[rng.below(KNOWN_PORTS as u64) as usize].load(Relaxed)),
        }
    }

    fn count(&self, rng: &mut Rng) -> u64 {
        match rng.below(6) {
            0 => rng.pick(&[0, MAX_BATCH + 1, u64::MAX, 1 << 32 | 1]),
            1 => MAX_BATCH,
            _ => 1 + rng.below(8),
        }
    }

    /// A grant entry for our own table: mostly one the partner may use. An entry that lets a
    /// peer write must name a frame of the frames zone (or no RAM at all), or the partner's
    /// copies would write into our code.
    fn entry(&self, rng: &mut Rng) -> u64 {
        let mut flags = u64::from(PERMIT);
        if rng.chance(3) {
            flags |= u64::from(READONLY);
        }
        if rng.chance(16) {
            flags |= u64::from(IN_USE);
        }
        if rng.chance(16) {
            flags |= 1 << (3 + rng.below(13));
        }
        if rng.chance(8) {
            flags &= !u64::from(PERMIT);
        }
        let peer = self.vm(rng) & 0xffff;
        let frame_gpa = match rng.below(6) {
            0 => self.outside(rng),
            1 => self.anywhere(rng),
            _ => rng.page(self.frames()),
        };
        if self.in_ram(frame_gpa) && !self.in_frames(frame_gpa) {
            flags |= u64::from(READONLY);
        }
        flags | peer << 16 | (frame_gpa >> 12) << 32
    }

    /// Rewrites a few entries of the current table (the partner maps and copies them while we
    /// do).
    fn scribble_table(&self, rng: &mut Rng) {
        let table = self.table.load(Relaxed);
        let refs = self.table_pages.load(Relaxed) * u64::from(ENTRIES_PER_PAGE);
        if refs == 0 {
            return;
        }
        let tables = self.tables();
        for _ in 0..4 {
            // Entries outside the zone would be memory we promised not to scribble on.
            let gpa = table + 8 * rng.below(refs.min(16));
            if let Some(word) = tables
                .iter()
                .find(|p| (p.gpa()..p.gpa() + PAGE_SIZE).contains(&gpa))
                .map(|p| &p.words()[((gpa % PAGE_SIZE) / 8) as usize])
            {
                word.store(self.entry(rng), Relaxed);
            }
        }
    }

    /// One side of a copy op (2 words). `write`: the side the hypervisor writes.
    fn copy_side(&self, rng: &mut Rng, write: bool) -> [u64; 2] {
        if rng.chance(2) {
            let head = 2 | (self.vm(rng) & 0xffff) << 16 | self.gref(rng) << 32;
            let offset = match rng.below(4) {
                0 => rng.pick(&[PAGE_SIZE - 1, PAGE_SIZE, u64::MAX, 4095 - 7]),
                _ => rng.below(PAGE_SIZE),
            };
            return [head, offset];
        }
        let gpa = if write {
            match rng.below(4) {
                0 => self.outside(rng),
                _ => rng.page(self.frames()) + rng.below(PAGE_SIZE),
            }
        } else {
            self.anywhere(rng)
        };
        [1, gpa]
    }

    /// Fills `count` ops of `words` words each at the start of this vCPU's op page: plausible
    /// ops, then mutated, then made safe again where the hypervisor would write.
    fn fill_ops(&self, rng: &mut Rng, vcpu: usize, call: Call, count: u64) -> u64 {
        let page = self.ops(vcpu).words();
        let words = match call {
            Call::Map => MapOp::WORDS,
            Call::Unmap => UnmapOp::WORDS,
            _ => CopyOp::WORDS,
        };
        let ops = (count.min(MAX_BATCH) as usize).min(page.len() / words);
        for op in 0..ops {
            let mut w = [0u64; 6];
            match call {
                Call::Map => {
                    let flags = if rng.chance(2) { 1 } else { 0 };
                    w[0] = (self.vm(rng) & 0xffff) | flags << 16 | self.gref(rng) << 32;
                    w[1] = self.window_page(rng);
                }
                Call::Unmap => w[0] = self.window_page(rng),
                _ => {
                    let [a, b] = self.copy_side(rng, false);
                    let [c, d] = self.copy_side(rng, true);
                    let len = match rng.below(4) {
                        0 => rng.pick(&[0, 1, PAGE_SIZE, PAGE_SIZE + 1, 0xffff, 1 << 16]),
                        _ => 1 + rng.below(64),
                    };
                    w[..5].copy_from_slice(&[a, b, c, d, len]);
                }
            }
            // One op in four mutated: more would leave the rules past the format checks unfuzzed.
            let mutations = if rng.chance(4) { 1 + rng.below(2) } else { 0 };
            for _ in 0..mutations {
                let i = rng.below(words as u64) as usize;
                if rng.chance(2) {
                    w[i] ^= 1 << rng.below(64);
                } else {
                    w[i] = rng.next();
                }
            }
            if call == Call::Copy {
                self.make_copy_safe(rng, &mut w);
            }
            for (i, word) in w.iter().take(words).enumerate() {
                page[op * words + i].store(*word, Relaxed);
            }
        }
        let base = self.ops(vcpu).gpa();
        match rng.below(16) {
            0 => base + 4,
            1 => self.outside(rng),
            // Only the last op crosses out of RAM: no other address follows our RAM.
            2 => self.ram_end - 8,
            _ => base,
        }
    }

    /// A copy whose destination is our own RAM must write into the frames zone only.
    fn make_copy_safe(&self, rng: &mut Rng, w: &mut [u64; 6]) {
        let own = w[2] as u16 == 1;
        if own && self.in_ram(w[3]) && !self.in_frames(w[3]) {
            w[3] = rng.page(self.frames()) + (w[3] % PAGE_SIZE);
        }
    }

    fn window_page(&self, rng: &mut Rng) -> u64 {
        match rng.below(8) {
            0 => self.outside(rng),
            1 => GRANT_WINDOW_BASE + rng.below(GRANT_WINDOW_SIZE),
            _ => GRANT_WINDOW_BASE + PAGE_SIZE * rng.below(self.window_pages),
        }
    }

    /// Draws one call and its registers.
    fn draw(&self, rng: &mut Rng, vcpu: usize) -> (Call, u64, [u64; 6]) {
        let total: u32 = self.weights.iter().sum();
        let mut pick = rng.below(u64::from(total)) as u32;
        let mut call = Call::Console;
        for (c, w) in CALLS.iter().zip(self.weights) {
            if pick < w {
                call = *c;
                break;
            }
            pick -= w;
        }
        let mut a = [0u64; 6];
        let id = match call {
            Call::Console => {
                a[0] = if rng.chance(2) {
                    rng.below(41)
                } else {
                    rng.pick(&[41, 1 << 40, u64::MAX])
                };
                // Bytes the hypervisor drops (control characters), so the log stays readable;
                // rarely anything at all.
                let any = rng.chance(4096);
                for reg in &mut a[1..] {
                    *reg = if any {
                        rng.next()
                    } else {
                        rng.next() & 0x0707_0707_0707_0707
                    };
                }
                hc::CONSOLE_WRITE
            }
            Call::Yield => hc::YIELD,
            Call::TestInject => {
                a[0] = match rng.below(4) {
                    0 => rng.next(),
                    _ => rng.below(1 << SGI_COUNT),
                };
                a[1] = match rng.below(4) {
                    0 => rng.pick(&[0, 9, u64::MAX]),
                    _ => 1 + rng.below(8),
                };
                hc::TEST_INJECT
            }
            Call::TableSetup => {
                a[0] = self.page_in(rng, &self.tables()[..TABLE_PAGES / 2]);
                a[1] = match rng.below(4) {
                    0 => rng.pick(&[0, 5, u64::MAX, 1 << 32 | 1]),
                    _ => 1 + rng.below(4),
                };
                hc::GRANT_TABLE_SETUP
            }
            Call::Map | Call::Unmap | Call::Copy => {
                a[1] = self.count(rng);
                a[0] = self.fill_ops(rng, vcpu, call, a[1]);
                match call {
                    Call::Map => hc::GRANT_MAP,
                    Call::Unmap => hc::GRANT_UNMAP,
                    _ => hc::GRANT_COPY,
                }
            }
            Call::End => {
                a[0] = self.gref(rng);
                hc::GRANT_END
            }
            Call::EvtchnSetup => {
                a[0] = self.page_in(rng, self.events());
                hc::EVTCHN_SETUP
            }
            Call::AllocUnbound => {
                a[0] = self.vm(rng);
                hc::EVTCHN_ALLOC_UNBOUND
            }
            Call::Bind => {
                a[0] = self.vm(rng);
                a[1] = self.port(rng);
                hc::EVTCHN_BIND_INTERDOMAIN
            }
            Call::Send | Call::Close | Call::Unmask => {
                a[0] = self.port(rng);
                match call {
                    Call::Send => hc::EVTCHN_SEND,
                    Call::Close => hc::EVTCHN_CLOSE,
                    _ => hc::EVTCHN_UNMASK,
                }
            }
            Call::ConnectionPort => {
                a[0] = self.vm(rng);
                hc::CONNECTION_PORT
            }
            Call::PsciVersion => psci_ids::VERSION,
            Call::PsciFeatures => {
                a[0] = match rng.below(3) {
                    0 => rng.next(),
                    _ => rng.pick(&KNOWN),
                };
                psci_ids::FEATURES
            }
            Call::CpuOn => {
                a[0] = match rng.below(3) {
                    0 => rng.pick(&[1 << 8, u64::MAX, 8, self.vcpus as u64]),
                    _ => rng.below(self.vcpus as u64),
                };
                a[1] = match rng.below(3) {
                    0 => self.outside(rng),
                    1 => (GUEST_RAM_BASE + rng.below(self.ram_end - GUEST_RAM_BASE)) | 2,
                    _ => (GUEST_RAM_BASE + rng.below(self.ram_end - GUEST_RAM_BASE)) & !3,
                };
                a[2] = rng.next();
                psci_ids::CPU_ON_64
            }
            Call::VendorUnknown | Call::RandomId => {
                for reg in &mut a {
                    *reg = match rng.below(3) {
                        0 => rng.next(),
                        1 => self.anywhere(rng),
                        _ => rng.below(16),
                    };
                }
                loop {
                    let id = if call == Call::VendorUnknown {
                        hc::VENDOR_HYP_BASE | rng.below(1 << 16)
                    } else {
                        rng.next()
                    };
                    // Defined ids this fuzzer does not aim at (the device model's, accounting,
                    // the balloon's, which would give this VM's own memory away) are not
                    // "unknown" either.
                    let defined = KNOWN.contains(&id) || hc::VENDOR_CALLS.contains(&id);
                    if !defined && !FORBIDDEN.contains(&id) {
                        break id;
                    }
                }
            }
        };
        (call, id, a)
    }

    /// What a successful call tells the fuzzer for later calls.
    fn learn(&self, rng: &mut Rng, call: Call, args: &[u64; 6], ret: [u64; 4]) {
        if ret[0] != Status::Ok.as_u64() {
            return;
        }
        match call {
            Call::TableSetup => {
                self.table.store(args[0], Relaxed);
                self.table_pages.store(args[1], Relaxed);
            }
            Call::AllocUnbound | Call::Bind => {
                let slot = rng.below(KNOWN_PORTS as u64) as usize;
                self.ports[slot].store(ret[1] as u32, Relaxed);
            }
            _ => {}
        }
    }

    fn undocumented(&self, what: &str, raw: u64, id: u64, args: &[u64; 6], vcpu: usize) {
        if self.undocumented.fetch_add(1, Relaxed) < 8 {
            println!(
                "fuzz: undocumented answer {raw:#x} to {what} {id:#x} {args:#x?} (vcpu {vcpu}, seed {:#x})",
                self.seed
            );
        }
    }

    /// Counts the status words the hypervisor wrote into the ops of a batch that returned `Ok`.
    fn count_ops(
        &self,
        call: Call,
        count: u64,
        vcpu: usize,
        rows: &mut [[u64; COLUMNS]; ROWS],
        id: u64,
        args: &[u64; 6],
    ) {
        let Some(k) = OP_ROWS.iter().position(|(c, _, _)| *c == call) else {
            return;
        };
        let (words, status_word) = match call {
            Call::Map => (MapOp::WORDS, MapOp::STATUS_WORD),
            Call::Unmap => (UnmapOp::WORDS, UnmapOp::STATUS_WORD),
            _ => (CopyOp::WORDS, CopyOp::STATUS_WORD),
        };
        let page = self.ops(vcpu).words();
        for op in 0..count.min(MAX_BATCH) as usize {
            let raw = page[op * words + status_word].load(Relaxed);
            rows[CALLS.len() + k][column(raw)] += 1;
            let documented = Status::from_u64(raw).is_some_and(|s| OP_ROWS[k].2.contains(&s));
            if !documented {
                self.undocumented(OP_ROWS[k].1, raw, id, args, vcpu);
            }
        }
    }

    fn run_vcpu(&self, vcpu: usize) {
        let mut rng = Rng(self.seed ^ (vcpu as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
        let mut rows = [[0u64; COLUMNS]; ROWS];
        loop {
            let n = self.issued.fetch_add(1, Relaxed);
            let late = n.is_multiple_of(256)
                && self
                    .deadline
                    .is_some_and(|deadline| timer::now() >= deadline);
            if late {
                STOP.store(true, Relaxed);
            }
            if n >= self.limit || STOP.load(Relaxed) {
                self.issued.fetch_sub(1, Relaxed);
                break;
            }
            if rng.chance(16) {
                self.scribble_table(&mut rng);
            }
            let (call, id, args) = self.draw(&mut rng, vcpu);
            if self.trace {
                println!(
                    "fuzz: vcpu {vcpu} call {n}: {} {id:#x} {args:#x?}",
                    call.name()
                );
            }
            let ret = hvc(id, args);
            rows[call as usize][column(ret[0])] += 1;
            if !call.documented(ret[0]) {
                self.undocumented(call.name(), ret[0], id, &args, vcpu);
            }
            if ret[0] == Status::Ok.as_u64() && args[0] == self.ops(vcpu).gpa() {
                self.count_ops(call, args[1], vcpu, &mut rows, id, &args);
            }
            self.learn(&mut rng, call, &args, ret);
        }
        let mut histogram = self.histogram.lock();
        for (total, mine) in histogram.iter_mut().zip(rows) {
            for (t, m) in total.iter_mut().zip(mine) {
                *t += m;
            }
        }
        drop(histogram);
        self.finished.fetch_add(1, Relaxed);
    }
}

fn secondary(index: usize) {
    if let Some(f) = FUZZ.get() {
        f.run_vcpu(index);
    }
    // Stay on: a vCPU that switched itself off could be restarted by a fuzzed CPU_ON at any
    // address of our RAM.
    loop {
        cpu::wfi();
    }
}

/// The draw weights with every call not named in `only` (if given) at zero.
fn weights(only: Option<&str>) -> Result<[u32; CALLS.len()], String> {
    let Some(only) = only else {
        return Ok(WEIGHTS);
    };
    let mut weights = [0; CALLS.len()];
    for name in only.split(',').map(str::trim) {
        let i = CALLS
            .iter()
            .position(|c| c.name() == name)
            .ok_or_else(|| format!("setting only: unknown call '{name}'"))?;
        weights[i] = WEIGHTS[i];
    }
    Ok(weights)
}

fn settings(info: &StartInfo<'static>) -> Option<Fuzz> {
    let limit = super::number(info, "calls", 1_000_000)?;
    let window_pages = super::number(info, "window_pages", WINDOW_PAGES)?;
    if !(1..=WINDOW_MAX_PAGES).contains(&window_pages) {
        println!("REPORT fail: setting window_pages must be 1..={WINDOW_MAX_PAGES}");
        return None;
    }
    let weights = weights(setting(info.settings, "only"))
        .map_err(|e| println!("REPORT fail: {e}"))
        .ok()?;
    let duration_ms = super::number(info, "duration_ms", 0)?;
    // Each boot of a restarting fuzzer replays differently but reproducibly.
    let seed = super::number(info, "seed", timer::now() ^ 0x5eed_5eed)?
        ^ u64::from(info.boot_count - 1) << 32;
    let partner = match super::number(info, "partner", 0)? {
        0 => None,
        id => match u16::try_from(id) {
            Ok(id) if id != info.vm_id && usize::from(id) <= MAX_VMS => Some(id),
            _ => {
                println!("REPORT fail: setting partner = {id} is not another VM's id");
                return None;
            }
        },
    };
    Some(Fuzz {
        vm_id: info.vm_id,
        vcpus: info.vcpus as usize,
        ram_end: GUEST_RAM_BASE + info.ram_bytes,
        limit,
        deadline: (duration_ms > 0).then(|| timer::now() + timer::ms_to_ticks(duration_ms)),
        seed,
        partner,
        trace: matches!(setting(info.settings, "trace"), Some("1" | "true")),
        weights,
        window_pages,
        scratch: Page::leak_many(SCRATCH_PAGES),
        issued: AtomicU64::new(0),
        undocumented: AtomicU64::new(0),
        table: AtomicU64::new(0),
        table_pages: AtomicU64::new(0),
        ports: [const { AtomicU32::new(0) }; KNOWN_PORTS],
        histogram: Mutex::new([[0; COLUMNS]; ROWS]),
        finished: AtomicU32::new(0),
    })
}

pub fn run(info: &StartInfo<'static>) {
    let Some(fuzz) = settings(info) else {
        return;
    };
    let f = FUZZ.call_once(|| fuzz);
    println!(
        "fuzz: seed {:#x}, {} calls, {} vCPU(s), partner {:?}, window {} pages, scratch {:#x}+{:#x}",
        f.seed,
        f.limit,
        f.vcpus,
        f.partner,
        f.window_pages,
        f.scratch[0].gpa(),
        SCRATCH_PAGES as u64 * PAGE_SIZE
    );
    for intid in (0..SGI_COUNT).chain([EVTCHN_INTID]) {
        let _ = irq::register(intid, on_irq);
    }
    for index in 1..f.vcpus {
        if let Err(e) = smp::cpu_on(index, secondary) {
            println!("REPORT fail: {e}");
            return;
        }
    }
    let start = Instant::now();
    f.run_vcpu(0);
    while f.finished.load(Relaxed) < f.vcpus as u32 {
        timer::sleep_ms(1);
    }
    let ms = start.elapsed_ms().max(1);
    report(f, ms);
    let Some(restarts) = super::number(info, "restarts", 0) else {
        return;
    };
    if u64::from(info.boot_count) <= restarts {
        println!(
            "fuzz: restarting (boot {} of {})",
            info.boot_count,
            restarts + 1
        );
        vm_runtime::psci::system_reset();
    }
}

fn report(f: &Fuzz, ms: u64) {
    // A fuzzed console write may have left a partial line behind; end it before ours.
    let _ = vm_runtime::hypercall::console_write(b"\n");
    let histogram = *f.histogram.lock();
    let names = CALLS
        .iter()
        .map(|c| (*c, c.name()))
        .chain(OP_ROWS.iter().map(|(c, name, _)| (*c, *name)));
    for ((call, name), row) in names.zip(histogram) {
        let calls: u64 = row.iter().sum();
        let mut line = format!("fuzz: {name} {calls}:");
        for (col, n) in row.iter().enumerate().filter(|(_, n)| **n > 0) {
            line.push_str(&format!(" {} {n}", column_name(call, col)));
        }
        println!("{line}");
    }
    let issued = f.issued.load(Relaxed);
    let undocumented = f.undocumented.load(Relaxed);
    let summary = format!(
        "{issued} hypercalls from {} vCPU(s) in {ms} ms ({} per s), seed {:#x}, {} interrupts taken",
        f.vcpus,
        issued * 1000 / ms,
        f.seed,
        INTERRUPTS.load(Relaxed)
    );
    if undocumented == 0 {
        println!("REPORT ok: fuzz: {summary}, every answer documented");
    } else {
        println!("REPORT fail: fuzz: {undocumented} undocumented answers; {summary}");
    }
}
