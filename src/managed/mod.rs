//! Managed mode: deja keys and their per-key limits and budgets. Enforcing them per request,
//! and settling them from the metered usage, is `crate::track`'s.

pub mod keys;
pub mod limits;
