package cli

import (
	"fmt"
	"io"

	"github.com/zsend/zsend/internal/zcert"
)

// Keygen writes a new CURVE key pair as czmq's zcert_save does (the public
// certificate at path, the secret one at path_secret with mode 0600),
// prints the public key and its fingerprint, and returns the exit code.
// It never overwrites an existing certificate.
func Keygen(cmd, path string, stdout, stderr io.Writer) int {
	c, err := zcert.Generate()
	if err != nil {
		fmt.Fprintf(stderr, "%s: --keygen: %v\n", cmd, err)
		return ExitFailure
	}
	c.Metadata["generated-by"] = cmd
	if err := c.Save(path); err != nil {
		fmt.Fprintf(stderr, "%s: --keygen: %v\n", cmd, err)
		return ExitUsage
	}
	fmt.Fprintf(stdout, "public-key = \"%s\"\nfingerprint = %s\npublic certificate: %s\nsecret certificate: %s_secret (mode 0600)\n",
		c.Public, c.Fingerprint(), path, path)
	return ExitOK
}
