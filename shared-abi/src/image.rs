//! The header at the start of a VM image: how long its read-only part (code and constants) is.
//!
//! The hypervisor keeps one copy of that part per image and maps it read-only (and executable)
//! into every VM that runs the image, at the image's place in RAM. VMs of one image then run
//! the same host pages of code: QEMU translates them once, and the host caches hold one copy
//! instead of one per VM. A VM that writes to its code faults and is killed; it cannot change
//! what its twins run.
//!
//! The image is a raw binary entered at its first byte, so the header sits behind a branch:
//!
//! | offset | size | field                                                                 |
//! |-------:|-----:|-----------------------------------------------------------------------|
//! |      0 |    4 | an instruction that branches over the header                          |
//! |      4 |    4 | `0`                                                                   |
//! |      8 |    8 | magic [`IMAGE_MAGIC`] (little-endian `b"SLUICEVM"`)                   |
//! |     16 |    8 | read-only bytes from the image's start: a multiple of the page size  |
//!
//! The read-only part must lie inside the image rounded up to a page (the rest of that page is
//! zero), and its writable data must start on a page of its own (`vm-runtime/vm.ld` does both).
//! An image without the magic has no shared part: it is loaded into the VM's own RAM only,
//! as images were before the header.

use thiserror::Error;

use crate::layout::PAGE_SIZE;

/// The header's magic: `b"SLUICEVM"` as a little-endian `u64`.
pub const IMAGE_MAGIC: u64 = u64::from_le_bytes(*b"SLUICEVM");
/// Offset of the magic in the image.
pub const MAGIC_OFFSET: usize = 8;
/// Offset of the read-only length in the image.
pub const READ_ONLY_OFFSET: usize = 16;
/// Bytes of the header, branch included.
pub const HEADER_BYTES: usize = 24;

/// Why an image's header is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ImageHeaderError {
    #[error("its read-only part ({bytes} bytes) is not a whole number of {PAGE_SIZE}-byte pages")]
    NotPageMultiple { bytes: u64 },
    #[error("its read-only part is empty, which would leave the header itself writable")]
    Empty,
    #[error("its read-only part ({bytes} bytes) is longer than the image ({image_len} bytes)")]
    PastImage { bytes: u64, image_len: u64 },
}

fn word_at(image: &[u8], offset: usize) -> Option<u64> {
    let bytes = image.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// The length of the image's read-only part: `Ok(0)` for an image without the header,
/// otherwise a validated, page-aligned length that fits in the image rounded up to a page.
pub fn read_only_bytes(image: &[u8]) -> Result<u64, ImageHeaderError> {
    if word_at(image, MAGIC_OFFSET) != Some(IMAGE_MAGIC) {
        return Ok(0);
    }
    let bytes = word_at(image, READ_ONLY_OFFSET).unwrap_or(0);
    let image_len = image.len() as u64;
    if bytes == 0 {
        return Err(ImageHeaderError::Empty);
    }
    if !bytes.is_multiple_of(PAGE_SIZE) {
        return Err(ImageHeaderError::NotPageMultiple { bytes });
    }
    if bytes > image_len.next_multiple_of(PAGE_SIZE) {
        return Err(ImageHeaderError::PastImage { bytes, image_len });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize, read_only: Option<u64>) -> Vec<u8> {
        let mut bytes = vec![0xaau8; len];
        if let Some(read_only) = read_only {
            bytes[MAGIC_OFFSET..MAGIC_OFFSET + 8].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
            bytes[READ_ONLY_OFFSET..READ_ONLY_OFFSET + 8].copy_from_slice(&read_only.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn the_magic_spells_the_name() {
        assert_eq!(&IMAGE_MAGIC.to_le_bytes(), b"SLUICEVM");
        assert_eq!(READ_ONLY_OFFSET + 8, HEADER_BYTES);
    }

    #[test]
    fn an_image_without_the_magic_has_no_shared_part() {
        assert_eq!(read_only_bytes(&image(3 * 4096, None)), Ok(0));
        // Too short to hold a header at all.
        assert_eq!(read_only_bytes(&[]), Ok(0));
        assert_eq!(read_only_bytes(&[1, 2, 3]), Ok(0));
        // The magic but no room for the length: refused as empty, never read past the end.
        let mut short = vec![0u8; MAGIC_OFFSET + 8];
        short[MAGIC_OFFSET..].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
        assert_eq!(read_only_bytes(&short), Err(ImageHeaderError::Empty));
    }

    #[test]
    fn a_valid_header_gives_its_page_aligned_length() {
        assert_eq!(
            read_only_bytes(&image(3 * 4096, Some(2 * 4096))),
            Ok(2 * 4096)
        );
        assert_eq!(
            read_only_bytes(&image(3 * 4096, Some(3 * 4096))),
            Ok(3 * 4096)
        );
        // The image may end inside the read-only part's last page (its tail is zero).
        assert_eq!(
            read_only_bytes(&image(4096 + 100, Some(2 * 4096))),
            Ok(2 * 4096)
        );
    }

    #[test]
    fn hostile_lengths_are_refused() {
        assert_eq!(
            read_only_bytes(&image(3 * 4096, Some(0))),
            Err(ImageHeaderError::Empty)
        );
        assert_eq!(
            read_only_bytes(&image(3 * 4096, Some(4097))),
            Err(ImageHeaderError::NotPageMultiple { bytes: 4097 })
        );
        assert_eq!(
            read_only_bytes(&image(4096 + 100, Some(3 * 4096))),
            Err(ImageHeaderError::PastImage {
                bytes: 3 * 4096,
                image_len: 4096 + 100
            })
        );
        for huge in [!4095u64, 1 << 40] {
            assert!(matches!(
                read_only_bytes(&image(4096, Some(huge))),
                Err(ImageHeaderError::PastImage { .. })
            ));
        }
    }
}
