// bamba serve driven by the official `openai` npm client. bamba_tests starts the servers and sets
// BAMBA_URL (bamba-tiny-e2e) and, when chat templates can be rendered, BAMBA_CHAT_URL (the same model with a
// Llama-3 chat template) and BAMBA_TOOLS_URL (the same model with Qwen 2.5's template, which has tools).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const url = process.env.BAMBA_URL;
const chatUrl = process.env.BAMBA_CHAT_URL;
const toolsUrl = process.env.BAMBA_TOOLS_URL;
assert.ok(url, 'BAMBA_URL is not set (run through bamba_tests)');
const client = (base) => new OpenAI({ baseURL: base + '/v1', apiKey: 'unused', maxRetries: 0 });

test('models.list names the served model', async () => {
  const models = await client(url).models.list();
  assert.equal(models.data.length, 1);
  assert.ok(models.data[0].id.endsWith('bamba-tiny-e2e'));
});

test('completions.create', async () => {
  const c = client(url);
  const model = (await c.models.list()).data[0].id;
  const r = await c.completions.create({ model, prompt: 'Hello, my name is', max_tokens: 6, temperature: 0, ignore_eos: true });
  assert.equal(r.object, 'text_completion');
  assert.equal(typeof r.choices[0].text, 'string');
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 6);
});

test('completions stream token by token, with usage', async () => {
  const c = client(url);
  const model = (await c.models.list()).data[0].id;
  const whole = await c.completions.create({ model, prompt: 'Once', max_tokens: 10, temperature: 0, ignore_eos: true });
  const stream = await c.completions.create({
    model, prompt: 'Once', max_tokens: 10, temperature: 0, ignore_eos: true, stream: true,
    stream_options: { include_usage: true },
  });
  let text = '', chunks = 0, usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    if (chunk.choices.length) { chunks++; text += chunk.choices[0].text; }
  }
  assert.equal(chunks, 10);
  assert.equal(text, whole.choices[0].text);
  assert.equal(usage.completion_tokens, 10);
});

test('bad requests are APIErrors with their status', async () => {
  const c = client(url);
  await assert.rejects(c.completions.create({ model: 'no-such-model', prompt: 'x' }), (e) => e.status === 404);
  await assert.rejects(c.completions.create({ prompt: 'x', max_tokens: -3 }), (e) => e.status === 400);
});

test('chat.completions.create and stream', { skip: chatUrl ? false : 'no chat template renderer in this build' }, async () => {
  const c = client(chatUrl);
  const model = (await c.models.list()).data[0].id;
  const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi there' }];
  const r = await c.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, ignore_eos: true });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.usage.completion_tokens, 8);
  const stream = await c.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, ignore_eos: true, stream: true });
  let text = '', first = null;
  for await (const chunk of stream) {
    if (!first) first = chunk;
    text += chunk.choices[0]?.delta?.content ?? '';
  }
  assert.equal(first.object, 'chat.completion.chunk');
  assert.equal(first.choices[0].delta.role, 'assistant');
  assert.equal(text, r.choices[0].message.content);
});

// The random-weight model calls no tool by itself: tool_choice names a function without parameters, whose one
// valid call the server writes whole (docs/chat-templates.md). The rest is the client's usual flow.
test('tool calling: request, tool result, final answer', { skip: toolsUrl ? false : 'no tools server' }, async () => {
  const c = client(toolsUrl);
  const model = (await c.models.list()).data[0].id;
  const tools = [
    { type: 'function', function: { name: 'get_time', description: 'The time now', parameters: { type: 'object', properties: {} } } },
    { type: 'function', function: { name: 'get_weather', description: 'Current weather in a city',
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } },
  ];
  const messages = [{ role: 'user', content: 'What time is it?' }];
  const tool_choice = { type: 'function', function: { name: 'get_time' } };
  const r = await c.chat.completions.create({ model, messages, tools, tool_choice, temperature: 0 });
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  const msg = r.choices[0].message;
  assert.equal(msg.tool_calls.length, 1);
  const call = msg.tool_calls[0];
  assert.equal(call.type, 'function');
  assert.equal(call.function.name, 'get_time');
  assert.deepEqual(JSON.parse(call.function.arguments), {});
  assert.match(call.id, /^call_[A-Za-z0-9]+$/);

  // The SDK's stream helper accumulates tool_calls deltas (and rejects malformed ones).
  const s = c.chat.completions.stream({ model, messages, tools, tool_choice, temperature: 0 });
  const streamed = await s.finalChatCompletion();
  assert.equal(streamed.choices[0].finish_reason, 'tool_calls');
  assert.equal(streamed.choices[0].message.tool_calls[0].function.name, 'get_time');
  assert.deepEqual(JSON.parse(streamed.choices[0].message.tool_calls[0].function.arguments), {});

  messages.push(msg, { role: 'tool', tool_call_id: call.id, content: '12:00' });
  const fin = await c.chat.completions.create({ model, messages, tools, max_tokens: 6, temperature: 0, ignore_eos: true });
  assert.equal(fin.choices[0].message.role, 'assistant');
  assert.equal(typeof fin.choices[0].message.content, 'string');
  assert.equal(fin.usage.completion_tokens, 6);

  await assert.rejects(c.chat.completions.create({ model, messages, tools, tool_choice: 'sometimes' }),
    (e) => e.status === 400 && e.param === 'tool_choice');
});

test('sampling parameters: penalties, logit_bias, seed, n, logprobs', async () => {
  const c = client(url);
  const model = (await c.models.list()).data[0].id;
  const base = { model, prompt: 'Hello', max_tokens: 8, temperature: 1, ignore_eos: true };
  const a = await c.completions.create({ ...base, seed: 7, n: 3, presence_penalty: 0.5, frequency_penalty: 0.5,
    repetition_penalty: 1.2, min_p: 0.01, logprobs: 2 });
  const b = await c.completions.create({ ...base, seed: 7, n: 3, presence_penalty: 0.5, frequency_penalty: 0.5,
    repetition_penalty: 1.2, min_p: 0.01, logprobs: 2 });
  assert.equal(a.choices.length, 3);
  assert.deepEqual(a.choices.map((x) => x.text), b.choices.map((x) => x.text));
  assert.equal(a.choices[0].logprobs.tokens.length, 8);
  const q = await c.completions.create({ ...base, temperature: 0, logit_bias: { 1: 100 } });
  assert.equal(q.choices[0].text, '""""""""');
  await assert.rejects(c.completions.create({ ...base, presence_penalty: 5 }), (e) => e.status === 400 && e.param === 'presence_penalty');
});

test('structured output: json_schema and tool_choice required', { skip: toolsUrl ? false : 'no tools server' }, async () => {
  const c = client(toolsUrl);
  const model = (await c.models.list()).data[0].id;
  const schema = { type: 'object', properties: { size: { enum: ['S', 'M', 'L'] }, ok: { type: 'boolean' },
    n: { type: 'integer' } }, required: ['size', 'ok'], additionalProperties: false };
  const messages = [{ role: 'user', content: 'A T-shirt as JSON' }];
  const r = await c.chat.completions.create({ model, messages, temperature: 1, seed: 3, n: 3, max_tokens: 200,
    response_format: { type: 'json_schema', json_schema: { name: 'shirt', schema, strict: true } } });
  for (const ch of r.choices) {
    const v = JSON.parse(ch.message.content);
    assert.ok(['S', 'M', 'L'].includes(v.size));
    assert.equal(typeof v.ok, 'boolean');
    assert.equal(ch.finish_reason, 'stop');
  }
  const tools = [{ type: 'function', function: { name: 'get_weather',
    parameters: { type: 'object', properties: { city: { enum: ['Paris', 'Rome'] } }, required: ['city'] } } }];
  const s = c.chat.completions.stream({ model, messages, tools, tool_choice: 'required', parallel_tool_calls: false,
    temperature: 1, seed: 4, max_tokens: 200 });
  const fin = await s.finalChatCompletion();
  assert.equal(fin.choices[0].finish_reason, 'tool_calls');
  const call = fin.choices[0].message.tool_calls[0];
  assert.equal(call.function.name, 'get_weather');
  assert.ok(['Paris', 'Rome'].includes(JSON.parse(call.function.arguments).city));
  await assert.rejects(c.chat.completions.create({ model, messages, response_format: { type: 'json_schema',
    json_schema: { name: 'x', schema: { type: 'string', format: 'date' } } } }), (e) => e.status === 400 && e.param === 'response_format');
});
