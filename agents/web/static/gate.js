// The gate card: the proposal in words, the dry run with where its dose goes, and the answers
// (approve, edit through a form generated from the model's JSON schema, reject, redirect).
"use strict";
(function () {
  const { el, api, num } = AS;
  const Gate = (AS.Gate = { doseTargets: null, key: null });
  const schemas = {};

  Gate.render = function (container, state, opts) {
    const p = state.pending;
    Gate.doseTargets = p && p.dose_targets ? p.dose_targets : null;
    if (!p) {
      Gate.key = null;
      container.replaceChildren();
      return;
    }
    if (p.key === Gate.key && container.firstChild) return; // keep what a person is typing
    Gate.key = p.key;
    container.replaceChildren(card(state, p, opts));
  };

  function card(state, p, opts) {
    const notice = el("div.notice", { hidden: true });
    const say = (text, kind) => {
      notice.hidden = false;
      notice.className = `notice ${kind}`;
      notice.textContent = text;
    };
    const buttons = [];
    const send = async (answer, form) => {
      buttons.forEach((b) => (b.disabled = true));
      try {
        await api("POST", `${opts.base}/answer`, { key: p.key, ...answer });
        say(`${answer.action} sent: the run resumes from its checkpoint…`, "info");
      } catch (err) {
        buttons.forEach((b) => (b.disabled = false));
        if (err.status === 422 && form) {
          showErrors(form, AS.fieldErrors(err));
          say("The edit is not valid: see the fields marked below.", "bad");
        } else {
          say(err.message, "bad");
        }
        if (err.status === 409) buttons.forEach((b) => (b.disabled = true));
      }
    };
    const reason = el("input", { name: "reason", placeholder: "reason (the agents see it)" });
    const instruction = el("input", { name: "instruction", placeholder: "a new instruction for the next hypothesis" });
    const approve = el("button.approve", { onclick: () => send({ action: "approve" }) }, "Approve");
    const reject = el("button.reject", { onclick: () => send({ action: "reject", reason: reason.value }) }, "Reject");
    const redirect = el("button", {
      onclick: () => (instruction.value.trim() ? send({ action: "redirect", instruction: instruction.value }) : say("Write the instruction first.", "bad")),
    }, "Redirect");
    const formBox = el("div.edit-form", { hidden: true });
    const edit = el("button", {
      onclick: async () => {
        formBox.hidden = !formBox.hidden;
        if (!formBox.firstChild) await buildForm(formBox, p, send, buttons);
      },
    }, "Edit…");
    buttons.push(approve, reject, redirect, edit);
    const node = el(
      "section.card.gate",
      { dataset: { gate: p.gate, key: p.key } },
      el("h2", `${p.gate} gate · round ${p.round}`),
      // an analysis gate's question repeats the evidence shown below: its first clause is enough
      el("p", p.gate === "analysis" ? `${p.question.split(":")[0]}. Accept it and go on?` : p.question),
      p.error ? el("div.notice.bad.previous-error", `The previous answer was refused: ${p.error}`) : null,
      proposal(p),
      p.dry_run ? dryRun(p, opts) : null,
      notice,
      el("div.actions", approve, edit),
      el("div.actions", reason, reject),
      el("div.actions", instruction, redirect),
      formBox
    );
    if (Object.keys(p.field_errors || {}).length && p.error) {
      formBox.hidden = false;
      buildForm(formBox, p, send, buttons).then((form) => showErrors(form, p.field_errors));
    }
    return node;
  }

  // ------------------------------------------------------------------ the proposal, in words
  function dl(pairs) {
    return el("dl.proposal", pairs.filter(([, v]) => v !== undefined && v !== null && v !== "").flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  }

  function describeSignal(s) {
    if (!s) return "";
    const band = s.lo_eV !== undefined ? `${num(s.lo_eV)}–${num(s.hi_eV)} eV` : "";
    const extra = ["reduce", "background", "normalize", "fraction"].filter((k) => s[k] && s[k] !== "none").map((k) => `${AS.words(k)} ${s[k]}`);
    return `${AS.words(s.kind)} ${band}${extra.length ? ` (${extra.join(", ")})` : ""}`;
  }

  function describePrediction(pr) {
    if (!pr) return "";
    const parts = Object.entries(pr).filter(([k]) => k !== "kind").map(([k, v]) => `${AS.words(k)}: ${Array.isArray(v) ? v.join(", ") : typeof v === "object" && v !== null ? JSON.stringify(v) : v}`);
    return `${AS.words(pr.kind)} — ${parts.join("; ")}`;
  }

  function describeStep(s) {
    const win = s.energy_min_eV !== undefined ? `, ${num(s.energy_min_eV)}–${num(s.energy_max_eV)} eV` : "";
    switch (s.kind) {
      case "survey": return `survey: ${num(s.fov_nm)} nm field, ${s.pixels}² px, ${num(s.dwell_s * 1e6)} µs dwell, ${num(s.current_pA)} pA`;
      case "seed": return `seed: ${s.points} random spectra`;
      case "active_scan": return `active scan: ${s.budget} spectra chosen by ${s.model} (${s.acquisition && s.acquisition.kind}), every ${s.stride_px} px, ${num(s.spectrum_dwell_s)} s each${win}`;
      case "audit": return `audit: ${s.per_class} spectra per class (${s.allocation}) over ${s.classes.join(", ")}, ${num(s.spectrum_dwell_s)} s each${win}${s.top_up ? "; tops up while inconclusive" : ""}`;
      case "sites": return `sites: up to ${s.max_sites} ${s.at} sites × ${s.repeats}, ${num(s.dwell_s)} s each${win}`;
      case "spectrum_at": return `spectrum at (${num(s.x_nm)}, ${num(s.y_nm)}) nm, ${num(s.dwell_s)} s${win}${s.reason ? ` — ${s.reason}` : ""}`;
      case "intervention": return `on ${s.monitor}: ${s.action}${s.check_every ? ` (check every ${s.check_every})` : ""}`;
      case "stop_when": return `stop when: ${Object.entries(s).filter(([k, v]) => k !== "kind" && v !== null).map(([k, v]) => `${AS.words(k)} ${num(v)}`).join(", ") || "never"}`;
      default: return `${s.kind}: ${JSON.stringify(s)}`;
    }
  }

  function proposal(p) {
    const x = p.proposal;
    if (p.gate === "hypothesis")
      return dl([
        ["statement", x.statement],
        ["signal", describeSignal(x.signal)],
        ["prediction", describePrediction(x.prediction)],
        ["expected", x.expected],
        ["refuted if", x.refuted_if],
        ["descriptor", x.patch ? Object.entries(x.patch).map(([k, v]) => `${AS.words(k)} ${typeof v === "number" ? num(v) : v}`).join(", ") : ""],
        ["proposed by", x.author],
      ]);
    if (p.gate === "plan")
      return dl([
        ["rationale", x.rationale],
        ["steps", el("ol.steps", x.steps.map((s) => el("li", describeStep(s))))],
        ["written by", x.author],
      ]);
    if (p.gate === "analysis")
      return dl([
        ["verdict", el(`span.verdict-${x.outcome}`, x.outcome)],
        ["estimate", x.estimate !== null && x.estimate !== undefined ? `${x.statistic} = ${num(x.estimate)}, 95% interval [${num(x.ci_low)}, ${num(x.ci_high)}]` : "not estimable"],
        ["reading", x.readable],
        ["evidence", el("ul.evidence", (x.evidence || []).map((e) => el("li", e)))],
      ]);
    return dl(Object.entries(x).map(([k, v]) => [AS.words(k), typeof v === "object" ? JSON.stringify(v) : String(v)]));
  }

  function dryRun(p, opts) {
    const d = p.dry_run;
    const bad = d.checks.filter((c) => !c.ok);
    const pic = el("canvas.dose-map", { width: 260, height: 260 });
    drawDoseMap(pic, p, opts);
    return el(
      "div.dry-run",
      el("h3", "Dry run (nothing touched the instrument)"),
      el("div.row",
        pic,
        el("div", { style: "flex:1;min-width:200px" },
          el("div", `${d.spectra} spectra, ${d.images} image(s) · ~${AS.duration(d.time_s)}`),
          el("div", `dose ${num(d.dose_e)} e (${num(d.dose_e_per_A2)} e/Å² over the field; peak ${num(d.peak_dose_e_per_A2)} e/Å²)`),
          el("div", bad.length ? el("strong.error", `beyond the limits: ${bad.map((c) => c.message).join("; ")}`) : el("span.verdict-supported", "within every limit")),
          el("table.small.steps-cost",
            el("tr", el("th", "step"), el("th", "spectra"), el("th", "dose (e)"), el("th", "time")),
            d.steps.filter((s) => s.spectra || s.images).map((s) => el("tr", el("td", s.kind), el("td", s.spectra), el("td", num(s.dose_e)), el("td", AS.duration(s.time_s)))))
        )
      ),
      el("details", el("summary.small", "every limit check"),
        el("table.small.checks", d.checks.map((c) => el("tr", el("td", { className: c.ok ? "" : "bad" }, c.ok ? "ok" : "beyond"), el("td", c.message)))))
    );
  }

  function drawDoseMap(c, p, opts) {
    const g = c.getContext("2d");
    const img = new Image();
    img.onload = () => {
      g.drawImage(img, 0, 0, c.width, c.height);
      const targets = p.dose_targets || [];
      const field = surveyField();
      if (!field) return;
      for (const t of targets) {
        g.fillStyle = t.exact ? "rgba(255,40,40,1)" : "rgba(255,70,70,0.55)";
        for (const [x, y] of t.points) {
          const cx = ((x - field.x0) / field.w) * c.width;
          const cy = ((y - field.y0) / field.h) * c.height;
          g.fillRect(cx - 1.5, cy - 1.5, 3, 3);
        }
      }
    };
    img.src = `${opts.base}/survey.png`;
    opts.onDoseTargets && opts.onDoseTargets();
  }

  function surveyField() {
    const st = AS.lastState;
    if (!st || !st.survey) return null;
    const s = st.survey;
    return { x0: s.center_x_nm - s.fov_nm / 2, y0: s.center_y_nm - s.fov_y_nm / 2, w: s.fov_nm, h: s.fov_y_nm };
  }

  // ------------------------------------------------------------------ the edit form, from the schema
  async function buildForm(box, p, send, buttons) {
    const base = p.edit_base || p.proposal;
    if (!schemas[p.gate]) schemas[p.gate] = await api("GET", `/api/schema/${p.gate}`);
    const schema = schemas[p.gate];
    const defs = schema.$defs || {};
    const form = el("form.schema-form", { autocomplete: "off" });
    form.append(field(schema, base, "", p.gate === "intervention" ? "plan" : p.gate, defs, true));
    const submit = el("button.primary", { type: "submit" }, "Apply edit");
    buttons.push(submit);
    form.append(el("div.form-error.error"), submit);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      clearErrors(form);
      send({ action: "edit", edit: collect(form, base) }, form);
    });
    box.replaceChildren(el("h3", "Edit the proposal"), form);
    return form;
  }

  const SKIP = new Set(["author", "id", "hypothesis_id", "kind"]);

  function resolve(s, defs) {
    let guard = 0;
    while (s && s.$ref && guard++ < 20) s = defs[s.$ref.split("/").pop()];
    return s || {};
  }

  function field(schema, value, path, label, defs, top) {
    let s = resolve(schema, defs);
    let nullable = false;
    const options = s.anyOf || s.oneOf;
    if (options) {
      const opts = options.map((o) => resolve(o, defs));
      nullable = opts.some((o) => o.type === "null");
      const real = opts.filter((o) => o.type !== "null");
      if (real.every((o) => o.enum || o.const !== undefined))
        return leaf({ enum: real.flatMap((o) => o.enum || [o.const]) }, value, path, label, nullable, s.description);
      let pick = null;
      if (value && typeof value === "object" && !Array.isArray(value) && value.kind !== undefined)
        pick = real.find((o) => o.properties && o.properties.kind && o.properties.kind.const === value.kind);
      pick = pick || real.find((o) => matches(o, value)) || real[0];
      s = { ...pick, description: s.description || pick.description };
    }
    if ((s.type === "object" || s.properties) && value && typeof value === "object" && !Array.isArray(value)) {
      const fs = el("fieldset", { dataset: { field: path } }, el("legend", value.kind ? `${label} · ${AS.words(value.kind)}` : label));
      const grid = el("div.form-grid");
      const nested = [];
      for (const [k, sub] of Object.entries(s.properties || {})) {
        if (SKIP.has(k) && (top || k === "kind")) continue;
        if (!(k in value) && !(sub.default !== undefined)) continue;
        const child = field(sub, k in value ? value[k] : sub.default, path ? `${path}.${k}` : k, AS.words(k), defs, false);
        if (child.tagName === "FIELDSET") nested.push(child);
        else grid.append(child);
      }
      fs.append(grid, ...nested);
      return fs;
    }
    if (s.type === "array" && Array.isArray(value)) {
      const items = resolve(s.items || {}, defs);
      const simple = !(items.type === "object" || items.properties || items.oneOf || (items.anyOf && !items.anyOf.every((o) => { const r = resolve(o, defs); return r.enum || r.type === "string"; })));
      if (simple) return leaf({ type: "list", items }, value, path, label, nullable, s.description);
      return el("fieldset", { dataset: { field: path } }, el("legend", label), value.map((v, i) => field(s.items, v, `${path}.${i}`, `${label.replace(/s$/, "")} ${i}`, defs, false)));
    }
    return leaf(s, value, path, label, nullable, s.description);
  }

  function matches(o, v) {
    if (v === null || v === undefined) return false;
    if (Array.isArray(v)) return o.type === "array";
    if (typeof v === "object") return o.type === "object" || !!o.properties;
    if (typeof v === "number") return o.type === "number" || o.type === "integer";
    if (typeof v === "boolean") return o.type === "boolean";
    return o.type === "string";
  }

  function leaf(s, value, path, label, nullable, help) {
    let input;
    let type = s.type || "json";
    if (s.enum) {
      type = "enum";
      input = el("select", (nullable ? [""] : []).concat(s.enum).map((v) => el("option", { value: v, selected: v === value }, v === "" ? "–" : v)));
      if (value === null || value === undefined) input.value = "";
    } else if (type === "boolean") {
      input = el("input", { type: "checkbox", checked: !!value });
    } else if (type === "integer" || type === "number") {
      input = el("input", { inputmode: "decimal", value: value === null || value === undefined ? "" : String(value) });
    } else if (type === "list") {
      input = el("input", { value: (value || []).join(", ") });
      type = `list:${s.items && (s.items.type === "number" || s.items.type === "integer") ? "number" : "string"}`;
    } else if (type === "string") {
      const text = value === null || value === undefined ? "" : String(value);
      input = text.length > 60 ? el("textarea", { rows: 2 }, text) : el("input", { value: text });
    } else {
      type = "json";
      input = el("textarea", { rows: 2 }, JSON.stringify(value));
    }
    input.dataset.path = path;
    input.dataset.type = type;
    if (nullable) input.dataset.nullable = "1";
    input.name = path;
    return el("label.field", { dataset: { field: path }, title: help || "" }, label, input);
  }

  function collect(form, base) {
    const out = JSON.parse(JSON.stringify(base));
    for (const input of form.querySelectorAll("[data-path]")) {
      const t = input.dataset.type;
      const raw = input.type === "checkbox" ? input.checked : input.value;
      let v = raw;
      if (t === "integer" || t === "number") {
        const txt = String(raw).trim();
        v = txt === "" ? (input.dataset.nullable ? null : "") : Number.isFinite(Number(txt)) ? Number(txt) : txt;
      } else if (t === "enum") {
        v = raw === "" && input.dataset.nullable ? null : raw;
      } else if (t.startsWith("list:")) {
        v = String(raw).split(",").map((x) => x.trim()).filter(Boolean).map((x) => (t === "list:number" && Number.isFinite(Number(x)) ? Number(x) : x));
      } else if (t === "json") {
        try { v = JSON.parse(raw); } catch (e) { v = raw; }
      }
      setPath(out, input.dataset.path, v);
    }
    return out;
  }

  function setPath(obj, path, v) {
    const parts = path.split(".");
    let here = obj;
    for (const p of parts.slice(0, -1)) here = here[/^\d+$/.test(p) && Array.isArray(here) ? Number(p) : p];
    const last = parts[parts.length - 1];
    here[/^\d+$/.test(last) && Array.isArray(here) ? Number(last) : last] = v;
  }

  function clearErrors(form) {
    form.querySelectorAll(".field-error").forEach((n) => n.remove());
    form.querySelectorAll(".has-error").forEach((n) => n.classList.remove("has-error"));
    const top = form.querySelector(".form-error");
    if (top) top.textContent = "";
  }

  function showErrors(form, errors) {
    if (!form) return;
    clearErrors(form);
    const rest = [];
    for (const [path, msg] of Object.entries(errors || {})) {
      const box = form.querySelector(`[data-field="${CSS.escape(path)}"]`);
      if (box) {
        box.classList.add("has-error");
        box.append(el("span.field-error", msg));
      } else rest.push(`${path}: ${msg}`);
    }
    const top = form.querySelector(".form-error");
    if (top) top.textContent = rest.join("; ");
  }
})();
