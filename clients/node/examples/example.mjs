// Creates a secret, lists it, resolves an Authorization header with it (as a
// tool executor would, with the resolver token) and deletes it.
//
//   VAULT_ADDR=127.0.0.1:50051 VAULT_ADMIN_TOKEN=... VAULT_RESOLVER_TOKEN=... \
//     node examples/example.mjs
import { randomBytes } from 'node:crypto';

import { createVaultClient } from '../index.js';

const { VAULT_ADDR = '127.0.0.1:50051', VAULT_ADMIN_TOKEN, VAULT_RESOLVER_TOKEN } = process.env;
if (!VAULT_ADMIN_TOKEN || !VAULT_RESOLVER_TOKEN) {
  console.error('set VAULT_ADDR, VAULT_ADMIN_TOKEN and VAULT_RESOLVER_TOKEN');
  process.exit(2);
}

const admin = createVaultClient({ address: VAULT_ADDR, token: VAULT_ADMIN_TOKEN });
const resolver = createVaultClient({ address: VAULT_ADDR, token: VAULT_RESOLVER_TOKEN });
const name = `example_${randomBytes(4).toString('hex')}`;

try {
  const secret = await admin.createSecret({
    name,
    value: `sk_test_${randomBytes(8).toString('hex')}`,
    description: 'created by examples/example.mjs',
  });
  console.log(`created ${secret.name} (etag ${secret.etag})`);

  const { secrets, total_size } = await admin.listSecrets({ name_contains: name });
  console.log(`listed ${total_size} secret(s): ${secrets.map((s) => s.name).join(', ')}`);

  const { fields } = await resolver.resolveTemplate({
    fields: [
      { key: 'header:Authorization', template: `Bearer {{secret:${name}}}`, encoding: 'ENCODING_HEADER' },
    ],
    tool: 'example',
  });
  // A real executor would put this straight into its HTTP request; never log it.
  console.log(`resolved ${fields[0].key} (${fields[0].value.length} characters)`);

  await admin.deleteSecret({ name, etag: secret.etag });
  console.log(`deleted ${name}`);
} catch (err) {
  console.error(`vault error: ${err.codeName ?? ''} ${err.reason ?? ''} ${err.details ?? err.message}`);
  await admin.deleteSecret({ name }).catch(() => {});
  process.exitCode = 1;
} finally {
  admin.close();
  resolver.close();
}
