package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/iotprov/iotprov/internal/errcode"
)

// sasScheme is both the Authorization scheme and the WWW-Authenticate challenge.
const sasScheme = "SharedAccessSignature"

// dpsDefaultKeyName is the skn DPS itself puts in device tokens; accepting it as the
// default group means a token made for DPS works here unchanged.
const dpsDefaultKeyName = "registration"

const (
	defaultSASMaxTTL = 24 * time.Hour
	// maxSASHeader bounds the work done on an untrusted header; real tokens are ~200 bytes.
	maxSASHeader = 4096
)

// KeyGroupFunc returns the raw (base64-decoded) group key for a group name; "" is the
// default group. An unknown group → an error wrapping ErrUnknownKeyGroup.
type KeyGroupFunc func(ctx context.Context, group string) ([]byte, error)

// SASConfig configures the sas authenticator.
type SASConfig struct {
	Keys   KeyGroupFunc
	MaxTTL time.Duration    // how far in the future se may be; 0 -> 24h
	Now    func() time.Time // nil -> time.Now
}

// SAS verifies DPS-style shared access signatures made with a per-device key derived
// from a group key, exactly as DPS group enrollments do.
type SAS struct {
	keys   KeyGroupFunc
	maxTTL time.Duration
	now    func() time.Time
}

var _ Authenticator = (*SAS)(nil)

// NewSAS returns the sas authenticator.
func NewSAS(cfg SASConfig) *SAS {
	s := &SAS{keys: cfg.Keys, maxTTL: cfg.MaxTTL, now: cfg.Now}
	if s.maxTTL <= 0 {
		s.maxTTL = defaultSASMaxTTL
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

// Method returns "sas".
func (s *SAS) Method() string { return "sas" }

// Challenge returns the WWW-Authenticate challenge for SAS tokens.
func (s *SAS) Challenge() string { return sasScheme }

// Authenticate verifies the request's SharedAccessSignature Authorization header.
func (s *SAS) Authenticate(ctx context.Context, r *http.Request) (Identity, error) {
	values := r.Header.Values("Authorization")
	var header string
	found := false
	for _, v := range values {
		if hasSASScheme(v) {
			header, found = v, true
			break
		}
	}
	if !found {
		return Identity{}, ErrNoCredential
	}
	if len(values) > 1 {
		// Two Authorization headers leave it ambiguous which one proves the identity;
		// proxies may also pick a different one than we do.
		return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeInvalidCredential,
			"The request carries more than one Authorization header.")
	}

	tok, err := ParseSASToken(header)
	if err != nil {
		return Identity{}, errcode.Wrap(err, http.StatusUnauthorized, errcode.CodeInvalidCredential,
			"The SharedAccessSignature token is malformed: "+safeReason(err)+".")
	}

	// The cheap, secret-free checks come before the key lookup so a flood of stale
	// tokens costs no Key Vault traffic.
	now := s.now().Unix()
	if tok.Expiry <= now {
		return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeExpiredCredential,
			"The SharedAccessSignature token has expired (se is in the past).")
	}
	if tok.Expiry-now > int64(s.maxTTL/time.Second) {
		return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeInvalidCredential,
			fmt.Sprintf("The SharedAccessSignature token expires too far in the future: se may be at most %s ahead.", s.maxTTL))
	}

	group := tok.SKN
	if group == dpsDefaultKeyName {
		group = ""
	}
	if s.keys == nil {
		// A plain error: errcode.As renders it as internal_error and logs this reason.
		return Identity{}, errors.New("auth: sas: no key source configured")
	}
	groupKey, err := s.keys(ctx, group)
	switch {
	case errors.Is(err, ErrUnknownKeyGroup):
		return Identity{}, errcode.Wrap(err, http.StatusUnauthorized, CodeUnknownKeyGroup,
			"The key group named by skn is not configured.")
	case err != nil:
		return Identity{}, errcode.Unavailable(err,
			"The service cannot verify credentials right now; retry later.")
	case len(groupKey) == 0:
		// An empty HMAC key would let anyone compute valid signatures: refuse it loudly.
		return Identity{}, errcode.Wrap(errors.New("auth: empty SAS group key"), http.StatusInternalServerError,
			errcode.CodeInternal, "The service could not complete the request.")
	}

	deviceKey := DeriveDeviceKey(groupKey, tok.RegistrationID)
	want := sasMAC(deviceKey, tok.SR, tok.SE)
	got, err := base64.StdEncoding.DecodeString(tok.Sig)
	if err != nil || !hmac.Equal(got, want) {
		return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeInvalidCredential,
			"The SharedAccessSignature signature does not verify.")
	}
	return Identity{Method: s.Method(), Subject: tok.RegistrationID}, nil
}

// DeriveDeviceKey returns the raw per-device key, HMAC-SHA256(groupKey, registrationID):
// the DPS group-enrollment derivation, so `az iot dps enrollment-group compute-device-key`
// gives the base64 of the same bytes.
func DeriveDeviceKey(groupKey []byte, registrationID string) []byte {
	m := hmac.New(sha256.New, groupKey)
	m.Write([]byte(registrationID))
	return m.Sum(nil)
}

// SignSAS returns the base64 signature of sr + "\n" + expiry under deviceKey (raw bytes).
func SignSAS(deviceKey []byte, sr string, expiry int64) string {
	return base64.StdEncoding.EncodeToString(sasMAC(deviceKey, sr, strconv.FormatInt(expiry, 10)))
}

// sasMAC is the one signing routine used by both the helpers and the verifier. se is the
// string as sent, so a token with an unusual but numeric se still verifies byte for byte.
func sasMAC(deviceKey []byte, sr, se string) []byte {
	m := hmac.New(sha256.New, deviceKey)
	m.Write([]byte(sr))
	m.Write([]byte{'\n'})
	m.Write([]byte(se))
	return m.Sum(nil)
}

// NewSASToken builds the Authorization header value. sr is used exactly as given.
func NewSASToken(deviceKey []byte, sr string, expiry int64, skn string) string {
	var b strings.Builder
	b.WriteString(sasScheme)
	b.WriteString(" sr=")
	b.WriteString(sr)
	b.WriteString("&sig=")
	b.WriteString(url.QueryEscape(SignSAS(deviceKey, sr, expiry)))
	b.WriteString("&se=")
	b.WriteString(strconv.FormatInt(expiry, 10))
	if skn != "" {
		b.WriteString("&skn=")
		b.WriteString(url.QueryEscape(skn))
	}
	return b.String()
}

// SASToken is a parsed SharedAccessSignature header.
type SASToken struct {
	SR             string // exactly as sent (still URL-encoded): the signature covers it
	Sig            string // URL-decoded: the base64 signature
	SE             string // as sent (digits only)
	SKN            string // URL-decoded key group name; "" when absent
	Expiry         int64  // SE as Unix seconds
	RegistrationID string // from SR, decoded
}

// sasParseError carries a reason that never contains any part of the token, so it may
// be shown to the device.
type sasParseError string

func (e sasParseError) Error() string { return "auth: sas token: " + string(e) }

func safeReason(err error) string {
	var pe sasParseError
	if errors.As(err, &pe) {
		return string(pe)
	}
	return "unreadable"
}

func hasSASScheme(header string) bool {
	h := strings.TrimLeft(header, " \t")
	if len(h) < len(sasScheme) || !strings.EqualFold(h[:len(sasScheme)], sasScheme) {
		return false
	}
	rest := h[len(sasScheme):]
	return rest == "" || rest[0] == ' ' || rest[0] == '\t'
}

// ParseSASToken parses the header value (untrusted: fuzz it). Duplicate fields, missing
// sr/sig/se, non-numeric se, bad URL-encoding → error.
func ParseSASToken(header string) (*SASToken, error) {
	if len(header) > maxSASHeader {
		return nil, sasParseError("token too long")
	}
	if !hasSASScheme(header) {
		return nil, sasParseError("not a SharedAccessSignature")
	}
	rest := strings.Trim(strings.TrimLeft(header, " \t")[len(sasScheme):], " \t")
	if rest == "" {
		return nil, sasParseError("no fields")
	}

	var tok SASToken
	seen := map[string]bool{}
	for field := range strings.SplitSeq(rest, "&") {
		key, raw, ok := strings.Cut(field, "=")
		if !ok {
			return nil, sasParseError("a field has no '='")
		}
		switch key {
		case "sr", "sig", "se", "skn":
		default:
			// Unknown fields are refused rather than ignored: DPS tokens have exactly these
			// four, and anything else is a client bug or an attempt to confuse a proxy.
			return nil, sasParseError("unknown field")
		}
		if seen[key] {
			return nil, sasParseError("duplicate field " + key)
		}
		seen[key] = true
		// PathUnescape, not QueryUnescape: a '+' left unencoded in a base64 signature must
		// stay a '+', not turn into a space.
		val, err := url.PathUnescape(raw)
		if err != nil {
			return nil, sasParseError("bad URL-encoding in " + key)
		}
		if val == "" {
			return nil, sasParseError("empty " + key)
		}
		switch key {
		case "sr":
			tok.SR = raw
			id, reason := registrationIDFromSR(val)
			if reason != "" {
				return nil, sasParseError(reason)
			}
			tok.RegistrationID = id
		case "sig":
			tok.Sig = val
		case "se":
			if val != raw || !allDigits(val) || len(val) > 18 {
				return nil, sasParseError("se is not a Unix time in seconds")
			}
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n <= 0 {
				return nil, sasParseError("se is not a Unix time in seconds")
			}
			tok.SE, tok.Expiry = raw, n
		case "skn":
			tok.SKN = val
		}
	}
	for _, k := range []string{"sr", "sig", "se"} {
		if !seen[k] {
			return nil, sasParseError("missing " + k)
		}
	}
	return &tok, nil
}

// registrationIDFromSR accepts `<registrationId>` or DPS's
// `<idScope>/registrations/<registrationId>` (already URL-decoded) and returns the ID,
// or a reason it is not one.
func registrationIDFromSR(sr string) (id, reason string) {
	if !strings.Contains(sr, "/") {
		id = sr
	} else {
		parts := strings.Split(sr, "/")
		if len(parts) != 3 || parts[0] == "" || parts[1] != "registrations" {
			return "", "sr is neither <registrationId> nor <idScope>/registrations/<registrationId>"
		}
		id = parts[2]
	}
	if !ValidRegistrationID(id) {
		return "", "the registration ID in sr is not valid"
	}
	return id, ""
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// SecretKeyGroups returns a KeyGroupFunc over named secrets: the default group ("" or
// skn=registration) reads defaultSecret, any other skn reads groups[skn]; an skn that is
// not configured wraps ErrUnknownKeyGroup. Each secret holds a base64 group key, as the
// Azure portal and `az iot dps enrollment-group` show it. fetch is expected to cache
// (secrets.Cached), so Key Vault is read once per TTL, not once per device.
func SecretKeyGroups(fetch func(ctx context.Context, name string) ([]byte, error), defaultSecret string, groups map[string]string) KeyGroupFunc {
	return func(ctx context.Context, group string) ([]byte, error) {
		name := defaultSecret
		if group != "" {
			n, ok := groups[group]
			if !ok {
				return nil, fmt.Errorf("%w: %q", ErrUnknownKeyGroup, group)
			}
			name = n
		}
		raw, err := fetch(ctx, name)
		if err != nil {
			return nil, err
		}
		key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
		if err != nil {
			return nil, fmt.Errorf("SAS group key secret %q is not base64: %w", name, err)
		}
		return key, nil
	}
}

// ParseKeyGroups reads the IOTPROV_SAS_KEY_GROUPS form "skn=secret-name,skn2=secret2".
// Group names are what devices send as skn; "registration" is reserved for the default
// group, as DPS uses it.
func ParseKeyGroups(s string) (map[string]string, error) {
	out := map[string]string{}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		skn, secret, ok := strings.Cut(item, "=")
		skn, secret = strings.TrimSpace(skn), strings.TrimSpace(secret)
		if !ok || skn == "" || secret == "" {
			return nil, fmt.Errorf("%q is not skn=secret-name", item)
		}
		if skn == dpsDefaultKeyName {
			return nil, fmt.Errorf("skn %q is the default group; set its secret with the default group key setting", skn)
		}
		for i := 0; i < len(skn); i++ {
			if !registrationIDChar(skn[i]) {
				return nil, fmt.Errorf("skn %q: use letters, digits, - . _ :", skn)
			}
		}
		if _, dup := out[skn]; dup {
			return nil, fmt.Errorf("skn %q is listed twice", skn)
		}
		out[skn] = secret
	}
	return out, nil
}
