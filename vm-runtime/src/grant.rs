//! The guest side of grants (see `shared_abi::grant` for the ABI): this VM's grant table, through
//! which it lets one named peer map or copy one of its pages, and the mappings of peers' pages
//! that this VM holds in its grant window.
//!
//! Ref 0 is never handed out, so a zero ref in a shared structure means "none".

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use shared_abi::grant::{
    CopyOp, GrantEntry, MapOp, UnmapOp, ENTRIES_PER_PAGE, GRANT_WINDOW_BASE, GRANT_WINDOW_SIZE,
    IN_USE, MAP_READONLY, MAX_BATCH, PERMIT, READONLY,
};
use shared_abi::hypercall::{
    Status, GRANT_COPY, GRANT_END, GRANT_MAP, GRANT_TABLE_SETUP, GRANT_UNMAP,
};
use shared_abi::layout::PAGE_SIZE;
use shared_abi::window::WindowRuns;
use spin::{Mutex, Once};

use crate::hypercall::{hvc, result};
use crate::page::Page;
use crate::shared::{ExclusiveRun, SharedMem};

/// This VM's registered grant table.
struct Table {
    entries: &'static [Page],
    /// Next ref to try when granting; refs are reused after `end`.
    next: u32,
}

static TABLE: Once<Mutex<Table>> = Once::new();

/// Separate free runs of the grant window remembered at once (merged runs number at most one more
/// than the live mappings' runs, and a back-end holds a few per front-end).
const WINDOW_FREE_RUNS: usize = 256;

/// Pages of the grant window handed out to mappings (a back-end maps a guest's buffer pool as
/// one contiguous run): first fit, and returned runs merge, so reconnects with changing pool
/// sizes do not use the window up.
static WINDOW: Mutex<WindowRuns<WINDOW_FREE_RUNS>> =
    Mutex::new(WindowRuns::new(GRANT_WINDOW_SIZE / PAGE_SIZE));

/// Allocates a grant table of `pages` pages and registers it (GRANT_TABLE_SETUP). Call once.
pub fn init(pages: u32) -> Result<(), Status> {
    if TABLE.get().is_some() {
        return Err(Status::Busy);
    }
    let entries = Page::leak_many(pages as usize);
    let gpa = entries.first().map_or(0, Page::gpa);
    result(hvc(GRANT_TABLE_SETUP, [gpa, u64::from(pages), 0, 0, 0, 0])[0])?;
    TABLE.call_once(|| Mutex::new(Table { entries, next: 1 }));
    Ok(())
}

fn entry(table: &Table, gref: u32) -> Option<&AtomicU64> {
    let page = table.entries.get((gref / ENTRIES_PER_PAGE) as usize)?;
    page.0.get((gref % ENTRIES_PER_PAGE) as usize)
}

/// Grants `peer` access to this VM's page at `page_gpa` (read-only if asked); returns the ref.
/// `NoSpace` when every ref is in use, `InvalidArgument` for an unaligned page or no table.
pub fn grant(peer: u16, page_gpa: u64, readonly: bool) -> Result<u32, Status> {
    if !page_gpa.is_multiple_of(PAGE_SIZE) {
        return Err(Status::InvalidArgument);
    }
    let table = TABLE.get().ok_or(Status::InvalidArgument)?;
    let mut table = table.lock();
    let refs = table.entries.len() as u32 * ENTRIES_PER_PAGE;
    let flags = PERMIT | if readonly { READONLY } else { 0 };
    let value = GrantEntry {
        flags,
        peer,
        frame: (page_gpa / PAGE_SIZE) as u32,
    }
    .to_u64();
    for step in 0..refs {
        let gref = (table.next + step) % refs;
        if gref == 0 {
            continue;
        }
        let slot = entry(&table, gref).ok_or(Status::InvalidArgument)?;
        // A free entry is all zero; the hypervisor never sets IN_USE on an entry without PERMIT.
        if slot
            .compare_exchange(0, value, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            table.next = gref + 1;
            return Ok(gref);
        }
    }
    Err(Status::NoSpace)
}

/// Grants `peer` access to every page of `run` (our own leaked pages) under consecutive refs
/// (a buffer pool is named by its first ref and a count): the first `writable` pages
/// read-write, the rest read-only. Returns the first ref and, when some pages are read-only,
/// those pages as an [`ExclusiveRun`] (only we can write them). All or nothing: `NoSpace` if
/// no run of that many free refs exists; `InvalidArgument` for memory not our own or
/// `writable` past the run.
pub fn grant_run(
    peer: u16,
    run: &SharedMem,
    writable: u32,
) -> Result<(u32, Option<ExclusiveRun>), Status> {
    let first_gpa = run.gpa();
    let pages = (run.len() as u64 / PAGE_SIZE) as u32;
    if !first_gpa.is_multiple_of(PAGE_SIZE) || pages == 0 || writable > pages {
        return Err(Status::InvalidArgument);
    }
    let exclusive = if writable < pages {
        Some(
            ExclusiveRun::tail_of(run, writable as usize * PAGE_SIZE as usize)
                .ok_or(Status::InvalidArgument)?,
        )
    } else {
        None
    };
    let table = TABLE.get().ok_or(Status::InvalidArgument)?;
    let table = table.lock();
    let refs = table.entries.len() as u32 * ENTRIES_PER_PAGE;
    let free = |gref: u32| entry(&table, gref).is_some_and(|e| e.load(Ordering::Acquire) == 0);
    // Ref 0 is never handed out. The table lock keeps other granters of this VM out; entries
    // are only ever set by us, so a free run stays free until we fill it.
    let mut first = 1;
    while pages < refs && first <= refs - pages {
        match (first..first + pages).find(|&r| !free(r)) {
            Some(busy) => first = busy + 1,
            None => {
                for i in 0..pages {
                    let value = GrantEntry {
                        flags: PERMIT | if i < writable { 0 } else { READONLY },
                        peer,
                        frame: (first_gpa / PAGE_SIZE) as u32 + i,
                    }
                    .to_u64();
                    if let Some(slot) = entry(&table, first + i) {
                        slot.store(value, Ordering::Release);
                    }
                }
                return Ok((first, exclusive));
            }
        }
    }
    Err(Status::NoSpace)
}

/// Revokes `gref` (GRANT_END): `Busy` while the peer still maps it. On success the entry is
/// free for reuse.
pub fn end(gref: u32) -> Result<(), Status> {
    let table = TABLE.get().ok_or(Status::InvalidArgument)?;
    result(hvc(GRANT_END, [u64::from(gref), 0, 0, 0, 0, 0])[0])?;
    let table = table.lock();
    if let Some(slot) = entry(&table, gref) {
        slot.store(0, Ordering::Release);
    }
    Ok(())
}

/// Whether the peer currently maps `gref` (the IN_USE bit the hypervisor maintains).
pub fn in_use(gref: u32) -> bool {
    TABLE.get().is_some_and(|t| {
        entry(&t.lock(), gref)
            .is_some_and(|e| GrantEntry::from_u64(e.load(Ordering::Acquire)).flags & IN_USE != 0)
    })
}

/// A peer's page mapped into this VM's grant window. Dropping it without [`Mapping::unmap`]
/// leaves the page mapped (and the window slot used) until the VM ends.
#[derive(Debug)]
pub struct Mapping {
    gpa: u64,
    readonly: bool,
    /// The page in our grant window, kept mapped until `unmap` consumes `self`.
    memory: SharedMem,
}

/// `pages` contiguous pages of the grant window; returns the GPA of the first.
fn take_window_run(pages: u64) -> Result<u64, Status> {
    let first = WINDOW.lock().take(pages).ok_or(Status::NoSpace)?;
    Ok(GRANT_WINDOW_BASE + first * PAGE_SIZE)
}

fn return_window_run(gpa: u64, pages: u64) {
    WINDOW
        .lock()
        .give_back((gpa - GRANT_WINDOW_BASE) / PAGE_SIZE, pages);
}

/// Maps `granter`'s ref `gref` into this VM (GRANT_MAP with one op).
pub fn map(granter: u16, gref: u32, readonly: bool) -> Result<Mapping, Status> {
    let dest = take_window_run(1)?;
    let Some(memory) = SharedMem::in_grant_window(dest, 1) else {
        return_window_run(dest, 1);
        return Err(Status::InvalidArgument);
    };
    let mut op = [MapOp {
        granter,
        flags: if readonly { MAP_READONLY } else { 0 },
        gref,
        dest_gpa: dest,
        status: 0,
    }];
    let result = map_raw(&mut op).and_then(|()| op_status(op[0].status));
    match result {
        Ok(()) => Ok(Mapping {
            gpa: dest,
            readonly,
            memory,
        }),
        Err(e) => {
            return_window_run(dest, 1);
            Err(e)
        }
    }
}

/// Maps `granter`'s refs `first_ref..first_ref + pages` as one contiguous run of our grant
/// window (GRANT_MAP in batches): the first `writable` read-write, the rest read-only (a
/// read-only grant mapped read-write is refused with `ReadOnly`). All or nothing: on any
/// failure the pages mapped so far are unmapped again and the first failing status is
/// returned.
pub fn map_run(
    granter: u16,
    first_ref: u32,
    pages: u32,
    writable: u32,
) -> Result<MappedRun, Status> {
    if pages == 0 || writable > pages || first_ref.checked_add(pages).is_none() {
        return Err(Status::InvalidArgument);
    }
    let base = take_window_run(u64::from(pages))?;
    let Some(memory) = SharedMem::in_grant_window(base, pages as usize) else {
        return_window_run(base, u64::from(pages));
        return Err(Status::InvalidArgument);
    };
    let mut mapped: Vec<u64> = Vec::new();
    let mut failure = None;
    let mut next = 0u32;
    while next < pages && failure.is_none() {
        let count = (pages - next).min(MAX_BATCH as u32);
        let mut ops: Vec<MapOp> = (next..next + count)
            .map(|i| MapOp {
                granter,
                flags: if i < writable { 0 } else { MAP_READONLY },
                gref: first_ref + i,
                dest_gpa: base + u64::from(i) * PAGE_SIZE,
                status: 0,
            })
            .collect();
        match map_raw(&mut ops) {
            Err(e) => failure = Some(e),
            Ok(()) => {
                for op in &ops {
                    match op_status(op.status) {
                        Ok(()) => mapped.push(op.dest_gpa),
                        Err(e) => {
                            failure.get_or_insert(e);
                        }
                    }
                }
            }
        }
        next += count;
    }
    match failure {
        None => Ok(MappedRun {
            gpa: base,
            pages,
            memory,
        }),
        Some(e) => {
            for gpa in mapped {
                let _ = unmap_raw(&mut [UnmapOp {
                    dest_gpa: gpa,
                    status: 0,
                }]);
            }
            return_window_run(base, u64::from(pages));
            Err(e)
        }
    }
}

/// The result one batch op's `status` word reports.
pub fn op_status(raw: i64) -> Result<(), Status> {
    result(raw as u64)
}

/// GRANT_MAP on caller-built ops (at most [`MAX_BATCH`]); each op's `status` is filled in. For
/// tests and batch users that choose their own destinations in the grant window.
pub fn map_raw(ops: &mut [MapOp]) -> Result<(), Status> {
    batch(GRANT_MAP, ops.as_mut_ptr() as u64, ops.len())
}

/// GRANT_UNMAP on caller-built ops.
pub fn unmap_raw(ops: &mut [UnmapOp]) -> Result<(), Status> {
    batch(GRANT_UNMAP, ops.as_mut_ptr() as u64, ops.len())
}

/// GRANT_COPY: the hypervisor copies for us (no mapping needed); each op's `status` is filled in.
pub fn copy(ops: &mut [CopyOp]) -> Result<(), Status> {
    // `CopyOp` has padding after `len`, which Rust leaves undefined and the hypervisor would see
    // as reserved bits: send the documented word encoding instead of the struct's bytes.
    let mut words: Vec<[u64; CopyOp::WORDS]> = ops.iter().map(CopyOp::to_words).collect();
    batch(GRANT_COPY, words.as_mut_ptr() as u64, words.len())?;
    for (op, w) in ops.iter_mut().zip(&words) {
        op.status = w[CopyOp::STATUS_WORD] as i64;
    }
    Ok(())
}

fn batch(id: u64, gpa: u64, count: usize) -> Result<(), Status> {
    if count as u64 > MAX_BATCH {
        return Err(Status::InvalidArgument);
    }
    // The asm in `hvc` is a compiler barrier and the pointer is exposed, so the status words the
    // hypervisor writes are seen by later reads.
    result(hvc(id, [gpa, count as u64, 0, 0, 0, 0])[0])
}

impl Mapping {
    /// Where the page is mapped in this VM.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The page as atomic words (the peer writes it concurrently). Storing through a
    /// read-only mapping is a stage-2 permission fault: the hypervisor kills this VM.
    pub fn words(&self) -> &[AtomicU64] {
        self.memory.words()
    }

    /// The page as shared memory for ring access. Stores through a read-only mapping kill
    /// this VM, as with [`Mapping::words`]. Users hold it only while they hold the mapping.
    pub fn memory(&self) -> SharedMem {
        self.memory
    }

    /// Unmaps the page (GRANT_UNMAP; the hypervisor invalidates the TLB entries for it).
    pub fn unmap(self) -> Result<(), Status> {
        let mut op = [UnmapOp {
            dest_gpa: self.gpa,
            status: 0,
        }];
        unmap_raw(&mut op)?;
        op_status(op[0].status)?;
        return_window_run(self.gpa, 1);
        Ok(())
    }
}

/// A peer's pages mapped as one contiguous run of our grant window ([`map_run`]); a store to
/// its read-only part is a stage-2 fault that stops this VM.
/// Dropping it without [`MappedRun::unmap`] leaves the pages mapped until the VM ends.
#[derive(Debug)]
pub struct MappedRun {
    gpa: u64,
    pages: u32,
    /// The run in our grant window, kept mapped until `unmap` consumes `self`.
    memory: SharedMem,
}

impl MappedRun {
    /// The run as shared memory for ring and buffer access. Users hold it only while they
    /// hold the run (the back-end drops both together).
    pub fn memory(&self) -> SharedMem {
        self.memory
    }

    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Unmaps every page (GRANT_UNMAP in batches) and gives the window back. Returns the first
    /// failure, after trying every page.
    pub fn unmap(self) -> Result<(), Status> {
        let mut first_error = None;
        let mut page = 0;
        while page < self.pages {
            let count = (self.pages - page).min(MAX_BATCH as u32);
            let mut ops: Vec<UnmapOp> = (page..page + count)
                .map(|i| UnmapOp {
                    dest_gpa: self.gpa + u64::from(i) * PAGE_SIZE,
                    status: 0,
                })
                .collect();
            let outcome = unmap_raw(&mut ops).and_then(|()| {
                ops.iter()
                    .map(|op| op_status(op.status))
                    .find(Result::is_err)
                    .unwrap_or(Ok(()))
            });
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
            page += count;
        }
        if self.pages > 0 {
            return_window_run(self.gpa, u64::from(self.pages));
        }
        first_error.map_or(Ok(()), Err)
    }
}
