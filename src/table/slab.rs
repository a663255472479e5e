//! A vector of records addressed by `u32` index, with freed slots reused.

/// Records of type `T` at stable `u32` indexes. Freed indexes are reused
/// before the vector grows, so the slab's size follows the peak record
/// count; [`Slab::shrink`] gives back the free slots at its end.
pub(super) struct Slab<T> {
    records: Vec<T>,
    free: Vec<u32>,
    /// Which slots hold a record, one bit each: what `shrink` reads (and,
    /// in debug builds, what catches a use of a freed index in tests).
    occupied: Vec<u64>,
}

impl<T: Copy> Slab<T> {
    pub(super) fn new() -> Self {
        Slab {
            records: Vec::new(),
            free: Vec::new(),
            occupied: Vec::new(),
        }
    }

    /// Records currently stored.
    pub(super) fn len(&self) -> usize {
        self.records.len() - self.free.len()
    }

    /// Slots, stored records and free ones.
    pub(super) fn slots(&self) -> usize {
        self.records.len()
    }

    pub(super) fn insert(&mut self, record: T) -> u32 {
        let index = match self.free.pop() {
            Some(index) => {
                self.records[index as usize] = record;
                index
            }
            None => {
                let index = u32::try_from(self.records.len()).expect("slab index fits u32");
                assert!(index != u32::MAX, "u32::MAX is the end-of-list marker");
                self.records.push(record);
                if index % 64 == 0 {
                    self.occupied.push(0);
                }
                index
            }
        };
        self.occupied[index as usize / 64] |= 1 << (index % 64);
        index
    }

    pub(super) fn remove(&mut self, index: u32) -> T {
        self.debug_check(index);
        self.occupied[index as usize / 64] &= !(1 << (index % 64));
        self.free.push(index);
        self.records[index as usize]
    }

    #[inline]
    pub(super) fn get(&self, index: u32) -> &T {
        self.debug_check(index);
        &self.records[index as usize]
    }

    #[inline]
    pub(super) fn get_mut(&mut self, index: u32) -> &mut T {
        self.debug_check(index);
        &mut self.records[index as usize]
    }

    fn is_occupied(&self, index: usize) -> bool {
        self.occupied[index / 64] & (1 << (index % 64)) != 0
    }

    /// Gives back the free slots at the end (after a burst, all of them
    /// when the slab is empty), and the spare capacity. Stored records keep
    /// their indexes. Costs a pass over the free list.
    pub(super) fn shrink(&mut self) {
        let mut end = self.records.len();
        while end > 0 && !self.is_occupied(end - 1) {
            end -= 1;
        }
        if end < self.records.len() {
            self.records.truncate(end);
            self.occupied.truncate(end.div_ceil(64));
            self.free.retain(|&index| (index as usize) < end);
        }
        // Reuse the lowest slots first from now on, so that the end is
        // what empties next.
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        self.records.shrink_to_fit();
        self.free.shrink_to_fit();
        self.occupied.shrink_to_fit();
    }

    #[inline]
    fn debug_check(&self, _index: u32) {
        debug_assert!(
            self.is_occupied(_index as usize),
            "slab index {_index} is free"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrink_gives_back_the_free_end_and_keeps_indexes() {
        let mut slab = Slab::new();
        let indexes: Vec<u32> = (0..1000u32).map(|i| slab.insert(i)).collect();
        for &index in &indexes[10..] {
            slab.remove(index);
        }
        slab.remove(indexes[3]);
        slab.shrink();
        assert_eq!(slab.slots(), 10);
        assert_eq!(slab.len(), 9);
        for &index in indexes[..10].iter().filter(|&&i| i != 3) {
            assert_eq!(*slab.get(index), index);
        }
        // The hole is reused first, then the slab grows again.
        assert_eq!(slab.insert(77), 3);
        assert_eq!(slab.insert(78), 10);
        // Emptied, it holds nothing.
        for index in (0..11).filter(|&i| i != 3) {
            slab.remove(index);
        }
        slab.remove(3);
        slab.shrink();
        assert_eq!((slab.slots(), slab.len()), (0, 0));
        assert_eq!(slab.insert(5), 0);
    }
}
