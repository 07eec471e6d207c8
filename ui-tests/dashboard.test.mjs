// Drives the dashboard in Debian's headless Chromium against a real node:
// log in, deploy a folder archive, invoke, watch the count and the chart
// change, read the logs, scale to zero, see a function's triggers, the
// async calls and the node (and the cluster's nodes where the node has
// them), remove. Starts the `sedge` binary itself (SEDGE_BIN, or the debug build
// under CARGO_TARGET_DIR / ../target). With SEDGE_UI_SCREENSHOTS=DIR, keeps a
// screenshot of each page there (docs/dashboard/ holds the kept ones).
//
// Ends with one line `browser: N passed, M failed` (or `browser: skipped
// (WHY)`), which scripts/test.sh adds to its summary.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.SEDGE_CHROMIUM || '/usr/bin/chromium';
const BIN = process.env.SEDGE_BIN ||
  join(process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(here, '..', 'target'), 'debug', 'sedge');
const PASSWORD = 'dashboard-test-password';
const FUNCTION = 'ui-hello';
const shots = process.env.SEDGE_UI_SCREENSHOTS ? resolve(process.env.SEDGE_UI_SCREENSHOTS) : null;

function skip(why) {
  console.log(`browser: skipped (${why})`);
  process.exit(0);
}

if (!existsSync(CHROMIUM)) skip(`no Chromium at ${CHROMIUM}: install Debian's chromium package`);
let chromium;
try { ({ chromium } = await import('playwright-core')); }
catch { skip('playwright-core is not installed: run `npm ci` in ui-tests/'); }
if (!existsSync(BIN)) { console.error(`no sedge binary at ${BIN}: build it or set SEDGE_BIN`); console.log('browser: 0 passed, 1 failed'); process.exit(1); }

const work = mkdtempSync(join(tmpdir(), 'sedge-ui-'));
const data = join(work, 'data');
const folder = join(work, 'fn');
mkdirSync(folder);
writeFileSync(join(folder, 'sedge.toml'), `name = "${FUNCTION}"
runtime = "node"
handler = "handler.handle"
style = "sedge"

[scale]
min = 0
max = 2
concurrency = 1
idle = "2m"
`);
writeFileSync(join(folder, 'handler.js'), `'use strict';
exports.handle = (req) => {
  let name = 'world';
  try { name = req.json()?.name ?? name; } catch { /* no JSON body */ }
  console.error('handled ' + name);
  return { message: 'Hello, ' + name + '!' };
};
`);
const archive = join(work, `${FUNCTION}.tar.gz`);
execFileSync('tar', ['czf', archive, '-C', folder, '.']);

// A function run by triggers: a cron schedule every second, and an MQTT
// filter on a node started without a broker (its state says so).
const TICK = 'ui-tick';
const tickFolder = join(work, 'tick');
mkdirSync(tickFolder);
writeFileSync(join(tickFolder, 'sedge.toml'), `name = "${TICK}"
runtime = "node"
handler = "handler.handle"
style = "sedge"

[[triggers]]
cron = "* * * * * *"

[[triggers]]
mqtt = "sensors/+/temperature"
`);
writeFileSync(join(tickFolder, 'handler.js'), `'use strict';
exports.handle = () => ({ ticked: true });
`);
const tickArchive = join(work, `${TICK}.tar.gz`);
execFileSync('tar', ['czf', tickArchive, '-C', tickFolder, '.']);

// The node, with the password the page logs in with.
const node = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--data', data, '--spares', 'false'], {
  env: { ...process.env, SEDGE_ADMIN_PASSWORD: PASSWORD, SEDGE_LOG: 'warn' },
  stdio: ['ignore', 'pipe', 'inherit'],
});
const url = await new Promise((ok, fail) => {
  const lines = createInterface({ input: node.stdout });
  lines.once('line', line => ok(line.replace(/^sedge listening on /, '').trim()));
  node.once('exit', code => fail(new Error(`sedge serve exited with ${code} before listening`)));
});

async function admin(method, path, body, headers = {}) {
  return fetch(url + path, { method, body, headers: { Authorization: `Bearer ${PASSWORD}`, ...headers } });
}

const userData = mkdtempSync(join(tmpdir(), 'sedge-ui-chromium-'));
const context = await chromium.launchPersistentContext(userData, {
  executablePath: CHROMIUM,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 900 },
});
const page = context.pages()[0] || await context.newPage();
const problems = [];
page.on('pageerror', e => problems.push(`page error: ${e.message}`));
// The wrong password's 401 is logged by the browser as a failed load; it
// is expected, as is the 404 of /system/nodes on a node that cannot cluster.
page.on('console', m => {
  const expected = m.text().includes('status of 401') ||
    (m.text().includes('status of 404') && (m.location().url || '').includes('/system/nodes'));
  if (m.type() === 'error' && !expected) problems.push(`console: ${m.text()}`);
});

let passed = 0, failed = 0;
async function step(name, body) {
  if (failed) { console.log(`- ${name}: not run (an earlier step failed)`); return; }
  try {
    await body();
    if (problems.length) throw new Error(problems.splice(0).join('; '));
    passed++; console.log(`ok ${name}`);
  } catch (e) {
    failed++; console.log(`FAILED ${name}: ${e.stack || e}`);
    if (shots) await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  }
}
async function shot(name) {
  if (shots) await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}
function check(cond, what) { if (!cond) throw new Error(what); }
const text = sel => page.locator(sel).innerText();

try {
  await step('the page loads from the node and asks for the password', async () => {
    const resp = await page.goto(`${url}/ui/`);
    check(resp.status() === 200, `GET /ui/ answered ${resp.status()}`);
    check((resp.headers()['content-security-policy'] || '').includes("script-src 'self'"), 'no Content-Security-Policy');
    await page.locator('#login').waitFor({ state: 'visible' });
    check(await page.locator('#nav').isHidden(), 'navigation shown before logging in');
  });

  await step('a wrong password is refused, the right one logs in', async () => {
    await page.fill('#login [name=password]', 'not-the-password');
    await page.click('#login button');
    await page.locator('#login-error', { hasText: 'Wrong password' }).waitFor();
    await shot('login');
    await page.fill('#login [name=password]', PASSWORD);
    await page.click('#login button');
    await page.locator('#nav').waitFor({ state: 'visible' });
    await page.locator('text=No functions yet').waitFor();
    check(!page.url().includes(PASSWORD), 'the password is in the URL');
  });

  await step('deploy from an uploaded folder archive', async () => {
    await page.click('text=Deploy');
    await page.fill('#deploy [name=name]', FUNCTION);
    await page.setInputFiles('#deploy [name=archive]', archive);
    await page.click('#deploy button');
    await page.locator('#deploy-result', { hasText: `Deployed ${FUNCTION}` }).waitFor({ timeout: 60000 });
    await shot('deploy');
    const resp = await admin('GET', `/system/function/${FUNCTION}`);
    check(resp.status === 200, `the node does not have the function: ${resp.status}`);
  });

  await step('the functions page lists it with no invocations', async () => {
    await page.click('#nav >> text=Functions');
    const row = page.locator(`tr[data-function="${FUNCTION}"]`);
    await row.waitFor();
    check((await row.locator('.invocations').innerText()) === '0', 'invocations are not 0');
  });

  await step('invoke: the answer with its status and time', async () => {
    await page.click(`a[href="#/function/${FUNCTION}"]`);
    await page.locator('#invoke').waitFor();
    await page.fill('#invoke [name=headers]', 'Content-Type: application/json');
    await page.fill('#invoke [name=body]', '{"name": "dashboard"}');
    await page.click('#invoke button');
    await page.locator('#invoke-status').waitFor({ timeout: 60000 });
    check((await text('#invoke-status')) === '200', `status ${await text('#invoke-status')}`);
    check((await text('#invoke-body')).includes('Hello, dashboard!'), `body ${await text('#invoke-body')}`);
    check(/· [0-9.]+ ms/.test(await text('#invoke-answer')), 'no time shown');
  });

  await step('the count and the chart change with more calls', async () => {
    for (let i = 0; i < 5; i++) {
      await page.click('#invoke button');
      await page.waitForFunction(() => document.querySelector('#invoke-status')?.textContent === '200');
    }
    await page.waitForFunction(n => Number(document.querySelector('#function-invocations')?.textContent) >= n, 6, { timeout: 15000 });
    // A sample after the calls shows a rate above zero and a latency.
    await page.waitForFunction(() => Number(document.querySelector('#chart-rate')?.dataset.last) > 0 ||
      [...document.querySelectorAll('#chart-rate')].some(s => s.querySelector('path.line')), null, { timeout: 15000 });
    await page.waitForFunction(() => document.querySelector('#chart-mean path.line'), null, { timeout: 15000 });
    const stats = await (await admin('GET', '/system/stats')).json();
    check(stats.functions[FUNCTION].count >= 6, `stats count ${stats.functions[FUNCTION].count}`);
  });

  await step('the logs follow what the function wrote', async () => {
    await page.locator('#logs', { hasText: 'handled dashboard' }).waitFor({ timeout: 15000 });
    const before = (await text('#logs')).split('handled dashboard').length;
    await page.click('#invoke button');
    await page.waitForFunction(n => document.querySelector('#logs').textContent.split('handled dashboard').length > n, before, { timeout: 15000 });
    await page.locator('#describe', { hasText: '"name": "ui-hello"' }).waitFor();
    await shot('function');
  });

  await step('scale to zero', async () => {
    await page.fill('#scale [name=replicas]', '0');
    await page.click('#scale button');
    await page.locator('#function-message', { hasText: 'Scaled' }).waitFor();
    await page.locator('#function-state', { hasText: 'scaled to zero' }).waitFor({ timeout: 15000 });
    check((await text('#function-replicas')) === '0/0', `replicas ${await text('#function-replicas')}`);
    const f = await (await admin('GET', `/system/function/${FUNCTION}`)).json();
    check(f.replicas === 0, `the node says ${f.replicas} replicas`);
    await page.click('#nav >> text=Functions');
    await page.locator(`tr[data-function="${FUNCTION}"] .replicas`, { hasText: '0/0' }).waitFor();
    await page.waitForTimeout(2500);
    await shot('functions');
  });

  await step("a function's page shows its triggers' state", async () => {
    const deployed = await admin('PUT', `/system/bundles/${TICK}?wait=true`, readFileSync(tickArchive),
      { 'Content-Type': 'application/gzip' });
    check(deployed.status < 300, `deploying ${TICK} answered ${deployed.status}: ${await deployed.text()}`);
    await page.goto(`${url}/ui/#/function/${TICK}`);
    await page.locator('#trigger-list').waitFor({ timeout: 15000 });
    await page.locator('#trigger-list tr[data-kind="cron"] .trigger-state', { hasText: 'scheduled' }).waitFor();
    await page.locator('#trigger-list tr[data-kind="mqtt"] .trigger-state', { hasText: 'no broker' }).waitFor();
    // The schedule fires every second: its count goes up on the page.
    await page.waitForFunction(() =>
      Number(document.querySelector('#trigger-list tr[data-kind="cron"] .trigger-messages')?.textContent) >= 2,
    null, { timeout: 20000 });
    await shot('triggers');
    const removed = await admin('DELETE', '/system/functions', JSON.stringify({ functionName: TICK }),
      { 'Content-Type': 'application/json' });
    check(removed.status < 300, `removing ${TICK} answered ${removed.status}`);
  });

  await step('async calls with their state', async () => {
    const resp = await fetch(`${url}/async-function/${FUNCTION}`, { method: 'POST', body: '{"name": "later"}',
      headers: { 'Content-Type': 'application/json' } });
    check(resp.status === 202, `async submit answered ${resp.status}`);
    const { id } = await resp.json();
    await page.click('#nav >> text=Async calls');
    // The list holds the cron trigger's calls too: find this one by its id.
    await page.locator(`#calls tr:has(code:text-is("${id}")) td.state-done`).waitFor({ timeout: 60000 });
    await shot('calls');
  });

  await step('the node page: single node, or the cluster\'s nodes where /system/nodes answers', async () => {
    const nodes = await admin('GET', '/system/nodes');
    await page.click('#nav >> text=Node');
    await page.locator('#node-info', { hasText: '"provider"' }).waitFor();
    if (nodes.status !== 200) {
      await page.locator('#cluster', { hasText: 'Single node' }).waitFor();
      check(await page.locator('#nav-nodes').isHidden(), 'a Nodes view is offered where /system/nodes answers 404');
      await shot('node');
      return;
    }
    const cluster = await nodes.json();
    await shot('node');
    await page.locator('#nav-nodes').waitFor({ state: 'visible' });
    await page.click('#nav-nodes');
    if (cluster.clustered) {
      await page.locator('#nodes tbody tr').first().waitFor();
      const rows = await page.locator('#nodes tbody tr').count();
      check(rows === cluster.nodes.length, `${rows} rows for ${cluster.nodes.length} nodes`);
    } else {
      await page.locator('#nodes-view', { hasText: 'Single node' }).waitFor();
    }
    await shot('nodes');
  });

  await step('remove, after a second click', async () => {
    await page.goto(`${url}/ui/#/function/${FUNCTION}`);
    await page.reload();
    // A reload forgets the password: the page asks again.
    await page.locator('#login').waitFor({ state: 'visible' });
    await page.fill('#login [name=password]', PASSWORD);
    await page.click('#login button');
    await page.locator('#remove').waitFor();
    await page.click('#remove');
    check((await admin('GET', `/system/function/${FUNCTION}`)).status === 200, 'removed on the first click');
    await page.click('#remove');
    await page.locator('text=No functions yet').waitFor({ timeout: 15000 });
    check((await admin('GET', `/system/function/${FUNCTION}`)).status === 404, 'the function is still there');
  });

  await step('another origin cannot use the management API', async () => {
    const resp = await admin('DELETE', '/system/functions', '{"functionName": "x"}',
      { 'Content-Type': 'application/json', Origin: 'http://elsewhere.example' });
    check(resp.status === 403, `cross-origin request answered ${resp.status}`);
  });
} finally {
  await context.close().catch(() => {});
  node.kill('SIGTERM');
  await new Promise(ok => { if (node.exitCode !== null) ok(); else node.once('exit', ok); });
  rmSync(work, { recursive: true, force: true });
  rmSync(userData, { recursive: true, force: true });
}
console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
