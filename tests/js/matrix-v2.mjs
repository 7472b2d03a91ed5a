// One AWS SDK for JavaScript v2 (aws-sdk) client of the SDK matrix: the SDK's default
// credential chain, then one signed GetCallerIdentity to the STS endpoint in
// AWS_ENDPOINT_URL_STS, passed explicitly (v2 does not read that variable).
// Prints one JSON line: {"ok": true, "arn", "version"} or {"ok": false, "error"}.
import AWS from "aws-sdk";

try {
  const sts = new AWS.STS({ region: "us-east-1", endpoint: process.env.AWS_ENDPOINT_URL_STS });
  const identity = await sts.getCallerIdentity({}).promise();
  console.log(JSON.stringify({ ok: true, arn: identity.Arn, version: AWS.VERSION }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: `${error.name}: ${error.message}` }));
  process.exitCode = 1;
}
