// Smoke test against a running vault. Needs:
//   VAULT_ADDR (host:port), VAULT_ADMIN_TOKEN, VAULT_VIEWER_TOKEN, VAULT_RESOLVER_TOKEN,
//   VAULT_OPERATOR_TOKEN
// Skipped (not failed) when they are missing, so `npm test` works offline,
// unless VAULT_SMOKE_REQUIRED=1 (set by tests/integration/test_node_client.py,
// which runs it against a real server).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';

import {
  SecretInUse,
  createVaultClient,
  dateToTimestamp,
  status,
  timestampToDate,
} from '../index.js';

const ENV = [
  'VAULT_ADDR',
  'VAULT_ADMIN_TOKEN',
  'VAULT_VIEWER_TOKEN',
  'VAULT_RESOLVER_TOKEN',
  'VAULT_OPERATOR_TOKEN',
];
const missing = ENV.filter((k) => !process.env[k]);
const required = process.env.VAULT_SMOKE_REQUIRED === '1';
const skip = missing.length ? `needs ${missing.join(', ')}` : false;

if (missing.length && required) {
  it('has its environment', () => {
    assert.fail(`VAULT_SMOKE_REQUIRED=1 but ${missing.join(', ')} unset`);
  });
}

const RUN = `${Date.now().toString(36)}${randomBytes(4).toString('hex')}`;
const NAME = `node_smoke_${RUN}`;
const VALUE = `sk_live_${randomBytes(12).toString('hex')}`;
const NEW_VALUE = `sk_live_${randomBytes(12).toString('hex')}`;
const CONFIG_KEY = `node_smoke_cfg_${RUN}`;

function expectError(codeName, check = () => {}) {
  return (err) => {
    assert.equal(err.codeName, codeName, `expected ${codeName}, got ${err.codeName}: ${err.details}`);
    assert.equal(err.code, status[codeName]);
    assert.equal(typeof err.details, 'string');
    // The contract: every error carries a google.rpc.Status with one ErrorInfo.
    assert.ok(err.status, `${codeName}: no google.rpc.Status in grpc-status-details-bin`);
    assert.equal(err.status.code, err.code, 'Status.code differs from the gRPC status code');
    assert.match(err.reason ?? '', /^[A-Z][A-Z0-9_]*$/, `${codeName}: reason must be UPPER_SNAKE`);
    assert.equal(err.domain, 'vault.interakt');
    for (const v of [VALUE, NEW_VALUE]) {
      assert.ok(!err.details.includes(v), 'an error message holds a secret value');
    }
    check(err);
    return true;
  };
}

describe('vault smoke', { skip }, () => {
  let admin;
  let viewer;
  let resolver;
  let anon;
  let created;

  before(() => {
    const address = process.env.VAULT_ADDR;
    admin = createVaultClient({ address, token: process.env.VAULT_ADMIN_TOKEN });
    viewer = createVaultClient({ address, token: process.env.VAULT_VIEWER_TOKEN });
    resolver = createVaultClient({ address, token: process.env.VAULT_RESOLVER_TOKEN });
    anon = createVaultClient({ address });
  });

  after(async () => {
    // Best-effort cleanup when a test failed half-way.
    if (admin) {
      await Promise.allSettled([
        admin.deleteSecret({ name: NAME }),
        admin.deleteConfigValue({ key: CONFIG_KEY }),
      ]);
    }
    for (const c of [admin, viewer, resolver, anon]) c?.close();
  });

  it('creates a secret and returns metadata only', async () => {
    const s = await admin.createSecret({ name: NAME, value: VALUE, description: 'node smoke' });
    assert.equal(s.name, NAME);
    assert.equal(s.description, 'node smoke');
    assert.ok(s.etag, 'etag must be set');
    assert.ok(timestampToDate(s.create_time) instanceof Date, 'create_time must be set');
    assert.ok(timestampToDate(s.update_time) instanceof Date, 'update_time must be set');
    assert.ok(!JSON.stringify(s).includes(VALUE), 'CreateSecret returned the value');
    created = s;
  });

  it('ALREADY_EXISTS on a duplicate create, also ignoring case', async () => {
    await assert.rejects(admin.createSecret({ name: NAME, value: 'x' }), expectError('ALREADY_EXISTS'));
    await assert.rejects(
      admin.createSecret({ name: NAME.toUpperCase(), value: 'x' }),
      expectError('ALREADY_EXISTS'),
    );
  });

  it('gets it (admin and viewer)', async () => {
    const s = await admin.getSecret({ name: NAME });
    assert.equal(s.name, NAME);
    assert.equal(s.etag, created.etag);
    assert.deepEqual(s.create_time, created.create_time);
    const v = await viewer.getSecret({ name: NAME });
    assert.equal(v.etag, created.etag);
  });

  it('lists it with name_contains (case-insensitive)', async () => {
    const r = await admin.listSecrets({ name_contains: RUN.toUpperCase(), page_size: 10 });
    assert.deepEqual(
      r.secrets.map((s) => s.name),
      [NAME],
    );
    assert.equal(r.total_size, 1);
    assert.equal(r.next_page_token, '');
    assert.ok(!JSON.stringify(r).includes(VALUE), 'ListSecrets returned the value');
  });

  it('updates description and value; etag changes; a stale etag is ABORTED', async () => {
    const u = await admin.updateSecret({ name: NAME, description: 'updated', etag: created.etag });
    assert.equal(u.description, 'updated');
    assert.notEqual(u.etag, created.etag, 'etag must change on update');
    assert.ok(
      timestampToDate(u.update_time) >= timestampToDate(created.update_time),
      'update_time must not go back',
    );
    await assert.rejects(
      admin.updateSecret({ name: NAME, description: 'x', etag: created.etag }),
      expectError('ABORTED'),
    );
    const u2 = await admin.updateSecret({ name: NAME, value: NEW_VALUE });
    assert.equal(u2.description, 'updated', 'an update without description must keep it');
    assert.notEqual(u2.etag, u.etag);
    assert.ok(!JSON.stringify(u2).includes(NEW_VALUE), 'UpdateSecret returned the value');
    created = u2;
  });

  it('reports vault stats', async () => {
    const st = await viewer.getVaultStats();
    assert.equal(typeof st.total_secrets, 'string', 'int64 comes back as a string');
    assert.ok(Number(st.total_secrets) >= 1);
    const last = timestampToDate(st.last_update_time);
    assert.ok(last instanceof Date, 'last_update_time must be set');
    assert.ok(last >= timestampToDate(created.update_time), 'last_update_time older than our update');
  });

  it('resolves a header template with the resolver token', async () => {
    const r = await resolver.resolveTemplate({
      fields: [
        { key: 'header:Authorization', template: `Bearer {{secret:${NAME}}}`, encoding: 'ENCODING_HEADER' },
        { key: 'header:X-Id', template: '{{ input.id }}', encoding: 'ENCODING_HEADER' },
      ],
      inputs: { id: '42' },
      tool: 'node-smoke',
    });
    assert.deepEqual(r.fields, [
      { key: 'header:Authorization', value: `Bearer ${NEW_VALUE}` },
      { key: 'header:X-Id', value: '42' },
    ]);
  });

  it('NOT_FOUND SECRET_NOT_FOUND naming every missing secret', async () => {
    const a = `${NAME}_missing_a`;
    const b = `${NAME}_missing_b`;
    await assert.rejects(
      resolver.resolveTemplate({
        fields: [
          { key: 'h1', template: `Bearer {{secret:${b}}}`, encoding: 'ENCODING_HEADER' },
          { key: 'h2', template: `{{secret:${a}}} {{secret:${NAME}}}`, encoding: 'ENCODING_HEADER' },
        ],
        tool: 'node-smoke',
      }),
      expectError('NOT_FOUND', (err) => {
        assert.equal(err.reason, 'SECRET_NOT_FOUND');
        assert.match(err.details, /^secret not found: /);
        const names = err.details.slice('secret not found: '.length).split(', ').sort();
        assert.deepEqual(names, [a, b]);
      }),
    );
    await assert.rejects(admin.getSecret({ name: `${NAME}_missing_a` }), expectError('NOT_FOUND'));
  });

  it('CheckTemplate reports a missing secret without resolving', async () => {
    const r = await admin.checkTemplate({
      fields: [{ key: 'h', template: `{{secret:${NAME}}} {{secret:${NAME}_typo}}`, encoding: 'ENCODING_HEADER' }],
    });
    assert.equal(r.references.length, 1);
    assert.deepEqual([...r.references[0].secret_names].sort(), [NAME, `${NAME}_typo`].sort());
    const p = r.problems.filter((x) => x.kind === 'PROBLEM_KIND_SECRET_NOT_FOUND');
    assert.deepEqual(
      p.map((x) => x.name),
      [`${NAME}_typo`],
    );
    assert.ok(!JSON.stringify(r).includes(NEW_VALUE), 'CheckTemplate returned a value');
  });

  it('PERMISSION_DENIED for the viewer creating a secret, and for the admin resolving', async () => {
    await assert.rejects(
      viewer.createSecret({ name: `${NAME}_viewer`, value: 'x' }),
      expectError('PERMISSION_DENIED'),
    );
    await assert.rejects(
      admin.resolveTemplate({ fields: [{ key: 'h', template: `{{secret:${NAME}}}` }], tool: 'node-smoke' }),
      expectError('PERMISSION_DENIED'),
    );
  });

  it('UNAUTHENTICATED without a token or with an unknown one', async () => {
    await assert.rejects(anon.listSecrets({}), expectError('UNAUTHENTICATED'));
    const bogus = createVaultClient({ address: process.env.VAULT_ADDR, token: `bogus-${RUN}` });
    try {
      await assert.rejects(bogus.getVaultStats(), expectError('UNAUTHENTICATED'));
    } finally {
      bogus.close();
    }
  });

  it('puts, gets, lists and deletes a config value', async () => {
    const put = await admin.putConfigValue({ key: CONFIG_KEY, value: 'https://api.example.com', description: 'd' });
    assert.equal(put.key, CONFIG_KEY);
    assert.equal(put.value, 'https://api.example.com');
    const got = await viewer.getConfigValue({ key: CONFIG_KEY });
    assert.equal(got.value, 'https://api.example.com');
    const list = await viewer.listConfigValues({ key_contains: RUN });
    assert.deepEqual(
      list.config_values.map((c) => c.key),
      [CONFIG_KEY],
    );
    await admin.deleteConfigValue({ key: CONFIG_KEY });
    await assert.rejects(admin.getConfigValue({ key: CONFIG_KEY }), expectError('NOT_FOUND'));
  });

  it('lists versions, deletes recoverably, restores, then purges', async () => {
    const v = await admin.listSecretVersions({ name: NAME });
    assert.ok(v.versions.length >= 1);
    assert.equal(v.versions.filter((x) => x.current).length, 1);
    assert.equal(v.versions[0].state, 'STATE_ENABLED');
    const current = await admin.getSecret({ name: NAME });
    // Resolved above: the delete guard refuses, naming the tool, until forced.
    const before = Date.now();
    await assert.rejects(
      admin.deleteSecret({ name: NAME, etag: current.etag }),
      expectError('FAILED_PRECONDITION', (err) => {
        assert.equal(err.reason, 'SECRET_IN_USE');
        assert.equal(err.errorMetadata.tools, 'node-smoke');
        assert.ok(err instanceof SecretInUse, `expected SecretInUse, got ${err.name}`);
        assert.deepEqual(err.tools, ['node-smoke']);
        assert.equal(err.toolsOmitted, 0);
        assert.ok(err.lastResolveTime instanceof Date, 'lastResolveTime must be a Date');
        assert.ok(err.lastResolveTime.getTime() <= before, 'last resolve is in the future');
        assert.ok(before - err.lastResolveTime.getTime() < 120_000, 'last resolve is too old');
      }),
    );
    await admin.deleteSecret({ name: NAME, etag: current.etag, force: true });
    await assert.rejects(admin.getSecret({ name: NAME }), expectError('NOT_FOUND'));
    const restored = await admin.restoreSecret({ name: NAME });
    assert.equal(restored.name, NAME);
    created = restored;
  });

  it('deletes the secret (with its etag); it is gone afterwards', async () => {
    const e = await admin.deleteSecret({ name: NAME, etag: created.etag, purge: true, force: true });
    assert.deepEqual(e, {});
    await assert.rejects(admin.getSecret({ name: NAME }), expectError('NOT_FOUND'));
    await assert.rejects(admin.deleteSecret({ name: NAME }), expectError('NOT_FOUND'));
  });

  it('records audit events for the secret, without values', async () => {
    // Audit events may be written in batches (the resolve path buffers them):
    // poll briefly for the last ones to land.
    const wanted = ['CreateSecret', 'DeleteSecret'].map((m) => `/interakt.vault.v1.SecretService/${m}`);
    wanted.push('/interakt.vault.v1.ResolverService/ResolveTemplate');
    let r;
    for (let waited = 0; ; waited += 100) {
      r = await admin.listAuditEvents({ secret_name: NAME, page_size: 100 });
      const seen = new Set(r.events.map((e) => e.method));
      if (wanted.every((m) => seen.has(m)) || waited >= 5000) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    assert.ok(r.events.length > 0, 'no audit events for the secret');
    const methods = new Set(r.events.map((e) => e.method));
    for (const m of ['CreateSecret', 'DeleteSecret']) {
      assert.ok(methods.has(`/interakt.vault.v1.SecretService/${m}`), `no audit event for ${m}`);
    }
    const resolve = r.events.find((e) => e.method === '/interakt.vault.v1.ResolverService/ResolveTemplate');
    assert.ok(resolve, 'no audit event for ResolveTemplate');
    assert.equal(resolve.tool, 'node-smoke');
    const text = JSON.stringify(r);
    assert.ok(!text.includes(VALUE) && !text.includes(NEW_VALUE), 'an audit event holds a value');
    await assert.rejects(viewer.listAuditEvents({}), expectError('PERMISSION_DENIED'));
  });
});

describe('vault smoke: tokens in the database (AccessService)', { skip }, () => {
  let admin;
  let operator;
  const clients = [];
  const minted = [];

  const connect = (token) => {
    const c = createVaultClient({ address: process.env.VAULT_ADDR, token });
    clients.push(c);
    return c;
  };

  before(() => {
    admin = connect(process.env.VAULT_ADMIN_TOKEN);
    operator = connect(process.env.VAULT_OPERATOR_TOKEN);
  });

  after(async () => {
    if (operator) await Promise.allSettled(minted.map((id) => operator.revokeToken({ id })));
    for (const c of clients) c.close();
  });

  async function listAll(client) {
    const tokens = [];
    let page_token = '';
    do {
      const r = await client.listTokens({ page_size: 2, page_token });
      tokens.push(...r.tokens);
      page_token = r.next_page_token;
    } while (page_token);
    return tokens;
  }

  it('an operator mints a resolver token; it resolves as a resolver and lists nothing', async () => {
    const expires = new Date(Date.now() + 3_600_000);
    const r = await operator.createToken({
      principal: `node-exec-${RUN}`,
      role: 'resolver',
      description: 'node smoke',
      expire_time: dateToTimestamp(expires),
    });
    minted.push(r.info.id);
    assert.ok(r.token, 'the token is returned once, by createToken');
    assert.equal(r.info.principal, `node-exec-${RUN}`);
    assert.equal(r.info.role, 'resolver');
    assert.equal(r.info.description, 'node smoke');
    assert.match(r.info.fingerprint, /^[0-9a-f]{12}$/);
    assert.ok(Math.abs(timestampToDate(r.info.expire_time) - expires) < 1000, 'expire_time differs');
    assert.ok(!JSON.stringify(r.info).includes(r.token), 'TokenInfo holds the token');

    const exec = connect(r.token);
    const out = await exec.resolveTemplate({
      fields: [{ key: 'h', template: '{{ input.id }}', encoding: 'ENCODING_HEADER' }],
      inputs: { id: '7' },
      tool: 'node-smoke-token',
    });
    assert.deepEqual(out.fields, [{ key: 'h', value: '7' }]);
    await assert.rejects(exec.listSecrets({}), expectError('PERMISSION_DENIED'));
  });

  it('an admin mints a viewer token; it lists as a viewer and cannot write; listTokens pages', async () => {
    const r = await admin.createToken({ principal: `node-viewer-${RUN}`, role: 'viewer' });
    minted.push(r.info.id);
    assert.equal(r.info.role, 'viewer');
    assert.equal(r.info.expire_time, null, 'no expire_time given: no expiry');
    const viewer = connect(r.token);
    const list = await viewer.listSecrets({ page_size: 1 });
    assert.ok(Array.isArray(list.secrets));
    await assert.rejects(viewer.createSecret({ name: `node_tok_${RUN}`, value: 'x' }), expectError('PERMISSION_DENIED'));

    const all = await listAll(admin);
    const byId = new Map(all.map((t) => [t.id, t]));
    assert.equal(byId.size, all.length, 'a token listed twice across pages');
    for (const id of minted) assert.ok(byId.has(id), `token ${id} not listed`);
    assert.equal(byId.get(r.info.id).role, 'viewer');
    assert.equal(byId.get(minted[0]).role, 'resolver');
    assert.equal(byId.get(r.info.id).fingerprint, r.info.fingerprint);
    assert.ok(!JSON.stringify(all).includes(r.token), 'listTokens shows a token');
  });

  it('an admin may not mint a resolver token: PERMISSION_DENIED OPERATOR_REQUIRED', async () => {
    await assert.rejects(
      admin.createToken({ principal: `node-denied-${RUN}`, role: 'resolver' }),
      expectError('PERMISSION_DENIED', (err) => assert.equal(err.reason, 'OPERATOR_REQUIRED')),
    );
    const all = await listAll(operator);
    assert.ok(!all.some((t) => t.principal === `node-denied-${RUN}`), 'a refused token was created');
  });

  it('revokeToken makes the token UNAUTHENTICATED', async () => {
    const r = await operator.createToken({ principal: `node-revoked-${RUN}`, role: 'viewer' });
    minted.push(r.info.id);
    const doomed = connect(r.token);
    await doomed.getVaultStats();
    assert.deepEqual(await operator.revokeToken({ id: r.info.id }), {});
    // Revocation spreads by the change channel: poll with a short deadline.
    let last;
    for (const deadline = Date.now() + 5000; Date.now() < deadline; ) {
      try {
        await doomed.getVaultStats({}, { deadlineMs: 1000 });
        last = null;
      } catch (err) {
        last = err;
        if (err.codeName === 'UNAUTHENTICATED') break;
      }
      await new Promise((res) => setTimeout(res, 50));
    }
    assert.ok(last, 'the revoked token still works after 5 s');
    expectError('UNAUTHENTICATED')(last);
    assert.ok(!(await listAll(operator)).some((t) => t.id === r.info.id), 'a revoked token is listed');
  });
});
