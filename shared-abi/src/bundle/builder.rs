//! The host side of the boot bundle: [`build`] turns VM descriptions into bundle bytes, which
//! `sluice-pack` writes and `sluice-run` boots. It writes through the same wire layer the parser
//! reads with, and runs its output through [`Bundle::parse`], so every rule the hypervisor
//! enforces is enforced here too, with the same error.

use std::string::String;
use std::vec;
use std::vec::Vec;

use super::{
    encode_name_field, fnv1a64, Bdf, Bundle, BundleError, VmKind, FORMAT, HEADER_SIZE,
    IMAGE_ENTRY_SIZE, VM_ENTRY_SIZE, VM_FLAG_EMULATED_NIC, VM_FLAG_PASSTHROUGH,
};
use crate::layout::{MAX_SETTINGS_LEN, MAX_VMS};
use crate::wire::{Writer, HEADER_LEN};

/// A VM as the builder takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmDescription {
    pub name: String,
    pub kind: VmKind,
    pub vcpus: u32,
    pub ram_bytes: u64,
    pub image: Vec<u8>,
    pub settings: String,
    /// VM id (1-based, so entry index + 1) of the driver domain this guest connects to.
    pub backend: Option<u16>,
    /// PCI function passed through to this driver domain.
    pub passthrough: Option<Bdf>,
    /// This guest's NIC is the emulated one, served by its back-end.
    pub emulated_nic: bool,
}

/// Where the header keeps the checksum (after magic, version, header size and total size).
const CHECKSUM_AT: usize = HEADER_LEN + 4 + 8;
const _: () = assert!(CHECKSUM_AT == 24);

/// Images start on this boundary; not needed by the parser, but it keeps hexdumps readable and
/// lets the hypervisor copy images with aligned accesses.
const IMAGE_ALIGN: usize = 16;

/// Builds a bundle. Identical images are stored once.
pub fn build(vms: &[VmDescription]) -> Result<Vec<u8>, BundleError> {
    if vms.is_empty() {
        return Err(BundleError::NoVms);
    }
    if vms.len() > MAX_VMS {
        return Err(BundleError::TooManyVms { count: vms.len() });
    }

    let mut images: Vec<&[u8]> = Vec::new();
    let mut image_of_vm = Vec::with_capacity(vms.len());
    for vm in vms {
        let index = match images.iter().position(|i| *i == vm.image.as_slice()) {
            Some(index) => index,
            None => {
                images.push(&vm.image);
                images.len() - 1
            }
        };
        image_of_vm.push(index);
    }

    let mut strings = Vec::new();
    let mut settings_of_vm = Vec::with_capacity(vms.len());
    for (vm, desc) in vms.iter().enumerate() {
        let len = desc.settings.len();
        if len > MAX_SETTINGS_LEN {
            return Err(BundleError::SettingsTooLong {
                vm,
                len: len as u64,
            });
        }
        settings_of_vm.push((strings.len() as u64, len as u32));
        strings.extend_from_slice(desc.settings.as_bytes());
    }

    let vm_table = HEADER_SIZE;
    let image_table = vm_table + vms.len() * VM_ENTRY_SIZE;
    let string_area = image_table + images.len() * IMAGE_ENTRY_SIZE;
    let mut out = vec![0u8; string_area];
    out.extend_from_slice(&strings);

    let mut image_entries = Vec::with_capacity(images.len());
    for image in &images {
        out.resize(out.len().next_multiple_of(IMAGE_ALIGN), 0);
        image_entries.push((out.len() as u64, image.len() as u64));
        out.extend_from_slice(image);
    }

    let total = out.len() as u64;
    let mut w = Writer::new(&mut out);
    FORMAT.write_header(&mut w)?;
    w.u32(HEADER_SIZE as u32)?;
    w.u64(total)?;
    // The checksum, filled in last.
    w.skip(8)?;
    w.u32(vms.len() as u32)?;
    w.u32(images.len() as u32)?;
    w.u64(vm_table as u64)?;
    w.u64(image_table as u64)?;
    w.u64(string_area as u64)?;
    w.u64(strings.len() as u64)?;

    for (vm, desc) in vms.iter().enumerate() {
        let name = encode_name_field(&desc.name)
            .map_err(|problem| BundleError::BadName { vm, problem })?;
        // 0 is "none" on disk, so Some(0) cannot be encoded; every other id is checked by the
        // parse of the output.
        let backend = match desc.backend {
            None => 0,
            Some(0) => {
                return Err(BundleError::BackendOutOfRange {
                    vm,
                    backend: 0,
                    vm_count: vms.len(),
                })
            }
            Some(id) => id,
        };
        // The entry stores 16 bits; a larger count must not wrap into a valid one.
        let vcpus = u16::try_from(desc.vcpus).map_err(|_| BundleError::BadVcpus {
            vm,
            vcpus: desc.vcpus,
        })?;
        let (mut flags, routing_id) = match desc.passthrough {
            None => (0u16, 0u16),
            Some(bdf) => (VM_FLAG_PASSTHROUGH, bdf.routing_id()),
        };
        if desc.emulated_nic {
            flags |= VM_FLAG_EMULATED_NIC;
        }
        let (settings_offset, settings_len) = settings_of_vm[vm];
        w.bytes(&name)?;
        // Kind codes are 1 and 2, so the narrowing is lossless.
        w.u16(desc.kind.code() as u16)?;
        w.u16(backend)?;
        w.u16(vcpus)?;
        w.u16(routing_id)?;
        w.u64(desc.ram_bytes)?;
        // At most MAX_VMS images, so the index fits.
        w.u16(image_of_vm[vm] as u16)?;
        w.u16(flags)?;
        w.u32(settings_len)?;
        w.u64(settings_offset)?;
    }
    for (offset, len) in &image_entries {
        w.u64(*offset)?;
        w.u64(*len)?;
    }

    let checksum = fnv1a64(&out[HEADER_SIZE..]);
    let mut w = Writer::new(&mut out);
    w.skip_to(CHECKSUM_AT)?;
    w.u64(checksum)?;

    Bundle::parse(&out)?;
    Ok(out)
}
