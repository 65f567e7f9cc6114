//! GRANT_COPY's checks one VM at a time, so that the hypervisor can make each of them holding
//! only that VM's lock, and no lock other VMs' sharing calls need.
//!
//! An op touches up to three VMs: the caller (its op and status word, and an `Own` side's
//! bytes) and up to two granters. Each side is checked against one VM ([`CopyVm`]) on its own:
//! the caller's side against the caller, a grant side against its granter. The hypervisor keeps
//! what those checks need of each VM, its RAM, the pages it gave back to the balloon and where
//! its grant table is, in a [`CopyView`] under that VM's own lock; the model of the tests and
//! [`GrantTables`](super::GrantTables) check the same rules over their `GrantEnv`.
//!
//! The rules are `shared_abi::grant`'s table, checked "rule by rule over both sides": the first
//! broken rule decides, whichever side breaks it (`src` before `dst` for the same rule). Since
//! each rule looks at one side only, checking each side alone and keeping the refusal of the
//! earliest [`Rule`] gives the same status as checking rule by rule ([`check_op`]).
//!
//! Pins: each side pins its VM's RAM ([`CopyVm::pin`]) *before* it reads anything of it, under
//! the lock that checks it, and the pins are held until the bytes are copied (and the caller's
//! status word written). Whoever takes RAM away or revokes a grant changes what a check sees
//! first, then waits for the VM's pins (`pins`): a copy that pinned before the change is waited
//! for, one that pins after it sees the change.

use alloc::vec::Vec;

use shared_abi::grant::{
    entry_gpa, within_frame, CopyKind, CopyOp, CopyPtr, GrantEntry, ENTRY_SIZE,
};
use shared_abi::hypercall::Status;
use shared_abi::layout::{GUEST_RAM_BASE, PAGE_SIZE};

use super::{peer_index, Table, VmId};
use crate::balloon::VmBalloon;

/// The rules of a copy op, in the order the ABI checks them over both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// A grant side names a VM id, not the caller's (`InvalidArgument`).
    Peer,
    /// The granter has the ref in its table, PERMIT set, no unknown flag (`BadRef`).
    Entry,
    /// The entry names the caller (`Denied`).
    Named,
    /// A destination entry is writable (`ReadOnly`).
    Writable,
    /// The granted frame is the granter's RAM (`BadFrame`).
    Frame,
    /// The bytes lie in one frame; an `Own` side's frame is the caller's RAM
    /// (`InvalidArgument`).
    Range,
    /// The VM's RAM could not be pinned (a pin count at its limit, never in practice: `Busy`).
    Pin,
}

/// A side refused: the rule it broke and the op's status for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub rule: Rule,
    pub status: Status,
}

const fn refuse(rule: Rule, status: Status) -> Refusal {
    Refusal { rule, status }
}

/// One VM as a copy op's side check sees it (in the hypervisor: its [`CopyView`] under its
/// lock).
pub trait CopyVm {
    /// A pin on the VM's RAM (released when dropped).
    type Pin;
    /// What the copy uses to reach a checked range once the lock is dropped.
    type Addr;
    /// Pins the VM's RAM; `None` if it cannot (the op is `Busy`).
    fn pin(&self) -> Option<Self::Pin>;
    /// True iff `[gpa, gpa + len)` (`len >= 1`, no overflow) is the VM's RAM.
    fn in_ram(&self, gpa: u64, len: u64) -> bool;
    /// Atomic 64-bit load at `gpa`, 8-byte aligned, checked with `in_ram` first.
    fn read_u64(&self, gpa: u64) -> u64;
    /// Its grant table, if it registered one.
    fn table(&self) -> Option<Table>;
    /// `[gpa, gpa + len)` (checked) for the copy; `None` only if it is not the VM's RAM.
    fn address(&self, gpa: u64, len: u64) -> Option<Self::Addr>;
}

/// The VMs of a copy op, each lent to a closure under its own lock, one at a time.
pub trait CopyVms {
    type Pin;
    type Addr;
    /// Runs `f` on VM `vm` holding its lock; `None` for an id that names no VM.
    fn with_vm<R>(
        &mut self,
        vm: VmId,
        f: impl FnOnce(&dyn CopyVm<Pin = Self::Pin, Addr = Self::Addr>) -> R,
    ) -> Option<R>;
}

/// The two sides of an op (`[src, dst]`), checked and pinned, for the machine `V`.
pub type Sides<V> = [Claimed<<V as CopyVms>::Pin, <V as CopyVms>::Addr>; 2];

/// One side of an op, checked: the pin on its VM and where its bytes are.
pub struct Claimed<P, A> {
    pub pin: P,
    pub vm: VmId,
    pub gpa: u64,
    pub addr: A,
}

/// The rules for a grant side `side` of `caller`'s op against its granter `vm` (the side's
/// `Peer` rule is [`check_op`]'s): the GPA, in the granter, of the bytes.
pub fn check_grant<P, A>(
    vm: &dyn CopyVm<Pin = P, Addr = A>,
    caller: VmId,
    side: &CopyPtr,
    len: u16,
    dst: bool,
) -> Result<u64, Refusal> {
    let bad_ref = refuse(Rule::Entry, Status::BadRef);
    let table = vm.table().ok_or(bad_ref)?;
    if side.gref >= table.refs {
        return Err(bad_ref);
    }
    let gpa = entry_gpa(table.gpa, side.gref);
    if !vm.in_ram(gpa, ENTRY_SIZE) {
        return Err(bad_ref);
    }
    // Read once; the decision is taken on this copy.
    let entry = GrantEntry::from_u64(vm.read_u64(gpa));
    if !entry.permit() || entry.has_unknown_flags() {
        return Err(bad_ref);
    }
    if entry.peer != caller {
        return Err(refuse(Rule::Named, Status::Denied));
    }
    if dst && entry.readonly() {
        return Err(refuse(Rule::Writable, Status::ReadOnly));
    }
    if !vm.in_ram(entry.frame_gpa(), PAGE_SIZE) {
        return Err(refuse(Rule::Frame, Status::BadFrame));
    }
    if !within_frame(side.gpa_or_offset, len) {
        return Err(refuse(Rule::Range, Status::InvalidArgument));
    }
    Ok(entry.frame_gpa() + side.gpa_or_offset)
}

/// The rule for an `Own` side against the caller `vm`: the GPA of the bytes.
pub fn check_own<P, A>(
    vm: &dyn CopyVm<Pin = P, Addr = A>,
    side: &CopyPtr,
    len: u16,
) -> Result<u64, Refusal> {
    let gpa = side.gpa_or_offset;
    let frame = gpa - gpa % PAGE_SIZE;
    if !within_frame(gpa % PAGE_SIZE, len) || !vm.in_ram(frame, PAGE_SIZE) {
        return Err(refuse(Rule::Range, Status::InvalidArgument));
    }
    Ok(gpa)
}

/// Checks one side under its VM's lock: pin first (see the module documentation), then the
/// rules, then the address.
fn check_side<V: CopyVms>(
    vms: &mut V,
    caller: VmId,
    side: &CopyPtr,
    len: u16,
    dst: bool,
) -> Result<Claimed<V::Pin, V::Addr>, Refusal> {
    let vm = match side.kind {
        CopyKind::Grant => {
            peer_index(caller, side.granter).map_err(|status| refuse(Rule::Peer, status))?;
            side.granter
        }
        CopyKind::Own => caller,
    };
    let missing = match side.kind {
        CopyKind::Grant => refuse(Rule::Entry, Status::BadRef),
        CopyKind::Own => refuse(Rule::Range, Status::InvalidArgument),
    };
    vms.with_vm(vm, |view| {
        let pin = view.pin().ok_or(refuse(Rule::Pin, Status::Busy))?;
        let gpa = match side.kind {
            CopyKind::Grant => check_grant(view, caller, side, len, dst)?,
            CopyKind::Own => check_own(view, side, len)?,
        };
        let addr = view
            .address(gpa, u64::from(len).max(1))
            .ok_or(refuse(Rule::Range, Status::InvalidArgument))?;
        Ok(Claimed { pin, vm, gpa, addr })
    })
    .unwrap_or(Err(missing))
}

/// Checks `caller`'s op side by side, each under its VM's lock alone: the two sides, pinned
/// (`[src, dst]`), or the op's status. A refused op's pins are dropped before this returns.
pub fn check_op<V: CopyVms>(vms: &mut V, caller: VmId, op: &CopyOp) -> Result<Sides<V>, Status> {
    let src = check_side(vms, caller, &op.src, op.len, false);
    let dst = check_side(vms, caller, &op.dst, op.len, true);
    first_refusal(src, dst)
}

/// Both sides if both passed, else the status of the earliest rule broken (`a` first on a tie).
pub fn first_refusal<T>(a: Result<T, Refusal>, b: Result<T, Refusal>) -> Result<[T; 2], Status> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok([a, b]),
        (Err(a), Ok(_)) => Err(a.status),
        (Ok(_), Err(b)) => Err(b.status),
        (Err(a), Err(b)) => Err(if b.rule < a.rule { b.status } else { a.status }),
    }
}

/// A VM's RAM: host address and size, and how much of its start is its image's shared code
/// (mapped from the hypervisor's copy, so never a copy's side: see `hypervisor::mm::ram_map`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamExtent {
    pub pa: u64,
    pub bytes: u64,
    pub code_bytes: u64,
}

/// What GRANT_COPY's checks need of one VM, kept by the hypervisor under that VM's own lock:
/// its RAM while it runs, the pages of it it gave back to the balloon, and its grant table.
///
/// The hypervisor changes it holding the HV lock *and* the VM's lock: it opens it when an
/// incarnation is installed, closes it first thing when the VM's stop is completed (before any
/// of its RAM changes hands), copies the balloon's record after each release batch (before the
/// released frames are scrubbed), and the table after GRANT_TABLE_SETUP. A closed view has no
/// RAM and no table, so every check against it fails.
#[derive(Clone, Debug, Default)]
pub struct CopyView {
    ram: Option<RamExtent>,
    /// Bitmap over the RAM's pages: set for a page given back (empty: none).
    given: Vec<u64>,
    table: Option<Table>,
}

impl CopyView {
    /// A new incarnation runs in `ram`, nothing given back, no grant table yet.
    pub fn open(&mut self, ram: RamExtent) {
        self.ram = Some(ram);
        self.given.clear();
        self.table = None;
    }

    /// The VM stops: no RAM, no table.
    pub fn close(&mut self) {
        self.ram = None;
        self.given.clear();
        self.table = None;
    }

    pub fn ram(&self) -> Option<RamExtent> {
        self.ram
    }

    /// Takes the balloon's record of the pages given back (it only grows while the VM runs).
    /// False, and the view closed, if there was no memory to copy it: a copy then fails rather
    /// than touch a page that is not the VM's.
    pub fn set_given(&mut self, balloon: &VmBalloon) -> bool {
        let words = balloon.given_words();
        self.given.clear();
        if self.given.try_reserve_exact(words.len()).is_err() {
            self.close();
            return false;
        }
        self.given.extend_from_slice(words);
        true
    }

    pub fn set_table(&mut self, table: Option<Table>) {
        self.table = table;
    }

    pub fn table(&self) -> Option<Table> {
        self.table
    }

    fn is_given(&self, page: u64) -> bool {
        self.given
            .get((page / 64) as usize)
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// Host address of `[gpa, gpa + len)` if all of it is the VM's RAM now (`len >= 1`, no
    /// page of it given back, none of it its shared code).
    pub fn host_pa(&self, gpa: u64, len: u64) -> Option<u64> {
        let ram = self.ram?;
        let offset = gpa.checked_sub(GUEST_RAM_BASE)?;
        let end = offset.checked_add(len)?;
        if len == 0 || end > ram.bytes || offset < ram.code_bytes {
            return None;
        }
        if !self.given.is_empty() {
            let (first, last) = (offset / PAGE_SIZE, (end - 1) / PAGE_SIZE);
            if (first..=last).any(|page| self.is_given(page)) {
                return None;
            }
        }
        Some(ram.pa + offset)
    }
}

#[cfg(test)]
mod tests;
