// Package guard is a zmq4 transport that lets a go-zeromq/zmq4 (v0.17.0)
// ROUTER or DEALER survive hostile or broken peers.
//
// Use it by registering the transports and rewriting endpoints:
//
//	guard.Register() // idempotent; Endpoint also calls it
//	ctx = guard.WithConfig(ctx, guard.Config{WriteStallTimeout: 5 * time.Second})
//	ep, err := guard.Endpoint("tcp://0.0.0.0:5555") // "guard-tcp://0.0.0.0:5555"
//	router := zmq4.NewRouter(ctx)
//	err = router.Listen(ep)
//
// zmq4 hands the context given to NewRouter/NewDealer to the transport's
// Listen and Dial, which is how the Config reaches the guard. Counters are
// read with StatsFrom(ctx). The guard speaks the ZMTP handshake itself, with
// the NULL mechanism or, when Config.CurveServer / Config.CurveClient is
// set, CURVE (RFC 25/26, internal/curve): the CurveZMQ handshake runs on
// the network side, every frame after it travels boxed in a MESSAGE
// command, and zmq4 above sees a NULL session (a NULL greeting and a READY
// carrying the peer's metadata, then plain frames). A peer greeting with
// another mechanism is refused in the handshake. All the guards below
// apply to CURVE connections too: the announced size of every CURVE
// command is checked before anything is allocated (HELLO exactly 200
// bytes, WELCOME and ERROR at most 512, INITIATE and READY within the
// metadata limit, MESSAGE within MaxFrameSize plus its 33 bytes).
//
//   - Routing identities. zmq4 routes by the Identity a peer announces in
//     READY and sends a message to every connection of that identity. The
//     listener refuses (in the handshake) a peer announcing the identity
//     of a live connection of the same Config, and gives a peer that
//     announces none an identity of its own (a zero byte and 16 random
//     bytes), so every accepted connection has a known, unique identity:
//     the close hook (WithCloseHook) and the CURVE peer hook
//     (WithCurvePeerHook, identity -> client key) rely on it. A CURVE
//     peer's identity is prefixed with its 32-byte long-term public key,
//     so peers of different keys never share one (a peer taking over an
//     identity just released would otherwise receive what the application
//     still sends to its former owner, under another key's rights).
//
// # Why each guard exists
//
// Each guard works around a specific behaviour of zmq4 v0.17.0:
//
//   - Pre-handshake (listener). zmq4's accept loop runs the whole ZMTP
//     handshake (zmq4.Open) for one connection at a time, inline, with no
//     deadline: one TCP client that connects and sends nothing stops every
//     later client from connecting. The guard's listener accepts raw
//     connections in its own goroutine and runs the server half of the
//     handshake (writes the 64-byte NULL greeting, reads and checks the
//     peer's greeting and its READY command) in one goroutine per
//     connection, under HandshakeTimeout. Only a connection whose greeting
//     and READY are already in memory is handed to zmq4's Accept; its
//     first 64 written bytes (zmq4's own greeting, byte-identical to the one
//     already sent) are swallowed and its first reads replay the buffered
//     peer bytes, so zmq4's serial handshake never waits on the network.
//     The greeting is written before the peer's is read because libzmq
//     sends only its 10-byte signature and waits for ours (ZMTP 3.0
//     version negotiation).
//
//   - READY validation. zmq4 parses the peer's READY metadata without
//     bounds checks (a property whose length runs past the end of the
//     command panics with an index out of range and kills the process).
//     The guard parses the READY itself, with bounds checks and a 64 KiB
//     size limit, before zmq4 sees it, on both accepted and dialed
//     connections.
//
//   - Frame size limit (both sides). zmq4's frame reader allocates
//     make([]byte, size) for whatever length the peer announces; a 9-byte
//     header claiming 2^62 bytes crashes the process, and a long series of
//     MORE frames exhausts memory. The guard follows the frame structure of
//     the byte stream it hands to zmq4 (it only counts body bytes, never
//     copies them) and checks each announced length against MaxFrameSize,
//     and each message's running total against MaxMessageSize and
//     MaxMessageFrames, before zmq4 receives the bytes that complete the
//     header.
//
//   - Write stall eviction. A ROUTER send holds one socket-wide mutex and
//     writes synchronously, so a single peer that stops reading blocks sends
//     to every peer, the registration of new peers and even Close. Each
//     write gets a deadline of WriteStallTimeout; when it expires the write
//     continues only if the window showed progress (bytes accepted by the
//     kernel, or on Linux bytes consumed by the peer, read from SIOCOUTQ:
//     the kernel wakes a blocked writer only once a third of the send
//     buffer is free, so accepted bytes alone would make a slow but steady
//     reader look stuck). Otherwise the connection is closed, which fails
//     the write and releases the mutex. A slow reader is kept, and still
//     holds the mutex while its write lasts: bound what is in flight per
//     peer (credit) so that writes rarely block at all.
//
//   - Orphan cleanup. When zmq4.Open fails (for example an incompatible
//     socket type), zmq4 neither closes the connection nor reports it. A
//     connection that zmq4 has not started reading (past the handshake)
//     within HandshakeTimeout+WriteStallTimeout of being handed over is
//     closed.
//
//   - Idle timeout (optional) closes connections that send nothing, and
//     MaxConns bounds the number of connections a listener keeps open
//     (excess connections are closed at once).
//
// # Errors returned to zmq4
//
// zmq4's Conn.checkIO forgets a connection only after io.EOF or a net.Error
// whose Timeout() is false; after a timeout error it keeps a half-written
// connection registered. So whenever the guard gives up on a connection it
// first closes the underlying net.Conn and then returns either io.EOF or a
// *net.OpError whose Err is one of this package's sentinel errors (never a
// timeout). Use errors.Is(err, guard.ErrFrameTooLarge) and so on.
package guard
