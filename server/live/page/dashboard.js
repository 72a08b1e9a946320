// The medfed dashboard: polls /api/status (documented in the README) once a second and redraws.
// Everything a hospital sent is set as text (textContent), never as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];
// Opened as ?token=...: the coordinator answered with a cookie that carries the token from now on,
// so it is taken out of the address bar (and out of the browser's history).
if (new URLSearchParams(window.location.search).has("token")) {
  window.history.replaceState(null, "", window.location.pathname);
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function setText(id, text) { document.getElementById(id).textContent = text; }

function ago(seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function megabytes(n) { return n ? `${(n / 1e6).toFixed(1)} MB` : "0"; }

function fixed(value, digits) { return value === null || value === undefined ? "-" : Number(value).toFixed(digits); }

// A line chart: series = [{name, color, points: [[x, y], ...]}]; the legend sits above the plot area.
function lineChart(svg, series, opts) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const width = svg.clientWidth || 400, height = svg.clientHeight || 220;
  const shown = series.filter((s) => s.points.length > 0);
  const legendRows = Math.ceil(shown.length / 4);
  const left = 46, right = 12, top = 8 + legendRows * 16, bottom = 30;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  if (shown.length === 0) {
    svg.appendChild(svgEl("text", {x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty"},
      opts.empty || "no rounds yet"));
    return;
  }
  const xs = shown.flatMap((s) => s.points.map((p) => p[0]));
  const ys = shown.flatMap((s) => s.points.map((p) => p[1]));
  const xMin = Math.min(...xs), xMax = Math.max(...xs, xMin + 1);
  let yMin = opts.yMin !== undefined ? opts.yMin : Math.min(...ys);
  let yMax = opts.yMax !== undefined ? opts.yMax : Math.max(...ys);
  if (yMax - yMin < 1e-9) { yMax += 0.5; yMin -= 0.5; }
  const px = (x) => left + (x - xMin) / (xMax - xMin) * (width - left - right);
  const py = (y) => top + (1 - (y - yMin) / (yMax - yMin)) * (height - top - bottom);
  for (let i = 0; i <= 4; i++) {
    const y = yMin + (yMax - yMin) * i / 4;
    svg.appendChild(svgEl("line", {x1: left, x2: width - right, y1: py(y), y2: py(y), class: "grid"}));
    svg.appendChild(svgEl("text", {x: left - 6, y: py(y) + 4, "text-anchor": "end"}, fixed(y, opts.digits ?? 2)));
  }
  const step = Math.max(1, Math.ceil((xMax - xMin) / 10));
  for (let x = xMin; x <= xMax; x += step) {
    svg.appendChild(svgEl("text", {x: px(x), y: height - bottom + 16, "text-anchor": "middle"}, x));
  }
  svg.appendChild(svgEl("text", {x: (left + width - right) / 2, y: height - 2, "text-anchor": "middle"}, "round"));
  svg.appendChild(svgEl("line", {x1: left, x2: left, y1: top, y2: height - bottom, class: "axis"}));
  svg.appendChild(svgEl("line", {x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "axis"}));
  shown.forEach((s, i) => {
    const path = s.points.map((p) => `${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(" ");
    svg.appendChild(svgEl("polyline", {points: path, fill: "none", stroke: s.color, "stroke-width": 2}));
    for (const p of s.points) {
      const dot = svgEl("circle", {cx: px(p[0]), cy: py(p[1]), r: 3, fill: s.color, class: "point",
        "data-series": s.name, "data-round": p[0]});
      dot.appendChild(svgEl("title", {}, `${s.name}, round ${p[0]}: ${fixed(p[1], 4)}`));
      svg.appendChild(dot);
    }
    const lx = left + (i % 4) * ((width - left - right) / 4), ly = 12 + Math.floor(i / 4) * 16;
    svg.appendChild(svgEl("rect", {x: lx, y: ly - 8, width: 10, height: 10, fill: s.color}));
    svg.appendChild(svgEl("text", {x: lx + 14, y: ly + 1}, s.name));
  });
}

function points(rounds, key) {
  return rounds.filter((r) => r[key] !== null && r[key] !== undefined).map((r) => [r.round, r[key]]);
}

function renderHospitals(status) {
  const body = document.querySelector("#hospitals tbody");
  while (body.firstChild) body.removeChild(body.firstChild);
  if (status.hospitals.length === 0) {
    const row = el("tr");
    row.appendChild(el("td", {colspan: 9, class: "muted"}, "no hospital has joined yet"));
    body.appendChild(row);
  }
  for (const h of status.hospitals) {
    const row = el("tr", {"data-name": h.name, "data-state": h.state});
    row.appendChild(el("td", {}, h.name));
    const state = el("td");
    state.appendChild(el("span", {class: `state state-${h.state}`}, h.state));
    if (h.detail) state.appendChild(el("span", {class: "detail"}, h.detail));
    row.appendChild(state);
    row.appendChild(el("td", {}, h.certificate_expires ? h.certificate_expires.replace("T", " ") : "no TLS"));
    row.appendChild(el("td", {}, h.last_seen ? `${ago(status.now - h.last_seen)} ago` : "-"));
    row.appendChild(el("td", {}, h.rounds));
    row.appendChild(el("td", {}, megabytes(h.bytes_down)));
    row.appendChild(el("td", {}, megabytes(h.bytes_up)));
    const metrics = h.dp ? "not shown: this hospital trains under differential privacy"
      : Object.entries(h.metrics).filter(([k]) => k !== "num_examples")
        .map(([k, v]) => `${k} ${Number(v).toFixed(3)}`).join(", ");
    row.appendChild(el("td", {class: "metrics"}, metrics || "-"));
    row.appendChild(el("td", {}, h.epsilon === null ? "-" : Number(h.epsilon).toFixed(2)));
    body.appendChild(row);
  }
}

function renderConfusion(status) {
  const table = document.getElementById("confusion");
  while (table.firstChild) table.removeChild(table.firstChild);
  const matrix = status.confusion_matrix;
  if (!matrix) {
    table.appendChild(el("caption", {class: "muted"}, "after the first evaluated round"));
    return;
  }
  const names = status.class_names.length === matrix.length ? status.class_names : matrix.map((_, i) => `${i}`);
  const head = el("tr");
  head.appendChild(el("th", {}, "true \\ predicted"));
  names.forEach((n) => head.appendChild(el("th", {}, n)));
  table.appendChild(head);
  const biggest = Math.max(1, ...matrix.flat());
  matrix.forEach((row, i) => {
    const tr = el("tr");
    tr.appendChild(el("th", {}, names[i]));
    row.forEach((count, j) => {
      const shade = Math.round(255 - 150 * count / biggest);
      const color = i === j ? `rgb(${shade}, 255, ${shade})` : `rgb(255, ${shade}, ${shade})`;
      const cell = el("td", {}, count);
      cell.style.background = color;  // through the CSSOM: the page's CSP allows no inline style attribute
      tr.appendChild(cell);
    });
    table.appendChild(tr);
  });
}

function renderEvents(status) {
  const list = document.getElementById("events");
  while (list.firstChild) list.removeChild(list.firstChild);
  for (const e of status.events.slice().reverse()) {
    const item = el("li", {class: `event-${e.kind}`});
    item.appendChild(el("span", {class: "kind"}, e.kind));
    item.appendChild(document.createTextNode(`${new Date(e.time * 1000).toLocaleTimeString()}  ${e.text}`));
    if (e.count > 1) item.appendChild(el("span", {class: "muted"}, `  (x${e.count})`));
    list.appendChild(item);
  }
}

function render(status) {
  setText("federation", `federation ${status.federation_id}`);
  setText("round", `${status.round} of ${status.total_rounds}`);
  setText("phase", status.phase);
  setText("phase-time", `for ${ago(status.now - status.phase_since)}`);
  setText("deadline", status.deadline ? `in ${ago(status.deadline - status.now)}` : "-");
  setText("strategy", status.strategy || "-");
  setText("privacy", status.privacy === "none" ? "no differential privacy" : `${status.privacy} DP`);
  const tested = status.rounds.filter((r) => r.accuracy !== null);
  const last = tested.length ? tested[tested.length - 1] : null;
  setText("accuracy", last ? fixed(last.accuracy, 4) : "-");
  setText("auc", last && last.auc !== null ? `AUC ${fixed(last.auc, 4)}` : "");
  const spent = status.rounds.filter((r) => r.epsilon !== null);
  setText("epsilon", spent.length ? fixed(spent[spent.length - 1].epsilon, 2) : "-");
  setText("confusion-round", last ? `(round ${last.round})` : "");
  renderHospitals(status);
  lineChart(document.getElementById("chart-test"), [
    {name: "accuracy", color: COLORS[0], points: points(status.rounds, "accuracy")},
    {name: "macro AUC", color: COLORS[1], points: points(status.rounds, "auc")},
  ], {yMin: 0, yMax: 1, empty: "no test set, or no round evaluated yet"});
  lineChart(document.getElementById("chart-loss"), [
    {name: "test loss", color: COLORS[3], points: points(status.rounds, "loss")},
  ], {digits: 3, empty: "no test set, or no round evaluated yet"});
  const names = [...new Set(status.rounds.flatMap((r) => Object.keys(r.hospital_val_accuracy)))].sort();
  lineChart(document.getElementById("chart-hospitals"), names.map((name, i) => ({
    name, color: COLORS[i % COLORS.length],
    points: status.rounds.filter((r) => name in r.hospital_val_accuracy).map((r) => [r.round, r.hospital_val_accuracy[name]]),
  })), {yMin: 0, yMax: 1, empty: "no hospital reported a validation accuracy"});
  // The privacy chart only where there is privacy to chart.
  const privacyChart = document.getElementById("chart-privacy");
  privacyChart.parentElement.hidden = status.privacy === "none" && !status.rounds.some((r) => r.epsilon !== null);
  lineChart(privacyChart, [
    {name: "epsilon", color: COLORS[4], points: points(status.rounds, "epsilon")},
  ], {yMin: 0, empty: "no differential privacy in this run"});
  renderConfusion(status);
  renderEvents(status);
}

async function poll() {
  try {
    const response = await fetch("api/status", {cache: "no-store", credentials: "same-origin"});
    if (!response.ok) throw new Error(`status ${response.status}`);
    render(await response.json());
    setText("connection", `updated ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    setText("connection", `cannot reach the coordinator (${err.message}); retrying`);
  }
  window.setTimeout(poll, 1000);
}

poll();
