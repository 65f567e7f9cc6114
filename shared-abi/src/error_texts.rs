//! Host test pinning the exact text of every error message that logs and the harness may
//! match on, so moving the error enums onto thiserror (or anything later) cannot change one
//! unnoticed. The shared header errors of the wire layer have their own tests in `wire`.

use std::format;
use std::string::ToString;

use crate::bundle::{BundleError, NameProblem, Region};
use crate::handshake::HandshakeError;
use crate::identity::IdentityError;
use crate::pci::{Bdf, BdfError, BdfField};
use crate::start_info::StartInfoError;
use crate::virtq::{
    AddError, Direction, HeaderError, LayoutError, NotInFlight, QueueError, Segment,
};

#[track_caller]
fn says(err: impl core::fmt::Display, text: &str) {
    assert_eq!(format!("{err}"), text);
}

#[test]
fn bundle_and_name_errors_keep_their_texts() {
    says(NameProblem::Empty, "name is empty");
    says(NameProblem::TooLong, "name is longer than 31 bytes");
    says(
        NameProblem::InvalidChar,
        "name may only contain lowercase letters, digits and '-'",
    );
    says(
        NameProblem::BadPadding,
        "name field has bytes after its NUL terminator",
    );
    says(
        BundleError::BadHeaderSize { found: 64 },
        "bundle header size is 64, version 3 headers are 72 bytes",
    );
    says(
        BundleError::TooLarge { claimed: 1 << 40 },
        "bundle header says 1099511627776 bytes, more than the 536870912-byte limit",
    );
    says(
        BundleError::ChecksumMismatch {
            stored: 1,
            computed: 0xabc,
        },
        "bundle corrupted: checksum is 0x0000000000000abc, header says 0x0000000000000001",
    );
    says(
        BundleError::OutOfBounds {
            region: Region::Settings(2),
            offset: 5,
            len: 7,
        },
        "bundle settings of VM entry 2 (7 bytes at offset 5) lies outside the bundle",
    );
    says(
        BundleError::BadName {
            vm: 1,
            problem: NameProblem::NotUtf8,
        },
        "VM entry 1: name is not valid UTF-8",
    );
    says(
        BundleError::BadImageHeader {
            image: 1,
            problem: crate::image::ImageHeaderError::NotPageMultiple { bytes: 4097 },
        },
        "bundle image 1: its read-only part (4097 bytes) is not a whole number of 4096-byte pages",
    );
    says(
        BundleError::ImageTooLarge {
            vm: 0,
            image_len: 10,
            ram_bytes: 20,
        },
        "VM entry 0: image of 10 bytes plus the 4096-byte start-info page does not fit in 20 \
         bytes of RAM",
    );
    says(
        BundleError::BackendOutOfRange {
            vm: 0,
            backend: 9,
            vm_count: 2,
        },
        "VM entry 0: back-end VM id 9 is not a VM of this bundle (ids are 1..=2)",
    );
    says(
        BundleError::BackendIsSelf { vm: 2 },
        "VM entry 2: names itself (VM id 3) as its back-end",
    );
    says(
        BundleError::UnknownVmFlags { vm: 0, flags: 6 },
        "VM entry 0: unknown flags 0x0006 (version 3 defines only 0x0003)",
    );
    says(
        BundleError::EmulatedNicWithoutBackend { vm: 0 },
        "VM entry 0: an emulated NIC needs a guest with a back-end to serve it (the flag is set \
         on a driver domain or a guest without one)",
    );
    says(
        BundleError::PassthroughHostBridge { vm: 1 },
        "VM entry 1: passthrough PCI function 00:00.0 is the host bridge, which is never passed \
         to a VM",
    );
    let bdf = Bdf::new(0, 2, 0).unwrap();
    says(
        BundleError::DuplicatePassthrough {
            first: 0,
            second: 1,
            bdf,
        },
        "VM entries 0 and 1 both own PCI function 00:02.0; a function is passed to at most one \
         VM",
    );
    says(
        BundleError::DriverDomainHasBackend { vm: 0, backend: 2 },
        "VM entry 0: is a driver domain but names back-end VM id 2; only guests connect to a \
         back-end",
    );
}

#[test]
fn start_info_and_control_page_errors_keep_their_texts() {
    says(
        StartInfoError::BadRamSize { ram_bytes: 3 },
        "start-info RAM size 3 is not a multiple of 2097152 in 2097152..=1073741824",
    );
    says(
        StartInfoError::BadName(NameProblem::Empty),
        "start-info VM name is empty",
    );
    says(
        StartInfoError::BadPassthrough { word: 0x10000 },
        "start-info passthrough word 0x00010000 has reserved bits 30..16 set",
    );
    says(
        StartInfoError::PeersOutOfRange { peers: 1 << 40 },
        "start-info peers 0x10000000000 name VM ids above the maximum 32",
    );
    says(
        HandshakeError::BadPort { port: 300 },
        "control page port 300 is invalid",
    );
    says(
        HandshakeError::Incomplete,
        "control page section lacks a port or MAC for its state",
    );
    says(
        HandshakeError::BadWritablePool {
            writable: 9,
            pages: 8,
        },
        "control page names 9 writable pool pages of 8",
    );
}

#[test]
fn pci_and_identity_errors_keep_their_texts() {
    says(BdfError::Empty, "empty PCI address (expected e.g. 00:02.0)");
    says(
        BdfError::Format,
        "malformed PCI address (expected [domain:]bus:device.function, e.g. 00:02.0)",
    );
    says(
        BdfError::NotHex(BdfField::Device),
        "PCI address device is not a hexadecimal number of the right width",
    );
    says(
        BdfError::OutOfRange(BdfField::Domain),
        "PCI domain must be 0000 (there is one PCI segment)",
    );
    for (field, name) in [
        (BdfField::Bus, "bus"),
        (BdfField::Device, "device"),
        (BdfField::Function, "function"),
    ] {
        says(
            BdfError::OutOfRange(field),
            &format!("PCI address {name} out of range (device 00-1f, function 0-7)"),
        );
    }
    says(
        IdentityError::Malformed,
        "setting frontends: an entry is not <id>=<mac>[/<ipv4>]",
    );
    says(
        IdentityError::NotUnicast { vm: 3 },
        "setting frontends: vm 3 has a MAC that is not unicast",
    );
    says(
        IdentityError::Duplicate { vm: 4 },
        "setting frontends: vm 4 repeats a VM id, MAC or address of another entry",
    );
}

#[test]
fn ring_errors_keep_their_texts() {
    says(
        QueueError::AvailTooFarAhead {
            avail_idx: 3,
            last_avail: 65535,
        },
        "ring violation: avail idx 3 is 4 entries past the device's 65535 (at most 128)",
    );
    says(
        QueueError::WrongDirection {
            index: 7,
            queue: Direction::Tx,
        },
        "ring violation: descriptor 7 is device-writable in a TX chain",
    );
    says(
        QueueError::WrongDirection {
            index: 7,
            queue: Direction::Rx,
        },
        "ring violation: descriptor 7 is read-only in an RX chain",
    );
    says(
        QueueError::OutsidePool {
            index: 1,
            addr: 0x1000,
            len: 0x20,
        },
        "ring violation: descriptor 1 buffer 0x1000+0x20 is outside the pool",
    );
    says(
        QueueError::UsedTooFarAhead {
            used_idx: 10,
            last_used: 4,
        },
        "ring violation: used idx 10 is 6 entries past 4, more than outstanding",
    );
    says(
        QueueError::FrameTooShort { head: 2, len: 5 },
        "bad frame at head 2: 5 bytes, shorter than net + Ethernet header (26)",
    );
    says(
        QueueError::BadNetHeader {
            head: 9,
            reason: HeaderError::CsumOutOfFrame {
                start: 14,
                offset: 16,
            },
        },
        "bad frame at head 9: net header checksum at 14+16 is outside the frame",
    );
    says(
        AddError::OutsidePool {
            segment: Segment {
                offset: 0x3000,
                len: 0x10,
            },
        },
        "buffer 0x3000+0x10 is outside the pool",
    );
    says(
        AddError::NoSpace { needed: 3, free: 1 },
        "chain needs 3 descriptors, 1 free",
    );
    says(
        LayoutError::PoolPastTable {
            first: 2000,
            pages: 100,
        },
        "buffer pool of 100 pages from ref 2000 runs past the grant table",
    );
    says(
        LayoutError::BadWritablePart {
            writable: 0,
            pages: 100,
        },
        "0 of the 100 pool pages writable (must be 1..=100: the receive buffers)",
    );
    says(
        NotInFlight { head: 5 },
        "push_used of head 5, which the device does not hold",
    );
    assert_eq!(
        HeaderError::DataValidOnTx.to_string(),
        "net header sets DATA_VALID on transmit"
    );
}
