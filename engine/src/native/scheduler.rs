//! Continuous batching, after vLLM's scheduler: every step runs the decodes of all running
//! sequences plus as much prefill as the token budget allows (long prompts in chunks), in one
//! forward pass. KV blocks are taken as sequences grow; when they run out, the lowest-priority,
//! newest sequence gives its blocks back and is recomputed later (preemption by recompute).
//! Waiting sequences are admitted by tier, then fairly across tenants, then oldest first.

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;

use super::kv_manager::KvCacheManager;
use super::output::{panic_message, sample_into, StepOutcome};
use super::sequence::{RequestState, Sequence};
use super::waiting::WaitingQueue;
use super::{NativeEngineConfig, Submission};
use crate::kv::keyed_salt_hash;
use crate::model::{BlockCopy, ModelRunner, SeqChunk};
use crate::observe::{ChoiceEnd, StepStats};
use crate::text::ModelTokenizer;
use crate::{EngineError, EngineLoad, GenerateEvent};

/// The engine loop's state: the waiting and running sequences, their requests, the KV cache
/// manager, and the model runner each step goes to. Each step the scheduler decides a
/// [`StepPlan`], the runner executes it, the scheduler updates from its logits rows, and the
/// output processor (`output.rs`) samples and sends the events.
pub struct EngineCore {
    model: Box<dyn ModelRunner>,
    tokenizer: Arc<ModelTokenizer>,
    kv: KvCacheManager,
    config: NativeEngineConfig,
    waiting: WaitingQueue<Sequence>,
    /// Kept sorted by (priority, arrival) at the start of each step: the front is served
    /// first, the back is preempted first.
    running: Vec<Sequence>,
    groups: HashMap<u64, RequestState>,
    /// Requests whose readers are behind: not scheduled this step, their KV kept.
    paused: HashSet<u64>,
    /// Requests that failed in the current step's forward pass (already told).
    failed_in_step: HashSet<u64>,
    next_group: u64,
    next_arrival: u64,
    preemptions: u64,
    /// The current step's measurements, for the observer.
    step: StepStats,
    load: Arc<Mutex<EngineLoad>>,
    /// Cleared when the worker goes away, before its requests' channels close, so a client
    /// told "the engine stopped" finds the engine reported dead.
    alive: Arc<AtomicBool>,
}

impl Drop for EngineCore {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Release);
    }
}

/// One scheduled piece of work: `len` tokens of `running[seq]`.
#[derive(Debug, Clone, Copy)]
struct Scheduled {
    seq: usize,
    len: usize,
}

/// What the scheduler decided for one step, as one value: each running sequence's chunk,
/// and the block copies (copy on write) the pass makes first.
struct StepPlan {
    chunks: Vec<Scheduled>,
    copies: Vec<BlockCopy>,
}

impl EngineCore {
    pub fn new(
        model: Box<dyn ModelRunner>,
        tokenizer: Arc<ModelTokenizer>,
        kv: KvCacheManager,
        config: NativeEngineConfig,
        load: Arc<Mutex<EngineLoad>>,
        alive: Arc<AtomicBool>,
    ) -> Self {
        Self {
            model,
            tokenizer,
            kv,
            config,
            waiting: WaitingQueue::default(),
            running: Vec::new(),
            groups: HashMap::new(),
            paused: HashSet::new(),
            failed_in_step: HashSet::new(),
            next_group: 0,
            next_arrival: 0,
            preemptions: 0,
            step: StepStats::default(),
            load,
            alive,
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
            #[cfg(feature = "fault-injection")]
            super::fault::check_loop(self.waiting.iter().map(|s| s.prompt()));
            let plan = self.schedule();
            if plan.chunks.is_empty() {
                if self.running.is_empty() && !self.waiting.is_empty() {
                    // Cannot happen while one full context fits the pool (checked at start);
                    // fail rather than spin.
                    self.fail_waiting_head();
                }
                if !self.paused.is_empty() {
                    // Only paused requests are left: wait for their readers without spinning.
                    std::thread::sleep(std::time::Duration::from_millis(2));
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
        let salt = keyed_salt_hash(&self.config.prefix_salt_key, request.tenant.as_deref());
        let mut seq = Sequence::new(id, 0, arrival, &request, salt, &self.tokenizer);
        seq.arrived = sub.times.arrived;
        self.waiting.push(seq);
        self.groups.insert(
            id,
            RequestState::new(request, sub.events, sub.generated, sub.times),
        );
    }

    /// Frees every sequence of requests whose client has gone, whose deadline has passed or
    /// whose reader has not read for the stall timeout; pauses those whose reader is behind.
    fn abort_gone_and_late(&mut self) {
        let now = Instant::now();
        let stall = self.config.stall_timeout;
        let mut gone = HashSet::new();
        self.paused.clear();
        for (&id, g) in &mut self.groups {
            g.flush();
            if g.is_gone() {
                gone.insert(id);
            } else if g.deadline.is_some_and(|d| now >= d) {
                g.fail(EngineError::DeadlineExceeded);
                gone.insert(id);
            } else if g.can_run() {
                g.stalled_since = None;
            } else {
                let since = *g.stalled_since.get_or_insert(now);
                if now.duration_since(since) >= stall {
                    tracing::info!(
                        request = id,
                        "stream not read for the stall timeout; aborted"
                    );
                    g.fail(EngineError::Stalled(stall.as_secs()));
                    gone.insert(id);
                } else {
                    self.paused.insert(id);
                }
            }
        }
        if !gone.is_empty() {
            self.drop_groups(&gone, ChoiceEnd::Aborted);
        }
    }

    /// Removes every sequence of these requests, returning their blocks.
    fn drop_groups(&mut self, ids: &HashSet<u64>, end: ChoiceEnd) {
        let now = Instant::now();
        for seq in self
            .running
            .iter()
            .chain(self.waiting.iter())
            .filter(|s| ids.contains(&s.group))
        {
            self.kv.free(seq);
            self.config.observer.0.choice_ended(&seq.stats(end, now));
        }
        self.running.retain(|s| !ids.contains(&s.group));
        self.waiting.retain(|s| !ids.contains(&s.group));
        self.groups.retain(|id, _| !ids.contains(id));
    }

    /// Decides the step: running sequences first (decodes take one token, prefills in
    /// progress a chunk), preempting from the back when blocks run out; then waiting ones
    /// admitted while seats, budget and blocks last.
    fn schedule(&mut self) -> StepPlan {
        let mut budget = self.config.max_num_batched_tokens;
        let mut plan = Vec::new();
        self.running
            .sort_by_key(|s| (s.priority, s.arrival, s.group, s.index));
        self.preempt_paused_for_others();
        // Running sequences first: decodes take one token, prefills in progress a chunk.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            if self.paused.contains(&self.running[i].group) {
                i += 1;
                continue;
            }
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
        while budget > 0 {
            let Some(pick) = self.next_waiting() else {
                break;
            };
            let seats = self.seats(&self.waiting[pick]);
            if self.running.len() + seats > self.config.max_num_seqs.max(seats) {
                break;
            }
            let seq = &mut self.waiting[pick];
            self.kv.attach_prefix(seq);
            let pending = seq.pending();
            let len = if self.config.chunked_prefill {
                pending.min(budget)
            } else {
                pending
            };
            let fits_budget = len <= budget || plan.is_empty();
            if !fits_budget || self.kv.blocks_needed(seq, len) > self.kv.free_count() {
                // Give back the prefix hits; they stay cached for the next try.
                self.kv.free_for_recompute(seq);
                break;
            }
            let mut seq = self.waiting.take(pick);
            if seq.scheduled_at.is_none() {
                let now = Instant::now();
                seq.scheduled_at = Some(now);
                if let Some(g) = self.groups.get(&seq.group) {
                    g.times.mark_scheduled(now);
                }
            }
            // Fair share by cost: every choice, and a long prompt by its steps of prefill.
            let cost = seats + seq.tokens.len() / self.config.max_num_batched_tokens.max(1);
            self.waiting.charge(&seq.tenant, cost as u64);
            self.running.push(seq);
            let at = self.running.len() - 1;
            let reserved = self.reserve(at, len);
            debug_assert!(reserved, "free blocks were counted just above");
            plan.push(Scheduled { seq: at, len });
            budget = budget.saturating_sub(len);
        }
        StepPlan {
            chunks: plan,
            copies: self.kv.take_copies(),
        }
    }

    /// Running slots a waiting sequence takes: an unforked first choice becomes all n.
    fn seats(&self, seq: &Sequence) -> usize {
        self.groups
            .get(&seq.group)
            .filter(|g| !g.forked)
            .map_or(1, |g| g.request.params.n)
    }

    /// The waiting sequence to admit next ([`WaitingQueue::next`]); paused requests are
    /// passed over.
    fn next_waiting(&self) -> Option<usize> {
        self.waiting.next(|s| self.paused.contains(&s.group))
    }

    /// Gives `running[i]` blocks for its next `len` tokens (see [`KvCacheManager::reserve`]).
    fn reserve(&mut self, i: usize, len: usize) -> bool {
        self.kv.reserve(&mut self.running[i], len)
    }

    /// Paused requests keep their KV only while nobody else needs it: when a runnable
    /// request waits for a seat, or blocks run short for the running ones to grow, paused
    /// sequences are preempted first (newest first) and recomputed once their reader is back.
    fn preempt_paused_for_others(&mut self) {
        if self.paused.is_empty() {
            return;
        }
        // A reader a moment behind keeps its place; one gone quiet for a while does not.
        let patience = (self.config.stall_timeout / 4).min(Duration::from_secs(1));
        let now = Instant::now();
        let long_paused: HashSet<u64> = self
            .paused
            .iter()
            .copied()
            .filter(|id| {
                self.groups
                    .get(id)
                    .and_then(|g| g.stalled_since)
                    .is_some_and(|since| now.duration_since(since) >= patience)
            })
            .collect();
        if long_paused.is_empty() {
            return;
        }
        let bs = self.kv.block_size();
        loop {
            let runnable = self
                .running
                .iter()
                .filter(|s| !self.paused.contains(&s.group))
                .count();
            let (seats, prompt_blocks) = match self.next_waiting() {
                Some(pick) => {
                    let seq = &self.waiting[pick];
                    let seats = self.seats(seq);
                    (seats, seq.tokens.len().div_ceil(bs))
                }
                None => (0, 0),
            };
            let short_of_seats =
                seats > 0 && self.running.len() + seats > self.config.max_num_seqs.max(seats);
            let short_of_blocks = runnable + prompt_blocks > self.kv.free_count();
            if !(short_of_seats || short_of_blocks) || (runnable == 0 && seats == 0) {
                return;
            }
            let Some(victim) = self
                .running
                .iter()
                .rposition(|s| long_paused.contains(&s.group))
            else {
                return;
            };
            self.preempt(victim);
        }
    }

    /// Takes `running[i]`'s blocks back and queues it to be recomputed.
    fn preempt(&mut self, i: usize) {
        let mut seq = self.running.remove(i);
        self.kv.free_for_recompute(&mut seq);
        self.preemptions += 1;
        tracing::debug!(
            group = seq.group,
            index = seq.index,
            "preempted by recompute"
        );
        self.waiting.push(seq);
    }

    /// Runs the plan on the model runner, then updates from what it returned.
    fn execute(&mut self, plan: &StepPlan) {
        self.step.clear();
        self.step.scheduled_tokens = plan.chunks.iter().map(|p| p.len).sum();
        let rows = match self.forward(&plan.copies, &plan.chunks) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "forward pass failed; running its chunks one by one");
                self.forward_each(&plan.copies, &plan.chunks)
            }
        };
        self.update_from_output(&plan.chunks, rows);
    }

    /// One forward pass over the plan's chunks; a panic in it is an error, not the end of
    /// the engine.
    fn forward(
        &mut self,
        copies: &[BlockCopy],
        plan: &[Scheduled],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let chunks: Vec<SeqChunk<'_>> = plan
            .iter()
            .map(|p| self.running[p.seq].chunk(p.len))
            .collect();
        let model = &mut self.model;
        catch_unwind(AssertUnwindSafe(|| {
            #[cfg(feature = "fault-injection")]
            super::fault::check_step(&chunks);
            model.step(copies, &chunks)
        }))
        .unwrap_or_else(|panic| Err(EngineError::Internal(panic_message(&panic))))
    }

    /// After a failed pass: each chunk alone, so that only the requests whose own chunk
    /// fails are failed (with their blocks freed), and the others go on. Returns the logits
    /// rows of the chunks that succeeded, in plan order, with the failed ones left out.
    fn forward_each(&mut self, copies: &[BlockCopy], plan: &[Scheduled]) -> Vec<Vec<f32>> {
        let mut outcomes = Vec::with_capacity(plan.len());
        let mut failed = HashSet::new();
        for (i, p) in plan.iter().enumerate() {
            // Copies are idempotent (the copied slots are never written by the pass): redo
            // them before the first chunk in case the failed pass stopped before them.
            let copies = if i == 0 { copies } else { &[] };
            let group = self.running[p.seq].group;
            match self.forward(copies, std::slice::from_ref(p)) {
                Ok(rows) => outcomes.push((group, rows)),
                Err(e) => {
                    tracing::error!(error = %e, request = group, "a request's chunk failed; failing it");
                    if let Some(g) = self.groups.get_mut(&group) {
                        g.fail(e);
                    }
                    failed.insert(group);
                }
            }
        }
        // A failed request's other chunks (its other choices) are dropped with it: their
        // rows must not be read by the requests after them.
        let rows = outcomes
            .into_iter()
            .filter(|(group, _)| !failed.contains(group))
            .flat_map(|(_, rows)| rows)
            .collect();
        self.failed_in_step = failed;
        rows
    }

    /// After the pass: advances each chunk's sequence, registers its newly full blocks,
    /// forks the other choices of a prompt just computed, has the output processor sample
    /// every sequence whose chunk ended with logits, and settles what finished or failed.
    /// Requests that failed in the pass itself are skipped, then removed.
    fn update_from_output(&mut self, plan: &[Scheduled], rows: Vec<Vec<f32>>) {
        let tok = self.tokenizer.clone();
        // Requests whose forward pass failed have no rows; those failing while sampling
        // below still have theirs, read and ignored.
        let forward_failed = std::mem::take(&mut self.failed_in_step);
        let mut outcome = StepOutcome {
            failed: forward_failed.clone(),
            ..StepOutcome::default()
        };
        let mut rows = rows.into_iter();
        let mut forks = Vec::new();
        for p in plan {
            let seq = &mut self.running[p.seq];
            if forward_failed.contains(&seq.group) {
                continue;
            }
            seq.computed += p.len;
            self.kv.register_computed(seq);
            if seq.computed < seq.tokens.len() {
                continue; // a prefill chunk that does not end the prompt
            }
            let Some(mut row) = rows.next() else { break };
            if outcome.failed.contains(&seq.group) {
                continue;
            }
            let Some(group) = self.groups.get_mut(&seq.group) else {
                continue;
            };
            if !group.forked {
                // The prompt is computed once; the other choices share its blocks.
                for index in 1..group.request.params.n {
                    let fork = seq.fork(index, &group.request, &tok);
                    self.kv.share(&fork);
                    forks.push((fork, row.clone()));
                }
                group.forked = true;
            }
            sample_into(seq, group, &mut row, &tok, &mut outcome, &mut self.step);
        }
        for (mut fork, mut row) in forks {
            if let Some(group) = self.groups.get_mut(&fork.group) {
                if !outcome.failed.contains(&fork.group) {
                    sample_into(
                        &mut fork,
                        group,
                        &mut row,
                        &tok,
                        &mut outcome,
                        &mut self.step,
                    );
                }
            }
            self.running.push(fork);
        }
        // Reported before any request's end goes out, so that a client holding its answer
        // finds the step's tokens counted.
        self.config.observer.0.step(&self.step);
        self.settle(outcome);
    }

    /// Frees finished choices (a request whose last choice ended gets `Done`) and drops
    /// failed requests.
    fn settle(&mut self, outcome: StepOutcome) {
        let now = Instant::now();
        for (group_id, index, reason) in outcome.finished {
            let Some(pos) = self
                .running
                .iter()
                .position(|s| s.group == group_id && s.index == index)
            else {
                continue;
            };
            let seq = self.running.swap_remove(pos);
            self.kv.free(&seq);
            let end = ChoiceEnd::Finished(reason);
            self.config.observer.0.choice_ended(&seq.stats(end, now));
            if let Some(group) = self.groups.get_mut(&group_id) {
                group.remaining -= 1;
                if group.remaining == 0 {
                    group.send(Ok(GenerateEvent::Done(group.usage)));
                    self.groups.remove(&group_id);
                }
            }
        }
        if !outcome.failed.is_empty() {
            self.drop_groups(&outcome.failed, ChoiceEnd::Failed);
        }
    }

    fn fail_waiting_head(&mut self) {
        let Some(pick) = self.next_waiting() else {
            return; // every waiting request is paused; their stall timeouts will end them
        };
        let group = self.waiting[pick].group;
        if let Some(g) = self.groups.get_mut(&group) {
            g.fail(EngineError::Overloaded(
                "the KV cache cannot hold this request".into(),
            ));
        }
        self.drop_groups(&HashSet::from([group]), ChoiceEnd::Failed);
    }

    fn publish_load(&self) {
        let stats = self.kv.stats();
        if let Ok(mut l) = self.load.lock() {
            *l = EngineLoad {
                running: self.running.len(),
                waiting: self.waiting.len(),
                kv_blocks_used: self.kv.in_use(),
                kv_blocks_total: self.kv.total(),
                kv_block_size: self.config.block_size,
                kv_slots_unused: self
                    .running
                    .iter()
                    .map(|s| (s.blocks.len() * self.config.block_size).saturating_sub(s.computed))
                    .sum(),
                preemptions: self.preemptions,
                prefix_queried_tokens: stats.queried_tokens,
                prefix_hit_tokens: stats.hit_tokens,
                // Filled by the engine from the model's own counters.
                ..EngineLoad::default()
            };
        }
    }
}
