// The run page: live state over server-sent events, the survey with the measured positions,
// predictions, spectra, monitors, verdicts, decisions, the gate card, questions and the report.
"use strict";
(function () {
  const { el, api, num } = AS;
  const name = decodeURIComponent(location.pathname.split("/").pop());
  const base = `/api/runs/${encodeURIComponent(name)}`;
  const canvas = document.getElementById("survey");
  const ctx = canvas.getContext("2d");
  let state = null;
  let surveyImg = null;
  let surveyLoading = false;
  let selected = null;
  const predictions = {};

  document.getElementById("run-name").textContent = name;
  api("GET", "/api/me").then((me) => { document.getElementById("who").textContent = me.name; });

  // ------------------------------------------------------------------ live state
  let source = null;
  function connect() {
    source = new EventSource(`${base}/stream`);
    source.addEventListener("state", (ev) => {
      document.getElementById("conn").textContent = "live";
      render(JSON.parse(ev.data));
    });
    source.onerror = () => {
      document.getElementById("conn").textContent = "reconnecting…";
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 1500);
    };
  }
  connect();

  function render(s) {
    const first = state === null;
    state = s;
    AS.lastState = s;
    document.getElementById("title").textContent = s.run.scenario || s.run.instrument;
    document.getElementById("status").replaceChildren(AS.badge(s.status));
    document.getElementById("goal").textContent = s.run.goal;
    document.getElementById("meta").textContent =
      `${s.run.instrument} · autonomy ${s.run.autonomy} · LLM ${s.run.llm} · budget ${s.run.budget ?? "–"} spectra · ` +
      `${s.run.rounds} rounds · ${s.points.length} spectra measured` +
      (s.summary.stop_reason ? ` · ${s.summary.stop_reason}` : "");
    document.getElementById("run-error").textContent = s.error || "";
    const resume = document.getElementById("resume");
    resume.hidden = !(s.status === "killed" || s.status === "failed" || (s.status === "stopped" && !s.pending));
    document.getElementById("open-report").disabled = !s.report;
    if (s.survey && !surveyImg && !surveyLoading) loadSurvey();
    updateOverlayChoices(s);
    draw();
    renderMonitors(s);
    renderHypotheses(s);
    renderDecisions(s);
    AS.Gate.render(document.getElementById("gate"), s, { base, draw, onDoseTargets: draw });
    if (!first && !document.getElementById("report").hidden && s.report) loadReport();
  }

  // ------------------------------------------------------------------ survey canvas
  function loadSurvey() {
    surveyLoading = true;
    const img = new Image();
    img.onload = () => { surveyImg = img; surveyLoading = false; draw(); };
    img.onerror = () => { surveyLoading = false; };
    img.src = `${base}/survey.png?seq=${state.seq}`;
  }

  function toCanvas(x, y) {
    const sv = state.survey;
    const x0 = sv.center_x_nm - sv.fov_nm / 2;
    const y0 = sv.center_y_nm - sv.fov_y_nm / 2;
    return [((x - x0) / sv.fov_nm) * canvas.width, ((y - y0) / sv.fov_y_nm) * canvas.height];
  }

  function draw() {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!state || !state.survey) {
      ctx.fillStyle = "#888";
      ctx.fillText("waiting for the survey…", 20, 30);
      return;
    }
    if (surveyImg) ctx.drawImage(surveyImg, 0, 0, canvas.width, canvas.height);
    const choice = document.getElementById("overlay").value;
    document.getElementById("overlay-scale").textContent = "";
    if (choice) drawPrediction(choice);
    const targets = AS.Gate.doseTargets;
    if (targets && !choice) drawTargets(targets);
    const n = state.points.length;
    state.points.forEach((p, i) => {
      const [cx, cy] = toCanvas(p.x_nm, p.y_nm);
      ctx.beginPath();
      ctx.arc(cx, cy, p.phase === "survey" ? 6 : 3.2, 0, 2 * Math.PI);
      ctx.strokeStyle = AS.PHASE_COLORS[p.phase] || AS.PHASE_COLORS.other;
      ctx.lineWidth = i === n - 1 ? 2.5 : 1.5;
      ctx.stroke();
    });
    if (selected) {
      const [cx, cy] = toCanvas(selected.x_nm, selected.y_nm);
      ctx.strokeStyle = "#ff3b3b";
      ctx.lineWidth = 2;
      ctx.strokeRect(cx - 7, cy - 7, 14, 14);
    }
    const phases = [...new Set(state.points.map((p) => p.phase))];
    document.getElementById("legend").replaceChildren(
      ...phases.map((ph) => el("span", { style: `--c:${AS.PHASE_COLORS[ph] || "#bbb"}` }, `${ph} (${state.points.filter((p) => p.phase === ph).length})`)),
      ...(targets && !choice ? [el("span", { style: "--c:rgba(255,80,80,0.8)" }, "where the pending plan may put dose")] : [])
    );
  }

  function drawTargets(targets) {
    for (const t of targets) {
      ctx.fillStyle = t.exact ? "rgba(255,60,60,0.95)" : "rgba(255,80,80,0.35)";
      for (const [x, y] of t.points) {
        const [cx, cy] = toCanvas(x, y);
        ctx.fillRect(cx - 1.5, cy - 1.5, 3, 3);
      }
    }
  }

  function updateOverlayChoices(s) {
    const sel = document.getElementById("overlay");
    const want = [""].concat(...s.predictions.map((h) => [`${h}:mean`, `${h}:std`]));
    const have = [...sel.options].map((o) => o.value);
    if (want.join() === have.join()) return;
    const keep = sel.value;
    sel.replaceChildren(
      el("option", { value: "" }, "measured positions"),
      ...s.predictions.flatMap((h) => [
        el("option", { value: `${h}:mean` }, `${h}: model prediction`),
        el("option", { value: `${h}:std` }, `${h}: model uncertainty (std)`),
      ])
    );
    if (want.includes(keep)) sel.value = keep;
  }
  document.getElementById("overlay").addEventListener("change", draw);

  function drawPrediction(choice) {
    const [hid, which] = choice.split(":");
    const pred = predictions[hid];
    if (!pred) {
      api("GET", `${base}/prediction/${hid}`).then((p) => { predictions[hid] = p; draw(); });
      return;
    }
    const vals = pred[which].filter((v) => v !== null);
    if (!vals.length) return;
    const lo = Math.min(...vals), hi = Math.max(...vals);
    const xs = [...new Set(pred.x_nm)].sort((a, b) => a - b);
    const cell = xs.length > 1 ? ((xs[1] - xs[0]) / state.survey.fov_nm) * canvas.width : 6;
    ctx.globalAlpha = 0.55;
    pred.x_nm.forEach((x, i) => {
      const v = pred[which][i];
      if (v === null) return;
      const [cx, cy] = toCanvas(x, pred.y_nm[i]);
      ctx.fillStyle = AS.viridis((v - lo) / (hi - lo || 1));
      ctx.fillRect(cx - cell / 2, cy - cell / 2, cell + 0.5, cell + 0.5);
    });
    ctx.globalAlpha = 1;
    document.getElementById("overlay-scale").textContent = `${which === "std" ? "uncertainty (posterior std)" : "prediction (posterior mean)"} from ${num(lo)} (dark) to ${num(hi)} (yellow)`;
  }

  canvas.addEventListener("click", (ev) => {
    if (!state || !state.survey || !state.points.length) return;
    const r = canvas.getBoundingClientRect();
    const px = ((ev.clientX - r.left) / r.width) * canvas.width;
    const py = ((ev.clientY - r.top) / r.height) * canvas.height;
    let best = null, bestD = Infinity;
    for (const p of state.points) {
      const [cx, cy] = toCanvas(p.x_nm, p.y_nm);
      const d = (cx - px) ** 2 + (cy - py) ** 2;
      if (d < bestD) { bestD = d; best = p; }
    }
    if (best) showSpectrum(best);
  });

  async function showSpectrum(p) {
    selected = p;
    draw();
    const sp = await api("GET", `${base}/spectrum/${encodeURIComponent(p.step_id)}`);
    const c = document.getElementById("spectrum");
    c.hidden = false;
    const g = c.getContext("2d");
    const W = c.width, H = c.height, L = 50, B = 28, T = 8, R = 8;
    g.clearRect(0, 0, W, H);
    const e = sp.energy_eV, y = sp.counts;
    const e0 = e[0], e1 = e[e.length - 1];
    const ymax = Math.max(...y) || 1, ymin = Math.min(0, ...y);
    const X = (v) => L + ((v - e0) / (e1 - e0 || 1)) * (W - L - R);
    const Y = (v) => H - B - ((v - ymin) / (ymax - ymin || 1)) * (H - B - T);
    g.strokeStyle = "#999";
    g.beginPath(); g.moveTo(L, T); g.lineTo(L, H - B); g.lineTo(W - R, H - B); g.stroke();
    g.fillStyle = "#555";
    g.font = "11px sans-serif";
    g.fillText(`${num(e0)} eV`, L, H - 10);
    g.fillText(`${num(e1)} eV`, W - R - 50, H - 10);
    g.fillText(num(ymax), 4, T + 10);
    g.fillText("counts", 4, H / 2);
    g.strokeStyle = "#2855c7";
    g.beginPath();
    e.forEach((v, i) => (i ? g.lineTo(X(v), Y(y[i])) : g.moveTo(X(v), Y(y[i]))));
    g.stroke();
    document.getElementById("spectrum-label").textContent =
      `${sp.step_id} at (${num(sp.x_nm)}, ${num(sp.y_nm)}) nm` + (sp.stratum ? ` · class ${sp.stratum}` : "") + ` · dose ${num(sp.dose_e)} e`;
  }

  // ------------------------------------------------------------------ panels
  function renderMonitors(s) {
    const list = document.getElementById("monitors");
    const items = s.monitors.slice().reverse().map((m) => {
      const detail = m.message || m.reason || m.monitor || m.limit || m.stop_reason || m.purpose || m.channel || "";
      return el("li", el("strong", AS.words(m.kind)), ` ${m.time_utc.slice(11, 19)} `, el("span.muted", String(detail).slice(0, 200)));
    });
    list.replaceChildren(...(items.length ? items : [el("li.muted", "No events yet.")]));
  }

  function renderHypotheses(s) {
    const box = document.getElementById("hypotheses");
    if (!s.hypotheses.length) return box.replaceChildren(el("p.muted", "None yet."));
    box.replaceChildren(
      ...s.hypotheses.map((r) => {
        const h = r.hypothesis || {};
        const v = r.verdict;
        return el(
          "div.hyp",
          { dataset: { hypothesis: r.id } },
          el("h3", `${r.id}: ${h.statement || ""}`),
          el("div.small.muted", `proposed by ${h.author || "–"}` + (r.plan ? ` · plan by ${r.plan.author}` : "")),
          r.dry_run ? el("div.small", `dry run: ${r.dry_run.spectra} spectra, dose ${num(r.dry_run.dose_e)} e, ~${AS.duration(r.dry_run.time_s)}`) : null,
          r.result ? el("div.small", `measured: ${r.result.measurements} spectra, dose ${num(r.result.dose_e)} e` + (r.result.stopped_by ? `; stopped: ${r.result.stopped_by}` : "")) : null,
          v
            ? el(
                "div.verdict",
                el("div", "verdict: ", el(`span.verdict-${v.outcome}`, v.outcome),
                  v.estimate !== null && v.estimate !== undefined ? ` · ${v.statistic} = ${num(v.estimate)} [${num(v.ci_low)}, ${num(v.ci_high)}]` : ""),
                v.readable ? el("div.small", v.readable) : null,
                el("ul.evidence", (v.evidence || []).map((e) => el("li", e))),
                v.figure ? el("img.figure", { src: `${base}/files/${v.figure}`, alt: `${r.id} evidence` }) : null
              )
            : el("div.small.muted", "verdict: not yet"),
          r.result && r.result.figure ? el("details", el("summary.small", "campaign figure"), el("img.figure", { src: `${base}/files/${r.result.figure}`, alt: `${r.id} campaign` })) : null
        );
      })
    );
    document.getElementById("goal-answer").replaceChildren(
      ...(s.answer && s.status === "done" ? [el("div", el("h3", "Answer to the goal"), el("pre", s.answer))] : [])
    );
  }

  function renderDecisions(s) {
    document.querySelector("#decisions tbody").replaceChildren(
      ...s.decisions.map((d) => el("tr", el("td", d.gate), el("td", d.round), el("td", d.action), el("td", d.actor), el("td.who", d.who || ""), el("td", d.reason || "")))
    );
  }

  // ------------------------------------------------------------------ question box
  document.getElementById("ask").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const q = document.getElementById("question");
    const text = q.value.trim();
    if (!text) return;
    const out = document.getElementById("answers");
    try {
      const r = await api("POST", `${base}/ask`, { question: text });
      out.prepend(el("div.qa-item", el("div.small.muted", `? ${r.question}`), el("pre", r.answer)));
      q.value = "";
    } catch (err) {
      out.prepend(el("div.error", err.message));
    }
  });

  // ------------------------------------------------------------------ report, resume
  async function loadReport() {
    const text = await (await fetch(`${base}/files/report.md`, { credentials: "same-origin" })).text();
    document.getElementById("report-body").replaceChildren(AS.markdown(text, (f) => `${base}/files/${f.split("/").pop()}`));
  }
  document.getElementById("open-report").addEventListener("click", async () => {
    document.getElementById("report").hidden = false;
    await loadReport();
    document.getElementById("report").scrollIntoView();
  });
  document.getElementById("resume").addEventListener("click", async () => {
    try { await api("POST", `${base}/resume`); } catch (err) { alert(err.message); }
  });
})();
