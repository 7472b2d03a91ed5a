// The AWS SDK for JavaScript v3's fromProcess(): runs the credential_process of PROFILE
// from AWS_CONFIG_FILE and prints what it resolved as one JSON line.
import { fromProcess } from "@aws-sdk/credential-providers";

try {
  const creds = await fromProcess({ profile: process.env.PROFILE })();
  console.log(JSON.stringify({
    ok: true,
    accessKeyId: creds.accessKeyId,
    secretAccessKey: creds.secretAccessKey,
    sessionToken: creds.sessionToken,
    expiration: creds.expiration ? creds.expiration.toISOString() : null,
    accountId: creds.accountId ?? null,
  }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: String(error) }));
}
