//! The identity each guest's port gets, decided by the driver domain from the topology and
//! never by the guest: the `frontends` setting (`shared_abi::identity`), read once at start
//! into private memory. A front-end that asks the handshake for another MAC (another guest's,
//! the gateway's, one meant for a guest that has not connected yet) is refused and still gets
//! a working port with its own.

use alloc::vec::Vec;
use core::fmt;

use shared_abi::identity::{self, Identity, IdentityError};
use shared_abi::start_info::setting;

use crate::switch::MacAddr;

/// Every front-end's identity, as the topology gave it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vifs {
    entries: Vec<Identity>,
}

/// What a connecting front-end gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub mac: [u8; 6],
    /// Its only IPv4 address (`None`: it may send neither IPv4 nor ARP).
    pub ip: Option<[u8; 4]>,
    /// The MAC it asked for when that was not its own (it got `mac` instead).
    pub refused: Option<[u8; 6]>,
}

impl fmt::Display for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MAC {}", MacAddr(self.mac))?;
        match self.ip {
            Some(ip) => write!(f, ", IP {}", core::net::Ipv4Addr::from(ip)),
            None => f.write_str(", no IP"),
        }
    }
}

impl Vifs {
    /// The identities in a driver domain's settings (none without the setting: then every
    /// guest gets its default MAC and no address).
    pub fn from_settings(settings: &str) -> Result<Vifs, IdentityError> {
        let Some(value) = setting(settings, identity::SETTING) else {
            return Ok(Vifs::default());
        };
        identity::check_list(value)?;
        let entries = identity::entries(value).collect::<Result<Vec<_>, _>>()?;
        Ok(Vifs { entries })
    }

    /// Number of front-ends listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no front-end is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The MAC of every listed front-end.
    pub fn macs(&self) -> impl Iterator<Item = [u8; 6]> + '_ {
        self.entries.iter().map(|e| e.mac)
    }

    /// Whether front-end `vm` has the emulated NIC (its entry carries the marker): then we
    /// serve it as a device model on its request page, not as a para-virtual back-end.
    pub fn is_emulated(&self, vm: u16) -> bool {
        self.entries.iter().any(|e| e.vm == vm && e.emulated)
    }

    /// What front-end `vm` gets when it asks for MAC `asked` (zero: "assign one"): always its
    /// own identity; a request for anything else is noted as refused.
    pub fn assign(&self, vm: u16, asked: [u8; 6]) -> Assignment {
        let (mac, ip) = match self.entries.iter().find(|e| e.vm == vm) {
            Some(e) => (e.mac, e.ip),
            None => (identity::default_mac(vm), None),
        };
        let refused = (asked != [0; 6] && asked != mac).then_some(asked);
        Assignment { mac, ip, refused }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: &str = "role=switch\nfrontends=2=02:51:55:00:00:02/10.0.2.16,\
                            3=02:aa:00:00:00:03/10.0.2.17,4=02:51:55:00:00:04\nip=10.0.2.15/24\n";

    #[test]
    fn every_guest_gets_its_own_identity_whatever_it_asks() {
        let vifs = Vifs::from_settings(SETTINGS).unwrap();
        assert_eq!(vifs.len(), 3);
        assert_eq!(
            vifs.macs().collect::<Vec<_>>(),
            [
                identity::default_mac(2),
                [0x02, 0xaa, 0, 0, 0, 3],
                identity::default_mac(4)
            ]
        );
        let own2 = Assignment {
            mac: identity::default_mac(2),
            ip: Some([10, 0, 2, 16]),
            refused: None,
        };
        assert_eq!(vifs.assign(2, [0; 6]), own2);
        assert_eq!(vifs.assign(2, identity::default_mac(2)), own2);
        // Guest 2 asks for guest 3's MAC (which 3 has not claimed yet: nothing is first come,
        // first served), the NIC's, the gateway's: refused, its own instead.
        for asked in [
            [0x02, 0xaa, 0, 0, 0, 3],
            [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02],
        ] {
            assert_eq!(
                vifs.assign(2, asked),
                Assignment {
                    refused: Some(asked),
                    ..own2
                }
            );
        }
        // Guest 3's MAC is the topology's, not the default one.
        assert_eq!(vifs.assign(3, [0; 6]).mac, [0x02, 0xaa, 0, 0, 0, 3]);
        assert_eq!(
            vifs.assign(3, identity::default_mac(3)).refused,
            Some(identity::default_mac(3))
        );
        // No address: no IP.
        assert_eq!(vifs.assign(4, [0; 6]).ip, None);
        // Not listed: the default MAC, no address.
        let unlisted = vifs.assign(9, [0; 6]);
        assert_eq!(
            (unlisted.mac, unlisted.ip),
            (identity::default_mac(9), None)
        );
        assert_eq!(own2.to_string(), "MAC 02:51:55:00:00:02, IP 10.0.2.16");
    }

    #[test]
    fn the_emulated_marker_names_exactly_its_guests() {
        let vifs = Vifs::from_settings(
            "frontends=2=02:51:55:00:00:02/10.0.2.16+emulated,3=02:51:55:00:00:03/10.0.2.17\n",
        )
        .unwrap();
        assert!(vifs.is_emulated(2));
        assert!(!vifs.is_emulated(3));
        assert!(!vifs.is_emulated(4));
        // The emulated guest is held to its identity like any other.
        assert_eq!(vifs.assign(2, [0; 6]).ip, Some([10, 0, 2, 16]));
        assert!(!Vifs::from_settings(SETTINGS).unwrap().is_emulated(2));
    }

    #[test]
    fn a_bad_list_is_refused_and_none_is_empty() {
        assert!(Vifs::from_settings("role=switch\n").unwrap().is_empty());
        assert!(Vifs::from_settings("frontends=2=zz\n").is_err());
        assert!(
            Vifs::from_settings("frontends=2=02:00:00:00:00:01,3=02:00:00:00:00:01\n").is_err()
        );
    }
}
