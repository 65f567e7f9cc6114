//! A [`Stack`] serving its echo ports and an iperf3 server against a hostile peer: frames of
//! any kind to any port, mangled or not, and any bytes on an iperf3 control connection.

use std::vec::Vec;

use proptest::prelude::*;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetFrame, IpAddress, IpProtocol, Ipv4Packet, TcpControl, TcpPacket, UdpPacket, UdpRepr,
};

use super::*;
use crate::frame_queues::FrameQueues;
use crate::iperf3::{Cookie, ServerConfig, State, DEFAULT_PORT};
use crate::test_peer::{arp_reply, from_peer, stack_at, tcp, PEER_IP, STACK_IP};

/// The peer's end of its iperf3 control connection.
const CONTROL_PORT: u16 = 40_001;
/// The peer's end of the echo it checks the stack with at the end.
const PROBE_PORT: u16 = 40_002;

fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let repr = UdpRepr { src_port, dst_port };
    from_peer(IpProtocol::Udp, repr.header_len() + payload.len(), |buf| {
        repr.emit(
            &mut UdpPacket::new_unchecked(buf),
            &IpAddress::Ipv4(PEER_IP),
            &IpAddress::Ipv4(STACK_IP),
            payload.len(),
            |out| out.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        )
    })
}

/// What the stack sent to the peer: the UDP payloads to `udp_port`, and the TCP segments to
/// `tcp_port` (their sequence number, SYN flag and payload).
#[derive(Default)]
struct Sent {
    udp: Vec<Vec<u8>>,
    tcp: Vec<(u32, bool, Vec<u8>)>,
}

/// Polls the stack for `ms` virtual milliseconds, answering its ARP requests; what it sent
/// to `udp_port` and `tcp_port` of the peer.
fn run(stack: &mut Stack<FrameQueues>, now: &mut Instant, ms: u32, ports: (u16, u16)) -> Sent {
    let mut sent = Sent::default();
    for _ in 0..ms {
        stack.poll_at(*now);
        while let Some(frame) = stack.device.from_stack.pop_front() {
            if let Some(reply) = arp_reply(&frame) {
                stack.device.to_stack.push_back(reply);
                continue;
            }
            let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
                continue;
            };
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                continue;
            };
            match ip.next_header() {
                IpProtocol::Udp => {
                    if let Ok(udp) = UdpPacket::new_checked(ip.payload()) {
                        if udp.dst_port() == ports.0 {
                            sent.udp.push(udp.payload().to_vec());
                        }
                    }
                }
                IpProtocol::Tcp => {
                    if let Ok(tcp) = TcpPacket::new_checked(ip.payload()) {
                        if tcp.dst_port() == ports.1 {
                            sent.tcp.push((
                                tcp.seq_number().0 as u32,
                                tcp.syn(),
                                tcp.payload().to_vec(),
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        *now += Duration::from_millis(1);
    }
    sent
}

/// A stack serving echo and iperf3, and the peer's iperf3 control connection to it,
/// established: the stack, the clock, the peer's next sequence number and the stack's.
fn serving_stack_with_a_control_connection() -> (Stack<FrameQueues>, Instant, u32, u32) {
    let mut now = Instant::from_millis(1_000);
    let mut stack = stack_at(now);
    stack.serve_iperf3(ServerConfig::default());
    let ports = (CONTROL_PORT, DEFAULT_PORT);
    run(&mut stack, &mut now, 2, (0, 0));
    let isn = 5_000u32;
    let syn = tcp(ports, TcpControl::Syn, isn, None, b"");
    stack.device.to_stack.push_back(syn);
    let sent = run(&mut stack, &mut now, 5, (0, CONTROL_PORT));
    let stack_isn = sent
        .tcp
        .iter()
        .find_map(|&(seq, syn, _)| syn.then_some(seq))
        .expect("the iperf3 server answers a SYN");
    let (ours, theirs) = (isn + 1, stack_isn.wrapping_add(1));
    let ack = tcp(ports, TcpControl::None, ours, Some(theirs), b"");
    stack.device.to_stack.push_back(ack);
    run(&mut stack, &mut now, 2, (0, 0));
    (stack, now, ours, theirs)
}

/// What a hostile peer does next.
#[derive(Clone, Debug)]
enum Hostile {
    /// Bytes on its iperf3 control connection (in sequence).
    Control(Vec<u8>),
    /// A UDP datagram from `src` to `dst`, any size (bigger than the echo's buffer too).
    Udp(u16, u16, Vec<u8>),
    /// A TCP segment with any flags and numbers to `dst`.
    Tcp(u16, TcpControl, u32, Option<u32>, Vec<u8>),
    /// Any bytes for a frame.
    Raw(Vec<u8>),
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![Just(ECHO_PORT), Just(DEFAULT_PORT), any::<u16>()]
}

/// Control bytes: the pieces of a test (a cookie, a length prefix of any size, state bytes)
/// and any bytes.
fn control_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Cookie::generate(1).as_bytes().to_vec()),
        any::<u32>().prop_map(|len| len.to_be_bytes().to_vec()),
        prop::sample::select(vec![
            State::TestEnd.byte(),
            State::IperfDone.byte(),
            State::ClientTerminate.byte(),
            0xff,
        ])
        .prop_map(|b| vec![b]),
        prop::collection::vec(any::<u8>(), 0..200),
    ]
}

fn hostile() -> impl Strategy<Value = Hostile> {
    let control = prop::sample::select(vec![
        TcpControl::None,
        TcpControl::Psh,
        TcpControl::Syn,
        TcpControl::Fin,
        TcpControl::Rst,
    ]);
    prop_oneof![
        2 => control_bytes().prop_map(Hostile::Control),
        2 => (any::<u16>(), port(), prop::collection::vec(any::<u8>(), 0..2000))
            .prop_map(|(src, dst, payload)| Hostile::Udp(src, dst, payload)),
        2 => (port(), control, any::<u32>(), any::<Option<u32>>(), prop::collection::vec(any::<u8>(), 0..100))
            .prop_map(|(dst, control, seq, ack, payload)| Hostile::Tcp(dst, control, seq, ack, payload)),
        1 => prop::collection::vec(any::<u8>(), 0..128).prop_map(Hostile::Raw),
    ]
}

/// A client that announces 4 GiB of parameters on a real control connection is refused as
/// soon as the length is in (SERVER_ERROR, the test failed), not after waiting for the body.
#[test]
fn a_json_length_of_4_gib_is_refused_on_its_prefix() {
    let (mut stack, mut now, ours, theirs) = serving_stack_with_a_control_connection();
    let mut bytes = Cookie::generate(1).as_bytes().to_vec();
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    let ports = (CONTROL_PORT, DEFAULT_PORT);
    stack
        .device
        .to_stack
        .push_back(tcp(ports, TcpControl::Psh, ours, Some(theirs), &bytes));
    let sent = run(&mut stack, &mut now, 10, (0, CONTROL_PORT));
    let said: Vec<u8> = sent.tcp.into_iter().flat_map(|(_, _, p)| p).collect();
    let mut expected = vec![State::ParamExchange.byte(), State::ServerError.byte()];
    expected.extend_from_slice(&crate::iperf3::errno::IERECVPARAMS.to_be_bytes());
    expected.extend_from_slice(&0i32.to_be_bytes());
    assert_eq!(said, expected);
    let server = stack.iperf3_server().expect("serving");
    assert_eq!(server.failed, 1);
    assert!(!server.busy());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever a peer sends (bytes on an iperf3 control connection, datagrams of any size
    /// to any port, segments with any flags and numbers, any bytes for a frame): the stack
    /// and its services never panic, and its UDP echo still answers afterwards.
    #[test]
    fn a_serving_stack_takes_any_frames(steps in prop::collection::vec(hostile(), 0..24)) {
        let (mut stack, mut now, mut ours, theirs) = serving_stack_with_a_control_connection();
        for step in steps {
            let frame = match step {
                Hostile::Control(bytes) => {
                    let ports = (CONTROL_PORT, DEFAULT_PORT);
                    let frame = tcp(ports, TcpControl::Psh, ours, Some(theirs), &bytes);
                    ours = ours.wrapping_add(bytes.len() as u32);
                    frame
                }
                Hostile::Udp(src, dst, payload) => udp(src, dst, &payload),
                Hostile::Tcp(dst, control, seq, ack, payload) => {
                    tcp((CONTROL_PORT + 1, dst), control, seq, ack, &payload)
                }
                Hostile::Raw(bytes) => bytes,
            };
            stack.device.to_stack.push_back(frame);
            run(&mut stack, &mut now, 1, (0, 0));
        }
        run(&mut stack, &mut now, 20, (0, 0));
        stack.device.to_stack.push_back(udp(PROBE_PORT, ECHO_PORT, b"still there?"));
        let sent = run(&mut stack, &mut now, 5, (PROBE_PORT, 0));
        prop_assert_eq!(sent.udp, vec![b"still there?".to_vec()]);
    }
}
