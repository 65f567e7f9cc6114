//! Host tests of `its::vpe`: the allocator against a model set, the command sequences against
//! hand-derived words (IHI 0069 §5.3, QEMU `VMAPP_*`, `VMOVP_*`, `VSYNC_*`), the residency
//! values and the exit decision.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::its::cmd;

#[test]
fn ids_are_handed_out_lowest_first_until_exhausted() {
    let mut ids = VpeIds::default();
    for expected in 0..VPES as u16 {
        assert_eq!(ids.alloc(), Ok(expected));
    }
    assert_eq!(ids.alloc(), Err(VpeError::Exhausted));
    assert_eq!(ids.in_use(), VPES);
    ids.free(17).unwrap();
    assert_eq!(ids.alloc(), Ok(17));
}

#[test]
fn freeing_an_id_not_in_use_is_refused() {
    let mut ids = VpeIds::default();
    assert_eq!(ids.free(0), Err(VpeError::NotInUse(0)));
    let id = ids.alloc().unwrap();
    ids.free(id).unwrap();
    assert_eq!(ids.free(id), Err(VpeError::NotInUse(id)), "double free");
    for beyond in [VPES as u16, 64, 1000, u16::MAX] {
        assert_eq!(ids.free(beyond), Err(VpeError::NotInUse(beyond)));
    }
    assert_eq!(ids.in_use(), 0);
}

proptest! {
    #[test]
    fn the_allocator_matches_a_model_set(ops in proptest::collection::vec((any::<bool>(), 0u16..80), 0..300)) {
        let mut ids = VpeIds::default();
        let mut model = BTreeSet::new();
        for (alloc, id) in ops {
            if alloc {
                let expected = (0..VPES as u16).find(|i| !model.contains(i));
                match ids.alloc() {
                    Ok(got) => {
                        prop_assert_eq!(Some(got), expected);
                        model.insert(got);
                    }
                    Err(e) => {
                        prop_assert_eq!(e, VpeError::Exhausted);
                        prop_assert_eq!(expected, None);
                    }
                }
            } else {
                let result = ids.free(id);
                prop_assert_eq!(result.is_ok(), model.remove(&id));
            }
            prop_assert_eq!(ids.in_use() as usize, model.len());
        }
    }
}

#[test]
fn table_sizes_for_16_vintid_bits() {
    // 2^16 bits of pending state = 8 KiB at 64 KiB; 2^16 - 8192 configuration bytes at 4 KiB.
    assert_eq!(table_sizes(), ((8192, 0x1_0000), (57344, 0x1000)));
}

#[test]
fn a_vm_start_maps_each_vpe_then_syncs() {
    let vpes = [
        (
            Vpe {
                id: 3,
                vpt: 0x4900_0000,
            },
            RdBase::ProcessorNumber(1),
        ),
        (
            Vpe {
                id: 4,
                vpt: 0x4901_0000,
            },
            RdBase::ProcessorNumber(0),
        ),
    ];
    let c = start_commands(&vpes).unwrap();
    // VMAPP: DW1 vPEID [47:32]; DW2 V [63] | RDbase [51:16]; DW3 VPT_addr [51:16] | size-1.
    assert_eq!(
        c[0],
        [
            u64::from(cmd::VMAPP),
            3 << 32,
            (1 << 63) | (1 << 16),
            0x4900_0000 | 15
        ]
    );
    assert_eq!(c[1], [u64::from(cmd::VINVALL), 3 << 32, 0, 0]);
    assert_eq!(
        c[2],
        [u64::from(cmd::VMAPP), 4 << 32, 1 << 63, 0x4901_0000 | 15]
    );
    assert_eq!(c[3], [u64::from(cmd::VINVALL), 4 << 32, 0, 0]);
    assert_eq!(c[4], [u64::from(cmd::VSYNC), 3 << 32, 0, 0]);
    assert_eq!(c[5], [u64::from(cmd::VSYNC), 4 << 32, 0, 0]);
    assert_eq!(c.len(), 6);
    // A pending table not at 64 KiB is refused, not truncated.
    let bad = [(
        Vpe {
            id: 1,
            vpt: 0x4900_1000,
        },
        RdBase::ProcessorNumber(0),
    )];
    assert!(matches!(
        start_commands(&bad),
        Err(ItsError::Misaligned {
            align: 0x1_0000,
            ..
        })
    ));
}

#[test]
fn a_move_is_vmovp_then_vsync() {
    let [m, s] = move_commands(9, RdBase::ProcessorNumber(1)).unwrap();
    assert_eq!(m, [u64::from(cmd::VMOVP), 9 << 32, 1 << 16, 0]);
    assert_eq!(s, [u64::from(cmd::VSYNC), 9 << 32, 0, 0]);
}

#[test]
fn a_stop_unmaps_every_vpe() {
    let c = stop_commands(&[2, 5]).unwrap();
    assert_eq!(
        c,
        vec![
            [u64::from(cmd::VMAPP), 2 << 32, 0, 0],
            [u64::from(cmd::VMAPP), 5 << 32, 0, 0]
        ]
    );
}

#[test]
fn residency_values_and_the_exit_decision() {
    let r = Residency::new(0x4a00_0000, 0x4a01_0000).unwrap();
    // VPROPBASER: IDbits 15 | InnerCache 0b111 [9:7] | Inner Shareable [11:10].
    assert_eq!(r.vpropbaser, 0x4a00_0000 | (1 << 10) | (0b111 << 7) | 15);
    assert_eq!(r.enter, (1 << 63) | 0x4a01_0000 | (1 << 10) | (0b111 << 7));
    assert_eq!(r.leave, r.enter & !(1 << 63));
    assert_eq!(left(r.leave), Left::Out { pending: false });
    assert_eq!(left(r.leave | 1 << 61), Left::Out { pending: true });
    assert_eq!(left(r.leave | 1 << 60 | 1 << 61), Left::Dirty);
    assert_eq!(left(r.enter), Left::StillResident);
    assert!(Residency::new(0x4a00_0800, 0x4a01_0000).is_err());
}

#[test]
fn the_exit_wait_reads_until_dirty_clears_and_reports_pending_last() {
    let out = 0x4a01_0000u64;
    let mut reads = [out | 1 << 60, out | 1 << 60, out | 1 << 61].into_iter();
    let mut count = 0;
    let pending = wait_out(|| {
        count += 1;
        reads.next().unwrap()
    });
    assert_eq!(pending, Ok(true));
    assert_eq!(count, 3);
    assert_eq!(wait_out(|| out), Ok(false));
}

#[test]
fn the_exit_wait_is_bounded_and_refuses_a_vpe_still_resident() {
    let mut count = 0;
    let stuck = wait_out(|| {
        count += 1;
        1 << 60
    });
    assert_eq!(stuck, Err(LeaveFault::StillDirty));
    assert_eq!(count, LEAVE_SPIN_LIMIT);
    let valid = (1 << 63) | 0x4a01_0000;
    assert_eq!(wait_out(|| valid), Err(LeaveFault::StillResident(valid)));
}

#[test]
fn doorbells_are_one_lpi_per_vpe_and_map_back() {
    assert_eq!(doorbell_of(0), Ok(8192));
    assert_eq!(doorbell_of(63), Ok(8192 + 63));
    assert_eq!(doorbell_of(64), Err(VpeError::NotInUse(64)));
    for id in 0..VPES as u16 {
        assert_eq!(vpe_of_doorbell(doorbell_of(id).unwrap()), Some(id));
    }
    assert_eq!(vpe_of_doorbell(8191), None);
    assert_eq!(vpe_of_doorbell(8192 + 64), None);
    assert_eq!(vpe_of_doorbell(37), None);
    assert_eq!(vpe_of_doorbell(u32::MAX), None);
}

#[test]
fn doorbell_config_enables_each_doorbell_at_its_priority() {
    let c = doorbell_config(0x80).unwrap();
    assert_eq!(c.len(), VPES as usize);
    // Priority 0x80 [7:2], RES1 bit 1, Enable bit 0.
    assert!(c
        .iter()
        .enumerate()
        .all(|(i, &(off, byte))| off == i as u64 && byte == 0x83));
    assert!(doorbell_config(0x81).is_err());
}
