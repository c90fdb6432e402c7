//! Operating deja: the admin listener and its dashboard, one record per request (`track`) and
//! what is made of it (usage log, Prometheus metrics), and logging.

pub mod admin;
pub mod dashboard;
pub mod metrics;
pub mod telemetry;
pub mod track;
pub mod usage;
