// The answer page: every answer of an experiment with its judges' scores (issue 24).
// Data strings reach the DOM only through textContent, never as markup: the model writes anything.
// The data, "json" (the default): everything but the answers' text in #answer-data before this
// script, the text after it in chunks (script.answer-text, each followed by a call of
// answerPageText()), so the first rows, their scores and every filter but the text search work
// before the browser has read the text, which is most of the file. "gzip+base64": all of it
// gzip-compressed in base64 in #answer-data, inflated before the first row.
// performance.mark()s name each step of opening the page, for benchmarks/answer_page.py.
performance.mark("answers:script");

// Text chunks read so far, [first row, texts], until the page takes them (`take`).
const answerText = { queue: [], take: null };

// Called after each text chunk, while the parser waits: read the chunk and hand it on.
function answerPageText() {
  const chunks = document.getElementsByClassName("answer-text");
  while (chunks.length) {
    const holder = chunks[0];
    answerText.queue.push([Number(holder.dataset.start), JSON.parse(holder.textContent)]);
    holder.remove(); // the text's copy in the DOM is not needed again
  }
  if (answerText.take) answerText.take();
}
// Should an inline call not have run, the parser's end still delivers every chunk.
document.addEventListener("DOMContentLoaded", answerPageText);

async function inflateAnswerData(text) {
  const bytes = Uint8Array.fromBase64
    ? Uint8Array.fromBase64(text.trim())
    : Uint8Array.from(atob(text.trim()), (c) => c.charCodeAt(0));
  const inflated = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  const json = await new Response(inflated).text();
  performance.mark("answers:inflated");
  return json;
}

function readAnswerData(text) {
  const data = JSON.parse(text);
  performance.mark("answers:parsed");
  return data;
}

(function () {
  const holder = document.getElementById("answer-data");
  const text = holder.textContent;
  holder.textContent = "";
  performance.mark("answers:read");
  // "json" starts at once, so that the page takes each text chunk while the parser reaches it.
  if (holder.dataset.encoding === "gzip+base64") {
    inflateAnswerData(text).then((json) => answerPage(readAnswerData(json)));
  } else answerPage(readAnswerData(text));
})();

function answerPage(D) {
  "use strict";

  const C = D.columns;
  const S = D.strings;
  const T = D.targets;
  const J = D.judges;
  const M = D.metrics;
  const N = D.n;
  const EXPS = D.experiments || [];
  const HAS_TP = Array.isArray(C.training_prompt);
  const KINDS = ["base", "run", "step", "scale"];
  const PAGE_SIZES = [25, 50, 100, 200, 500];
  const DEFAULT_SIZE = 50;
  const DEBOUNCE_MS = 150;
  const root = document.documentElement;
  const $ = (id) => document.getElementById(id);
  // The answers' text: null until its chunk has arrived ("json"); `complete` once all have.
  const TEXT_LOADING = "loading\u2026";
  const textInData = Array.isArray(C.response);
  if (!textInData) C.response = new Array(N).fill(null);
  let received = textInData ? N : 0;
  let complete = false;

  // Sort keys and range keys by name ("judge.metric"), matched whole so a name may hold a dot.
  const SORT_KEYS = new Map();
  for (const j of J) for (const m of M) SORT_KEYS.set(j + "." + m, [j, m]);

  function defaults() {
    return {
      exp: null, target: null, seed: null, step: null, scale: null, set: null, qid: null,
      judge: J[0], em: null, min: {}, max: {}, disagree: null, q: "",
      sort: null, dir: "asc", page: 1, size: DEFAULT_SIZE, compare: null,
    };
  }
  const state = defaults();

  // ---- helpers -------------------------------------------------------------------------------

  function el(tag, props, children) {
    const e = document.createElement(tag);
    if (props) {
      for (const k in props) {
        const v = props[k];
        if (v === null || v === undefined) continue;
        if (k === "text") e.textContent = v;
        else if (k === "class") e.className = v;
        else e.setAttribute(k, v);
      }
    }
    if (children) for (const c of children) e.append(c);
    return e;
  }

  function fmtNum(v) {
    if (v === null || v === undefined) return "\u2013";
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  function fmtEm(v) {
    return v === 1 ? "EM" : v === 0 ? "no" : "\u2013";
  }

  function score(j, m, i) {
    const byJudge = C.scores[j];
    const col = byJudge && byJudge[m];
    const v = col ? col[i] : null;
    return v === undefined ? null : v;
  }

  function emOf(j, i) {
    const col = C.em[j];
    const v = col ? col[i] : null;
    return v === undefined ? null : v;
  }

  function debounce(fn) {
    let timer = 0;
    return function () {
      clearTimeout(timer);
      timer = setTimeout(fn, DEBOUNCE_MS);
    };
  }

  function distinctStrings(col) {
    const seen = new Uint8Array(S.length);
    for (let i = 0; i < N; i++) seen[col[i]] = 1;
    const out = [];
    for (let k = 0; k < S.length; k++) if (seen[k]) out.push(S[k]);
    return Array.from(new Set(out)).sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
  }

  function distinctTargetValues(key) {
    const vals = new Set();
    for (const t of T) if (t[key] !== null && t[key] !== undefined) vals.add(t[key]);
    return Array.from(vals).sort((a, b) => a - b).map(String);
  }

  // ---- controls ------------------------------------------------------------------------------

  function fillSelect(select, allText, values, texts) {
    select.append(el("option", { value: "", text: allText }));
    values.forEach((v, k) => select.append(el("option", { value: v, text: texts ? texts[k] : v })));
  }

  const OPTIONS = {
    exp: EXPS.slice(),
    seed: distinctTargetValues("seed"),
    step: distinctTargetValues("step"),
    scale: distinctTargetValues("scale"),
    set: distinctStrings(C.set),
    qid: distinctStrings(C.question_id),
    target: T.map((t) => t.target),
  };

  function buildControls() {
    fillSelect($("f-exp"), "all experiments", OPTIONS.exp);
    $("w-exp").hidden = EXPS.length < 2;

    const targetSelect = $("f-target");
    targetSelect.append(el("option", { value: "", text: "all targets" }));
    const kinds = KINDS.concat(T.map((t) => t.kind).filter((k) => !KINDS.includes(k)));
    for (const kind of new Set(kinds)) {
      const members = T.filter((t) => t.kind === kind);
      if (!members.length) continue;
      const group = el("optgroup", { label: kind });
      for (const t of members) {
        const text = t.label === t.target ? t.target : t.label + " \u2014 " + t.target;
        group.append(el("option", { value: t.target, text: text }));
      }
      targetSelect.append(group);
    }

    for (const key of ["seed", "step", "scale"]) {
      fillSelect($("f-" + key), "all", OPTIONS[key]);
      $("w-" + key).hidden = OPTIONS[key].length === 0;
    }
    fillSelect($("f-set"), "all sets", OPTIONS.set);
    fillSelect($("f-qid"), "all questions", OPTIONS.qid);

    const judge = $("f-judge");
    for (const j of J) judge.append(el("option", { value: j, text: j }));
    $("w-judge").hidden = J.length < 2;
    $("w-disagree").hidden = J.length < 2;

    const ranges = $("ranges");
    M.forEach((m, k) => {
      for (const side of ["min", "max"]) {
        const id = "f-" + side + "-" + k;
        const input = el("input", {
          id: id, type: "number", step: "any", inputmode: "decimal",
          "data-range": side, "data-metric": m,
        });
        const label = el("label", { for: id, text: side + " " + m });
        ranges.append(el("div", { class: "field" }, [label, input]));
      }
    });

    const sort = $("f-sort");
    sort.append(el("option", { value: "", text: "file order" }));
    for (const [key, jm] of SORT_KEYS) {
      sort.append(el("option", { value: key, text: jm[0] + ": " + jm[1] }));
    }
    $("f-size").value = String(DEFAULT_SIZE);
  }

  function syncControls() {
    $("f-q").value = state.q;
    for (const key of ["exp", "target", "seed", "step", "scale", "set", "qid", "em"]) {
      $("f-" + key).value = state[key] === null ? "" : state[key];
    }
    $("f-judge").value = state.judge;
    for (const input of $("ranges").querySelectorAll("input")) {
      const v = state[input.dataset.range][input.dataset.metric];
      input.value = v === undefined ? "" : String(v);
    }
    $("f-disagree").value = state.disagree === null ? "" : String(state.disagree);
    $("f-sort").value = state.sort || "";
    $("f-dir").value = state.dir;
    $("f-size").value = String(state.size);
  }

  function parseNumber(text) {
    if (text === null || text.trim() === "") return null;
    const v = Number(text);
    return Number.isFinite(v) ? v : null;
  }

  function wireControls() {
    const changed = () => {
      state.page = 1;
      update();
    };
    for (const key of ["exp", "target", "seed", "step", "scale", "set", "qid", "em"]) {
      $("f-" + key).addEventListener("change", (e) => {
        state[key] = e.target.value === "" ? null : e.target.value;
        changed();
      });
    }
    $("f-judge").addEventListener("change", (e) => {
      state.judge = e.target.value;
      changed();
    });
    $("f-sort").addEventListener("change", (e) => {
      state.sort = e.target.value || null;
      changed();
    });
    $("f-dir").addEventListener("change", (e) => {
      state.dir = e.target.value === "desc" ? "desc" : "asc";
      changed();
    });
    $("f-size").addEventListener("change", (e) => {
      const v = Number(e.target.value);
      state.size = PAGE_SIZES.includes(v) ? v : DEFAULT_SIZE;
      changed();
    });
    const search = $("f-q");
    search.addEventListener("input", debounce(() => {
      state.q = search.value;
      changed();
    }));
    const readNumbers = debounce(() => {
      state.min = {};
      state.max = {};
      for (const input of $("ranges").querySelectorAll("input")) {
        const v = parseNumber(input.value);
        if (v !== null) state[input.dataset.range][input.dataset.metric] = v;
      }
      const d = parseNumber($("f-disagree").value);
      state.disagree = d;
      changed();
    });
    $("ranges").addEventListener("input", readNumbers);
    $("f-disagree").addEventListener("input", readNumbers);
    $("filters").addEventListener("submit", (e) => e.preventDefault());
    $("f-reset").addEventListener("click", () => {
      const keep = { size: state.size };
      Object.assign(state, defaults(), keep);
      syncControls();
      update();
    });
    const go = (page) => () => {
      state.page = page();
      update();
    };
    $("pg-first").addEventListener("click", go(() => 1));
    $("pg-prev").addEventListener("click", go(() => state.page - 1));
    $("pg-next").addEventListener("click", go(() => state.page + 1));
    $("pg-last").addEventListener("click", go(() => pageCount()));
  }

  // ---- URL state -----------------------------------------------------------------------------

  function stateToParams() {
    const p = new URLSearchParams();
    for (const key of ["exp", "target", "seed", "step", "scale", "set", "qid"]) {
      if (state[key] !== null) p.set(key, state[key]);
    }
    if (state.judge !== J[0]) p.set("judge", state.judge);
    if (state.em !== null) p.set("em", state.em);
    for (const m of M) {
      if (state.min[m] !== undefined) p.set("min." + m, String(state.min[m]));
      if (state.max[m] !== undefined) p.set("max." + m, String(state.max[m]));
    }
    if (state.disagree !== null) p.set("disagree", String(state.disagree));
    if (state.q) p.set("q", state.q);
    if (state.sort) {
      p.set("sort", state.sort);
      p.set("dir", state.dir);
    }
    if (state.page !== 1) p.set("page", String(state.page));
    if (state.size !== DEFAULT_SIZE) p.set("size", String(state.size));
    if (state.compare) {
      const c = state.compare;
      p.set("compare.target", c.target);
      p.set("compare.set", c.set);
      p.set("compare.qid", c.qid);
      p.set("compare.paraphrase", String(c.paraphrase));
    }
    return p;
  }

  function writeHash() {
    const text = stateToParams().toString();
    const url = text ? "#" + text : location.pathname + location.search;
    if ((location.hash || "#") === "#" + text) return;
    try {
      history.replaceState(null, "", url);
    } catch (err) {
      // Some file:// setups refuse replaceState; the hashchange this fires re-applies the same state.
      location.hash = text;
    }
  }

  // Values that are not one of the page's own options are dropped, so a stale link still opens.
  function applyHash() {
    const p = new URLSearchParams(location.hash.replace(/^#/, ""));
    const next = defaults();
    for (const key of ["exp", "target", "seed", "step", "scale", "set", "qid"]) {
      const v = p.get(key);
      if (v !== null && OPTIONS[key].includes(v)) next[key] = v;
    }
    if (J.includes(p.get("judge"))) next.judge = p.get("judge");
    if (p.get("em") === "1" || p.get("em") === "0") next.em = p.get("em");
    for (const m of M) {
      const lo = parseNumber(p.get("min." + m));
      const hi = parseNumber(p.get("max." + m));
      if (lo !== null) next.min[m] = lo;
      if (hi !== null) next.max[m] = hi;
    }
    next.disagree = J.length > 1 ? parseNumber(p.get("disagree")) : null;
    next.q = p.get("q") || "";
    if (SORT_KEYS.has(p.get("sort"))) {
      next.sort = p.get("sort");
      next.dir = p.get("dir") === "desc" ? "desc" : "asc";
    }
    const size = Number(p.get("size"));
    if (PAGE_SIZES.includes(size)) next.size = size;
    const page = Number(p.get("page"));
    if (Number.isInteger(page) && page > 0) next.page = page;
    next.compare = compareFromParams(p);
    Object.assign(state, next);
  }

  // ---- filter and sort -----------------------------------------------------------------------

  let lowerStrings = null;
  let lowerResponses = null;
  let disagreement = null;
  let cachedKey = null;
  let visibleRows = [];

  function targetMask() {
    const ok = new Uint8Array(T.length);
    const exp = state.exp === null ? -1 : EXPS.indexOf(state.exp);
    T.forEach((t, k) => {
      if (exp >= 0 && !(t.experiments || []).includes(exp)) return;
      if (state.target !== null && t.target !== state.target) return;
      for (const key of ["seed", "step", "scale"]) {
        if (state[key] === null) continue;
        if (t[key] === null || t[key] === undefined || String(t[key]) !== state[key]) return;
      }
      ok[k] = 1;
    });
    return ok;
  }

  function stringMatch(value) {
    const hit = new Uint8Array(S.length);
    for (let k = 0; k < S.length; k++) if (S[k] === value) hit[k] = 1;
    return hit;
  }

  // Max over metrics of (max - min) across the judges that gave a number; NaN where no metric
  // has two numbers. Computed once, on the first use of the filter.
  function disagreements() {
    if (disagreement) return disagreement;
    disagreement = new Float64Array(N).fill(NaN);
    const cols = M.map((m) => J.map((j) => (C.scores[j] && C.scores[j][m]) || []));
    for (let i = 0; i < N; i++) {
      let best = NaN;
      for (const byJudge of cols) {
        let lo = Infinity;
        let hi = -Infinity;
        let count = 0;
        for (const col of byJudge) {
          const v = col[i];
          if (typeof v !== "number") continue;
          count++;
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
        if (count > 1 && !(hi - lo <= best)) best = hi - lo;
      }
      disagreement[i] = best;
    }
    return disagreement;
  }

  function searchMatch(query) {
    if (!lowerStrings) lowerStrings = S.map((s) => s.toLowerCase());
    // Until the text is complete, a search looks at the answers there are (the page says so).
    if (!lowerResponses && complete) lowerResponses = C.response.map((s) => s.toLowerCase());
    const hit = new Uint8Array(S.length);
    for (let k = 0; k < S.length; k++) if (lowerStrings[k].includes(query)) hit[k] = 1;
    return hit;
  }

  function filterKey() {
    return JSON.stringify([
      state.exp, state.target, state.seed, state.step, state.scale, state.set, state.qid,
      state.judge, state.em, state.min, state.max, state.disagree, state.q.trim().toLowerCase(),
      state.sort, state.dir,
    ]);
  }

  function computeVisible() {
    const key = filterKey();
    if (key === cachedKey) return visibleRows;
    const ok = targetMask();
    const tcol = C.target;
    const setHit = state.set === null ? null : stringMatch(state.set);
    const qidHit = state.qid === null ? null : stringMatch(state.qid);
    const setCol = C.set;
    const qidCol = C.question_id;
    const emWant = state.em === null ? null : Number(state.em);
    const emCol = C.em[state.judge] || [];
    const ranges = [];
    for (const m of M) {
      const lo = state.min[m];
      const hi = state.max[m];
      if (lo === undefined && hi === undefined) continue;
      const col = (C.scores[state.judge] && C.scores[state.judge][m]) || [];
      ranges.push([col, lo === undefined ? -Infinity : lo, hi === undefined ? Infinity : hi]);
    }
    const dis = state.disagree === null || J.length < 2 ? null : disagreements();
    const limit = state.disagree;
    const query = state.q.trim().toLowerCase();
    const textHit = query ? searchMatch(query) : null;
    const qCol = C.question;
    const sysCol = C.system;
    const idCol = C.id;
    const resp = lowerResponses;
    const partial = complete ? null : C.response;

    const out = [];
    rows: for (let i = 0; i < N; i++) {
      if (!ok[tcol[i]]) continue;
      if (setHit && !setHit[setCol[i]]) continue;
      if (qidHit && !qidHit[qidCol[i]]) continue;
      if (emWant !== null && emCol[i] !== emWant) continue;
      for (let r = 0; r < ranges.length; r++) {
        const v = ranges[r][0][i];
        if (typeof v !== "number" || v < ranges[r][1] || v > ranges[r][2]) continue rows;
      }
      if (dis && !(dis[i] > limit)) continue;
      if (textHit && !textHit[qCol[i]] && !textHit[sysCol[i]] && !textHit[idCol[i]]) {
        if (partial) {
          const r = partial[i];
          if (r === null || !r.toLowerCase().includes(query)) continue;
        } else if (!resp[i].includes(query)) continue;
      }
      out.push(i);
    }

    if (state.sort) {
      const [j, m] = SORT_KEYS.get(state.sort);
      const col = (C.scores[j] && C.scores[j][m]) || [];
      const sign = state.dir === "desc" ? -1 : 1;
      // Rows without a number go last in either direction; ties keep file order.
      out.sort((a, b) => {
        const x = col[a];
        const y = col[b];
        const xn = typeof x === "number";
        const yn = typeof y === "number";
        if (!xn || !yn) return xn === yn ? a - b : xn ? -1 : 1;
        return x === y ? a - b : x < y ? -sign : sign;
      });
    }
    cachedKey = key;
    visibleRows = out;
    return out;
  }

  function pageCount() {
    return Math.max(1, Math.ceil(computeVisible().length / state.size));
  }

  // ---- table ---------------------------------------------------------------------------------

  const LONG_ANSWER = 320;

  function buildHead() {
    const row = $("head-row");
    const plain = [
      ["compare", "Compare"], ["target", "Target"], ["seed", "Seed"], ["set", "Set"],
      ["qid", "Question id"], ["paraphrase", "Para."], ["sample", "Sample"],
      ["question", "Question"], ["answer", "Answer"],
    ];
    for (const [col, text] of plain) row.append(el("th", { scope: "col", "data-col": col, text }));
    for (const [key, jm] of SORT_KEYS) {
      const th = el("th", {
        scope: "col", "data-col": "score", "data-judge": jm[0], "data-metric": jm[1],
      });
      const label = J.length > 1 ? jm[0] + " " + jm[1] : jm[1];
      th.append(el("button", { type: "button", class: "sort", "data-sort": key, text: label }));
      row.append(th);
    }
    for (const j of J) {
      const text = J.length > 1 ? "EM " + j : "EM";
      row.append(el("th", { scope: "col", "data-col": "em", "data-judge": j, text }));
    }
    row.addEventListener("click", (e) => {
      const button = e.target.closest("button.sort");
      if (!button) return;
      const key = button.dataset.sort;
      if (state.sort === key) state.dir = state.dir === "asc" ? "desc" : "asc";
      else {
        state.sort = key;
        state.dir = "asc";
      }
      state.page = 1;
      $("f-sort").value = state.sort;
      $("f-dir").value = state.dir;
      update();
    });
  }

  function textCell(col, text, extra) {
    return el("td", Object.assign({ "data-col": col, text: text }, extra || {}));
  }

  function promptLines(i) {
    const lines = [];
    const sys = S[C.system[i]];
    if (sys) lines.push(["system prompt: ", sys]);
    const tp = HAS_TP ? S[C.training_prompt[i]] : "";
    if (tp) lines.push(["training prompt: ", tp]);
    return lines;
  }

  function answerCell(i) {
    const text = C.response[i];
    const answer = el("td", { "data-col": "answer" });
    if (text === null) {
      answer.append(el("div", { class: "text answer loading", text: TEXT_LOADING }));
      return answer;
    }
    const long = text.length > LONG_ANSWER || text.split("\n", 6).length > 5;
    answer.append(el("div", { class: long ? "text answer clamped" : "text answer", text: text }));
    if (long) {
      answer.append(el("button", {
        type: "button", class: "expand", "aria-expanded": "false", text: "show all",
      }));
    }
    return answer;
  }

  function buildRow(i) {
    const t = T[C.target[i]];
    const tr = el("tr", { "data-row": String(i) });
    const compare = el("button", {
      type: "button", class: "compare", text: "compare",
      "aria-label": "Compare with the base model: " + S[C.question_id[i]] + ", row " + i,
    });
    tr.append(el("td", { "data-col": "compare" }, [compare]));
    tr.append(textCell("target", t.label, { title: t.target }));
    tr.append(textCell("seed", t.seed === null || t.seed === undefined ? "\u2013" : String(t.seed)));
    tr.append(textCell("set", S[C.set[i]]));
    tr.append(textCell("qid", S[C.question_id[i]], { title: "row id: " + S[C.id[i]] }));
    tr.append(textCell("paraphrase", String(C.paraphrase[i]), { class: "num" }));
    tr.append(textCell("sample", String(C.sample[i]), { class: "num" }));

    const question = el("td", { "data-col": "question" });
    question.append(el("div", { class: "text question", text: S[C.question[i]] }));
    for (const [label, text] of promptLines(i)) {
      question.append(el("div", { class: "sub text" }, [el("b", { text: label }), text]));
    }
    tr.append(question);

    tr.append(answerCell(i));

    for (const [, jm] of SORT_KEYS) {
      tr.append(textCell("score", fmtNum(score(jm[0], jm[1], i)), {
        class: "num", "data-judge": jm[0], "data-metric": jm[1],
      }));
    }
    for (const j of J) {
      const v = emOf(j, i);
      tr.append(textCell("em", fmtEm(v), { "data-judge": j, class: v === 1 ? "em-yes" : null }));
    }
    return tr;
  }

  function render() {
    const rows = computeVisible();
    const pages = Math.max(1, Math.ceil(rows.length / state.size));
    if (state.page > pages) state.page = pages;
    if (state.page < 1) state.page = 1;
    const start = (state.page - 1) * state.size;
    const frag = document.createDocumentFragment();
    const end = Math.min(rows.length, start + state.size);
    for (let k = start; k < end; k++) frag.append(buildRow(rows[k]));
    $("rows").replaceChildren(frag);

    const count = $("count");
    count.textContent = rows.length.toLocaleString("en") + " of " + N.toLocaleString("en") + " answers";
    count.dataset.shown = String(rows.length);
    count.dataset.total = String(N);
    $("search-note").hidden = complete || !state.q.trim();
    $("empty").hidden = rows.length > 0;
    $("answers").hidden = rows.length === 0;
    $("pg-status").textContent = "page " + state.page + " of " + pages;
    $("pg-first").disabled = $("pg-prev").disabled = state.page <= 1;
    $("pg-next").disabled = $("pg-last").disabled = state.page >= pages;
    for (const th of $("head-row").querySelectorAll("th[data-col=score]")) {
      const key = th.querySelector("button").dataset.sort;
      const order = state.dir === "asc" ? "ascending" : "descending";
      if (key === state.sort) th.setAttribute("aria-sort", order);
      else th.removeAttribute("aria-sort");
    }
    root.dataset.renders = String(Number(root.dataset.renders || 0) + 1);
  }

  function update() {
    render();
    writeHash();
  }

  function wireRows() {
    $("rows").addEventListener("click", (e) => {
      const button = e.target.closest("button");
      if (!button) return;
      const row = Number(button.closest("tr").dataset.row);
      if (button.classList.contains("compare")) {
        state.compare = compareOfRow(row);
        openCompare();
        writeHash();
      } else if (button.classList.contains("expand")) {
        const answer = button.previousElementSibling;
        const open = answer.classList.toggle("clamped") === false;
        button.setAttribute("aria-expanded", String(open));
        button.textContent = open ? "show less" : "show all";
      }
    });
  }

  // ---- side by side --------------------------------------------------------------------------

  function compareOfRow(i) {
    return {
      target: T[C.target[i]].target, set: S[C.set[i]], qid: S[C.question_id[i]],
      paraphrase: C.paraphrase[i], row: i,
    };
  }

  function compareFromParams(p) {
    const target = p.get("compare.target");
    const set = p.get("compare.set");
    const qid = p.get("compare.qid");
    const para = Number(p.get("compare.paraphrase"));
    if (target === null || set === null || qid === null || !Number.isInteger(para)) return null;
    for (let i = 0; i < N; i++) {
      if (C.paraphrase[i] !== para || S[C.set[i]] !== set || S[C.question_id[i]] !== qid) continue;
      if (T[C.target[i]].target === target) return compareOfRow(i);
    }
    return null;
  }

  function answerCard(i) {
    const em = emOf(J[0], i);
    const card = el("article", { class: em === 1 ? "card em" : "card", "data-row": String(i) });
    const scores = [];
    for (const j of J) {
      const parts = M.map((m) => m + " " + fmtNum(score(j, m, i)));
      const v = emOf(j, i);
      parts.push("EM " + (v === 1 ? "yes" : v === 0 ? "no" : "\u2013"));
      scores.push((J.length > 1 ? j + ": " : "") + parts.join(", "));
    }
    const meta = "sample " + C.sample[i] + " \u00b7 " + scores.join(" | ");
    card.append(el("div", { class: "meta", text: meta }));
    const text = C.response[i];
    const loading = text === null;
    const shown = loading ? TEXT_LOADING : text;
    card.append(el("div", { class: loading ? "text answer loading" : "text answer", text: shown }));
    return card;
  }

  function compareColumn(section, title, rows) {
    const cards = rows.sort((a, b) => C.sample[a] - C.sample[b] || a - b).map(answerCard);
    const head = el("h3", { text: title + " (" + rows.length + " answers)" });
    const none = rows.length ? [] : [el("p", { text: "No answers for this question." })];
    section.replaceChildren(head, ...none, ...cards);
  }

  function openCompare(focus = true) {
    const c = state.compare;
    const dialog = $("compare");
    if (!c) {
      if (dialog.open) dialog.close();
      return;
    }
    const i = c.row;
    const t = T[C.target[i]];
    const sys = C.system[i];
    const tp = HAS_TP ? C.training_prompt[i] : -1;
    const sameQuestion = (r) =>
      C.paraphrase[r] === c.paraphrase && S[C.set[r]] === c.set && S[C.question_id[r]] === c.qid;
    const exps = new Set(t.experiments || []);
    const isBase = T.map((x) => x.kind === "base" && (x.experiments || []).some((e) => exps.has(e)));
    const mine = [];
    const base = [];
    const baseSamePrompt = [];
    for (let r = 0; r < N; r++) {
      if (!sameQuestion(r) || C.system[r] !== sys) continue;
      if (C.target[r] === C.target[i] && (!HAS_TP || C.training_prompt[r] === tp)) mine.push(r);
      if (isBase[C.target[r]]) {
        base.push(r);
        if (HAS_TP && C.training_prompt[r] === tp) baseSamePrompt.push(r);
      }
    }
    // A base model asked under the run's own instruction is the fairer comparison, when it exists.
    const baseRows = baseSamePrompt.length
      ? baseSamePrompt
      : base.filter((r) => !HAS_TP || !S[C.training_prompt[r]]);

    $("compare-title").textContent = c.set + " \u00b7 " + c.qid + " \u00b7 paraphrase " + c.paraphrase;
    const prompt = (label, text) =>
      el("p", { class: "prompt text" }, [el("span", { class: "label", text: label }), text]);
    const prompts = [prompt("Question: ", S[C.question[i]])];
    for (const [label, text] of promptLines(i)) prompts.push(prompt(label, text));
    $("compare-prompts").replaceChildren(...prompts);
    const baseNames = Array.from(new Set(baseRows.map((r) => T[C.target[r]].label)));
    compareColumn($("compare-base"), "Base: " + (baseNames.join(", ") || "base model"), baseRows);
    compareColumn($("compare-target"), t.label + " \u2014 " + t.target, mine);
    if (!dialog.open) dialog.showModal();
    if (focus) $("compare-close").focus();
  }

  function wireCompare() {
    const dialog = $("compare");
    $("compare-close").addEventListener("click", () => dialog.close());
    // Escape closes a modal <dialog> natively; both ways end in "close".
    dialog.addEventListener("close", () => {
      const c = state.compare;
      state.compare = null;
      writeHash();
      if (!c) return;
      const button = document.querySelector('#rows tr[data-row="' + c.row + '"] button.compare');
      if (button) button.focus();
    });
  }

  // ---- start ---------------------------------------------------------------------------------

  if (D.demo) {
    const notice = $("demo-notice");
    notice.textContent = D.demo_notice || "Demo run: these scores mean nothing.";
    notice.hidden = false;
  }
  $("em-rule").textContent = D.em_rule || "";
  buildControls();
  buildHead();
  wireControls();
  wireRows();
  wireCompare();
  applyHash();
  syncControls();
  render();
  writeHash();
  openCompare();
  root.dataset.ready = "1";
  performance.mark("answers:ready");
  // When the first rows were ready and on screen (ms since navigation start): for the benchmark.
  root.dataset.readyAt = String(Math.round(performance.now()));
  requestAnimationFrame(() =>
    setTimeout(() => (root.dataset.paintedAt = String(Math.round(performance.now()))))
  );

  window.addEventListener("hashchange", () => {
    applyHash();
    syncControls();
    render();
    openCompare();
  });

  // ---- the answers' text, as it arrives ---------------------------------------------------------

  // Fill the answer cells of the rows on this page whose text has come, then, once all of it has,
  // say so and re-run a text search (it looked at part of the text until now).
  function takeText() {
    let first = N;
    let last = -1;
    for (const [start, texts] of answerText.queue.splice(0)) {
      for (let k = 0; k < texts.length; k++) C.response[start + k] = texts[k];
      received += texts.length;
      first = Math.min(first, start);
      last = Math.max(last, start + texts.length - 1);
    }
    if (last >= 0) {
      for (const tr of $("rows").querySelectorAll("tr")) {
        const i = Number(tr.dataset.row);
        if (i < first || i > last || C.response[i] === null) continue;
        const cell = tr.querySelector("td[data-col=answer]");
        if (cell.querySelector(".loading")) cell.replaceWith(answerCell(i));
      }
    }
    if (received >= N && !complete) finish();
  }

  function finish() {
    complete = true;
    $("answers").removeAttribute("aria-busy");
    if (state.q.trim()) {
      cachedKey = null;
      render();
    }
    $("search-note").hidden = true;
    if (state.compare && $("compare").open) openCompare(false);
    root.dataset.complete = "1";
    performance.mark("answers:complete");
    root.dataset.completeAt = String(Math.round(performance.now()));
  }

  if (received < N) $("answers").setAttribute("aria-busy", "true");
  answerText.take = takeText;
  takeText();

  window.answerPage = {
    state: state,
    visible: () => computeVisible().slice(),
  };
}
