// Talking to the server: the API key (sessionStorage, sent as a header, never in a URL),
// JSON calls, and event streams read with fetch(). Every path is relative to the page
// (/ui), so the page also works behind a proxy that serves the API under a prefix.
import {SseParser} from './sse.js';

const KEY = 'imagegate.apiKey';

export class AuthError extends Error {}
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export const apiKey = {
  get() { return sessionStorage.getItem(KEY); },
  set(value) { sessionStorage.setItem(KEY, value); },
  forget() { sessionStorage.removeItem(KEY); },
};

function headers(extra = {}) {
  const all = new Headers(extra);
  const key = apiKey.get();
  if (key) all.set('Authorization', `Bearer ${key}`);
  return all;
}

async function failure(response) {
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    message = body?.error?.message || message;
  } catch { /* not JSON */ }
  return response.status === 401 ? new AuthError(message) : new ApiError(response.status, message);
}

/** A JSON call; throws AuthError on 401, ApiError on any other failure. */
export async function call(path, {method = 'GET', body, headers: extra = {}, signal} = {}) {
  const init = {method, signal, cache: 'no-store', credentials: 'same-origin', headers: headers(extra)};
  if (body !== undefined) {
    init.headers.set('Content-Type', 'application/json');
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

/** Follow an event stream until it ends (resolves), fails or is aborted (rejects).
 *  onEvent gets {event, data, id}; lastEventId resumes after that event. */
export async function follow(path, onEvent, {signal, lastEventId} = {}) {
  const extra = {Accept: 'text/event-stream'};
  if (lastEventId) extra['Last-Event-ID'] = lastEventId;
  const response = await fetch(path, {signal, cache: 'no-store', credentials: 'same-origin', headers: headers(extra)});
  if (response.status === 204) return;
  if (!response.ok) throw await failure(response);
  const parser = new SseParser(onEvent);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    parser.feed(value);
  }
}
