#![allow(dead_code)]

pub mod admin;
pub mod fake_upstream;
pub mod proxy;
pub mod sse;
