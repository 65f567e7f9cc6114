//! Host tests of `switch`.

use super::*;
use std::collections::VecDeque;

const G1: PortId = PortId::Guest(1);
const G2: PortId = PortId::Guest(2);
const G3: PortId = PortId::Guest(3);
const UP: PortId = PortId::Uplink;

fn guest_mac(id: u8) -> MacAddr {
    MacAddr([0x02, 0x51, 0x55, 0x00, 0x00, id])
}

fn ext_mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, n])
}

const MCAST: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);

fn frame(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(ETH_HEADER_LEN)];
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

fn set(ports: &[PortId]) -> PortSet {
    let mut s = PortSet::EMPTY;
    for &p in ports {
        s.insert(p);
    }
    s
}

/// Uplink plus guests 1..=3, each owning guest_mac(id).
fn switch_with(config: Config) -> Switch {
    let mut sw = Switch::new(config);
    sw.add_uplink().unwrap();
    for id in 1..=3 {
        sw.add_guest(id, guest_mac(id as u8)).unwrap();
    }
    sw
}

fn switch() -> Switch {
    switch_with(Config::default())
}

#[test]
fn mac_classes() {
    assert!(MacAddr::BROADCAST.is_multicast() && MacAddr::BROADCAST.is_broadcast());
    assert!(MCAST.is_multicast() && !MCAST.is_broadcast());
    assert!(guest_mac(1).is_valid_source());
    assert!(!MacAddr::ZERO.is_valid_source());
    assert!(!MCAST.is_valid_source());
    assert_eq!(guest_mac(10).to_string(), "02:51:55:00:00:0a");
}

#[test]
fn forwarding_on_the_header_alone_counts_the_whole_frame() {
    let mut sw = switch();
    let f = frame(MacAddr::BROADCAST, guest_mac(1), 14);
    assert_eq!(
        sw.forward_header(G1, &f, 1514, 0),
        Forward::Flood(set(&[UP, G2, G3]))
    );
    let c = sw.counters(G1).unwrap();
    assert_eq!((c.rx_frames, c.rx_bytes), (1, 1514));
    // A frame_len below the header is a runt even if the header bytes are there.
    assert_eq!(
        sw.forward_header(G1, &f, 10, 0),
        Forward::Drop(DropReason::Runt)
    );
}

#[test]
fn the_local_port_owns_the_nic_mac_against_guests_and_the_outside() {
    let mut sw = switch();
    let nic = ext_mac(1);
    assert_eq!(sw.add_local(nic), Ok(PortId::Local));
    assert_eq!(sw.add_local(nic), Err(PortError::Exists));
    assert_eq!(
        sw.add_guest(9, nic),
        Err(PortError::OwnerMacInUse),
        "a guest cannot take the driver domain's MAC"
    );
    // The outside reaches the local stack by its MAC; the local stack floods its ARP.
    let from_host = frame(nic, ext_mac(2), 60);
    assert_eq!(sw.forward(UP, &from_host, 0), Forward::One(PortId::Local));
    let arp = frame(MacAddr::BROADCAST, nic, 60);
    assert_eq!(
        sw.forward(PortId::Local, &arp, 0),
        Forward::Flood(set(&[UP, G1, G2, G3]))
    );
    // A guest sending as the driver domain is spoofing, and so is the outside.
    assert_eq!(
        sw.forward(G1, &frame(ext_mac(2), nic, 60), 0),
        Forward::Drop(DropReason::Spoofed)
    );
    assert_eq!(
        sw.forward(UP, &frame(guest_mac(1), nic, 60), 0),
        Forward::Drop(DropReason::Spoofed)
    );
    assert_eq!(PortId::Local.to_string(), "local");
}

#[test]
fn port_set_iterates_uplink_first_then_guests_by_id() {
    let s = set(&[PortId::Guest(63), G2, UP, PortId::Guest(0)]);
    let v: Vec<PortId> = s.into_iter().collect();
    assert_eq!(v, [UP, PortId::Guest(0), G2, PortId::Guest(63)]);
    assert_eq!(s.len(), 4);
    assert!(s.contains(PortId::Guest(63)) && !s.contains(G1));
    assert!(!s.contains(PortId::Guest(64)));
    assert!(PortSet::single(PortId::Guest(64)).is_empty());
}

#[test]
fn add_port_errors() {
    let mut sw = switch();
    assert_eq!(sw.add_uplink(), Err(PortError::Exists));
    assert_eq!(sw.add_guest(1, guest_mac(9)), Err(PortError::Exists));
    assert_eq!(
        sw.add_guest(MAX_GUEST_ID + 1, guest_mac(9)),
        Err(PortError::IdOutOfRange)
    );
    assert_eq!(sw.add_guest(9, MCAST), Err(PortError::BadOwnerMac));
    assert_eq!(sw.add_guest(9, MacAddr::ZERO), Err(PortError::BadOwnerMac));
    assert_eq!(sw.add_guest(9, guest_mac(2)), Err(PortError::OwnerMacInUse));
    assert_eq!(
        sw.add_guest(MAX_GUEST_ID, guest_mac(9)),
        Ok(PortId::Guest(MAX_GUEST_ID))
    );
    assert_eq!(sw.ports().len(), 5);
    assert_eq!(sw.owner(G2), Some(guest_mac(2)));
    assert_eq!(sw.owner(UP), None);
}

#[test]
fn learns_uplink_sources_and_forwards_known_unicast() {
    let mut sw = switch();
    let a = ext_mac(1);
    // Unknown yet: floods to every other port.
    assert_eq!(
        sw.forward(G1, &frame(a, guest_mac(1), 60), 0),
        Forward::Flood(set(&[UP, G2, G3]))
    );
    assert_eq!(sw.lookup(a, 0), None);
    // a answers from outside: learned on the uplink, delivered to guest 1 only.
    assert_eq!(
        sw.forward(UP, &frame(guest_mac(1), a, 60), 1),
        Forward::One(G1)
    );
    assert_eq!(sw.lookup(a, 1), Some(UP));
    assert_eq!(sw.learned_len(), 1);
    // Now known: to the uplink only.
    assert_eq!(
        sw.forward(G1, &frame(a, guest_mac(1), 60), 2),
        Forward::One(UP)
    );
    assert_eq!(
        sw.forward(G3, &frame(a, guest_mac(3), 60), 2),
        Forward::One(UP)
    );
}

#[test]
fn guest_macs_are_known_without_learning() {
    let mut sw = switch();
    assert_eq!(
        sw.forward(G1, &frame(guest_mac(2), guest_mac(1), 60), 0),
        Forward::One(G2)
    );
    assert_eq!(
        sw.forward(UP, &frame(guest_mac(3), ext_mac(1), 60), 0),
        Forward::One(G3)
    );
    // Owner MACs are static entries, not learned ones.
    assert_eq!(sw.learned_len(), 1);
    assert_eq!(sw.lookup(guest_mac(2), u64::MAX), Some(G2));
}

#[test]
fn unicast_for_a_reserved_guest_that_is_not_connected_is_dropped_not_flooded() {
    let mut sw = Switch::new(Config::default());
    sw.add_uplink().unwrap();
    sw.add_guest(1, guest_mac(1)).unwrap();
    for id in 1..=2 {
        assert!(sw.reserve_guest_mac(guest_mac(id)));
    }
    assert!(!sw.reserve_guest_mac(MCAST));
    assert!(!sw.reserve_guest_mac(MacAddr::ZERO));
    // Guest 2 is not connected (not yet, or its driver domain restarted): its frames go
    // nowhere, above all not to the outside, which would answer for it.
    let absent = Forward::Drop(DropReason::AbsentGuest);
    assert_eq!(
        sw.forward(G1, &frame(guest_mac(2), guest_mac(1), 60), 0),
        absent
    );
    assert_eq!(
        sw.forward(UP, &frame(guest_mac(2), ext_mac(1), 60), 0),
        absent
    );
    assert_eq!(sw.counters(G1).unwrap().drops.absent, 1);
    assert_eq!(
        sw.counters(UP).unwrap().drops.of(DropReason::AbsentGuest),
        1
    );
    assert_eq!(sw.counters(G1).unwrap().flooded, 0);
    // The outside may not send as an absent guest either; broadcasts still flood.
    assert_eq!(
        sw.forward(UP, &frame(MacAddr::BROADCAST, guest_mac(2), 60), 0),
        Forward::Drop(DropReason::Spoofed)
    );
    assert_eq!(
        sw.forward(G1, &frame(MacAddr::BROADCAST, guest_mac(1), 60), 0),
        Forward::Flood(set(&[UP]))
    );
    // Unknown, unreserved unicast still floods.
    assert_eq!(
        sw.forward(G1, &frame(ext_mac(9), guest_mac(1), 60), 0),
        Forward::Flood(set(&[UP]))
    );
    // Connected, it gets them; gone again, they are dropped again.
    sw.add_guest(2, guest_mac(2)).unwrap();
    assert_eq!(
        sw.forward(G1, &frame(guest_mac(2), guest_mac(1), 60), 0),
        Forward::One(G2)
    );
    assert!(sw.remove_port(G2));
    assert_eq!(
        sw.forward(G1, &frame(guest_mac(2), guest_mac(1), 60), 0),
        absent
    );
    assert!(sw.to_string().contains("absent 2"), "{sw}");
}

#[test]
fn floods_broadcast_multicast_and_unknown_unicast() {
    let mut sw = switch();
    let others = Forward::Flood(set(&[UP, G1, G3]));
    let src = guest_mac(2);
    assert_eq!(
        sw.forward(G2, &frame(MacAddr::BROADCAST, src, 42), 0),
        others
    );
    assert_eq!(sw.forward(G2, &frame(MCAST, src, 42), 0), others);
    assert_eq!(sw.forward(G2, &frame(ext_mac(7), src, 42), 0), others);
    assert_eq!(sw.counters(G2).unwrap().flooded, 3);
    // From the uplink: to every guest.
    assert_eq!(
        sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(1), 42), 0),
        Forward::Flood(set(&[G1, G2, G3]))
    );
    // A multicast destination floods even if it was somehow in the table.
    assert_eq!(sw.lookup(MCAST, 0), None);
    // A lone port floods to nobody.
    let mut lone = Switch::new(Config::default());
    lone.add_guest(1, guest_mac(1)).unwrap();
    let f = lone.forward(G1, &frame(MacAddr::BROADCAST, guest_mac(1), 60), 0);
    assert_eq!(f, Forward::Flood(PortSet::EMPTY));
    assert!(f.destinations().is_empty());
}

#[test]
fn never_hairpins() {
    let mut sw = switch();
    // A guest sending to itself.
    assert_eq!(
        sw.forward(G1, &frame(guest_mac(1), guest_mac(1), 60), 0),
        Forward::Drop(DropReason::Hairpin)
    );
    assert_eq!(sw.counters(G1).unwrap().drops.hairpin, 1);
    // Two outside hosts talking past us: the destination is behind the uplink already.
    sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(1), 60), 0);
    assert_eq!(
        sw.forward(UP, &frame(ext_mac(1), ext_mac(2), 60), 1),
        Forward::Drop(DropReason::Hairpin)
    );
    assert_eq!(sw.counters(UP).unwrap().drops.hairpin, 1);
    // Floods leave out the ingress port.
    let f = sw.forward(G3, &frame(MacAddr::BROADCAST, guest_mac(3), 60), 1);
    assert!(!f.destinations().contains(G3));
}

#[test]
fn spoofed_guest_source_is_dropped_and_counted() {
    let mut sw = switch();
    let bcast = MacAddr::BROADCAST;
    assert_eq!(
        sw.forward(G1, &frame(bcast, ext_mac(5), 60), 0),
        Forward::Drop(DropReason::Spoofed)
    );
    assert_eq!(
        sw.forward(G1, &frame(guest_mac(3), guest_mac(2), 60), 0),
        Forward::Drop(DropReason::Spoofed)
    );
    let c = sw.counters(G1).unwrap();
    assert_eq!(c.drops.spoofed, 2);
    assert_eq!(c.rx_frames, 2);
    assert_eq!(c.flooded, 0);
    // Nothing was learned from the spoofed frames.
    assert_eq!(sw.lookup(ext_mac(5), 0), None);
    assert_eq!(sw.lookup(guest_mac(2), 0), Some(G2));
    assert_eq!(sw.learned_len(), 0);
}

#[test]
fn owner_mac_cannot_be_stolen() {
    let mut sw = switch();
    // By the uplink: dropped, not learned.
    assert_eq!(
        sw.forward(UP, &frame(MacAddr::BROADCAST, guest_mac(1), 60), 0),
        Forward::Drop(DropReason::Spoofed)
    );
    assert_eq!(sw.counters(UP).unwrap().drops.spoofed, 1);
    assert_eq!(sw.lookup(guest_mac(1), 0), Some(G1));
    // By another guest: dropped, not learned.
    assert_eq!(
        sw.forward(G2, &frame(ext_mac(1), guest_mac(1), 60), 0),
        Forward::Drop(DropReason::Spoofed)
    );
    assert_eq!(sw.lookup(guest_mac(1), 0), Some(G1));
    // Not even through the learning path itself.
    sw.learn(guest_mac(1), UP, 1);
    assert_eq!(sw.lookup(guest_mac(1), 1), Some(G1));
    // Frames for guest 1 still go to guest 1.
    assert_eq!(
        sw.forward(G2, &frame(guest_mac(1), guest_mac(2), 60), 2),
        Forward::One(G1)
    );
}

#[test]
fn new_guest_takes_over_a_mac_learned_on_the_uplink() {
    let mut sw = switch();
    let m = guest_mac(9);
    sw.forward(UP, &frame(MacAddr::BROADCAST, m, 60), 0);
    assert_eq!(sw.lookup(m, 0), Some(UP));
    sw.add_guest(9, m).unwrap();
    assert_eq!(sw.lookup(m, 0), Some(PortId::Guest(9)));
    assert_eq!(sw.learned_len(), 0);
    assert_eq!(
        sw.forward(UP, &frame(MacAddr::BROADCAST, m, 60), 1),
        Forward::Drop(DropReason::Spoofed)
    );
}

#[test]
fn learned_mac_moves_port() {
    let mut sw = switch();
    let m = ext_mac(1);
    sw.learn(m, G1, 0);
    assert_eq!(sw.lookup(m, 0), Some(G1));
    sw.learn(m, UP, 1);
    assert_eq!(sw.lookup(m, 1), Some(UP));
    assert_eq!(sw.learned_len(), 1);
}

#[test]
fn bad_sources_are_dropped() {
    let mut sw = switch();
    for src in [MacAddr::BROADCAST, MCAST, MacAddr::ZERO] {
        for port in [UP, G1] {
            assert_eq!(
                sw.forward(port, &frame(guest_mac(2), src, 60), 0),
                Forward::Drop(DropReason::BadSource)
            );
        }
    }
    assert_eq!(sw.counters(UP).unwrap().drops.bad_source, 3);
    assert_eq!(sw.counters(G1).unwrap().drops.bad_source, 3);
    assert_eq!(sw.learned_len(), 0);
}

#[test]
fn runts_are_dropped() {
    let mut sw = switch();
    let full = frame(MacAddr::BROADCAST, guest_mac(1), ETH_HEADER_LEN);
    for len in [0, 1, ETH_HEADER_LEN - 1] {
        assert_eq!(
            sw.forward(G1, &full[..len], 0),
            Forward::Drop(DropReason::Runt)
        );
    }
    // A bare header is enough.
    assert!(matches!(sw.forward(G1, &full, 0), Forward::Flood(_)));
    let c = sw.counters(G1).unwrap();
    assert_eq!(c.drops.runt, 3);
    assert_eq!(c.rx_frames, 4);
    assert_eq!(c.rx_bytes, (1 + 13 + 14) as u64);
}

#[test]
fn unknown_ingress_port_is_dropped() {
    let mut sw = switch();
    let f = frame(MacAddr::BROADCAST, guest_mac(7), 60);
    assert_eq!(
        sw.forward(PortId::Guest(7), &f, 0),
        Forward::Drop(DropReason::UnknownPort)
    );
    assert_eq!(
        sw.forward(PortId::Guest(500), &f, 0),
        Forward::Drop(DropReason::UnknownPort)
    );
}

#[test]
fn removing_a_port_forgets_its_macs() {
    let mut sw = switch();
    sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(1), 60), 0);
    sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(2), 60), 0);
    sw.learn(ext_mac(3), G2, 0);
    assert_eq!(sw.learned_len(), 3);

    assert!(sw.remove_port(G2));
    assert!(!sw.remove_port(G2));
    assert_eq!(sw.lookup(guest_mac(2), 0), None);
    assert_eq!(sw.lookup(ext_mac(3), 0), None);
    assert_eq!(sw.learned_len(), 2);
    assert_eq!(sw.counters(G2), None);
    // Frames for it now flood among the remaining ports.
    assert_eq!(
        sw.forward(G1, &frame(guest_mac(2), guest_mac(1), 60), 1),
        Forward::Flood(set(&[UP, G3]))
    );
    assert_eq!(
        sw.forward(G2, &frame(guest_mac(1), guest_mac(2), 60), 1),
        Forward::Drop(DropReason::UnknownPort)
    );

    assert!(sw.remove_port(UP));
    assert_eq!(sw.lookup(ext_mac(1), 1), None);
    assert_eq!(sw.learned_len(), 0);

    // The id and the MAC are free again, with fresh counters.
    sw.add_guest(2, guest_mac(22)).unwrap();
    sw.add_guest(4, guest_mac(2)).unwrap();
    assert_eq!(sw.lookup(guest_mac(2), 1), Some(PortId::Guest(4)));
    assert_eq!(sw.counters(G2), Some(PortCounters::default()));
}

#[test]
fn table_is_bounded_and_evicts_the_oldest() {
    let mut sw = switch_with(Config {
        table_capacity: 4,
        ..Config::default()
    });
    for n in 0..4u8 {
        sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(n), 60), n as u64);
    }
    assert_eq!(sw.learned_len(), 4);
    // Refresh the oldest, so ext_mac(1) becomes the oldest.
    sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(0), 60), 10);
    sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(4), 60), 11);
    assert_eq!(sw.learned_len(), 4);
    assert_eq!(sw.lookup(ext_mac(1), 11), None);
    for n in [0, 2, 3, 4] {
        assert_eq!(sw.lookup(ext_mac(n), 11), Some(UP), "{n}");
    }
    for n in 5..100u8 {
        sw.forward(
            UP,
            &frame(MacAddr::BROADCAST, ext_mac(n), 60),
            12 + n as u64,
        );
        assert!(sw.learned_len() <= 4);
    }
    // Owner MACs are not in the bound and never evicted.
    for id in 1..=3 {
        assert_eq!(
            sw.lookup(guest_mac(id), 1000),
            Some(PortId::Guest(id as u16))
        );
    }
    // Zero capacity: nothing is learned, everything unknown floods.
    let mut none = switch_with(Config {
        table_capacity: 0,
        ..Config::default()
    });
    none.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(1), 60), 0);
    assert_eq!(none.learned_len(), 0);
    assert!(matches!(
        none.forward(G1, &frame(ext_mac(1), guest_mac(1), 60), 0),
        Forward::Flood(_)
    ));
}

#[test]
fn learned_macs_age_out() {
    let mut sw = switch_with(Config {
        table_capacity: 2,
        max_age_ms: 1000,
        ..Config::default()
    });
    let a = ext_mac(1);
    sw.forward(UP, &frame(MacAddr::BROADCAST, a, 60), 0);
    assert_eq!(sw.lookup(a, 1000), Some(UP));
    assert_eq!(sw.lookup(a, 1001), None);
    assert_eq!(
        sw.forward(G1, &frame(a, guest_mac(1), 60), 1001),
        Forward::Flood(set(&[UP, G2, G3]))
    );
    // Seen again: known again.
    sw.forward(UP, &frame(MacAddr::BROADCAST, a, 60), 1500);
    assert_eq!(sw.lookup(a, 2400), Some(UP));
    // A clock running backwards does not age anything.
    assert_eq!(sw.lookup(a, 0), Some(UP));
    assert_eq!(sw.expire(2400), 0);
    assert_eq!(sw.expire(2501), 1);
    assert_eq!(sw.learned_len(), 0);

    // When full, expired entries go before live ones, however old.
    sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(1), 60), 3000);
    sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(2), 60), 4500);
    sw.forward(UP, &frame(MacAddr::BROADCAST, ext_mac(3), 60), 4600);
    assert_eq!(sw.learned_len(), 2);
    assert_eq!(sw.lookup(ext_mac(2), 4600), Some(UP));
    assert_eq!(sw.lookup(ext_mac(3), 4600), Some(UP));
}

#[test]
fn egress_budget_bounds_queued_bytes() {
    let mut sw = switch_with(Config {
        egress_budget: 3000,
        ..Config::default()
    });
    assert!(sw.try_reserve(G1, 1500));
    assert!(sw.try_reserve(G1, 1500));
    assert!(!sw.try_reserve(G1, 1));
    assert_eq!(sw.queued(G1), Some(3000));
    // Other ports have their own budget.
    assert!(sw.try_reserve(G2, 3000));
    sw.release(G1, 1500);
    assert!(sw.try_reserve(G1, 1000));
    assert!(!sw.try_reserve(G1, 501));
    assert!(sw.try_reserve(G1, 500));
    let c = sw.counters(G1).unwrap();
    assert_eq!(c.drops.queue_full, 2);
    assert_eq!(c.tx_frames, 4);
    assert_eq!(c.tx_bytes, 4500);
    // Over-release cannot buy extra room.
    sw.release(G1, 1_000_000);
    assert_eq!(sw.queued(G1), Some(0));
    assert!(!sw.try_reserve(G1, 3001));
    // Lowering the budget below the queue refuses until enough is released.
    assert!(sw.try_reserve(G1, 2000));
    assert!(sw.set_egress_budget(G1, 1000));
    assert_eq!(sw.egress_budget(G1), Some(1000));
    assert!(!sw.try_reserve(G1, 1));
    sw.release(G1, 1500);
    assert!(sw.try_reserve(G1, 500));
    // Missing ports.
    assert!(!sw.try_reserve(PortId::Guest(9), 1));
    assert!(!sw.set_egress_budget(PortId::Guest(9), 1));
    sw.release(PortId::Guest(9), 1);
}

#[test]
fn counters_and_summary() {
    let mut sw = switch();
    fn deliver(sw: &mut Switch, ingress: PortId, f: &[u8]) {
        for dst in sw.forward(ingress, f, 0).destinations() {
            assert!(sw.try_reserve(dst, f.len()));
        }
    }
    deliver(&mut sw, G1, &frame(MacAddr::BROADCAST, guest_mac(1), 100));
    deliver(&mut sw, G1, &frame(guest_mac(2), guest_mac(1), 200));
    deliver(&mut sw, UP, &frame(guest_mac(2), ext_mac(1), 300));
    deliver(&mut sw, G2, &frame(ext_mac(1), guest_mac(2), 400));
    deliver(&mut sw, G2, &frame(ext_mac(1), ext_mac(1), 50));
    deliver(&mut sw, G3, &[0; 10]);

    let g1 = sw.counters(G1).unwrap();
    assert_eq!((g1.rx_frames, g1.rx_bytes, g1.flooded), (2, 300, 1));
    assert_eq!((g1.tx_frames, g1.tx_bytes), (0, 0));
    let g2 = sw.counters(G2).unwrap();
    assert_eq!((g2.rx_frames, g2.rx_bytes, g2.drops.spoofed), (2, 450, 1));
    assert_eq!((g2.tx_frames, g2.tx_bytes), (3, 600));
    let g3 = sw.counters(G3).unwrap();
    assert_eq!((g3.rx_frames, g3.drops.runt, g3.tx_frames), (1, 1, 1));
    let up = sw.counters(UP).unwrap();
    assert_eq!((up.rx_frames, up.tx_frames, up.tx_bytes), (1, 2, 500));
    assert_eq!(g2.drops.total(), 1);

    let text = sw.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 4, "{text}");
    assert_eq!(lines[0], "switch: 4 port(s), 1/256 learned MAC(s)");
    assert!(
        lines[1].starts_with("uplink   -                 rx 1/300B tx 2/500B"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("guest 2  02:51:55:00:00:02 rx 2/450B tx 3/600B"),
        "{text}"
    );
    assert!(lines[3].contains("spoofed 1 "), "{text}");
    assert!(lines[4].contains("runt 1 "), "{text}");
    assert!(lines[4].ends_with("queued 100/131072B"), "{text}");
    assert_eq!(sw.port_summary(G1).unwrap().to_string(), lines[2]);
    assert!(sw.port_summary(PortId::Guest(9)).is_none());
}

/// xorshift64: deterministic, so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Default, Clone, Copy)]
struct Shadow {
    rx: u64,
    forwarded: u64,
    tx: u64,
}

/// Thousands of random frames, port churn, and random reservations and releases, checking the
/// switch's promises after every step.
const IP1: [u8; 4] = [10, 0, 2, 16];
const IP2: [u8; 4] = [10, 0, 2, 17];

/// An ARP frame from `src` with sender `sha`/`spa` (a request for `tpa`).
fn arp(src: MacAddr, sha: MacAddr, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = frame(MacAddr::BROADCAST, src, IDENTITY_HEADER_LEN);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP);
    f[14..20].copy_from_slice(&ARP_IPV4_ETHERNET);
    f[20..22].copy_from_slice(&[0, 1]);
    f[22..28].copy_from_slice(&sha.0);
    f[28..32].copy_from_slice(&spa);
    f[38..42].copy_from_slice(&tpa);
    f
}

/// An IPv4 frame (header only) from `src`, address `from`, to `dst`.
fn ipv4(dst: MacAddr, src: MacAddr, from: [u8; 4]) -> Vec<u8> {
    let mut f = frame(dst, src, ETH_HEADER_LEN + IPV4_MIN_HEADER + 8);
    f[14] = 0x45;
    f[26..30].copy_from_slice(&from);
    f[30..34].copy_from_slice(&IP2);
    f
}

/// Uplink, guest 1 held to (guest_mac(1), IP1), guest 2 to (guest_mac(2), IP2), guest 3
/// to guest_mac(3) and no address.
fn identity_switch() -> Switch {
    let mut sw = Switch::new(Config::default());
    sw.add_uplink().unwrap();
    sw.add_guest_with_ip(1, guest_mac(1), Some(IP1)).unwrap();
    sw.add_guest_with_ip(2, guest_mac(2), Some(IP2)).unwrap();
    sw.add_guest_with_ip(3, guest_mac(3), None).unwrap();
    sw
}

#[test]
fn guests_send_arp_and_ipv4_only_as_themselves() {
    let mut sw = identity_switch();
    let (m1, m2) = (guest_mac(1), guest_mac(2));
    let gateway = [10, 0, 2, 2];
    // Their own identity passes.
    let own_arp = arp(m1, m1, IP1, IP2);
    assert_eq!(
        sw.forward(G1, &own_arp, 0),
        Forward::Flood(set(&[UP, G2, G3]))
    );
    assert_eq!(sw.forward(G1, &ipv4(m2, m1, IP1), 0), Forward::One(G2));
    // The gateway's or another guest's address, as ARP sender or IPv4 source.
    let cases = [
        (arp(m1, m1, gateway, IP2), DropReason::SpoofedIp),
        (arp(m1, m1, IP2, IP2), DropReason::SpoofedIp),
        (arp(m1, m1, [0; 4], IP2), DropReason::SpoofedIp),
        (ipv4(m2, m1, IP2), DropReason::SpoofedIp),
        (ipv4(m2, m1, gateway), DropReason::SpoofedIp),
        // Its own address with another sender MAC inside the ARP body.
        (arp(m1, m2, IP1, IP2), DropReason::SpoofedArpMac),
        (arp(m1, ext_mac(1), IP1, IP2), DropReason::SpoofedArpMac),
    ];
    for (f, reason) in &cases {
        assert_eq!(sw.forward(G1, f, 0), Forward::Drop(*reason), "{f:02x?}");
    }
    // Other protocols (IPv6, a VLAN tag that could hide an ARP) and headers too short or
    // not for IPv4 over Ethernet to check.
    let mut ipv6 = ipv4(m2, m1, IP1);
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let mut vlan = arp(m1, m1, IP2, IP2);
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    let mut short_arp = arp(m1, m1, IP1, IP2);
    short_arp.truncate(ETH_HEADER_LEN + 20);
    let mut arp_for_ipv6 = arp(m1, m1, IP1, IP2);
    arp_for_ipv6[16..18].copy_from_slice(&[0x86, 0xdd]);
    let mut not_v4 = ipv4(m2, m1, IP1);
    not_v4[14] = 0x65;
    let mut short_ip = ipv4(m2, m1, IP1);
    short_ip.truncate(ETH_HEADER_LEN + 19);
    for (f, reason) in [
        (ipv6, DropReason::Protocol),
        (vlan, DropReason::Protocol),
        (short_arp, DropReason::Malformed),
        (arp_for_ipv6, DropReason::Malformed),
        (not_v4, DropReason::Malformed),
        (short_ip, DropReason::Malformed),
    ] {
        assert_eq!(sw.forward(G1, &f, 0), Forward::Drop(reason), "{reason}");
    }
    let d = sw.counters(G1).unwrap().drops;
    assert_eq!((d.spoofed_ip, d.spoofed_arp_mac), (5, 2));
    assert_eq!((d.protocol, d.malformed, d.spoofed), (2, 4, 0));
    // A guest without an address sends neither ARP nor IPv4, even "its own".
    assert_eq!(
        sw.forward(G3, &arp(guest_mac(3), guest_mac(3), IP1, IP2), 0),
        Forward::Drop(DropReason::SpoofedIp)
    );
    assert_eq!(
        sw.forward(G3, &ipv4(m1, guest_mac(3), [0; 4]), 0),
        Forward::Drop(DropReason::SpoofedIp)
    );
    // The uplink and a guest added by MAC alone are not held to addresses.
    assert_eq!(
        sw.forward(UP, &ipv4(m1, ext_mac(1), IP2), 0),
        Forward::One(G1)
    );
    let summary = sw.port_summary(G1).unwrap().to_string();
    assert!(
        summary.contains("spoofip 5 arpmac 2 proto 2 malformed 4"),
        "{summary}"
    );
}

#[test]
fn the_identity_check_reads_only_the_header_it_is_given() {
    let (m1, m2) = (guest_mac(1), guest_mac(2));
    let f = arp(m1, m1, IP1, IP2);
    // The caller's copy of the header decides, whatever the rest of the frame holds.
    assert_eq!(
        check_identity(m1, Some(IP1), &f[..IDENTITY_HEADER_LEN], 1500),
        Ok(())
    );
    // A frame that ends before the ARP body is malformed even if the buffer is longer.
    assert_eq!(
        check_identity(m1, Some(IP1), &f, ETH_HEADER_LEN + 10),
        Err(DropReason::Malformed)
    );
    let ip = ipv4(m2, m1, IP1);
    assert_eq!(check_identity(m1, Some(IP1), &ip[..34], 34), Ok(()));
    assert_eq!(
        check_identity(m1, Some(IP1), &ip[..12], 12),
        Err(DropReason::Runt)
    );
}

#[test]
fn drops_are_logged_at_powers_of_ten() {
    let logged: Vec<u64> = (0..=20_000).filter(|&n| worth_logging(n)).collect();
    assert_eq!(logged, [1, 10, 100, 1_000, 10_000]);
    assert!(worth_logging(10u64.pow(19)));
    let mut d = Drops::default();
    d.count(DropReason::SpoofedIp);
    d.count(DropReason::SpoofedIp);
    d.count(DropReason::FloodLimited);
    assert_eq!(d.of(DropReason::SpoofedIp), 2);
    assert_eq!(d.of(DropReason::FloodLimited), 1);
    assert_eq!(d.of(DropReason::Runt), 0);
    assert_eq!(d.of(DropReason::UnknownPort), 0);
}

#[test]
fn floods_are_rate_limited_per_ingress_port() {
    let mut sw = Switch::new(Config {
        flood_burst: 4,
        flood_period_ms: 100,
        ..Config::default()
    });
    sw.add_uplink().unwrap();
    for id in 1..=2 {
        sw.add_guest(id, guest_mac(id as u8)).unwrap();
    }
    let storm = frame(MacAddr::BROADCAST, guest_mac(1), 60);
    let verdicts: Vec<Forward> = (0..10).map(|_| sw.forward(G1, &storm, 1_000)).collect();
    assert!(verdicts[..4].iter().all(|v| matches!(v, Forward::Flood(_))));
    assert!(verdicts[4..]
        .iter()
        .all(|v| *v == Forward::Drop(DropReason::FloodLimited)));
    // Known unicast is not a flood and is not limited.
    sw.forward(G2, &frame(guest_mac(1), guest_mac(2), 60), 1_000);
    assert_eq!(
        sw.forward(G1, &frame(guest_mac(2), guest_mac(1), 60), 1_000),
        Forward::One(G2)
    );
    // Another port's budget is its own.
    let other = frame(MacAddr::BROADCAST, guest_mac(2), 60);
    assert!(matches!(sw.forward(G2, &other, 1_000), Forward::Flood(_)));
    // Unknown unicast counts as a flood too; one more is allowed a period later.
    let unknown = frame(ext_mac(9), guest_mac(1), 60);
    assert_eq!(
        sw.forward(G1, &unknown, 1_050),
        Forward::Drop(DropReason::FloodLimited)
    );
    assert!(matches!(sw.forward(G1, &unknown, 1_100), Forward::Flood(_)));
    let c = sw.counters(G1).unwrap();
    assert_eq!((c.flooded, c.drops.flood_limited), (5, 7));
    assert!(sw
        .port_summary(G1)
        .unwrap()
        .to_string()
        .contains("floodlim 7"));
}

#[test]
fn random_traffic_keeps_invariants() {
    const CAPACITY: usize = 16;
    const BUDGET: usize = 8 * 1514;
    const GUESTS: u16 = 6;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sw = Switch::new(Config {
        table_capacity: CAPACITY,
        max_age_ms: 5_000,
        egress_budget: BUDGET,
        // Floods are counted below as forwarded: no limit here (tested on its own).
        flood_burst: 0,
        flood_period_ms: 0,
        ..Config::default()
    });
    let all: Vec<PortId> = core::iter::once(UP)
        .chain((1..=GUESTS).map(PortId::Guest))
        .collect();
    let slot = |p: PortId| p.slot().unwrap();
    let mut generation = 0u8;
    let mut shadow = [Shadow::default(); SLOTS];
    let mut inflight: VecDeque<(PortId, usize)> = VecDeque::new();
    for &p in &all {
        match p {
            PortId::Uplink => sw.add_uplink().unwrap(),
            PortId::Local => sw.add_local(ext_mac(200)).unwrap(),
            PortId::Guest(id) => sw.add_guest(id, guest_mac(id as u8)).unwrap(),
        };
    }
    let outside: Vec<MacAddr> = (0..40).map(ext_mac).collect();
    let mut now = 0u64;
    let (mut delivered, mut flooded, mut dropped) = (0u64, 0u64, 0u64);

    for step in 0..50_000 {
        now += rng.below(40);

        // Port churn: remove a port, or bring a missing one back (a guest with a new MAC).
        if rng.chance(1) {
            let p = all[rng.below(all.len() as u64) as usize];
            if sw.ports().contains(p) {
                assert!(sw.remove_port(p));
                inflight.retain(|&(q, _)| q != p);
                shadow[slot(p)] = Shadow::default();
            } else {
                generation = generation.wrapping_add(1);
                match p {
                    PortId::Uplink => sw.add_uplink().unwrap(),
                    PortId::Local => sw.add_local(ext_mac(200)).unwrap(),
                    PortId::Guest(id) => sw
                        .add_guest(id, MacAddr([0x02, 0x51, 0x55, 0x01, generation, id as u8]))
                        .unwrap(),
                };
            }
        }
        let owners: Vec<(PortId, MacAddr)> = sw
            .ports()
            .into_iter()
            .filter_map(|p| sw.owner(p).map(|m| (p, m)))
            .collect();
        let any_owner = |rng: &mut Rng| match owners.len() {
            0 => guest_mac(1),
            n => owners[rng.below(n as u64) as usize].1,
        };

        let ingress = all[rng.below(all.len() as u64) as usize];
        let src = match rng.below(20) {
            0..=9 => sw
                .owner(ingress)
                .unwrap_or_else(|| outside[rng.below(40) as usize]),
            10..=12 => outside[rng.below(40) as usize],
            13..=14 => any_owner(&mut rng),
            15 => MacAddr::BROADCAST,
            16 => MCAST,
            17 => MacAddr::ZERO,
            _ => {
                let mut m = [0u8; 6];
                m.iter_mut().for_each(|b| *b = rng.next() as u8);
                MacAddr(m)
            }
        };
        let dst = match rng.below(10) {
            0 => MacAddr::BROADCAST,
            1 => MCAST,
            2..=5 => any_owner(&mut rng),
            6..=8 => outside[rng.below(40) as usize],
            _ => MacAddr(rng.next().to_le_bytes()[..6].try_into().unwrap()),
        };
        let len = if rng.chance(5) {
            rng.below(ETH_HEADER_LEN as u64) as usize
        } else {
            ETH_HEADER_LEN + rng.below(1500) as usize
        };
        let mut f = frame(dst, src, len);
        f.truncate(len);

        let present = sw.ports();
        let fwd = sw.forward(ingress, &f, now);
        let dests = fwd.destinations();
        let ctx = || std::format!("step {step}: {ingress} {src} -> {dst} len {len}: {fwd:?}");

        // Never back out of the ingress port, never to a missing port.
        assert!(!dests.contains(ingress), "{}", ctx());
        assert!(dests.iter().all(|d| present.contains(d)), "{}", ctx());
        // The table stays bounded and owner MACs stay where they belong.
        assert!(sw.learned_len() <= CAPACITY, "{}", ctx());
        for &(p, m) in &owners {
            assert_eq!(sw.lookup(m, now), Some(p), "{}", ctx());
        }
        if present.contains(ingress) {
            shadow[slot(ingress)].rx += 1;
        }
        match fwd {
            Forward::Drop(reason) => {
                dropped += 1;
                match reason {
                    DropReason::UnknownPort => assert!(!present.contains(ingress)),
                    DropReason::Runt => assert!(len < ETH_HEADER_LEN),
                    DropReason::BadSource => assert!(!src.is_valid_source()),
                    DropReason::Spoofed => assert!(match sw.owner(ingress) {
                        Some(own) => src != own,
                        None => owners.iter().any(|&(_, m)| m == src),
                    }),
                    DropReason::Hairpin => assert_eq!(sw.lookup(dst, now), Some(ingress)),
                    // Ports here have no identity filter and no flood limit.
                    other => panic!("unexpected drop: {other}"),
                }
                continue;
            }
            Forward::One(p) => {
                assert!(!dst.is_multicast(), "{}", ctx());
                assert_eq!(sw.lookup(dst, now), Some(p), "{}", ctx());
                delivered += 1;
            }
            Forward::Flood(set) => {
                assert_eq!(set, present.without(ingress), "{}", ctx());
                assert!(
                    dst.is_multicast() || sw.lookup(dst, now).is_none(),
                    "{}",
                    ctx()
                );
                flooded += 1;
            }
        }
        shadow[slot(ingress)].forwarded += 1;
        // Whatever got through has a well-formed header and an honest source.
        assert!(len >= ETH_HEADER_LEN && src.is_valid_source(), "{}", ctx());
        match sw.owner(ingress) {
            Some(own) => assert_eq!(src, own, "{}", ctx()),
            None => assert!(owners.iter().all(|&(_, m)| m != src), "{}", ctx()),
        }
        // A known owner destination goes to its owner and nowhere else.
        if let Some(&(p, _)) = owners.iter().find(|&&(_, m)| m == dst) {
            assert_eq!(fwd, Forward::One(p), "{}", ctx());
        }

        for d in dests {
            if sw.try_reserve(d, len) {
                inflight.push_back((d, len));
                shadow[slot(d)].tx += 1;
            }
        }
        // Drain at a random pace, sometimes not at all, so budgets fill up.
        for _ in 0..rng.below(3) {
            if let Some((p, n)) = inflight.pop_front() {
                sw.release(p, n);
            }
        }
        for p in sw.ports() {
            let queued: usize = inflight
                .iter()
                .filter(|&&(q, _)| q == p)
                .map(|&(_, n)| n)
                .sum();
            assert_eq!(sw.queued(p), Some(queued), "{}", ctx());
            assert!(queued <= BUDGET, "{}", ctx());
        }
    }

    // Every frame is accounted for on its ingress port.
    for p in sw.ports() {
        let c = sw.counters(p).unwrap();
        let s = shadow[slot(p)];
        let d = c.drops;
        assert_eq!(c.rx_frames, s.rx, "{p}");
        assert_eq!(
            c.rx_frames,
            s.forwarded + d.spoofed + d.runt + d.bad_source + d.hairpin,
            "{p}"
        );
        assert_eq!(c.tx_frames, s.tx, "{p}");
    }
    // The mix exercised every path.
    assert!(delivered > 1000 && flooded > 1000 && dropped > 1000);
    let totals = sw
        .ports()
        .into_iter()
        .map(|p| sw.counters(p).unwrap().drops)
        .fold(Drops::default(), |a, d| Drops {
            spoofed: a.spoofed + d.spoofed,
            runt: a.runt + d.runt,
            bad_source: a.bad_source + d.bad_source,
            hairpin: a.hairpin + d.hairpin,
            queue_full: a.queue_full + d.queue_full,
            ..Drops::default()
        });
    assert!(totals.spoofed > 0 && totals.runt > 0 && totals.bad_source > 0);
    assert!(totals.hairpin > 0 && totals.queue_full > 0, "{totals:?}");
}

#[test]
fn drop_reasons_and_port_errors_keep_their_log_texts() {
    // The drop log lines and the counters' reasons are read by people and by the QEMU tests.
    let reasons = [
        (DropReason::Runt, "runt"),
        (DropReason::BadSource, "bad source"),
        (DropReason::Spoofed, "spoofed"),
        (DropReason::Hairpin, "hairpin"),
        (DropReason::UnknownPort, "unknown port"),
        (DropReason::SpoofedIp, "spoofed IP address"),
        (DropReason::SpoofedArpMac, "spoofed ARP sender MAC"),
        (DropReason::Protocol, "EtherType not allowed"),
        (DropReason::Malformed, "malformed ARP/IPv4 header"),
        (DropReason::FloodLimited, "flood rate limit"),
    ];
    for (reason, text) in reasons {
        assert_eq!(reason.to_string(), text);
    }
    let errors = [
        (PortError::Exists, "port already exists"),
        (PortError::IdOutOfRange, "guest id out of range"),
        (PortError::BadOwnerMac, "owner MAC is not a unicast address"),
        (
            PortError::OwnerMacInUse,
            "owner MAC already used by another guest",
        ),
    ];
    for (error, text) in errors {
        assert_eq!(error.to_string(), text);
    }
    // A port error is a real error type, so callers can box or chain it.
    let boxed: Box<dyn std::error::Error> = Box::new(PortError::Exists);
    assert_eq!(boxed.to_string(), "port already exists");
}

#[test]
fn a_64k_frame_goes_between_guests_but_never_to_a_port_with_smaller_frames() {
    let mut sw = switch();
    assert!(sw.set_max_frame(UP, 1514));
    assert_eq!(sw.max_frame(UP), Some(1514));
    assert_eq!(sw.max_frame(G2), Some(MAX_ETH_FRAME));
    let big = MAX_ETH_FRAME;
    // Known unicast guest to guest: forwarded whole, with room for it.
    let f = frame(guest_mac(2), guest_mac(1), 14);
    assert_eq!(sw.forward_header(G1, &f, big, 0), Forward::One(G2));
    assert!(sw.try_reserve(G2, big));
    sw.release(G2, big);
    // Flooded (broadcast): every guest may take it, the uplink refuses it, counted.
    let f = frame(MacAddr::BROADCAST, guest_mac(1), 14);
    let Forward::Flood(ports) = sw.forward_header(G1, &f, big, 0) else {
        panic!("a broadcast floods");
    };
    let taken: Vec<PortId> = ports
        .into_iter()
        .filter(|&p| {
            let ok = sw.try_reserve(p, big);
            if ok {
                sw.release(p, big);
            }
            ok
        })
        .collect();
    assert_eq!(taken, vec![G2, G3]);
    let up = sw.counters(UP).unwrap();
    assert_eq!(
        (up.drops.oversize, up.tx_frames, up.drops.queue_full),
        (1, 0, 0)
    );
    assert!(sw.to_string().contains("oversize 1"));
    // A frame of exactly the uplink's largest still goes; one byte more does not.
    assert!(sw.try_reserve(UP, 1514));
    assert!(!sw.try_reserve(UP, 1515));
    assert_eq!(sw.counters(UP).unwrap().drops.oversize, 2);
    // Beyond the internal link's largest frame nothing takes it.
    assert!(!sw.try_reserve(G3, big + 1));
    assert!(!sw.set_max_frame(PortId::Guest(9), 1514));
}

#[test]
fn a_reserved_frame_the_port_refuses_counts_as_a_queue_full_drop() {
    let mut sw = switch_with(Config::default());
    assert!(sw.try_reserve(G1, 1500));
    assert!(sw.try_reserve(G1, 600));
    sw.refuse_reserved(G1, 600);
    let c = sw.counters(G1).unwrap();
    assert_eq!(
        (c.tx_frames, c.tx_bytes),
        (1, 1500),
        "only the frame taken is sent"
    );
    assert_eq!(c.drops.queue_full, 1);
    assert_eq!(
        sw.queued(G1),
        Some(1500),
        "the refused frame's room is free again"
    );
    // A missing port is ignored.
    sw.refuse_reserved(PortId::Guest(9), 1);
}

#[test]
fn an_unreserved_frame_counts_neither_as_sent_nor_as_dropped() {
    let mut sw = switch_with(Config::default());
    assert!(sw.try_reserve(G1, 1500));
    assert!(sw.try_reserve(G1, 9000));
    // Held for later: offered again, and counted then.
    sw.unreserve(G1, 9000);
    let c = sw.counters(G1).unwrap();
    assert_eq!((c.tx_frames, c.tx_bytes), (1, 1500));
    assert_eq!(c.drops, Drops::default());
    assert_eq!(sw.queued(G1), Some(1500));
    assert!(sw.try_reserve(G1, 9000));
    assert_eq!(sw.counters(G1).unwrap().tx_frames, 2);
    sw.unreserve(PortId::Guest(9), 1);
}
