package guard

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

func TestInproc(t *testing.T) {
	ep, err := Endpoint(fmt.Sprintf("inproc://guard-test-%d", time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := WithConfig(context.Background(), testConfig())
	router, _ := startRouter(t, ctx, ep)
	// The name is taken while the router lives.
	r2 := zmq4.NewRouter(ctx, zmq4.WithLogger(quiet))
	if err := r2.Listen(ep); err == nil {
		t.Fatal("a second listener took a live inproc name")
	}
	r2.Close()
	d := startDealer(t, ctx, ep, "d1")
	roundTrip(t, router, d, "d1", 2*time.Second)
	// Frame limits apply in-process too.
	big := make([]byte, DefaultMaxFrameSize+1)
	d.Send(zmq4.NewMsg(big))
	expectStats(t, ctx, func(s Stats) bool { return s.FrameTooLarge == 1 })

	// CURVE works over inproc as well.
	server, client := genPair(t), genPair(t)
	cep, _ := Endpoint(fmt.Sprintf("inproc://guard-curve-%d", time.Now().UnixNano()))
	cr, _ := startRouter(t, curveServerCtx(t, server, nil), cep)
	cd := startDealer(t, curveClientCtx(t, server.pub, client), cep, "c1")
	roundTrip(t, cr, cd, string(client.pub[:])+"c1", 2*time.Second)

	// Nobody listening: the dial fails (zmq4 retries it).
	if _, err := dialInproc(context.Background(), "nobody-here"); !errors.Is(err, ErrNoInprocListener) {
		t.Fatalf("dial to no listener: %v", err)
	}
	router.Close()
	eventually(t, 2*time.Second, "the name is free after Close", func() bool {
		inprocListeners.Lock()
		defer inprocListeners.Unlock()
		_, taken := inprocListeners.m[ep[len(SchemeInproc)+3:]]
		return !taken
	})
}
