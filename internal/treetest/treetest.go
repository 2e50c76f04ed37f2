// Package treetest is a test helper: an in-process ZSND version 2 server
// that publishes trees from memory (and can be made to lie), and a
// scanner that turns a directory into a manifest. It is for tests only.
package treetest

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
)

// File is one file a version serves.
type File struct {
	Content []byte
	Mode    uint32
	MtimeNs int64
	Hash    [32]byte // what END says (normally BLAKE3 of Content)
}

// Version is one published version of a tree.
type Version struct {
	Seq      uint64
	Manifest []byte      // what MGET sends
	ID       manifest.ID // what TREE announces and END of MGET carries
	Entries  uint64      // what TREE announces
	Bytes    uint64
	Files    map[string]*File // by path in the tree
	// Paths holds the manifest's paths by entry index, for BGET; a
	// version without them answers BGET with 400.
	Paths []string
	// AnnounceSize, if nonzero, is the manifest size TREE announces
	// instead of len(Manifest).
	AnnounceSize uint64
}

// NewVersion builds an honest version from a manifest and file contents
// by hash.
func NewVersion(seq uint64, m *manifest.Manifest, contents map[[32]byte][]byte) *Version {
	b := m.Encode()
	v := &Version{Seq: seq, Manifest: b, ID: manifest.IDOf(b), Entries: uint64(len(m.Entries)), Files: map[string]*File{}}
	for _, e := range m.Entries {
		v.Paths = append(v.Paths, e.Path)
		if e.Type == manifest.TypeFile {
			v.Files[e.Path] = &File{Content: contents[e.Hash], Mode: e.Mode, MtimeNs: e.MtimeNs, Hash: e.Hash}
			v.Bytes += e.Size
		}
	}
	return v
}

// Scan reads dir into a manifest and the contents of its files, as a
// publisher would (symlinks are not followed).
func Scan(dir string) (*manifest.Manifest, map[[32]byte][]byte, error) {
	m := &manifest.Manifest{}
	contents := map[[32]byte][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			rel = ""
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := manifest.Entry{Path: filepath.ToSlash(rel), Mode: uint32(st.Mode) & 0o7777, MtimeNs: st.Mtim.Sec*1e9 + st.Mtim.Nsec}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			e.Type = manifest.TypeDir
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.Type, e.Size, e.Hash = manifest.TypeFile, uint64(len(b)), blake3.Sum256(b)
			contents[e.Hash] = b
		case unix.S_IFLNK:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.Type, e.Target = manifest.TypeSymlink, t
		default:
			return nil
		}
		m.Entries = append(m.Entries, e)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	m.Sort()
	return m, contents, m.Validate()
}

// Server is the fake publisher.
type Server struct {
	Endpoint string
	// V1Only makes it speak version 1 only (no trees); V2Only version 2
	// at most (no BGET).
	V1Only, V2Only atomic.Bool

	VGets, MGets, Lists, BGets atomic.Int64
	DataBytes                  atomic.Int64 // chunk bytes sent

	ctx    context.Context
	cancel context.CancelFunc
	sock   zmq4.Socket
	wg     sync.WaitGroup

	mu       sync.Mutex
	trees    map[string][]*Version
	sessions map[string]*session
	// Hook, if set, sees every VGET before it is served (tests kill or
	// republish from it). It runs with the server's lock released.
	Hook func(name string)
	// packHook: see SetPackHook.
	packHook atomic.Pointer[func(p *protocol.Pack)]
}

// SetPackHook makes f see, and perhaps change, every PACK before it is
// queued (tests count PACKs or make them lie). f runs with the server's
// lock held. It may be set while the server runs.
func (s *Server) SetPackHook(f func(p *protocol.Pack)) { s.packHook.Store(&f) }

type session struct {
	s       *Server
	id      []byte
	version uint8
	chunk   int
	credit  uint64
	sent    uint64
	queue   []queued
}

type queued struct {
	req uint32
	msg protocol.Message
}

// Start serves on a loopback TCP port until Close.
func Start() (*Server, error) {
	ctx, cancel := context.WithCancel(context.Background())
	sock := zmq4.NewRouter(ctx, zmq4.WithLogger(log.New(io.Discard, "", 0)))
	if err := sock.Listen("tcp://127.0.0.1:0"); err != nil {
		cancel()
		return nil, err
	}
	s := &Server{Endpoint: "tcp://" + sock.Addr().String(), ctx: ctx, cancel: cancel, sock: sock,
		trees: map[string][]*Version{}, sessions: map[string]*session{}}
	s.wg.Add(1)
	go s.loop()
	return s, nil
}

// Close stops the server.
func (s *Server) Close() {
	s.cancel()
	s.sock.Close()
	s.wg.Wait()
}

// Publish adds a version (the latest is the last published).
func (s *Server) Publish(tree string, v *Version) {
	s.mu.Lock()
	s.trees[tree] = append(s.trees[tree], v)
	s.mu.Unlock()
}

// DropAllBut forgets every version of tree but the latest (older ones are
// then 410 gone).
func (s *Server) DropAllBut(tree string) {
	s.mu.Lock()
	if vs := s.trees[tree]; len(vs) > 0 {
		s.trees[tree] = vs[len(vs)-1:]
	}
	s.mu.Unlock()
}

func (s *Server) loop() {
	defer s.wg.Done()
	for {
		msg, err := s.sock.Recv()
		if err != nil || s.ctx.Err() != nil {
			return
		}
		if msg.Type == zmq4.CmdMsg || len(msg.Frames) < 2 {
			continue
		}
		id := string(msg.Frames[0])
		m, _, err := protocol.Decode(msg.Frames[1:])
		if err != nil {
			continue
		}
		var hookName string
		s.mu.Lock()
		ss := s.sessions[id]
		switch m := m.(type) {
		case *protocol.Hello:
			ss = &session{s: s, id: []byte(id), chunk: int(min(m.MaxChunk, 64<<10)), version: 1}
			if m.MaxVersion >= 2 && !s.V1Only.Load() {
				ss.version = 2
			}
			if m.MaxVersion >= 3 && ss.version == 2 && !s.V2Only.Load() {
				ss.version = 3
			}
			s.sessions[id] = ss
			ss.send(&protocol.Welcome{Version: ss.version, ChunkSize: uint32(ss.chunk), HeartbeatMS: 500, MaxRequests: 64, PeerID: "treetest"})
		case *protocol.Credit:
			if ss != nil && m.Limit > ss.credit {
				ss.credit = m.Limit
			}
		case *protocol.List:
			if ss != nil {
				s.Lists.Add(1)
				ss.list(m)
			}
		case *protocol.MGet:
			if ss != nil {
				s.MGets.Add(1)
				ss.mget(m)
			}
		case *protocol.VGet:
			if ss != nil {
				s.VGets.Add(1)
				hookName = m.Name
			}
		case *protocol.BGet:
			if ss != nil {
				s.BGets.Add(1)
				ss.bget(m)
			}
		case *protocol.Cancel:
			if ss != nil {
				q := ss.queue[:0]
				for _, x := range ss.queue {
					if x.req != m.Request {
						q = append(q, x)
					}
				}
				ss.queue = q
			}
		case *protocol.Ping:
			if ss != nil {
				ss.send(&protocol.Pong{Token: m.Token})
			}
		case *protocol.Report:
			if ss != nil { // accepted, as a server with a fleet table does
				ss.queue = append(ss.queue, queued{m.Request, &protocol.End{Request: m.Request}})
			}
		case *protocol.Bye:
			delete(s.sessions, id)
		}
		s.mu.Unlock()
		if hookName != "" {
			if s.Hook != nil {
				s.Hook(hookName)
			}
			s.mu.Lock()
			ss.vget(m.(*protocol.VGet))
			s.mu.Unlock()
		}
		s.mu.Lock()
		if ss != nil {
			ss.pump()
		}
		s.mu.Unlock()
	}
}

func (ss *session) send(m protocol.Message) {
	frames := append([][]byte{ss.id}, protocol.Encode(ss.version, m)...)
	ss.s.sock.Send(zmq4.NewMsgFrom(frames...))
}

func (ss *session) fail(req uint32, code protocol.Code, msg string) {
	ss.queue = append(ss.queue, queued{req, &protocol.Error{Request: req, Code: code, Message: msg}})
}

func (ss *session) list(m *protocol.List) {
	var names []string
	for n := range ss.s.trees {
		if m.Tree == "" || m.Tree == n {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		ss.fail(m.Request, protocol.CodeNotFound, "no such tree: "+m.Tree)
		return
	}
	sort.Strings(names)
	for _, n := range names {
		vs := ss.s.trees[n]
		v := vs[len(vs)-1]
		size := uint64(len(v.Manifest))
		if v.AnnounceSize != 0 {
			size = v.AnnounceSize
		}
		ss.queue = append(ss.queue, queued{m.Request, &protocol.Tree{Request: m.Request, Seq: v.Seq, Entries: v.Entries,
			Bytes: v.Bytes, ManifestSize: size, Version: protocol.Hash(v.ID), Name: n}})
	}
	ss.queue = append(ss.queue, queued{m.Request, &protocol.End{Request: m.Request, Size: uint64(len(names))}})
}

func (ss *session) find(tree string, tag protocol.Tag) *Version {
	vs := ss.s.trees[tree]
	if len(vs) == 0 {
		return nil
	}
	if tag == (protocol.Tag{}) {
		return vs[len(vs)-1]
	}
	for _, v := range vs {
		if protocol.Tag(v.ID[:16]) == tag {
			return v
		}
	}
	return nil
}

// lookup finds the version of tree with tag, or answers request with
// ERROR 404 (no such tree) or 410 (version gone) and returns nil.
func (ss *session) lookup(request uint32, tree string, tag protocol.Tag) *Version {
	if _, ok := ss.s.trees[tree]; !ok {
		ss.fail(request, protocol.CodeNotFound, "no such tree")
		return nil
	}
	v := ss.find(tree, tag)
	if v == nil {
		ss.fail(request, protocol.CodeGone, "version gone")
	}
	return v
}

func (ss *session) mget(m *protocol.MGet) {
	v := ss.lookup(m.Request, m.Name, m.Tag)
	if v == nil {
		return
	}
	ss.serve(m.Request, m.Name, m.Offset, protocol.Tag(v.ID[:16]), 0, time.Now().UnixNano(), v.Manifest, protocol.Hash(v.ID))
}

func (ss *session) vget(m *protocol.VGet) {
	tree, path, _ := strings.Cut(m.Name, "/")
	v := ss.lookup(m.Request, tree, m.Tag)
	if v == nil {
		return
	}
	f := v.Files[path]
	if f == nil {
		ss.fail(m.Request, protocol.CodeNotFound, "no such file in the version")
		return
	}
	ss.serve(m.Request, m.Name, m.Offset, m.Tag, f.Mode, f.MtimeNs, f.Content, protocol.Hash(f.Hash))
}

// bget queues PACKs of the files asked for, each at most a chunk of data
// and protocol.MaxPackFiles files.
func (ss *session) bget(m *protocol.BGet) {
	v := ss.lookup(m.Request, m.Tree, m.Tag)
	if v == nil {
		return
	}
	var files []*File
	for _, i := range m.Index {
		var f *File
		if int(i) < len(v.Paths) {
			f = v.Files[v.Paths[i]]
		}
		if f == nil || len(f.Content) > ss.chunk {
			ss.fail(m.Request, protocol.CodeBadRequest, fmt.Sprintf("index %d is not a small file of the version", i))
			return
		}
		files = append(files, f)
	}
	p := &protocol.Pack{Request: m.Request}
	flush := func() {
		if h := ss.s.packHook.Load(); h != nil {
			(*h)(p)
		}
		ss.queue = append(ss.queue, queued{m.Request, p})
		p = &protocol.Pack{Request: m.Request}
	}
	for k, f := range files {
		if len(p.Files) == protocol.MaxPackFiles || len(p.Data)+len(f.Content) > ss.chunk {
			flush()
		}
		p.Files = append(p.Files, protocol.PackFile{Index: m.Index[k], Size: uint32(len(f.Content)), Mode: f.Mode & 0o7777, MtimeNS: f.MtimeNs})
		p.Data = append(p.Data, f.Content...)
	}
	flush()
}

func (ss *session) serve(req uint32, name string, offset uint64, tag protocol.Tag, mode uint32, mtime int64, content []byte, sum protocol.Hash) {
	if offset > uint64(len(content)) {
		offset = 0
	}
	offset -= offset % uint64(ss.chunk)
	ss.queue = append(ss.queue, queued{req, &protocol.File{Request: req, Size: uint64(len(content)), Mode: mode & 0o7777,
		MtimeNS: mtime, Offset: offset, Tag: tag, Name: name}})
	for off := int(offset); off < len(content); off += ss.chunk {
		data := content[off:min(off+ss.chunk, len(content))]
		ss.queue = append(ss.queue, queued{req, &protocol.Chunk{Request: req, Offset: uint64(off), Hash: blake3.Sum256(data), Data: data}})
	}
	ss.queue = append(ss.queue, queued{req, &protocol.End{Request: req, Size: uint64(len(content)), Hash: sum}})
}

// pump sends queued messages in order, chunks within the credit.
func (ss *session) pump() {
	for len(ss.queue) > 0 {
		q := ss.queue[0]
		var n int
		switch d := q.msg.(type) {
		case *protocol.Chunk:
			n = len(d.Data)
		case *protocol.Pack:
			n = len(d.Data)
		}
		if n > 0 {
			if ss.sent+uint64(n) > ss.credit {
				return
			}
			ss.sent += uint64(n)
			ss.s.DataBytes.Add(int64(n))
		}
		ss.queue = ss.queue[1:]
		ss.send(q.msg)
	}
}

// String describes the server for test logs.
func (s *Server) String() string { return fmt.Sprintf("treetest server at %s", s.Endpoint) }
