// Times the dashboard against a running server: `node dash_timing.js URL KEY`.
// Prints, for the default range and for 30 days, the ms from pressing Enter (or choosing
// the range) to the first panel with numbers and to every overview panel settled.
'use strict';
const { chromium } = require('playwright-core');
const [url, key] = process.argv.slice(2);
(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run'],
  });
  const page = await (await browser.newContext()).newPage();
  await page.goto(url + '/dashboard/');
  const watch = async (label, act) => {
    const t0 = Date.now();
    await act();
    await page.waitForFunction(() => [...document.querySelectorAll('#view-overview [data-panel]')]
      .some((p) => p.dataset.state === 'ready'), null, { timeout: 120000 });
    const first = Date.now() - t0;
    await page.waitForFunction(() => {
      const ps = [...document.querySelectorAll('#view-overview [data-panel]')];
      return ps.length > 0 && ps.every((p) => p.dataset.state && p.dataset.state !== 'loading');
    }, null, { timeout: 120000 });
    const states = await page.evaluate(() => [...document.querySelectorAll('#view-overview [data-panel]')]
      .map((p) => p.dataset.state));
    console.log(JSON.stringify({ label, first_ms: first, all_ms: Date.now() - t0, states }));
  };
  await watch('sign-in (default range)', async () => { await page.fill('#key', key); await page.press('#key', 'Enter'); });
  for (const range of ['7d', '30d', '24h']) {
    await watch(`range ${range}`, async () => {
      await page.evaluate(() => document.querySelectorAll('#view-overview [data-panel]').forEach((p) => { p.dataset.state = 'loading'; }));
      await page.selectOption('#range', range);
    });
  }
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
