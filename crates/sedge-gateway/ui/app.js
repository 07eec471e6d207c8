// The dashboard: one page, views chosen by the URL's #fragment. The admin
// credential lives in this module's memory only (never in storage, a
// cookie or a URL), and is sent as a Bearer header by `api` alone, so no
// other page can make the browser send it (see docs/security.md).
import { drawLine, format } from './chart.js';

let credential = null;
const $ = sel => document.querySelector(sel);
const view = $('#view');
const SAMPLES = 90;          // kept per function: 3 minutes at one a 2 s
const POLL_MS = 2000;
// Per function: [{t, count, errors, seconds, buckets}], oldest first.
const history = new Map();
let functions = [];
let leave = () => {};         // stops what the current view started

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, opts = {}) {
  const headers = new Headers(opts.headers || {});
  headers.set('Authorization', `Bearer ${credential}`);
  const resp = await fetch(path, { ...opts, headers, credentials: 'omit', cache: 'no-store' });
  if (resp.status === 401) { logout('The node refused the password.'); throw new ApiError(401, 'not logged in'); }
  if (!resp.ok && !opts.raw) throw new ApiError(resp.status, await errorText(resp));
  return resp;
}

async function errorText(resp) {
  const text = await resp.text();
  try { return JSON.parse(text).error || text; } catch { return text || resp.statusText; }
}

const json = async (path, opts) => (await api(path, opts)).json();

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== false && v !== null && v !== undefined) e.setAttribute(k, v === true ? '' : v);
  }
  e.append(...children.flat().filter(c => c !== null && c !== undefined).map(c => c instanceof Node ? c : String(c)));
  return e;
}

function logout(why) {
  credential = null;
  leave(); leave = () => {};
  history.clear();
  $('#nav').hidden = true;
  view.replaceChildren();
  $('#login').hidden = false;
  $('#login-error').textContent = why || '';
}

$('#logout').addEventListener('click', () => logout(''));
$('#login').addEventListener('submit', async ev => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const user = form.get('user'), password = form.get('password');
  if (user !== 'admin') { $('#login-error').textContent = 'The node has one user, admin.'; return; }
  credential = password;
  try {
    const resp = await fetch('/system/info', { headers: { Authorization: `Bearer ${password}` }, credentials: 'omit' });
    if (resp.status === 401) { credential = null; $('#login-error').textContent = 'Wrong password.'; return; }
    if (!resp.ok) throw new Error(await errorText(resp));
  } catch (e) { credential = null; $('#login-error').textContent = `Could not reach the node: ${e.message}`; return; }
  ev.target.reset();
  $('#login').hidden = true;
  $('#nav').hidden = false;
  // The Nodes view exists only where the node answers /system/nodes.
  $('#nav-nodes').hidden = true;
  clusterNodes().then(c => { $('#nav-nodes').hidden = !c; }, () => {});
  poll();
  route();
});

// Reads the functions and their counters every POLL_MS while logged in.
let pollTimer = null;
async function poll() {
  clearTimeout(pollTimer);
  if (!credential) return;
  try {
    const [list, stats] = await Promise.all([json('/system/functions'), json('/system/stats')]);
    functions = list.sort((a, b) => a.name.localeCompare(b.name));
    for (const f of functions) {
      const s = stats.functions[f.name] || { count: 0, errors: 0, seconds: 0, buckets: [] };
      const samples = history.get(f.name) || [];
      // A refresh right after an action replaces the newest sample when
      // that is under a second old, so rates are not over tiny intervals.
      if (samples.length > 1 && stats.nowMs - samples[samples.length - 1].t < 1000) samples.pop();
      samples.push({ t: stats.nowMs, ...s });
      if (samples.length > SAMPLES) samples.shift();
      history.set(f.name, samples);
    }
    for (const name of [...history.keys()]) if (!functions.some(f => f.name === name)) history.delete(name);
    document.dispatchEvent(new Event('sedge:poll'));
  } catch (e) {
    if (e.status !== 401) console.warn('poll', e);
  }
  if (credential) pollTimer = setTimeout(poll, POLL_MS);
}

// Rates between consecutive samples: calls a second, % failed, mean and p95 ms.
function series(name) {
  const s = history.get(name) || [];
  const out = { rate: [], errors: [], mean: [], p95: [] };
  for (let i = 1; i < s.length; i++) {
    const a = s[i - 1], b = s[i], dt = (b.t - a.t) / 1000, n = b.count - a.count;
    out.rate.push({ t: b.t, v: dt > 0 ? n / dt : 0 });
    out.errors.push({ t: b.t, v: n > 0 ? 100 * (b.errors - a.errors) / n : null });
    out.mean.push({ t: b.t, v: n > 0 ? 1000 * (b.seconds - a.seconds) / n : null });
    out.p95.push({ t: b.t, v: n > 0 ? 1000 * quantile(a.buckets, b.buckets, n, 0.95) : null });
  }
  return out;
}

// The upper bound of the bucket the q-th of the interval's calls fell in.
function quantile(before, after, n, q) {
  const want = Math.ceil(n * q);
  for (let i = 0; i < after.length; i++) {
    const [le, c] = after[i];
    if (c - ((before[i] || [le, 0])[1]) >= want) return le;
  }
  return after.length ? after[after.length - 1][0] : 0;
}

function chart(title, points, unit, id) {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  if (id) svg.id = id;
  drawLine(svg, points, unit);
  return h('div', { class: 'chart card' }, h('h3', {}, title), svg);
}

function state(f) {
  if (f.lastDeployError) return ['error', 'deploy failed'];
  if (f.availableReplicas > 0) return ['ready', 'ready'];
  if (f.replicas > 0) return ['starting', 'starting'];
  return ['idle', 'scaled to zero'];
}

function last(points) {
  for (let i = points.length - 1; i >= 0; i--) if (points[i].v !== null) return points[i].v;
  return null;
}

// ---- views ----

function functionsView() {
  const body = h('div');
  const render = () => {
    const totals = [];
    for (const f of functions) {
      for (const p of series(f.name).rate) {
        const at = totals.find(x => x.t === p.t);
        if (at) at.v += p.v; else totals.push({ ...p });
      }
    }
    const rows = functions.map(f => {
      const s = series(f.name), [cls, text] = state(f);
      const err = last(s.errors), mean = last(s.mean);
      return h('tr', { 'data-function': f.name },
        h('td', {}, h('a', { href: `#/function/${encodeURIComponent(f.name)}` }, f.name)),
        h('td', {}, f.sedge.runtime),
        h('td', { class: `state-${cls}` }, text),
        h('td', { class: 'num replicas' }, `${f.availableReplicas}/${f.replicas}`),
        h('td', { class: 'num invocations' }, f.invocationCount),
        h('td', { class: 'num' }, err === null ? '–' : format(err, '%')),
        h('td', { class: 'num' }, mean === null ? '–' : format(mean, 'ms')));
    });
    body.replaceChildren(
      h('h1', {}, 'Functions'),
      functions.length === 0 ? h('p', { class: 'muted' }, 'No functions yet: ', h('a', { href: '#/deploy' }, 'deploy one'), '.') :
        h('table', { id: 'functions' },
          h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Runtime'), h('th', {}, 'State'),
            h('th', { class: 'num' }, 'Replicas'), h('th', { class: 'num' }, 'Invocations'),
            h('th', { class: 'num' }, 'Errors'), h('th', { class: 'num' }, 'Mean latency'))),
          h('tbody', {}, rows)),
      h('div', { class: 'charts' }, chart('Invocations a second, all functions', totals.sort((a, b) => a.t - b.t), '/s', 'chart-all')));
  };
  render();
  view.replaceChildren(body);
  document.addEventListener('sedge:poll', render);
  return () => document.removeEventListener('sedge:poll', render);
}

function functionView(name) {
  const head = h('div'), charts = h('div', { class: 'charts' });
  const logs = h('pre', { id: 'logs' }), out = h('div', { id: 'invoke-answer' });
  const describe = h('pre', { id: 'describe' }), triggers = h('div', { id: 'triggers' });
  const message = h('p', { id: 'function-message', role: 'status' });
  const aborter = new AbortController();
  let current = null;
  const render = () => {
    current = functions.find(f => f.name === name) || current;
    if (!current) { head.replaceChildren(h('h1', {}, name), h('p', { class: 'error' }, 'No such function.')); return; }
    const [cls, text] = state(current);
    head.replaceChildren(h('h1', {}, name),
      h('p', {}, h('span', { class: `state-${cls}`, id: 'function-state' }, text), ' · replicas ',
        h('span', { id: 'function-replicas' }, `${current.availableReplicas}/${current.replicas}`),
        ' · invocations ', h('span', { id: 'function-invocations' }, current.invocationCount)));
    const s = series(name);
    charts.replaceChildren(chart('Invocations a second', s.rate, '/s', 'chart-rate'),
      chart('Errors (status 500 or more)', s.errors, '%', 'chart-errors'),
      chart('Latency, mean', s.mean, 'ms', 'chart-mean'),
      chart('Latency, 95th percentile (bucket bound)', s.p95, 'ms', 'chart-p95'));
  };
  const refreshDescribe = async () => {
    try {
      const d = await json(`/system/function/${encodeURIComponent(name)}`);
      describe.textContent = JSON.stringify(d, null, 2);
      triggers.replaceChildren(triggerTable(d.sedge?.triggers || []));
    } catch (e) { describe.textContent = e.message; }
  };
  const scaleForm = h('form', { id: 'scale', class: 'row', onsubmit: async ev => {
    ev.preventDefault();
    const replicas = Number(new FormData(ev.target).get('replicas'));
    try {
      await api(`/system/scale-function/${encodeURIComponent(name)}`, { method: 'POST',
        headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ serviceName: name, replicas }) });
      message.textContent = `Scaled ${name} to ${replicas}.`; message.className = '';
      poll(); refreshDescribe();
    } catch (e) { message.textContent = `Scale failed: ${e.message}`; message.className = 'error'; }
  } }, h('label', {}, 'Replicas ', h('input', { name: 'replicas', type: 'number', min: 0, value: 1, required: true })),
  h('button', { type: 'submit' }, 'Scale'));
  const removeButton = h('button', { type: 'button', class: 'danger', id: 'remove', onclick: async () => {
    if (removeButton.dataset.armed !== 'yes') {
      removeButton.dataset.armed = 'yes'; removeButton.textContent = `Really remove ${name}?`; return;
    }
    try {
      await api('/system/functions', { method: 'DELETE', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ functionName: name }) });
      await poll();
      location.hash = '#/functions';
    } catch (e) { message.textContent = `Remove failed: ${e.message}`; message.className = 'error'; }
  } }, 'Remove');
  const invokeForm = h('form', { id: 'invoke', onsubmit: ev => { ev.preventDefault(); invoke(ev.target); } },
    h('div', { class: 'row' },
      h('label', {}, 'Method ', h('select', { name: 'method' }, ['POST', 'GET', 'PUT', 'DELETE'].map(m => h('option', {}, m)))),
      h('label', {}, 'Path ', h('input', { name: 'path', placeholder: '/' }))),
    h('label', {}, 'Headers, one "Name: value" a line', h('textarea', { name: 'headers', rows: 2, placeholder: 'Content-Type: application/json' })),
    h('label', {}, 'Body', h('textarea', { name: 'body', rows: 4 })),
    h('button', { type: 'submit' }, 'Invoke'));
  async function invoke(form) {
    const data = new FormData(form);
    const headers = new Headers();
    for (const line of String(data.get('headers')).split('\n')) {
      if (!line.trim()) continue;
      const at = line.indexOf(':');
      if (at < 1) { out.replaceChildren(h('p', { class: 'error' }, `Header line ${JSON.stringify(line)}: expected "Name: value"`)); return; }
      try { headers.append(line.slice(0, at).trim(), line.slice(at + 1).trim()); }
      catch (e) { out.replaceChildren(h('p', { class: 'error' }, `Header ${JSON.stringify(line)}: ${e.message}`)); return; }
    }
    // The admin password goes only to functions that ask for a credential:
    // the node takes it out before they run. Others would see it.
    if (current?.sedge?.auth?.invoke && !headers.has('Authorization')) headers.set('Authorization', `Bearer ${credential}`);
    const method = data.get('method');
    const path = String(data.get('path') || '').replace(/^\/?/, '/');
    const began = performance.now();
    try {
      const resp = await fetch(`/function/${encodeURIComponent(name)}${path === '/' ? '' : path}`,
        { method, headers, body: method === 'GET' ? undefined : data.get('body'), credentials: 'omit', cache: 'no-store' });
      const text = await resp.text();
      const ms = performance.now() - began;
      out.replaceChildren(
        h('p', {}, 'Status ', h('strong', { id: 'invoke-status' }, resp.status), ` · ${ms.toFixed(1)} ms`),
        h('pre', { id: 'invoke-headers' }, [...resp.headers].map(([k, v]) => `${k}: ${v}`).join('\n')),
        h('pre', { id: 'invoke-body' }, text));
    } catch (e) { out.replaceChildren(h('p', { class: 'error' }, `The call failed: ${e.message}`)); }
    poll();
  }
  // Follows the function's log until the view is left.
  (async () => {
    try {
      const resp = await api(`/system/logs?name=${encodeURIComponent(name)}&follow=true&tail=200`, { signal: aborter.signal });
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let rest = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        rest += value;
        const lines = rest.split('\n'); rest = lines.pop();
        for (const line of lines) {
          if (!line) continue;
          try { const l = JSON.parse(line); logs.append(`${l.timestamp} ${l.instance} ${l.text}\n`); }
          catch { logs.append(line + '\n'); }
        }
        logs.scrollTop = logs.scrollHeight;
      }
    } catch (e) { if (e.name !== 'AbortError') logs.append(`(log stream ended: ${e.message})\n`); }
  })();
  render(); refreshDescribe();
  view.replaceChildren(head, message, charts,
    h('div', { class: 'card' }, h('h2', {}, 'Triggers'), triggers),
    h('div', { class: 'card' }, h('h2', {}, 'Invoke'), invokeForm, out),
    h('div', { class: 'card' }, h('h2', {}, 'Logs (following)'), logs),
    h('div', { class: 'card' }, h('h2', {}, 'Scale and remove'), scaleForm, h('p', {}, removeButton)),
    h('div', { class: 'card' }, h('h2', {}, 'Describe'), describe));
  // Describe (and the triggers' state in it) is read again with each poll.
  // Not once it is gone (removed here or elsewhere): its describe is a 404.
  const refresh = () => { render(); if (functions.some(f => f.name === name)) refreshDescribe(); };
  document.addEventListener('sedge:poll', refresh);
  return () => { document.removeEventListener('sedge:poll', refresh); aborter.abort(); };
}

// A function's triggers as describe gives them, with each one's state.
function triggerTable(list) {
  if (list.length === 0) return h('p', { class: 'muted' }, 'No triggers: only HTTP and queued calls run it.');
  const when = t => t ? new Date(t).toLocaleTimeString() : '–';
  return h('table', { id: 'trigger-list' },
    h('thead', {}, h('tr', {}, ['Kind', 'Topic, subject or schedule', 'Broker', 'State', 'Attempts', 'Last error',
      'Messages', 'Last message', 'Replies'].map(t => h('th', {}, t)))),
    h('tbody', {}, list.map(t => h('tr', { 'data-kind': t.kind },
      h('td', {}, t.kind), h('td', {}, h('code', {}, t.pattern)), h('td', {}, t.broker ?? '–'),
      h('td', { class: `trigger-state state-${(t.state || '').replace(' ', '-')}` }, t.state ?? '–'),
      h('td', { class: 'num' }, t.attempts ?? 0), h('td', { class: 'error' }, t.lastError ?? ''),
      h('td', { class: 'num trigger-messages' }, t.messages ?? 0), h('td', {}, when(t.lastMessage)),
      h('td', { class: 'num' }, t.replies ?? 0)))));
}

function deployView() {
  const progress = h('pre', { id: 'deploy-log' }), result = h('p', { id: 'deploy-result', role: 'status' });
  const form = h('form', { id: 'deploy', class: 'card', onsubmit: async ev => {
    ev.preventDefault();
    const data = new FormData(ev.target);
    const name = String(data.get('name')).trim(), file = data.get('archive');
    if (!file || !file.size) { result.textContent = 'Choose the tar.gz of a function folder.'; result.className = 'error'; return; }
    const button = ev.target.querySelector('button'); button.disabled = true;
    progress.textContent = ''; result.textContent = `Uploading ${file.name} (${file.size} bytes)…`; result.className = '';
    try {
      const resp = await api(`/system/bundles/${encodeURIComponent(name)}?wait=true&progress=true`,
        { method: 'PUT', headers: { 'Content-Type': 'application/gzip' }, body: file });
      let final = null;
      for (const line of (await resp.text()).split('\n')) {
        if (!line) continue;
        const v = JSON.parse(line);
        if (v.log !== undefined) progress.append(v.log + '\n'); else final = v;
      }
      if (final && final.status < 300) {
        result.replaceChildren(`Deployed ${name} (${final.status}). `, h('a', { href: `#/function/${encodeURIComponent(name)}` }, 'Open it'));
        poll();
      } else { result.textContent = `Deploy failed (${final?.status}): ${final?.error ?? 'no answer'}`; result.className = 'error'; }
    } catch (e) { result.textContent = `Deploy failed: ${e.message}`; result.className = 'error'; }
    button.disabled = false;
  } },
  h('h1', {}, 'Deploy'),
  h('p', {}, 'A tar.gz of a function folder (its sedge.toml at the top): ', h('code', {}, 'tar czf fn.tar.gz -C my-function .')),
  h('label', {}, 'Name ', h('input', { name: 'name', required: true })),
  h('label', {}, 'Archive ', h('input', { name: 'archive', type: 'file', accept: '.tar.gz,.tgz,application/gzip', required: true })),
  h('button', { type: 'submit' }, 'Deploy'));
  view.replaceChildren(form, result, progress);
  return () => {};
}

function callsView() {
  const table = h('div'), message = h('p', { role: 'status' });
  const filter = h('select', { id: 'calls-state', onchange: () => load() },
    h('option', { value: '' }, 'any state'), ['queued', 'running', 'done', 'failed'].map(s => h('option', {}, s)));
  async function load() {
    try {
      const q = filter.value ? `&state=${filter.value}` : '';
      const calls = await json(`/system/calls?limit=100${q}`);
      table.replaceChildren(calls.length === 0 ? h('p', { class: 'muted' }, 'No asynchronous calls.') :
        h('table', { id: 'calls' },
          h('thead', {}, h('tr', {}, ['Call', 'Function', 'State', 'Attempts', 'Accepted', 'Status', 'Seconds', 'Error', ''].map(t => h('th', {}, t)))),
          h('tbody', {}, calls.map(c => h('tr', {},
            h('td', {}, h('code', {}, c.id)), h('td', {}, c.function ?? c.kind),
            h('td', { class: `state-${c.state}` }, c.state), h('td', { class: 'num' }, c.attempts),
            h('td', {}, c.accepted_at ?? ''), h('td', { class: 'num' }, c.status ?? ''),
            h('td', { class: 'num' }, c.duration_seconds ?? ''), h('td', {}, c.error ?? ''),
            h('td', {}, c.state === 'failed' ? h('button', { type: 'button', onclick: () => retry(c.id) }, 'Retry') : ''))))));
    } catch (e) { table.replaceChildren(h('p', { class: 'error' }, e.message)); }
  }
  async function retry(id) {
    try { await api(`/system/calls/${encodeURIComponent(id)}/retry`, { method: 'POST' }); message.textContent = `Call ${id} queued again.`; }
    catch (e) { message.textContent = e.message; }
    load();
  }
  view.replaceChildren(h('h1', {}, 'Async calls'), h('p', {}, 'Show ', filter, ' (newest 100, refreshed live)'), message, table);
  load();
  document.addEventListener('sedge:poll', load);
  return () => document.removeEventListener('sedge:poll', load);
}

// GET /system/nodes answers 200 only on a node that can be clustered;
// `null` elsewhere (404), and the pages say "single node".
async function clusterNodes() {
  const resp = await api('/system/nodes', { raw: true });
  if (resp.status !== 200) return null;
  return resp.json();
}

function nodeView() {
  const info = h('pre', { id: 'node-info' }), cluster = h('p', { id: 'cluster' }, '…');
  view.replaceChildren(h('h1', {}, 'Node'),
    h('div', { class: 'card' }, h('h2', {}, 'Cluster'), cluster),
    h('div', { class: 'card' }, h('h2', {}, 'This node'), info));
  json('/system/info').then(v => { info.textContent = JSON.stringify(v, null, 2); }, e => { info.textContent = e.message; });
  clusterNodes().then(c => {
    if (c?.clustered) cluster.replaceChildren(`Clustered: ${c.nodes.length} node${c.nodes.length === 1 ? '' : 's'}. `, h('a', { href: '#/nodes' }, 'See them'), '.');
    else cluster.textContent = 'Single node: this node is not part of a cluster, so it is the only node there is.';
  }, e => { cluster.textContent = `Single node (the cluster could not be read: ${e.message}).`; });
  return () => {};
}

function nodesView() {
  const body = h('div', { id: 'nodes-view' });
  const load = async () => {
    let c;
    try { c = await clusterNodes(); } catch (e) { body.replaceChildren(h('p', { class: 'error' }, e.message)); return; }
    if (!c) { body.replaceChildren(h('p', { id: 'nodes-single' }, 'Single node: this node is not part of a cluster.')); return; }
    const seen = t => t ? new Date(t).toLocaleTimeString() : '–';
    body.replaceChildren(
      h('p', {}, c.clustered ? `${c.nodes.length} node${c.nodes.length === 1 ? '' : 's'} in the cluster, refreshed live.` : 'Single node: not clustered.'),
      h('table', { id: 'nodes' },
        h('thead', {}, h('tr', {}, ['Name', 'Labels', 'Address', 'Functions', 'In flight', 'Capacity', 'Last seen'].map(t => h('th', {}, t)))),
        h('tbody', {}, (c.nodes || []).map(n => h('tr', { 'data-node': n.name },
          h('td', {}, n.name), h('td', {}, (n.labels || []).join(', ')), h('td', {}, h('code', {}, n.address ?? '')),
          h('td', {}, (n.functions || []).join(', ')), h('td', { class: 'num' }, n.inflight ?? ''),
          h('td', { class: 'num' }, n.capacity ?? ''), h('td', {}, seen(n.lastSeen)))))));
  };
  view.replaceChildren(h('h1', {}, 'Nodes'), body);
  load();
  document.addEventListener('sedge:poll', load);
  return () => document.removeEventListener('sedge:poll', load);
}

function route() {
  if (!credential) return;
  leave();
  const hash = location.hash || '#/functions';
  for (const a of document.querySelectorAll('#nav a')) {
    const href = a.getAttribute('href');
    a.classList.toggle('active', hash === href || hash.startsWith(`${href}/`));
  }
  const fn = hash.match(/^#\/function\/(.+)$/);
  if (fn) leave = functionView(decodeURIComponent(fn[1]));
  else if (hash === '#/deploy') leave = deployView();
  else if (hash === '#/calls') leave = callsView();
  else if (hash === '#/node') leave = nodeView();
  else if (hash === '#/nodes') leave = nodesView();
  else leave = functionsView();
}

window.addEventListener('hashchange', route);
logout('');
