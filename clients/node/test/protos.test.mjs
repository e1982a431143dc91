// Offline checks (no server): the protos of @interakt/vault-api load with proto-loader
// and the client exposes every RPC of the contract.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';

import {
  DEFAULT_PROTO_ROOT,
  SERVICE_NAMES,
  VAULT_API_PACKAGE,
  createVaultClient,
  loadVaultProtos,
  vaultProtoFiles,
} from '../index.js';

const PKG = 'interakt.vault.v1';

// RPC -> [request type, response type], as the services in protos/interakt/vault/v1 declare them.
const CONTRACT = {
  SecretService: {
    CreateSecret: ['CreateSecretRequest', 'Secret'],
    GetSecret: ['GetSecretRequest', 'Secret'],
    ListSecrets: ['ListSecretsRequest', 'ListSecretsResponse'],
    UpdateSecret: ['UpdateSecretRequest', 'Secret'],
    DeleteSecret: ['DeleteSecretRequest', 'google.protobuf.Empty'],
    GetVaultStats: ['GetVaultStatsRequest', 'VaultStats'],
    ListSecretVersions: ['ListSecretVersionsRequest', 'ListSecretVersionsResponse'],
    RollbackSecret: ['RollbackSecretRequest', 'Secret'],
    DestroySecretVersion: ['DestroySecretVersionRequest', 'google.protobuf.Empty'],
    RestoreSecret: ['RestoreSecretRequest', 'Secret'],
    IdentifySecretValue: ['IdentifySecretValueRequest', 'IdentifySecretValueResponse'],
  },
  ConfigService: {
    PutConfigValue: ['PutConfigValueRequest', 'ConfigValue'],
    GetConfigValue: ['GetConfigValueRequest', 'ConfigValue'],
    ListConfigValues: ['ListConfigValuesRequest', 'ListConfigValuesResponse'],
    DeleteConfigValue: ['DeleteConfigValueRequest', 'google.protobuf.Empty'],
  },
  ResolverService: {
    ResolveTemplate: ['ResolveTemplateRequest', 'ResolveTemplateResponse'],
    CheckTemplate: ['CheckTemplateRequest', 'CheckTemplateResponse'],
  },
  AuditService: {
    ListAuditEvents: ['ListAuditEventsRequest', 'ListAuditEventsResponse'],
  },
  AccessService: {
    CreateToken: ['CreateTokenRequest', 'CreateTokenResponse'],
    ListTokens: ['ListTokensRequest', 'ListTokensResponse'],
    RevokeToken: ['RevokeTokenRequest', 'RevokeTokenResponse'],
  },
};

// message -> fields that must exist with exactly these (proto) names.
const FIELDS = {
  Secret: ['name', 'description', 'create_time', 'update_time', 'etag'],
  CreateSecretRequest: ['name', 'value', 'description'],
  GetSecretRequest: ['name'],
  ListSecretsRequest: ['page_size', 'page_token', 'name_contains'],
  ListSecretsResponse: ['secrets', 'next_page_token', 'total_size'],
  UpdateSecretRequest: ['name', 'value', 'description', 'etag'],
  DeleteSecretRequest: ['name', 'etag'],
  VaultStats: ['total_secrets', 'last_update_time'],
  ConfigValue: ['key', 'value', 'description', 'create_time', 'update_time'],
  PutConfigValueRequest: ['key', 'value', 'description'],
  GetConfigValueRequest: ['key'],
  ListConfigValuesRequest: ['page_size', 'page_token', 'key_contains'],
  DeleteConfigValueRequest: ['key'],
  TemplateField: ['key', 'template', 'encoding'],
  ResolvedField: ['key', 'value'],
  ResolveTemplateRequest: ['fields', 'inputs', 'tool'],
  ResolveTemplateResponse: ['fields'],
  CheckTemplateRequest: ['fields'],
  CheckTemplateResponse: ['references', 'problems'],
  AuditEvent: [
    'time',
    'principal',
    'method',
    'outcome',
    'secret_names',
    'tool',
    'request_id',
    'peer',
  ],
  ListAuditEventsRequest: ['page_size', 'page_token', 'secret_name', 'principal'],
  ListAuditEventsResponse: ['events', 'next_page_token'],
  TokenInfo: ['id', 'principal', 'role', 'description', 'create_time', 'expire_time', 'scopes', 'fingerprint'],
  CreateTokenRequest: ['principal', 'role', 'description', 'expire_time', 'scopes'],
  CreateTokenResponse: ['token', 'info'],
  ListTokensRequest: ['page_size', 'page_token'],
  ListTokensResponse: ['tokens', 'next_page_token'],
  RevokeTokenRequest: ['id'],
};

const lowerFirst = (s) => s.charAt(0).toLowerCase() + s.slice(1);

describe('protos', () => {
  it('are read from the @interakt/vault-api package (<repo>/protos), not a copy', () => {
    const pkgJson = createRequire(import.meta.url).resolve('@interakt/vault-api/package.json');
    assert.equal(DEFAULT_PROTO_ROOT, path.dirname(pkgJson));
    const pkg = JSON.parse(readFileSync(pkgJson, 'utf8'));
    assert.equal(pkg.name, VAULT_API_PACKAGE);
    assert.deepEqual(pkg.files, ['interakt/vault/v1/*.proto']);
    // The package is the repository's protos/ directory itself (a file: dependency).
    const repoProtos = fileURLToPath(new URL('../../../protos', import.meta.url));
    assert.equal(realpathSync(DEFAULT_PROTO_ROOT), realpathSync(repoProtos));
    const files = vaultProtoFiles();
    assert.ok(files.length >= 5, `expected >= 5 proto files, got ${files}`);
    for (const f of files) assert.ok(f.startsWith(DEFAULT_PROTO_ROOT + path.sep), f);
    assert.ok(!existsSync(new URL('../protos', import.meta.url)), 'clients/node must not hold a proto copy');
  });

  it('do not reach outside the package by a relative path', () => {
    const source = readFileSync(new URL('../src/protos.js', import.meta.url), 'utf8');
    assert.ok(!source.includes("'..'"), 'src/protos.js must resolve the package, not ../../../protos');
  });

  it('define the ErrorReason enum with the ErrorInfo reasons', () => {
    const { packageDefinition } = loadVaultProtos();
    const values = packageDefinition[`${PKG}.ErrorReason`].type.value;
    assert.equal(values[0].name, 'ERROR_REASON_UNSPECIFIED');
    const names = values.map((v) => v.name);
    for (const r of ['SECRET_NOT_FOUND', 'INVALID_NAME', 'ETAG_MISMATCH', 'AUDIT_UNAVAILABLE']) {
      assert.ok(names.includes(r), `${r} missing`);
    }
  });

  it('load with proto-loader and define every service of the contract', () => {
    const { services, packageDefinition } = loadVaultProtos();
    assert.deepEqual([...SERVICE_NAMES].sort(), Object.keys(CONTRACT).sort());
    for (const [svc, rpcs] of Object.entries(CONTRACT)) {
      const def = services[svc].service;
      assert.ok(def, `${svc} missing`);
      for (const [rpc, [req, res]] of Object.entries(rpcs)) {
        const m = def[rpc];
        assert.ok(m, `${svc}.${rpc} missing`);
        assert.equal(m.path, `/${PKG}.${svc}/${rpc}`);
        assert.equal(m.requestStream, false);
        assert.equal(m.responseStream, false);
        const fq = (t) => (t.includes('.') ? t : `${PKG}.${t}`);
        assert.equal(m.requestType.type.name, req.split('.').pop(), `${rpc} request type`);
        assert.equal(m.responseType.type.name, res.split('.').pop(), `${rpc} response type`);
        assert.ok(packageDefinition[fq(req)], `${fq(req)} not in package definition`);
        assert.ok(packageDefinition[fq(res)], `${fq(res)} not in package definition`);
      }
    }
  });

  it('keep the proto field names (keepCase)', () => {
    const { packageDefinition } = loadVaultProtos();
    for (const [msg, fields] of Object.entries(FIELDS)) {
      const t = packageDefinition[`${PKG}.${msg}`];
      assert.ok(t, `${msg} missing`);
      const names = t.type.field.map((f) => f.name);
      for (const f of fields) assert.ok(names.includes(f), `${msg}.${f} missing (have ${names})`);
    }
  });

  it('define the Encoding and ProblemKind enums', () => {
    const { packageDefinition } = loadVaultProtos();
    const enc = packageDefinition[`${PKG}.Encoding`].type.value.map((v) => v.name);
    for (const e of ['UNSPECIFIED', 'RAW', 'URL', 'HEADER', 'JSON', 'FORM']) {
      assert.ok(enc.includes(`ENCODING_${e}`), `ENCODING_${e} missing`);
    }
    const kinds = packageDefinition[`${PKG}.ProblemKind`].type.value.map((v) => v.name);
    for (const k of ['MALFORMED_PLACEHOLDER', 'SECRET_NOT_FOUND', 'CONFIG_NOT_FOUND']) {
      assert.ok(kinds.includes(`PROBLEM_KIND_${k}`), `PROBLEM_KIND_${k} missing`);
    }
  });

  it('serialize UpdateSecretRequest with presence for optional value/description', () => {
    const { services } = loadVaultProtos();
    const { requestSerialize, requestDeserialize } = services.SecretService.service.UpdateSecret;
    const unset = requestDeserialize(requestSerialize({ name: 'x' }));
    assert.equal(Object.hasOwn(unset, 'description'), false, 'unset description must stay unset');
    assert.equal(Object.hasOwn(unset, 'value'), false, 'unset value must stay unset');
    const cleared = requestSerialize({ name: 'x', description: '' });
    assert.ok(cleared.length > requestSerialize({ name: 'x' }).length, 'empty description must be sent');
    assert.equal(requestDeserialize(cleared).description, '');
  });

  it('round-trip a ResolveTemplateRequest (enum names, inputs map)', () => {
    const { services } = loadVaultProtos();
    const { requestSerialize, requestDeserialize } = services.ResolverService.service.ResolveTemplate;
    const req = {
      fields: [{ key: 'header:Authorization', template: 'Bearer {{secret:k}}', encoding: 'ENCODING_HEADER' }],
      inputs: { id: '42' },
      tool: 't1',
      strict: true,
      destination_host: 'api.example.com',
    };
    assert.deepEqual(requestDeserialize(requestSerialize(req)), req);
  });
});

describe('client', () => {
  it('has a promise-based method for every RPC', () => {
    const client = createVaultClient({ address: '127.0.0.1:1', token: 't' });
    try {
      const expected = Object.values(CONTRACT).flatMap((rpcs) => Object.keys(rpcs).map(lowerFirst));
      assert.deepEqual([...client.methods].sort(), [...expected].sort());
      for (const m of expected) assert.equal(typeof client[m], 'function', m);
    } finally {
      client.close();
    }
  });

  it('validates its options', () => {
    assert.throws(() => createVaultClient({}), /address/);
    assert.throws(() => createVaultClient({ address: 'h:1', deadlineMs: 0 }), /deadlineMs/);
    assert.throws(
      () => createVaultClient({ address: 'h:1', tls: { privateKey: 'k' } }),
      /privateKey and tls.certChain/,
    );
  });
});
