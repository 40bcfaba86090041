//! The KV cache manager: each sequence's blocks over the shared block pool. Prefix hits when a
//! sequence is admitted, room for its next tokens (copying a shared, partly filled last block
//! first: copy on write), full blocks registered as reusable prefixes, and blocks given back
//! when a sequence ends or is preempted.

use super::sequence::Sequence;
use crate::kv::{BlockManager, PrefixStats};
use crate::model::BlockCopy;

pub struct KvCacheManager {
    blocks: BlockManager,
    block_size: usize,
    /// Copy-on-write copies decided while scheduling, made at the start of the next pass.
    copies: Vec<BlockCopy>,
}

impl KvCacheManager {
    pub fn new(blocks: BlockManager, block_size: usize) -> Self {
        Self {
            blocks,
            block_size,
            copies: Vec::new(),
        }
    }

    /// A sequence about to be admitted with nothing computed takes the cached blocks of its
    /// longest cached prefix.
    pub fn attach_prefix(&mut self, seq: &mut Sequence) {
        if seq.computed == 0 && seq.blocks.is_empty() {
            let (hits, last_hash) = self.blocks.lookup_prefix(seq.salt, &seq.tokens);
            seq.computed = hits.len() * self.block_size;
            seq.hashed_blocks = hits.len();
            seq.last_hash = last_hash;
            seq.blocks = hits;
        }
    }

    /// Fresh blocks `seq` needs for its next `len` tokens (not counting a copy on write).
    pub fn blocks_needed(&self, seq: &Sequence, len: usize) -> usize {
        (seq.computed + len)
            .div_ceil(self.block_size)
            .saturating_sub(seq.blocks.len())
    }

    /// Gives `seq` blocks for its next `len` tokens, copying a shared partly filled last
    /// block first. False, changing nothing, if blocks are short.
    pub fn reserve(&mut self, seq: &mut Sequence, len: usize) -> bool {
        let bs = self.block_size;
        let fresh = self.blocks_needed(seq, len);
        let start = seq.computed;
        let cow = !start.is_multiple_of(bs) && self.blocks.refs(seq.blocks[start / bs]) > 1;
        let needed = fresh + usize::from(cow);
        if needed > self.blocks.free_count() {
            return false;
        }
        let Some(mut new) = self.blocks.allocate(needed) else {
            return false;
        };
        if cow {
            let shared = seq.blocks[start / bs];
            let copy = new.pop().expect("allocated above");
            self.copies.push(BlockCopy {
                src: shared,
                dst: copy,
                slots: start % bs,
            });
            self.blocks.release(&[shared]);
            seq.blocks[start / bs] = copy;
        }
        seq.blocks.extend(new);
        true
    }

    /// Gives a sequence's blocks back (they stay cached as prefixes where registered).
    pub fn free(&mut self, seq: &Sequence) {
        self.blocks.release(&seq.blocks);
    }

    /// Takes a preempted or unadmitted sequence's blocks back; it will be recomputed.
    pub fn free_for_recompute(&mut self, seq: &mut Sequence) {
        self.blocks.release(&seq.blocks);
        seq.reset_for_recompute();
    }

    /// A fork shares its parent's blocks.
    pub fn share(&mut self, fork: &Sequence) {
        self.blocks.share(&fork.blocks);
    }

    /// Registers the blocks `seq` has newly filled as reusable prefixes.
    pub fn register_computed(&mut self, seq: &mut Sequence) {
        let bs = self.block_size;
        while (seq.hashed_blocks + 1) * bs <= seq.computed {
            let h = seq.hashed_blocks;
            seq.last_hash = self.blocks.register_full(
                seq.blocks[h],
                seq.last_hash,
                &seq.tokens[h * bs..(h + 1) * bs],
            );
            seq.hashed_blocks += 1;
        }
    }

    /// The copies the next pass must make first.
    pub fn take_copies(&mut self) -> Vec<BlockCopy> {
        std::mem::take(&mut self.copies)
    }

    pub fn free_count(&self) -> usize {
        self.blocks.free_count()
    }

    pub fn in_use(&self) -> usize {
        self.blocks.in_use()
    }

    pub fn total(&self) -> usize {
        self.blocks.total()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn stats(&self) -> PrefixStats {
        self.blocks.stats()
    }
}
