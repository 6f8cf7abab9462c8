// A Node.js gRPC client of the clipsearch.v1 API, used by tests/test_contract.py to prove that the
// .proto files in protos/ are all a client in another language needs. It loads protos/ at run time
// with @grpc/proto-loader (no generated code), connects without TLS and runs, each call with a deadline:
//   1. IngestService.SubmitImages     the images of the JSON file (--images)
//   2. IngestService.GetIngestProgress of the returned batch, until nothing is pending (bounded)
//   3. SearchService.TextSearch       --text, k = 2
//   4. SearchService.ImageSearch      by the id of the first image, k = 1
//   5. SearchService.GetThumbnails    of the first image (its size, MIME type and first bytes)
//   6. SearchService.TextSearch       with k = 0, which must fail with INVALID_ARGUMENT
//   7. SearchService.TextSearch       with a filter (metadata shape in circle, square), k = 1, then
//                                     the next page with its next_page_token, until the token is empty
//   8. RecordService.CountRecords     without a filter, then with the filter shape = circle
//   9. RecordService.GetRecords       of every submitted id and an unknown one, with allow_missing and
//                                     include_vectors (each vector's length in bytes and its norm)
//  10. SearchService.Embed            --text and the first image's bytes: model, dimension, each vector's
//                                     norm, and the text vector's dot product with the first image's
//                                     stored vector (a TextSearch score is that dot product)
//  11. RecordService.ScrollRecords    one record a page, following next_cursor to the end
//  12. RecordService.UpdateRecords    by filter (shape = circle): set a boolean field and a metadata entry;
//                                     then CountRecords with a filter on the new field
//  13. RecordService.DeleteRecords    a filter matching every image without `all` (must fail with
//                                     FAILED_PRECONDITION), then shape = square; then CountRecords
// It prints one JSON object with every result and exits 0, or prints a message to stderr and exits
// non-zero on anything unexpected.
//
// Usage: node tests/node/client.mjs --address HOST:PORT --images FILE.json
//                                   [--text "a red circle"] [--protos DIR] [--ingest-timeout SECONDS]
// FILE.json: {"images": [{"id": "...", "png_base64": "...", "uri": "...", "metadata": {"k": "v"}}, ...]}
// ("id", "uri" and "metadata" may be left out; an empty id lets the server derive one).

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const CALL_DEADLINE_MS = 10_000;
// The first text query after start may take longer while the model warms up.
const FIRST_SEARCH_DEADLINE_MS = 30_000;

const { values: args } = parseArgs({
  options: {
    address: { type: "string" },
    images: { type: "string" },
    text: { type: "string", default: "a red circle" },
    protos: { type: "string", default: fileURLToPath(new URL("../../protos", import.meta.url)) },
    "ingest-timeout": { type: "string", default: "60" },
  },
});

function fail(message, code = 1) {
  process.stderr.write(`client.mjs: ${message}\n`);
  process.exit(code);
}

if (!args.address || !args.images) {
  fail("usage: client.mjs --address HOST:PORT --images FILE.json [--text TEXT] [--protos DIR]", 2);
}
const ingestTimeoutMs = Number(args["ingest-timeout"]) * 1000;
// Nothing below may hang: the whole run is bounded, whatever the server does.
setTimeout(() => fail("gave up: the whole run took too long", 3), ingestTimeoutMs + 50_000).unref();

const packageDefinition = protoLoader.loadSync(
  ["clipsearch/v1/ingest_service.proto", "clipsearch/v1/search_service.proto", "clipsearch/v1/record_service.proto"],
  {
    includeDirs: [args.protos],
    keepCase: true, // field names as in the .proto files (batch_id, not batchId)
    longs: String, // int64 counts as decimal strings: no silent precision loss
    enums: String,
    defaults: true, // unset scalars come back as their zero values, as in other languages
    oneofs: true,
  },
);
const v1 = grpc.loadPackageDefinition(packageDefinition).clipsearch.v1;

const credentials = grpc.credentials.createInsecure();
const ingest = new v1.IngestService(args.address, credentials);
const search = new v1.SearchService(args.address, credentials);
const record = new v1.RecordService(args.address, credentials);

const deadline = (ms = CALL_DEADLINE_MS) => new Date(Date.now() + ms);

function call(client, method, request, deadlineMs = CALL_DEADLINE_MS) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline(deadlineMs) }, (err, response) => {
      if (err) {
        err.rpc = method;
        reject(err);
      } else {
        resolve(response);
      }
    });
  });
}

function waitForReady(client) {
  return new Promise((resolve, reject) => {
    client.waitForReady(deadline(), (err) => {
      if (err) {
        err.rpc = `connecting to ${args.address}`;
        reject(err);
      } else {
        resolve();
      }
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const counts = (p) => ({
  submitted: Number(p.submitted),
  pending: Number(p.pending),
  indexed: Number(p.indexed),
  failed: Number(p.failed),
});

const results = (response) =>
  response.results.map((r) => ({ id: r.id, score: r.score, uri: r.uri, metadata: { ...r.metadata } }));

async function main() {
  const spec = JSON.parse(readFileSync(args.images, "utf8"));
  const images = spec.images.map((img) => ({
    id: img.id ?? "",
    image: Buffer.from(img.png_base64, "base64"),
    uri: img.uri ?? "",
    metadata: img.metadata ?? {},
  }));
  await waitForReady(ingest);
  await waitForReady(search);

  const submitted = await call(ingest, "SubmitImages", { images });
  const out = { submit: { batch_id: submitted.batch_id, ids: [...submitted.ids] } };

  const pollUntil = Date.now() + ingestTimeoutMs;
  let progress;
  let polls = 0;
  for (;;) {
    const reply = await call(ingest, "GetIngestProgress", { batch_id: submitted.batch_id });
    progress = counts(reply.progress);
    polls += 1;
    if (progress.submitted === images.length && progress.pending === 0) break;
    if (Date.now() > pollUntil) {
      fail(`ingestion not done after ${args["ingest-timeout"]} s: ${JSON.stringify(progress)}`);
    }
    await sleep(250);
  }
  out.progress = { ...progress, polls };

  const text = await call(search, "TextSearch", { text: args.text, k: 2 }, FIRST_SEARCH_DEADLINE_MS);
  out.text_search = { text: args.text, k: 2, results: results(text) };

  const queryId = submitted.ids[0];
  const similar = await call(search, "ImageSearch", { id: queryId, k: 1 });
  out.image_search = { id: queryId, k: 1, results: results(similar) };

  const thumbs = await call(search, "GetThumbnails", { ids: [queryId] });
  out.thumbnails = thumbs.thumbnails.map((t) => ({
    id: t.id,
    mime_type: t.thumbnail.mime_type,
    bytes: t.thumbnail.data.length,
    magic: t.thumbnail.data.subarray(0, 4).toString("latin1"),
  }));

  try {
    const unexpected = await call(search, "TextSearch", { text: args.text, k: 0 });
    fail(`TextSearch with k = 0 succeeded (${JSON.stringify(unexpected)}); expected INVALID_ARGUMENT`);
  } catch (err) {
    if (err.code !== grpc.status.INVALID_ARGUMENT) throw err;
    out.bad_request = { code: err.code, code_name: grpc.status[err.code], details: err.details };
  }

  // Pages of one filtered query: each page's next_page_token fetches the next; "" marks the last.
  const filter = { match: { field: "shape", any_of: { values: ["circle", "square"] } } };
  const pages = [];
  let pageToken = "";
  do {
    const page = await call(search, "TextSearch", { text: args.text, k: 1, filter, page_token: pageToken });
    pages.push({ results: results(page), next_page_token: page.next_page_token });
    pageToken = page.next_page_token;
  } while (pageToken && pages.length < 10);
  out.filtered_pages = pages;

  const all = await call(record, "CountRecords", {});
  const circles = await call(record, "CountRecords", {
    filter: { match: { field: "shape", any_of: { values: ["circle"] } } },
  });
  out.counts = { all: all.count, circles: circles.count };

  const got = await call(record, "GetRecords", {
    ids: [...submitted.ids, "no-such-image"],
    allow_missing: true,
    include_vectors: true,
  });
  out.records = {
    records: got.records.map((r) => {
      let norm = 0;
      for (let i = 0; i + 4 <= r.vector.length; i += 4) norm += r.vector.readFloatLE(i) ** 2;
      return {
        id: r.id,
        uri: r.uri,
        metadata: { ...r.metadata },
        model: r.model.name,
        dim: r.model.dim,
        updated_at_ms: r.updated_at_ms,
        submitted_at_ms: r.submitted_at_ms,
        vector_bytes: r.vector.length,
        norm: Math.sqrt(norm),
      };
    }),
    missing_ids: [...got.missing_ids],
  };

  const norm = (buf) => {
    let sum = 0;
    for (let i = 0; i + 4 <= buf.length; i += 4) sum += buf.readFloatLE(i) ** 2;
    return Math.sqrt(sum);
  };
  const dot = (a, b) => {
    let sum = 0;
    for (let i = 0; i + 4 <= a.length; i += 4) sum += a.readFloatLE(i) * b.readFloatLE(i);
    return sum;
  };
  const embedded = await call(search, "Embed", { inputs: [{ text: args.text }, { image: images[0].image }] });
  const firstRecord = got.records.find((r) => r.id === queryId);
  out.embed = {
    model: embedded.model.name,
    dim: embedded.model.dim,
    norms: embedded.embeddings.map((e) => norm(e.vector)),
    vector_bytes: embedded.embeddings.map((e) => e.vector.length),
    text_dot_first: dot(embedded.embeddings[0].vector, firstRecord.vector),
    image_dot_first: dot(embedded.embeddings[1].vector, firstRecord.vector),
  };

  const scrolled = [];
  let cursor = "";
  do {
    const page = await call(record, "ScrollRecords", { page_size: 1, cursor });
    scrolled.push(...page.records.map((r) => r.id));
    cursor = page.next_cursor;
  } while (cursor && scrolled.length < 10);
  out.scroll = scrolled;

  const circleFilter = { match: { field: "shape", any_of: { values: ["circle"] } } };
  const updated = await call(record, "UpdateRecords", {
    filter: circleFilter,
    set_fields: { in_stock: { bool_value: false } },
    set_metadata: { album: "node" },
  });
  const outOfStock = await call(record, "CountRecords", { filter: { match: { field: "in_stock", boolean: false } } });
  const afterUpdate = await call(record, "GetRecords", { ids: [queryId] });
  out.update = {
    updated: updated.updated,
    not_found: [...updated.not_found],
    out_of_stock: outOfStock.count,
    metadata: { ...afterUpdate.records[0].metadata },
  };

  try {
    const unexpected = await call(record, "DeleteRecords", { filter: { not: { exists: "no-such-field" } } });
    fail(`DeleteRecords of everything without all succeeded (${JSON.stringify(unexpected)})`);
  } catch (err) {
    if (err.code !== grpc.status.FAILED_PRECONDITION) throw err;
    out.delete_guard = { code_name: grpc.status[err.code], details: err.details };
  }
  const deleted = await call(record, "DeleteRecords", {
    filter: { match: { field: "shape", any_of: { values: ["square"] } } },
  });
  const left = await call(record, "CountRecords", {});
  out.delete = { deleted: deleted.deleted, left: left.count };

  ingest.close();
  search.close();
  record.close();
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((err) => {
  const code = err.code === undefined ? "" : ` (gRPC status ${err.code} ${grpc.status[err.code] ?? ""})`;
  fail(`${err.rpc ?? "error"}: ${err.details ?? err.message}${code}`);
});
