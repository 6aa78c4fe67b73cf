package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/iotprov/iotprov/internal/errcode"
)

// The SORACOM Beam signed identity headers, in the order the signature covers them
// (alphabetical, which is how SORACOM documents the string to sign).
const (
	BeamHeaderIMEI             = "X-Soracom-Imei"
	BeamHeaderIMSI             = "X-Soracom-Imsi"
	BeamHeaderMSISDN           = "X-Soracom-Msisdn"
	BeamHeaderSIMID            = "X-Soracom-Sim-Id"
	BeamHeaderTimestamp        = "X-Soracom-Timestamp"
	BeamHeaderSignature        = "X-Soracom-Signature"
	BeamHeaderSignatureVersion = "X-Soracom-Signature-Version"
)

// beamSignedHeaders is the order of the string to sign; only present headers take part.
var beamSignedHeaders = []struct{ header, name string }{
	{BeamHeaderIMEI, "x-soracom-imei"},
	{BeamHeaderIMSI, "x-soracom-imsi"},
	{BeamHeaderMSISDN, "x-soracom-msisdn"},
	{BeamHeaderSIMID, "x-soracom-sim-id"},
	{BeamHeaderTimestamp, "x-soracom-timestamp"},
}

// BeamSignatureVersion is the only signature version SORACOM has published.
const BeamSignatureVersion = "20151022"

// Beam identity choices (IOTPROV_BEAM_IDENTITY).
const (
	BeamIdentityIMSI  = "imsi"
	BeamIdentitySIMID = "sim-id"
)

const (
	defaultBeamMaxSkew = 5 * time.Minute
	// maxBeamValue bounds each identity header: IMSI/IMEI/MSISDN are at most 16 digits and
	// a SIM ID (ICCID-like) at most 22; 32 leaves room without inviting large inputs.
	maxBeamValue = 32
)

// SecretFunc returns the raw value of a secret (the PSK, a key bundle) on every call; it
// is expected to be cached (secrets.Cached) so that Key Vault is read once per TTL.
type SecretFunc func(ctx context.Context) ([]byte, error)

// BeamConfig configures the beam authenticator.
type BeamConfig struct {
	PSK      SecretFunc
	Identity string           // BeamIdentityIMSI (default) or BeamIdentitySIMID
	MaxSkew  time.Duration    // how far x-soracom-timestamp may be from now, either way; 0 -> 5m
	Now      func() time.Time // nil -> time.Now
}

// Beam verifies the identity headers SORACOM Beam adds and signs with a pre-shared key,
// which is how a cellular device with no credential of its own proves its SIM.
type Beam struct {
	psk      SecretFunc
	identity string
	maxSkew  time.Duration
	now      func() time.Time
}

var _ Authenticator = (*Beam)(nil)

// NewBeam returns the beam authenticator.
func NewBeam(cfg BeamConfig) *Beam {
	b := &Beam{psk: cfg.PSK, identity: cfg.Identity, maxSkew: cfg.MaxSkew, now: cfg.Now}
	if b.identity == "" {
		b.identity = BeamIdentityIMSI
	}
	if b.maxSkew <= 0 {
		b.maxSkew = defaultBeamMaxSkew
	}
	if b.now == nil {
		b.now = time.Now
	}
	return b
}

// Method returns "beam".
func (b *Beam) Method() string { return "beam" }

// beamScheme names SORACOM Beam in WWW-Authenticate. It is not an Authorization scheme:
// the device does not answer the challenge itself (Beam adds the signed headers on the
// network's side), but DESIGN.md §2 wants every 401 to say how to authenticate, and a
// deployment with only beam enabled would otherwise answer 401 with no header at all.
// The name is SORACOM's product name in the auth-scheme token form (RFC 9110 §11.1).
const beamScheme = "SoracomBeam"

// Challenge returns the WWW-Authenticate challenge naming SORACOM Beam.
func (b *Beam) Challenge() string { return beamScheme }

// BeamHeaders is the parsed set of Beam identity headers.
type BeamHeaders struct {
	IMEI, IMSI, MSISDN, SIMID string
	Timestamp                 string // as sent: milliseconds since the epoch
	TimestampMillis           int64
	Signature                 string // lower-case hex
	SignatureVersion          string
}

func (h *BeamHeaders) value(header string) string {
	switch header {
	case BeamHeaderIMEI:
		return h.IMEI
	case BeamHeaderIMSI:
		return h.IMSI
	case BeamHeaderMSISDN:
		return h.MSISDN
	case BeamHeaderSIMID:
		return h.SIMID
	case BeamHeaderTimestamp:
		return h.Timestamp
	}
	return ""
}

// beamParseError carries a reason that never contains header values.
type beamParseError string

func (e beamParseError) Error() string { return "auth: beam headers: " + string(e) }

// HasBeamHeaders reports whether the request carries any SORACOM identity header, i.e.
// whether it came (or claims to come) through Beam.
func HasBeamHeaders(h http.Header) bool {
	for _, k := range []string{BeamHeaderIMEI, BeamHeaderIMSI, BeamHeaderMSISDN, BeamHeaderSIMID,
		BeamHeaderTimestamp, BeamHeaderSignature, BeamHeaderSignatureVersion} {
		if _, ok := h[k]; ok {
			return true
		}
	}
	return false
}

// ParseBeamHeaders reads the Beam headers of a request (untrusted: fuzz it). A repeated
// header, a non-digit identity or timestamp, a signature that is not 64 hex characters or
// an unknown signature version is an error; an unsigned request (Beam's signing turned
// off) is an error too, since then anyone could claim any SIM.
func ParseBeamHeaders(h http.Header) (*BeamHeaders, error) {
	var out BeamHeaders
	get := func(k string) (string, bool, error) {
		vs, ok := h[k]
		if !ok {
			return "", false, nil
		}
		if len(vs) != 1 {
			return "", true, beamParseError("header repeated: " + strings.ToLower(k))
		}
		return vs[0], true, nil
	}
	for _, s := range beamSignedHeaders {
		v, ok, err := get(s.header)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		if v == "" || len(v) > maxBeamValue || !allDigits(v) {
			return nil, beamParseError(s.name + " is not a number of at most 32 digits")
		}
		switch s.header {
		case BeamHeaderIMEI:
			out.IMEI = v
		case BeamHeaderIMSI:
			out.IMSI = v
		case BeamHeaderMSISDN:
			out.MSISDN = v
		case BeamHeaderSIMID:
			out.SIMID = v
		case BeamHeaderTimestamp:
			if len(v) > 15 {
				return nil, beamParseError("x-soracom-timestamp is not milliseconds since the epoch")
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, beamParseError("x-soracom-timestamp is not milliseconds since the epoch")
			}
			out.Timestamp, out.TimestampMillis = v, n
		}
	}
	sig, ok, err := get(BeamHeaderSignature)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, beamParseError("no x-soracom-signature: enable signing in the Beam configuration")
	}
	if len(sig) != sha256.Size*2 {
		return nil, beamParseError("x-soracom-signature is not a hex SHA-256")
	}
	if _, err := hex.DecodeString(sig); err != nil {
		return nil, beamParseError("x-soracom-signature is not a hex SHA-256")
	}
	out.Signature = strings.ToLower(sig)
	ver, ok, err := get(BeamHeaderSignatureVersion)
	if err != nil {
		return nil, err
	}
	if ok && ver != BeamSignatureVersion {
		return nil, beamParseError("unknown x-soracom-signature-version")
	}
	out.SignatureVersion = ver
	if out.Timestamp == "" {
		return nil, beamParseError("no x-soracom-timestamp")
	}
	return &out, nil
}

// BeamStringToSign is PSK followed by "name=value" of every present signed header, in
// SORACOM's fixed order, with no separators.
func BeamStringToSign(psk []byte, h *BeamHeaders) []byte {
	b := make([]byte, 0, len(psk)+160)
	b = append(b, psk...)
	for _, s := range beamSignedHeaders {
		if v := h.value(s.header); v != "" {
			b = append(b, s.name...)
			b = append(b, '=')
			b = append(b, v...)
		}
	}
	return b
}

// SignBeam returns the hex signature Beam puts in x-soracom-signature.
func SignBeam(psk []byte, h *BeamHeaders) string {
	sum := sha256.Sum256(BeamStringToSign(psk, h))
	return hex.EncodeToString(sum[:])
}

// SetBeamHeaders writes h (signed with psk) onto a request's header, as Beam would; for
// the CLI and tests.
func SetBeamHeaders(dst http.Header, psk []byte, h BeamHeaders) {
	for _, s := range beamSignedHeaders {
		if v := h.value(s.header); v != "" {
			dst.Set(s.header, v)
		}
	}
	dst.Set(BeamHeaderSignatureVersion, BeamSignatureVersion)
	dst.Set(BeamHeaderSignature, SignBeam(psk, &h))
}

// Authenticate verifies the Beam headers of r.
func (b *Beam) Authenticate(ctx context.Context, r *http.Request) (Identity, error) {
	if !HasBeamHeaders(r.Header) {
		return Identity{}, ErrNoCredential
	}
	h, err := ParseBeamHeaders(r.Header)
	if err != nil {
		reason := "unreadable"
		var pe beamParseError
		if errors.As(err, &pe) {
			reason = string(pe)
		}
		return Identity{}, errcode.Wrap(err, http.StatusUnauthorized, errcode.CodeInvalidCredential,
			"The SORACOM Beam headers are malformed: "+reason+".")
	}
	subject := h.IMSI
	if b.identity == BeamIdentitySIMID {
		subject = h.SIMID
	}
	if subject == "" {
		return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeInvalidCredential,
			"The SORACOM Beam headers lack the identity this service uses (x-soracom-"+b.identity+").")
	}
	// Freshness before the PSK lookup: a replayed capture costs no Key Vault traffic.
	skew := b.now().Sub(time.UnixMilli(h.TimestampMillis))
	if skew > b.maxSkew || skew < -b.maxSkew {
		return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeExpiredCredential,
			"The SORACOM Beam timestamp is outside the accepted window; the request is stale or replayed.")
	}
	if b.psk == nil {
		// A plain error: errcode.As renders it as internal_error and logs this reason.
		return Identity{}, errors.New("auth: beam: no PSK source configured")
	}
	psk, err := b.psk(ctx)
	switch {
	case err != nil:
		return Identity{}, errcode.Unavailable(err,
			"The service cannot verify credentials right now; retry later.")
	case len(psk) == 0:
		return Identity{}, errcode.Wrap(errors.New("auth: empty Beam PSK"), http.StatusInternalServerError,
			errcode.CodeInternal, "The service could not complete the request.")
	}
	want := SignBeam(psk, h)
	if subtle.ConstantTimeCompare([]byte(want), []byte(h.Signature)) != 1 {
		return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeInvalidCredential,
			"The SORACOM Beam signature does not verify.")
	}
	return Identity{Method: b.Method(), Subject: subject}, nil
}
