// Loads a page in Debian's Chromium, headless, driven by playwright-core:
// `node browser.js <page url> <Sluice URL> <expected event requests>` waits until Sluice
// answered that many event requests (POST to /v1/t|i|p|… or /e/), then exits 0 —
// 1 on a deadline, a page error or a non-200 answer from Sluice.
// Run by tests/test_sdk_browser.py.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const [pageUrl, sluiceUrl, expectedArg] = process.argv.slice(2);
const expected = Number(expectedArg);
const DEADLINE_MS = 30000;
const EVENT_PATH = /^\/(v1\/[a-z]+|e\/?|i\/v0\/e\/?)$/; // not /flags/, /decide/

(async () => {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run'],
  });
  const answered = [];
  const problems = [];
  try {
    const page = await context.newPage();
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    page.on('console', (msg) => {
      if (process.env.SDK_DEBUG) console.error(`console.${msg.type()}: ${msg.text()}`);
      if (msg.type() === 'error') problems.push(`console: ${msg.text()}`);
    });
    page.on('requestfailed', (req) => problems.push(`failed: ${req.method()} ${req.url()} ${req.failure() && req.failure().errorText}`));
    const done = new Promise((resolve) => {
      page.on('response', (res) => {
        const req = res.request();
        if (process.env.SDK_DEBUG) console.error(`${res.status()} ${req.method()} ${res.url()}`);
        const where = new URL(res.url()).pathname;
        if (res.status() >= 400) problems.push(`${res.status()} ${req.method()} ${res.url()}`);
        if (!res.url().startsWith(sluiceUrl) || req.method() !== 'POST' || !EVENT_PATH.test(where)) return;
        answered.push(`${res.status()} ${where}`);
        if (res.status() !== 200 && res.status() < 400) problems.push(`sluice answered ${res.status()} to ${res.url()}`);
        if (answered.length >= expected) resolve();
      });
    });
    await page.goto(pageUrl);
    const timer = new Promise((resolve) => setTimeout(resolve, DEADLINE_MS, 'deadline'));
    if ((await Promise.race([done, timer])) === 'deadline') {
      problems.push(`deadline: ${answered.length} of ${expected} event requests answered`);
    }
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  console.log(JSON.stringify({ answered, problems }));
  process.exit(problems.length ? 1 : 0);
})().catch((err) => {
  console.error('ERR', err);
  process.exit(1);
});
