//! Whose cache a request reads and whose an entry is: the tenant (from credentials or a
//! managed key) and an optional namespace. The flow picks a request's partition; the store
//! keeps it with each entry (for purging a tenant or a namespace). Lookups never read it
//! from an entry: the scope key already contains both.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub tenant: String,
    pub namespace: String,
}

#[cfg(test)]
impl Partition {
    /// `tenant`'s partition without a namespace.
    pub(crate) fn of_tenant(tenant: &str) -> Partition {
        Partition {
            tenant: tenant.into(),
            namespace: String::new(),
        }
    }
}
