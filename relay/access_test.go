package relay

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// fakeParent answers ACCESS from a table, or fails.
type fakeParent struct {
	mu    sync.Mutex
	trees map[[32]byte][]string
	err   error
}

func (p *fakeParent) set(key [32]byte, trees []string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if trees != nil {
		p.trees[key] = trees
	}
	p.err = err
}

func (p *fakeParent) ask(ctx context.Context, _ receiver.Config, key [32]byte) ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return nil, p.err
	}
	return p.trees[key], nil
}

func TestRootAccessDecides(t *testing.T) {
	a, b, c := [32]byte{1}, [32]byte{2}, [32]byte{3}
	p := &fakeParent{trees: map[[32]byte][]string{a: {"conf", "public"}, b: {"public"}}}
	ra := newRootAccess(receiver.Config{})
	ra.ask = p.ask
	cv := ra.wrap(&sender.CurveServer{AllowAny: true})
	if cv.AllowAny || cv.Authorize == nil || cv.Access == nil {
		t.Fatal("the wrapped configuration must decide through Authorize and Access")
	}
	if !cv.Authorize(a) || !cv.Authorize(b) {
		t.Fatal("keys the root allows trees were refused")
	}
	if cv.Authorize(c) {
		t.Fatal("a key the root allows no tree was accepted")
	}
	for _, tc := range []struct {
		key  [32]byte
		name string
		want bool
	}{{a, "conf/", true}, {a, "conf/x/y", true}, {a, "public", true}, {b, "public/", true}, {b, "conf/", false},
		{b, "conf/secret", false}, {c, "public/", false}, {a, "other/", false}} {
		if got := cv.Access(tc.key, tc.name); got != tc.want {
			t.Errorf("Access(%x, %q) = %v, want %v", tc.key[0], tc.name, got, tc.want)
		}
	}

	// Parent unreachable: the last answer stands; a new key is refused.
	p.set(a, nil, errors.New("parent down"))
	if !cv.Authorize(a) || !cv.Access(a, "conf/") {
		t.Fatal("a known key lost its access while the parent is unreachable")
	}
	if d := [32]byte{4}; cv.Authorize(d) {
		t.Fatal("an unknown key was accepted while the parent is unreachable (must fail closed)")
	}

	// A stale answer is refreshed in the background; the request is not held.
	p.set(b, []string{"public", "conf"}, nil)
	ra.mu.Lock()
	ra.keys[b].at = time.Now().Add(-2 * accessTTL)
	ra.mu.Unlock()
	if cv.Access(b, "conf/") {
		t.Fatal("the stale answer should still apply until the refresh lands")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !cv.Access(b, "conf/") {
		if time.Now().After(deadline) {
			t.Fatal("the refreshed answer never applied")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A local allow list narrows the root's answer.
	local := ra.wrap(&sender.CurveServer{Authorize: func(k [32]byte) bool { return k == a },
		Access: func(k [32]byte, name string) bool { return name != "conf/" }})
	if local.Authorize(b) {
		t.Fatal("--serve-allow did not narrow the root's answer")
	}
	if local.Access(a, "conf/") || !local.Access(a, "public/") {
		t.Fatal("--serve-acl did not narrow the root's answer")
	}
}

// A parent that predates ACCESS (501) leaves the decision to the relay's
// own flags.
func TestRootAccessOldParent(t *testing.T) {
	p := &fakeParent{trees: map[[32]byte][]string{}, err: receiver.ErrAccessUnsupported}
	ra := newRootAccess(receiver.Config{})
	ra.ask = p.ask
	cv := ra.wrap(&sender.CurveServer{Authorize: func(k [32]byte) bool { return k[0] == 1 }})
	if !cv.Authorize([32]byte{1}) || cv.Authorize([32]byte{2}) {
		t.Fatal("with an old parent the relay's own --serve-allow must decide")
	}
	if !cv.Access([32]byte{1}, "anything/") {
		t.Fatal("with an old parent and no --serve-acl every tree is allowed")
	}
}

// A 501 does not make the fallback permanent: once a parent answers (an
// upgraded root, the next server of a failover list), the root decides
// again, for new handshakes at once and for requests of keys accepted
// meanwhile after a background ask.
func TestRootAccessOldParentUpgraded(t *testing.T) {
	a, b := [32]byte{1}, [32]byte{2}
	p := &fakeParent{trees: map[[32]byte][]string{}, err: receiver.ErrAccessUnsupported}
	ra := newRootAccess(receiver.Config{})
	ra.ask = p.ask
	cv := ra.wrap(&sender.CurveServer{AllowAny: true})
	if !cv.Authorize(a) || !cv.Authorize(b) || !cv.Access(b, "conf/") {
		t.Fatal("with an old parent and --serve-allow-any every key is accepted")
	}
	p.set(a, []string{"public"}, nil) // the parent now speaks ACCESS
	if !cv.Authorize(a) {
		t.Fatal("a key the upgraded root allows a tree was refused")
	}
	if cv.Authorize(b) {
		t.Fatal("after the parent answered, a key the root allows nothing was still accepted (fallback kept)")
	}
	if !cv.Access(a, "public/") || cv.Access(a, "conf/") {
		t.Fatal("the root's answer does not decide requests again")
	}

	// Fallback again (an old server of the list), then a request after
	// accessTTL probes the parent in the background.
	p.set(a, nil, receiver.ErrAccessUnsupported)
	cv.Authorize(b)
	if !cv.Access(b, "conf/") {
		t.Fatal("the fallback must apply while the parent answers 501")
	}
	p.set(b, []string{"public"}, nil)
	ra.mu.Lock()
	ra.unsupportedAt = time.Now().Add(-2 * accessTTL)
	ra.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for cv.Access(b, "conf/") {
		if time.Now().After(deadline) {
			t.Fatal("requests were still decided by the fallback 5 s after the parent answered again")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !cv.Access(b, "public/") {
		t.Fatal("the root's answer for b does not apply")
	}
}
