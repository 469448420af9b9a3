#!/usr/bin/env node
// The web chat (examples/web-chat) in headless Chromium against a running tern: two pages log
// in as two users over WebSocket, the first sends a direct message and a group message that
// the second page shows (sender: the first user), the second replies and the first page shows
// the reply. A wrong password is refused on the login form first.
//
//   node web_chat.js WS_URL USER1 PASSWORD1 USER2 PASSWORD2 GROUP
//
// e.g. `node web_chat.js ws://127.0.0.1:8083/mqtt alice alice-pw bob bob-pw friends`; the
// users and the group (with both as members) must exist. Serves the page itself on a free
// port and runs /usr/bin/chromium (or $CHROMIUM) through playwright-core. Prints each step and
// what the pages show; exits 0 on success, 1 with the reason and screenshots on failure, 2 on
// the overall timeout. Run by conformance/tests/js_clients.rs.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');
const webChat = require('../../examples/web-chat/server.js');

/** How long any one expected event may take. */
const EVENT_TIMEOUT_MS = 15_000;
/** The whole run, Chromium's start included. */
const RUN_TIMEOUT_MS = 90_000;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
/** Headless, and nothing that talks to the network on its own (a closed network refuses it). */
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const [wsUrl, user1, password1, user2, password2, group] = process.argv.slice(2);
if (!group) {
  console.error('usage: node web_chat.js WS_URL USER1 PASSWORD1 USER2 PASSWORD2 GROUP');
  process.exit(64);
}

let browser = null;
let server = null;
const pages = {}; // user -> Page, for the screenshots

const watchdog = setTimeout(
  () => fail(new Error(`not done within ${RUN_TIMEOUT_MS} ms`), 2),
  RUN_TIMEOUT_MS,
);

let currentStep = 'start';
function step(text) {
  currentStep = text;
  console.log(`step: ${text}`);
}

/** Opens the page in a fresh browser context (its own storage) for `user`. */
async function open(baseUrl, user) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(EVENT_TIMEOUT_MS);
  page.on('console', (m) => console.log(`[${user} console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => fail(new Error(`uncaught error in ${user}'s page: ${e.message}`), 1));
  pages[user] = page;
  await page.goto(baseUrl);
  return page;
}

async function login(page, user, password) {
  await page.fill('#url', wsUrl);
  await page.fill('#user', user);
  await page.fill('#password', password);
  await page.click('#connect');
}

/** Logs in and waits until the inbox is subscribed and replayed. */
async function loginReady(page, user, password) {
  step(`${user} logs in`);
  await login(page, user, password);
  await page.waitForSelector('body[data-state="ready"]');
  if (await page.isVisible('#login')) throw new Error(`${user}: the login form is still shown`);
  console.log(`${user}: ${await page.textContent('#status')}`);
}

async function send(page, kind, to, text) {
  await page.selectOption('#kind', kind);
  await page.fill('#to', to);
  await page.fill('#text', text);
  await page.click('#send-button');
}

/** Waits until `page`'s inbox shows a message of `kind` from `from` with `text`. */
async function expectMessage(page, who, kind, from, text) {
  const row = page
    .locator(`#inbox li[data-kind="${kind}"][data-from="${from}"]`)
    .filter({ has: page.locator('.text', { hasText: text }) });
  await row.first().waitFor({ timeout: EVENT_TIMEOUT_MS });
  console.log(`${who} sees: ${(await row.first().innerText()).replace(/\s+/g, ' ').trim()}`);
}

async function dumpInbox(page, user) {
  const rows = await page.$$eval('#inbox li', (lis) =>
    lis.map((li) => {
      const { seq, kind, from, peer } = li.dataset;
      return `${seq} ${kind} ${from} ${peer}: ${li.querySelector('.text').textContent}`;
    }),
  );
  console.log(`${user} inbox (seq kind from peer: text):`);
  for (const row of rows) console.log(`  ${row}`);
}

async function main() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: run scripts/setup.sh (or set $CHROMIUM)`);
  }
  server = await webChat.start(0);
  const baseUrl = `http://127.0.0.1:${server.address().port}/`;
  step(`page served on ${baseUrl}; broker ${wsUrl}`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: CHROMIUM_ARGS,
    timeout: 30_000,
  });
  step(`Chromium ${browser.version()} started`);

  const p1 = await open(baseUrl, user1);
  const p2 = await open(baseUrl, user2);

  step(`${user2} logs in with a wrong password`);
  await login(p2, user2, `${password2}-wrong`);
  await p2.waitForSelector('body[data-state="error"]');
  const refused = await p2.textContent('#status');
  console.log(`${user2}: ${refused}`);
  if (!/bad user ?name or password/i.test(refused)) {
    throw new Error(`wrong password: status "${refused}", expected a refusal`);
  }

  await loginReady(p1, user1, password1);
  await loginReady(p2, user2, password2);

  step(`${user1} sends a direct message to ${user2}`);
  const dm = `hello ${user2}, from the browser`;
  await send(p1, 'dm', user2, dm);
  await expectMessage(p2, user2, 'dm', user1, dm);
  await expectMessage(p1, user1, 'sent', user1, dm);

  step(`${user2}'s page reported it read: ${user1} sees the receipt`);
  await p1.locator('#inbox li[data-kind="sent"][data-read="true"]').first().waitFor();

  step(`${user1} recalls it: both pages empty it`);
  await p1.locator('#inbox li[data-kind="sent"] button.recall').first().click();
  await p2.locator('#inbox li[data-kind="dm"][data-recalled="true"]').first().waitFor();
  await p1.locator('#inbox li[data-kind="sent"][data-recalled="true"]').first().waitFor();

  step(`${user1} sends a message to group ${group}`);
  const gm = `hello ${group}`;
  await send(p1, 'group', group, gm);
  await expectMessage(p2, user2, 'group', user1, gm);
  await expectMessage(p1, user1, 'group', user1, gm);

  step(`${user2} replies`);
  const reply = `hi ${user1}, got it`;
  await send(p2, 'dm', user1, reply);
  await expectMessage(p1, user1, 'dm', user2, reply);

  await dumpInbox(p1, user1);
  await dumpInbox(p2, user2);
}

/** Saves a screenshot of every page; returns their paths. */
async function screenshots() {
  const saved = [];
  for (const [user, page] of Object.entries(pages)) {
    const file = path.join(os.tmpdir(), `tern-web-chat-${process.pid}-${user}.png`);
    try {
      await page.screenshot({ path: file, fullPage: true, timeout: 5_000 });
      saved.push(file);
    } catch (e) {
      console.error(`(no screenshot of ${user}'s page: ${e.message})`);
    }
  }
  return saved;
}

async function cleanUp() {
  if (browser) await browser.close().catch(() => {});
  if (server) {
    server.close();
    server.closeAllConnections();
  }
}

let failing = false;
async function fail(err, code) {
  if (failing) return;
  failing = true;
  // Screenshots and closing Chromium get 20 s; then exit regardless.
  setTimeout(() => process.exit(code), 20_000).unref();
  console.error(`FAIL at step "${currentStep}": ${err.message}`);
  for (const file of await screenshots()) console.error(`screenshot: ${file}`);
  for (const [user, page] of Object.entries(pages)) {
    await dumpInbox(page, user).catch(() => {});
  }
  await cleanUp();
  process.exit(code);
}

main().then(
  async () => {
    if (failing) return; // an uncaught page error is failing the run
    clearTimeout(watchdog);
    await cleanUp();
    console.log('ALL OK');
  },
  (err) => fail(err, 1),
);
