package cli

import (
	"fmt"
	"io"

	"github.com/zsend/zsend/internal/acl"
	"github.com/zsend/zsend/internal/zcert"
	"github.com/zsend/zsend/sender"
)

// ServerCurveFlags are the CURVE flags of a server: zsend's (--curve-secret,
// --allow, --allow-any, --acl) or a relay's (--serve-secret, --serve-allow,
// --serve-allow-any, --serve-acl). Names holds the four flag names, in that
// order, for the messages; Prog prefixes the log lines.
type ServerCurveFlags struct {
	Prog               string
	Names              [4]string
	Secret, Allow, ACL string
	AllowAny           bool
}

// ServerCurve builds the CURVE configuration of a server's flags; nil when
// CURVE is off. Errors are usage errors. Reloads of --allow and --acl are
// logged to stderr.
func ServerCurve(f ServerCurveFlags, stderr io.Writer) (*sender.CurveServer, error) {
	secretF, allowF, anyF, aclF := f.Names[0], f.Names[1], f.Names[2], f.Names[3]
	if f.Secret == "" {
		switch {
		case f.Allow != "" || f.AllowAny:
			return nil, fmt.Errorf("%s and %s need %s", allowF, anyF, secretF)
		case f.ACL != "":
			return nil, fmt.Errorf("%s needs %s (the list is keyed by client keys)", aclF, secretF)
		}
		return nil, nil
	}
	cert, err := zcert.LoadSecret(f.Secret)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", secretF, err)
	}
	cs := &sender.CurveServer{PublicKey: cert.Public, SecretKey: cert.Secret}
	switch {
	case f.Allow != "" && f.AllowAny:
		return nil, fmt.Errorf("give %s DIR or %s, not both", allowF, anyF)
	case f.AllowAny:
		fmt.Fprintf(stderr, "%s: WARNING: %s: every client key is accepted; traffic is encrypted but anyone who can connect may fetch\n", f.Prog, anyF)
		cs.AllowAny = true
	case f.Allow != "":
		store, err := zcert.OpenStore(f.Allow)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", allowF, err)
		}
		store.OnReload = func(n int, bad []error) {
			fmt.Fprintf(stderr, "%s: %s: %d authorized client key(s)\n", f.Prog, f.Allow, n)
			for _, e := range bad {
				fmt.Fprintf(stderr, "%s: %s: skipped: %v\n", f.Prog, f.Allow, e)
			}
		}
		fmt.Fprintf(stderr, "%s: %s: %d authorized client key(s)\n", f.Prog, f.Allow, store.Len())
		cs.Authorize = func(k [32]byte) bool { return store.Allowed(k) }
	default:
		return nil, fmt.Errorf("%s needs %s DIR (authorized client certificates) or %s", secretF, allowF, anyF)
	}
	if f.ACL != "" {
		list, err := acl.Open(f.ACL)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", aclF, err)
		}
		list.OnReload = func(n int, err error) {
			if err != nil {
				fmt.Fprintf(stderr, "%s: %s: keeping the previous list: %v\n", f.Prog, aclF, err)
				return
			}
			fmt.Fprintf(stderr, "%s: %s: reloaded, rules for %d key(s)\n", f.Prog, f.ACL, n)
		}
		cs.Access = func(k [32]byte, name string) bool { return list.Allowed(k, name) }
	}
	return cs, nil
}
