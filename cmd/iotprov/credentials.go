package main

// Commands that mint each kind of bootstrap credential for testing (DESIGN.md §3), and
// the device-policy admin. They register themselves in extraCommands.

import (
	"context"
	"crypto"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/devstack"
	"github.com/iotprov/iotprov/internal/policy"
	"github.com/iotprov/iotprov/internal/storageconn"
)

func init() {
	extraCommands["beam"] = beamCommand
	extraCommands["jwt"] = jwtCommand
	extraCommands["bootstrap-cert"] = bootstrapCertCommand
	extraCommands["devices"] = devicesCommand
}

func newFlags(name, usage string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, usage)
		fs.PrintDefaults()
	}
	return fs
}

const beamUsage = `Usage: iotprov beam --psk-file FILE --imsi IMSI [--imei IMEI] [--msisdn N] [--sim-id ID] [--timestamp MS]
  Print SORACOM Beam signed headers as curl arguments, one per line, e.g.
    curl -X POST "$BASE/v1/provisioning/azure/iot/register" $(iotprov beam --psk-file .local/secrets/beam-psk --imsi 295000012345678)
`

func beamCommand(args []string, out io.Writer) error {
	fs := newFlags("iotprov beam", beamUsage, out)
	pskFile := fs.String("psk-file", "", "file holding the Beam pre-shared key (text), e.g. .local/secrets/beam-psk")
	imsi := fs.String("imsi", "", "x-soracom-imsi")
	imei := fs.String("imei", "", "x-soracom-imei")
	msisdn := fs.String("msisdn", "", "x-soracom-msisdn")
	simID := fs.String("sim-id", "", "x-soracom-sim-id")
	ts := fs.Int64("timestamp", 0, "x-soracom-timestamp in ms (default now)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *pskFile == "" || (*imsi == "" && *simID == "") {
		fs.Usage()
		return errors.New("--psk-file and --imsi (or --sim-id) are required")
	}
	psk, err := os.ReadFile(*pskFile)
	if err != nil {
		return err
	}
	if *ts == 0 {
		*ts = time.Now().UnixMilli()
	}
	h := auth.BeamHeaders{IMEI: *imei, IMSI: *imsi, MSISDN: *msisdn, SIMID: *simID, Timestamp: fmt.Sprint(*ts)}
	hdr := http.Header{}
	auth.SetBeamHeaders(hdr, []byte(strings.TrimSpace(string(psk))), h)
	// Parse what we made, so a bad --imsi fails here and not at the service.
	if _, err := auth.ParseBeamHeaders(hdr); err != nil {
		return err
	}
	names := make([]string, 0, len(hdr))
	for k := range hdr {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(out, "-H %s:%s\n", k, hdr.Get(k))
	}
	return nil
}

const jwtUsage = `Usage: iotprov jwt --key-file FILE --sub SUBJECT [--claim path=value ...] [--iss I] [--aud A] [--kid K] [--ttl 10m] [--raw]
  Print "Bearer <JWT>" signed with the key (EC P-256 -> ES256, RSA -> RS256). The defaults
  match the local stack's dev issuer. A SORACOM-Endorse-shaped token:
    iotprov jwt --key-file K --claim soracom-endorse-claim.imsi=295000012345678 --aud soracom-endorse-audience --iss https://soracom.io
`

// claimFlags collects repeated --claim path=value.
type claimFlags []string

func (c *claimFlags) String() string     { return strings.Join(*c, ",") }
func (c *claimFlags) Set(v string) error { *c = append(*c, v); return nil }

func jwtCommand(args []string, out io.Writer) error {
	fs := newFlags("iotprov jwt", jwtUsage, out)
	keyFile := fs.String("key-file", "", "PEM private key of the issuer (PKCS#8, EC or RSA), e.g. .local/pki/jwt-signing-key.pem")
	sub := fs.String("sub", "", "the sub claim")
	iss := fs.String("iss", devstack.DevJWTIssuer, "the iss claim")
	aud := fs.String("aud", devstack.DevJWTAudience, "the aud claim")
	kid := fs.String("kid", devstack.DevJWTKeyID, "the kid header; empty for none")
	ttl := fs.Duration("ttl", 10*time.Minute, "lifetime (exp - iat)")
	raw := fs.Bool("raw", false, "print the token without the Bearer prefix")
	var claims claimFlags
	fs.Var(&claims, "claim", "extra claim path=value (dotted path makes nested objects); repeatable")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *keyFile == "" || (*sub == "" && len(claims) == 0) {
		fs.Usage()
		return errors.New("--key-file and --sub (or a --claim) are required")
	}
	pemBytes, err := os.ReadFile(*keyFile)
	if err != nil {
		return err
	}
	key, err := ca.ParsePrivateKeyPEM(pemBytes)
	if err != nil {
		return err
	}
	now := time.Now()
	c := map[string]any{"iss": *iss, "aud": *aud, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(*ttl).Unix()}
	if *sub != "" {
		c["sub"] = *sub
	}
	for _, kv := range claims {
		path, val, ok := strings.Cut(kv, "=")
		if !ok || path == "" {
			return fmt.Errorf("--claim %q is not path=value", kv)
		}
		if err := setClaim(c, strings.Split(path, "."), val); err != nil {
			return err
		}
	}
	tok, err := auth.SignJWT(key.(crypto.Signer), *kid, c)
	if err != nil {
		return err
	}
	if !*raw {
		tok = "Bearer " + tok
	}
	fmt.Fprintln(out, tok)
	return nil
}

func setClaim(m map[string]any, path []string, val string) error {
	for _, p := range path[:len(path)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			if _, exists := m[p]; exists {
				return fmt.Errorf("claim %s is not an object", p)
			}
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[path[len(path)-1]] = val
	return nil
}

const bootstrapUsage = `Usage: iotprov bootstrap-cert --ca-file FILE --cn NAME [--out-cert F] [--out-key F] [--validity 8760h]
  Issue a bootstrap (factory) client certificate from a manufacturer CA bundle (PEM
  certificate and key, e.g. .local/pki/manufacturer-ca.pem). The CN is the identity.
`

func bootstrapCertCommand(args []string, out io.Writer) error {
	fs := newFlags("iotprov bootstrap-cert", bootstrapUsage, out)
	caFile := fs.String("ca-file", "", "manufacturer CA: PEM certificate and private key")
	cn := fs.String("cn", "", "subject CN (the device's identity)")
	certOut := fs.String("out-cert", "bootstrap.pem", "where to write the certificate chain")
	keyOut := fs.String("out-key", "bootstrap-key.pem", "where to write the private key")
	validity := fs.Duration("validity", 365*24*time.Hour, "validity")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *caFile == "" || *cn == "" {
		fs.Usage()
		return errors.New("--ca-file and --cn are required")
	}
	bundle, err := os.ReadFile(*caFile)
	if err != nil {
		return err
	}
	issuer, err := ca.ParseAuthority(bundle, time.Now())
	if err != nil {
		return err
	}
	chain, key, err := ca.NewClientCertificate(issuer, *cn, *validity, time.Now())
	if err != nil {
		return err
	}
	if err := os.WriteFile(*certOut, chain, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(*keyOut, key, 0o600); err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %s and %s (CN %s)\n", *certOut, *keyOut, *cn)
	return nil
}

const devicesUsage = `Usage: iotprov devices add|list|disable|enable [--connection-string CS] [--id DEVICE_ID] [--min-interval D] [--note TEXT]
  Edit the device policy (Azure Table "devices"; IOTPROV_DEVICE_POLICY decides how it is
  used). The connection string defaults to $AzureWebJobsStorage.
    add      list a device (allow-list mode admits only listed devices); --min-interval
             sets its own minimum interval between registrations (0 = none)
    disable  a disabled device gets 403 device_disabled on register
    enable   undo disable
    list     print every entry
`

func devicesCommand(args []string, out io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(out, devicesUsage)
		if len(args) == 0 {
			return errors.New("a subcommand is required")
		}
		return flag.ErrHelp
	}
	sub := args[0]
	fs := newFlags("iotprov devices "+sub, devicesUsage, out)
	cs := fs.String("connection-string", os.Getenv("AzureWebJobsStorage"), "storage connection string")
	id := fs.String("id", "", "device ID")
	minInterval := fs.String("min-interval", "", "this device's minimum interval between registrations, e.g. 10m (add only)")
	note := fs.String("note", "", "free text (add only)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *cs == "" {
		return errors.New("--connection-string (or AzureWebJobsStorage) is required")
	}
	tables, _, err := storageconn.Open(storageconn.Settings{ConnectionString: *cs}, nil)
	if err != nil {
		return err
	}
	tbl := policy.NewTable(tables)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tbl.Ensure(ctx); err != nil {
		return err
	}
	if sub != "list" && !auth.ValidRegistrationID(*id) {
		return errors.New("--id must be a device ID (1-64 of A-Z a-z 0-9 - . _ :, ending in a letter, digit or '-')")
	}
	switch sub {
	case "add":
		d := &policy.Device{DeviceID: *id, Note: *note}
		if old, err := tbl.Get(ctx, *id); err == nil {
			d.Disabled = old.Disabled
		}
		if *minInterval != "" {
			iv, err := time.ParseDuration(*minInterval)
			if err != nil || iv < 0 {
				return fmt.Errorf("--min-interval %q is not a duration", *minInterval)
			}
			d.MinInterval, d.HasMinInterval = iv, true
		}
		if err := tbl.Put(ctx, d); err != nil {
			return err
		}
		fmt.Fprintf(out, "added %s\n", *id)
	case "disable", "enable":
		d, err := tbl.Get(ctx, *id)
		if errors.Is(err, policy.ErrNotFound) {
			d, err = &policy.Device{DeviceID: *id}, nil
		}
		if err != nil {
			return err
		}
		d.Disabled = sub == "disable"
		if err := tbl.Put(ctx, d); err != nil {
			return err
		}
		fmt.Fprintf(out, "%sd %s\n", sub, *id)
	case "list":
		list, err := tbl.List(ctx)
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "DEVICE ID\tSTATUS\tMIN INTERVAL\tNOTE")
		for _, d := range list {
			status, iv := "enabled", "default"
			if d.Disabled {
				status = "disabled"
			}
			if d.HasMinInterval {
				iv = d.MinInterval.String()
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", d.DeviceID, status, iv, d.Note)
		}
		return w.Flush()
	default:
		fmt.Fprint(out, devicesUsage)
		return fmt.Errorf("unknown subcommand %q", sub)
	}
	return nil
}
