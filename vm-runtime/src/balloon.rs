//! The guest side of the memory balloon (ABI: `shared_abi::balloon`): the BALLOON_* hypercall
//! wrappers and the driver that gives heap pages back to the hypervisor ([`give`]) and takes
//! memory from the balloon's credit into the heap ([`take`]).
//!
//! Giving takes whole pages out of the heap (page-aligned power-of-two chunks of at most one
//! batch), hands their GPAs over in batches of at most [`MAX_BATCH`], puts what the hypervisor
//! refused back into the heap and remembers what it gave. Taking populates the pages above the
//! current top of memory (the end of RAM, then the end of what was populated before) inside
//! [`WINDOW`] and adds the populated run to the heap. Both stop at the first refusal.
//!
//! The GPA array lives in `.bss`, so it is always in the VM's RAM from the topology (the only
//! memory the hypervisor reads for us; populated pages are not). Memory allocated after a
//! [`take`] may come from populated pages: grant them or name them in a hypercall and it is
//! refused, so set up grant tables, event pages and rings before taking.
//!
//! The batch and address planning is pure logic ([`Driver`]) over two small traits, [`Calls`]
//! (the hypercalls) and [`PageSource`] (the heap), so host tests run it against models.
//!
//! **Following the target** ([`follow`]): the hypervisor holds a target per VM (see
//! `shared_abi::balloon`'s "Targets") and raises `TARGET_INTID` when it changes. A VM that
//! calls [`follow_init`] and then [`follow`] from its main loop gives or takes at most
//! [`FOLLOW_STEP_BYTES`] per call ([`plan_step`]) until its memory equals the target, so the
//! loop keeps serving its network between steps. A take waits (nothing done) while the credit
//! is empty: the memory it is promised is still on its way from a giver.

use alloc::vec::Vec;

use core::sync::atomic::{AtomicBool, Ordering};

use shared_abi::balloon::{FOLLOW_STEP_BYTES, MAX_BATCH, WINDOW};
use shared_abi::hypercall::{
    Status, BALLOON_INFO, BALLOON_POPULATE, BALLOON_RELEASE, BALLOON_SET_TARGET, BALLOON_TARGET,
};
use shared_abi::layout::intid::TARGET_INTID;
use shared_abi::layout::{GUEST_RAM_BASE, PAGE_SIZE};
use spin::Mutex;

use crate::hypercall::{hvc, status};

/// `pages` contiguous pages from `gpa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub gpa: u64,
    pub pages: u64,
}

impl Run {
    pub fn end(&self) -> u64 {
        self.gpa + self.pages * PAGE_SIZE
    }

    pub fn bytes(&self) -> u64 {
        self.pages * PAGE_SIZE
    }
}

/// Why a give or a take did less than asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Shortfall {
    /// The hypervisor stopped at this page (its status: `Denied` at the floor, `Busy` for a
    /// page in use, `NoSpace` when the credit is exhausted, ...).
    #[error("the hypervisor refused page {gpa:#x}: {status:?}")]
    Refused { gpa: u64, status: Status },
    /// The heap had no free page left to give.
    #[error("the heap has no free page left")]
    HeapEmpty,
    /// The memory window ends at the top of our memory.
    #[error("the memory window is full up to {top:#x}")]
    WindowFull { top: u64 },
}

/// What a [`give`] or [`take`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Pages given or taken.
    pub pages: u64,
    /// Why it stopped short of what was asked, if it did.
    pub shortfall: Option<Shortfall>,
    /// How long it took (ms, the virtual counter); 0 in host tests.
    pub ms: u64,
    /// How much of that was spent in the balloon hypercalls (ms); 0 in host tests.
    pub call_ms: u64,
}

impl Outcome {
    pub fn bytes(&self) -> u64 {
        self.pages * PAGE_SIZE
    }
}

/// The balloon hypercalls, each on a GPA array of `1..=MAX_BATCH` entries: returns the status
/// of the first page refused (`Ok` if none) and how many pages were done.
pub trait Calls {
    fn release(&mut self, gpas: &[u64]) -> (Status, u64);
    fn populate(&mut self, gpas: &[u64]) -> (Status, u64);
}

/// Where given pages come from and taken pages go: the heap.
pub trait PageSource {
    /// Up to `max_pages` (`1..=MAX_BATCH`) contiguous free pages taken out of the heap, `None`
    /// when it has not a single free page.
    fn take_pages(&mut self, max_pages: u64) -> Option<Run>;
    /// Pages [`take_pages`](Self::take_pages) handed out that the hypervisor refused: still ours.
    fn put_back(&mut self, run: Run);
    /// Pages the hypervisor populated for us: new memory for the heap.
    fn add(&mut self, run: Run);
}

/// One batch of GPAs, page aligned as the ABI asks.
#[repr(C, align(4096))]
pub struct Batch(pub [u64; MAX_BATCH as usize]);

impl Batch {
    pub const fn new() -> Batch {
        Batch([0; MAX_BATCH as usize])
    }

    /// The GPAs of `run`'s pages (at most [`MAX_BATCH`]) written into the batch.
    fn fill(&mut self, run: Run) -> &[u64] {
        let n = run.pages.min(MAX_BATCH) as usize;
        for (i, slot) in self.0[..n].iter_mut().enumerate() {
            *slot = run.gpa + i as u64 * PAGE_SIZE;
        }
        &self.0[..n]
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

/// The balloon's bookkeeping: what this VM gave back and where its memory ends.
#[derive(Debug)]
pub struct Driver {
    /// Runs given back, merged where they touch.
    given: Vec<Run>,
    /// The end of our memory: RAM's end, then the end of what was populated.
    top: u64,
}

impl Driver {
    /// A VM with `ram_bytes` of RAM from `GUEST_RAM_BASE`, nothing given or taken.
    pub const fn new(ram_bytes: u64) -> Driver {
        Driver {
            given: Vec::new(),
            top: GUEST_RAM_BASE + ram_bytes,
        }
    }

    /// The runs given back so far.
    pub fn given(&self) -> &[Run] {
        &self.given
    }

    pub fn given_pages(&self) -> u64 {
        self.given.iter().map(|r| r.pages).sum()
    }

    /// The first address above our memory (where the next [`Driver::take`] starts).
    pub fn top(&self) -> u64 {
        self.top
    }

    fn remember(&mut self, run: Run) {
        if run.pages == 0 {
            return;
        }
        match self.given.last_mut() {
            Some(last) if last.end() == run.gpa => last.pages += run.pages,
            _ => self.given.push(run),
        }
    }

    /// Gives `pages` pages of the heap back, batch by batch; stops at the first refusal or
    /// when the heap runs dry.
    pub fn give(
        &mut self,
        calls: &mut impl Calls,
        heap: &mut impl PageSource,
        batch: &mut Batch,
        pages: u64,
    ) -> Outcome {
        let mut done = 0;
        let mut shortfall = None;
        while done < pages {
            let want = (pages - done).min(MAX_BATCH);
            let Some(run) = heap.take_pages(want) else {
                shortfall = Some(Shortfall::HeapEmpty);
                break;
            };
            // Never trust more than we asked for.
            let run = Run {
                gpa: run.gpa,
                pages: run.pages.clamp(1, want),
            };
            let (status, taken) = calls.release(batch.fill(run));
            let taken = taken.min(run.pages);
            self.remember(Run {
                gpa: run.gpa,
                pages: taken,
            });
            done += taken;
            if taken < run.pages {
                let refused = Run {
                    gpa: run.gpa + taken * PAGE_SIZE,
                    pages: run.pages - taken,
                };
                heap.put_back(refused);
                shortfall = Some(Shortfall::Refused {
                    gpa: refused.gpa,
                    status,
                });
                break;
            }
        }
        Outcome {
            pages: done,
            shortfall,
            ms: 0,
            call_ms: 0,
        }
    }

    /// Populates up to `pages` pages above the top of our memory, batch by batch, and adds
    /// what was populated to the heap as one run; stops at the first refusal or the window's
    /// end.
    pub fn take(
        &mut self,
        calls: &mut impl Calls,
        heap: &mut impl PageSource,
        batch: &mut Batch,
        pages: u64,
    ) -> Outcome {
        let start = self.top;
        let mut done = 0;
        let mut shortfall = None;
        while done < pages {
            let room = WINDOW.1.saturating_sub(self.top) / PAGE_SIZE;
            if room == 0 {
                shortfall = Some(Shortfall::WindowFull { top: self.top });
                break;
            }
            let want = (pages - done).min(MAX_BATCH).min(room);
            let run = Run {
                gpa: self.top,
                pages: want,
            };
            let (status, got) = calls.populate(batch.fill(run));
            let got = got.min(want);
            self.top += got * PAGE_SIZE;
            done += got;
            if got < want {
                shortfall = Some(Shortfall::Refused {
                    gpa: self.top,
                    status,
                });
                break;
            }
        }
        if done > 0 {
            heap.add(Run {
                gpa: start,
                pages: done,
            });
        }
        Outcome {
            pages: done,
            shortfall,
            ms: 0,
            call_ms: 0,
        }
    }
}

/// What BALLOON_INFO says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// This VM's memory now, in pages.
    pub memory_pages: u64,
    /// The balloon's credit (what others gave back and nobody took yet), in pages.
    pub credit_pages: u64,
}

/// BALLOON_INFO.
pub fn info() -> Info {
    let [_, memory_pages, credit_pages, _] = hvc(BALLOON_INFO, [0; 6]);
    Info {
        memory_pages,
        credit_pages,
    }
}

/// The real hypercalls, counting the ticks spent in them. The GPA array must be [`BATCH`]
/// (VA = GPA: it is in `.bss`, in RAM).
#[derive(Default)]
struct Hypervisor {
    ticks: u64,
}

impl Hypervisor {
    fn call(&mut self, id: u64, gpas: &[u64]) -> (Status, u64) {
        let start = crate::timer::now();
        let answer = batch_call(id, gpas);
        self.ticks += crate::timer::now().saturating_sub(start);
        answer
    }
}

fn batch_call(id: u64, gpas: &[u64]) -> (Status, u64) {
    let [x0, x1, ..] = hvc(id, [gpas.as_ptr() as u64, gpas.len() as u64, 0, 0, 0, 0]);
    (status(x0), x1)
}

impl Calls for Hypervisor {
    fn release(&mut self, gpas: &[u64]) -> (Status, u64) {
        self.call(BALLOON_RELEASE, gpas)
    }

    fn populate(&mut self, gpas: &[u64]) -> (Status, u64) {
        self.call(BALLOON_POPULATE, gpas)
    }
}

/// The global heap as the balloon's page source.
struct Heap;

impl PageSource for Heap {
    fn take_pages(&mut self, max_pages: u64) -> Option<Run> {
        crate::heap::take_pages(max_pages).map(|(gpa, pages)| Run { gpa, pages })
    }

    fn put_back(&mut self, run: Run) {
        crate::heap::put_back_pages(run.gpa, run.pages);
    }

    fn add(&mut self, run: Run) {
        crate::heap::add_populated_pages(run.gpa, run.pages);
    }
}

/// The GPA array of every balloon call: a static, so in the RAM the hypervisor reads.
static BATCH: Mutex<Batch> = Mutex::new(Batch::new());
/// This VM's driver, made on first use from the start-info's RAM size.
static DRIVER: Mutex<Option<Driver>> = Mutex::new(None);

fn with_driver<R>(f: impl FnOnce(&mut Driver, &mut Batch) -> R) -> R {
    let mut driver = DRIVER.lock();
    let driver = driver.get_or_insert_with(|| Driver::new(crate::start_info().ram_bytes));
    f(driver, &mut BATCH.lock())
}

/// Runs `f` on the real hypercalls and fills in the times.
fn timed(f: impl FnOnce(&mut Hypervisor) -> Outcome) -> Outcome {
    let start = crate::timer::Instant::now();
    let mut calls = Hypervisor::default();
    let outcome = f(&mut calls);
    Outcome {
        ms: crate::timer::ticks_to_ms(start.elapsed_ticks()),
        call_ms: crate::timer::ticks_to_ms(calls.ticks),
        ..outcome
    }
}

/// Gives `bytes` (rounded up to whole pages) of the heap back to the balloon.
pub fn give(bytes: u64) -> Outcome {
    let pages = bytes.div_ceil(PAGE_SIZE);
    with_driver(|d, batch| timed(|calls| d.give(calls, &mut Heap, batch, pages)))
}

/// Takes `bytes` (rounded up to whole pages) from the balloon's credit into the heap.
pub fn take(bytes: u64) -> Outcome {
    let pages = bytes.div_ceil(PAGE_SIZE);
    with_driver(|d, batch| timed(|calls| d.take(calls, &mut Heap, batch, pages)))
}

/// The runs given back so far.
pub fn given() -> Vec<Run> {
    with_driver(|d, _| d.given().to_vec())
}

/// BALLOON_RELEASE of the pages the caller names (at most [`MAX_BATCH`]; more is
/// `InvalidArgument` without a call), outside the driver: for the hostile tests, which give
/// pages the heap does not own (a granted ring page) or must not touch again.
pub fn release_raw(gpas: &[u64]) -> (Status, u64) {
    if gpas.is_empty() || gpas.len() > MAX_BATCH as usize {
        return (Status::InvalidArgument, 0);
    }
    let mut batch = BATCH.lock();
    batch.0[..gpas.len()].copy_from_slice(gpas);
    batch_call(BALLOON_RELEASE, &batch.0[..gpas.len()])
}

/// BALLOON_TARGET: this VM's target, in pages.
pub fn target() -> u64 {
    let [_, pages, ..] = hvc(BALLOON_TARGET, [0; 6]);
    pages
}

/// BALLOON_SET_TARGET (driver domains only): VM `vm`'s target to `pages`.
pub fn set_target(vm: u64, pages: u64) -> Status {
    let [x0, ..] = hvc(BALLOON_SET_TARGET, [vm, pages, 0, 0, 0, 0]);
    status(x0)
}

/// One step towards the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Memory equals the target.
    Reached,
    /// Give this many pages back.
    Give(u64),
    /// Take this many pages from the credit.
    Take(u64),
    /// Below the target with an empty credit: wait for a giver.
    Wait,
}

/// The next step for a VM with `memory` pages, a target of `target` pages and `credit` pages
/// in the balloon: at most [`FOLLOW_STEP_BYTES`] at a time, a take at most the credit.
pub fn plan_step(memory: u64, target: u64, credit: u64) -> Step {
    let step = FOLLOW_STEP_BYTES / PAGE_SIZE;
    if memory > target {
        Step::Give((memory - target).min(step))
    } else if memory < target {
        match (target - memory).min(step).min(credit) {
            0 => Step::Wait,
            pages => Step::Take(pages),
        }
    } else {
        Step::Reached
    }
}

/// What a [`follow`] call has to tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Followed {
    /// A new target: `memory` pages now, `target` wanted.
    NewTarget { memory: u64, target: u64 },
    /// The target is reached: pages given and taken since the chase began, and the ms spent
    /// giving and taking (the waits for credit not counted).
    Reached {
        target: u64,
        gave: u64,
        give_ms: u64,
        took: u64,
        take_ms: u64,
    },
    /// A give or take was refused (not a take waiting for credit): the chase stops until the
    /// next target.
    Stuck(Shortfall),
}

/// The chase in progress.
#[derive(Clone, Copy, Debug, Default)]
struct Chase {
    target: u64,
    on: bool,
    gave: u64,
    give_ms: u64,
    took: u64,
    take_ms: u64,
}

/// Set by `TARGET_INTID` (and by [`follow_init`], so the first [`follow`] reads the target).
static TARGET_CHANGED: AtomicBool = AtomicBool::new(false);
static CHASE: Mutex<Chase> = Mutex::new(Chase {
    target: 0,
    on: false,
    gave: 0,
    give_ms: 0,
    took: 0,
    take_ms: 0,
});

fn on_target_irq(_: u32) {
    TARGET_CHANGED.store(true, Ordering::Release);
}

/// Listens for `TARGET_INTID` from boot (the runtime calls it), so a VM that does not follow
/// its target still takes the interrupt quietly when a driver domain sets one.
pub(crate) fn listen_for_targets() {
    // TARGET_INTID is a PPI, below irq::MAX_INTID: registration cannot fail.
    let _ = crate::irq::register(TARGET_INTID, on_target_irq);
}

/// Starts following: the first [`follow`] reads the target.
pub fn follow_init() {
    TARGET_CHANGED.store(true, Ordering::Release);
}

/// True when the target changed and [`follow`] has not read it yet: a wait of the VM's main
/// loop ends on it (the interrupt alone only ends one WFI).
pub fn target_changed() -> bool {
    TARGET_CHANGED.load(Ordering::Acquire)
}

/// True while a chase is on: below or above the target. A take that waits for credit hears
/// no interrupt when the credit grows, so the main loop should come back soon.
pub fn chasing() -> bool {
    CHASE.lock().on
}

/// One step towards this VM's target, if it has one to reach: reads the target again after
/// `TARGET_INTID`, then gives or takes at most [`FOLLOW_STEP_BYTES`]. Returns what there is to
/// tell; `None` while nothing happened or a step is done with more to go.
pub fn follow() -> Option<Followed> {
    let mut chase = CHASE.lock();
    let mut news = None;
    if TARGET_CHANGED.swap(false, Ordering::AcqRel) {
        let target = target();
        let memory = info().memory_pages;
        if target != chase.target || (!chase.on && target != memory) {
            if !chase.on {
                *chase = Chase::default();
            }
            chase.target = target;
            chase.on = target != memory || chase.on;
            if target != memory {
                news = Some(Followed::NewTarget { memory, target });
            }
        }
    }
    if !chase.on || news.is_some() {
        return news;
    }
    let now = info();
    match plan_step(now.memory_pages, chase.target, now.credit_pages) {
        Step::Reached => {
            chase.on = false;
            Some(Followed::Reached {
                target: chase.target,
                gave: chase.gave,
                give_ms: chase.give_ms,
                took: chase.took,
                take_ms: chase.take_ms,
            })
        }
        Step::Wait => None,
        Step::Give(pages) => {
            let out = give(pages * PAGE_SIZE);
            chase.gave += out.pages;
            chase.give_ms += out.ms;
            out.shortfall.map(|why| {
                chase.on = false;
                Followed::Stuck(why)
            })
        }
        Step::Take(pages) => {
            let out = take(pages * PAGE_SIZE);
            chase.took += out.pages;
            chase.take_ms += out.ms;
            match out.shortfall {
                // Another taker got the credit first: wait for more.
                None
                | Some(Shortfall::Refused {
                    status: Status::NoSpace,
                    ..
                }) => None,
                Some(why) => {
                    chase.on = false;
                    Some(Followed::Stuck(why))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
