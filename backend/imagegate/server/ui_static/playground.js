// The playground: one async job (POST /v1/images/generations with Prefer: respond-async),
// followed over its event stream, its progress and result shown in place.
import {AuthError, call, follow} from './api.js';
import {h} from './dom.js';
import {progressParts, showPreview, showProgress} from './progress.js';

const SIZE = /^([0-9]{2,4})x([0-9]{2,4})$/;
const RETRIES = 5;

export class Playground {
  constructor(form, jobBox, {onDone, onAuth}) {
    this.form = form;
    this.box = jobBox;
    this.onDone = onDone;
    this.onAuth = onAuth;
    this.error = form.querySelector('#play-error');
    this.submit = form.querySelector('#play-submit');
    this.cancelButton = form.querySelector('#play-cancel');
    this.job = null;
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.start();
    });
    this.cancelButton.addEventListener('click', () => this.cancel());
  }

  /** The backend choices (Automatic stays first). */
  backends(names) {
    const select = this.form.querySelector('#play-backend');
    const chosen = select.value;
    const options = names.map((name) => h('option', {value: name, text: name}));
    select.replaceChildren(h('option', {value: '', text: 'Automatic (routing)'}), ...options);
    if (names.includes(chosen)) select.value = chosen;
  }

  /** The request body, or an error naming the field. */
  body() {
    const get = (name) => this.form.elements[name].value.trim();
    const body = {prompt: get('prompt'), response_format: 'url', partial_images: 1};
    if (!body.prompt) throw fieldError('play-prompt', 'Prompt: write what the image should show.');
    if (get('negative_prompt')) body.negative_prompt = get('negative_prompt');
    const size = SIZE.exec(get('size'));
    const ok = (v) => v >= 64 && v <= 2048 && v % 8 === 0;
    if (!size || !ok(+size[1]) || !ok(+size[2])) {
      throw fieldError('play-size', 'Size: WIDTHxHEIGHT, each 64–2048 and a multiple of 8 (e.g. 512x512).');
    }
    body.size = `${+size[1]}x${+size[2]}`;
    const steps = Number(get('steps'));
    if (!Number.isInteger(steps) || steps < 1 || steps > 150) throw fieldError('play-steps', 'Steps: a whole number 1–150.');
    body.steps = steps;
    if (get('seed') !== '') {
      const seed = Number(get('seed'));
      if (!Number.isInteger(seed) || seed < 0 || seed > 4294967295) throw fieldError('play-seed', 'Seed: a whole number 0–4294967295, or empty for a random one.');
      body.seed = seed;
    }
    if (get('backend')) body.model = get('backend');
    return body;
  }

  async start() {
    this.error.textContent = '';
    this.form.querySelectorAll('[aria-invalid]').forEach((el) => el.removeAttribute('aria-invalid'));
    let body;
    try {
      body = this.body();
    } catch (error) {
      this.error.textContent = error.message;
      document.getElementById(error.field)?.setAttribute('aria-invalid', 'true');
      document.getElementById(error.field)?.focus();
      return;
    }
    this.busy(true);
    try {
      const job = await call('v1/images/generations', {method: 'POST', body, headers: {Prefer: 'respond-async'}});
      this.show(job.id, body);
      await this.watch(job.id);
    } catch (error) {
      if (error instanceof AuthError) this.onAuth(error);
      this.error.textContent = `The job could not run: ${error.message}`;
    } finally {
      this.busy(false);
    }
  }

  busy(on) {
    this.submit.disabled = on;
    this.submit.textContent = on ? 'Generating…' : 'Generate';
    this.cancelButton.hidden = !on;
    this.cancelButton.disabled = false;
  }

  show(id, body) {
    this.job = {id, state: {status: 'queued', failovers: [], progress: {}, queue: {}, attempt: 0}};
    this.box.replaceChildren(
      h('p', {class: 'req-id', text: `job ${id}`}),
      h('p', {class: 'prompt', text: body.prompt}),
      progressParts('the playground job'),
      h('div', {class: 'job-result'}));
    this.box.hidden = false;
  }

  /** Follow the job's events to the end, resuming after the last one if the stream drops. */
  async watch(id) {
    let lastId = null;
    for (let attempt = 0; ; attempt++) {
      try {
        await follow(`v1/jobs/${encodeURIComponent(id)}/events`, (e) => {
          lastId = e.id;
          this.onEvent(e.event, JSON.parse(e.data));
        }, {lastEventId: lastId});
        return;
      } catch (error) {
        if (error instanceof AuthError || attempt >= RETRIES) throw error;
        await new Promise((resolve) => setTimeout(resolve, 500 * (attempt + 1)));
      }
    }
  }

  onEvent(type, data) {
    const s = this.job.state;
    const view = this.box.querySelector('.progress-view');
    if (type === 'queued') Object.assign(s, {status: 'queued', queue: {position: data.position, size: data.queue_size}, backend: data.backend || s.backend});
    else if (type === 'started') Object.assign(s, {status: 'running', backend: data.backend, attempt: data.attempt, progress: {}, queue: {}});
    else if (type === 'progress') Object.assign(s, {status: 'running', progress: data, queue: {}});
    else if (type === 'failover') s.failovers = [...s.failovers, data];
    else if (type === 'preview') showPreview(view, `data:image/${data.format === 'jpg' ? 'jpeg' : data.format};base64,${data.image}`);
    else if (type === 'completed') this.completed(s, data);
    else if (type === 'failed') Object.assign(s, {status: 'failed', error: `${data.error_kind}: ${data.message}`});
    else if (type === 'cancelled') Object.assign(s, {status: 'cancelled', error: data.reason});
    showProgress(view, s);
  }

  completed(s, data) {
    Object.assign(s, {status: 'succeeded', backend: data.backend, progress: {fraction: 1}});
    this.box.querySelector('.preview').hidden = true;
    const result = data.result || {};
    const images = (result.data || []).filter((d) => d.url).map((d, i) =>
      h('a', {href: d.url, target: '_blank', rel: 'noopener noreferrer'},
        h('img', {class: 'result', src: d.url, alt: `Result ${i + 1}: ${this.form.elements.prompt.value.trim().slice(0, 120)}`})));
    const adjusted = (result.adjustments || []).map((a) => `${a.field} ${a.asked} → ${a.used} (${a.why})`);
    this.box.querySelector('.job-result').replaceChildren(
      h('p', {class: 'muted', text: `Made by ${data.backend} in ${data.elapsed_s.toFixed(2)} s.`}),
      adjusted.length ? h('p', {class: 'adjustments', text: `Adjusted: ${adjusted.join('; ')}`}) : null,
      ...images);
    this.onDone();
  }

  async cancel() {
    if (!this.job) return;
    this.cancelButton.disabled = true;
    try {
      await call(`v1/jobs/${encodeURIComponent(this.job.id)}/cancel`, {method: 'POST'});
    } catch (error) {
      this.error.textContent = `Could not cancel: ${error.message}`;
      this.cancelButton.disabled = false;
    }
  }
}

function fieldError(field, message) {
  const error = new Error(message);
  error.field = field;
  return error;
}
