// The real Node SDKs, configured only with Sluice's address and a Sluice token:
// `node send.js <server url> <token>` sends track, identify, page and a batch with
// @segment/analytics-node and posthog-node, flushes both, and exits 0 once every
// request was answered 200 (1 on any error the SDKs report).
// Run by tests/test_sdk_node.py, which then reads the rows in ClickHouse.
'use strict';

const { Analytics } = require('@segment/analytics-node');
const { PostHog } = require('posthog-node');

const [url, token] = process.argv.slice(2);
if (!url || !token) {
  console.error('usage: node send.js <server url> <token>');
  process.exit(2);
}
const AT = new Date('2026-11-22T10:00:00.123Z');
const errors = [];

async function segment() {
  // Small batches, one retry: the test wants exact rows, not the SDK's patience.
  const analytics = new Analytics({ writeKey: token, host: url, maxEventsInBatch: 10,
    flushInterval: 200, maxRetries: 1 });
  analytics.on('error', (err) => errors.push(['segment', String(err && (err.reason || err.message || err))]));
  const requests = [];
  analytics.on('http_request', (req) => requests.push(req.url));
  analytics.track({ userId: 'seg-u1', anonymousId: 'seg-anon', event: 'Order Completed',
    properties: { total: 9.5, currency: 'EUR' }, timestamp: AT });
  analytics.identify({ userId: 'seg-u1', traits: { plan: 'pro' }, timestamp: AT });
  analytics.page({ userId: 'seg-u1', name: 'Docs', category: 'Guides',
    properties: { path: '/docs' }, timestamp: AT });
  for (let i = 0; i < 5; i++) {
    analytics.track({ userId: 'seg-u1', event: `seg batch ${i}`, properties: { i }, timestamp: AT });
  }
  await analytics.closeAndFlush({ timeout: 20000 });
  return requests.length;
}

async function posthog() {
  const client = new PostHog(token, { host: url, flushAt: 10, flushInterval: 200,
    fetchRetryCount: 1, disableGeoip: true });
  client.on('error', (err) => errors.push(['posthog', String(err && (err.message || err))]));
  client.capture({ distinctId: 'ph-u1', event: 'signed_up', timestamp: AT,
    uuid: '0193a3f4-1c2d-7e5f-8a9b-0c1d2e3f4a5b',
    properties: { plan: 'pro', $session_id: 'ph-sess-1' } });
  client.identify({ distinctId: 'ph-u1', properties: { $set: { email: 'a@example.com' },
    $anon_distinct_id: 'ph-anon' } });
  client.capture({ distinctId: 'ph-u1', event: '$pageview', timestamp: AT,
    properties: { $current_url: 'https://example.com/docs' } });
  for (let i = 0; i < 5; i++) {
    client.capture({ distinctId: 'ph-u1', event: `ph batch ${i}`, timestamp: AT, properties: { i } });
  }
  await client.shutdown(20000);
}

(async () => {
  const requests = await segment();
  await posthog();
  if (errors.length) {
    console.error(JSON.stringify(errors));
    process.exit(1);
  }
  console.log(JSON.stringify({ segment_requests: requests }));
})().catch((err) => {
  console.error('ERR', err);
  process.exit(1);
});
