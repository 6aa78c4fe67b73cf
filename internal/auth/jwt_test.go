package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/iotprov/iotprov/internal/errcode"
)

// jwtKeys are generated once per test binary: RSA generation is the slow part.
var jwtKeys = sync.OnceValue(func() (k struct {
	rsa, rsaOther *rsa.PrivateKey
	ec, ecOther   *ecdsa.PrivateKey
	ec384         *ecdsa.PrivateKey
}) {
	var err error
	if k.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	if k.rsaOther, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	k.ec, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k.ecOther, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k.ec384, _ = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	return k
})

func publicPEM(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func jwksOf(t testing.TB, keys map[string]any) []byte {
	t.Helper()
	var doc struct {
		Keys []map[string]string `json:"keys"`
	}
	for kid, pub := range keys {
		j, err := PublicJWK(kid, pub)
		if err != nil {
			t.Fatal(err)
		}
		doc.Keys = append(doc.Keys, j)
	}
	b, _ := json.Marshal(doc)
	return b
}

const (
	endorseIssuer   = "https://soracom.io"
	endorseAudience = "soracom-endorse-audience"
)

// endorseClaims is shaped like a SORACOM Endorse token's payload.
func endorseClaims(now time.Time) map[string]any {
	return map[string]any{
		"iss": endorseIssuer, "aud": endorseAudience, "jti": "x4pTaLRTvsUTXn0Cy3AJeA",
		"iat": now.Unix(), "nbf": now.Unix() - 1, "exp": now.Add(10 * time.Minute).Unix(),
		"sub":                   "soracom-endorse",
		"soracom-endorse-claim": map[string]any{"imsi": "295000012345678", "imei": "860000012345678", "simId": "8942310022000012345"},
	}
}

func signOrFail(t testing.TB, key any, kid string, claims map[string]any) string {
	t.Helper()
	signer, ok := key.(crypto.Signer)
	if !ok {
		t.Fatalf("%T is not a signer", key)
	}
	s, err := SignJWT(signer, kid, claims)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestJWTAuthenticate(t *testing.T) {
	k := jwtKeys()
	now := time.Unix(1_800_000_000, 0)
	with := func(mod func(map[string]any)) map[string]any {
		c := endorseClaims(now)
		mod(c)
		return c
	}
	rs := func(c map[string]any) string { return "Bearer " + signOrFail(t, k.rsa, "v1-rsa", c) }
	es := func(c map[string]any) string { return "Bearer " + signOrFail(t, k.ec, "v1-ec", c) }
	good := endorseClaims(now)
	jwks := jwksOf(t, map[string]any{"v1-rsa": &k.rsa.PublicKey, "v1-ec": &k.ec.PublicKey})

	none := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims(good))
		tok.Header["kid"] = "v1-rsa"
		s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + s
	}()
	// Key confusion: an HS256 token keyed with the RSA public key's PEM, which an
	// attacker can download. A verifier that lets the token pick the algorithm accepts it.
	hmacConfusion := func(keyBytes []byte) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims(good))
		tok.Header["kid"] = "v1-rsa"
		s, err := tok.SignedString(keyBytes)
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + s
	}
	tamperPayload := func(tok string) string {
		parts := strings.Split(tok, ".")
		c := endorseClaims(now)
		c["soracom-endorse-claim"] = map[string]any{"imsi": "295000099999999"}
		b, _ := json.Marshal(c)
		parts[1] = base64.RawURLEncoding.EncodeToString(b)
		return strings.Join(parts, ".")
	}
	tests := []struct {
		name       string
		headers    []string
		keys       []byte
		claim      string
		keysErr    error
		wantNoCred bool
		wantID     string
		wantStatus int
		wantCode   string
	}{
		{name: "ok/endorse-rs256-jwks-kid", headers: []string{rs(good)}, wantID: "295000012345678"},
		{name: "ok/es256-jwks-kid", headers: []string{es(good)}, wantID: "295000012345678"},
		{name: "ok/rs256-pem-no-kid", headers: []string{"Bearer " + signOrFail(t, k.rsa, "", good)}, keys: publicPEM(t, &k.rsa.PublicKey), wantID: "295000012345678"},
		{name: "ok/es256-pem-any-kid", headers: []string{es(good)}, keys: append(publicPEM(t, &k.rsa.PublicKey), publicPEM(t, &k.ec.PublicKey)...), wantID: "295000012345678"},
		{name: "ok/sub-claim", headers: []string{rs(with(func(c map[string]any) { c["sub"] = "device-7" }))}, claim: "sub", wantID: "device-7"},
		{name: "ok/aud-array", headers: []string{rs(with(func(c map[string]any) { c["aud"] = []string{"other", endorseAudience} }))}, wantID: "295000012345678"},
		{name: "ok/expired-within-leeway", headers: []string{rs(with(func(c map[string]any) { c["exp"] = now.Add(-30 * time.Second).Unix() }))}, wantID: "295000012345678"},
		{name: "ok/lowercase-scheme", headers: []string{"bearer " + signOrFail(t, k.rsa, "v1-rsa", good)}, wantID: "295000012345678"},
		{name: "fail/missing", headers: nil, wantNoCred: true},
		{name: "fail/other-scheme", headers: []string{"SharedAccessSignature sr=a&sig=b&se=1"}, wantNoCred: true},
		{name: "fail/malformed-two-parts", headers: []string{"Bearer abc.def"}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/malformed-empty", headers: []string{"Bearer "}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/malformed-garbage", headers: []string{"Bearer a.b.c"}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/malformed-chars", headers: []string{"Bearer a+b.c/d.e="}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/too-long", headers: []string{"Bearer " + strings.Repeat("a", 9000) + ".b.c"}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/tampered-payload", headers: []string{"Bearer " + tamperPayload(signOrFail(t, k.rsa, "v1-rsa", good))}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/tampered-signature", headers: []string{rs(good)[:len(rs(good))-4] + "AAAA"}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/expired", headers: []string{rs(with(func(c map[string]any) { c["exp"] = now.Add(-2 * time.Minute).Unix() }))}, wantStatus: 401, wantCode: errcode.CodeExpiredCredential},
		{name: "fail/no-exp", headers: []string{rs(with(func(c map[string]any) { delete(c, "exp") }))}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/not-yet-valid", headers: []string{rs(with(func(c map[string]any) { c["nbf"] = now.Add(5 * time.Minute).Unix() }))}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/issued-in-future", headers: []string{rs(with(func(c map[string]any) { c["iat"] = now.Add(5 * time.Minute).Unix() }))}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/wrong-key-same-kid", headers: []string{"Bearer " + signOrFail(t, k.rsaOther, "v1-rsa", good)}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/wrong-ec-key", headers: []string{"Bearer " + signOrFail(t, k.ecOther, "v1-ec", good)}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/unknown-kid", headers: []string{"Bearer " + signOrFail(t, k.rsa, "v9", good)}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/wrong-audience", headers: []string{rs(with(func(c map[string]any) { c["aud"] = "someone-else" }))}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/no-audience", headers: []string{rs(with(func(c map[string]any) { delete(c, "aud") }))}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/wrong-issuer", headers: []string{rs(with(func(c map[string]any) { c["iss"] = "https://evil.example" }))}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/alg-none", headers: []string{none}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/hmac-with-public-key-pem", headers: []string{hmacConfusion(publicPEM(t, &k.rsa.PublicKey))}, keys: publicPEM(t, &k.rsa.PublicKey), wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/hmac-with-jwks", headers: []string{hmacConfusion(jwks)}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/es384", headers: []string{func() string {
			tok := jwt.NewWithClaims(jwt.SigningMethodES384, jwt.MapClaims(good))
			s, _ := tok.SignedString(k.ec384)
			return "Bearer " + s
		}()}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/rs256-header-with-ec-key", headers: []string{func() string {
			// An RS256 header whose kid names the EC key: the key type must fit the alg.
			return "Bearer " + signOrFail(t, k.rsa, "v1-ec", good)
		}()}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/missing-identity-claim", headers: []string{rs(with(func(c map[string]any) { delete(c, "soracom-endorse-claim") }))}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/identity-claim-not-string", headers: []string{rs(with(func(c map[string]any) { c["soracom-endorse-claim"] = map[string]any{"imsi": 295000012345678} }))}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/two-authorization-headers", headers: []string{rs(good), "SharedAccessSignature sr=a&sig=b&se=1"}, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/key-store-down", headers: []string{rs(good)}, keysErr: errors.New("vault down"), wantStatus: 503, wantCode: errcode.CodeUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys := tt.keys
			if keys == nil {
				keys = jwks
			}
			claim := tt.claim
			if claim == "" {
				claim = "soracom-endorse-claim.imsi"
			}
			a := NewJWT(JWTConfig{
				Keys:          func(context.Context) ([]byte, error) { return keys, tt.keysErr },
				Issuer:        endorseIssuer,
				Audience:      endorseAudience,
				IdentityClaim: claim,
				Now:           func() time.Time { return now },
			})
			r := httptest.NewRequest(http.MethodPost, "/", nil)
			for _, h := range tt.headers {
				r.Header.Add("Authorization", h)
			}
			id, err := a.Authenticate(context.Background(), r)
			if e := checkAuth(t, "jwt", id, err, authWant{NoCred: tt.wantNoCred, ID: tt.wantID, Status: tt.wantStatus, Code: tt.wantCode}); e != nil {
				for _, h := range tt.headers {
					if tok := strings.TrimPrefix(h, "Bearer "); len(tok) > 16 && strings.Contains(e.Message, tok[len(tok)-16:]) {
						t.Fatalf("message echoes the token: %q", e.Message)
					}
				}
			}
		})
	}
}

// The parsed keys are reused while the key material is unchanged, and picked up when it
// rotates.
func TestJWTKeyRotation(t *testing.T) {
	k := jwtKeys()
	now := time.Unix(1_800_000_000, 0)
	keys := publicPEM(t, &k.rsa.PublicKey)
	a := NewJWT(JWTConfig{Keys: func(context.Context) ([]byte, error) { return keys, nil },
		Issuer: endorseIssuer, Audience: endorseAudience, IdentityClaim: "soracom-endorse-claim.imsi",
		Now: func() time.Time { return now }})
	try := func(key any) error {
		r := httptest.NewRequest(http.MethodPost, "/", nil)
		r.Header.Set("Authorization", "Bearer "+signOrFail(t, key, "", endorseClaims(now)))
		_, err := a.Authenticate(context.Background(), r)
		return err
	}
	if err := try(k.rsa); err != nil {
		t.Fatal(err)
	}
	keys = publicPEM(t, &k.rsaOther.PublicKey)
	if err := try(k.rsa); err == nil {
		t.Fatal("old key still accepted after rotation")
	}
	if err := try(k.rsaOther); err != nil {
		t.Fatal(err)
	}
}

func TestParseVerificationKeys(t *testing.T) {
	k := jwtKeys()
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	tests := []struct {
		name    string
		raw     []byte
		want    int
		wantErr bool
	}{
		{name: "ok/jwks", raw: jwksOf(t, map[string]any{"a": &k.rsa.PublicKey, "b": &k.ec.PublicKey}), want: 2},
		{name: "ok/jwks-skips-enc", raw: []byte(`{"keys":[{"kty":"RSA","use":"enc","n":"AQ","e":"AQAB"},` + string(jwksOf(t, map[string]any{"a": &k.ec.PublicKey}))[9:]), want: 1},
		{name: "ok/pem-bundle", raw: append(publicPEM(t, &k.rsa.PublicKey), publicPEM(t, &k.ec.PublicKey)...), want: 2},
		{name: "fail/empty", raw: nil, wantErr: true},
		{name: "fail/bad-json", raw: []byte(`{"keys":`), wantErr: true},
		{name: "fail/no-keys", raw: []byte(`{"keys":[]}`), wantErr: true},
		{name: "fail/rsa-1024", raw: publicPEM(t, &small.PublicKey), wantErr: true},
		{name: "fail/p384", raw: publicPEM(t, &k.ec384.PublicKey), wantErr: true},
		{name: "fail/ec-off-curve", raw: []byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"AQ","y":"AQ"}]}`), wantErr: true},
		{name: "fail/oct", raw: []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseVerificationKeys(tt.raw)
			if (err != nil) != tt.wantErr || len(got) != tt.want {
				t.Fatalf("got %d keys, err %v", len(got), err)
			}
		})
	}
}

func FuzzParseBearer(f *testing.F) {
	k := jwtKeys()
	now := time.Unix(1_800_000_000, 0)
	good := signOrFail(f, k.rsa, "v1-rsa", endorseClaims(now))
	f.Add("Bearer " + good)
	f.Add("Bearer " + signOrFail(f, k.ec, "v1-ec", endorseClaims(now)))
	f.Add("Bearer eyJhbGciOiJub25lIn0.e30.")
	f.Add("bearer a.b.c")
	f.Add("Bearer")
	f.Add("Bearerx a.b.c")
	f.Add("")
	jwks := jwksOf(f, map[string]any{"v1-rsa": &k.rsa.PublicKey, "v1-ec": &k.ec.PublicKey})
	a := NewJWT(JWTConfig{Keys: func(context.Context) ([]byte, error) { return jwks, nil },
		Issuer: endorseIssuer, Audience: endorseAudience, IdentityClaim: "soracom-endorse-claim.imsi",
		Now: func() time.Time { return now }})
	f.Fuzz(func(t *testing.T, header string) {
		tok, ok, err := ParseBearer(header)
		if ok && err == nil && strings.Count(tok, ".") != 2 {
			t.Fatalf("accepted %q", tok)
		}
		r := httptest.NewRequest(http.MethodPost, "/", nil)
		r.Header["Authorization"] = []string{header}
		id, err := a.Authenticate(context.Background(), r)
		if err != nil {
			if !errors.Is(err, ErrNoCredential) && errcode.As(err).Status != 401 {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		// Accepted: it must verify independently with the right key and claims.
		claims := jwt.MapClaims{}
		_, perr := jwt.NewParser(jwt.WithValidMethods([]string{"RS256", "ES256"}), jwt.WithTimeFunc(func() time.Time { return now }),
			jwt.WithAudience(endorseAudience), jwt.WithIssuer(endorseIssuer)).ParseWithClaims(tok, claims,
			func(tk *jwt.Token) (any, error) {
				if tk.Method.Alg() == "RS256" {
					return &k.rsa.PublicKey, nil
				}
				return &k.ec.PublicKey, nil
			})
		if perr != nil || id.Method != "jwt" || id.Subject == "" {
			t.Fatalf("accepted %q: %+v (independent check: %v)", header, id, perr)
		}
	})
}
