//! Start-info page: how a VM learns its identity and its connections (peers), and the
//! `key=value` settings helpers.
//!
//! The hypervisor writes one page at [`start_info_gpa`](crate::layout::start_info_gpa) (the last
//! page of the VM's RAM) before the VM's first instruction and passes its address in x0.
//!
//! Layout, version 1 (little-endian; every byte not listed is zero):
//!
//! | offset | size | field                                                  |
//! |-------:|-----:|--------------------------------------------------------|
//! |      0 |    8 | magic `b"SLSTART\0"`                                   |
//! |      8 |    4 | version, `1`                                           |
//! |     12 |    2 | VM id (1-based; 0 is the hypervisor)                   |
//! |     14 |    1 | kind: `1` guest, `2` driver domain                     |
//! |     15 |    1 | reserved, zero                                         |
//! |     16 |    4 | vCPU count                                             |
//! |     20 |    4 | boot count: 1 on first boot, +1 after each SYSTEM_RESET |
//! |     24 |    8 | guest-physical base of RAM                             |
//! |     32 |    8 | RAM bytes                                              |
//! |     40 |   32 | name, NUL padded                                       |
//! |     72 |    4 | settings length, `<= MAX_SETTINGS_LEN`                 |
//! |     76 |    n | settings, UTF-8 `key=value` lines                      |
//! |   2128 |    8 | peers: bit `i` set = VM id `i` is connected to this VM |
//! |   2136 |    4 | passthrough: bit 31 set = a PCI function is passed to  |
//! |        |      | this VM, bits 15..0 its routing id (bus<<8, dev<<3,fn) |
//!
//! The settings area is `76..76 + MAX_SETTINGS_LEN` (up to 2124); the peers field sits at the
//! first 8-aligned offset past it, so it has a fixed place whatever the settings length.
//!
//! Peers are the VMs this VM has a front-end/back-end connection with (from the topology's
//! `backend` links): for a guest, its back-end driver domain; for a driver domain, every guest it
//! serves. A VM finds each connection's control page with
//! [`control_page_ipa`](crate::layout::control_page_ipa) of the front-end's id. Bit 0 (the
//! hypervisor), the VM's own bit and bits above `MAX_VMS` are always clear.
//!
//! The version stayed 1 when peers and then passthrough were added: every byte not listed is
//! zero, so a page written before a field existed reads as "none", which is what it meant.
//!
//! Passthrough names the one PCI function the hypervisor passed to this driver domain (see the
//! hypervisor's `passthrough` module): the VM finds it through the emulated ECAM at
//! [`PCI_ECAM_IPA`](crate::layout::PCI_ECAM_IPA) and places its BARs in
//! [`PCI_WINDOW_IPA`](crate::layout::PCI_WINDOW_IPA). Only driver domains can have one; bits
//! 30..16 are zero.

use thiserror::Error;

use crate::bundle::{decode_name_field, encode_name_field, NameProblem, VmKind, NAME_FIELD_LEN};
use crate::layout::{
    BLOCK_SIZE, MAX_SETTINGS_LEN, MAX_VCPUS_PER_VM, MAX_VMS, MAX_VM_RAM, MIN_VM_RAM, PAGE_SIZE,
};
use crate::wire::{Format, WireError, Writer, HEADER_LEN};

pub const MAGIC: [u8; 8] = *b"SLSTART\0";
pub const VERSION: u32 = 1;
pub const PAGE_LEN: usize = PAGE_SIZE as usize;

/// The shared header check: magic, version, and a whole page.
pub const FORMAT: Format = Format {
    name: "start-info page",
    magic: MAGIC,
    version: VERSION,
    min_len: PAGE_LEN,
};

const VM_ID: usize = 12;
const KIND: usize = 14;
const RESERVED_0: usize = 15;
const VCPUS: usize = 16;
const BOOT_COUNT: usize = 20;
const RAM_BASE: usize = 24;
const RAM_BYTES: usize = 32;
const NAME: usize = 40;
const SETTINGS_LEN: usize = 72;
const SETTINGS: usize = 76;
const PEERS: usize = 2128;
const PASSTHROUGH: usize = 2136;
/// Bit 31 of the passthrough word: a function is present.
const PASSTHROUGH_PRESENT: u32 = 1 << 31;

// Each offset of the table is the previous one plus the size of the type the reader and the
// writer take there, so the code and the table cannot drift apart.
const _: () = {
    assert!(VM_ID == HEADER_LEN);
    assert!(KIND == VM_ID + size_of::<u16>());
    assert!(RESERVED_0 == KIND + size_of::<u8>());
    assert!(VCPUS == RESERVED_0 + size_of::<u8>());
    assert!(BOOT_COUNT == VCPUS + size_of::<u32>());
    assert!(RAM_BASE == BOOT_COUNT + size_of::<u32>());
    assert!(RAM_BYTES == RAM_BASE + size_of::<u64>());
    assert!(NAME == RAM_BYTES + size_of::<u64>());
    assert!(SETTINGS_LEN == NAME + NAME_FIELD_LEN);
    assert!(SETTINGS == SETTINGS_LEN + size_of::<u32>());
};
const _: () = assert!(PASSTHROUGH == PEERS + size_of::<u64>());
/// Guarantees at compile time that the largest settings string fits in the page.
const _: () = assert!(SETTINGS + MAX_SETTINGS_LEN <= PAGE_LEN);
/// The peers field lies past the largest settings string, 8-aligned, inside the page.
const _: () = assert!(PEERS >= SETTINGS + MAX_SETTINGS_LEN);
const _: () = assert!(PEERS.is_multiple_of(8) && PEERS + 8 <= PAGE_LEN);
/// Bits VM ids may occupy in the peers bitmap: ids are `1..=MAX_VMS`, bit 0 is the hypervisor.
const VM_ID_BITS: u64 = if MAX_VMS + 1 >= 64 {
    u64::MAX
} else {
    (1u64 << (MAX_VMS + 1)) - 1
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartInfo<'a> {
    pub vm_id: u16,
    pub name: &'a str,
    pub kind: VmKind,
    pub vcpus: u32,
    pub ram_base: u64,
    pub ram_bytes: u64,
    pub settings: &'a str,
    /// 1 on the VM's first boot, incremented each time it restarts (PSCI SYSTEM_RESET), so a VM
    /// can tell a fresh start from a restart.
    pub boot_count: u32,
    /// VMs connected to this one: bit `i` set means VM id `i` is a peer (its back-end, or a
    /// front-end it serves). Never has bit 0, the VM's own bit, or bits above `MAX_VMS` set.
    pub peers: u64,
    /// Routing id (`bus << 8 | device << 3 | function`) of the PCI function passed through to
    /// this VM; driver domains only.
    pub passthrough: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum StartInfoError {
    /// Too short for a page, bad magic or unknown version (the header checks every format
    /// shares).
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("start-info reserved bytes are not zero")]
    ReservedNotZero,
    /// VM id 0 is the hypervisor.
    #[error("start-info VM id is 0, which is the hypervisor's")]
    ZeroVmId,
    /// The boot count is 0 (the first boot is 1).
    #[error("start-info boot count is 0 (the first boot is 1)")]
    ZeroBootCount,
    #[error("start-info VM kind {code} is unknown")]
    UnknownKind { code: u32 },
    #[error("start-info vCPU count {vcpus} is outside 1..={MAX_VCPUS_PER_VM}")]
    BadVcpus { vcpus: u32 },
    #[error("start-info RAM base {ram_base:#x} is not page aligned or RAM wraps around")]
    BadRamBase { ram_base: u64 },
    #[error(
        "start-info RAM size {ram_bytes} is not a multiple of {BLOCK_SIZE} in \
         {MIN_VM_RAM}..={MAX_VM_RAM}"
    )]
    BadRamSize { ram_bytes: u64 },
    #[error("start-info VM {0}")]
    BadName(NameProblem),
    #[error("start-info settings are {len} bytes, at most {MAX_SETTINGS_LEN} allowed")]
    SettingsTooLong { len: usize },
    #[error("start-info settings are not valid UTF-8")]
    SettingsNotUtf8,
    /// The peers bitmap has bit 0 set: the hypervisor is not a peer.
    #[error("start-info peers include bit 0, the hypervisor, which is no peer")]
    PeersIncludeHypervisor,
    /// The peers bitmap has the VM's own bit set.
    #[error("start-info peers include VM id {vm_id}, the VM itself")]
    PeersIncludeSelf { vm_id: u16 },
    /// The peers bitmap has bits above `MAX_VMS`, which no VM id can have.
    #[error("start-info peers {peers:#x} name VM ids above the maximum {MAX_VMS}")]
    PeersOutOfRange { peers: u64 },
    /// The passthrough word has bits set besides bit 31 and the routing id.
    #[error("start-info passthrough word {word:#010x} has reserved bits 30..16 set")]
    BadPassthrough { word: u32 },
    /// A guest was given a PCI function: only driver domains own devices.
    #[error("start-info gives a PCI function to a guest; only driver domains own devices")]
    PassthroughToGuest,
}

impl<'a> StartInfo<'a> {
    /// Rules shared by the writer and the reader, so the hypervisor cannot hand a VM a page
    /// the VM would refuse.
    fn validate(&self) -> Result<(), StartInfoError> {
        if self.vm_id == 0 {
            return Err(StartInfoError::ZeroVmId);
        }
        if self.boot_count == 0 {
            return Err(StartInfoError::ZeroBootCount);
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS_PER_VM {
            return Err(StartInfoError::BadVcpus { vcpus: self.vcpus });
        }
        if !self.ram_base.is_multiple_of(PAGE_SIZE)
            || self.ram_base.checked_add(self.ram_bytes).is_none()
        {
            return Err(StartInfoError::BadRamBase {
                ram_base: self.ram_base,
            });
        }
        if !self.ram_bytes.is_multiple_of(BLOCK_SIZE)
            || !(MIN_VM_RAM..=MAX_VM_RAM).contains(&self.ram_bytes)
        {
            return Err(StartInfoError::BadRamSize {
                ram_bytes: self.ram_bytes,
            });
        }
        crate::bundle::check_vm_name(self.name).map_err(StartInfoError::BadName)?;
        if self.settings.len() > MAX_SETTINGS_LEN {
            return Err(StartInfoError::SettingsTooLong {
                len: self.settings.len(),
            });
        }
        if self.peers & 1 != 0 {
            return Err(StartInfoError::PeersIncludeHypervisor);
        }
        // checked_shl: an id of 64 or more has no bit, so it cannot be in the bitmap.
        let own_bit = 1u64.checked_shl(u32::from(self.vm_id)).unwrap_or(0);
        if self.peers & own_bit != 0 {
            return Err(StartInfoError::PeersIncludeSelf { vm_id: self.vm_id });
        }
        if self.peers & !VM_ID_BITS != 0 {
            return Err(StartInfoError::PeersOutOfRange { peers: self.peers });
        }
        if self.passthrough.is_some() && self.kind != VmKind::DriverDomain {
            return Err(StartInfoError::PassthroughToGuest);
        }
        Ok(())
    }

    /// Fills the first 4096 bytes of `page` (zeroing everything not written, so nothing stale
    /// leaks into the VM).
    pub fn write_to(&self, page: &mut [u8]) -> Result<(), StartInfoError> {
        let page = FORMAT.fixed_part_mut(page)?;
        self.validate()?;
        let name = encode_name_field(self.name).map_err(StartInfoError::BadName)?;
        page.fill(0);
        let mut w = Writer::new(page);
        FORMAT.write_header(&mut w)?;
        w.u16(self.vm_id)?;
        // Kind codes are 1 and 2, so the narrowing is lossless.
        w.u8(self.kind.code() as u8)?;
        w.skip(1)?;
        w.u32(self.vcpus)?;
        w.u32(self.boot_count)?;
        w.u64(self.ram_base)?;
        w.u64(self.ram_bytes)?;
        w.bytes(&name)?;
        // validate() bounds the length by MAX_SETTINGS_LEN.
        w.u32(self.settings.len() as u32)?;
        w.bytes(self.settings.as_bytes())?;
        w.skip_to(PEERS)?;
        w.u64(self.peers)?;
        if let Some(rid) = self.passthrough {
            w.u32(PASSTHROUGH_PRESENT | u32::from(rid))?;
        }
        Ok(())
    }

    /// Parses and validates a page; the result borrows its strings from `page`.
    pub fn read_from(page: &'a [u8]) -> Result<StartInfo<'a>, StartInfoError> {
        let mut r = FORMAT.check(page)?;
        let vm_id = r.u16()?;
        let code = r.u8()?;
        let reserved = r.u8()?;
        let vcpus = r.u32()?;
        let boot_count = r.u32()?;
        let ram_base = r.u64()?;
        let ram_bytes = r.u64()?;
        let name = r.bytes(NAME_FIELD_LEN)?;
        let settings_len = r.u32()? as usize;
        if reserved != 0 {
            return Err(StartInfoError::ReservedNotZero);
        }
        let kind = VmKind::from_code(u32::from(code)).ok_or(StartInfoError::UnknownKind {
            code: u32::from(code),
        })?;
        let name = decode_name_field(name).map_err(StartInfoError::BadName)?;
        if settings_len > MAX_SETTINGS_LEN {
            return Err(StartInfoError::SettingsTooLong { len: settings_len });
        }
        let settings = core::str::from_utf8(r.bytes(settings_len)?)
            .map_err(|_| StartInfoError::SettingsNotUtf8)?;
        r.skip_to(PEERS)?;
        let peers = r.u64()?;
        let word = r.u32()?;
        let passthrough = match word {
            0 => None,
            w if w & !(PASSTHROUGH_PRESENT | 0xffff) == 0 && w & PASSTHROUGH_PRESENT != 0 => {
                Some(w as u16)
            }
            _ => return Err(StartInfoError::BadPassthrough { word }),
        };
        let info = StartInfo {
            vm_id,
            name,
            kind,
            vcpus,
            ram_base,
            ram_bytes,
            settings,
            boot_count,
            peers,
            passthrough,
        };
        info.validate()?;
        Ok(info)
    }
}

/// Settings are `key=value` lines (one per line, no spaces around '='). Returns the value of the
/// first line whose key is `key`.
pub fn setting<'a>(settings: &'a str, key: &str) -> Option<&'a str> {
    settings.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// The value of `key` as a flag: exactly `true` or `false` (`None`: absent or anything else).
pub fn setting_bool(settings: &str, key: &str) -> Option<bool> {
    match setting(settings, key)? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// The value of `key` as a decimal or `0x`-prefixed hexadecimal number.
pub fn setting_u64(settings: &str, key: &str) -> Option<u64> {
    let value = setting(settings, key)?;
    // from_str_radix and parse both accept a leading '+', which is not part of the format.
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    } else {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        value.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{start_info_gpa, GUEST_RAM_BASE};

    fn put(page: &mut [u8], at: usize, bytes: &[u8]) {
        page[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn too_short(len: usize) -> StartInfoError {
        WireError::TooShort {
            format: "start-info page",
            len,
            need: PAGE_LEN,
        }
        .into()
    }

    fn unsupported(found: u32) -> StartInfoError {
        WireError::UnsupportedVersion {
            format: "start-info page",
            found,
            supported: VERSION,
        }
        .into()
    }

    fn sample() -> StartInfo<'static> {
        StartInfo {
            vm_id: 3,
            name: "guest2",
            kind: VmKind::Guest,
            vcpus: 2,
            ram_base: GUEST_RAM_BASE,
            ram_bytes: 8 * 1024 * 1024,
            settings: "app=hello\nmac=0x0a\n",
            boot_count: 1,
            // Connected to its back-end, VM id 1.
            peers: 1 << 1,
            passthrough: None,
        }
    }

    fn written() -> Vec<u8> {
        let mut page = vec![0xee; PAGE_LEN];
        sample().write_to(&mut page).unwrap();
        page
    }

    fn read_err(corrupt: impl FnOnce(&mut [u8])) -> StartInfoError {
        let mut page = written();
        corrupt(&mut page);
        StartInfo::read_from(&page).unwrap_err()
    }

    fn write_err(info: StartInfo<'_>) -> StartInfoError {
        let mut page = vec![0; PAGE_LEN];
        info.write_to(&mut page).unwrap_err()
    }

    #[test]
    fn round_trip() {
        let page = written();
        assert_eq!(StartInfo::read_from(&page), Ok(sample()));
        // Stale bytes past the settings were cleared; only the peers field is set.
        assert!(page[SETTINGS + sample().settings.len()..PEERS]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(page[PEERS..PEERS + 8], (1u64 << 1).to_le_bytes());
        assert!(page[PEERS + 8..].iter().all(|&b| b == 0));
        let driver = StartInfo {
            kind: VmKind::DriverDomain,
            settings: "",
            vm_id: 1,
            peers: (1 << 2) | (1 << 3) | (1 << MAX_VMS),
            passthrough: Some(0x0010),
            ..sample()
        };
        let mut page = vec![0; PAGE_LEN + 10];
        driver.write_to(&mut page).unwrap();
        assert_eq!(StartInfo::read_from(&page), Ok(driver));
        assert_eq!(
            page[PASSTHROUGH..PASSTHROUGH + 4],
            0x8000_0010u32.to_le_bytes()
        );
    }

    #[test]
    fn page_sits_at_top_of_ram() {
        let ram = sample().ram_bytes;
        assert_eq!(start_info_gpa(ram) + PAGE_SIZE, GUEST_RAM_BASE + ram);
    }

    #[test]
    fn rejects_short_page() {
        let page = written();
        assert_eq!(
            StartInfo::read_from(&page[..PAGE_LEN - 1]),
            Err(too_short(PAGE_LEN - 1))
        );
        let mut small = [0u8; 100];
        assert_eq!(sample().write_to(&mut small), Err(too_short(100)));
    }

    #[test]
    fn rejects_bad_magic() {
        assert_eq!(
            read_err(|p| p[0] = 0),
            WireError::BadMagic {
                format: "start-info page",
                found: *b"\0LSTART\0",
                expected: MAGIC
            }
            .into()
        );
    }

    #[test]
    fn rejects_unknown_version() {
        assert_eq!(read_err(|p| p[8] = 2), unsupported(2));
    }

    #[test]
    fn rejects_nonzero_reserved_bytes() {
        assert_eq!(
            read_err(|p| p[RESERVED_0] = 1),
            StartInfoError::ReservedNotZero
        );
    }

    #[test]
    fn boot_count_round_trips_and_zero_is_refused() {
        let info = StartInfo {
            boot_count: 7,
            ..sample()
        };
        let mut page = vec![0; PAGE_LEN];
        info.write_to(&mut page).unwrap();
        assert_eq!(StartInfo::read_from(&page).unwrap().boot_count, 7);
        assert_eq!(
            read_err(|p| p[BOOT_COUNT..BOOT_COUNT + 4].fill(0)),
            StartInfoError::ZeroBootCount
        );
        assert_eq!(
            write_err(StartInfo {
                boot_count: 0,
                ..sample()
            }),
            StartInfoError::ZeroBootCount
        );
    }

    #[test]
    fn rejects_zero_vm_id() {
        assert_eq!(read_err(|p| p[VM_ID] = 0), StartInfoError::ZeroVmId);
        assert_eq!(
            write_err(StartInfo {
                vm_id: 0,
                ..sample()
            }),
            StartInfoError::ZeroVmId
        );
    }

    #[test]
    fn rejects_unknown_kind() {
        assert_eq!(
            read_err(|p| p[KIND] = 0),
            StartInfoError::UnknownKind { code: 0 }
        );
        assert_eq!(
            read_err(|p| p[KIND] = 9),
            StartInfoError::UnknownKind { code: 9 }
        );
    }

    #[test]
    fn rejects_bad_vcpus() {
        assert_eq!(
            read_err(|p| p[VCPUS] = 0),
            StartInfoError::BadVcpus { vcpus: 0 }
        );
        let vcpus = MAX_VCPUS_PER_VM + 1;
        assert_eq!(
            write_err(StartInfo { vcpus, ..sample() }),
            StartInfoError::BadVcpus { vcpus }
        );
    }

    #[test]
    fn rejects_bad_ram_base() {
        assert_eq!(
            read_err(|p| p[RAM_BASE] = 1),
            StartInfoError::BadRamBase {
                ram_base: GUEST_RAM_BASE + 1
            }
        );
        let ram_base = u64::MAX - PAGE_SIZE + 1;
        assert_eq!(
            write_err(StartInfo {
                ram_base,
                ..sample()
            }),
            StartInfoError::BadRamBase { ram_base }
        );
    }

    #[test]
    fn rejects_bad_ram_size() {
        for ram_bytes in [0, BLOCK_SIZE + PAGE_SIZE, MAX_VM_RAM + BLOCK_SIZE] {
            assert_eq!(
                read_err(|p| p[RAM_BYTES..RAM_BYTES + 8].copy_from_slice(&ram_bytes.to_le_bytes())),
                StartInfoError::BadRamSize { ram_bytes }
            );
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(
            read_err(|p| p[NAME] = 0),
            StartInfoError::BadName(NameProblem::BadPadding)
        );
        assert_eq!(
            read_err(|p| p[NAME..NAME + NAME_FIELD_LEN].fill(0)),
            StartInfoError::BadName(NameProblem::Empty)
        );
        assert_eq!(
            read_err(|p| p[NAME..NAME + NAME_FIELD_LEN].fill(b'a')),
            StartInfoError::BadName(NameProblem::TooLong)
        );
        assert_eq!(
            read_err(|p| p[NAME] = 0xff),
            StartInfoError::BadName(NameProblem::NotUtf8)
        );
        assert_eq!(
            read_err(|p| p[NAME] = b'G'),
            StartInfoError::BadName(NameProblem::InvalidChar)
        );
        assert_eq!(
            write_err(StartInfo {
                name: "",
                ..sample()
            }),
            StartInfoError::BadName(NameProblem::Empty)
        );
    }

    #[test]
    fn rejects_bad_settings() {
        let too_long = (MAX_SETTINGS_LEN as u32 + 1).to_le_bytes();
        assert_eq!(
            read_err(|p| p[SETTINGS_LEN..SETTINGS_LEN + 4].copy_from_slice(&too_long)),
            StartInfoError::SettingsTooLong {
                len: MAX_SETTINGS_LEN + 1
            }
        );
        let long = "x".repeat(MAX_SETTINGS_LEN + 1);
        assert_eq!(
            write_err(StartInfo {
                settings: &long,
                ..sample()
            }),
            StartInfoError::SettingsTooLong {
                len: MAX_SETTINGS_LEN + 1
            }
        );
        assert_eq!(
            read_err(|p| p[SETTINGS] = 0xff),
            StartInfoError::SettingsNotUtf8
        );
    }

    #[test]
    fn peers_round_trip_and_no_peers_is_zero() {
        for peers in [0, 1 << 1, (1 << 1) | (1 << MAX_VMS), VM_ID_BITS & !0b1001] {
            let info = StartInfo { peers, ..sample() };
            let mut page = vec![0; PAGE_LEN];
            info.write_to(&mut page).unwrap();
            assert_eq!(StartInfo::read_from(&page).unwrap().peers, peers);
        }
    }

    #[test]
    fn rejects_hypervisor_as_peer() {
        assert_eq!(
            read_err(|p| p[PEERS] |= 1),
            StartInfoError::PeersIncludeHypervisor
        );
        assert_eq!(
            write_err(StartInfo {
                peers: 0b11,
                ..sample()
            }),
            StartInfoError::PeersIncludeHypervisor
        );
    }

    #[test]
    fn rejects_self_as_peer() {
        // sample() is VM id 3.
        assert_eq!(
            read_err(|p| p[PEERS] |= 1 << 3),
            StartInfoError::PeersIncludeSelf { vm_id: 3 }
        );
        assert_eq!(
            write_err(StartInfo {
                peers: 1 << 3,
                ..sample()
            }),
            StartInfoError::PeersIncludeSelf { vm_id: 3 }
        );
    }

    #[test]
    fn rejects_peers_beyond_max_vms() {
        let peers: u64 = (1 << 1) | (1 << (MAX_VMS + 1));
        assert_eq!(
            read_err(|p| p[PEERS..PEERS + 8].copy_from_slice(&peers.to_le_bytes())),
            StartInfoError::PeersOutOfRange { peers }
        );
        assert_eq!(
            write_err(StartInfo {
                peers: 1 << 63,
                ..sample()
            }),
            StartInfoError::PeersOutOfRange { peers: 1 << 63 }
        );
    }

    #[test]
    fn passthrough_is_for_driver_domains_and_its_reserved_bits_are_zero() {
        assert_eq!(
            write_err(StartInfo {
                passthrough: Some(0x10),
                ..sample()
            }),
            StartInfoError::PassthroughToGuest
        );
        assert_eq!(
            read_err(|page| put(page, PASSTHROUGH, &0x8001_0010u32.to_le_bytes())),
            StartInfoError::BadPassthrough { word: 0x8001_0010 }
        );
        // A routing id without the present bit is not "function 00:02.0", it is garbage.
        assert_eq!(
            read_err(|page| put(page, PASSTHROUGH, &0x10u32.to_le_bytes())),
            StartInfoError::BadPassthrough { word: 0x10 }
        );
        // Present on a guest's page: refused by the reader too.
        assert_eq!(
            read_err(|page| put(page, PASSTHROUGH, &0x8000_0010u32.to_le_bytes())),
            StartInfoError::PassthroughToGuest
        );
    }

    #[test]
    fn peers_field_does_not_overlap_the_longest_settings() {
        let long = "x".repeat(MAX_SETTINGS_LEN);
        let info = StartInfo {
            settings: &long,
            peers: (1 << 1) | (1 << MAX_VMS),
            ..sample()
        };
        let mut page = vec![0; PAGE_LEN];
        info.write_to(&mut page).unwrap();
        assert_eq!(StartInfo::read_from(&page), Ok(info));
    }

    #[test]
    fn longest_settings_fit() {
        let long = "x".repeat(MAX_SETTINGS_LEN);
        let info = StartInfo {
            settings: &long,
            ..sample()
        };
        let mut page = vec![0; PAGE_LEN];
        info.write_to(&mut page).unwrap();
        assert_eq!(
            StartInfo::read_from(&page).unwrap().settings.len(),
            MAX_SETTINGS_LEN
        );
    }

    #[test]
    fn errors_have_distinct_messages() {
        let errors = [
            too_short(1),
            WireError::BadMagic {
                format: "start-info page",
                found: [0; 8],
                expected: MAGIC,
            }
            .into(),
            unsupported(2),
            StartInfoError::ReservedNotZero,
            StartInfoError::ZeroVmId,
            StartInfoError::UnknownKind { code: 9 },
            StartInfoError::BadVcpus { vcpus: 0 },
            StartInfoError::BadRamBase { ram_base: 1 },
            StartInfoError::BadRamSize { ram_bytes: 1 },
            StartInfoError::BadName(NameProblem::Empty),
            StartInfoError::SettingsTooLong { len: 9999 },
            StartInfoError::SettingsNotUtf8,
            StartInfoError::PeersIncludeHypervisor,
            StartInfoError::PeersIncludeSelf { vm_id: 3 },
            StartInfoError::PeersOutOfRange { peers: 1 << 40 },
            StartInfoError::BadPassthrough { word: 1 },
            StartInfoError::PassthroughToGuest,
        ];
        let messages: std::collections::HashSet<String> =
            errors.iter().map(|e| std::format!("{e}")).collect();
        assert_eq!(messages.len(), errors.len());
    }

    #[test]
    fn setting_finds_values() {
        let s = "app=hello\nrole=switch\nurl=http://x/?a=b\nempty=\n";
        assert_eq!(setting(s, "app"), Some("hello"));
        assert_eq!(setting(s, "role"), Some("switch"));
        assert_eq!(setting(s, "url"), Some("http://x/?a=b"));
        assert_eq!(setting(s, "empty"), Some(""));
        assert_eq!(setting(s, "missing"), None);
        assert_eq!(setting(s, "ap"), None, "keys match whole");
        assert_eq!(setting("a=1\na=2", "a"), Some("1"), "first line wins");
        assert_eq!(setting("no equals sign\n", "no equals sign"), None);
        assert_eq!(setting("", "a"), None);
        assert_eq!(setting("a=1\r\nb=2\r\n", "a"), Some("1"));
    }

    #[test]
    fn setting_bool_takes_exactly_true_and_false() {
        let s = "on=true\noff=false\nupper=True\none=1\nempty=\nspace= true\n";
        assert_eq!(setting_bool(s, "on"), Some(true));
        assert_eq!(setting_bool(s, "off"), Some(false));
        for bad in ["upper", "one", "empty", "space", "missing"] {
            assert_eq!(setting_bool(s, bad), None, "{bad}");
        }
    }

    #[test]
    fn setting_u64_parses_decimal_and_hex() {
        let s = "dec=42\nhex=0x2A\nHEX=0X10\nbig=18446744073709551615\nover=18446744073709551616\n\
                 neg=-1\nplus=+5\nhexplus=0x+5\nbare=0x\nword=abc\nempty=\nspace= 1\n";
        assert_eq!(setting_u64(s, "dec"), Some(42));
        assert_eq!(setting_u64(s, "hex"), Some(42));
        assert_eq!(setting_u64(s, "HEX"), Some(16));
        assert_eq!(setting_u64(s, "big"), Some(u64::MAX));
        for bad in [
            "over", "neg", "plus", "hexplus", "bare", "word", "empty", "space", "missing",
        ] {
            assert_eq!(setting_u64(s, bad), None, "{bad}");
        }
    }
}
