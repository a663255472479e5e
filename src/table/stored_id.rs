//! Ids stored inline in a fixed number of bytes, or spilled to the heap.

/// An id of up to `N` bytes stored inline; a longer one is kept in a
/// [`Spill`] and this holds its index. `N + 1` bytes in all, alignment 1.
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct StoredId<const N: usize> {
    len: u8,
    /// The id when `len <= N`; otherwise the spill index in the first four
    /// bytes, little-endian.
    bytes: [u8; N],
}

impl<const N: usize> StoredId<N> {
    const ROOM_FOR_SPILL_INDEX: () = assert!(N >= 4);

    pub(super) fn new(id: &[u8], spill: &mut Spill) -> Self {
        let () = Self::ROOM_FOR_SPILL_INDEX;
        let len = u8::try_from(id.len()).expect("id lengths are checked at ingress");
        let mut bytes = [0; N];
        if id.len() <= N {
            bytes[..id.len()].copy_from_slice(id);
        } else {
            bytes[..4].copy_from_slice(&spill.insert(id).to_le_bytes());
        }
        StoredId { len, bytes }
    }

    #[inline]
    pub(super) fn bytes<'a>(&'a self, spill: &'a Spill) -> &'a [u8] {
        let len = self.len as usize;
        if len <= N {
            &self.bytes[..len]
        } else {
            spill.get(self.spill_index())
        }
    }

    /// Releases the spilled bytes, if any. The id must not be used after.
    pub(super) fn free(self, spill: &mut Spill) {
        if self.len as usize > N {
            spill.remove(self.spill_index());
        }
    }

    fn spill_index(&self) -> u32 {
        u32::from_le_bytes(self.bytes[..4].try_into().expect("4 bytes"))
    }
}

/// Heap blocks for ids too long to store inline.
#[derive(Default)]
pub(super) struct Spill {
    blocks: Vec<Box<[u8]>>,
    free: Vec<u32>,
}

impl Spill {
    fn insert(&mut self, id: &[u8]) -> u32 {
        let block: Box<[u8]> = id.into();
        match self.free.pop() {
            Some(index) => {
                self.blocks[index as usize] = block;
                index
            }
            None => {
                self.blocks.push(block);
                u32::try_from(self.blocks.len() - 1).expect("spill index fits u32")
            }
        }
    }

    fn get(&self, index: u32) -> &[u8] {
        &self.blocks[index as usize]
    }

    fn remove(&mut self, index: u32) {
        self.blocks[index as usize] = Box::default();
        self.free.push(index);
    }

    /// Gives back the free entries at the end (all of them when empty).
    pub(super) fn shrink(&mut self) {
        let mut end = self.blocks.len();
        while end > 0 && self.blocks[end - 1].is_empty() {
            end -= 1;
        }
        if end < self.blocks.len() {
            self.blocks.truncate(end);
            self.free.retain(|&index| (index as usize) < end);
        }
        self.blocks.shrink_to_fit();
        self.free.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_stay_inline_long_ids_spill() {
        let mut spill = Spill::default();
        let short = StoredId::<15>::new(b"phone", &mut spill);
        let exact = StoredId::<15>::new(&[7; 15], &mut spill);
        let long = StoredId::<15>::new(&[9; 200], &mut spill);
        assert_eq!(spill.blocks.len(), 1);
        assert_eq!(short.bytes(&spill), b"phone");
        assert_eq!(exact.bytes(&spill), &[7; 15]);
        assert_eq!(long.bytes(&spill), &[9; 200][..]);
        long.free(&mut spill);
        let again = StoredId::<15>::new(&[3; 16], &mut spill);
        assert_eq!(spill.blocks.len(), 1, "freed block reused");
        assert_eq!(again.bytes(&spill), &[3; 16]);
        assert_eq!(std::mem::size_of::<StoredId<15>>(), 16);
        assert_eq!(std::mem::size_of::<StoredId<23>>(), 24);
    }
}
