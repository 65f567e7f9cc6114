//! The driver domain's `balloon_control` setting (issue 16): a schedule of
//! BALLOON_SET_TARGET commands (`"ms:vm:MiB,..."`, parsed by
//! `shared_abi::balloon::parse_control`) that the driver domain issues at their times. It is
//! the "control command" path of the balloon targets while there is no run-time user channel:
//! the driver domain steers other VMs' memory, and the hypervisor answers each command
//! (`Ok`, `InvalidArgument`, `NoSpace`), which the binary prints.

use shared_abi::balloon::{parse_control, Schedule, SchedulePoint, CONTROL_KEY};
use shared_abi::start_info::setting;

/// The commands still to issue.
#[derive(Debug)]
pub struct Control {
    schedule: Schedule,
    next: usize,
}

impl Control {
    /// The commands of `settings`; `Ok(None)` without a `balloon_control` setting, `Err` for a
    /// bad one (the topology tool refuses it first).
    pub fn from_settings(settings: &str) -> Result<Option<Control>, alloc::string::String> {
        let Some(text) = setting(settings, CONTROL_KEY) else {
            return Ok(None);
        };
        let schedule =
            parse_control(text).map_err(|e| alloc::format!("setting {CONTROL_KEY}: {e}"))?;
        Ok(Some(Control { schedule, next: 0 }))
    }

    /// The next command due at `now_ms` (ms of the virtual counter, i.e. since the machine
    /// started), one at a time.
    pub fn due(&mut self, now_ms: u64) -> Option<SchedulePoint> {
        let point = *self.schedule.points().get(self.next)?;
        if point.at_ms > now_ms {
            return None;
        }
        self.next += 1;
        Some(point)
    }

    /// True once every command was issued.
    pub fn done(&self) -> bool {
        self.next >= self.schedule.points().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_come_one_at_a_time_when_due() {
        let mut c = Control::from_settings("role=switch\nballoon_control=100:2:16,200:3:40\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.due(99), None);
        let first = c.due(500).unwrap();
        assert_eq!((first.vm, first.pages), (2, 16 * 256));
        assert!(!c.done());
        assert_eq!(c.due(500).unwrap().vm, 3);
        assert_eq!(c.due(10_000), None);
        assert!(c.done());
    }

    #[test]
    fn no_setting_is_none_and_a_bad_one_is_refused() {
        assert!(Control::from_settings("role=switch\n").unwrap().is_none());
        let e = Control::from_settings("balloon_control=1:0:16\n").unwrap_err();
        assert!(e.contains("VM id 0"), "{e}");
    }
}
