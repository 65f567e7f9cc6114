//! Per-VM console line assembly: bytes from the console hypercall are collected until a newline
//! so the hypervisor can print whole lines prefixed with the VM's name, never interleaved; and
//! the rate limit that keeps one VM's flood of lines from occupying the shared UART.

pub const LINE_MAX: usize = 200;

pub struct LineBuffer {
    bytes: [u8; LINE_MAX],
    len: usize,
}

impl Default for LineBuffer {
    fn default() -> Self {
        LineBuffer {
            bytes: [0; LINE_MAX],
            len: 0,
        }
    }
}

impl LineBuffer {
    /// Adds bytes; calls `emit` with each completed line (without the newline). A line longer
    /// than LINE_MAX is emitted in pieces. Carriage returns and other control bytes except tab
    /// are dropped so a guest cannot move the host terminal's cursor or forge another VM's prefix.
    pub fn push(&mut self, input: &[u8], mut emit: impl FnMut(&[u8])) {
        for &byte in input {
            match byte {
                b'\n' => {
                    emit(&self.bytes[..self.len]);
                    self.len = 0;
                }
                b'\t' | 0x20..=0x7e | 0x80..=0xff => {
                    if self.len == LINE_MAX {
                        emit(&self.bytes[..self.len]);
                        self.len = 0;
                    }
                    self.bytes[self.len] = byte;
                    self.len += 1;
                }
                _ => {}
            }
        }
    }

    /// Emits whatever partial line is left (when the VM stops).
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8])) {
        if self.len > 0 {
            emit(&self.bytes[..self.len]);
            self.len = 0;
        }
    }
}

/// A token bucket over console bytes: a VM may print `burst` bytes at once and `rate` bytes per
/// second after that. Lines over the limit are dropped whole and counted; a line that fits is
/// preceded by a note saying how many were dropped, so a reader knows output is missing (at
/// most one note a second, so the notes do not become a flood of their own).
pub struct RateLimit {
    /// Bytes that may be printed now, in 1/`ticks_per_second` units of a byte (so refills do
    /// not lose fractions).
    credit: u128,
    last: u64,
    burst: u64,
    rate: u64,
    ticks_per_second: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
    /// When the last note was printed (none yet: the first one may come at once).
    last_note: Option<u64>,
}

/// What to do with one complete line.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Print,
    /// Print the note about `lines` (`bytes`) dropped before it, then the line.
    PrintAfterDrops {
        lines: u64,
        bytes: u64,
    },
    Drop,
}

impl RateLimit {
    /// Full bucket at `now` (counter ticks at `ticks_per_second`).
    pub fn new(burst: u64, rate: u64, ticks_per_second: u64, now: u64) -> Self {
        let ticks_per_second = ticks_per_second.max(1);
        RateLimit {
            credit: u128::from(burst) * u128::from(ticks_per_second),
            last: now,
            burst,
            rate,
            ticks_per_second,
            dropped_lines: 0,
            dropped_bytes: 0,
            last_note: None,
        }
    }

    /// Decides about one line of `len` bytes at `now`.
    pub fn admit(&mut self, len: usize, now: u64) -> Admit {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        let cap = u128::from(self.burst) * u128::from(self.ticks_per_second);
        self.credit = (self.credit + u128::from(elapsed) * u128::from(self.rate)).min(cap);
        // A line costs at least one byte (its newline), so empty lines are limited too.
        let cost = (len as u128 + 1) * u128::from(self.ticks_per_second);
        if self.credit < cost {
            self.dropped_lines += 1;
            self.dropped_bytes += len as u64 + 1;
            return Admit::Drop;
        }
        self.credit -= cost;
        let note_due = self
            .last_note
            .is_none_or(|last| now.saturating_sub(last) >= self.ticks_per_second);
        if self.dropped_lines == 0 || !note_due {
            return Admit::Print;
        }
        self.last_note = Some(now);
        let admit = Admit::PrintAfterDrops {
            lines: self.dropped_lines,
            bytes: self.dropped_bytes,
        };
        self.dropped_lines = 0;
        self.dropped_bytes = 0;
        admit
    }

    /// Lines (and bytes) dropped since the last note.
    pub fn pending_drops(&self) -> (u64, u64) {
        (self.dropped_lines, self.dropped_bytes)
    }

    /// Lines dropped since the last note, to say so when the VM stops: `(lines, bytes)` if
    /// there are any and a note is due at `now` (at most one a second, as for notes before a
    /// line), and then counted as said. The credit is left as it is: a VM that resets in a
    /// loop does not get a fresh burst each time.
    pub fn note_drops(&mut self, now: u64) -> Option<(u64, u64)> {
        let note_due = self
            .last_note
            .is_none_or(|last| now.saturating_sub(last) >= self.ticks_per_second);
        if self.dropped_lines == 0 || !note_due {
            return None;
        }
        self.last_note = Some(now);
        let drops = (self.dropped_lines, self.dropped_bytes);
        self.dropped_lines = 0;
        self.dropped_bytes = 0;
        Some(drops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(buffer: &mut LineBuffer, input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        buffer.push(input, |l| out.push(String::from_utf8_lossy(l).into_owned()));
        out
    }

    #[test]
    fn assembles_lines_across_calls() {
        let mut b = LineBuffer::default();
        assert!(lines(&mut b, b"hel").is_empty());
        assert_eq!(lines(&mut b, b"lo\nwor"), vec!["hello"]);
        assert_eq!(lines(&mut b, b"ld\n"), vec!["world"]);
    }

    #[test]
    fn drops_control_bytes() {
        let mut b = LineBuffer::default();
        assert_eq!(lines(&mut b, b"a\rb\x1b[2Jc\n"), vec!["ab[2Jc"]);
    }

    #[test]
    fn splits_overlong_lines() {
        let mut b = LineBuffer::default();
        let input = vec![b'x'; LINE_MAX + 5];
        let out = lines(&mut b, &input);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), LINE_MAX);
        let mut rest = Vec::new();
        b.flush(|l| rest.push(l.len()));
        assert_eq!(rest, vec![5]);
    }

    /// A VM that floods its console and resets in a loop: each stop says what was dropped (at
    /// most once a second) but refills nothing, so the loop prints no more than the rate.
    #[test]
    fn a_reset_loop_gets_no_fresh_burst_and_at_most_one_note_a_second() {
        // 1000 ticks per second, 100-byte burst, 50 bytes per second.
        let mut limit = RateLimit::new(100, 50, 1000, 0);
        let (mut printed, mut notes) = (0u64, 0u64);
        // Ten stops 10 ms apart, each after a flood of 20-byte lines.
        for stop in 0..10u64 {
            let now = stop * 10;
            for _ in 0..20 {
                if limit.admit(19, now) != Admit::Drop {
                    printed += 20;
                }
            }
            if limit.note_drops(now).is_some() {
                notes += 1;
            }
        }
        // The burst and 90 ms at 50 bytes a second: 100 + 4.5 bytes, so five lines.
        assert_eq!(printed, 100);
        assert_eq!(notes, 1, "one note in the first second");
        // The first stop said its 15; the other 180 of the 195 dropped lines wait for the next.
        assert_eq!(limit.note_drops(1_000).map(|(lines, _)| lines), Some(180));
        assert_eq!(limit.note_drops(3_000), None, "said once");
    }

    #[test]
    fn a_flood_is_cut_to_the_rate_and_the_drops_are_announced() {
        // 1000 ticks per second, 100-byte burst, 50 bytes per second.
        let mut limit = RateLimit::new(100, 50, 1000, 0);
        // 9 bytes + newline each: the burst holds ten lines at once.
        let burst: Vec<Admit> = (0..12).map(|_| limit.admit(9, 0)).collect();
        assert_eq!(burst.iter().filter(|a| **a == Admit::Print).count(), 10);
        assert_eq!(burst[10..], [Admit::Drop, Admit::Drop]);
        assert_eq!(limit.pending_drops(), (2, 20));
        // 100 ms later only 5 bytes came back: still dropped.
        assert_eq!(limit.admit(9, 100), Admit::Drop);
        // 200 ms later there are 10 bytes: printed, after the note about three dropped lines.
        assert_eq!(
            limit.admit(9, 200),
            Admit::PrintAfterDrops {
                lines: 3,
                bytes: 30
            }
        );
        assert_eq!(limit.pending_drops(), (0, 0));
        // A long quiet spell refills only up to the burst.
        let after: Vec<Admit> = (0..11).map(|_| limit.admit(9, 1_000_000)).collect();
        assert_eq!(after.iter().filter(|a| **a == Admit::Print).count(), 10);
        assert_eq!(after[10], Admit::Drop);
    }

    #[test]
    fn drop_notes_come_at_most_once_a_second_and_lose_no_count() {
        // 1000 ticks per second, room for one 9-byte line, 10 bytes per second.
        let mut limit = RateLimit::new(10, 10, 1000, 0);
        assert_eq!(limit.admit(9, 0), Admit::Print);
        assert_eq!(limit.admit(9, 0), Admit::Drop);
        assert_eq!(
            limit.admit(9, 1000),
            Admit::PrintAfterDrops {
                lines: 1,
                bytes: 10
            }
        );
        assert_eq!(limit.admit(9, 1000), Admit::Drop);
        assert_eq!(limit.admit(9, 1000), Admit::Drop);
        // Half a second after the note: printed, but the drops wait for the next note.
        assert_eq!(limit.admit(4, 1500), Admit::Print);
        assert_eq!(limit.pending_drops(), (2, 20));
        assert_eq!(
            limit.admit(9, 2500),
            Admit::PrintAfterDrops {
                lines: 2,
                bytes: 20
            }
        );
    }

    #[test]
    fn sustained_output_under_the_rate_is_never_dropped() {
        let mut limit = RateLimit::new(100, 1000, 1_000_000, 0);
        // A 99-byte line every 100 ms is 1000 bytes per second, exactly the rate.
        for i in 0..1000u64 {
            assert_eq!(limit.admit(99, i * 100_000), Admit::Print, "line {i}");
        }
        // A clock that goes backwards (another pCPU's counter) refills nothing and breaks nothing.
        assert_eq!(limit.admit(50, 5), Admit::Drop);
    }
}
