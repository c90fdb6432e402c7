//! Request coalescing: while one request for an exact key is upstream, identical requests wait
//! for its answer instead of each paying for their own (the thundering-herd fix).
//!
//! Across processes (`[redis]`), the local leader of a miss also claims the key through
//! `Remote` before it goes upstream: one process leads, the others wait for its stored
//! answer. `crate::replica` implements `Remote` over Redis; the cache knows only this seam.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use crate::cache::Requirements;
use crate::cache::key::Hash32;

/// Identical misses in other processes: which one goes upstream for an exact key.
pub trait Remote: Send + Sync {
    /// Called by a local leader about to go upstream: it leads, or it waits until another
    /// process's answer is in the local store (usable under `needs`).
    fn claim(&self, key: Hash32, needs: Requirements) -> BoxFuture<'_, Claim>;
}

pub enum Claim {
    /// Go upstream, holding the lease until the answer is stored (or given up).
    Lead(Box<dyn RemoteLease>),
    /// Another process answered: the entry is in the local store.
    Answered,
    /// No coordination (Redis away, or the wait gave up): go upstream alone.
    Alone,
}

/// A leader's claim on an exact key in other processes. Dropped without `stored`, it is
/// released at once, so the processes waiting on it go upstream themselves.
pub trait RemoteLease: Send + Sync {
    /// The answer is stored: the lease ends as the entry is published.
    fn stored(self: Box<Self>);
}

/// The answer a leader shares with its followers.
#[derive(Debug)]
pub struct Shared {
    /// The endpoint's non-streaming response JSON.
    pub response: String,
    pub has_usage: bool,
    /// The stored entry's id and creation time (ms), when it was stored.
    pub stored: Option<(u64, u64)>,
    pub matched: Matched,
}

/// How the leader came by the answer it shares, which is what a follower reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Matched {
    /// Fresh from upstream: the follower's answer is genuinely coalesced.
    Upstream,
    /// A stored entry under the (shared) exact key.
    Exact,
    /// A stored entry for a similar prompt, at this similarity.
    Semantic { similarity: f32 },
}

impl Shared {
    /// Whether this answer may serve a request with these requirements and this similarity
    /// threshold, as it would if it had looked the entry up itself: a shared answer can be
    /// an older cache hit, so `max-age` applies to it too, and a semantic one must clear the
    /// follower's own (possibly stricter, `x-deja-threshold`) threshold.
    pub fn satisfies(&self, needs: Requirements, threshold: f32, now_ms: u64) -> bool {
        let age_ms = self
            .stored
            .map_or(0, |(_, created_ms)| now_ms.saturating_sub(created_ms));
        let similar_enough = match self.matched {
            Matched::Semantic { similarity } => similarity >= threshold,
            Matched::Upstream | Matched::Exact => true,
        };
        similar_enough
            && (!needs.needs_usage || self.has_usage)
            && needs.max_age_ms.is_none_or(|max| age_ms < max)
    }
}

type Slot = Option<Option<Arc<Shared>>>;

/// A request that is upstream: where its answer goes, and a signal when a twin starts waiting.
struct InFlight {
    answer: watch::Sender<Slot>,
    joined: Arc<Notify>,
    /// Run once by the next twin to start waiting (see `Leader::when_followed`).
    on_follower: Option<FollowedHook>,
}

type FollowedHook = Box<dyn FnOnce() + Send>;

#[derive(Default)]
pub struct Coalescer {
    inflight: Mutex<HashMap<Hash32, InFlight>>,
    /// Coalescing with other replicas, when `[redis]` is set.
    remote: OnceLock<Arc<dyn Remote>>,
}

pub enum Role {
    /// First in: go upstream, then `publish`.
    Leader(Leader),
    /// Someone is already upstream: `wait` for their answer.
    Follower(Follower),
}

impl Coalescer {
    pub fn join(self: &Arc<Self>, key: Hash32) -> Role {
        let mut inflight = self.inflight.lock();
        if let Some(twin) = inflight.get_mut(&key) {
            twin.joined.notify_one();
            let follower = Follower(twin.answer.subscribe());
            let hook = twin.on_follower.take();
            drop(inflight); // the hook may take the leader's locks, which may take this one
            if let Some(hook) = hook {
                hook();
            }
            return Role::Follower(follower);
        }
        let (answer, _) = watch::channel(None);
        let joined = Arc::new(Notify::new());
        inflight.insert(
            key,
            InFlight {
                answer,
                joined: joined.clone(),
                on_follower: None,
            },
        );
        Role::Leader(Leader {
            coalescer: self.clone(),
            key,
            joined,
            published: false,
            lease: None,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.lock().len()
    }

    /// Coalesces with other processes too (only the first call counts).
    pub fn set_remote(&self, remote: Arc<dyn Remote>) {
        let _ = self.remote.set(remote);
    }

    pub fn remote(&self) -> Option<&Arc<dyn Remote>> {
        self.remote.get()
    }
}

/// Dropping a leader without publishing releases its followers with "no answer", so they go
/// upstream themselves; a failure never strands them.
pub struct Leader {
    coalescer: Arc<Coalescer>,
    key: Hash32,
    joined: Arc<Notify>,
    published: bool,
    /// This leader's claim in other processes, if it took one.
    lease: Option<Box<dyn RemoteLease>>,
}

impl Leader {
    /// Holds `lease` until the answer is published (or the leader is dropped).
    pub fn hold(&mut self, lease: Box<dyn RemoteLease>) {
        self.lease = Some(lease);
    }

    pub fn publish(mut self, answer: Option<Arc<Shared>>) {
        self.finish(answer);
    }

    /// How many requests are waiting on this one.
    pub fn followers(&self) -> usize {
        self.coalescer
            .inflight
            .lock()
            .get(&self.key)
            .map_or(0, |twin| twin.answer.receiver_count())
    }

    /// Runs `hook` when the next request starts waiting on this one (on that request's
    /// thread, outside the coalescer's lock); replaces an earlier hook not yet run.
    pub fn when_followed(&self, hook: impl FnOnce() + Send + 'static) {
        if let Some(twin) = self.coalescer.inflight.lock().get_mut(&self.key) {
            twin.on_follower = Some(Box::new(hook));
        }
    }

    /// Completes when a request has started waiting on this one since the last call (or
    /// since leading, on the first call).
    pub async fn follower_joined(&self) {
        self.joined.notified().await;
    }

    fn finish(&mut self, answer: Option<Arc<Shared>>) {
        if self.published {
            return;
        }
        self.published = true;
        // Only a fresh answer stored under this key ends the lease by being published; anything
        // else (no answer, not stored) releases it.
        if let Some(lease) = self.lease.take() {
            let stored = answer
                .as_ref()
                .is_some_and(|a| a.matched == Matched::Upstream && a.stored.is_some());
            if stored {
                lease.stored();
            } // else dropped here: released
        }
        if let Some(twin) = self.coalescer.inflight.lock().remove(&self.key) {
            twin.answer.send_replace(Some(answer));
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.finish(None);
    }
}

pub struct Follower(watch::Receiver<Slot>);

impl Follower {
    /// The leader's answer, or `None` if it had none to share.
    pub async fn wait(mut self) -> Option<Arc<Shared>> {
        match self.0.wait_for(Option::is_some).await {
            Ok(slot) => slot.clone().flatten(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Hash32 {
        Hash32([n; 32])
    }

    #[tokio::test]
    async fn followers_get_the_leaders_answer() {
        let coalescer = Arc::new(Coalescer::default());
        let Role::Leader(leader) = coalescer.join(key(1)) else {
            panic!("first is leader")
        };
        let followers: Vec<_> = (0..3)
            .map(|_| match coalescer.join(key(1)) {
                Role::Follower(f) => tokio::spawn(f.wait()),
                Role::Leader(_) => panic!("second is follower"),
            })
            .collect();
        assert!(matches!(coalescer.join(key(2)), Role::Leader(_)));
        assert_eq!(leader.followers(), 3);
        leader.publish(Some(Arc::new(Shared {
            response: "{}".into(),
            has_usage: true,
            stored: None,
            matched: Matched::Upstream,
        })));
        for follower in followers {
            assert_eq!(follower.await.unwrap().unwrap().response, "{}");
        }
        assert_eq!(coalescer.in_flight(), 0);
    }

    #[test]
    fn the_next_twin_to_wait_runs_the_leaders_hook_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let coalescer = Arc::new(Coalescer::default());
        let Role::Leader(leader) = coalescer.join(key(1)) else {
            panic!("first is leader")
        };
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        leader.when_followed(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        assert!(matches!(coalescer.join(key(2)), Role::Leader(_)));
        assert_eq!(runs.load(Ordering::SeqCst), 0, "another key's leader");
        let _first = coalescer.join(key(1));
        let _second = coalescer.join(key(1));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_semantic_answer_satisfies_only_a_threshold_it_clears() {
        let shared = |matched| Shared {
            response: "{}".into(),
            has_usage: true,
            stored: Some((1, 1_000)),
            matched,
        };
        let needs = Requirements {
            max_age_ms: None,
            needs_usage: true,
        };
        let semantic = shared(Matched::Semantic { similarity: 0.95 });
        assert!(semantic.satisfies(needs, 0.9, 2_000));
        assert!(semantic.satisfies(needs, 0.95, 2_000));
        assert!(!semantic.satisfies(needs, 0.99, 2_000));
        assert!(shared(Matched::Exact).satisfies(needs, 0.99, 2_000));
        let young = Requirements {
            max_age_ms: Some(500),
            needs_usage: true,
        };
        assert!(
            !shared(Matched::Exact).satisfies(young, 0.9, 2_000),
            "max-age"
        );
    }

    #[tokio::test]
    async fn dropped_leader_releases_followers() {
        let coalescer = Arc::new(Coalescer::default());
        let leader = coalescer.join(key(1));
        let Role::Follower(follower) = coalescer.join(key(1)) else {
            panic!()
        };
        drop(leader);
        assert!(follower.wait().await.is_none());
        assert!(matches!(coalescer.join(key(1)), Role::Leader(_)));
    }
}
