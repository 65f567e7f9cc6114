//! The test-only crash hooks of the driver domain, for the restart tests: settings
//! `test_crash = "fault" | "panic" | "reset"` make it crash that way `test_crash_after_ms`
//! (default 1000) after it starts, on each of its first `test_crash_boots` boots (default 1, so
//! the restarted driver domain then runs normally; a large number makes a crash loop);
//! `test_crash_again_ms` (default `test_crash_after_ms`) is the delay on the boots after the
//! first, so a restarted incarnation can crash while its guests are still reconnecting;
//! `test_crash_masked_ms` (default 0) masks IRQs that long before the crash, so a NIC that
//! receives meanwhile is left with its interrupt pending for the next incarnation. This module
//! only reads the plan; the binary carries the crash out.

use alloc::format;
use alloc::string::String;

use shared_abi::start_info::{setting, setting_u64};

/// How to crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashKind {
    /// A load from an address with nothing behind it: the hypervisor kills the VM.
    Fault,
    /// `panic!`: the runtime's panic handler resets a driver domain.
    Panic,
    /// PSCI SYSTEM_RESET.
    Reset,
}

/// A crash to carry out `after_ms` after start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashPlan {
    pub kind: CrashKind,
    pub after_ms: u64,
    /// IRQs are masked this long just before the crash (its interrupts go unanswered).
    pub irqs_masked_ms: u64,
}

/// The crash this boot (`boot_count`, 1 = the first) must carry out, if any.
pub fn plan(settings: &str, boot_count: u32) -> Result<Option<CrashPlan>, String> {
    let Some(kind) = setting(settings, "test_crash") else {
        return Ok(None);
    };
    let kind = match kind {
        "fault" => CrashKind::Fault,
        "panic" => CrashKind::Panic,
        "reset" => CrashKind::Reset,
        other => {
            return Err(format!(
                "setting test_crash = {other:?}: expected \"fault\", \"panic\" or \"reset\""
            ))
        }
    };
    let number = |key: &str, default: u64| match setting(settings, key) {
        None => Ok(default),
        Some(value) => setting_u64(settings, key)
            .ok_or_else(|| format!("setting {key} = {value:?} is not a number")),
    };
    let first_ms = number("test_crash_after_ms", 1_000)?;
    let again_ms = number("test_crash_again_ms", first_ms)?;
    let after_ms = if boot_count <= 1 { first_ms } else { again_ms };
    let boots = number("test_crash_boots", 1)?;
    let irqs_masked_ms = number("test_crash_masked_ms", 0)?;
    Ok((u64::from(boot_count) <= boots).then_some(CrashPlan {
        kind,
        after_ms,
        irqs_masked_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crashes_only_on_the_boots_asked_for() {
        let s = "role=switch\ntest_crash=panic\ntest_crash_after_ms=250\n";
        let plan1 = plan(s, 1).unwrap();
        assert_eq!(
            plan1,
            Some(CrashPlan {
                kind: CrashKind::Panic,
                after_ms: 250,
                irqs_masked_ms: 0,
            })
        );
        assert_eq!(plan(s, 2).unwrap(), None);
        let looping = "test_crash=fault\ntest_crash_boots=100\n";
        assert_eq!(
            plan(looping, 50).unwrap(),
            Some(CrashPlan {
                kind: CrashKind::Fault,
                after_ms: 1_000,
                irqs_masked_ms: 0,
            })
        );
        assert_eq!(plan("role=switch\n", 1).unwrap(), None);
    }

    #[test]
    fn later_boots_may_crash_sooner() {
        let s = "test_crash=reset\ntest_crash_after_ms=3000\ntest_crash_again_ms=30\n\
                 test_crash_boots=2\n";
        let after = |boot| plan(s, boot).unwrap().map(|p| p.after_ms);
        assert_eq!(after(1), Some(3000));
        assert_eq!(after(2), Some(30));
        assert_eq!(after(3), None);
        assert!(plan("test_crash=reset\ntest_crash_again_ms=x\n", 2).is_err());
    }

    #[test]
    fn a_crash_may_leave_its_interrupts_unanswered_first() {
        let s = "test_crash=fault\ntest_crash_masked_ms=300\n";
        assert_eq!(plan(s, 1).unwrap().map(|p| p.irqs_masked_ms), Some(300));
        assert!(plan("test_crash=fault\ntest_crash_masked_ms=long\n", 1).is_err());
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(plan("test_crash=explode\n", 1).is_err());
        assert!(plan("test_crash=reset\ntest_crash_after_ms=soon\n", 1).is_err());
        assert!(plan("test_crash=reset\ntest_crash_boots=-1\n", 1).is_err());
    }
}
