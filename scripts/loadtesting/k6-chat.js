// Load-test an OpenAI-compatible endpoint (the gateway, or a provider directly) with k6.
//
//   k6 run -e BASE_URL=http://127.0.0.1:4000 -e MODEL=llama3 -e VUS=16 -e DURATION=2m \
//       scripts/loadtesting/k6-chat.js
//
// k6 is a separate Go binary (https://k6.io; not on PyPI or in Debian 12's main archive), so the
// project's tests do not run this script; scripts/loadtesting/locustfile.py is the tested equivalent.
// Settings (-e NAME=value): BASE_URL, MODEL (smollm2), PROMPT, MAX_TOKENS (32), VUS (8),
// DURATION (1m), API_KEY (sent as a bearer token when set).
// k6 reads a whole response before handing it over, so streamed requests are not modelled here:
// measure time to first token with the Locust file instead.
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:4000';
const API_KEY = __ENV.API_KEY || '';

export const options = {
  vus: Number(__ENV.VUS || 8),
  duration: __ENV.DURATION || '1m',
  thresholds: {
    http_req_failed: ['rate<0.01'],          // fewer than 1 % failed requests
    http_req_duration: ['p(95)<30000'],      // 95 % under 30 s (generation time included)
  },
};

const headers = { 'Content-Type': 'application/json' };
if (API_KEY) headers.Authorization = `Bearer ${API_KEY}`;

const body = JSON.stringify({
  model: __ENV.MODEL || 'smollm2',
  messages: [{ role: 'user', content: __ENV.PROMPT || 'Say hello in five words.' }],
  max_tokens: Number(__ENV.MAX_TOKENS || 32),
});

export default function () {
  const res = http.post(`${BASE_URL}/v1/chat/completions`, body, { headers, timeout: '120s' });
  check(res, {
    'status 200': (r) => r.status === 200,
    'has choices': (r) => r.status === 200 && (r.json('choices') || []).length > 0,
  });
}
