/// Hands out KV block ids and takes them back. Every block handed out must come back:
/// `in_use()` reaching zero after all work is the invariant tests check.
#[derive(Debug)]
pub struct BlockAllocator {
    free: Vec<u32>,
    total: usize,
}

impl BlockAllocator {
    pub fn new(total: usize) -> Self {
        // Reverse so block 0 is handed out first; purely cosmetic for debugging.
        Self {
            free: (0..total as u32).rev().collect(),
            total,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    pub fn in_use(&self) -> usize {
        self.total - self.free.len()
    }

    /// Takes `n` blocks, or none if fewer than `n` are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free.len() {
            return None;
        }
        let at = self.free.len() - n;
        Some(self.free.split_off(at))
    }

    pub fn release(&mut self, blocks: impl IntoIterator<Item = u32>) {
        self.free.extend(blocks);
        debug_assert!(self.free.len() <= self.total, "a KV block was freed twice");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_and_release_balance() {
        let mut a = BlockAllocator::new(8);
        let x = a.allocate(5).unwrap();
        assert_eq!(a.in_use(), 5);
        assert!(
            a.allocate(4).is_none(),
            "over-allocation must fail without taking blocks"
        );
        assert_eq!(a.in_use(), 5);
        let y = a.allocate(3).unwrap();
        let mut all: Vec<u32> = x.iter().chain(&y).copied().collect();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        a.release(x);
        a.release(y);
        assert_eq!(a.in_use(), 0);
    }
}
