// Command iotprov is the operator and device CLI. This first cut mints SAS credentials
// (DESIGN.md §3) so a device — or the README's curl script — can authenticate; CA
// management and the device client are added with their issue.
package main

import (
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
)

const usage = `iotprov — operator and device CLI for the iotprov provisioning service.

Usage:
  iotprov sas device-key --group-key-file FILE --id REGISTRATION_ID
      Print the device's SAS key: base64(HMAC-SHA256(groupKey, registrationId)), as
      'az iot dps enrollment-group compute-device-key' computes it.
  iotprov sas token (--group-key-file FILE | --device-key KEY) --id REGISTRATION_ID [--ttl 1h] [--id-scope SCOPE]
      Print an Authorization header value: SharedAccessSignature sr=…&sig=…&se=…&skn=registration.
      With --id-scope, sr is DPS's own form (<scope>/registrations/<id>, URL-encoded).

Run 'iotprov <command> <subcommand> --help' for a command's flags.
`

func main() {
	if err := run(os.Args[1:], os.Stdout, time.Now); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "iotprov: "+err.Error())
		os.Exit(2)
	}
}

// extraCommands are top-level commands contributed by other files of this package
// (they register themselves in init), dispatched by name.
var extraCommands = map[string]func(args []string, out io.Writer) error{}

func run(args []string, out io.Writer, now func() time.Time) error {
	if len(args) > 0 {
		if cmd, ok := extraCommands[args[0]]; ok {
			return cmd(args[1:], out)
		}
	}
	if len(args) < 2 || args[0] != "sas" {
		fmt.Fprint(out, usage)
		if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			return nil
		}
		return errors.New("unknown command; see the usage above")
	}
	fs := flag.NewFlagSet("iotprov sas "+args[1], flag.ContinueOnError)
	fs.SetOutput(out)
	groupKeyFile := fs.String("group-key-file", "", "file holding the base64 SAS group key (e.g. .local/secrets/sas-group-key)")
	deviceKey := fs.String("device-key", "", "the device's base64 SAS key (instead of --group-key-file)")
	id := fs.String("id", "", "the registration ID (the device's identity)")
	ttl := fs.Duration("ttl", time.Hour, "token lifetime")
	scope := fs.String("id-scope", "", "DPS ID scope: sign sr in DPS's <scope>/registrations/<id> form")
	if err := fs.Parse(args[2:]); err != nil {
		return err
	}
	if *id == "" {
		return errors.New("--id is required")
	}
	key, err := deviceKeyFrom(*groupKeyFile, *deviceKey, *id)
	if err != nil {
		return err
	}
	switch args[1] {
	case "device-key":
		fmt.Fprintln(out, base64.StdEncoding.EncodeToString(key))
	case "token":
		sr := *id
		if *scope != "" {
			sr = url.QueryEscape(*scope + "/registrations/" + *id)
		}
		fmt.Fprintln(out, auth.NewSASToken(key, sr, now().Add(*ttl).Unix(), "registration"))
	default:
		return fmt.Errorf("unknown sas subcommand %q", args[1])
	}
	return nil
}

func deviceKeyFrom(groupKeyFile, deviceKey, id string) ([]byte, error) {
	switch {
	case deviceKey != "":
		return base64.StdEncoding.DecodeString(deviceKey)
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
