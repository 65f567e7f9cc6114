//! The control page of a front-end/back-end connection (layout and protocol in
//! `shared_abi::handshake`), as seen from inside a VM: the hypervisor maps it at
//! `control_page_ipa(frontend id)` in both VMs. Reads take a snapshot of the page and validate
//! it; writes store only this side's section, word by word, so the peer's section is never
//! touched.

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use shared_abi::handshake::{
    self, Backend, Frontend, HandshakeError, Header, BACKEND, FRONTEND, HEADER, PAGE_LEN,
};

use crate::shared::SharedMem;

/// This VM's view of one control page.
pub struct ControlPage {
    page: SharedMem,
    frontend: u16,
}

impl ControlPage {
    /// The control page of the connection whose front-end is VM `frontend`, if this VM is part of
    /// it (the start-info `peers` bitmap names the other side).
    pub fn of(frontend: u16) -> Option<ControlPage> {
        let info = crate::start_info();
        let other = if frontend == info.vm_id {
            // We are the front-end: our back-end is our one peer.
            info.peers
        } else {
            1u64.checked_shl(u32::from(frontend))?
        };
        if other & info.peers == 0 || other == 0 {
            return None;
        }
        // The hypervisor maps the control page of every connection this VM is part of (checked
        // against `peers` above), read-write, for the life of the system. Both VMs write it
        // concurrently, so it is only accessed through atomics.
        let page = SharedMem::control_page(frontend)?;
        Some(ControlPage { page, frontend })
    }

    /// The page as atomic words.
    fn words(&self) -> &[AtomicU64] {
        self.page.words()
    }

    /// The front-end VM id of this connection.
    pub fn frontend_id(&self) -> u16 {
        self.frontend
    }

    /// A byte copy of the page.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; PAGE_LEN];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(self.words()) {
            chunk.copy_from_slice(&word.load(Ordering::Acquire).to_le_bytes());
        }
        bytes
    }

    /// The hypervisor's stop word. Read on its own (not through a page snapshot): a back-end
    /// checks it on every pass of its service loop.
    fn stopped(&self) -> u32 {
        const _: () = assert!(handshake::STOPPED_WORD.is_multiple_of(8));
        // The stop word is the low half (little-endian) of its aligned 64-bit word.
        let word = self.words()[handshake::STOPPED_WORD / 8].load(Ordering::Acquire);
        word as u32
    }

    /// The hypervisor says the front-end VM has stopped for good (not merely restarting).
    pub fn frontend_gone(&self) -> bool {
        self.stopped() & handshake::FRONTEND_STOPPED != 0
    }

    /// The hypervisor says the back-end VM has stopped for good.
    pub fn backend_gone(&self) -> bool {
        self.stopped() & handshake::BACKEND_STOPPED != 0
    }

    pub fn header(&self) -> Result<Header, HandshakeError> {
        Header::read_from(&self.snapshot())
    }

    pub fn frontend(&self) -> Result<Frontend, HandshakeError> {
        Frontend::read_from(&self.snapshot())
    }

    pub fn backend(&self) -> Result<Backend, HandshakeError> {
        Backend::read_from(&self.snapshot())
    }

    /// The back-end generation the hypervisor counts (its restarts).
    pub fn generation(&self) -> u32 {
        handshake::generation(&self.snapshot())
    }

    /// The back-end's section and the generation, from one copy of the page (the generation
    /// loaded after the state word, so a state a new incarnation wrote comes with its
    /// generation).
    pub fn backend_and_generation(&self) -> Result<(Backend, u32), HandshakeError> {
        let page = self.snapshot();
        Ok((Backend::read_from(&page)?, handshake::generation(&page)))
    }

    /// Writes the front-end section (the caller must be the front-end).
    pub fn write_frontend(&self, section: &Frontend) -> Result<(), HandshakeError> {
        let mut bytes = self.snapshot();
        section.write_to(&mut bytes)?;
        self.store(&bytes, FRONTEND);
        Ok(())
    }

    /// Writes the back-end section (the caller must be the back-end).
    pub fn write_backend(&self, section: &Backend) -> Result<(), HandshakeError> {
        let mut bytes = self.snapshot();
        section.write_to(&mut bytes)?;
        self.store(&bytes, BACKEND);
        Ok(())
    }

    /// Writes the header, which is the hypervisor's: only hostile test modes do, to check that
    /// the peer never trusts a header rewritten after it first read it.
    pub fn forge_header(&self, header: &Header) -> Result<(), HandshakeError> {
        let mut bytes = self.snapshot();
        header.write(&mut bytes)?;
        self.store(&bytes, HEADER);
        Ok(())
    }

    /// Fills the front-end section with `byte` (a section no reader accepts: an unknown state,
    /// reserved bytes set). Only a hostile test mode does, to check that the back-end closes a
    /// connection whose front-end scribbled over its section.
    pub fn scribble_frontend(&self, byte: u8) {
        let bytes = vec![byte; PAGE_LEN];
        self.store(&bytes, FRONTEND);
    }

    /// Stores `bytes[range]` into the page. The state word is the first of each section; it is
    /// stored last, so a peer that sees the new state also sees the fields that go with it.
    fn store(&self, bytes: &[u8], range: core::ops::Range<usize>) {
        let first = range.start / 8;
        let words = range.len() / 8;
        let word_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        for i in (first + 1)..(first + words) {
            self.words()[i].store(word_at(i), Ordering::Relaxed);
        }
        self.words()[first].store(word_at(first), Ordering::Release);
    }
}
