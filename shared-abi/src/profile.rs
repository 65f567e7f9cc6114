//! The hypervisor's guest-PC sampling profiler: its machine setting and the console lines it
//! prints, shared by the hypervisor (which samples and prints) and the harness (which sets the
//! rate and parses the lines).
//!
//! **Setting.** `[machine] profile_hz = N` in a topology. It reaches the hypervisor as the word
//! `profile_hz=N` of the kernel command line (QEMU's `-append`, the device tree's
//! `/chosen/bootargs`); [`from_bootargs`] reads it, [`check_hz`] bounds it to
//! [`MIN_HZ`]`..=`[`MAX_HZ`]. Without it nothing is sampled.
//!
//! **Lines.** At an ACCOUNTING_REPORT (tagged as that report; at most one every
//! [`PRINT_MIN_INTERVAL_MS`]) and at power-off (tag [`FINAL_TAG`]), the hypervisor prints the
//! samples taken since the previous print, then starts afresh:
//!
//! ```text
//! [hv] profile <tag> vm=<name> samples=<n> el0=<n> overflow=<n> shown=<n>
//! [hv] profile <tag> vm=<name> pc=<hex> el=<0|1> n=<count>      (at most TOP_PCS per VM)
//! [hv] profile <tag> hz=<hz> pcpus=<n> idle=<n> poll=<n> hyp=<n> late=<n> lost=<n> missed=<n>
//! ```
//!
//! `samples` counts every sample that found the VM's vCPU running (at EL0 `el0` of them);
//! `overflow` those whose PC found the histogram full (counted in `samples`, no PC kept);
//! `shown` the samples of the PC lines printed. `idle` counts samples that found a pCPU in the
//! idle loop, `poll` in a halted vCPU's halt poll (spinning in EL2 for work to come back: idle
//! time in the accounting), `hyp` in the hypervisor otherwise (a trap being handled), `late`
//! samples taken only after the pCPU had left EL2 and trapped again since they were due (where
//! it was is not known), `lost`
//! samples of VMs that were gone by the time of the print, `missed` the whole periods that
//! passed with no sample (the timer interrupt was taken more than a period late: one sample
//! per interrupt, the periods in between are only counted).

use thiserror::Error;

/// The kernel command line's word (and the topology's `[machine]` key).
pub const KEY: &str = "profile_hz";
/// The lowest sampling rate accepted: below it a 10 s run has too few samples to rank.
pub const MIN_HZ: u32 = 100;
/// The highest: every sample is a trap to EL2, which under TCG costs some microseconds.
pub const MAX_HZ: u32 = 10_000;
/// Most PC lines per VM in one print (the harness gets the rest as `samples - shown`).
pub const TOP_PCS: usize = 64;
/// Least time between two prints at accounting reports (a report sooner prints no profile; its
/// samples go to the next print): any VM may ask for reports, and a print is up to
/// [`TOP_PCS`] lines per VM.
pub const PRINT_MIN_INTERVAL_MS: u64 = 1000;
/// The tag of the print at power-off.
pub const FINAL_TAG: &str = "final";
/// Every profile line starts with this, after the hypervisor's `[hv] ` prefix.
pub const LINE_PREFIX: &str = "profile ";

/// Why a sampling rate is refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProfileHzError {
    #[error("profile_hz = {0:?} is not a whole number of samples per second")]
    NotANumber(heapless::String<24>),
    #[error("profile_hz = {0} is outside {MIN_HZ}..={MAX_HZ} samples per second per pCPU")]
    OutOfRange(u64),
}

/// `hz` if it is an accepted sampling rate.
pub fn check_hz(hz: u64) -> Result<u32, ProfileHzError> {
    if (u64::from(MIN_HZ)..=u64::from(MAX_HZ)).contains(&hz) {
        Ok(hz as u32)
    } else {
        Err(ProfileHzError::OutOfRange(hz))
    }
}

/// The sampling rate a kernel command line asks for: `None` without a `profile_hz=` word, an
/// error for a value that is not a number in range (the last such word counts).
pub fn from_bootargs(args: &str) -> Result<Option<u32>, ProfileHzError> {
    let Some(value) = args
        .split_ascii_whitespace()
        .filter_map(|word| word.strip_prefix(KEY)?.strip_prefix('='))
        .next_back()
    else {
        return Ok(None);
    };
    let hz: u64 = value.parse().map_err(|_| {
        let mut shown = heapless::String::new();
        for c in value.chars() {
            if shown.push(c).is_err() {
                break;
            }
        }
        ProfileHzError::NotANumber(shown)
    })?;
    check_hz(hz).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_bounded() {
        assert_eq!(check_hz(100), Ok(100));
        assert_eq!(check_hz(10_000), Ok(10_000));
        assert_eq!(check_hz(99), Err(ProfileHzError::OutOfRange(99)));
        assert_eq!(check_hz(10_001), Err(ProfileHzError::OutOfRange(10_001)));
        assert_eq!(
            check_hz(u64::MAX),
            Err(ProfileHzError::OutOfRange(u64::MAX))
        );
    }

    #[test]
    fn the_command_line_word_is_found_and_checked() {
        assert_eq!(from_bootargs(""), Ok(None));
        assert_eq!(from_bootargs("console=ttyAMA0"), Ok(None));
        assert_eq!(from_bootargs("profile_hz=1000"), Ok(Some(1000)));
        assert_eq!(from_bootargs("a=b  profile_hz=250 c"), Ok(Some(250)));
        assert_eq!(
            from_bootargs("profile_hz=100 profile_hz=200"),
            Ok(Some(200))
        );
        // A word that only starts like the key is not it.
        assert_eq!(from_bootargs("profile_hzz=5"), Ok(None));
        assert_eq!(
            from_bootargs("profile_hz=50"),
            Err(ProfileHzError::OutOfRange(50))
        );
        assert!(matches!(
            from_bootargs("profile_hz=fast"),
            Err(ProfileHzError::NotANumber(_))
        ));
        assert!(matches!(
            from_bootargs("profile_hz="),
            Err(ProfileHzError::NotANumber(_))
        ));
        // A long value is cut in the message, never a panic.
        let long = format!("profile_hz={}", "x".repeat(100));
        assert!(matches!(
            from_bootargs(&long),
            Err(ProfileHzError::NotANumber(s)) if s.len() == 24
        ));
        assert!(matches!(
            from_bootargs("profile_hz=99999999999999999999999"),
            Err(ProfileHzError::NotANumber(_))
        ));
    }
}
