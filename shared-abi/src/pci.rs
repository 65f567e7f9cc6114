//! PCI function addresses (bus:device.function), shared by everything that names one: the
//! topology (`passthrough = "00:02.0"`), the boot bundle (which stores the routing ID), the QEMU
//! command line the harness builds, and the hypervisor's ECAM decoding and configuration filter
//! (`hypervisor::pci`, which re-exports [`Bdf`]).
//!
//! A [`Bdf`] is always valid: device `<= 31`, function `<= 7`, segment 0. Every `u16` is the
//! routing ID of exactly one `Bdf` (bus `[15:8]`, device `[7:3]`, function `[2:0]`), so a
//! routing ID read from untrusted bytes needs no range check ([`Bdf::from_routing_id`]).

use core::fmt;

use core::str::FromStr;
use thiserror::Error;

// ECAM layout: bus [27:20], device [19:15], function [14:12], register [11:0].
pub const ECAM_BUS_SHIFT: u32 = 20;
pub const ECAM_DEVICE_SHIFT: u32 = 15;
pub const ECAM_FUNCTION_SHIFT: u32 = 12;

/// A PCI function address on segment 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    bus: u8,
    device: u8,
    function: u8,
}

/// The fields of a textual BDF, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BdfField {
    Domain,
    Bus,
    Device,
    Function,
}

impl BdfField {
    const fn name(self) -> &'static str {
        match self {
            BdfField::Domain => "domain",
            BdfField::Bus => "bus",
            BdfField::Device => "device",
            BdfField::Function => "function",
        }
    }

    /// The message of [`BdfError::OutOfRange`]: the domain has a rule of its own.
    const fn out_of_range(self) -> &'static str {
        match self {
            BdfField::Domain => "PCI domain must be 0000 (there is one PCI segment)",
            BdfField::Bus => "PCI address bus out of range (device 00-1f, function 0-7)",
            BdfField::Device => "PCI address device out of range (device 00-1f, function 0-7)",
            BdfField::Function => "PCI address function out of range (device 00-1f, function 0-7)",
        }
    }
}

/// Why a textual BDF was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum BdfError {
    /// Nothing but whitespace.
    #[error("empty PCI address (expected e.g. 00:02.0)")]
    Empty,
    /// Not of the form `[domain:]bus:device.function`.
    #[error("malformed PCI address (expected [domain:]bus:device.function, e.g. 00:02.0)")]
    Format,
    /// A field is not hexadecimal or has too many digits.
    #[error("PCI address {} is not a hexadecimal number of the right width", .0.name())]
    NotHex(BdfField),
    /// Device above 0x1f, function above 7, or a domain other than 0.
    #[error("{}", .0.out_of_range())]
    OutOfRange(BdfField),
}

fn hex_field(text: &str, max_digits: usize, field: BdfField) -> Result<u32, BdfError> {
    if text.is_empty() || text.len() > max_digits || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BdfError::NotHex(field));
    }
    u32::from_str_radix(text, 16).map_err(|_| BdfError::NotHex(field))
}

impl Bdf {
    /// The host bridge of QEMU virt's (and most) root complexes; never passed to a VM.
    pub const HOST_BRIDGE: Bdf = Bdf {
        bus: 0,
        device: 0,
        function: 0,
    };

    /// None if the device or function number is out of range.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Bdf> {
        if device > 31 || function > 7 {
            None
        } else {
            Some(Bdf {
                bus,
                device,
                function,
            })
        }
    }

    pub const fn bus(self) -> u8 {
        self.bus
    }

    pub const fn device(self) -> u8 {
        self.device
    }

    pub const fn function(self) -> u8 {
        self.function
    }

    /// The PCIe requester/routing ID, bus << 8 | device << 3 | function. On QEMU virt the host
    /// bridge's `iommu-map = <0 &smmu 0 0x10000>` makes it the SMMU stream ID as well.
    pub const fn routing_id(self) -> u16 {
        ((self.bus as u16) << 8) | ((self.device as u16) << 3) | self.function as u16
    }

    /// The inverse of [`routing_id`](Self::routing_id); total, since every field combination a
    /// `u16` can hold is a valid address.
    pub const fn from_routing_id(id: u16) -> Bdf {
        Bdf {
            bus: (id >> 8) as u8,
            device: ((id >> 3) & 0x1f) as u8,
            function: (id & 0x7) as u8,
        }
    }

    /// Offset of this function's configuration space in an ECAM region.
    pub const fn ecam_offset(self) -> u64 {
        ((self.bus as u64) << ECAM_BUS_SHIFT)
            | ((self.device as u64) << ECAM_DEVICE_SHIFT)
            | ((self.function as u64) << ECAM_FUNCTION_SHIFT)
    }

    /// Parses `bus:device.function` (hex, e.g. `00:02.0`), optionally preceded by `0000:`.
    pub fn parse(text: &str) -> Result<Bdf, BdfError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(BdfError::Empty);
        }
        let (location, function) = text.split_once('.').ok_or(BdfError::Format)?;
        let mut parts = location.split(':');
        let (domain, bus, device) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(bus), Some(device), None, None) => (None, bus, device),
            (Some(domain), Some(bus), Some(device), None) => (Some(domain), bus, device),
            _ => return Err(BdfError::Format),
        };
        if let Some(domain) = domain {
            if hex_field(domain, 4, BdfField::Domain)? != 0 {
                return Err(BdfError::OutOfRange(BdfField::Domain));
            }
        }
        let bus = hex_field(bus, 2, BdfField::Bus)?;
        let device = hex_field(device, 2, BdfField::Device)?;
        let function = hex_field(function, 1, BdfField::Function)?;
        if device > 31 {
            return Err(BdfError::OutOfRange(BdfField::Device));
        }
        if function > 7 {
            return Err(BdfError::OutOfRange(BdfField::Function));
        }
        Ok(Bdf {
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl FromStr for Bdf {
    type Err = BdfError;
    fn from_str(s: &str) -> Result<Bdf, BdfError> {
        Bdf::parse(s)
    }
}

/// `bb:dd.f` in lowercase hex, the form [`Bdf::parse`] reads back.
impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIC: Bdf = match Bdf::new(0, 2, 0) {
        Some(b) => b,
        None => panic!(),
    };

    #[test]
    fn bdf_parse_and_display() {
        assert_eq!(Bdf::parse("00:02.0"), Ok(NIC));
        assert_eq!(Bdf::parse(" 0000:00:02.0 "), Ok(NIC));
        assert_eq!(
            "1f:1f.7".parse::<Bdf>(),
            Bdf::new(0x1f, 0x1f, 7).ok_or(BdfError::Empty)
        );
        assert_eq!(Bdf::parse("ff:0.1").unwrap().to_string(), "ff:00.1");
        assert_eq!(Bdf::parse("0:2.0"), Ok(NIC));
        assert_eq!(Bdf::parse("00:00.0"), Ok(Bdf::HOST_BRIDGE));
        assert_eq!(NIC.routing_id(), 0x10);
        assert_eq!(Bdf::new(1, 0x1f, 7).unwrap().routing_id(), 0x1ff);
        assert_eq!(Bdf::new(3, 1, 2).unwrap().ecam_offset(), 0x30a000);
        assert_eq!(Bdf::new(0, 32, 0), None);
        assert_eq!(Bdf::new(0, 0, 8), None);
    }

    #[test]
    fn routing_id_round_trips_for_every_u16() {
        for id in 0..=u16::MAX {
            let bdf = Bdf::from_routing_id(id);
            assert_eq!(bdf.routing_id(), id);
            assert!(bdf.device() <= 31 && bdf.function() <= 7);
            assert_eq!(Bdf::parse(&bdf.to_string()), Ok(bdf));
            assert_eq!(Bdf::new(bdf.bus(), bdf.device(), bdf.function()), Some(bdf));
            assert_eq!(bdf.ecam_offset(), u64::from(id) << ECAM_FUNCTION_SHIFT);
        }
        assert_eq!(Bdf::from_routing_id(0x10), NIC);
    }

    #[test]
    fn bdf_parse_errors() {
        let cases = [
            ("", BdfError::Empty),
            ("   ", BdfError::Empty),
            ("00:02", BdfError::Format),
            ("0002.0", BdfError::Format),
            ("0:0:0:0.0", BdfError::Format),
            ("00:02.", BdfError::NotHex(BdfField::Function)),
            ("00:02.10", BdfError::NotHex(BdfField::Function)),
            ("00:2g.0", BdfError::NotHex(BdfField::Device)),
            ("100:02.0", BdfError::NotHex(BdfField::Bus)),
            (":02.0", BdfError::NotHex(BdfField::Bus)),
            ("+1:02.0", BdfError::NotHex(BdfField::Bus)),
            ("00:20.0", BdfError::OutOfRange(BdfField::Device)),
            ("00:02.8", BdfError::OutOfRange(BdfField::Function)),
            ("0001:00:02.0", BdfError::OutOfRange(BdfField::Domain)),
            ("00000:00:02.0", BdfError::NotHex(BdfField::Domain)),
            ("00:02.0.1", BdfError::NotHex(BdfField::Function)),
            ("é0:02.0", BdfError::NotHex(BdfField::Bus)),
        ];
        let mut texts = std::collections::BTreeSet::new();
        for (text, err) in cases {
            assert_eq!(Bdf::parse(text), Err(err), "{text:?}");
            texts.insert(err.to_string());
        }
        assert!(texts.len() >= 8);
    }
}
