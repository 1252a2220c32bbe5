// Elements built from data: flag keys, actors and values are user text, so they only ever
// become text nodes or attribute values. The one exception, for speed (a list of 1,000 rows
// parsed as one string), is HTML whose every piece of data went through `escape`.

/** `h("a", {href: "#/"}, "text", child)`: `on*` attributes are listeners, `false`/null skipped. */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

/** Replace the children of `element`. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** `value` as text that HTML shows as is, in an element or a quoted attribute. */
export const escape = (value) => String(value).replace(/[&<>"']/g, (c) => ESCAPES[c]);

/** "3 min ago" style text and the exact ISO time, or null for no time. */
function ago(seconds) {
  if (!seconds) return null;
  const moment = new Date(seconds * 1000);
  const age = Math.max(0, Date.now() / 1000 - seconds);
  const text =
    age < 60 ? `${Math.round(age)} s ago`
    : age < 3600 ? `${Math.round(age / 60)} min ago`
    : age < 86400 ? `${Math.round(age / 3600)} h ago`
    : moment.toISOString().slice(0, 10);
  return { text, exact: moment.toISOString() };
}

/** "3 min ago" style time plus the exact time in a tooltip. */
export function when(seconds) {
  const time = ago(seconds);
  return time ? h("time", { datetime: time.exact, title: time.exact }, time.text) : h("span", {}, "—");
}

/** `when` as escaped HTML. */
export function whenHtml(seconds) {
  const time = ago(seconds);
  return time ? `<time datetime="${time.exact}" title="${time.exact}">${escape(time.text)}</time>` : "<span>—</span>";
}
