//! Reading the NIC's frames as QEMU's `filter-dump` writes them (pcap, `SLUICE_NIC_PCAP`,
//! [`crate::qemu::BootOptions::nic_pcap`]): the TCP segments in them, and how often a receiver
//! acknowledged a stream ([`ack_pacing`]). Only what the tests need: classic pcap (micro- or
//! nanosecond stamps, either byte order), Ethernet, IPv4, TCP.

use std::net::Ipv4Addr;
use std::path::Path;

/// One TCP segment on the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Seconds since the epoch, as stamped by the capture.
    pub time: f64,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Payload bytes.
    pub len: usize,
}

const TCP_ACK: u8 = 0x10;

/// Every IPv4 TCP segment in the capture `bytes`, in capture order. Frames that are not
/// Ethernet + IPv4 + TCP, or are cut short, are skipped; a file that is not pcap is an error.
pub fn tcp_segments(bytes: &[u8]) -> Result<Vec<Segment>, String> {
    let header = bytes
        .get(..24)
        .ok_or("not a pcap file: shorter than its header")?;
    let magic = u32::from_le_bytes(header[..4].try_into().unwrap_or_default());
    let (little, nanos) = match magic {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        other => return Err(format!("not a pcap file (magic {other:#010x})")),
    };
    let word = |b: &[u8]| {
        let b: [u8; 4] = b.try_into().unwrap_or_default();
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut out = Vec::new();
    let mut at = 24;
    while let Some(record) = bytes.get(at..at + 16) {
        let secs = word(&record[..4]);
        let frac = word(&record[4..8]);
        let captured = word(&record[8..12]) as usize;
        let Some(frame) = bytes.get(at + 16..at + 16 + captured) else {
            break; // cut short: the capture was still being written
        };
        at += 16 + captured;
        let time = f64::from(secs) + f64::from(frac) / if nanos { 1e9 } else { 1e6 };
        if let Some(segment) = parse_frame(frame, time) {
            out.push(segment);
        }
    }
    Ok(out)
}

/// [`tcp_segments`] of the file at `path`.
pub fn read_tcp_segments(path: &Path) -> Result<Vec<Segment>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    tcp_segments(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_frame(frame: &[u8], time: f64) -> Option<Segment> {
    let be16 = |at: usize| Some(u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?));
    let be32 = |at: usize| Some(u32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?));
    if be16(12)? != 0x0800 {
        return None;
    }
    let ip = 14;
    let ihl = usize::from(frame.get(ip)? & 0x0f) * 4;
    let total = usize::from(be16(ip + 2)?);
    if *frame.get(ip + 9)? != 6 || ihl < 20 {
        return None;
    }
    let addr = |at: usize| -> Option<Ipv4Addr> {
        let b: [u8; 4] = frame.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    };
    let tcp = ip + ihl;
    let data_offset = usize::from(frame.get(tcp + 12)? >> 4) * 4;
    Some(Segment {
        time,
        src: addr(ip + 12)?,
        dst: addr(ip + 16)?,
        src_port: be16(tcp)?,
        dst_port: be16(tcp + 2)?,
        seq: be32(tcp + 4)?,
        ack: be32(tcp + 8)?,
        flags: *frame.get(tcp + 13)?,
        len: total.checked_sub(ihl + data_offset)?,
    })
}

/// How a receiver acknowledged the largest stream sent to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckPacing {
    /// Segments with payload in the stream.
    pub data_segments: usize,
    /// Bytes of payload in the stream.
    pub data_bytes: u64,
    /// Segments from the receiver that moved the acknowledgement forward.
    pub acks: usize,
    /// The largest step an ACK moved it, in bytes.
    pub largest_step: u64,
}

impl AckPacing {
    /// Data segments per acknowledgement (the whole stream at once when none came: infinity).
    pub fn segments_per_ack(&self) -> f64 {
        if self.acks == 0 {
            f64::INFINITY
        } else {
            self.data_segments as f64 / self.acks as f64
        }
    }
}

/// The stream to `receiver` that carried the most payload in `segments`, and how its receiver
/// acknowledged it; `None` if nothing with payload went to `receiver`.
pub fn ack_pacing(segments: &[Segment], receiver: Ipv4Addr) -> Option<AckPacing> {
    type Flow = (Ipv4Addr, u16, u16);
    let mut bytes: std::collections::BTreeMap<Flow, u64> = Default::default();
    for s in segments.iter().filter(|s| s.dst == receiver && s.len > 0) {
        *bytes.entry((s.src, s.src_port, s.dst_port)).or_default() += s.len as u64;
    }
    let (&(sender, sender_port, receiver_port), _) = bytes.iter().max_by_key(|(_, &b)| b)?;
    let mut pacing = AckPacing {
        data_segments: 0,
        data_bytes: 0,
        acks: 0,
        largest_step: 0,
    };
    let mut acked: Option<u32> = None;
    for s in segments {
        if s.src == sender && s.src_port == sender_port && s.dst_port == receiver_port {
            if s.len > 0 {
                pacing.data_segments += 1;
                pacing.data_bytes += s.len as u64;
            }
        } else if s.src == receiver
            && s.src_port == receiver_port
            && s.dst == sender
            && s.dst_port == sender_port
            && s.flags & TCP_ACK != 0
        {
            // Forward by less than half the sequence space: new; else old or repeated.
            let step = acked.map_or(0, |a| s.ack.wrapping_sub(a));
            if acked.is_none() || (step > 0 && step < 1 << 31) {
                if acked.is_some() {
                    pacing.acks += 1;
                    pacing.largest_step = pacing.largest_step.max(u64::from(step));
                }
                acked = Some(s.ack);
            }
        }
    }
    Some(pacing)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: [u8; 4] = [10, 0, 2, 2];
    const GUEST: [u8; 4] = [10, 0, 2, 16];

    fn frame(
        src: [u8; 4],
        dst: [u8; 4],
        ports: (u16, u16),
        seq: u32,
        ack: u32,
        len: usize,
    ) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20 + len];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((40 + len) as u16).to_be_bytes());
        f[23] = 6;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&ports.0.to_be_bytes());
        f[36..38].copy_from_slice(&ports.1.to_be_bytes());
        f[38..42].copy_from_slice(&seq.to_be_bytes());
        f[42..46].copy_from_slice(&ack.to_be_bytes());
        f[46] = 5 << 4;
        f[47] = TCP_ACK;
        f
    }

    fn pcap(frames: &[Vec<u8>], nanos: bool) -> Vec<u8> {
        // Magic, version 2.4, zone and accuracy, snap length, link type Ethernet.
        let mut out = Vec::new();
        out.extend_from_slice(&(if nanos { 0xa1b2_3c4du32 } else { 0xa1b2_c3d4 }).to_le_bytes());
        out.extend_from_slice(&[2, 0, 4, 0]);
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&65535u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for (i, f) in frames.iter().enumerate() {
            out.extend_from_slice(&100u32.to_le_bytes());
            out.extend_from_slice(&(i as u32 * 10).to_le_bytes());
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    /// A stream of `segments` of 1460 bytes from the host, the guest acknowledging every
    /// `every` of them (and once more at the end).
    fn stream(segments: u32, every: u32) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let start = 0xffff_f000u32; // wraps: sequence arithmetic must hold across it
        for i in 0..segments {
            frames.push(frame(
                HOST,
                GUEST,
                (40000, 5201),
                start.wrapping_add(i * 1460),
                7,
                1460,
            ));
            if (i + 1) % every == 0 || i + 1 == segments {
                frames.push(frame(
                    GUEST,
                    HOST,
                    (5201, 40000),
                    7,
                    start.wrapping_add((i + 1) * 1460),
                    0,
                ));
            }
        }
        frames
    }

    #[test]
    fn segments_are_read_from_either_stamp_resolution() {
        for nanos in [false, true] {
            let s = tcp_segments(&pcap(&stream(3, 1), nanos)).unwrap();
            assert_eq!(s.len(), 6);
            assert_eq!(s[0].src, Ipv4Addr::from(HOST));
            assert_eq!(
                (s[0].src_port, s[0].dst_port, s[0].len),
                (40000, 5201, 1460)
            );
            assert_eq!(s[1].len, 0);
            let step = if nanos { 10e-9 } else { 10e-6 };
            assert!((s[1].time - s[0].time - step).abs() < 1e-12, "{nanos}");
        }
    }

    #[test]
    fn a_receiver_that_acknowledges_in_parts_is_told_from_one_that_waits_for_the_window() {
        let guest = Ipv4Addr::from(GUEST);
        let parts =
            ack_pacing(&tcp_segments(&pcap(&stream(88, 8), false)).unwrap(), guest).unwrap();
        assert_eq!(parts.data_segments, 88);
        assert_eq!(parts.data_bytes, 88 * 1460);
        // The first ACK only sets the start; 11 move it.
        assert_eq!(parts.acks, 10);
        assert_eq!(parts.largest_step, 8 * 1460);
        let window =
            ack_pacing(&tcp_segments(&pcap(&stream(88, 44), false)).unwrap(), guest).unwrap();
        assert_eq!(window.acks, 1);
        assert_eq!(window.largest_step, 44 * 1460);
        assert!(window.segments_per_ack() > 4.0 * parts.segments_per_ack());
    }

    #[test]
    fn repeated_and_old_acks_are_not_counted_and_other_streams_are_ignored() {
        let guest = Ipv4Addr::from(GUEST);
        let mut frames = stream(4, 2);
        // A duplicate of the last ACK, an old one, and a small stream on another port.
        frames.push(frames[frames.len() - 1].clone());
        frames.push(frame(GUEST, HOST, (5201, 40000), 7, 0xffff_f000, 0));
        frames.push(frame(HOST, GUEST, (40001, 5201), 1, 1, 100));
        let p = ack_pacing(&tcp_segments(&pcap(&frames, false)).unwrap(), guest).unwrap();
        assert_eq!((p.data_segments, p.acks), (4, 1));
        assert_eq!(ack_pacing(&[], guest), None);
        assert_eq!(AckPacing { acks: 0, ..p }.segments_per_ack(), f64::INFINITY);
    }

    #[test]
    fn a_file_that_is_not_pcap_is_refused_and_a_cut_record_ends_the_read() {
        assert!(tcp_segments(b"short").unwrap_err().contains("shorter"));
        assert!(tcp_segments(&[0u8; 24]).unwrap_err().contains("magic"));
        let mut file = pcap(&stream(2, 1), false);
        file.truncate(file.len() - 10);
        assert_eq!(tcp_segments(&file).unwrap().len(), 3);
    }
}
