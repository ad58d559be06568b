// A real OpenID Connect provider for Portcullis' end-to-end tests (never for production).
//
// oidc-provider with one static confidential client, the development login form
// (devInteractions) guarded by a password check against the fixture users below, the
// device authorization grant, and a `groups` claim. It listens on 127.0.0.1 on the port
// given by PORT (0, the default, lets the OS choose) and prints one line
//     IDP_ISSUER=http://127.0.0.1:PORT
// once it accepts connections, which the Rust harness (tests/src/idp.rs) waits for.
//
// Environment:
//   PORT            listening port (default 0)
//   CLIENT_ID       static client id (default "portcullis")
//   CLIENT_SECRET   its secret (default "portcullis-test-secret")
//   REDIRECT_URIS   space-separated redirect URIs (the CA's callback)
//   DEVICE_CODE_TTL device code lifetime in seconds (default 600), so tests can see expiry

import http from 'node:http';
import querystring from 'node:querystring';
import Provider from 'oidc-provider';

// login (also the `sub`) -> { password, groups, email, preferredUsername (default: the login) }
const USERS = {
  alice: { password: 'alice-password', groups: ['developers'], email: 'alice@example.test' },
  bob: { password: 'bob-password', groups: ['ops', 'developers'], email: 'bob@example.test' },
  carol: { password: 'carol-password', groups: [], email: 'carol@example.test' },
  // No groups claim at all (an IdP not asked for them): unknown, not "none".
  dana: { password: 'dana-password', email: 'dana@example.test' },
  // Named like a local user of the CA: must never become that user.
  'ops-lead': { password: 'ops-lead-password', groups: [], email: 'lead@example.test' },
  // An IdP account that calls itself alice (a user-editable claim at many IdPs) but is
  // another subject: must never take alice's account.
  mallory: { password: 'mallory-password', groups: ['developers'], email: 'mallory@example.test', preferredUsername: 'alice' },
};

const port = Number(process.env.PORT || 0);
const clientId = process.env.CLIENT_ID || 'portcullis';
const clientSecret = process.env.CLIENT_SECRET || 'portcullis-test-secret';
const redirectUris = (process.env.REDIRECT_URIS || 'https://127.0.0.1/v1/auth/oidc/callback').split(' ').filter(Boolean);
const deviceCodeTtl = Number(process.env.DEVICE_CODE_TTL || 600);

// The issuer must be known before the provider is built: bind first, then build.
const server = http.createServer();
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      response_types: ['code'],
      grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    scopes: ['openid', 'profile', 'email', 'groups'],
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    // Put the scope's claims into the ID token itself (the CA reads only the ID token).
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: true },
      deviceFlow: { enabled: true },
    },
    ttl: {
      DeviceCode: deviceCodeTtl,
    },
    async findAccount(ctx, id) {
      const user = USERS[id];
      if (!user) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            preferred_username: user.preferredUsername || id,
            name: id,
            email: user.email,
            email_verified: true,
            groups: user.groups,
          };
        },
      };
    },
  });
  provider.proxy = false;

  // devInteractions accepts any login; check the password against the fixtures before
  // it sees the form. The body is read here and handed on through req.body, which
  // oidc-provider's body parser uses when the stream was already consumed.
  provider.use(async (ctx, next) => {
    if (ctx.method === 'POST' && /^\/interaction\/[^/]+$/.test(ctx.path)) {
      const chunks = [];
      for await (const chunk of ctx.req) chunks.push(chunk);
      const raw = Buffer.concat(chunks).toString();
      const form = querystring.parse(raw);
      if (form.prompt === 'login') {
        const user = USERS[form.login];
        if (!user || user.password !== form.password) {
          ctx.status = 401;
          ctx.type = 'text/plain';
          ctx.body = 'invalid username or password';
          return;
        }
      }
      ctx.req.body = raw;
    }
    await next();
  });

  server.on('request', provider.callback());
  console.log(`IDP_ISSUER=${issuer}`);
});
