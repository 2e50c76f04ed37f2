package cli

import (
	"context"
	"log/slog"

	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/relay"
	"github.com/zsend/zsend/sender"
)

// Relay runs zrecv --follow --serve until ctx ends (package relay) and
// returns the exit code.
func Relay(ctx context.Context, fcfg mirror.FollowConfig, scfg sender.Config, metricsAddr string, log *slog.Logger) int {
	scfg.Events = func(e sender.Event) { relayEvent(log, e) }
	code := ExitOK
	err := relay.Run(ctx, relay.Config{Follow: fcfg, Serve: scfg,
		Listening: func(srv *sender.Server) {
			log.Info("relay serving", "endpoint", srv.Endpoint(), "trees", fcfg.Trees)
		},
		OfferError: func(tree string, seq uint64, err error) {
			log.Error("relay: cannot serve this version", "tree", tree, "seq", seq, "err", err.Error())
		},
		Run: func(fcfg mirror.FollowConfig) error {
			code = Follow(ctx, fcfg, metricsAddr, log)
			return nil
		}})
	if err != nil {
		log.Error("relay", "err", err.Error())
		return ExitFailure
	}
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
