//! Managed mode: deja keys, their per-key limits and budgets, and the metering of real usage
//! that settles them. `track` follows every request (managed key or not) to its last byte
//! and settles it: the key's reservation, the metrics, the usage log, the dashboard.

pub mod enforce;
pub mod keys;
pub mod limits;
pub mod metering;
pub mod track;
