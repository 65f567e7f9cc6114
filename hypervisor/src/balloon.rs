//! The memory balloon, hypervisor side: the rules of `shared_abi::balloon` for one VM's memory,
//! and the record of what it gave back and what it was given.
//!
//! A VM's memory is its RAM from the topology (one contiguous run of host frames, mapped from
//! `GUEST_RAM_BASE`) minus the pages it gave back, plus the pages the balloon populated for it
//! (single frames anywhere in its window, including holes it gave back earlier). [`VmBalloon`]
//! keeps both sets; the binary asks it before touching a VM's RAM ([`VmBalloon::off_limits`]) and
//! when freeing it ([`VmBalloon::kept_runs`]). It also knows where the VM's shared code is (the
//! read-only part of its image, mapped from the hypervisor's copy, `hypervisor::mm::ram_map`):
//! those pages of its RAM are never given back, populated, or touched on its behalf.
//! Everything that changes the machine (stage 2, TLBs, scrubbing, frames, the credit) goes
//! through [`BalloonEnv`], which the tests implement over a model.
//!
//! Rules, in the order they are checked for each page (the first that fails is the page's
//! status and ends the batch):
//! - release: page aligned and in the window, else `InvalidArgument`; a page the VM has (a
//!   populated one, or one of its RAM it has not given and that is not its shared code), else
//!   `InvalidArgument`; at least `FLOOR_BYTES` left afterwards, else `Denied`; not used by the
//!   hypervisor or a peer, else `Busy`; then unmapped (a table for a block split can be
//!   missing: `NoSpace`), scrubbed and credited.
//! - populate: page aligned and in the window, not mapped now, else `InvalidArgument`; a frame
//!   from the credit and room to record it, else `NoSpace`; then mapped (a table can be
//!   missing: `NoSpace`, and the frame goes back).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use shared_abi::balloon::{FLOOR_BYTES, MAX_BATCH, WINDOW};
use shared_abi::hypercall::Status;
use shared_abi::layout::{GUEST_RAM_BASE, PAGE_SIZE};

/// What the balloon needs of the machine, for one VM.
pub trait BalloonEnv {
    /// True if the hypervisor or a peer uses the VM's RAM page at `gpa` (start-info page, event
    /// page, grant table, a frame a peer maps).
    fn in_use(&self, gpa: u64) -> bool;
    /// Unmaps the page at `gpa` of the VM's stage 2 and invalidates it everywhere (TLBs, the
    /// SMMU's); false if a table for a block split could not be had (nothing changed).
    fn unmap(&mut self, gpa: u64) -> bool;
    /// Maps host frame `pa` at `gpa` as RAM; false if a table could not be had.
    fn map(&mut self, gpa: u64, pa: u64) -> bool;
    /// A base-RAM frame the VM gave back leaves its RAM (already unmapped and invalidated):
    /// scrub it and add it to the credit. The hypervisor does both after the batch, the scrub
    /// with no lock held (`ballooning::Scrub`).
    fn give_ram_frame(&mut self, pa: u64);
    /// A populated frame the VM gave back: scrub it and add it to the credit (as above).
    fn give_frame(&mut self, pa: u64);
    /// A frame from the credit for the VM, zeroed; `None` when there is none.
    fn take_frame(&mut self) -> Option<u64>;
    /// True when the hypervisor's heap cannot record one more populated page.
    fn heap_low(&self) -> bool;
}

/// One VM's balloon record.
#[derive(Clone, Debug, Default)]
pub struct VmBalloon {
    /// Pages of its RAM from the topology.
    ram_pages: u64,
    /// Its first pages that are its image's shared code, not its own RAM (0: none).
    code_pages: u64,
    /// Bitmap over those pages: set for a page given back. Empty until the first one.
    given: Vec<u64>,
    given_count: u64,
    /// Pages the balloon populated, by GPA: the host frame behind each.
    populated: BTreeMap<u64, u64>,
}

/// The result of a release or populate batch: x0's status and how many pages were done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchResult {
    pub status: Status,
    pub done: u64,
}

fn page_in_window(gpa: u64) -> bool {
    gpa.is_multiple_of(PAGE_SIZE) && gpa >= WINDOW.0 && gpa < WINDOW.1
}

impl VmBalloon {
    /// The record of a VM with `ram_bytes` of RAM whose first `code_bytes` (a page multiple) are
    /// its image's shared code.
    pub fn new(ram_bytes: u64, code_bytes: u64) -> Self {
        let ram_pages = ram_bytes / PAGE_SIZE;
        VmBalloon {
            ram_pages,
            code_pages: (code_bytes / PAGE_SIZE).min(ram_pages),
            ..Self::default()
        }
    }

    /// The record of the VM's next incarnation: the same RAM and shared code, nothing given
    /// back and nothing populated (a restart starts from its RAM of the topology).
    pub fn renewed(&self) -> Self {
        VmBalloon {
            ram_pages: self.ram_pages,
            code_pages: self.code_pages,
            ..Self::default()
        }
    }

    /// Bytes at the start of its RAM window that are its image's shared code.
    pub fn code_bytes(&self) -> u64 {
        self.code_pages * PAGE_SIZE
    }

    /// The VM's memory now, in pages.
    pub fn pages(&self) -> u64 {
        self.ram_pages - self.given_count + self.populated.len() as u64
    }

    /// Pages of its RAM it gave back.
    pub fn given_pages(&self) -> u64 {
        self.given_count
    }

    /// Pages the balloon populated for it.
    pub fn populated_pages(&self) -> u64 {
        self.populated.len() as u64
    }

    /// The bitmap of pages given back (page `i` of its RAM is bit `i % 64` of word `i / 64`); empty
    /// when none was.
    pub fn given_words(&self) -> &[u64] {
        &self.given
    }

    fn is_given(&self, page: u64) -> bool {
        self.given
            .get((page / 64) as usize)
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// True if any page of `[offset, offset + len)` of its RAM (offsets from `GUEST_RAM_BASE`)
    /// was given back or is its shared code: the hypervisor must not touch that range for the
    /// VM (the frames of the first may be another VM's; the second is mapped from a copy that
    /// every VM of its image runs, and the frames behind it in its RAM are not what it sees).
    pub fn off_limits(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let first = offset / PAGE_SIZE;
        if first < self.code_pages {
            return true;
        }
        if self.given_count == 0 {
            return false;
        }
        let last = offset.saturating_add(len - 1) / PAGE_SIZE;
        (first..=last.min(self.ram_pages.saturating_sub(1))).any(|page| self.is_given(page))
    }

    /// True if the page at `gpa` of its window is one it gave back and was not given again.
    pub fn gave_page_at(&self, gpa: u64) -> bool {
        let Some(offset) = gpa.checked_sub(GUEST_RAM_BASE) else {
            return false;
        };
        let page_gpa = gpa & !(PAGE_SIZE - 1);
        offset / PAGE_SIZE < self.ram_pages
            && self.is_given(offset / PAGE_SIZE)
            && !self.populated.contains_key(&page_gpa)
    }

    /// The runs `(first page, pages)` of its RAM it still owns, for freeing that RAM.
    pub fn kept_runs(&self) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut start = None;
        for page in 0..self.ram_pages {
            match (self.is_given(page), start) {
                (false, None) => start = Some(page),
                (true, Some(first)) => {
                    runs.push((first, page - first));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(first) = start {
            runs.push((first, self.ram_pages - first));
        }
        runs
    }

    /// Forgets the populated pages and returns their frames (the VM stops or restarts: the
    /// caller unmaps them if the stage 2 lives on, and gives the frames to the credit).
    pub fn take_populated(&mut self) -> Vec<(u64, u64)> {
        core::mem::take(&mut self.populated).into_iter().collect()
    }

    fn mark_given(&mut self, page: u64) -> bool {
        let word = (page / 64) as usize;
        if self.given.is_empty() {
            let words = self.ram_pages.div_ceil(64) as usize;
            if self.given.try_reserve_exact(words).is_err() {
                return false;
            }
            self.given.resize(words, 0);
        }
        match self.given.get_mut(word) {
            Some(w) => {
                *w |= 1 << (page % 64);
                self.given_count += 1;
                true
            }
            None => false,
        }
    }

    /// BALLOON_RELEASE of `pages` (the call's array, see [`read_batch`]); `ram_pa` is the host
    /// address of the VM's RAM.
    pub fn release(
        &mut self,
        env: &mut impl BalloonEnv,
        ram_pa: u64,
        pages: &[u64],
    ) -> BatchResult {
        let floor = FLOOR_BYTES / PAGE_SIZE;
        each_page(pages, |gpa| self.release_one(env, ram_pa, gpa, floor))
    }

    fn release_one(
        &mut self,
        env: &mut impl BalloonEnv,
        ram_pa: u64,
        gpa: u64,
        floor: u64,
    ) -> Status {
        if !page_in_window(gpa) {
            return Status::InvalidArgument;
        }
        let populated = self.populated.get(&gpa).copied();
        let ram_page = (gpa - GUEST_RAM_BASE) / PAGE_SIZE;
        let own_ram = populated.is_none()
            && (self.code_pages..self.ram_pages).contains(&ram_page)
            && !self.is_given(ram_page);
        if populated.is_none() && !own_ram {
            return Status::InvalidArgument;
        }
        if self.pages() <= floor {
            return Status::Denied;
        }
        if own_ram && env.in_use(gpa) {
            return Status::Busy;
        }
        if let Some(pa) = populated {
            if !env.unmap(gpa) {
                return Status::NoSpace;
            }
            self.populated.remove(&gpa);
            env.give_frame(pa);
            return Status::Ok;
        }
        // Recorded first: a VM whose record cannot grow keeps its page.
        if !self.mark_given(ram_page) {
            return Status::NoSpace;
        }
        if !env.unmap(gpa) {
            self.unmark_given(ram_page);
            return Status::NoSpace;
        }
        env.give_ram_frame(ram_pa + ram_page * PAGE_SIZE);
        Status::Ok
    }

    fn unmark_given(&mut self, page: u64) {
        if let Some(w) = self.given.get_mut((page / 64) as usize) {
            *w &= !(1 << (page % 64));
            self.given_count -= 1;
        }
    }

    /// BALLOON_POPULATE of `pages` (the call's array, see [`read_batch`]).
    pub fn populate(&mut self, env: &mut impl BalloonEnv, pages: &[u64]) -> BatchResult {
        each_page(pages, |gpa| self.populate_one(env, gpa))
    }

    fn populate_one(&mut self, env: &mut impl BalloonEnv, gpa: u64) -> Status {
        if !page_in_window(gpa) || self.populated.contains_key(&gpa) {
            return Status::InvalidArgument;
        }
        let ram_page = (gpa - GUEST_RAM_BASE) / PAGE_SIZE;
        if ram_page < self.ram_pages && !self.is_given(ram_page) {
            return Status::InvalidArgument;
        }
        if env.heap_low() {
            return Status::NoSpace;
        }
        let Some(pa) = env.take_frame() else {
            return Status::NoSpace;
        };
        if !env.map(gpa, pa) {
            env.give_frame(pa);
            return Status::NoSpace;
        }
        self.populated.insert(gpa, pa);
        Status::Ok
    }
}

/// Runs `one` on each page in order until one is refused: that page's status and how many
/// were done before it.
fn each_page(pages: &[u64], mut one: impl FnMut(u64) -> Status) -> BatchResult {
    for (done, &gpa) in pages.iter().enumerate() {
        let status = one(gpa);
        if status != Status::Ok {
            return BatchResult {
                status,
                done: done as u64,
            };
        }
    }
    BatchResult {
        status: Status::Ok,
        done: pages.len() as u64,
    }
}

/// The array of a batch call of `count` pages, read once by `read(count)` (which answers
/// `None` for an array that is not 8-byte aligned in the caller's RAM), if the call's shape is
/// acceptable; `None` is the call's `InvalidArgument`.
pub fn read_batch(count: u64, read: impl FnOnce(usize) -> Option<Vec<u64>>) -> Option<Vec<u64>> {
    if count == 0 || count > MAX_BATCH {
        return None;
    }
    read(count as usize)
}

/// How many fresh frames to set aside (and zero outside the lock) for a BALLOON_POPULATE of
/// `count` pages when the credit is `credit`: what the batch can use at most, none for a count
/// the call refuses anyway.
pub fn populate_reserve(count: u64, credit: u64) -> u64 {
    if count == 0 || count > MAX_BATCH {
        0
    } else {
        count.min(credit)
    }
}

pub mod targets;

#[cfg(test)]
mod tests;
