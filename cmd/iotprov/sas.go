package main

import (
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
)

// sasCredential is the flags shared by the SAS commands and device register.
type sasCredential struct {
	groupKeyFile, deviceKey, id, scope string
	ttl                                time.Duration
}

func (c *sasCredential) given() bool { return c.groupKeyFile != "" || c.deviceKey != "" }

// token is the Authorization header value a device sends: a SAS over the registration
// ID, or over DPS's own <scope>/registrations/<id> when a scope is given.
func (c *sasCredential) token(now time.Time) (string, error) {
	if c.id == "" {
		return "", errors.New("--id is required")
	}
	key, err := deviceKeyFrom(c.groupKeyFile, c.deviceKey, c.id)
	if err != nil {
		return "", err
	}
	sr := c.id
	if c.scope != "" {
		sr = url.QueryEscape(c.scope + "/registrations/" + c.id)
	}
	return auth.NewSASToken(key, sr, now.Add(c.ttl).Unix(), "registration"), nil
}

const sasHelp = `The device key is base64(HMAC-SHA256(groupKey, registrationId)), as
'az iot dps enrollment-group compute-device-key' computes it; the token is
SharedAccessSignature sr=…&sig=…&se=…&skn=registration, as a DPS device builds it.`

func sasDeviceKey(e *env, args []string) error {
	fs := newFlagSet(e, "sas device-key", "--group-key-file FILE --id REGISTRATION_ID",
		"Print the device's SAS key.\n\n"+sasHelp)
	groupKeyFile := fs.String("group-key-file", "", "file holding the base64 SAS group key (e.g. .local/secrets/sas-group-key)")
	id := fs.String("id", "", "the registration ID (the device's identity)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *id == "" {
		return errors.New("--id is required")
	}
	if *groupKeyFile == "" {
		return errors.New("--group-key-file is required")
	}
	key, err := deviceKeyFrom(*groupKeyFile, "", *id)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.out, base64.StdEncoding.EncodeToString(key))
	return nil
}

func sasToken(e *env, args []string) error {
	fs := newFlagSet(e, "sas token", "(--group-key-file FILE | --device-key KEY) --id REGISTRATION_ID [--ttl 1h] [--id-scope SCOPE]",
		"Print an Authorization header value for a device.\n\n"+sasHelp+
			"\nWith --id-scope, sr is DPS's own form (<scope>/registrations/<id>, URL-encoded).")
	var c sasCredential
	addSASFlags(fs, &c)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	tok, err := c.token(e.now())
	if err != nil {
		return err
	}
	fmt.Fprintln(e.out, tok)
	return nil
}

func addSASFlags(fs *flag.FlagSet, c *sasCredential) {
	fs.StringVar(&c.groupKeyFile, "group-key-file", "", "file holding the base64 SAS group key (e.g. .local/secrets/sas-group-key)")
	fs.StringVar(&c.deviceKey, "device-key", "", "the device's base64 SAS key (instead of --group-key-file)")
	fs.StringVar(&c.id, "id", "", "the registration ID (the device's identity)")
	fs.DurationVar(&c.ttl, "ttl", time.Hour, "SAS token lifetime")
	fs.StringVar(&c.scope, "id-scope", "", "DPS ID scope: sign sr in DPS's <scope>/registrations/<id> form")
}

func deviceKeyFrom(groupKeyFile, deviceKey, id string) ([]byte, error) {
	switch {
	case deviceKey != "":
		k, err := base64.StdEncoding.DecodeString(deviceKey)
		if err != nil {
			return nil, fmt.Errorf("--device-key: not base64: %w", err)
		}
		return k, nil
	case groupKeyFile != "":
		b, err := os.ReadFile(groupKeyFile)
		if err != nil {
			return nil, err
		}
		group, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		if err != nil {
			return nil, fmt.Errorf("%s: not base64: %w", groupKeyFile, err)
		}
		return auth.DeriveDeviceKey(group, id), nil
	default:
		return nil, errors.New("give --group-key-file or --device-key")
	}
}
