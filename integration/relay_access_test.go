package integration

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/acl"
	"github.com/zsend/zsend/internal/zcert"
	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/relay"
	"github.com/zsend/zsend/sender"
)

// curveRelay runs a relay with CURVE both ways: a client of parent (whose
// server key is parentKey) with key me, a server with key serverKey that
// lets any child key in at the transport (the root decides the rest).
func curveRelay(t *testing.T, parentEP string, parentKey, me, serverKey *zcert.Cert, trees ...string) string {
	t.Helper()
	return startTreeRelayWith(t, parentEP, "relay-"+trees[0], trees, func(c *relay.Config) {
		c.Follow.Receiver.Curve = curveClient(parentKey, me)
		c.Serve.Curve = curveServer(serverKey)
	}).ep
}

// The root's access list decides which child of a relay may fetch which
// tree (PROTOCOL.md section 15.8): the relay lets any key in at the
// transport and asks the root (ACCESS) about each child key; a key the
// root allows nothing is refused at the handshake, a key allowed one tree
// is refused the other. Through two relays, the question goes up to the
// root.
func TestRelayRootAccessListDecides(t *testing.T) {
	rootKey, relayKey, relay2Key, relaySrv, relay2Srv := newCert(t), newCert(t), newCert(t), newCert(t), newCert(t)
	a, b, stranger := newCert(t), newCert(t), newCert(t)
	src := t.TempDir()
	conf, pub := filepath.Join(src, "conf"), filepath.Join(src, "public")
	os.MkdirAll(conf, 0o755)
	os.MkdirAll(pub, 0o755)
	writeRandom(t, conf, "secret.key", 3000)
	writeRandom(t, pub, "readme", 300)
	rules := relayKey.Public.String() + " conf/ public/\n" + relay2Key.Public.String() + " conf/ public/\n" +
		a.Public.String() + " conf/ public/\n" + b.Public.String() + " public/\n"
	list, err := acl.Parse([]byte(rules), src)
	if err != nil {
		t.Fatal(err)
	}
	cs := curveServer(rootKey, relayKey, relay2Key) // the children connect to relays only; the stranger is in no rule
	cs.Access = func(k [32]byte, name string) bool { return list.Allowed(k, name) }
	rootEP, _ := publishingServer(t, sender.Config{Paths: []string{conf, pub}, Curve: cs, Heartbeat: 200 * time.Millisecond})

	relayEP := curveRelay(t, rootEP, rootKey, relayKey, relaySrv, "conf", "public")
	relay2EP := curveRelay(t, relayEP, relaySrv, relay2Key, relay2Srv, "conf", "public")

	for _, hop := range []struct {
		name string
		ep   string
		key  *zcert.Cert
	}{{"one relay", relayEP, relaySrv}, {"two relays", relay2EP, relay2Srv}} {
		t.Run(hop.name, func(t *testing.T) {
			sync := func(client *zcert.Cert, tree string) (string, error) {
				out := t.TempDir()
				ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
				defer cancel()
				_, err := mirror.Sync(ctx, mirror.Config{Out: out, Tree: tree,
					Receiver: receiver.Config{Endpoint: hop.ep, Timeout: 20 * time.Second, Curve: curveClient(hop.key, client)}})
				return out, err
			}
			// a may fetch both (once the relay has them: retried within the bound).
			var err error
			for _, tree := range []string{"conf", "public"} {
				deadline := time.Now().Add(30 * time.Second)
				for {
					var out string
					out, err = sync(a, tree)
					if err == nil {
						if _, serr := os.Stat(filepath.Join(out, tree)); serr != nil {
							t.Fatalf("a's %s: %v", tree, serr)
						}
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("a mirrors %s through %s: %v", tree, hop.name, err)
					}
					time.Sleep(200 * time.Millisecond)
				}
			}
			if _, err := sync(b, "public"); err != nil {
				t.Fatalf("b mirrors public: %v", err)
			}
			out, err := sync(b, "conf")
			if !errors.Is(err, receiver.ErrRefused) && !errors.Is(err, mirror.ErrNotTree) {
				t.Fatalf("b mirrors conf through %s: %v, want refused", hop.name, err)
			}
			if _, serr := os.Lstat(filepath.Join(out, "conf")); serr == nil {
				t.Fatal("a refused tree has a stable path")
			}
			if _, err := sync(stranger, "public"); !errors.Is(err, receiver.ErrKeyRefused) {
				t.Fatalf("a key the root does not know mirrors public through %s: %v, want key refused", hop.name, err)
			}
		})
	}
}
