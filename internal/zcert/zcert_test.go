package zcert

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The key pairs of libzmq's zmq_curve(7) manual page: each secret key
// derives its public key.
func TestManualPageKeys(t *testing.T) {
	for _, p := range [][2]string{
		{"Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID", "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs"},
		{"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7", "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"},
	} {
		pub, _ := ParseZ85(p[0])
		sec, _ := ParseZ85(p[1])
		c, err := FromSecret(sec)
		if err != nil || c.Public != pub {
			t.Fatalf("secret %s derives %s, want %s (%v)", p[1], c.Public, p[0], err)
		}
	}
}

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	c, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	c.Metadata["name"] = "node \"1\""
	path := filepath.Join(dir, "node.key")
	if err := c.Save(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path + "_secret")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("secret file mode %v, want 0600", fi.Mode().Perm())
	}
	pubText, _ := os.ReadFile(path)
	if strings.Contains(string(pubText), "secret-key") || strings.Contains(string(pubText), c.Secret.String()) {
		t.Fatal("the public certificate contains the secret key")
	}
	pub, err := loadFile(path)
	if err != nil || pub.Public != c.Public || pub.HasSecret() {
		t.Fatalf("public cert: %+v, %v", pub, err)
	}
	// Load of the public path finds the secret beside it.
	sec, err := LoadSecret(path)
	if err != nil || sec.Secret != c.Secret || sec.Metadata["name"] != `node \"1\"` && sec.Metadata["name"] != "node \"1\"" {
		t.Fatalf("secret cert: %+v, %v", sec, err)
	}
	if err := c.Save(path); !errors.Is(err, ErrExists) {
		t.Fatalf("second Save = %v, want ErrExists", err)
	}
	k, err := ParsePublic(path)
	if err != nil || k != c.Public {
		t.Fatalf("ParsePublic(file) = %v, %v", k, err)
	}
	k, err = ParsePublic(c.Public.String())
	if err != nil || k != c.Public {
		t.Fatalf("ParsePublic(z85) = %v, %v", k, err)
	}
	if _, err := ParsePublic(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("ParsePublic of a missing file succeeded")
	}
	if fp := c.Fingerprint(); len(fp) != 16 || fp != Fingerprint(pub.Public) {
		t.Fatalf("fingerprint %q", fp)
	}
}

// A certificate as pyzmq's zmq.auth.create_certificates writes it.
func TestParsePyzmqFormat(t *testing.T) {
	text := `#   ****  Generated on 2024-01-01 00:00:00.000000 by pyzmq  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

metadata
curve
    public-key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    secret-key = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"
`
	c, err := Parse([]byte(text))
	if err != nil || !c.HasSecret() || c.Public.String() != "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7" {
		t.Fatalf("Parse = %+v, %v", c, err)
	}
	bad := strings.Replace(text, "JTKVSB", "JTKVSC", 1)
	if _, err := Parse([]byte(bad)); !errors.Is(err, ErrMismatch) {
		t.Fatalf("mismatched pair: %v, want ErrMismatch", err)
	}
	if _, err := Parse([]byte("metadata\ncurve\n")); err == nil {
		t.Fatal("a certificate without a key parsed")
	}
}

func TestFormatRoundTrip(t *testing.T) {
	c, _ := Generate()
	for _, secret := range []bool{false, true} {
		got, err := Parse(c.Format(secret, time.Unix(0, 0)))
		if err != nil || got.Public != c.Public || got.HasSecret() != secret {
			t.Fatalf("secret=%v: %+v, %v", secret, got, err)
		}
	}
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	a, _ := Generate()
	b, _ := Generate()
	a.Save(filepath.Join(dir, "a"))
	b.Save(filepath.Join(dir, "b"))
	os.WriteFile(filepath.Join(dir, "junk"), []byte("not a cert"), 0o644)
	certs, bad, err := LoadDir(dir)
	if err != nil || len(certs) != 2 || len(bad) != 1 {
		t.Fatalf("LoadDir: %d certs, %v, %v", len(certs), bad, err)
	}
	for _, c := range certs {
		if c.HasSecret() {
			t.Fatal("LoadDir kept a secret key")
		}
	}

	// Hidden files and files ending in _secret are ignored, whatever key
	// they hold (README: "--allow DIR").
	c, _ := Generate()
	d, _ := Generate()
	c.Save(filepath.Join(dir, ".revoked"))
	os.WriteFile(filepath.Join(dir, "x_secret"), d.Format(false, time.Unix(0, 0)), 0o644)
	certs, bad, err = LoadDir(dir)
	if err != nil || len(certs) != 2 || len(bad) != 1 {
		t.Fatalf("LoadDir with a hidden and a _secret file: %d certs, %v, %v", len(certs), bad, err)
	}
	for _, k := range certs {
		if k.Public == c.Public || k.Public == d.Public {
			t.Fatal("LoadDir took the key of a hidden or _secret file")
		}
	}
}

func FuzzParse(f *testing.F) {
	c, _ := Generate()
	f.Add(c.Format(true, time.Unix(0, 0)))
	f.Add(c.Format(false, time.Unix(0, 0)))
	f.Add([]byte("curve\n    public-key = 'x'\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		again, err := Parse(c.Format(c.HasSecret(), time.Unix(0, 0)))
		if err != nil || again.Public != c.Public || again.Secret != c.Secret {
			t.Fatalf("re-parse: %v", err)
		}
	})
}

// Save never overwrites: with only one file of the pair there, it writes
// neither and leaves that file as it was (README, --keygen).
func TestSaveHalfPairExists(t *testing.T) {
	for _, existing := range []string{"", "_secret"} {
		path := filepath.Join(t.TempDir(), "key")
		os.WriteFile(path+existing, []byte("mine"), 0o600)
		c, _ := Generate()
		if err := c.Save(path); !errors.Is(err, ErrExists) {
			t.Fatalf("Save with %q present = %v, want ErrExists", "key"+existing, err)
		}
		if b, _ := os.ReadFile(path + existing); string(b) != "mine" {
			t.Fatalf("key%s was overwritten: %q", existing, b)
		}
		other := map[string]string{"": "_secret", "_secret": ""}[existing]
		if _, err := os.Lstat(path + other); !os.IsNotExist(err) {
			t.Fatalf("key%s was written although key%s exists (%v)", other, existing, err)
		}
	}
}
