// The worker's HTTP API as the dashboard calls it: the token from sessionStorage as a Bearer
// header on every call, answers as {status, body, headers}. Nothing here writes the token
// anywhere but sessionStorage and the Authorization header.

const TOKEN = "flagstream.token";
const ACCESS = "flagstream.access"; // what the token may do, so a reload asks no second time
export const API = "/api/v1/environments";

export const token = () => sessionStorage.getItem(TOKEN);
export const knownAccess = () => sessionStorage.getItem(ACCESS);
export function signOut() {
  sessionStorage.removeItem(TOKEN);
  sessionStorage.removeItem(ACCESS);
}
export function remember(value, access) {
  sessionStorage.setItem(TOKEN, value);
  sessionStorage.setItem(ACCESS, access);
}

/** One call; `body` is sent as JSON. Never throws on an HTTP status, only on a lost network. */
export async function call(method, path, { body, headers = {}, auth = token() } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (auth) init.headers.Authorization = `Bearer ${auth}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401 && auth && auth === token()) {
    signOut(); // the token was revoked: back to the sign-in form
    window.dispatchEvent(new HashChangeEvent("hashchange"));
  }
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = { error: { code: "NOT_JSON", message: text.slice(0, 200), problems: [] } };
  }
  return { status: response.status, body: parsed, headers: response.headers };
}

/** "admin", "read" or null: what `auth` may do (the API's access route says). */
export async function accessOf(auth) {
  const answer = await call("GET", "/api/v1/access", { auth });
  return answer.status === 200 ? answer.body.access : null;
}

export const enc = encodeURIComponent;

/** The error of an answer in one sentence (the API's `message`, else its status). */
export function messageOf(answer) {
  const error = answer.body && answer.body.error;
  return error ? `${error.message} (${error.code}, HTTP ${answer.status})` : `HTTP ${answer.status}`;
}
