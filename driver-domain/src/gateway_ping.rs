//! How long the driver domain's boot-time gateway ping waits for its reply. The ping is the
//! sign that the NIC works both ways; it waits up to [`REPLY_WAIT_MS`] for the reply. But once
//! the request has left the stack, the gateway has answered ARP, which already shows that the
//! NIC works both ways, so the wait shrinks to [`AFTER_LEFT_MS`] more: a back-end that forwards
//! no ICMP (passt on a host whose `ping_group_range` refuses it ping sockets) then costs the
//! boot half a second instead of two. The harness starts host-side traffic on the ping's line.

/// The longest wait for the reply, from the request (ms).
pub const REPLY_WAIT_MS: u64 = 2_000;
/// The longest wait once the request has left (ms). slirp answers in about a millisecond; the
/// margin is for a loaded host.
pub const AFTER_LEFT_MS: u64 = 500;

/// When to give up on the reply (ticks): `sent` is when the request was queued, `left` when
/// it was seen to have left the stack, if it has; `ms` converts milliseconds to ticks.
pub fn give_up_at(sent: u64, left: Option<u64>, ms: impl Fn(u64) -> u64) -> u64 {
    let longest = sent.saturating_add(ms(REPLY_WAIT_MS));
    left.map_or(longest, |left| {
        longest.min(left.saturating_add(ms(AFTER_LEFT_MS)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> u64 {
        ms * 1_000
    }

    #[test]
    fn the_wait_shrinks_once_the_request_has_left() {
        // Still waiting for ARP: the whole two seconds.
        assert_eq!(give_up_at(10_000, None, ms), 2_010_000);
        // Left at once: half a second after that.
        assert_eq!(give_up_at(10_000, Some(10_100), ms), 510_100);
        // Left late: never past the two seconds.
        assert_eq!(give_up_at(10_000, Some(1_900_000), ms), 2_010_000);
        // Nor past the end of time.
        assert_eq!(give_up_at(u64::MAX - 5, Some(u64::MAX - 1), ms), u64::MAX);
    }
}
