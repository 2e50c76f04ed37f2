package relay

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// The root's access control decides for a relay's children (PROTOCOL.md
// section 15.8). When a child's CURVE handshake reaches the point where
// the relay would authorize its key, the relay asks its parent (ACCESS)
// which trees that key may fetch; the parent, if it is a relay itself,
// asks its own, up to the root. The key is accepted only if the root
// allows it at least one tree (and the relay's own --serve-allow and
// --serve-acl allow it too); each later request is allowed only for those
// trees. Answers are cached per key for accessTTL and refreshed in the
// background after that, so a change of the root's access list reaches
// the relays within about a minute. A relay that cannot reach its parent
// uses the last answer it has, and refuses a key it has none for (fail
// closed). A parent that predates ACCESS (501) leaves the decision to the
// relay's own flags, but only until a parent answers: every handshake
// asks again, and while the fallback holds, a request asks again in the
// background once accessTTL has passed since the 501, so a parent
// upgraded in place, or the next server of a failover list that speaks
// ACCESS, takes the decision back. Keys the relay accepted meanwhile are
// then allowed only what the root answers for them (none asked yet: none,
// until the background answer lands).

const (
	accessTTL     = time.Minute
	accessWait    = 3 * time.Second // a handshake waits this long for the parent
	accessMaxKeys = 10000
)

type rootAccess struct {
	parent receiver.Config
	ask    func(ctx context.Context, cfg receiver.Config, key [32]byte) ([]string, error)

	mu            sync.Mutex
	keys          map[[32]byte]*accessEntry
	unsupported   bool      // the parent answered 501: local flags decide
	unsupportedAt time.Time // when it last did
	probing       bool      // a background ask is under way while unsupported
}

type accessEntry struct {
	trees      map[string]bool
	at         time.Time
	refreshing bool
}

func newRootAccess(parent receiver.Config) *rootAccess {
	return &rootAccess{parent: parent, ask: receiver.Access, keys: map[[32]byte]*accessEntry{}}
}

// query asks the parent about key and caches the answer.
func (ra *rootAccess) query(ctx context.Context, key [32]byte) ([]string, error) {
	trees, err := ra.ask(ctx, ra.parent, key)
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if errors.Is(err, receiver.ErrAccessUnsupported) {
		ra.unsupported, ra.unsupportedAt = true, time.Now()
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	ra.unsupported = false // a parent that answers decides again
	if _, ok := ra.keys[key]; !ok && len(ra.keys) >= accessMaxKeys {
		ra.evictOldest()
	}
	e := &accessEntry{trees: map[string]bool{}, at: time.Now()}
	for _, t := range trees {
		e.trees[t] = true
	}
	ra.keys[key] = e
	return trees, nil
}

func (ra *rootAccess) evictOldest() {
	var oldest [32]byte
	var at time.Time
	for k, e := range ra.keys {
		if at.IsZero() || e.at.Before(at) {
			oldest, at = k, e.at
		}
	}
	delete(ra.keys, oldest)
}

// authorize is the handshake's decision (the guard's goroutine for that
// connection, so it may wait for the parent).
func (ra *rootAccess) authorize(key [32]byte) bool {
	ctx, cancel := context.WithTimeout(context.Background(), accessWait)
	defer cancel()
	trees, err := ra.query(ctx, key)
	if err == nil {
		return len(trees) > 0
	}
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if ra.unsupported {
		return true
	}
	e := ra.keys[key] // the last answer, if the parent is unreachable
	return e != nil && len(e.trees) > 0
}

// allowed is the per-request decision (serving goroutine: never waits).
func (ra *rootAccess) allowed(key [32]byte, name string) bool {
	tree, _, _ := strings.Cut(name, "/")
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if ra.unsupported {
		if time.Since(ra.unsupportedAt) > accessTTL && !ra.probing {
			ra.probing = true
			ra.askLater(key, func(error) { ra.probing = false })
		}
		return true
	}
	e := ra.keys[key]
	if e == nil {
		return false
	}
	if time.Since(e.at) > accessTTL && !e.refreshing {
		e.refreshing = true
		ra.askLater(key, func(err error) {
			if err != nil {
				e.refreshing = false // keep the last answer; try again later
			}
		})
	}
	return e.trees[tree]
}

// askLater asks the parent about key in the background (a request never
// waits for it), then calls done with the outcome under ra.mu.
func (ra *rootAccess) askLater(key [32]byte, done func(err error)) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), accessWait)
		defer cancel()
		_, err := ra.query(ctx, key)
		ra.mu.Lock()
		defer ra.mu.Unlock()
		done(err)
	}()
}

// wrap returns the relay's CURVE configuration with the root's decision
// added to its own.
func (ra *rootAccess) wrap(cv *sender.CurveServer) *sender.CurveServer {
	out := *cv
	local := cv.Authorize
	allowAny := cv.AllowAny
	out.AllowAny = false
	out.Authorize = func(k [32]byte) bool {
		if !allowAny && (local == nil || !local(k)) {
			return false
		}
		return ra.authorize(k)
	}
	localAccess := cv.Access
	out.Access = func(k [32]byte, name string) bool {
		if localAccess != nil && !localAccess(k, name) {
			return false
		}
		return ra.allowed(k, name)
	}
	return &out
}
