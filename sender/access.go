package sender

import (
	"context"
	"fmt"
	"time"

	"github.com/zsend/zsend/protocol"
)

// ACCESS (PROTOCOL.md section 15.8): a relay asks which trees a client key
// may fetch, so that the root's access control decides for the relay's
// children too. The root answers from its own CURVE configuration; a relay
// answers by asking its parent in turn (Config.AccessFrom), off the
// serving goroutine.

// accessTimeout bounds a relay's question to its parent on behalf of a
// child below it.
const accessTimeout = 5 * time.Second

// maxAccessPending bounds a session's ACCESS questions waiting for the
// parent (each holds a goroutine and a session to the parent for up to
// accessTimeout); beyond, ERROR 429.
const maxAccessPending = 16

// keyMay reports whether client key k may fetch tree whole by this
// server's access list (Curve.Access, "TREE/"); without one, every key
// may. Who may connect at all stays each server's own decision (the
// root's --allow for its clients, a relay's --serve-allow for its own).
func (s *Server) keyMay(k [32]byte, tree string) bool {
	cv := s.cfg.Curve
	return cv == nil || cv.Access == nil || cv.Access(k, tree+"/")
}

// accessReply is a relay's answer from its parent, to send on the loop.
type accessReply struct {
	sess  *session
	req   uint32
	trees map[string]bool
	err   error
}

func (sess *session) access(m *protocol.Access) {
	s := sess.srv
	if s.cfg.AccessFrom == nil {
		sess.sendAccess(m.Request, func(tree string) bool { return s.keyMay(m.Key, tree) })
		return
	}
	if sess.accessPending >= maxAccessPending {
		sess.send(&protocol.Error{Request: m.Request, Code: protocol.CodeTooMany,
			Message: fmt.Sprintf("more than %d ACCESS questions waiting for the parent in one session", maxAccessPending)})
		return
	}
	sess.accessPending++
	key, req := m.Key, m.Request
	go func() {
		ctx, cancel := context.WithTimeout(s.sockCtx, accessTimeout)
		defer cancel()
		trees, err := s.cfg.AccessFrom(ctx, key)
		r := accessReply{sess: sess, req: req, err: err, trees: map[string]bool{}}
		for _, t := range trees {
			r.trees[t] = true
		}
		select {
		case s.accessDone <- r:
		case <-s.sockCtx.Done():
		}
	}()
}

// finishAccess sends a relay's answer (serving goroutine).
func (s *Server) finishAccess(r accessReply) {
	r.sess.accessPending--
	if r.sess.dead || s.sessions[r.sess.id] != r.sess {
		return
	}
	if r.err != nil {
		r.sess.send(&protocol.Error{Request: r.req, Code: protocol.CodeUnavailable,
			Message: "cannot ask the parent about this key: " + r.err.Error()})
		return
	}
	r.sess.sendAccess(r.req, func(tree string) bool { return r.trees[tree] })
}

// sendAccess answers ACCESS with the trees may allows that the asking
// session may also see, then END.
func (sess *session) sendAccess(req uint32, may func(tree string) bool) {
	n := 0
	if p := sess.srv.pub; p != nil {
		for _, name := range p.names {
			if !sess.mayTree(name) || !may(name) {
				continue
			}
			if v := p.trees[name].latest(); v != nil {
				sess.sendTree(req, p.trees[name], v)
			} else {
				sess.send(&protocol.Tree{Request: req, Name: name}) // no version here yet
			}
			n++
		}
	}
	sess.send(&protocol.End{Request: req, Size: uint64(n)})
}
