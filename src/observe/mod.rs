//! What deja records of itself: one record per request (`usage::Record`, filled in and
//! settled by `crate::track`), and what is made of it (the usage log, Prometheus
//! metrics, the dashboard's records in `board`), and the log lines. It imports none of the layers above it.

pub mod board;
pub mod metrics;
pub mod telemetry;
pub mod usage;
