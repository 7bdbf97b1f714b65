// cvllm-server as a new user meets it: the official `openai` npm client
// (tests/openai_node/package.json, installed by scripts/install-deps)
// against /v1/completions (whole, streamed, echo, a prompt list, an error
// whose message the client reads) and /v1/chat/completions (streamed,
// response_format, and a tool-call round trip: a named tool_choice, the
// call and its result sent back, checked through /tokenize). The server runs on
// free loopback ports over a temporary repository with the shipped
// samples/models/cvllm-kjv-4m and a ChatML template of the test's own (the
// model has none), so a lone clone runs it.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const src = path.resolve(here, '..', '..');
const binDir = process.env.CVLLM_BIN_DIR || path.join(src, 'build', 'bin');
const modelDir = path.join(src, 'samples', 'models', 'cvllm-kjv-4m');
let OpenAI;
try {
  OpenAI = createRequire(path.join(here, 'package.json'))('openai');
} catch (e) {
  console.error(`the openai npm package is not installed in ${here}: run scripts/install-deps`);
  process.exit(1);
}

// The ChatML template the test model gets (its tokenizer has none).
export const CHATML =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}" +
  "{% if message['content'] %}{{ message['content'] }}{% endif %}" +
  "{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}" +
  "{{ '<tool_call>\\n' + (call['function'] | tojson) + '\\n</tool_call>' }}{% endfor %}{% endif %}" +
  "{{ '<|im_end|>\\n' }}{% endfor %}" +
  "{% if tools %}{{ '<|im_start|>tools\\n' + (tools | tojson) + '<|im_end|>\\n' }}{% endif %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startServer() {
  const repo = fs.mkdtempSync(path.join(os.tmpdir(), 'cvllm_node_'));
  const mdir = path.join(repo, 'kjv');
  fs.mkdirSync(path.join(mdir, '1'), { recursive: true });
  fs.writeFileSync(path.join(mdir, 'config.pbtxt'), 'backend: "vllm"\n');
  fs.writeFileSync(path.join(repo, 'chatml.jinja'), CHATML);
  fs.writeFileSync(path.join(mdir, '1', 'model.json'), JSON.stringify({
    model: modelDir, enforce_eager: true,
    chat_template: path.join(repo, 'chatml.jinja'), tool_call_parser: 'hermes',
  }));
  const [http, grpc, metrics] = [await freePort(), await freePort(), await freePort()];
  const log = fs.openSync(path.join(repo, 'server.log'), 'w');
  const proc = spawn(path.join(binDir, 'cvllm-server'), [
    `--model-repository=${repo}`, `--http-port=${http}`, `--grpc-port=${grpc}`,
    `--metrics-port=${metrics}`, '--threads=1',
  ], { stdio: ['ignore', log, log] });
  const base = `http://127.0.0.1:${http}`;
  for (let i = 0; i < 300; i++) {
    if (proc.exitCode !== null) break;
    try {
      if ((await fetch(`${base}/v2/health/ready`)).status === 200) {
        return { proc, repo, base };
      }
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  console.error(fs.readFileSync(path.join(repo, 'server.log'), 'utf8'));
  throw new Error('cvllm-server did not become ready');
}

async function post(base, p, body) {
  const r = await fetch(base + p, { method: 'POST', body: JSON.stringify(body) });
  return { status: r.status, body: await r.json() };
}

async function completions(client, base) {
  const prompt = 'Once upon a time';
  const whole = await client.completions.create({
    model: 'kjv', prompt, max_tokens: 16, temperature: 0,
  });
  assert.equal(whole.object, 'text_completion');
  assert.equal(whole.choices.length, 1);
  assert.equal(whole.choices[0].finish_reason, 'length');
  const counted = await post(base, '/tokenize', { model: 'kjv', prompt });
  const n = counted.body.count;
  assert.deepEqual(whole.usage, { prompt_tokens: n, completion_tokens: 16, total_tokens: n + 16 });
  const text = whole.choices[0].text;
  // The same text as Triton's /generate gives.
  const gen = await post(base, '/v2/models/kjv/generate', {
    text_input: prompt, exclude_input_in_output: true,
    parameters: { max_tokens: 16, temperature: 0 },
  });
  assert.equal(gen.body.text_output, text);

  const stream = await client.completions.create({
    model: 'kjv', prompt, max_tokens: 16, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let streamed = '';
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.choices.length) streamed += chunk.choices[0].text;
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(streamed, text);
  assert.ok(chunks > 2);
  assert.equal(usage.completion_tokens, 16);

  const echo = await client.completions.create({
    model: 'kjv', prompt, max_tokens: 16, temperature: 0, echo: true,
  });
  assert.equal(echo.choices[0].text, prompt + text);

  const other = await client.completions.create({
    model: 'kjv', prompt: 'The cat', max_tokens: 16, temperature: 0,
  });
  const list = await client.completions.create({
    model: 'kjv', prompt: [prompt, 'The cat'], max_tokens: 16, temperature: 0,
  });
  assert.deepEqual(list.choices.map((c) => [c.index, c.text]),
                   [[0, text], [1, other.choices[0].text]]);
  assert.equal(list.usage.prompt_tokens, n + other.usage.prompt_tokens);

  await assert.rejects(
    client.completions.create({ model: 'nope', prompt, max_tokens: 2 }),
    (e) => {
      assert.ok(e instanceof OpenAI.NotFoundError);
      assert.equal(e.status, 404);
      assert.equal(e.error.message, 'The model `nope` does not exist.');
      assert.equal(e.message, '404 The model `nope` does not exist.');
      return true;
    });
  await assert.rejects(
    client.completions.create({ model: 'kjv', prompt, temperature: -1 }),
    (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError);
      assert.equal(e.message, '400 temperature must be non-negative, got -1.0.');
      return true;
    });
}

async function chat(client, base) {
  const messages = [{ role: 'user', content: 'Once upon a time' }];
  const whole = await client.chat.completions.create({
    model: 'kjv', messages, max_tokens: 16, temperature: 0,
  });
  assert.equal(whole.object, 'chat.completion');
  const text = whole.choices[0].message.content;
  assert.equal(whole.choices[0].message.role, 'assistant');
  assert.equal(whole.usage.completion_tokens, 16);
  const tok = await post(base, '/tokenize', { model: 'kjv', messages });
  assert.equal(tok.status, 200);
  assert.equal(whole.usage.prompt_tokens, tok.body.count);

  const stream = await client.chat.completions.create({
    model: 'kjv', messages, max_tokens: 16, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let streamed = '';
  let first = null;
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (first === null) first = c.delta;
      streamed += c.delta.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(first.role, 'assistant');
  assert.equal(streamed, text);
  assert.equal(finish, 'length');
  assert.deepEqual(usage, whole.usage);

  // The SDK's stream helper assembles the same message.
  const runner = client.chat.completions.stream({
    model: 'kjv', messages, max_tokens: 16, temperature: 0,
  });
  const final = await runner.finalChatCompletion();
  assert.equal(final.choices[0].message.content, text);

  // response_format holds the output to a JSON schema.
  const shaped = await client.chat.completions.create({
    model: 'kjv', messages, max_tokens: 40, temperature: 0,
    response_format: {
      type: 'json_schema',
      json_schema: { name: 'pick', schema: { type: 'string', enum: ['yes', 'no'] } },
    },
  });
  assert.ok(['yes', 'no'].includes(JSON.parse(shaped.choices[0].message.content)));
  await assert.rejects(
    client.chat.completions.create({ model: 'kjv', messages, response_format: { type: 'xml' } }),
    (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError);
      assert.equal(e.message,
                   "400 response_format type 'xml' is not supported (text, json_object, json_schema)");
      return true;
    });
}

// A tool-call round trip: the client offers a tool and names it in
// tool_choice, so the output is held to the tool's parameters schema (as
// vLLM does with structured outputs) and even this tiny model calls it;
// the streamed request gives the same call; the assistant's call and the
// tool's result go back in the next turn, which completes with usage
// exact against /tokenize's count of the rendered conversation.
async function toolRoundTrip(client, base) {
  const tools = [{
    type: 'function',
    function: {
      name: 'get_weather', description: 'Weather of a city',
      parameters: {
        type: 'object', properties: { city: { type: 'string', enum: ['Paris', 'Rome'] } },
        required: ['city'],
      },
    },
  }];
  const ask = [{ role: 'user', content: 'Weather in Paris?' }];
  const request = {
    model: 'kjv', messages: ask, tools, max_tokens: 40, temperature: 0,
    tool_choice: { type: 'function', function: { name: 'get_weather' } },
  };
  const first = await client.chat.completions.create(request);
  assert.equal(first.choices.length, 1);
  const msg = first.choices[0].message;
  assert.equal(msg.content, '');
  assert.equal(msg.tool_calls.length, 1);
  const call = msg.tool_calls[0];
  assert.match(call.id, /^chatcmpl-tool-[0-9a-f]{32}$/);
  assert.equal(call.type, 'function');
  assert.equal(call.function.name, 'get_weather');
  const args = JSON.parse(call.function.arguments);
  assert.deepEqual(Object.keys(args), ['city']);
  assert.ok(['Paris', 'Rome'].includes(args.city), call.function.arguments);
  assert.equal(first.choices[0].finish_reason, 'stop'); // vLLM's, for a named call
  const counted = await post(base, '/tokenize', { model: 'kjv', messages: ask, tools });
  assert.equal(first.usage.prompt_tokens, counted.body.count);
  assert.ok(first.usage.completion_tokens < 40);

  // Streamed: the name on the first delta, then the argument text.
  const stream = await client.chat.completions.create({ ...request, stream: true });
  const deltas = [];
  let finish = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      deltas.push(...(c.delta.tool_calls ?? []));
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.ok(deltas.length > 1);
  assert.ok(deltas.every((d) => d.index === 0));
  assert.equal(deltas[0].function.name, 'get_weather');
  assert.ok(deltas.slice(1).every((d) => d.id === undefined && d.function.name === undefined));
  assert.equal(deltas.map((d) => d.function.arguments).join(''), call.function.arguments);
  assert.equal(finish, 'tool_calls'); // vLLM's streamed reason
  // The SDK's stream helper assembles the same call.
  const final = await client.chat.completions.stream(request).finalChatCompletion();
  const assembled = final.choices[0].message.tool_calls;
  assert.equal(assembled.length, 1);
  assert.equal(assembled[0].function.name, 'get_weather');
  assert.equal(assembled[0].function.arguments, call.function.arguments);

  // The second turn: the call and its result go back.
  const messages = [
    ...ask,
    { role: 'assistant', content: msg.content, tool_calls: msg.tool_calls },
    { role: 'tool', tool_call_id: call.id, content: '{"temp_c": 21}' },
  ];
  const reply = await client.chat.completions.create({
    model: 'kjv', messages, tools, max_tokens: 8, temperature: 0,
  });
  assert.equal(reply.choices[0].finish_reason, 'length');
  assert.equal(typeof reply.choices[0].message.content, 'string');
  assert.deepEqual(reply.choices[0].message.tool_calls, []);
  const want = '<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n' +
    `<tool_call>\n{"name": "get_weather", "arguments": {"city": "${args.city}"}}\n</tool_call>` +
    '<|im_end|>\n<|im_start|>tool\n{"temp_c": 21}<|im_end|>\n<|im_start|>tools\n' +
    JSON.stringify(tools).replaceAll('":', '": ').replaceAll(',"', ', "') +
    '<|im_end|>\n<|im_start|>assistant\n';
  const rendered = await post(base, '/tokenize', { model: 'kjv', messages, tools });
  const expected = await post(base, '/tokenize', {
    model: 'kjv', prompt: want, add_special_tokens: false,
  });
  assert.deepEqual(rendered.body.tokens, expected.body.tokens);
  const n = rendered.body.count;
  assert.deepEqual(reply.usage, { prompt_tokens: n, completion_tokens: 8, total_tokens: n + 8 });
}

const server = await startServer();
let failed = false;
try {
  const client = new OpenAI({ baseURL: `${server.base}/v1`, apiKey: 'unused', maxRetries: 0 });
  for (const [name, fn] of Object.entries({ completions, chat, toolRoundTrip })) {
    try {
      await fn(client, server.base);
      console.log(`ok - ${name}`);
    } catch (e) {
      failed = true;
      console.log(`not ok - ${name}`);
      console.log(e);
    }
  }
} finally {
  server.proc.kill('SIGTERM');
  await new Promise((r) => server.proc.once('exit', r));
  if (failed) console.log(fs.readFileSync(path.join(server.repo, 'server.log'), 'utf8').slice(-4000));
  fs.rmSync(server.repo, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
