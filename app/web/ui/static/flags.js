// The flag pages: an environment's searchable list, and one flag (definition, kill switch,
// edit, history with a diff, evaluate for a context). Both follow the environment's change
// stream, so a change made anywhere (CLI, another tab, another worker) shows up live.

import { API, call, enc, messageOf } from "./api.js";
import { lineDiff, pretty } from "./diff.js";
import { escape, fill, h, when, whenHtml } from "./dom.js";
import { afterPaint, followAfterPaint } from "./sse.js";

const stream = (env) => `${API}/${enc(env)}/stream`;
const flagPath = (env, key) => `${API}/${enc(env)}/flags/${enc(key)}`;
const isExperiment = (definition) => Boolean(definition && definition.metadata && definition.metadata.experiment === true);
// The experiment a flag runs: metadata "experimentKey", else the flag key (app/experiments/design.py).
const experimentKey = (key, definition) =>
  (typeof definition.metadata.experimentKey === "string" && definition.metadata.experimentKey) || key;

// -- the list ------------------------------------------------------------------------------

const FIRST_SCREEN_ROWS = 60; // more than a tall screen shows

// The rows are one HTML string of escaped data, parsed once: a list of 1,000 flags renders
// several times faster than building each cell as elements.
function rowHtml(env, flag) {
  const definition = flag.definition || {};
  const on = definition.state === "ENABLED";
  const href = escape(`#/e/${enc(env)}/f/${enc(flag.flag)}`);
  const badge = isExperiment(definition)
    ? `<a class="badge exp" href="${escape(`#/e/${enc(env)}/x/${enc(experimentKey(flag.flag, definition))}`)}">experiment</a>`
    : "";
  return `<tr data-flag="${escape(flag.flag)}"><th scope="row"><a href="${href}">${escape(flag.flag)}</a></th>` +
    `<td><span class="badge ${on ? "on" : "off"}">${on ? "enabled" : "disabled"}</span></td>` +
    `<td class="variants">${escape(Object.keys(definition.variants || {}).join(", "))}</td>` +
    `<td class="num">${escape(flag.version)}</td>` +
    `<td>${whenHtml(flag.updated_at)}<span class="muted">${flag.actor ? escape(` by ${flag.actor}`) : ""}</span></td>` +
    `<td>${badge}</td></tr>`;
}

function listRow(env, flag) {
  const holder = document.createElement("tbody");
  holder.innerHTML = rowHtml(env, flag);
  return holder.firstChild;
}

function stateBadge(state) {
  const on = state === "ENABLED";
  return h("span", { class: `badge ${on ? "on" : "off"}` }, on ? "enabled" : "disabled");
}

async function loadFlags(env) {
  const [summary, full] = await Promise.all([
    call("GET", `${API}/${enc(env)}/flags?view=summary`),
    call("GET", `${API}/${enc(env)}/flags`),
  ]);
  if (summary.status !== 200) return { error: messageOf(summary) };
  if (full.status !== 200) return { error: messageOf(full) };
  const flags = new Map();
  for (const flag of summary.body.flags) flags.set(flag.flag, { ...flag, definition: full.body.flags[flag.flag] });
  return { flags, seq: summary.body.seq };
}

export async function flagList(page, env, context) {
  const started = performance.now();
  const loaded = await loadFlags(env);
  if (loaded.error) return fill(page, h("h1", {}, env), h("p", { class: "error" }, loaded.error)), null;
  let flags = loaded.flags;
  let seq = loaded.seq; // the list is as of this change: a snapshot at the same seq is no news
  page.dataset.fetchMs = String(Math.round(performance.now() - started));
  const search = h("input", { id: "search", type: "search", placeholder: "key contains…", autocomplete: "off" });
  const count = h("p", { id: "count", class: "muted", "aria-live": "polite" });
  const body = h("tbody");
  const table = h("table", { class: "flags" },
    h("caption", { class: "sr-only" }, `Flags of ${env}`),
    h("thead", {}, h("tr", {}, ["Key", "State", "Variants", "Version", "Last change", ""].map(
      (title) => h("th", { scope: "col" }, title)))),
    body);

  function applySearch() {
    const wanted = search.value.trim().toLowerCase();
    let shown = 0;
    for (const row of body.rows) {
      row.hidden = Boolean(wanted) && !row.dataset.flag.toLowerCase().includes(wanted);
      shown += row.hidden ? 0 : 1;
    }
    count.textContent = `${shown} of ${flags.size} flags`;
  }
  // The first screen of rows is painted first; the rest follow in the next task, so a list of
  // 1,000 flags shows before the browser has laid out every row. A newer render drops the rest
  // of an older one.
  let renders = 0;
  function renderAll() {
    const rows = Array.from(flags.values(), (flag) => rowHtml(env, flag));
    const render = ++renders;
    body.innerHTML = rows.slice(0, FIRST_SCREEN_ROWS).join("");
    if (rows.length <= FIRST_SCREEN_ROWS) return applySearch();
    // A task after the tasks that follow the paint (the page's own marks of it) come first.
    afterPaint(() => setTimeout(() => {
      if (render !== renders) return;
      body.insertAdjacentHTML("beforeend", rows.slice(FIRST_SCREEN_ROWS).join(""));
      applySearch();
      afterPaint(() => { page.dataset.wholeAtMs = String(Math.round(performance.now())); });
    }, 0));
  }
  search.addEventListener("input", applySearch);
  fill(page, h("h1", {}, `Flags of ${env}`),
    h("p", {}, h("a", { href: `#/e/${enc(env)}/x`, id: "experiments-link" }, `Experiments of ${env}`)),
    h("div", { class: "toolbar" }, h("label", { for: "search" }, "Search by key"), search), count,
    h("div", { class: "scroll" }, table));
  renderAll();
  page.dataset.renderedMs = String(Math.round(performance.now() - started)); // this page's share

  // The stream starts once the list is painted: its snapshot says whether anything changed
  // since the list was fetched, so nothing is missed by starting late.
  const stop = followAfterPaint(stream(env), async (kind, id, data) => {
    if (kind === "snapshot") {
      if (id === seq) return;
      const again = await loadFlags(env);
      if (again.flags) [flags, seq] = [again.flags, again.seq];
      return renderAll();
    }
    seq = Math.max(seq, id);
    const old = body.querySelector(`tr[data-flag="${CSS.escape(data.flag)}"]`);
    if (data.op === "delete") {
      flags.delete(data.flag);
      if (old) old.remove();
    } else {
      flags.set(data.flag, data);
      const row = listRow(env, data);
      row.classList.add("changed");
      if (old) old.replaceWith(row);
      else renderAll();
    }
    applySearch();
  }, context.live);
  return stop;
}

// -- one flag ------------------------------------------------------------------------------

function copyButton(getText, label) {
  const status = h("span", { class: "muted", "aria-live": "polite" });
  const button = h("button", {
    type: "button",
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(getText());
        status.textContent = " copied";
      } catch {
        status.textContent = " select the text and copy it (the browser refused)";
      }
    },
  }, label);
  return h("span", {}, button, status);
}

function diffView(before, after) {
  return h("pre", { class: "diff", tabindex: "0" }, lineDiff(before, after).map(([mark, line]) =>
    h("span", { class: mark === "+" ? "add" : mark === "-" ? "del" : "same" }, `${mark} ${line}\n`)));
}

export async function flagPage(page, env, key, context) {
  const admin = context.access === "admin";
  const historyAnswer = call("GET", `${flagPath(env, key)}/history`); // read alongside the flag
  const current = await call("GET", flagPath(env, key));
  if (current.status !== 200) return fill(page, h("h1", {}, key), h("p", { class: "error" }, messageOf(current))), null;
  const flag = { definition: current.body, version: Number(current.headers.get("X-Flag-Version")) };
  let history = [];

  // Heading and kill switch.
  const title = h("h1", {}, key);
  const meta = h("p", { id: "flag-meta", class: "muted" });
  const kill = h("button", { type: "button", id: "kill-switch", class: "switch", disabled: !admin,
    title: admin ? null : "a read token cannot change flags" });
  const killStatus = h("p", { id: "kill-status", role: "status" });
  kill.addEventListener("click", async () => {
    const state = flag.definition.state === "ENABLED" ? "DISABLED" : "ENABLED";
    kill.disabled = true;
    const answer = await call("POST", `${flagPath(env, key)}/state`, { body: { state } });
    kill.disabled = !admin;
    killStatus.textContent = answer.status === 200 ? `Now ${state.toLowerCase()} (version ${answer.body.version}).` : messageOf(answer);
    if (answer.status === 200) show(answer.body);
  });

  // Definition.
  const definitionText = h("pre", { id: "definition", class: "json", tabindex: "0" });

  // Edit.
  const editor = h("textarea", { id: "editor", rows: "16", spellcheck: "false", readonly: !admin,
    "aria-describedby": "edit-help" });
  let base = flag.version; // the version the editor's text started from: sent as If-Match
  let dirty = false;
  editor.addEventListener("input", () => { dirty = true; });
  const editNote = h("div", { id: "edit-result", role: "status" });
  const save = h("button", { type: "submit", id: "save", disabled: !admin }, "Save");
  const form = h("form", { id: "edit-form" },
    h("label", { for: "editor" }, "Edit the definition (flagd JSON)"),
    h("p", { id: "edit-help", class: "muted" },
      admin ? "Saved only if nobody changed the flag since you loaded it (If-Match)." : "A read token may look but not change."),
    editor, h("div", {}, save), editNote);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let parsed;
    try {
      parsed = JSON.parse(editor.value);
    } catch (failure) {
      return problems("Not JSON: nothing was sent.", [{ path: "$", message: failure.message }]);
    }
    save.disabled = true;
    const answer = await call("PUT", flagPath(env, key), { body: parsed, headers: { "If-Match": `"${base}"` } });
    save.disabled = false;
    if (answer.status === 200) {
      dirty = false;
      show(answer.body);
      fill(editNote, h("p", { class: "ok" }, `Saved as version ${answer.body.version}.`));
    } else if (answer.status === 409) {
      conflict(answer, parsed);
    } else {
      problems(messageOf(answer), (answer.body && answer.body.error && answer.body.error.problems) || []);
    }
  });

  function problems(message, list) {
    fill(editNote, h("div", { class: "problems", role: "alert" },
      h("p", {}, `Not saved: ${message}`),
      list.length ? h("ul", {}, list.map((problem) =>
        h("li", {}, h("code", {}, problem.path), ` ${problem.message}`))) : null));
  }

  function conflict(answer, mine) {
    const now = answer.body.error.current_version;
    const latest = history.find((version) => version.version === now);
    fill(editNote, h("div", { class: "problems conflict", role: "alert" },
      h("p", {}, `Not saved: conflict. You edited version ${base}, but version ${now} is current`,
        latest ? ` (saved by ${latest.actor || "someone"})` : "",
        ". Saving yours would undo that change, so nothing was written. ",
        "The differences between the current version and your text:"),
      diffView(pretty(flag.definition), pretty(mine)),
      h("button", { type: "button", id: "rebase", onclick: () => {
        base = flag.version;
        fill(editNote, h("p", {}, `Your text will now replace version ${base}. Save again to do it.`));
        save.focus();
      } }, `Keep my text and save it over version ${now}`), " ",
      h("button", { type: "button", id: "discard", onclick: () => {
        dirty = false;
        show();
        fill(editNote);
      } }, "Discard my text, load the current version")));
  }

  // History.
  const historyBox = h("div", { id: "history" });
  const diffBox = h("div", { id: "history-diff" });
  async function loadHistory(asked = call("GET", `${flagPath(env, key)}/history`)) {
    const answer = await asked;
    history = answer.status === 200 ? answer.body.versions : [];
    renderHistory();
  }
  function renderHistory() {
    const newest = history.length - 1;
    const pick = (side, index) => h("input", { type: "radio", name: side, value: String(index),
      "aria-label": `${side === "a" ? "from" : "to"} version ${history[index].version}`,
      checked: side === "a" ? index === Math.max(0, newest - 1) : index === newest, onchange: renderDiff });
    fill(historyBox, h("table", { class: "history" },
      h("thead", {}, h("tr", {}, ["From", "To", "Version", "Change", "By", "When"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, history.map((version, index) => h("tr", {},
        h("td", {}, pick("a", index)), h("td", {}, pick("b", index)),
        h("td", { class: "num" }, version.version), h("td", {}, version.op),
        h("td", {}, version.actor || ""), h("td", {}, when(version.updated_at)))).reverse())));
    renderDiff();
  }
  function renderDiff() {
    const chosen = (side) => historyBox.querySelector(`input[name="${side}"]:checked`);
    const a = chosen("a");
    const b = chosen("b");
    if (!a || !b) return fill(diffBox);
    const [from, to] = [history[Number(a.value)], history[Number(b.value)]];
    fill(diffBox, h("p", {}, `Version ${from.version} → version ${to.version}`),
      diffView(pretty(from.definition), pretty(to.definition)));
  }

  // Evaluate.
  const contextBox = h("textarea", { id: "eval-context", rows: "4", spellcheck: "false" }, '{"targetingKey": "user-1"}');
  const atBox = h("input", { id: "eval-at", type: "datetime-local", step: "0.001" });
  const evalResult = h("div", { id: "eval-result", role: "status" });
  const evalForm = h("form", { id: "eval-form" },
    h("label", { for: "eval-context" }, "Context (JSON)"), contextBox,
    h("label", { for: "eval-at" }, "At (your local time; empty for now)"), atBox,
    h("div", {}, h("button", { type: "submit" }, "Evaluate")), evalResult);
  evalForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    let evalContext;
    try {
      evalContext = JSON.parse(contextBox.value || "{}");
    } catch (failure) {
      return fill(evalResult, h("p", { class: "error" }, `The context is not JSON: ${failure.message}`));
    }
    const request = { context: evalContext, flags: [key] };
    if (atBox.value) request.at = new Date(atBox.value).toISOString();
    const answer = await call("POST", `${API}/${enc(env)}/evaluate`, { body: request });
    if (answer.status !== 200) return fill(evalResult, h("p", { class: "error" }, messageOf(answer)));
    const result = answer.body.flags[0];
    fill(evalResult, h("dl", { class: "result" },
      h("dt", {}, "Value"), h("dd", {}, h("code", {}, JSON.stringify(result.value))),
      h("dt", {}, "Variant"), h("dd", {}, result.variant ?? "—"),
      h("dt", {}, "Reason"), h("dd", {}, result.reason, result.error_message ? ` (${result.error_message})` : ""),
      h("dt", {}, "Flag version"), h("dd", {}, result.version ?? "—")));
  });

  function show(change) {
    if (change) {
      flag.definition = change.definition;
      flag.version = change.version;
    }
    const on = flag.definition.state === "ENABLED";
    fill(meta, `Version ${flag.version} · `, stateBadge(flag.definition.state),
      isExperiment(flag.definition)
        ? h("a", { class: "badge exp", href: `#/e/${enc(env)}/x/${enc(experimentKey(key, flag.definition))}` }, "experiment results")
        : null);
    kill.textContent = on ? "Kill switch: turn off" : "Turn back on";
    kill.setAttribute("aria-pressed", String(!on));
    kill.dataset.state = flag.definition.state;
    definitionText.textContent = pretty(flag.definition);
    if (!dirty) {
      editor.value = pretty(flag.definition);
      base = flag.version;
    }
  }

  // The definition is shown once: in the editor for an admin, read-only for a reader.
  fill(page, title, meta,
    h("section", { "aria-labelledby": "kill-h" }, h("h2", { id: "kill-h" }, "Kill switch"), kill, killStatus),
    h("section", { "aria-labelledby": "def-h" }, h("h2", { id: "def-h" }, "Definition"),
      copyButton(() => pretty(flag.definition), "Copy JSON"), admin ? form : definitionText),
    h("section", { "aria-labelledby": "eval-h" }, h("h2", { id: "eval-h" }, "Evaluate for a context"), evalForm),
    h("section", { "aria-labelledby": "hist-h" }, h("h2", { id: "hist-h" }, "History"), historyBox, diffBox));
  show();
  await loadHistory(historyAnswer);

  return followAfterPaint(stream(env), (kind, id, data) => {
    if (kind === "snapshot") {
      const definition = data.flags[key];
      if (definition && pretty(definition) !== pretty(flag.definition)) {
        call("GET", flagPath(env, key)).then((again) => {
          if (again.status === 200) show({ definition: again.body, version: Number(again.headers.get("X-Flag-Version")) });
        });
        loadHistory();
      }
      return;
    }
    if (data.flag !== key) return;
    if (data.op === "delete") {
      fill(meta, h("strong", { class: "error" }, `Deleted by ${data.actor || "someone"} (version ${data.version}).`));
      return;
    }
    if (dirty && data.version > base) {
      fill(editNote, h("p", { class: "warn" },
        `Version ${data.version} was saved by ${data.actor || "someone"} while you edit: saving now will be refused as a conflict.`));
    }
    show(data);
    history = [...history.filter((version) => version.version !== data.version), data];
    renderHistory();
  }, context.live);
}
