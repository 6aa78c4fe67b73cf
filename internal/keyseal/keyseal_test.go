package keyseal

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func testKey(t testing.TB) []byte {
	t.Helper()
	return bytes.Repeat([]byte{0x42}, KeySize)
}

func newSealer(t testing.TB) *Sealer {
	t.Helper()
	s, err := New(testKey(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParseKey(t *testing.T) {
	raw := make([]byte, KeySize)
	for i := range raw {
		raw[i] = byte(i)
	}
	good := base64.StdEncoding.EncodeToString(raw)
	tests := []struct {
		name    string
		secret  string
		wantErr string
	}{
		{"ok/plain", good, ""},
		{"ok/surrounding-whitespace", "  \n" + good + "\r\n", ""},
		{"fail/empty", "", "empty"},
		{"fail/whitespace-only", " \n\t", "empty"},
		{"fail/not-base64", "this is not base64 at all!!", "not valid standard base64"},
		{"fail/url-alphabet", strings.Repeat("-_", 22), "not valid standard base64"},
		{"fail/16-bytes", base64.StdEncoding.EncodeToString(raw[:16]), "decodes to 16 bytes"},
		{"fail/33-bytes", base64.StdEncoding.EncodeToString(append(raw, 0)), "decodes to 33 bytes"},
		{"fail/unpadded", base64.RawStdEncoding.EncodeToString(raw), "not valid standard base64"},
		{"fail/inner-space", good[:10] + " " + good[10:], "not valid standard base64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key, err := ParseKey([]byte(tc.secret))
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseKey succeeded; want error containing %q", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %q does not contain %q", err, tc.wantErr)
				}
				if s := strings.TrimSpace(tc.secret); s != "" && strings.Contains(err.Error(), s) {
					t.Fatalf("error repeats the secret: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseKey: %v", err)
			}
			if !bytes.Equal(key, raw) {
				t.Fatalf("key = %x; want %x", key, raw)
			}
		})
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		size    int
		wantErr bool
	}{
		{"ok/32", 32, false},
		{"fail/0", 0, true},
		{"fail/16", 16, true},
		{"fail/24", 24, true},
		{"fail/31", 31, true},
		{"fail/33", 33, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(make([]byte, tc.size))
			if (err != nil) != tc.wantErr {
				t.Fatalf("New(%d bytes) error = %v; wantErr %v", tc.size, err, tc.wantErr)
			}
		})
	}
}

func TestSealOpen(t *testing.T) {
	s := newSealer(t)
	plaintext := []byte("-----BEGIN PRIVATE KEY-----\nnot really a key\n-----END PRIVATE KEY-----\n")
	const op, dev = "op-123", "device-1"
	sealed, err := s.Seal(plaintext, op, dev)
	if err != nil {
		t.Fatal(err)
	}
	if sealed[0] != 1 {
		t.Fatalf("version byte = %d; want 1", sealed[0])
	}
	if want := 1 + 12 + len(plaintext) + 16; len(sealed) != want {
		t.Fatalf("sealed length = %d; want %d", len(sealed), want)
	}
	if bytes.Contains(sealed, plaintext[:20]) {
		t.Fatal("sealed blob contains plaintext")
	}

	other, err := New(bytes.Repeat([]byte{0x43}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		b := bytes.Clone(sealed)
		b[i] ^= 0x01
		return b
	}
	tests := []struct {
		name   string
		sealer *Sealer
		sealed []byte
		op     string
		dev    string
		ok     bool
	}{
		{"ok/round-trip", s, sealed, op, dev, true},
		{"fail/other-operation", s, sealed, "op-124", dev, false},
		{"fail/other-device", s, sealed, op, "device-2", false},
		{"fail/swapped-ids", s, sealed, dev, op, false},
		{"fail/shifted-boundary", s, sealed, "op-123d", "evice-1", false},
		{"fail/other-key", other, sealed, op, dev, false},
		{"fail/tamper-version", s, flip(0), op, dev, false},
		{"fail/tamper-nonce", s, flip(5), op, dev, false},
		{"fail/tamper-ciphertext", s, flip(20), op, dev, false},
		{"fail/tamper-tag", s, flip(len(sealed) - 1), op, dev, false},
		{"fail/truncated", s, sealed[:len(sealed)-1], op, dev, false},
		{"fail/appended", s, append(bytes.Clone(sealed), 0), op, dev, false},
		{"fail/empty", s, nil, op, dev, false},
		{"fail/version-only", s, []byte{1}, op, dev, false},
		{"fail/header-only", s, sealed[:1+12+15], op, dev, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.sealer.Open(tc.sealed, tc.op, tc.dev)
			if !tc.ok {
				if !errors.Is(err, ErrOpen) {
					t.Fatalf("Open error = %v; want ErrOpen", err)
				}
				if got != nil {
					t.Fatal("Open returned plaintext along with an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(got, plaintext) {
				t.Fatalf("Open = %q; want %q", got, plaintext)
			}
		})
	}
}

func TestSealIsRandomized(t *testing.T) {
	s := newSealer(t)
	a, err := s.Seal([]byte("same key"), "op", "dev")
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Seal([]byte("same key"), "op", "dev")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same plaintext are identical")
	}
	if bytes.Equal(a[1:13], b[1:13]) {
		t.Fatal("two seals reused a nonce")
	}
}

func TestSealEmptyPlaintextAndIDs(t *testing.T) {
	s := newSealer(t)
	sealed, err := s.Seal(nil, "", "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Open(sealed, "", "")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if len(got) != 0 {
		t.Fatalf("Open = %q; want empty", got)
	}
	if _, err := s.Open(sealed, "", "x"); !errors.Is(err, ErrOpen) {
		t.Fatalf("Open with other device = %v; want ErrOpen", err)
	}
}

func FuzzOpen(f *testing.F) {
	s := newSealer(f)
	good, err := s.Seal([]byte("private key"), "op", "dev")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, "op", "dev")
	f.Add(good[:13], "op", "dev")
	f.Add([]byte{}, "", "")
	f.Add([]byte{1}, "op", "dev")
	f.Add(bytes.Repeat([]byte{1}, 64), "op", "dev")
	f.Fuzz(func(t *testing.T, sealed []byte, op, dev string) {
		pt, err := s.Open(sealed, op, dev)
		if err != nil {
			if pt != nil {
				t.Fatal("plaintext returned with error")
			}
			return
		}
		// Only blobs Seal made under this key can open, and the seeds hold one made
		// for ("op", "dev"). (The fuzz worker re-runs this function, so good itself is
		// a different blob there: compare contents, not bytes.)
		if string(pt) != "private key" || op != "op" || dev != "dev" {
			t.Fatalf("Open accepted a blob Seal did not make for these IDs: %x %q %q", sealed, op, dev)
		}
	})
}
