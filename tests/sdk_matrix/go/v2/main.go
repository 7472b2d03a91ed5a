// The AWS SDK for Go v2 as Debian packages it: config.LoadDefaultConfig's credential chain,
// one signed GetCallerIdentity to the STS endpoint in AWS_ENDPOINT_URL_STS (this SDK version
// does not read that variable itself). Prints one JSON line: {"ok": true, "arn": ...} or
// {"ok": false, "error": ...}.
package main

import (
	"context"
	"encoding/json"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

func report(out map[string]interface{}) {
	line, _ := json.Marshal(out)
	os.Stdout.Write(append(line, '\n'))
}

func main() {
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion("us-east-1"))
	if err != nil {
		report(map[string]interface{}{"ok": false, "error": err.Error()})
		os.Exit(1)
	}
	client := sts.NewFromConfig(cfg, func(o *sts.Options) {
		o.EndpointResolver = sts.EndpointResolverFromURL(os.Getenv("AWS_ENDPOINT_URL_STS"))
	})
	identity, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		report(map[string]interface{}{"ok": false, "error": err.Error()})
		os.Exit(1)
	}
	report(map[string]interface{}{"ok": true, "arn": aws.ToString(identity.Arn), "version": aws.SDKVersion})
}
