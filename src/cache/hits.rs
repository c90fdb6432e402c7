//! How many times each entry was served, for the admin entry view and the dashboard. Kept in
//! memory, counted since this process started: persisting a count on every hit would put a
//! disk write on the hit path. Striped by id so concurrent hits rarely share a lock.

use std::collections::HashMap;

use parking_lot::Mutex;

const STRIPES: usize = 16;

#[derive(Default)]
pub struct HitCounts {
    stripes: [Mutex<HashMap<u64, u64>>; STRIPES],
}

impl HitCounts {
    fn stripe(&self, id: u64) -> &Mutex<HashMap<u64, u64>> {
        &self.stripes[(id as usize) % STRIPES]
    }

    pub fn served(&self, id: u64) {
        *self.stripe(id).lock().entry(id).or_default() += 1;
    }

    pub fn get(&self, id: u64) -> u64 {
        self.stripe(id).lock().get(&id).copied().unwrap_or(0)
    }

    pub fn forget(&self, id: u64) {
        self.stripe(id).lock().remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_id_and_forgets() {
        let hits = HitCounts::default();
        hits.served(3);
        hits.served(3);
        hits.served(19);
        assert_eq!((hits.get(3), hits.get(19), hits.get(4)), (2, 1, 0));
        hits.forget(3);
        assert_eq!((hits.get(3), hits.get(19)), (0, 1));
    }
}
