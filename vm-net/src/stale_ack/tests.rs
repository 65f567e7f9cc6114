//! The stale-ACK table on hand-made segments, and the whole workaround on a [`Stack`]'s TCP echo
//! driven by a hand-played peer that sends data with a stale ACK, as passt does.

use std::vec::Vec;

use smoltcp::time::Instant;
use smoltcp::wire::{EthernetFrame, IpAddress, Ipv4Packet, TcpControl, TcpPacket};

use super::*;
use crate::frame_queues::FrameQueues;
use crate::test_peer::{arp_reply, stack_at, tcp};
use crate::{Buffers, Stack, ECHO_PORT};

const PEER_PORT: u16 = 40948;

/// An Ethernet frame from the peer to the stack's echo carrying one TCP segment, checksums
/// filled.
fn segment(control: TcpControl, seq: u32, ack: Option<u32>, payload: &[u8]) -> Vec<u8> {
    tcp((PEER_PORT, ECHO_PORT), control, seq, ack, payload)
}

/// The TCP segment in `frame`: (seq, ack, payload, checksum valid).
fn parse(frame: &[u8]) -> Option<(u32, u32, Vec<u8>, bool)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let valid = tcp.verify_checksum(
        &IpAddress::Ipv4(ip.src_addr()),
        &IpAddress::Ipv4(ip.dst_addr()),
    );
    Some((
        tcp.seq_number().0 as u32,
        tcp.ack_number().0 as u32,
        tcp.payload().to_vec(),
        valid,
    ))
}

/// The repair of a stale acknowledgment to `ack`.
fn acked(ack: u32) -> Option<Repair> {
    Some(Repair {
        ack: Some(ack),
        seq: None,
    })
}

#[test]
fn a_pure_ack_ahead_of_the_peers_data_is_pulled_back_to_its_end() {
    let mut table = AckTable::default();
    // No data seen yet on the flow: nothing to judge a pure ACK's sequence number by.
    assert_eq!(
        table.inspect(&segment(TcpControl::None, 50, Some(1000), b"")),
        None
    );
    assert_eq!(
        table.inspect(&segment(TcpControl::Psh, 100, Some(1000), b"data")),
        None
    );
    // At the end of the data, or behind it: as sent.
    for seq in [104, 90] {
        assert_eq!(
            table.inspect(&segment(TcpControl::None, seq, Some(1000), b"")),
            None
        );
    }
    // Ahead of it (counting data still on its way): pulled back, checksum still right, the
    // acknowledgment untouched.
    let mut ahead = segment(TcpControl::None, 8296, Some(2000), b"");
    let repair = table.inspect(&ahead);
    assert_eq!(
        repair,
        Some(Repair {
            ack: None,
            seq: Some(104)
        })
    );
    rewrite(&mut ahead, repair.unwrap());
    let (seq, ack, payload, valid) = parse(&ahead).unwrap();
    assert_eq!((seq, ack, payload.len(), valid), (104, 2000, 0, true));
    // The data then arrives and moves the end; a pure ACK there passes.
    table.inspect(&segment(TcpControl::None, 104, Some(2000), &[7; 8192]));
    assert_eq!(
        table.inspect(&segment(TcpControl::None, 8296, Some(2000), b"")),
        None
    );
    assert_eq!((table.pulled_back, table.repaired), (1, 0));
}

#[test]
fn data_with_a_stale_ack_gets_the_highest_ack_and_a_checksum_that_still_holds() {
    let mut table = AckTable::default();
    assert_eq!(
        table.inspect(&segment(TcpControl::None, 100, Some(1000), b"a")),
        None
    );
    assert_eq!(
        table.inspect(&segment(TcpControl::None, 101, Some(5000), b"")),
        None
    );
    let mut stale = segment(TcpControl::Psh, 101, Some(3000), b"data");
    assert_eq!(table.inspect(&stale), acked(5000));
    rewrite(&mut stale, acked(5000).unwrap());
    let (seq, ack, payload, valid) = parse(&stale).unwrap();
    assert_eq!(
        (seq, ack, payload.as_slice(), valid),
        (101, 5000, &b"data"[..], true)
    );
    assert_eq!(table.repaired, 1);
    // A FIN with a stale ACK is repaired too: its sequence number matters.
    assert_eq!(
        table.inspect(&segment(TcpControl::Fin, 105, Some(4000), b"")),
        acked(5000)
    );
}

#[test]
fn pure_acks_and_fresh_acks_pass_untouched() {
    let mut table = AckTable::default();
    // (seq, ack, payload, what the table answers): a stale pure ACK is smoltcp's to ignore, not
    // ours to change; the same ACK again and a newer one pass; only stale data is repaired.
    let steps: [(u32, u32, &[u8], Option<u32>); 5] = [
        (1, 9000, b"x", None),
        (2, 8000, b"", None),
        (2, 9000, b"y", None),
        (3, 9500, b"z", None),
        (4, 9400, b"w", Some(9500)),
    ];
    for (seq, ack, payload, expected) in steps {
        assert_eq!(
            table.inspect(&segment(TcpControl::None, seq, Some(ack), payload)),
            expected.and_then(acked),
            "seq {seq} ack {ack}"
        );
    }
    assert_eq!(table.repaired, 1);
}

#[test]
fn sequence_numbers_wrap_and_garbage_is_left_alone() {
    let mut table = AckTable::default();
    let near_end = u32::MAX - 10;
    assert_eq!(
        table.inspect(&segment(TcpControl::None, 1, Some(near_end), b"a")),
        None
    );
    // Past the wrap is newer.
    assert_eq!(
        table.inspect(&segment(TcpControl::None, 2, Some(20), b"b")),
        None
    );
    // Before the wrap is now stale.
    assert_eq!(
        table.inspect(&segment(TcpControl::None, 3, Some(near_end + 5), b"c")),
        acked(20)
    );
    // Half the sequence space away is not a stale ACK but nonsense: the stack judges it.
    assert_eq!(
        table.inspect(&segment(
            TcpControl::None,
            4,
            Some(20u32.wrapping_add(1 << 31)),
            b"d"
        )),
        None
    );
}

#[test]
fn a_new_or_reset_connection_starts_over() {
    let mut table = AckTable::default();
    table.inspect(&segment(TcpControl::None, 1, Some(7000), b"a"));
    table.inspect(&segment(TcpControl::Rst, 2, Some(7000), b""));
    assert_eq!(
        table.inspect(&segment(TcpControl::None, 3, Some(10), b"b")),
        None
    );
    table.inspect(&segment(TcpControl::Syn, 4, None, b""));
    assert_eq!(
        table.inspect(&segment(TcpControl::None, 5, Some(5), b"c")),
        None
    );
}

#[test]
fn a_wrong_checksum_stays_wrong() {
    let mut frame = segment(TcpControl::None, 1, Some(100), b"abc");
    let len = frame.len();
    frame[len - 1] ^= 0xff;
    rewrite(&mut frame, acked(200).unwrap());
    let (_, ack, _, valid) = parse(&frame).unwrap();
    assert_eq!(ack, 200);
    assert!(
        !valid,
        "a corrupt segment must not come out with a good checksum"
    );
}

#[test]
fn the_table_is_bounded_and_any_bytes_are_harmless() {
    let mut table = AckTable::default();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for flow in 0..100u32 {
        let mut frame = segment(TcpControl::None, 1, Some(1000), b"a");
        // A different source port per flow (the checksum does not matter here).
        frame[34..36].copy_from_slice(&(flow as u16).to_be_bytes());
        table.inspect(&frame);
        assert!(table.flows.len() <= FLOWS);
    }
    for _ in 0..2000 {
        let len = (next() % 120) as usize;
        let mut frame = segment(TcpControl::None, 1, Some(1000), b"payload");
        frame.truncate(len.min(frame.len()));
        for _ in 0..4 {
            if !frame.is_empty() {
                let at = (next() as usize) % frame.len();
                frame[at] = next() as u8;
            }
        }
        if let Some(repair) = table.inspect(&frame) {
            rewrite(&mut frame, repair);
        }
        // Rewriting a frame too short for its header changes nothing and does not panic.
        let short = len.min(frame.len());
        let both = Repair {
            ack: Some(7),
            seq: Some(9),
        };
        rewrite(&mut frame[..short], both);
    }
}

proptest::proptest! {
    /// Segments of any flags, numbers and payload, from any of many flows, cut short or with
    /// bytes overwritten anywhere: the table never panics, never holds more than [`FLOWS`]
    /// flows, and rewriting any frame (whatever its header says) stays inside it.
    #[test]
    fn any_segments_are_inspected_and_rewritten_without_panics(
        frames in proptest::collection::vec(
            (
                0u8..5,
                proptest::prelude::any::<(u32, Option<u32>, u16)>(),
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
                0usize..120,
                proptest::collection::vec((0usize..120, proptest::prelude::any::<u8>()), 0..4),
            ),
            0..48,
        )
    ) {
        let mut table = AckTable::default();
        for (control, (seq, ack, flow), payload, keep, corruptions) in frames {
            let control = [
                TcpControl::None,
                TcpControl::Psh,
                TcpControl::Syn,
                TcpControl::Fin,
                TcpControl::Rst,
            ][usize::from(control)];
            let mut frame = segment(control, seq, ack, &payload);
            // Another flow: the source port (the checksum does not matter to the table).
            frame[34..36].copy_from_slice(&(flow % 40).to_be_bytes());
            for (at, byte) in corruptions {
                if let Some(b) = frame.get_mut(at) {
                    *b = byte;
                }
            }
            frame.truncate(keep.max(1));
            if let Some(repair) = table.inspect(&frame) {
                rewrite(&mut frame, repair);
            }
            proptest::prop_assert!(table.flows.len() <= FLOWS);
            rewrite(&mut frame, Repair { ack: ack.or(Some(seq)), seq: Some(seq) });
        }
    }
}

/// The stack's side of the cable: frames in, frames out.
type Cable = FrameQueues;

/// Polls the stack for `ms` virtual milliseconds, answering its ARP requests; returns the TCP
/// segments it sent (seq, ack, payload).
fn run(stack: &mut Stack<Cable>, now: &mut Instant, ms: u32) -> Vec<(u32, u32, Vec<u8>)> {
    let mut sent = Vec::new();
    for _ in 0..ms {
        stack.poll_at(*now);
        while let Some(frame) = stack.device.from_stack.pop_front() {
            if let Some(reply) = arp_reply(&frame) {
                stack.device.to_stack.push_back(reply);
            } else if let Some((seq, ack, payload, _)) = parse(&frame) {
                sent.push((seq, ack, payload));
            }
        }
        *now += smoltcp::time::Duration::from_millis(1);
    }
    sent
}

/// A stack with its TCP echo connected to the hand-played peer, which has sent "hello" and
/// seen it echoed: returns the stack, the clock, the peer's next sequence number and the
/// stack's (the echo still unacknowledged).
fn connected_echo() -> (Stack<FrameQueues>, Instant, u32, u32) {
    let mut now = Instant::from_millis(1_000);
    let mut stack = stack_at(now);
    run(&mut stack, &mut now, 2);
    let isn = 1000u32;
    stack
        .device
        .to_stack
        .push_back(segment(TcpControl::Syn, isn, None, b""));
    let synack = run(&mut stack, &mut now, 5);
    let server_isn = synack.first().expect("a SYN-ACK").0;
    let mut ours = isn + 1;
    let theirs = server_isn + 1;
    stack
        .device
        .to_stack
        .push_back(segment(TcpControl::None, ours, Some(theirs), b""));
    stack
        .device
        .to_stack
        .push_back(segment(TcpControl::Psh, ours, Some(theirs), b"hello"));
    ours += 5;
    let echoed: Vec<u8> = run(&mut stack, &mut now, 30)
        .into_iter()
        .flat_map(|(_, _, p)| p)
        .collect();
    assert_eq!(echoed, b"hello");
    (stack, now, ours, theirs)
}

#[test]
fn a_tcp_echo_takes_data_that_comes_with_a_stale_ack() {
    let (mut stack, mut now, ours, mut theirs) = connected_echo();
    // The peer acknowledges the echo in a pure ACK, then sends more data whose ACK field is
    // from before that (passt's order): the stack must still take it.
    let stale = theirs;
    theirs += 5;
    stack
        .device
        .to_stack
        .push_back(segment(TcpControl::None, ours, Some(theirs), b""));
    stack
        .device
        .to_stack
        .push_back(segment(TcpControl::Psh, ours, Some(stale), b"world"));
    let after: Vec<(u32, u32, Vec<u8>)> = run(&mut stack, &mut now, 30);
    let echoed: Vec<u8> = after.iter().flat_map(|(_, _, p)| p.clone()).collect();
    assert_eq!(echoed, b"world", "segments sent: {after:?}");
    assert!(
        after.iter().any(|&(_, ack, _)| ack == ours + 5),
        "the data was acknowledged"
    );
    assert_eq!(stack.stale_acks_repaired(), 1);
}

/// passt's pure ACK ahead of its data (its sequence number already counts data frames that
/// come after it), here past the stack's whole receive window: without the repair smoltcp
/// holds it out of window, ignores the acknowledgment in it, answers with a duplicate ACK and
/// later retransmits the echo the peer had acknowledged.
#[test]
fn a_tcp_echo_takes_a_pure_ack_whose_sequence_number_runs_ahead_of_the_data() {
    let (mut stack, mut now, ours, theirs) = connected_echo();
    let ahead = ours + 2 * Buffers::default().tcp as u32;
    stack
        .device
        .to_stack
        .push_back(segment(TcpControl::None, ahead, Some(theirs + 5), b""));
    let after = run(&mut stack, &mut now, 1_500);
    assert!(
        after.is_empty(),
        "the stack answered or retransmitted: {after:?}"
    );
    assert_eq!(stack.ahead_acks_pulled_back(), 1);
}
