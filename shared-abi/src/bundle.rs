//! Boot bundle: the one file (loaded by QEMU as `-initrd`) that carries the topology and every VM
//! image, its parser ([`Bundle::parse`], no allocation) and, on the host, its builder ([`build`]).
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
//! |     50 |    2 | flags: bit 0 `PASSTHROUGH` (offset 38 is valid); other bits `0`     |
//! |     52 |    4 | settings length, `<= MAX_SETTINGS_LEN`                              |
//! |     56 |    8 | settings offset within the string area (UTF-8 `key=value` lines)   |
//!
//! Image entry (16 bytes): offset `u64` at 0, length `u64` at 8. An image is a raw binary loaded
//! at [`GUEST_RAM_BASE`](crate::layout::GUEST_RAM_BASE) and entered at its first byte; it must leave the last page of RAM free
//! for the start-info page. VMs running the same image share one entry.
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

use crate::layout::{
    BLOCK_SIZE, MAX_SETTINGS_LEN, MAX_VCPUS_PER_VM, MAX_VMS, MAX_VM_NAME_LEN, MAX_VM_RAM,
    MIN_VM_RAM, PAGE_SIZE,
};
pub use crate::pci::Bdf;

pub const MAGIC: [u8; 8] = *b"SLUICEBN";
pub const VERSION: u32 = 3;

pub const HEADER_SIZE: usize = 72;
pub const VM_ENTRY_SIZE: usize = 64;
pub const IMAGE_ENTRY_SIZE: usize = 16;
/// VM entry flag: the entry's passthrough field (offset 38) names a PCI function it owns.
pub const VM_FLAG_PASSTHROUGH: u16 = 1 << 0;
/// Every VM entry flag this version defines; any other bit is refused.
pub const VM_FLAGS_KNOWN: u16 = VM_FLAG_PASSTHROUGH;
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
    pub settings: &'a str,
    /// Id of the driver domain this guest connects to as a front-end; always `None` for a driver
    /// domain. Validated: names another VM of the bundle, and that VM is a driver domain.
    pub backend: Option<u16>,
    /// The PCI function passed through to this VM. Validated: only a driver domain has one, no
    /// two VMs share one, and it is never the host bridge (`00:00.0`).
    pub passthrough: Option<Bdf>,
}

/// Why a VM name is unacceptable. Shared by the bundle, the start-info page and the topology so
/// the three cannot disagree on what a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameProblem {
    Empty,
    TooLong,
    NotUtf8,
    /// Contains a character outside `[a-z0-9-]`.
    InvalidChar,
    /// Non-zero bytes after the terminating NUL of a stored name.
    BadPadding,
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameProblem::Empty => f.write_str("name is empty"),
            NameProblem::TooLong => write!(f, "name is longer than {MAX_VM_NAME_LEN} bytes"),
            NameProblem::NotUtf8 => f.write_str("name is not valid UTF-8"),
            NameProblem::InvalidChar => {
                f.write_str("name may only contain lowercase letters, digits and '-'")
            }
            NameProblem::BadPadding => f.write_str("name field has bytes after its NUL terminator"),
        }
    }
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

/// Everything [`Bundle::parse`] (and [`build`]) can reject. `vm` fields are 0-based VM table
/// indices (the VM id is one more).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum BundleError {
    TooShort {
        len: usize,
    },
    BadMagic {
        found: [u8; 8],
    },
    UnsupportedVersion {
        found: u32,
    },
    BadHeaderSize {
        found: u32,
    },
    TotalSizeTooSmall {
        claimed: u64,
    },
    TooLarge {
        claimed: u64,
    },
    Truncated {
        claimed: u64,
        present: usize,
    },
    ChecksumMismatch {
        stored: u64,
        computed: u64,
    },
    NoVms,
    TooManyVms {
        count: usize,
    },
    TooManyImages {
        count: usize,
    },
    OutOfBounds {
        region: Region,
        offset: u64,
        len: u64,
    },
    Overlap {
        first: Region,
        second: Region,
    },
    EmptyImage {
        image: usize,
    },
    BadName {
        vm: usize,
        problem: NameProblem,
    },
    DuplicateName {
        first: usize,
        second: usize,
    },
    UnknownKind {
        vm: usize,
        code: u32,
    },
    BadVcpus {
        vm: usize,
        vcpus: u32,
    },
    RamNotBlockMultiple {
        vm: usize,
        ram_bytes: u64,
    },
    RamOutOfRange {
        vm: usize,
        ram_bytes: u64,
    },
    ImageIndexOutOfRange {
        vm: usize,
        index: u32,
        image_count: usize,
    },
    ImageTooLarge {
        vm: usize,
        image_len: u64,
        ram_bytes: u64,
    },
    SettingsTooLong {
        vm: usize,
        len: u64,
    },
    SettingsNotUtf8 {
        vm: usize,
    },
    /// The back-end id is not the id of a VM in this bundle.
    BackendOutOfRange {
        vm: usize,
        backend: u16,
        vm_count: usize,
    },
    /// The entry names itself as its back-end.
    BackendIsSelf {
        vm: usize,
    },
    /// The back-end id names a VM that is not a driver domain.
    BackendNotDriverDomain {
        vm: usize,
        backend: u16,
    },
    /// A driver domain names a back-end; only guests connect to one.
    DriverDomainHasBackend {
        vm: usize,
        backend: u16,
    },
    /// Flag bits outside [`VM_FLAGS_KNOWN`] are set.
    UnknownVmFlags {
        vm: usize,
        flags: u16,
    },
    /// The passthrough field is non-zero but flag `PASSTHROUGH` is clear.
    StrayPassthrough {
        vm: usize,
        routing_id: u16,
    },
    /// A guest owns a PCI function; only driver domains do.
    PassthroughNotDriverDomain {
        vm: usize,
        bdf: Bdf,
    },
    /// The passed function is `00:00.0`, the host bridge.
    PassthroughHostBridge {
        vm: usize,
    },
    /// Two VMs own the same PCI function.
    DuplicatePassthrough {
        first: usize,
        second: usize,
        bdf: Bdf,
    },
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use BundleError::*;
        match *self {
            TooShort { len } => write!(
                f,
                "bundle too short: {len} bytes, the header alone is {HEADER_SIZE} bytes"
            ),
            BadMagic { found } => write!(
                f,
                "not a sluice bundle: magic is {found:02x?}, expected \"SLUICEBN\""
            ),
            UnsupportedVersion { found } => write!(
                f,
                "unsupported bundle format version {found} (this build reads version {VERSION})"
            ),
            BadHeaderSize { found } => write!(
                f,
                "bundle header size is {found}, version {VERSION} headers are {HEADER_SIZE} bytes"
            ),
            TotalSizeTooSmall { claimed } => write!(
                f,
                "bundle header says the bundle is {claimed} bytes, smaller than the header itself"
            ),
            TooLarge { claimed } => write!(
                f,
                "bundle header says {claimed} bytes, more than the {MAX_BUNDLE_SIZE}-byte limit"
            ),
            Truncated { claimed, present } => write!(
                f,
                "bundle truncated: header says {claimed} bytes, only {present} present"
            ),
            ChecksumMismatch { stored, computed } => write!(
                f,
                "bundle corrupted: checksum is {computed:#018x}, header says {stored:#018x}"
            ),
            NoVms => f.write_str("bundle describes no VMs"),
            TooManyVms { count } => write!(
                f,
                "bundle describes {count} VMs, at most {MAX_VMS} are supported"
            ),
            TooManyImages { count } => write!(
                f,
                "bundle holds {count} images, at most {MAX_VMS} are supported"
            ),
            OutOfBounds {
                region,
                offset,
                len,
            } => write!(
                f,
                "bundle {region} ({len} bytes at offset {offset}) lies outside the bundle"
            ),
            Overlap { first, second } => {
                write!(f, "bundle {first} overlaps {second}")
            }
            EmptyImage { image } => write!(f, "bundle image {image} is empty"),
            BadName { vm, problem } => write!(f, "VM entry {vm}: {problem}"),
            DuplicateName { first, second } => write!(
                f,
                "VM entries {first} and {second} have the same name; names must be unique"
            ),
            UnknownKind { vm, code } => write!(
                f,
                "VM entry {vm}: unknown kind {code} (1 = guest, 2 = driver domain)"
            ),
            BadVcpus { vm, vcpus } => write!(
                f,
                "VM entry {vm}: {vcpus} vCPUs, must be 1..={MAX_VCPUS_PER_VM}"
            ),
            RamNotBlockMultiple { vm, ram_bytes } => write!(
                f,
                "VM entry {vm}: RAM of {ram_bytes} bytes is not a multiple of {BLOCK_SIZE} bytes"
            ),
            RamOutOfRange { vm, ram_bytes } => write!(
                f,
                "VM entry {vm}: RAM of {ram_bytes} bytes is outside {MIN_VM_RAM}..={MAX_VM_RAM}"
            ),
            ImageIndexOutOfRange {
                vm,
                index,
                image_count,
            } => write!(
                f,
                "VM entry {vm}: image index {index} but the bundle holds {image_count} images"
            ),
            ImageTooLarge {
                vm,
                image_len,
                ram_bytes,
            } => write!(
                f,
                "VM entry {vm}: image of {image_len} bytes plus the {PAGE_SIZE}-byte start-info \
                 page does not fit in {ram_bytes} bytes of RAM"
            ),
            SettingsTooLong { vm, len } => write!(
                f,
                "VM entry {vm}: settings are {len} bytes, at most {MAX_SETTINGS_LEN} allowed"
            ),
            SettingsNotUtf8 { vm } => write!(f, "VM entry {vm}: settings are not valid UTF-8"),
            BackendOutOfRange {
                vm,
                backend,
                vm_count,
            } => write!(
                f,
                "VM entry {vm}: back-end VM id {backend} is not a VM of this bundle (ids are \
                 1..={vm_count})"
            ),
            BackendIsSelf { vm } => write!(
                f,
                "VM entry {vm}: names itself (VM id {}) as its back-end",
                vm + 1
            ),
            BackendNotDriverDomain { vm, backend } => write!(
                f,
                "VM entry {vm}: back-end VM id {backend} is not a driver domain"
            ),
            DriverDomainHasBackend { vm, backend } => write!(
                f,
                "VM entry {vm}: is a driver domain but names back-end VM id {backend}; only \
                 guests connect to a back-end"
            ),
            UnknownVmFlags { vm, flags } => write!(
                f,
                "VM entry {vm}: unknown flags {flags:#06x} (version {VERSION} defines only \
                 {VM_FLAGS_KNOWN:#06x})"
            ),
            StrayPassthrough { vm, routing_id } => write!(
                f,
                "VM entry {vm}: passthrough field is {routing_id:#06x} but the passthrough flag \
                 is clear"
            ),
            PassthroughNotDriverDomain { vm, bdf } => write!(
                f,
                "VM entry {vm}: is a guest but owns PCI function {bdf}; only driver domains get \
                 a passthrough device"
            ),
            PassthroughHostBridge { vm } => write!(
                f,
                "VM entry {vm}: passthrough PCI function {} is the host bridge, which is never \
                 passed to a VM",
                Bdf::HOST_BRIDGE
            ),
            DuplicatePassthrough { first, second, bdf } => write!(
                f,
                "VM entries {first} and {second} both own PCI function {bdf}; a function is \
                 passed to at most one VM"
            ),
        }
    }
}

impl core::error::Error for BundleError {}

/// Copies `N` bytes at `at`. Only used on slices whose length was already checked, so the
/// zero fill for a short slice is unreachable; it exists so that no path can panic.
fn array_at<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(at..).and_then(|s| s.get(..N)) {
        out.copy_from_slice(src);
    }
    out
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(array_at(bytes, at))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array_at(bytes, at))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array_at(bytes, at))
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
        if bytes.len() < HEADER_SIZE {
            return Err(BundleError::TooShort { len: bytes.len() });
        }
        let magic: [u8; 8] = array_at(bytes, 0);
        if magic != MAGIC {
            return Err(BundleError::BadMagic { found: magic });
        }
        let version = u32_at(bytes, 8);
        if version != VERSION {
            return Err(BundleError::UnsupportedVersion { found: version });
        }
        let header_size = u32_at(bytes, 12);
        if header_size as usize != HEADER_SIZE {
            return Err(BundleError::BadHeaderSize { found: header_size });
        }
        let claimed = u64_at(bytes, 16);
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

        let stored = u64_at(bytes, 24);
        let computed = fnv1a64(bytes.get(HEADER_SIZE..).unwrap_or_default());
        if stored != computed {
            return Err(BundleError::ChecksumMismatch { stored, computed });
        }

        let vm_count = u32_at(bytes, 32) as usize;
        if vm_count == 0 {
            return Err(BundleError::NoVms);
        }
        if vm_count > MAX_VMS {
            return Err(BundleError::TooManyVms { count: vm_count });
        }
        let image_count = u32_at(bytes, 36) as usize;
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
            u64_at(bytes, 40),
            (vm_count * VM_ENTRY_SIZE) as u64,
        )?;
        let image_table = region(
            Region::ImageTable,
            u64_at(bytes, 48),
            (image_count * IMAGE_ENTRY_SIZE) as u64,
        )?;
        let strings = region(Region::StringArea, u64_at(bytes, 56), u64_at(bytes, 64))?;

        // Every non-empty region, for the overlap check; no allocator, so a fixed array.
        let mut regions: [Option<(Region, (usize, usize))>; 3 + MAX_VMS] = [None; 3 + MAX_VMS];
        regions[0] = Some((Region::VmTable, vm_table));
        regions[1] = Some((Region::ImageTable, image_table));
        regions[2] = Some((Region::StringArea, strings));
        // Checked before the image table is read: entries read from a table that overlaps
        // another would be misleading garbage.
        check_overlaps(&regions)?;

        let mut images: [&'a [u8]; MAX_VMS] = [&[]; MAX_VMS];
        for (i, (image, slot)) in images
            .iter_mut()
            .zip(regions.iter_mut().skip(3))
            .take(image_count)
            .enumerate()
        {
            let entry = image_table.0 + i * IMAGE_ENTRY_SIZE;
            let (offset, len) = (u64_at(bytes, entry), u64_at(bytes, entry + 8));
            if len == 0 {
                return Err(BundleError::EmptyImage { image: i });
            }
            let range = region(Region::Image(i), offset, len)?;
            *image = bytes.get(range.0..range.1).unwrap_or_default();
            *slot = Some((Region::Image(i), range));
        }

        check_overlaps(&regions)?;

        let string_area = bytes.get(strings.0..strings.1).unwrap_or_default();
        let mut vms: [Option<VmSpec<'a>>; MAX_VMS] = [None; MAX_VMS];
        for (vm, slot) in vms.iter_mut().take(vm_count).enumerate() {
            let at = vm_table.0 + vm * VM_ENTRY_SIZE;
            let entry = bytes.get(at..at + VM_ENTRY_SIZE).unwrap_or_default();
            let spec = Self::parse_vm(
                vm,
                vm_count,
                entry,
                images.get(..image_count).unwrap_or_default(),
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
        string_area: &'a [u8],
    ) -> Result<VmSpec<'a>, BundleError> {
        let name = decode_name_field(entry.get(..NAME_FIELD_LEN).unwrap_or_default())
            .map_err(|problem| BundleError::BadName { vm, problem })?;

        let code = u32::from(u16_at(entry, 32));
        let kind = VmKind::from_code(code).ok_or(BundleError::UnknownKind { vm, code })?;

        let vcpus = u32::from(u16_at(entry, 36));
        if vcpus == 0 || vcpus > MAX_VCPUS_PER_VM {
            return Err(BundleError::BadVcpus { vm, vcpus });
        }

        let ram_bytes = u64_at(entry, 40);
        if !ram_bytes.is_multiple_of(BLOCK_SIZE) {
            return Err(BundleError::RamNotBlockMultiple { vm, ram_bytes });
        }
        if !(MIN_VM_RAM..=MAX_VM_RAM).contains(&ram_bytes) {
            return Err(BundleError::RamOutOfRange { vm, ram_bytes });
        }

        let index = u32::from(u16_at(entry, 48));
        let image = *images
            .get(index as usize)
            .ok_or(BundleError::ImageIndexOutOfRange {
                vm,
                index,
                image_count: images.len(),
            })?;
        let image_len = image.len() as u64;
        // The start-info page is the last page of RAM; the image must end below it.
        if image_len > ram_bytes.saturating_sub(PAGE_SIZE) {
            return Err(BundleError::ImageTooLarge {
                vm,
                image_len,
                ram_bytes,
            });
        }

        let settings_len = u64::from(u32_at(entry, 52));
        if settings_len > MAX_SETTINGS_LEN as u64 {
            return Err(BundleError::SettingsTooLong {
                vm,
                len: settings_len,
            });
        }
        let settings_offset = u64_at(entry, 56);
        let (start, end) = checked_range(settings_offset, settings_len, 0, string_area.len())
            .ok_or(BundleError::OutOfBounds {
                region: Region::Settings(vm),
                offset: settings_offset,
                len: settings_len,
            })?;
        let settings = core::str::from_utf8(string_area.get(start..end).unwrap_or_default())
            .map_err(|_| BundleError::SettingsNotUtf8 { vm })?;

        // vm < MAX_VMS, so the id fits.
        let id = vm as u16 + 1;
        let backend = match u16_at(entry, 34) {
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

        let flags = u16_at(entry, 50);
        if flags & !VM_FLAGS_KNOWN != 0 {
            return Err(BundleError::UnknownVmFlags { vm, flags });
        }
        let routing_id = u16_at(entry, 38);
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

        Ok(VmSpec {
            id,
            name,
            kind,
            vcpus,
            ram_bytes,
            image,
            settings,
            backend,
            passthrough,
        })
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

/// A VM as the host-side builder takes it.
#[cfg(any(test, feature = "std"))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmDescription {
    pub name: String,
    pub kind: VmKind,
    pub vcpus: u32,
    pub ram_bytes: u64,
    pub image: Vec<u8>,
    pub settings: String,
    /// VM id (1-based, so entry index + 1) of the driver domain this guest connects to.
    pub backend: Option<u16>,
    /// PCI function passed through to this driver domain.
    pub passthrough: Option<Bdf>,
}

/// Images start on this boundary; not needed by the parser, but it keeps hexdumps readable and
/// lets the hypervisor copy images with aligned accesses.
#[cfg(any(test, feature = "std"))]
const IMAGE_ALIGN: usize = 16;

/// Builds a bundle. Identical images are stored once. The output is run through
/// [`Bundle::parse`] before it is returned, so every rule the hypervisor enforces is enforced
/// here too, with the same error.
#[cfg(any(test, feature = "std"))]
pub fn build(vms: &[VmDescription]) -> Result<Vec<u8>, BundleError> {
    if vms.is_empty() {
        return Err(BundleError::NoVms);
    }
    if vms.len() > MAX_VMS {
        return Err(BundleError::TooManyVms { count: vms.len() });
    }

    let mut images: Vec<&[u8]> = Vec::new();
    let mut image_of_vm = Vec::with_capacity(vms.len());
    for vm in vms {
        let index = match images.iter().position(|i| *i == vm.image.as_slice()) {
            Some(index) => index,
            None => {
                images.push(&vm.image);
                images.len() - 1
            }
        };
        image_of_vm.push(index);
    }

    let mut strings = Vec::new();
    let mut settings_of_vm = Vec::with_capacity(vms.len());
    for (vm, desc) in vms.iter().enumerate() {
        let len = desc.settings.len();
        if len > MAX_SETTINGS_LEN {
            return Err(BundleError::SettingsTooLong {
                vm,
                len: len as u64,
            });
        }
        settings_of_vm.push((strings.len() as u64, len as u32));
        strings.extend_from_slice(desc.settings.as_bytes());
    }

    let vm_table = HEADER_SIZE;
    let image_table = vm_table + vms.len() * VM_ENTRY_SIZE;
    let string_area = image_table + images.len() * IMAGE_ENTRY_SIZE;
    let mut out = vec![0u8; string_area];
    out.extend_from_slice(&strings);

    let mut image_entries = Vec::with_capacity(images.len());
    for image in &images {
        out.resize(out.len().next_multiple_of(IMAGE_ALIGN), 0);
        image_entries.push((out.len() as u64, image.len() as u64));
        out.extend_from_slice(image);
    }

    let total = out.len() as u64;
    out[0..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    out[16..24].copy_from_slice(&total.to_le_bytes());
    out[32..36].copy_from_slice(&(vms.len() as u32).to_le_bytes());
    out[36..40].copy_from_slice(&(images.len() as u32).to_le_bytes());
    out[40..48].copy_from_slice(&(vm_table as u64).to_le_bytes());
    out[48..56].copy_from_slice(&(image_table as u64).to_le_bytes());
    out[56..64].copy_from_slice(&(string_area as u64).to_le_bytes());
    out[64..72].copy_from_slice(&(strings.len() as u64).to_le_bytes());

    for (vm, desc) in vms.iter().enumerate() {
        let name = encode_name_field(&desc.name)
            .map_err(|problem| BundleError::BadName { vm, problem })?;
        // 0 is "none" on disk, so Some(0) cannot be encoded; every other id is checked by the
        // parse of the output.
        let backend = match desc.backend {
            None => 0,
            Some(0) => {
                return Err(BundleError::BackendOutOfRange {
                    vm,
                    backend: 0,
                    vm_count: vms.len(),
                })
            }
            Some(id) => id,
        };
        // The entry stores 16 bits; a larger count must not wrap into a valid one.
        let vcpus = u16::try_from(desc.vcpus).map_err(|_| BundleError::BadVcpus {
            vm,
            vcpus: desc.vcpus,
        })?;
        let (flags, routing_id) = match desc.passthrough {
            None => (0u16, 0u16),
            Some(bdf) => (VM_FLAG_PASSTHROUGH, bdf.routing_id()),
        };
        let (settings_offset, settings_len) = settings_of_vm[vm];
        let e = &mut out[vm_table + vm * VM_ENTRY_SIZE..][..VM_ENTRY_SIZE];
        e[0..NAME_FIELD_LEN].copy_from_slice(&name);
        // Kind codes are 1 and 2, so the narrowing is lossless.
        e[32..34].copy_from_slice(&(desc.kind.code() as u16).to_le_bytes());
        e[34..36].copy_from_slice(&backend.to_le_bytes());
        e[36..38].copy_from_slice(&vcpus.to_le_bytes());
        e[38..40].copy_from_slice(&routing_id.to_le_bytes());
        e[40..48].copy_from_slice(&desc.ram_bytes.to_le_bytes());
        // At most MAX_VMS images, so the index fits.
        e[48..50].copy_from_slice(&(image_of_vm[vm] as u16).to_le_bytes());
        e[50..52].copy_from_slice(&flags.to_le_bytes());
        e[52..56].copy_from_slice(&settings_len.to_le_bytes());
        e[56..64].copy_from_slice(&settings_offset.to_le_bytes());
    }
    for (i, (offset, len)) in image_entries.iter().enumerate() {
        let e = &mut out[image_table + i * IMAGE_ENTRY_SIZE..][..IMAGE_ENTRY_SIZE];
        e[0..8].copy_from_slice(&offset.to_le_bytes());
        e[8..16].copy_from_slice(&len.to_le_bytes());
    }

    let checksum = fnv1a64(&out[HEADER_SIZE..]);
    out[24..32].copy_from_slice(&checksum.to_le_bytes());

    Bundle::parse(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
