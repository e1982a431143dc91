// Offline checks against an in-process grpc-js fake of SecretService and
// ResolverService: metadata, deadlines and error decoding (google.rpc.Status
// with an ErrorInfo in the grpc-status-details-bin trailer). No vault needed.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import {
  ConfigInUse,
  InUse,
  STATUS_DETAILS_KEY,
  SecretInUse,
  VaultError,
  dateToTimestamp,
  parseListed,
  parseRfc3339,
  createVaultClient,
  encodeStatusDetails,
  loadVaultProtos,
  timestampToDate,
} from '../index.js';

const TOKEN = 'fake-admin-token';

function fail(cb, code, message, reason, extra = {}) {
  const metadata = new grpc.Metadata();
  if (reason) {
    metadata.set(
      STATUS_DETAILS_KEY,
      encodeStatusDetails({ code, message, errorInfo: { reason, domain: 'vault.interakt', metadata: extra } }),
    );
  }
  cb({ code, details: message, metadata });
}

function authorized(call, cb) {
  const auth = call.metadata.get('authorization');
  if (auth.length === 0) {
    fail(cb, grpc.status.UNAUTHENTICATED, 'missing bearer token', 'UNAUTHENTICATED');
    return false;
  }
  if (auth[0] !== `Bearer ${TOKEN}`) {
    fail(cb, grpc.status.PERMISSION_DENIED, 'wrong token', 'PERMISSION_DENIED');
    return false;
  }
  return true;
}

let server;
let address;
let lastUpdate = null;
let createTokenCalls = [];

before(async () => {
  const { services } = loadVaultProtos();
  server = new grpc.Server();
  server.addService(services.SecretService.service, {
    CreateSecret(call, cb) {
      if (!authorized(call, cb)) return;
      const now = { seconds: '1700000000', nanos: 500_000_000 };
      cb(null, {
        name: call.request.name,
        description: call.request.description,
        create_time: now,
        update_time: now,
        etag: 'e1',
      });
    },
    GetSecret(call, cb) {
      if (!authorized(call, cb)) return;
      fail(cb, grpc.status.NOT_FOUND, `secret not found: ${call.request.name}`, 'SECRET_NOT_FOUND', {
        name: call.request.name,
      });
    },
    ListSecrets(call, cb) {
      // Never answers in time: exercises deadlines.
      setTimeout(() => cb(null, { secrets: [], next_page_token: '', total_size: 0 }), 2000);
    },
    UpdateSecret(call, cb) {
      if (!authorized(call, cb)) return;
      lastUpdate = call.request;
      cb(null, { name: call.request.name, etag: 'e2' });
    },
    DeleteSecret(call, cb) {
      if (call.request.name === 'guarded') {
        fail(cb, grpc.status.FAILED_PRECONDITION, 'secret guarded was resolved recently', 'SECRET_IN_USE', {
          tools: 'tool-b, tool-a, and 3 more',
          last_resolve_time: '2026-11-29T07:01:02.345678Z',
        });
        return;
      }
      if (call.request.name === 'message-only') {
        // The text names the reason, the ErrorInfo does not: no typed error.
        fail(cb, grpc.status.FAILED_PRECONDITION, 'SECRET_IN_USE', 'ETAG_REQUIRED', { tools: 'x' });
        return;
      }
      // An error without a status-details trailer.
      cb({ code: grpc.status.INTERNAL, details: 'internal error (request id r1)' });
    },
    GetVaultStats(call, cb) {
      cb(null, { total_secrets: 9007199254740993n.toString(), last_update_time: null });
    },
  });
  server.addService(services.ResolverService.service, {
    ResolveTemplate(call, cb) {
      if (!authorized(call, cb)) return;
      cb(null, {
        fields: call.request.fields.map((f) => ({
          key: f.key,
          value: `${f.encoding}|${f.template}|${call.request.inputs.id ?? ''}|${call.request.tool}`,
        })),
      });
    },
    CheckTemplate(call, cb) {
      cb(null, {
        references: [],
        problems: [{ field_key: 'a', kind: 'PROBLEM_KIND_SECRET_NOT_FOUND', name: 'x', offset: 3 }],
      });
    },
  });
  server.addService(services.ConfigService.service, {
    DeleteConfigValue(call, cb) {
      fail(cb, grpc.status.FAILED_PRECONDITION, `config ${call.request.key} was resolved recently`, 'CONFIG_IN_USE', {
        tools: 'only-tool',
      });
    },
  });
  server.addService(services.AccessService.service, {
    CreateToken(call, cb) {
      createTokenCalls.push(call.request);
      // As if the answer were lost after the token was minted.
      fail(cb, grpc.status.UNAVAILABLE, 'connection reset', 'UNAVAILABLE');
    },
  });
  const port = await new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  address = `127.0.0.1:${port}`;
});

after(() => server?.forceShutdown());

describe('client against a fake server', () => {
  it('sends the bearer token and decodes responses with proto field names', async () => {
    const c = createVaultClient({ address, token: TOKEN });
    try {
      const s = await c.createSecret({ name: 'k1', value: 'v', description: 'd' });
      assert.equal(s.name, 'k1');
      assert.equal(s.description, 'd');
      assert.equal(s.etag, 'e1');
      assert.deepEqual(s.create_time, { seconds: '1700000000', nanos: 500_000_000 });
      assert.equal(timestampToDate(s.create_time).toISOString(), '2023-11-14T22:13:20.500Z');
      assert.equal(Object.hasOwn(s, 'value'), false);
    } finally {
      c.close();
    }
  });

  it('keeps int64 as strings and unset timestamps as null', async () => {
    const c = createVaultClient({ address, token: TOKEN });
    try {
      const st = await c.getVaultStats();
      assert.equal(st.total_secrets, '9007199254740993');
      assert.equal(st.last_update_time, null);
      assert.equal(timestampToDate(st.last_update_time), null);
    } finally {
      c.close();
    }
  });

  it('sends optional fields only when given', async () => {
    const c = createVaultClient({ address, token: TOKEN });
    try {
      await c.updateSecret({ name: 'k1', etag: 'e1' });
      assert.equal(Object.hasOwn(lastUpdate, 'description'), false);
      assert.equal(Object.hasOwn(lastUpdate, 'value'), false);
      await c.updateSecret({ name: 'k1', description: '' });
      assert.equal(lastUpdate.description, '');
      assert.equal(Object.hasOwn(lastUpdate, 'value'), false);
    } finally {
      c.close();
    }
  });

  it('passes fields, inputs and tool to ResolveTemplate; enums as strings', async () => {
    const c = createVaultClient({ address, token: TOKEN });
    try {
      const r = await c.resolveTemplate({
        fields: [
          { key: 'h', template: 'Bearer {{secret:k1}}', encoding: 'ENCODING_HEADER' },
          { key: 'u', template: 'https://x/{{input.id}}', encoding: 2 },
        ],
        inputs: { id: '42' },
        tool: 'tool-1',
      });
      assert.deepEqual(r.fields, [
        { key: 'h', value: 'ENCODING_HEADER|Bearer {{secret:k1}}|42|tool-1' },
        { key: 'u', value: 'ENCODING_URL|https://x/{{input.id}}|42|tool-1' },
      ]);
      const chk = await c.checkTemplate({ fields: [] });
      assert.equal(chk.problems[0].kind, 'PROBLEM_KIND_SECRET_NOT_FOUND');
      assert.equal(chk.problems[0].offset, 3);
    } finally {
      c.close();
    }
  });

  it('rejects with code, codeName, details and reason from the status trailer', async () => {
    const c = createVaultClient({ address, token: TOKEN });
    try {
      await assert.rejects(c.getSecret({ name: 'nope' }), (err) => {
        assert.ok(err instanceof VaultError);
        assert.ok(err instanceof Error);
        assert.equal(err.code, grpc.status.NOT_FOUND);
        assert.equal(err.code, 5);
        assert.equal(err.codeName, 'NOT_FOUND');
        assert.equal(err.details, 'secret not found: nope');
        assert.equal(err.reason, 'SECRET_NOT_FOUND');
        assert.equal(err.domain, 'vault.interakt');
        assert.deepEqual(err.errorMetadata, { name: 'nope' });
        assert.equal(err.status.code, 5);
        assert.equal(err.status.message, 'secret not found: nope');
        assert.equal(err.message, 'NOT_FOUND: secret not found: nope');
        return true;
      });
    } finally {
      c.close();
    }
  });

  it('gives reason null when the server sends no status details', async () => {
    const c = createVaultClient({ address, token: TOKEN });
    try {
      await assert.rejects(c.deleteSecret({ name: 'x' }), (err) => {
        assert.equal(err.codeName, 'INTERNAL');
        assert.equal(err.details, 'internal error (request id r1)');
        assert.equal(err.reason, null);
        assert.equal(err.status, null);
        return true;
      });
    } finally {
      c.close();
    }
  });

  it('sends no authorization header without a token', async () => {
    const c = createVaultClient({ address });
    try {
      await assert.rejects(c.createSecret({ name: 'k', value: 'v' }), {
        codeName: 'UNAUTHENTICATED',
        reason: 'UNAUTHENTICATED',
      });
    } finally {
      c.close();
    }
  });

  it('applies the default and per-call deadlines', async () => {
    const c = createVaultClient({ address, token: TOKEN, deadlineMs: 200 });
    try {
      let t0 = Date.now();
      await assert.rejects(c.listSecrets({}), { code: grpc.status.DEADLINE_EXCEEDED, codeName: 'DEADLINE_EXCEEDED' });
      assert.ok(Date.now() - t0 < 1500, 'default deadline not applied');
      t0 = Date.now();
      await assert.rejects(c.listSecrets({}, { deadlineMs: 50 }), { codeName: 'DEADLINE_EXCEEDED' });
      assert.ok(Date.now() - t0 < 1000, 'per-call deadline not applied');
    } finally {
      c.close();
    }
  });

  it('reports UNAVAILABLE when nothing listens', async () => {
    const c = createVaultClient({ address: '127.0.0.1:1', token: TOKEN, deadlineMs: 2000 });
    try {
      await assert.rejects(c.getVaultStats(), (err) => {
        assert.ok(['UNAVAILABLE', 'DEADLINE_EXCEEDED'].includes(err.codeName), err.codeName);
        return true;
      });
    } finally {
      c.close();
    }
  });
});

describe('typed errors', () => {
  it('SecretInUse carries tools, toolsOmitted and lastResolveTime from the ErrorInfo', async () => {
    const c = createVaultClient({ address, token: TOKEN });
    try {
      await assert.rejects(c.deleteSecret({ name: 'guarded' }), (err) => {
        assert.ok(err instanceof SecretInUse, err.name);
        assert.ok(err instanceof InUse && err instanceof VaultError);
        assert.ok(!(err instanceof ConfigInUse));
        assert.equal(err.name, 'SecretInUse');
        assert.equal(err.codeName, 'FAILED_PRECONDITION');
        assert.equal(err.reason, 'SECRET_IN_USE');
        assert.deepEqual(err.tools, ['tool-b', 'tool-a']);
        assert.equal(err.toolsOmitted, 3);
        assert.ok(err.lastResolveTime instanceof Date);
        assert.equal(err.lastResolveTime.toISOString(), '2026-11-29T07:01:02.345Z');
        return true;
      });
      await assert.rejects(c.deleteConfigValue({ key: 'k' }), (err) => {
        assert.ok(err instanceof ConfigInUse, err.name);
        assert.deepEqual(err.tools, ['only-tool']);
        assert.equal(err.toolsOmitted, 0);
        assert.equal(err.lastResolveTime, null);
        return true;
      });
    } finally {
      c.close();
    }
  });

  it('maps on ErrorInfo.reason, never on the message text', async () => {
    const c = createVaultClient({ address, token: TOKEN });
    try {
      await assert.rejects(c.deleteSecret({ name: 'message-only' }), (err) => {
        assert.equal(err.constructor, VaultError);
        assert.equal(err.reason, 'ETAG_REQUIRED');
        assert.equal(err.tools, undefined);
        return true;
      });
    } finally {
      c.close();
    }
  });

  it('parses the capped list exactly as the Python client does', () => {
    assert.deepEqual(parseListed(''), { names: [], omitted: 0 });
    assert.deepEqual(parseListed('a'), { names: ['a'], omitted: 0 });
    assert.deepEqual(parseListed(' a , ,b,'), { names: ['a', 'b'], omitted: 0 });
    assert.deepEqual(parseListed('a, b, and 12 more'), { names: ['a', 'b'], omitted: 12 });
    // Only a last element of exactly that form is the tail.
    assert.deepEqual(parseListed('and 2 more, a'), { names: ['and 2 more', 'a'], omitted: 0 });
    assert.deepEqual(parseListed('a, and two more'), { names: ['a', 'and two more'], omitted: 0 });
    assert.deepEqual(parseListed('a, and 2 more please'), { names: ['a', 'and 2 more please'], omitted: 0 });
    assert.deepEqual(parseListed('and 4 more'), { names: [], omitted: 4 });
  });

  it('parses RFC 3339 times with an offset, else null', () => {
    assert.equal(parseRfc3339('2026-01-02T03:04:05Z').toISOString(), '2026-01-02T03:04:05.000Z');
    assert.equal(parseRfc3339('2026-01-02T03:04:05.5+02:00').toISOString(), '2026-01-02T01:04:05.500Z');
    for (const bad of ['', 'yesterday', '2026-01-02T03:04:05', '2026-13-40T03:04:05Z', undefined]) {
      assert.equal(parseRfc3339(bad), null, String(bad));
    }
  });
});

describe('AccessService', () => {
  it('never retries createToken: one failed call, one attempt', async () => {
    createTokenCalls = [];
    const c = createVaultClient({ address, token: TOKEN });
    try {
      const expires = new Date('2031-01-31T12:00:00.250Z');
      await assert.rejects(
        c.createToken({
          principal: 'executor-eu1',
          role: 'resolver',
          description: 'd',
          expire_time: dateToTimestamp(expires),
          scopes: ['payments_*'],
        }),
        { codeName: 'UNAVAILABLE' },
      );
      await new Promise((res) => setTimeout(res, 200));
      assert.equal(createTokenCalls.length, 1);
      const req = createTokenCalls[0];
      assert.equal(req.principal, 'executor-eu1');
      assert.equal(req.role, 'resolver');
      assert.deepEqual(req.scopes, ['payments_*']);
      assert.equal(timestampToDate(req.expire_time).toISOString(), expires.toISOString());
    } finally {
      c.close();
    }
  });
});
