"""deja's Batch API with the official `openai` Python SDK (run by tests/it/batches/mod.rs).

Warms the cache with one synchronous call, then uploads a batch input file of three lines
(that call's question, a new one, and the new one again), creates the batch, polls it with
`batches.retrieve` until it ends, reads the merged output with `files.content`, and checks
that a question the batch sent upstream is now a cache hit. Prints the custom_ids the
output holds; exits non-zero naming the first failure.
"""

import json
import os
import sys
import time

from openai import OpenAI

MODEL = "gpt-4o-mini"
client = OpenAI(
    base_url=os.environ["OPENAI_BASE_URL"],
    api_key="sk-test-e2e-batches",
    max_retries=0,
    timeout=30,
)


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def messages(question):
    return [{"role": "user", "content": question}]


CACHED = "Which river flows through Vienna?"
NEW = "How do penguins keep their eggs warm?"

client.chat.completions.create(model=MODEL, messages=messages(CACHED))

lines = [
    {"custom_id": "cached", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": MODEL, "messages": messages(CACHED)}},
    {"custom_id": "new", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": MODEL, "messages": messages(NEW)}},
    {"custom_id": "new-again", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": MODEL, "messages": messages(NEW)}},
]
data = "".join(json.dumps(line) + "\n" for line in lines).encode()
uploaded = client.files.create(file=("input.jsonl", data), purpose="batch")
batch = client.batches.create(
    input_file_id=uploaded.id,
    endpoint="/v1/chat/completions",
    completion_window="24h",
    metadata={"source": "sdk"},
)
check(batch.id.startswith("batch_deja_"), f"batch id {batch.id}")
check(batch.input_file_id == uploaded.id, "input_file_id is the caller's file")
check(batch.request_counts.total == 3, f"request_counts {batch.request_counts}")

deadline = time.time() + 20
while batch.status in ("validating", "in_progress", "finalizing"):
    check(time.time() < deadline, f"batch still {batch.status}")
    time.sleep(0.05)
    batch = client.batches.retrieve(batch.id)
check(batch.status == "completed", f"status {batch.status}: {batch.errors}")
check(batch.request_counts.completed == 3, f"request_counts {batch.request_counts}")

output = client.files.content(batch.output_file_id).text
rows = [json.loads(line) for line in output.splitlines()]
ids = [row["custom_id"] for row in rows]
check(ids == ["cached", "new", "new-again"], f"custom_ids {ids}")
answers = [row["response"]["body"]["choices"][0]["message"]["content"] for row in rows]
check(answers[1] == answers[2], "a repeated line gets the answer of the line sent")
retrieved = client.files.retrieve(batch.output_file_id)
check(retrieved.purpose == "batch_output", f"file purpose {retrieved.purpose}")

again = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages(NEW))
check(again.headers.get("x-deja-cache") == "hit", "the batch's answer is in the cache")
check(again.parse().choices[0].message.content == answers[1], "the hit is the batch's answer")
print(json.dumps({"custom_ids": ids, "status": batch.status}))
