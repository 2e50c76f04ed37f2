// Package relay runs a relay node (zrecv --follow --serve): a follower
// (mirror.Follow) that keeps trees on the latest version its parent
// announces, and a server (sender, Config.Relay) that serves every version
// the follower has verified to receivers of its own, which fetch and follow
// it exactly as they would the root. Relays turn one publisher and N nodes
// (a star, bounded by the publisher's uplink) into a tree.
//
// Data flow:
//
//	parent --LIST/SUBSCRIBE, MGET, VGET--> follower --stage, verify--> OUT/.zsnd/T/v/<seq>-<id12>
//	                                           | OnVersion (staged, and after each sync)
//	                                           v
//	children <--TREE, MGET, VGET-- server.Offer(T, seq, id, OUT/.zsnd/T/m/<id>, dir)
//
// A version is offered as soon as it is staged and checked, before the
// relay's own switch (and before it waits for its parent's SWITCH), so
// children start fetching while the relay may still be waiting. The relay
// checks each file against the root's manifest hash before serving it
// (sender/relay.go); children check every byte again, so a relay that
// lies is caught by hash. PROTOCOL.md section 15 has the rules.
package relay

import (
	"context"
	"errors"
	"fmt"

	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/sender"
)

// Config configures Run.
type Config struct {
	// Follow configures the follower (parent endpoint(s), trees, output
	// directory, hooks). Its OnVersion is set by Run.
	Follow mirror.FollowConfig
	// Serve configures the relay's server (endpoint, CURVE, limits). Its
	// Relay field is set to Follow.Trees; Paths must be empty;
	// KeepVersions defaults to Follow.Keep.
	Serve sender.Config
	// Listening, if set, is called once the server is bound, before the
	// follower starts.
	Listening func(*sender.Server)
	// OfferError, if set, is told about a verified version the server
	// could not take (its manifest unreadable: removed by hand).
	OfferError func(tree string, seq uint64, err error)
	// Run, if set, runs the follower instead of mirror.Follow (zrecv
	// wraps it with its logging and metrics).
	Run func(mirror.FollowConfig) error
}

// Run serves and follows until ctx ends; it returns nil then, or an
// error at once when the configuration is invalid or the server cannot
// bind.
func Run(ctx context.Context, cfg Config) error {
	if len(cfg.Follow.Trees) == 0 {
		return errors.New("relay: no tree to follow")
	}
	out := cfg.Follow.Out
	if out == "" {
		out = "."
		cfg.Follow.Out = out
	}
	scfg := cfg.Serve
	scfg.Relay = cfg.Follow.Trees
	if scfg.KeepVersions == 0 {
		scfg.KeepVersions = max(cfg.Follow.Keep, 2)
	}
	srv, err := sender.Listen(ctx, scfg)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	defer srv.Close()
	if cfg.Listening != nil {
		cfg.Listening(srv)
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx) }()

	fcfg := cfg.Follow
	fcfg.OnVersion = func(tree string, seq uint64, id manifest.ID, dir string, barrier bool) {
		// The parent's barrier is not passed down: a child switches as
		// soon as it has staged what its relay has.
		if err := srv.Offer(tree, seq, id, false, mirror.ManifestPath(out, tree, id), dir); err != nil && cfg.OfferError != nil {
			cfg.OfferError(tree, seq, err)
		}
	}
	run := cfg.Run
	if run == nil {
		run = func(c mirror.FollowConfig) error { return mirror.Follow(ctx, c) }
	}
	ferr := run(fcfg)
	stop()
	<-served
	return ferr
}
