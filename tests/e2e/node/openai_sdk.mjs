// deja end to end with the official `openai` Node SDK (run by tests/it/openai_sdk.rs).
//
// The same calls as tests/e2e/openai_sdk.py, as a Node app makes them: each request twice
// against deja (OPENAI_BASE_URL), the first a miss, the second served from the cache and
// parsed by the SDK like the original. Covered: a plain completion, the same question reworded
// (a semantic hit, as JSON and as a stream), deja's controls as request options (a bad one is a
// typed error; a namespace or another temperature misses the other's answer), a stream with
// usage, the SDK's own stream helper (`chat.completions.stream` and its final completion), a
// stream the app aborts and then asks for again, a burst of one question at once, Structured
// Outputs through the parse helper, a two-turn conversation holding the SDK's message objects,
// a tool call, the Responses API (plain and streamed; the plain hit is retrieved and chained
// from by id) and embeddings (which this SDK asks for as base64 and decodes itself; a batch
// whose second call is half cached). Exits non-zero naming the first failure.

import OpenAI from "openai";
import { readFileSync } from "node:fs";

const MODEL = "gpt-4o-mini";
const WEATHER_TOOL = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather in a city.",
    parameters: {
      type: "object",
      properties: { city: { type: "string" } },
      required: ["city"],
    },
  },
};

// No retries: a retried request would hide a failure and upset the upstream call count.
const client = new OpenAI({
  baseURL: process.env.OPENAI_BASE_URL,
  apiKey: "sk-test-e2e",
  maxRetries: 0,
  timeout: 30_000,
});

class Failure extends Error {}

// x-deja-match of every repeat, for the summary line.
const matches = [];
// Repeats that deja answered as a miss where either was right; the Rust side counts them in.
let repeatsUpstream = 0;

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// x-deja-cache is `expected`. A repeat is an exact hit, or `coalesced` when it arrives while
// deja is still writing the first answer to its store; either way nothing goes upstream,
// which the Rust side counts.
function checkCache(headers, expected, what) {
  const cache = headers.get("x-deja-cache");
  check(cache === expected, `${what}: x-deja-cache is ${cache}, expected ${expected}`);
  if (expected === "hit") {
    const match = headers.get("x-deja-match");
    check(match === "exact" || match === "coalesced", `${what}: x-deja-match is ${match}`);
    matches.push(match);
  }
}

// A streamed completion read as an app reads it: its text, last finish_reason and the usage
// chunk (which must carry no choices).
async function readChunks(stream, what) {
  let text = "";
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) {
      check(chunk.choices.length === 0, `${what}: usage chunk has choices`);
      usage = chunk.usage;
    }
    for (const choice of chunk.choices) {
      text += choice.delta.content ?? "";
      finish = choice.finish_reason ?? finish;
    }
  }
  return { text, finish, usage };
}

async function chatTwice() {
  const messages = [{ role: "user", content: "Name three primary colors." }];
  const answers = [];
  for (const expected of ["miss", "hit"]) {
    const { data, response } = await client.chat.completions
      .create({ model: MODEL, messages })
      .withResponse();
    checkCache(response.headers, expected, `chat (${expected})`);
    check(data.choices[0].message.content, `chat (${expected}): empty content`);
    check(data.usage?.total_tokens > 0, `chat (${expected}): no usage`);
    answers.push(data);
  }
  const [first, second] = answers;
  check(
    first.choices[0].message.content === second.choices[0].message.content,
    `chat: hit content ${second.choices[0].message.content} != ${first.choices[0].message.content}`,
  );
  check(same(first.usage, second.usage), "chat: hit usage differs");
}

async function streamTwice() {
  const messages = [{ role: "user", content: "Write a haiku about autumn rain." }];
  const answers = [];
  for (const expected of ["miss", "hit"]) {
    const { data: stream, response } = await client.chat.completions
      .create({
        model: MODEL,
        messages,
        stream: true,
        stream_options: { include_usage: true },
      })
      .withResponse();
    checkCache(response.headers, expected, `stream (${expected})`);
    const { text, finish, usage } = await readChunks(stream, `stream (${expected})`);
    check(usage, `stream (${expected}): no usage chunk`);
    check(finish === "stop", `stream (${expected}): finish_reason ${finish}`);
    answers.push({ text, usage });
  }
  const [first, second] = answers;
  check(first.text, "stream: no content");
  check(first.text === second.text, `stream: hit ${second.text} != ${first.text}`);
  check(same(first.usage, second.usage), "stream: hit usage differs");
}

// What Node apps often use instead of iterating chunks: the SDK assembles the completion.
async function streamHelperTwice() {
  const messages = [{ role: "user", content: "List two prime numbers." }];
  const finals = [];
  for (const expected of ["miss", "hit"]) {
    const runner = client.chat.completions.stream({ model: MODEL, messages });
    let deltas = "";
    runner.on("content", (delta) => {
      deltas += delta;
    });
    const final = await runner.finalChatCompletion();
    check(final.choices[0].message.content, `stream helper (${expected}): no content`);
    check(
      deltas === final.choices[0].message.content,
      `stream helper (${expected}): deltas ${deltas} != final ${final.choices[0].message.content}`,
    );
    finals.push(final.choices[0].message.content);
  }
  check(finals[0] === finals[1], `stream helper: hit ${finals[1]} != ${finals[0]}`);
}

// An app that stops reading a stream (the user closed the page) aborts it. Asked again, the
// question is answered in full, never with the cut-off part: joining the capture deja may
// still be reading, from the store if deja read it all before noticing, or upstream again if
// deja had stopped (a lone hang-up stores nothing). The Rust side slows the fake upstream's
// chunks so the abort lands mid-stream, and checks the upstream calls against what the
// headers said (`repeatsUpstream`).
async function abortedStreamThenRepeat() {
  const request = {
    model: MODEL,
    messages: [{ role: "user", content: "Tell a long story about the sea and its ships." }],
    stream: true,
  };
  const controller = new AbortController();
  const stream = await client.chat.completions.create(request, { signal: controller.signal });
  let chunks = 0;
  let finished = false;
  try {
    for await (const chunk of stream) {
      chunks += 1;
      finished ||= chunk.choices.some((choice) => choice.finish_reason);
      if (chunks === 2) controller.abort();
    }
  } catch (error) {
    // The SDK ends the iteration quietly on an abort, or throws one of these.
    const abort = error instanceof OpenAI.APIUserAbortError || error?.name === "AbortError";
    if (!abort) throw error;
  }
  check(!finished, `aborted stream: all ${chunks} chunks arrived before the abort took effect`);

  const { data: again, response } = await client.chat.completions.create(request).withResponse();
  const cache = response.headers.get("x-deja-cache");
  check(cache === "hit" || cache === "miss", `aborted stream, asked again: x-deja-cache ${cache}`);
  if (cache === "miss") repeatsUpstream += 1;
  const { text, finish } = await readChunks(again, "aborted stream, asked again");
  check(finish === "stop", `aborted stream, asked again: finish_reason ${finish}`);
  check(
    text.endsWith("Tell a long story about the sea and its ships."),
    `aborted stream, asked again: not the whole answer: ${text}`,
  );
}

// The same question in other words (case, punctuation): a semantic hit, which the SDK parses
// like the answer it came from, as JSON and as a stream.
async function rewordedQuestion() {
  const answers = [];
  for (const [question, expected] of [
    ["What is the tallest mountain in Europe?", "miss"],
    ["what is the tallest mountain in europe", "semantic"],
  ]) {
    const { data, response } = await client.chat.completions
      .create({ model: MODEL, messages: [{ role: "user", content: question }] })
      .withResponse();
    const cache = response.headers.get("x-deja-cache");
    const match = response.headers.get("x-deja-match");
    if (expected === "miss") {
      check(cache === "miss", `reworded: first ask x-deja-cache ${cache}`);
    } else {
      check(cache === "hit" && match === "semantic", `reworded: ${cache} ${match}`);
      const similarity = Number(response.headers.get("x-deja-similarity"));
      check(similarity >= 0.9 && similarity <= 1, `reworded: similarity ${similarity}`);
    }
    answers.push(data.choices[0].message.content);
  }
  check(answers[0] === answers[1], `reworded: ${answers[1]} != ${answers[0]}`);
  // Reworded again and streamed: the stored answer replayed as chunks the SDK reads.
  const { data: stream, response } = await client.chat.completions
    .create({
      model: MODEL,
      messages: [{ role: "user", content: "WHAT is the tallest mountain in Europe" }],
      stream: true,
    })
    .withResponse();
  const cache = response.headers.get("x-deja-cache");
  const match = response.headers.get("x-deja-match");
  check(cache === "hit" && match === "semantic", `reworded, streamed: ${cache} ${match}`);
  const { text } = await readChunks(stream, "reworded, streamed");
  check(text === answers[0], `reworded, streamed: ${text}`);
}

// deja's per-request controls as an app sets them, through the SDK's request options: a bad
// one is refused with an error the SDK types like the API's own (and nothing goes upstream);
// a namespace keeps another tenant's cached answer out of reach, as another temperature does.
async function controlsThroughRequestOptions() {
  const messages = [{ role: "user", content: "Name three primary colors." }];
  let refused = null;
  try {
    await client.chat.completions.create(
      { model: MODEL, messages },
      { headers: { "x-deja-threshold": "1.5" } },
    );
  } catch (error) {
    refused = error;
  }
  check(refused instanceof OpenAI.BadRequestError, `bad threshold: ${refused}`);
  check(refused.status === 400, `bad threshold: status ${refused.status}`);
  check(refused.type === "invalid_request_error", `bad threshold: type ${refused.type}`);
  check(refused.code === "invalid_request", `bad threshold: code ${refused.code}`);
  check(/x-deja-threshold/.test(refused.message), `bad threshold: message ${refused.message}`);

  // The question chatTwice cached, asked in a namespace of its own: a miss.
  const { response } = await client.chat.completions
    .create({ model: MODEL, messages }, { headers: { "x-deja-namespace": "tenant-b" } })
    .withResponse();
  checkCache(response.headers, "miss", "another namespace");
  // Or sampled otherwise: another request too, never the answer given at the default.
  const warmer = await client.chat.completions
    .create({ model: MODEL, messages, temperature: 1.5 })
    .withResponse();
  checkCache(warmer.response.headers, "miss", "another temperature");
}

// A burst of the same question at once (a page load fanning out, a retry storm): one goes
// upstream, the others wait for its answer or find it stored, and all get the same answer.
async function burstOfTheSameQuestion() {
  const messages = [{ role: "user", content: "What is the boiling point of water?" }];
  const results = await Promise.all(
    Array.from({ length: 8 }, () =>
      client.chat.completions.create({ model: MODEL, messages }).withResponse(),
    ),
  );
  const caches = results.map(({ response }) => response.headers.get("x-deja-cache"));
  check(
    caches.filter((cache) => cache === "miss").length === 1 &&
      caches.filter((cache) => cache === "hit").length === 7,
    `burst: x-deja-cache ${caches.join(", ")}, expected one miss and seven hits`,
  );
  const contents = new Set(results.map(({ data }) => data.choices[0].message.content));
  check(contents.size === 1, `burst: ${contents.size} different answers`);
}

// Structured Outputs through the SDK's parse helper (a JSON schema as the format; the SDK
// parses the content): the hit parses the same. The same question as plain text is another
// request.
async function structuredTwice() {
  const messages = [{ role: "user", content: "Give facts about Lisbon." }];
  const response_format = {
    type: "json_schema",
    json_schema: {
      name: "city_facts",
      strict: true,
      schema: {
        type: "object",
        additionalProperties: false,
        required: ["city", "population", "coastal"],
        properties: {
          city: { type: "string" },
          population: { type: "integer" },
          coastal: { type: "boolean" },
        },
      },
    },
  };
  const parsed = [];
  for (const expected of ["miss", "hit"]) {
    const { data, response } = await client.chat.completions
      .parse({ model: MODEL, messages, response_format })
      .withResponse();
    checkCache(response.headers, expected, `structured (${expected})`);
    const facts = data.choices[0].message.parsed;
    check(
      typeof facts?.city === "string" && Number.isInteger(facts.population),
      `structured (${expected}): parsed ${JSON.stringify(facts)}`,
    );
    parsed.push(facts);
  }
  check(same(parsed[0], parsed[1]), "structured: hit parsed differently");
  const plain = await client.chat.completions.create({ model: MODEL, messages }).withResponse();
  checkCache(plain.response.headers, "miss", "structured question asked as plain text");
}

// A two-turn conversation as apps hold one, the SDK's message object pushed back as it came,
// run twice: every turn of the second run is a hit, the second turn's key taking the first
// turn's answer (a hit) exactly as the original run sent it.
async function conversationTwice() {
  const runs = [];
  for (const expected of ["miss", "hit"]) {
    const messages = [{ role: "user", content: "Suggest a name for a grey cat." }];
    const turns = [];
    for (const followUp of ["And one for a black cat?", null]) {
      const { data, response } = await client.chat.completions
        .create({ model: MODEL, messages })
        .withResponse();
      checkCache(response.headers, expected, `conversation turn ${turns.length + 1} (${expected})`);
      const message = data.choices[0].message;
      turns.push(message.content);
      if (followUp) messages.push(message, { role: "user", content: followUp });
    }
    runs.push(turns);
  }
  check(same(runs[0], runs[1]), `conversation: ${runs[1]} != ${runs[0]}`);
}

async function toolCallTwice() {
  const messages = [{ role: "user", content: "What is the weather in Paris today?" }];
  const calls = [];
  for (const expected of ["miss", "hit"]) {
    const { data, response } = await client.chat.completions
      .create({ model: MODEL, messages, tools: [WEATHER_TOOL] })
      .withResponse();
    checkCache(response.headers, expected, `tool call (${expected})`);
    const choice = data.choices[0];
    check(
      choice.finish_reason === "tool_calls",
      `tool call (${expected}): ${JSON.stringify(choice)}`,
    );
    const toolCalls = choice.message.tool_calls ?? [];
    check(toolCalls.length > 0, `tool call (${expected}): no tool_calls`);
    const name = toolCalls[0].function.name;
    check(name === "get_weather", `tool call (${expected}): function ${name}`);
    calls.push(toolCalls[0].function.arguments);
  }
  check(calls[0] === calls[1], `tool call: hit arguments ${calls[1]} != ${calls[0]}`);
}

async function responsesTwice() {
  // As a typical app asks: without `store`, so the upstream stores the response.
  const question = "What is the capital of France?";
  const answers = [];
  for (const expected of ["miss", "hit"]) {
    const { data, response } = await client.responses
      .create({ model: "gpt-4.1-mini", input: question, instructions: "Be brief." })
      .withResponse();
    checkCache(response.headers, expected, `responses (${expected})`);
    check(data.status === "completed", `responses (${expected}): ${data.status}`);
    check(data.usage, `responses (${expected}): no usage`);
    check(data.error === null, `responses (${expected}): error ${JSON.stringify(data.error)}`);
    answers.push(data);
  }
  const [first, second] = answers;
  check(
    first.output_text && first.output_text === second.output_text,
    `responses: hit ${second.output_text} != ${first.output_text}`,
  );
  // The hit is the stored response: it can be retrieved and chained from.
  check(second.id === first.id, `responses: hit id ${second.id} != stored ${first.id}`);
  const retrieved = await client.responses.retrieve(second.id);
  check(retrieved.output_text === second.output_text, "responses: retrieved differs");
  const chained = await client.responses
    .create({ model: "gpt-4.1-mini", input: "And of Italy?", previous_response_id: second.id })
    .withResponse();
  checkCache(chained.response.headers, "bypass", "responses chained from a hit");
  check(chained.data.status === "completed", "responses: chained from a hit");

  const streamed = [];
  for (const expected of ["miss", "hit"]) {
    const { data: stream, response } = await client.responses
      .create({ model: "gpt-4.1-mini", input: "Why is the sky blue?", store: false, stream: true })
      .withResponse();
    checkCache(response.headers, expected, `responses stream (${expected})`);
    let deltas = "";
    let completed = null;
    for await (const event of stream) {
      if (event.type === "response.output_text.delta") deltas += event.delta;
      else if (event.type === "response.completed") completed = event.response;
    }
    check(completed, `responses stream (${expected}): no response.completed`);
    const text = completed.output
      .flatMap((item) => item.content ?? [])
      .filter((part) => part.type === "output_text")
      .map((part) => part.text)
      .join("");
    check(deltas === text, `responses stream (${expected}): deltas ${deltas} != ${text}`);
    streamed.push(text);
  }
  check(streamed[0] === streamed[1], `responses stream: hit ${streamed[1]} != ${streamed[0]}`);
}

async function embeddingsTwice() {
  const first = await client.embeddings
    .create({ model: "text-embedding-3-small", input: ["alpha beta", "gamma delta"] })
    .withResponse();
  checkCache(first.response.headers, "miss", "embeddings (miss)");
  const second = await client.embeddings
    .create({ model: "text-embedding-3-small", input: ["gamma delta", "epsilon"] })
    .withResponse();
  const cached = second.response.headers.get("x-deja-cached-inputs");
  check(cached === "1/2", `embeddings: x-deja-cached-inputs is ${cached}, expected 1/2`);
  const [a, b] = [first.data, second.data];
  check(same(b.data.map((d) => d.index), [0, 1]), "embeddings: indexes");
  check(Array.isArray(b.data[0].embedding), "embeddings: the SDK did not decode a vector");
  check(b.data[0].embedding.length > 0, "embeddings: empty vector");
  check(same(b.data[0].embedding, a.data[1].embedding), "embeddings: cached vector differs");
  check(
    b.usage.prompt_tokens === 1,
    `embeddings: usage counts cached inputs: ${JSON.stringify(b.usage)}`,
  );
}

async function main() {
  const version = JSON.parse(
    readFileSync(new URL("./node_modules/openai/package.json", import.meta.url)),
  ).version;
  const steps = [
    chatTwice,
    rewordedQuestion,
    controlsThroughRequestOptions,
    streamTwice,
    streamHelperTwice,
    abortedStreamThenRepeat,
    burstOfTheSameQuestion,
    structuredTwice,
    conversationTwice,
    toolCallTwice,
    responsesTwice,
    embeddingsTwice,
  ];
  try {
    for (const step of steps) await step();
  } catch (error) {
    const what = error instanceof Failure ? error.message : `SDK error: ${error?.stack ?? error}`;
    console.error(`openai_sdk.mjs: FAILED: ${what}`);
    return 1;
  }
  console.log(
    `openai_sdk.mjs: ok (openai ${version}, node ${process.version}): chat, stream, stream ` +
      "helper, structured, conversation, tool-call and responses repeats all hits " +
      `(${matches.join(", ")}); a rewording a semantic hit; an aborted stream answered whole ` +
      "when asked again; a bad " +
      "control refused, a namespace kept apart, a burst answered by one upstream call; " +
      "embeddings partly cached",
  );
  console.log(`repeats that went upstream: ${repeatsUpstream}`);
  return 0;
}

process.exitCode = await main();
