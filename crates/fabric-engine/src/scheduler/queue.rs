//! One agent's ready queue: round-robin across tenants, and within a tenant
//! priority with aging.
//!
//! Aging is a virtual deadline: an item enqueued at `t` with priority rank `r`
//! (critical = 0 … low = 3) is served in order of `t + r × aging_step`. Each
//! (tenant, priority) lane is FIFO, so its head has the smallest key of the
//! lane and picking is four comparisons. A `low` task therefore waits at most
//! `3 × aging_step` behind any stream of `critical` work: no starvation.
//!
//! Removal is lazy: a canceled task stays in its lane until it reaches the
//! head, where the caller's `is_live` check skips it. Counts are kept exact
//! by the owner.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use fabric_core::{Priority, TaskId, TenantId, Timestamp};

/// A queued task as the lane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Item {
    pub id: TaskId,
    /// Distinguishes this enqueue from an earlier one of the same task (lazy deletion).
    pub ticket: u64,
    pub enqueued_at: Timestamp,
}

#[derive(Debug, Default)]
struct TenantLanes {
    lanes: [VecDeque<Item>; 4],
}

impl TenantLanes {
    fn is_empty(&self) -> bool {
        self.lanes.iter().all(VecDeque::is_empty)
    }
}

#[derive(Debug, Default)]
pub(crate) struct ReadyQueue {
    tenants: HashMap<TenantId, TenantLanes>,
    /// Tenants with (possibly stale) items, in round-robin order.
    ring: VecDeque<TenantId>,
}

impl ReadyQueue {
    pub fn push(&mut self, tenant: &TenantId, priority: Priority, item: Item) {
        self.lanes_mut(tenant).lanes[priority.rank()].push_back(item);
    }

    /// Puts a retried task back at the head of its lane: it already waited its turn.
    pub fn push_front(&mut self, tenant: &TenantId, priority: Priority, item: Item) {
        self.lanes_mut(tenant).lanes[priority.rank()].push_front(item);
    }

    fn lanes_mut(&mut self, tenant: &TenantId) -> &mut TenantLanes {
        if !self.tenants.contains_key(tenant) {
            self.ring.push_back(tenant.clone());
        }
        self.tenants.entry(tenant.clone()).or_default()
    }

    /// Takes the next live item: the next tenant in the ring, its best lane head.
    pub fn pop(
        &mut self,
        aging_step: Duration,
        mut is_live: impl FnMut(&Item) -> bool,
    ) -> Option<Item> {
        while let Some(tenant) = self.ring.pop_front() {
            let Some(lanes) = self.tenants.get_mut(&tenant) else {
                continue;
            };
            let mut best: Option<(usize, Timestamp)> = None;
            for (rank, lane) in lanes.lanes.iter_mut().enumerate() {
                while lane.front().is_some_and(|item| !is_live(item)) {
                    lane.pop_front();
                }
                if let Some(head) = lane.front() {
                    let key = head
                        .enqueued_at
                        .plus(aging_step.saturating_mul(rank as u32));
                    if best.is_none_or(|(_, best_key)| key < best_key) {
                        best = Some((rank, key));
                    }
                }
            }
            let picked = best.and_then(|(rank, _)| lanes.lanes[rank].pop_front());
            if lanes.is_empty() {
                self.tenants.remove(&tenant);
            } else {
                self.ring.push_back(tenant);
            }
            if picked.is_some() {
                return picked;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u64, at: i64) -> Item {
        Item {
            id: TaskId::new(),
            ticket: n,
            enqueued_at: Timestamp::from_millis(at),
        }
    }

    #[test]
    fn stale_items_are_skipped_and_empty_tenants_leave_the_ring() {
        let mut q = ReadyQueue::default();
        let t = TenantId::new("t").unwrap();
        q.push(&t, Priority::Normal, item(1, 0));
        q.push(&t, Priority::Normal, item(2, 0));
        let got = q.pop(Duration::from_secs(1), |i| i.ticket != 1).unwrap();
        assert_eq!(got.ticket, 2);
        assert!(q.pop(Duration::from_secs(1), |_| true).is_none());
        assert!(q.tenants.is_empty() && q.ring.is_empty());
    }
}
