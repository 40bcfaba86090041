//! Continuous batching, after vLLM's scheduler: every step runs the decodes of all running
//! sequences plus as much prefill as the token budget allows (long prompts in chunks), in one
//! forward pass. KV blocks are taken as sequences grow; when they run out, the lowest-priority,
//! newest sequence gives its blocks back and is recomputed later (preemption by recompute).
//! Waiting sequences are admitted by tier, then fairly across tenants, then oldest first.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedReceiver;

use super::sequence::{Group, Sequence};
use super::{NativeEngineConfig, Submission};
use crate::kv::{salt_hash, BlockManager};
use crate::model::{BlockCopy, ModelRunner, SeqChunk};
use crate::text::ModelTokenizer;
use crate::{EngineError, EngineLoad, GenerateEvent};

pub struct Worker {
    model: Box<dyn ModelRunner>,
    tokenizer: Arc<ModelTokenizer>,
    blocks: BlockManager,
    /// Copy-on-write copies decided while scheduling, done at the start of the next pass.
    copies: Vec<BlockCopy>,
    config: NativeEngineConfig,
    waiting: Vec<Sequence>,
    /// Kept sorted by (priority, arrival) at the start of each step: the front is served
    /// first, the back is preempted first.
    running: Vec<Sequence>,
    groups: HashMap<u64, Group>,
    next_group: u64,
    next_arrival: u64,
    preemptions: u64,
    /// Start-time fair queuing across tenants: each tenant's finish tag, and the virtual time.
    tenant_finish: HashMap<Arc<str>, u64>,
    virtual_time: u64,
    load: Arc<Mutex<EngineLoad>>,
}

/// One scheduled piece of work: `len` tokens of `running[seq]`.
#[derive(Debug, Clone, Copy)]
struct Scheduled {
    seq: usize,
    len: usize,
}

impl Worker {
    pub fn new(
        model: Box<dyn ModelRunner>,
        tokenizer: Arc<ModelTokenizer>,
        blocks: BlockManager,
        config: NativeEngineConfig,
        load: Arc<Mutex<EngineLoad>>,
    ) -> Self {
        Self {
            model,
            tokenizer,
            blocks,
            copies: Vec::new(),
            config,
            waiting: Vec::new(),
            running: Vec::new(),
            groups: HashMap::new(),
            next_group: 0,
            next_arrival: 0,
            preemptions: 0,
            tenant_finish: HashMap::new(),
            virtual_time: 0,
            load,
        }
    }

    pub fn run(&mut self, mut rx: UnboundedReceiver<Submission>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.blocking_recv() {
                    Some(s) => self.accept(s),
                    None => break,
                }
            }
            while let Ok(s) = rx.try_recv() {
                self.accept(s);
            }
            self.abort_gone_and_late();
            let plan = self.schedule();
            if plan.is_empty() {
                if self.running.is_empty() && !self.waiting.is_empty() {
                    // Cannot happen while one full context fits the pool (checked at start);
                    // fail rather than spin.
                    self.fail_waiting_head();
                }
            } else {
                self.execute(&plan);
            }
            self.publish_load();
        }
        tracing::debug!("engine loop stopped");
    }

    fn accept(&mut self, sub: Submission) {
        let request = Arc::new(sub.request);
        let id = self.next_group;
        self.next_group += 1;
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        let salt = salt_hash(request.tenant.as_deref());
        self.waiting.push(Sequence::new(
            id,
            0,
            arrival,
            &request,
            salt,
            &self.tokenizer,
        ));
        self.groups.insert(id, Group::new(request, sub.events));
    }

    /// Frees every sequence of requests whose client has gone or whose deadline has passed.
    fn abort_gone_and_late(&mut self) {
        let now = Instant::now();
        let mut gone = HashSet::new();
        for (&id, g) in &self.groups {
            if g.events.is_closed() {
                gone.insert(id);
            } else if g.deadline.is_some_and(|d| now >= d) {
                g.send(Err(EngineError::DeadlineExceeded));
                gone.insert(id);
            }
        }
        if !gone.is_empty() {
            self.drop_groups(&gone);
        }
    }

    /// Removes every sequence of these requests, returning their blocks.
    fn drop_groups(&mut self, ids: &HashSet<u64>) {
        for seq in self
            .running
            .iter()
            .chain(&self.waiting)
            .filter(|s| ids.contains(&s.group))
        {
            self.blocks.release(&seq.blocks);
        }
        self.running.retain(|s| !ids.contains(&s.group));
        self.waiting.retain(|s| !ids.contains(&s.group));
        self.groups.retain(|id, _| !ids.contains(id));
    }

    fn schedule(&mut self) -> Vec<Scheduled> {
        let bs = self.config.block_size;
        let mut budget = self.config.max_num_batched_tokens;
        let mut plan = Vec::new();
        self.running
            .sort_by_key(|s| (s.priority, s.arrival, s.group, s.index));
        // Running sequences first: decodes take one token, prefills in progress a chunk.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let pending = self.running[i].pending();
            let len = if self.config.chunked_prefill {
                pending.min(budget)
            } else if pending <= budget || plan.is_empty() {
                pending
            } else {
                i += 1;
                continue;
            };
            // Make room, preempting from the back; possibly this very sequence.
            let mut preempted_self = false;
            while !self.reserve(i, len) {
                let victim = self.running.len() - 1;
                self.preempt(victim);
                if victim == i {
                    preempted_self = true;
                    break;
                }
            }
            if preempted_self {
                break;
            }
            plan.push(Scheduled { seq: i, len });
            budget = budget.saturating_sub(len);
            i += 1;
        }
        // Then admit waiting sequences while slots, budget and blocks last.
        while budget > 0 && !self.waiting.is_empty() {
            let pick = self.next_waiting();
            // An unforked first choice will become n sequences.
            let seats = self
                .groups
                .get(&self.waiting[pick].group)
                .filter(|g| !g.forked)
                .map_or(1, |g| g.request.n);
            if self.running.len() + seats > self.config.max_num_seqs.max(seats) {
                break;
            }
            let seq = &mut self.waiting[pick];
            if seq.computed == 0 && seq.blocks.is_empty() {
                let (hits, last_hash) = self.blocks.lookup_prefix(seq.salt, &seq.tokens);
                seq.computed = hits.len() * bs;
                seq.hashed_blocks = hits.len();
                seq.last_hash = last_hash;
                seq.blocks = hits;
            }
            let pending = seq.pending();
            let len = if self.config.chunked_prefill {
                pending.min(budget)
            } else {
                pending
            };
            let fits_budget = len <= budget || plan.is_empty();
            let needed = (seq.computed + len)
                .div_ceil(bs)
                .saturating_sub(seq.blocks.len());
            if !fits_budget || needed > self.blocks.free_count() {
                // Give back the prefix hits; they stay cached for the next try.
                self.blocks.release(&seq.blocks);
                seq.reset_for_recompute();
                break;
            }
            let seq = self.waiting.swap_remove(pick);
            self.charge(&seq.tenant.clone());
            self.running.push(seq);
            let at = self.running.len() - 1;
            let reserved = self.reserve(at, len);
            debug_assert!(reserved, "free blocks were counted just above");
            plan.push(Scheduled { seq: at, len });
            budget = budget.saturating_sub(len);
        }
        plan
    }

    /// The waiting sequence to admit next: best tier first; within it, tenants take turns
    /// (start-time fair queuing: the tenant that has been served least lately goes first, and
    /// an idle tenant cannot bank credit); within a tenant, the oldest (preempted sequences
    /// keep their age, so they return ahead of newer ones).
    fn next_waiting(&self) -> usize {
        let tier = self.waiting.iter().map(|s| s.priority).min().unwrap_or(0);
        self.waiting
            .iter()
            .enumerate()
            .filter(|(_, s)| s.priority == tier)
            .min_by_key(|(_, s)| (self.start_tag(&s.tenant), s.arrival, s.group, s.index))
            .map(|(i, _)| i)
            .unwrap_or(0)
    }

    fn start_tag(&self, tenant: &Arc<str>) -> u64 {
        self.tenant_finish
            .get(tenant)
            .copied()
            .unwrap_or(0)
            .max(self.virtual_time)
    }

    /// Charges one admission to the tenant's fair-queuing tags.
    fn charge(&mut self, tenant: &Arc<str>) {
        let start = self.start_tag(tenant);
        self.virtual_time = start;
        self.tenant_finish.insert(tenant.clone(), start + 1);
        if self.tenant_finish.len() > 10_000 {
            // Tenants whose tags fell behind the virtual time carry no information.
            let now = self.virtual_time;
            self.tenant_finish.retain(|_, &mut f| f > now);
        }
    }

    /// Gives `running[i]` blocks for its next `len` tokens, copying a shared partly filled
    /// last block first (copy on write). False, changing nothing, if blocks are short.
    fn reserve(&mut self, i: usize, len: usize) -> bool {
        let bs = self.config.block_size;
        let seq = &self.running[i];
        let end = seq.computed + len;
        let fresh = end.div_ceil(bs).saturating_sub(seq.blocks.len());
        let start = seq.computed;
        let cow = !start.is_multiple_of(bs) && self.blocks.refs(seq.blocks[start / bs]) > 1;
        let needed = fresh + usize::from(cow);
        if needed > self.blocks.free_count() {
            return false;
        }
        let Some(mut new) = self.blocks.allocate(needed) else {
            return false;
        };
        let seq = &mut self.running[i];
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

    /// Takes `running[i]`'s blocks back and queues it to be recomputed.
    fn preempt(&mut self, i: usize) {
        let mut seq = self.running.remove(i);
        self.blocks.release(&seq.blocks);
        seq.reset_for_recompute();
        self.preemptions += 1;
        tracing::debug!(
            group = seq.group,
            index = seq.index,
            "preempted by recompute"
        );
        self.waiting.push(seq);
    }

    fn execute(&mut self, plan: &[Scheduled]) {
        let chunks: Vec<SeqChunk<'_>> = plan
            .iter()
            .map(|p| self.running[p.seq].chunk(p.len))
            .collect();
        let copies = std::mem::take(&mut self.copies);
        let result = self.model.step(&copies, &chunks);
        drop(chunks);
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "forward pass failed; failing its requests");
                let failed: HashSet<u64> = plan.iter().map(|p| self.running[p.seq].group).collect();
                for id in &failed {
                    if let Some(g) = self.groups.get(id) {
                        g.send(Err(e.clone()));
                    }
                }
                self.drop_groups(&failed);
                return;
            }
        };
        let bs = self.config.block_size;
        let tok = self.tokenizer.clone();
        let mut rows = rows.into_iter();
        let mut forks = Vec::new();
        let mut finished = Vec::new();
        for p in plan {
            let seq = &mut self.running[p.seq];
            seq.computed += p.len;
            // Newly full blocks become reusable prefixes.
            while (seq.hashed_blocks + 1) * bs <= seq.computed {
                let h = seq.hashed_blocks;
                seq.last_hash = self.blocks.register_full(
                    seq.blocks[h],
                    seq.last_hash,
                    &seq.tokens[h * bs..(h + 1) * bs],
                );
                seq.hashed_blocks += 1;
            }
            if seq.computed < seq.tokens.len() {
                continue; // a prefill chunk that does not end the prompt
            }
            let Some(mut row) = rows.next() else { break };
            let Some(group) = self.groups.get_mut(&seq.group) else {
                continue;
            };
            if !group.forked {
                // The prompt is computed once; the other choices share its blocks.
                for index in 1..group.request.n {
                    let fork = seq.fork(index, &group.request, &tok);
                    self.blocks.share(&fork.blocks);
                    forks.push((fork, row.clone()));
                }
                group.forked = true;
            }
            let delta = seq.sample_next(&mut row, &tok);
            group.usage.completion_tokens += 1;
            if delta.finish_reason.is_some() {
                finished.push((seq.group, seq.index));
            }
            group.send(Ok(GenerateEvent::Delta(delta)));
        }
        for (mut fork, mut row) in forks {
            if let Some(group) = self.groups.get_mut(&fork.group) {
                let delta = fork.sample_next(&mut row, &tok);
                group.usage.completion_tokens += 1;
                if delta.finish_reason.is_some() {
                    finished.push((fork.group, fork.index));
                }
                group.send(Ok(GenerateEvent::Delta(delta)));
            }
            self.running.push(fork);
        }
        for (group_id, index) in finished {
            let Some(pos) = self
                .running
                .iter()
                .position(|s| s.group == group_id && s.index == index)
            else {
                continue;
            };
            let seq = self.running.swap_remove(pos);
            self.blocks.release(&seq.blocks);
            if let Some(group) = self.groups.get_mut(&group_id) {
                group.remaining -= 1;
                if group.remaining == 0 {
                    group.send(Ok(GenerateEvent::Done(group.usage)));
                    self.groups.remove(&group_id);
                }
            }
        }
    }

    fn fail_waiting_head(&mut self) {
        let group = self.waiting[self.next_waiting()].group;
        if let Some(g) = self.groups.get(&group) {
            g.send(Err(EngineError::Overloaded(
                "the KV cache cannot hold this request".into(),
            )));
        }
        self.drop_groups(&HashSet::from([group]));
    }

    fn publish_load(&self) {
        let stats = self.blocks.stats();
        if let Ok(mut l) = self.load.lock() {
            *l = EngineLoad {
                running: self.running.len(),
                waiting: self.waiting.len(),
                kv_blocks_used: self.blocks.in_use(),
                kv_blocks_total: self.blocks.total(),
                kv_block_size: self.config.block_size,
                kv_slots_unused: self
                    .running
                    .iter()
                    .map(|s| (s.blocks.len() * self.config.block_size).saturating_sub(s.computed))
                    .sum(),
                preemptions: self.preemptions,
                prefix_queried_tokens: stats.queried_tokens,
                prefix_hit_tokens: stats.hit_tokens,
            };
        }
    }
}
