//! Dense bitmap of slots (addresses of a CIDR, or blocks of a pool CIDR) with a used count,
//! so "is it full" is O(1) and "next free" skips 64 taken slots per word.

/// Most slots one bitmap may hold (2 MiB of bits); bigger ranges are rejected up front.
pub(crate) const MAX_SLOTS: u64 = 1 << 24;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bitmap {
    words: Vec<u64>,
    len: u32,
    used: u32,
}

impl Bitmap {
    /// `len` must be at most [`MAX_SLOTS`]; callers check this and report the CIDR.
    pub(crate) fn new(len: u32) -> Self {
        let n = (len as usize).div_ceil(64);
        Self {
            words: vec![0; n],
            len,
            used: 0,
        }
    }

    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    pub(crate) fn used(&self) -> u32 {
        self.used
    }

    pub(crate) fn is_full(&self) -> bool {
        self.used >= self.len
    }

    pub(crate) fn get(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1u64 << (i % 64)) != 0
    }

    /// Marks slot `i` used; false if it was already used or out of range.
    pub(crate) fn set(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let w = &mut self.words[(i / 64) as usize];
        let bit = 1u64 << (i % 64);
        if *w & bit != 0 {
            return false;
        }
        *w |= bit;
        self.used += 1;
        true
    }

    /// Marks slot `i` free; false if it was already free or out of range.
    pub(crate) fn clear(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let w = &mut self.words[(i / 64) as usize];
        let bit = 1u64 << (i % 64);
        if *w & bit == 0 {
            return false;
        }
        *w &= !bit;
        self.used -= 1;
        true
    }

    /// First free slot at or after `start`, wrapping around to the beginning.
    pub(crate) fn find_free_from(&self, start: u32) -> Option<u32> {
        if self.is_full() {
            return None;
        }
        let start = if start >= self.len { 0 } else { start };
        self.scan(start, self.len).or_else(|| self.scan(0, start))
    }

    /// First free slot in `[from, to)`.
    fn scan(&self, from: u32, to: u32) -> Option<u32> {
        if from >= to {
            return None;
        }
        let mut wi = (from / 64) as usize;
        // Bits below `from` in the first word count as taken.
        let mut word = self.words[wi] | ((1u64 << (from % 64)) - 1);
        loop {
            if word != u64::MAX {
                let i = (wi as u32) * 64 + (!word).trailing_zeros();
                return (i < to).then_some(i);
            }
            wi += 1;
            if wi >= self.words.len() || (wi as u32) * 64 >= to {
                return None;
            }
            word = self.words[wi];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_find() {
        let mut b = Bitmap::new(130);
        assert_eq!(b.find_free_from(0), Some(0));
        for i in 0..130 {
            assert!(b.set(i));
        }
        assert!(!b.set(5));
        assert!(b.is_full());
        assert_eq!(b.find_free_from(7), None);
        assert!(b.clear(3));
        assert_eq!(b.find_free_from(100), Some(3));
        assert!(b.clear(129));
        assert_eq!(b.find_free_from(4), Some(129));
        assert_eq!(b.find_free_from(500), Some(3));
        assert!(!b.clear(129));
        assert!(!b.set(130));
        assert_eq!(b.used(), 128);
    }

    #[test]
    fn tail_bits_never_returned() {
        let mut b = Bitmap::new(3);
        for _ in 0..3 {
            let i = b.find_free_from(0).unwrap();
            assert!(b.set(i));
        }
        assert_eq!(b.find_free_from(0), None);
        assert_eq!(b.find_free_from(2), None);
    }
}
