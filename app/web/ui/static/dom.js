// Elements built from data, never from HTML strings: flag keys, actors and values are user
// text, so they only ever become text nodes or attribute values.

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

/** "3 min ago" style time plus the exact time in a tooltip. */
export function when(seconds) {
  if (!seconds) return h("span", {}, "—");
  const moment = new Date(seconds * 1000);
  const age = Math.max(0, Date.now() / 1000 - seconds);
  const text =
    age < 60 ? `${Math.round(age)} s ago`
    : age < 3600 ? `${Math.round(age / 60)} min ago`
    : age < 86400 ? `${Math.round(age / 3600)} h ago`
    : moment.toISOString().slice(0, 10);
  const exact = moment.toISOString();
  return h("time", { datetime: exact, title: exact }, text);
}
