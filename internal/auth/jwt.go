package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/iotprov/iotprov/internal/errcode"
)

const (
	bearerScheme = "Bearer"
	// maxJWTHeader bounds an untrusted bearer token; a SORACOM Endorse token is ~1 KiB.
	maxJWTHeader = 8192
	// defaultJWTLeeway absorbs clock skew between the token issuer and this service.
	defaultJWTLeeway = time.Minute
)

// jwtAlgorithms are the only algorithms accepted: never "none", and never an HMAC, so a
// public key can never be used as a shared secret (the classic key-confusion attack).
var jwtAlgorithms = []string{"RS256", "ES256"}

// JWTConfig configures the jwt authenticator.
type JWTConfig struct {
	// Keys returns the verification keys: a PEM bundle (PUBLIC KEY or CERTIFICATE blocks)
	// or a JWKS document. Parsed keys are reused until the bytes change.
	Keys          SecretFunc
	Issuer        string        // required iss
	Audience      string        // required among aud
	IdentityClaim string        // dotted claim path, e.g. "sub" or "soracom-endorse-claim.imsi"; "" -> "sub"
	Leeway        time.Duration // for exp, nbf, iat; 0 -> 1m
	Now           func() time.Time
}

// JWT verifies bearer JWTs signed by a configured issuer (e.g. SORACOM Endorse).
type JWT struct {
	cfg   JWTConfig
	claim []string

	mu     sync.Mutex
	raw    []byte
	parsed []VerificationKey
}

var _ Authenticator = (*JWT)(nil)

// NewJWT returns the jwt authenticator.
func NewJWT(cfg JWTConfig) *JWT {
	if cfg.IdentityClaim == "" {
		cfg.IdentityClaim = "sub"
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = defaultJWTLeeway
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &JWT{cfg: cfg, claim: strings.Split(cfg.IdentityClaim, ".")}
}

// Method returns "jwt".
func (j *JWT) Method() string { return "jwt" }

// Challenge returns the Bearer challenge.
func (j *JWT) Challenge() string { return bearerScheme }

// VerificationKey is one public key a token may be signed with; KeyID is "" for keys
// from a PEM bundle.
type VerificationKey struct {
	KeyID string
	Key   crypto.PublicKey
}

// ParseBearer extracts the compact JWS from an Authorization header value (untrusted:
// fuzz it). ok is false when the header is not a Bearer credential at all.
func ParseBearer(header string) (token string, ok bool, err error) {
	h := strings.TrimLeft(header, " \t")
	if len(h) < len(bearerScheme) || !strings.EqualFold(h[:len(bearerScheme)], bearerScheme) {
		return "", false, nil
	}
	rest := h[len(bearerScheme):]
	if rest != "" && rest[0] != ' ' && rest[0] != '\t' {
		return "", false, nil
	}
	if len(header) > maxJWTHeader {
		return "", true, errors.New("token too long")
	}
	token = strings.Trim(rest, " \t")
	if strings.Count(token, ".") != 2 {
		return "", true, errors.New("not a compact JWS (three dot-separated parts)")
	}
	for i := 0; i < len(token); i++ {
		c := token[i]
		if !(isAlnum(c) || c == '-' || c == '_' || c == '.') {
			return "", true, errors.New("not base64url")
		}
	}
	return token, true, nil
}

// Authenticate verifies the request's Bearer token.
func (j *JWT) Authenticate(ctx context.Context, r *http.Request) (Identity, error) {
	values := r.Header.Values("Authorization")
	var token string
	found := false
	for _, v := range values {
		t, ok, err := ParseBearer(v)
		if !ok {
			continue
		}
		found = true
		if err != nil {
			return Identity{}, errcode.Wrap(err, http.StatusUnauthorized, errcode.CodeInvalidCredential,
				"The bearer token is malformed: "+err.Error()+".")
		}
		token = t
		break
	}
	if !found {
		return Identity{}, ErrNoCredential
	}
	if len(values) > 1 {
		return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeInvalidCredential,
			"The request carries more than one Authorization header.")
	}
	keys, err := j.keys(ctx)
	if err != nil {
		return Identity{}, err
	}
	parser := jwt.NewParser(
		jwt.WithValidMethods(jwtAlgorithms),
		jwt.WithIssuer(j.cfg.Issuer),
		jwt.WithAudience(j.cfg.Audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(j.cfg.Leeway),
		jwt.WithTimeFunc(j.cfg.Now),
	)
	claims := jwt.MapClaims{}
	_, err = parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		return selectKeys(t, keys)
	})
	if err != nil {
		return Identity{}, jwtError(err)
	}
	subject, ok := claimString(claims, j.claim)
	if !ok {
		return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeInvalidCredential,
			"The bearer token lacks the identity claim "+j.cfg.IdentityClaim+" (a string).")
	}
	return Identity{Method: j.Method(), Subject: subject}, nil
}

// jwtError maps the library's validation errors to stable codes without echoing the token.
func jwtError(err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return errcode.Wrap(err, http.StatusUnauthorized, errcode.CodeExpiredCredential, "The bearer token has expired.")
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return errcode.Wrap(err, http.StatusUnauthorized, errcode.CodeInvalidCredential, "The bearer token is not valid yet.")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return errcode.Wrap(err, http.StatusUnauthorized, errcode.CodeInvalidCredential, "The bearer token is for another audience.")
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return errcode.Wrap(err, http.StatusUnauthorized, errcode.CodeInvalidCredential, "The bearer token is from an issuer this service does not trust.")
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return errcode.Wrap(err, http.StatusUnauthorized, errcode.CodeInvalidCredential, "The bearer token lacks a required claim (exp).")
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return errcode.Wrap(err, http.StatusUnauthorized, errcode.CodeInvalidCredential,
			"The bearer token's signature does not verify with a trusted key (only RS256 and ES256 are accepted).")
	default:
		return errcode.Wrap(err, http.StatusUnauthorized, errcode.CodeInvalidCredential, "The bearer token is malformed.")
	}
}

// selectKeys picks the keys a token may be verified with: those whose kid matches the
// token's, else the keys that have no kid (a PEM bundle). The key type must fit the
// algorithm, so an RSA key is never offered for ES256 or the other way round.
func selectKeys(t *jwt.Token, keys []VerificationKey) (any, error) {
	kid, _ := t.Header["kid"].(string)
	fits := func(k crypto.PublicKey) bool {
		switch t.Method.Alg() {
		case "RS256":
			_, ok := k.(*rsa.PublicKey)
			return ok
		case "ES256":
			ec, ok := k.(*ecdsa.PublicKey)
			return ok && ec.Curve == elliptic.P256()
		}
		return false
	}
	var byKid, anonymous []jwt.VerificationKey
	for _, k := range keys {
		if !fits(k.Key) {
			continue
		}
		switch {
		case k.KeyID == "":
			anonymous = append(anonymous, k.Key)
		case kid != "" && k.KeyID == kid:
			byKid = append(byKid, k.Key)
		case kid == "":
			anonymous = append(anonymous, k.Key)
		}
	}
	set := byKid
	if len(set) == 0 {
		set = anonymous
	}
	if len(set) == 0 {
		return nil, errors.New("no trusted key for this kid and algorithm")
	}
	return jwt.VerificationKeySet{Keys: set}, nil
}

// claimString walks a dotted claim path to a non-empty string.
func claimString(claims map[string]any, path []string) (string, bool) {
	var cur any = claims
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return "", false
		}
		if cur, ok = m[p]; !ok {
			return "", false
		}
	}
	s, ok := cur.(string)
	return s, ok && s != ""
}

// keys returns the parsed verification keys, re-parsing only when the secret changed.
func (j *JWT) keys(ctx context.Context) ([]VerificationKey, error) {
	if j.cfg.Keys == nil {
		// A plain error: errcode.As renders it as internal_error and logs this reason.
		return nil, errors.New("auth: jwt: no key source configured")
	}
	raw, err := j.cfg.Keys(ctx)
	if err != nil {
		return nil, errcode.Unavailable(err,
			"The service cannot verify credentials right now; retry later.")
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.parsed != nil && bytes.Equal(raw, j.raw) {
		return j.parsed, nil
	}
	keys, err := ParseVerificationKeys(raw)
	if err != nil {
		return nil, errcode.Wrap(err, http.StatusInternalServerError, errcode.CodeInternal, "The service could not complete the request.")
	}
	j.raw, j.parsed = bytes.Clone(raw), keys
	return keys, nil
}

// ParseVerificationKeys reads a JWKS document ({"keys":[…]}) or a PEM bundle of PUBLIC
// KEY / CERTIFICATE blocks. Only RSA (2048 bits or more) and EC P-256 keys are kept;
// a JWKS key with "use" other than "sig" is skipped. No usable key is an error.
func ParseVerificationKeys(raw []byte) ([]VerificationKey, error) {
	trimmed := bytes.TrimSpace(raw)
	var keys []VerificationKey
	if bytes.HasPrefix(trimmed, []byte("{")) {
		var doc struct {
			Keys []jwk `json:"keys"`
		}
		if err := json.Unmarshal(trimmed, &doc); err != nil {
			return nil, fmt.Errorf("auth: JWKS: %w", err)
		}
		for i, k := range doc.Keys {
			if k.Use != "" && k.Use != "sig" {
				continue
			}
			pub, err := k.publicKey()
			if err != nil {
				return nil, fmt.Errorf("auth: JWKS key %d (kid %q): %w", i, k.Kid, err)
			}
			keys = append(keys, VerificationKey{KeyID: k.Kid, Key: pub})
		}
	} else {
		for rest := trimmed; ; {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			var pub any
			switch b.Type {
			case "PUBLIC KEY":
				k, err := x509.ParsePKIXPublicKey(b.Bytes)
				if err != nil {
					return nil, fmt.Errorf("auth: PEM public key: %w", err)
				}
				pub = k
			case "CERTIFICATE":
				c, err := x509.ParseCertificate(b.Bytes)
				if err != nil {
					return nil, fmt.Errorf("auth: PEM certificate: %w", err)
				}
				pub = c.PublicKey
			default:
				continue
			}
			if err := checkVerificationKey(pub); err != nil {
				return nil, err
			}
			keys = append(keys, VerificationKey{Key: pub})
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("auth: no RS256/ES256 verification key in the JWT key material")
	}
	return keys, nil
}

func checkVerificationKey(pub any) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return errors.New("auth: RSA verification key shorter than 2048 bits")
		}
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return errors.New("auth: EC verification key is not P-256 (ES256)")
		}
	default:
		return fmt.Errorf("auth: unsupported verification key type %T", pub)
	}
	return nil
}

// jwk is the subset of RFC 7517 needed for RS256 and ES256 public keys.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

func (k jwk) publicKey() (crypto.PublicKey, error) {
	b64 := func(s string) (*big.Int, error) {
		b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
		if err != nil || len(b) == 0 {
			return nil, errors.New("bad base64url number")
		}
		return new(big.Int).SetBytes(b), nil
	}
	switch k.Kty {
	case "RSA":
		if k.Alg != "" && k.Alg != "RS256" {
			return nil, fmt.Errorf("alg %q is not RS256", k.Alg)
		}
		n, err := b64(k.N)
		if err != nil {
			return nil, err
		}
		e, err := b64(k.E)
		if err != nil || !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
			return nil, errors.New("bad RSA exponent")
		}
		pub := &rsa.PublicKey{N: n, E: int(e.Int64())}
		return pub, checkVerificationKey(pub)
	case "EC":
		if k.Crv != "P-256" || (k.Alg != "" && k.Alg != "ES256") {
			return nil, errors.New("only P-256 / ES256 EC keys are supported")
		}
		x, err := b64(k.X)
		if err != nil {
			return nil, err
		}
		y, err := b64(k.Y)
		if err != nil {
			return nil, err
		}
		// Round-trip through the uncompressed point encoding so crypto/ecdh checks the
		// point is on the curve.
		pt := make([]byte, 65)
		pt[0] = 4
		if len(x.Bytes()) > 32 || len(y.Bytes()) > 32 {
			return nil, errors.New("EC coordinate too large")
		}
		x.FillBytes(pt[1:33])
		y.FillBytes(pt[33:])
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pt)
		if err != nil {
			return nil, err
		}
		return pub, nil
	default:
		return nil, fmt.Errorf("unsupported kty %q", k.Kty)
	}
}

// PublicJWK renders a public key as a JWK with kid (for the dev JWKS and the CLI).
func PublicJWK(kid string, pub crypto.PublicKey) (map[string]string, error) {
	enc := base64.RawURLEncoding.EncodeToString
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return map[string]string{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
			"n": enc(k.N.Bytes()), "e": enc(big.NewInt(int64(k.E)).Bytes())}, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, errors.New("auth: only P-256 EC keys")
		}
		b, err := k.Bytes()
		if err != nil {
			return nil, err
		}
		return map[string]string{"kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
			"x": enc(b[1:33]), "y": enc(b[33:])}, nil
	}
	return nil, fmt.Errorf("auth: unsupported key type %T", pub)
}

// SignJWT signs claims with key (RSA → RS256, EC P-256 → ES256) and kid; for the CLI
// and tests.
func SignJWT(key crypto.Signer, kid string, claims map[string]any) (string, error) {
	var m jwt.SigningMethod
	switch k := key.Public().(type) {
	case *rsa.PublicKey:
		m = jwt.SigningMethodRS256
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return "", errors.New("auth: only P-256 EC keys sign ES256")
		}
		m = jwt.SigningMethodES256
	default:
		return "", fmt.Errorf("auth: unsupported key type %T", key)
	}
	t := jwt.NewWithClaims(m, jwt.MapClaims(claims))
	if kid != "" {
		t.Header["kid"] = kid
	}
	return t.SignedString(key)
}
