// The gallery: the newest images of the output folder with the parameters embedded in each
// file (A1111's "parameters" text), the backend, the time and what was adjusted.
import {call} from './api.js';
import {clockTime, copyText, h} from './dom.js';

const PAGE = 24;

export class Gallery {
  constructor({list, empty, error, more, onError}) {
    Object.assign(this, {list, empty, error, more, onError});
    this.next = null;
    this.loading = false;
    more.addEventListener('click', () => this.load({older: true}));
  }

  /** The newest page (older: the page after the last one shown). */
  async load({older = false} = {}) {
    if (this.loading) return;
    this.loading = true;
    const query = new URLSearchParams({limit: String(PAGE)});
    if (older && this.next) query.set('before', this.next);
    try {
      const page = await call(`v1/ui/gallery?${query}`);
      const shots = page.data.map((item) => shot(item));
      if (older) this.list.append(...shots); else this.list.replaceChildren(...shots);
      this.next = page.next;
      this.more.hidden = !page.next;
      this.empty.hidden = this.list.children.length > 0;
      this.error.textContent = '';
    } catch (error) {
      this.error.textContent = `The gallery could not be loaded: ${error.message}`;
      this.onError(error);
    } finally {
      this.loading = false;
    }
  }
}

function shot(item) {
  const f = item.fields || {};
  const [width, height] = (f.Size || '').split('x').map(Number);
  const title = item.prompt || item.path;
  const meta = [item.backend ? `on ${item.backend}` : null, clockTime(item.time),
    f.Size, f.Steps ? `${f.Steps} steps` : null, f.Seed ? `seed ${f.Seed}` : null]
    .filter(Boolean).join(' · ');
  const status = h('span', {class: 'muted', role: 'status'});
  const copy = h('button', {type: 'button', class: 'copy', text: 'Copy parameters',
    'aria-label': `Copy the parameters of ${title.slice(0, 60)}`, disabled: !item.parameters,
    onclick: async () => {
      try {
        await copyText(item.parameters);
        status.textContent = 'Copied.';
      } catch (error) {
        status.textContent = `Could not copy: ${error.message}`;
      }
    }});
  return h('li', {class: 'shot', 'data-key': item.path},
    h('a', {href: item.url, target: '_blank', rel: 'noopener noreferrer'},
      h('img', {src: item.url, alt: title, loading: 'lazy', width: width || null, height: height || null})),
    h('p', {class: 'prompt', text: title}),
    h('p', {class: 'meta', text: meta}),
    item.adjustments.length ? h('p', {class: 'adjustments', text: `Adjusted: ${item.adjustments.join('; ')}`}) : null,
    item.parameters ? h('details', {}, h('summary', {text: 'Parameters'}), h('pre', {class: 'parameters', text: item.parameters}))
      : h('p', {class: 'meta', text: 'No embedded parameters.'}),
    h('div', {class: 'actions'}, copy, status));
}
