package auth

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/errcode"
)

// beamVector is the "beam" entry of testdata/testvectors.json (SORACOM's public example,
// recomputed with sha256sum).
type beamVector struct {
	PSK          string            `json:"psk"`
	Headers      map[string]string `json:"headers"`
	StringToSign string            `json:"stringToSign"`
	Signature    string            `json:"signature"`
}

func loadBeamVectors(t testing.TB) []beamVector {
	t.Helper()
	b, err := os.ReadFile("testdata/testvectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Beam []beamVector `json:"beam"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Beam) == 0 {
		t.Fatal("no beam vectors")
	}
	return v.Beam
}

func TestBeamVector(t *testing.T) {
	for _, v := range loadBeamVectors(t) {
		h := http.Header{}
		for k, val := range v.Headers {
			h.Set(k, val)
		}
		h.Set(BeamHeaderSignature, v.Signature)
		parsed, err := ParseBeamHeaders(h)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(BeamStringToSign([]byte(v.PSK), parsed)); got != v.StringToSign {
			t.Fatalf("string to sign %q, want %q", got, v.StringToSign)
		}
		if got := SignBeam([]byte(v.PSK), parsed); got != v.Signature {
			t.Fatalf("signature %s, want %s", got, v.Signature)
		}
		// And the authenticator accepts it at the vector's own time.
		ts := time.UnixMilli(parsed.TimestampMillis)
		b := NewBeam(BeamConfig{PSK: staticSecret([]byte(v.PSK)), Now: func() time.Time { return ts.Add(time.Minute) }})
		r := httptest.NewRequest(http.MethodPost, "/", nil)
		r.Header = h
		id, err := b.Authenticate(context.Background(), r)
		if err != nil || id != (Identity{Method: "beam", Subject: "295000012345678"}) {
			t.Fatalf("got %+v, %v", id, err)
		}
	}
}

// The published example, checked literally so a change to the vectors file cannot hide a
// regression.
func TestBeamPublicExample(t *testing.T) {
	h := &BeamHeaders{IMEI: "860000012345678", IMSI: "295000012345678", Timestamp: "1445587157992"}
	if got := SignBeam([]byte("mysecretkey"), h); got != "95c8e34d68e2bd76502c1e403108dc1bd7008964c31081d0415adb9f21a721a5" {
		t.Fatalf("signature %s", got)
	}
}

func staticSecret(b []byte) SecretFunc {
	return func(context.Context) ([]byte, error) { return b, nil }
}

// TestBeamChallenge: the network, not the device, answers it, but a 401 must still name
// the method (DESIGN.md §2), so the challenge is never empty.
func TestBeamChallenge(t *testing.T) {
	if got := NewBeam(BeamConfig{}).Challenge(); got != "SoracomBeam" {
		t.Fatalf("Challenge() = %q, want SoracomBeam", got)
	}
}

func TestBeamAuthenticate(t *testing.T) {
	psk := []byte("the-beam-psk")
	now := time.Unix(1_800_000_000, 0)
	ts := func(d time.Duration) string { return itoa(now.Add(d).UnixMilli()) }
	signed := func(h BeamHeaders, key []byte) http.Header {
		out := http.Header{}
		SetBeamHeaders(out, key, h)
		return out
	}
	good := BeamHeaders{IMEI: "860000012345678", IMSI: "295000012345678", SIMID: "8942310022000012345", Timestamp: ts(0)}
	tamper := func(h http.Header, k, v string) http.Header { h.Set(k, v); return h }
	tests := []struct {
		name       string
		header     http.Header
		identity   string
		pskErr     error
		wantNoCred bool
		wantID     string
		wantStatus int
		wantCode   string
	}{
		{name: "ok/imsi", header: signed(good, psk), wantID: "295000012345678"},
		{name: "ok/sim-id", header: signed(good, psk), identity: BeamIdentitySIMID, wantID: "8942310022000012345"},
		{name: "ok/imsi-only", header: signed(BeamHeaders{IMSI: "295000012345678", Timestamp: ts(0)}, psk), wantID: "295000012345678"},
		{name: "ok/all-headers", header: signed(BeamHeaders{IMEI: "1", IMSI: "2", MSISDN: "3", SIMID: "4", Timestamp: ts(0)}, psk), wantID: "2"},
		{name: "ok/edge-of-window-past", header: signed(BeamHeaders{IMSI: "2", Timestamp: ts(-5 * time.Minute)}, psk), wantID: "2"},
		{name: "ok/edge-of-window-future", header: signed(BeamHeaders{IMSI: "2", Timestamp: ts(5 * time.Minute)}, psk), wantID: "2"},
		{name: "ok/uppercase-hex", header: func() http.Header {
			h := signed(good, psk)
			h.Set(BeamHeaderSignature, strings.ToUpper(h.Get(BeamHeaderSignature)))
			return h
		}(), wantID: "295000012345678"},
		{name: "fail/missing", header: http.Header{}, wantNoCred: true},
		{name: "fail/unsigned", header: http.Header{BeamHeaderIMSI: {"295000012345678"}, BeamHeaderTimestamp: {ts(0)}}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/no-timestamp", header: func() http.Header { h := signed(good, psk); h.Del(BeamHeaderTimestamp); return h }(), wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/malformed-signature", header: tamper(signed(good, psk), BeamHeaderSignature, "zz"), wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/malformed-imsi", header: tamper(signed(good, psk), BeamHeaderIMSI, "29500001234567x"), wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/malformed-timestamp", header: tamper(signed(good, psk), BeamHeaderTimestamp, "-1"), wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/repeated-imsi", header: func() http.Header { h := signed(good, psk); h.Add(BeamHeaderIMSI, "295000012345679"); return h }(), wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/unknown-version", header: tamper(signed(good, psk), BeamHeaderSignatureVersion, "2099"), wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/tampered-imsi", header: tamper(signed(good, psk), BeamHeaderIMSI, "295000012345679"), wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/tampered-imei", header: tamper(signed(good, psk), BeamHeaderIMEI, "860000012345679"), wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/added-msisdn", header: tamper(signed(good, psk), BeamHeaderMSISDN, "819012345678"), wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/removed-imei", header: func() http.Header { h := signed(good, psk); h.Del(BeamHeaderIMEI); return h }(), wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/wrong-key", header: signed(good, []byte("another-psk")), wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/replayed-timestamp", header: signed(BeamHeaders{IMSI: "2", Timestamp: ts(-5*time.Minute - time.Millisecond)}, psk), wantStatus: 401, wantCode: errcode.CodeExpiredCredential},
		{name: "fail/replayed-hour-old", header: signed(BeamHeaders{IMSI: "2", Timestamp: ts(-time.Hour)}, psk), wantStatus: 401, wantCode: errcode.CodeExpiredCredential},
		{name: "fail/future-timestamp", header: signed(BeamHeaders{IMSI: "2", Timestamp: ts(6 * time.Minute)}, psk), wantStatus: 401, wantCode: errcode.CodeExpiredCredential},
		{name: "fail/no-imsi-for-imsi-identity", header: signed(BeamHeaders{SIMID: "4", Timestamp: ts(0)}, psk), wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/no-sim-id-for-sim-id-identity", header: signed(BeamHeaders{IMSI: "2", Timestamp: ts(0)}, psk), identity: BeamIdentitySIMID, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/psk-store-down", header: signed(good, psk), pskErr: errors.New("vault down"), wantStatus: 503, wantCode: errcode.CodeUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			b := NewBeam(BeamConfig{
				PSK: func(context.Context) ([]byte, error) {
					calls++
					return psk, tt.pskErr
				},
				Identity: tt.identity,
				Now:      func() time.Time { return now },
			})
			r := httptest.NewRequest(http.MethodPost, "/", nil)
			r.Header = tt.header
			id, err := b.Authenticate(context.Background(), r)
			if e := checkAuth(t, "beam", id, err, authWant{NoCred: tt.wantNoCred, ID: tt.wantID, Status: tt.wantStatus, Code: tt.wantCode}); e != nil {
				if sig := tt.header.Get(BeamHeaderSignature); len(sig) > 8 && strings.Contains(e.Message, sig) {
					t.Fatalf("message echoes the signature: %q", e.Message)
				}
				if tt.wantCode == errcode.CodeExpiredCredential && calls != 0 {
					t.Fatalf("a stale request cost %d PSK lookups", calls)
				}
			}
		})
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func FuzzParseBeamHeaders(f *testing.F) {
	for _, v := range loadBeamVectors(f) {
		f.Add(v.Headers["x-soracom-imei"], v.Headers["x-soracom-imsi"], "", "", v.Headers["x-soracom-timestamp"], v.Signature, "")
	}
	f.Add("", "295000012345678", "", "", "1445587157992", strings.Repeat("a", 64), BeamSignatureVersion)
	f.Add("1", "2", "3", "4", "5", strings.Repeat("Z", 64), "x")
	f.Add("", "", "", "", "", "", "")
	f.Add("", "0x1", "", "", "1e9", "", "")
	psk := []byte("fuzz-psk")
	now := time.UnixMilli(1445587157992)
	b := NewBeam(BeamConfig{PSK: staticSecret(psk), Now: func() time.Time { return now }})
	f.Fuzz(func(t *testing.T, imei, imsi, msisdn, simID, ts, sig, ver string) {
		h := http.Header{}
		for k, v := range map[string]string{BeamHeaderIMEI: imei, BeamHeaderIMSI: imsi, BeamHeaderMSISDN: msisdn,
			BeamHeaderSIMID: simID, BeamHeaderTimestamp: ts, BeamHeaderSignature: sig, BeamHeaderSignatureVersion: ver} {
			if v != "" {
				h[k] = []string{v}
			}
		}
		parsed, err := ParseBeamHeaders(h)
		if err == nil {
			for _, v := range []string{parsed.IMEI, parsed.IMSI, parsed.MSISDN, parsed.SIMID, parsed.Timestamp} {
				if v != "" && (!allDigits(v) || len(v) > maxBeamValue) {
					t.Fatalf("accepted identity value %q", v)
				}
			}
			if len(parsed.Signature) != 64 || parsed.Timestamp == "" {
				t.Fatalf("accepted %+v", parsed)
			}
		}
		r := httptest.NewRequest(http.MethodPost, "/", nil)
		r.Header = h
		id, err := b.Authenticate(context.Background(), r)
		if err != nil {
			if !errors.Is(err, ErrNoCredential) && errcode.As(err).Status != 401 {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		// Accepted: an independent recomputation must agree.
		if !strings.EqualFold(SignBeam(psk, parsed), sig) || id.Subject != imsi {
			t.Fatalf("accepted a request not signed with the PSK: %+v", h)
		}
	})
}
