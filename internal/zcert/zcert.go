// Package zcert reads and writes CURVE key pairs in the certificate file
// format of czmq's zcert (also written by pyzmq's zmq.auth), so keys made
// by the ZeroMQ ecosystem's tools work here and ours work there.
//
// A certificate is a ZPL file (rfc.zeromq.org/spec:4) with two sections:
//
//	#   ZeroMQ CURVE Public Certificate
//	metadata
//	    name = "node-1"
//	curve
//	    public-key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
//
// The secret certificate, saved beside the public one as PATH_secret with
// mode 0600, adds `secret-key = "..."` under curve. Keys are 32 bytes
// written as 40 characters of Z85 (RFC 32).
//
// # Fingerprints
//
// A key is shown to people (logs, status, errors) by its fingerprint: the
// first 8 bytes of the BLAKE3-256 hash of the 32-byte public key, as 16
// lowercase hexadecimal digits. Fingerprint is the only place that
// computes it.
package zcert

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/crypto/curve25519"

	"github.com/zsend/zsend/internal/z85"
)

// KeySize is the size of a CURVE key in bytes.
const KeySize = 32

// Key is a CURVE (Curve25519) public or secret key.
type Key [KeySize]byte

// Errors.
var (
	// ErrNoSecret: the certificate has no secret key where one is needed.
	ErrNoSecret = errors.New("zcert: certificate has no secret key")
	// ErrMismatch: the secret key does not belong to the public key.
	ErrMismatch = errors.New("zcert: secret key does not match the public key")
	// ErrExists: Save refuses to overwrite a certificate.
	ErrExists = errors.New("zcert: certificate file already exists")
)

// String returns the key's 40-character Z85 text.
func (k Key) String() string {
	s, _ := z85.Encode(k[:])
	return s
}

// IsZero reports whether k is all zero (unset).
func (k Key) IsZero() bool { return k == Key{} }

// Fingerprint returns the fingerprint of a public key; see the package
// documentation.
func Fingerprint(public Key) string {
	h := blake3.Sum256(public[:])
	return hex.EncodeToString(h[:8])
}

// Fingerprint is Fingerprint(k).
func (k Key) Fingerprint() string { return Fingerprint(k) }

// ParseZ85 decodes a 40-character Z85 key.
func ParseZ85(s string) (Key, error) {
	var k Key
	if len(s) != 40 {
		return k, fmt.Errorf("zcert: key %q: want 40 Z85 characters, have %d", s, len(s))
	}
	b, err := z85.Decode(s)
	if err != nil {
		return k, fmt.Errorf("zcert: key %q: %w", s, err)
	}
	copy(k[:], b)
	return k, nil
}

// ParsePublic reads a public key given either as 40 Z85 characters or as
// the path of a certificate file (public or secret).
func ParsePublic(s string) (Key, error) {
	if len(s) == 40 {
		if k, err := ParseZ85(s); err == nil {
			if _, statErr := os.Stat(s); statErr != nil {
				return k, nil
			}
		}
	}
	c, err := Load(s)
	if err != nil {
		if len(s) == 40 {
			return Key{}, fmt.Errorf("%q is neither a Z85 key nor a readable certificate: %w", s, err)
		}
		return Key{}, err
	}
	return c.Public, nil
}

// Cert is a key pair (or a public key alone) with its metadata.
type Cert struct {
	Public   Key
	Secret   Key // zero when the certificate is public only
	Metadata map[string]string
}

// HasSecret reports whether c carries a secret key.
func (c *Cert) HasSecret() bool { return !c.Secret.IsZero() }

// Fingerprint returns the fingerprint of c's public key.
func (c *Cert) Fingerprint() string { return Fingerprint(c.Public) }

// Generate returns a new random key pair.
func Generate() (*Cert, error) {
	var c Cert
	if _, err := rand.Read(c.Secret[:]); err != nil {
		return nil, fmt.Errorf("zcert: generating a key: %w", err)
	}
	pub, err := curve25519.X25519(c.Secret[:], curve25519.Basepoint)
	if err != nil {
		return nil, fmt.Errorf("zcert: deriving the public key: %w", err)
	}
	copy(c.Public[:], pub)
	c.Metadata = map[string]string{}
	return &c, nil
}

// FromSecret returns the pair of a secret key.
func FromSecret(secret Key) (*Cert, error) {
	pub, err := curve25519.X25519(secret[:], curve25519.Basepoint)
	if err != nil {
		return nil, fmt.Errorf("zcert: deriving the public key: %w", err)
	}
	c := &Cert{Secret: secret, Metadata: map[string]string{}}
	copy(c.Public[:], pub)
	return c, nil
}

// Load reads a certificate file. When path holds only a public key and
// path_secret exists, the secret one is read instead (as czmq's zcert_load
// does).
func Load(path string) (*Cert, error) {
	c, err := loadFile(path)
	if err != nil {
		return nil, err
	}
	if !c.HasSecret() {
		if s, err := loadFile(path + "_secret"); err == nil && s.HasSecret() && s.Public == c.Public {
			return s, nil
		}
	}
	return c, nil
}

// LoadSecret reads a certificate that must carry a secret key: path
// itself, or path_secret.
func LoadSecret(path string) (*Cert, error) {
	c, err := Load(path)
	if err != nil {
		return nil, err
	}
	if !c.HasSecret() {
		return nil, fmt.Errorf("%s: %w (give the _secret file)", path, ErrNoSecret)
	}
	return c, nil
}

func loadFile(path string) (*Cert, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("zcert: reading certificate: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("zcert: %s: %w", path, err)
	}
	return c, nil
}

// Parse reads the text of a certificate.
func Parse(data []byte) (*Cert, error) {
	c := &Cert{Metadata: map[string]string{}}
	var section string
	var havePublic, haveSecret bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), 64<<10)
	for line := 1; sc.Scan(); line++ {
		raw := strings.TrimRight(sc.Text(), " \t\r")
		text := strings.TrimLeft(raw, " \t")
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		if len(text) == len(raw) { // not indented: a section
			section = text
			continue
		}
		name, value, ok := strings.Cut(text, "=")
		if !ok {
			continue // a nested section name; nothing we read
		}
		name = strings.TrimSpace(name)
		value = unquote(strings.TrimSpace(value))
		switch {
		case section == "metadata":
			c.Metadata[name] = value
		case section == "curve" && name == "public-key":
			k, err := ParseZ85(value)
			if err != nil {
				return nil, fmt.Errorf("line %d: public-key: %w", line, err)
			}
			c.Public, havePublic = k, true
		case section == "curve" && name == "secret-key":
			k, err := ParseZ85(value)
			if err != nil {
				return nil, fmt.Errorf("line %d: secret-key: %w", line, err)
			}
			c.Secret, haveSecret = k, true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if !havePublic {
		return nil, errors.New("no curve public-key")
	}
	if haveSecret {
		want, err := FromSecret(c.Secret)
		if err != nil {
			return nil, err
		}
		if want.Public != c.Public {
			return nil, ErrMismatch
		}
	}
	return c, nil
}

func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		return v[1 : len(v)-1]
	}
	return v
}

// Format returns the text of c's public certificate, or of its secret
// certificate when secret is true.
func (c *Cert) Format(secret bool, now time.Time) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "#   ****  Generated on %s by zsend  ****\n", now.UTC().Format("2006-01-02 15:04:05"))
	if secret {
		b.WriteString("#   ZeroMQ CURVE **Secret** Certificate\n")
		b.WriteString("#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n")
	} else {
		b.WriteString("#   ZeroMQ CURVE Public Certificate\n")
		b.WriteString("#   Exchange securely, or use a secure mechanism to verify the contents\n")
		b.WriteString("#   of this file after exchange. Store public certificates in your home\n")
		b.WriteString("#   directory, in the .curve subdirectory.\n\n")
	}
	b.WriteString("metadata\n")
	names := make([]string, 0, len(c.Metadata))
	for n := range c.Metadata {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "    %s = %q\n", n, c.Metadata[n])
	}
	b.WriteString("curve\n")
	fmt.Fprintf(&b, "    public-key = \"%s\"\n", c.Public)
	if secret {
		fmt.Fprintf(&b, "    secret-key = \"%s\"\n", c.Secret)
	}
	return b.Bytes()
}

// Save writes c as czmq's zcert_save does: the public certificate at path
// (mode 0644) and, when c has a secret key, the secret certificate at
// path_secret (mode 0600). It never overwrites: if either file exists it
// returns ErrExists and writes nothing. Each file appears complete or not
// at all (written to a temporary file, synced and renamed).
func (c *Cert) Save(path string) error {
	now := time.Now()
	targets := []struct {
		path   string
		secret bool
		mode   fs.FileMode
	}{{path, false, 0o644}}
	if c.HasSecret() {
		targets = append(targets, struct {
			path   string
			secret bool
			mode   fs.FileMode
		}{path + "_secret", true, 0o600})
	}
	for _, t := range targets {
		if _, err := os.Lstat(t.path); err == nil {
			return fmt.Errorf("%s: %w", t.path, ErrExists)
		}
	}
	// The secret first: a public file alone is harmless; a pair whose
	// secret half is missing is not what the user asked for either, so a
	// failure removes what was written.
	var written []string
	for i := len(targets) - 1; i >= 0; i-- {
		t := targets[i]
		if err := writeNew(t.path, c.Format(t.secret, now), t.mode); err != nil {
			for _, w := range written {
				os.Remove(w)
			}
			return err
		}
		written = append(written, t.path)
	}
	return nil
}

// writeNew writes data to a new file at path with mode, atomically.
func writeNew(path string, data []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("zcert: writing %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("zcert: writing %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("zcert: writing %s: %w", path, err)
	}
	// Link rather than rename: link fails if path appeared meanwhile.
	if err := os.Link(tmp, path); err != nil {
		os.Remove(tmp)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s: %w", path, ErrExists)
		}
		return fmt.Errorf("zcert: writing %s: %w", path, err)
	}
	os.Remove(tmp)
	return nil
}

// LoadDir reads every public certificate in dir (files whose names end in
// _secret are skipped, as are files that are not certificates; their
// errors are returned alongside so the caller can log them).
func LoadDir(dir string) (map[Key]*Cert, []error, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("zcert: reading certificate directory: %w", err)
	}
	certs := make(map[Key]*Cert)
	var bad []error
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, "_secret") || strings.HasPrefix(name, ".") || !e.Type().IsRegular() {
			continue
		}
		c, err := loadFile(filepath.Join(dir, name))
		if err != nil {
			bad = append(bad, err)
			continue
		}
		c.Secret = Key{} // never keep a secret read from a store of public keys
		certs[c.Public] = c
	}
	return certs, bad, nil
}
