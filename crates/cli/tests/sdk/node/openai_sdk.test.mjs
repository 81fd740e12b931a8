// The official OpenAI Node SDK against a running Switchboard, as an
// application would use it. Run by tests/openai_sdk.rs with node's test
// runner; SWITCHBOARD_BASE_URL and SWITCHBOARD_API_KEY name the gateway.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";

const messages = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Say hello to the SDK" },
];

function client(apiKey = process.env.SWITCHBOARD_API_KEY) {
  return new OpenAI({ baseURL: process.env.SWITCHBOARD_BASE_URL, apiKey, maxRetries: 0, timeout: 30_000 });
}

test("plain chat completion", async () => {
  const { data, response } = await client()
    .chat.completions.create({ model: "simulated-chat", messages })
    .withResponse();
  assert.match(response.headers.get("x-request-id"), /^req_/);
  assert.equal(data.object, "chat.completion");
  assert.ok(data.choices[0].message.content.startsWith("Simulated reply to: Say hello to the SDK"));
  assert.equal(data.usage.completion_tokens, 24);
});

test("streamed chat completion with usage", async () => {
  const plain = await client().chat.completions.create({ model: "simulated-chat", messages });
  const stream = await client().chat.completions.create({
    model: "simulated-chat",
    messages,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, plain.choices[0].message.content);
  assert.equal(usage.completion_tokens, 24);
});

test("a real upstream streams through the gateway", async () => {
  const stream = await client().chat.completions.create({ model: "mock-chat", messages, stream: true });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
  assert.equal(text, "Hello from the mock");
});

test("embeddings, decoded from the SDK's default base64", async () => {
  const response = await client().embeddings.create({ model: "simulated-embedding", input: ["a b", "c"] });
  assert.equal(response.data.length, 2);
  assert.equal(response.data[0].embedding.length, 256);
  const norm = Math.sqrt(response.data[0].embedding.reduce((sum, value) => sum + value * value, 0));
  assert.ok(Math.abs(norm - 1) < 1e-4);
});

test("models list and retrieve", async () => {
  const ids = [];
  for await (const model of client().models.list()) ids.push(model.id);
  assert.deepEqual(ids, ["simulated-chat", "simulated-embedding", "flaky", "mock-chat", "mock-broken"]);
  const model = await client().models.retrieve("simulated-chat");
  assert.equal(model.owned_by, "switchboard");
});

test("typed errors", async () => {
  await assert.rejects(client().chat.completions.create({ model: "no-such-model", messages }), OpenAI.NotFoundError);
  await assert.rejects(client("sb-not-the-key").models.list(), OpenAI.AuthenticationError);
  await assert.rejects(
    client().chat.completions.create({ model: "simulated-chat", messages, temperature: "hot" }),
    (error) => error instanceof OpenAI.BadRequestError && error.param === "temperature",
  );
  await assert.rejects(
    client().chat.completions.create({ model: "flaky", messages }),
    (error) => error instanceof OpenAI.InternalServerError && error.status === 502,
  );
});

test("an error inside a stream is raised", async () => {
  const stream = await client().chat.completions.create({ model: "mock-broken", messages, stream: true });
  await assert.rejects(
    (async () => {
      for await (const _chunk of stream) {
        // drain
      }
    })(),
    (error) => error instanceof OpenAI.APIError && /overloaded/.test(error.message),
  );
});
