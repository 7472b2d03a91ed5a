// A real AWS SDK for JavaScript v3 client of the daemon.
// Resolves credentials with fromHttp() from the standard environment variables
// (AWS_CONTAINER_CREDENTIALS_FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE), or with
// fromInstanceMetadata() when PROVIDER=imds, then,
// if STS_ENDPOINT is set, calls GetCallerIdentity with them. Prints one JSON line.
import { fromHttp, fromInstanceMetadata } from "@aws-sdk/credential-providers";
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";

try {
  // Defaults mirror the SDK's own (1 s timeout); FROM_HTTP_MAX_RETRIES lets tests choose.
  const maxRetries = Number(process.env.FROM_HTTP_MAX_RETRIES ?? "0");
  // PROVIDER=imds: the instance metadata provider (AWS_EC2_METADATA_SERVICE_ENDPOINT).
  const provider = process.env.PROVIDER === "imds"
    ? fromInstanceMetadata({ timeout: 1000, maxRetries })
    : fromHttp({ timeout: 1000, maxRetries });
  const creds = await provider();
  const out = {
    ok: true,
    accessKeyId: creds.accessKeyId,
    secretAccessKey: creds.secretAccessKey,
    sessionToken: creds.sessionToken,
    expiration: creds.expiration ? creds.expiration.toISOString() : null,
    accountId: creds.accountId ?? null,
  };
  if (process.env.STS_ENDPOINT) {
    const sts = new STSClient({ region: "us-east-1", endpoint: process.env.STS_ENDPOINT, credentials: provider });
    const identity = await sts.send(new GetCallerIdentityCommand({}));
    out.arn = identity.Arn;
  }
  console.log(JSON.stringify(out));
} catch (err) {
  console.log(JSON.stringify({ ok: false, name: err.name, message: String(err.message) }));
  process.exitCode = 1;
}
