// The backends board: one card per backend, updated in place from the live stream; the
// countdown of an open breaker runs on the page against the server's clock (no request).
import {ago, byKey, countdown, duration, h, serverClock} from './dom.js';

const STATE_TEXT = {closed: 'closed', half_open: 'half-open', open: 'open', disabled: 'disabled'};
const TIMINGS = [['dns_s', 'DNS'], ['connect_s', 'connect'], ['tcp_s', 'TCP'], ['tls_s', 'TLS'],
  ['first_byte_s', 'first byte'], ['total_s', 'total']];

export class Board {
  constructor(list) {
    this.list = list;
    this.rows = new Map();
    setInterval(() => this.tick(), 1000);
  }

  /** Every backend, in the server's order (a snapshot). */
  all(rows) {
    this.rows = new Map(rows.map((row) => [row.name, row]));
    const cards = rows.map((row) => byKey(this.list, row.name) || this.card(row.name));
    this.list.replaceChildren(...cards);
    rows.forEach((row) => this.fill(row));
  }

  update(row) {
    this.rows.set(row.name, row);
    if (!byKey(this.list, row.name)) this.list.append(this.card(row.name));
    this.fill(row);
  }

  names() { return [...this.rows.keys()]; }

  card(name) {
    return h('li', {class: 'card', 'data-key': name, 'data-backend': name},
      h('div', {class: 'card-head'}, h('h3', {text: name}), h('span', {class: 'kind'})),
      h('p', {class: 'state'}, h('span', {class: 'badge'}), h('span', {class: 'countdown'})),
      h('p', {class: 'reason'}),
      h('dl', {class: 'stats'}),
      h('p', {class: 'last-error error'}),
      h('details', {class: 'caps'}, h('summary', {text: 'Capabilities'}), h('ul')));
  }

  fill(row) {
    const card = byKey(this.list, row.name);
    card.dataset.state = row.state;
    card.querySelector('.kind').textContent = row.kind;
    const badge = card.querySelector('.badge');
    badge.textContent = STATE_TEXT[row.state] || row.state;
    badge.className = `badge ${row.state}`;
    card.querySelector('.reason').textContent = row.state === 'closed' ? '' : (row.breaker_reason || '');
    card.querySelector('.reason').hidden = row.state === 'closed' || !row.breaker_reason;
    this.countdown(card, row);
    card.querySelector('.stats').replaceChildren(...stats(row));
    const error = row.last_error_kind ? `last error: ${row.last_error_kind}${row.last_error ? ` — ${row.last_error}` : ''}` : '';
    card.querySelector('.last-error').textContent = error;
    const caps = card.querySelector('.caps ul');
    const text = JSON.stringify(row.capabilities || []);
    if (caps.dataset.text !== text) {
      caps.dataset.text = text;
      caps.replaceChildren(...(row.capabilities || []).map((line) => h('li', {text: line})));
    }
    card.querySelector('.caps').hidden = !(row.capabilities || []).length;
  }

  countdown(card, row) {
    const place = card.querySelector('.countdown');
    if (row.state === 'open' && row.open_until) {
      const left = row.open_until - serverClock.now();
      place.textContent = left > 0 ? `next trial in ${countdown(left)}` : 'trial due';
    } else if (row.state === 'disabled') {  // the reason says until when, when it is ours
      place.textContent = (row.breaker_reason || '').includes('until') ? '' : 'until a probe succeeds';
    } else if (row.state === 'half_open') {
      place.textContent = 'trial request allowed';
    } else {
      place.textContent = '';
    }
  }

  tick() {
    for (const row of this.rows.values()) {
      const card = byKey(this.list, row.name);
      if (card) this.countdown(card, row);
      if (card && row.last_probe_at) {
        const probe = card.querySelector('[data-probe-age]');
        if (probe) probe.textContent = ago(row.last_probe_at, serverClock.now());
      }
    }
  }
}

function stats(row) {
  const out = [];
  const pair = (term, ...value) => out.push(h('dt', {text: term}), h('dd', {}, ...value));
  pair('In flight', `${row.in_flight} / ${row.max_concurrency ?? '?'}`);
  if (row.recent_requests) {
    const rate = Math.round((row.success_rate ?? 0) * 1000) / 10;
    pair('Success', `${rate}% of the last ${row.recent_requests}`);
  } else {
    pair('Success', 'no request yet');
  }
  pair('Latency', row.latency_p50_s == null ? '—'
    : `p50 ${duration(row.latency_p50_s)} · p95 ${duration(row.latency_p95_s)}`);
  if (row.last_probe_at) {
    const timings = TIMINGS.filter(([key]) => row.timings?.[key] != null)
      .map(([key, label]) => `${label} ${duration(row.timings[key])}`).join(' · ');
    pair('Last probe', `${row.ok === false ? 'failed' : 'ok'}, `,
      h('span', {'data-probe-age': '', text: ago(row.last_probe_at, serverClock.now())}),
      timings ? h('br') : null, timings || null);
  } else {
    pair('Last probe', 'not yet');
  }
  return out;
}
