//! deja's integration tests, one binary (linking one test binary, not one per file, and building
//! `support` once): each module is one concern, run against the real proxy on a loopback port
//! and a fake OpenAI upstream (`support`).

mod support;

mod admin;
mod admin_fidelity;
mod batches;
mod billing;
mod cache;
mod capacity;
mod crash_loop;
mod dashboard;
mod dashboard_browser;
mod disk_mount;
mod disk_trouble;
mod edge;
mod embedding_batch;
mod embedding_dimensions;
mod embedding_encoding;
mod embedding_window;
mod endpoints;
mod fake_upstream_selftest;
mod fuzz_regressions;
mod header_injection;
mod hostile;
mod index_restart;
mod isolation;
mod jobs;
mod jobs_redis;
mod jobs_restart;
mod layers;
mod local_embedding;
mod managed;
mod openai_sdk;
mod relay;
mod reload;
mod replay_fidelity;
mod replicas;
mod resilience;
mod resource_bounds;
mod responses_state;
mod restart;
mod startup_config;
mod stream_memory;
mod streaming;
mod trust;
mod upstream_faults;
mod verify_model;
mod verify_numbers;
