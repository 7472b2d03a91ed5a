// A real AWS SDK for JavaScript v3 client with nothing configured in code: the SDK's own
// default credential chain (environment, shared config and credentials files, process,
// web identity, container endpoint), region and endpoint (AWS_ENDPOINT_URL_STS) resolution.
// Calls GetCallerIdentity and prints one JSON line: who the SDK ended up being.
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";

try {
  const sts = new STSClient({});
  const identity = await sts.send(new GetCallerIdentityCommand({}));
  console.log(JSON.stringify({ ok: true, arn: identity.Arn, region: await sts.config.region() }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, name: err.name, message: String(err.message) }));
  process.exitCode = 1;
}
