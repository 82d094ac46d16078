// autoscope web: small helpers shared by the pages (no framework, no build step).
"use strict";

const AS = {};

// el("div.card", {onclick: f, title: "x"}, child, "text", ...)
AS.el = function (spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag || "div");
  if (classes.length) node.className = classes.join(" ");
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "className") node.className = v;
    else if (k in node && k !== "list" && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
};

AS.api = async function (method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  let data = null;
  const text = await resp.text();
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
  if (!resp.ok) {
    const err = new Error(AS.message(data) || resp.statusText);
    err.status = resp.status;
    err.data = data;
    throw err;
  }
  return data;
};

AS.message = function (data) {
  if (!data) return "";
  if (typeof data === "string") return data;
  const d = data.detail !== undefined ? data.detail : data;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
  return d.message || JSON.stringify(d);
};

AS.fieldErrors = function (err) {
  const d = err && err.data && err.data.detail;
  if (d && d.field_errors) return d.field_errors;
  if (Array.isArray(d)) {
    const out = {};
    for (const e of d) out[(e.loc || []).slice(1).join(".") || "value"] = e.msg;
    return out;
  }
  return {};
};

AS.num = function (v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (typeof v !== "number") return String(v);
  if (v !== 0 && (Math.abs(v) >= 1e5 || Math.abs(v) < 1e-3)) return v.toExponential(digits - 1);
  return String(Number(v.toPrecision(digits)));
};

AS.duration = function (s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return `${AS.num(s, 2)} s`;
  if (s < 5400) return `${AS.num(s / 60, 2)} min`;
  return `${AS.num(s / 3600, 2)} h`;
};

AS.badge = function (status) {
  return AS.el(`span.badge.status-${status}`, status);
};

AS.words = function (snake) {
  return String(snake).replace(/_/g, " ");
};

// A small Markdown renderer for the run's report: headings, paragraphs, lists, block quotes,
// tables, code blocks, images (served from the run's files), bold and inline code.
AS.markdown = function (text, fileUrl) {
  const root = AS.el("div.markdown");
  const lines = text.split("\n");
  let i = 0;
  const inline = (s) => {
    const span = document.createElement("span");
    const parts = s.split(/(\*\*[^*]+\*\*|`[^`]+`|!\[[^\]]*\]\([^)]+\))/g);
    for (const p of parts) {
      if (!p) continue;
      let m;
      if ((m = p.match(/^\*\*([^*]+)\*\*$/))) span.append(AS.el("strong", m[1]));
      else if ((m = p.match(/^`([^`]+)`$/))) span.append(AS.el("code", m[1]));
      else if ((m = p.match(/^!\[([^\]]*)\]\(([^)]+)\)$/))) span.append(AS.el("img", { alt: m[1], src: fileUrl(m[2]) }));
      else span.append(document.createTextNode(p));
    }
    return span;
  };
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) { i++; continue; }
    let m;
    if ((m = line.match(/^(#{1,4})\s+(.*)$/))) {
      root.append(AS.el(`h${m[1].length + 1}`, inline(m[2])));
      i++;
    } else if (line.startsWith("```")) {
      const buf = [];
      i++;
      while (i < lines.length && !lines[i].startsWith("```")) buf.push(lines[i++]);
      i++;
      root.append(AS.el("pre", buf.join("\n")));
    } else if (line.startsWith("|")) {
      const rows = [];
      while (i < lines.length && lines[i].startsWith("|")) rows.push(lines[i++]);
      const cells = (r) => r.replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
      const table = AS.el("table");
      table.append(AS.el("tr", cells(rows[0]).map((c) => AS.el("th", inline(c)))));
      for (const r of rows.slice(2)) table.append(AS.el("tr", cells(r).map((c) => AS.el("td", inline(c)))));
      root.append(table);
    } else if (line.startsWith("> ") || line === ">") {
      const buf = [];
      while (i < lines.length && (lines[i].startsWith(">"))) buf.push(lines[i++].replace(/^>\s?/, ""));
      root.append(AS.el("blockquote", inline(buf.join(" "))));
    } else if (line.startsWith("- ")) {
      const ul = AS.el("ul");
      while (i < lines.length && lines[i].startsWith("- ")) ul.append(AS.el("li", inline(lines[i++].slice(2))));
      root.append(ul);
    } else {
      const buf = [];
      while (i < lines.length && lines[i].trim() && !/^(#|```|\||>|- )/.test(lines[i])) buf.push(lines[i++]);
      if (!buf.length) buf.push(lines[i++]);
      root.append(AS.el("p", inline(buf.join(" "))));
    }
  }
  return root;
};

// colour maps for the canvases
AS.viridis = function (t) {
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const k = Math.min(stops.length - 2, Math.floor(t));
  const f = t - k;
  const c = stops[k].map((v, j) => Math.round(v + f * (stops[k + 1][j] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
};

AS.PHASE_COLORS = {
  survey: "#ffffff",
  al: "#ff9f1c",
  seed: "#ffd166",
  audit: "#2ec4b6",
  site: "#e56bff",
  sites: "#e56bff",
  at: "#ffe66d",
  other: "#bbbbbb",
};
