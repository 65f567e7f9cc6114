//! The wire-format layer under every fixed little-endian layout of this crate (boot bundle,
//! control page, start-info page): a bounded cursor to read untrusted bytes ([`Reader`]), its
//! counterpart for builders ([`Writer`]), the header check the formats share (magic, version,
//! length: [`Format`]), and the one error type for all of it ([`WireError`]), which each format's
//! own error wraps.
//!
//! A [`Reader`] hands out every byte at most once as it advances (it cannot go back), and a read
//! past the end is an error, never a panic or a silent zero; a [`Writer`] refuses the same way to
//! write past its buffer. The formats check their lengths first, so an overrun after that is a
//! bug, but one that is reported instead of crashing the hypervisor.

use thiserror::Error;

/// Everything the shared layer can refuse. The format name and the expected values travel in
/// the error, so a message says which format was refused and why without a wrapper's help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum WireError {
    /// The bytes are shorter than the format's fixed part.
    #[error("{format} is {len} bytes, need {need}")]
    TooShort {
        format: &'static str,
        len: usize,
        need: usize,
    },
    #[error(
        "no {format} here: bad magic {found:02x?}, expected \"{}\"",
        expected.escape_ascii()
    )]
    BadMagic {
        format: &'static str,
        found: [u8; 8],
        expected: [u8; 8],
    },
    #[error("unsupported {format} version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        format: &'static str,
        found: u32,
        supported: u32,
    },
    /// A read or write of `need` bytes at offset `at` of a `len`-byte buffer.
    #[error("{need} bytes at offset {at} run past the end of a {len}-byte buffer")]
    Overrun { at: usize, need: usize, len: usize },
}

/// A forward-only cursor over untrusted bytes. Integers are little-endian.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub const fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    /// Offset of the next byte to be read.
    pub const fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left to read.
    pub const fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes, borrowed from the input.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let overrun = WireError::Overrun {
            at: self.pos,
            need: n,
            len: self.bytes.len(),
        };
        let end = self.pos.checked_add(n).ok_or(overrun)?;
        let out = self.bytes.get(self.pos..end).ok_or(overrun)?;
        self.pos = end;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Moves past `n` bytes without looking at them (reserved or already checked).
    pub fn skip(&mut self, n: usize) -> Result<(), WireError> {
        self.bytes(n).map(|_| ())
    }

    /// Moves forward to absolute offset `at`; going back is refused, so nothing is read twice.
    pub fn skip_to(&mut self, at: usize) -> Result<(), WireError> {
        let n = at.checked_sub(self.pos).ok_or(WireError::Overrun {
            at,
            need: 0,
            len: self.pos,
        })?;
        self.skip(n)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_le_bytes)
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_le_bytes)
    }
}

/// The builders' counterpart of [`Reader`]: a forward-only cursor writing little-endian fields.
/// Bytes it skips keep whatever the buffer held (callers zero the buffer first where reserved
/// bytes must be zero).
#[derive(Debug)]
pub struct Writer<'a> {
    bytes: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub fn new(bytes: &'a mut [u8]) -> Writer<'a> {
        Writer { bytes, pos: 0 }
    }

    pub const fn position(&self) -> usize {
        self.pos
    }

    pub fn bytes(&mut self, src: &[u8]) -> Result<(), WireError> {
        let overrun = WireError::Overrun {
            at: self.pos,
            need: src.len(),
            len: self.bytes.len(),
        };
        let end = self.pos.checked_add(src.len()).ok_or(overrun)?;
        self.bytes
            .get_mut(self.pos..end)
            .ok_or(overrun)?
            .copy_from_slice(src);
        self.pos = end;
        Ok(())
    }

    pub fn skip(&mut self, n: usize) -> Result<(), WireError> {
        let overrun = WireError::Overrun {
            at: self.pos,
            need: n,
            len: self.bytes.len(),
        };
        let end = self.pos.checked_add(n).ok_or(overrun)?;
        if end > self.bytes.len() {
            return Err(overrun);
        }
        self.pos = end;
        Ok(())
    }

    /// Moves forward to absolute offset `at`.
    pub fn skip_to(&mut self, at: usize) -> Result<(), WireError> {
        let n = at.checked_sub(self.pos).ok_or(WireError::Overrun {
            at,
            need: 0,
            len: self.pos,
        })?;
        self.skip(n)
    }

    pub fn u8(&mut self, v: u8) -> Result<(), WireError> {
        self.bytes(&[v])
    }

    pub fn u16(&mut self, v: u16) -> Result<(), WireError> {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u32(&mut self, v: u32) -> Result<(), WireError> {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u64(&mut self, v: u64) -> Result<(), WireError> {
        self.bytes(&v.to_le_bytes())
    }
}

/// The header every format of this crate starts with: an 8-byte magic, then a `u32` version;
/// and the least number of bytes a buffer of the format has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// What the format is called in messages ("bundle", "control page", ...).
    pub name: &'static str,
    pub magic: [u8; 8],
    pub version: u32,
    /// Bytes the fixed part needs: a shorter buffer is refused before anything is read.
    pub min_len: usize,
}

/// Bytes of the shared header: magic and version.
pub const HEADER_LEN: usize = 12;

impl Format {
    /// Refuses a buffer shorter than [`Format::min_len`]; returns exactly that many bytes
    /// (anything past them is not the format's).
    pub fn fixed_part<'a>(&self, bytes: &'a [u8]) -> Result<&'a [u8], WireError> {
        bytes.get(..self.min_len).ok_or(WireError::TooShort {
            format: self.name,
            len: bytes.len(),
            need: self.min_len,
        })
    }

    /// The writable counterpart of [`Format::fixed_part`].
    pub fn fixed_part_mut<'a>(&self, bytes: &'a mut [u8]) -> Result<&'a mut [u8], WireError> {
        let len = bytes.len();
        bytes.get_mut(..self.min_len).ok_or(WireError::TooShort {
            format: self.name,
            len,
            need: self.min_len,
        })
    }

    /// Checks length, magic and version, in that order, and returns a reader over the fixed
    /// part positioned just past the version.
    pub fn check<'a>(&self, bytes: &'a [u8]) -> Result<Reader<'a>, WireError> {
        let mut r = Reader::new(self.fixed_part(bytes)?);
        let found = r.array::<8>()?;
        if found != self.magic {
            return Err(WireError::BadMagic {
                format: self.name,
                found,
                expected: self.magic,
            });
        }
        let found = r.u32()?;
        if found != self.version {
            return Err(WireError::UnsupportedVersion {
                format: self.name,
                found,
                supported: self.version,
            });
        }
        Ok(r)
    }

    /// Writes magic and version at the writer's position (the start of the format).
    pub fn write_header(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.bytes(&self.magic)?;
        w.u32(self.version)
    }
}

const _: () = assert!(size_of::<[u8; 8]>() + size_of::<u32>() == HEADER_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F: Format = Format {
        name: "test format",
        magic: *b"TESTFMT\0",
        version: 7,
        min_len: 16,
    };

    #[test]
    fn integers_are_little_endian() {
        let bytes = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(0x0302));
        assert_eq!(r.u32(), Ok(0x0706_0504));
        assert_eq!(r.u64(), Ok(0x0f0e_0d0c_0b0a_0908));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn reading_to_the_exact_end_works_and_one_more_byte_is_an_overrun() {
        let bytes = [0xaa; 6];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u32(), Ok(0xaaaa_aaaa));
        assert_eq!(r.bytes(2), Ok(&bytes[4..]));
        assert_eq!(r.position(), 6);
        assert_eq!(
            r.u8(),
            Err(WireError::Overrun {
                at: 6,
                need: 1,
                len: 6
            })
        );
        assert_eq!(r.bytes(0), Ok(&[][..]));
    }

    #[test]
    fn a_failed_read_consumes_nothing() {
        let bytes = [1, 2, 3];
        let mut r = Reader::new(&bytes);
        assert_eq!(
            r.u32(),
            Err(WireError::Overrun {
                at: 0,
                need: 4,
                len: 3
            })
        );
        assert_eq!(r.position(), 0);
        assert_eq!(r.u16(), Ok(0x0201));
    }

    #[test]
    fn huge_lengths_do_not_wrap() {
        let bytes = [0u8; 4];
        let mut r = Reader::new(&bytes);
        r.skip(2).unwrap();
        assert!(matches!(
            r.bytes(usize::MAX),
            Err(WireError::Overrun { .. })
        ));
        assert!(matches!(r.skip(usize::MAX), Err(WireError::Overrun { .. })));
        let mut buf = [0u8; 4];
        let mut w = Writer::new(&mut buf);
        w.u16(1).unwrap();
        assert!(matches!(w.skip(usize::MAX), Err(WireError::Overrun { .. })));
    }

    #[test]
    fn skip_to_never_goes_back() {
        let bytes = [0, 0, 0, 0, 9];
        let mut r = Reader::new(&bytes);
        r.skip_to(4).unwrap();
        assert_eq!(r.position(), 4);
        assert!(r.skip_to(2).is_err());
        assert_eq!(r.u8(), Ok(9));
        assert!(r.skip_to(6).is_err());
    }

    #[test]
    fn writer_round_trips_with_reader_and_refuses_overruns() {
        let mut buf = [0xffu8; 16];
        let mut w = Writer::new(&mut buf);
        w.u8(1).unwrap();
        w.u16(0x0302).unwrap();
        w.skip(1).unwrap();
        w.u32(0x0706_0504).unwrap();
        w.u64(0x0f0e_0d0c_0b0a_0908).unwrap();
        assert_eq!(w.position(), 16);
        assert_eq!(
            w.u8(0),
            Err(WireError::Overrun {
                at: 16,
                need: 1,
                len: 16
            })
        );
        assert_eq!(buf[..4], [1, 2, 3, 0xff]);
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(0x0302));
        r.skip(1).unwrap();
        assert_eq!(r.u32(), Ok(0x0706_0504));
        assert_eq!(r.u64(), Ok(0x0f0e_0d0c_0b0a_0908));
    }

    fn good() -> std::vec::Vec<u8> {
        let mut buf = std::vec![0u8; 20];
        F.write_header(&mut Writer::new(&mut buf)).unwrap();
        buf
    }

    #[test]
    fn header_check_accepts_its_own_header_and_ignores_bytes_past_the_fixed_part() {
        let buf = good();
        let r = F.check(&buf).unwrap();
        assert_eq!(r.position(), HEADER_LEN);
        assert_eq!(r.remaining(), F.min_len - HEADER_LEN);
    }

    #[test]
    fn header_check_refuses_length_then_magic_then_version() {
        let buf = good();
        assert_eq!(
            F.check(&buf[..15]).unwrap_err(),
            WireError::TooShort {
                format: "test format",
                len: 15,
                need: 16
            }
        );
        let mut bad = good();
        bad[0] = b'X';
        bad[8] = 8;
        assert!(matches!(
            F.check(&bad),
            Err(WireError::BadMagic { found, .. }) if &found == b"XESTFMT\0"
        ));
        let mut bad = good();
        bad[11] = 1;
        assert_eq!(
            F.check(&bad).unwrap_err(),
            WireError::UnsupportedVersion {
                format: "test format",
                found: 0x0100_0007,
                supported: 7
            }
        );
    }

    #[test]
    fn messages_name_the_format_and_the_expected_values() {
        let mut bad = good();
        bad[0] = b'X';
        let msg = std::format!("{}", F.check(&bad).unwrap_err());
        assert_eq!(
            msg,
            "no test format here: bad magic [58, 45, 53, 54, 46, 4d, 54, 00], expected \
             \"TESTFMT\\x00\""
        );
        let msg = std::format!("{}", F.check(&bad[..3]).unwrap_err());
        assert_eq!(msg, "test format is 3 bytes, need 16");
    }

    proptest! {
        /// Any sequence of reads either returns exactly the bytes at the cursor (and advances by
        /// their count) or fails without moving, and never reads past the end.
        #[test]
        fn reads_are_bounded_and_exact(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            sizes in proptest::collection::vec(0usize..12, 0..16),
        ) {
            let mut r = Reader::new(&bytes);
            let mut pos = 0;
            for n in sizes {
                match r.bytes(n) {
                    Ok(got) => {
                        prop_assert_eq!(got, &bytes[pos..pos + n]);
                        pos += n;
                    }
                    Err(e) => {
                        prop_assert!(pos + n > bytes.len());
                        prop_assert_eq!(e, WireError::Overrun { at: pos, need: n, len: bytes.len() });
                    }
                }
                prop_assert_eq!(r.position(), pos);
            }
        }

        #[test]
        fn integers_decode_as_from_le_bytes(bytes in proptest::array::uniform8(any::<u8>())) {
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(r.u64(), Ok(u64::from_le_bytes(bytes)));
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(r.u32(), Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])));
            prop_assert_eq!(r.u16(), Ok(u16::from_le_bytes([bytes[4], bytes[5]])));
        }
    }
}
