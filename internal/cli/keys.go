package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/zsend/zsend/internal/endpoint"
	"github.com/zsend/zsend/internal/zcert"
	"github.com/zsend/zsend/receiver"
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

// CurveClient builds a client's CURVE settings from --server-key (one key,
// Z85 or a certificate file, or one per endpoint of the list eps,
// comma-separated in the same order) and --curve-secret (this client's
// secret certificate; empty: a fresh key per run). It returns nil when
// serverKey is empty; the caller decides what a lone --curve-secret
// means. Errors name the flag (usage errors).
func CurveClient(serverKey, secret, eps string) (*receiver.CurveClient, error) {
	if serverKey == "" {
		return nil, nil
	}
	keys, err := serverKeys(serverKey)
	if err != nil {
		return nil, fmt.Errorf("--server-key: %w", err)
	}
	curve := &receiver.CurveClient{ServerKey: keys[0]}
	if len(keys) > 1 {
		if list, err := endpoint.CheckList(eps); err == nil && len(list) != len(keys) {
			return nil, fmt.Errorf("--server-key: %d keys for %d endpoints (give one key, or one per endpoint in the same order)", len(keys), len(list))
		}
		curve.ServerKeys = keys
	}
	if secret != "" {
		cert, err := zcert.LoadSecret(secret)
		if err != nil {
			return nil, fmt.Errorf("--curve-secret: %w", err)
		}
		curve.PublicKey, curve.SecretKey = cert.Public, cert.Secret
	}
	return curve, nil
}

// serverKeys reads --server-key: one key (Z85 or a certificate file), or a
// comma-separated list of them, one per endpoint of a failover list.
func serverKeys(arg string) ([][32]byte, error) {
	if k, err := zcert.ParsePublic(arg); err == nil || !strings.Contains(arg, ",") {
		return [][32]byte{k}, err
	}
	var keys [][32]byte
	for _, a := range strings.Split(arg, ",") {
		k, err := zcert.ParsePublic(strings.TrimSpace(a))
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}
