//! The client side of a UDP echo (RFC 862, a peer's port 7): the datagrams it sends (a
//! sequence number and a tag), and the tally of which came back and when, so a test can see the
//! echo answer before a driver-domain restart, stop during it and answer again after (issue
//! 14). Time is a parameter (microseconds), so all of it runs in host tests; the socket work is
//! the caller's.

use alloc::vec::Vec;
use core::fmt;

/// The tag after the sequence number, so a stray datagram is not taken for an echo.
const TAG: [u8; 4] = *b"sUDP";
/// Bytes of a request: sequence number (big-endian u32), the tag, then a pattern.
pub const DATAGRAM_LEN: usize = 64;
/// Most requests one tally counts (the caller's count is clamped to it): the per-request
/// bookkeeping is a few bytes each, and a run is seconds long.
pub const MAX_REQUESTS: u32 = 10_000;

/// Request `seq`: its number, the tag, and bytes that depend on the number.
pub fn datagram(seq: u32) -> [u8; DATAGRAM_LEN] {
    let mut out = [0u8; DATAGRAM_LEN];
    out[..4].copy_from_slice(&seq.to_be_bytes());
    out[4..8].copy_from_slice(&TAG);
    for (i, b) in out[8..].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    out
}

/// Which requests were answered and when; answers are counted once each.
pub struct Tally {
    /// Requests this tally counts.
    limit: usize,
    /// Per request sent: when (us), and when its echo came (us), if it did.
    sent_at: Vec<u64>,
    answered_at: Vec<Option<u64>>,
    /// Echoes of a request already answered, and datagrams that are no echo of ours.
    pub duplicates: u64,
    pub strays: u64,
    /// The latest answer (us), and the longest silence between two answers so far.
    last_answer: Option<u64>,
    silence: Option<Silence>,
    /// Answers that came before the longest silence began.
    answered_before_silence: u32,
}

/// The longest time between two answers (by arrival) and where it fell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Silence {
    pub from_us: u64,
    pub to_us: u64,
    /// The request answered first after the silence.
    pub resumed_seq: u32,
}

impl Silence {
    pub fn ms(&self) -> u64 {
        (self.to_us - self.from_us) / 1000
    }
}

/// What a finished run saw, for its report line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub sent: u32,
    pub answered: u32,
    pub duplicates: u64,
    pub strays: u64,
    pub silence: Option<Silence>,
    /// Answers before the longest silence began, and after it ended (its last answer included).
    pub answered_before: u32,
    pub answered_after: u32,
}

impl Summary {
    pub fn lost(&self) -> u32 {
        self.sent - self.answered
    }
}

/// `170 sent, 161 answered, 9 lost; longest silence 412 ms (answered 60 before, 101 after, from
/// seq 68); 0 duplicate(s), 0 stray(s)`
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent, {} answered, {} lost; ",
            self.sent,
            self.answered,
            self.lost()
        )?;
        match self.silence {
            Some(s) => write!(
                f,
                "longest silence {} ms (answered {} before, {} after, from seq {})",
                s.ms(),
                self.answered_before,
                self.answered_after,
                s.resumed_seq
            )?,
            None => write!(f, "no silence between answers")?,
        }
        write!(
            f,
            "; {} duplicate(s), {} stray(s)",
            self.duplicates, self.strays
        )
    }
}

impl Tally {
    /// A tally for at most `count` requests (clamped to [`MAX_REQUESTS`]).
    pub fn new(count: u32) -> Tally {
        let count = count.min(MAX_REQUESTS) as usize;
        Tally {
            limit: count,
            sent_at: Vec::with_capacity(count),
            answered_at: Vec::with_capacity(count),
            duplicates: 0,
            strays: 0,
            last_answer: None,
            silence: None,
            answered_before_silence: 0,
        }
    }

    /// The next request to send, if the tally has room for it; the caller sends
    /// [`datagram`]`(seq)` and calls [`Tally::sent`] once it is queued.
    pub fn next_seq(&self) -> Option<u32> {
        let seq = self.sent_at.len();
        (seq < self.limit).then_some(seq as u32)
    }

    /// Request `seq` (the one [`Tally::next_seq`] gave) left at `now_us`.
    pub fn sent(&mut self, seq: u32, now_us: u64) {
        if self.next_seq() == Some(seq) {
            self.sent_at.push(now_us);
            self.answered_at.push(None);
        }
    }

    /// A datagram came back at `now_us`: an echo of one of our requests, or not.
    pub fn received(&mut self, data: &[u8], now_us: u64) {
        let seq = match data
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        {
            Some(seq) if data == datagram(seq).as_slice() => seq,
            _ => {
                self.strays += 1;
                return;
            }
        };
        let Some(slot) = self.answered_at.get_mut(seq as usize) else {
            self.strays += 1; // not sent yet: a forgery, not an echo
            return;
        };
        if slot.is_some() {
            self.duplicates += 1;
            return;
        }
        *slot = Some(now_us);
        if let Some(last) = self.last_answer {
            let gap = now_us.saturating_sub(last);
            if self.silence.is_none_or(|s| gap > s.to_us - s.from_us) {
                self.silence = Some(Silence {
                    from_us: last,
                    to_us: now_us.max(last),
                    resumed_seq: seq,
                });
                self.answered_before_silence = self.answered() - 1;
            }
        }
        self.last_answer = Some(now_us.max(self.last_answer.unwrap_or(0)));
    }

    fn answered(&self) -> u32 {
        self.answered_at.iter().filter(|a| a.is_some()).count() as u32
    }

    /// The tally so far.
    pub fn summary(&self) -> Summary {
        let answered = self.answered();
        let (before, after) = match self.silence {
            Some(_) => (
                self.answered_before_silence,
                answered - self.answered_before_silence,
            ),
            None => (answered, 0),
        };
        Summary {
            sent: self.sent_at.len() as u32,
            answered,
            duplicates: self.duplicates,
            strays: self.strays,
            silence: self.silence,
            answered_before: before,
            answered_after: after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests every 50 ms; the echo takes 2 ms, except that `lost` are never answered and
    /// `held` come back together at `held_until`.
    fn run(count: u32, lost: &[u32], held: &[u32], held_until: u64) -> Tally {
        let mut t = Tally::new(count);
        let mut released = false;
        while let Some(seq) = t.next_seq() {
            let at = u64::from(seq) * 50_000;
            t.sent(seq, at);
            if held.contains(&seq) || lost.contains(&seq) {
                continue;
            }
            // Echoes of held requests arrive at their release time, before the next ones.
            if at + 2_000 > held_until && !released {
                released = true;
                for &h in held.iter().filter(|&&h| h < seq) {
                    t.received(&datagram(h), held_until);
                }
            }
            t.received(&datagram(seq), at + 2_000);
        }
        t
    }

    #[test]
    fn an_outage_shows_as_answers_before_a_silence_and_after_it() {
        // Requests 20-25 lost in the outage; 26-29 queued and answered together at 1.5 s.
        let held: Vec<u32> = (26..30).collect();
        let t = run(60, &[20, 21, 22, 23, 24, 25], &held, 1_500_000);
        let s = t.summary();
        assert_eq!((s.sent, s.answered, s.lost()), (60, 54, 6));
        let silence = s.silence.unwrap();
        // From request 19's echo (952 ms) to the held ones' release (1500 ms).
        assert_eq!((silence.from_us, silence.to_us), (952_000, 1_500_000));
        assert_eq!(silence.ms(), 548);
        assert_eq!(silence.resumed_seq, 26);
        assert_eq!((s.answered_before, s.answered_after), (20, 34));
        assert_eq!(
            alloc::format!("{s}"),
            "60 sent, 54 answered, 6 lost; longest silence 548 ms (answered 20 before, 34 \
             after, from seq 26); 0 duplicate(s), 0 stray(s)"
        );
    }

    #[test]
    fn duplicates_strays_and_forgeries_do_not_count_as_answers() {
        let mut t = Tally::new(3);
        t.sent(0, 0);
        t.sent(5, 0); // not the next one: ignored
        t.received(&datagram(0), 10);
        t.received(&datagram(0), 20);
        t.received(&datagram(1), 30); // not sent yet
        let mut bent = datagram(0);
        bent[9] ^= 1;
        t.received(&bent, 40);
        t.received(b"hi", 50);
        let s = t.summary();
        assert_eq!((s.sent, s.answered, s.duplicates, s.strays), (1, 1, 1, 3));
        assert_eq!(s.silence, None);
        assert_eq!((s.answered_before, s.answered_after), (1, 0));
    }

    #[test]
    fn the_count_is_bounded() {
        let mut t = Tally::new(u32::MAX);
        let mut n = 0;
        while let Some(seq) = t.next_seq() {
            t.sent(seq, 0);
            n += 1;
        }
        assert_eq!(n, MAX_REQUESTS);
        assert_eq!(Tally::new(2).next_seq(), Some(0));
        let silent = run(10, &(0..10).collect::<Vec<_>>(), &[], 0).summary();
        assert_eq!(
            (silent.answered, silent.lost(), silent.silence),
            (0, 10, None)
        );
    }

    /// One thing that happens to a tally: a request goes out, or a datagram comes back (the
    /// echo of request `seq`, or any bytes), at a time that need not be later than the last.
    #[derive(Clone, Debug)]
    enum Step {
        Send(u64),
        Echo(u32, u64),
        Junk(Vec<u8>, u64),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            any::<u64>().prop_map(Step::Send),
            (0u32..40, any::<u64>()).prop_map(|(seq, at)| Step::Echo(seq, at)),
            (proptest::collection::vec(any::<u8>(), 0..80), any::<u64>())
                .prop_map(|(data, at)| Step::Junk(data, at)),
        ]
    }

    proptest::proptest! {
        /// Any mix of requests, echoes (of requests sent or not, again and again) and junk, at
        /// any times: every datagram is counted once as an answer, a duplicate or a stray,
        /// and the summary adds up (no answer beyond what was sent, before and after the
        /// silence make up all answers, a silence never ends before it starts).
        #[test]
        fn any_datagrams_at_any_times_keep_the_tally_consistent(
            count in 0u32..40,
            steps in proptest::collection::vec(step(), 0..80)
        ) {
            let mut t = Tally::new(count);
            let mut received = 0u64;
            for step in steps {
                match step {
                    Step::Send(at) => {
                        if let Some(seq) = t.next_seq() {
                            t.sent(seq, at);
                        }
                    }
                    Step::Echo(seq, at) => {
                        t.received(&datagram(seq), at);
                        received += 1;
                    }
                    Step::Junk(data, at) => {
                        t.received(&data, at);
                        received += 1;
                    }
                }
            }
            let s = t.summary();
            proptest::prop_assert!(s.answered <= s.sent);
            proptest::prop_assert_eq!(u64::from(s.answered) + s.duplicates + s.strays, received);
            proptest::prop_assert_eq!(s.answered_before + s.answered_after, s.answered);
            if let Some(silence) = s.silence {
                proptest::prop_assert!(silence.from_us <= silence.to_us);
            }
            let _ = (s.lost(), alloc::format!("{s}"));
        }
    }
}
