//! Who each front-end is on the network: the MAC and IPv4 address the topology gives it, handed
//! to its driver domain so the back-end can hold the guest to them (Xen's vif anti-spoofing:
//! a vif has one MAC and an IP allow-list, and the back-end, not the guest, decides both).
//!
//! The packer writes one setting into the driver domain's settings (start-info, which only the
//! hypervisor and that VM can write, so no guest can edit it):
//!
//! ```text
//! frontends=<entry>,<entry>,...      entry = <vm id>=<mac>[/<ipv4>][+emulated]
//! frontends=2=02:51:55:00:00:02/10.0.2.16,3=02:51:55:00:00:03/10.0.2.17+emulated
//! ```
//!
//! Every guest whose `backend` is that driver domain has an entry; the MAC is the guest's `mac`
//! setting or [`default_mac`] of its id, the address the one of its `ip` setting (none: the
//! guest may send no IPv4 and no ARP at all). The [`EMULATED`] marker says the guest's NIC is
//! the emulated one (`nic = "emulated"`, [`crate::emunic`]): the driver domain serves it as a
//! device model on the guest's request page instead of a para-virtual back-end.

use core::fmt;

use core::net::Ipv4Addr;
use core::str::FromStr;
use thiserror::Error;

/// The driver domain's setting that lists its front-ends' identities.
pub const SETTING: &str = "frontends";
/// The suffix of an entry whose guest has the emulated NIC.
pub const EMULATED: &str = "+emulated";

/// The locally administered unicast MAC of front-end `id` when the topology sets none.
pub const fn default_mac(id: u16) -> [u8; 6] {
    [0x02, 0x51, 0x55, 0x00, (id >> 8) as u8, id as u8]
}

/// Parses a MAC address written `aa:bb:cc:dd:ee:ff` (hex, case-insensitive).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Whether a frame may carry `mac` as its source (and so a port may own it): not a group
/// address, not all zero.
pub const fn is_unicast(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0 && !matches!(mac, [0, 0, 0, 0, 0, 0])
}

/// One front-end's network identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub vm: u16,
    pub mac: [u8; 6],
    /// Its only IPv4 address; `None`: it may send neither IPv4 nor ARP.
    pub ip: Option<[u8; 4]>,
    /// Its NIC is the emulated one (the entry ends in [`EMULATED`]).
    pub emulated: bool,
}

/// Why a `frontends` setting is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum IdentityError {
    /// An entry that is not `<id>=<mac>[/<ipv4>][+emulated]` (the text predates the marker,
    /// and logs are matched on it).
    #[error("setting {SETTING}: an entry is not <id>=<mac>[/<ipv4>]")]
    Malformed,
    /// A multicast or zero MAC.
    #[error("setting {SETTING}: vm {vm} has a MAC that is not unicast")]
    NotUnicast { vm: u16 },
    /// Two entries for the same VM, or two VMs with the same MAC or address.
    #[error("setting {SETTING}: vm {vm} repeats a VM id, MAC or address of another entry")]
    Duplicate { vm: u16 },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.mac;
        write!(
            f,
            "{}={a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}",
            self.vm
        )?;
        if let Some(ip) = self.ip {
            write!(f, "/{}", Ipv4Addr::from(ip))?;
        }
        if self.emulated {
            f.write_str(EMULATED)?;
        }
        Ok(())
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(entry: &str) -> Result<Identity, IdentityError> {
        let (entry, emulated) = match entry.strip_suffix(EMULATED) {
            Some(rest) => (rest, true),
            None => (entry, false),
        };
        let (vm, rest) = entry.split_once('=').ok_or(IdentityError::Malformed)?;
        if vm.is_empty() || !vm.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdentityError::Malformed);
        }
        let vm: u16 = vm.parse().map_err(|_| IdentityError::Malformed)?;
        let (mac, ip) = match rest.split_once('/') {
            Some((mac, ip)) => (mac, Some(ip)),
            None => (rest, None),
        };
        let mac = parse_mac(mac).ok_or(IdentityError::Malformed)?;
        if !is_unicast(mac) {
            return Err(IdentityError::NotUnicast { vm });
        }
        let ip = match ip {
            None => None,
            Some(text) => Some(
                Ipv4Addr::from_str(text)
                    .map_err(|_| IdentityError::Malformed)?
                    .octets(),
            ),
        };
        Ok(Identity {
            vm,
            mac,
            ip,
            emulated,
        })
    }
}

/// The entries of a `frontends` value, each checked on its own (use [`check_list`] for the
/// whole list).
pub fn entries(value: &str) -> impl Iterator<Item = Result<Identity, IdentityError>> + '_ {
    value
        .split(',')
        .filter(|e| !e.is_empty())
        .map(Identity::from_str)
}

/// Checks a whole `frontends` value: every entry well formed, and no VM id, MAC or address
/// twice (two guests with one identity would let each pass for the other).
pub fn check_list(value: &str) -> Result<(), IdentityError> {
    for (i, a) in entries(value).enumerate() {
        let a = a?;
        for b in entries(value).take(i) {
            let b = b?;
            if a.vm == b.vm || a.mac == b.mac || (a.ip.is_some() && a.ip == b.ip) {
                return Err(IdentityError::Duplicate { vm: a.vm });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("aa:bb:cc:dd:ee:0f"),
            Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x0f])
        );
        assert_eq!(parse_mac("aa:bb:cc:dd:ee"), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:ff:00"), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:+f"), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:fff"), None);
    }

    #[test]
    fn default_macs_are_unicast_and_local() {
        assert_eq!(default_mac(2), [0x02, 0x51, 0x55, 0, 0, 2]);
        assert_eq!(default_mac(0x1234)[4..], [0x12, 0x34]);
        assert!(is_unicast(default_mac(7)));
        assert!(!is_unicast([1, 0, 0, 0, 0, 0]));
        assert!(!is_unicast([0; 6]));
    }

    #[test]
    fn entries_round_trip() {
        let a = Identity {
            vm: 2,
            mac: default_mac(2),
            ip: Some([10, 0, 2, 16]),
            emulated: false,
        };
        let b = Identity {
            vm: 3,
            mac: [0x02, 0xaa, 0, 0, 0, 1],
            ip: None,
            emulated: false,
        };
        let c = Identity {
            vm: 4,
            mac: default_mac(4),
            ip: Some([10, 0, 2, 18]),
            emulated: true,
        };
        let d = Identity {
            vm: 5,
            ip: None,
            ..c
        };
        assert_eq!(a.to_string(), "2=02:51:55:00:00:02/10.0.2.16");
        assert_eq!(b.to_string(), "3=02:aa:00:00:00:01");
        assert_eq!(c.to_string(), "4=02:51:55:00:00:04/10.0.2.18+emulated");
        assert_eq!(d.to_string(), "5=02:51:55:00:00:04+emulated");
        let list = [a.to_string(), b.to_string(), c.to_string()].join(",");
        let parsed: Vec<_> = entries(&list).collect();
        assert_eq!(parsed, [Ok(a), Ok(b), Ok(c)]);
        assert_eq!("5=02:51:55:00:00:04+emulated".parse(), Ok(d));
        assert_eq!(check_list(&list), Ok(()));
        assert_eq!(check_list(""), Ok(()));
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "2",
            "=02:51:55:00:00:02",
            "x=02:51:55:00:00:02",
            "+2=02:51:55:00:00:02",
            "2=02:51:55:00:00",
            "2=02:51:55:00:00:02/10.0.2",
            "2=02:51:55:00:00:02/",
            "99999=02:51:55:00:00:02",
            "2=02:51:55:00:00:02+emulated+emulated",
            "2=02:51:55:00:00:02/10.0.2.16+emu",
            "2=02:51:55:00:00:02+emulated/10.0.2.16",
            "+emulated",
        ] {
            assert_eq!(
                bad.parse::<Identity>(),
                Err(IdentityError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            "4=01:00:5e:00:00:01".parse::<Identity>(),
            Err(IdentityError::NotUnicast { vm: 4 })
        );
        assert_eq!(
            "4=00:00:00:00:00:00".parse::<Identity>(),
            Err(IdentityError::NotUnicast { vm: 4 })
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let m2 = "02:51:55:00:00:02";
        let m3 = "02:51:55:00:00:03";
        for (list, vm) in [
            (format!("2={m2},2={m3}"), 2),
            (format!("2={m2},3={m2}"), 3),
            (format!("2={m2}/10.0.2.16,3={m3}/10.0.2.16"), 3),
        ] {
            assert_eq!(
                check_list(&list),
                Err(IdentityError::Duplicate { vm }),
                "{list}"
            );
        }
        // Two guests without an address do not clash.
        assert_eq!(check_list(&format!("2={m2},3={m3}")), Ok(()));
    }
}
