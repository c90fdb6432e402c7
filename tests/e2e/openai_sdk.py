"""deja end to end with the official `openai` Python SDK (run by tests/it/openai_sdk.rs).

Each request is made twice against deja (OPENAI_BASE_URL): the first goes upstream (a miss),
the second must be served from the cache and look the same to the SDK. Covered: a plain
completion, the same question reworded (a semantic hit, as JSON and as a stream), deja's
controls as `extra_headers` (a bad one is a typed error; a namespace or another temperature
misses the other's answer), a stream with usage, a stream the app closes and then asks for
again, Structured Outputs through the parse helper, a burst of one question at once
(AsyncOpenAI), a two-turn conversation holding the SDK's message objects, a tool call, the
Responses API (plain and streamed; the plain hit is retrieved and chained from by id) and
embeddings (a batch whose second call is half cached). Exits non-zero naming the first failure.
"""

import asyncio
import os
import sys

import openai
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

MODEL = "gpt-4o-mini"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

# No retries: a retried request would hide a failure and upset the upstream call count.
client = OpenAI(
    base_url=os.environ["OPENAI_BASE_URL"],
    api_key="sk-test-e2e",
    max_retries=0,
    timeout=30,
)


class Failure(Exception):
    pass


# x-deja-match of every repeat, for the summary line.
matches = []
# Repeats that deja answered as a miss where either was right; the Rust side counts them in.
repeats_upstream = 0


def check(condition, message):
    if not condition:
        raise Failure(message)


def check_cache(headers, expected, what):
    """x-deja-cache is `expected`. A repeat is an exact hit, or `coalesced` when it arrives
    while deja is still writing the first answer to its store (then it is served that answer
    in flight); either way nothing goes upstream, which the Rust side counts."""
    cache = headers.get("x-deja-cache")
    check(cache == expected, f"{what}: x-deja-cache is {cache!r}, expected {expected!r}")
    if expected == "hit":
        match = headers.get("x-deja-match")
        check(match in ("exact", "coalesced"), f"{what}: x-deja-match is {match!r}")
        matches.append(match)


def read_chunks(chunks, what):
    """A streamed completion read as an app reads it: its text, last finish_reason and the
    usage chunk (which must carry no choices)."""
    text, finish, usage = [], None, None
    for chunk in chunks:
        if chunk.usage is not None:
            check(chunk.choices == [], f"{what}: usage chunk has choices")
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(text), finish, usage


def chat_twice():
    messages = [{"role": "user", "content": "Name three primary colors."}]
    answers = []
    for expected in ("miss", "hit"):
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
        check_cache(raw.headers, expected, f"chat ({expected})")
        completion = raw.parse()
        check(completion.choices[0].message.content, f"chat ({expected}): empty content")
        check(completion.usage is not None, f"chat ({expected}): no usage")
        check(completion.usage.total_tokens > 0, f"chat ({expected}): zero usage")
        answers.append(completion)
    first, second = answers
    check(
        first.choices[0].message.content == second.choices[0].message.content,
        f"chat: hit content {second.choices[0].message.content!r} "
        f"!= original {first.choices[0].message.content!r}",
    )
    check(first.usage == second.usage, f"chat: hit usage {second.usage} != {first.usage}")


def stream_twice():
    messages = [{"role": "user", "content": "Write a haiku about autumn rain."}]
    answers = []
    for expected in ("miss", "hit"):
        with client.chat.completions.with_streaming_response.create(
            model=MODEL,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            check_cache(response.headers, expected, f"stream ({expected})")
            text, finish, usage = read_chunks(response.parse(), f"stream ({expected})")
        check(usage is not None, f"stream ({expected}): no usage chunk")
        check(finish == "stop", f"stream ({expected}): finish_reason {finish!r}")
        answers.append((text, usage))
    (first_text, first_usage), (second_text, second_usage) = answers
    check(first_text, "stream: no content")
    check(first_text == second_text, f"stream: hit {second_text!r} != original {first_text!r}")
    check(first_usage == second_usage, f"stream: hit usage {second_usage} != {first_usage}")


def reworded_question():
    """The same question in other words (case, punctuation): a semantic hit, which the SDK
    parses like the answer it came from, as JSON and as a stream."""
    answers = []
    for question, expected in (
        ("What is the tallest mountain in Europe?", "miss"),
        ("what is the tallest mountain in europe", "semantic"),
    ):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": question}]
        )
        cache, match = raw.headers.get("x-deja-cache"), raw.headers.get("x-deja-match")
        if expected == "miss":
            check(cache == "miss", f"reworded: first ask x-deja-cache {cache!r}")
        else:
            check((cache, match) == ("hit", "semantic"), f"reworded: {cache!r} {match!r}")
            similarity = float(raw.headers.get("x-deja-similarity", "nan"))
            check(0.9 <= similarity <= 1.0, f"reworded: similarity {similarity}")
        answers.append(raw.parse())
    first, second = answers
    check(
        first.choices[0].message.content == second.choices[0].message.content,
        f"reworded: {second.choices[0].message.content!r} != {first.choices[0].message.content!r}",
    )
    # Reworded again and streamed: the stored answer replayed as chunks the SDK reads.
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "WHAT is the tallest mountain in Europe"}],
        stream=True,
    ) as response:
        cache, match = response.headers.get("x-deja-cache"), response.headers.get("x-deja-match")
        check((cache, match) == ("hit", "semantic"), f"reworded, streamed: {cache!r} {match!r}")
        text, _, _ = read_chunks(response.parse(), "reworded, streamed")
    check(text == first.choices[0].message.content, f"reworded, streamed: {text!r}")


def controls_through_extra_headers():
    """deja's per-request controls as an app sets them (`extra_headers`): a bad one is refused
    with an error the SDK types like the API's own (nothing goes upstream); a namespace keeps
    another tenant's cached answer out of reach, as another temperature does."""
    messages = [{"role": "user", "content": "Name three primary colors."}]
    try:
        client.chat.completions.create(
            model=MODEL, messages=messages, extra_headers={"x-deja-threshold": "1.5"}
        )
        raise Failure("bad threshold: accepted")
    except openai.BadRequestError as refused:
        check(refused.status_code == 400, f"bad threshold: status {refused.status_code}")
        check(refused.type == "invalid_request_error", f"bad threshold: type {refused.type!r}")
        check(refused.code == "invalid_request", f"bad threshold: code {refused.code!r}")
        check("x-deja-threshold" in refused.message, f"bad threshold: {refused.message!r}")
    # The question chat_twice cached, asked in a namespace of its own: a miss.
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, extra_headers={"x-deja-namespace": "tenant-b"}
    )
    check_cache(raw.headers, "miss", "another namespace")
    # Or sampled otherwise: another request too, never the answer given at the default.
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, temperature=1.5
    )
    check_cache(raw.headers, "miss", "another temperature")


def closed_stream_then_repeat():
    """An app that stops reading a stream closes it. Asked again, the question is answered in
    full, never with the cut-off part: joining the capture deja may still be reading, from the
    store if deja read it all before noticing, or upstream again if deja had stopped (a lone
    hang-up stores nothing). The Rust side slows the fake upstream's chunks so the close lands
    mid-stream, and checks the upstream calls against what the headers said."""
    global repeats_upstream
    question = "Tell a long story about the sea and its ships."
    request = dict(model=MODEL, messages=[{"role": "user", "content": question}], stream=True)
    stream = client.chat.completions.create(**request)
    finished = False
    for read, chunk in enumerate(stream, start=1):
        finished = finished or any(choice.finish_reason for choice in chunk.choices)
        if read == 2:
            break
    stream.close()
    check(not finished, "closed stream: the whole answer arrived before the close")

    with client.chat.completions.with_streaming_response.create(**request) as response:
        cache = response.headers.get("x-deja-cache")
        check(cache in ("hit", "miss"), f"closed stream, asked again: x-deja-cache {cache!r}")
        repeats_upstream += cache == "miss"
        text, finish, _ = read_chunks(response.parse(), "closed stream, asked again")
    check(finish == "stop", f"closed stream, asked again: finish_reason {finish!r}")
    check(text.endswith(question), f"closed stream, asked again: {text!r}")


class CityFacts(BaseModel):
    city: str
    population: int
    coastal: bool


def structured_twice():
    """Structured Outputs through the SDK's parse helper (a Pydantic model as the format): the
    hit parses into the same model. The same question as plain text is another request."""
    messages = [{"role": "user", "content": "Give facts about Lisbon."}]
    parsed = []
    for expected in ("miss", "hit"):
        raw = client.chat.completions.with_raw_response.parse(
            model=MODEL, messages=messages, response_format=CityFacts
        )
        check_cache(raw.headers, expected, f"structured ({expected})")
        message = raw.parse().choices[0].message
        check(isinstance(message.parsed, CityFacts), f"structured ({expected}): {message}")
        parsed.append(message.parsed)
    check(parsed[0] == parsed[1], f"structured: hit {parsed[1]} != {parsed[0]}")
    plain = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
    check_cache(plain.headers, "miss", "structured question asked as plain text")


def burst_of_the_same_question():
    """An async app (AsyncOpenAI) asking one question eight times at once: one request goes
    upstream, the others wait for its answer or find it stored, and all get the same answer."""

    async def burst():
        async with AsyncOpenAI(
            base_url=os.environ["OPENAI_BASE_URL"], api_key="sk-test-e2e", max_retries=0
        ) as async_client:
            messages = [{"role": "user", "content": "What is the boiling point of water?"}]
            return await asyncio.gather(
                *(
                    async_client.chat.completions.with_raw_response.create(
                        model=MODEL, messages=messages
                    )
                    for _ in range(8)
                )
            )

    raws = asyncio.run(burst())
    caches = [raw.headers.get("x-deja-cache") for raw in raws]
    check(
        sorted(caches) == ["hit"] * 7 + ["miss"],
        f"burst: x-deja-cache {caches}, expected one miss and seven hits",
    )
    contents = {raw.parse().choices[0].message.content for raw in raws}
    check(len(contents) == 1, f"burst: {len(contents)} different answers")


def conversation_twice():
    """A two-turn conversation as apps hold one, the SDK's message object appended as it came
    back, run twice: every turn of the second run is a hit, the second turn's key taking the
    first turn's answer (a hit) exactly as the original run sent it."""
    runs = []
    for expected in ("miss", "hit"):
        messages = [{"role": "user", "content": "Suggest a name for a grey cat."}]
        turns = []
        for follow_up in ("And one for a black cat?", None):
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
            check_cache(raw.headers, expected, f"conversation turn {len(turns) + 1} ({expected})")
            message = raw.parse().choices[0].message
            turns.append(message.content)
            if follow_up:
                messages += [message, {"role": "user", "content": follow_up}]
        runs.append(turns)
    check(runs[0] == runs[1], f"conversation: {runs[1]} != {runs[0]}")


def tool_call_twice():
    messages = [{"role": "user", "content": "What is the weather in Paris today?"}]
    calls = []
    for expected in ("miss", "hit"):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, tools=[WEATHER_TOOL]
        )
        check_cache(raw.headers, expected, f"tool call ({expected})")
        choice = raw.parse().choices[0]
        check(choice.finish_reason == "tool_calls", f"tool call ({expected}): {choice}")
        tool_calls = choice.message.tool_calls or []
        check(tool_calls, f"tool call ({expected}): no tool_calls in {choice.message}")
        name = tool_calls[0].function.name
        check(name == "get_weather", f"tool call ({expected}): function {name!r}")
        calls.append(tool_calls[0].function.arguments)
    check(calls[0] == calls[1], f"tool call: hit arguments {calls[1]!r} != {calls[0]!r}")


def responses_twice():
    # As a typical app asks: without `store`, so the upstream stores the response.
    question = "What is the capital of France?"
    answers = []
    for expected in ("miss", "hit"):
        raw = client.responses.with_raw_response.create(
            model="gpt-4.1-mini", input=question, instructions="Be brief."
        )
        check_cache(raw.headers, expected, f"responses ({expected})")
        response = raw.parse()
        check(response.status == "completed", f"responses ({expected}): {response.status}")
        check(response.usage is not None, f"responses ({expected}): no usage")
        check(response.error is None, f"responses ({expected}): error {response.error}")
        answers.append(response)
    first, second = answers
    check(
        first.output_text and first.output_text == second.output_text,
        f"responses: hit {second.output_text!r} != {first.output_text!r}",
    )
    # The hit is the stored response: it can be retrieved and chained from.
    check(second.id == first.id, f"responses: hit id {second.id} != stored {first.id}")
    retrieved = client.responses.retrieve(second.id)
    check(retrieved.output_text == second.output_text, f"responses: retrieved {retrieved}")
    chained = client.responses.with_raw_response.create(
        model="gpt-4.1-mini", input="And of Italy?", previous_response_id=second.id
    )
    check_cache(chained.headers, "bypass", "responses chained from a hit")
    check(chained.parse().status == "completed", "responses: chained from a hit")

    streamed = []
    for expected in ("miss", "hit"):
        with client.responses.with_streaming_response.create(
            model="gpt-4.1-mini", input="Why is the sky blue?", store=False, stream=True
        ) as response:
            check_cache(response.headers, expected, f"responses stream ({expected})")
            deltas, completed = [], None
            for event in response.parse():
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
                elif event.type == "response.completed":
                    completed = event.response
        check(completed is not None, f"responses stream ({expected}): no response.completed")
        check("".join(deltas) == completed.output_text, f"responses stream ({expected}): deltas")
        streamed.append(completed.output_text)
    check(streamed[0] == streamed[1], f"responses stream: hit {streamed[1]!r} != {streamed[0]!r}")


def embeddings_twice():
    first = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["alpha beta", "gamma delta"]
    )
    check_cache(first.headers, "miss", "embeddings (miss)")
    second = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["gamma delta", "epsilon"]
    )
    cached = second.headers.get("x-deja-cached-inputs")
    check(cached == "1/2", f"embeddings: x-deja-cached-inputs is {cached!r}, expected '1/2'")
    a, b = first.parse(), second.parse()
    check([d.index for d in b.data] == [0, 1], f"embeddings: indexes {[d.index for d in b.data]}")
    check(b.data[0].embedding == a.data[1].embedding, "embeddings: cached vector differs")
    check(b.usage.prompt_tokens == 1, f"embeddings: usage counts cached inputs: {b.usage}")


def main():
    steps = (
        chat_twice,
        reworded_question,
        controls_through_extra_headers,
        stream_twice,
        closed_stream_then_repeat,
        structured_twice,
        burst_of_the_same_question,
        conversation_twice,
        tool_call_twice,
        responses_twice,
        embeddings_twice,
    )
    try:
        for step in steps:
            step()
    except Failure as failure:
        print(f"openai_sdk.py: FAILED: {failure}", file=sys.stderr)
        return 1
    except openai.OpenAIError as error:
        print(f"openai_sdk.py: FAILED: SDK error: {error!r}", file=sys.stderr)
        return 1
    print(
        f"openai_sdk.py: ok (openai {openai.__version__}): chat, stream, structured, "
        "conversation, tool-call and "
        f"responses repeats all hits ({', '.join(matches)}); a rewording a semantic hit; a "
        "closed stream answered whole "
        "when asked again; a bad control refused, a namespace kept apart, a burst answered by one "
        "upstream call; embeddings partly "
        "cached"
    )
    print(f"repeats that went upstream: {repeats_upstream}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
