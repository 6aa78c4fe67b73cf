// Package auth turns an incoming device request into a verified Identity.
//
// It follows step-ca's provisioner model: every way a device can prove who it is (a
// SAS token today; SORACOM Beam headers, JWTs and bootstrap X.509 certificates later)
// is one Authenticator in its own file, and a Chain tries them in order. The package
// knows nothing of Azure: key material reaches it through small function types, so the
// same code runs against Key Vault in Azure and local files on the local stack.
package auth

import (
	"context"
	"errors"
	"net/http"

	"github.com/iotprov/iotprov/internal/errcode"
)

// Codes returned by this package in addition to the shared ones in errcode.
const (
	// CodeUnknownKeyGroup: the credential names a key group (SAS skn) that is not configured.
	CodeUnknownKeyGroup = "unknown_key_group"
)

// Identity is who a request proved to be.
type Identity struct {
	Method  string // "sas", later "beam", "jwt", "x509"
	Subject string // registration ID / IMSI / claim / CN
}

// Key is the stable binding string stored on an operation: polls must present the same.
// The method is part of it so that, say, a JWT subject can never collide with a SAS
// registration ID of the same spelling.
func (i Identity) Key() string { return i.Method + ":" + i.Subject }

// Authenticator is one way for a device to prove who it is.
type Authenticator interface {
	Method() string
	// Challenge is the WWW-Authenticate challenge for this method (e.g. `SharedAccessSignature`).
	Challenge() string
	// Authenticate returns ErrNoCredential when the request carries no credential of this
	// kind (so the next authenticator is tried), else the identity or an error: an
	// *errcode.Error for what the device should hear (401, or 503 when a key cannot be
	// read), a plain error for a fault of the service (rendered as 500 internal_error).
	Authenticate(ctx context.Context, r *http.Request) (Identity, error)
}

// ErrNoCredential tells a Chain that an authenticator found nothing of its kind.
var ErrNoCredential = errors.New("auth: no credential of this kind")

// ErrUnknownKeyGroup is what a KeyGroupFunc wraps when the group is not configured, as
// opposed to a lookup that failed for a transient reason.
var ErrUnknownKeyGroup = errors.New("auth: unknown key group")

// Chain tries each authenticator in order; the first that finds its kind of credential
// decides. None → *errcode.Error 401 errcode.CodeMissingCredential.
//
// The first authenticator that recognises its credential decides, rather than "any that
// accepts": a device that presents a bad SAS token must get the SAS error, not fall
// through to a method it never meant to use.
type Chain []Authenticator

// Authenticate runs the chain.
func (c Chain) Authenticate(ctx context.Context, r *http.Request) (Identity, error) {
	for _, a := range c {
		id, err := a.Authenticate(ctx, r)
		if errors.Is(err, ErrNoCredential) {
			continue
		}
		return id, err
	}
	return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeMissingCredential,
		"The request carries no credential of a supported kind.")
}

// Challenges lists the WWW-Authenticate challenges of every authenticator, in order, for
// the 401 answer.
func (c Chain) Challenges() []string {
	out := make([]string, 0, len(c))
	for _, a := range c {
		if ch := a.Challenge(); ch != "" {
			out = append(out, ch)
		}
	}
	return out
}
