// The change stream read with fetch, not EventSource: EventSource cannot send an
// Authorization header, and a token in the URL would land in access logs. Reconnects after a
// drop with `Last-Event-ID`, so the worker sends exactly the changes missed (or a snapshot).

import { token } from "./api.js";

const RETRY_MS = [250, 500, 1000, 2000, 5000];

/** Parse server-sent events from a growing text buffer; returns what is left unparsed. */
export function parseEvents(buffer, onEvent) {
  let end;
  while ((end = buffer.indexOf("\n\n")) >= 0) {
    const frame = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    const fields = {};
    for (const line of frame.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      fields[name] = name in fields ? `${fields[name]}\n${value}` : value;
    }
    if (fields.data !== undefined) onEvent(fields.event || "message", Number(fields.id), JSON.parse(fields.data));
  }
  return buffer;
}

/** Follow `url` until `stop()`; `onEvent(kind, id, data)`, `onState("live"|"down", why)`. */
export function follow(url, onEvent, onState) {
  const aborter = new AbortController();
  let lastId = null;
  let attempt = 0;
  let stopped = false;

  async function once() {
    const headers = { Accept: "text/event-stream", Authorization: `Bearer ${token()}` };
    if (lastId !== null) headers["Last-Event-ID"] = String(lastId);
    const response = await fetch(url, { headers, signal: aborter.signal, cache: "no-store" });
    if (response.status !== 200) throw new Error(`the change stream answered HTTP ${response.status}`);
    attempt = 0;
    onState("live", "");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error("the change stream ended");
      buffer = parseEvents(buffer + value.replace(/\r\n?/g, "\n"), (kind, id, data) => {
        lastId = id;
        onEvent(kind, id, data);
      });
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await once();
      } catch (failure) {
        if (stopped) return;
        onState("down", failure.message || String(failure));
      }
      const wait = RETRY_MS[Math.min(attempt++, RETRY_MS.length - 1)];
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  })();

  const stop = () => {
    stopped = true;
    aborter.abort();
  };
  // A document that is left (reload, another URL) must give its stream's connection back at
  // once: Chromium keeps it open otherwise, and after five reloads every connection it allows
  // to this worker (six) holds a stream, so the next page's API calls waited ~56 s.
  window.addEventListener("pagehide", stop, { once: true });
  return () => {
    window.removeEventListener("pagehide", stop);
    stop();
  };
}

/** `follow`, started once the page has painted: the first paint waits for no stream. */
export function followAfterPaint(url, onEvent, onState) {
  let stop = null;
  let cancelled = false;
  afterPaint(() => {
    if (!cancelled) stop = follow(url, onEvent, onState);
  });
  return () => {
    cancelled = true;
    if (stop) stop();
  };
}

/** Run `job` after the next frame is painted (a frame, then a task after it). */
export function afterPaint(job) {
  requestAnimationFrame(() => setTimeout(job, 0));
}
