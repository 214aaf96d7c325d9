// Live requests and jobs: every generation that runs while the page is open, with its
// progress and failover steps as they happen; a job can be cancelled from here.
import {call} from './api.js';
import {byKey, h} from './dom.js';
import {progressParts, showPreview, showProgress} from './progress.js';

export class Live {
  constructor(list, empty, {onDone, onError}) {
    this.list = list;
    this.empty = empty;
    this.onDone = onDone;
    this.onError = onError;
  }

  all(requests) {
    this.list.replaceChildren();
    requests.forEach((r) => this.update(r));
    this.empty.hidden = requests.length > 0;
  }

  update(r) {
    let item = byKey(this.list, r.id);
    if (!item) {
      item = this.item(r);
      this.list.prepend(item);
    }
    const before = item.dataset.status;
    showProgress(item.querySelector('.progress-view'), r);
    item.dataset.status = r.status;
    const cancel = item.querySelector('.cancel');
    if (cancel) cancel.hidden = !['queued', 'running'].includes(r.status);
    if (before !== r.status && r.status === 'succeeded') this.onDone();
    this.empty.hidden = true;
  }

  preview({id, src}) {
    const item = byKey(this.list, id);
    if (item) showPreview(item, src);
  }

  gone({id}) {
    byKey(this.list, id)?.remove();
    this.empty.hidden = this.list.children.length > 0;
  }

  item(r) {
    const label = r.job_id ? `job ${r.job_id}` : `request ${r.id}`;
    const meta = [r.size, r.steps ? `${r.steps} steps` : null, r.n > 1 ? `${r.n} images` : null,
      r.seed !== null && r.seed !== undefined ? `seed ${r.seed}` : null,
      r.pinned ? `pinned to ${r.pinned}` : null].filter(Boolean).join(' · ');
    const cancel = r.job_id ? h('button', {
      type: 'button', class: 'cancel danger', 'aria-label': `Cancel ${label}`, text: 'Cancel job',
      onclick: (e) => this.cancel(r.job_id, e.currentTarget),
    }) : null;
    return h('li', {class: 'req', 'data-key': r.id, 'data-job': r.job_id || null},
      h('p', {class: 'req-id', text: label}),
      h('p', {class: 'prompt', text: r.prompt}),
      h('p', {class: 'muted', text: meta}),
      progressParts(label),
      cancel);
  }

  async cancel(jobId, button) {
    button.disabled = true;
    try {
      await call(`v1/jobs/${encodeURIComponent(jobId)}/cancel`, {method: 'POST'});
    } catch (error) {
      button.disabled = false;
      this.onError(error);
    }
  }
}
