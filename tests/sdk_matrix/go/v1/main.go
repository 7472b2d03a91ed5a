// The AWS SDK for Go v1 as Debian packages it: the default credential chain (shared config
// enabled, as AWS_SDK_LOAD_CONFIG=1 would), one signed GetCallerIdentity to the STS endpoint
// in AWS_ENDPOINT_URL_STS (this SDK version does not read that variable itself). Prints one
// JSON line: {"ok": true, "arn": ...} or {"ok": false, "error": ...}.
package main

import (
	"encoding/json"
	"os"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/sts"
)

func report(out map[string]interface{}) {
	line, _ := json.Marshal(out)
	os.Stdout.Write(append(line, '\n'))
}

func main() {
	sess, err := session.NewSessionWithOptions(session.Options{
		SharedConfigState: session.SharedConfigEnable,
		Config: aws.Config{
			Endpoint: aws.String(os.Getenv("AWS_ENDPOINT_URL_STS")),
			Region:   aws.String("us-east-1"),
		},
	})
	if err != nil {
		report(map[string]interface{}{"ok": false, "error": err.Error()})
		os.Exit(1)
	}
	identity, err := sts.New(sess).GetCallerIdentity(&sts.GetCallerIdentityInput{})
	if err != nil {
		report(map[string]interface{}{"ok": false, "error": err.Error()})
		os.Exit(1)
	}
	report(map[string]interface{}{"ok": true, "arn": aws.StringValue(identity.Arn), "version": aws.SDKVersion})
}
