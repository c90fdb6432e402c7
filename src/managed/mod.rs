//! Managed mode: deja keys, their per-key limits and budgets, and the metering of real usage
//! that settles them.

pub mod keys;
pub mod limits;
pub mod metering;
