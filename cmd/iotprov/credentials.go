package main

// Commands that mint each kind of bootstrap credential for testing (DESIGN.md §3)
// — beam, jwt, bootstrap-cert — and the device policy admin, devices add|list|disable|enable.

import (
	"context"
	"crypto"
	"errors"
	"flag"
	"fmt"
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
	"github.com/iotprov/iotprov/internal/store"
)

func beam(e *env, args []string) error {
	fs := newFlagSet(e, "beam", "--psk-file FILE (--imsi IMSI | --sim-id ID) [--imei IMEI] [--msisdn N] [--timestamp MS]", `
Print SORACOM Beam signed headers as curl arguments, one -H Name:value per line, e.g.
  curl -X POST "$BASE/v1/provisioning/azure/iot/register" $(iotprov beam --psk-file .local/secrets/beam-psk --imsi 295000012345678)`)
	pskFile := fs.String("psk-file", "", "file holding the Beam pre-shared key (text), e.g. .local/secrets/beam-psk")
	imsi := fs.String("imsi", "", "x-soracom-imsi")
	imei := fs.String("imei", "", "x-soracom-imei")
	msisdn := fs.String("msisdn", "", "x-soracom-msisdn")
	simID := fs.String("sim-id", "", "x-soracom-sim-id")
	ts := fs.Int64("timestamp", 0, "x-soracom-timestamp in ms (default now)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *pskFile == "" || (*imsi == "" && *simID == "") {
		return errors.New("--psk-file and --imsi (or --sim-id) are required")
	}
	psk, err := os.ReadFile(*pskFile)
	if err != nil {
		return err
	}
	if *ts == 0 {
		*ts = e.now().UnixMilli()
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
	// The format is a contract: scripts (and test/e2e) split each line at "-H " and ":".
	for _, k := range names {
		fmt.Fprintf(e.out, "-H %s:%s\n", k, hdr.Get(k))
	}
	return nil
}

// claimFlags collects repeated --claim path=value.
type claimFlags []string

func (c *claimFlags) String() string     { return strings.Join(*c, ",") }
func (c *claimFlags) Set(v string) error { *c = append(*c, v); return nil }

func jwt(e *env, args []string) error {
	fs := newFlagSet(e, "jwt", "--key-file FILE (--sub SUBJECT | --claim path=value…) [--iss I] [--aud A] [--kid K] [--ttl 10m] [--raw]", `
Print "Bearer <JWT>" signed with the key (EC P-256 -> ES256, RSA -> RS256). The defaults
match the local stack's dev issuer. A SORACOM-Endorse-shaped token:
  iotprov jwt --key-file K --claim soracom-endorse-claim.imsi=295000012345678 --aud soracom-endorse-audience --iss https://soracom.io`)
	keyFile := fs.String("key-file", "", "PEM private key of the issuer (PKCS#8, EC or RSA), e.g. .local/pki/jwt-signing-key.pem")
	sub := fs.String("sub", "", "the sub claim")
	iss := fs.String("iss", devstack.DevJWTIssuer, "the iss claim")
	aud := fs.String("aud", devstack.DevJWTAudience, "the aud claim")
	kid := fs.String("kid", devstack.DevJWTKeyID, "the kid header; empty for none")
	ttl := fs.Duration("ttl", 10*time.Minute, "lifetime (exp - iat)")
	raw := fs.Bool("raw", false, "print the token without the Bearer prefix")
	var claims claimFlags
	fs.Var(&claims, "claim", "extra claim path=value (dotted path makes nested objects); repeatable")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *keyFile == "" || (*sub == "" && len(claims) == 0) {
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
	now := e.now()
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
	fmt.Fprintln(e.out, tok)
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

func bootstrapCert(e *env, args []string) error {
	fs := newFlagSet(e, "bootstrap-cert", "--ca-file FILE --cn NAME [--out-cert F] [--out-key F] [--validity 8760h]", `
Issue a bootstrap (factory) client certificate from a manufacturer CA bundle (PEM
certificate and key, e.g. .local/pki/manufacturer-ca.pem). The CN is the identity.
The key is written with mode 0600.`)
	caFile := fs.String("ca-file", "", "manufacturer CA: PEM certificate and private key")
	cn := fs.String("cn", "", "subject CN (the device's identity)")
	certOut := fs.String("out-cert", "bootstrap.pem", "where to write the certificate chain")
	keyOut := fs.String("out-key", "bootstrap-key.pem", "where to write the private key")
	validity := fs.Duration("validity", 365*24*time.Hour, "validity")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *caFile == "" || *cn == "" {
		return errors.New("--ca-file and --cn are required")
	}
	bundle, err := os.ReadFile(*caFile)
	if err != nil {
		return err
	}
	now := e.now()
	issuer, err := ca.ParseAuthority(bundle, now)
	if err != nil {
		return err
	}
	chain, key, err := ca.NewClientCertificate(issuer, *cn, *validity, now)
	if err != nil {
		return err
	}
	// Atomic writes with the mode set on a new file: os.WriteFile would keep the mode of
	// a file already there (a world-readable key stays world-readable) and could leave
	// half a key behind.
	if err := writeFileAtomic(*certOut, chain, 0o644); err != nil {
		return err
	}
	if err := writeFileAtomic(*keyOut, key, 0o600); err != nil {
		return err
	}
	fmt.Fprintf(e.out, "wrote %s and %s (CN %s)\n", *certOut, *keyOut, *cn)
	return nil
}

// The device policy commands edit the Azure Table "devices" (internal/policy).
const devicesHelp = `The device policy is the Azure Table "devices"; IOTPROV_DEVICE_POLICY decides how the
service uses it. The connection string defaults to $AzureWebJobsStorage.`

// storageTimeout bounds a devices command's storage calls.
const storageTimeout = 30 * time.Second

// addConnectionStringFlag adds --connection-string. Its default is empty, not
// $AzureWebJobsStorage: the flag package prints a flag's default in --help and after
// every flag error, and the connection string holds the storage account key.
// openDevicePolicy falls back to the environment variable.
func addConnectionStringFlag(fs *flag.FlagSet) *string {
	return fs.String("connection-string", "", "storage connection string (default $AzureWebJobsStorage)")
}

// addDeviceIDFlag adds --id.
func addDeviceIDFlag(fs *flag.FlagSet) *string {
	return fs.String("id", "", "device ID (required)")
}

// checkDeviceID refuses a bad --id before any storage call is made.
func checkDeviceID(id string) error {
	if !auth.ValidRegistrationID(id) {
		return errors.New("--id must be a device ID (1-64 of A-Z a-z 0-9 - . _ :, ending in a letter, digit or '-')")
	}
	return nil
}

// openDevicePolicy opens the policy table (creating it if missing) with the connection
// string of the flag or, when that is empty, of $AzureWebJobsStorage.
func openDevicePolicy(ctx context.Context, connectionString string) (*policy.Table, error) {
	if connectionString == "" {
		connectionString = os.Getenv("AzureWebJobsStorage")
	}
	if connectionString == "" {
		return nil, errors.New("--connection-string (or AzureWebJobsStorage) is required")
	}
	tables, _, err := storageconn.Open(storageconn.Settings{ConnectionString: connectionString}, nil)
	if err != nil {
		return nil, err
	}
	// The handler creates its tables at start; the CLI may run before it ever did.
	if err := store.New(tables).EnsureTables(ctx); err != nil {
		return nil, err
	}
	return policy.NewTable(tables), nil
}

func devicesAdd(e *env, args []string) error {
	fs := newFlagSet(e, "devices add", "--id DEVICE_ID [--min-interval D] [--note TEXT] [--connection-string CS]", `
List a device in the device policy: allow-list mode admits only listed devices.
--min-interval sets the device's own minimum interval between registrations (0 = none);
without it the service's default applies. Adding a listed device replaces its entry
but keeps it disabled if it was.

`+devicesHelp)
	cs := addConnectionStringFlag(fs)
	id := addDeviceIDFlag(fs)
	minInterval := fs.String("min-interval", "", "this device's minimum interval between registrations, e.g. 10m")
	note := fs.String("note", "", "free text")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkDeviceID(*id); err != nil {
		return err
	}
	d := &policy.Device{DeviceID: *id, Note: *note}
	if *minInterval != "" {
		iv, err := time.ParseDuration(*minInterval)
		if err != nil || iv < 0 {
			return fmt.Errorf("--min-interval %q is not a duration", *minInterval)
		}
		d.MinInterval, d.HasMinInterval = iv, true
	}
	ctx, cancel := context.WithTimeout(e.ctx, storageTimeout)
	defer cancel()
	tbl, err := openDevicePolicy(ctx, *cs)
	if err != nil {
		return err
	}
	old, err := tbl.Get(ctx, *id)
	switch {
	case err == nil:
		d.Disabled = old.Disabled
	case !errors.Is(err, policy.ErrNotFound):
		// Not knowing whether the device is disabled, writing would re-enable it.
		return err
	}
	if err := tbl.Put(ctx, d); err != nil {
		return err
	}
	fmt.Fprintf(e.out, "added %s\n", *id)
	return nil
}

func devicesList(e *env, args []string) error {
	fs := newFlagSet(e, "devices list", "[--connection-string CS]", `
Print every entry of the device policy: ID, status, minimum interval, note.

`+devicesHelp)
	cs := addConnectionStringFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(e.ctx, storageTimeout)
	defer cancel()
	tbl, err := openDevicePolicy(ctx, *cs)
	if err != nil {
		return err
	}
	list, err := tbl.List(ctx)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
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
}

func devicesDisable(e *env, args []string) error {
	return setDeviceDisabled(e, args, true)
}

func devicesEnable(e *env, args []string) error {
	return setDeviceDisabled(e, args, false)
}

// setDeviceDisabled is devices disable and devices enable: it changes only the entry's
// status, creating the entry if the device is not listed.
func setDeviceDisabled(e *env, args []string, disabled bool) error {
	verb, what := "enable", "Undo 'iotprov devices disable': the device may register again."
	if disabled {
		verb, what = "disable", "Disable a device: its registrations get 403 device_disabled."
	}
	fs := newFlagSet(e, "devices "+verb, "--id DEVICE_ID [--connection-string CS]", what+"\n\n"+devicesHelp)
	cs := addConnectionStringFlag(fs)
	id := addDeviceIDFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkDeviceID(*id); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(e.ctx, storageTimeout)
	defer cancel()
	tbl, err := openDevicePolicy(ctx, *cs)
	if err != nil {
		return err
	}
	d, err := tbl.Get(ctx, *id)
	if errors.Is(err, policy.ErrNotFound) {
		d, err = &policy.Device{DeviceID: *id}, nil
	}
	if err != nil {
		return err
	}
	d.Disabled = disabled
	if err := tbl.Put(ctx, d); err != nil {
		return err
	}
	fmt.Fprintf(e.out, "%sd %s\n", verb, *id)
	return nil
}
