//! The emulated NIC's register behaviour, alone and against a model of its FIFOs under any
//! sequence of accesses.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;

const MAC: [u8; 6] = [0x02, 0x51, 0x55, 0, 0, 5];

fn device() -> Box<Device> {
    Box::new(Device::new(MAC))
}

/// Sends `frame` the way the guest driver does: TX_CMD, then 32-bit words.
fn send(dev: &mut Device, frame: &[u8]) -> Option<Vec<u8>> {
    dev.write(TX_CMD, 4, frame.len() as u64);
    let mut out = None;
    for chunk in frame.chunks(4) {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        if dev.write(TX_DATA, 4, u64::from(u32::from_le_bytes(word))) == WriteEffect::FrameSent {
            out = dev.sent_frame().map(<[u8]>::to_vec);
        }
    }
    out
}

/// Receives the next frame the way the guest driver does.
fn receive(dev: &mut Device) -> Option<Vec<u8>> {
    let len = dev.read(RX_STATUS, 4) as usize;
    if len == 0 {
        return None;
    }
    let mut frame = Vec::new();
    for _ in 0..len.div_ceil(4) {
        frame.extend_from_slice(&(dev.read(RX_DATA, 4) as u32).to_le_bytes());
    }
    frame.truncate(len);
    Some(frame)
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

#[test]
fn identity_registers_read_as_documented() {
    let mut dev = device();
    assert_eq!(dev.read(ID_REV, 4), u64::from(ID_VALUE));
    assert_eq!(dev.read(BYTE_TEST, 4), 0x8765_4321);
    assert_eq!(dev.read(MAC_LO, 4), 0x0055_5102);
    assert_eq!(dev.read(MAC_HI, 4), 0x0500);
    assert_eq!(dev.counters.bad_accesses, 0);
    // The MAC cannot be written.
    dev.write(MAC_LO, 4, 0xffff_ffff);
    assert_eq!(dev.read(MAC_LO, 4), 0x0055_5102);
    assert_eq!(dev.counters.bad_accesses, 1);
}

#[test]
fn frames_go_out_whole_at_every_length_and_raise_tx_done() {
    let mut dev = device();
    dev.write(INT_EN, 4, u64::from(INT_TX_DONE));
    for len in [MIN_FRAME, 15, 16, 17, 60, 1513, MAX_FRAME] {
        let f = frame(len, len as u8);
        assert_eq!(send(&mut dev, &f), Some(f), "{len}");
        assert!(dev.take_interrupt(), "{len}");
        assert!(!dev.take_interrupt());
        // Clearing the bit lets the next frame interrupt again.
        dev.write(INT_STS, 4, u64::from(INT_TX_DONE));
    }
    assert_eq!(dev.counters.tx_frames, 7);
    assert_eq!(dev.counters.tx_errors, 0);
    assert_eq!(dev.sent_frame(), None, "a frame is taken once");
}

#[test]
fn a_transfer_is_in_progress_from_its_first_access_to_its_last() {
    let mut dev = device();
    assert!(!dev.transfer_in_progress());
    dev.write(TX_CMD, 4, 16);
    assert!(dev.transfer_in_progress());
    for _ in 0..3 {
        dev.write(TX_DATA, 4, 0);
        assert!(dev.transfer_in_progress());
    }
    dev.write(TX_DATA, 4, 0);
    assert!(!dev.transfer_in_progress());
    assert!(dev.receive(&frame(20, 0)));
    assert!(!dev.transfer_in_progress(), "not until the guest looks");
    assert_eq!(dev.read(RX_STATUS, 4), 20);
    assert!(dev.transfer_in_progress());
    for _ in 0..5 {
        assert!(dev.transfer_in_progress());
        dev.read(RX_DATA, 4);
    }
    assert!(!dev.transfer_in_progress());
    // An empty FIFO announces nothing; a skipped frame ends the transfer.
    assert_eq!(dev.read(RX_STATUS, 4), 0);
    assert!(!dev.transfer_in_progress());
    assert!(dev.receive(&frame(20, 0)));
    dev.read(RX_STATUS, 4);
    dev.write(RX_SKIP, 4, 0);
    assert!(!dev.transfer_in_progress());
}

#[test]
fn frames_come_in_whole_in_order_and_raise_rx_frame() {
    let mut dev = device();
    dev.write(INT_EN, 4, u64::from(INT_RX_FRAME));
    assert!(dev.receive(&frame(60, 1)));
    assert!(dev.receive(&frame(1514, 2)));
    assert!(dev.take_interrupt());
    assert_eq!(dev.read(INT_STS, 4), u64::from(INT_RX_FRAME));
    assert_eq!(receive(&mut dev), Some(frame(60, 1)));
    assert_eq!(receive(&mut dev), Some(frame(1514, 2)));
    assert_eq!(receive(&mut dev), None);
    assert_eq!(dev.counters.bad_accesses, 0);
}

#[test]
fn a_reset_device_is_a_power_on_device_that_kept_its_counts() {
    let mut dev = device();
    dev.write(INT_EN, 4, u64::from(INT_ALL));
    assert!(dev.receive(&frame(60, 1)));
    assert!(dev.receive(&frame(200, 2)));
    // Mid-frame on both sides: half a frame sent, half of one read.
    dev.write(TX_CMD, 4, 100);
    dev.write(TX_DATA, 4, 0x1234_5678);
    assert_eq!(dev.read(RX_STATUS, 4), 60);
    dev.read(RX_DATA, 4);
    let counted = dev.counters;
    dev.reset();
    let fresh = device();
    assert!(!dev.take_interrupt());
    assert!(dev.rx_empty() && !dev.transfer_in_progress());
    for register in [
        INT_STS, INT_EN, RX_STATUS, ID_REV, BYTE_TEST, MAC_HI, MAC_LO,
    ] {
        let mut fresh = Box::new(Device::new(MAC));
        assert_eq!(
            dev.read(register, 4),
            fresh.read(register, 4),
            "{register:#x}"
        );
    }
    assert_eq!(dev.counters.rx_frames, counted.rx_frames);
    assert_eq!(dev.counters.writes, counted.writes);
    // And it works like a new one: a whole frame each way.
    assert_eq!(send(&mut dev, &frame(64, 3)), Some(frame(64, 3)));
    assert!(dev.receive(&frame(90, 4)));
    assert_eq!(receive(&mut dev), Some(frame(90, 4)));
    assert_eq!(dev.mac(), fresh.mac());
}

#[test]
fn enabling_a_bit_already_set_interrupts_and_w1c_clears_only_what_is_written() {
    let mut dev = device();
    assert!(dev.receive(&frame(60, 1)));
    dev.write(TX_DATA, 4, 0);
    assert!(!dev.take_interrupt(), "nothing enabled yet");
    assert_eq!(dev.read(INT_STS, 4), u64::from(INT_RX_FRAME | INT_TX_ERROR));
    dev.write(INT_EN, 4, 0xffff_ffff);
    assert_eq!(dev.read(INT_EN, 4), u64::from(INT_ALL));
    assert!(dev.take_interrupt());
    dev.write(INT_STS, 4, u64::from(INT_TX_ERROR));
    assert_eq!(dev.read(INT_STS, 4), u64::from(INT_RX_FRAME));
}

#[test]
fn odd_widths_unaligned_and_unimplemented_offsets_read_zero_and_are_counted() {
    let mut dev = device();
    let mut expected = 0;
    for (offset, size) in [
        (ID_REV, 1),
        (ID_REV, 2),
        (ID_REV, 8),
        (ID_REV + 1, 4),
        (MAC_LO + 2, 4),
        (REGISTERS_END, 4),
        (0xffc, 4),
        (TX_CMD, 4),
        (TX_DATA, 4),
        (RX_SKIP, 4),
    ] {
        assert_eq!(dev.read(offset, size), 0, "{offset:#x}/{size}");
        expected += 1;
        assert_eq!(dev.counters.bad_accesses, expected);
    }
    for (offset, size) in [
        (INT_EN, 1),
        (INT_EN, 8),
        (INT_EN + 2, 4),
        (ID_REV, 4),
        (RX_STATUS, 4),
        (0x800, 4),
    ] {
        dev.write(offset, size, 0xffff_ffff);
        expected += 1;
        assert_eq!(dev.counters.bad_accesses, expected);
    }
    // None of the ignored writes enabled anything or started a frame.
    assert_eq!(dev.read(INT_EN, 4), 0);
    assert_eq!(dev.read(BAD_ACCESSES, 4), expected);
    assert_eq!(dev.read(INT_STS, 4), u64::from(INT_BAD_ACCESS));
    assert_eq!(dev.counters.tx_errors, 0);
}

#[test]
fn bad_lengths_and_a_flooded_data_port_are_refused_and_counted() {
    let mut dev = device();
    for len in [0, 1, 13, 1515, 65536, u32::MAX as u64] {
        dev.write(TX_CMD, 4, len);
    }
    assert_eq!(dev.counters.tx_errors, 6);
    // A flood with no frame started stores nothing.
    for i in 0..10_000 {
        assert_eq!(dev.write(TX_DATA, 4, i), WriteEffect::None);
    }
    assert_eq!(dev.counters.tx_errors, 10_006);
    assert_eq!(dev.read(TX_ERRORS, 4), 10_006);
    assert_eq!(dev.counters.tx_frames, 0);
    // A half frame abandoned by a new command is an error; the new frame still goes out.
    dev.write(TX_CMD, 4, 100);
    dev.write(TX_DATA, 4, 1);
    let f = frame(20, 3);
    assert_eq!(send(&mut dev, &f), Some(f));
    assert_eq!(dev.counters.tx_errors, 10_007);
    // Words past a frame's end are a flood again.
    dev.write(TX_DATA, 4, 0);
    assert_eq!(dev.counters.tx_errors, 10_008);
}

#[test]
fn the_receive_fifo_is_bounded_in_frames_and_bytes() {
    let mut dev = device();
    for i in 0..RX_FIFO_FRAMES {
        assert!(dev.receive(&frame(60, i as u8)));
    }
    assert!(!dev.receive(&frame(60, 0)));
    assert_eq!(dev.read(RX_DROPPED, 4), 1);
    assert_eq!(
        dev.read(INT_STS, 4) as u32 & INT_RX_OVERFLOW,
        INT_RX_OVERFLOW
    );
    for _ in 0..RX_FIFO_FRAMES {
        dev.write(RX_SKIP, 4, 0);
    }
    assert!(dev.rx_empty());
    // Bytes: ten full frames fit in 16 KiB, the eleventh does not.
    for i in 0..RX_FIFO_BYTES / MAX_FRAME {
        assert!(dev.receive(&frame(MAX_FRAME, i as u8)));
    }
    assert!(!dev.receive(&frame(MAX_FRAME, 0)));
    // Not a frame the device carries.
    let mut dev = device();
    assert!(!dev.receive(&frame(13, 0)));
    assert!(!dev.receive(&frame(9014, 0)));
    assert_eq!(dev.counters.rx_dropped, 2);
    // Reading an empty FIFO is a bad access.
    assert_eq!(dev.read(RX_DATA, 4), 0);
    assert_eq!(dev.counters.bad_accesses, 1);
}

/// One step of a random workload.
#[derive(Clone, Debug)]
enum Op {
    Read(u64, u8),
    Write(u64, u8, u64),
    Receive(usize, u8),
    Send(usize, u8),
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    let offset = prop_oneof![(0u64..0x40), any::<u64>().prop_map(|o| o & 0xfff)];
    let size = prop_oneof![Just(4u8), Just(1u8), Just(2u8), Just(8u8)];
    prop_oneof![
        (offset.clone(), size.clone()).prop_map(|(o, s)| Op::Read(o, s)),
        (offset, size, any::<u64>()).prop_map(|(o, s, v)| Op::Write(o, s, v)),
        (0usize..1600, any::<u8>()).prop_map(|(l, s)| Op::Receive(l, s)),
        (MIN_FRAME..=MAX_FRAME, any::<u8>()).prop_map(|(l, s)| Op::Send(l, s)),
        Just(Op::Drain),
    ]
}

proptest! {
    /// Any sequence of accesses and traffic: every frame that goes in whole comes out whole
    /// and in order, none is invented, the FIFO never holds more than its bounds, and the
    /// counters add up.
    #[test]
    fn the_device_matches_a_model_of_its_fifos(ops in proptest::collection::vec(op(), 1..200)) {
        let mut dev = device();
        let mut fifo: VecDeque<Vec<u8>> = VecDeque::new();
        let mut received = 0u64;
        for op in ops {
            match op {
                Op::Read(offset, size) => {
                    let touches_rx = size == 4 && matches!(offset, RX_DATA);
                    if touches_rx {
                        // A stray RX_DATA read consumes from the head frame: follow it in the
                        // model by draining the rest of that frame unchecked.
                        let before = dev.rx_lens.len();
                        dev.read(offset, size);
                        if dev.rx_lens.len() < before {
                            fifo.pop_front();
                        }
                    } else {
                        let v = dev.read(offset, size);
                        prop_assert!(v <= u64::from(u32::MAX));
                    }
                }
                Op::Write(offset, size, value) => {
                    let skips = size == 4 && offset == RX_SKIP && !fifo.is_empty();
                    if dev.write(offset, size, value) == WriteEffect::FrameSent {
                        let sent = dev.sent_frame().map(<[u8]>::to_vec);
                        prop_assert!(sent.is_some_and(|f| (MIN_FRAME..=MAX_FRAME).contains(&f.len())));
                    }
                    if skips {
                        fifo.pop_front();
                    }
                }
                Op::Receive(len, seed) => {
                    let f = frame(len, seed);
                    let room = fifo.len() < RX_FIFO_FRAMES
                        && fifo.iter().map(Vec::len).sum::<usize>() + len <= RX_FIFO_BYTES
                        && (MIN_FRAME..=MAX_FRAME).contains(&len);
                    prop_assert_eq!(dev.receive(&f), room);
                    if room {
                        received += 1;
                        fifo.push_back(f);
                    }
                }
                Op::Send(len, seed) => {
                    let f = frame(len, seed);
                    prop_assert_eq!(send(&mut dev, &f), Some(f));
                }
                Op::Drain => {
                    // A partly read head frame comes out as its remainder; only whole frames
                    // are compared.
                    if dev.rx_read == 0 {
                        prop_assert_eq!(receive(&mut dev), fifo.pop_front());
                    } else {
                        let len = dev.read(RX_STATUS, 4) as usize;
                        for _ in 0..(len - dev.rx_read).div_ceil(4) {
                            dev.read(RX_DATA, 4);
                        }
                        fifo.pop_front();
                    }
                }
            }
            prop_assert_eq!(dev.rx_lens.len(), fifo.len());
            prop_assert!(dev.rx_used <= RX_FIFO_BYTES);
            prop_assert_eq!(dev.rx_used, fifo.iter().map(Vec::len).sum::<usize>());
            prop_assert_eq!(dev.counters.rx_frames, received);
        }
        while dev.rx_read == 0 && !fifo.is_empty() {
            prop_assert_eq!(receive(&mut dev), fifo.pop_front());
        }
    }
}

#[test]
fn a_driver_takes_the_mac_the_device_gives_and_refuses_one_no_port_may_own() {
    let mut dev = device();
    let lo = dev.read(MAC_LO, 4) as u32;
    let hi = dev.read(MAC_HI, 4) as u32;
    assert_eq!(mac_from_registers(lo, hi), Some(MAC));
    assert_eq!(mac_from_registers(0, 0), None, "all zero");
    assert_eq!(mac_from_registers(0x0000_0001, 0), None, "a group address");
    assert_eq!(mac_from_registers(0xffff_ffff, 0xffff), None, "broadcast");
    assert_eq!(
        mac_from_registers(lo, hi | 0x1_0000),
        None,
        "bits above MAC_HI's two bytes"
    );
}
