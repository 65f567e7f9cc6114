//! Host tests of `its::msi`: every MSIX_MAP refusal and its status, the window and doorbell
//! IOVA against QEMU's ITS (GITS_TRANSLATER at 0x0809_0040), and the command words against
//! hand-derived ones (IHI 0069 §5.3, QEMU `MAPD_*`, `VMAPTI_*`, `DISCARD_*`).

use super::*;
use crate::its::cmd;

fn nic() -> Bdf {
    Bdf::new(0, 2, 0).unwrap()
}

fn facts() -> Facts {
    Facts {
        direct_injection: true,
        owned: Some(nic()),
        // QEMU's virtio-net-pci: 3 vectors (config, rx, tx) by default.
        table_size: Some(3),
        mapped: 0,
    }
}

#[test]
fn the_owner_gets_up_to_its_table_size() {
    assert_eq!(check(&facts(), 0x10, 1), Ok((nic(), 1)));
    assert_eq!(check(&facts(), 0x10, 3), Ok((nic(), 3)));
}

#[test]
fn every_refusal_has_its_status() {
    let no_gicv4 = Facts {
        direct_injection: false,
        ..facts()
    };
    let r = check(&no_gicv4, 0x10, 1).unwrap_err();
    assert_eq!(
        (r, r.status()),
        (Refusal::NoDirectInjection, Status::NotSupported)
    );

    // A function the caller does not own, and a caller that owns none.
    let r = check(&facts(), 0x18, 1).unwrap_err();
    assert_eq!((r, r.status()), (Refusal::NotOwner(0x18), Status::Denied));
    let r = check(&facts(), 0x10 | 1 << 32, 1).unwrap_err();
    assert_eq!(
        r.status(),
        Status::Denied,
        "high bits do not alias the owned id"
    );
    let none = Facts {
        owned: None,
        ..facts()
    };
    assert_eq!(check(&none, 0x10, 1).unwrap_err().status(), Status::Denied);

    let no_msix = Facts {
        table_size: None,
        ..facts()
    };
    let r = check(&no_msix, 0x10, 1).unwrap_err();
    assert_eq!((r, r.status()), (Refusal::NoMsix, Status::NotSupported));

    for asked in [0, 4, u64::from(u16::MAX) + 1, u64::MAX] {
        let r = check(&facts(), 0x10, asked).unwrap_err();
        assert_eq!(
            (r, r.status()),
            (Refusal::Vectors { asked, has: 3 }, Status::InvalidArgument)
        );
    }

    let again = Facts {
        mapped: 3,
        ..facts()
    };
    let r = check(&again, 0x10, 3).unwrap_err();
    assert_eq!((r, r.status()), (Refusal::AlreadyMapped, Status::Busy));
}

#[test]
fn the_window_maps_the_translater_page_at_linuxs_msi_iova() {
    // QEMU virt: ITS at 0x0808_0000, GITS_TRANSLATER at 0x0809_0040.
    assert_eq!(translater(0x0808_0000), (0x0809_0000, 0x0800_0040));
    let (_, iova) = translater(0x0808_0000);
    assert!((MSI_WINDOW_IPA..MSI_WINDOW_IPA + MSI_WINDOW_BYTES).contains(&iova));
}

#[test]
fn table_size_is_message_control_plus_one() {
    assert_eq!(msix_table_size(0x0002), 3);
    // Enable [15] and Function Mask [14] are not part of the size.
    assert_eq!(msix_table_size(0xc002), 3);
    assert_eq!(msix_table_size(0x07ff), 2048);
}

#[test]
fn mapping_three_vectors_is_mapd_three_vmaptis_vinvall_vsync() {
    let itt = IttMapping {
        itt_addr: 0x4800_0100,
        event_id_bits: 2,
    };
    let c = map_commands(0x10, itt, 3, 5).unwrap();
    assert_eq!(c.len(), 6);
    // MAPD: DeviceID DW0 [63:32]; Size = bits - 1 in DW1; V | ITT_addr in DW2.
    assert_eq!(
        c[0],
        [
            u64::from(cmd::MAPD) | 0x10 << 32,
            1,
            (1 << 63) | 0x4800_0100,
            0
        ]
    );
    for event in 0..3u64 {
        // VMAPTI: EventID DW1 [31:0], vPEID DW1 [47:32]; vINTID DW2 [31:0], doorbell
        // DW2 [63:32] = 8192 + vPEID.
        assert_eq!(
            c[1 + event as usize],
            [
                u64::from(cmd::VMAPTI) | 0x10 << 32,
                event | 5 << 32,
                (8192 + event) | (8192 + 5) << 32,
                0
            ]
        );
    }
    assert_eq!(c[4], [u64::from(cmd::VINVALL), 5 << 32, 0, 0]);
    assert_eq!(c[5], [u64::from(cmd::VSYNC), 5 << 32, 0, 0]);
    assert!(
        map_commands(0x10, itt, 1, 64).is_err(),
        "no doorbell past the vPE table"
    );
}

#[test]
fn unmapping_discards_each_event_then_unmaps_the_device() {
    let c = unmap_commands(0x10, 2).unwrap();
    assert_eq!(
        c,
        vec![
            [u64::from(cmd::DISCARD) | 0x10 << 32, 0, 0, 0],
            [u64::from(cmd::DISCARD) | 0x10 << 32, 1, 0, 0],
            [u64::from(cmd::MAPD) | 0x10 << 32, 0, 0, 0],
        ]
    );
}

#[test]
fn vintids_stay_below_qemus_limit_and_config_bytes_enable_them() {
    assert_eq!(vintid(0), Ok(8192));
    assert_eq!(vintid(65535 - 8192), Ok(65535));
    assert!(vintid(65536 - 8192).is_err());
    // Priority 0xa0, RES1 bit 1, Enable: 0xa3, at offset vINTID - 8192.
    assert_eq!(
        config_bytes(3).unwrap(),
        vec![(0, 0xa3), (1, 0xa3), (2, 0xa3)]
    );
}

#[test]
fn a_caller_that_owns_nothing_is_denied_on_every_machine() {
    for direct_injection in [false, true] {
        let f = Facts {
            direct_injection,
            owned: None,
            ..facts()
        };
        assert_eq!(check(&f, 0x10, 1).unwrap_err().status(), Status::Denied);
        let f = Facts {
            direct_injection,
            ..facts()
        };
        assert_eq!(check(&f, 0x18, 1).unwrap_err().status(), Status::Denied);
    }
}

/// A configuration space of 64 dwords with a capability list through `caps` (offset, id).
fn config_with(caps: &[(u16, u8, u16)]) -> [u32; 64] {
    let mut space = [0u32; 64];
    space[1] = STATUS_CAP_LIST;
    space[0x34 / 4] = caps.first().map_or(0, |c| u32::from(c.0));
    for (i, &(at, id, control)) in caps.iter().enumerate() {
        let next = caps.get(i + 1).map_or(0, |c| c.0);
        space[usize::from(at) / 4] =
            u32::from(id) | u32::from(next) << 8 | u32::from(control) << 16;
    }
    space
}

#[test]
fn the_msix_table_size_is_found_by_a_bounded_walk() {
    // QEMU's virtio-net-pci: vendor capabilities, then MSI-X with 3 vectors (Table Size 2).
    let space = config_with(&[
        (0x84, 0x09, 0),
        (0x98, CAP_ID_MSIX, 0x0002),
        (0x40, 0x09, 0),
    ]);
    assert_eq!(find_msix_table_size(|r| space[usize::from(r) / 4]), Some(3));
    let cap = find_msix(|r| space[usize::from(r) / 4]).unwrap();
    assert_eq!((cap.at, cap.message_control()), (0x98, 0x9a));
    // No MSI-X capability, or no capability list at all.
    let space = config_with(&[(0x84, 0x09, 0), (0x40, 0x05, 0)]);
    assert_eq!(find_msix_table_size(|r| space[usize::from(r) / 4]), None);
    let mut space = config_with(&[(0x98, CAP_ID_MSIX, 2)]);
    space[1] = 0;
    assert_eq!(find_msix_table_size(|r| space[usize::from(r) / 4]), None);
    // A list that loops, or points below 0x40: the walk ends, no size.
    let mut space = config_with(&[(0x84, 0x09, 0), (0x90, 0x09, 0)]);
    space[0x90 / 4] |= 0x84 << 8;
    let mut reads = 0;
    assert_eq!(
        find_msix_table_size(|r| {
            reads += 1;
            space[usize::from(r) / 4]
        }),
        None
    );
    assert!(reads <= 2 + MAX_CAPS, "{reads} reads");
    let space = config_with(&[(0x20, CAP_ID_MSIX, 2)]);
    assert_eq!(find_msix_table_size(|r| space[usize::from(r) / 4]), None);
}
