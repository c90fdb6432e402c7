//! What reading a streamed chat completion costs deja per chunk: SSE parsing plus the chat
//! assembler that rebuilds the JSON answer to store (`flow/miss.rs`'s pump runs both on every
//! chunk it relays). Baseline, in the same run: parsing each chunk's JSON into a
//! `serde_json::Value` and nothing else, the floor of any assembler that looks at the chunks.
//!
//! `cargo bench --bench stream_assemble -- [ROUNDS]` (default 3 rounds, interleaved). Prints a
//! markdown table: ns per chunk for each stream shape and the ratio to the baseline.

use std::hint::black_box;
use std::time::Instant;

use deja::endpoints::chat::assemble::ChatStreamAssembler;
use deja::wire::sse::SseParser;
use serde_json::{Value, json};

/// Streams per measurement.
const STREAMS: usize = 4_000;

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    println!("# Stream assembly per chunk\n");
    println!("- command: `cargo bench --bench stream_assemble -- {rounds}`");
    println!(
        "- {STREAMS} streams per measurement, {rounds} interleaved rounds (baseline, deja, \
         baseline, deja...), median shown\n"
    );
    println!(
        "| stream | chunks | bytes | baseline: JSON parse only (ns/chunk) | deja: SSE + assembler (ns/chunk) | deja / baseline |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, stream) in [
        ("text, 150 words", text_stream()),
        ("tool calls", tool_stream()),
    ] {
        let chunks = stream.matches("\n\n").count();
        let (mut base, mut deja) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            base.push(per_chunk(&stream, chunks, parse_only));
            deja.push(per_chunk(&stream, chunks, assemble));
        }
        let (base, deja) = (median(base), median(deja));
        println!(
            "| {name} | {chunks} | {} | {base:.0} | {deja:.0} | {:.2} |",
            stream.len(),
            deja / base
        );
    }
}

fn per_chunk(stream: &str, chunks: usize, run: fn(&str)) -> f64 {
    run(stream); // warm
    let start = Instant::now();
    for _ in 0..STREAMS {
        run(black_box(stream));
    }
    start.elapsed().as_nanos() as f64 / (STREAMS * chunks) as f64
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The baseline: each event's JSON parsed into a `Value`, found by splitting on blank lines.
fn parse_only(stream: &str) {
    for event in stream.split("\n\n") {
        if let Some(data) = event.strip_prefix("data: ")
            && data != "[DONE]"
        {
            black_box(serde_json::from_str::<Value>(data).ok());
        }
    }
}

/// What the pump does: the stream in network-sized reads through the SSE parser, every event
/// into the assembler, the answer at the end.
fn assemble(stream: &str) {
    let mut parser = SseParser::new();
    let mut assembler = ChatStreamAssembler::new();
    for read in stream.as_bytes().chunks(1_400) {
        for event in parser.push(read) {
            assembler.push(&event.data);
        }
    }
    let answer = assembler.finish();
    assert!(answer.is_some(), "a clean stream assembles");
    black_box(answer);
}

fn event(chunk: Value) -> String {
    format!("data: {chunk}\n\n")
}

fn chunk(delta: Value, finish: Value) -> Value {
    json!({
        "id": "chatcmpl-BenchAssemble0000000000000",
        "object": "chat.completion.chunk",
        "created": 1_764_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_bench0000",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        "usage": null
    })
}

/// The usage chunk (no choices) and `[DONE]`.
fn closing(stream: &mut String) {
    let mut usage = chunk(Value::Null, Value::Null);
    usage["choices"] = json!([]);
    usage["usage"] = json!({"prompt_tokens": 24, "completion_tokens": 150, "total_tokens": 174});
    stream.push_str(&event(usage));
    stream.push_str("data: [DONE]\n\n");
}

/// A text answer a word a chunk, as the API streams it (with `include_usage`).
fn text_stream() -> String {
    let mut stream = event(chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    ));
    let words = "Caching repeated questions saves both time and money, because an answer that \
                 was already paid for can be served again in microseconds. "
        .repeat(7);
    for word in words.split_whitespace().take(150) {
        stream.push_str(&event(chunk(
            json!({"content": format!("{word} ")}),
            Value::Null,
        )));
    }
    stream.push_str(&event(chunk(json!({}), json!("stop"))));
    closing(&mut stream);
    stream
}

/// Two tool calls whose arguments arrive a few characters a chunk.
fn tool_stream() -> String {
    let mut stream = event(chunk(
        json!({"role": "assistant", "content": null, "refusal": null}),
        Value::Null,
    ));
    for (index, name) in [(0, "get_weather"), (1, "get_time")] {
        stream.push_str(&event(chunk(
            json!({"tool_calls": [{"index": index, "id": format!("call_{name}"), "type": "function",
                "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        )));
        let arguments = r#"{"location": "Paris, France", "unit": "celsius"}"#;
        for piece in arguments.as_bytes().chunks(4) {
            let piece = std::str::from_utf8(piece).expect("ascii");
            stream.push_str(&event(chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                Value::Null,
            )));
        }
    }
    stream.push_str(&event(chunk(json!({}), json!("tool_calls"))));
    closing(&mut stream);
    stream
}
