import * as grpc from '@grpc/grpc-js';

import { VaultError, toVaultError } from './errors.js';
import { DEFAULT_PROTO_ROOT, SERVICE_NAMES, loadVaultProtos } from './protos.js';

export const DEFAULT_DEADLINE_MS = 10_000;

const DEFAULT_CHANNEL_OPTIONS = Object.freeze({
  // A resolve of many large fields can exceed grpc's 4 MiB default.
  'grpc.max_receive_message_length': 64 * 1024 * 1024,
});

function toBuffer(v, what) {
  if (v === undefined || v === null) return null;
  if (Buffer.isBuffer(v)) return v;
  if (typeof v === 'string') return Buffer.from(v);
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw new TypeError(`tls.${what} must be a Buffer, Uint8Array or PEM string`);
}

function channelCredentials(tls) {
  if (tls === undefined || tls === null || tls === false) {
    // Plain text only when no TLS was asked for.
    return grpc.credentials.createInsecure();
  }
  const opts = tls === true ? {} : tls;
  const rootCerts = toBuffer(opts.rootCerts, 'rootCerts');
  const privateKey = toBuffer(opts.privateKey, 'privateKey');
  const certChain = toBuffer(opts.certChain, 'certChain');
  if (Boolean(privateKey) !== Boolean(certChain)) {
    throw new TypeError('tls.privateKey and tls.certChain must be given together');
  }
  return grpc.credentials.createSsl(rootCerts, privateKey, certChain);
}

function lowerFirst(s) {
  return s.charAt(0).toLowerCase() + s.slice(1);
}

function checkDeadline(ms, what) {
  if (typeof ms !== 'number' || !Number.isFinite(ms) || ms <= 0) {
    throw new TypeError(`${what} must be a positive number of milliseconds`);
  }
  return ms;
}

/**
 * Creates a promise-based client for every RPC of SecretService,
 * ConfigService, ResolverService, AuditService and AccessService over one
 * channel.
 *
 * No call is retried: a failed call rejects once. That is deliberate for
 * writes, and above all for createToken, which mints a credential (a retried
 * create whose first answer was lost would mint two tokens; the Python
 * client's RPC policy table never retries it either).
 *
 * @param {object} opts
 * @param {string} opts.address  host:port, e.g. "127.0.0.1:50051"
 * @param {string} [opts.token]  bearer token; sent as `authorization: Bearer <token>`
 * @param {{rootCerts?: Buffer|string, privateKey?: Buffer|string, certChain?: Buffer|string}|true} [opts.tls]
 *        TLS settings; omit for a plain-text channel (development only)
 * @param {number} [opts.deadlineMs=10000]  default per-call deadline
 * @param {string} [opts.protoRoot]  directory holding interakt/vault/v1/*.proto (default: the @interakt/vault-api package)
 * @param {object} [opts.channelOptions]  extra grpc-js channel options
 *
 * Every method is `method(request = {}, {deadlineMs, metadata} = {})` and
 * resolves to the response object (field names as in the .proto files), or
 * rejects with a VaultError (`code`, `codeName`, `details`, `reason`, ...).
 */
export function createVaultClient({
  address,
  token,
  tls,
  deadlineMs = DEFAULT_DEADLINE_MS,
  protoRoot = DEFAULT_PROTO_ROOT,
  channelOptions = {},
} = {}) {
  if (typeof address !== 'string' || address === '') {
    throw new TypeError('address is required (host:port)');
  }
  if (token !== undefined && token !== null && typeof token !== 'string') {
    throw new TypeError('token must be a string');
  }
  checkDeadline(deadlineMs, 'deadlineMs');

  const { services } = loadVaultProtos(protoRoot);
  const creds = channelCredentials(tls);
  const options = { ...DEFAULT_CHANNEL_OPTIONS, ...channelOptions };

  const grpcClients = {};
  let channel = null;
  for (const name of SERVICE_NAMES) {
    const Ctor = services[name];
    const c = channel
      ? new Ctor(address, creds, { ...options, channelOverride: channel })
      : new Ctor(address, creds, options);
    channel ??= c.getChannel();
    grpcClients[name] = c;
  }

  function callMetadata(extra) {
    const md = new grpc.Metadata();
    if (token) md.set('authorization', `Bearer ${token}`);
    if (extra) {
      const src = extra instanceof grpc.Metadata ? extra.getMap() : extra;
      for (const [k, v] of Object.entries(src)) md.add(k, v);
    }
    return md;
  }

  const api = {};
  const methods = [];
  for (const name of SERVICE_NAMES) {
    const c = grpcClients[name];
    for (const [rpc, def] of Object.entries(services[name].service)) {
      if (def.requestStream || def.responseStream) continue; // the vault has only unary RPCs
      const jsName = lowerFirst(rpc);
      if (jsName in api) {
        throw new Error(`RPC name clash: ${jsName} exists in more than one service`);
      }
      methods.push(jsName);
      api[jsName] = (request = {}, callOpts = {}) =>
        new Promise((resolve, reject) => {
          let md;
          let ms;
          try {
            md = callMetadata(callOpts.metadata);
            ms = checkDeadline(callOpts.deadlineMs ?? deadlineMs, 'deadlineMs');
          } catch (e) {
            reject(e);
            return;
          }
          const deadline = new Date(Date.now() + ms);
          try {
            c[rpc](request ?? {}, md, { deadline }, (err, response) => {
              if (err) reject(toVaultError(err));
              else resolve(response);
            });
          } catch (e) {
            // e.g. a request that cannot be serialized
            reject(e);
          }
        });
    }
  }

  return Object.freeze({
    ...api,
    /** Names of every RPC method on this client. */
    methods: Object.freeze(methods),
    /** The underlying grpc-js clients, by service name. */
    grpcClients: Object.freeze(grpcClients),
    /** Resolves once the channel is connected, or rejects after `ms`. */
    waitForReady(ms = deadlineMs) {
      return new Promise((resolve, reject) => {
        grpcClients.SecretService.waitForReady(new Date(Date.now() + ms), (err) =>
          err ? reject(err) : resolve(),
        );
      });
    },
    /** Closes the channel. */
    close() {
      for (const c of Object.values(grpcClients)) c.close();
    },
  });
}

/** google.protobuf.Timestamp (as returned by this client) -> Date, or null. */
export function timestampToDate(ts) {
  if (!ts) return null;
  const seconds = Number(ts.seconds ?? 0);
  const nanos = Number(ts.nanos ?? 0);
  return new Date(seconds * 1000 + Math.floor(nanos / 1e6));
}

/** Date (or milliseconds since the epoch) -> google.protobuf.Timestamp, e.g. for createToken's expire_time. */
export function dateToTimestamp(date) {
  const ms = date instanceof Date ? date.getTime() : date;
  if (typeof ms !== 'number' || !Number.isFinite(ms)) {
    throw new TypeError('dateToTimestamp needs a valid Date or a number of milliseconds');
  }
  const seconds = Math.floor(ms / 1000);
  return { seconds: String(seconds), nanos: Math.round(ms - seconds * 1000) * 1e6 };
}

export { VaultError };
