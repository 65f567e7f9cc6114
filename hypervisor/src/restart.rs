//! When a driver domain that crashed is restarted, and when it is left stopped: a crash (a
//! fatal fault, a panic, a reset) restarts it at once the first time, then with a growing
//! back-off, and after [`MAX_CRASHES`] crashes within [`WINDOW_MS`] it stays stopped, so a
//! driver that cannot start cannot keep a pCPU busy rebooting forever. Guests are told their
//! back-end went away either way (the control page's closed section and stop word).
//!
//! [`Timeline`] times one restart inside the hypervisor, from the crash notice to the new
//! incarnation's first vCPU made runnable, and prints it as one `restart timeline:` line the
//! harness lines up with the driver domain's and the guests' own lines
//! (`tests/src/restart.rs`, the bench's `driver_domain_restart_spans_ms.*`).
//!
//! [`SpareRam`] is the bookkeeping of the NIC's driver domain's warm spare of RAM: a run the
//! size of its RAM, zeroed ahead of time by idle pCPUs in bounded chunks (no lock held while
//! zeroing), which a restart swaps in at once instead of zeroing the old RAM; the old RAM is
//! scrubbed the same way and becomes the next spare.

/// Crashes within [`WINDOW_MS`] after which a driver domain is left stopped.
pub const MAX_CRASHES: usize = 5;
/// The window crashes are counted in.
pub const WINDOW_MS: u64 = 60_000;
/// The back-off before the second restart within the window; it doubles for each further one.
pub const FIRST_BACKOFF_MS: u64 = 100;

/// What to do about a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Restart it, starting its first vCPU after `delay_ms`; `crash` counts this one within
    /// the window (1 = the first).
    Restart { delay_ms: u64, crash: usize },
    /// Leave it stopped: `crashes` within the window.
    GiveUp { crashes: usize },
}

/// The recent crashes of one VM (times in ms since boot).
#[derive(Clone, Debug, Default)]
pub struct CrashHistory {
    recent: [u64; MAX_CRASHES],
    count: usize,
}

impl CrashHistory {
    /// A crash at `now_ms`: remembered, and the verdict.
    pub fn crashed(&mut self, now_ms: u64) -> Verdict {
        // Forget crashes older than the window (the array is in time order).
        let keep_from = self.recent[..self.count]
            .iter()
            .position(|&t| now_ms.saturating_sub(t) < WINDOW_MS)
            .unwrap_or(self.count);
        self.recent.copy_within(keep_from..self.count, 0);
        self.count -= keep_from;
        if self.count + 1 >= MAX_CRASHES {
            return Verdict::GiveUp {
                crashes: self.count + 1,
            };
        }
        self.recent[self.count] = now_ms;
        self.count += 1;
        let delay_ms = match self.count {
            1 => 0,
            n => FIRST_BACKOFF_MS << (n - 2),
        };
        Verdict::Restart {
            delay_ms,
            crash: self.count,
        }
    }
}

/// The marks of a restart inside the hypervisor, in the order they happen: every vCPU
/// stopped (`stop`), the sharing and stage-2 teardown done (`teardown`), the RAM zeroed
/// (`zero`: at once with a warm spare), the image and start-info page written (`load`), the
/// first vCPU made runnable again (`start`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Stop,
    Teardown,
    Zero,
    Load,
    Start,
}

impl Mark {
    /// Every mark, in order.
    pub const ALL: [Mark; 5] = [
        Mark::Stop,
        Mark::Teardown,
        Mark::Zero,
        Mark::Load,
        Mark::Start,
    ];

    /// Its name in the timeline line.
    pub const fn name(self) -> &'static str {
        match self {
            Mark::Stop => "stop",
            Mark::Teardown => "teardown",
            Mark::Zero => "zero",
            Mark::Load => "load",
            Mark::Start => "start",
        }
    }
}

/// One restart's times in counter ticks (the counter every VM shares, so the harness can line
/// the hypervisor's marks up with the VMs' `at T us` times).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    notice: u64,
    marks: [Option<u64>; 5],
}

impl Timeline {
    /// The hypervisor learned of the crash at `now` (the fault's trap, or SYSTEM_RESET).
    pub fn noticed(now: u64) -> Timeline {
        Timeline {
            notice: now,
            marks: [None; 5],
        }
    }

    /// `mark` happened at `now` (a mark set twice keeps the later time).
    pub fn mark(&mut self, mark: Mark, now: u64) {
        self.marks[mark as usize] = Some(now);
    }

    /// `restart timeline: VM dd: notice at 5002000 us; ms after it: stop 0.1, teardown 7.5,
    /// zero 7.6, load 9.9, start 10.3`, for a counter of `freq` Hz (marks not set are left out).
    pub fn line(&self, vm: &str, freq: u64) -> alloc::string::String {
        use core::fmt::Write;
        let freq = freq.max(1);
        let us = |ticks: u64| (u128::from(ticks) * 1_000_000 / u128::from(freq)) as u64;
        let mut out = alloc::format!(
            "restart timeline: VM {vm}: notice at {} us; ms after it:",
            us(self.notice)
        );
        let mut first = true;
        for mark in Mark::ALL {
            if let Some(at) = self.marks[mark as usize] {
                let tenths = us(at.saturating_sub(self.notice)) / 100;
                let _ = write!(
                    out,
                    "{} {} {}.{}",
                    if first { "" } else { "," },
                    mark.name(),
                    tenths / 10,
                    tenths % 10
                );
                first = false;
            }
        }
        out
    }
}

/// How much of a spare one idle pass zeroes: small enough that a pCPU busy scrubbing notices
/// a runnable vCPU soon (a chunk is about 0.5 ms under QEMU).
pub const SCRUB_CHUNK: u64 = 512 * 1024;

/// A warm spare of RAM for one VM (`owner`): `[pa, pa + len)`, allocated and not free memory,
/// zeroed chunk by chunk ([`SpareRam::claim`], [`SpareRam::scrubbed`]) and taken whole once
/// every chunk is zeroed ([`SpareRam::take`]). Chunks are claimed and finished under the HV
/// lock and zeroed without it, so two idle pCPUs zero different chunks, and a spare with a
/// chunk in flight is neither taken nor freed: one retired then ([`SpareRam::retire`]) is freed
/// by the last chunk's [`SpareRam::scrubbed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpareRam {
    pub owner: u16,
    pa: u64,
    len: u64,
    /// Bytes claimed so far (chunks are claimed in order from the start).
    claimed: u64,
    /// Bytes zeroed so far.
    done: u64,
    retired: bool,
}

impl SpareRam {
    /// A spare still to be zeroed.
    pub fn dirty(owner: u16, pa: u64, len: u64) -> SpareRam {
        SpareRam {
            owner,
            pa,
            len,
            claimed: 0,
            done: 0,
            retired: false,
        }
    }

    /// A spare zeroed already (one put back after a restart could not use it).
    pub fn clean(owner: u16, pa: u64, len: u64) -> SpareRam {
        SpareRam {
            claimed: len,
            done: len,
            ..SpareRam::dirty(owner, pa, len)
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes zeroed so far.
    pub fn zeroed(&self) -> u64 {
        self.done
    }

    /// Every byte zeroed, nothing in flight: it may be taken.
    pub fn ready(&self) -> bool {
        self.done == self.len && !self.retired
    }

    /// The next chunk `(pa, len)` to zero, now the caller's until [`SpareRam::scrubbed`];
    /// `None` when every chunk is claimed or the spare is retired.
    pub fn claim(&mut self) -> Option<(u64, u64)> {
        if self.retired || self.claimed >= self.len {
            return None;
        }
        let len = SCRUB_CHUNK.min(self.len - self.claimed);
        let chunk = (self.pa + self.claimed, len);
        self.claimed += len;
        Some(chunk)
    }

    /// A claimed chunk of `len` bytes is zeroed. True when the spare is retired and nothing
    /// is in flight any more: the caller frees `[pa, pa + len)` now ([`SpareRam::run`]).
    pub fn scrubbed(&mut self, len: u64) -> bool {
        self.done = (self.done + len).min(self.claimed);
        self.retired && self.done == self.claimed
    }

    /// Its owner is gone: no more chunks. True when nothing is in flight, so the caller frees
    /// it now; otherwise the last [`SpareRam::scrubbed`] says so.
    pub fn retire(&mut self) -> bool {
        self.retired = true;
        self.done == self.claimed
    }

    /// The run, `(pa, len)`, when ready: the caller owns it from now on.
    pub fn take(&self) -> Option<(u64, u64)> {
        self.ready().then_some((self.pa, self.len))
    }

    /// The run `(pa, len)`, to free it.
    pub fn run(&self) -> (u64, u64) {
        (self.pa, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_line_gives_the_notice_in_us_and_each_mark_in_ms_after_it() {
        // A 62.5 MHz counter (QEMU virt's).
        let freq = 62_500_000;
        let ms = |x: u64| x * freq / 1000;
        let mut t = Timeline::noticed(ms(5_002));
        t.mark(Mark::Stop, ms(5_002) + freq / 10_000);
        t.mark(Mark::Teardown, ms(5_009) + ms(1) / 2);
        t.mark(Mark::Load, ms(5_012));
        t.mark(Mark::Start, ms(5_013));
        assert_eq!(
            t.line("dd", freq),
            "restart timeline: VM dd: notice at 5002000 us; ms after it: stop 0.1, teardown \
             7.5, load 10.0, start 11.0"
        );
        t.mark(Mark::Zero, ms(5_010));
        assert!(t
            .line("dd", freq)
            .contains("teardown 7.5, zero 8.0, load 10.0"));
        // A mark before the notice (it cannot be) reads 0, never wraps.
        t.mark(Mark::Stop, 0);
        assert!(t.line("dd", freq).contains("stop 0.0,"));
    }

    #[test]
    fn restarts_back_off_then_give_up_within_the_window() {
        let mut h = CrashHistory::default();
        let verdicts: Vec<Verdict> = (0..6).map(|i| h.crashed(1_000 + i * 100)).collect();
        assert_eq!(
            verdicts,
            vec![
                Verdict::Restart {
                    delay_ms: 0,
                    crash: 1
                },
                Verdict::Restart {
                    delay_ms: 100,
                    crash: 2
                },
                Verdict::Restart {
                    delay_ms: 200,
                    crash: 3
                },
                Verdict::Restart {
                    delay_ms: 400,
                    crash: 4
                },
                Verdict::GiveUp { crashes: 5 },
                Verdict::GiveUp { crashes: 5 },
            ]
        );
    }

    #[test]
    fn crashes_far_apart_always_restart_at_once() {
        let mut h = CrashHistory::default();
        for i in 0..20 {
            assert_eq!(
                h.crashed(i * (WINDOW_MS + 1)),
                Verdict::Restart {
                    delay_ms: 0,
                    crash: 1
                }
            );
        }
        // Two close together after a long quiet spell: the second backs off.
        let t = 100 * WINDOW_MS;
        h.crashed(t);
        assert_eq!(
            h.crashed(t + 10),
            Verdict::Restart {
                delay_ms: FIRST_BACKOFF_MS,
                crash: 2
            }
        );
        // A clock that goes backwards (it does not, but) neither panics nor forgets.
        assert!(matches!(h.crashed(0), Verdict::Restart { crash: 3, .. }));
    }

    #[test]
    fn a_spare_is_zeroed_chunk_by_chunk_by_two_pcpus_and_taken_only_when_every_chunk_is_done() {
        let len = 3 * SCRUB_CHUNK + 4096;
        let mut s = SpareRam::dirty(1, 0x4000_0000, len);
        assert!(!s.ready() && s.take().is_none());
        // Two pCPUs claim different chunks.
        let a = s.claim().unwrap();
        let b = s.claim().unwrap();
        assert_eq!(a, (0x4000_0000, SCRUB_CHUNK));
        assert_eq!(b, (0x4000_0000 + SCRUB_CHUNK, SCRUB_CHUNK));
        assert!(!s.scrubbed(b.1));
        let c = s.claim().unwrap();
        let d = s.claim().unwrap();
        assert_eq!(
            d,
            (0x4000_0000 + 3 * SCRUB_CHUNK, 4096),
            "the tail is short"
        );
        assert_eq!(s.claim(), None);
        for chunk in [c, d] {
            assert!(!s.scrubbed(chunk.1));
        }
        // One chunk still in flight: not ready.
        assert!(!s.ready() && s.take().is_none());
        assert!(!s.scrubbed(a.1));
        assert!(s.ready());
        assert_eq!(s.zeroed(), len);
        assert_eq!(s.take(), Some((0x4000_0000, len)));
    }

    #[test]
    fn a_retired_spare_is_freed_once_no_chunk_is_in_flight_and_never_taken() {
        let mut s = SpareRam::dirty(1, 0, 2 * SCRUB_CHUNK);
        assert!(s.retire(), "nothing in flight: free it now");
        assert_eq!(s.claim(), None);
        let mut s = SpareRam::dirty(1, 0, 2 * SCRUB_CHUNK);
        let a = s.claim().unwrap();
        assert!(!s.retire(), "a chunk in flight: not yet");
        assert_eq!(s.claim(), None, "no chunk after retiring");
        assert!(s.scrubbed(a.1), "the last chunk frees it");
        assert!(!s.ready() && s.take().is_none());
        // A ready spare retired is freed at once and cannot be taken.
        let mut s = SpareRam::dirty(1, 0, SCRUB_CHUNK);
        let a = s.claim().unwrap();
        s.scrubbed(a.1);
        assert!(s.ready());
        assert!(s.retire());
        assert!(s.take().is_none());
        // A stray report of more than was claimed cannot make it ready.
        let mut s = SpareRam::dirty(1, 0, 2 * SCRUB_CHUNK);
        let a = s.claim().unwrap();
        s.scrubbed(10 * a.1);
        assert!(!s.ready());
    }
}
