// Small DOM and formatting helpers. Text from the server is only ever set as text
// (textContent, attributes), never parsed as HTML.

/** An element: h('p', {class: 'x', text: 'hi'}, child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** "850 ms", "1.24 s", "3 min 5 s". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '—';
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(2) : Math.round(seconds)} s`;
  const m = Math.floor(seconds / 60);
  return `${m} min ${Math.round(seconds - m * 60)} s`;
}

/** A countdown in whole seconds: "29 s", "4 min 10 s". */
export function countdown(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

/** "12 s ago", "3 min ago", or the clock time when older than an hour. */
export function ago(then, now) {
  const s = Math.max(0, now - then);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return clockTime(then);
}

/** Local date and time of a unix time. */
export function clockTime(unix) {
  return new Date(unix * 1000).toLocaleString([], {dateStyle: 'short', timeStyle: 'medium'});
}

/** The server's clock, learnt from the "now" every frame carries. */
export const serverClock = {
  offset: 0,
  sync(serverNow) { if (typeof serverNow === 'number') this.offset = serverNow - Date.now() / 1000; },
  now() { return Date.now() / 1000 + this.offset; },
};

/** Replace a list's children keyed by data-key, keeping their order as given. */
export function byKey(list, key) {
  return list.querySelector(`:scope > [data-key="${CSS.escape(key)}"]`);
}

/** Copy text: the Clipboard API where the page may use it, else a hidden textarea. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = h('textarea', {'aria-hidden': 'true', class: 'offscreen'});
  area.value = text;
  document.body.append(area);
  area.select();
  const ok = document.execCommand('copy');
  area.remove();
  if (!ok) throw new Error('the browser refused to copy');
}
