//! Grant tables, hypervisor side: the rules of `shared_abi::grant` enforced, and the hypervisor's
//! own record of every grant mapping.
//!
//! This module owns, for every VM id `1..=MAX_VMS`: where its grant table is (GRANT_TABLE_SETUP),
//! which foreign frames it has mapped into its grant window and why (one [`Mapping`] per
//! destination IPA), how many foreign mappings exist of each of its refs, and which dead VMs'
//! RAM is still mapped by others ("zombie" RAM). It does not own memory: every access to guest RAM
//! and every stage-2 change goes through [`GrantEnv`], which the hypervisor implements over
//! physical memory and the tests over a `Vec` model. The ABI (entry and op formats, the rule →
//! status table) is `shared_abi::grant`; this file follows that table rule by rule, in order.
//!
//! # Use from the hypercall handler
//!
//! One [`GrantTables`] for the whole machine, used under the hypervisor lock:
//!
//! | hypercall          | call (x0 = the returned `Status`)                        |
//! |--------------------|-----------------------------------------------------------|
//! | GRANT_TABLE_SETUP  | [`GrantTables::setup`]`(env, caller, x1, x2)`             |
//! | GRANT_MAP          | [`GrantTables::map_batch`]`(env, caller, x1, x2)`         |
//! | GRANT_UNMAP        | [`GrantTables::unmap_batch`]`(env, caller, x1, x2).status`|
//! | GRANT_COPY         | [`GrantTables::copy_batch`]`(env, caller, x1, x2)`        |
//! | GRANT_END          | [`GrantTables::end`]`(env, caller, x1)`                   |
//! | VM stopped / reset | [`GrantTables::vm_died`]`(env, vm, Teardown::..)`         |
//!
//! Batch calls write each op's status word into the caller's array themselves (through the env)
//! and return `Ok` once every op was attempted, or the call-level error (bad count or array) with
//! no op touched. [`GrantTables::unmap_batch`] and [`GrantTables::vm_died`] also return the
//! [`RamRelease`]s: dead VMs whose RAM has just lost its last foreign mapping and may be freed.
//!
//! # Concurrency
//!
//! Everything here runs under the hypervisor lock, so the tables themselves see no races. Guest
//! memory does: other vCPUs of the caller and of the granter keep running. Hence each op is read
//! once into locals, each grant entry is read once per use and the decision is taken on that copy,
//! and IN_USE is set with a compare-exchange against exactly the value read (a granter that edits
//! the entry in between makes the map fail with `Busy` instead of mapping a frame it no longer
//! grants). After that, the [`Mapping`] record is the truth; the table is not consulted again for
//! an existing mapping.
//!
//! GRANT_COPY's rules are [`copy`]'s, checked one VM at a time ([`copy::check_op`]):
//! [`GrantTables::copy_batch`] runs them over its env, and the hypervisor runs them with no HV
//! lock, over each VM's [`copy::CopyView`] under that VM's own lock, the sides pinned ([`pins`])
//! and the bytes copied after the locks are dropped. So every other call here changes the
//! tables under the HV lock while copies run beside it; the views get what copies need
//! (the table's place, from [`GrantTables::table`]) under both locks. The only sanctioned
//! revocation (GRANT_END) clears PERMIT and then waits for the granter's pins
//! ([`GrantEnv::revoked`]), so once it returns, no copy checked against the old entry can still
//! write the frame. A granter that clears PERMIT by writing its table directly while a copy is
//! in flight races only against itself.
//!
//! # Decisions
//!
//! - **Same ref mapped twice.** The named peer may map one ref at several destination IPAs (Xen
//!   allows it too). The hypervisor counts foreign mappings per (granter, ref); IN_USE stays set
//!   until the count drops to zero. If the entry names another frame than the one already mapped
//!   (the granter edited an entry that was IN_USE), the map is `Busy`.
//! - **Stage-2 out of table memory.** `map_page` failing makes the op `NoSpace` and undoes the
//!   IN_USE it set.
//! - **Unmap order.** The page is unmapped (and the TLB invalidated by the env) *before* IN_USE is
//!   cleared, so the granter can never see "not in use" while a stale translation still exists.
//! - **VM death** ([`GrantTables::vm_died`]): (a) the dead VM's own mappings of others' frames are
//!   dropped: their granters' counts go down and IN_USE is cleared at zero (the granters are alive,
//!   so their tables are live memory). With [`Teardown::Kill`] the pages are not unmapped, because
//!   the caller destroys the whole stage-2 and its VMID is flushed before reuse; with
//!   [`Teardown::Reset`] the stage-2 lives on, so every grant page is unmapped first. (b) Peers'
//!   mappings of the dead VM's frames stay valid until the peers unmap them. The dead VM's table is
//!   forgotten at once (MAP/COPY of its refs is `BadRef` from then on), and its frames still mapped
//!   by others are counted as zombie RAM of that *incarnation*. [`Death::ram_free_now`] says
//!   whether no foreign mapping remains; otherwise the RAM must stay allocated until a
//!   [`RamRelease`] for that (vm, incarnation) comes back from a later unmap (or from the death of
//!   the last VM that mapped it).
//! - **Never write a dead VM's table.** After `vm_died(v)` nothing in this module reads or writes
//!   v's old RAM: its table record is gone, and each [`Mapping`] carries the granter's incarnation,
//!   so unmapping a frame of an earlier incarnation only updates the zombie count and never clears
//!   IN_USE. This holds even when the RAM is not yet freed, so the caller is free to reuse the RAM
//!   as soon as it is released, and a new incarnation's table at the same GPA is never touched on
//!   behalf of an old mapping.
//! - **Reset = death + new VM with the same id.** Call `vm_died(v, Teardown::Reset)` before the
//!   RAM is reloaded. The new incarnation starts with no table and no mappings. If
//!   `ram_free_now` is false, peers still map frames of the old RAM: the caller must not reload
//!   that RAM in place (the peers would see, and could write, the new incarnation's memory) —
//!   give the new incarnation fresh RAM and keep the old as zombie RAM, or delay the reset.
//!
//! # Environment contract
//!
//! See [`GrantEnv`]. In short: every address this module passes to the memory methods has been
//! checked with [`GrantEnv::in_ram`] for the same VM during the same call (under the lock), and is
//! 8-byte aligned for the word methods.

pub mod copy;
pub mod pins;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use shared_abi::grant::{
    entry_gpa, in_grant_window, CopyOp, GrantEntry, MapOp, UnmapOp, ENTRIES_PER_PAGE, ENTRY_SIZE,
    IN_USE, MAX_BATCH, MAX_MAPPINGS_PER_GUEST, MAX_TABLE_PAGES, PERMIT,
};
use shared_abi::hypercall::Status;
use shared_abi::layout::{MAX_VMS, PAGE_SIZE};

/// A VM id, `1..=MAX_VMS` (0 is never a VM).
pub type VmId = u16;

/// Index of `vm` in per-VM arrays, or `None` if it is not a VM id.
pub const fn vm_index(vm: VmId) -> Option<usize> {
    if vm >= 1 && vm as usize <= MAX_VMS {
        Some(vm as usize - 1)
    } else {
        None
    }
}

/// How many times a hypervisor-side compare-exchange on a guest entry is retried when the guest
/// keeps changing the entry. A guest doing that only hurts itself; the hypervisor must not spin.
const CAS_RETRIES: usize = 8;

/// `map_page` could not map the page (no memory for a stage-2 table). The op reports `NoSpace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFailed;

/// What the hypervisor provides: guest memory access and stage-2 changes.
///
/// Contract, for every method:
/// - `vm` is a VM id; `gpa`/`ipa` are guest-physical addresses of that VM.
/// - The memory methods ([`read_u64`](Self::read_u64), [`write_u64`](Self::write_u64),
///   [`compare_exchange_u64`](Self::compare_exchange_u64), [`copy`](Self::copy),
///   [`host_pa`](Self::host_pa)) are only called with ranges for which [`in_ram`](Self::in_ram)
///   returned true in the same call. Implementations should still stay memory safe if that were
///   violated (e.g. ignore the access and return 0), but they need not report it.
/// - The word methods get 8-byte aligned GPAs and must be single-copy atomic 64-bit accesses
///   (guest vCPUs run concurrently on other pCPUs); `compare_exchange_u64` must be a real atomic
///   compare-and-swap (SeqCst is fine).
/// - Nothing here may panic on any argument.
pub trait GrantEnv {
    /// True iff `vm` is a live VM, `len >= 1`, and `[gpa, gpa + len)` (without overflow) lies
    /// inside its RAM.
    fn in_ram(&self, vm: VmId, gpa: u64, len: u64) -> bool;

    /// Atomic 64-bit load from `vm`'s RAM.
    fn read_u64(&self, vm: VmId, gpa: u64) -> u64;

    /// Atomic 64-bit store into `vm`'s RAM (used only for op status words).
    fn write_u64(&mut self, vm: VmId, gpa: u64, value: u64);

    /// Atomic compare-and-swap on `vm`'s RAM: `Ok(previous)` if the word held `current` and now
    /// holds `new`, else `Err(actual)` and the word is unchanged.
    fn compare_exchange_u64(
        &mut self,
        vm: VmId,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<u64, u64>;

    /// Copies `len` bytes (`1..=4096`) from `(src_vm, src_gpa)` to `(dst_vm, dst_gpa)`. Each side
    /// lies inside one 4 KiB frame of its VM's RAM. The two ranges may overlap (same VM, same
    /// frame), so this must behave like `memmove`.
    fn copy(&mut self, dst_vm: VmId, dst_gpa: u64, src_vm: VmId, src_gpa: u64, len: u64);

    /// Host physical address of the 4 KiB frame at page-aligned `gpa` of `vm`'s RAM.
    fn host_pa(&self, vm: VmId, gpa: u64) -> u64;

    /// Maps the 4 KiB host frame `host_pa` at page-aligned `ipa` of `vm`'s stage-2, read-only if
    /// `readonly`, normal write-back memory. `ipa` is in the grant window and currently unmapped.
    fn map_page(
        &mut self,
        vm: VmId,
        ipa: u64,
        host_pa: u64,
        readonly: bool,
    ) -> Result<(), MapFailed>;

    /// Unmaps the page at `ipa` of `vm`'s stage-2 and invalidates it (TLBI IPAS2E1IS, DSB, TLBI
    /// VMALLE1IS, DSB) before returning: the caller relies on no translation surviving the call.
    fn unmap_page(&mut self, vm: VmId, ipa: u64);

    /// Unmaps the page at `ipa` of `vm`'s stage-2 but leaves the TLB invalidation to
    /// [`flush_unmapped`](Self::flush_unmapped), so that a teardown of many mappings pays for
    /// one invalidation instead of one each: until that call the translation may live on in a
    /// TLB, so nothing may treat the frame as unmapped (clear IN_USE, release RAM) before it.
    /// The default unmaps and invalidates at once.
    fn unmap_page_deferred(&mut self, vm: VmId, ipa: u64) {
        self.unmap_page(vm, ipa);
    }

    /// Invalidates every translation [`unmap_page_deferred`](Self::unmap_page_deferred) left
    /// for `vm`; none survives the call.
    fn flush_unmapped(&mut self, _vm: VmId) {}

    /// `vm` has just revoked a grant (GRANT_END cleared PERMIT): returns once no copy that read
    /// the entry before the revoke can still write `vm`'s RAM. An env whose [`copy`](Self::copy)
    /// finishes before it returns has nothing to wait for; the hypervisor's copies the bytes
    /// after dropping its lock and waits for their [`pins`] here.
    fn revoked(&mut self, vm: VmId);
}

/// What happens to a dying VM's stage-2, see [`GrantTables::vm_died`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Teardown {
    /// Power-off or kill: the caller destroys the stage-2, and the VMID is flushed before reuse,
    /// so grant pages are not unmapped one by one.
    Kill,
    /// Reset: the stage-2 is kept for the next incarnation, so grant pages are unmapped.
    Reset,
}

/// The RAM of `vm`'s incarnation `incarnation` (a dead one) has no foreign mapping left and may be
/// freed or reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRelease {
    pub vm: VmId,
    pub incarnation: u64,
}

/// Result of [`GrantTables::vm_died`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Death {
    /// The incarnation that died (the next one is `incarnation + 1`).
    pub incarnation: u64,
    /// No peer maps any frame of the dead VM: its RAM may be freed (or reloaded) now. If false,
    /// keep it until a [`RamRelease`] `{ vm, incarnation }` is returned.
    pub ram_free_now: bool,
    /// Other dead VMs whose last foreign mapping was one held by the VM that just died.
    pub released: Vec<RamRelease>,
}

/// Result of [`GrantTables::unmap_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmapResult {
    /// Call status for x0.
    pub status: Status,
    /// Dead VMs whose RAM has just lost its last foreign mapping: free it now.
    pub released: Vec<RamRelease>,
}

/// The hypervisor's record of one grant mapping (what the hypervisor mapped, independent of what
/// the granter's table says later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// IPA in the mapping VM's grant window.
    pub dest_gpa: u64,
    pub granter: VmId,
    /// Incarnation of the granter that granted it.
    pub granter_incarnation: u64,
    pub gref: u32,
    /// GPA of the frame in the granter's RAM.
    pub frame_gpa: u64,
    /// Host physical address of that frame.
    pub host_pa: u64,
    pub readonly: bool,
}

/// Where a VM's grant table is (GRANT_TABLE_SETUP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    pub gpa: u64,
    /// How many refs it holds.
    pub refs: u32,
}

/// Foreign mappings of one ref of the current incarnation.
#[derive(Clone, Copy, Debug)]
struct Lent {
    /// Entry frame number the mappings were made with.
    frame: u32,
    count: u32,
}

#[derive(Debug)]
struct VmGrants {
    incarnation: u64,
    /// Most mappings it may hold (see [`GrantTables::set_mapping_budget`]).
    budget: u32,
    table: Option<Table>,
    /// Mappings this VM holds of other VMs' frames, by destination IPA.
    maps: BTreeMap<u64, Mapping>,
    /// Foreign mappings of this incarnation's refs, by ref.
    lent: BTreeMap<u32, Lent>,
}

impl Default for VmGrants {
    fn default() -> Self {
        VmGrants {
            incarnation: 0,
            budget: MAX_MAPPINGS_PER_GUEST,
            table: None,
            maps: BTreeMap::new(),
            lent: BTreeMap::new(),
        }
    }
}

/// A dead incarnation whose frames are still mapped by others.
#[derive(Clone, Copy, Debug)]
struct Zombie {
    vm: VmId,
    incarnation: u64,
    mappings: usize,
}

/// Grant state of every VM. See the module documentation.
#[derive(Debug)]
pub struct GrantTables {
    vms: Vec<VmGrants>,
    zombies: Vec<Zombie>,
}

impl Default for GrantTables {
    fn default() -> Self {
        Self::new()
    }
}

/// `Ok(())` → `Status::Ok`.
fn status_of(result: Result<(), Status>) -> Status {
    match result {
        Ok(()) => Status::Ok,
        Err(status) => status,
    }
}

/// Index of `granter` if it may be a granter for `caller`: a VM id other than the caller.
fn peer_index(caller: VmId, granter: VmId) -> Result<usize, Status> {
    match vm_index(granter) {
        Some(index) if granter != caller => Ok(index),
        _ => Err(Status::InvalidArgument),
    }
}

/// Clears `bits` in the guest word at `(vm, gpa)` with bounded compare-exchange retries; false if
/// the guest kept changing the word.
fn clear_bits(env: &mut impl GrantEnv, vm: VmId, gpa: u64, bits: u64) -> bool {
    let mut current = env.read_u64(vm, gpa);
    for _ in 0..CAS_RETRIES {
        if current & bits == 0 {
            return true;
        }
        match env.compare_exchange_u64(vm, gpa, current, current & !bits) {
            Ok(_) => return true,
            Err(actual) => current = actual,
        }
    }
    false
}

/// The batch-level rule of every grant batch call: `count` in `1..=MAX_BATCH` ops of
/// `op_words` words each, 8-byte aligned, the whole array in `caller`'s RAM. A caller that runs
/// a batch one op at a time (to release its lock between ops) checks this first, so the batch
/// is refused as a whole exactly as [`run_batch`] would.
pub fn batch_array_ok(
    env: &impl GrantEnv,
    caller: VmId,
    ops_gpa: u64,
    count: u64,
    op_words: usize,
) -> bool {
    batch_array_ok_by(ops_gpa, count, op_words, |gpa, bytes| {
        env.in_ram(caller, gpa, bytes)
    })
}

/// [`batch_array_ok`] with the caller's RAM as `in_ram(gpa, bytes)` (the hypervisor's copy
/// path asks the caller's copy view).
pub fn batch_array_ok_by(
    ops_gpa: u64,
    count: u64,
    op_words: usize,
    in_ram: impl FnOnce(u64, u64) -> bool,
) -> bool {
    if count == 0 || count > MAX_BATCH || !ops_gpa.is_multiple_of(8) {
        return false;
    }
    // count <= MAX_BATCH, so the product cannot overflow; the sum can.
    let bytes = count * op_words as u64 * 8;
    ops_gpa.checked_add(bytes).is_some() && in_ram(ops_gpa, bytes)
}

/// Runs a batch: validates the array, then for each op reads its `W` words once (all but the
/// status word), runs `op`, and writes the status word.
fn run_batch<E: GrantEnv, const W: usize>(
    env: &mut E,
    caller: VmId,
    ops_gpa: u64,
    count: u64,
    status_word: usize,
    mut op: impl FnMut(&mut E, [u64; W]) -> Status,
) -> Status {
    let op_bytes = W as u64 * 8;
    if !batch_array_ok(env, caller, ops_gpa, count, W) {
        return Status::InvalidArgument;
    }
    for i in 0..count {
        let base = ops_gpa + i * op_bytes;
        let mut words = [0u64; W];
        for (j, word) in words.iter_mut().enumerate() {
            if j != status_word {
                *word = env.read_u64(caller, base + j as u64 * 8);
            }
        }
        let status = op(env, words);
        env.write_u64(caller, base + status_word as u64 * 8, status.as_u64());
    }
    Status::Ok
}

impl GrantTables {
    pub fn new() -> Self {
        GrantTables {
            vms: (0..MAX_VMS).map(|_| VmGrants::default()).collect(),
            zombies: Vec::new(),
        }
    }

    /// GRANT_TABLE_SETUP: registers (or replaces) `caller`'s table of `pages` pages at
    /// `table_gpa`. `Busy` while a peer maps one of the caller's refs.
    pub fn setup(
        &mut self,
        env: &impl GrantEnv,
        caller: VmId,
        table_gpa: u64,
        pages: u64,
    ) -> Status {
        let Some(ci) = vm_index(caller) else {
            return Status::InvalidArgument;
        };
        if !table_gpa.is_multiple_of(PAGE_SIZE)
            || pages == 0
            || pages > MAX_TABLE_PAGES as u64
            || table_gpa.checked_add(pages * PAGE_SIZE).is_none()
            || !env.in_ram(caller, table_gpa, pages * PAGE_SIZE)
        {
            return Status::InvalidArgument;
        }
        let vm = &mut self.vms[ci];
        // IN_USE bits live in the recorded table, so it may not move under a mapping.
        if !vm.lent.is_empty() {
            return Status::Busy;
        }
        vm.table = Some(Table {
            gpa: table_gpa,
            refs: pages as u32 * ENTRIES_PER_PAGE,
        });
        Status::Ok
    }

    /// GRANT_MAP: maps each [`MapOp`] of the array at `ops_gpa` into `caller`'s grant window.
    pub fn map_batch(
        &mut self,
        env: &mut impl GrantEnv,
        caller: VmId,
        ops_gpa: u64,
        count: u64,
    ) -> Status {
        if vm_index(caller).is_none() {
            return Status::InvalidArgument;
        }
        run_batch(
            env,
            caller,
            ops_gpa,
            count,
            MapOp::STATUS_WORD,
            |env, words| status_of(self.map_one(env, caller, words)),
        )
    }

    /// GRANT_UNMAP: removes each [`UnmapOp`]'s mapping from `caller`'s grant window.
    pub fn unmap_batch(
        &mut self,
        env: &mut impl GrantEnv,
        caller: VmId,
        ops_gpa: u64,
        count: u64,
    ) -> UnmapResult {
        let mut released = Vec::new();
        let status = if vm_index(caller).is_none() {
            Status::InvalidArgument
        } else {
            run_batch(
                env,
                caller,
                ops_gpa,
                count,
                UnmapOp::STATUS_WORD,
                |env, words| {
                    let [dest_gpa, _] = words;
                    status_of(self.unmap_one(env, caller, dest_gpa, &mut released))
                },
            )
        };
        UnmapResult { status, released }
    }

    /// GRANT_COPY: performs each [`CopyOp`] of the array at `ops_gpa` for `caller`.
    pub fn copy_batch(
        &mut self,
        env: &mut impl GrantEnv,
        caller: VmId,
        ops_gpa: u64,
        count: u64,
    ) -> Status {
        if vm_index(caller).is_none() {
            return Status::InvalidArgument;
        }
        run_batch(
            env,
            caller,
            ops_gpa,
            count,
            CopyOp::STATUS_WORD,
            |env, words| status_of(self.copy_one(env, caller, words)),
        )
    }

    /// GRANT_END: `caller` revokes its ref `gref` (clears PERMIT). `Busy` while a peer maps it
    /// (by the hypervisor's record, not the IN_USE bit), or if the caller keeps rewriting the
    /// entry so the compare-exchange cannot land.
    pub fn end(&mut self, env: &mut impl GrantEnv, caller: VmId, gref: u64) -> Status {
        let Some(ci) = vm_index(caller) else {
            return Status::InvalidArgument;
        };
        let vm = &self.vms[ci];
        let Some(table) = vm.table else {
            return Status::BadRef;
        };
        let Ok(gref) = u32::try_from(gref) else {
            return Status::BadRef;
        };
        if gref >= table.refs {
            return Status::BadRef;
        }
        if vm.lent.contains_key(&gref) {
            return Status::Busy;
        }
        let gpa = entry_gpa(table.gpa, gref);
        if !env.in_ram(caller, gpa, ENTRY_SIZE) {
            return Status::BadRef;
        }
        if clear_bits(env, caller, gpa, PERMIT as u64) {
            // A copy that checked the entry before the clear may still be writing: the revoke
            // returns only once it is done, so a revoked grant is never written afterwards.
            env.revoked(caller);
            Status::Ok
        } else {
            Status::Busy
        }
    }

    /// `vm` has stopped (killed, powered off, or about to be reset): see "VM death" in the module
    /// documentation. Call it before the VM's RAM is freed or reloaded and before its stage-2 is
    /// destroyed, once none of its vCPUs runs. Calling it for a VM id that holds nothing is
    /// harmless (it still starts a new incarnation).
    pub fn vm_died(&mut self, env: &mut impl GrantEnv, vm: VmId, teardown: Teardown) -> Death {
        let mut released = Vec::new();
        let Some(vi) = vm_index(vm) else {
            return Death {
                incarnation: 0,
                ram_free_now: true,
                released,
            };
        };
        // (a) Its own mappings of others' frames.
        let maps = core::mem::take(&mut self.vms[vi].maps);
        if teardown == Teardown::Reset {
            // The stage-2 survives: every grant page is unmapped, then one TLB invalidation
            // covers them all (a driver domain holds a thousand and more; one invalidation
            // each was most of its restart's teardown), and only then may a granter see
            // IN_USE clear or a dead granter's RAM be released.
            for &dest_gpa in maps.keys() {
                env.unmap_page_deferred(vm, dest_gpa);
            }
            env.flush_unmapped(vm);
        }
        for mapping in maps.values() {
            self.drop_use(env, mapping, &mut released);
        }
        // (b) Others' mappings of its frames: they stay, counted as zombie RAM.
        let dead = &mut self.vms[vi];
        let outstanding: usize = dead.lent.values().map(|lent| lent.count as usize).sum();
        let incarnation = dead.incarnation;
        dead.lent.clear();
        dead.table = None;
        dead.incarnation += 1;
        if outstanding > 0 {
            self.zombies.push(Zombie {
                vm,
                incarnation,
                mappings: outstanding,
            });
        }
        Death {
            incarnation,
            ram_free_now: outstanding == 0,
            released,
        }
    }

    /// Sets how many grant mappings `vm` may hold at once (by default
    /// [`MAX_MAPPINGS_PER_GUEST`]; a driver domain gets more). Set at boot, before it runs.
    pub fn set_mapping_budget(&mut self, vm: VmId, budget: u32) {
        if let Some(vi) = vm_index(vm) {
            self.vms[vi].budget = budget;
        }
    }

    /// The current incarnation of `vm` (0 at boot, +1 per [`vm_died`](Self::vm_died)).
    pub fn incarnation(&self, vm: VmId) -> Option<u64> {
        Some(self.vms[vm_index(vm)?].incarnation)
    }

    /// The grant mapping at `dest_gpa` of `vm`, if any.
    pub fn mapping(&self, vm: VmId, dest_gpa: u64) -> Option<Mapping> {
        self.vms[vm_index(vm)?].maps.get(&dest_gpa).copied()
    }

    /// How many grant mappings `vm` holds.
    pub fn mapping_count(&self, vm: VmId) -> usize {
        vm_index(vm).map_or(0, |vi| self.vms[vi].maps.len())
    }

    /// How many foreign mappings exist of the current incarnation's refs of `vm`.
    /// True if the page at `gpa` of `vm`'s RAM is a page of its grant table or a frame a peer
    /// maps through one of its refs: the balloon may not take it.
    pub fn page_in_use(&self, vm: VmId, gpa: u64) -> bool {
        let Some(v) = vm_index(vm).map(|vi| &self.vms[vi]) else {
            return false;
        };
        let page = gpa & !(PAGE_SIZE - 1);
        let in_table = v.table.is_some_and(|t| {
            let bytes = u64::from(t.refs) * ENTRY_SIZE;
            page >= t.gpa & !(PAGE_SIZE - 1) && page < t.gpa + bytes
        });
        in_table
            || v.lent
                .values()
                .any(|lent| u64::from(lent.frame) << 12 == page)
    }

    /// The guest frame numbers of `vm`'s frames that other VMs map now: one per ref that lends
    /// a frame, in no particular order (`mm::ram_map::ram_pages_of_frames` sorts them).
    pub fn lent_frames(&self, vm: VmId) -> Vec<u64> {
        vm_index(vm).map_or_else(Vec::new, |vi| {
            self.vms[vi]
                .lent
                .values()
                .map(|lent| u64::from(lent.frame))
                .collect()
        })
    }

    pub fn lent_count(&self, vm: VmId) -> usize {
        vm_index(vm).map_or(0, |vi| {
            self.vms[vi]
                .lent
                .values()
                .map(|lent| lent.count as usize)
                .sum()
        })
    }

    /// Dead incarnations whose RAM is still mapped by others, with their mapping counts.
    pub fn zombies(&self) -> impl Iterator<Item = (RamRelease, usize)> + '_ {
        self.zombies.iter().map(|z| {
            (
                RamRelease {
                    vm: z.vm,
                    incarnation: z.incarnation,
                },
                z.mappings,
            )
        })
    }

    /// Reads `granter`'s entry for `gref`, once. `BadRef` if it has no table or the ref is beyond
    /// it. Returns the entry's GPA and raw value.
    fn read_entry(
        &self,
        env: &impl GrantEnv,
        granter: VmId,
        gi: usize,
        gref: u32,
    ) -> Result<(u64, u64), Status> {
        let table = self.vms[gi].table.ok_or(Status::BadRef)?;
        if gref >= table.refs {
            return Err(Status::BadRef);
        }
        let gpa = entry_gpa(table.gpa, gref);
        // Checked at setup and RAM never shrinks under a live VM; checked again because the env
        // contract asks for it on every access.
        if !env.in_ram(granter, gpa, ENTRY_SIZE) {
            return Err(Status::BadRef);
        }
        Ok((gpa, env.read_u64(granter, gpa)))
    }

    fn map_one(
        &mut self,
        env: &mut impl GrantEnv,
        caller: VmId,
        words: [u64; MapOp::WORDS],
    ) -> Result<(), Status> {
        let ci = vm_index(caller).ok_or(Status::InvalidArgument)?;
        let op = MapOp::from_words(words)?;
        let gi = peer_index(caller, op.granter)?;
        if !in_grant_window(op.dest_gpa) {
            return Err(Status::InvalidArgument);
        }
        if self.vms[ci].maps.contains_key(&op.dest_gpa) {
            return Err(Status::Busy);
        }
        if self.vms[ci].maps.len() >= self.vms[ci].budget as usize {
            return Err(Status::NoSpace);
        }
        let (entry_gpa, raw) = self.read_entry(env, op.granter, gi, op.gref)?;
        let entry = GrantEntry::from_u64(raw);
        if !entry.permit() || entry.has_unknown_flags() {
            return Err(Status::BadRef);
        }
        if entry.peer != caller {
            return Err(Status::Denied);
        }
        if entry.readonly() && !op.readonly() {
            return Err(Status::ReadOnly);
        }
        let frame_gpa = entry.frame_gpa();
        if !env.in_ram(op.granter, frame_gpa, PAGE_SIZE) {
            return Err(Status::BadFrame);
        }
        let already_lent = self.vms[gi].lent.get(&op.gref).copied();
        if already_lent.is_some_and(|lent| lent.frame != entry.frame) {
            return Err(Status::Busy);
        }
        // Only map if the entry still holds exactly what was checked.
        let in_use = IN_USE as u64;
        if env
            .compare_exchange_u64(op.granter, entry_gpa, raw, raw | in_use)
            .is_err()
        {
            return Err(Status::Busy);
        }
        let host_pa = env.host_pa(op.granter, frame_gpa);
        let readonly = op.readonly() || entry.readonly();
        if env
            .map_page(caller, op.dest_gpa, host_pa, readonly)
            .is_err()
        {
            if already_lent.is_none() {
                // Nobody else maps it: undo our IN_USE (best effort, see clear_bits).
                clear_bits(env, op.granter, entry_gpa, in_use);
            }
            return Err(Status::NoSpace);
        }
        let granter = &mut self.vms[gi];
        let granter_incarnation = granter.incarnation;
        granter
            .lent
            .entry(op.gref)
            .and_modify(|lent| lent.count += 1)
            .or_insert(Lent {
                frame: entry.frame,
                count: 1,
            });
        self.vms[ci].maps.insert(
            op.dest_gpa,
            Mapping {
                dest_gpa: op.dest_gpa,
                granter: op.granter,
                granter_incarnation,
                gref: op.gref,
                frame_gpa,
                host_pa,
                readonly,
            },
        );
        Ok(())
    }

    fn unmap_one(
        &mut self,
        env: &mut impl GrantEnv,
        caller: VmId,
        dest_gpa: u64,
        released: &mut Vec<RamRelease>,
    ) -> Result<(), Status> {
        let ci = vm_index(caller).ok_or(Status::InvalidArgument)?;
        if !dest_gpa.is_multiple_of(PAGE_SIZE) {
            return Err(Status::InvalidArgument);
        }
        let mapping = self.vms[ci]
            .maps
            .remove(&dest_gpa)
            .ok_or(Status::NotMapped)?;
        // First the page and its TLB entries, then IN_USE: the granter must never see the ref
        // free while the peer can still reach the frame.
        env.unmap_page(caller, dest_gpa);
        self.drop_use(env, &mapping, released);
        Ok(())
    }

    /// Forgets one foreign use of `mapping`'s frame (the page is already unreachable for the
    /// mapper): the granter's count goes down and IN_USE is cleared at zero, or, if the granter
    /// incarnation is dead, the zombie count goes down and the RAM is released at zero.
    fn drop_use(
        &mut self,
        env: &mut impl GrantEnv,
        mapping: &Mapping,
        released: &mut Vec<RamRelease>,
    ) {
        let Some(gi) = vm_index(mapping.granter) else {
            return;
        };
        let granter = &mut self.vms[gi];
        if granter.incarnation == mapping.granter_incarnation {
            let Some(lent) = granter.lent.get_mut(&mapping.gref) else {
                return;
            };
            lent.count = lent.count.saturating_sub(1);
            if lent.count > 0 {
                return;
            }
            granter.lent.remove(&mapping.gref);
            // The table cannot have moved: setup is Busy while a ref is lent, and death changes
            // the incarnation. A live granter's table is live memory.
            if let Some(table) = granter.table {
                let gpa = entry_gpa(table.gpa, mapping.gref);
                if env.in_ram(mapping.granter, gpa, ENTRY_SIZE) {
                    // If the granter keeps rewriting an entry it must leave alone, IN_USE may
                    // stay set: its own problem, and harmless to everyone else.
                    clear_bits(env, mapping.granter, gpa, IN_USE as u64);
                }
            }
        } else {
            // A dead incarnation: never touch its RAM, only count.
            let Some(pos) = self.zombies.iter().position(|z| {
                z.vm == mapping.granter && z.incarnation == mapping.granter_incarnation
            }) else {
                return;
            };
            let zombie = &mut self.zombies[pos];
            zombie.mappings = zombie.mappings.saturating_sub(1);
            if zombie.mappings == 0 {
                self.zombies.swap_remove(pos);
                released.push(RamRelease {
                    vm: mapping.granter,
                    incarnation: mapping.granter_incarnation,
                });
            }
        }
    }

    fn copy_one(
        &self,
        env: &mut impl GrantEnv,
        caller: VmId,
        words: [u64; CopyOp::WORDS],
    ) -> Result<(), Status> {
        let op = CopyOp::from_words(words)?;
        let [src, dst] = copy::check_op(
            &mut EnvVms {
                env: &*env,
                tables: self,
            },
            caller,
            &op,
        )?;
        if op.len > 0 {
            env.copy(dst.vm, dst.gpa, src.vm, src.gpa, u64::from(op.len));
        }
        Ok(())
    }

    /// `vm`'s grant table, if it registered one (for the hypervisor's per-VM copy view).
    pub fn table(&self, vm: VmId) -> Option<Table> {
        self.vms[vm_index(vm)?].table
    }
}

/// The VMs of a copy op as [`GrantTables`] and its env see them (no locks: the caller holds
/// whatever covers the whole machine).
struct EnvVms<'a, E> {
    env: &'a E,
    tables: &'a GrantTables,
}

/// One VM through the env.
struct EnvVm<'a, E> {
    env: &'a E,
    vm: VmId,
    table: Option<Table>,
}

impl<E: GrantEnv> copy::CopyVm for EnvVm<'_, E> {
    type Pin = ();
    type Addr = ();
    fn pin(&self) -> Option<()> {
        Some(())
    }
    fn in_ram(&self, gpa: u64, len: u64) -> bool {
        self.env.in_ram(self.vm, gpa, len)
    }
    fn read_u64(&self, gpa: u64) -> u64 {
        self.env.read_u64(self.vm, gpa)
    }
    fn table(&self) -> Option<Table> {
        self.table
    }
    fn address(&self, gpa: u64, len: u64) -> Option<()> {
        self.env.in_ram(self.vm, gpa, len).then_some(())
    }
}

impl<E: GrantEnv> copy::CopyVms for EnvVms<'_, E> {
    type Pin = ();
    type Addr = ();
    fn with_vm<R>(
        &mut self,
        vm: VmId,
        f: impl FnOnce(&dyn copy::CopyVm<Pin = (), Addr = ()>) -> R,
    ) -> Option<R> {
        let vi = vm_index(vm)?;
        Some(f(&EnvVm {
            env: self.env,
            vm,
            table: self.tables.vms[vi].table,
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests;
