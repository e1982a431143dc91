// @interakt/vault-client — promise-based Node.js client for vaultsvc.
export { createVaultClient, timestampToDate, dateToTimestamp, DEFAULT_DEADLINE_MS } from './src/client.js';
export {
  VaultError,
  InUse,
  SecretInUse,
  ConfigInUse,
  toVaultError,
  parseListed,
  parseRfc3339,
  decodeStatusDetails,
  encodeStatusDetails,
  codeName,
  STATUS_DETAILS_KEY,
  ERROR_INFO_TYPE_URL,
} from './src/errors.js';
export {
  loadVaultProtos,
  vaultProtoFiles,
  DEFAULT_PROTO_ROOT,
  LOADER_OPTIONS,
  SERVICE_NAMES,
  VAULT_API_PACKAGE,
  VAULT_PACKAGE,
} from './src/protos.js';
export { status } from '@grpc/grpc-js';
