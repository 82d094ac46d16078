// The runs page: every run of the runs folder, a form to start one, resume a killed one.
"use strict";
(function () {
  const { el, api } = AS;
  const form = document.getElementById("new-run");
  const instrument = document.getElementById("instrument");

  async function init() {
    api("GET", "/api/me").then((me) => { document.getElementById("who").textContent = me.name; });
    const scenarios = await api("GET", "/api/scenarios");
    for (const s of scenarios) instrument.append(el("option", { value: s.name, title: s.description }, `twin: ${s.name}`));
    instrument.append(el("option", { value: "__remote__" }, "remote instrument (URL)"));
    instrument.addEventListener("change", () => {
      const remote = instrument.value === "__remote__";
      document.getElementById("remote-field").hidden = !remote;
      document.getElementById("remote-token-field").hidden = !remote;
    });
    form.addEventListener("submit", start);
    refresh();
    setInterval(refresh, 2000);
  }

  function clearErrors() {
    form.querySelectorAll(".field-error").forEach((n) => n.remove());
    form.querySelectorAll(".has-error").forEach((n) => n.classList.remove("has-error"));
    document.getElementById("start-error").textContent = "";
  }

  async function start(ev) {
    ev.preventDefault();
    clearErrors();
    const f = new FormData(form);
    const int = (v) => (v && String(v).trim() ? (/^\d+$/.test(v.trim()) ? Number(v) : v) : null);
    const remote = f.get("instrument") === "__remote__";
    const body = {
      scenario: remote ? null : f.get("instrument"),
      remote: remote ? f.get("remote") : null,
      remote_token: remote ? f.get("remote_token") || null : null,
      goal: f.get("goal"),
      notes: f.get("notes"),
      budget: int(f.get("budget")),
      rounds: int(f.get("rounds")),
      autonomy: f.get("autonomy"),
      llm: f.get("llm"),
    };
    const button = document.getElementById("start");
    button.disabled = true;
    try {
      const r = await api("POST", "/api/runs", body);
      location.href = `/runs/${encodeURIComponent(r.name)}`;
    } catch (err) {
      const errors = AS.fieldErrors(err);
      let shown = false;
      for (const [path, msg] of Object.entries(errors)) {
        const box = form.querySelector(`[data-field="${path.split(".")[0]}"]`);
        if (box) {
          box.classList.add("has-error");
          box.append(el("span.field-error", msg));
          shown = true;
        }
      }
      if (!shown) document.getElementById("start-error").textContent = err.message;
    } finally {
      button.disabled = false;
    }
  }

  async function refresh() {
    let rows;
    try {
      rows = await api("GET", "/api/runs");
    } catch (err) {
      return; // the server is restarting: the next tick tries again
    }
    const body = document.querySelector("#runs tbody");
    body.replaceChildren(
      ...rows.map((r) =>
        el(
          "tr",
          { dataset: { run: r.name } },
          el("td", el("a", { href: `/runs/${encodeURIComponent(r.name)}` }, r.name), el("div.muted.small", r.goal.slice(0, 90))),
          el("td", AS.badge(r.status), r.pending_gate ? el("div.small.muted", `at the ${r.pending_gate} gate`) : null, r.error ? el("div.small.error", r.error) : null),
          el("td", r.scenario || "–", el("div.small.muted", r.instrument)),
          el("td", r.spectra),
          el("td", AS.num(r.dose_e_per_A2)),
          el("td", r.verdicts.map((v) => el("div.small", `${v.id} `, el(`span.verdict-${v.verdict}`, v.verdict)))),
          el(
            "td",
            r.status === "killed" || r.status === "failed" || (r.status === "stopped" && !r.pending_gate)
              ? el("button", { onclick: () => resume(r.name) }, "Resume")
              : null
          )
        )
      )
    );
    document.getElementById("runs-empty").hidden = rows.length > 0;
  }

  async function resume(name) {
    try {
      await api("POST", `/api/runs/${encodeURIComponent(name)}/resume`);
    } catch (err) {
      alert(err.message);
    }
    refresh();
  }

  init();
})();
