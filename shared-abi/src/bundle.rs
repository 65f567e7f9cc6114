//! Boot bundle: the one file (loaded by QEMU as `-initrd`) that carries the topology and every VM
//! image, and its parser ([`Bundle::parse`], no allocation); the host's builder is
//! [`builder::build`] (feature `std`). Both go through [`crate::wire`].
//!
//! The bundle is untrusted input: `parse` validates every field, range and cross-reference before
//! returning, so the hypervisor can use a [`Bundle`] without further checks. That includes the
//! connections between VMs: each guest may name the driver domain that serves it (its back-end),
//! and [`Bundle::peers_of`] turns those links into the per-VM peer set the hypervisor needs. A
//! driver domain may also own one PCI function passed through to it (the NIC, behind the SMMU).
//!
//! # Format, version 3
//!
//! Version 2 added the back-end field of the VM entry (offset 34; the kind shrank from 4 to 2
//! bytes to make room). Version 3 adds the passthrough PCI function: the vCPU count shrank from
//! 4 to 2 bytes (it is at most [`MAX_VCPUS_PER_VM`]) to hold the function's routing ID at offset
//! 38, and the image index from 4 to 2 bytes (at most [`MAX_VMS`] images) to hold a flags word
//! at offset 50, so the entry stays 64 bytes. Older versions are refused as an unknown version
//! rather than read with defaults: a version 2 bundle's vCPU count would be read as a vCPU
//! count plus a passthrough function, and a version 1 bundle would boot with every guest
//! disconnected.
//!
//! All integers are little-endian. Offsets are absolute byte offsets from the start of the file,
//! except settings offsets, which are relative to the start of the string area.
//!
//! Header (72 bytes, at offset 0):
//!
//! | offset | size | field                                                               |
//! |-------:|-----:|---------------------------------------------------------------------|
//! |      0 |    8 | magic `b"SLUICEBN"`                                                 |
//! |      8 |    4 | format version, `3`                                                 |
//! |     12 |    4 | header size, `72`                                                   |
//! |     16 |    8 | total size of the bundle in bytes (the file may be padded past it) |
//! |     24 |    8 | 64-bit FNV-1a of bytes `[header size, total size)`                  |
//! |     32 |    4 | VM count, `1..=MAX_VMS`                                             |
//! |     36 |    4 | image count, `0..=MAX_VMS`                                          |
//! |     40 |    8 | offset of the VM table (VM count entries of 64 bytes)               |
//! |     48 |    8 | offset of the image table (image count entries of 16 bytes)         |
//! |     56 |    8 | offset of the string area                                           |
//! |     64 |    8 | length of the string area                                           |
//!
//! VM entry (64 bytes; VM id = entry index + 1, because id 0 is the hypervisor):
//!
//! | offset | size | field                                                               |
//! |-------:|-----:|---------------------------------------------------------------------|
//! |      0 |   32 | name, `[a-z0-9-]{1,31}`, NUL padded (so always NUL terminated)     |
//! |     32 |    2 | kind: `1` guest, `2` driver domain                                  |
//! |     34 |    2 | back-end VM id, `0` = none (see below)                              |
//! |     36 |    2 | vCPU count, `1..=MAX_VCPUS_PER_VM`                                  |
//! |     38 |    2 | passthrough PCI function's routing ID (see below), else `0`         |
//! |     40 |    8 | RAM bytes, multiple of `BLOCK_SIZE`, in `MIN_VM_RAM..=MAX_VM_RAM`   |
//! |     48 |    2 | image index into the image table                                    |
//! |     50 |    2 | flags: bit 0 `PASSTHROUGH` (offset 38 is valid), bit 1 `EMULATED_NIC` (see below); other bits `0` |
//! |     52 |    4 | settings length, `<= MAX_SETTINGS_LEN`                              |
//! |     56 |    8 | settings offset within the string area (UTF-8 `key=value` lines)   |
//!
//! Image entry (16 bytes): offset `u64` at 0, length `u64` at 8. An image is a raw binary loaded
//! at [`GUEST_RAM_BASE`](crate::layout::GUEST_RAM_BASE) and entered at its first byte; it must leave the last page of RAM free
//! for the start-info page. VMs running the same image share one entry. An image may start with
//! the header of [`crate::image`], which names its read-only part; a header that names a part the
//! hypervisor cannot share safely is refused. (The part lies inside the image rounded up to a
//! page, so it never reaches the start-info page.)
//!
//! Back-end: a guest may name the driver domain it connects to (as a front-end) by that VM's id.
//! A non-zero back-end id must be `1..=VM count`, must not be the entry's own id, and must name a
//! driver domain; a driver domain's back-end id must be 0 (driver domains serve, they are not
//! served). A driver domain may serve any number of guests.
//!
//! Passthrough: with flag `PASSTHROUGH` set, the VM owns the PCI function whose routing ID,
//! `bus << 8 | device << 3 | function`, is at offset 38 (so every `u16` is a valid function:
//! device `<= 31`, function `<= 7`; see [`Bdf`]). Only a driver domain may own one; a function is owned by at most one VM; `00:00.0`,
//! the host bridge, is never passed. With the flag clear, offset 38 must be 0, so a stray value
//! is reported instead of ignored; unknown flag bits are refused the same way.
//!
//! The VM table, the image table, the string area and every image must lie inside
//! `[header size, total size)` and must not overlap one another (settings may share bytes of the
//! string area). Bytes between regions are padding and are only covered by the checksum.

use core::fmt;

use thiserror::Error;

use crate::layout::{
    BLOCK_SIZE, MAX_SETTINGS_LEN, MAX_VCPUS_PER_VM, MAX_VMS, MAX_VM_NAME_LEN, MAX_VM_RAM,
    MIN_VM_RAM, PAGE_SIZE,
};
pub use crate::pci::Bdf;
use crate::wire::{Format, Reader, WireError, HEADER_LEN};

#[cfg(any(test, feature = "std"))]
pub mod builder;

pub const MAGIC: [u8; 8] = *b"SLUICEBN";
pub const VERSION: u32 = 3;

pub const HEADER_SIZE: usize = 72;
pub const VM_ENTRY_SIZE: usize = 64;
pub const IMAGE_ENTRY_SIZE: usize = 16;

/// The shared header check: magic, version, and at least a whole header.
pub const FORMAT: Format = Format {
    name: "bundle",
    magic: MAGIC,
    version: VERSION,
    min_len: HEADER_SIZE,
};

// The fields in the order the parser reads them (and the builder writes them) fill the header
// and the entries exactly, as the tables above say.
const _: () = assert!(
    HEADER_LEN
        + size_of::<u32>()
        + 2 * size_of::<u64>()
        + 2 * size_of::<u32>()
        + 4 * size_of::<u64>()
        == HEADER_SIZE
);
const _: () = assert!(
    NAME_FIELD_LEN
        + 4 * size_of::<u16>()
        + size_of::<u64>()
        + 2 * size_of::<u16>()
        + size_of::<u32>()
        + size_of::<u64>()
        == VM_ENTRY_SIZE
);
const _: () = assert!(2 * size_of::<u64>() == IMAGE_ENTRY_SIZE);
/// VM entry flag: the entry's passthrough field (offset 38) names a PCI function it owns.
pub const VM_FLAG_PASSTHROUGH: u16 = 1 << 0;
/// VM entry flag: this guest's NIC is the emulated one (registers trapped and forwarded to its
/// back-end, see [`crate::ioreq`]) instead of a para-virtual front-end. Only a guest with a
/// back-end may set it.
pub const VM_FLAG_EMULATED_NIC: u16 = 1 << 1;
/// Every VM entry flag this version defines; any other bit is refused.
pub const VM_FLAGS_KNOWN: u16 = VM_FLAG_PASSTHROUGH | VM_FLAG_EMULATED_NIC;
/// One byte more than the longest name, so a stored name is always NUL terminated.
pub const NAME_FIELD_LEN: usize = MAX_VM_NAME_LEN + 1;
/// Refuse bundles larger than this before hashing them: a corrupt size field must not make the
/// hypervisor walk gigabytes of whatever happens to follow the initrd.
pub const MAX_BUNDLE_SIZE: u64 = 512 * 1024 * 1024;

/// 64-bit FNV-1a. Not cryptographic: it catches corruption, not tampering.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmKind {
    Guest,
    DriverDomain,
}

impl VmKind {
    /// Zero is deliberately not a kind, so a zero-filled entry is rejected.
    pub const fn code(self) -> u32 {
        match self {
            VmKind::Guest => 1,
            VmKind::DriverDomain => 2,
        }
    }

    pub const fn from_code(code: u32) -> Option<VmKind> {
        match code {
            1 => Some(VmKind::Guest),
            2 => Some(VmKind::DriverDomain),
            _ => None,
        }
    }

    /// Most grant mappings a VM of this kind may hold at a time.
    pub const fn mapping_budget(self) -> u32 {
        match self {
            VmKind::Guest => crate::grant::MAX_MAPPINGS_PER_GUEST,
            VmKind::DriverDomain => crate::grant::MAX_MAPPINGS_PER_DRIVER_DOMAIN,
        }
    }

    /// The spelling used in topology files and log lines.
    pub const fn as_str(self) -> &'static str {
        match self {
            VmKind::Guest => "guest",
            VmKind::DriverDomain => "driver-domain",
        }
    }
}

/// One VM as described by a validated bundle.
#[derive(Clone, Copy, Debug)]
pub struct VmSpec<'a> {
    /// 1-based: entry index + 1; 0 is the hypervisor.
    pub id: u16,
    pub name: &'a str,
    pub kind: VmKind,
    pub vcpus: u32,
    pub ram_bytes: u64,
    pub image: &'a [u8],
    /// The image's read-only part ([`crate::image`]): this many bytes from its start are mapped
    /// read-only from the hypervisor's one copy of them; `0` when the image has no header.
    /// Validated: page aligned, inside the image rounded up to a page.
    pub code_bytes: u64,
    pub settings: &'a str,
    /// Id of the driver domain this guest connects to as a front-end; always `None` for a driver
    /// domain. Validated: names another VM of the bundle, and that VM is a driver domain.
    pub backend: Option<u16>,
    /// The PCI function passed through to this VM. Validated: only a driver domain has one, no
    /// two VMs share one, and it is never the host bridge (`00:00.0`).
    pub passthrough: Option<Bdf>,
    /// The guest's NIC is emulated: its back-end serves the device model (see [`crate::ioreq`]).
    /// Validated: only a guest with a back-end.
    pub emulated_nic: bool,
}

/// Why a VM name is unacceptable. Shared by the bundle, the start-info page and the topology so
/// the three cannot disagree on what a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum NameProblem {
    #[error("name is empty")]
    Empty,
    #[error("name is longer than {MAX_VM_NAME_LEN} bytes")]
    TooLong,
    #[error("name is not valid UTF-8")]
    NotUtf8,
    /// Contains a character outside `[a-z0-9-]`.
    #[error("name may only contain lowercase letters, digits and '-'")]
    InvalidChar,
    /// Non-zero bytes after the terminating NUL of a stored name.
    #[error("name field has bytes after its NUL terminator")]
    BadPadding,
}

/// Checks a VM name against the rules every component enforces: `[a-z0-9-]{1,31}`.
pub fn check_vm_name(name: &str) -> Result<(), NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if name.len() > MAX_VM_NAME_LEN {
        return Err(NameProblem::TooLong);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(NameProblem::InvalidChar);
    }
    Ok(())
}

/// Decodes a NUL-padded name field (bundle VM entry or start-info page).
pub(crate) fn decode_name_field(field: &[u8]) -> Result<&str, NameProblem> {
    let Some(nul) = field.iter().position(|&b| b == 0) else {
        return Err(NameProblem::TooLong);
    };
    let (name, padding) = field.split_at(nul);
    if padding.iter().any(|&b| b != 0) {
        return Err(NameProblem::BadPadding);
    }
    let name = core::str::from_utf8(name).map_err(|_| NameProblem::NotUtf8)?;
    check_vm_name(name)?;
    Ok(name)
}

/// Encodes `name` into a NUL-padded field. Only length is checked here: anything else wrong with
/// the name is the reader's job to reject, which keeps one source of truth for the rules.
pub(crate) fn encode_name_field(name: &str) -> Result<[u8; NAME_FIELD_LEN], NameProblem> {
    if name.len() > MAX_VM_NAME_LEN {
        return Err(NameProblem::TooLong);
    }
    let mut field = [0u8; NAME_FIELD_LEN];
    for (dst, &src) in field.iter_mut().zip(name.as_bytes()) {
        *dst = src;
    }
    Ok(field)
}

/// A part of the bundle, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    VmTable,
    ImageTable,
    StringArea,
    Image(usize),
    /// Settings of the VM entry with this index.
    Settings(usize),
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Region::VmTable => f.write_str("VM table"),
            Region::ImageTable => f.write_str("image table"),
            Region::StringArea => f.write_str("string area"),
            Region::Image(i) => write!(f, "image {i}"),
            Region::Settings(vm) => write!(f, "settings of VM entry {vm}"),
        }
    }
}

/// Everything [`Bundle::parse`] (and [`builder::build`]) can reject. `vm` fields are 0-based VM
/// table indices (the VM id is one more).
#[derive(Debug, PartialEq, Eq, Clone, Copy, Error)]
pub enum BundleError {
    /// Shorter than the header, bad magic or unknown version (the header checks every format
    /// shares).
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("bundle header size is {found}, version {VERSION} headers are {HEADER_SIZE} bytes")]
    BadHeaderSize { found: u32 },
    #[error("bundle header says the bundle is {claimed} bytes, smaller than the header itself")]
    TotalSizeTooSmall { claimed: u64 },
    #[error("bundle header says {claimed} bytes, more than the {MAX_BUNDLE_SIZE}-byte limit")]
    TooLarge { claimed: u64 },
    #[error("bundle truncated: header says {claimed} bytes, only {present} present")]
    Truncated { claimed: u64, present: usize },
    #[error("bundle corrupted: checksum is {computed:#018x}, header says {stored:#018x}")]
    ChecksumMismatch { stored: u64, computed: u64 },
    #[error("bundle describes no VMs")]
    NoVms,
    #[error("bundle describes {count} VMs, at most {MAX_VMS} are supported")]
    TooManyVms { count: usize },
    #[error("bundle holds {count} images, at most {MAX_VMS} are supported")]
    TooManyImages { count: usize },
    #[error("bundle {region} ({len} bytes at offset {offset}) lies outside the bundle")]
    OutOfBounds {
        region: Region,
        offset: u64,
        len: u64,
    },
    #[error("bundle {first} overlaps {second}")]
    Overlap { first: Region, second: Region },
    #[error("bundle image {image} is empty")]
    EmptyImage { image: usize },
    /// Its header ([`crate::image`]) names a read-only part that cannot be shared safely.
    #[error("bundle image {image}: {problem}")]
    BadImageHeader {
        image: usize,
        problem: crate::image::ImageHeaderError,
    },
    #[error("VM entry {vm}: {problem}")]
    BadName { vm: usize, problem: NameProblem },
    #[error("VM entries {first} and {second} have the same name; names must be unique")]
    DuplicateName { first: usize, second: usize },
    #[error("VM entry {vm}: unknown kind {code} (1 = guest, 2 = driver domain)")]
    UnknownKind { vm: usize, code: u32 },
    #[error("VM entry {vm}: {vcpus} vCPUs, must be 1..={MAX_VCPUS_PER_VM}")]
    BadVcpus { vm: usize, vcpus: u32 },
    #[error("VM entry {vm}: RAM of {ram_bytes} bytes is not a multiple of {BLOCK_SIZE} bytes")]
    RamNotBlockMultiple { vm: usize, ram_bytes: u64 },
    #[error("VM entry {vm}: RAM of {ram_bytes} bytes is outside {MIN_VM_RAM}..={MAX_VM_RAM}")]
    RamOutOfRange { vm: usize, ram_bytes: u64 },
    #[error("VM entry {vm}: image index {index} but the bundle holds {image_count} images")]
    ImageIndexOutOfRange {
        vm: usize,
        index: u32,
        image_count: usize,
    },
    #[error(
        "VM entry {vm}: image of {image_len} bytes plus the {PAGE_SIZE}-byte start-info page \
         does not fit in {ram_bytes} bytes of RAM"
    )]
    ImageTooLarge {
        vm: usize,
        image_len: u64,
        ram_bytes: u64,
    },
    #[error("VM entry {vm}: settings are {len} bytes, at most {MAX_SETTINGS_LEN} allowed")]
    SettingsTooLong { vm: usize, len: u64 },
    #[error("VM entry {vm}: settings are not valid UTF-8")]
    SettingsNotUtf8 { vm: usize },
    /// Its `balloon_schedule` setting is refused (see [`crate::balloon::parse_schedule`]).
    #[error("VM entry {vm}: balloon_schedule: {problem}")]
    BadBalloonSchedule {
        vm: usize,
        problem: crate::balloon::ScheduleError,
    },
    /// The back-end id is not the id of a VM in this bundle.
    #[error(
        "VM entry {vm}: back-end VM id {backend} is not a VM of this bundle (ids are \
         1..={vm_count})"
    )]
    BackendOutOfRange {
        vm: usize,
        backend: u16,
        vm_count: usize,
    },
    /// The entry names itself as its back-end.
    #[error("VM entry {vm}: names itself (VM id {}) as its back-end", vm + 1)]
    BackendIsSelf { vm: usize },
    /// The back-end id names a VM that is not a driver domain.
    #[error("VM entry {vm}: back-end VM id {backend} is not a driver domain")]
    BackendNotDriverDomain { vm: usize, backend: u16 },
    /// A driver domain names a back-end; only guests connect to one.
    #[error(
        "VM entry {vm}: is a driver domain but names back-end VM id {backend}; only guests \
         connect to a back-end"
    )]
    DriverDomainHasBackend { vm: usize, backend: u16 },
    /// Flag bits outside [`VM_FLAGS_KNOWN`] are set.
    #[error(
        "VM entry {vm}: unknown flags {flags:#06x} (version {VERSION} defines only \
         {VM_FLAGS_KNOWN:#06x})"
    )]
    UnknownVmFlags { vm: usize, flags: u16 },
    /// The passthrough field is non-zero but flag `PASSTHROUGH` is clear.
    #[error(
        "VM entry {vm}: passthrough field is {routing_id:#06x} but the passthrough flag is \
         clear"
    )]
    StrayPassthrough { vm: usize, routing_id: u16 },
    /// A guest owns a PCI function; only driver domains do.
    #[error(
        "VM entry {vm}: is a guest but owns PCI function {bdf}; only driver domains get a \
         passthrough device"
    )]
    PassthroughNotDriverDomain { vm: usize, bdf: Bdf },
    /// The emulated-NIC flag on a VM that is not a guest with a back-end.
    #[error(
        "VM entry {vm}: an emulated NIC needs a guest with a back-end to serve it (the flag is \
         set on a driver domain or a guest without one)"
    )]
    EmulatedNicWithoutBackend { vm: usize },
    /// The passed function is `00:00.0`, the host bridge.
    #[error(
        "VM entry {vm}: passthrough PCI function {} is the host bridge, which is never passed \
         to a VM",
        Bdf::HOST_BRIDGE
    )]
    PassthroughHostBridge { vm: usize },
    /// Two VMs own the same PCI function.
    #[error(
        "VM entries {first} and {second} both own PCI function {bdf}; a function is passed to \
         at most one VM"
    )]
    DuplicatePassthrough {
        first: usize,
        second: usize,
        bdf: Bdf,
    },
    /// The VMs' grant-mapping budgets could need more hypervisor heap than is set aside for
    /// them ([`mapping_heap_bytes`]).
    #[error(
        "the VMs' grant-mapping budgets could need {needed_kib} KiB of hypervisor heap, more \
         than the {} KiB set aside for them; use fewer driver domains",
        crate::grant::MAPPING_HEAP_BYTES >> 10
    )]
    MappingBudgets { needed_kib: u64 },
}

/// The hypervisor heap the grant-mapping records of VMs of `kinds` could need, each VM at its
/// kind's budget ([`VmKind::mapping_budget`] mappings of
/// [`HEAP_PER_MAPPING`](crate::grant::HEAP_PER_MAPPING) bytes); more than
/// [`MAPPING_HEAP_BYTES`](crate::grant::MAPPING_HEAP_BYTES) is refused.
pub fn mapping_heap_bytes(kinds: impl IntoIterator<Item = VmKind>) -> u64 {
    kinds
        .into_iter()
        .map(|kind| u64::from(kind.mapping_budget()) * crate::grant::HEAP_PER_MAPPING)
        .fold(0, u64::saturating_add)
}

/// `[offset, offset + len)` as a usize range if it lies within `[lo, hi)`. `offset` and `len`
/// come straight from the file, hence the checked add.
fn checked_range(offset: u64, len: u64, lo: usize, hi: usize) -> Option<(usize, usize)> {
    let end = offset.checked_add(len)?;
    let start = usize::try_from(offset).ok()?;
    let end = usize::try_from(end).ok()?;
    (start >= lo && end <= hi).then_some((start, end))
}

/// Rejects the first pair of non-empty regions that share a byte.
fn check_overlaps(regions: &[Option<(Region, (usize, usize))>]) -> Result<(), BundleError> {
    for (i, a) in regions.iter().enumerate() {
        for b in regions.iter().skip(i + 1) {
            if let (Some((first, (sa, ea))), Some((second, (sb, eb)))) = (a, b) {
                // An empty region (e.g. no settings at all) occupies no bytes.
                let non_empty = sa < ea && sb < eb;
                if non_empty && sa < eb && sb < ea {
                    return Err(BundleError::Overlap {
                        first: *first,
                        second: *second,
                    });
                }
            }
        }
    }
    Ok(())
}

/// A parsed, fully validated boot bundle borrowing the bytes it was parsed from.
#[derive(Clone, Debug)]
pub struct Bundle<'a> {
    total_size: usize,
    vm_count: usize,
    vms: [Option<VmSpec<'a>>; MAX_VMS],
}

impl<'a> Bundle<'a> {
    /// Validates everything up front; see the module docs for the rules.
    pub fn parse(bytes: &'a [u8]) -> Result<Bundle<'a>, BundleError> {
        let mut header = FORMAT.check(bytes)?;
        let header_size = header.u32()?;
        let claimed = header.u64()?;
        let stored = header.u64()?;
        let vm_count = header.u32()? as usize;
        let image_count = header.u32()? as usize;
        let vm_table_offset = header.u64()?;
        let image_table_offset = header.u64()?;
        let strings_offset = header.u64()?;
        let strings_len = header.u64()?;

        if header_size as usize != HEADER_SIZE {
            return Err(BundleError::BadHeaderSize { found: header_size });
        }
        if claimed < HEADER_SIZE as u64 {
            return Err(BundleError::TotalSizeTooSmall { claimed });
        }
        if claimed > MAX_BUNDLE_SIZE {
            return Err(BundleError::TooLarge { claimed });
        }
        let truncated = BundleError::Truncated {
            claimed,
            present: bytes.len(),
        };
        let total = usize::try_from(claimed).map_err(|_| truncated)?;
        // Anything past the claimed size (initrd padding) is ignored from here on.
        let bytes = bytes.get(..total).ok_or(truncated)?;

        let computed = fnv1a64(bytes.get(HEADER_SIZE..).unwrap_or_default());
        if stored != computed {
            return Err(BundleError::ChecksumMismatch { stored, computed });
        }

        if vm_count == 0 {
            return Err(BundleError::NoVms);
        }
        if vm_count > MAX_VMS {
            return Err(BundleError::TooManyVms { count: vm_count });
        }
        if image_count > MAX_VMS {
            return Err(BundleError::TooManyImages { count: image_count });
        }

        let region = |region, offset, len| {
            checked_range(offset, len, HEADER_SIZE, total).ok_or(BundleError::OutOfBounds {
                region,
                offset,
                len,
            })
        };
        // Counts are bounded by MAX_VMS above, so these products cannot overflow.
        let vm_table = region(
            Region::VmTable,
            vm_table_offset,
            (vm_count * VM_ENTRY_SIZE) as u64,
        )?;
        let image_table = region(
            Region::ImageTable,
            image_table_offset,
            (image_count * IMAGE_ENTRY_SIZE) as u64,
        )?;
        let strings = region(Region::StringArea, strings_offset, strings_len)?;

        // Every non-empty region, for the overlap check; no allocator, so a fixed array.
        let mut regions: [Option<(Region, (usize, usize))>; 3 + MAX_VMS] = [None; 3 + MAX_VMS];
        regions[0] = Some((Region::VmTable, vm_table));
        regions[1] = Some((Region::ImageTable, image_table));
        regions[2] = Some((Region::StringArea, strings));
        // Checked before the image table is read: entries read from a table that overlaps
        // another would be misleading garbage.
        check_overlaps(&regions)?;

        let mut images: [&'a [u8]; MAX_VMS] = [&[]; MAX_VMS];
        let mut read_only = [0u64; MAX_VMS];
        let mut entries = Reader::new(bytes.get(image_table.0..image_table.1).unwrap_or_default());
        for (i, ((image, slot), read_only)) in images
            .iter_mut()
            .zip(regions.iter_mut().skip(3))
            .zip(read_only.iter_mut())
            .take(image_count)
            .enumerate()
        {
            let (offset, len) = (entries.u64()?, entries.u64()?);
            if len == 0 {
                return Err(BundleError::EmptyImage { image: i });
            }
            let range = region(Region::Image(i), offset, len)?;
            *image = bytes.get(range.0..range.1).unwrap_or_default();
            *read_only = crate::image::read_only_bytes(image)
                .map_err(|problem| BundleError::BadImageHeader { image: i, problem })?;
            *slot = Some((Region::Image(i), range));
        }

        check_overlaps(&regions)?;

        let string_area = bytes.get(strings.0..strings.1).unwrap_or_default();
        let mut vms: [Option<VmSpec<'a>>; MAX_VMS] = [None; MAX_VMS];
        let mut entries = Reader::new(bytes.get(vm_table.0..vm_table.1).unwrap_or_default());
        for (vm, slot) in vms.iter_mut().take(vm_count).enumerate() {
            let entry = entries.bytes(VM_ENTRY_SIZE)?;
            let spec = Self::parse_vm(
                vm,
                vm_count,
                entry,
                images.get(..image_count).unwrap_or_default(),
                &read_only,
                string_area,
            )?;
            *slot = Some(spec);
        }
        for (i, a) in vms.iter().enumerate() {
            for (j, b) in vms.iter().enumerate().skip(i + 1) {
                if let (Some(a), Some(b)) = (a, b) {
                    if a.name == b.name {
                        return Err(BundleError::DuplicateName {
                            first: i,
                            second: j,
                        });
                    }
                }
            }
        }
        // Needs every entry's kind, so it runs after the per-entry checks, which already
        // guarantee the id is in range and not the entry's own.
        for (vm, spec) in vms.iter().enumerate() {
            if let Some(backend) = spec.and_then(|spec| spec.backend) {
                let target = usize::from(backend)
                    .checked_sub(1)
                    .and_then(|i| vms.get(i).copied().flatten());
                if target.map(|t| t.kind) != Some(VmKind::DriverDomain) {
                    return Err(BundleError::BackendNotDriverDomain { vm, backend });
                }
            }
        }
        for (i, a) in vms.iter().enumerate() {
            for (j, b) in vms.iter().enumerate().skip(i + 1) {
                let (a, b) = (a.and_then(|a| a.passthrough), b.and_then(|b| b.passthrough));
                if let (Some(bdf), Some(other)) = (a, b) {
                    if bdf == other {
                        return Err(BundleError::DuplicatePassthrough {
                            first: i,
                            second: j,
                            bdf,
                        });
                    }
                }
            }
        }

        let needed = mapping_heap_bytes(vms.iter().flatten().map(|spec| spec.kind));
        if needed > crate::grant::MAPPING_HEAP_BYTES {
            return Err(BundleError::MappingBudgets {
                needed_kib: needed >> 10,
            });
        }

        Ok(Bundle {
            total_size: total,
            vm_count,
            vms,
        })
    }

    fn parse_vm(
        vm: usize,
        vm_count: usize,
        entry: &'a [u8],
        images: &[&'a [u8]],
        read_only: &[u64],
        string_area: &'a [u8],
    ) -> Result<VmSpec<'a>, BundleError> {
        let mut r = Reader::new(entry);
        let name = r.bytes(NAME_FIELD_LEN)?;
        let code = u32::from(r.u16()?);
        let backend = r.u16()?;
        let vcpus = u32::from(r.u16()?);
        let routing_id = r.u16()?;
        let ram_bytes = r.u64()?;
        let index = u32::from(r.u16()?);
        let flags = r.u16()?;
        let settings_len = u64::from(r.u32()?);
        let settings_offset = r.u64()?;

        let name =
            decode_name_field(name).map_err(|problem| BundleError::BadName { vm, problem })?;

        let kind = VmKind::from_code(code).ok_or(BundleError::UnknownKind { vm, code })?;

        if vcpus == 0 || vcpus > MAX_VCPUS_PER_VM {
            return Err(BundleError::BadVcpus { vm, vcpus });
        }

        if !ram_bytes.is_multiple_of(BLOCK_SIZE) {
            return Err(BundleError::RamNotBlockMultiple { vm, ram_bytes });
        }
        if !(MIN_VM_RAM..=MAX_VM_RAM).contains(&ram_bytes) {
            return Err(BundleError::RamOutOfRange { vm, ram_bytes });
        }

        let image = *images
            .get(index as usize)
            .ok_or(BundleError::ImageIndexOutOfRange {
                vm,
                index,
                image_count: images.len(),
            })?;
        let code_bytes = read_only.get(index as usize).copied().unwrap_or(0);
        let image_len = image.len() as u64;
        // The start-info page is the last page of RAM; the image must end below it.
        if image_len > ram_bytes.saturating_sub(PAGE_SIZE) {
            return Err(BundleError::ImageTooLarge {
                vm,
                image_len,
                ram_bytes,
            });
        }

        if settings_len > MAX_SETTINGS_LEN as u64 {
            return Err(BundleError::SettingsTooLong {
                vm,
                len: settings_len,
            });
        }
        let (start, end) = checked_range(settings_offset, settings_len, 0, string_area.len())
            .ok_or(BundleError::OutOfBounds {
                region: Region::Settings(vm),
                offset: settings_offset,
                len: settings_len,
            })?;
        let settings = core::str::from_utf8(string_area.get(start..end).unwrap_or_default())
            .map_err(|_| BundleError::SettingsNotUtf8 { vm })?;
        // The hypervisor acts on this one setting itself (the balloon target's schedule).
        if let Some(text) = crate::start_info::setting(settings, crate::balloon::SCHEDULE_KEY) {
            crate::balloon::parse_schedule(text)
                .map_err(|problem| BundleError::BadBalloonSchedule { vm, problem })?;
        }

        // vm < MAX_VMS, so the id fits.
        let id = vm as u16 + 1;
        let backend = match backend {
            0 => None,
            backend if kind == VmKind::DriverDomain => {
                return Err(BundleError::DriverDomainHasBackend { vm, backend });
            }
            backend if usize::from(backend) > vm_count => {
                return Err(BundleError::BackendOutOfRange {
                    vm,
                    backend,
                    vm_count,
                });
            }
            backend if backend == id => return Err(BundleError::BackendIsSelf { vm }),
            backend => Some(backend),
        };

        if flags & !VM_FLAGS_KNOWN != 0 {
            return Err(BundleError::UnknownVmFlags { vm, flags });
        }
        let passthrough = if flags & VM_FLAG_PASSTHROUGH == 0 {
            if routing_id != 0 {
                return Err(BundleError::StrayPassthrough { vm, routing_id });
            }
            None
        } else {
            let bdf = Bdf::from_routing_id(routing_id);
            if kind != VmKind::DriverDomain {
                return Err(BundleError::PassthroughNotDriverDomain { vm, bdf });
            }
            if bdf == Bdf::HOST_BRIDGE {
                return Err(BundleError::PassthroughHostBridge { vm });
            }
            Some(bdf)
        };
        let emulated_nic = flags & VM_FLAG_EMULATED_NIC != 0;
        if emulated_nic && (kind != VmKind::Guest || backend.is_none()) {
            return Err(BundleError::EmulatedNicWithoutBackend { vm });
        }

        Ok(VmSpec {
            id,
            name,
            kind,
            vcpus,
            ram_bytes,
            image,
            code_bytes,
            settings,
            backend,
            passthrough,
            emulated_nic,
        })
    }

    /// The balloon target schedule of a VM (its `balloon_schedule` setting, validated by
    /// [`Bundle::parse`]); empty when it has none.
    pub fn balloon_schedule(spec: &VmSpec<'_>) -> crate::balloon::Schedule {
        Self::balloon_schedule_of(spec.settings)
    }

    /// The balloon target schedule in a VM's settings (empty when it has none or it is bad,
    /// which [`Bundle::parse`] refuses).
    pub fn balloon_schedule_of(settings: &str) -> crate::balloon::Schedule {
        crate::start_info::setting(settings, crate::balloon::SCHEDULE_KEY)
            .and_then(|text| crate::balloon::parse_schedule(text).ok())
            .unwrap_or_default()
    }

    pub fn vm_count(&self) -> usize {
        self.vm_count
    }

    pub fn vm(&self, index: usize) -> Option<VmSpec<'a>> {
        self.vms.get(index).copied().flatten()
    }

    pub fn vms(&self) -> impl Iterator<Item = VmSpec<'a>> + '_ {
        self.vms.iter().flatten().copied()
    }

    /// The VMs connected to VM `id`, as a bitmap: bit `i` set means VM id `i` is a peer. For a
    /// guest that is its back-end; for a driver domain, every guest naming it as back-end.
    /// Connections are symmetric (`j` is in `peers_of(i)` exactly when `i` is in `peers_of(j)`),
    /// and bit 0 (the hypervisor) and the VM's own bit are never set. An id that is not a VM of
    /// the bundle (including 0) has no peers.
    ///
    /// This is the value the hypervisor puts in the VM's start-info page
    /// ([`StartInfo::peers`](crate::start_info::StartInfo::peers)).
    pub fn peers_of(&self, id: u16) -> u64 {
        let Some(vm) = usize::from(id).checked_sub(1).and_then(|i| self.vm(i)) else {
            return 0;
        };
        // Ids are at most MAX_VMS < 64 (asserted below), so the shifts cannot overflow.
        let mut peers = vm.backend.map_or(0, |backend| 1u64 << backend);
        for other in self.vms() {
            if other.backend == Some(id) {
                peers |= 1u64 << other.id;
            }
        }
        peers
    }

    /// Bytes the header claims, which is also how many bytes were validated.
    pub fn total_size(&self) -> usize {
        self.total_size
    }
}

// Every VM id, MAX_VMS included, must have its bit in a `u64` peer bitmap.
const _: () = assert!(MAX_VMS < 64);
// The VM entry stores the vCPU count and the image index in 16 bits.
const _: () = assert!(MAX_VCPUS_PER_VM <= u16::MAX as u32 && MAX_VMS <= u16::MAX as usize);

#[cfg(test)]
mod tests;
