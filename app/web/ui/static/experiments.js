// The experiment pages, from the experiment results API (docs/experiments.md, "The results
// view"): the list with status, subjects and SRM warnings; one experiment's results with a
// forest plot per metric, exposures over time per variant, SRM and crossovers in a sentence,
// and the guardrail rollbacks of its flag marked. Figures are folded continuously: an open
// results page follows the experiment's stream (`…/experiments/{key}/stream`), which says
// when new figures came, and reads the results again then.

import { API, call, enc, messageOf } from "./api.js";
import { fill, h, when } from "./dom.js";
import { followAfterPaint } from "./sse.js";
const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#0550ae", "#bc4c00", "#116329", "#8250df", "#82071e", "#57606a"];

function s(tag, attrs = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) element.setAttribute(name, String(value));
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) element.append(child);
  return element;
}

const percent = (value, digits = 1) => `${(value * 100).toFixed(digits)} %`;
const number = (value, digits = 3) => (value === null || value === undefined ? "—" : Number(value).toPrecision(digits));
const statusBadge = (status) =>
  h("span", { class: `badge ${status === "running" ? "on" : status === "stopped" ? "off" : ""}` }, status.replace("_", " "));

// -- the list ------------------------------------------------------------------------------

// While an experiment of the list has no figures yet (`up`'s simulated users are still being
// folded), the list is read again this often: a newcomer who opened it early sees "running"
// arrive without reloading.
const NO_DATA_REREAD_MS = 2000;

export async function experimentList(page, env) {
  let left = false;
  let timer = null;
  const show = async () => {
    const answer = await call("GET", `${API}/${enc(env)}/experiments`);
    if (left) return;
    if (answer.status !== 200) return void fill(page, h("h1", {}, "Experiments"), h("p", { class: "error" }, messageOf(answer)));
    paintList(page, env, answer.body.experiments);
    if (answer.body.experiments.some((experiment) => experiment.status === "no_data")) timer = setTimeout(show, NO_DATA_REREAD_MS);
  };
  await show();
  return () => {
    left = true;
    clearTimeout(timer);
  };
}

function paintList(page, env, experiments) {
  const rows = experiments.map((experiment) => h("tr", { "data-experiment": experiment.key },
    h("th", { scope: "row" }, h("a", { href: `#/e/${enc(env)}/x/${enc(experiment.key)}` }, experiment.key)),
    h("td", {}, experiment.flag ? h("a", { href: `#/e/${enc(env)}/f/${enc(experiment.flag)}` }, experiment.flag) : "—"),
    h("td", {}, statusBadge(experiment.status)),
    h("td", { class: "num" }, experiment.subjects),
    h("td", {}, experiment.srm_mismatch ? h("span", { class: "badge off", title: "sample-ratio mismatch" }, "SRM: check assignment") : "")));
  fill(page, h("h1", {}, `Experiments of ${env}`),
    rows.length
      ? h("div", { class: "scroll" }, h("table", { class: "experiments" },
        h("thead", {}, h("tr", {}, ["Experiment", "Flag", "Status", "Subjects", "Sample ratio"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows)))
      : h("p", {}, "No flag of this environment runs an experiment (metadata \"experiment\": true)."));
}

// -- one experiment ------------------------------------------------------------------------

function srmSentence(results) {
  const srm = results.srm;
  if (srm.unavailable) return h("p", { id: "srm" }, `Sample-ratio check: not made (${srm.unavailable}).`);
  if (srm.mismatch) {
    return h("p", { id: "srm", class: "problems", role: "alert" },
      `Sample-ratio mismatch: subjects did not arrive in the split's proportions (p = ${number(srm.p_value)} < ${srm.threshold}). `,
      "Assignment or exposure logging is broken somewhere: trust no other figure on this page until that is explained.");
  }
  return h("p", { id: "srm" }, `Subjects arrived in the split's proportions (sample-ratio check p = ${number(srm.p_value)}, alarm below ${srm.threshold}).`);
}

function crossoverSentence(results) {
  if (!results.crossovers) return h("p", { id: "crossovers" }, "No subject saw more than one variant.");
  const share = results.subjects ? ` (${percent(results.crossovers / results.subjects)} of ${results.subjects})` : "";
  return h("p", { id: "crossovers", class: "warn" },
    `${results.crossovers} subjects${share} saw more than one variant (crossovers): the split or the targeting `,
    "changed while the experiment ran, or the targeting key is not stable for a subject. Each stays in the variant of its first exposure (docs/experiments.md, Attribution).");
}

/** The interval a comparison gives on `scale` ("relative" or "absolute"), or null. */
const figuresOf = (comparison, scale) => comparison[scale] || null;

function forestPlot(metric, scale) {
  const rows = metric.comparisons.map((comparison) => ({ comparison, figures: figuresOf(comparison, scale) }));
  const ends = rows.flatMap(({ figures }) => figures
    ? [figures.ci.low, figures.ci.high, figures.sequential_ci && figures.sequential_ci.low, figures.sequential_ci && figures.sequential_ci.high]
    : []).filter((value) => value !== null && value !== undefined && Number.isFinite(value));
  let low = Math.min(0, ...ends);
  let high = Math.max(0, ...ends);
  if (low === high) [low, high] = [-1, 1];
  const pad = (high - low) * 0.08;
  [low, high] = [low - pad, high + pad];
  const [left, right, rowHeight, top] = [120, 620, 36, 24];
  const x = (value) => left + ((value - low) / (high - low)) * (right - left);
  const height = top + rows.length * rowHeight + 28;
  const format = (value) => (scale === "relative" ? percent(value, 0) : number(value, 2));
  const ticks = Array.from({ length: 5 }, (_, i) => low + ((high - low) * i) / 4);
  const label = rows.map(({ comparison, figures }) => figures
    ? `${comparison.variant} against ${comparison.control}: ${format(figures.estimate)}, 95 % interval ${format(figures.ci.low)} to ${format(figures.ci.high)}`
    : `${comparison.variant}: no comparison (${comparison.unavailable})`).join("; ");
  return s("svg", { viewBox: `0 0 640 ${height}`, class: "forest", role: "img", "aria-label": `${metric.metric}, ${scale} lift. ${label}` },
    s("line", { x1: x(0), x2: x(0), y1: top - 8, y2: height - 24, class: "zero" }),
    ticks.map((tick) => s("text", { x: x(tick), y: height - 6, class: "tick", "text-anchor": "middle" }, format(tick))),
    rows.map(({ comparison, figures }, index) => {
      const y = top + index * rowHeight + rowHeight / 2;
      const name = s("text", { x: left - 8, y: y + 4, "text-anchor": "end", class: "name" }, comparison.variant);
      if (!figures) return s("g", {}, name, s("text", { x: left, y: y + 4, class: "tick" }, `no comparison: ${comparison.unavailable}`));
      const sequential = figures.sequential_ci;
      const harmful = figures.ci.high < 0 || figures.ci.low > 0;
      return s("g", { class: harmful ? "row decided" : "row", "data-variant": comparison.variant }, name,
        sequential && Number.isFinite(sequential.low) && Number.isFinite(sequential.high)
          ? s("line", { x1: x(sequential.low), x2: x(sequential.high), y1: y, y2: y, class: "always-valid" }, s("title", {}, "always-valid interval"))
          : null,
        s("line", { x1: x(figures.ci.low), x2: x(figures.ci.high), y1: y, y2: y, class: "fixed" }, s("title", {}, "fixed-horizon 95 % interval")),
        s("circle", { cx: x(figures.estimate), cy: y, r: 5, class: "estimate" }, s("title", {}, `estimate ${format(figures.estimate)}`)));
    }));
}

function metricSection(metric, scale) {
  const format = (value) => (value === null || value === undefined ? "—" : scale === "relative" ? percent(value) : number(value));
  const interval = (ci) => (ci ? `${format(ci.low)} … ${format(ci.high)}` : "—");
  const means = new Map(metric.variants.map((variant) => [variant.variant, variant]));
  return h("section", { class: "metric", "data-metric": metric.metric, "aria-labelledby": `m-${metric.metric}` },
    h("h3", { id: `m-${metric.metric}` }, metric.metric, h("span", { class: "muted" }, ` · ${metric.kind}`),
      metric.guardrail_harmful ? h("span", { class: "badge exp" }, `guardrail: ${metric.guardrail_harmful} is harmful`) : null),
    forestPlot(metric, scale),
    h("p", { class: "legend muted" }, "Dot: estimate. Thick bar: fixed-horizon 95 % interval (valid if read once, at a size fixed in advance). ",
      "Thin bar: always-valid interval (valid however often you look; guardrails use it). A bar clear of the zero line is a difference."),
    h("div", { class: "scroll" }, h("table", {},
      h("caption", { class: "sr-only" }, `${metric.metric} by variant`),
      h("thead", {}, h("tr", {}, ["Variant", "n", metric.kind === "conversion" ? "Rate" : "Mean", `Lift (${scale})`, "95 % interval", "Always-valid", "p"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, metric.variants.map((variant) => {
        const comparison = metric.comparisons.find((c) => c.variant === variant.variant);
        const figures = comparison && figuresOf(comparison, scale);
        return h("tr", {}, h("th", { scope: "row" }, variant.variant, comparison ? "" : " (control)"),
          h("td", { class: "num" }, means.get(variant.variant).n), h("td", { class: "num" }, number(variant.mean)),
          h("td", { class: "num" }, figures ? format(figures.estimate) : comparison ? comparison.unavailable : ""),
          h("td", {}, figures ? interval(figures.ci) : ""), h("td", {}, figures ? interval(figures.sequential_ci) : ""),
          h("td", { class: "num" }, figures ? number(figures.p_value) : ""));
      })))));
}

function exposureChart(series, rollbacks) {
  const windows = series.windows;
  if (!windows.length) return h("p", {}, "No exposure yet.");
  const [left, right, top, bottom] = [48, 620, 12, 200];
  const first = windows[0].start;
  const last = Math.max(windows[windows.length - 1].start + series.window_s, ...rollbacks.map((r) => r.updated_at).filter((t) => t >= first));
  const most = Math.max(1, ...windows.flatMap((w) => w.exposures));
  const x = (t) => left + ((t - first) / Math.max(1, last - first)) * (right - left);
  const y = (count) => bottom - (count / most) * (bottom - top);
  const label = `Exposures per ${series.window_s} s window, ${series.variants.join(", ")}, from ${new Date(first * 1000).toISOString()}`;
  const marks = rollbacks.filter((r) => r.updated_at >= first && r.updated_at <= last);
  return h("figure", {},
    s("svg", { viewBox: "0 0 640 230", class: "series", role: "img", "aria-label": label },
      s("line", { x1: left, x2: right, y1: bottom, y2: bottom, class: "axis" }),
      s("text", { x: left - 6, y: top + 8, "text-anchor": "end", class: "tick" }, String(most)),
      s("text", { x: left - 6, y: bottom, "text-anchor": "end", class: "tick" }, "0"),
      s("text", { x: left, y: bottom + 20, class: "tick" }, new Date(first * 1000).toLocaleTimeString()),
      s("text", { x: right, y: bottom + 20, class: "tick", "text-anchor": "end" }, new Date(last * 1000).toLocaleTimeString()),
      series.variants.map((variant, column) => s("polyline", {
        fill: "none", stroke: COLOURS[column % COLOURS.length], "stroke-width": 2,
        points: windows.map((w) => `${x(w.start + series.window_s / 2)},${y(w.exposures[column])}`).join(" "),
      }, s("title", {}, variant))),
      marks.map((mark) => s("g", { class: "rollback" },
        s("line", { x1: x(mark.updated_at), x2: x(mark.updated_at), y1: top, y2: bottom }),
        s("text", { x: x(mark.updated_at) + 4, y: top + 10, class: "tick" }, "guardrail rollback")))),
    h("figcaption", {}, series.variants.map((variant, column) =>
      h("span", { class: "key" }, h("span", { class: "swatch", "data-colour": column % COLOURS.length }), variant))));
}

async function rollbacksOf(env, flagKey) {
  if (!flagKey) return [];
  const answer = await call("GET", `${API}/${enc(env)}/flags/${enc(flagKey)}/history`);
  return answer.status === 200 ? answer.body.versions.filter((v) => (v.actor || "").startsWith("guardrail:")) : [];
}

export async function experimentPage(page, env, key, context) {
  let scale = "relative";
  let latest = null;
  let rollbacks = [];

  function render(results) {
    const picker = h("select", { id: "scale", onchange: (event) => { scale = event.target.value; render(latest); } },
      h("option", { value: "relative", selected: scale === "relative" }, "relative lift (%)"),
      h("option", { value: "absolute", selected: scale === "absolute" }, "absolute lift"));
    const lag = results.lag.worst_seconds;
    fill(page,
      h("h1", {}, key),
      h("p", { class: "muted" }, statusBadge(results.status),
        results.flag ? [" flag ", h("a", { href: `#/e/${enc(env)}/f/${enc(results.flag)}` }, results.flag), ` version ${results.flag_version}`] : " no flag runs it now",
        ` · control ${results.control || "—"} · ${results.subjects} subjects`,
        lag === null ? " · figures from some source partitions are missing" : ` · figures up to ${Math.round(lag)} s behind`),
      srmSentence(results), crossoverSentence(results),
      h("h2", {}, "Variants"),
      h("div", { class: "scroll" }, h("table", {},
        h("thead", {}, h("tr", {}, ["Variant", "Split", "Subjects", "Exposures", "Crossovers"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, results.variants.map((v) => h("tr", {}, h("th", { scope: "row" }, v.variant),
          h("td", { class: "num" }, v.weight === null ? "—" : percent(v.weight, 0)), h("td", { class: "num" }, v.subjects),
          h("td", { class: "num" }, v.exposures), h("td", { class: "num" }, v.crossovers)))))),
      h("h2", {}, "Metrics"),
      h("div", { class: "toolbar" }, h("label", { for: "scale" }, "Show"), picker),
      results.metrics.length ? results.metrics.map((metric) => metricSection(metric, scale)) : h("p", {}, "No metric reported yet."),
      results.metrics_unavailable.map((m) => h("p", { class: "warn" }, `${m.metric}: not shown, ${m.reason}.`)),
      h("h2", {}, "Exposures over time"),
      exposureChart(results.exposures_series, rollbacks),
      rollbacks.length
        ? h("ul", { id: "rollbacks" }, rollbacks.map((r) => h("li", {}, when(r.updated_at), ` version ${r.version}: ${r.actor}`)))
        : null);
  }

  async function load() {
    // The flag usually has the experiment's name: its history is read alongside the results.
    const [answer, guessed] = await Promise.all([
      call("GET", `${API}/${enc(env)}/experiments/${enc(key)}/results`), rollbacksOf(env, key)]);
    if (answer.status !== 200) {
      fill(page, h("h1", {}, key), h("p", { class: "error" }, messageOf(answer)));
    } else {
      rollbacks = answer.body.flag === key ? guessed : await rollbacksOf(env, answer.body.flag);
      // Keep the reader's place (and focus): re-render only when a figure changed, not the lag.
      const figures = (body) => body && JSON.stringify({ ...body, lag: null });
      if (figures(answer.body) !== figures(latest)) {
        latest = answer.body;
        render(latest);
      }
    }
  }
  // One read at a time: events during a read make one more read after it, not one each.
  let reading = null;
  let again = false;
  async function reload() {
    if (reading) {
      again = true;
      return;
    }
    do {
      again = false;
      reading = load();
      await reading;
    } while (again);
    reading = null;
  }
  await load();
  const url = `${API}/${enc(env)}/experiments/${enc(key)}/stream`;
  return followAfterPaint(url, () => { reload(); }, context.live);
}
