// Package secrets reads the service's secrets by name: the CA bundle, the data-encryption
// key, the SAS group keys and the Beam PSK. In Azure they are Key Vault secrets
// (KeyVaultSource); on the local stack they are files under .local/secrets (FileSource).
// Both sit behind Source, and Cached keeps Key Vault from being called once per device
// while still picking up a rotated secret after a TTL.
package secrets

import (
	"context"
	"errors"
	"fmt"
)

// ErrNotFound reports that the named secret does not exist. Sources wrap it; test with
// errors.Is.
var ErrNotFound = errors.New("secret not found")

// ErrInvalidName reports a secret name that breaks Key Vault's naming rules. It is a
// configuration error, never a transient one, and it is checked before any I/O so a name
// can never reach a file path or a URL unvalidated.
var ErrInvalidName = errors.New("invalid secret name")

// Source is where secrets come from.
type Source interface {
	// Secret returns the current value of the named secret. ErrNotFound (wrapped) when it
	// does not exist; any other error is treated as transient by callers.
	Secret(ctx context.Context, name string) ([]byte, error)
}

// maxNameLen is Key Vault's limit on secret names.
const maxNameLen = 127

// CheckName applies Key Vault's secret-name rules (1-127 characters of [0-9a-zA-Z-]) and
// returns an error wrapping ErrInvalidName, on one line, when name breaks them. Using the
// same rules for files means a name that works locally works in Azure, and the alphabet
// leaves no room for "/", "\\" or "." so a name cannot traverse paths. The sources call it
// before any I/O; config calls it so a bad name fails at startup, naming the setting.
func CheckName(name string) error {
	if len(name) == 0 || len(name) > maxNameLen {
		return fmt.Errorf("%w: length %d, want 1-%d", ErrInvalidName, len(name), maxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-':
		default:
			return fmt.Errorf("%w: %q has a character outside [0-9a-zA-Z-]", ErrInvalidName, name)
		}
	}
	return nil
}
