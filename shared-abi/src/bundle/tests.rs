//! Host tests of `bundle`.

use super::builder::{build, VmDescription};
use super::*;
use proptest::prelude::*;

fn too_short(len: usize) -> BundleError {
    WireError::TooShort {
        format: "bundle",
        len,
        need: HEADER_SIZE,
    }
    .into()
}

fn unsupported(found: u32) -> BundleError {
    WireError::UnsupportedVersion {
        format: "bundle",
        found,
        supported: VERSION,
    }
    .into()
}

const MIB: u64 = 1024 * 1024;

fn desc(
    name: &str,
    kind: VmKind,
    vcpus: u32,
    ram_mib: u64,
    image: &[u8],
    settings: &str,
) -> VmDescription {
    VmDescription {
        name: name.into(),
        kind,
        vcpus,
        ram_bytes: ram_mib * MIB,
        image: image.to_vec(),
        settings: settings.into(),
        backend: None,
        passthrough: None,
        emulated_nic: false,
    }
}

const NIC: Bdf = match Bdf::new(0, 2, 0) {
    Some(bdf) => bdf,
    None => panic!(),
};

fn with_passthrough(bdf: Bdf, d: VmDescription) -> VmDescription {
    VmDescription {
        passthrough: Some(bdf),
        ..d
    }
}

fn guest_of(backend: u16, d: VmDescription) -> VmDescription {
    VmDescription {
        backend: Some(backend),
        ..d
    }
}

fn fixture_descs() -> Vec<VmDescription> {
    let driver_image = vec![0xaa; 5000];
    let guest_image = vec![0xbb; 3000];
    vec![
        with_passthrough(
            NIC,
            desc(
                "driver-domain",
                VmKind::DriverDomain,
                1,
                16,
                &driver_image,
                "role=switch\n",
            ),
        ),
        guest_of(
            1,
            desc("guest1", VmKind::Guest, 1, 8, &guest_image, "app=hello\n"),
        ),
        guest_of(
            1,
            desc(
                "guest2",
                VmKind::Guest,
                2,
                8,
                &guest_image,
                "app=hello\nmac=0x5\n",
            ),
        ),
    ]
}

fn fixture() -> Vec<u8> {
    build(&fixture_descs()).expect("fixture is valid")
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Recomputes the checksum so a corruption reaches the check it is aimed at.
fn reseal(b: &mut [u8]) {
    let total = get_u64(b, 16) as usize;
    let sum = fnv1a64(&b[HEADER_SIZE..total]);
    put_u64(b, 24, sum);
}

fn vm_entry(b: &[u8], vm: usize) -> usize {
    get_u64(b, 40) as usize + vm * VM_ENTRY_SIZE
}

fn put_vm_u16(b: &mut [u8], vm: usize, field: usize, v: u16) {
    let at = vm_entry(b, vm) + field;
    put_u16(b, at, v);
}

fn put_vm_u32(b: &mut [u8], vm: usize, field: usize, v: u32) {
    let at = vm_entry(b, vm) + field;
    put_u32(b, at, v);
}

fn put_vm_u64(b: &mut [u8], vm: usize, field: usize, v: u64) {
    let at = vm_entry(b, vm) + field;
    put_u64(b, at, v);
}

fn image_entry(b: &[u8], image: usize) -> usize {
    get_u64(b, 48) as usize + image * IMAGE_ENTRY_SIZE
}

/// Applies `corrupt`, reseals, and returns the parse error.
fn corrupted(corrupt: impl FnOnce(&mut Vec<u8>)) -> BundleError {
    let mut b = fixture();
    corrupt(&mut b);
    reseal(&mut b);
    Bundle::parse(&b).expect_err("corruption must be rejected")
}

fn set_name(b: &mut [u8], vm: usize, field: &[u8; NAME_FIELD_LEN]) {
    let at = vm_entry(b, vm);
    b[at..at + NAME_FIELD_LEN].copy_from_slice(field);
}

fn name_field(bytes: &[u8]) -> [u8; NAME_FIELD_LEN] {
    let mut f = [0u8; NAME_FIELD_LEN];
    f[..bytes.len()].copy_from_slice(bytes);
    f
}

#[test]
fn round_trip_three_vms() {
    let descs = fixture_descs();
    let bytes = fixture();
    let bundle = Bundle::parse(&bytes).unwrap();
    assert_eq!(bundle.vm_count(), 3);
    assert_eq!(bundle.total_size(), bytes.len());
    for (i, (vm, d)) in bundle.vms().zip(&descs).enumerate() {
        assert_eq!(vm.id as usize, i + 1);
        assert_eq!(vm.name, d.name);
        assert_eq!(vm.kind, d.kind);
        assert_eq!(vm.vcpus, d.vcpus);
        assert_eq!(vm.ram_bytes, d.ram_bytes);
        assert_eq!(vm.image, d.image.as_slice());
        assert_eq!(vm.settings, d.settings);
        assert_eq!(vm.backend, d.backend);
        assert_eq!(vm.passthrough, d.passthrough);
    }
    assert_eq!(bundle.vm(0).unwrap().passthrough, Some(NIC));
    assert_eq!(bundle.vms().count(), 3);
    assert_eq!(bundle.vm(2).unwrap().name, "guest2");
    assert!(bundle.vm(3).is_none());
}

#[test]
fn identical_images_are_stored_once() {
    let bytes = fixture();
    assert_eq!(get_u32(&bytes, 36), 2, "two distinct images");
    let bundle = Bundle::parse(&bytes).unwrap();
    let (g1, g2) = (bundle.vm(1).unwrap(), bundle.vm(2).unwrap());
    assert_eq!(g1.image.as_ptr(), g2.image.as_ptr());
    // 5000 + 3000 image bytes, not 5000 + 2 * 3000.
    assert!(bytes.len() < 5000 + 2 * 3000);
}

#[test]
fn trailing_bytes_past_total_size_are_ignored() {
    let mut bytes = fixture();
    let total = bytes.len();
    bytes.extend_from_slice(&[0xff; 100]);
    let bundle = Bundle::parse(&bytes).unwrap();
    assert_eq!(bundle.total_size(), total);
}

#[test]
fn empty_settings_are_allowed() {
    let mut descs = fixture_descs();
    for d in &mut descs {
        d.settings.clear();
    }
    let bytes = build(&descs).unwrap();
    let bundle = Bundle::parse(&bytes).unwrap();
    assert!(bundle.vms().all(|vm| vm.settings.is_empty()));
}

#[test]
fn rejects_input_shorter_than_header() {
    let bytes = fixture();
    let err = Bundle::parse(&bytes[..HEADER_SIZE - 1]).unwrap_err();
    assert_eq!(err, too_short(HEADER_SIZE - 1));
    assert!(matches!(
        Bundle::parse(&[]),
        Err(e) if e == too_short(0)
    ));
}

#[test]
fn rejects_bad_magic() {
    let err = corrupted(|b| b[0] = b'X');
    assert!(
        matches!(err, BundleError::Wire(WireError::BadMagic { found, .. }) if &found == b"XLUICEBN")
    );
}

#[test]
fn rejects_unknown_version() {
    // Version 1 had no back-end field, version 2 a 32-bit vCPU count where version 3 has
    // the vCPU count and the passthrough function: both are refused, not misread.
    for found in [0, 1, 2, 4, u32::MAX] {
        let err = corrupted(|b| put_u32(b, 8, found));
        assert_eq!(err, unsupported(found));
    }
    assert_eq!(get_u32(&fixture(), 8), 3);
    assert_eq!(
        std::format!("{}", unsupported(2)),
        "unsupported bundle version 2 (this build reads version 3)"
    );
}

#[test]
fn rejects_wrong_header_size() {
    let err = corrupted(|b| put_u32(b, 12, 64));
    assert_eq!(err, BundleError::BadHeaderSize { found: 64 });
}

#[test]
fn rejects_total_size_smaller_than_header() {
    let mut b = fixture();
    put_u64(&mut b, 16, 10);
    assert_eq!(
        Bundle::parse(&b).unwrap_err(),
        BundleError::TotalSizeTooSmall { claimed: 10 }
    );
}

#[test]
fn rejects_absurd_total_size() {
    let mut b = fixture();
    put_u64(&mut b, 16, u64::MAX);
    assert_eq!(
        Bundle::parse(&b).unwrap_err(),
        BundleError::TooLarge { claimed: u64::MAX }
    );
}

#[test]
fn rejects_truncated_input() {
    let b = fixture();
    let err = Bundle::parse(&b[..b.len() - 1]).unwrap_err();
    assert_eq!(
        err,
        BundleError::Truncated {
            claimed: b.len() as u64,
            present: b.len() - 1
        }
    );
    let msg = std::format!("{err}");
    assert!(msg.starts_with("bundle truncated: header says"), "{msg}");
}

#[test]
fn rejects_checksum_mismatch() {
    let mut b = fixture();
    let last = b.len() - 1;
    b[last] ^= 1;
    assert!(matches!(
        Bundle::parse(&b),
        Err(BundleError::ChecksumMismatch { .. })
    ));
}

#[test]
fn rejects_zero_vms() {
    assert_eq!(corrupted(|b| put_u32(b, 32, 0)), BundleError::NoVms);
}

#[test]
fn rejects_too_many_vms() {
    let count = MAX_VMS as u32 + 1;
    assert_eq!(
        corrupted(|b| put_u32(b, 32, count)),
        BundleError::TooManyVms {
            count: count as usize
        }
    );
    assert_eq!(
        corrupted(|b| put_u32(b, 32, u32::MAX)),
        BundleError::TooManyVms {
            count: u32::MAX as usize
        }
    );
}

#[test]
fn rejects_too_many_images() {
    let count = MAX_VMS as u32 + 1;
    assert_eq!(
        corrupted(|b| put_u32(b, 36, count)),
        BundleError::TooManyImages {
            count: count as usize
        }
    );
}

#[test]
fn rejects_vm_table_out_of_bounds() {
    let err = corrupted(|b| put_u64(b, 40, u64::MAX));
    assert!(matches!(
        err,
        BundleError::OutOfBounds {
            region: Region::VmTable,
            offset: u64::MAX,
            ..
        }
    ));
    // Inside the file but on top of the header.
    let err = corrupted(|b| put_u64(b, 40, 0));
    assert!(matches!(
        err,
        BundleError::OutOfBounds {
            region: Region::VmTable,
            offset: 0,
            ..
        }
    ));
    // More VMs than the table has room for before the end of the file.
    let err = corrupted(|b| {
        let total = b.len() as u64;
        put_u64(b, 40, total - VM_ENTRY_SIZE as u64);
    });
    assert!(matches!(
        err,
        BundleError::OutOfBounds {
            region: Region::VmTable,
            ..
        }
    ));
}

#[test]
fn rejects_image_table_out_of_bounds() {
    let err = corrupted(|b| put_u64(b, 48, u64::MAX - 8));
    assert!(matches!(
        err,
        BundleError::OutOfBounds {
            region: Region::ImageTable,
            ..
        }
    ));
}

#[test]
fn rejects_string_area_out_of_bounds() {
    let err = corrupted(|b| put_u64(b, 64, u64::MAX));
    assert!(matches!(
        err,
        BundleError::OutOfBounds {
            region: Region::StringArea,
            len: u64::MAX,
            ..
        }
    ));
}

#[test]
fn rejects_image_out_of_bounds() {
    let err = corrupted(|b| {
        let e = image_entry(b, 1);
        put_u64(b, e, u64::MAX - 1);
        put_u64(b, e + 8, 2);
    });
    assert!(matches!(
        err,
        BundleError::OutOfBounds {
            region: Region::Image(1),
            ..
        }
    ));
    let err = corrupted(|b| {
        let e = image_entry(b, 0);
        put_u64(b, e + 8, u64::MAX);
    });
    assert!(matches!(
        err,
        BundleError::OutOfBounds {
            region: Region::Image(0),
            ..
        }
    ));
}

#[test]
fn rejects_empty_image() {
    let err = corrupted(|b| {
        let e = image_entry(b, 1);
        put_u64(b, e + 8, 0);
    });
    assert_eq!(err, BundleError::EmptyImage { image: 1 });
}

#[test]
fn rejects_overlapping_images() {
    let err = corrupted(|b| {
        let first = get_u64(b, image_entry(b, 0));
        let e = image_entry(b, 1);
        put_u64(b, e, first + 1);
        put_u64(b, e + 8, 10);
    });
    assert_eq!(
        err,
        BundleError::Overlap {
            first: Region::Image(0),
            second: Region::Image(1)
        }
    );
}

#[test]
fn rejects_image_overlapping_a_table() {
    let err = corrupted(|b| {
        let vm_table = get_u64(b, 40);
        let e = image_entry(b, 0);
        put_u64(b, e, vm_table + 8);
    });
    assert_eq!(
        err,
        BundleError::Overlap {
            first: Region::VmTable,
            second: Region::Image(0)
        }
    );
    let err = corrupted(|b| {
        let strings = get_u64(b, 56);
        let e = image_entry(b, 1);
        put_u64(b, e, strings);
    });
    assert!(matches!(
        err,
        BundleError::Overlap {
            second: Region::Image(1),
            ..
        }
    ));
}

#[test]
fn rejects_tables_overlapping_each_other() {
    let err = corrupted(|b| {
        let vm_table = get_u64(b, 40);
        put_u64(b, 48, vm_table);
    });
    assert_eq!(
        err,
        BundleError::Overlap {
            first: Region::VmTable,
            second: Region::ImageTable
        }
    );
}

#[test]
fn rejects_empty_name() {
    let err = corrupted(|b| set_name(b, 1, &[0; NAME_FIELD_LEN]));
    assert_eq!(
        err,
        BundleError::BadName {
            vm: 1,
            problem: NameProblem::Empty
        }
    );
}

#[test]
fn rejects_name_too_long() {
    let err = corrupted(|b| set_name(b, 0, &[b'a'; NAME_FIELD_LEN]));
    assert_eq!(
        err,
        BundleError::BadName {
            vm: 0,
            problem: NameProblem::TooLong
        }
    );
}

#[test]
fn rejects_name_not_utf8() {
    let err = corrupted(|b| set_name(b, 2, &name_field(b"guest\xff")));
    assert_eq!(
        err,
        BundleError::BadName {
            vm: 2,
            problem: NameProblem::NotUtf8
        }
    );
}

#[test]
fn rejects_name_with_invalid_chars() {
    for bad in [&b"Guest1"[..], b"guest_1", b"guest 1", "gäst".as_bytes()] {
        let err = corrupted(|b| set_name(b, 1, &name_field(bad)));
        assert_eq!(
            err,
            BundleError::BadName {
                vm: 1,
                problem: NameProblem::InvalidChar
            }
        );
    }
}

#[test]
fn rejects_name_with_garbage_after_nul() {
    let err = corrupted(|b| set_name(b, 1, &name_field(b"guest1\0x")));
    assert_eq!(
        err,
        BundleError::BadName {
            vm: 1,
            problem: NameProblem::BadPadding
        }
    );
}

#[test]
fn rejects_duplicate_names() {
    let err = corrupted(|b| set_name(b, 2, &name_field(b"guest1")));
    assert_eq!(
        err,
        BundleError::DuplicateName {
            first: 1,
            second: 2
        }
    );
    let mut descs = fixture_descs();
    descs[0].name = "guest2".into();
    assert_eq!(
        build(&descs),
        Err(BundleError::DuplicateName {
            first: 0,
            second: 2
        })
    );
}

#[test]
fn rejects_unknown_kind() {
    for code in [0, 3, u16::MAX] {
        let err = corrupted(|b| put_vm_u16(b, 1, 32, code));
        assert_eq!(
            err,
            BundleError::UnknownKind {
                vm: 1,
                code: u32::from(code)
            }
        );
    }
}

#[test]
fn rejects_bad_vcpu_counts() {
    for vcpus in [0, MAX_VCPUS_PER_VM as u16 + 1, u16::MAX] {
        let err = corrupted(|b| put_vm_u16(b, 0, 36, vcpus));
        assert_eq!(
            err,
            BundleError::BadVcpus {
                vm: 0,
                vcpus: u32::from(vcpus)
            }
        );
    }
    // The builder refuses counts that would wrap in the 16-bit field instead of storing
    // 65537 as 1.
    let mut descs = fixture_descs();
    descs[1].vcpus = 0x1_0001;
    assert_eq!(
        build(&descs),
        Err(BundleError::BadVcpus {
            vm: 1,
            vcpus: 0x1_0001
        })
    );
}

#[test]
fn rejects_ram_not_block_multiple() {
    let ram_bytes = 8 * MIB + PAGE_SIZE;
    let err = corrupted(|b| put_vm_u64(b, 1, 40, ram_bytes));
    assert_eq!(err, BundleError::RamNotBlockMultiple { vm: 1, ram_bytes });
}

#[test]
fn rejects_ram_out_of_range() {
    for ram_bytes in [
        0,
        MAX_VM_RAM + BLOCK_SIZE,
        u64::MAX - (u64::MAX % BLOCK_SIZE),
    ] {
        let err = corrupted(|b| put_vm_u64(b, 1, 40, ram_bytes));
        assert_eq!(err, BundleError::RamOutOfRange { vm: 1, ram_bytes });
    }
}

#[test]
fn rejects_image_that_leaves_no_room_for_start_info() {
    let fits = desc(
        "a",
        VmKind::Guest,
        1,
        2,
        &vec![1; (2 * MIB - PAGE_SIZE) as usize],
        "",
    );
    build(std::slice::from_ref(&fits)).expect("image ending right below the start-info page fits");
    let mut too_big = fits;
    too_big.image.push(1);
    assert_eq!(
        build(&[too_big]),
        Err(BundleError::ImageTooLarge {
            vm: 0,
            image_len: 2 * MIB - PAGE_SIZE + 1,
            ram_bytes: 2 * MIB
        })
    );
}

#[test]
fn rejects_image_index_out_of_range() {
    let err = corrupted(|b| put_vm_u16(b, 2, 48, 2));
    assert_eq!(
        err,
        BundleError::ImageIndexOutOfRange {
            vm: 2,
            index: 2,
            image_count: 2
        }
    );
    let err = corrupted(|b| put_vm_u16(b, 2, 48, u16::MAX));
    assert!(matches!(
        err,
        BundleError::ImageIndexOutOfRange { index: 0xffff, .. }
    ));
}

#[test]
fn rejects_settings_too_long() {
    let len = MAX_SETTINGS_LEN as u32 + 1;
    let err = corrupted(|b| put_vm_u32(b, 0, 52, len));
    assert_eq!(
        err,
        BundleError::SettingsTooLong {
            vm: 0,
            len: len as u64
        }
    );
    let mut descs = fixture_descs();
    descs[1].settings = "x".repeat(MAX_SETTINGS_LEN + 1);
    assert!(matches!(
        build(&descs),
        Err(BundleError::SettingsTooLong { vm: 1, .. })
    ));
}

#[test]
fn rejects_settings_out_of_bounds() {
    let err = corrupted(|b| put_vm_u64(b, 1, 56, u64::MAX));
    assert!(matches!(
        err,
        BundleError::OutOfBounds {
            region: Region::Settings(1),
            offset: u64::MAX,
            ..
        }
    ));
    // In range of the file but past the end of the string area.
    let err = corrupted(|b| {
        let strings_len = get_u64(b, 64);
        put_vm_u64(b, 1, 56, strings_len - 2);
    });
    assert!(matches!(
        err,
        BundleError::OutOfBounds {
            region: Region::Settings(1),
            ..
        }
    ));
}

/// The bundle parser refuses every bad `balloon_schedule` itself (the hypervisor applies it),
/// whatever the topology tool let through: each refusal of the schedule's rules.
#[test]
fn rejects_every_bad_balloon_schedule() {
    use crate::balloon::ScheduleError as E;
    let sixteen: Vec<String> = (1..=17).map(|i| std::format!("{i}:16")).collect();
    let cases = [
        ("", E::Empty),
        (
            "1000",
            E::BadPoint {
                point: 0,
                shape: "ms:MiB",
            },
        ),
        (
            "3600001:16",
            E::TooLate {
                point: 0,
                ms: 3_600_001,
            },
        ),
        ("5:16,5:32", E::NotRising { point: 1, ms: 5 }),
        ("5:2", E::TargetOutOfRange { point: 0, mib: 2 }),
        (
            "5:1025",
            E::TargetOutOfRange {
                point: 0,
                mib: 1025,
            },
        ),
        (&sixteen.join(","), E::TooManyPoints),
    ];
    for (text, problem) in cases {
        let mut descs = fixture_descs();
        descs[1].settings = std::format!("app=hello\nballoon_schedule={text}\n");
        assert_eq!(
            build(&descs).err(),
            Some(BundleError::BadBalloonSchedule { vm: 1, problem }),
            "{text:?}"
        );
    }
    let mut descs = fixture_descs();
    descs[2].settings = "balloon_schedule=1000:16,3000:8\n".into();
    let bytes = build(&descs).unwrap();
    let bundle = Bundle::parse(&bytes).unwrap();
    let guest2 = bundle.vm(2).unwrap();
    let schedule = Bundle::balloon_schedule(&guest2);
    assert_eq!(schedule.points().len(), 2);
    assert_eq!(schedule.points()[1].pages, 8 * MIB / PAGE_SIZE);
    assert!(Bundle::balloon_schedule(&bundle.vm(0).unwrap()).is_empty());
}

#[test]
fn rejects_settings_not_utf8() {
    let err = corrupted(|b| {
        let strings = get_u64(b, 56) as usize;
        b[strings] = 0xff;
    });
    assert_eq!(err, BundleError::SettingsNotUtf8 { vm: 0 });
}

#[test]
fn build_rejects_what_it_cannot_encode() {
    assert_eq!(build(&[]), Err(BundleError::NoVms));
    let many: Vec<_> = (0..=MAX_VMS)
        .map(|i| desc(&std::format!("vm{i}"), VmKind::Guest, 1, 2, &[1], ""))
        .collect();
    assert_eq!(
        build(&many),
        Err(BundleError::TooManyVms { count: MAX_VMS + 1 })
    );
    let long = desc(
        &"a".repeat(MAX_VM_NAME_LEN + 1),
        VmKind::Guest,
        1,
        2,
        &[1],
        "",
    );
    assert_eq!(
        build(&[long]),
        Err(BundleError::BadName {
            vm: 0,
            problem: NameProblem::TooLong
        })
    );
    // Names with a NUL inside fit the field but are caught by the parse of the output.
    let nul = desc("a\0b", VmKind::Guest, 1, 2, &[1], "");
    assert_eq!(
        build(&[nul]),
        Err(BundleError::BadName {
            vm: 0,
            problem: NameProblem::BadPadding
        })
    );
}

#[test]
fn max_vms_is_accepted() {
    let many: Vec<_> = (0..MAX_VMS)
        .map(|i| {
            desc(
                &std::format!("vm{i}"),
                VmKind::Guest,
                1,
                2,
                &[i as u8 + 1],
                "",
            )
        })
        .collect();
    let bytes = build(&many).unwrap();
    assert_eq!(Bundle::parse(&bytes).unwrap().vm_count(), MAX_VMS);
}

#[test]
fn backends_are_stored_at_offset_34() {
    let b = fixture();
    let at = |vm| vm_entry(&b, vm) + 34;
    assert_eq!(&b[at(0)..at(0) + 2], &[0, 0], "driver domain: none");
    assert_eq!(&b[at(1)..at(1) + 2], &[1, 0], "guest1 -> VM id 1");
    assert_eq!(&b[at(2)..at(2) + 2], &[1, 0], "guest2 -> VM id 1");
    let bundle = Bundle::parse(&b).unwrap();
    assert_eq!(bundle.vm(0).unwrap().backend, None);
    assert_eq!(bundle.vm(1).unwrap().backend, Some(1));
}

#[test]
fn guests_without_backend_are_allowed() {
    let mut descs = fixture_descs();
    descs[2].backend = None;
    let bytes = build(&descs).unwrap();
    let bundle = Bundle::parse(&bytes).unwrap();
    assert_eq!(bundle.vm(2).unwrap().backend, None);
    assert_eq!(bundle.peers_of(3), 0);
    assert_eq!(bundle.peers_of(1), 1 << 2);
}

#[test]
fn rejects_backend_out_of_range() {
    for backend in [4, MAX_VMS as u16 + 1, u16::MAX] {
        let err = corrupted(|b| put_vm_u16(b, 1, 34, backend));
        assert_eq!(
            err,
            BundleError::BackendOutOfRange {
                vm: 1,
                backend,
                vm_count: 3
            }
        );
    }
    let mut descs = fixture_descs();
    descs[2].backend = Some(4);
    assert_eq!(
        build(&descs),
        Err(BundleError::BackendOutOfRange {
            vm: 2,
            backend: 4,
            vm_count: 3
        })
    );
    // Some(0) would be written as "none"; the builder refuses it instead of dropping it.
    descs[2].backend = Some(0);
    assert_eq!(
        build(&descs),
        Err(BundleError::BackendOutOfRange {
            vm: 2,
            backend: 0,
            vm_count: 3
        })
    );
}

#[test]
fn rejects_backend_naming_itself() {
    let err = corrupted(|b| put_vm_u16(b, 2, 34, 3));
    assert_eq!(err, BundleError::BackendIsSelf { vm: 2 });
    let mut descs = fixture_descs();
    descs[1].backend = Some(2);
    assert_eq!(build(&descs), Err(BundleError::BackendIsSelf { vm: 1 }));
}

#[test]
fn rejects_backend_that_is_not_a_driver_domain() {
    let err = corrupted(|b| put_vm_u16(b, 2, 34, 2));
    assert_eq!(
        err,
        BundleError::BackendNotDriverDomain { vm: 2, backend: 2 }
    );
    // Also when the guest comes before the VM it names.
    let mut descs = fixture_descs();
    descs[1].backend = Some(3);
    descs[2].backend = None;
    assert_eq!(
        build(&descs),
        Err(BundleError::BackendNotDriverDomain { vm: 1, backend: 3 })
    );
}

#[test]
fn rejects_driver_domain_with_backend() {
    let err = corrupted(|b| put_vm_u16(b, 0, 34, 2));
    assert_eq!(
        err,
        BundleError::DriverDomainHasBackend { vm: 0, backend: 2 }
    );
    // Even naming another driver domain, or itself: driver domains are never front-ends.
    let mut descs = fixture_descs();
    descs.push(desc("dd2", VmKind::DriverDomain, 1, 2, &[7], ""));
    descs[3].backend = Some(1);
    assert_eq!(
        build(&descs),
        Err(BundleError::DriverDomainHasBackend { vm: 3, backend: 1 })
    );
    descs[3].backend = Some(4);
    assert_eq!(
        build(&descs),
        Err(BundleError::DriverDomainHasBackend { vm: 3, backend: 4 })
    );
}

fn vm_u16(b: &[u8], vm: usize, field: usize) -> u16 {
    let at = vm_entry(b, vm) + field;
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[test]
fn version_3_entry_layout() {
    let b = fixture();
    // Driver domain: 1 vCPU, owns 00:02.0 (routing ID 0x10), image 0, flag PASSTHROUGH.
    assert_eq!(vm_u16(&b, 0, 36), 1);
    assert_eq!(vm_u16(&b, 0, 38), 0x10);
    assert_eq!(vm_u16(&b, 0, 48), 0);
    assert_eq!(vm_u16(&b, 0, 50), VM_FLAG_PASSTHROUGH);
    // guest2: 2 vCPUs, no passthrough, image 1, no flags.
    assert_eq!(vm_u16(&b, 2, 36), 2);
    assert_eq!(vm_u16(&b, 2, 38), 0);
    assert_eq!(vm_u16(&b, 2, 48), 1);
    assert_eq!(vm_u16(&b, 2, 50), 0);
}

#[test]
fn passthrough_round_trips_every_field_value() {
    for bdf in [
        Bdf::new(0, 0, 1).unwrap(),
        Bdf::new(0, 1, 0).unwrap(),
        Bdf::new(0, 0x1f, 7).unwrap(),
        Bdf::new(0xff, 0x1f, 7).unwrap(),
    ] {
        let mut descs = fixture_descs();
        descs[0].passthrough = Some(bdf);
        let bytes = build(&descs).unwrap();
        let bundle = Bundle::parse(&bytes).unwrap();
        assert_eq!(bundle.vm(0).unwrap().passthrough, Some(bdf));
        assert_eq!(vm_u16(&bytes, 0, 38), bdf.routing_id());
        assert!(bundle.vms().skip(1).all(|vm| vm.passthrough.is_none()));
    }
    // A driver domain without one; any routing ID written by hand decodes to a valid BDF.
    let mut descs = fixture_descs();
    descs[0].passthrough = None;
    let bytes = build(&descs).unwrap();
    assert_eq!(
        Bundle::parse(&bytes).unwrap().vm(0).unwrap().passthrough,
        None
    );
    let mut b = fixture();
    put_vm_u16(&mut b, 0, 38, u16::MAX);
    reseal(&mut b);
    assert_eq!(
        Bundle::parse(&b).unwrap().vm(0).unwrap().passthrough,
        Bdf::new(0xff, 0x1f, 7)
    );
}

#[test]
fn two_driver_domains_may_own_different_functions() {
    let mut descs = fixture_descs();
    descs.push(with_passthrough(
        Bdf::new(0, 3, 0).unwrap(),
        desc("dd2", VmKind::DriverDomain, 1, 2, &[7], ""),
    ));
    let bytes = build(&descs).unwrap();
    let bundle = Bundle::parse(&bytes).unwrap();
    let owned: Vec<_> = bundle.vms().map(|vm| vm.passthrough).collect();
    assert_eq!(owned, [Some(NIC), None, None, Bdf::new(0, 3, 0)]);
}

#[test]
fn rejects_passthrough_on_a_guest() {
    let err = corrupted(|b| {
        put_vm_u16(b, 1, 38, 0x18);
        put_vm_u16(b, 1, 50, VM_FLAG_PASSTHROUGH);
    });
    assert_eq!(
        err,
        BundleError::PassthroughNotDriverDomain {
            vm: 1,
            bdf: Bdf::new(0, 3, 0).unwrap()
        }
    );
    let mut descs = fixture_descs();
    descs[2].passthrough = Some(Bdf::new(0, 3, 0).unwrap());
    let err = build(&descs).unwrap_err();
    assert!(matches!(
        err,
        BundleError::PassthroughNotDriverDomain { vm: 2, .. }
    ));
    assert_eq!(
        std::format!("{err}"),
        "VM entry 2: is a guest but owns PCI function 00:03.0; only driver domains get a \
             passthrough device"
    );
}

#[test]
fn rejects_the_host_bridge() {
    let err = corrupted(|b| put_vm_u16(b, 0, 38, 0));
    assert_eq!(err, BundleError::PassthroughHostBridge { vm: 0 });
    let mut descs = fixture_descs();
    descs[0].passthrough = Some(Bdf::HOST_BRIDGE);
    let err = build(&descs).unwrap_err();
    assert_eq!(err, BundleError::PassthroughHostBridge { vm: 0 });
    assert!(std::format!("{err}").contains("00:00.0 is the host bridge"));
}

#[test]
fn rejects_a_function_given_to_two_vms() {
    let mut descs = fixture_descs();
    descs.push(with_passthrough(
        NIC,
        desc("dd2", VmKind::DriverDomain, 1, 2, &[7], ""),
    ));
    let err = build(&descs).unwrap_err();
    assert_eq!(
        err,
        BundleError::DuplicatePassthrough {
            first: 0,
            second: 3,
            bdf: NIC
        }
    );
    assert_eq!(
        std::format!("{err}"),
        "VM entries 0 and 3 both own PCI function 00:02.0; a function is passed to at most \
             one VM"
    );
}

#[test]
fn rejects_unknown_flags() {
    for flags in [4, 0x8000, 0xffff] {
        let err = corrupted(|b| put_vm_u16(b, 1, 50, flags));
        assert_eq!(err, BundleError::UnknownVmFlags { vm: 1, flags });
    }
    let err = corrupted(|b| put_vm_u16(b, 0, 50, VM_FLAG_PASSTHROUGH | 4));
    assert_eq!(err, BundleError::UnknownVmFlags { vm: 0, flags: 5 });
}

#[test]
fn an_emulated_nic_is_carried_for_a_guest_with_a_back_end_only() {
    let mut descs = fixture_descs();
    descs[2].emulated_nic = true;
    let bytes = build(&descs).expect("a guest with a back-end may have an emulated NIC");
    let bundle = Bundle::parse(&bytes).unwrap();
    let flags: Vec<bool> = bundle.vms().map(|vm| vm.emulated_nic).collect();
    assert_eq!(flags, [false, false, true]);

    // On the driver domain, or on a guest without a back-end: refused by the builder (which
    // runs its output through the parser) and by the parser.
    let mut descs = fixture_descs();
    descs[0].emulated_nic = true;
    assert_eq!(
        build(&descs),
        Err(BundleError::EmulatedNicWithoutBackend { vm: 0 })
    );
    let mut descs = fixture_descs();
    descs[1].backend = None;
    descs[1].emulated_nic = true;
    assert_eq!(
        build(&descs),
        Err(BundleError::EmulatedNicWithoutBackend { vm: 1 })
    );
    let err = corrupted(|b| put_vm_u16(b, 0, 50, VM_FLAG_PASSTHROUGH | VM_FLAG_EMULATED_NIC));
    assert_eq!(err, BundleError::EmulatedNicWithoutBackend { vm: 0 });
}

#[test]
fn rejects_a_stray_passthrough_field() {
    // A routing ID without the flag: on a guest, and on the driver domain with the flag cleared.
    let err = corrupted(|b| put_vm_u16(b, 2, 38, 0x10));
    assert_eq!(
        err,
        BundleError::StrayPassthrough {
            vm: 2,
            routing_id: 0x10
        }
    );
    let err = corrupted(|b| put_vm_u16(b, 0, 50, 0));
    assert_eq!(
        err,
        BundleError::StrayPassthrough {
            vm: 0,
            routing_id: 0x10
        }
    );
}

#[test]
fn peers_of_links_guests_and_their_driver_domain() {
    let bytes = fixture();
    let bundle = Bundle::parse(&bytes).unwrap();
    assert_eq!(bundle.peers_of(1), (1 << 2) | (1 << 3));
    assert_eq!(bundle.peers_of(2), 1 << 1);
    assert_eq!(bundle.peers_of(3), 1 << 1);
    // Not VMs of the bundle.
    assert_eq!(bundle.peers_of(0), 0);
    assert_eq!(bundle.peers_of(4), 0);
    assert_eq!(bundle.peers_of(u16::MAX), 0);
}

#[test]
fn peers_of_with_two_driver_domains_and_max_vms() {
    // dd-a (id 1) serves the even ids, dd-b (id 2) the odd ones, up to id MAX_VMS.
    let mut descs = vec![
        desc("dd-a", VmKind::DriverDomain, 1, 2, &[1], ""),
        desc("dd-b", VmKind::DriverDomain, 1, 2, &[2], ""),
    ];
    for id in 3..=MAX_VMS as u16 {
        let name = std::format!("g{id}");
        let backend = if id % 2 == 0 { 1 } else { 2 };
        descs.push(guest_of(
            backend,
            desc(&name, VmKind::Guest, 1, 2, &[3], ""),
        ));
    }
    let bytes = build(&descs).unwrap();
    let bundle = Bundle::parse(&bytes).unwrap();
    let bits = |ids: &mut dyn Iterator<Item = u16>| ids.fold(0u64, |acc, id| acc | 1 << id);
    assert_eq!(
        bundle.peers_of(1),
        bits(&mut (3..=MAX_VMS as u16).filter(|id| id % 2 == 0))
    );
    assert_eq!(
        bundle.peers_of(2),
        bits(&mut (3..=MAX_VMS as u16).filter(|id| id % 2 == 1))
    );
    assert_eq!(bundle.peers_of(MAX_VMS as u16), 1 << 1);
    assert_eq!(bundle.peers_of(3), 1 << 2);
}

#[test]
fn check_vm_name_rules() {
    assert_eq!(check_vm_name("guest-1"), Ok(()));
    assert_eq!(check_vm_name(&"a".repeat(MAX_VM_NAME_LEN)), Ok(()));
    assert_eq!(check_vm_name(""), Err(NameProblem::Empty));
    assert_eq!(
        check_vm_name(&"a".repeat(MAX_VM_NAME_LEN + 1)),
        Err(NameProblem::TooLong)
    );
    assert_eq!(check_vm_name("a.b"), Err(NameProblem::InvalidChar));
}

#[test]
fn every_error_has_a_distinct_message() {
    let r = Region::Image(3);
    let errors = [
        too_short(1),
        BundleError::Wire(WireError::BadMagic {
            format: "bundle",
            found: *b"ABCDEFGH",
            expected: MAGIC,
        }),
        unsupported(9),
        BundleError::BadHeaderSize { found: 9 },
        BundleError::TotalSizeTooSmall { claimed: 9 },
        BundleError::TooLarge { claimed: 9 },
        BundleError::Truncated {
            claimed: 1234,
            present: 1000,
        },
        BundleError::ChecksumMismatch {
            stored: 1,
            computed: 2,
        },
        BundleError::NoVms,
        BundleError::TooManyVms { count: 99 },
        BundleError::TooManyImages { count: 99 },
        BundleError::OutOfBounds {
            region: r,
            offset: 1,
            len: 2,
        },
        BundleError::Overlap {
            first: Region::VmTable,
            second: Region::Settings(1),
        },
        BundleError::EmptyImage { image: 1 },
        BundleError::BadName {
            vm: 1,
            problem: NameProblem::Empty,
        },
        BundleError::BadName {
            vm: 1,
            problem: NameProblem::TooLong,
        },
        BundleError::BadName {
            vm: 1,
            problem: NameProblem::NotUtf8,
        },
        BundleError::BadName {
            vm: 1,
            problem: NameProblem::InvalidChar,
        },
        BundleError::BadName {
            vm: 1,
            problem: NameProblem::BadPadding,
        },
        BundleError::DuplicateName {
            first: 1,
            second: 2,
        },
        BundleError::UnknownKind { vm: 1, code: 7 },
        BundleError::BadVcpus { vm: 1, vcpus: 0 },
        BundleError::RamNotBlockMultiple {
            vm: 1,
            ram_bytes: 3,
        },
        BundleError::RamOutOfRange {
            vm: 1,
            ram_bytes: 0,
        },
        BundleError::ImageIndexOutOfRange {
            vm: 1,
            index: 5,
            image_count: 2,
        },
        BundleError::ImageTooLarge {
            vm: 1,
            image_len: 5,
            ram_bytes: 2,
        },
        BundleError::SettingsTooLong { vm: 1, len: 5000 },
        BundleError::SettingsNotUtf8 { vm: 1 },
        BundleError::BadBalloonSchedule {
            vm: 1,
            problem: crate::balloon::ScheduleError::Empty,
        },
        BundleError::BackendOutOfRange {
            vm: 1,
            backend: 9,
            vm_count: 3,
        },
        BundleError::BackendIsSelf { vm: 1 },
        BundleError::BackendNotDriverDomain { vm: 1, backend: 3 },
        BundleError::DriverDomainHasBackend { vm: 1, backend: 3 },
        BundleError::UnknownVmFlags { vm: 1, flags: 4 },
        BundleError::EmulatedNicWithoutBackend { vm: 1 },
        BundleError::StrayPassthrough {
            vm: 1,
            routing_id: 0x10,
        },
        BundleError::PassthroughNotDriverDomain { vm: 1, bdf: NIC },
        BundleError::PassthroughHostBridge { vm: 1 },
        BundleError::DuplicatePassthrough {
            first: 0,
            second: 1,
            bdf: NIC,
        },
    ];
    let messages: std::collections::HashSet<String> =
        errors.iter().map(|e| std::format!("{e}")).collect();
    assert_eq!(messages.len(), errors.len());
    assert_eq!(
        std::format!("{}", errors[6]),
        "bundle truncated: header says 1234 bytes, only 1000 present"
    );
    assert!(std::format!("{}", errors[11]).contains("image 3"));
    assert!(std::format!("{}", errors[12]).contains("settings of VM entry 1"));
    assert_eq!(
        std::format!("{}", BundleError::BackendIsSelf { vm: 1 }),
        "VM entry 1: names itself (VM id 2) as its back-end"
    );
    assert_eq!(
        std::format!(
            "{}",
            BundleError::BackendNotDriverDomain { vm: 2, backend: 3 }
        ),
        "VM entry 2: back-end VM id 3 is not a driver domain"
    );
}

/// What a caller may rely on for any accepted bundle.
fn check_invariants(bundle: &Bundle<'_>, input: &[u8]) {
    assert!(bundle.total_size() >= HEADER_SIZE && bundle.total_size() <= input.len());
    assert!((1..=MAX_VMS).contains(&bundle.vm_count()));
    assert_eq!(bundle.vms().count(), bundle.vm_count());
    assert!(bundle.vm(bundle.vm_count()).is_none());
    let input_range = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
    let vms: Vec<_> = bundle.vms().collect();
    for (i, vm) in vms.iter().enumerate() {
        assert_eq!(vm.id as usize, i + 1);
        assert_eq!(check_vm_name(vm.name), Ok(()));
        assert!((1..=MAX_VCPUS_PER_VM).contains(&vm.vcpus));
        assert_eq!(vm.ram_bytes % BLOCK_SIZE, 0);
        assert!((MIN_VM_RAM..=MAX_VM_RAM).contains(&vm.ram_bytes));
        assert!(!vm.image.is_empty());
        assert!(vm.image.len() as u64 + PAGE_SIZE <= vm.ram_bytes);
        assert!(input_range.contains(&(vm.image.as_ptr() as usize)));
        assert!(vm.settings.len() <= MAX_SETTINGS_LEN);
        assert!(vms[..i].iter().all(|other| other.name != vm.name));
        if let Some(bdf) = vm.passthrough {
            assert_eq!(vm.kind, VmKind::DriverDomain);
            assert_ne!(bdf, Bdf::HOST_BRIDGE);
            assert!(vms[..i].iter().all(|other| other.passthrough != Some(bdf)));
        }
        if let Some(backend) = vm.backend {
            assert_eq!(vm.kind, VmKind::Guest);
            assert_ne!(backend, vm.id);
            let target = bundle.vm(usize::from(backend) - 1).unwrap();
            assert_eq!(target.kind, VmKind::DriverDomain);
        }
        let peers = bundle.peers_of(vm.id);
        assert_eq!(peers & 1, 0, "the hypervisor is nobody's peer");
        assert_eq!(peers & (1 << vm.id), 0, "a VM is not its own peer");
        assert_eq!(peers >> (bundle.vm_count() + 1), 0);
        for other in &vms {
            assert_eq!(
                peers & (1 << other.id) != 0,
                bundle.peers_of(other.id) & (1 << vm.id) != 0,
                "connections are symmetric"
            );
        }
    }
}

fn reseal_if_possible(b: &mut [u8]) {
    if b.len() >= HEADER_SIZE {
        let total = get_u64(b, 16);
        if total >= HEADER_SIZE as u64 && total <= b.len() as u64 {
            reseal(b);
        }
    }
}

/// Field-sized values that tend to hit edge cases in offset arithmetic.
fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(u64::MAX - 7),
        Just(u32::MAX as u64),
        0..20_000u64,
        any::<u64>(),
    ]
}

proptest! {
    #[test]
    fn mutated_bundles_never_panic(
        byte_flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        field_writes in prop::collection::vec((any::<prop::sample::Index>(), interesting_u64()), 0..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
        reseal in any::<bool>(),
    ) {
        let mut b = fixture();
        // Aim most damage at the metadata, where the interesting checks are.
        let metadata_len = (get_u64(&b, 56) + get_u64(&b, 64)) as usize;
        for (at, value) in byte_flips {
            let at = at.index(b.len());
            b[at] = value;
        }
        for (at, value) in field_writes {
            let at = at.index(metadata_len - 8) & !3;
            put_u64(&mut b, at, value);
        }
        if let Some(cut) = cut {
            b.truncate(cut.index(b.len() + 1));
        }
        if reseal {
            reseal_if_possible(&mut b);
        }
        if let Ok(bundle) = Bundle::parse(&b) {
            check_invariants(&bundle, &b);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = bytes;
        if bytes.len() >= 8 {
            bytes[..8].copy_from_slice(&MAGIC);
        }
        if let Ok(bundle) = Bundle::parse(&bytes) {
            check_invariants(&bundle, &bytes);
        }
    }
}

/// An image of `pages` pages whose header names `read_only` bytes.
fn image_with_header(pages: usize, read_only: u64) -> Vec<u8> {
    let mut image = vec![0x11u8; pages * PAGE_SIZE as usize];
    let magic = crate::image::MAGIC_OFFSET;
    image[magic..magic + 8].copy_from_slice(&crate::image::IMAGE_MAGIC.to_le_bytes());
    let length = crate::image::READ_ONLY_OFFSET;
    image[length..length + 8].copy_from_slice(&read_only.to_le_bytes());
    image
}

#[test]
fn every_vm_of_an_image_with_a_header_gets_its_read_only_part() {
    let shared = image_with_header(3, 2 * PAGE_SIZE);
    let bytes = build(&[
        desc("a", VmKind::Guest, 1, 2, &shared, ""),
        desc("b", VmKind::Guest, 1, 2, &shared, ""),
        desc("plain", VmKind::Guest, 1, 2, &[7u8; 5000], ""),
    ])
    .unwrap();
    let bundle = Bundle::parse(&bytes).unwrap();
    let code: Vec<u64> = bundle.vms().map(|vm| vm.code_bytes).collect();
    assert_eq!(code, [2 * PAGE_SIZE, 2 * PAGE_SIZE, 0]);
}

#[test]
fn an_image_header_that_cannot_be_shared_safely_is_refused() {
    for (read_only, problem) in [
        (
            PAGE_SIZE + 8,
            crate::image::ImageHeaderError::NotPageMultiple {
                bytes: PAGE_SIZE + 8,
            },
        ),
        (
            4 * PAGE_SIZE,
            crate::image::ImageHeaderError::PastImage {
                bytes: 4 * PAGE_SIZE,
                image_len: 3 * PAGE_SIZE,
            },
        ),
        (0, crate::image::ImageHeaderError::Empty),
    ] {
        // The builder runs its output through the parser, as the pack tool does.
        let built = build(&[
            desc("fine", VmKind::Guest, 1, 2, &[7u8; 5000], ""),
            desc(
                "bad",
                VmKind::Guest,
                1,
                2,
                &image_with_header(3, read_only),
                "",
            ),
        ]);
        assert_eq!(
            built.err(),
            Some(BundleError::BadImageHeader { image: 1, problem }),
            "{read_only}"
        );
    }
}

/// VMs whose grant-mapping budgets could need more hypervisor heap than is set aside for them
/// are refused: each driver domain may map 16 384 pages (5 MiB of records), each guest 512
/// (160 KiB), and 18 MiB are set aside, so three driver domains and nineteen guests fit, and a
/// fourth driver domain, or a twentieth guest beside the three, does not.
#[test]
fn rejects_mapping_budgets_beyond_the_heap_set_aside_for_them() {
    let image = [7u8; 64];
    let vms = |domains: usize, guests: usize| -> Vec<VmDescription> {
        let domain = |i| desc(&format!("dd{i}"), VmKind::DriverDomain, 1, 8, &image, "");
        let guest = |i| desc(&format!("g{i}"), VmKind::Guest, 1, 8, &image, "");
        (0..domains)
            .map(domain)
            .chain((0..guests).map(guest))
            .collect()
    };
    assert_eq!(mapping_heap_bytes([VmKind::DriverDomain]), 5 * MIB);
    assert_eq!(mapping_heap_bytes([VmKind::Guest]), 160 * 1024);
    let fits = build(&vms(3, 19)).unwrap();
    assert_eq!(Bundle::parse(&fits).unwrap().vms().count(), 22);
    assert_eq!(
        build(&vms(4, 0)).unwrap_err(),
        BundleError::MappingBudgets { needed_kib: 20_480 }
    );
    assert_eq!(
        build(&vms(3, 20)).unwrap_err(),
        BundleError::MappingBudgets {
            needed_kib: 15_360 + 20 * 160
        }
    );
    assert_eq!(
        BundleError::MappingBudgets { needed_kib: 20_480 }.to_string(),
        "the VMs' grant-mapping budgets could need 20480 KiB of hypervisor heap, more than the \
         18432 KiB set aside for them; use fewer driver domains"
    );
}
