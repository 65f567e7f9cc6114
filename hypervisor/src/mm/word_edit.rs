//! Editing a page that VMs write at the same time (a connection's control page) through a
//! private copy: which words to store back, and in what order.
//!
//! The hypervisor loads every word once into a copy, edits the copy with the byte-level
//! functions of `shared_abi::handshake`, and stores back only the words it changed, so a word
//! a VM wrote meanwhile is never overwritten with the stale value of the copy. They are
//! stored from the last to the first: a section's state word is its first, so a VM that reads
//! the new state (its reads go first to last) also reads the fields written with it.

use alloc::vec::Vec;

/// The 64-bit little-endian words of `edited` that differ from `before` (the words as loaded),
/// as `(index, value)`, last first. Words past either end are left out.
pub fn changed_words(before: &[u64], edited: &[u8]) -> Vec<(usize, u64)> {
    edited
        .chunks_exact(8)
        .zip(before)
        .enumerate()
        .rev()
        .filter_map(|(i, (chunk, &old))| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            let word = u64::from_le_bytes(bytes);
            (word != old).then_some((i, word))
        })
        .collect()
}

/// The words of a page as bytes (little-endian), for editing.
pub fn bytes_of(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unedited_copy_stores_nothing() {
        let before = [1, 2, 3, u64::MAX];
        assert!(changed_words(&before, &bytes_of(&before)).is_empty());
    }

    #[test]
    fn only_the_changed_words_come_back_last_first() {
        let before = [0u64; 8];
        let mut copy = bytes_of(&before);
        copy[0] = 7; // word 0, low byte
        copy[5 * 8 + 7] = 0x80; // word 5, high byte
        copy[6 * 8 + 3] = 1; // word 6
        assert_eq!(
            changed_words(&before, &copy),
            vec![(6, 1 << 24), (5, 0x80 << 56), (0, 7)]
        );
    }

    #[test]
    fn a_control_page_section_rewrite_stores_its_state_word_last() {
        use shared_abi::handshake::{self, Side, BACKEND, FRONTEND, PAGE_LEN};
        // A page whose front-end section holds an offer (non-zero fields after the state).
        let mut page = vec![0u8; PAGE_LEN];
        page[FRONTEND.start] = 3;
        page[FRONTEND.start + 8..FRONTEND.start + 24].fill(0x11);
        page[BACKEND.start] = 3;
        let before: Vec<u64> = page
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mut copy = bytes_of(&before);
        handshake::mark_closed(&mut copy, Side::Frontend);
        let stores = changed_words(&before, &copy);
        let state_word = FRONTEND.start / 8;
        assert_eq!(stores.last().map(|&(i, _)| i), Some(state_word));
        // Nothing outside the front-end section is touched: the back-end's is the back-end's.
        assert!(stores
            .iter()
            .all(|&(i, _)| FRONTEND.contains(&(i * 8)) && FRONTEND.contains(&(i * 8 + 7))));
    }

    #[test]
    fn a_short_copy_or_page_stores_only_what_both_have() {
        assert_eq!(changed_words(&[0, 0], &[1u8; 24]).len(), 2);
        assert_eq!(
            changed_words(&[0, 0, 0], &[1u8; 12]),
            vec![(0, 0x0101_0101_0101_0101)]
        );
    }
}
