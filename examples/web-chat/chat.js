// The web chat: MQTT 5 over WebSocket with MQTT.js (the global `mqtt` of mqtt.min.js).
//
// Logging in connects as the user (user name + password) from a new device (client id),
// subscribes to the user's inbox (inbox/{me}/#) and asks the broker to replay the inbox log
// ($sync, empty payload: all of it). Every message in the inbox carries the user properties
// `from` (the authenticated sender), `seq` (its position in the inbox), which keys the list
// (a message seen both live and in the replay is shown once) and `id` (the broker's id of
// the message, the same for every recipient). It follows docs/chat.md: messages shown are
// reported read ($read/...), a peer's receipt marks my DMs to it read, a recall entry
// empties the message it names, and my own messages can be recalled.
//
// Element ids and data attributes are stable: conformance/js/web_chat.js drives this page.
'use strict';

const $ = (id) => document.getElementById(id);

let client = null; // the connection, while there is one
let me = null; // the logged-in user

$('url').value =
  new URLSearchParams(location.search).get('broker') ||
  `ws://${location.hostname || '127.0.0.1'}:8083/mqtt`;

/** The connection state, shown in #status and as body[data-state] (offline, connecting,
 * syncing, ready, error). */
function setState(state, text) {
  document.body.dataset.state = state;
  $('status').textContent = text;
}

function notice(text, isError) {
  $('notice').textContent = text;
  $('notice').className = isError ? 'error' : '';
}

$('login').addEventListener('submit', (event) => {
  event.preventDefault();
  login($('url').value.trim(), $('user').value.trim(), $('password').value);
});

$('logout').addEventListener('click', () => client && client.end());

$('send').addEventListener('submit', (event) => {
  event.preventDefault();
  const topic = `${$('kind').value}/${$('to').value.trim()}`;
  const text = $('text').value;
  // msgid: the broker drops a resend of the same (sender, msgid), so retrying is safe.
  const msgid = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  const options = { qos: 1, properties: { userProperties: { msgid } } };
  client.publish(topic, text, options, (err) => {
    if (err) {
      notice(`not sent to ${topic}: ${err.message}`, true);
    } else {
      notice(`sent to ${topic}`, false);
      $('text').value = '';
    }
  });
});

function login(url, user, password) {
  if (client) client.end(true); // a login still in progress
  setState('connecting', `connecting to ${url} ...`);
  const c = mqtt.connect(url, {
    protocolVersion: 5,
    username: user,
    password: password || undefined,
    clientId: `${user}-web-${Math.random().toString(36).slice(2, 10)}`,
    clean: true,
    reconnectPeriod: 0, // a refused login is shown, not retried
    connectTimeout: 10_000,
  });
  client = c;
  let connected = false;

  c.on('connect', () => {
    connected = true;
    me = user;
    $('me').textContent = user;
    $('inbox').replaceChildren();
    notice('', false);
    $('login').hidden = true;
    $('chat').hidden = false;
    setState('syncing', `loading the inbox of ${user} ...`);
    c.subscribe(`inbox/${user}/#`, { qos: 1 }, (err, granted) => {
      if (err || granted[0].qos >= 0x80) {
        setState('error', `cannot subscribe to the inbox: ${err ? err.message : 'refused'}`);
        return;
      }
      c.publish('$sync', '', { qos: 1 });
    });
  });

  c.on('message', (topic, payload, packet) => {
    const parts = topic.split('/');
    if (parts[0] !== 'inbox' || parts[1] !== me) return;
    if (parts[2] === 'receipt') {
      // {"id":"..."}: the peer read every DM of ours up to that message.
      const upTo = BigInt(JSON.parse(payload.toString()).id);
      for (const li of $('inbox').querySelectorAll(`li[data-kind="sent"][data-peer="${parts[3]}"]`)) {
        if (BigInt(li.dataset.id) <= upTo) li.dataset.read = 'true';
      }
      return;
    }
    if (parts[2] === 'read' || parts[2] === 'receipts') return; // another device of mine read
    if (parts[2] === 'sync') {
      // The end of a replay: {"after":..,"last":..,"next":..,"more":..}.
      const end = JSON.parse(payload.toString());
      if (end.more) {
        c.publish('$sync', String(end.last), { qos: 1 });
      } else {
        setState('ready', `logged in as ${me}`);
      }
      return;
    }
    const props = (packet.properties && packet.properties.userProperties) || {};
    if (props.seq === undefined) return; // not an inbox entry
    if (parts[2] === 'recall') {
      // A recall entry: the message it names loses its text, wherever it is shown.
      const gone = $('inbox').querySelector(`li[data-id="${props.recall}"]`);
      if (gone) recalled(gone);
      return;
    }
    const m = {
      seq: Number(props.seq),
      id: String(props.id),
      from: String(props.from),
      kind: parts[2], // dm, sent or group
      peer: parts[3], // the sender (dm), the recipient (sent) or the group (group)
      text: payload.toString(),
      recalled: props.recalled === 'true',
    };
    show(m);
    // Shown is read: the broker keeps the position and tells my other devices (and, for a
    // DM, the peer).
    const conversation = m.kind === 'group' ? `group/${m.peer}` : `dm/${m.peer}`;
    markRead(c, conversation, m.seq);
  });

  c.on('error', (err) => setState('error', `error: ${err.message}`));

  c.on('close', () => {
    if (client !== c) return;
    client = null;
    $('chat').hidden = true;
    $('login').hidden = false;
    if (document.body.dataset.state === 'error') return; // keep the reason on screen
    if (connected) setState('offline', 'disconnected');
    else setState('error', `cannot connect to ${url}`);
  });
}

/** Read positions waiting to be reported, per conversation: one report per conversation
 * for a burst of messages (a sync replays many at once). */
const unreported = new Map();
let reportTimer = null;

function markRead(c, conversation, seq) {
  unreported.set(conversation, Math.max(seq, unreported.get(conversation) ?? -1));
  reportTimer ??= setTimeout(() => {
    reportTimer = null;
    for (const [conv, last] of unreported) c.publish(`$read/${conv}`, String(last), { qos: 1 });
    unreported.clear();
  }, 200);
}

/** Marks a shown message recalled. */
function recalled(li) {
  li.dataset.recalled = 'true';
  li.querySelector('.text').textContent = '(recalled)';
  const button = li.querySelector('button.recall');
  if (button) button.remove();
}

/** Adds one inbox message to the list, in seq order, unless it is there already. */
function show(m) {
  const list = $('inbox');
  if (list.querySelector(`li[data-seq="${m.seq}"]`)) return;

  const li = document.createElement('li');
  li.className = 'message';
  Object.assign(li.dataset, { seq: m.seq, id: m.id, kind: m.kind, from: m.from, peer: m.peer });
  const to = { dm: 'you', sent: m.peer, group: `#${m.peer}` }[m.kind] || m.peer;
  for (const [cls, text] of [
    ['seq', m.seq],
    ['from', m.from === me ? 'you' : m.from],
    ['to', `→ ${to}`],
    ['text', m.text],
  ]) {
    const span = document.createElement('span');
    span.className = cls;
    span.textContent = text;
    li.append(span, ' ');
  }

  if (m.recalled) {
    recalled(li);
  } else if (m.from === me) {
    // Mine: recallable for im.recall_window_secs (the broker says no after that).
    const button = document.createElement('button');
    button.className = 'recall';
    button.textContent = 'recall';
    button.addEventListener('click', () =>
      client.publish('$recall', m.id, { qos: 1 }, (err) => {
        if (err) notice(`not recalled: ${err.message}`, true);
      }),
    );
    li.append(button);
  }

  const later = [...list.children].find((other) => Number(other.dataset.seq) > m.seq);
  list.insertBefore(li, later || null);
}
