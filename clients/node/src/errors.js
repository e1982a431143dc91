// Turns grpc-js errors into VaultError, decoding the google.rpc.Status /
// google.rpc.ErrorInfo the server puts in the `grpc-status-details-bin` trailer.
import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';

export const STATUS_DETAILS_KEY = 'grpc-status-details-bin';
export const ERROR_INFO_TYPE_URL = 'type.googleapis.com/google.rpc.ErrorInfo';

// The two google.rpc messages we need (from googleapis google/rpc/status.proto
// and google/rpc/error_details.proto), defined in code so nothing is copied
// next to the vault protos.
const rpcRoot = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Any: {
              fields: {
                type_url: { type: 'string', id: 1 },
                value: { type: 'bytes', id: 2 },
              },
            },
          },
        },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
          },
        },
      },
    },
  },
});
const StatusType = rpcRoot.lookupType('google.rpc.Status');
const ErrorInfoType = rpcRoot.lookupType('google.rpc.ErrorInfo');

const CODE_NAMES = Object.freeze(
  Object.fromEntries(
    Object.entries(grpc.status)
      .filter(([, v]) => typeof v === 'number')
      .map(([k, v]) => [v, k]),
  ),
);

/** gRPC status code number -> name ('NOT_FOUND'). */
export function codeName(code) {
  return CODE_NAMES[code] ?? `CODE_${code}`;
}

/**
 * Decodes a serialized google.rpc.Status. Returns
 * `{ code, message, details: [{type_url, value}], errorInfo: {reason, domain, metadata} | null }`.
 * Throws on malformed input.
 */
export function decodeStatusDetails(buf) {
  const status = StatusType.toObject(StatusType.decode(buf), {
    defaults: true,
    arrays: true,
  });
  let errorInfo = null;
  for (const any of status.details) {
    // The type URL prefix may vary; the message name is what matters.
    if (any.type_url === ERROR_INFO_TYPE_URL || any.type_url.endsWith('/google.rpc.ErrorInfo')) {
      errorInfo = ErrorInfoType.toObject(ErrorInfoType.decode(any.value), {
        defaults: true,
        objects: true,
      });
      break;
    }
  }
  return { code: status.code, message: status.message, details: status.details, errorInfo };
}

/**
 * Serializes a google.rpc.Status holding one ErrorInfo (the inverse of
 * decodeStatusDetails); handy for fakes in tests.
 */
export function encodeStatusDetails({ code, message = '', errorInfo = null }) {
  const details = [];
  if (errorInfo) {
    details.push({
      type_url: ERROR_INFO_TYPE_URL,
      value: ErrorInfoType.encode(ErrorInfoType.fromObject(errorInfo)).finish(),
    });
  }
  return Buffer.from(StatusType.encode(StatusType.fromObject({ code, message, details })).finish());
}

/** Error every client method rejects with. */
export class VaultError extends Error {
  constructor({ code, details, metadata = null, status = null, cause = undefined }) {
    const name = codeName(code);
    const errorInfo = status?.errorInfo ?? null;
    super(`${name}: ${details}`, cause === undefined ? undefined : { cause });
    this.name = 'VaultError';
    /** gRPC status code number (5 for NOT_FOUND). */
    this.code = code;
    /** gRPC status code name ('NOT_FOUND'). */
    this.codeName = name;
    /** The server's status message ('secret not found: a, b'). Never holds a value. */
    this.details = details;
    /** ErrorInfo.reason ('SECRET_NOT_FOUND'), or null when the server sent none. */
    this.reason = errorInfo?.reason || null;
    /** ErrorInfo.domain ('vault.interakt'), or null. */
    this.domain = errorInfo?.domain || null;
    /** ErrorInfo.metadata, or {}. */
    this.errorMetadata = errorInfo?.metadata ?? {};
    /** The decoded google.rpc.Status, or null. */
    this.status = status;
    /** Trailing grpc.Metadata, or null. */
    this.metadata = metadata;
  }
}

// The capped tail of a list in ErrorInfo metadata: "a, b, and 3 more".
const MORE_NAMES = /^and ([0-9]+) more$/;

/**
 * A comma list from ErrorInfo metadata and how many the vault left out:
 * `'a, b, and 3 more'` -> `{ names: ['a', 'b'], omitted: 3 }` (as the Python
 * client's `_listed`).
 */
export function parseListed(text) {
  const names = String(text ?? '')
    .split(',')
    .map((n) => n.trim())
    .filter((n) => n !== '');
  let omitted = 0;
  const tail = names.length > 0 ? MORE_NAMES.exec(names[names.length - 1]) : null;
  if (tail) {
    names.pop();
    omitted = Number.parseInt(tail[1], 10);
  }
  return { names, omitted };
}

// RFC 3339 with a required offset ("2031-01-31T12:00:00.123456Z", "...+02:00").
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

/** An RFC 3339 time from ErrorInfo metadata as a Date, or null if absent or malformed. */
export function parseRfc3339(text) {
  if (typeof text !== 'string' || !RFC3339.test(text)) return null;
  const d = new Date(text.replace(/^(.{10})[t ]/, '$1T'));
  return Number.isNaN(d.getTime()) ? null : d;
}

/**
 * FAILED_PRECONDITION SECRET_IN_USE / CONFIG_IN_USE: a delete refused by the
 * delete guard, as a resolve used the item recently. Delete again with
 * `force: true` to delete it anyway.
 *
 * `tools`: the tools that used it (most recent first; `toolsOmitted` counts
 * those the vault left out of the list); `lastResolveTime`: the last use (a
 * Date, or null if the server sent none). Both from the ErrorInfo metadata.
 */
export class InUse extends VaultError {
  constructor(args) {
    super(args);
    this.name = 'InUse';
    const { names, omitted } = parseListed(this.errorMetadata.tools ?? '');
    /** @type {string[]} */
    this.tools = names;
    /** @type {number} */
    this.toolsOmitted = omitted;
    /** @type {Date|null} */
    this.lastResolveTime = parseRfc3339(this.errorMetadata.last_resolve_time ?? '');
  }
}

/** FAILED_PRECONDITION SECRET_IN_USE: see InUse. */
export class SecretInUse extends InUse {
  constructor(args) {
    super(args);
    this.name = 'SecretInUse';
  }
}

/** FAILED_PRECONDITION CONFIG_IN_USE: see InUse. */
export class ConfigInUse extends InUse {
  constructor(args) {
    super(args);
    this.name = 'ConfigInUse';
  }
}

// (code, ErrorInfo.reason) -> error class; never the message text.
const ERROR_CLASSES = new Map([
  [`${grpc.status.FAILED_PRECONDITION}:SECRET_IN_USE`, SecretInUse],
  [`${grpc.status.FAILED_PRECONDITION}:CONFIG_IN_USE`, ConfigInUse],
]);

/**
 * Converts a grpc-js ServiceError (or anything thrown) into a VaultError, or
 * the subclass its code and ErrorInfo.reason name (SecretInUse, ConfigInUse).
 */
export function toVaultError(err) {
  if (err instanceof VaultError) return err;
  const code = typeof err?.code === 'number' ? err.code : grpc.status.UNKNOWN;
  const details = typeof err?.details === 'string' ? err.details : String(err?.message ?? err);
  const metadata = err?.metadata instanceof grpc.Metadata ? err.metadata : null;
  let status = null;
  const raw = metadata?.get(STATUS_DETAILS_KEY) ?? [];
  if (raw.length > 0) {
    try {
      status = decodeStatusDetails(Buffer.isBuffer(raw[0]) ? raw[0] : Buffer.from(raw[0]));
    } catch {
      status = null; // a malformed trailer must not hide the real error
    }
  }
  const Cls = ERROR_CLASSES.get(`${code}:${status?.errorInfo?.reason ?? ''}`) ?? VaultError;
  return new Cls({ code, details, metadata, status, cause: err });
}
