package integration

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/zsend/zsend/internal/acl"
	"github.com/zsend/zsend/internal/zcert"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// TestCurveAccessList: an access list lets one key fetch one tree and
// not another; it is enforced on every request, and sessions show their
// key's fingerprint.
func TestCurveAccessList(t *testing.T) {
	server, a, b := newCert(t), newCert(t), newCert(t)
	src := t.TempDir()
	conf, pub := filepath.Join(src, "conf"), filepath.Join(src, "public")
	os.MkdirAll(conf, 0o755)
	os.MkdirAll(pub, 0o755)
	appConf := writeRandom(t, conf, "app.conf", 5000)
	readme := writeRandom(t, pub, "readme", 300)
	list, err := acl.Parse([]byte(a.Public.String()+" conf/\n*  public/\n"), src)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	keysSeen := map[string]bool{}
	var refusals []string
	cs := curveServer(server, a, b)
	cs.Access = func(k [32]byte, name string) bool { return list.Allowed(k, name) }
	ep, _ := serve(t, sender.Config{Paths: []string{conf, pub}, Curve: cs, Events: func(e sender.Event) {
		mu.Lock()
		defer mu.Unlock()
		switch e.Kind {
		case "session-open":
			keysSeen[e.Key] = true
		case "refused":
			refusals = append(refusals, e.Name+": "+e.Message)
		}
	}})
	get := func(who *zcert.Cert, names ...string) ([]receiver.Result, error) {
		return fetch(t, receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Curve: curveClient(server, who)}, names...)
	}

	res, err := get(a, "conf/app.conf", "public/readme")
	if err != nil {
		t.Fatalf("a: %v", err)
	}
	sameFile(t, appConf, res[0].Path)
	sameFile(t, readme, res[1].Path)

	res, err = get(b, "public/readme", "conf/app.conf")
	if res[0].Err != nil {
		t.Fatalf("b public/readme: %v", res[0].Err)
	}
	sameFile(t, readme, res[0].Path)
	if !errors.Is(res[1].Err, receiver.ErrRefused) {
		t.Fatalf("b conf/app.conf: %v, want refused", res[1].Err)
	}
	if _, err := os.Stat(res[1].Path); err == nil {
		t.Fatal("a refused file was written")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(refusals) != 1 || !strings.Contains(refusals[0], "conf/app.conf: 403") || !strings.Contains(refusals[0], b.Fingerprint()) {
		t.Fatalf("refusal events %q, want one for conf/app.conf naming %s", refusals, b.Fingerprint())
	}
	if !keysSeen[a.Fingerprint()] || !keysSeen[b.Fingerprint()] {
		t.Fatalf("session-open keys %v, want %s and %s", keysSeen, a.Fingerprint(), b.Fingerprint())
	}
}
