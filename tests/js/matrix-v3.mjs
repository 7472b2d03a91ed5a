// One AWS SDK for JavaScript v3 client of the SDK matrix, with the credential provider named
// by the first argument: "chain" (fromNodeProviderChain), "http" (fromHttp) or "process"
// (fromProcess, profile from AWS_PROFILE). One signed GetCallerIdentity to the STS endpoint
// in AWS_ENDPOINT_URL_STS, passed explicitly. Prints one JSON line:
// {"ok": true, "arn", "version"} or {"ok": false, "error"}.
import { createRequire } from "node:module";
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";
import { fromHttp, fromNodeProviderChain, fromProcess } from "@aws-sdk/credential-providers";

const providers = {
  chain: () => fromNodeProviderChain(),
  http: () => fromHttp({}),
  process: () => fromProcess({ profile: process.env.AWS_PROFILE }),
};
const version = createRequire(import.meta.url)("@aws-sdk/credential-providers/package.json").version;

try {
  const sts = new STSClient({
    region: "us-east-1",
    endpoint: process.env.AWS_ENDPOINT_URL_STS,
    credentials: providers[process.argv[2]](),
  });
  const identity = await sts.send(new GetCallerIdentityCommand({}));
  console.log(JSON.stringify({ ok: true, arn: identity.Arn, version }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: `${error.name}: ${error.message}` }));
  process.exitCode = 1;
}
