#!/usr/bin/env node
// MQTT.js over TCP against a running tern, in MQTT 3.1.1 (protocolVersion 4) and 5.0:
// subscribe, publish at QoS 0, 1 and 2 and receive each at its QoS, a retained message that a
// later subscription gets with RETAIN set, and a direct message (dm/bob) that bob receives on
// inbox/bob/dm/alice (in 5.0 with the user properties `from` and `seq`).
//
//   node mqttjs_tcp.js PORT
//
// Clients connect without a password: on its loopback listener tern accepts them as the user
// their user name names. Prints one line per event; exits 0 only if everything arrived,
// 1 with the reason otherwise (2 on the overall timeout). Run by conformance/tests/js_clients.rs.
'use strict';

const mqtt = require('mqtt');

/** How long any one expected event may take. */
const EVENT_TIMEOUT_MS = 10_000;
/** The whole run. */
const RUN_TIMEOUT_MS = 45_000;

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node mqttjs_tcp.js PORT');
  process.exit(64);
}

const watchdog = setTimeout(() => {
  console.error(`FAIL: not done within ${RUN_TIMEOUT_MS} ms`);
  process.exit(2);
}, RUN_TIMEOUT_MS);

/** Rejects with "timed out: what" unless `promise` settles in time. */
function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), EVENT_TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A connected client and every message it has received, to wait on. */
class Client {
  static async connect(name, protocolVersion, username) {
    const mqttClient = await within(
      mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
        protocolVersion,
        clientId: `${name}-v${protocolVersion}`,
        username,
        clean: true,
        reconnectPeriod: 0,
        connectTimeout: EVENT_TIMEOUT_MS,
      }),
      `${name} connects`,
    );
    return new Client(name, mqttClient);
  }

  constructor(name, mqttClient) {
    this.name = name;
    this.mqtt = mqttClient;
    this.received = [];
    this.waiters = [];
    mqttClient.on('message', (topic, payload, packet) => {
      const message = {
        topic,
        payload: payload.toString(),
        qos: packet.qos,
        retain: packet.retain,
        userProperties: packet.properties?.userProperties ?? {},
      };
      this.received.push(message);
      this.waiters = this.waiters.filter((w) => !w.check(message));
    });
    mqttClient.on('error', (e) => console.log(`${name}: error: ${e.message}`));
  }

  /** The first message (already received or still to come) on `topic`. */
  next(topic) {
    const found = this.received.find((m) => m.topic === topic);
    if (found) return Promise.resolve(found);
    const arrived = new Promise((resolve) => {
      this.waiters.push({
        check: (m) => m.topic === topic && (resolve(m), true),
      });
    });
    return within(arrived, `${this.name} receives ${topic}`);
  }

  async subscribe(filter, qos) {
    const granted = await within(
      this.mqtt.subscribeAsync(filter, { qos }),
      `${this.name} SUBACK for ${filter}`,
    );
    const codes = granted.map((g) => g.qos);
    console.log(`${this.name}: subscribed ${filter} -> granted ${codes.join(',')}`);
    if (codes[0] !== qos) throw new Error(`${filter}: granted ${codes} instead of QoS ${qos}`);
  }

  async publish(topic, payload, qos, extra = {}) {
    await within(
      this.mqtt.publishAsync(topic, payload, { qos, ...extra }),
      `${this.name} publishes ${topic} at QoS ${qos}`,
    );
  }

  end() {
    return within(this.mqtt.endAsync(), `${this.name} disconnects`);
  }
}

function show(version, message) {
  const props = Object.entries(message.userProperties)
    .map(([k, v]) => ` ${k}=${v}`)
    .join('');
  return (
    `v${version} recv ${message.topic} qos=${message.qos} retain=${message.retain}` +
    ` payload=${message.payload}${props}`
  );
}

function expect(condition, what) {
  if (!condition) throw new Error(what);
}

async function run(version) {
  const sub = await Client.connect('js-sub', version, `sub${version}`);
  const pub = await Client.connect('js-pub', version, `pub${version}`);

  // Live messages at QoS 0, 1 and 2 to a QoS 2 subscription: each arrives at its own QoS.
  const live = `js/v${version}/live`;
  await sub.subscribe(`${live}/#`, 2);
  for (const qos of [0, 1, 2]) {
    const topic = `${live}/q${qos}`;
    await pub.publish(topic, `hello qos${qos}`, qos);
    const m = await sub.next(topic);
    console.log(show(version, m));
    expect(m.payload === `hello qos${qos}`, `${topic}: payload ${m.payload}`);
    expect(m.qos === qos, `${topic}: arrived at QoS ${m.qos}`);
    expect(!m.retain, `${topic}: RETAIN set on a live message`);
  }

  // A retained message reaches a later subscription, with RETAIN set.
  const kept = `js/v${version}/kept`;
  await pub.publish(kept, `kept v${version}`, 1, { retain: true });
  await sub.subscribe(kept, 1);
  const r = await sub.next(kept);
  console.log(show(version, r));
  const keptOk = r.payload === `kept v${version}` && r.retain && r.qos === 1;
  expect(keptOk, `${kept}: ${show(version, r)}`);

  // A direct message: alice -> bob.
  const alice = await Client.connect('alice', version, 'alice');
  const bob = await Client.connect('bob', version, 'bob');
  await bob.subscribe('inbox/bob/#', 1);
  await alice.publish('dm/bob', `hi bob v${version}`, 1);
  const dm = await bob.next('inbox/bob/dm/alice');
  console.log(show(version, dm));
  expect(dm.payload === `hi bob v${version}` && dm.qos === 1, `dm: ${show(version, dm)}`);
  if (version === 5) {
    const { from, seq } = dm.userProperties;
    expect(from === 'alice', `dm: user property from=${from}, expected alice`);
    expect(/^\d+$/.test(String(seq)), `dm: user property seq=${seq}, expected a number`);
  }

  for (const c of [sub, pub, alice, bob]) await c.end();
  console.log(`v${version} OK`);
}

(async () => {
  try {
    await run(4);
    await run(5);
  } catch (e) {
    console.error(`FAIL: ${e.message}`);
    process.exit(1);
  }
  clearTimeout(watchdog);
  console.log('ALL OK');
})();
