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
	"time"

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
	// Status up, barrier down (PROTOCOL.md sections 15.4 to 15.6): the
	// server's table goes up on the follower's control session (promptly
	// when a row changes), and the parent decides every barrier.
	scfg.Barrier, scfg.ExternalBarrier = false, true
	changed := make(chan struct{}, 1)
	onReport := scfg.OnReport
	scfg.OnReport = func() {
		select {
		case changed <- struct{}{}:
		default:
		}
		if onReport != nil {
			onReport()
		}
	}
	if scfg.KeepVersions == 0 {
		scfg.KeepVersions = max(cfg.Follow.Keep, 2)
	}
	// The root's access control decides for the children (access.go).
	parent := cfg.Follow.Receiver
	if parent.OutputDir == "" {
		parent.OutputDir = out
	}
	ra := newRootAccess(parent)
	scfg.AccessFrom = ra.query
	if scfg.Curve != nil {
		scfg.Curve = ra.wrap(scfg.Curve)
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
		// The parent's barrier is passed down: the children stage, the
		// relay forwards their rows, the root counts them, and its
		// SWITCH comes down through OnSwitch.
		if err := srv.Offer(tree, seq, id, barrier, mirror.ManifestPath(out, tree, id), dir); err != nil && cfg.OfferError != nil {
			cfg.OfferError(tree, seq, err)
		}
	}
	fcfg.Forwards, fcfg.ForwardNotify = srv.Forwards, changed
	onSwitch := fcfg.OnSwitch
	fcfg.OnSwitch = func(tree string, id manifest.ID, at time.Time) {
		srv.Switch(tree, id, at) // the children switch at the parent's instant too
		if onSwitch != nil {
			onSwitch(tree, id, at)
		}
	}
	events := fcfg.Events
	fcfg.Events = func(e mirror.FollowEvent) {
		// The relay's own stable path shows a version: its parent's
		// barrier for it is decided (or there is none), so children
		// staged on it may switch too, also after a restart of the relay
		// or under a parent that predates relays (no SWITCH for them).
		if e.Kind == "switched" || e.Kind == "unchanged" {
			srv.Switch(e.Tree, e.Version, time.Time{}) // at once
		}
		if events != nil {
			events(e)
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
