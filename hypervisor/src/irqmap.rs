//! Device-tree interrupt specifiers the hypervisor needs to find its devices' interrupts: GICv3
//! three-cell specifiers (`<type number flags>`) and the PCI host bridge's `interrupt-map`, which
//! says which SPI a function's INTx pin raises.
//!
//! The device tree is firmware input and is treated as such: every lookup is bounds-checked and
//! answers `None` rather than guessing when cells are missing or malformed.

/// Specifier type cell: a shared peripheral interrupt (INTID = number + 32).
const GIC_SPI: u32 = 0;
/// Specifier type cell: a private peripheral interrupt (INTID = number + 16).
const GIC_PPI: u32 = 1;
/// Flags cell: level-sensitive, active high or low.
const IRQ_TYPE_LEVEL_MASK: u32 = 0b1100;

/// One GIC interrupt from a three-cell specifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GicIrq {
    pub intid: u32,
    pub level: bool,
}

/// Decodes a GICv3 `<type number flags>` specifier.
pub fn gic_irq(cells: [u32; 3]) -> Option<GicIrq> {
    let [kind, number, flags] = cells;
    let intid = match kind {
        GIC_SPI if number < 988 => number + 32,
        GIC_PPI if number < 16 => number + 16,
        _ => return None,
    };
    Some(GicIrq {
        intid,
        level: flags & IRQ_TYPE_LEVEL_MASK != 0,
    })
}

/// Big-endian cells of a property value (a trailing partial cell is ignored).
pub fn cells(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

/// The interrupt named `name` of a node with `interrupts` (three-cell GIC specifiers, as on the
/// virt machine) and `interrupt-names` (NUL-separated strings, in the same order).
pub fn named_irq(interrupts: &[u8], names: &[u8], name: &str) -> Option<GicIrq> {
    let index = names
        .split(|&b| b == 0)
        .position(|n| n == name.as_bytes())?;
    let all: alloc::vec::Vec<u32> = cells(interrupts).collect();
    let spec = all.get(index * 3..index * 3 + 3)?;
    gic_irq([spec[0], spec[1], spec[2]])
}

/// Looks up the GIC interrupt of PCI function `routing_id` (bus << 8 | devfn) for INTx `pin`
/// (1 = INTA .. 4 = INTD) in a host bridge's `interrupt-map` / `interrupt-map-mask`.
///
/// Each map entry is: child unit address (3 cells, the first holding bus/devfn in bits 23..8),
/// child pin (1 cell), parent phandle (1), parent unit address (`parent_address_cells`), parent
/// specifier (3 cells, GIC). The child address and pin are masked before comparing, which is how
/// QEMU's map repeats every four slots.
pub fn pci_intx(
    map: &[u8],
    mask: &[u8],
    parent_address_cells: usize,
    routing_id: u16,
    pin: u8,
) -> Option<GicIrq> {
    if !(1..=4).contains(&pin) || parent_address_cells > 3 {
        return None;
    }
    let mask: alloc::vec::Vec<u32> = cells(mask).collect();
    let &[mask_hi, mask_mid, mask_lo, mask_pin] = mask.as_slice() else {
        return None;
    };
    let child_hi = (routing_id as u32) << 8;
    let wanted = [child_hi & mask_hi, 0, 0, pin as u32 & mask_pin];
    let entry_cells = 3 + 1 + 1 + parent_address_cells + 3;
    let map: alloc::vec::Vec<u32> = cells(map).collect();
    map.chunks_exact(entry_cells).find_map(|entry| {
        let key = [
            entry[0] & mask_hi,
            entry[1] & mask_mid,
            entry[2] & mask_lo,
            entry[3] & mask_pin,
        ];
        if key != wanted {
            return None;
        }
        let spec = &entry[5 + parent_address_cells..];
        gic_irq([spec[0], spec[1], spec[2]])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(cells: &[u32]) -> Vec<u8> {
        cells.iter().flat_map(|c| c.to_be_bytes()).collect()
    }

    /// QEMU virt's map: slots 0..3 x pins 1..4, SPI 3 + (slot + pin - 1) % 4, level high.
    fn virt_map() -> (Vec<u8>, Vec<u8>) {
        let mut cells = Vec::new();
        for slot in 0..4u32 {
            for pin in 1..=4u32 {
                cells.extend([slot << 11, 0, 0, pin, 0x8002, 0, 0]);
                cells.extend([GIC_SPI, 3 + (slot + pin - 1) % 4, 4]);
            }
        }
        (be(&cells), be(&[0x1800, 0, 0, 7]))
    }

    #[test]
    fn finds_the_virt_machine_swizzle() {
        let (map, mask) = virt_map();
        // 00:02.0 INTA -> SPI 5 -> INTID 37, level.
        assert_eq!(
            pci_intx(&map, &mask, 2, 2 << 3, 1),
            Some(GicIrq {
                intid: 37,
                level: true
            })
        );
        // 00:06.0 repeats slot 2 (the mask keeps two slot bits); INTB shifts by one.
        assert_eq!(pci_intx(&map, &mask, 2, 6 << 3, 2).unwrap().intid, 38);
        // 00:01.0 INTD wraps: 3 + (1 + 3) % 4 = SPI 3.
        assert_eq!(pci_intx(&map, &mask, 2, 1 << 3, 4).unwrap().intid, 35);
    }

    #[test]
    fn refuses_malformed_input() {
        let (map, mask) = virt_map();
        assert_eq!(pci_intx(&map, &mask, 2, 2 << 3, 0), None, "pin 0 = no INTx");
        assert_eq!(pci_intx(&map, &mask, 2, 2 << 3, 5), None);
        assert_eq!(pci_intx(&map, &mask[..8], 2, 2 << 3, 1), None, "short mask");
        assert_eq!(pci_intx(&map[..20], &mask, 2, 2 << 3, 1), None, "cut map");
        assert_eq!(pci_intx(&map, &mask, 9, 2 << 3, 1), None);
    }

    #[test]
    fn decodes_gic_specifiers_and_names() {
        assert_eq!(
            gic_irq([0, 74, 1]),
            Some(GicIrq {
                intid: 106,
                level: false
            })
        );
        assert_eq!(gic_irq([1, 9, 4]).unwrap().intid, 25);
        assert_eq!(gic_irq([2, 0, 0]), None);
        assert_eq!(gic_irq([1, 16, 4]), None);
        let interrupts = be(&[0, 74, 1, 0, 75, 1, 0, 76, 1, 0, 77, 1]);
        let names = b"eventq\0priq\0cmdq-sync\0gerror\0";
        assert_eq!(named_irq(&interrupts, names, "gerror").unwrap().intid, 109);
        assert_eq!(named_irq(&interrupts, names, "eventq").unwrap().intid, 106);
        assert_eq!(named_irq(&interrupts, names, "nope"), None);
        assert_eq!(named_irq(&interrupts[..12], names, "gerror"), None);
    }
}
