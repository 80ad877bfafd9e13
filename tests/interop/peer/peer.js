#!/usr/bin/env node
// libsignal peer for Parley's interop tests.
//
// Usage: node peer.js <version>      version: 0.90 | 0.90.0 | 090 | current | 0.103 | 0.103.0
//
// Protocol: JSON lines. Each line on stdin is one request {"id": any, "op": "...", ...}; each
// request gets exactly one line on stdout: {"id": same, "ok": true, ...result} or
// {"id": same, "ok": false, "error": "<libsignal's message>", "error_name": "...", "log": [...]}.
// Binary values travel as standard base64 strings. Requests are handled strictly in order.
// Nothing but responses is ever written to stdout (console.log is redirected to stderr).
//
// libsignal's warnings/errors emitted while handling a failed request are returned in its "log"
// field (they hold the real rejection reason). LIBSIGNAL_LOG=1 (or info|debug|trace) also prints
// libsignal's log, at that level, to stderr.
//
// See tests/interop/libsignal_peer.py for the ops and their fields.
'use strict';

const path = require('node:path');
const fs = require('node:fs');
const readline = require('node:readline');

// stdout is the response channel: keep stray prints away from it.
console.log = (...args) => console.error(...args);
console.info = console.log;

const VERSIONS = {
  '0.90': 'libsignal-090',
  '0.90.0': 'libsignal-090',
  '090': 'libsignal-090',
  'libsignal-090': 'libsignal-090',
  current: 'libsignal-current',
  '0.103': 'libsignal-current',
  '0.103.0': 'libsignal-current',
  'libsignal-current': 'libsignal-current',
};

function fail(msg) {
  process.stderr.write(`peer.js: ${msg}\n`);
  process.exit(2);
}

const versionArg = process.argv[2];
if (!versionArg || !(versionArg in VERSIONS)) {
  fail(`usage: node peer.js <${Object.keys(VERSIONS).join('|')}>`);
}
const alias = VERSIONS[versionArg];
const pkgDir = path.join(__dirname, 'node_modules', alias);
if (!fs.existsSync(pkgDir)) {
  fail(`${pkgDir} is missing: run "npm ci" in ${__dirname}`);
}
const libVersion = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8')).version;

let S; // the libsignal module, loaded in main()
// From 0.91-ish on, the session functions take the local address as an extra argument.
let takesLocalAddress = false;

// ---------------------------------------------------------------------------------------------
// helpers

const b64 = (buf) => Buffer.from(buf).toString('base64');
function unb64(s, field) {
  if (typeof s !== 'string') throw new RequestError(`field "${field}" must be a base64 string`);
  const buf = Buffer.from(s, 'base64');
  // Fresh ArrayBuffer-backed Uint8Array (libsignal's types want Uint8Array<ArrayBuffer>).
  return new Uint8Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
}
function optB64(s, field) {
  return s === undefined || s === null ? null : unb64(s, field);
}
function int(v, field, dflt) {
  if (v === undefined || v === null) {
    if (dflt !== undefined) return dflt;
    throw new RequestError(`field "${field}" is required`);
  }
  if (!Number.isInteger(v) || v < 0) throw new RequestError(`field "${field}" must be a non-negative integer`);
  return v;
}
function str(v, field) {
  if (typeof v !== 'string' || v.length === 0) throw new RequestError(`field "${field}" must be a non-empty string`);
  return v;
}

class RequestError extends Error {
  constructor(message) {
    super(message);
    this.name = 'RequestError';
  }
}

const LOG_LEVELS = { 1: 'Info', info: 'Info', debug: 'Debug', trace: 'Trace', warn: 'Warn', error: 'Error' };
let logCapture = null; // array collecting log lines during the current request

function setupLogging() {
  // libsignal's error messages are often generic ("invalid PreKey message: decryption failed");
  // the real reason ("post-quantum ratchet error: Minimum version", "Bad Mac!") is only logged.
  // So warnings and errors are always captured and returned with a failed request; with
  // LIBSIGNAL_LOG set they (and lower levels, as asked) are also printed to stderr.
  const env = (process.env.LIBSIGNAL_LOG || '').toLowerCase();
  const print = !!env && env !== '0' && env !== 'false';
  const levelName = print ? LOG_LEVELS[env] || 'Info' : 'Warn';
  const names = { 1: 'ERROR', 2: 'WARN', 3: 'INFO', 4: 'DEBUG', 5: 'TRACE' };
  S.initLogger(S.LogLevel[levelName], (level, target, file, line, message) => {
    const text = `libsignal ${names[level] || level} ${target}${file ? ` ${file}:${line}` : ''}: ${message}`;
    if (print) process.stderr.write(`[${libVersion}] ${text}\n`);
    if (logCapture) logCapture.push(text);
  });
}

// ---------------------------------------------------------------------------------------------
// in-memory stores (one set per local identity)

function makeStores(identityPrivate, registrationId) {
  class Sessions extends S.SessionStore {
    constructor() {
      super();
      this.map = new Map();
    }
    async saveSession(addr, record) {
      this.map.set(addr.toString(), record.serialize());
    }
    async getSession(addr) {
      const raw = this.map.get(addr.toString());
      return raw ? S.SessionRecord.deserialize(raw) : null;
    }
    async getExistingSessions(addrs) {
      return addrs.map((a) => {
        const raw = this.map.get(a.toString());
        if (!raw) throw new Error(`no session for ${a.toString()}`);
        return S.SessionRecord.deserialize(raw);
      });
    }
  }
  class Identities extends S.IdentityKeyStore {
    constructor() {
      super();
      this.map = new Map();
    }
    async getIdentityKey() {
      return identityPrivate;
    }
    async getLocalRegistrationId() {
      return registrationId;
    }
    async saveIdentity(addr, key) {
      const k = addr.toString();
      const old = this.map.get(k);
      this.map.set(k, key);
      return old && !old.equals(key) ? S.IdentityChange.ReplacedExisting : S.IdentityChange.NewOrUnchanged;
    }
    async isTrustedIdentity(addr, key, _direction) {
      const old = this.map.get(addr.toString());
      return !old || old.equals(key); // trust on first use
    }
    async getIdentity(addr) {
      return this.map.get(addr.toString()) || null;
    }
  }
  class PreKeys extends S.PreKeyStore {
    constructor() {
      super();
      this.map = new Map();
    }
    async savePreKey(id, record) {
      this.map.set(id, record);
    }
    async getPreKey(id) {
      const r = this.map.get(id);
      if (!r) throw new Error(`no one-time prekey with id ${id}`);
      return r;
    }
    async removePreKey(id) {
      this.map.delete(id);
    }
  }
  class SignedPreKeys extends S.SignedPreKeyStore {
    constructor() {
      super();
      this.map = new Map();
    }
    async saveSignedPreKey(id, record) {
      this.map.set(id, record);
    }
    async getSignedPreKey(id) {
      const r = this.map.get(id);
      if (!r) throw new Error(`no signed prekey with id ${id}`);
      return r;
    }
  }
  class KyberPreKeys extends S.KyberPreKeyStore {
    constructor() {
      super();
      this.map = new Map();
      this.lastResort = new Set();
      this.used = [];
    }
    async saveKyberPreKey(id, record) {
      this.map.set(id, record);
    }
    async getKyberPreKey(id) {
      const r = this.map.get(id);
      if (!r) throw new Error(`no kyber prekey with id ${id}`);
      return r;
    }
    async markKyberPreKeyUsed(id, signedPreKeyId, baseKey) {
      this.used.push({ id, signed_pre_key_id: signedPreKeyId, base_key: b64(baseKey.serialize()) });
      if (!this.lastResort.has(id)) this.map.delete(id); // one-time Kyber prekeys are consumed
    }
  }
  return {
    sessions: new Sessions(),
    identities: new Identities(),
    preKeys: new PreKeys(),
    signedPreKeys: new SignedPreKeys(),
    kyberPreKeys: new KyberPreKeys(),
  };
}

// ---------------------------------------------------------------------------------------------
// identities

const identities = new Map(); // "name.device" -> identity

function address(name, deviceId) {
  return S.ProtocolAddress.new(name, deviceId);
}

function createIdentity(name, deviceId, opts) {
  const priv = opts.identityPrivate ? S.PrivateKey.deserialize(opts.identityPrivate) : S.PrivateKey.generate();
  const registrationId = opts.registrationId ?? 1 + Math.floor(Math.random() * 16380);
  const id = {
    name,
    deviceId,
    address: address(name, deviceId),
    priv,
    pub: priv.getPublicKey(),
    registrationId,
    stores: makeStores(priv, registrationId),
    nextPreKeyId: 1,
    nextSignedPreKeyId: 1,
    nextKyberPreKeyId: 1,
  };
  identities.set(`${name}.${deviceId}`, id);
  return id;
}

function getIdentity(req) {
  const name = str(req.name, 'name');
  const deviceId = int(req.device_id, 'device_id');
  const id = identities.get(`${name}.${deviceId}`);
  if (!id) throw new RequestError(`unknown local identity ${name}.${deviceId} (create_identity first)`);
  return id;
}

function remoteAddress(req) {
  return address(str(req.remote_name, 'remote_name'), int(req.remote_device_id, 'remote_device_id'));
}

function generateBundle(me, opts = {}) {
  const st = me.stores;
  const now = Date.now();
  let preKeyId = null;
  let preKeyPub = null;
  if (opts.includePreKey !== false) {
    preKeyId = opts.preKeyId ?? me.nextPreKeyId++;
    const pk = S.PrivateKey.generate();
    preKeyPub = pk.getPublicKey();
    st.preKeys.map.set(preKeyId, S.PreKeyRecord.new(preKeyId, preKeyPub, pk));
  }
  const spkId = opts.signedPreKeyId ?? me.nextSignedPreKeyId++;
  const spk = S.PrivateKey.generate();
  const spkPub = spk.getPublicKey();
  const spkSig = me.priv.sign(spkPub.serialize());
  st.signedPreKeys.map.set(spkId, S.SignedPreKeyRecord.new(spkId, now, spkPub, spk, spkSig));
  const kyberId = opts.kyberPreKeyId ?? me.nextKyberPreKeyId++;
  const kyber = S.KEMKeyPair.generate();
  const kyberPub = kyber.getPublicKey();
  const kyberSig = me.priv.sign(kyberPub.serialize());
  st.kyberPreKeys.map.set(kyberId, S.KyberPreKeyRecord.new(kyberId, now, kyber, kyberSig));
  if (opts.kyberLastResort) st.kyberPreKeys.lastResort.add(kyberId);
  return {
    registration_id: me.registrationId,
    device_id: me.deviceId,
    pre_key_id: preKeyId,
    pre_key: preKeyPub ? b64(preKeyPub.serialize()) : null,
    signed_pre_key_id: spkId,
    signed_pre_key: b64(spkPub.serialize()),
    signed_pre_key_signature: b64(spkSig),
    kyber_pre_key_id: kyberId,
    kyber_pre_key: b64(kyberPub.serialize()),
    kyber_pre_key_signature: b64(kyberSig),
    identity_key: b64(me.pub.serialize()),
  };
}

function bundleFromJson(b) {
  if (!b || typeof b !== 'object') throw new RequestError('field "bundle" must be an object');
  const hasPreKey = b.pre_key_id !== undefined && b.pre_key_id !== null;
  return S.PreKeyBundle.new(
    int(b.registration_id, 'bundle.registration_id'),
    int(b.device_id, 'bundle.device_id'),
    hasPreKey ? int(b.pre_key_id, 'bundle.pre_key_id') : null,
    hasPreKey ? S.PublicKey.deserialize(unb64(b.pre_key, 'bundle.pre_key')) : null,
    int(b.signed_pre_key_id, 'bundle.signed_pre_key_id'),
    S.PublicKey.deserialize(unb64(b.signed_pre_key, 'bundle.signed_pre_key')),
    unb64(b.signed_pre_key_signature, 'bundle.signed_pre_key_signature'),
    S.PublicKey.deserialize(unb64(b.identity_key, 'bundle.identity_key')),
    int(b.kyber_pre_key_id, 'bundle.kyber_pre_key_id'),
    S.KEMPublicKey.deserialize(unb64(b.kyber_pre_key, 'bundle.kyber_pre_key')),
    unb64(b.kyber_pre_key_signature, 'bundle.kyber_pre_key_signature'),
  );
}

// Version-independent wrappers around the session functions.
function processBundle(me, remote, bundle) {
  const st = me.stores;
  return takesLocalAddress
    ? S.processPreKeyBundle(bundle, remote, me.address, st.sessions, st.identities)
    : S.processPreKeyBundle(bundle, remote, st.sessions, st.identities);
}
function encrypt(me, remote, plaintext) {
  const st = me.stores;
  return takesLocalAddress
    ? S.signalEncrypt(plaintext, remote, me.address, st.sessions, st.identities)
    : S.signalEncrypt(plaintext, remote, st.sessions, st.identities);
}
function decrypt(me, remote, type, body) {
  const st = me.stores;
  if (type === 3) {
    const msg = S.PreKeySignalMessage.deserialize(body);
    return takesLocalAddress
      ? S.signalDecryptPreKey(msg, remote, me.address, st.sessions, st.identities, st.preKeys, st.signedPreKeys, st.kyberPreKeys)
      : S.signalDecryptPreKey(msg, remote, st.sessions, st.identities, st.preKeys, st.signedPreKeys, st.kyberPreKeys);
  }
  if (type === 2) {
    const msg = S.SignalMessage.deserialize(body);
    return takesLocalAddress
      ? S.signalDecrypt(msg, remote, me.address, st.sessions, st.identities)
      : S.signalDecrypt(msg, remote, st.sessions, st.identities);
  }
  throw new RequestError(`message type must be 2 (SignalMessage) or 3 (PreKeySignalMessage), got ${type}`);
}

// ---------------------------------------------------------------------------------------------
// benchmark (runs entirely inside Node)

async function bench(kind, n, size) {
  const tag = `bench${Math.random().toString(36).slice(2, 8)}`;
  const alice = createIdentity(`${tag}-alice`, 1, {});
  const bob = createIdentity(`${tag}-bob`, 1, {});
  const payload = new Uint8Array(size).fill(0x61);
  const hr = () => process.hrtime.bigint();
  try {
    if (kind === 'setup') {
      // n fresh sessions: bundle processing + first message + decryption by the responder.
      const bundles = [];
      for (let i = 0; i < n; i++) bundles.push(bundleFromJson(generateBundle(bob)));
      const t0 = hr();
      for (let i = 0; i < n; i++) {
        const aAddr = address(`${tag}-alice${i}`, 1);
        const pt = await runSetup(alice, aAddr, bob, bundles[i], payload);
        if (pt.length !== size) throw new Error('bench: bad plaintext');
      }
      const dt = Number(hr() - t0) / 1e9;
      return { ops: n, seconds: dt, per_second: n / dt };
    }
    // Establish a session with one round trip so that following messages are SignalMessages.
    await processBundle(alice, bob.address, bundleFromJson(generateBundle(bob)));
    let ct = await encrypt(alice, bob.address, payload);
    await decrypt(bob, alice.address, ct.type(), ct.serialize());
    ct = await encrypt(bob, alice.address, payload);
    await decrypt(alice, bob.address, ct.type(), ct.serialize());
    const t0 = hr();
    for (let i = 0; i < n; i++) {
      // symmetric: Alice keeps sending (chain-key steps only); dh: the sides alternate, so every
      // message starts a new DH ratchet step (and, with SPQR, a post-quantum ratchet step).
      const [from, to] = kind === 'dh' && i % 2 === 1 ? [bob, alice] : [alice, bob];
      const c = await encrypt(from, to.address, payload);
      const pt = await decrypt(to, from.address, c.type(), c.serialize());
      if (pt.length !== size) throw new Error('bench: bad plaintext');
    }
    const dt = Number(hr() - t0) / 1e9;
    return { ops: n, seconds: dt, per_second: n / dt };
  } finally {
    identities.delete(`${alice.name}.1`);
    identities.delete(`${bob.name}.1`);
  }
}

async function runSetup(alice, aliceAddrForBob, bob, bundle, payload) {
  // Alice uses a throwaway local address per setup so that stores start fresh each time.
  const st = alice.stores;
  const bobAddr = bob.address;
  const aliceLocal = aliceAddrForBob;
  if (takesLocalAddress) {
    await S.processPreKeyBundle(bundle, bobAddr, aliceLocal, st.sessions, st.identities);
  } else {
    await S.processPreKeyBundle(bundle, bobAddr, st.sessions, st.identities);
  }
  const c = takesLocalAddress
    ? await S.signalEncrypt(payload, bobAddr, aliceLocal, st.sessions, st.identities)
    : await S.signalEncrypt(payload, bobAddr, st.sessions, st.identities);
  return decrypt(bob, aliceAddrForBob, c.type(), c.serialize());
}

// ---------------------------------------------------------------------------------------------
// ops

function identityInfo(id) {
  return {
    name: id.name,
    device_id: id.deviceId,
    identity_key: b64(id.pub.serialize()),
    identity_private: b64(id.priv.serialize()),
    registration_id: id.registrationId,
  };
}

const ops = {
  async hello() {
    return {
      package: alias,
      libsignal_version: libVersion,
      takes_local_address: takesLocalAddress,
      node_version: process.version,
    };
  },

  async create_identity(req) {
    const name = str(req.name, 'name');
    const deviceId = int(req.device_id, 'device_id');
    if (identities.has(`${name}.${deviceId}`)) throw new RequestError(`identity ${name}.${deviceId} already exists`);
    const id = createIdentity(name, deviceId, {
      identityPrivate: optB64(req.identity_private, 'identity_private'),
      registrationId: req.registration_id === undefined || req.registration_id === null ? undefined : int(req.registration_id, 'registration_id'),
    });
    return identityInfo(id);
  },

  async generate_bundle(req) {
    const me = getIdentity(req);
    return {
      bundle: generateBundle(me, {
        includePreKey: req.include_pre_key !== false,
        preKeyId: req.pre_key_id ?? undefined,
        signedPreKeyId: req.signed_pre_key_id ?? undefined,
        kyberPreKeyId: req.kyber_pre_key_id ?? undefined,
        kyberLastResort: req.kyber_last_resort === true,
      }),
    };
  },

  async process_bundle(req) {
    const me = getIdentity(req);
    await processBundle(me, remoteAddress(req), bundleFromJson(req.bundle));
    return {};
  },

  async encrypt(req) {
    const me = getIdentity(req);
    const c = await encrypt(me, remoteAddress(req), unb64(req.plaintext, 'plaintext'));
    return { type: c.type(), body: b64(c.serialize()) };
  },

  async decrypt(req) {
    const me = getIdentity(req);
    const pt = await decrypt(me, remoteAddress(req), int(req.type, 'type'), unb64(req.body, 'body'));
    return { plaintext: b64(pt) };
  },

  async session_info(req) {
    const me = getIdentity(req);
    const rec = await me.stores.sessions.getSession(remoteAddress(req));
    if (!rec) return { exists: false };
    const out = { exists: true, has_current_state: rec.hasCurrentState() };
    try {
      out.remote_registration_id = rec.remoteRegistrationId();
      out.local_registration_id = rec.localRegistrationId();
    } catch {
      // no current state
    }
    return out;
  },

  // The serialized session record (for "unchanged after a rejected message" checks).
  async session_record(req) {
    const me = getIdentity(req);
    const rec = await me.stores.sessions.getSession(remoteAddress(req));
    return { record: rec ? b64(rec.serialize()) : null };
  },

  async archive_session(req) {
    const me = getIdentity(req);
    const remote = remoteAddress(req);
    const rec = await me.stores.sessions.getSession(remote);
    if (rec) {
      rec.archiveCurrentState();
      await me.stores.sessions.saveSession(remote, rec);
    }
    return { existed: !!rec };
  },

  async delete_session(req) {
    const me = getIdentity(req);
    return { existed: me.stores.sessions.map.delete(remoteAddress(req).toString()) };
  },

  async remote_identity(req) {
    const me = getIdentity(req);
    const k = await me.stores.identities.getIdentity(remoteAddress(req));
    return { identity_key: k ? b64(k.serialize()) : null };
  },

  async kyber_prekeys_used(req) {
    const me = getIdentity(req);
    return { used: me.stores.kyberPreKeys.used };
  },

  async sign(req) {
    const priv = req.private_key !== undefined && req.private_key !== null
      ? S.PrivateKey.deserialize(unb64(req.private_key, 'private_key'))
      : getIdentity(req).priv;
    return { signature: b64(priv.sign(unb64(req.message, 'message'))) };
  },

  async verify(req) {
    const pub = S.PublicKey.deserialize(unb64(req.public_key, 'public_key'));
    return { valid: pub.verify(unb64(req.message, 'message'), unb64(req.signature, 'signature')) };
  },

  async generate_key_pair() {
    const priv = S.PrivateKey.generate();
    return { private_key: b64(priv.serialize()), public_key: b64(priv.getPublicKey().serialize()) };
  },

  async public_key(req) {
    const priv = S.PrivateKey.deserialize(unb64(req.private_key, 'private_key'));
    return { public_key: b64(priv.getPublicKey().serialize()) };
  },

  async agree(req) {
    const priv = S.PrivateKey.deserialize(unb64(req.private_key, 'private_key'));
    const pub = S.PublicKey.deserialize(unb64(req.public_key, 'public_key'));
    return { shared_secret: b64(priv.agree(pub)) };
  },

  async hkdf(req) {
    const out = S.hkdf(
      int(req.length, 'length'),
      unb64(req.ikm, 'ikm'),
      unb64(req.info ?? '', 'info'),
      optB64(req.salt, 'salt'),
    );
    return { output: b64(out) };
  },

  async parse_message(req) {
    const type = int(req.type, 'type');
    const body = unb64(req.body, 'body');
    const sigInfo = (m) => ({
      version: m.messageVersion(),
      counter: m.counter(),
      ciphertext: b64(m.body()),
      pq_ratchet: b64(m.pqRatchet()),
    });
    if (type === 2) return { signal_message: sigInfo(S.SignalMessage.deserialize(body)) };
    if (type === 3) {
      const m = S.PreKeySignalMessage.deserialize(body);
      // The inner SignalMessage is field 4 of the protobuf after the version byte.
      const inner = protoField(body.subarray(1), 4);
      return {
        version: m.version(),
        registration_id: m.registrationId(),
        pre_key_id: m.preKeyId(),
        signed_pre_key_id: m.signedPreKeyId(),
        signal_message: inner ? sigInfo(S.SignalMessage.deserialize(new Uint8Array(inner))) : null,
      };
    }
    throw new RequestError(`message type must be 2 or 3, got ${type}`);
  },

  async bench(req) {
    const kind = str(req.kind, 'kind');
    if (!['symmetric', 'dh', 'setup'].includes(kind)) throw new RequestError('kind must be symmetric, dh or setup');
    return bench(kind, int(req.n, 'n'), int(req.size, 'size', 256));
  },

  async shutdown() {
    setImmediate(() => process.exit(0));
    return {};
  },
};

// Minimal protobuf reader: returns the bytes of the first length-delimited field `want`.
function protoField(buf, want) {
  let i = 0;
  const varint = () => {
    let v = 0;
    let shift = 0;
    for (;;) {
      if (i >= buf.length) throw new RequestError('truncated protobuf');
      const b = buf[i++];
      v += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) return v;
      shift += 7;
    }
  };
  while (i < buf.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    const wt = key & 7;
    if (wt === 0) varint();
    else if (wt === 2) {
      const len = varint();
      const start = i;
      i += len;
      if (field === want) return buf.slice(start, i);
    } else if (wt === 1) i += 8;
    else if (wt === 5) i += 4;
    else throw new RequestError(`unsupported protobuf wire type ${wt}`);
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// main loop

function write(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

async function handle(line) {
  let req;
  try {
    req = JSON.parse(line);
  } catch (e) {
    write({ id: null, ok: false, error: `bad JSON request: ${e.message}`, error_name: 'RequestError' });
    return;
  }
  const id = req && typeof req === 'object' ? req.id ?? null : null;
  const op = req && typeof req === 'object' ? ops[req.op] : undefined;
  if (!op || !Object.prototype.hasOwnProperty.call(ops, req.op)) {
    write({ id, ok: false, error: `unknown op ${JSON.stringify(req && req.op)}`, error_name: 'RequestError' });
    return;
  }
  logCapture = [];
  try {
    const result = await op(req);
    write({ id, ok: true, ...result });
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    write({
      id,
      ok: false,
      error: err.message || String(err),
      error_name: err.name || 'Error',
      error_code: err.code ?? null,
      log: logCapture,
    });
  } finally {
    logCapture = null;
  }
}

async function main() {
  S = await import(alias);
  takesLocalAddress = S.processPreKeyBundle.length >= 5 && S.signalDecrypt.length >= 5;
  setupLogging();
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  // Strictly sequential: queue lines and handle one at a time.
  let chain = Promise.resolve();
  rl.on('line', (line) => {
    if (line.trim() === '') return;
    chain = chain.then(() => handle(line));
  });
  rl.on('close', () => {
    chain.then(() => process.exit(0));
  });
  write({ id: 'ready', ok: true, package: alias, libsignal_version: libVersion });
}

process.on('unhandledRejection', (e) => {
  process.stderr.write(`peer.js: unhandled rejection: ${e && e.stack ? e.stack : e}\n`);
});
process.on('uncaughtException', (e) => {
  process.stderr.write(`peer.js: uncaught exception: ${e && e.stack ? e.stack : e}\n`);
});

main().catch((e) => fail(`failed to load ${alias}: ${e && e.stack ? e.stack : e}`));
