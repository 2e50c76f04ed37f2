package receiver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/zsend/zsend/protocol"
)

// ErrAccessUnsupported: the server predates ACCESS (PROTOCOL.md section
// 15.8); a relay then decides with its own access list.
var ErrAccessUnsupported = errors.New("the server does not answer ACCESS")

// Access asks the server which trees the client key may fetch (ACCESS,
// PROTOCOL.md section 15.8): a relay asks its parent about a child's key,
// so that the root's access control decides. It tries once per endpoint
// of a failover list, within ctx.
func Access(ctx context.Context, cfg Config, key [32]byte) ([]string, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	rot := newRotation(cfg.Failover)
	deadline := time.Now().Add(cfg.PeerTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var last error
	for range rot.f.Len() {
		trees, err := accessOnce(ctx, &cfg, rot.idx, key, deadline)
		if err == nil || !IsRetryable(err) || ctx.Err() != nil {
			return trees, err
		}
		last = err
		rot.failed(nil)
	}
	return nil, last
}

func accessOnce(ctx context.Context, cfg *Config, i int, key [32]byte, dialBy time.Time) ([]string, error) {
	c, err := dialCtl(ctx, cfg, i, dialBy)
	if err != nil {
		return nil, err
	}
	defer c.abort()
	const req = 1
	c.send(&protocol.Access{Request: req, Key: key})
	c.await(1)
	var trees []string
	for {
		msg, err := c.next(ctx, nil)
		var re *RemoteError
		if errors.As(err, &re) && re.Code == protocol.CodeUnknownCommand {
			return nil, ErrAccessUnsupported
		}
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *protocol.Tree:
			if m.Request != req || len(trees) >= maxTrees {
				return nil, fmt.Errorf("%w: unexpected TREE", ErrProtocol)
			}
			trees = append(trees, m.Name)
		case *protocol.End:
			if m.Request != req || m.Size != uint64(len(trees)) {
				return nil, fmt.Errorf("%w: END counts %d trees, %d received", ErrProtocol, m.Size, len(trees))
			}
			c.close()
			return trees, nil
		case *protocol.Error:
			if m.Code == protocol.CodeUnknownCommand {
				return nil, ErrAccessUnsupported
			}
			return nil, &RemoteError{Code: m.Code, Message: m.Message}
		default:
			return nil, fmt.Errorf("%w: %v in answer to ACCESS", ErrProtocol, m.Command())
		}
	}
}
