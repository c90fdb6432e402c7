//! What the admin API asks of the cache: an entry's neighbours (for tuning thresholds) and
//! deleting entries by owner or model. None of this is on a request's path.

use super::entry::Entry;
use super::key::Hash32;
use super::store::StoreError;
use super::{Cache, Requirements};

/// One stored entry near a query.
#[derive(Debug, Clone)]
pub struct Neighbour {
    pub id: u64,
    pub similarity: f32,
    pub entry: Entry,
    /// Whether verification (numbers, negation, ...) accepts it for the query.
    pub verified: bool,
    /// Live, and usable for a request with these requirements.
    pub usable: bool,
}

/// Which entries a purge deletes; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub tenant: Option<String>,
    pub namespace: Option<String>,
    pub model: Option<String>,
}

impl Selector {
    fn matches(&self, entry: &Entry) -> bool {
        self.tenant
            .as_ref()
            .is_none_or(|t| *t == entry.owner.tenant)
            && self
                .namespace
                .as_ref()
                .is_none_or(|n| in_namespace(&entry.owner.namespace, n))
            && self.model.as_ref().is_none_or(|m| *m == entry.model)
    }
}

/// Whether an entry stored under `stored` belongs to namespace `name`: the same, or narrowed
/// from it by a request header. A managed key's namespace `prod` stores as `prod|` (or
/// `prod|team` with `x-deja-namespace: team`; `|` cannot occur in a header).
fn in_namespace(stored: &str, name: &str) -> bool {
    stored == name
        || stored
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('|'))
}

impl Cache {
    /// The `k` entries of `scope` nearest to `vector`, most similar first.
    pub fn neighbours(
        &self,
        scope: &Hash32,
        vector: &[f32],
        query: &str,
        k: usize,
        needs: Requirements,
    ) -> Result<Vec<Neighbour>, StoreError> {
        let mut out = Vec::new();
        for candidate in self.index.search(*scope, vector, k) {
            let Some(entry) = self.store()?.get(candidate.id)? else {
                continue;
            };
            let verified = entry
                .prompt
                .as_ref()
                .is_none_or(|prompt| self.verify.load().accepts(query, prompt));
            out.push(Neighbour {
                id: candidate.id,
                similarity: candidate.similarity.min(1.0),
                usable: self.usable(&entry, needs),
                verified,
                entry,
            });
        }
        Ok(out)
    }

    /// One entry by id.
    pub fn get(&self, id: u64) -> Result<Option<Entry>, StoreError> {
        self.store()?.get(id)
    }

    /// How many times entry `id` was served since start-up.
    pub fn hit_count(&self, id: u64) -> u64 {
        self.hits.get(id)
    }

    /// Deletes every entry the selector matches; returns how many.
    pub fn purge(&self, selector: &Selector) -> Result<usize, StoreError> {
        let ids: Vec<u64> = self
            .store()?
            .scan()
            .filter_map(|item| match item {
                Ok((id, entry)) => selector.matches(&entry).then_some(Ok(id)),
                Err(err) => Some(Err(err)),
            })
            .collect::<Result<_, _>>()?;
        let mut removed = 0;
        for id in ids {
            removed += usize::from(self.remove(id)?);
        }
        Ok(removed)
    }
}
