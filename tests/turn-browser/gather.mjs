// Launch Chromium (through the executable given, e.g. a wrapper that runs it inside a lab network namespace),
// gather ICE candidates for each scenario of RTCPeerConnection settings, print them as JSON. Used by
// tests/turn_lab.rs; never downloads a browser (playwright-core only drives the one we point it at).
//
//   GATHER_CONFIG='{"chromium": "/path/to/wrapper", "scenarios": {"name": {iceServers: [...], ...}}}' node gather.mjs

import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.env.GATHER_CONFIG);
const browser = await chromium.launch({
  executablePath: cfg.chromium,
  headless: true,
  timeout: 60000,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-dev-shm-usage',
    '--no-first-run',
    // Plain host candidates instead of mDNS names (no multicast in the lab).
    '--disable-features=WebRtcHideLocalIpsWithMdns',
  ],
});
try {
  const page = await browser.newPage();
  const result = await page.evaluate(async (scenarios) => {
    const out = {};
    for (const [name, conf] of Object.entries(scenarios)) {
      const pc = new RTCPeerConnection(conf);
      const seen = [];
      const done = new Promise((resolve) => {
        pc.onicecandidate = (e) => {
          if (!e.candidate) return resolve();
          const c = e.candidate;
          seen.push({ type: c.type, address: c.address, port: c.port, protocol: c.protocol, relayProtocol: c.relayProtocol, url: c.url });
        };
        setTimeout(resolve, 20000);
      });
      pc.onicecandidateerror = (e) => seen.push({ error: e.errorCode, text: e.errorText, url: e.url });
      pc.createDataChannel('probe');
      await pc.setLocalDescription(await pc.createOffer());
      await done;
      pc.close();
      out[name] = seen;
    }
    return out;
  }, cfg.scenarios);
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
