// Sluice's dashboard: one script, no build step, nothing from another origin.
//
// Every figure comes from Sluice's JSON read API (a secret read key, sent as
// `Authorization: Bearer`, kept in sessionStorage), and /healthz + /metrics for the
// instance view. Each panel loads on its own: a slow or failing one shows its own state
// ("loading", the server's error text, or an empty-state hint) and never blanks the page.
// Text from the server (event names, ids, properties) only ever goes in as textContent.
// Charts are SVG drawn here, each with a table holding the same numbers.
'use strict';

(() => {
  const KEY_STORE = 'sluice.readKey';
  const DAY = 86400000;
  const RANGES = {
    '24h': { ms: DAY, interval: 'hour', users: 'dau', label: 'last 24 hours' },
    '7d': { ms: 7 * DAY, interval: 'hour', users: 'wau', label: 'last 7 days' },
    '30d': { ms: 30 * DAY, interval: 'day', users: 'mau', label: 'last 30 days' },
  };
  const TOPS = [
    ['event', 'Top events', 'No events in this range.'],
    ['path', 'Top pages', 'No page paths: send properties.path (or $current_url) with page views.'],
    ['referrer_domain', 'Top referrers', 'No referrers: properties.referrer (or $referrer) is not set.'],
    ['utm_source', 'UTM sources', 'No UTM sources: properties.utm_source or ?utm_source= in the page URL.'],
    ['browser', 'Browsers', 'No browsers recorded in this range.'],
    ['os', 'Operating systems', 'No operating systems recorded in this range.'],
    ['device_type', 'Device types', 'No device types recorded in this range.'],
  ];
  const LIVE_EVERY_MS = 2000;
  const LIVE_LAG_MS = 300000; // events received this long before a poll are still looked for
  const LIVE_KEEP = 200; // rows kept in the live list
  const INSTANCE_EVERY_MS = 3000;

  const state = {
    key: null,
    project: null,
    range: '24h',
    bots: false,
    gen: 0, // bumped on every reload: answers of an older one are dropped
    view: null,
  };

  // --- small DOM helpers --------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'class') el.className = value;
      else if (name === 'dataset') Object.assign(el.dataset, value);
      else if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
    for (const child of children.flat(Infinity)) {
      if (child !== null && child !== undefined) el.append(child);
    }
    return el;
  }

  const fmt = (n) => (typeof n === 'number' ? n.toLocaleString('en-US') : String(n));
  const utc = (iso) => (iso ? `${iso.slice(0, 10)} ${iso.slice(11, 19)}` : '—');
  const iso = (ms) => new Date(ms).toISOString();

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return '—';
    const total = Math.round(Number(seconds));
    if (total < 60) return `${total}s`;
    if (total < 3600) return `${Math.floor(total / 60)}m ${total % 60}s`;
    if (total < 86400) return `${Math.floor(total / 3600)}h ${Math.floor((total % 3600) / 60)}m`;
    return `${Math.floor(total / 86400)}d ${Math.floor((total % 86400) / 3600)}h`;
  }

  function bytes(n) {
    if (n === null || n === undefined) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let value = Number(n);
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
  }

  // A figure: a label and a big number; `data-field`/`data-value` name it for tests and
  // for anyone scripting the page.
  function stat(label, field, value, shown, note) {
    const text = shown === undefined ? fmt(value) : shown;
    return h('div', { class: 'stat', dataset: { field, value: value === null ? '' : String(value) } },
      h('span', { class: 'stat-label' }, label),
      h('span', { class: text.length > 14 ? 'stat-value long' : 'stat-value' }, text),
      note ? h('span', { class: 'stat-note' }, note) : null);
  }

  function personLink(id) {
    return h('a', { class: 'person', href: `#person/${encodeURIComponent(id)}`, title: `Open ${id}` }, id);
  }

  function sendHint() {
    const at = new Date().toISOString();
    const body = JSON.stringify({ token: 'sluice_pub_…', events: [{ event: 'hello', timestamp: at }] });
    return [
      h('pre', { class: 'code' }, h('code', {},
        `curl -X POST ${location.origin}/api/v1/ingest/events \\\n` +
        "  -H 'Content-Type: application/json' \\\n" +
        `  -d '${body}'`)),
      h('p', { class: 'help' }, "Use the project's publishable token (sluice projects create printed it; ",
        h('code', {}, 'sluice tokens issue PROJECT_ID'), ' makes another).'),
    ];
  }

  // --- the API ------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // GET `path` on this origin. The key goes in a header only (never in the URL, so no log
  // line, history entry or Referer can hold it). `accept` lists non-2xx statuses whose
  // JSON body is still the answer (/healthz says 503 when the pipeline is down).
  async function api(path, params = {}, { auth = true, text = false, accept = [] } = {}) {
    const url = new URL(path, location.origin);
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
    }
    const headers = { Accept: text ? 'text/plain' : 'application/json' };
    const key = state.key;
    if (auth) headers.Authorization = `Bearer ${key}`;
    let res;
    try {
      res = await fetch(url, { headers, cache: 'no-store', credentials: 'omit' });
    } catch (err) {
      throw new ApiError(0, `Sluice did not answer (${err.message}): is the server running?`);
    }
    const body = await res.text();
    if (res.ok && text) return body;
    let json = null;
    try {
      json = JSON.parse(body);
    } catch (_) {
      json = null;
    }
    if (res.ok || accept.includes(res.status)) return json;
    const reason = json && typeof json.error === 'string' ? json.error : body.slice(0, 300) || res.statusText;
    if (res.status === 401 && auth && key === state.key && state.project) {
      signOut(`The server stopped accepting this key (${reason}). Sign in with a valid read key.`);
    }
    throw new ApiError(res.status, `${res.status} from ${url.pathname}: ${reason}`);
  }

  // --- panels -------------------------------------------------------------------------

  const ready = (...nodes) => ({ nodes, empty: false });
  const empty = (...nodes) => ({ nodes, empty: true });

  // Run `load` for one panel: its state is `loading`, then `ready`, `empty` or `error`
  // (with the server's text). Answers from an older reload are dropped.
  function panel(el, load, { quiet = false } = {}) {
    const gen = state.gen;
    const body = el.querySelector('.body');
    if (!quiet || !el.dataset.state) {
      el.dataset.state = 'loading';
      el.setAttribute('aria-busy', 'true');
      if (!body.firstChild) body.append(h('p', { class: 'muted' }, 'Loading…'));
    }
    return Promise.resolve()
      .then(load)
      .then((result) => {
        if (gen !== state.gen) return;
        body.replaceChildren(...result.nodes.flat(Infinity).filter(Boolean));
        el.dataset.state = result.empty ? 'empty' : 'ready';
      })
      .catch((err) => {
        if (gen !== state.gen) return;
        body.replaceChildren(h('p', { class: 'error' }, err.message));
        el.dataset.state = 'error';
      })
      .finally(() => el.removeAttribute('aria-busy'));
  }

  // --- the window -----------------------------------------------------------------------

  function localInput(ms) {
    return new Date(ms).toISOString().slice(0, 16);
  }

  function currentWindow() {
    if (state.range !== 'custom') {
      const range = RANGES[state.range];
      const until = Date.now();
      return { since: iso(until - range.ms), until: iso(until), interval: range.interval,
        users: range.users, label: range.label };
    }
    const from = Date.parse(`${$('from').value}:00Z`);
    const to = Date.parse(`${$('to').value}:00Z`);
    if (Number.isNaN(from) || Number.isNaN(to)) throw new Error('Choose both ends of the custom range.');
    if (from >= to) throw new Error('The custom range must start before it ends.');
    return { since: iso(from), until: iso(to), interval: to - from <= 8 * DAY ? 'hour' : 'day',
      users: null, label: `${utc(iso(from))} to ${utc(iso(to))} UTC` };
  }

  function statsParams(win, extra) {
    return { since: win.since, until: win.until, ...(state.bots ? { include_bots: 'true' } : {}), ...extra };
  }

  // --- overview -----------------------------------------------------------------------

  // The axis top: a round number whose half is a whole number too (counts are whole).
  function niceMax(value) {
    const power = 10 ** Math.floor(Math.log10(value));
    const steps = power === 1 ? [2, 4, 6, 8, 10] : [1, 2, 4, 5, 6, 8, 10];
    for (const step of steps) if (step * power >= value) return step * power;
    return 10 * power;
  }

  function tickLabel(t, interval, spansDays) {
    if (interval === 'day') return t.slice(5, 10);
    return spansDays ? `${t.slice(5, 10)} ${t.slice(11, 16)}` : t.slice(11, 16);
  }

  // Events as bars, users as a line, one scale; the table below holds the same numbers.
  function chart(points, interval, summary) {
    const W = 800;
    const H = 240;
    const L = 52;
    const R = 12;
    const T = 12;
    const B = 30;
    const top = niceMax(Math.max(1, ...points.map((p) => Math.max(p.events, p.users))));
    const band = (W - L - R) / points.length;
    const gap = band > 6 ? band * 0.2 : 0;
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const spansDays = points.length > 1 && points[0].t.slice(0, 10) !== points[points.length - 1].t.slice(0, 10);
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-labelledby': 'chart-title chart-desc' },
      s('title', { id: 'chart-title' }, `Events and users per ${interval}`),
      s('desc', { id: 'chart-desc' }, summary));
    for (const v of [0, top / 2, top]) {
      svg.append(s('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid-line' }),
        s('text', { x: L - 6, y: y(v) + 4, class: 'axis', 'text-anchor': 'end' }, fmt(v)));
    }
    points.forEach((p, i) => {
      const height = H - B - y(p.events);
      svg.append(s('rect', { x: L + i * band + gap / 2, y: y(p.events), width: Math.max(1, band - gap),
        height: Math.max(0, height), class: 'bar-events' },
      s('title', {}, `${utc(p.t)} UTC: ${fmt(p.events)} events, ${fmt(p.users)} users`)));
    });
    const line = points.map((p, i) => `${(L + (i + 0.5) * band).toFixed(1)},${y(p.users).toFixed(1)}`).join(' ');
    svg.append(s('polyline', { points: line, class: points.length > 60 ? 'line-users dense' : 'line-users' }));
    const ticks = Math.min(points.length, 6);
    for (let k = 0; k < ticks; k += 1) {
      const i = ticks === 1 ? 0 : Math.round((k * (points.length - 1)) / (ticks - 1));
      const anchor = ticks > 1 && k === 0 ? 'start' : ticks > 1 && k === ticks - 1 ? 'end' : 'middle';
      const x = anchor === 'start' ? L : anchor === 'end' ? W - R : L + (i + 0.5) * band;
      svg.append(s('text', { x, y: H - 10, class: 'axis', 'text-anchor': anchor },
        tickLabel(points[i].t, interval, spansDays)));
    }
    return svg;
  }

  function seriesTable(points, interval) {
    return h('details', { class: 'as-table' },
      h('summary', {}, 'Show these numbers as a table'),
      h('table', {},
        h('caption', { class: 'visually-hidden' }, `Events and users per ${interval} (UTC)`),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, `${interval === 'day' ? 'Day' : 'Hour'} (UTC)`),
          h('th', { scope: 'col', class: 'num' }, 'Events'), h('th', { scope: 'col', class: 'num' }, 'Users'))),
        h('tbody', {}, points.map((p) => h('tr', {}, h('td', {}, utc(p.t)),
          h('td', { class: 'num' }, fmt(p.events)), h('td', { class: 'num' }, fmt(p.users)))))));
  }

  function topTable(dimension, title, rows, { users = true } = {}) {
    const most = Math.max(1, ...rows.map((r) => r.events));
    return h('table', { class: 'top', dataset: { by: dimension } },
      h('caption', { class: 'visually-hidden' }, `${title}: events and users per value`),
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Value'),
        h('th', { scope: 'col', class: 'num' }, 'Events'), users ? h('th', { scope: 'col', class: 'num' }, 'Users') : null)),
      h('tbody', {}, rows.map((r) => {
        const bar = h('span', { class: 'bar', 'aria-hidden': 'true' });
        bar.style.width = `${((100 * r.events) / most).toFixed(1)}%`; // CSSOM: allowed by the CSP
        return h('tr', { dataset: { value: r.value, events: r.events, users: r.users } },
          h('td', { class: 'value' }, bar, h('span', { class: 'label' }, r.value)),
          h('td', { class: 'num' }, fmt(r.events)), users ? h('td', { class: 'num' }, fmt(r.users)) : null);
      })));
  }

  function loadOverview() {
    let win;
    try {
      win = currentWindow();
    } catch (err) {
      for (const el of document.querySelectorAll('#view-overview [data-panel]')) {
        panel(el, () => { throw err; });
      }
      return;
    }
    const view = $('view-overview');
    view.dataset.since = win.since;
    view.dataset.until = win.until;
    $('window-label').textContent = `· ${win.label}`;

    const series = api('/api/v1/stats/timeseries', statsParams(win, { interval: win.interval }));
    const active = api('/api/v1/stats/active-users', { at: win.until, ...(state.bots ? { include_bots: 'true' } : {}) });
    series.catch(() => {});
    active.catch(() => {});

    panel($('p-totals'), async () => {
      const [s1, a1] = await Promise.allSettled([series, active]);
      const events = s1.status === 'fulfilled'
        ? stat('Events', 'events', s1.value.points.reduce((n, p) => n + p.events, 0))
        : h('p', { class: 'error' }, s1.reason.message);
      let users;
      if (!win.users) users = stat('Unique users', 'users', null, '—', 'counted for the 24 h, 7 d and 30 d ranges');
      else if (a1.status === 'fulfilled') users = stat('Unique users', 'users', a1.value[win.users]);
      else users = h('p', { class: 'error' }, a1.reason.message);
      return ready(h('div', { class: 'stats' }, events, users));
    });

    panel($('p-active'), async () => {
      const a = await active;
      return ready(h('div', { class: 'stats' }, stat('Daily (24 h)', 'dau', a.dau),
        stat('Weekly (7 d)', 'wau', a.wau), stat('Monthly (30 d)', 'mau', a.mau)),
      h('p', { class: 'muted small' }, `Distinct users before ${utc(a.at)} UTC`));
    });

    panel($('p-sessions'), async () => {
      const x = await api('/api/v1/stats/sessions', statsParams(win));
      const bounce = x.bounce_rate === null || x.bounce_rate === undefined ? '—' : `${(100 * x.bounce_rate).toFixed(1)}%`;
      const pages = x.pages_per_session === null || x.pages_per_session === undefined ? '—' : Number(x.pages_per_session).toFixed(2);
      return ready(h('div', { class: 'stats' }, stat('Sessions', 'sessions', x.sessions),
        stat('Average duration', 'avg_duration_s', x.avg_duration_s, duration(x.avg_duration_s)),
        stat('Bounce rate', 'bounce_rate', x.bounce_rate, bounce),
        stat('Pages per session', 'pages_per_session', x.pages_per_session, pages)));
    });

    panel($('p-chart'), async () => {
      const { points } = await series;
      const total = points.reduce((n, p) => n + p.events, 0);
      if (!total) return empty(h('p', {}, 'No events in this range yet — send one with:'), sendHint());
      const peak = points.reduce((best, p) => (p.events > best.events ? p : best), points[0]);
      const summary = `${fmt(total)} events from ${utc(win.since)} to ${utc(win.until)} UTC; ` +
        `the busiest ${win.interval} was ${utc(peak.t)} with ${fmt(peak.events)} events and ${fmt(peak.users)} users.`;
      return ready(
        h('div', { class: 'legend', 'aria-hidden': 'true' },
          h('span', { class: 'swatch events' }), 'Events', h('span', { class: 'swatch users' }), 'Users'),
        chart(points, win.interval, summary), h('p', { class: 'muted small' }, summary),
        seriesTable(points, win.interval));
    });

    const tops = $('tops');
    if (!tops.firstChild) {
      for (const [by, title] of TOPS) {
        tops.append(h('article', { class: 'panel', id: `p-top-${by}`, 'data-panel': true, 'aria-labelledby': `p-top-${by}-h` },
          h('h2', { id: `p-top-${by}-h` }, title), h('div', { class: 'body' })));
      }
    }
    for (const [by, title, none] of TOPS) {
      panel($(`p-top-${by}`), async () => {
        const { rows } = await api('/api/v1/stats/top', statsParams(win, { by, limit: 10 }));
        if (!rows.length) return empty(h('p', { class: 'muted' }, none));
        return ready(topTable(by, title, rows));
      });
    }
  }

  // --- events (live tail and person timeline) ----------------------------------------------

  function pretty(value) {
    return typeof value === 'string' ? value : JSON.stringify(value, null, 2);
  }

  function eventItem(e) {
    const who = e.user_id || e.anonymous_id;
    return h('li', { class: 'event', dataset: { eventId: e.event_id, event: e.event } },
      h('details', {},
        h('summary', {}, h('time', { datetime: e.timestamp }, utc(e.timestamp)), ' ',
          h('span', { class: 'event-name' }, e.event)),
        h('dl', { class: 'facts' },
          h('dt', {}, 'event id'), h('dd', {}, e.event_id),
          h('dt', {}, 'received'), h('dd', {}, `${utc(e.received_at)} UTC`),
          h('dt', {}, 'user id'), h('dd', {}, e.user_id || '—'),
          h('dt', {}, 'anonymous id'), h('dd', {}, e.anonymous_id || '—'),
          h('dt', {}, 'session id'), h('dd', {}, e.session_id || '—')),
        h('h3', { class: 'small' }, 'properties'), h('pre', { class: 'code props' }, pretty(e.properties)),
        h('h3', { class: 'small' }, 'extras'), h('pre', { class: 'code' }, pretty(e.extras))),
      who ? personLink(who) : h('span', { class: 'muted person' }, 'no id'));
  }

  const live = { timer: null, seen: new Map(), list: null, paused: false, gen: -1 };

  function stopLive() {
    clearTimeout(live.timer);
    live.timer = null;
  }

  function startLive() {
    stopLive();
    live.gen = state.gen;
    live.seen.clear();
    live.list = null;
    const el = $('p-live');
    panel(el, async () => {
      const now = Date.now();
      const first = await api('/api/v1/events', { since: iso(now - 7 * DAY), until: iso(now + DAY), limit: 50 });
      live.list = h('ol', { class: 'events', id: 'live-list' });
      for (const e of first.events) {
        live.seen.set(e.event_id, Date.parse(e.received_at));
        live.list.append(eventItem(e));
      }
      live.polledAt = now;
      setLiveStatus();
      schedule();
      if (!first.events.length) {
        return empty(live.list, h('div', { id: 'live-empty' }, h('p', {}, 'No events yet — waiting for one. Send one with:'), sendHint()));
      }
      return ready(live.list);
    });
  }

  function setLiveStatus() {
    const shown = live.list ? live.list.children.length : 0;
    $('live-status').textContent = `${live.paused ? 'Paused' : 'Updating every 2 s'} · last checked ` +
      `${utc(iso(live.polledAt || Date.now()))} UTC · ${fmt(shown)} events shown, newest first`;
  }

  function schedule() {
    clearTimeout(live.timer);
    if (state.view === 'live' && !live.paused) live.timer = setTimeout(pollLive, LIVE_EVERY_MS);
  }

  async function pollLive() {
    if (state.view !== 'live' || live.paused || !live.list) return;
    const gen = live.gen;
    const now = Date.now();
    try {
      const page = await api('/api/v1/events', {
        since: iso(now - 7 * DAY), until: iso(now + DAY), limit: 1000, received_after: iso(now - LIVE_LAG_MS),
      });
      if (gen !== live.gen) return;
      const fresh = page.events.filter((e) => !live.seen.has(e.event_id));
      fresh.sort((a, b) => (a.received_at < b.received_at ? -1 : a.received_at > b.received_at ? 1 : 0));
      for (const e of fresh) {
        live.seen.set(e.event_id, Date.parse(e.received_at));
        live.list.prepend(eventItem(e));
      }
      while (live.list.children.length > LIVE_KEEP) live.list.lastChild.remove();
      for (const [id, at] of live.seen) if (at < now - 2 * LIVE_LAG_MS) live.seen.delete(id);
      if (fresh.length) {
        $('live-empty')?.remove();
        $('p-live').dataset.state = 'ready';
      }
      live.polledAt = now;
      $('p-live').querySelector('.poll-error')?.remove();
      setLiveStatus();
    } catch (err) {
      if (gen !== live.gen) return;
      const old = $('p-live').querySelector('.poll-error');
      const note = h('p', { class: 'error poll-error' }, `Live updates failing: ${err.message} (retrying)`);
      if (old) old.replaceWith(note);
      else $('p-live').querySelector('.body').prepend(note);
    }
    schedule();
  }

  // --- person -------------------------------------------------------------------------

  function loadPerson(id) {
    $('person-title').textContent = `Person ${id}`;
    let win;
    try {
      win = currentWindow();
    } catch (err) {
      panel($('p-person'), () => { throw err; });
      return;
    }
    const path = `/api/v1/persons/${encodeURIComponent(id)}`;
    panel($('p-person'), async () => {
      let p;
      try {
        p = await api(path, { since: win.since, until: win.until });
      } catch (err) {
        if (err.status === 404) {
          return empty(h('p', {}, `No events of ${id} in the ${win.label}. Choose a longer range above.`));
        }
        throw err;
      }
      const sessions = api('/api/v1/sessions', { since: win.since, until: win.until, person: id, limit: 20 })
        .then((x) => x.sessions, (err) => err);
      const ids = (list) => (list.length ? list.map((x) => [personLink(x), ' ']) : '—');
      const facts = h('div', { class: 'stats' },
        stat('Events', 'person_events', p.events),
        stat('First seen', 'first_seen', p.first_seen, `${utc(p.first_seen)}`),
        stat('Last seen', 'last_seen', p.last_seen, `${utc(p.last_seen)}`));
      // linked_ids and traits come with identity stitching; absent, they are not shown.
      const idsList = h('dl', { class: 'facts' },
        h('dt', {}, 'user ids'), h('dd', {}, ids(p.user_ids)),
        h('dt', {}, 'anonymous ids'), h('dd', {}, ids(p.anonymous_ids)),
        Array.isArray(p.linked_ids) ? [h('dt', {}, 'linked ids'), h('dd', {}, ids(p.linked_ids))] : null);
      const traits = p.traits && typeof p.traits === 'object' && Object.keys(p.traits).length
        ? [h('h2', {}, 'Traits'), h('pre', { class: 'code' }, pretty(p.traits))] : null;
      const topEvents = topTable('person-event', 'Events of this person',
        p.top_events.map((r) => ({ value: r.event, events: r.events, users: null })), { users: false });
      const s1 = await sessions;
      const sessionsBlock = s1 instanceof Error
        ? h('p', { class: 'error' }, s1.message)
        : s1.length
          ? h('table', { class: 'sessions' },
            h('caption', { class: 'visually-hidden' }, 'Sessions of this person'),
            h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Start (UTC)'), h('th', { scope: 'col' }, 'Session'),
              h('th', { scope: 'col', class: 'num' }, 'Duration'), h('th', { scope: 'col', class: 'num' }, 'Events'))),
            h('tbody', {}, s1.map((x) => h('tr', {}, h('td', {}, utc(x.start)), h('td', {}, x.session_id || '(by 30-minute gaps)'),
              h('td', { class: 'num' }, duration(x.duration_ms / 1000)), h('td', { class: 'num' }, fmt(x.events))))))
          : h('p', { class: 'muted' }, 'No sessions in this range.');
      return ready(
        h('p', { class: 'muted small' }, `In the ${win.label} (UTC times).`),
        facts, idsList, traits,
        h('div', { class: 'two' },
          h('section', {}, h('h2', {}, 'Top events'), topEvents),
          h('section', {}, h('h2', {}, 'Sessions'), sessionsBlock)),
        h('h2', {}, `Timeline: the ${fmt(p.recent_events.length)} newest events`),
        h('ol', { class: 'events', id: 'person-events' }, p.recent_events.map(eventItem)));
    });
  }

  // --- instance -----------------------------------------------------------------------

  const instance = { timer: null, prev: null };

  // Prometheus text → {name: value summed over its labels}.
  function parseMetrics(text) {
    const out = {};
    for (const line of text.split('\n')) {
      if (!line || line[0] === '#') continue;
      const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (m) out[m[1]] = (out[m[1]] || 0) + Number(m[3]);
    }
    return out;
  }

  function loadInstance(first) {
    const quiet = !first;
    panel($('p-health'), async () => {
      const x = await api('/healthz', {}, { auth: false, accept: [503] });
      const pending = x.buffer.pending;
      const capacity = x.buffer.capacity;
      const meter = h('meter', { min: 0, max: capacity, value: pending, 'aria-label': 'Buffer fill' });
      const wal = x.wal || {};
      return ready(h('div', { class: 'stats' },
        stat('Status', 'status', x.status, x.status === 'ok' ? 'ok' : 'DOWN'),
        stat('Ingest', 'ingest_disabled', x.ingest_disabled, x.ingest_disabled ? 'disabled' : 'accepting'),
        stat('Fatal', 'fatal', x.fatal, x.fatal ? 'yes' : 'no', x.fatal_reason || null),
        stat('Dead-letter depth', 'dlq_depth', x.dlq_depth, `${fmt(x.dlq_depth)} rows`, `${fmt(x.dlq_events)} events`),
        h('div', { class: 'stat', dataset: { field: 'buffer', value: `${pending}/${capacity}` } },
          h('span', { class: 'stat-label' }, 'Buffer fill'),
          h('span', { class: 'stat-value' }, `${capacity ? ((100 * pending) / capacity).toFixed(1) : 0}%`),
          meter, h('span', { class: 'stat-note' }, `${fmt(pending)} of ${fmt(capacity)} events`)),
        wal.bytes === undefined
          ? stat('Write-ahead log', 'wal_bytes', null, 'off', `durability: ${wal.durability}`)
          : stat('Write-ahead log', 'wal_bytes', wal.bytes, bytes(wal.bytes),
            `of ${bytes(wal.max_bytes)}${wal.failing ? ' · FAILING' : ''}`)),
      h('p', { class: 'muted small' }, `Sluice ${x.version}`));
    }, { quiet }).then(() => {
      $('p-health').classList.toggle('alarm', $('p-health').querySelector('[data-field=status]')?.dataset.value === 'down');
    });

    panel($('p-rates'), async () => {
      const text = await api('/metrics', {}, { auth: false, text: true });
      const now = performance.now();
      const m = parseMetrics(text);
      const prev = instance.prev;
      instance.prev = { at: now, m };
      const rate = (name) => (prev && now > prev.at ? ((m[name] || 0) - (prev.m[name] || 0)) / ((now - prev.at) / 1000) : null);
      const shown = (r) => (r === null ? 'measuring…' : `${r.toFixed(1)}/s`);
      const r1 = rate('sluice_events_accepted_total');
      const r2 = rate('sluice_events_rejected_total');
      const r3 = rate('sluice_events_flushed_total');
      return ready(h('div', { class: 'stats' },
        stat('Accepted', 'accepted_rate', r1 === null ? null : r1, shown(r1), `${fmt(m.sluice_events_accepted_total || 0)} since start`),
        stat('Rejected', 'rejected_rate', r2 === null ? null : r2, shown(r2), `${fmt(m.sluice_events_rejected_total || 0)} since start`),
        stat('Written to ClickHouse', 'flushed_rate', r3 === null ? null : r3, shown(r3), `${fmt(m.sluice_events_flushed_total || 0)} since start`),
        stat('Quarantined events', 'quarantined_total', m.sluice_events_quarantined_total || 0, undefined, 'since start')),
      h('span', { class: 'visually-hidden', dataset: { field: 'accepted_total', value: String(m.sluice_events_accepted_total || 0) } }),
      h('p', { class: 'muted small' }, 'Rates are the change between the last two scrapes of /metrics.'));
    }, { quiet });

    panel($('p-dlq'), async () => {
      const d = await api('/api/v1/instance/deadletter');
      return ready(h('div', { class: 'stats' },
        stat('Waiting rows', 'dlq_active_rows', d.active_rows, undefined, `${fmt(d.active_events)} events`),
        stat('Oldest row', 'dlq_oldest_age_seconds', d.oldest_age_seconds,
          d.oldest_age_seconds === null ? 'none' : duration(d.oldest_age_seconds),
          d.oldest_age_seconds === null ? 'the queue is empty' : 'since it was parked'),
        stat('Quarantined rows', 'dlq_quarantined_rows', d.quarantined_rows, undefined, `${fmt(d.quarantined_events)} events`)));
    }, { quiet });
    clearTimeout(instance.timer);
    instance.timer = setTimeout(() => {
      if (state.view === 'instance' && !document.hidden) loadInstance(false);
      else instance.timer = null;
    }, INSTANCE_EVERY_MS);
  }

  // --- views and sign-in ----------------------------------------------------------------

  const VIEWS = ['signin', 'overview', 'live', 'person', 'instance'];

  function show(view, focus = true) {
    state.view = view;
    for (const name of VIEWS) $(`view-${name}`).hidden = name !== view;
    for (const link of document.querySelectorAll('#nav a')) {
      if (link.dataset.view === view) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    if (view !== 'live') stopLive();
    if (view !== 'instance') {
      clearTimeout(instance.timer);
      instance.timer = null;
    }
    if (focus) $(`view-${view}`).querySelector('h1')?.focus({ preventScroll: true });
  }

  function route(focus = true) {
    if (!state.project) {
      show('signin', focus);
      return;
    }
    let hash = location.hash.slice(1);
    try {
      hash = decodeURIComponent(hash);
    } catch (_) {
      // a hand-typed address with a stray %: taken as it is
    }
    state.gen += 1;
    if (hash.startsWith('person/')) {
      show('person', focus);
      loadPerson(hash.slice(7));
    } else if (hash === 'live') {
      show('live', focus);
      startLive();
    } else if (hash === 'instance') {
      show('instance', focus);
      instance.prev = null;
      loadInstance(true);
    } else {
      show('overview', focus);
      loadOverview();
    }
  }

  function enter(project) {
    state.project = project;
    $('project-name').textContent = project.name;
    $('project-name').title = `project ${project.project_id}`;
    document.title = `${project.name} · Sluice`;
    $('nav').hidden = false;
    $('controls').hidden = false;
    route();
  }

  function signOut(message) {
    state.key = null;
    state.project = null;
    state.gen += 1;
    sessionStorage.removeItem(KEY_STORE);
    $('project-name').textContent = '';
    document.title = 'Sluice dashboard';
    $('nav').hidden = true;
    $('controls').hidden = true;
    stopLive();
    const error = $('signin-error');
    error.textContent = message || '';
    error.hidden = !message;
    show('signin');
    $('key').focus();
  }

  async function signIn(key) {
    state.key = key;
    try {
      const project = await api('/api/v1/project');
      sessionStorage.setItem(KEY_STORE, key);
      $('signin-error').hidden = true;
      enter(project);
    } catch (err) {
      state.key = null;
      sessionStorage.removeItem(KEY_STORE);
      const error = $('signin-error');
      error.replaceChildren();
      if (err.status === 401) {
        error.append(h('strong', {}, 'This key was not accepted.'), ' ',
          'It may be mistyped, revoked, or not a secret read key (sluice_sk_…). ',
          h('span', { class: 'reason' }, `The server said: ${err.message.replace(/^401 from \S+: /, '')}.`));
      } else {
        error.append(h('strong', {}, 'Could not sign in. '), err.message);
      }
      error.hidden = false;
      show('signin');
      $('key').focus();
    }
  }

  function init() {
    $('signin-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const key = $('key').value.trim();
      $('key').value = '';
      if (key) signIn(key);
    });
    $('controls').addEventListener('submit', (e) => {
      e.preventDefault();
      route(false);
    });
    $('range').addEventListener('change', () => {
      state.range = $('range').value;
      $('custom').hidden = state.range !== 'custom';
      if (state.range === 'custom') {
        if (!$('from').value) $('from').value = localInput(Date.now() - DAY);
        if (!$('to').value) $('to').value = localInput(Date.now() + 60000);
        $('from').focus();
      }
      route(false);
    });
    for (const id of ['from', 'to']) $(id).addEventListener('change', () => route(false));
    $('bots').addEventListener('change', () => {
      state.bots = $('bots').checked;
      route(false);
    });
    $('signout').addEventListener('click', () => signOut(''));
    $('live-pause').addEventListener('click', () => {
      live.paused = !live.paused;
      $('live-pause').setAttribute('aria-pressed', String(live.paused));
      $('live-pause').textContent = live.paused ? 'Resume' : 'Pause';
      setLiveStatus();
      if (!live.paused) pollLive();
    });
    window.addEventListener('hashchange', () => route());
    document.addEventListener('visibilitychange', () => {
      if (document.hidden) return;
      if (state.view === 'live') schedule();
      if (state.view === 'instance' && !instance.timer) loadInstance(false);
    });
    const saved = sessionStorage.getItem(KEY_STORE);
    if (saved) signIn(saved);
    else show('signin', false);
  }

  init();
})();
