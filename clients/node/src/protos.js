// Loads the vault protos from the `@interakt/vault-api` npm package: the
// repository's protos/ directory, a dependency of this package
// (`file:../../protos`). There is deliberately no copy of the .proto files in
// this package: the single source of truth is protos/interakt/vault/v1/*.proto,
// the same files the Python stubs are generated from.
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** npm name of the contract package that ships the .proto files. */
export const VAULT_API_PACKAGE = '@interakt/vault-api';

/** Root of the contract package (it holds interakt/vault/v1/*.proto), found by Node's resolver. */
export const DEFAULT_PROTO_ROOT = path.dirname(
  createRequire(import.meta.url).resolve(`${VAULT_API_PACKAGE}/package.json`),
);

/** Directory of the vault's own .proto files, relative to the proto root. */
export const VAULT_PROTO_SUBDIR = path.join('interakt', 'vault', 'v1');

/** Fully-qualified package of the vault services. */
export const VAULT_PACKAGE = 'interakt.vault.v1';

/** The services a client talks to, by their short name. */
export const SERVICE_NAMES = Object.freeze([
  'SecretService',
  'ConfigService',
  'ResolverService',
  'AuditService',
  'AccessService',
]);

/**
 * proto-loader options:
 * - keepCase: field names exactly as in the .proto files (`page_size`, `create_time`).
 * - longs: String — int64 fields (e.g. VaultStats.total_secrets) come back as
 *   decimal strings, as in the canonical proto3 JSON mapping; no precision loss.
 * - enums: String — e.g. `'ENCODING_HEADER'`, `'PROBLEM_KIND_SECRET_NOT_FOUND'`
 *   (requests accept the name or the number).
 * - defaults: true — unset scalars/repeated/maps are filled in ('' / 0 / [] / {})
 *   and unset message fields (timestamps) are null.
 * - oneofs: false — no synthetic `_value` keys for proto3 `optional` fields.
 */
export const LOADER_OPTIONS = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  arrays: true,
  objects: true,
  oneofs: false,
});

/** Absolute paths of every vault .proto file under `protoRoot`. */
export function vaultProtoFiles(protoRoot = DEFAULT_PROTO_ROOT) {
  const dir = path.join(protoRoot, VAULT_PROTO_SUBDIR);
  if (!existsSync(dir)) {
    throw new Error(
      `vault protos not found: ${dir} does not exist (set protoRoot to a directory holding interakt/vault/v1/*.proto)`,
    );
  }
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.proto'))
    .sort()
    .map((f) => path.join(dir, f));
  if (files.length === 0) {
    throw new Error(`vault protos not found: no .proto files in ${dir}`);
  }
  return files;
}

const cache = new Map();

/**
 * Loads the package definition (cached per proto root) and returns
 * `{ packageDefinition, grpcObject, services }`, where `services` maps each
 * name in SERVICE_NAMES to its generated client constructor.
 */
export function loadVaultProtos(protoRoot = DEFAULT_PROTO_ROOT) {
  const root = path.resolve(protoRoot);
  const hit = cache.get(root);
  if (hit) return hit;

  const packageDefinition = protoLoader.loadSync(vaultProtoFiles(root), {
    ...LOADER_OPTIONS,
    // google/protobuf/{timestamp,empty}.proto come with protobufjs itself.
    includeDirs: [root],
  });
  const grpcObject = grpc.loadPackageDefinition(packageDefinition);
  let pkg = grpcObject;
  for (const part of VAULT_PACKAGE.split('.')) {
    pkg = pkg?.[part];
  }
  if (!pkg) {
    throw new Error(`package ${VAULT_PACKAGE} not found in ${root}`);
  }
  const services = {};
  for (const name of SERVICE_NAMES) {
    const ctor = pkg[name];
    if (typeof ctor !== 'function' || !ctor.service) {
      throw new Error(`service ${VAULT_PACKAGE}.${name} not found in ${root}`);
    }
    services[name] = ctor;
  }
  const loaded = Object.freeze({ packageDefinition, grpcObject, services });
  cache.set(root, loaded);
  return loaded;
}
