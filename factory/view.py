"""`factory view`: a small local web page to browse a run's samples with every verdict and reason.

Served by the standard library on 127.0.0.1; the page is one HTML document with its script and style
inline (no external assets, works offline). It reads the same DuckDB views as `factory sql`, through a
few JSON endpoints:

    /api/runs                      runs in the store
    /api/facets?run=R              steps, reasons, task types, the funnel
    /api/samples?run=R&step=&verdict=&reason=&task_type=&q=&offset=&limit=
    /api/sample?run=R&id=ID        one sample: prompt, reasoning, answer, every verdict
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import duckdb

from factory.errors import FactoryError

log = logging.getLogger(__name__)

VERDICTS = {"passed": "v.passed", "rejected": "v.passed = false", "unverifiable": "v.passed IS NULL"}
PAGE_SIZE = 50


class RunBrowser:
    """The queries behind the page, over one DuckDB connection (serialised: DuckDB cursors share it)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.lock = threading.Lock()

    def _rows(self, query: str, params: list[Any]) -> list[dict[str, Any]]:
        # One connection, one query at a time: a cursor would not see the views' registered Arrow tables.
        with self.lock:
            result = self.con.execute(query, params)
            names = [d[0] for d in result.description]
            return [dict(zip(names, row)) for row in result.fetchall()]

    def runs(self) -> list[dict[str, Any]]:
        return self._rows("SELECT run, recipe, model, samples, selected FROM runs ORDER BY updated_at DESC NULLS LAST, run", [])

    def facets(self, run: str) -> dict[str, Any]:
        steps = self._rows(
            "SELECT step, count(*) AS decided, count(*) FILTER (WHERE passed) AS passed, count(*) FILTER (WHERE passed = false) AS rejected, "
            "count(*) FILTER (WHERE passed IS NULL) AS unverifiable, min(created_at) AS first FROM verdicts WHERE run = ? "
            "GROUP BY step ORDER BY first, step", [run])
        for s in steps:
            s.pop("first")
        generated = self._rows("SELECT count(*) AS n FROM samples WHERE run = ?", [run])[0]["n"]
        reasons = self._rows("SELECT step, code, count(*) AS n FROM verdicts WHERE run = ? AND passed = false AND code IS NOT NULL "
                             "GROUP BY ALL ORDER BY n DESC, step, code", [run])
        tasks = [r["task_type"] for r in self._rows("SELECT DISTINCT task_type FROM samples WHERE run = ? ORDER BY 1", [run])]
        return {"run": run, "generated": generated, "steps": steps, "reasons": reasons, "task_types": tasks}

    def samples(self, run: str, *, step: str = "", verdict: str = "", reason: str = "", task_type: str = "", q: str = "",
                offset: int = 0, limit: int = PAGE_SIZE) -> dict[str, Any]:
        where = ["s.run = ?"]
        params: list[Any] = [run]
        if task_type:
            where.append("s.task_type = ?")
            params.append(task_type)
        if q:
            where.append("(s.prompt ILIKE ? OR s.text ILIKE ? OR s.sample_id = ?)")
            params += [f"%{q}%", f"%{q}%", q]
        if step or verdict or reason:
            cond = ["v.run = s.run", "v.sample_id = s.sample_id"]
            if step:
                cond.append("v.step = ?")
                params.append(step)
            if verdict:
                if verdict not in VERDICTS:
                    raise ValueError(f"verdict: expected one of {', '.join(VERDICTS)}, got {verdict!r}")
                cond.append(VERDICTS[verdict])
            if reason:
                cond.append("v.code = ?")
                params.append(reason)
            where.append(f"EXISTS (SELECT 1 FROM verdicts v WHERE {' AND '.join(cond)})")
        clause = " AND ".join(where)
        total = self._rows(f"SELECT count(*) AS n FROM samples s WHERE {clause}", params)[0]["n"]
        rows = self._rows(
            "SELECT s.sample_id, s.prompt_id, s.sample_index, s.task_type, left(s.prompt, 200) AS prompt, "
            "(SELECT string_agg(v.step || ': ' || coalesce(v.code, 'rejected'), ', ' ORDER BY v.created_at) FROM verdicts v "
            " WHERE v.run = s.run AND v.sample_id = s.sample_id AND v.passed = false) AS rejected_by, "
            "EXISTS (SELECT 1 FROM verdicts v WHERE v.run = s.run AND v.sample_id = s.sample_id AND v.step = 'selection' AND v.passed) AS selected "
            f"FROM samples s WHERE {clause} ORDER BY s.prompt_id, s.sample_index LIMIT ? OFFSET ?",
            [*params, max(1, min(limit, 500)), max(0, offset)])
        return {"total": total, "offset": offset, "rows": rows}

    def sample(self, run: str, sample_id: str) -> dict[str, Any] | None:
        rows = self._rows(
            "SELECT sample_id, prompt_id, sample_index, source, task_type, language, teacher_role, model, prompt, reasoning, answer, "
            "reference, finish_reason, completion_tokens FROM samples WHERE run = ? AND sample_id = ?", [run, sample_id])
        if not rows:
            return None
        verdicts = self._rows("SELECT step, passed, code, reason, score FROM verdicts WHERE run = ? AND sample_id = ? "
                              "ORDER BY created_at, step", [run, sample_id])
        return {**rows[0], "verdicts": verdicts}


def make_server(browser: RunBrowser, *, host: str = "127.0.0.1", port: int = 8765, default_run: str | None = None) -> ThreadingHTTPServer:
    """The HTTP server (not started): GET / serves the page, /api/* the JSON."""
    routes: dict[str, Callable[[dict[str, str]], Any]] = {
        "/api/runs": lambda p: {"runs": browser.runs(), "default": default_run},
        "/api/facets": lambda p: browser.facets(p["run"]),
        "/api/samples": lambda p: browser.samples(
            p["run"], step=p.get("step", ""), verdict=p.get("verdict", ""), reason=p.get("reason", ""),
            task_type=p.get("task_type", ""), q=p.get("q", ""), offset=int(p.get("offset", 0)), limit=int(p.get("limit", PAGE_SIZE))),
        "/api/sample": lambda p: browser.sample(p["run"], p["id"]),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlparse(self.path)
            if url.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
                return
            if url.path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
                return
            route = routes.get(url.path)
            if route is None:
                self._send(HTTPStatus.NOT_FOUND, b'{"error": "not found"}', "application/json")
                return
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                result = route(params)
            except (KeyError, ValueError, duckdb.Error) as exc:
                body = json.dumps({"error": str(exc).splitlines()[0] if str(exc) else repr(exc)}).encode()
                self._send(HTTPStatus.BAD_REQUEST, body, "application/json")
                return
            status = HTTPStatus.OK if result is not None else HTTPStatus.NOT_FOUND
            self._send(status, json.dumps(result, default=str, ensure_ascii=False).encode(), "application/json; charset=utf-8")

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # requests at debug level only: the terminal stays quiet
            log.debug("view: " + format, *args)

    return ThreadingHTTPServer((host, port), Handler)


def run_view(run: str | None = None, *, host: str = "127.0.0.1", port: int = 8765, home: Path | None = None,
             on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the page until interrupted. The single entry point of the viewer."""
    from factory.sql import connect
    from factory.store import open_run

    store = open_run(run, local_only="view")  # a bad --run is one line before anything listens
    if not 0 <= port <= 65535:
        raise FactoryError(f"--port: expected 0-65535, got {port}")
    try:
        server = make_server(RunBrowser(connect(home)), host=host, port=port, default_run=store.name)
    except OSError as exc:
        raise FactoryError(f"--port {port}: cannot listen on {host} ({exc.strerror}); try another port or --port 0") from None
    url = f"http://{host}:{server.server_address[1]}/"
    if on_ready:
        on_ready(url)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>factory view</title>
<style>
 body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
 header{padding:8px 14px;background:#263238;color:#fff;display:flex;gap:14px;align-items:center}
 header h1{font-size:17px;margin:0}
 #funnel{display:flex;gap:6px;align-items:flex-end;padding:10px 14px;height:120px;background:#fff;border-bottom:1px solid #ddd}
 .bar{display:flex;flex-direction:column;align-items:center;cursor:pointer;min-width:70px;font-size:12px}
 .bar .fill{background:#4c72b0;width:44px}.bar .rej{background:#c44e52;width:44px}
 .bar:hover .fill{background:#2a4d8f}
 #filters{padding:8px 14px;display:flex;gap:10px;flex-wrap:wrap;align-items:center;background:#f0f0f0}
 main{display:grid;grid-template-columns:minmax(280px,32%) 1fr;height:calc(100vh - 230px)}
 #list{overflow:auto;border-right:1px solid #ddd;background:#fff}
 #list .row{padding:6px 10px;border-bottom:1px solid #eee;cursor:pointer;font-size:13px}
 #list .row:hover,#list .row.active{background:#e8f0fe}
 .tag{font-size:11px;padding:1px 5px;border-radius:3px;margin-right:4px}
 .ok{background:#d4edda}.bad{background:#f8d7da}.sel{background:#cce5ff}
 #detail{overflow:auto;padding:10px 14px}
 .cols{display:grid;grid-template-columns:1fr 1fr 1fr;gap:10px}
 .cols section{background:#fff;border:1px solid #ddd;padding:8px;min-width:0}
 pre{white-space:pre-wrap;word-break:break-word;font-size:12.5px;margin:4px 0}
 table{border-collapse:collapse;font-size:13px;margin-top:10px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
 #count{font-size:13px;color:#555}
</style></head>
<body>
<header><h1>factory view</h1><label>run <select id="run"></select></label><span id="count"></span></header>
<div id="funnel" title="click a bar: that step's rejected samples"></div>
<div id="filters">
 <label>step <select id="step"><option value="">any</option></select></label>
 <label>verdict <select id="verdict"><option value="">any</option><option value="passed">passed</option>
   <option value="rejected">rejected</option><option value="unverifiable">unverifiable</option></select></label>
 <label>reason <select id="reason"><option value="">any</option></select></label>
 <label>task type <select id="task_type"><option value="">any</option></select></label>
 <label>search <input id="q" placeholder="text in prompt or output"></label>
 <button id="more">more</button>
</div>
<main><div id="list"></div><div id="detail"><p>Pick a sample on the left.</p></div></main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const state = {run: "", offset: 0};
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}
async function api(path, params) {
  const r = await fetch(path + "?" + new URLSearchParams(params));
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.status);
  return body;
}
function options(select, values, label) {
  const keep = select.value;
  select.replaceChildren(el("option", {value: ""}, "any"));
  for (const v of values) select.append(el("option", {value: v}, label ? label(v) : v));
  select.value = values.includes(keep) ? keep : "";
}
async function loadRuns() {
  const data = await api("/api/runs", {});
  options($("run"), data.runs.map(r => r.run));
  $("run").firstChild.remove();
  $("run").value = data.default || (data.runs[0] || {}).run || "";
  await loadRun();
}
async function loadRun() {
  state.run = $("run").value;
  const f = await api("/api/facets", {run: state.run});
  const max = Math.max(f.generated, 1);
  const bars = [el("div", {class: "bar", "data-step": "", onclick: () => jump("", "")},
                   el("div", {class: "fill", style: `height:${70}px`}), "generated", el("b", {}, f.generated))];
  for (const s of f.steps) {
    const h = Math.round(70 * s.passed / max), r = Math.round(70 * s.rejected / max);
    bars.push(el("div", {class: "bar", "data-step": s.step, onclick: () => jump(s.step, "rejected")},
      el("div", {class: "rej", style: `height:${r}px`}), el("div", {class: "fill", style: `height:${h}px`}),
      s.step, el("b", {}, `${s.passed} ✓ ${s.rejected} ✗`)));
  }
  $("funnel").replaceChildren(...bars);
  options($("step"), f.steps.map(s => s.step));
  options($("reason"), [...new Set(f.reasons.map(r => r.code))]);
  options($("task_type"), f.task_types);
  await loadList(true);
}
function jump(step, verdict) {
  $("step").value = step; $("verdict").value = verdict; $("reason").value = "";
  loadList(true);
}
async function loadList(reset) {
  if (reset) { state.offset = 0; $("list").replaceChildren(); }
  const params = {run: state.run, offset: state.offset};
  for (const k of ["step", "verdict", "reason", "task_type", "q"]) if ($(k).value) params[k] = $(k).value;
  const data = await api("/api/samples", params);
  for (const s of data.rows) {
    const tags = s.selected ? [el("span", {class: "tag sel"}, "selected")] :
      s.rejected_by ? [el("span", {class: "tag bad"}, s.rejected_by)] : [el("span", {class: "tag ok"}, "no rejection")];
    $("list").append(el("div", {class: "row", "data-id": s.sample_id, onclick: (e) => openSample(s.sample_id, e.currentTarget)},
      el("div", {}, el("span", {class: "tag"}, s.task_type), ...tags), el("div", {}, s.prompt)));
  }
  state.offset += data.rows.length;
  $("count").textContent = `${data.total} samples match`;
  $("count").dataset.total = data.total;
  $("more").disabled = state.offset >= data.total;
}
async function openSample(id, row) {
  document.querySelectorAll("#list .row.active").forEach(r => r.classList.remove("active"));
  if (row) row.classList.add("active");
  const s = await api("/api/sample", {run: state.run, id});
  const verdicts = el("table", {id: "verdicts"}, el("tr", {}, el("th", {}, "step"), el("th", {}, "verdict"), el("th", {}, "code"), el("th", {}, "reason")));
  for (const v of s.verdicts) verdicts.append(el("tr", {}, el("td", {}, v.step),
      el("td", {class: v.passed === true ? "ok" : v.passed === false ? "bad" : ""}, v.passed === true ? "passed" : v.passed === false ? "rejected" : "unverifiable"),
      el("td", {}, v.code), el("td", {}, v.reason)));
  $("detail").replaceChildren(
    el("div", {}, el("b", {}, s.sample_id), ` · ${s.task_type} · ${s.source} · ${s.model || ""} · ${s.completion_tokens ?? "?"} tokens · ${s.finish_reason}`),
    el("div", {class: "cols"},
      el("section", {id: "prompt"}, el("h3", {}, "prompt"), el("pre", {}, s.prompt),
         s.reference ? el("div", {}, "reference: ", el("code", {}, s.reference)) : ""),
      el("section", {}, el("h3", {}, "reasoning"), el("details", {id: "reasoning"}, el("summary", {}, `${(s.reasoning || "").length} characters (click to unfold)`), el("pre", {}, s.reasoning))),
      el("section", {id: "answer"}, el("h3", {}, "answer"), el("pre", {}, s.answer))),
    verdicts);
}
for (const k of ["step", "verdict", "reason", "task_type"]) $(k).addEventListener("change", () => loadList(true));
$("q").addEventListener("change", () => loadList(true));
$("run").addEventListener("change", loadRun);
$("more").addEventListener("click", () => loadList(false));
loadRuns().catch(e => $("detail").replaceChildren(el("p", {}, "error: " + e.message)));
</script></body></html>
"""
