// The dashboard's shell: sign in, the routes (#/, #/e/{env}, #/e/{env}/f/{flag}), the
// breadcrumb, and the banner that says when this worker serves stale flags.

import { API, accessOf, call, knownAccess, messageOf, remember, signOut, token } from "./api.js";
import { fill, h } from "./dom.js";
import { experimentList, experimentPage } from "./experiments.js";
import { flagList, flagPage } from "./flags.js";
import { afterPaint } from "./sse.js";

const HEALTH_EVERY_MS = 2000;
const $ = (id) => document.getElementById(id);
const session = { access: null, leave: null };

async function signIn(event) {
  event.preventDefault();
  const given = $("token").value.trim();
  $("sign-in-error").textContent = "";
  const access = await accessOf(given);
  if (!access) {
    $("sign-in-error").textContent = "This worker does not know that token.";
    $("token").focus();
    return;
  }
  remember(given, access);
  $("token").value = "";
  session.access = access;
  await route();
}

function showSignIn() {
  session.access = null;
  $("sign-in").hidden = false;
  $("page").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  fill($("crumbs"));
  $("token").focus();
}

function crumbs(env, key, experiments) {
  const items = [h("li", {}, h("a", { href: "#/" }, "Environments"))];
  if (env) items.push(h("li", {}, h("a", { href: `#/e/${encodeURIComponent(env)}` }, env)));
  if (experiments) items.push(h("li", {}, h("a", { href: `#/e/${encodeURIComponent(env)}/x` }, "experiments")));
  if (key) items.push(h("li", { "aria-current": "page" }, key));
  fill($("crumbs"), h("ol", {}, items));
}

async function environments(page) {
  const answer = await call("GET", API);
  if (answer.status !== 200) return fill(page, h("p", { class: "error" }, messageOf(answer)));
  const rows = answer.body.environments.map(({ environment, seq }) =>
    h("li", {}, h("a", { href: `#/e/${encodeURIComponent(environment)}` }, environment),
      h("span", { class: "muted" }, ` · ${seq} changes`)));
  fill(page, h("h1", {}, "Environments"),
    rows.length ? h("ul", { class: "environments" }, rows) : h("p", {}, "No environment has a flag yet."));
  return null;
}

/** Render the page the URL's hash names; the previous page's stream is closed first. */
async function route() {
  const page = $("page");
  delete page.dataset.readyAtMs;
  delete page.dataset.paintedAtMs;
  await show(page);
  markReady(page);
}

/** For the load-time benchmark and tests: when the page was whole (ms since navigation
 * start), and when the frame that shows it was painted. */
function markReady(page) {
  page.dataset.readyAtMs = String(Math.round(performance.now()));
  afterPaint(() => { page.dataset.paintedAtMs = String(Math.round(performance.now())); });
}

async function show(page) {
  if (session.leave) session.leave();
  session.leave = null;
  if (!token()) return showSignIn();
  if (!session.access) session.access = knownAccess() || (await accessOf(token()));
  if (!session.access) {
    signOut();
    return showSignIn();
  }
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  $("who").textContent = session.access === "admin" ? "admin: may change flags" : "read only";
  page.hidden = false;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const context = { access: session.access, live: liveState };
  if (parts[0] === "e" && parts[1] && parts[2] === "x" && parts[3]) {
    crumbs(parts[1], parts[3], true);
    session.leave = await experimentPage(page, parts[1], parts[3], context);
  } else if (parts[0] === "e" && parts[1] && parts[2] === "x") {
    crumbs(parts[1], null, true);
    session.leave = await experimentList(page, parts[1]);
  } else if (parts[0] === "e" && parts[1] && parts[2] === "f" && parts[3]) {
    crumbs(parts[1], parts[3]);
    session.leave = await flagPage(page, parts[1], parts[3], context);
  } else if (parts[0] === "e" && parts[1]) {
    crumbs(parts[1]);
    session.leave = await flagList(page, parts[1], context);
  } else {
    crumbs();
    session.leave = await environments(page);
  }
}

/** The stream's state in a status line: shown only while it is down. */
function liveState(state, why) {
  const line = $("live");
  line.hidden = state === "live";
  line.textContent = state === "live" ? "" : `Live updates paused (${why}); reconnecting…`;
  document.body.dataset.live = state;
}

async function watchHealth() {
  try {
    const answer = await call("GET", "/healthz", { auth: null });
    const stale = answer.status === 200 && answer.body.broker !== "reachable";
    $("stale").hidden = !stale;
    $("stale").textContent = stale
      ? `This worker cannot reach its broker: it is ${answer.body.serving}. What you see may be out of date.`
      : "";
  } catch {
    $("stale").hidden = false;
    $("stale").textContent = "This worker does not answer: what you see may be out of date.";
  }
  setTimeout(watchHealth, HEALTH_EVERY_MS);
}

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => {
  signOut();
  route();
});
window.addEventListener("hashchange", route);
// The health check asks nothing the first page needs: it starts once that page is painted.
route().finally(() => afterPaint(watchHealth));
