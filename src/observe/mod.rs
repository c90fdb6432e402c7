//! What deja records of itself: one record per request (`track`), and what is made of it (the
//! usage log, Prometheus metrics), and the log lines.

pub mod metrics;
pub mod telemetry;
pub mod track;
pub mod usage;
