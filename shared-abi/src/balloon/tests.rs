//! Host tests of the target schedules: every refusal, and that no input panics.

use super::*;

const MIB_PAGES: u64 = (1 << 20) / PAGE_SIZE;

#[test]
fn a_schedule_parses_into_points_in_pages() {
    let s = parse_schedule("2000:16, 6000:144").unwrap();
    assert_eq!(
        s.points(),
        &[
            SchedulePoint {
                at_ms: 2000,
                pages: 16 * MIB_PAGES,
                vm: 0
            },
            SchedulePoint {
                at_ms: 6000,
                pages: 144 * MIB_PAGES,
                vm: 0
            }
        ]
    );
    let edges = parse_schedule("0:4,3600000:1024").unwrap();
    assert_eq!(edges.points().len(), 2);
}

#[test]
fn every_schedule_refusal() {
    use ScheduleError::*;
    assert_eq!(parse_schedule(""), Err(Empty));
    assert_eq!(parse_schedule("  "), Err(Empty));
    let bad = |point| BadPoint {
        point,
        shape: "ms:MiB",
    };
    assert_eq!(parse_schedule("1000"), Err(bad(0)));
    assert_eq!(parse_schedule("1000:16:3"), Err(bad(0)));
    assert_eq!(parse_schedule("1000:16,"), Err(bad(1)));
    assert_eq!(parse_schedule("+1000:16"), Err(bad(0)));
    assert_eq!(parse_schedule("-1:16"), Err(bad(0)));
    assert_eq!(parse_schedule("1000:0x10"), Err(bad(0)));
    assert_eq!(parse_schedule("1000:99999999999"), Err(bad(0)));
    assert_eq!(
        parse_schedule("3600001:16"),
        Err(TooLate {
            point: 0,
            ms: 3_600_001
        })
    );
    assert_eq!(
        parse_schedule("1000:16,1000:32"),
        Err(NotRising { point: 1, ms: 1000 })
    );
    assert_eq!(
        parse_schedule("1000:3"),
        Err(TargetOutOfRange { point: 0, mib: 3 })
    );
    assert_eq!(
        parse_schedule("1000:16,2000:1025"),
        Err(TargetOutOfRange {
            point: 1,
            mib: 1025
        })
    );
    let sixteen: std::vec::Vec<std::string::String> =
        (1..=16).map(|i| std::format!("{i}:16")).collect();
    assert!(parse_schedule(&sixteen.join(",")).is_ok());
    assert_eq!(
        parse_schedule(&std::format!("{},17:16", sixteen.join(","))),
        Err(TooManyPoints)
    );
}

#[test]
fn control_commands_parse_and_refuse() {
    let c = parse_control("1000:2:16,1500:3:136").unwrap();
    assert_eq!(
        c.points()[1],
        SchedulePoint {
            at_ms: 1500,
            pages: 136 * MIB_PAGES,
            vm: 3
        }
    );
    // Targets out of range are the hypervisor's to refuse (the refusal tests need them).
    assert_eq!(
        parse_control("1:2:2048").unwrap().points()[0].pages,
        2048 * MIB_PAGES
    );
    assert_eq!(
        parse_control("1:0:16"),
        Err(ScheduleError::BadVm { point: 0, vm: 0 })
    );
    assert_eq!(
        parse_control("1:33:16"),
        Err(ScheduleError::BadVm { point: 0, vm: 33 })
    );
    assert_eq!(
        parse_control("1:2"),
        Err(ScheduleError::BadPoint {
            point: 0,
            shape: "ms:vm:MiB"
        })
    );
}

#[test]
fn schedule_errors_keep_their_texts() {
    assert_eq!(
        std::format!("{}", ScheduleError::TargetOutOfRange { point: 1, mib: 2 }),
        "point 1: a target of 2 MiB is outside 4..=1024 MiB"
    );
    assert_eq!(
        std::format!("{}", ScheduleError::TooLate { point: 0, ms: 5 }),
        "point 0: 5 ms is after 3600000 ms (one hour)"
    );
}

proptest::proptest! {
    /// Any text: parsed or refused, never a panic, and what parses keeps the rules.
    #[test]
    fn any_text_parses_or_is_refused(text in "[0-9:, +x-]{0,80}") {
        if let Ok(s) = parse_schedule(&text) {
            proptest::prop_assert!(s.points().len() <= MAX_SCHEDULE_POINTS);
            for w in s.points().windows(2) {
                proptest::prop_assert!(w[0].at_ms < w[1].at_ms);
            }
            for p in s.points() {
                proptest::prop_assert!(target_in_range(p.pages) && p.at_ms <= MAX_SCHEDULE_MS);
            }
        }
        let _ = parse_control(&text);
    }
}
