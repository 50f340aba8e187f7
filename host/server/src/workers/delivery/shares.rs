//! Priority within one destination's budget: the order of a round's due
//! deliveries by event kind, each kind taking its share of the requests
//! (smooth weighted round-robin, as nginx balances upstreams), so
//! inventory and price go ahead of content and no kind that waits starves.
//! Within a kind the store's order stands; entity keys are distinct in a
//! round, so per-key order is untouched.

use std::collections::BTreeMap;

use crate::store::Delivery;

/// `due` reordered by `priority` (a kind's share; 1 when not listed).
pub(super) fn by_shares(due: Vec<Delivery>, priority: &BTreeMap<String, u32>) -> Vec<Delivery> {
    let mut queues: BTreeMap<String, std::collections::VecDeque<Delivery>> = BTreeMap::new();
    // The first kind seen first among equals: a round keeps queue order when all share alike.
    let mut kinds: Vec<String> = Vec::new();
    for delivery in due {
        if !queues.contains_key(&delivery.kind) {
            kinds.push(delivery.kind.clone());
        }
        queues
            .entry(delivery.kind.clone())
            .or_default()
            .push_back(delivery);
    }
    let share = |kind: &str| i64::from(*priority.get(kind).unwrap_or(&1));
    let mut credit: Vec<i64> = vec![0; kinds.len()];
    let mut ordered = Vec::with_capacity(queues.values().map(|q| q.len()).sum());
    loop {
        let waiting: Vec<usize> = (0..kinds.len())
            .filter(|&i| !queues[&kinds[i]].is_empty())
            .collect();
        if waiting.is_empty() {
            return ordered;
        }
        let total: i64 = waiting.iter().map(|&i| share(&kinds[i])).sum();
        for &i in &waiting {
            credit[i] += share(&kinds[i]);
        }
        let best = *waiting
            .iter()
            .max_by_key(|&&i| (credit[i], std::cmp::Reverse(i)))
            .expect("one waits");
        credit[best] -= total;
        let next = queues
            .get_mut(&kinds[best])
            .and_then(|q| q.pop_front())
            .expect("it waits");
        ordered.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: i64, kind: &str) -> Delivery {
        Delivery {
            seq,
            destination: "d".into(),
            channel: "c".into(),
            tenant: "t".into(),
            event_id: format!("e{seq}"),
            entity_key: format!("k{seq}"),
            idempotency_key: String::new(),
            correlation_id: String::new(),
            output: String::new(),
            output_id: None,
            payload_at: None,
            attempts: 0,
            versions: "[]".into(),
            created_ms: 0,
            received_ms: 0,
            replayed: false,
            kind: kind.into(),
        }
    }

    fn kinds(ordered: &[Delivery]) -> String {
        ordered.iter().map(|d| &d.kind[..1]).collect()
    }

    #[test]
    fn inventory_goes_ahead_of_content_and_content_still_gets_its_share() {
        // 10 product updates queued before 10 inventory updates.
        let due: Vec<Delivery> = (0..20)
            .map(|n| delivery(n, if n < 10 { "product" } else { "inventory" }))
            .collect();
        let ordered = by_shares(due, &crate::config::default_priority());
        assert_eq!(kinds(&ordered), "iipiiiipiiiipppppppp");
        // Within a kind, the store's order stands.
        let inventory: Vec<i64> = ordered
            .iter()
            .filter(|d| d.kind == "inventory")
            .map(|d| d.seq)
            .collect();
        assert!(inventory.is_sorted(), "{inventory:?}");
    }

    #[test]
    fn equal_shares_keep_the_store_order() {
        let due: Vec<Delivery> = (0..6)
            .map(|n| delivery(n, if n % 2 == 0 { "category" } else { "product" }))
            .collect();
        let ordered = by_shares(due, &BTreeMap::new());
        assert_eq!(
            ordered.iter().map(|d| d.seq).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5]
        );
    }
}
