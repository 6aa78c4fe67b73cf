package provision

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/keyseal"
)

// SecretSource is where the CA and the data key come from (secrets.Cached in production,
// so Key Vault is read once per TTL, not per device).
type SecretSource interface {
	Secret(ctx context.Context, name string) ([]byte, error)
}

// AuthorityLoader yields the signing CA from a secret. It re-parses only when the secret's
// bytes change (a rotation), and refuses a CA that is expired, not yet valid, not a CA or
// whose key does not match: the caller defers its operations until a good CA appears.
type AuthorityLoader struct {
	Secrets SecretSource
	Name    string
	Now     func() time.Time
	Log     *slog.Logger

	mu      sync.Mutex
	lastRaw []byte
	last    *ca.Authority
}

// Authority returns the current signing CA.
func (l *AuthorityLoader) Authority(ctx context.Context) (*ca.Authority, error) {
	raw, err := l.Secrets.Secret(ctx, l.Name)
	if err != nil {
		return nil, fmt.Errorf("read CA secret %q: %w", l.Name, err)
	}
	now := time.Now()
	if l.Now != nil {
		now = l.Now()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last != nil && bytes.Equal(raw, l.lastRaw) {
		c := l.last.Certificate
		if now.Before(c.NotBefore) || now.After(c.NotAfter) {
			err := fmt.Errorf("CA secret %q: the CA certificate is not valid now (valid %s to %s)", l.Name, c.NotBefore, c.NotAfter)
			if l.Log != nil {
				l.Log.Error("signing CA refused; operations wait for a good one", "secret", l.Name, "err", err)
			}
			return nil, err
		}
		return l.last, nil
	}
	a, err := ca.ParseAuthority(raw, now)
	if err != nil {
		if l.Log != nil {
			l.Log.Error("signing CA refused; operations wait for a good one", "secret", l.Name, "err", err)
		}
		return nil, fmt.Errorf("CA secret %q: %w", l.Name, err)
	}
	l.lastRaw, l.last = raw, a
	return a, nil
}

// DataKeySealer seals and opens private keys with the data key held in a secret
// (AES-256-GCM; keyseal). The sealer is rebuilt only when the secret changes.
type DataKeySealer struct {
	Secrets SecretSource
	Name    string

	mu      sync.Mutex
	lastRaw []byte
	sealer  *keyseal.Sealer
}

func (d *DataKeySealer) current(ctx context.Context) (*keyseal.Sealer, error) {
	raw, err := d.Secrets.Secret(ctx, d.Name)
	if err != nil {
		return nil, fmt.Errorf("read data key secret %q: %w", d.Name, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sealer != nil && bytes.Equal(raw, d.lastRaw) {
		return d.sealer, nil
	}
	key, err := keyseal.ParseKey(raw)
	if err != nil {
		return nil, fmt.Errorf("data key secret %q: %w", d.Name, err)
	}
	s, err := keyseal.New(key)
	if err != nil {
		return nil, err
	}
	d.lastRaw, d.sealer = raw, s
	return s, nil
}

// Seal encrypts plaintext bound to the operation and device.
func (d *DataKeySealer) Seal(ctx context.Context, plaintext []byte, operationID, deviceID string) ([]byte, error) {
	s, err := d.current(ctx)
	if err != nil {
		return nil, err
	}
	return s.Seal(plaintext, operationID, deviceID)
}

// Open decrypts what Seal produced for the same operation and device.
func (d *DataKeySealer) Open(ctx context.Context, sealed []byte, operationID, deviceID string) ([]byte, error) {
	s, err := d.current(ctx)
	if err != nil {
		return nil, err
	}
	return s.Open(sealed, operationID, deviceID)
}
