//! A vector of records addressed by `u32` index, with freed slots reused.

/// Records of type `T` at stable `u32` indexes. Freed indexes are reused
/// before the vector grows, so the slab's size follows the peak record count.
pub(super) struct Slab<T> {
    records: Vec<T>,
    free: Vec<u32>,
    /// Which slots hold a record; only kept in debug builds, to catch a use
    /// of a freed index in tests.
    #[cfg(debug_assertions)]
    occupied: Vec<bool>,
}

impl<T: Copy> Slab<T> {
    pub(super) fn new() -> Self {
        Slab {
            records: Vec::new(),
            free: Vec::new(),
            #[cfg(debug_assertions)]
            occupied: Vec::new(),
        }
    }

    /// Records currently stored.
    pub(super) fn len(&self) -> usize {
        self.records.len() - self.free.len()
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
                #[cfg(debug_assertions)]
                self.occupied.push(false);
                index
            }
        };
        #[cfg(debug_assertions)]
        {
            self.occupied[index as usize] = true;
        }
        index
    }

    pub(super) fn remove(&mut self, index: u32) -> T {
        self.debug_check(index);
        #[cfg(debug_assertions)]
        {
            self.occupied[index as usize] = false;
        }
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

    #[inline]
    fn debug_check(&self, _index: u32) {
        #[cfg(debug_assertions)]
        assert!(
            self.occupied[_index as usize],
            "slab index {_index} is free"
        );
    }
}
