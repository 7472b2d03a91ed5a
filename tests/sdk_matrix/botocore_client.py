"""One botocore client of the SDK matrix, run by whichever Python has the botocore to test.

botocore's default credential chain, then one signed GetCallerIdentity to the STS endpoint in
AWS_ENDPOINT_URL_STS, passed explicitly (botocore < 1.31.x does not read that variable).
Prints one JSON line: {"ok": true, "arn", "method", "version"} or {"ok": false, "error"}.
Standard library and botocore only: it runs in venvs with nothing else installed.
"""

import json
import os

import botocore
import botocore.session

try:
    session = botocore.session.get_session()
    client = session.create_client(
        "sts", region_name="us-east-1", endpoint_url=os.environ["AWS_ENDPOINT_URL_STS"]
    )
    arn = client.get_caller_identity()["Arn"]
    method = session.get_credentials().method
    print(json.dumps({"ok": True, "arn": arn, "method": method, "version": botocore.__version__}))
except Exception as error:  # any failure is the cell's answer, reported as data
    print(json.dumps({"ok": False, "error": f"{type(error).__name__}: {error}"}))
    raise SystemExit(1) from None
