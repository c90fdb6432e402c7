//! Plans of recently seen request bodies. A repeated request (the one an exact hit answers)
//! then skips JSON parsing, alias routing, token estimation and key hashing: together a fifth
//! of a hit's instructions in the `proxy_load --profile=16` callgrind profile.
//!
//! A plan is a pure function of the endpoint, the partition, the body bytes and the routing
//! configuration. The memo compares all of the first three byte for byte (a hash only picks
//! the slot), and `App::replace_config` clears it, so a remembered plan is always the plan the
//! request would get. Only small bodies are kept, in two bounded generations: a lookup that
//! finds an entry in the old one moves it to the new one, so hot bodies stay.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::cache::{Lookup, Partition};
use crate::config::Route;
use crate::wire::endpoint::EndpointName;

/// Bodies larger than this are planned every time: they are rarely repeated verbatim, and
/// the memo's memory stays bounded: 2 × GENERATION entries of at most the body, the routed
/// body and the prompt text, so about 24 MiB at worst.
pub const MAX_BODY: usize = 8 * 1024;
/// Entries per generation.
const GENERATION: usize = 512;

/// A request's body once its model's alias is resolved.
#[derive(Debug)]
pub struct Routed {
    /// The body to send upstream.
    pub body: Bytes,
    pub route: Option<Route>,
    /// Prompt and completion tokens the request may use.
    pub estimate: (u64, u64),
    /// The `model` the client asked for.
    pub model_asked: Option<String>,
}

/// Everything planning a cacheable request produced.
#[derive(Debug)]
pub struct Planned {
    pub routed: Routed,
    pub lookup: Lookup,
}

/// What a request is, as far as its plan goes.
struct Remembered {
    endpoint: EndpointName,
    partition: Partition,
    raw: Bytes,
    planned: Arc<Planned>,
}

impl Remembered {
    fn is(&self, endpoint: EndpointName, partition: &Partition, raw: &[u8]) -> bool {
        self.endpoint == endpoint && self.partition == *partition && self.raw == raw
    }
}

#[derive(Default)]
struct Generations {
    new: HashMap<u64, Remembered>,
    old: HashMap<u64, Remembered>,
    /// Bumped by `clear`: a plan made before it is not remembered after it.
    epoch: u64,
}

pub struct PlanMemo {
    hasher: RandomState,
    generations: Mutex<Generations>,
}

impl Default for PlanMemo {
    fn default() -> Self {
        PlanMemo {
            hasher: RandomState::new(),
            generations: Mutex::new(Generations::default()),
        }
    }
}

impl PlanMemo {
    /// The plan remembered for exactly this request, if any.
    /// The plan remembered for this body under the configuration of `epoch` (`epoch`).
    pub fn get(
        &self,
        epoch: u64,
        endpoint: EndpointName,
        partition: &Partition,
        raw: &[u8],
    ) -> Option<Arc<Planned>> {
        if raw.len() > MAX_BODY {
            return None;
        }
        // Endpoints are told apart by name. The two `responses` variants share one, but which
        // of them serves is configuration, and a reload clears the memo.
        let id = endpoint;
        let slot = self.slot(id, partition, raw);
        let mut generations = self.generations.lock();
        if generations.epoch != epoch {
            return None; // the request runs under a configuration replaced since
        }
        if let Some(found) = generations.new.get(&slot) {
            return found.is(id, partition, raw).then(|| found.planned.clone());
        }
        let found = generations.old.remove(&slot)?;
        if !found.is(id, partition, raw) {
            return None;
        }
        let planned = found.planned.clone();
        generations.insert(slot, found);
        Some(planned)
    }

    /// Read before planning and handed back to `remember`, so a plan made under a
    /// configuration that was replaced meanwhile is not kept.
    pub fn epoch(&self) -> u64 {
        self.generations.lock().epoch
    }

    pub fn remember(
        &self,
        epoch: u64,
        endpoint: EndpointName,
        partition: &Partition,
        raw: Bytes,
        planned: Arc<Planned>,
    ) {
        if raw.len() > MAX_BODY {
            return;
        }
        let id = endpoint;
        let slot = self.slot(id, partition, &raw);
        let remembered = Remembered {
            endpoint: id,
            partition: partition.clone(),
            raw,
            planned,
        };
        let mut generations = self.generations.lock();
        if generations.epoch == epoch {
            generations.insert(slot, remembered);
        }
    }

    /// Forgets every plan (the configuration they were made under has changed).
    pub fn clear(&self) {
        let mut generations = self.generations.lock();
        generations.new.clear();
        generations.old.clear();
        generations.epoch += 1;
    }

    pub fn len(&self) -> usize {
        let generations = self.generations.lock();
        generations.new.len() + generations.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, endpoint: EndpointName, partition: &Partition, raw: &[u8]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(endpoint.as_str().as_bytes());
        hasher.write_u8(0xff);
        hasher.write(partition.tenant.as_bytes());
        hasher.write_u8(0xff); // no tenant/namespace split can collide with another
        hasher.write(partition.namespace.as_bytes());
        hasher.write_u8(0xff);
        hasher.write(raw);
        hasher.finish()
    }
}

impl Generations {
    fn insert(&mut self, slot: u64, remembered: Remembered) {
        if self.new.len() >= GENERATION {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(slot, remembered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::Hash32;

    fn partition(tenant: &str) -> Partition {
        Partition::of_tenant(tenant)
    }

    fn planned(model: &str) -> Arc<Planned> {
        Arc::new(Planned {
            routed: Routed {
                body: Bytes::from_static(b"{}"),
                route: None,
                estimate: (1, 1),
                model_asked: Some(model.into()),
            },
            lookup: Lookup {
                scope: Hash32([1; 32]),
                exact: Hash32([2; 32]),
                semantic_text: None,
                model: model.into(),
                stream: false,
                include_usage: false,
            },
        })
    }

    #[test]
    fn only_the_same_endpoint_partition_and_bytes_find_a_plan() {
        let memo = PlanMemo::default();
        let raw = Bytes::from_static(br#"{"model":"m","messages":[]}"#);
        memo.remember(
            0,
            EndpointName::ChatCompletions,
            &partition("a"),
            raw.clone(),
            planned("m"),
        );
        let found = memo
            .get(
                memo.epoch(),
                EndpointName::ChatCompletions,
                &partition("a"),
                &raw,
            )
            .expect("remembered");
        assert_eq!(found.lookup.model, "m");
        assert!(
            memo.get(
                memo.epoch(),
                EndpointName::ChatCompletions,
                &partition("b"),
                &raw
            )
            .is_none(),
            "tenant"
        );
        assert!(
            memo.get(
                memo.epoch(),
                EndpointName::Completions,
                &partition("a"),
                &raw
            )
            .is_none()
        );
        let spaced = br#"{"model":"m", "messages":[]}"#;
        assert!(
            memo.get(
                memo.epoch(),
                EndpointName::ChatCompletions,
                &partition("a"),
                spaced
            )
            .is_none()
        );
        let namespaced = Partition {
            tenant: "a".into(),
            namespace: "n".into(),
        };
        assert!(
            memo.get(
                memo.epoch(),
                EndpointName::ChatCompletions,
                &namespaced,
                &raw
            )
            .is_none(),
            "namespace"
        );
        let epoch = memo.epoch();
        memo.clear();
        assert!(
            memo.get(
                memo.epoch(),
                EndpointName::ChatCompletions,
                &partition("a"),
                &raw
            )
            .is_none(),
            "cleared"
        );
        // A plan made before the clear (under the old configuration) is not kept.
        memo.remember(
            epoch,
            EndpointName::ChatCompletions,
            &partition("a"),
            raw.clone(),
            planned("m"),
        );
        assert!(
            memo.get(
                memo.epoch(),
                EndpointName::ChatCompletions,
                &partition("a"),
                &raw
            )
            .is_none(),
            "stale"
        );
        // A request still running under the old configuration does not get a new plan.
        memo.remember(
            memo.epoch(),
            EndpointName::ChatCompletions,
            &partition("a"),
            raw.clone(),
            planned("m"),
        );
        assert!(
            memo.get(epoch, EndpointName::ChatCompletions, &partition("a"), &raw)
                .is_none(),
            "old configuration"
        );
        assert!(
            memo.get(
                memo.epoch(),
                EndpointName::ChatCompletions,
                &partition("a"),
                &raw
            )
            .is_some(),
            "new configuration"
        );
    }

    #[test]
    fn stays_bounded_and_keeps_what_is_used() {
        let memo = PlanMemo::default();
        let hot = Bytes::from_static(b"hot");
        memo.remember(
            0,
            EndpointName::ChatCompletions,
            &partition("a"),
            hot.clone(),
            planned("hot"),
        );
        for i in 0..GENERATION * 5 {
            let raw = Bytes::from(format!("body {i}"));
            memo.remember(
                0,
                EndpointName::ChatCompletions,
                &partition("a"),
                raw,
                planned("m"),
            );
            if i % (GENERATION / 2) == 0 {
                assert!(
                    memo.get(
                        memo.epoch(),
                        EndpointName::ChatCompletions,
                        &partition("a"),
                        &hot
                    )
                    .is_some(),
                    "at {i}"
                );
            }
        }
        assert!(memo.len() <= 2 * GENERATION, "{}", memo.len());
        assert!(
            memo.get(
                memo.epoch(),
                EndpointName::ChatCompletions,
                &partition("a"),
                b"body 0"
            )
            .is_none()
        );
        let large = Bytes::from(vec![b' '; MAX_BODY + 1]);
        memo.remember(
            0,
            EndpointName::ChatCompletions,
            &partition("a"),
            large.clone(),
            planned("m"),
        );
        assert!(
            memo.get(
                memo.epoch(),
                EndpointName::ChatCompletions,
                &partition("a"),
                &large
            )
            .is_none()
        );
    }
}
