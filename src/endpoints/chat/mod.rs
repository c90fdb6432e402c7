//! `POST /v1/chat/completions`: the scope of a request, and the two forms of its answer.
//!
//! - `request`: which fields shape the answer; bypass rules
//! - `assemble`: SSE chunks → `chat.completion`
//! - `replay`: `chat.completion` → JSON or SSE chunks
//! - `audio`: joining streamed base64 audio pieces

pub mod assemble;
mod audio;
pub mod replay;
mod request;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::cache::Partition;
use crate::flow::{Assembler, Endpoint, Plan, plan_as};
use crate::replay::lazy_replay::Replay;
use crate::replay::text::fresh_id;
use assemble::ChatStreamAssembler;
use request::ChatRequest;

pub struct ChatCompletions;

impl Endpoint for ChatCompletions {
    fn name(&self) -> crate::wire::endpoint::EndpointName {
        crate::wire::endpoint::EndpointName::ChatCompletions
    }

    fn plan(&self, body: Value, partition: &Partition) -> Plan {
        plan_as(body, |request: ChatRequest| request.plan(partition))
    }

    fn assembler(&self) -> Box<dyn Assembler> {
        Box::new(ChatStreamAssembler::new())
    }

    fn render_json(&self, stored: &Value) -> Bytes {
        replay::render_json(stored, &fresh_id("chatcmpl-", 29))
    }

    fn render_json_text(&self, stored: &str) -> Option<Bytes> {
        replay::render_json_text(stored, &fresh_id("chatcmpl-", 29))
    }

    fn render_stream(&self, stored: Arc<Value>, include_usage: bool) -> Replay {
        replay::render_stream(stored, &fresh_id("chatcmpl-", 29), include_usage)
    }
}

impl Assembler for ChatStreamAssembler {
    fn push(&mut self, data: &str) {
        ChatStreamAssembler::push(self, data);
    }

    fn ended(&self) -> bool {
        ChatStreamAssembler::ended(self)
    }

    fn finish(self: Box<Self>) -> Option<Value> {
        ChatStreamAssembler::finish(*self)
    }
}
