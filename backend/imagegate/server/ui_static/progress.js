// One generation's progress, drawn the same way in the live list and in the playground:
// status, backend, queue position, progress bar with ETA, preview, failover steps, the end.
import {duration, h} from './dom.js';

const STATUS_TEXT = {queued: 'queued', running: 'running', succeeded: 'done', failed: 'failed', cancelled: 'cancelled'};

/** The parts of a progress view, made once and then filled by showProgress(). */
export function progressParts(label) {
  return h('div', {class: 'progress-view'},
    h('div', {class: 'req-head'}, h('span', {class: 'badge'}), h('span', {class: 'where'})),
    h('div', {class: 'progress'},
      h('progress', {max: '1', 'aria-label': `Progress of ${label}`}),
      h('span', {class: 'eta'})),
    h('p', {class: 'queue muted'}),
    h('ol', {class: 'failovers', 'aria-label': 'Failover steps'}),
    h('img', {class: 'preview', alt: `Live preview of ${label}`, hidden: true}),
    h('p', {class: 'error ended-error'}));
}

/** Fill the parts with a state shaped like the server's live request. */
export function showProgress(view, state) {
  const badge = view.querySelector('.badge');
  badge.textContent = STATUS_TEXT[state.status] || state.status;
  badge.className = `badge ${state.status}`;
  view.dataset.status = state.status;
  const where = [];
  if (state.backend) where.push(`on ${state.backend}`);
  if (state.attempt > 1) where.push(`attempt ${state.attempt}`);
  view.querySelector('.where').textContent = where.join(', ');
  const bar = view.querySelector('progress');
  const p = state.progress || {};
  if (p.fraction === null || p.fraction === undefined) {
    if (state.status === 'succeeded') bar.value = 1; else bar.removeAttribute('value');
  } else {
    bar.value = p.fraction;
  }
  bar.setAttribute('aria-valuetext', bar.hasAttribute('value') ? `${Math.round(bar.value * 100)}%` : 'waiting');
  const eta = [];
  if (p.fraction !== null && p.fraction !== undefined) eta.push(`${Math.round(p.fraction * 100)}%`);
  if (p.step !== null && p.step !== undefined && p.steps) eta.push(`step ${p.step}/${p.steps}`);
  if (p.eta_s !== null && p.eta_s !== undefined && state.status === 'running') eta.push(`ETA ${duration(p.eta_s)}`);
  view.querySelector('.eta').textContent = eta.join(' · ');
  const q = state.queue || {};
  const queue = view.querySelector('.queue');
  queue.textContent = state.status === 'queued' && q.position
    ? `In queue: position ${q.position}${q.size ? ` of ${q.size}` : ''}` : '';
  queue.hidden = !queue.textContent;
  const steps = view.querySelector('.failovers');
  if (steps.children.length !== (state.failovers || []).length) {
    steps.replaceChildren(...(state.failovers || []).map((f) =>
      h('li', {text: `${f.from} → ${f.to}${f.hedge ? ' (hedge)' : ''}: ${f.reason}`})));
  }
  if (state.preview && state.status !== 'succeeded') showPreview(view, state.preview);
  view.querySelector('.ended-error').textContent = state.error && state.status !== 'succeeded' ? state.error : '';
}

export function showPreview(view, src) {
  const img = view.querySelector('.preview');
  if (!src.startsWith('data:image/')) return;
  img.src = src;
  img.hidden = false;
}
