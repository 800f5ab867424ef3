// Drives Sluice's dashboard in Debian's Chromium, headless, with playwright-core:
// `node dashboard.js <config.json>` walks every view as a user would (sign in with a
// wrong, a revoked, project A's and project B's key; overview, range, bots toggle, live
// tail, person, instance), saves a screenshot of each, and prints one JSON report of what
// the page showed. Every request to anything but the Sluice origin is blocked and
// counted. tests/test_dashboard.py runs it and compares the report with the API.
//
// config: {url, artifacts, keys: {a, b, wrong, revoked}, token_a, person, live_event}
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const origin = new URL(config.url).origin;
const WAIT = { timeout: 20000 };

(async () => {
  const report = { requests: [], blocked: [], problems: [], screenshots: [] };
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run', '--disable-sync'],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    // The network to anything but Sluice is cut: each attempt is counted, then refused.
    await context.route('**/*', (route) => {
      const url = route.request().url();
      if (new URL(url).origin === origin) return route.continue();
      report.blocked.push(url);
      return route.abort('blockedbyclient');
    });
    const page = await context.newPage();
    page.on('request', (req) => report.requests.push(req.url()));
    page.on('pageerror', (err) => report.problems.push(`page error: ${err.message}`));
    page.on('console', (msg) => {
      // A 4xx the page asked for (a wrong key, a parameter the server lacks) is logged
      // by Chromium as "Failed to load resource"; anything else (a CSP refusal, an
      // exception) is a problem.
      if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) {
        report.problems.push(`console: ${msg.text()}`);
      }
    });

    const shot = async (name) => {
      const file = path.join(config.artifacts, `${name}.png`);
      await page.screenshot({ path: file, fullPage: true });
      report.screenshots.push(file);
    };

    // Every panel of a view has left "loading" (ready, empty or error).
    const settled = (scope) => page.waitForFunction((sel) => {
      const panels = [...document.querySelectorAll(`${sel} [data-panel]`)];
      return panels.length > 0 && panels.every((p) => p.dataset.state && p.dataset.state !== 'loading');
    }, scope, WAIT);

    const overview = () => page.evaluate(() => {
      const view = document.getElementById('view-overview');
      const fields = {};
      for (const el of view.querySelectorAll('[data-field]')) fields[el.dataset.field] = el.dataset.value;
      const panels = {};
      for (const p of view.querySelectorAll('[data-panel]')) {
        panels[p.id] = { state: p.dataset.state, text: p.querySelector('.body').innerText };
      }
      const tops = {};
      for (const t of view.querySelectorAll('table.top')) {
        tops[t.dataset.by] = [...t.querySelectorAll('tbody tr')]
          .map((r) => [r.dataset.value, Number(r.dataset.events), Number(r.dataset.users)]);
      }
      const chartRows = [...view.querySelectorAll('.as-table tbody tr')]
        .map((r) => [...r.cells].map((c) => c.textContent));
      return {
        since: view.dataset.since,
        until: view.dataset.until,
        project: document.getElementById('project-name').textContent,
        fields, panels, tops, chartRows,
        chartBars: view.querySelectorAll('svg.chart rect.bar-events').length,
        text: document.body.innerText,
      };
    });

    const signIn = async (key) => {
      await page.fill('#key', key);
      await page.press('#key', 'Enter');
    };

    const signInError = async (key) => {
      await signIn(key);
      await page.waitForSelector('#signin-error:not([hidden])', WAIT);
      const text = await page.textContent('#signin-error');
      await page.evaluate(() => { document.getElementById('signin-error').hidden = true; });
      return text;
    };

    // 1. `/` redirects to the dashboard; wrong and revoked keys get a clear message.
    await page.goto(`${origin}/`);
    report.landed = page.url();
    await shot('01-signin');
    report.wrong_key = await signInError(config.keys.wrong);
    report.revoked_key = await signInError(config.keys.revoked);
    await page.evaluate(() => { document.getElementById('signin-error').hidden = false; });
    await shot('02-signin-revoked-key');

    // 2. Project A: the overview for the last 24 hours, then 7 days, then with bots.
    const started = Date.now();
    await signIn(config.keys.a);
    await page.waitForSelector('#view-overview:not([hidden])', WAIT);
    await settled('#view-overview');
    report.a_ready_ms = Date.now() - started;
    report.a_24h = await overview();
    await shot('03-overview-a-24h');

    const reload = async (action) => {
      const before = await page.getAttribute('#view-overview', 'data-until');
      await action();
      await page.waitForFunction((b) => document.getElementById('view-overview').dataset.until !== b, before, WAIT);
      await settled('#view-overview');
    };
    await reload(() => page.selectOption('#range', '7d'));
    report.a_7d = await overview();
    await shot('04-overview-a-7d');
    await reload(() => page.check('#bots'));
    report.a_bots = await overview();
    await shot('05-overview-a-bots');
    await reload(() => page.uncheck('#bots'));
    // A custom range (UTC inputs): from two days ago to this minute.
    await reload(async () => {
      await page.selectOption('#range', 'custom');
      await settled('#view-overview');
    });
    const stamp = (ms) => new Date(ms).toISOString().slice(0, 16);
    const now = Date.now();
    await page.fill('#from', stamp(now - 2 * 86400000));
    await reload(async () => {
      await page.fill('#to', stamp(now));
      await page.press('#to', 'Enter');
    });
    report.a_custom = await overview();
    await shot('05b-overview-a-custom');
    await reload(() => page.selectOption('#range', '24h'));

    // 3. The live tail, reached with the keyboard: an event sent now appears by itself.
    let tabs = 0;
    await page.focus('#main');
    await page.evaluate(() => document.activeElement.blur());
    while (tabs < 40) {
      await page.keyboard.press('Tab');
      tabs += 1;
      const on = await page.evaluate(() => document.activeElement && document.activeElement.getAttribute('href'));
      if (on === '#live') break;
    }
    report.tabs_to_live = tabs;
    await page.keyboard.press('Enter');
    await page.waitForSelector('#view-live:not([hidden])', WAIT);
    await settled('#view-live');
    report.live_before = await page.$$eval('#live-list li.event', (els) => els.map((e) => e.dataset.event));
    const sentAt = Date.now();
    const answer = await fetch(`${origin}/api/v1/ingest/events`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token: config.token_a, events: [{
        event: config.live_event, timestamp: new Date().toISOString(), userId: 'live-user',
        properties: { plan: 'pro', answer: 42 },
      }] }),
    });
    report.live_post_status = answer.status;
    const row = `#live-list li.event[data-event="${config.live_event}"]`;
    await page.waitForSelector(row, WAIT);
    report.live_appeared_ms = Date.now() - sentAt;
    await page.click(`${row} summary`);
    report.live_properties = await page.textContent(`${row} pre.props`);
    report.live_after = await page.$$eval('#live-list li.event', (els) => els.map((e) => e.dataset.event));
    await shot('06-live-a');

    // 4. A person, opened from the tail.
    await page.click(`#live-list li.event a.person >> text="${config.person}"`);
    await page.waitForSelector('#view-person:not([hidden])', WAIT);
    await settled('#view-person');
    report.person = await page.evaluate(() => {
      const view = document.getElementById('view-person');
      const fields = {};
      for (const el of view.querySelectorAll('[data-field]')) fields[el.dataset.field] = el.dataset.value;
      return {
        hash: location.hash,
        title: document.getElementById('person-title').textContent,
        state: document.getElementById('p-person').dataset.state,
        fields,
        timeline: [...view.querySelectorAll('#person-events li.event')].map((e) => e.dataset.event),
        ids: [...view.querySelectorAll('dl.facts a.person')].map((a) => [a.textContent, a.getAttribute('href')]),
        text: view.innerText,
      };
    });
    await shot('07-person-a');

    // 5. The instance: /healthz, /metrics (two scrapes for rates), the dead-letter figures.
    await page.click('#nav a[href="#instance"]');
    await page.waitForSelector('#view-instance:not([hidden])', WAIT);
    await page.waitForFunction(() => {
      const el = document.querySelector('#p-rates [data-field="accepted_rate"]');
      return el && el.dataset.value !== '';
    }, null, WAIT);
    await settled('#view-instance');
    report.instance = await page.evaluate(() => {
      const fields = {};
      for (const el of document.querySelectorAll('#view-instance [data-field]')) fields[el.dataset.field] = el.dataset.value;
      const states = {};
      for (const p of document.querySelectorAll('#view-instance [data-panel]')) states[p.id] = p.dataset.state;
      return { fields, states };
    });
    await shot('08-instance');

    report.session_storage = await page.evaluate(() => Object.keys(sessionStorage));
    report.key_in_storage = await page.evaluate((k) => sessionStorage.getItem('sluice.readKey') === k, config.keys.a);
    report.local_storage = await page.evaluate(() => Object.keys(localStorage).length);

    // 6. Project B's key in the same tab: none of A's data.
    await page.click('#signout');
    await page.waitForSelector('#view-signin:not([hidden])', WAIT);
    report.after_signout_storage = await page.evaluate(() => Object.keys(sessionStorage));
    await page.evaluate(() => { location.hash = '#overview'; });
    await signIn(config.keys.b);
    await page.waitForSelector('#view-overview:not([hidden])', WAIT);
    await settled('#view-overview');
    report.b_24h = await overview();
    await shot('09-overview-b');
    await page.evaluate((p) => { location.hash = `#person/${encodeURIComponent(p)}`; }, config.person);
    await page.waitForSelector('#view-person:not([hidden])', WAIT);
    await settled('#view-person');
    report.b_person = await page.evaluate(() => ({
      state: document.getElementById('p-person').dataset.state,
      text: document.getElementById('view-person').innerText,
    }));
    await shot('10-person-a-with-b-key');
    await page.evaluate(() => { location.hash = '#live'; });
    await page.waitForSelector('#view-live:not([hidden])', WAIT);
    await settled('#view-live');
    report.b_live = await page.evaluate(() => ({
      events: [...document.querySelectorAll('#live-list li.event')].map((e) => e.dataset.event),
      text: document.getElementById('view-live').innerText,
    }));
    await shot('11-live-b');
    report.final_url = page.url();
    await context.close();
  } catch (err) {
    report.problems.push(`driver: ${err.stack || err}`);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(report));
  process.exit(report.problems.length ? 1 : 0);
})().catch((err) => {
  console.error('ERR', err);
  process.exit(1);
});
