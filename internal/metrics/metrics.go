// Package metrics serves Prometheus metrics (prometheus/client_golang)
// for zsend and zrecv --follow on --metrics ADDR: the libraries count and
// keep state; this package turns it into metrics on each scrape.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/zsend/zsend/internal/fleet"
	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/sender"
)

// Serve serves reg's metrics at http://ADDR/metrics until ctx ends. It
// returns the bound address (ADDR may use port 0) once listening.
func Serve(ctx context.Context, addr string, reg *prometheus.Registry) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("--metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			ln.Close()
		}
	}()
	return ln.Addr().String(), nil
}

// NewRegistry has the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Sender is zsend's metrics: counters fed by Event, and a collector that
// reads the server's state (sessions, trees, fleet table) on each scrape.
type Sender struct {
	published  *prometheus.CounterVec
	filesSent  prometheus.Counter
	bytesSent  prometheus.Counter
	reports    prometheus.Counter
	barrierOut *prometheus.CounterVec
	srv        func() *sender.Server
}

var (
	descSessions   = prometheus.NewDesc("zsend_sessions", "Sessions open now.", nil, nil)
	descOpened     = prometheus.NewDesc("zsend_sessions_opened_total", "Sessions opened since start.", nil, nil)
	descLatest     = prometheus.NewDesc("zsend_tree_latest_seq", "Sequence number of each tree's latest version.", []string{"tree"}, nil)
	descNodes      = prometheus.NewDesc("zsend_fleet_nodes", "Nodes per tree, version (sequence) and state; lost nodes have state lost.", []string{"tree", "seq", "state"}, nil)
	descLagV       = prometheus.NewDesc("zsend_fleet_node_lag_versions", "Versions a node is behind the tree's latest.", []string{"tree", "node"}, nil)
	descLagS       = prometheus.NewDesc("zsend_fleet_node_lag_seconds", "Seconds since the latest version was published, for a node not running it (0 when it does).", []string{"tree", "node"}, nil)
	descSync       = prometheus.NewDesc("zsend_fleet_node_sync_seconds", "Duration of a node's last sync, as it reported it.", []string{"tree", "node"}, nil)
	descHookFailed = prometheus.NewDesc("zsend_fleet_hook_failures", "Live nodes whose last hook failed.", []string{"tree"}, nil)
)

// NewSender registers zsend's metrics in reg; srv returns the server
// (nil until it is listening).
func NewSender(reg *prometheus.Registry, srv func() *sender.Server) *Sender {
	m := &Sender{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "zsend_versions_published_total", Help: "Versions published."}, []string{"tree"}),
		filesSent: prometheus.NewCounter(prometheus.CounterOpts{Name: "zsend_files_sent_total", Help: "Files (and manifests) sent completely."}),
		bytesSent: prometheus.NewCounter(prometheus.CounterOpts{Name: "zsend_bytes_sent_total", Help: "Bytes of the files sent completely."}),
		reports:   prometheus.NewCounter(prometheus.CounterOpts{Name: "zsend_reports_total", Help: "Node reports that changed a row of the fleet table (state, version or error)."}),
		barrierOut: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "zsend_barriers_total", Help: "Barriers decided, by outcome (all, timeout)."},
			[]string{"tree", "outcome"}),
		srv: srv,
	}
	reg.MustRegister(m.published, m.filesSent, m.bytesSent, m.reports, m.barrierOut, m)
	return m
}

// Event counts a server event; call it from sender.Config.Events.
func (m *Sender) Event(e sender.Event) {
	switch e.Kind {
	case "published":
		m.published.WithLabelValues(e.Name).Inc()
	case "file-sent":
		m.filesSent.Inc()
		m.bytesSent.Add(float64(e.Size))
	case "report":
		m.reports.Inc()
	case "barrier":
		outcome := "all"
		if len(e.Message) > 0 && containsWord(e.Message, "timed out") {
			outcome = "timeout"
		}
		m.barrierOut.WithLabelValues(e.Name, outcome).Inc()
	}
}

func containsWord(s, w string) bool {
	for i := 0; i+len(w) <= len(s); i++ {
		if s[i:i+len(w)] == w {
			return true
		}
	}
	return false
}

// Describe implements prometheus.Collector.
func (m *Sender) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessions, descOpened, descLatest, descNodes, descLagV, descLagS, descSync, descHookFailed} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *Sender) Collect(ch chan<- prometheus.Metric) {
	srv := m.srv()
	if srv == nil {
		return
	}
	st := srv.Stats()
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(st.Sessions))
	ch <- prometheus.MustNewConstMetric(descOpened, prometheus.CounterValue, float64(st.Opened))
	published := map[string]time.Time{}
	for _, t := range srv.Trees() {
		published[t.Name] = t.Published
		ch <- prometheus.MustNewConstMetric(descLatest, prometheus.GaugeValue, float64(t.Seq), t.Name)
	}
	now := time.Now()
	for _, t := range srv.Fleet() {
		counts := map[[2]string]int{}
		for _, r := range t.Rows {
			counts[[2]string{fmt.Sprint(r.Seq), string(r.Shown)}]++
			ch <- prometheus.MustNewConstMetric(descLagV, prometheus.GaugeValue, float64(r.Behind), t.Tree, r.Node)
			lag := 0.0
			if r.Version != t.Latest.Version && !published[t.Tree].IsZero() {
				lag = now.Sub(published[t.Tree]).Seconds()
			}
			ch <- prometheus.MustNewConstMetric(descLagS, prometheus.GaugeValue, lag, t.Tree, r.Node)
			ch <- prometheus.MustNewConstMetric(descSync, prometheus.GaugeValue, r.SyncTime.Seconds(), t.Tree, r.Node)
		}
		for k, n := range counts {
			ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(n), t.Tree, k[0], k[1])
		}
		failed := 0
		for _, r := range t.Rows {
			if r.Shown != fleet.Lost && r.Hook != nil && !r.Hook.OK {
				failed++
			}
		}
		ch <- prometheus.MustNewConstMetric(descHookFailed, prometheus.GaugeValue, float64(failed), t.Tree)
	}
}

// Follower is zrecv --follow's metrics, fed by Event.
type Follower struct {
	syncs        *prometheus.CounterVec
	syncSeconds  *prometheus.HistogramVec
	hookFailures *prometheus.CounterVec
	seq          *prometheus.GaugeVec
	files        *prometheus.CounterVec
	bytes        *prometheus.CounterVec
	connected    prometheus.Gauge
	reconnects   prometheus.Counter
}

// NewFollower registers zrecv --follow's metrics in reg.
func NewFollower(reg *prometheus.Registry) *Follower {
	m := &Follower{
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "zrecv_syncs_total", Help: "Syncs by outcome (switched, unchanged, failed)."}, []string{"tree", "result"}),
		syncSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "zrecv_sync_duration_seconds", Help: "Duration of syncs that switched.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}, []string{"tree"}),
		hookFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "zrecv_hook_failures_total", Help: "Hook runs that failed."}, []string{"tree", "hook"}),
		seq:          prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "zrecv_tree_seq", Help: "Sequence number of the version the stable path shows."}, []string{"tree"}),
		files:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "zrecv_files_fetched_total", Help: "Files fetched over the network."}, []string{"tree"}),
		bytes:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "zrecv_bytes_fetched_total", Help: "File bytes fetched over the network."}, []string{"tree"}),
		connected:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "zrecv_connected", Help: "1 while the follow session is up."}),
		reconnects:   prometheus.NewCounter(prometheus.CounterOpts{Name: "zrecv_disconnects_total", Help: "Follow sessions lost (each is retried)."}),
	}
	reg.MustRegister(m.syncs, m.syncSeconds, m.hookFailures, m.seq, m.files, m.bytes, m.connected, m.reconnects)
	return m
}

// Event counts a follow event; call it from mirror.FollowConfig.Events.
func (m *Follower) Event(e mirror.FollowEvent) {
	switch e.Kind {
	case "connected":
		m.connected.Set(1)
	case "disconnected":
		m.connected.Set(0)
		m.reconnects.Inc()
	case "switched", "unchanged":
		m.syncs.WithLabelValues(e.Tree, e.Kind).Inc()
		m.seq.WithLabelValues(e.Tree).Set(float64(e.Seq))
		if e.Result != nil {
			m.files.WithLabelValues(e.Tree).Add(float64(e.Result.FilesFetched))
			m.bytes.WithLabelValues(e.Tree).Add(float64(e.Result.BytesFetched))
		}
		if e.Kind == "switched" {
			m.syncSeconds.WithLabelValues(e.Tree).Observe(e.Took.Seconds())
		}
	case "failed":
		m.syncs.WithLabelValues(e.Tree, "failed").Inc()
	case "hook":
		if e.Hook != nil && !e.Hook.OK() {
			m.hookFailures.WithLabelValues(e.Tree, e.Message).Inc()
		}
	}
}
