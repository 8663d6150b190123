#!/usr/bin/env node
// tunewright Node.js example client.
//
// Runs the whole flow against running services: upload a JSONL file, make a dataset and
// print its statistics and cleaning report, train a short LoRA job, export the model and
// generate with it.
//
// How to run:
//   1. In the repository root: `make up` (starts the data, trainer and serve services).
//   2. Here, in examples/node: `npm install && node client.js` (or `npm start`).
//
// Settings (environment variables, defaults in brackets):
//   TUNEWRIGHT_DATA_ADDR [127.0.0.1:50051], TUNEWRIGHT_TRAINER_ADDR [127.0.0.1:50052],
//   TUNEWRIGHT_SERVE_ADDR [127.0.0.1:50053], TUNEWRIGHT_DATASET_FILE
//   [../support_tickets/tickets.jsonl], TUNEWRIGHT_BASE_MODEL [smollm2-135m-instruct],
//   TUNEWRIGHT_MAX_STEPS [4], TUNEWRIGHT_PROMPT [a support ticket].
// With `tunewright up --secure` (a token and TLS): TUNEWRIGHT_TOKEN or TUNEWRIGHT_TOKEN_FILE
//   (sent as `authorization: Bearer ...` on every call), TUNEWRIGHT_CA (PEM roots to trust;
//   turns TLS on), and for mutual TLS TUNEWRIGHT_CLIENT_CERT and TUNEWRIGHT_CLIENT_KEY.
//
// The .proto files are loaded at run time from ../../protos; there is no code generation.
// Exits 0 on success and 1 on any failure, with the gRPC status on stderr.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { once } = require('node:events');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const env = process.env;
const config = {
  dataAddr: env.TUNEWRIGHT_DATA_ADDR || '127.0.0.1:50051',
  trainerAddr: env.TUNEWRIGHT_TRAINER_ADDR || '127.0.0.1:50052',
  serveAddr: env.TUNEWRIGHT_SERVE_ADDR || '127.0.0.1:50053',
  datasetFile: env.TUNEWRIGHT_DATASET_FILE || path.join(__dirname, '..', 'support_tickets', 'tickets.jsonl'),
  baseModel: env.TUNEWRIGHT_BASE_MODEL || 'smollm2-135m-instruct',
  maxSteps: Number(env.TUNEWRIGHT_MAX_STEPS || '4'),
  prompt: env.TUNEWRIGHT_PROMPT || 'Our whole team is locked out of the dashboard since this morning.',
};

const CHUNK_BYTES = 1024 * 1024; // UploadFileRequest.chunk: at most 1 MiB each
const SECOND = 1000;
const MINUTE = 60 * SECOND;

// Load the protos. longs: String turns every int64 into a decimal string;
// enums: String gives enum names such as "JOB_STATE_SUCCEEDED".
const protosDir = path.join(__dirname, '..', '..', 'protos');
const packageDefinition = protoLoader.loadSync(
  [
    'tunewright/data/v1/data_service.proto',
    'tunewright/trainer/v1/trainer_service.proto',
    'tunewright/serve/v1/serve_service.proto',
  ],
  { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [protosDir] },
);
const tunewright = grpc.loadPackageDefinition(packageDefinition).tunewright;

// TLS when a CA is given; the token rides on every call through one interceptor.
const readFile = (file) => (file ? fs.readFileSync(file) : null);
const credentials = env.TUNEWRIGHT_CA
  ? grpc.credentials.createSsl(
      readFile(env.TUNEWRIGHT_CA),
      readFile(env.TUNEWRIGHT_CLIENT_KEY),
      readFile(env.TUNEWRIGHT_CLIENT_CERT),
    )
  : grpc.credentials.createInsecure();
const token =
  env.TUNEWRIGHT_TOKEN ||
  (env.TUNEWRIGHT_TOKEN_FILE ? fs.readFileSync(env.TUNEWRIGHT_TOKEN_FILE, 'utf8').trim() : '');
const withToken = (options, nextCall) =>
  new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      if (token) metadata.set('authorization', `Bearer ${token}`);
      next(metadata, listener);
    },
  });
const clientOptions = { interceptors: [withToken] };
const data = new tunewright.data.v1.DataService(config.dataAddr, credentials, clientOptions);
const trainer = new tunewright.trainer.v1.TrainerService(config.trainerAddr, credentials, clientOptions);
const serve = new tunewright.serve.v1.ServeService(config.serveAddr, credentials, clientOptions);

const deadlineIn = (ms) => new Date(Date.now() + ms);

// Calls a unary method and resolves with its response.
function unary(client, method, request, timeoutMs = MINUTE) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadlineIn(timeoutMs) }, (err, response) => {
      if (err) reject(Object.assign(err, { rpc: method }));
      else resolve(response);
    });
  });
}

// Calls a server-streaming method and collects every message (calling onMessage on each).
async function serverStream(client, method, request, options, onMessage = () => {}) {
  const messages = [];
  try {
    for await (const message of client[method](request, options)) {
      messages.push(message);
      onMessage(message);
    }
  } catch (err) {
    throw Object.assign(err, { rpc: method });
  }
  return messages;
}

// DataService.UploadFile: a header with size and sha256, then the bytes in chunks.
function uploadFile(filePath) {
  const content = fs.readFileSync(filePath);
  const sha256 = crypto.createHash('sha256').update(content).digest('hex');
  return new Promise((resolve, reject) => {
    const call = data.UploadFile({ deadline: deadlineIn(5 * MINUTE) }, (err, response) => {
      if (err) reject(Object.assign(err, { rpc: 'UploadFile' }));
      else resolve(response.file);
    });
    (async () => {
      call.write({
        header: {
          request_id: crypto.randomUUID(),
          filename: path.basename(filePath),
          size_bytes: String(content.length), // int64: a string (or a number) works
          sha256,
        },
      });
      for (let offset = 0; offset < content.length; offset += CHUNK_BYTES) {
        if (!call.write({ chunk: content.subarray(offset, offset + CHUNK_BYTES) })) await once(call, 'drain');
      }
      call.end();
    })().catch(reject);
  });
}

// Per-split statistics and the cleaning counts of a dataset (Dataset.stats).
function printStats(stats) {
  for (const split of ['train', 'validation', 'test']) {
    const s = stats[split];
    const share = Number(s.tokens) ? (100 * Number(s.loss_tokens)) / Number(s.tokens) : 0;
    const histogram = s.length_histogram.map((b) => `≤${b.max_tokens}: ${b.examples}`).join(', ');
    console.log(`  stats ${split}: ${s.examples} examples, ${s.turns} turns, ${s.tokens} tokens ` +
      `(${share.toFixed(1)}% carry loss), ${s.min_tokens}-${s.max_tokens} tokens each [${histogram}]`);
  }
  const c = stats.cleaning;
  const pii = Object.entries(c.pii_replacements || {}).map(([kind, n]) => `${kind} ${n}`).join(', ') || 'none';
  console.log(`  cleaning: read ${c.read}, exact duplicates removed ${c.exact_duplicates_removed}, ` +
    `near duplicates removed ${c.near_duplicates_removed}, in near-duplicate groups ${c.near_duplicate_examples}, ` +
    `PII replaced in ${c.pii_examples} examples (${pii}), leaked test examples ${c.leaked_test_examples}`);
}

// The cleaning report: every line of the source that cleaning changed, page by page.
async function printReport(name) {
  let pageToken = '';
  let shown = 0;
  do {
    const page = await unary(data, 'GetDatasetReport', { name, page_size: 100, page_token: pageToken });
    for (const action of page.actions) {
      if (shown < 5) {
        const of = Number(action.duplicate_of_line) ? ` (duplicate of line ${action.duplicate_of_line})` : '';
        console.log(`  report: line ${action.line} ${action.kind}${of}`);
      }
      shown += 1;
    }
    pageToken = page.next_page_token;
  } while (pageToken);
  console.log(`  report: ${shown} change(s) in all`);
}

async function main() {
  console.log(`data ${config.dataAddr}, trainer ${config.trainerAddr}, serve ${config.serveAddr}`);

  const file = await uploadFile(config.datasetFile);
  console.log(`uploaded ${file.name} (${file.size_bytes} bytes, sha256 ${file.sha256.slice(0, 12)}…)`);

  const { dataset } = await unary(data, 'CreateDataset', {
    request_id: crypto.randomUUID(),
    file: file.name,
    display_name: 'node-example',
    // Count tokens with the tokenizer of the model this example trains. The cleaning
    // options left out take their defaults: exact duplicates dropped, PII replaced,
    // near duplicates kept in one split.
    tokenizer_model: config.baseModel,
    cleaning: { near_duplicates: 'NEAR_DUPLICATES_GROUP' },
  }, 10 * MINUTE);
  const counts = dataset.split_counts || {};
  console.log(`dataset ${dataset.name}: train ${counts.train}, validation ${counts.validation}, test ${counts.test}`);
  console.log(`  format ${dataset.format_name} (read as ${dataset.reader}), source sha256 ${dataset.source_sha256.slice(0, 12)}…`);
  printStats(dataset.stats);
  await printReport(dataset.name);

  const { methods } = await unary(trainer, 'ListMethods', {});
  const methodNames = methods.map((m) => m.name);
  console.log(`methods: ${methodNames.join(', ')}`);
  if (!methodNames.includes('lora')) throw new Error('the trainer has no "lora" method');

  let { job } = await unary(trainer, 'CreateJob', {
    request_id: crypto.randomUUID(),
    base_model: config.baseModel,
    dataset: dataset.name,
    method: 'lora',
    method_parameters: { r: { int_value: 8 } },
    // proto3 `optional` fields are plain fields here; leaving one out means "unset".
    hyperparameters: { epochs: 1, batch_size: 4, max_steps: config.maxSteps, evaluate: false },
  });
  console.log(`created ${job.name} (${job.state})`);

  // No deadline: CPU training can take a while. The stream ends when the job finishes.
  await serverStream(trainer, 'WatchJob', { name: job.name }, {}, (event) => {
    if (event.payload === 'state_change') {
      console.log(`  state ${event.state_change.state}`);
    } else if (event.payload === 'progress') {
      const p = event.progress;
      console.log(`  step ${p.step}/${p.total_steps} loss ${p.loss.toFixed(4)} ${p.tokens_per_second.toFixed(0)} tok/s`);
    }
  });
  ({ job } = await unary(trainer, 'GetJob', { name: job.name }));
  if (job.state !== 'JOB_STATE_SUCCEEDED') {
    const error = job.error || {};
    throw new Error(`${job.name} ended ${job.state}: ${error.code || '?'}: ${error.message || ''}`);
  }
  console.log(`${job.name} succeeded`);

  const { model } = await unary(serve, 'ExportModel', { request_id: crypto.randomUUID(), job: job.name }, 10 * MINUTE);
  console.log(`exported ${model.name} as ${model.format} to ${model.directory}`);

  const options = { max_new_tokens: 24 };
  const streamOptions = { deadline: deadlineIn(5 * MINUTE) };
  process.stdout.write('generate: ');
  const pieces = await serverStream(serve, 'Generate', { model: model.name, prompt: config.prompt, options },
    streamOptions, (m) => process.stdout.write(m.text));
  process.stdout.write('\n');
  if (pieces.length === 0) throw new Error('Generate returned no messages');
  console.log(`generate finish_reason: ${pieces[pieces.length - 1].finish_reason}`);

  const replies = await serverStream(serve, 'Chat', {
    model: model.name, messages: [{ role: 'user', content: config.prompt }], options,
  }, { deadline: deadlineIn(5 * MINUTE) });
  if (replies.length === 0) throw new Error('Chat returned no messages');
  console.log(`chat (${replies[replies.length - 1].backend}): ${replies.map((m) => m.text).join('')}`);
  console.log(`chat finish_reason: ${replies[replies.length - 1].finish_reason}`);

  console.log('node client flow: OK');
}

main()
  .then(() => 0, (err) => {
    if (typeof err.code === 'number') {
      // A gRPC error: name the status code, e.g. UNAVAILABLE or INVALID_ARGUMENT.
      console.error(`${err.rpc || 'call'} failed: ${grpc.status[err.code]}: ${err.details}`);
    } else {
      console.error(`failed: ${err.message}`);
    }
    return 1;
  })
  .then((code) => {
    for (const client of [data, trainer, serve]) client.close();
    process.exit(code);
  });
