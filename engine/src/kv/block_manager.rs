//! Ownership of KV blocks: reference counts (so choices of one request share their prompt's
//! blocks), and the prefix cache: full blocks are named by a hash chain over their tokens,
//! salted per tenant, and freed cached blocks stay findable until reused, oldest first.
//! Free blocks that hold no cached prefix are reused first, the most recently freed first:
//! that evicts nothing, and keeps the memory a running server touches (its pages, the CPU's
//! caches) as small as its load, instead of walking the whole pool.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// Identity of a full block: its tokens, everything before it (the parent's hash) and a salt.
pub type BlockHash = u64;

/// The hash of a full block whose parent has hash `parent` (the salt's hash for the first).
pub fn chain_hash(parent: BlockHash, tokens: &[u32]) -> BlockHash {
    let mut h = std::hash::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// The root of a hash chain: tenants with different salts never share cache entries.
pub fn salt_hash(salt: Option<&str>) -> BlockHash {
    keyed_salt_hash(&[], salt)
}

/// The root of a tenant's hash chain, keyed with a server secret: without the key nobody can
/// compute another tenant's cache keys from its name.
pub fn keyed_salt_hash(key: &[u8], salt: Option<&str>) -> BlockHash {
    let mut h = std::hash::DefaultHasher::new();
    "rosetta-kv-prefix".hash(&mut h);
    key.hash(&mut h);
    salt.hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone, Default)]
struct BlockMeta {
    refs: u32,
    /// Set while the block is registered in the prefix cache.
    cached: Option<(BlockHash, Vec<u32>)>,
    /// Position in the free LRU while `refs == 0`.
    free_tick: Option<u64>,
}

/// Counters for metrics: prefix-cache lookups in tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    pub queried_tokens: u64,
    pub hit_tokens: u64,
}

#[derive(Debug)]
pub struct BlockManager {
    meta: Vec<BlockMeta>,
    /// Free blocks holding a cached prefix, by the time they were freed; when no plain block
    /// is free, the oldest is reused (evicted) first.
    free: BTreeMap<u64, u32>,
    /// Free blocks holding nothing cached; the last pushed is reused first.
    plain: Vec<u32>,
    tick: u64,
    cache: HashMap<BlockHash, u32>,
    block_size: usize,
    prefix_caching: bool,
    stats: PrefixStats,
}

impl BlockManager {
    pub fn new(total: usize, block_size: usize, prefix_caching: bool) -> Self {
        let mut m = Self {
            meta: vec![BlockMeta::default(); total],
            free: BTreeMap::new(),
            plain: Vec::with_capacity(total),
            tick: 0,
            cache: HashMap::new(),
            block_size,
            prefix_caching,
            stats: PrefixStats::default(),
        };
        // Block 0 first.
        m.plain.extend((0..total as u32).rev());
        m
    }

    pub fn total(&self) -> usize {
        self.meta.len()
    }

    /// Blocks that can be handed out now (free, whether or not they still hold a cached prefix).
    pub fn free_count(&self) -> usize {
        self.free.len() + self.plain.len()
    }

    /// Blocks referenced by at least one sequence.
    pub fn in_use(&self) -> usize {
        self.meta.len() - self.free_count()
    }

    pub fn stats(&self) -> PrefixStats {
        self.stats
    }

    fn push_free(&mut self, b: u32) {
        if self.meta[b as usize].cached.is_none() {
            self.plain.push(b);
            return;
        }
        self.tick += 1;
        self.free.insert(self.tick, b);
        self.meta[b as usize].free_tick = Some(self.tick);
    }

    fn take_free(&mut self, b: u32) {
        if let Some(t) = self.meta[b as usize].free_tick.take() {
            self.free.remove(&t);
        }
    }

    /// Takes `n` fresh blocks (refcount 1): plain ones first, then evicting the least
    /// recently freed cached blocks as needed; none if fewer than `n` are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free_count() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let b = match self.plain.pop() {
                Some(b) => b,
                None => self.free.pop_first()?.1,
            };
            let meta = &mut self.meta[b as usize];
            meta.free_tick = None;
            meta.refs = 1;
            if let Some((hash, _)) = meta.cached.take() {
                if self.cache.get(&hash) == Some(&b) {
                    self.cache.remove(&hash);
                }
            }
            out.push(b);
        }
        Some(out)
    }

    /// Adds a reference to each block (a forked choice sharing them).
    pub fn share(&mut self, blocks: &[u32]) {
        for &b in blocks {
            self.meta[b as usize].refs += 1;
        }
    }

    pub fn refs(&self, block: u32) -> u32 {
        self.meta[block as usize].refs
    }

    /// Drops one reference to each block; unreferenced blocks become free (cached ones stay
    /// findable until reused).
    pub fn release(&mut self, blocks: &[u32]) {
        // Free in reverse so a sequence's tail is evicted before its shared prefix.
        for &b in blocks.iter().rev() {
            let meta = &mut self.meta[b as usize];
            debug_assert!(meta.refs > 0, "block {b} released twice");
            meta.refs = meta.refs.saturating_sub(1);
            if meta.refs == 0 {
                self.push_free(b);
            }
        }
    }

    /// Finds the longest cached run of full blocks at the start of `tokens` (never the whole
    /// prompt: its last token must be computed to get logits), takes a reference to each,
    /// and returns them with the hash of the last (`salt` when there is none).
    pub fn lookup_prefix(&mut self, salt: BlockHash, tokens: &[u32]) -> (Vec<u32>, BlockHash) {
        if !self.prefix_caching {
            return (Vec::new(), salt);
        }
        let usable = tokens.len().saturating_sub(1) / self.block_size;
        self.stats.queried_tokens += (usable * self.block_size) as u64;
        let mut parent = salt;
        let mut hits = Vec::new();
        for chunk in tokens.chunks_exact(self.block_size).take(usable) {
            let hash = chain_hash(parent, chunk);
            let Some(&b) = self.cache.get(&hash) else {
                break;
            };
            // Guard against hash collisions: the tokens must really match.
            if self.meta[b as usize]
                .cached
                .as_ref()
                .map(|(_, t)| t.as_slice())
                != Some(chunk)
            {
                break;
            }
            hits.push(b);
            parent = hash;
        }
        for &b in &hits {
            if self.meta[b as usize].refs == 0 {
                self.take_free(b);
            }
            self.meta[b as usize].refs += 1;
        }
        self.stats.hit_tokens += (hits.len() * self.block_size) as u64;
        (hits, parent)
    }

    /// Registers a block that has just become full, so later prompts can reuse it. Returns
    /// its hash, the parent of the next block.
    pub fn register_full(&mut self, block: u32, parent: BlockHash, tokens: &[u32]) -> BlockHash {
        let hash = chain_hash(parent, tokens);
        if self.prefix_caching && self.meta[block as usize].cached.is_none() {
            self.cache.entry(hash).or_insert(block);
            self.meta[block as usize].cached = Some((hash, tokens.to_vec()));
        }
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcounts_and_lru_reuse() {
        let mut m = BlockManager::new(4, 2, true);
        let a = m.allocate(2).unwrap();
        m.share(&a);
        m.release(&a);
        assert_eq!(m.in_use(), 2, "still referenced once");
        m.release(&a);
        assert_eq!(m.in_use(), 0);
        assert!(m.allocate(5).is_none());
        assert_eq!(m.allocate(4).unwrap().len(), 4);
    }

    #[test]
    fn prefix_hits_follow_the_chain_and_salt() {
        let mut m = BlockManager::new(8, 2, true);
        let salt = salt_hash(Some("tenant-a"));
        let tokens = [1, 2, 3, 4, 5];
        let blocks = m.allocate(3).unwrap();
        let h0 = m.register_full(blocks[0], salt, &tokens[0..2]);
        m.register_full(blocks[1], h0, &tokens[2..4]);
        m.release(&blocks);
        // Same prompt, same tenant: both full blocks hit, even though they were freed.
        let (hits, last) = m.lookup_prefix(salt, &tokens);
        assert_eq!(hits, blocks[..2]);
        assert_eq!(last, chain_hash(h0, &tokens[2..4]));
        assert_eq!(m.stats().hit_tokens, 4);
        m.release(&hits);
        // Another tenant never sees them.
        assert!(m
            .lookup_prefix(salt_hash(Some("tenant-b")), &tokens)
            .0
            .is_empty());
        // A prompt that is exactly the cached blocks keeps its last token to compute.
        assert_eq!(m.lookup_prefix(salt, &tokens[..4]).0.len(), 1);
    }

    /// A plain freed block is reused before any never-used block, and before a cached one is
    /// evicted.
    #[test]
    fn plain_blocks_are_reused_most_recent_first_before_evicting() {
        let mut m = BlockManager::new(6, 2, true);
        let salt = salt_hash(None);
        let a = m.allocate(3).unwrap();
        assert_eq!(a, [0, 1, 2], "never-used blocks in order");
        m.register_full(a[0], salt, &[7, 8]);
        m.release(&a);
        // 1 and 2 hold nothing cached: reused at once, the last freed (1: release walks the
        // sequence backwards) first; then the never-used 3, 4, 5; the cached 0 last.
        assert_eq!(m.allocate(5).unwrap(), [1, 2, 3, 4, 5]);
        assert_eq!(m.lookup_prefix(salt, &[7, 8, 9]).0, [0], "still cached");
        assert!(m.allocate(1).is_none());
    }

    #[test]
    fn eviction_forgets_cached_blocks() {
        let mut m = BlockManager::new(2, 2, true);
        let salt = salt_hash(None);
        let b = m.allocate(1).unwrap();
        m.register_full(b[0], salt, &[7, 8]);
        m.release(&b);
        let all = m.allocate(2).unwrap();
        m.release(&all);
        assert!(
            m.lookup_prefix(salt, &[7, 8, 9]).0.is_empty(),
            "reused block must leave the cache"
        );
    }
}
