//! Access to shared memory: the ring page ([`RingMem`]) and the buffer pool ([`PoolMem`]), with
//! safe implementations over slices of atomics. A VM gets such a slice for the page it maps from
//! `vm_runtime::shared` (the runtime's room for raw memory); tests build it from a `Vec`.

use core::sync::atomic::{fence, AtomicU16, AtomicU8, Ordering};

use super::RING_PAGE_WORDS;

/// The ring page, as the queue code accesses it: `u16` loads and stores at even byte offsets
/// below 4096, acquire/release where the protocol publishes an index, and a full fence.
///
/// Wider values are built from `u16` accesses (low half first) by default: a value torn by a
/// concurrent writer is still just some value, and every value is validated after its one read.
pub trait RingMem {
    /// Plain (relaxed) load.
    fn load_u16(&self, offset: usize) -> u16;
    /// Load that orders every later access after it: reading a peer's published index.
    fn load_u16_acquire(&self, offset: usize) -> u16;
    /// Plain (relaxed) store.
    fn store_u16(&self, offset: usize, value: u16);
    /// Store that orders every earlier access before it: publishing an index.
    fn store_u16_release(&self, offset: usize, value: u16);
    /// Full fence, store-to-load included: the event-index handshake needs it.
    fn fence(&self);

    /// Plain load of a little-endian `u32`.
    fn load_u32(&self, offset: usize) -> u32 {
        u32::from(self.load_u16(offset)) | u32::from(self.load_u16(offset + 2)) << 16
    }

    /// Plain store of a little-endian `u32`.
    fn store_u32(&self, offset: usize, value: u32) {
        self.store_u16(offset, value as u16);
        self.store_u16(offset + 2, (value >> 16) as u16);
    }

    /// Plain load of a little-endian `u64`.
    fn load_u64(&self, offset: usize) -> u64 {
        u64::from(self.load_u32(offset)) | u64::from(self.load_u32(offset + 4)) << 32
    }

    /// Plain store of a little-endian `u64`.
    fn store_u64(&self, offset: usize, value: u64) {
        self.store_u32(offset, value as u32);
        self.store_u32(offset + 4, (value >> 32) as u32);
    }
}

impl<T: RingMem + ?Sized> RingMem for &T {
    fn load_u16(&self, offset: usize) -> u16 {
        (**self).load_u16(offset)
    }
    fn load_u16_acquire(&self, offset: usize) -> u16 {
        (**self).load_u16_acquire(offset)
    }
    fn store_u16(&self, offset: usize, value: u16) {
        (**self).store_u16(offset, value)
    }
    fn store_u16_release(&self, offset: usize, value: u16) {
        (**self).store_u16_release(offset, value)
    }
    fn fence(&self) {
        (**self).fence()
    }
    fn load_u32(&self, offset: usize) -> u32 {
        (**self).load_u32(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) {
        (**self).store_u32(offset, value)
    }
    fn load_u64(&self, offset: usize) -> u64 {
        (**self).load_u64(offset)
    }
    fn store_u64(&self, offset: usize, value: u64) {
        (**self).store_u64(offset, value)
    }
}

/// A ring page viewed as 2048 `AtomicU16` (the page is little-endian, and so is every target
/// sluice runs on).
#[derive(Clone, Copy, Debug)]
pub struct SharedRing<'a> {
    words: &'a [AtomicU16; RING_PAGE_WORDS],
}

impl<'a> SharedRing<'a> {
    /// The ring in the first [`RING_PAGE_WORDS`] words of `words`; `None` if it is shorter.
    pub fn new(words: &'a [AtomicU16]) -> Option<SharedRing<'a>> {
        let words = words.get(..RING_PAGE_WORDS)?.try_into().ok()?;
        Some(SharedRing { words })
    }

    fn word(&self, offset: usize) -> &AtomicU16 {
        debug_assert!(offset.is_multiple_of(2));
        &self.words[offset / 2]
    }
}

impl RingMem for SharedRing<'_> {
    fn load_u16(&self, offset: usize) -> u16 {
        self.word(offset).load(Ordering::Relaxed)
    }
    fn load_u16_acquire(&self, offset: usize) -> u16 {
        self.word(offset).load(Ordering::Acquire)
    }
    fn store_u16(&self, offset: usize, value: u16) {
        self.word(offset).store(value, Ordering::Relaxed)
    }
    fn store_u16_release(&self, offset: usize, value: u16) {
        self.word(offset).store(value, Ordering::Release)
    }
    fn fence(&self) {
        fence(Ordering::SeqCst)
    }
}

/// The buffer pool as one contiguous byte range. Ordering comes from the ring indices (pool data
/// is written before the index is released and read after it is acquired), so copies need none.
pub trait PoolMem {
    /// Bytes in the pool.
    fn size(&self) -> usize;
    /// Copies `dst.len()` bytes from `offset`. Callers keep the range inside [`size`](Self::size).
    fn read(&self, offset: usize, dst: &mut [u8]);
    /// Copies `src` to `offset`. Callers keep the range inside [`size`](Self::size).
    fn write(&self, offset: usize, src: &[u8]);
}

/// A pool viewed as `AtomicU8`s: safe, if slow; a VM may implement [`PoolMem`] with a copy
/// routine of its own instead.
#[derive(Clone, Copy, Debug)]
pub struct SharedPool<'a> {
    bytes: &'a [AtomicU8],
}

impl<'a> SharedPool<'a> {
    /// The pool over `bytes`.
    pub fn new(bytes: &'a [AtomicU8]) -> SharedPool<'a> {
        SharedPool { bytes }
    }
}

impl PoolMem for SharedPool<'_> {
    fn size(&self) -> usize {
        self.bytes.len()
    }

    /// Panics if the range is outside the pool (a bug of the caller, not of the peer).
    fn read(&self, offset: usize, dst: &mut [u8]) {
        let src = &self.bytes[offset..offset + dst.len()];
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.load(Ordering::Relaxed);
        }
    }

    /// Panics if the range is outside the pool (a bug of the caller, not of the peer).
    fn write(&self, offset: usize, src: &[u8]) {
        let dst = &self.bytes[offset..offset + src.len()];
        for (d, s) in dst.iter().zip(src) {
            d.store(*s, Ordering::Relaxed);
        }
    }
}
