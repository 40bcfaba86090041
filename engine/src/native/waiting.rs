//! The waiting queue and its admission policy: best tier first; within a tier, tenants take
//! turns by start-time fair queuing charged by cost (a request's choices and prompt length),
//! so an idle tenant cannot bank credit and one big request is not one share; within a
//! tenant, the oldest first (preempted sequences keep their age, so they return ahead of
//! newer ones).

use std::collections::HashMap;
use std::ops::{Index, IndexMut};
use std::sync::Arc;

/// What the queue needs to know of a waiting item.
pub trait Queued {
    /// Scheduling tier: 0 is served first.
    fn priority(&self) -> u8;
    fn tenant(&self) -> &Arc<str>;
    /// Age, then identity, for a stable order: (arrival, request, choice).
    fn age(&self) -> (u64, u64, usize);
}

#[derive(Debug)]
pub struct WaitingQueue<T> {
    items: Vec<T>,
    /// Each tenant's finish tag, and the virtual time (start-time fair queuing).
    tenant_finish: HashMap<Arc<str>, u64>,
    virtual_time: u64,
}

impl<T> Default for WaitingQueue<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            tenant_finish: HashMap::new(),
            virtual_time: 0,
        }
    }
}

impl<T: Queued> WaitingQueue<T> {
    pub fn push(&mut self, item: T) {
        self.items.push(item);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.items.iter()
    }

    pub fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        self.items.retain(keep);
    }

    /// Takes the item at `i` out of the queue (order is not kept; `next` decides).
    pub fn take(&mut self, i: usize) -> T {
        self.items.swap_remove(i)
    }

    /// The index of the item to admit next, passing over those `skip` names.
    pub fn next(&self, skip: impl Fn(&T) -> bool) -> Option<usize> {
        let tier = self
            .items
            .iter()
            .filter(|t| !skip(t))
            .map(Queued::priority)
            .min()?;
        self.items
            .iter()
            .enumerate()
            .filter(|(_, t)| t.priority() == tier && !skip(t))
            .min_by_key(|(_, t)| (self.start_tag(t.tenant()), t.age()))
            .map(|(i, _)| i)
    }

    fn start_tag(&self, tenant: &Arc<str>) -> u64 {
        self.tenant_finish
            .get(tenant)
            .copied()
            .unwrap_or(0)
            .max(self.virtual_time)
    }

    /// Charges one admission of `cost` to the tenant's fair-queuing tags.
    pub fn charge(&mut self, tenant: &Arc<str>, cost: u64) {
        let start = self.start_tag(tenant);
        self.virtual_time = start;
        self.tenant_finish
            .insert(tenant.clone(), start.saturating_add(cost.max(1)));
        if self.tenant_finish.len() > 10_000 {
            // Tenants whose tags fell behind the virtual time carry no information.
            let now = self.virtual_time;
            self.tenant_finish.retain(|_, &mut f| f > now);
        }
    }
}

impl<T> Index<usize> for WaitingQueue<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        &self.items[i]
    }
}

impl<T> IndexMut<usize> for WaitingQueue<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.items[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone)]
    struct Item {
        name: &'static str,
        priority: u8,
        tenant: Arc<str>,
        arrival: u64,
    }

    impl Queued for Item {
        fn priority(&self) -> u8 {
            self.priority
        }
        fn tenant(&self) -> &Arc<str> {
            &self.tenant
        }
        fn age(&self) -> (u64, u64, usize) {
            (self.arrival, self.arrival, 0)
        }
    }

    fn queue(items: &[(&'static str, u8, &str)]) -> WaitingQueue<Item> {
        let mut q = WaitingQueue::default();
        for (arrival, &(name, priority, tenant)) in items.iter().enumerate() {
            q.push(Item {
                name,
                priority,
                tenant: Arc::from(tenant),
                arrival: arrival as u64,
            });
        }
        q
    }

    /// Admits everything one by one, charging `cost(name)`; the admission order.
    fn drain(mut q: WaitingQueue<Item>, cost: impl Fn(&str) -> u64) -> Vec<&'static str> {
        let mut order = Vec::new();
        while let Some(i) = q.next(|_| false) {
            let item = q.take(i);
            q.charge(&item.tenant, cost(item.name));
            order.push(item.name);
        }
        order
    }

    #[test]
    fn the_best_tier_goes_first_then_the_oldest() {
        let q = queue(&[
            ("low", 2, "a"),
            ("normal", 1, "a"),
            ("high", 0, "a"),
            ("high2", 0, "a"),
        ]);
        assert_eq!(drain(q, |_| 1), ["high", "high2", "normal", "low"]);
    }

    #[test]
    fn tenants_take_turns_whatever_they_queued() {
        let q = queue(&[
            ("a0", 1, "a"),
            ("a1", 1, "a"),
            ("a2", 1, "a"),
            ("b0", 1, "b"),
            ("b1", 1, "b"),
        ]);
        assert_eq!(drain(q, |_| 1), ["a0", "b0", "a1", "b1", "a2"]);
    }

    #[test]
    fn a_request_is_charged_by_its_cost() {
        // a0 asks for four choices: b's two requests both go before a's next.
        let q = queue(&[
            ("a0", 1, "a"),
            ("a1", 1, "a"),
            ("b0", 1, "b"),
            ("b1", 1, "b"),
        ]);
        let cost = |name: &str| if name == "a0" { 4 } else { 1 };
        assert_eq!(drain(q, cost), ["a0", "b0", "b1", "a1"]);
    }

    #[test]
    fn an_idle_tenant_banks_no_credit() {
        // a is served alone for a while; b, arriving later, goes next (a has just been
        // served) but then they alternate: b gets no credit for the four turns a had alone.
        let mut q = queue(&[]);
        for (i, name) in ["a0", "a1", "a2", "a3"].into_iter().enumerate() {
            q.push(Item {
                name,
                priority: 1,
                tenant: Arc::from("a"),
                arrival: i as u64,
            });
            let next = q.next(|_| false).unwrap();
            let item = q.take(next);
            q.charge(&item.tenant, 1);
        }
        for (i, (name, tenant)) in [("a4", "a"), ("a5", "a"), ("b0", "b"), ("b1", "b")]
            .into_iter()
            .enumerate()
        {
            q.push(Item {
                name,
                priority: 1,
                tenant: Arc::from(tenant),
                arrival: 10 + i as u64,
            });
        }
        assert_eq!(drain(q, |_| 1), ["b0", "a4", "b1", "a5"]);
    }

    #[test]
    fn skipped_items_are_passed_over() {
        let q = queue(&[("paused", 0, "a"), ("ready", 1, "b")]);
        assert_eq!(
            q.next(|t| t.name == "paused").map(|i| q[i].name),
            Some("ready")
        );
        assert_eq!(q.next(|_| true), None);
    }
}
