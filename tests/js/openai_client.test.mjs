// bamba serve driven by the official `openai` npm client. bamba_tests starts the servers and sets
// BAMBA_URL (bamba-tiny-e2e) and, when chat templates can be rendered, BAMBA_CHAT_URL (the same model with a
// Llama-3 chat template).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const url = process.env.BAMBA_URL;
const chatUrl = process.env.BAMBA_CHAT_URL;
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
