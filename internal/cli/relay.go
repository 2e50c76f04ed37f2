package cli

import (
	"context"
	"errors"
	"log/slog"

	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/sender"
)

// Relay runs zrecv --follow --serve until ctx ends: the follower keeps
// fcfg.Trees on their latest versions, and a server on scfg.Endpoint
// serves every version the follower has verified to receivers of its own
// (sender.Config.Relay, Server.Offer), announcing each as soon as it is
// staged. It returns the exit code.
func Relay(ctx context.Context, fcfg mirror.FollowConfig, scfg sender.Config, metricsAddr string, log *slog.Logger) int {
	scfg.Relay = fcfg.Trees
	scfg.Events = func(e sender.Event) { relayEvent(log, e) }
	srv, err := sender.Listen(ctx, scfg)
	if err != nil {
		log.Error("relay", "err", err.Error())
		return ExitFailure
	}
	log.Info("relay serving", "endpoint", srv.Endpoint(), "trees", fcfg.Trees)
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx) }()
	fcfg.OnVersion = func(tree string, seq uint64, id manifest.ID, dir string, barrier bool) {
		// The parent's barrier is not passed down yet: a child switches
		// as soon as it has staged what its relay has (the relay itself
		// waits for its parent's SWITCH).
		if err := srv.Offer(tree, seq, id, false, mirror.ManifestPath(fcfg.Out, tree, id), dir); err != nil {
			log.Error("relay: cannot serve this version", "tree", tree, "seq", seq, "err", err.Error())
		}
	}
	code := Follow(ctx, fcfg, metricsAddr, log)
	stop()
	if err := <-served; err != nil && !errors.Is(err, sender.ErrClosed) && !errors.Is(err, context.Canceled) {
		log.Error("relay", "err", err.Error())
	}
	srv.Close()
	return code
}

// relayEvent logs what an operator of a relay wants to see of its server.
func relayEvent(log *slog.Logger, e sender.Event) {
	switch e.Kind {
	case "published":
		log.Info("relay: serving version", "tree", e.Name, "seq", e.Seq, "version", shortHex(e.Version))
	case "error", "curve-refused":
		log.Warn("relay: "+e.Kind, "peer", Printable(e.Peer), "name", Printable(e.Name), "err", Printable(e.Message))
	case "refused":
		log.Info("relay: refused", "peer", Printable(e.Peer), "name", Printable(e.Name), "err", Printable(e.Message))
	case "session-open", "session-close":
		log.Debug("relay: "+e.Kind, "peer", Printable(e.Peer), "msg", Printable(e.Message))
	}
}

func shortHex(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}
