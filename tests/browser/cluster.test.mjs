// Several ponte nodes as one service (issue #16), in the cluster lab (tests/lab/clusterlab.sh, clusterkit.mjs):
// HAProxy at 198.51.100.10 in front of two nodes (198.51.100.11, .12, each its own STUN/TURN) that share Debian's
// redis-server on a private network; two Chromiums, each in its own home behind its own NAT. Needs root.
//
//   cd tests/browser && node --test cluster.test.mjs
//
// - cone/cone: two browsers on different nodes pair and chat directly; kill -9 of one node mid-chat: its browser
//   reconnects through HAProxy to the other node with the same ID and re-pairs without a click, the chat goes on;
//   Redis killed and started again (empty): a pair on one node forms and chats while Redis is down, a request to a
//   browser on the other node gets the clear "link between the servers is down" message, /healthz says degraded;
//   after Redis is back the same request goes through.
// - symmetric/symmetric, each home reaching only its own node's TURN: the only path is relay to relay between
//   allocations on different nodes; kill -9 of a node mid-chat: its browser moves to the other node and the chat
//   comes back by an ICE restart over that node's relay.
//
// Every packet stays inside the namespaces the lab creates; nothing is connected to the host's network.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { newPage, openApp, pair, waitConnected, sendMessage, waitForMessage, screenshot } from './lib.mjs';
import {
  clusterMissing, startCluster, stopCluster, NODES, nodeOf, killNode, startNode, waitHaproxy, killRedis, startRedis,
  healthz, selectedPath, haproxyStats,
} from './clusterkit.mjs';

const missing = clusterMissing();

// The cluster core (branch `cluster` at e6a62e7) does not re-pair a browser that moves to the node its partner is
// on: its `rejoin` gets `rejoin_waiting` and nothing follows (the partner holds a remote half "A@dead node" that the
// local rejoin does not match). With two nodes the moved browser always lands on its partner's node, so the two
// kill -9 cases fail at the re-pairing. They run and report as TODO until the core handles it; remove this then.

const offline = (p) => p.waitForSelector('[data-testid=server-status]:not([data-state=open]):not([data-state=connecting])', { timeout: 30000 });
const online = (p, timeout = 45000) => p.waitForSelector('[data-testid=server-status][data-state=open]', { timeout });

async function pathText(page, re, timeout = 15000) {
  await page.waitForFunction((src) => new RegExp(src, 'i').test(document.querySelector('[data-testid=path-label]').textContent), re.source, { timeout });
  return page.getByTestId('path-label').textContent();
}

async function chat(from, to, text) {
  await sendMessage(from, text);
  await waitForMessage(to, text);
}

/** Both pages see each other as paired on the server again, with no request to click. */
async function repaired(pages) {
  for (const [p, peer] of pages) {
    await p.waitForFunction((id) => window.ponte.conversation(id)?.serverPaired === true, peer, { timeout: 45000 });
    assert.equal(await p.getByTestId('incoming-request').count(), 0, 'the re-pairing needs no click');
  }
}

describe('cluster lab', { skip: missing || false, concurrency: 1 }, () => {
  describe('two nodes behind HAProxy, both homes behind cone NAT', () => {
    let lab;
    let a;
    let b;
    let idA;
    let idB;
    before(async () => { lab = await startCluster({ nat1: 'cone', nat2: 'cone' }); });
    after(async () => stopCluster(lab));

    test('the balanced entry spreads requests over both nodes; /healthz says the cluster is ok', { timeout: 60000 }, async () => {
      const p = await newPage(lab.browsers[0]);
      lab.pages.push(p);
      await openApp(p, lab.url);
      const before = await haproxyStats(lab);
      for (let i = 0; i < 6; i++) {
        const h = await healthz(p, lab.url);
        assert.equal(h.status, 200, JSON.stringify(h.body));
        assert.equal(h.body.status, 'ok');
        assert.equal(h.body.components.cluster, 'ok');
      }
      const now = await haproxyStats(lab);
      for (const n of ['n1', 'n2']) {
        assert.ok(now[`ponte/${n}`].sessions > before[`ponte/${n}`].sessions, `roundrobin sent requests to ${n}: ${JSON.stringify(now)}`);
      }
      await p.close();
    });

    test('two browsers on different nodes pair and chat, directly', { timeout: 90000 }, async () => {
      ({ a, b, idA, idB } = await pairAcrossNodes(lab));
      await chat(a, b, 'hello from node 1');
      await chat(b, a, 'hello from node 2');
      await a.waitForSelector('[data-testid=message-status][data-status=delivered]');
      assert.doesNotMatch(await pathText(a, /direct/), /relay/i);
      assert.doesNotMatch(await pathText(b, /direct/), /relay/i);
      await screenshot(a, 'cluster-direct-desktop');
      await screenshot(b, 'cluster-direct-360');
    });

    test('kill -9 of a node mid-chat: its browser reconnects through HAProxy to the other node, same ID, re-paired, the chat goes on', { timeout: 120000}, async () => {
      assert.ok(a && b, 'the previous test paired a and b');
      const killed = await killNode(lab, 'n1');
      try {
        assert.equal(killed.signal, 'SIGKILL');
        await offline(a);
        // The direct path does not need any server.
        await chat(a, b, 'while node 1 is dead');
        await waitHaproxy(lab, 'n1', 'DOWN');
        await online(a);
        assert.equal(await nodeOf(a), 'n2', 'a reconnected to the surviving node');
        assert.equal(await a.evaluate(() => window.ponte.id), idA, 'the ID survives the move to another node');
        assert.equal((await a.getByTestId('my-id').textContent()).replace('-', ''), idA);
        assert.ok(await a.getByTestId('banner').isHidden(), 'no "new ID" banner');
        await repaired([[a, idB], [b, idA]]);
        await chat(a, b, 'after the move');
        await chat(b, a, 'welcome to node 2');
        assert.equal(await a.locator('[data-testid=conversation]').count(), 1, 'still the one conversation');
        await screenshot(a, 'cluster-kill9-moved-desktop');
      } finally {
        // Node 1 comes back for the next test.
        await startNode(lab, 'n1');
        await waitHaproxy(lab, 'n1', 'UP');
      }
    });

    test('Redis killed and restarted: a pair on one node works meanwhile, a cross-node request gets a clear error, then works again', { timeout: 150000 }, async () => {
      const c = await newPage(lab.browsers[0]);
      const d = await newPage(lab.browsers[1], { mobile: true });
      const e = await newPage(lab.browsers[1]);
      lab.pages.push(c, d, e);
      await openApp(c, lab.urlFor.n1);
      const idD = await openApp(d, lab.urlFor.n1);
      const idE = await openApp(e, lab.urlFor.n2);
      assert.equal(await nodeOf(c), 'n1');
      assert.equal(await nodeOf(d), 'n1');
      assert.equal(await nodeOf(e), 'n2');

      // /healthz of each node, fetched by a page of that node's origin (the page's CSP allows only its own).
      const health = (up, timeout) => Promise.all([c, e].map((p) => p.waitForFunction(async (up) => {
        const r = await fetch('/healthz', { cache: 'no-store' });
        const j = await r.json();
        return up
          ? r.status === 200 && j.status === 'ok' && j.components.cluster === 'ok'
          : r.status === 503 && j.status === 'degraded' && j.components.cluster === 'failed';
      }, up, { timeout, polling: 500 })));
      await killRedis(lab);
      await health(false, 20000);
      // HAProxy keeps both nodes in: each still serves the browsers on it.
      await c.waitForTimeout(3000);
      await waitHaproxy(lab, 'n1', 'UP', 1000);
      await waitHaproxy(lab, 'n2', 'UP', 1000);

      // The pair of the earlier tests (when they ran) still chats.
      if (a && b) await chat(b, a, 'while Redis is down');
      // A new pair on one node: connect, incoming, accept, paired, signals all stay on node 1.
      await pair(c, d, idD);
      await waitConnected(c, 40000);
      await waitConnected(d, 40000);
      await chat(c, d, 'same node, no Redis');
      // A request to a browser on the other node: refused with the clear message, nothing left pending.
      await c.getByTestId('peer-id-input').fill(idE);
      await c.getByTestId('connect').click();
      const dE = `${idE.slice(0, 4)}-${idE.slice(4)}`;
      await c.waitForFunction((id) => document.querySelector('[data-testid=connect-message]').textContent.includes(id), dE, { timeout: 15000 });
      assert.match(await c.getByTestId('connect-message').textContent(), /link between the servers of this service is down/);
      assert.equal(await e.getByTestId('incoming-request').count(), 0, 'no request reached the other node');
      await screenshot(c, 'cluster-redis-down-desktop');

      await startRedis(lab);
      await health(true, 30000);
      // The nodes announced their browsers again into the empty Redis: the same request now goes through.
      const deadline = Date.now() + 30000;
      for (;;) {
        await c.getByTestId('peer-id-input').fill(idE);
        await c.getByTestId('connect').click();
        const got = await e.getByTestId('accept').waitFor({ timeout: 5000 }).then(() => true, () => false);
        if (got) break;
        assert.ok(Date.now() < deadline, `the request never reached the other node after Redis came back: ${await c.getByTestId('connect-message').textContent()}`);
      }
      await e.getByTestId('accept').click();
      await c.locator(`[data-testid=conversation][data-peer="${idE}"]`).click();
      await e.waitForSelector('[data-testid=connection-state][data-state=connected]', { timeout: 40000 });
      await chat(e, c, 'across nodes again');
      await c.locator(`[data-testid=conversation][data-peer="${idD}"]`).click();
      await chat(d, c, 'same node pair still fine');
    });
  });

  describe('two nodes, both homes behind symmetric NAT, neither home reaching the other node\'s relay ports', () => {
    let lab;
    before(async () => {
      lab = await startCluster({ nat1: 'symmetric', nat2: 'symmetric' });
      // Home 1 cannot send to node 2's relay ports, home 2 not to node 1's (their STUN/TURN port 3478 stays open):
      // while each browser is on its own node, the only path between them is browser 1 → its relay on node 1 ⇄
      // node 2's relay ← browser 2, node to node (no browser-to-foreign-relay shortcut through a symmetric NAT).
      for (const [home, other] of [['nat1', NODES.n2.wan], ['nat2', NODES.n1.wan]]) {
        execFileSync('ip', ['netns', 'exec', `${lab.prefix}-${home}`, 'iptables', '-I', 'FORWARD', '-d', other, '-p', 'udp', '--dport', '49152:65535', '-j', 'DROP']);
      }
    });
    after(async () => stopCluster(lab));

    let a;
    let b;
    let idA;
    let idB;
    test('relayed between allocations on different nodes, node to node', { timeout: 90000 }, async () => {
      ({ a, b, idA, idB } = await pairAcrossNodes(lab));
      await chat(a, b, 'relayed hello');
      await chat(b, a, 'relayed back');
      assert.match(await pathText(a, /relayed.*TURN/), /relayed through this server \(TURN (udp|tcp)/i);
      assert.match(await pathText(b, /relayed.*TURN/), /relayed through this server \(TURN (udp|tcp)/i);
      const pa = await selectedPath(a, idB);
      const pb = await selectedPath(b, idA);
      assert.deepEqual([pa.local.type, pa.local.address, pa.remote.type, pa.remote.address], ['relay', NODES.n1.wan, 'relay', NODES.n2.wan], JSON.stringify(pa));
      assert.deepEqual([pb.local.type, pb.local.address, pb.remote.type, pb.remote.address], ['relay', NODES.n2.wan, 'relay', NODES.n1.wan], JSON.stringify(pb));
      await a.getByTestId('details-toggle').click();
      await screenshot(a, 'cluster-relayed-desktop');
      await screenshot(b, 'cluster-relayed-360');
    });

    test('kill -9 of a node under the relayed chat: its browser moves to the other node, ICE restarts over that node\'s relay', { timeout: 150000}, async () => {
      assert.ok(a && b, 'the previous test paired a and b');
      // The RTCPeerConnection must survive the move.
      for (const [p, peer] of [[a, idB], [b, idA]]) {
        await p.evaluate((peer) => { window.pcBefore = window.ponte.conversation(peer).link.pc; }, peer);
      }
      const killed = await killNode(lab, 'n2');
      assert.equal(killed.signal, 'SIGKILL');
      await offline(b);
      // b's relay died with node 2: the path is down, and the pages say so without giving up.
      for (const p of [a, b]) await p.waitForSelector('[data-testid=connection-state][data-state=reconnecting]', { timeout: 45000 });
      await waitHaproxy(lab, 'n2', 'DOWN');
      await online(b);
      assert.equal(await nodeOf(b), 'n1', 'b reconnected to the surviving node');
      assert.equal(await b.evaluate(() => window.ponte.id), idB, 'the ID survives the move to another node');
      await repaired([[a, idB], [b, idA]]);
      await waitConnected(a, 60000);
      await waitConnected(b, 60000);
      for (const [p, peer] of [[a, idB], [b, idA]]) {
        assert.ok(await p.evaluate((peer) => window.ponte.conversation(peer).link.pc === window.pcBefore, peer), 'same RTCPeerConnection (ICE restart)');
      }
      assert.match(await pathText(b, /relay/), /relay/i);
      const after = await selectedPath(b, idA);
      const relays = [after.local, after.remote].filter((c) => c.type === 'relay').map((c) => c.address);
      assert.ok(relays.length > 0 && relays.every((x) => x === NODES.n1.wan), `relayed by node 1 now: ${JSON.stringify(after)}`);
      await chat(a, b, 'after the move');
      await chat(b, a, 'relayed again');
      await waitForMessage(b, 'relayed hello', 1000);
      await screenshot(b, 'cluster-kill9-relayed-restored-360');
    });
  });
});

/** A desktop on n1 and a phone on n2 (asserted from their ICE servers) pair and connect. */
async function pairAcrossNodes(lab) {
  const a = await newPage(lab.browsers[0]);
  const b = await newPage(lab.browsers[1], { mobile: true });
  lab.pages.push(a, b);
  const idA = await openApp(a, lab.urlFor.n1);
  const idB = await openApp(b, lab.urlFor.n2);
  assert.equal(await nodeOf(a), 'n1');
  assert.equal(await nodeOf(b), 'n2');
  await pair(a, b, idB);
  await waitConnected(a, 40000);
  await waitConnected(b, 40000);
  return { a, b, idA, idB };
}
