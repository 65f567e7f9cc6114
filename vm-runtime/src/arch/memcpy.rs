//! The VMs' `memcpy`, in place of compiler_builtins' (whose symbol is weak): every
//! `copy_from_slice` of a length not known at compile time comes here, smoltcp's copies between
//! frames and socket buffers among them.
//!
//! Why (issue 11): the hypervisor's profiler found the guests of a TCP stream spending 55-63 %
//! of their samples in compiler_builtins' memcpy, in its path for mutually misaligned buffers,
//! which loads unaligned 8-byte words. QEMU runs unaligned loads through a slow helper on
//! `-cpu max` (FEAT_LSE2's atomicity rules), and a TCP stream's payload lands misaligned with
//! its socket buffer whenever the stream offset says so (iperf3's 37-byte cookie does it for
//! the whole test). Here every load and store is aligned: when the two sides disagree modulo
//! 8, each destination word is two aligned source words shifted together. And the co-aligned
//! bulk moves 64 bytes per round (`ldp`/`stp`), where compiler_builtins moves 8: under TCG each
//! round of a loop is a translated block of its own, and its dispatch costs more than its work.
//!
//! Lengths under [`SMALL`] are copied byte by byte: the set-up would cost more.
//!
//! **Where the loops sit** (issue 11). QEMU chains one translated block straight to the next
//! only within a guest page; a loop whose back branch and target lie on two pages goes through
//! QEMU's block lookup on every round. So the two word loops and `copy_raw` (with its byte
//! loops; the shared-memory copies call it too) are never inlined, and they and `memcpy` (the
//! VMs' only caller of it is the compiler's, by symbol) live in a section of their own,
//! `.text.copy_loops`, which `vm.ld` starts on a page boundary and holds to one page: no build
//! can put a copy loop across a page boundary by chance. A change elsewhere in the runtime had
//! moved the misaligned loop across one, and guest -> guest fell by a tenth in every run; a
//! page of padding before the code did not move it either way, since that kept every offset
//! within its page.

/// Copies shorter than this go byte by byte.
const SMALL: usize = 32;

/// `memcpy(dst, src, n)`: the C contract (the ranges do not overlap). Exported under that name
/// in VM images only (a host test binary keeps its libc's).
///
/// # Safety
/// `src` valid for `n` bytes of reads, `dst` for `n` bytes of writes, not overlapping.
#[cfg_attr(target_os = "none", no_mangle)]
#[cfg_attr(target_os = "none", link_section = ".text.copy_loops")]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract, which is `copy_raw`'s with the ranges apart.
    unsafe { copy_raw(dst as usize, src as usize, n) };
    dst
}

/// `n` bytes from address `s` to address `d` with aligned loads and stores only: bytes until
/// the destination is 8-aligned, whole words with [`aligned_words`] or [`shifted_words`], the
/// rest as bytes. The body of [`memcpy`], and the shared-memory copies' way (`crate::shared`)
/// for what their co-aligned blocks do not cover, including whole copies whose sides are not
/// co-aligned: it forms no reference and loads each source byte once (a misaligned source's
/// first and last aligned words are loaded whole; their other bytes are not used).
///
/// # Safety
/// `s` valid for `n` bytes of reads, `d` for `n` bytes of writes. If the ranges overlap (only
/// shared ranges a hostile peer named may), the bytes copied are unspecified and nothing else
/// goes wrong: raw loads and stores, no Rust reference.
#[inline(never)]
#[cfg_attr(target_os = "none", link_section = ".text.copy_loops")]
pub(crate) unsafe fn copy_raw(d: usize, s: usize, n: usize) {
    let mut done = 0;
    if n >= SMALL {
        // Bytes until the destination is 8-aligned (fewer than 8: `n >= SMALL`).
        while !(d + done).is_multiple_of(8) {
            // SAFETY: `done < n`: inside both ranges (the caller's contract).
            unsafe { byte(d + done, s + done) };
            done += 1;
        }
        let words = (n - done) / 8;
        let shift = (s + done) % 8;
        if shift == 0 {
            // SAFETY: `words` whole words from `done` lie inside both ranges; both sides are
            // 8-aligned.
            unsafe { aligned_words(d + done, s + done, words) };
        } else {
            // SAFETY: as above; the destination is 8-aligned, the source is not, and
            // `shifted_words` reads only the aligned words that hold source bytes.
            unsafe { shifted_words(d + done, s + done, words) };
        }
        done += words * 8;
    }
    while done < n {
        // SAFETY: `done < n`: inside both ranges.
        unsafe { byte(d + done, s + done) };
        done += 1;
    }
}

/// One byte. Volatile so that the compiler cannot turn a loop of them back into a call to
/// `memcpy`, this function.
///
/// # Safety
/// Both addresses valid (for reading at `s`, writing at `d`).
#[inline(always)]
unsafe fn byte(d: usize, s: usize) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::write_volatile(d as *mut u8, core::ptr::read_volatile(s as *const u8)) }
}

/// `words` 8-byte words from `s` to `d`, both 8-aligned: 64 bytes per round, then words. Also
/// the bulk loop of the shared-memory copies (`crate::shared`), which is why it reads each
/// source byte exactly once and forms no reference.
///
/// # Safety
/// Both ranges of `8 * words` bytes valid, 8-aligned. If they overlap (only shared ranges a
/// hostile peer named may), the bytes copied are unspecified, nothing else goes wrong: raw
/// loads and stores, no Rust reference.
#[cfg(target_arch = "aarch64")]
#[inline(never)]
#[cfg_attr(target_os = "none", link_section = ".text.copy_loops")]
pub(crate) unsafe fn aligned_words(d: usize, s: usize, words: usize) {
    let blocks = words / 8;
    let rest = words % 8;
    // SAFETY: the caller's contract; the first loop runs `blocks` times over 64 bytes and the
    // second `rest` times over 8, advancing both pointers: exactly `8 * words` bytes each side.
    // Only the named registers are clobbered; no stack.
    unsafe {
        core::arch::asm!(
            "cbz {blocks}, 3f",
            "2:",
            "ldp {a}, {b}, [{s}]",
            "ldp {c}, {e}, [{s}, #16]",
            "ldp {f}, {g}, [{s}, #32]",
            "ldp {h}, {i}, [{s}, #48]",
            "add {s}, {s}, #64",
            "stp {a}, {b}, [{d}]",
            "stp {c}, {e}, [{d}, #16]",
            "stp {f}, {g}, [{d}, #32]",
            "stp {h}, {i}, [{d}, #48]",
            "add {d}, {d}, #64",
            "subs {blocks}, {blocks}, #1",
            "b.ne 2b",
            "3:",
            "cbz {rest}, 5f",
            "4:",
            "ldr {a}, [{s}], #8",
            "str {a}, [{d}], #8",
            "subs {rest}, {rest}, #1",
            "b.ne 4b",
            "5:",
            s = inout(reg) s => _,
            d = inout(reg) d => _,
            blocks = inout(reg) blocks => _,
            rest = inout(reg) rest => _,
            a = out(reg) _,
            b = out(reg) _,
            c = out(reg) _,
            e = out(reg) _,
            f = out(reg) _,
            g = out(reg) _,
            h = out(reg) _,
            i = out(reg) _,
            options(nostack),
        );
    }
}

/// `words` 8-byte words from `s` (not 8-aligned) to `d` (8-aligned): each destination word is
/// the top of one aligned source word and the bottom of the next (little-endian), so every
/// load is aligned. 64 bytes per round (`ldp`/`stp`), as in [`aligned_words`]: a receiver's
/// copy into its socket buffer takes this path for a whole stream when the stream offset is
/// off (iperf3's cookie), and one word per round ran at about half the co-aligned speed. The
/// first aligned word starts before `s` and the last may end after the source's last byte:
/// bytes of the same aligned 8-byte word, so of the same page, never another mapping; they
/// are loaded, never used.
///
/// # Safety
/// `d` valid and 8-aligned for `8 * words` bytes of writes; `s` valid for `8 * words` bytes of
/// reads and not 8-aligned. If the ranges overlap (only shared ranges a hostile peer named
/// may), the bytes copied are unspecified, nothing else goes wrong: raw loads and stores.
#[cfg(target_arch = "aarch64")]
#[inline(never)]
#[cfg_attr(target_os = "none", link_section = ".text.copy_loops")]
unsafe fn shifted_words(d: usize, s: usize, words: usize) {
    if words == 0 {
        return;
    }
    let blocks = words / 8;
    let rest = words % 8;
    let right = (s % 8) * 8;
    let left = 64 - right;
    let base = s - s % 8;
    // SAFETY: the caller's contract. `a0` is the aligned word holding `s`. Each block round
    // loads the 8 aligned words after the one it carries (`base + 8` to `base + 64`, `ldp`
    // pairs) and stores 8 words at `d`, each the carried word's top and the next word's
    // bottom; each rest round does the same for one word. Round k (counting words) loads the
    // aligned word at `base + 8(k+1)`, which holds source bytes up to `s + 8(k+1) - 1` at
    // most (inside the source range for k < words); `words` rounds write exactly the
    // destination range. Registers as named; no stack.
    unsafe {
        core::arch::asm!(
            "ldr {a0}, [{base}]",
            "cbz {blocks}, 3f",
            "2:",
            "ldp {a1}, {a2}, [{base}, #8]",
            "ldp {a3}, {a4}, [{base}, #24]",
            "ldp {a5}, {a6}, [{base}, #40]",
            "ldp {a7}, {a8}, [{base}, #56]",
            "add {base}, {base}, #64",
            "lsr {a0}, {a0}, {right}",
            "lsl {t}, {a1}, {left}",
            "orr {a0}, {a0}, {t}",
            "lsr {a1}, {a1}, {right}",
            "lsl {t}, {a2}, {left}",
            "orr {a1}, {a1}, {t}",
            "lsr {a2}, {a2}, {right}",
            "lsl {t}, {a3}, {left}",
            "orr {a2}, {a2}, {t}",
            "lsr {a3}, {a3}, {right}",
            "lsl {t}, {a4}, {left}",
            "orr {a3}, {a3}, {t}",
            "lsr {a4}, {a4}, {right}",
            "lsl {t}, {a5}, {left}",
            "orr {a4}, {a4}, {t}",
            "lsr {a5}, {a5}, {right}",
            "lsl {t}, {a6}, {left}",
            "orr {a5}, {a5}, {t}",
            "lsr {a6}, {a6}, {right}",
            "lsl {t}, {a7}, {left}",
            "orr {a6}, {a6}, {t}",
            "lsr {a7}, {a7}, {right}",
            "lsl {t}, {a8}, {left}",
            "orr {a7}, {a7}, {t}",
            "stp {a0}, {a1}, [{d}]",
            "stp {a2}, {a3}, [{d}, #16]",
            "stp {a4}, {a5}, [{d}, #32]",
            "stp {a6}, {a7}, [{d}, #48]",
            "add {d}, {d}, #64",
            "mov {a0}, {a8}",
            "subs {blocks}, {blocks}, #1",
            "b.ne 2b",
            "3:",
            "cbz {rest}, 5f",
            "4:",
            "ldr {a1}, [{base}, #8]!",
            "lsr {a0}, {a0}, {right}",
            "lsl {t}, {a1}, {left}",
            "orr {a0}, {a0}, {t}",
            "str {a0}, [{d}], #8",
            "mov {a0}, {a1}",
            "subs {rest}, {rest}, #1",
            "b.ne 4b",
            "5:",
            base = inout(reg) base => _,
            d = inout(reg) d => _,
            blocks = inout(reg) blocks => _,
            rest = inout(reg) rest => _,
            right = in(reg) right,
            left = in(reg) left,
            a0 = out(reg) _,
            a1 = out(reg) _,
            a2 = out(reg) _,
            a3 = out(reg) _,
            a4 = out(reg) _,
            a5 = out(reg) _,
            a6 = out(reg) _,
            a7 = out(reg) _,
            a8 = out(reg) _,
            t = out(reg) _,
            options(nostack),
        );
    }
}

/// The host's stand-in (host tests run the same head, tail and dispatch).
///
/// # Safety
/// As on aarch64.
#[cfg(not(target_arch = "aarch64"))]
pub(crate) unsafe fn aligned_words(d: usize, s: usize, words: usize) {
    for k in 0..words {
        // SAFETY: the caller's contract; word `k` is inside both ranges, 8-aligned.
        unsafe {
            let w = core::ptr::read_volatile((s as *const u64).add(k));
            core::ptr::write_volatile((d as *mut u64).add(k), w);
        }
    }
}

/// The host's stand-in: the same shift-merge of aligned words.
///
/// # Safety
/// As on aarch64.
#[cfg(not(target_arch = "aarch64"))]
unsafe fn shifted_words(d: usize, s: usize, words: usize) {
    let right = (s % 8) * 8;
    let base = (s - s % 8) as *const u64;
    // SAFETY: as on aarch64: aligned words of the same 8-byte words as the source bytes.
    unsafe {
        let mut w0 = core::ptr::read_volatile(base);
        for k in 0..words {
            let w1 = core::ptr::read_volatile(base.add(k + 1));
            let t = (w0 >> right) | (w1 << (64 - right));
            core::ptr::write_volatile((d as *mut u64).add(k), t);
            w0 = w1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Copies `len` bytes from offset `from` of one buffer to offset `to` of another (both
    /// 16-aligned, with room around), and checks the range and the guards around it.
    fn check(from: usize, to: usize, len: usize) {
        let mut src = vec![0u64; 64];
        let mut dst = vec![0u64; 64];
        let src_bytes = src.as_mut_ptr() as *mut u8;
        let dst_bytes = dst.as_mut_ptr() as *mut u8;
        for i in 0..512 {
            // SAFETY: inside the 512-byte vectors.
            unsafe {
                *src_bytes.add(i) = (i as u8).wrapping_mul(7).wrapping_add(1);
                *dst_bytes.add(i) = 0xee;
            }
        }
        // Room: reads of the aligned words around the source stay inside `src`.
        let (from, to) = (8 + from, 8 + to);
        // SAFETY: both ranges inside their vectors, not overlapping.
        let r = unsafe { memcpy(dst_bytes.add(to), src_bytes.add(from), len) };
        assert_eq!(r as usize, dst_bytes as usize + to);
        for i in 0..512 {
            // SAFETY: inside the vectors.
            let (got, want) = unsafe {
                let want = if (to..to + len).contains(&i) {
                    *src_bytes.add(from + i - to)
                } else {
                    0xee
                };
                (*dst_bytes.add(i), want)
            };
            assert_eq!(got, want, "from {from} to {to} len {len}: byte {i}");
        }
    }

    #[test]
    fn every_alignment_pair_and_the_lengths_around_the_paths() {
        for from in 0..16 {
            for to in 0..16 {
                for len in [
                    0, 1, 7, 8, 31, 32, 33, 39, 40, 63, 64, 65, 71, 72, 127, 128, 129, 200, 300,
                ] {
                    check(from, to, len);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_copy_is_exact(from in 0usize..64, to in 0usize..64, len in 0usize..400) {
            check(from, to, len);
        }
    }
}
