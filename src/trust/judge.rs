//! Do two answers to one question agree? By default the configured embedder reads both
//! answers and their cosine is compared with `agreement_threshold`; with `judge_model` a
//! chat model is asked through the upstream, with a strict yes/no prompt.

use serde_json::{Value, json};

/// Answers are compared on their first this many bytes: an embedding model reads a few
/// hundred tokens, and an opening that agrees rarely hides an answer that does not.
const COMPARED_BYTES: usize = 1000;

pub const JUDGE_PROMPT: &str = "You compare two answers to the same question. Reply with \
exactly one word: \"yes\" if both answers give the same information and either could be \
served in place of the other, \"no\" if they differ in any fact, number, name, or \
conclusion that matters to the question. No other words.";

/// A judge's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Agree,
    Disagree,
    /// No verdict (an answer without text, a judge that answered neither yes nor no, an
    /// embedding error): not a sample.
    Unsure,
}

/// The text of a stored or fresh answer, whatever the endpoint (chat, Responses, legacy
/// completions): message text, refusals and tool calls, in order.
pub fn answer_text(answer: &Value) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let tool = |parts: &mut Vec<String>, call: &Value| {
        let function = if call["function"].is_object() {
            &call["function"]
        } else {
            call
        };
        if let Some(name) = function["name"].as_str() {
            let args = function["arguments"].as_str().unwrap_or_default();
            parts.push(format!("{name}({args})"));
        }
    };
    if let Some(choice) = answer["choices"].get(0) {
        if let Some(text) = choice["text"].as_str() {
            return Some(text.to_string());
        }
        let message = &choice["message"];
        for field in ["content", "refusal"] {
            if let Some(text) = message[field].as_str() {
                parts.push(text.to_string());
            }
        }
        message["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .for_each(|call| tool(&mut parts, call));
    } else if let Some(output) = answer["output"].as_array() {
        for item in output {
            match item["type"].as_str() {
                Some("message") => {
                    for part in item["content"].as_array().into_iter().flatten() {
                        let text = part["text"].as_str().or(part["refusal"].as_str());
                        if let Some(text) = text {
                            parts.push(text.to_string());
                        }
                    }
                }
                Some("function_call") => tool(&mut parts, item),
                _ => {}
            }
        }
    }
    (!parts.is_empty()).then(|| parts.join("\n"))
}

/// `text` cut to at most `COMPARED_BYTES`, on a character boundary.
pub fn opening(text: &str) -> &str {
    if text.len() <= COMPARED_BYTES {
        return text;
    }
    let mut end = COMPARED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// The chat request that asks `model` whether `cached` and `fresh` agree on `question`.
pub fn judge_request(model: &str, question: &str, cached: &str, fresh: &str) -> Value {
    let user = format!(
        "Question:\n{}\n\nAnswer A:\n{}\n\nAnswer B:\n{}\n\nDo A and B agree?",
        opening(question),
        opening(cached),
        opening(fresh)
    );
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": JUDGE_PROMPT},
            {"role": "user", "content": user},
        ],
    })
}

/// Reads the judge model's chat answer: a first word of yes or no, nothing else counts.
pub fn read_judgement(answer: &Value) -> Verdict {
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    let word: String = text
        .trim()
        .chars()
        .take_while(|c| c.is_alphabetic())
        .collect::<String>()
        .to_lowercase();
    match word.as_str() {
        "yes" => Verdict::Agree,
        "no" => Verdict::Disagree,
        _ => Verdict::Unsure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_text_of_every_endpoint() {
        let chat = json!({"choices": [{"message": {"content": "Paris", "tool_calls": [
            {"type": "function", "function": {"name": "w", "arguments": "{}"}}]}}]});
        assert_eq!(answer_text(&chat).as_deref(), Some("Paris\nw({})"));
        let legacy = json!({"choices": [{"text": "Lyon"}]});
        assert_eq!(answer_text(&legacy).as_deref(), Some("Lyon"));
        let responses = json!({"output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "Nice"}]}]});
        assert_eq!(answer_text(&responses).as_deref(), Some("Nice"));
        assert_eq!(answer_text(&json!({"choices": [{"message": {}}]})), None);
    }

    #[test]
    fn a_judge_must_say_yes_or_no_first() {
        let say = |t: &str| json!({"choices": [{"message": {"content": t}}]});
        assert_eq!(read_judgement(&say("Yes.")), Verdict::Agree);
        assert_eq!(read_judgement(&say(" no")), Verdict::Disagree);
        assert_eq!(read_judgement(&say("Not sure, yes")), Verdict::Unsure);
        assert_eq!(read_judgement(&say("nothing")), Verdict::Unsure);
    }

    #[test]
    fn the_opening_cuts_on_a_character_boundary() {
        let long = "é".repeat(COMPARED_BYTES);
        let cut = opening(&long);
        assert!(cut.len() <= COMPARED_BYTES && cut.chars().all(|c| c == 'é'));
    }
}
