// The node's web UI: plain ES module, no framework and no build step. Why: the page is a table
// and a form fed by one event stream; a framework would be most of what the browser loads
// (the goal is at most 150 KB gzipped; this is a few KB), and the node serves these files from
// its own binary, so nothing is fetched from the internet at run time.
//
// The token: `swarmcast up` prints http://ADDR/#token=T; the page keeps T in local storage and
// removes it from the address bar. Every API call sends it as `Authorization: Bearer T`. The
// event stream is read with fetch (EventSource cannot send that header), reconnecting with
// Last-Event-ID so nothing is missed.

const $ = (sel) => document.querySelector(sel);
const rows = new Map(); // id -> { data, tr }
let sortKey = 'added_at';
let sortUp = true;
let about = null; // the node, from /api/v1/node

function header() {
  if (!about) return;
  const n = rows.size;
  $('#node').textContent = `${n} torrent${n === 1 ? '' : 's'} · peers on port ${about.peer_port} · ${about.data_dir}`;
}

function token() {
  const m = location.hash.match(/token=([0-9a-f]+)/);
  if (m) {
    localStorage.setItem('swarmcast-token', m[1]);
    history.replaceState(null, '', location.pathname);
  }
  return localStorage.getItem('swarmcast-token');
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(`/api/v1/${path}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const value = await r.json().catch(() => ({ error: `the node answered ${r.status}` }));
  if (!r.ok) throw new Error(value.error || `the node answered ${r.status}`);
  return value;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let i = -1;
  do { n /= 1024; i += 1; } while (n >= 1024 && i < units.length - 1);
  return `${n.toFixed(1)} ${units[i]}`;
}

function eta(t) {
  if (t.progress >= 1 || !t.download_rate) return '';
  const s = Math.round((t.size - t.have_bytes) / t.download_rate);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function say(text, error = false) {
  const m = $('#message');
  m.textContent = text;
  m.className = error ? 'error' : '';
}

function cell(tr, cls) {
  const td = document.createElement('td');
  td.className = cls;
  tr.append(td);
  return td;
}

function button(label, cls, onClick) {
  const b = document.createElement('button');
  b.textContent = label;
  b.className = `quiet ${cls}`;
  b.addEventListener('click', onClick);
  return b;
}

function render(t) {
  let row = rows.get(t.id);
  if (!row) {
    const tr = document.createElement('tr');
    tr.dataset.id = t.id;
    for (const c of ['name', 'size num', 'progress', 'state', 'down num', 'up num', 'peers num', 'eta num', 'actions']) cell(tr, c);
    const bar = document.createElement('span');
    bar.className = 'bar';
    bar.append(document.createElement('span'));
    const pct = document.createElement('span');
    pct.className = 'pct';
    tr.querySelector('.progress').append(bar, ' ', pct);
    row = { tr, data: t };
    rows.set(t.id, row);
  }
  row.data = t;
  const { tr } = row;
  const set = (cls, text) => { const el = tr.querySelector(cls); if (el.textContent !== text) el.textContent = text; };
  tr.className = t.state;
  set('.name', t.name);
  tr.querySelector('.name').title = t.error ? `${t.name}\n${t.error}` : t.name;
  set('.size', t.size ? bytes(t.size) : '');
  tr.querySelector('.bar > span').style.width = `${(t.progress * 100).toFixed(1)}%`;
  set('.pct', `${(t.progress * 100).toFixed(1)}%`);
  set('.state', t.error ? `failed: ${t.error}` : t.state);
  set('.down', t.download_rate ? `${bytes(t.download_rate)}/s` : '');
  set('.up', t.upload_rate ? `${bytes(t.upload_rate)}/s` : '');
  set('.peers', String(t.peers));
  set('.eta', eta(t));
  const actions = tr.querySelector('.actions');
  const paused = t.state === 'paused' || t.state === 'failed';
  if (actions.dataset.paused !== String(paused)) {
    actions.dataset.paused = String(paused);
    actions.replaceChildren(
      paused
        ? button('Resume', 'resume', () => act('POST', `torrents/${t.id}/resume`))
        : button('Pause', 'pause', () => act('POST', `torrents/${t.id}/pause`)),
      ' ',
      button('Remove', 'danger remove', () => {
        if (confirm(`Remove ${t.name}? Its files stay on disk.`)) act('DELETE', `torrents/${t.id}`);
      }),
    );
  }
}

let ordering = false;
function order() {
  // Sorting is batched to one pass per frame, however many events arrive.
  if (ordering) return;
  ordering = true;
  requestAnimationFrame(() => {
    ordering = false;
    const list = [...rows.values()].sort((a, b) => {
      const x = a.data[sortKey];
      const y = b.data[sortKey];
      const c = typeof x === 'string' ? x.localeCompare(y) : x - y;
      return sortUp ? c : -c;
    });
    const body = $('#torrents tbody');
    list.forEach((r, i) => { if (body.children[i] !== r.tr) body.insertBefore(r.tr, body.children[i] || null); });
    $('#empty').hidden = rows.size > 0;
    header();
  });
}

function remove(id) {
  const row = rows.get(id);
  if (row) row.tr.remove();
  rows.delete(id);
  order();
}

async function act(method, path) {
  try {
    const t = await api(method, path);
    if (t && t.id) { render(t); order(); }
    say('');
  } catch (e) {
    say(e.message, true);
  }
}

async function reload() {
  const list = await api('GET', 'torrents');
  const ids = new Set(list.map((t) => t.id));
  for (const id of [...rows.keys()]) if (!ids.has(id)) remove(id);
  list.forEach(render);
  order();
}

// Reads the event stream; on a break, waits a second and resumes after the last event seen.
async function listen() {
  let last = null;
  for (;;) {
    try {
      const headers = { Authorization: `Bearer ${token()}` };
      if (last !== null) headers['Last-Event-ID'] = last;
      const r = await fetch('/api/v1/events', { headers });
      if (!r.ok) throw new Error(`events: ${r.status}`);
      $('#live').textContent = 'live';
      $('#live').classList.remove('off');
      if (last === null) await reload();
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let id = null;
          let data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('id: ')) id = line.slice(4);
            else if (line.startsWith('data: ')) data += line.slice(6);
          }
          if (id !== null) last = id;
          if (!data) continue;
          const e = JSON.parse(data);
          if (e.type === 'torrent') { render(e.torrent); order(); }
          else if (e.type === 'removed') remove(e.id);
          else if (e.type === 'reset') await reload();
        }
      }
    } catch (e) {
      console.warn(e);
    }
    $('#live').textContent = 'offline';
    $('#live').classList.add('off');
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function add(ev) {
  ev.preventDefault();
  const source = $('#source').value.trim();
  const file = $('#file').files[0];
  let body;
  if (file) {
    const buf = new Uint8Array(await file.arrayBuffer());
    let bin = '';
    for (let i = 0; i < buf.length; i += 0x8000) bin += String.fromCharCode(...buf.subarray(i, i + 0x8000));
    body = { torrent: btoa(bin) };
  } else if (source.startsWith('magnet:')) {
    body = { magnet: source };
  } else if (/^https?:\/\//.test(source)) {
    body = { url: source };
  } else {
    say('Paste a magnet link or an http(s) URL of a .torrent file, or choose a .torrent file.', true);
    return;
  }
  try {
    const t = await api('POST', 'torrents', body);
    render(t);
    order();
    say(`Added ${t.name}.`);
    $('#source').value = '';
    $('#file').value = '';
  } catch (e) {
    say(e.message, true);
  }
}

function start() {
  if (!token()) {
    $('#notoken').hidden = false;
    return;
  }
  $('#add').addEventListener('submit', add);
  for (const th of document.querySelectorAll('th[data-key]')) {
    th.addEventListener('click', () => {
      sortUp = sortKey === th.dataset.key ? !sortUp : true;
      sortKey = th.dataset.key;
      document.querySelectorAll('th').forEach((h) => h.classList.remove('sorted', 'up'));
      th.classList.add('sorted');
      if (sortUp) th.classList.add('up');
      order();
    });
  }
  api('GET', 'node').then((n) => { about = n; header(); }).catch((e) => say(e.message, true));
  listen();
}

start();
