// The attention explorer: types texts into the model's REST API and draws what it answers.
// It uses only the API any client uses (GET /v1/models/NAME, .../metadata, POST ...:predict).
"use strict";

const MODEL = document.querySelector('meta[name="s2s-model"]').content;
const API = `/v1/models/${encodeURIComponent(MODEL)}`;
const SVG_NS = "http://www.w3.org/2000/svg";
const CELL = 24;             // px per attention cell
const LABEL_CHARS = 24;      // longer token labels are cut (the full token is in the tooltip)
const LINKED = 0.5;          // (t, s) are linked when a[t][s] >= LINKED x max_s a[t][s]
const POLL_MS = 3000;        // how often to ask which version is served
const STRATEGY_NAMES = {serving_default: "greedy", beam_search: "beam search", sample: "sampling"};
const RTL = /[\u0590-\u08FF\uFB1D-\uFDFF\uFE70-\uFEFF]/;

const $ = (id) => document.getElementById(id);
let signatures = {};  // name -> {inputs: {name: dtype}}
let servedVersion = null;

async function getJson(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    throw new Error(`Cannot reach the server: ${error.message}`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;  // an answer that is not JSON: its status says what happened
  }
  if (!response.ok) {
    const message = body && typeof body.error === "string" ? body.error : response.statusText;
    throw new Error(`The server answered ${response.status}: ${message}`);
  }
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// ------------------------------------------------------------ model, version, strategies
function signatureOrder(a, b) {
  if (a === "serving_default" || b === "serving_default") return a === "serving_default" ? -1 : 1;
  return a < b ? -1 : 1;
}

async function loadMetadata() {
  const body = await getJson(`${API}/metadata`);
  const definitions = body.metadata.signature_def.signature_def;
  servedVersion = body.model_spec.version;
  signatures = {};
  for (const name of Object.keys(definitions).sort(signatureOrder)) {
    const inputs = {};
    for (const [input, info] of Object.entries(definitions[name].inputs)) {
      if (input !== "text") inputs[input] = info.dtype;
    }
    signatures[name] = {inputs};
  }
  $("model-version").textContent = servedVersion;
  $("signatures").textContent = Object.keys(signatures).join(", ");
  const select = $("signature"), chosen = select.value;
  select.replaceChildren(...Object.keys(signatures).map((name) => {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = STRATEGY_NAMES[name] ? `${STRATEGY_NAMES[name]} (${name})` : name;
    return option;
  }));
  if (chosen in signatures) select.value = chosen;
  showParameters();
}

function showParameters(values = {}) {
  const box = $("parameters");
  const old = Object.fromEntries([...box.querySelectorAll("input")].map((i) => [i.name, i.value]));
  box.replaceChildren();
  for (const [name, dtype] of Object.entries(signatures[$("signature").value]?.inputs ?? {})) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "number";
    input.name = name;
    input.step = dtype.startsWith("DT_INT") ? "1" : "any";
    input.dataset.integer = dtype.startsWith("DT_INT") ? "1" : "";
    input.placeholder = "default";
    input.value = values[name] ?? old[name] ?? "";
    label.append(`${name} `, input);
    box.append(label);
  }
}

async function watchVersion() {
  try {
    const status = await getJson(API);
    const available = status.model_version_status
      .filter((v) => v.state === "AVAILABLE").map((v) => Number(v.version));
    const newest = available.length ? String(Math.max(...available)) : null;
    if (newest !== null && newest !== servedVersion) {
      const before = servedVersion;
      await loadMetadata();
      $("version-news").textContent = `Now serving version ${servedVersion} (was ${before}).`;
      $("version-news").hidden = false;
    }
  } catch (error) {
    showError(error.message);
  }
}

// ------------------------------------------------------------ translating
function readRequest() {
  const lines = $("text").value.split("\n").map((line) => line.replace(/\r$/, ""));
  while (lines.length && lines[lines.length - 1].trim() === "") lines.pop();
  if (!lines.length) throw new Error("Type a text to translate first.");
  const inputs = {text: lines};
  for (const input of $("parameters").querySelectorAll("input")) {
    if (input.value.trim() === "") continue;  // the exported default
    const value = Number(input.value);
    if (!Number.isFinite(value) || (input.dataset.integer && !Number.isInteger(value))) {
      const kind = input.dataset.integer ? "an integer" : "a number";
      throw new Error(`${input.name} must be ${kind}; got "${input.value}".`);
    }
    inputs[input.name] = value;
  }
  return {signature_name: $("signature").value, inputs};
}

function rememberInUrl(request) {
  const query = new URLSearchParams({q: request.inputs.text.join("\n")});
  if (request.signature_name !== "serving_default") query.set("strategy", request.signature_name);
  for (const [name, value] of Object.entries(request.inputs)) {
    if (name !== "text") query.set(name, String(value));
  }
  history.replaceState(null, "", `?${query}`);
}

async function translate() {
  let request;
  try {
    request = readRequest();
  } catch (error) {
    showError(error.message);
    return;
  }
  rememberInUrl(request);
  showError("");
  $("busy").hidden = false;
  $("translate").disabled = true;
  document.body.dataset.state = "busy";
  try {
    const body = await getJson(`${API}:predict`, {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify(request)});
    showResults(request.inputs.text, body.outputs);
  } catch (error) {
    $("results").replaceChildren();
    showError(error.message);
  } finally {
    $("busy").hidden = true;
    $("translate").disabled = false;
    document.body.dataset.state = "done";
  }
}

// ------------------------------------------------------------ results
function realLength(tokens) {
  let length = 0;
  tokens.forEach((token, index) => { if (token !== "") length = index + 1; });
  return length;
}

function showResults(texts, outputs) {
  $("results").replaceChildren(...texts.map((text, row) => {
    const source = outputs.source_tokens[row].slice(0, realLength(outputs.source_tokens[row]));
    const target = outputs.target_tokens[row].slice(0, realLength(outputs.target_tokens[row]));
    const section = document.createElement("article");
    section.className = "result";
    section.dataset.row = row;
    const translation = document.createElement("div");
    translation.className = "translation";
    translation.dir = "auto";
    translation.textContent = outputs.translation[row];
    section.append(translation, facts(text, outputs, row));
    if (outputs.translations && outputs.translations[row].length > 1) {
      section.append(nBest(outputs.translations[row], outputs.scores[row]));
    }
    if (outputs.attention && target.length && source.length) {
      const weights = outputs.attention[row].slice(0, target.length)
        .map((weightsOfT) => weightsOfT.slice(0, source.length));
      const map = attentionMap(source, target, weights, RTL.test(text));
      const box = document.createElement("div");
      box.className = "map";
      box.append(map);
      box.addEventListener("scroll", () => pinLabels(map, box.scrollLeft, box.scrollTop));
      section.append(box, downloads(map, row));
    }
    return section;
  }));
}

function facts(text, outputs, row) {
  const line = document.createElement("p");
  line.className = "facts";
  const shown = text.length > 60 ? `${text.slice(0, 60)}…` : text;
  line.append(`“${shown}” · score ${Number(outputs.score[row]).toFixed(4)}`);
  if (outputs.unknown_tokens && outputs.unknown_tokens[row]) {
    line.append(` · ${outputs.unknown_tokens[row]} unknown source token(s)`);
  }
  if (outputs.truncated[row]) {
    const cut = document.createElement("span");
    cut.className = "truncated";
    cut.textContent = " · truncated: the input was longer than the model reads";
    line.append(cut);
  }
  return line;
}

function nBest(translations, scores) {
  const list = document.createElement("ol");
  list.className = "nbest";
  translations.forEach((translation, k) => {
    const item = document.createElement("li");
    item.dir = "auto";
    item.textContent = `${translation} (${Number(scores[k]).toFixed(4)})`;
    list.append(item);
  });
  return list;
}

// ------------------------------------------------------------ the attention map
function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

const measure = document.createElement("canvas").getContext("2d");
function labelWidth(labels) {
  measure.font = "13px system-ui, sans-serif";
  return Math.ceil(Math.max(0, ...labels.map((l) => measure.measureText(l).width))) + 10;
}

function shortLabel(token) {
  const chars = [...token];
  return chars.length > LABEL_CHARS ? `${chars.slice(0, LABEL_CHARS - 1).join("")}…` : token;
}

function colour(weight) {  // white to dark blue
  const w = Math.min(1, Math.max(0, weight));
  const mix = (from, to) => Math.round(from + (to - from) * w);
  return `rgb(${mix(255, 8)},${mix(255, 48)},${mix(255, 107)})`;
}

function attentionMap(source, target, weights, rightToLeft) {
  const sourceLabels = source.map(shortLabel), targetLabels = target.map(shortLabel);
  const left = labelWidth(targetLabels), top = labelWidth(sourceLabels);
  const width = left + CELL * source.length + 4, height = top + CELL * target.length + 4;
  const svg = svgElement("svg", {xmlns: SVG_NS, width, height, viewBox: `0 0 ${width} ${height}`,
                                 class: "attention-map", role: "img"});
  svg.append(svgElement("title", {}, `Attention of ${target.length} target tokens over ` +
                                     `${source.length} source tokens`));
  const column = (s) => left + CELL * (rightToLeft ? source.length - 1 - s : s);
  weights.forEach((row, t) => row.forEach((weight, s) => {
    const cell = svgElement("rect", {class: "cell", "data-t": t, "data-s": s, x: column(s),
                                     y: top + CELL * t, width: CELL, height: CELL,
                                     fill: colour(weight)});
    cell.append(svgElement("title", {}, `${target[t]} → ${source[s]}: ${weight.toFixed(3)}`));
    svg.append(cell);
  }));
  // The labels sit on white bands over the cells, so that they can follow a scrolled map.
  const sources = svgElement("g", {class: "source-labels"});
  sources.append(svgElement("rect", {width, height: top, fill: "#ffffff"}));
  source.forEach((token, s) => {
    const x = column(s) + CELL / 2 + 4, y = top - 6;
    const label = svgElement("text", {class: "source-label", "data-s": s, x, y,
                                      transform: `rotate(-90 ${x} ${y})`}, sourceLabels[s]);
    label.append(svgElement("title", {}, token));
    sources.append(label);
  });
  const targets = svgElement("g", {class: "target-labels"});
  targets.append(svgElement("rect", {width: left, height, fill: "#ffffff"}));
  target.forEach((token, t) => {
    const label = svgElement("text", {class: "target-label", "data-t": t, x: left - 6,
                                      y: top + CELL * t + CELL / 2 + 4, "text-anchor": "end"},
                             targetLabels[t]);
    label.append(svgElement("title", {}, token));
    targets.append(label);
  });
  const corner = svgElement("rect", {class: "corner", width: left, height: top, fill: "#ffffff"});
  svg.append(sources, targets, corner);
  highlightOnHover(svg, weights);
  return svg;
}

function pinLabels(map, x, y) {  // the labels stay in view over a scrolled map
  map.querySelector(".source-labels").setAttribute("transform", `translate(0 ${y})`);
  map.querySelector(".target-labels").setAttribute("transform", `translate(${x} 0)`);
  map.querySelector(".corner").setAttribute("transform", `translate(${x} ${y})`);
}

function linked(weights) {  // [t][s] -> bool
  return weights.map((row) => {
    const most = Math.max(...row);
    return row.map((weight) => most > 0 && weight >= LINKED * most);
  });
}

function highlightOnHover(svg, weights) {
  const links = linked(weights);
  const mark = (targets, sources) => {
    for (const element of svg.querySelectorAll(".hl")) element.classList.remove("hl");
    for (const t of targets) svg.querySelector(`.target-label[data-t="${t}"]`).classList.add("hl");
    for (const s of sources) svg.querySelector(`.source-label[data-s="${s}"]`).classList.add("hl");
    for (const t of targets) for (const s of sources) {
      if (links[t][s]) svg.querySelector(`.cell[data-t="${t}"][data-s="${s}"]`).classList.add("hl");
    }
  };
  const indices = (flags) => flags.flatMap((flag, i) => (flag ? [i] : []));
  svg.addEventListener("mouseover", (event) => {
    const element = event.target.closest("[data-t], [data-s]");
    if (!element) return;
    const t = element.dataset.t === undefined ? null : Number(element.dataset.t);
    const s = element.dataset.s === undefined ? null : Number(element.dataset.s);
    if (t !== null && s !== null) mark([t], [s]);
    else if (t !== null) mark([t], indices(links[t]));
    else mark(indices(links.map((row) => row[s])), [s]);
  });
  svg.addEventListener("mouseleave", () => mark([], []));
}

// ------------------------------------------------------------ downloads
const EXPORT_STYLE = "text{font:13px system-ui,sans-serif;fill:#1b1f24}rect.cell{stroke:#fff}";

function svgFile(map) {
  const copy = map.cloneNode(true);
  for (const element of copy.querySelectorAll(".hl")) element.classList.remove("hl");
  pinLabels(copy, 0, 0);  // the whole map, as if not scrolled
  copy.prepend(svgElement("style", {}, EXPORT_STYLE));
  copy.insertBefore(svgElement("rect", {width: "100%", height: "100%", fill: "#ffffff"}),
                    copy.querySelector("text, rect"));
  return new Blob([new XMLSerializer().serializeToString(copy)], {type: "image/svg+xml"});
}

function save(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function savePng(map, name) {
  const image = new Image();
  image.onload = () => {
    const canvas = document.createElement("canvas");
    canvas.width = map.width.baseVal.value;
    canvas.height = map.height.baseVal.value;
    canvas.getContext("2d").drawImage(image, 0, 0);
    URL.revokeObjectURL(image.src);
    canvas.toBlob((blob) => save(blob, name), "image/png");
  };
  image.src = URL.createObjectURL(svgFile(map));
}

function downloads(map, row) {
  const box = document.createElement("div");
  box.className = "downloads";
  const button = (label, action) => {
    const element = document.createElement("button");
    element.type = "button";
    element.textContent = label;
    element.addEventListener("click", action);
    return element;
  };
  box.append("Download the map: ",
             button("SVG", () => save(svgFile(map), `attention-${row + 1}.svg`)), " ",
             button("PNG", () => savePng(map, `attention-${row + 1}.png`)));
  return box;
}

// ------------------------------------------------------------ start
async function start() {
  $("form").addEventListener("submit", (event) => { event.preventDefault(); translate(); });
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      translate();
    }
  });
  $("signature").addEventListener("change", () => showParameters());
  try {
    await loadMetadata();
  } catch (error) {
    showError(error.message);
    return;
  }
  setInterval(watchVersion, POLL_MS);
  const query = new URLSearchParams(location.search);
  const strategy = query.get("strategy");
  if (strategy && strategy in signatures) $("signature").value = strategy;
  else if (strategy) showError(`strategy=${strategy} is not a signature of this model; ` +
                               `it has ${Object.keys(signatures).join(", ")}.`);
  showParameters(Object.fromEntries([...query].filter(([k]) => k !== "q" && k !== "strategy")));
  document.body.dataset.state = "ready";
  if (query.get("q")) {
    $("text").value = query.get("q");
    translate();
  }
}

start();
