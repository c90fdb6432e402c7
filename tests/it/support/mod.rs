#![allow(dead_code)]

pub mod admin;
pub mod cdp;
pub mod fake_upstream;
pub mod faulty_upstream;
pub mod process;
pub mod proxy;
pub mod redis_server;
pub mod sse;
pub mod webhook_receiver;
