// Luodi web chat: streams /v1/chat/completions (server-sent events) into the page.
// Plain browser JavaScript, no build step, no external assets. Text is inserted with
// textContent only, never as HTML, so model output cannot inject markup; answers are shown as
// Markdown by renderMarkdown (markdown.js), which builds DOM nodes the same way.
// The API key lives in sessionStorage: it survives a reload of the tab, but is not written to
// disk for good, not shared with other tabs, and gone when the tab closes (localStorage kept it
// for any script on this origin, indefinitely).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, history: [], controller: null };

const KEY_ITEM = "luodi-api-key";
localStorage.removeItem(KEY_ITEM); // where earlier versions kept it

function apiKey() { return $("api-key").value.trim() || sessionStorage.getItem(KEY_ITEM) || ""; }

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = apiKey();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (_) {
    return response.status + " " + response.statusText;
  }
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) {
    $("model").textContent = "this server needs an API key (Settings)";
    $("settings").open = true;
    return;
  }
  if (!response.ok) {
    $("model").textContent = await errorMessage(response);
    setTimeout(loadModel, 2000); // 503 while the model loads: try again
    return;
  }
  const body = await response.json();
  state.model = body.data[0].id;
  $("model").textContent = state.model;
}

// A message box; with `speaker`, the name is shown above the text (the Scene mode's lines).
function addMessage(role, text, speaker) {
  const box = document.createElement("div");
  box.className = "message " + role;
  if (speaker) {
    const name = document.createElement("div");
    name.className = "speaker";
    name.textContent = speaker;
    box.appendChild(name);
  }
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  box.appendChild(body);
  $("messages").appendChild(box);
  box.scrollIntoView({ block: "end" });
  return box;
}

// An app mode's button, placed after Send (the Minutes, Support, Persona, Schedule, Scene modes).
function modeButton(id, label, title) {
  const button = document.createElement("button");
  button.id = id;
  button.type = "button";
  button.textContent = label;
  button.title = title;
  $("send").after(button);
  return button;
}

// An app mode's file picker, in the bar of app inputs under the header; returns the <input>.
function appFileInput(id, label, title, accept) {
  const wrap = document.createElement("label");
  wrap.className = "app-file";
  wrap.title = title;
  wrap.textContent = label + " ";
  const input = document.createElement("input");
  input.id = id;
  input.type = "file";
  input.accept = accept;
  const status = document.createElement("span");
  status.id = id + "-status";
  status.className = "muted";
  wrap.append(input);
  $("apps").append(wrap, status);
  return input;
}

// Headers for a body the browser types itself (a File, FormData): the API key only.
function authHeaders() {
  const h = headers();
  delete h["Content-Type"];
  return h;
}

// An error shown under a message's text (the answer so far stays).
function showError(box, message) {
  box.classList.add("error");
  const note = document.createElement("div");
  note.className = "error-note";
  note.textContent = "Error: " + message;
  box.insertBefore(note, box.querySelector(".text").nextSibling);
}

// Show `text` (the answer so far) as Markdown in `out`, at most once per frame while streaming.
function markdownView(out) {
  let text = "", pending = false;
  const draw = () => { pending = false; out.replaceChildren(renderMarkdown(text)); };
  return {
    set(value) {
      text = value;
      if (!pending) { pending = true; requestAnimationFrame(draw); }
    },
    flush() { draw(); },
  };
}

function setStats(box, text) {
  let stats = box.querySelector(".stats");
  if (!stats) {
    stats = document.createElement("div");
    stats.className = "stats";
    box.appendChild(stats);
  }
  stats.textContent = text;
}

// Split an SSE byte stream into { event, data } (event "message" unless named); comments
// (": ping") are skipped.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const lines = event.split("\n");
      const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
      const name = lines.filter((l) => l.startsWith("event:")).map((l) => l.slice(6).trim()).pop();
      if (data.length) yield { event: name || "message", data: data.join("\n") };
    }
  }
}

// The `data:` payloads of an SSE stream.
async function* sseData(response) {
  for await (const event of sseEvents(response)) yield event.data;
}

function requestBody() {
  const system = $("system").value.trim();
  const messages = (system ? [{ role: "system", content: system }] : []).concat(state.history);
  const kb = $("kb").value;
  return {
    ...(kb ? { kb: kb } : {}),
    model: state.model,
    messages: messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
  };
}

function formatStats(usage, firstAt, lastAt, startAt, stopped) {
  const parts = [];
  if (usage) parts.push(usage.completion_tokens + " tokens");
  if (usage && lastAt > firstAt && usage.completion_tokens > 1) {
    parts.push(((usage.completion_tokens - 1) / ((lastAt - firstAt) / 1000)).toFixed(1) + " tok/s");
  }
  if (firstAt) parts.push("first token " + ((firstAt - startAt) / 1000).toFixed(2) + " s");
  if (stopped) parts.push("stopped");
  return parts.join(" · ");
}

async function send(text) {
  state.history.push({ role: "user", content: text });
  addMessage("user", text);
  const box = addMessage("assistant", "");
  box.classList.add("streaming");
  const out = box.querySelector(".text");
  out.classList.add("markdown");
  const view = markdownView(out);
  let answer = "";
  state.controller = new AbortController();
  setBusy(true);
  const startAt = performance.now();
  let firstAt = 0, lastAt = 0, usage = null, stopped = false, received = 0, sources = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: state.controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const data of sseData(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      if (chunk.sources) sources = chunk.sources;
      const delta = chunk.choices.length ? chunk.choices[0].delta : null;
      if (delta && delta.content) {
        const now = performance.now();
        if (!firstAt) firstAt = now;
        lastAt = now;
        received += 1;
        answer += delta.content;
        view.set(answer);
        box.scrollIntoView({ block: "end" });
      }
    }
  } catch (error) {
    if (error.name === "AbortError") {
      stopped = true;
    } else {
      showError(box, error.message);
    }
  } finally {
    view.flush();
    box.classList.remove("streaming");
    setBusy(false);
    state.controller = null;
  }
  if (!usage && received) usage = { completion_tokens: received }; // stopped early: count the deltas
  if (sources) showSources(box, sources, answer);
  setStats(box, formatStats(usage, firstAt, lastAt, startAt, stopped));
  if (answer && !box.classList.contains("error")) {
    state.history.push({ role: "assistant", content: answer });
  } else {
    state.history.pop(); // keep the history a clean user/assistant alternation
  }
}

// The passages a knowledge-base answer was given, numbered as the answer cites them ([n]).
function showSources(box, sources, answer) {
  const cited = new Set([...answer.matchAll(/\[(\d{1,3})\]/g)].map((m) => Number(m[1])));
  const list = document.createElement("ol");
  list.className = "sources";
  for (const source of sources) {
    const item = document.createElement("li");
    item.value = source.n;
    if (cited.has(source.n) || source.cited) item.classList.add("cited");
    const place = [source.source, source.page ? "page " + source.page : "", source.section || ""].filter(Boolean);
    const title = document.createElement("div");
    title.className = "place";
    title.textContent = place.join(" · ");
    const passage = document.createElement("div");
    passage.className = "passage";
    passage.textContent = source.text;
    item.append(title, passage);
    list.appendChild(item);
  }
  box.appendChild(list);
}

async function loadKnowledgeBases(select) {
  const response = await fetch("/v1/kb", { headers: headers() });
  if (!response.ok) return;
  const body = await response.json();
  const current = select || $("kb").value;
  $("kb").replaceChildren(new Option("none", ""));
  for (const kb of body.data) {
    const docs = kb.documents === 1 ? " doc)" : " docs)";
    $("kb").appendChild(new Option(kb.name + " (" + kb.documents + docs, kb.name));
  }
  $("kb").value = body.data.some((kb) => kb.name === current) ? current : "";
  $("upload").disabled = !$("kb").value;
}

async function createKnowledgeBase() {
  const name = $("kb-name").value.trim();
  if (!name) return;
  const response = await fetch("/v1/kb", { method: "POST", headers: headers(), body: JSON.stringify({ name: name }) });
  if (!response.ok) { $("kb-status").textContent = await errorMessage(response); return; }
  $("kb-name").value = "";
  await loadKnowledgeBases(name);
  $("kb-status").textContent = "created " + name;
}

async function uploadDocuments(files) {
  const kb = $("kb").value;
  const auth = authHeaders();
  for (const file of files) {
    $("kb-status").textContent = "adding " + file.name + "…";
    const url = "/v1/kb/" + encodeURIComponent(kb) + "/documents/" + encodeURIComponent(file.name);
    const response = await fetch(url, { method: "PUT", headers: auth, body: file });
    $("kb-status").textContent = response.ok
      ? file.name + ": " + (await response.json()).status
      : file.name + ": " + await errorMessage(response);
  }
  $("upload").value = "";
  await loadKnowledgeBases(kb);
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.controller) return;
  $("prompt").value = "";
  if (!state.model) {
    addMessage("assistant error", "The model is not ready yet.");
    return;
  }
  send(text);
});

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });

$("new-chat").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.history = [];
  $("messages").replaceChildren();
});

$("api-key").addEventListener("change", () => {
  sessionStorage.setItem(KEY_ITEM, $("api-key").value.trim());
  loadModel();
  loadKnowledgeBases();
});

$("kb").addEventListener("change", () => { $("upload").disabled = !$("kb").value; });
$("kb-create").addEventListener("click", createKnowledgeBase);
$("upload").addEventListener("change", () => uploadDocuments([...$("upload").files]));

loadModel();
loadKnowledgeBases();
