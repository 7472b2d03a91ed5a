# One Ruby aws-sdk-core client of the SDK matrix (as Debian packages it): the default
# credential chain, then one signed GetCallerIdentity to the STS endpoint in
# AWS_ENDPOINT_URL_STS, passed explicitly (this version does not read that variable).
# Prints one JSON line: {"ok": true, "arn", "version"} or {"ok": false, "error"}.
require 'json'
require 'aws-sdk-core'

begin
  sts = Aws::STS::Client.new(region: 'us-east-1', endpoint: ENV.fetch('AWS_ENDPOINT_URL_STS'))
  arn = sts.get_caller_identity.arn
  puts JSON.generate(ok: true, arn: arn, version: Aws::CORE_GEM_VERSION)
rescue StandardError => e
  puts JSON.generate(ok: false, error: "#{e.class}: #{e.message}")
  exit 1
end
