// The search page's behaviour. Every piece of user or service data goes into the page through
// textContent, attributes set by property, or encodeURIComponent: never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const config = $("config").dataset;
const PAGE = Number(config.page);

let current = null; // {kind: "text" | "id" | "image", value, file}
let nextToken = ""; // the page token of the results after those shown ("" on the last page)
let shown = 0; // results shown so far (ranks continue across pages)
let sequence = 0; // answers to superseded requests are dropped

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function describe(query) {
  if (query.kind === "text") return `“${query.value}”`;
  if (query.kind === "id") return `images like ${query.value}`;
  return `images like ${query.value}`;
}

function request(query, token) {
  const where = $("where").value;
  if (query.kind === "image") {
    const form = new FormData();
    form.append("image", query.file, query.file.name);
    form.append("k", String(PAGE));
    form.append("where", where);
    form.append("page_token", token);
    return fetch("/api/search", { method: "POST", body: form });
  }
  const params = new URLSearchParams({ k: String(PAGE), where, page_token: token });
  params.set(query.kind === "text" ? "q" : "id", query.value);
  return fetch(`/api/search?${params}`);
}

function rememberInUrl(query) {
  const params = new URLSearchParams();
  if (query.kind === "text") params.set("q", query.value);
  if (query.kind === "id") params.set("id", query.value);
  if ($("where").value) params.set("where", $("where").value);
  history.replaceState(null, "", query.kind === "image" ? "/" : `/?${params}`);
}

// Runs a search: a new one (token ""), or the next page of the current one (appended to the grid).
async function run(query, token = "") {
  const mine = ++sequence;
  current = query;
  clearError();
  $("status").textContent = `Searching ${describe(query)}…`;
  rememberInUrl(query);
  let data;
  try {
    const response = await request(query, token);
    const text = await response.text();
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: `the page's server answered HTTP ${response.status}: ${text.slice(0, 200)}` };
    }
    if (!response.ok && !data.error) data.error = `HTTP ${response.status}`;
  } catch (err) {
    data = { error: `cannot reach the page's server: ${err.message}` };
  }
  if (mine !== sequence) return;
  if (data.error) {
    $("status").textContent = "";
    $("grid").replaceChildren();
    $("more").hidden = true;
    showError(data.code ? `${data.code}: ${data.error}` : data.error);
    return;
  }
  render(data.results, query, token !== "");
  nextToken = data.next_page_token || "";
  $("more").hidden = !nextToken;
}

function card(result, rank) {
  const item = document.createElement("div");
  item.className = "card";
  item.dataset.id = result.id;
  item.title = "Click for more like this";

  const frame = document.createElement("div");
  frame.className = "frame";
  const img = document.createElement("img");
  img.alt = result.uri || result.id;
  img.src = `/thumb?id=${encodeURIComponent(result.id)}`;
  img.addEventListener("error", () => {
    const missing = document.createElement("span");
    missing.className = "missing";
    missing.textContent = "no thumbnail";
    img.replaceWith(missing);
  });
  frame.append(img);

  const info = document.createElement("div");
  info.className = "info";
  const head = document.createElement("div");
  const rankEl = document.createElement("span");
  rankEl.className = "rank";
  rankEl.textContent = `#${rank}`;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = result.score.toFixed(4);
  head.append(rankEl, score);
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = result.uri ? result.uri.split("/").pop() : result.id;
  name.title = result.uri || result.id;
  info.append(head, name);
  for (const [key, value] of Object.entries(result.metadata)) {
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `${key}: ${value}`;
    meta.title = meta.textContent;
    info.append(meta);
  }
  item.append(frame, info);
  item.addEventListener("click", () => run({ kind: "id", value: result.id }));
  return item;
}

function render(results, query, append) {
  const first = append ? shown : 0;
  const cards = results.map((r, i) => card(r, first + i + 1));
  if (append) $("grid").append(...cards);
  else $("grid").replaceChildren(...cards);
  shown = first + results.length;
  $("status").textContent = shown
    ? `${shown} results for ${describe(query)}`
    : `No results for ${describe(query)} (is the index empty, or the filter too strict?)`;
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("q").value.trim();
  if (text) run({ kind: "text", value: text });
  else if (current) run(current);
  else showError("Type what to look for, or choose an image.");
});

function searchWithFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    showError(`${file.name} is not an image`);
    return;
  }
  run({ kind: "image", value: file.name, file });
}

$("image").addEventListener("change", () => searchWithFile($("image").files[0]));
$("more").addEventListener("click", () => current && nextToken && run(current, nextToken));

// An image dropped anywhere on the page (the dashed box shows where) searches for similar ones.
const drop = $("drop");
document.body.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
document.body.addEventListener("dragleave", () => drop.classList.remove("over"));
document.body.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  searchWithFile(event.dataTransfer.files[0]);
});

// /?q=TEXT runs that search at once; /?id=ID shows images like that one.
if ($("q").value.trim()) run({ kind: "text", value: $("q").value.trim() });
else if (config.id) run({ kind: "id", value: config.id });
