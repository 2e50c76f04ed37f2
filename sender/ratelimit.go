package sender

import (
	"time"

	"github.com/zsend/zsend/internal/ratelimit"
)

// rateState applies Config.RateLimit in the serving goroutine, which alone
// touches it. A chunk the budget does not allow yet stays pending in its
// session (its producer reads no further than its permits), the round goes
// on to the other sessions, and when no session could send anything the
// loop blocks in its select as usual, with timer armed for the moment the
// budget allows the chunk: messages from receivers (PING, CREDIT, LIST,
// STATUS, REPORT...) are handled and answered meanwhile, and nothing
// sleeps.
//
// Turns: the first session refused becomes the holder, and the budget is
// kept for it until it has sent its chunk; others are refused meanwhile,
// so a session sending many small files cannot starve one that waits for
// a whole chunk.
type rateState struct {
	bucket  *ratelimit.Bucket // nil: unlimited
	timer   *time.Timer       // stopped unless armed; never nil
	holder  *session
	blocked bool          // the holder was refused in the current round
	wait    time.Duration // how long until the holder's chunk is allowed
}

func (r *rateState) init(limit, chunkSize int64, now time.Time) {
	r.timer = time.NewTimer(time.Hour)
	r.timer.Stop()
	if limit > 0 {
		r.bucket = ratelimit.New(limit, ratelimit.Burst(limit, chunkSize), now)
	}
}

// newRound forgets the previous round's refusal.
func (r *rateState) newRound() { r.blocked = false }

// arm sets the timer for the holder's chunk when the last round was held
// back by the budget; called only when the round sent nothing.
func (r *rateState) arm() {
	if r.blocked {
		r.timer.Reset(r.wait)
		r.blocked = false
	}
}

// waiting reports whether sess still waits for the budget to send a chunk
// it holds, or a PACK it has planned: a session that ended, or whose
// transfer or BGET ended, gives up its turn.
func waiting(sess *session) bool {
	return sess != nil && !sess.dead &&
		((sess.cur != nil && sess.cur.pending != nil) || (sess.batch != nil && sess.batch.rateHeld))
}

// take reports whether sess may send n octets of chunk data now, and
// counts them if so.
func (r *rateState) take(sess *session, n int64, now time.Time) bool {
	if r.bucket == nil || n <= 0 {
		return true
	}
	if r.holder != nil && r.holder != sess && waiting(r.holder) {
		return false // the holder's turn; it arms the timer
	}
	if r.bucket.Take(now, n) {
		if r.holder == sess {
			r.holder = nil
		}
		return true
	}
	r.holder = sess
	r.blocked, r.wait = true, r.bucket.Delay(now, n)
	return false
}

// ready reports whether sess could send n octets of chunk data now,
// without taking them (a small file sent whole checks before reading it).
func (r *rateState) ready(sess *session, n int64, now time.Time) bool {
	if r.bucket == nil || n <= 0 {
		return true
	}
	if r.holder != nil && r.holder != sess && waiting(r.holder) {
		return false
	}
	return r.bucket.Delay(now, n) == 0
}
