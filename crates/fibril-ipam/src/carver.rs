//! Block carver: cuts `/mask_size` blocks out of a list of CIDRs. Shared by cluster-pool,
//! multi-pool and the kube-controller-manager-like host-scope allocator.
//!
//! It always hands out the lowest free block (CIDRs in list order, then address order),
//! so which block comes next depends only on which blocks are taken: an operator that
//! restores the same assignments after a restart makes the same choices.

use ipnet::Ipv4Net;

use crate::bitmap::{Bitmap, MAX_SLOTS};
use crate::error::{join_cidrs, IpamError};

#[derive(Debug, Clone)]
struct CarveRange {
    net: Ipv4Net,
    bitmap: Bitmap,
    /// No free block below this slot.
    hint: u32,
}

/// Free/taken bookkeeping of `/mask_size` blocks over a list of CIDRs.
#[derive(Debug, Clone)]
pub struct BlockCarver {
    mask_size: u8,
    ranges: Vec<CarveRange>,
}

/// Checks a CIDR list for a pool: mask size 1..=32 and not shorter than any prefix,
/// no host bits, no overlaps, not too many blocks.
pub fn validate_pool_cidrs(cidrs: &[Ipv4Net], mask_size: u8) -> Result<(), IpamError> {
    BlockCarver::new(cidrs, mask_size).map(|_| ())
}

impl BlockCarver {
    /// A carver with every block free.
    pub fn new(cidrs: &[Ipv4Net], mask_size: u8) -> Result<Self, IpamError> {
        if mask_size == 0 || mask_size > 32 {
            return Err(IpamError::InvalidMaskSize { mask_size });
        }
        let mut ranges: Vec<CarveRange> = Vec::with_capacity(cidrs.len());
        let mut total: u64 = 0;
        for &net in cidrs {
            if net.trunc() != net {
                return Err(IpamError::HostBitsSet {
                    cidr: net,
                    network: net.trunc(),
                });
            }
            if mask_size < net.prefix_len() {
                return Err(IpamError::MaskShorterThanPrefix {
                    mask_size,
                    cidr: net,
                    prefix: net.prefix_len(),
                });
            }
            if let Some(other) = ranges
                .iter()
                .find(|r| r.net.contains(&net) || net.contains(&r.net))
            {
                return Err(IpamError::Overlap {
                    cidr: net,
                    other: other.net,
                });
            }
            let blocks = 1u64 << (mask_size - net.prefix_len());
            total += blocks;
            if total > MAX_SLOTS {
                return Err(IpamError::TooLarge {
                    cidr: net,
                    mask_size,
                    slots: total,
                    limit: MAX_SLOTS,
                });
            }
            // blocks <= total <= MAX_SLOTS (2^24), fits in u32.
            ranges.push(CarveRange {
                net,
                bitmap: Bitmap::new(blocks as u32),
                hint: 0,
            });
        }
        Ok(Self { mask_size, ranges })
    }

    /// The block size.
    pub fn mask_size(&self) -> u8 {
        self.mask_size
    }

    /// The CIDRs blocks are carved from, in list order.
    pub fn cidrs(&self) -> Vec<Ipv4Net> {
        self.ranges.iter().map(|r| r.net).collect()
    }

    /// Blocks over all CIDRs.
    pub fn total_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| u64::from(r.bitmap.len())).sum()
    }

    /// Blocks taken.
    pub fn used_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| u64::from(r.bitmap.used())).sum()
    }

    /// Blocks still free.
    pub fn free_blocks(&self) -> u64 {
        self.total_blocks() - self.used_blocks()
    }

    /// Takes the lowest free block.
    pub fn allocate(&mut self) -> Option<Ipv4Net> {
        let mask = self.mask_size;
        for r in &mut self.ranges {
            if r.bitmap.is_full() {
                continue;
            }
            if let Some(slot) = r.bitmap.find_free_from(r.hint) {
                r.bitmap.set(slot);
                r.hint = slot + 1;
                return Some(block_at(r.net, mask, slot));
            }
        }
        None
    }

    /// Takes a specific block. Ok(false) if it was already taken.
    pub fn take(&mut self, block: Ipv4Net) -> Result<bool, IpamError> {
        let (ri, slot) = self.locate(block)?;
        let r = &mut self.ranges[ri];
        let fresh = r.bitmap.set(slot);
        if fresh && slot == r.hint {
            r.hint = slot + 1;
        }
        Ok(fresh)
    }

    /// Frees a block. Ok(false) if it was free already.
    pub fn free(&mut self, block: Ipv4Net) -> Result<bool, IpamError> {
        let (ri, slot) = self.locate(block)?;
        let r = &mut self.ranges[ri];
        let was = r.bitmap.clear(slot);
        if was && slot < r.hint {
            r.hint = slot;
        }
        Ok(was)
    }

    /// True if the block is taken.
    pub fn is_taken(&self, block: Ipv4Net) -> bool {
        self.locate(block)
            .is_ok_and(|(ri, slot)| self.ranges[ri].bitmap.get(slot))
    }

    /// Checks that `block` is a `/mask_size` block of one of the CIDRs.
    pub fn check_block(&self, block: Ipv4Net) -> Result<(), IpamError> {
        self.locate(block).map(|_| ())
    }

    /// Every taken block, in list order.
    pub fn taken(&self) -> Vec<Ipv4Net> {
        let mut out = Vec::new();
        for r in &self.ranges {
            for slot in 0..r.bitmap.len() {
                if r.bitmap.get(slot) {
                    out.push(block_at(r.net, self.mask_size, slot));
                }
            }
        }
        out
    }

    fn locate(&self, block: Ipv4Net) -> Result<(usize, u32), IpamError> {
        if block.prefix_len() == self.mask_size && block.trunc() == block {
            for (i, r) in self.ranges.iter().enumerate() {
                if r.net.contains(&block) {
                    let off = u32::from(block.network()) - u32::from(r.net.network());
                    let slot = if self.mask_size == 32 {
                        off
                    } else {
                        off >> (32 - self.mask_size)
                    };
                    return Ok((i, slot));
                }
            }
        }
        Err(IpamError::BlockOutsidePool {
            block,
            mask_size: self.mask_size,
            cidrs: join_cidrs(self.ranges.iter().map(|r| &r.net)),
        })
    }
}

fn block_at(net: Ipv4Net, mask: u8, slot: u32) -> Ipv4Net {
    let off = if mask == 32 {
        slot
    } else {
        slot << (32 - mask)
    };
    let addr = u32::from(net.network()) + off;
    // mask is 1..=32, validated in BlockCarver::new.
    Ipv4Net::new(addr.into(), mask).unwrap_or(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn seed_two_28s_with_29_blocks() {
        let mut c = BlockCarver::new(&[net("172.20.42.0/28"), net("172.20.84.0/28")], 29).unwrap();
        assert_eq!(c.total_blocks(), 4);
        let got: Vec<_> = (0..3).map(|_| c.allocate().unwrap()).collect();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![
                net("172.20.42.0/29"),
                net("172.20.42.8/29"),
                net("172.20.84.0/29")
            ]
        );
        assert_eq!(c.allocate(), Some(net("172.20.84.8/29")));
        assert_eq!(c.allocate(), None);
        assert!(c.free(net("172.20.42.8/29")).unwrap());
        assert_eq!(c.allocate(), Some(net("172.20.42.8/29")));
    }

    #[test]
    fn validation_messages_name_the_value() {
        let e = BlockCarver::new(&[net("10.0.0.0/24")], 16).unwrap_err();
        assert!(
            e.to_string().contains("10.0.0.0/24") && e.to_string().contains("16"),
            "{e}"
        );
        let e = BlockCarver::new(&[net("10.0.0.0/16"), net("10.0.5.0/24")], 26).unwrap_err();
        assert_eq!(e.to_string(), "CIDR 10.0.5.0/24 overlaps 10.0.0.0/16");
        let e = BlockCarver::new(&[net("10.0.0.0/16")], 33).unwrap_err();
        assert!(matches!(e, IpamError::InvalidMaskSize { mask_size: 33 }));
        let e = BlockCarver::new(&[net("10.0.0.1/16")], 24).unwrap_err();
        assert!(e.to_string().contains("10.0.0.1/16"), "{e}");
        let e = BlockCarver::new(&[net("10.0.0.0/7")], 32).unwrap_err();
        assert!(matches!(e, IpamError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn take_free_and_locate() {
        let mut c = BlockCarver::new(&[net("10.244.0.0/16")], 24).unwrap();
        assert!(c.take(net("10.244.0.0/24")).unwrap());
        assert!(!c.take(net("10.244.0.0/24")).unwrap());
        assert_eq!(c.allocate(), Some(net("10.244.1.0/24")));
        assert!(c.take(net("10.244.7.0/23")).is_err());
        assert!(c.take(net("10.245.0.0/24")).is_err());
        assert!(c.is_taken(net("10.244.1.0/24")));
        assert_eq!(c.taken(), vec![net("10.244.0.0/24"), net("10.244.1.0/24")]);
        let mut c32 = BlockCarver::new(&[net("10.0.0.0/30")], 32).unwrap();
        assert_eq!(c32.allocate(), Some(net("10.0.0.0/32")));
        assert!(c32.take(net("10.0.0.3/32")).unwrap());
    }
}
