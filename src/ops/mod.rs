//! Operating deja: the admin listener (probes, metrics, cache administration, reload) and its
//! dashboard page.

pub mod admin;
pub mod dashboard;
