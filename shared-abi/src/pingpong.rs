//! The ping-pong test protocol over one granted page: what the `pingpong` guest app and the
//! driver domain's test responder exchange to prove (and time) grants plus event channels end to
//! end. Negotiated with the [`FEATURE`] bit in the handshake; the page is the front-end's
//! `tx_ring_ref` and the event port its `data_port`.
//!
//! Page words (little-endian `u64`, accessed atomically):
//! - word 0: sequence. The front-end writes `seq` (1, 2, ...) after the payload; the back-end
//!   answers by writing `seq | REPLY` after the reply payload.
//! - words 1..=8: request payload, [`payload`]`(seq, i)`.
//! - words 9..=16: reply payload, [`reply`] of each request word.
//!
//! The back-end reads the request payload once into locals (it is hostile input) and counts words
//! that are not [`payload`]`(seq, i)`; the front-end checks every reply word.

/// Handshake feature bit: "this connection runs the ping-pong test".
pub const FEATURE: u64 = 1 << 63;
/// Set in word 0 by the back-end's answer.
pub const REPLY: u64 = 1 << 63;
/// Words of request (and of reply) payload.
pub const PAYLOAD_WORDS: usize = 8;
pub const SEQ_WORD: usize = 0;
pub const REQUEST_WORDS: core::ops::Range<usize> = 1..1 + PAYLOAD_WORDS;
pub const REPLY_WORDS: core::ops::Range<usize> = 1 + PAYLOAD_WORDS..1 + 2 * PAYLOAD_WORDS;

/// Request word `i` of round `seq`: distinct per round and per word, so a stale or shifted word
/// is caught.
pub const fn payload(seq: u64, i: usize) -> u64 {
    (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
        .rotate_left(i as u32 * 5)
}

/// The back-end's answer to one request word.
pub const fn reply(word: u64) -> u64 {
    !word.rotate_left(17)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_differs_between_rounds_and_words() {
        let mut seen = std::collections::HashSet::new();
        for seq in 1..200 {
            for i in 0..PAYLOAD_WORDS {
                assert!(seen.insert(payload(seq, i)), "collision at {seq}/{i}");
            }
        }
    }

    #[test]
    fn reply_is_not_identity_and_is_injective_on_samples() {
        let mut seen = std::collections::HashSet::new();
        for seq in 1..100 {
            let w = payload(seq, 3);
            assert_ne!(reply(w), w);
            assert!(seen.insert(reply(w)));
        }
    }

    #[test]
    fn ranges_do_not_overlap() {
        let (request, reply) = (REQUEST_WORDS, REPLY_WORDS);
        assert!(request.end <= reply.start);
        assert!(!request.contains(&SEQ_WORD) && !reply.contains(&SEQ_WORD));
        assert!(reply.end * 8 <= 4096, "the words fit in one page");
    }
}
