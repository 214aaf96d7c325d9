// The operator page: asks for the API key when the server wants one, then shows the board,
// the live requests, the playground and the gallery, kept current by one event stream.
import {ApiError, AuthError, apiKey, call, follow} from './api.js';
import {Board} from './board.js';
import {serverClock} from './dom.js';
import {Gallery} from './gallery.js';
import {Live} from './live.js';
import {Playground} from './playground.js';

const $ = (id) => document.getElementById(id);
const conn = $('conn');
let stream = null; // the live stream's AbortController
let galleryTimer = null;

const board = new Board($('board'));
const gallery = new Gallery({list: $('gallery-list'), empty: $('gallery-empty'), error: $('gallery-error'),
  more: $('gallery-more'), onError: problem});
const refreshGallery = () => {
  clearTimeout(galleryTimer);
  galleryTimer = setTimeout(() => gallery.load(), 300);
};
const live = new Live($('live-list'), $('live-empty'), {onDone: refreshGallery, onError: problem});
const playground = new Playground($('play-form'), $('play-job'), {onDone: refreshGallery, onAuth: askKey});

function status(text, state) {
  conn.textContent = text;
  conn.className = `conn ${state || ''}`;
}

function problem(error) {
  if (error instanceof AuthError) askKey(error.message);
}

/** Hide every datum and ask for the key (again: message says why). */
function askKey(message) {
  stream?.abort();
  stream = null;
  $('app').hidden = true;
  $('sections').hidden = true;
  for (const id of ['board', 'live-list', 'gallery-list', 'play-job', 'version']) $(id).replaceChildren();
  board.all([]);
  playground.backends([]);
  $('key-gate').hidden = false;
  $('key-error').textContent = apiKey.get() ? `The key was refused: ${message}` : '';
  $('forget-key').hidden = true;
  status('API key needed', 'down');
  $('key-input').focus();
}

$('key-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const value = $('key-input').value.trim();
  if (!value) return;
  apiKey.set(value);
  $('key-input').value = '';
  start();
});

$('forget-key').addEventListener('click', () => {
  apiKey.forget();
  askKey('');
});

$('gallery-refresh').addEventListener('click', () => gallery.load());

function onFrame({event, data}) {
  const d = JSON.parse(data);
  serverClock.sync(d.now);
  if (event === 'board') snapshot(d);
  else if (event === 'backend') board.update(d);
  else if (event === 'request') live.update(d);
  else if (event === 'preview') live.preview(d);
  else if (event === 'gone') live.gone(d);
}

function snapshot(d) {
  board.all(d.backends);
  live.all(d.requests);
  playground.backends(board.names());
}

/** Load the snapshot (a plain request: the page shows data before any stream), then follow. */
async function start() {
  status('Connecting…');
  try {
    const first = await call('v1/ui/board');
    $('key-gate').hidden = true;
    $('app').hidden = false;
    $('sections').hidden = false;
    $('forget-key').hidden = !apiKey.get();
    $('version').textContent = first.version ? `v${first.version}` : '';
    serverClock.sync(first.now);
    snapshot(first);
    gallery.load();
    followLive();
  } catch (error) {
    if (error instanceof AuthError) askKey(error.message);
    else {
      status(`Server unreachable (${error.message}); retrying…`, 'down');
      setTimeout(start, 3000);
    }
  }
}

/** The live stream, reconnected with a growing pause while the server is away. */
async function followLive() {
  stream?.abort();
  const controller = new AbortController();
  stream = controller;
  let pause = 1;
  while (stream === controller) {
    try {
      await follow('v1/ui/live', (frame) => {
        if (frame.event === 'board') status('Live', 'live');
        pause = 1;
        onFrame(frame);
      }, {signal: controller.signal});
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof AuthError) {
        askKey(error.message);
        return;
      }
      if (error instanceof ApiError && error.status === 404) {
        status('The operator page is turned off on this server', 'down');
        return;
      }
    }
    if (stream !== controller) return;
    status(`Reconnecting in ${pause} s…`, 'down');
    await new Promise((resolve) => setTimeout(resolve, pause * 1000));
    pause = Math.min(pause * 2, 30);
  }
}

start();
